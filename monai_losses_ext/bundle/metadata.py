"""The fields of a bundle's ``metadata.json`` that MONAI's current bundle schema (``meta_schema_20240725.json``)
requires, and the types it gives them; checked offline (MONAI's ``verify_metadata`` downloads the schema)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

__all__ = ["METADATA_SCHEMA", "REQUIRED_METADATA", "check_metadata"]

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
"""The fields every bundle's ``metadata.json`` must have."""
METADATA_SCHEMA = "meta_schema_20240725.json"
"""The schema file the bundles name: the current one, which introduced ``required_packages_version``."""
_REQUIRED_TENSOR = ("type", "format", "num_channels", "spatial_shape", "dtype", "value_range")
_STRINGS = (
    "schema",
    "version",
    "monai_version",
    "pytorch_version",
    "numpy_version",
    "task",
    "description",
    "authors",
    "copyright",
    "data_source",
    "data_type",
    "image_classes",
    "label_classes",
    "pred_classes",
    "intended_use",
)
_OBJECTS = ("changelog", "required_packages_version", "optional_packages_version", "eval_metrics", "supported_apps")
_TENSOR_TYPES = {
    "type": str,
    "format": str,
    "num_channels": int,
    "dtype": str,
    "is_patch_data": bool,
    "channel_def": dict,
}


def _is(v: Any, types: type | tuple[type, ...]) -> bool:
    """``isinstance`` as JSON types mean it: a bool is no integer or number unless ``bool`` is asked for."""
    types = types if isinstance(types, tuple) else (types,)
    return isinstance(v, types) and (bool in types or not isinstance(v, bool))


def _type_problems(where: str, spec: Mapping[str, Any]) -> list[str]:
    out = [
        f"{where}.{k} must be {t.__name__}, got {type(spec[k]).__name__}"
        for k, t in _TENSOR_TYPES.items()
        if k in spec and not _is(spec[k], t)
    ]
    shape, vrange = spec.get("spatial_shape", []), spec.get("value_range", [])
    if not isinstance(shape, list) or not all(_is(v, (int, str)) for v in shape):
        out.append(f"{where}.spatial_shape must be a list of integers or strings, got {shape!r}")
    if not isinstance(vrange, list) or not all(_is(v, (int, float)) for v in vrange):
        out.append(f"{where}.value_range must be a list of numbers, got {vrange!r}")
    return out


def check_metadata(meta: str | Mapping[str, Any]) -> list[str]:
    """Problems of a bundle ``metadata.json`` (path or dict) against the fields MONAI's bundle schema requires
    (offline: ``python -m monai.bundle verify_metadata`` downloads the schema). Empty list: fine.

    Checked: every field of ``REQUIRED_METADATA``; ``schema`` naming ``METADATA_SCHEMA``; a ``changelog`` entry
    for ``version``; the schema's types (strings, objects, ``references`` a list of strings, ``eval_metrics``
    numbers); and non-empty ``network_data_format.inputs`` / ``outputs`` whose tensors each give ``type``,
    ``format``, ``num_channels``, ``spatial_shape``, ``dtype`` and ``value_range`` with the schema's types.

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
        with open(meta, encoding="utf-8") as f:
            meta = json.load(f)
    problems = [f"missing '{k}'" for k in REQUIRED_METADATA if k not in meta]
    problems += [f"'{k}' must be a string" for k in _STRINGS if k in meta and not isinstance(meta[k], str)]
    problems += [f"'{k}' must be an object" for k in _OBJECTS if k in meta and not isinstance(meta[k], Mapping)]
    refs = meta.get("references", [])
    if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
        problems.append("'references' must be a list of strings")
    metrics = meta.get("eval_metrics", {})
    if isinstance(metrics, Mapping):
        problems += [
            f"eval_metrics.{k} must be a number, got {v!r}" for k, v in metrics.items() if not _is(v, (int, float))
        ]
    if isinstance(meta.get("schema"), str) and not meta["schema"].endswith("/" + METADATA_SCHEMA):
        problems.append(f"schema {meta['schema']!r} is not the current MONAI bundle schema {METADATA_SCHEMA}")
    if "version" in meta and str(meta["version"]) not in meta.get("changelog", {}):
        problems.append(f"changelog has no entry for version {meta['version']}")
    ndf = meta.get("network_data_format", {})
    for part in ("inputs", "outputs"):
        if not isinstance(ndf.get(part), Mapping) or not ndf.get(part):
            problems.append(f"network_data_format.{part} missing or empty")
            continue
        for name, spec in ndf[part].items():
            problems += [f"network_data_format.{part}.{name}: missing '{k}'" for k in _REQUIRED_TENSOR if k not in spec]
            problems += _type_problems(f"network_data_format.{part}.{name}", spec)
    return problems
