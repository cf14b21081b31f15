"""Helpers shared by the label transforms: array conversion, metadata, spacing and value checks."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.utils import get_equivalent_dtype
from scipy import ndimage

IN_MEMORY = "<in-memory label>"
_SHOW = 10  # how many distinct values an error message lists


def source_name(label: Any, data: Mapping | None = None, key: Hashable | None = None) -> str:
    """Where a label came from: ``meta["filename_or_obj"]`` of a MetaTensor (or of a
    ``{key}_meta_dict`` entry in ``data``), else ``"<in-memory label>"``."""
    meta = label.meta if isinstance(label, MetaTensor) else None
    if not meta and data is not None and key is not None:
        meta = data.get(f"{key}_meta_dict")
    name = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
    if name is None or name == "":
        return IN_MEMORY
    return str(name)


def describe(label: Any, data: Mapping | None = None, key: Hashable | None = None) -> str:
    """``"label 'seg' from /x/y.nii.gz"``-style prefix for error messages."""
    what = f"label '{key}'" if key is not None else "label"
    return f"{what} from {source_name(label, data, key)}"


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy view/copy of a tensor, MetaTensor or array (metadata dropped)."""
    if isinstance(x, np.ndarray):
        return x
    t = as_torch(x).detach().cpu()
    if t.dtype in (torch.bfloat16, torch.float16):  # NumPy has no bfloat16
        t = t.float()
    return t.numpy()


def wrap_like(out: np.ndarray | torch.Tensor, like: Any) -> Any:
    """Return ``out`` in the container type of ``like``.

    MetaTensor in -> MetaTensor out with a copy of the input's meta, affine and applied operations;
    torch.Tensor in -> torch.Tensor on the input's device; ndarray in -> ndarray.
    """
    if isinstance(like, np.ndarray):
        return out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else out
    t = out if isinstance(out, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(out))
    if isinstance(like, torch.Tensor):
        t = t.to(like.device)
    if isinstance(like, MetaTensor):
        res = MetaTensor(t)
        res.copy_meta_from(like)
        return res
    return t


def torch_dtype(dtype: Any) -> torch.dtype:
    """A torch dtype from a torch/NumPy dtype or its name (``"float32"``), for bundle configs."""
    try:
        return get_equivalent_dtype(dtype, torch.Tensor)
    except Exception as e:
        raise TypeError(f"dtype={dtype!r} is not a torch/NumPy dtype; use e.g. torch.float32 or 'float32'") from e


def voxel_spacing(affine: np.ndarray | torch.Tensor, ndim: int | None = None) -> list[float]:
    """Voxel size along each array axis: the column norms of the affine's ``(nd, nd)`` block (world units;
    exact also for rotated / oblique affines). ``nd`` is ``ndim`` or the affine's size minus one.

    Args:
        affine: the voxel-to-world matrix, ``(nd + 1, nd + 1)`` (e.g. ``MetaTensor.affine``, 4x4 for a 3D
            image), as a tensor or an array.
        ndim: how many spatial axes to measure; ``None`` takes the affine's size minus one.

    Returns:
        One voxel size per spatial axis, in the affine's world units (mm for images loaded by ``LoadImage``).

    Raises:
        TypeError: ``affine`` is neither a ``torch.Tensor`` nor a ``numpy.ndarray`` (e.g. a nested list).
    """
    a = to_numpy(affine).astype(np.float64)
    nd = a.shape[0] - 1 if ndim is None else int(ndim)
    return [float(v) for v in np.linalg.norm(a[:nd, :nd], axis=0)]


def spacing_of(label: Any, spacing: float | Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    """Physical voxel size used for distances.

    ``spacing`` wins when given (a number or one value per spatial axis). Otherwise the spacing of a
    MetaTensor is the column norms of ``affine[:ndim, :ndim]`` (the length of one voxel step along each
    array axis in world units, e.g. mm; exact also for rotated/oblique affines). A plain tensor/array
    without ``spacing`` has unit spacing (distances in voxels).
    """
    if spacing is not None:
        sp = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
        if sp.size == 1:
            sp = np.repeat(sp, ndim)
        if sp.size != ndim or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
            raise ValueError(
                f"spacing={spacing!r} does not fit a label with {ndim} spatial dims: give one positive number "
                f"or {ndim} positive numbers (voxel size per axis, e.g. mm)"
            )
        return tuple(float(s) for s in sp)
    if isinstance(label, MetaTensor):
        aff = to_numpy(label.affine)
        if aff.ndim == 2 and aff.shape[0] >= ndim + 1 and aff.shape[1] >= ndim + 1:
            sp = np.asarray(voxel_spacing(aff, ndim))
            if np.all(np.isfinite(sp)) and np.all(sp > 0):
                return tuple(float(s) for s in sp)
    return (1.0,) * ndim


def check_channel_first(label: Any, what: str, name: str) -> None:
    """Labels are (C, *spatial) with 2 or 3 spatial dims."""
    shape = tuple(label.shape)
    if len(shape) not in (3, 4):
        raise ValueError(
            f"{what} from {name} has shape {shape}; expected channel-first (C, H, W) or (C, H, W, D) without a "
            "batch dim. Add EnsureChannelFirstd after LoadImaged, and apply the transform per case "
            "(before batching)."
        )


def fmt_values(vals: np.ndarray, limit: int = _SHOW) -> str:
    """``{0, 1, 255}`` (integers printed without ``.0``; long lists cut, with the total count)."""
    vals = np.asarray(vals).ravel()

    def one(v):
        if np.issubdtype(type(v), np.floating) and np.isfinite(v) and float(v).is_integer():
            return str(int(v))
        return str(v.item()) if hasattr(v, "item") else str(v)

    shown = ", ".join(one(v) for v in vals[:limit])
    if vals.size > limit:
        shown += f", ... ({vals.size} distinct values)"
    return "{" + shown + "}"


def unique_values(arr: np.ndarray | torch.Tensor) -> np.ndarray:
    """Sorted distinct values (one ``unique`` call)."""
    if isinstance(arr, torch.Tensor):
        return torch.unique(arr).cpu().numpy()
    return np.unique(arr)


def _declared(allowed: np.ndarray) -> str:
    """``num_classes=n`` when ``allowed`` is 0..n-1, else ``labels=[...]``."""
    if np.array_equal(allowed, np.arange(allowed.size)):
        return f"num_classes={allowed.size}"
    return f"labels={[int(a) for a in allowed]}"


def check_label_values(vals: np.ndarray, allowed: Sequence[int] | None, name: str) -> None:
    """Raise ValueError unless ``vals`` (sorted unique values of a label) are whole numbers within ``allowed``.

    The message names the source (``name``), the values seen, the allowed values and the fix, written as
    the ``ValidateLabeld`` call to put first in the pipeline.
    """
    vals = np.asarray(vals)
    if vals.dtype == np.bool_:
        vals = vals.astype(np.int64)
    if np.issubdtype(vals.dtype, np.floating) or np.issubdtype(vals.dtype, np.complexfloating):
        frac = vals[~np.isfinite(vals) | (vals != np.round(vals))]
        if frac.size:
            raise ValueError(
                f"{name} holds non-integer values {fmt_values(frac)} among {fmt_values(vals)}; a label map must "
                "hold whole class indices. It was probably resampled with linear interpolation: resample labels "
                "with mode='nearest' (e.g. Spacingd(keys='label', pixdim=..., mode='nearest')), or check that the "
                "label key does not point to an image."
            )
    if allowed is None:
        return
    allowed_arr = np.asarray(sorted({int(a) for a in allowed}), dtype=np.int64)
    bad = vals[~np.isin(vals, allowed_arr)]
    if bad.size == 0:
        return
    ivals = set(np.asarray(vals).astype(np.int64).tolist())
    declared = _declared(allowed_arr)
    if 255 in ivals and ivals <= {0, 1, 255}:
        fix = (
            "a binary mask must be {0, 1}: masks saved as 0/255 need a remap, "
            f"use ValidateLabeld(keys, {declared}, remap={{255: 1}}) first in the pipeline"
        )
    elif vals.size > 3 * max(allowed_arr.size, 10):
        fix = "so many distinct values suggest an intensity image, not a label map: check the keys"
    elif np.all(bad > allowed_arr.max()):
        top = int(np.max(bad))
        fix = (
            f"values >= {int(allowed_arr.max()) + 1} exceed the declared classes: if they are real classes use "
            f"num_classes={top + 1}, otherwise map them first with ValidateLabeld(keys, {declared}, "
            f"remap={{{top}: <new value>}})"
        )
    else:
        fix = (
            f"map the unexpected values first, e.g. ValidateLabeld(keys, {declared}, "
            f"remap={{{int(bad[0])}: <new value>}})"
        )
    raise ValueError(
        f"{name} holds values {fmt_values(vals)}; allowed values are {fmt_values(allowed_arr)}, "
        f"unexpected {fmt_values(bad)}; {fix}."
    )


def as_torch(x: Any) -> torch.Tensor:
    """A plain torch.Tensor (no metadata) sharing memory with a tensor/MetaTensor/ndarray when possible."""
    if isinstance(x, MetaTensor):
        return x.as_tensor()
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(
        f"expected a torch.Tensor, MetaTensor or numpy.ndarray label, got {type(x).__name__}; "
        "load images with monai.transforms.LoadImaged (+ EnsureChannelFirstd) first"
    )


def class_masks(label: Any, num_classes: int | None, name: str, owner: str) -> torch.Tensor:
    """Boolean class masks (C, *spatial), on the label's device, from index or one-hot labels.

    * (1, *spatial) with ``num_classes=C > 1``: index labels, checked to lie in 0..C-1; mask k = (label == k).
    * (1, *spatial) with ``num_classes=1``: one binary channel (values {0, 1}), e.g. a sigmoid target.
    * (C, *spatial), C > 1: one-hot or multi-label channels, binarised at 0.5 (``num_classes``, if
      given, must equal C).
    """
    check_channel_first(label, "label", name)
    t = as_torch(label)
    c = t.shape[0]
    if c == 1:
        if num_classes is None:
            raise ValueError(
                f"{owner}: {name} has one channel {tuple(t.shape)} (index labels) but num_classes is not set; "
                f"use {owner}(..., num_classes=K) with K the number of classes including background, or "
                "num_classes=1 for a single binary channel"
            )
        if num_classes == 1:
            check_label_values(unique_values(t), [0, 1], name)
            return t > 0
        check_label_values(unique_values(t), list(range(num_classes)), name)
        lab = t[0]
        ks = torch.arange(num_classes, device=lab.device).to(lab.dtype)
        return lab.unsqueeze(0) == ks.view(-1, *([1] * lab.ndim))
    if num_classes is not None and num_classes != c:
        raise ValueError(
            f"{owner}: {name} has {c} channels {tuple(t.shape)} (one-hot) but num_classes={num_classes}; "
            f"set num_classes={c} or None, or pass index labels (1, *spatial)"
        )
    return t > 0.5


def output_keys_for(
    keys: Sequence[Hashable], output_keys: Any, postfix: str | None, owner: str
) -> tuple[Hashable, ...]:
    """One output key per input key: given explicitly, else ``f"{key}{postfix}"`` (or the key itself)."""
    if output_keys is None:
        return tuple(k if postfix is None else f"{k}{postfix}" for k in keys)
    out = (output_keys,) if isinstance(output_keys, (str, int)) else tuple(output_keys)
    if len(out) != len(keys):
        raise ValueError(f"{owner}: output_keys {list(out)} must give one key per input key {list(keys)}")
    return out


def class_index(label: Any, name: str) -> np.ndarray:
    """Integer class map (*spatial): index labels (1, *spatial) checked to be whole numbers >= 0, or the
    argmax over channels of one-hot labels (C, *spatial) (channel 0 = background)."""
    check_channel_first(label, "label", name)
    arr = to_numpy(label)
    if arr.shape[0] > 1:
        return np.argmax(arr, axis=0)
    vals = unique_values(arr)
    check_label_values(vals, None, name)
    if vals.size and vals[0] < 0:
        raise ValueError(
            f"{name} holds negative values {fmt_values(vals[vals < 0])}; class indices start at 0: map them "
            f"first with ValidateLabeld(keys, remap={{{int(vals[0])}: 0}})"
        )
    return arr[0].astype(np.int64, copy=False)


def structure_for(ndim: int, connectivity: int | None, owner: str) -> np.ndarray:
    """Neighbourhood for connected components: connectivity 1 (faces) .. ndim (all); None = ndim."""
    conn = ndim if connectivity is None else connectivity
    if isinstance(conn, bool) or int(conn) != conn or not 1 <= conn <= ndim:
        raise ValueError(
            f"{owner}: connectivity={connectivity!r} for {ndim}D labels; use 1 (face neighbours) .. {ndim} "
            f"(all {3**ndim - 1} neighbours), or None for {ndim}"
        )
    return ndimage.generate_binary_structure(ndim, int(conn))
