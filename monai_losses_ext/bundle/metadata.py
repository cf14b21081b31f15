"""The required fields of a bundle's ``metadata.json`` (checked offline; MONAI's ``verify_metadata``
downloads the schema)."""

from __future__ import annotations

import json
from collections.abc import Mapping

__all__ = ["REQUIRED_METADATA", "check_metadata"]

REQUIRED_METADATA = (
    "schema",
    "version",
    "changelog",
    "monai_version",
    "pytorch_version",
    "numpy_version",
    "required_packages_version",
    "task",
    "description",
    "authors",
    "copyright",
    "network_data_format",
)
_REQUIRED_TENSOR = ("type", "format", "num_channels", "spatial_shape", "dtype", "value_range")


def check_metadata(meta: str | Mapping) -> list[str]:
    """Problems of a bundle ``metadata.json`` (path or dict) against the fields MONAI's bundle schema requires
    (offline: ``python -m monai.bundle verify_metadata`` downloads the schema). Empty list: fine."""
    if not isinstance(meta, Mapping):
        with open(meta) as f:
            meta = json.load(f)
    problems = [f"missing '{k}'" for k in REQUIRED_METADATA if k not in meta]
    if "version" in meta and str(meta["version"]) not in meta.get("changelog", {}):
        problems.append(f"changelog has no entry for version {meta['version']}")
    ndf = meta.get("network_data_format", {})
    for part in ("inputs", "outputs"):
        if not isinstance(ndf.get(part), Mapping) or not ndf.get(part):
            problems.append(f"network_data_format.{part} missing or empty")
            continue
        for name, spec in ndf[part].items():
            problems += [f"network_data_format.{part}.{name}: missing '{k}'" for k in _REQUIRED_TENSOR if k not in spec]
    return problems
