"""The required fields of a bundle's ``metadata.json`` (checked offline; MONAI's ``verify_metadata``
downloads the schema)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

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


def check_metadata(meta: str | Mapping[str, Any]) -> list[str]:
    """Problems of a bundle ``metadata.json`` (path or dict) against the fields MONAI's bundle schema requires
    (offline: ``python -m monai.bundle verify_metadata`` downloads the schema). Empty list: fine.

    Checked: every field of :data:`REQUIRED_METADATA`, a ``changelog`` entry for ``version``, and non-empty
    ``network_data_format.inputs`` / ``outputs`` whose tensors each give ``type``, ``format``,
    ``num_channels``, ``spatial_shape``, ``dtype`` and ``value_range``.

    Args:
        meta: the path of a ``metadata.json``, or its parsed content.

    Returns:
        One message per problem (``"missing 'authors'"``, ``"network_data_format.inputs.image: missing
        'dtype'"``, ...).

    Raises:
        OSError: ``meta`` is a path that cannot be read.
        ValueError: the file is not valid JSON (``json.JSONDecodeError``).
    """
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
