"""``ValidateLabel`` / ``ValidateLabeld``: stop bad label maps at loading time, with a message that says why.

The classic mistakes this catches, each as a ``ValueError`` naming the file, the values seen, the
allowed values and the fix:

* masks saved as 0/255 (``remap={255: 1}`` fixes them here, explicitly);
* label values >= the number of classes (BraTS label 4, an ignore value 255 or -1);
* labels resampled with linear interpolation (fractions such as 0.5);
* a label whose spatial shape differs from its image, or whose affine (voxel-to-world matrix) does
  (dict version, ``image_key=``; ``affine_tolerance=None`` allows an affine mismatch).

``ValidateSpacingd`` stops an image whose voxel size lies outside a sane range (a header in metres or
microns, a broken affine), before a resampling to a target spacing would build a huge or empty volume.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform

from ._common import check_label_values, describe, torch_dtype, unique_values, voxel_spacing, wrap_like

__all__ = ["ValidateLabel", "ValidateLabeld", "ValidateSpacingd", "allowed_values", "check_spacing", "voxel_spacing"]

SPACING_RANGE_MM = (0.1, 10.0)


def allowed_values(num_classes: int | None, labels: Sequence[int] | None, owner: str) -> list[int] | None:
    """The declared label values: ``range(num_classes)`` or ``labels``; None when neither is given.

    Args:
        num_classes: the number of classes; the allowed values are then ``0 .. num_classes-1``.
        labels: the allowed values themselves (whole numbers, in any order, repeats allowed).
        owner: the name of the calling transform, for error messages.

    Returns:
        The sorted allowed values, or ``None`` when neither ``num_classes`` nor ``labels`` is given.

    Raises:
        ValueError: both are given, ``num_classes`` is not a positive int, or ``labels`` is empty or holds a
            value that is not a whole number.
    """
    if num_classes is not None and labels is not None:
        raise ValueError(f"{owner}: give num_classes= or labels=, not both (got {num_classes!r} and {labels!r})")
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise ValueError(
                f"{owner}: num_classes must be a positive int (classes 0..num_classes-1), got {num_classes!r}"
            )
        return list(range(int(num_classes)))
    if labels is not None:
        vals = [float(v) for v in labels]
        if not vals or any(not v.is_integer() for v in vals):
            raise ValueError(f"{owner}: labels must be a non-empty list of whole numbers, got {labels!r}")
        return sorted({int(v) for v in vals})
    return None


def _remap(arr: np.ndarray | torch.Tensor, remap: Mapping[float, float]) -> np.ndarray | torch.Tensor:
    """Replace values ``old -> new``; masks are taken on the original values, so chains do not cascade."""
    masks = [(arr == old, new) for old, new in remap.items()]
    out = arr.clone() if isinstance(arr, torch.Tensor) else arr.copy()
    for m, new in masks:
        out[m] = new
    return out


def _number(v: Any) -> int | float:
    """``255``, ``255.0`` or ``"255"`` (JSON/YAML bundle configs have string keys) -> 255."""
    f = float(v)
    return int(f) if f.is_integer() else f


def _parse_remap(remap: Any) -> dict[int | float, int | float]:
    if not isinstance(remap, Mapping):
        raise TypeError(f"remap must be a dict {{old: new}} such as {{255: 1}}, got {type(remap).__name__}")
    try:
        return {_number(k): _number(v) for k, v in remap.items()}
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"remap={remap!r}: keys and values must be numbers (or numeric strings), e.g. {{255: 1}}"
        ) from e


class ValidateLabel(Transform):
    """Check a label map's values (and optionally remap / cast it); return it otherwise unchanged.

    Args:
        num_classes: allowed values are ``0 .. num_classes-1``.
        labels: explicit allowed values instead, e.g. ``[0, 1, 2, 4]`` for original BraTS labels.
            With neither, only "whole numbers" is checked.
        remap: ``{old: new}`` applied before the check, e.g. ``{255: 1}`` for 0/255 masks. Explicit on
            purpose: nothing is guessed. Numeric-string keys (``{"255": 1}``, as JSON configs write them)
            are accepted.
        dtype: cast the (remapped) label to this dtype (torch dtype or name); ``None`` keeps the dtype.

    Cost: one ``unique()`` over the label (plus one comparison per ``remap`` entry).
    Raises ``ValueError`` naming the file (MetaTensor ``meta["filename_or_obj"]``, else
    ``"<in-memory label>"``), the sorted distinct values found (first 10), the allowed values and the
    fix, e.g. ``use ValidateLabeld(keys, num_classes=2, remap={255: 1})``.

    Raises:
        ValueError: at construction, ``num_classes`` and ``labels`` both given, ``num_classes`` not a positive
            int, ``labels`` empty or not whole numbers, or ``remap`` keys / values that are not numbers. At call
            time, a label holding fractional or non-finite values, or (with ``num_classes`` / ``labels``) values
            outside the allowed ones, checked after ``remap``.
        TypeError: at construction, ``remap`` is not a mapping or ``dtype`` is not a dtype; at call time, the
            label is not a ``torch.Tensor``, MetaTensor or ``numpy.ndarray``.
    """

    def __init__(
        self,
        num_classes: int | None = None,
        labels: Sequence[int] | None = None,
        remap: Mapping[float, float] | None = None,
        dtype: str | torch.dtype | np.dtype | type | None = None,
    ) -> None:
        self.allowed = allowed_values(num_classes, labels, type(self).__name__)
        self.remap = _parse_remap(remap) if remap else None
        self.dtype = torch_dtype(dtype) if dtype is not None else None

    def __call__(self, label: np.ndarray | torch.Tensor, name: str | None = None) -> np.ndarray | torch.Tensor:
        """Validate ``label``; ``name`` overrides the source description used in messages.

        Args:
            label: one case's label map, channel-first ``(C, *spatial)`` (any shape is accepted: only the
                values are checked).
            name: how error messages name the label (e.g. ``"label 'seg' from /data/case1.nii.gz"``); ``None``
                uses the MetaTensor's ``meta["filename_or_obj"]``, else ``"<in-memory label>"``.

        Returns:
            The label itself when neither ``remap`` nor a ``dtype`` cast changed it; otherwise a new label of the
            same shape and container type (MetaTensor with the input's meta and affine, tensor on the input's
            device, or ndarray), remapped and cast to ``dtype``.
        """
        if not isinstance(label, (torch.Tensor, np.ndarray)):
            raise TypeError(
                f"{type(self).__name__} expects a torch.Tensor, MetaTensor or numpy.ndarray label, got "
                f"{type(label).__name__}; load it with LoadImaged first"
            )
        name = name or describe(label)
        arr = label.as_tensor() if isinstance(label, MetaTensor) else label
        changed = False
        if self.remap:
            arr = _remap(arr, self.remap)
            changed = True
        check_label_values(unique_values(arr), self.allowed, name)
        if self.dtype is not None:
            if isinstance(arr, np.ndarray):
                arr = torch.from_numpy(np.ascontiguousarray(arr))
            if arr.dtype != self.dtype:
                arr = arr.to(self.dtype)
                changed = True
        return wrap_like(arr, label) if changed else label


class ValidateLabeld(MapTransform):
    """Dictionary version of :class:`ValidateLabel`, plus a spatial-shape check against an image.

    Args:
        keys: label keys to check.
        num_classes: allowed values are ``0 .. num_classes-1`` (as in ``ValidateLabel``).
        labels: explicit allowed values instead, e.g. ``[0, 1, 2, 4]``; with neither, only "whole numbers" is
            checked.
        remap: ``{old: new}`` applied before the check, e.g. ``{255: 1}`` (numeric-string keys accepted).
        dtype: cast each (remapped) label to this dtype (torch dtype or name); ``None`` keeps the dtype.
        image_key: when given, each label must have the same number of dims and the same spatial shape
            (all dims after the channel) as ``data[image_key]``, and, when both carry an affine (MetaTensors
            from ``LoadImaged``), the same affine within ``affine_tolerance``.
        affine_tolerance: the largest absolute difference allowed between an entry of the label's affine and
            the image's (mm for the origin; the direction-times-spacing entries are in mm per voxel).
            ``None`` (or ``False``, which a command line can pass) skips the affine check, for labels known to
            share the image grid despite their headers.
        allow_missing_keys: skip missing label keys instead of raising.

    Raises:
        ValueError: at construction, empty ``keys``, the invalid arguments listed in ``ValidateLabel``, or a string
            ``affine_tolerance`` that is not a number. At call time, ``image_key`` is not in the data; a label
            whose number of dims or spatial shape differs from the image's, or whose affine differs from it by
            more than ``affine_tolerance``; or the value errors of ``ValidateLabel``. Each message names the key
            and the file.
        TypeError: the ``ValidateLabel`` type errors (``remap`` not a mapping, ``dtype`` not a dtype, a label that
            is not a tensor or an array).
        KeyError: a key in ``keys`` is missing from the data and ``allow_missing_keys`` is ``False``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        num_classes: int | None = None,
        labels: Sequence[int] | None = None,
        remap: Mapping[float, float] | None = None,
        dtype: str | torch.dtype | np.dtype | type | None = None,
        image_key: Hashable | None = None,
        affine_tolerance: float | bool | None = 1e-3,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.validator = ValidateLabel(num_classes=num_classes, labels=labels, remap=remap, dtype=dtype)
        self.image_key = image_key
        self.affine_tolerance = (
            None if affine_tolerance is None or affine_tolerance is False else float(affine_tolerance)
        )

    def _check_affine(self, label: Any, image: Any, name: str) -> None:
        la, ia = getattr(label, "affine", None), getattr(image, "affine", None)
        if self.affine_tolerance is None or la is None or ia is None:
            return
        la, ia = (
            np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float64) for a in (la, ia)
        )
        if la.shape != ia.shape:
            return  # different spatial dims: the shape check reports it
        diff = float(np.abs(la - ia).max())
        if diff > self.affine_tolerance:
            fmt = lambda a: np.array2string(a, precision=3, suppress_small=True, separator=", ").replace("\n", "")  # noqa: E731
            raise ValueError(
                f"{name} does not lie on the grid of image '{self.image_key}': their affines differ by up to "
                f"{diff:.4g} (tolerance {self.affine_tolerance:g}); label affine {fmt(la)}, image affine {fmt(ia)}. "
                "Check that the files belong to the same case and were exported with the same header; resample "
                "the label onto the image (ResampleToMatchd(keys='label', key_dst='image', mode='nearest')), or "
                "pass affine_tolerance=None (--label_affine_tolerance False in the bundles) if the voxels match "
                "and only the header is off."
            )

    def _check_shape(self, label: Any, image: Any, name: str) -> None:
        ls, im = tuple(label.shape), tuple(image.shape)
        if len(ls) != len(im):
            raise ValueError(
                f"{name} has shape {ls} but image '{self.image_key}' has shape {im} (different number of dims); "
                "both must be channel-first (C, *spatial): add EnsureChannelFirstd(keys=[image, label]) after "
                "LoadImaged."
            )
        if ls[1:] != im[1:]:
            raise ValueError(
                f"{name} has spatial shape {ls[1:]} but image '{self.image_key}' has {im[1:]}; label and image must "
                "cover the same voxel grid: check that the files belong to the same case, and resample the label "
                "onto the image grid with nearest-neighbour interpolation (e.g. ResampleToMatchd(keys='label', "
                "key_dst='image', mode='nearest'))."
            )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Check (and remap / cast) the labels of one case.

        Args:
            data: one case, e.g. ``{"image": MetaTensor, "label": MetaTensor}`` after ``LoadImaged`` and
                ``EnsureChannelFirstd``.

        Returns:
            A shallow copy of ``data`` in which each label is replaced by the result of ``ValidateLabel`` (the
            same object when nothing was remapped or cast); the other entries are the same objects.
        """
        d = dict(data)
        if self.image_key is not None and self.image_key not in d:
            raise ValueError(
                f"{type(self).__name__}: image_key '{self.image_key}' is not in the data (keys: {list(d)}); "
                "set image_key=None to skip the shape check"
            )
        for key in self.key_iterator(d):
            name = describe(d[key], d, key)
            if self.image_key is not None:
                self._check_shape(d[key], d[self.image_key], name)
                self._check_affine(d[key], d[self.image_key], name)
            d[key] = self.validator(d[key], name=name)
        return d


def check_spacing(
    spacing: Sequence[float], name: str, spacing_range: Sequence[float] = SPACING_RANGE_MM
) -> list[float]:
    """``spacing`` as floats; a ``ValueError`` naming ``name`` when a value is not finite or lies outside
    ``spacing_range`` (mm).

    Args:
        spacing: voxel size per axis, e.g. from :func:`voxel_spacing`.
        name: what the error message calls the image, e.g. ``"image 'image' from /data/case1.nii.gz"``.
        spacing_range: ``(lowest, highest)`` voxel size allowed, both included, in mm; default ``(0.1, 10.0)``.

    Returns:
        ``spacing`` as a list of floats.

    Raises:
        ValueError: a voxel size is NaN, infinite or outside ``spacing_range``; the message names the image,
            its spacing and the fixes.
    """
    lo, hi = (float(v) for v in spacing_range)
    sp = [float(v) for v in spacing]
    bad = [v for v in sp if not (np.isfinite(v) and lo <= v <= hi)]
    if bad:
        raise ValueError(
            f"{name} has voxel spacing {[round(v, 6) for v in sp]} mm, outside the sane range {lo:g}-{hi:g} mm: "
            "its header is probably in other units (m, um) or broken. Fix the header (e.g. with SimpleITK's "
            "SetSpacing), or widen the range (--spacing_range [lo, hi] in the bundles) if the data really are so."
        )
    return sp


class ValidateSpacingd(MapTransform):
    """Checks that each image's voxel spacing (from its MetaTensor affine) lies in ``spacing_range`` mm, so that
    a broken header stops with its file name instead of resampling into a huge (or empty) volume.

    Args:
        keys: image keys (MetaTensors from ``LoadImaged``; a plain tensor has no spacing and is skipped).
        spacing_range: ``(lowest, highest)`` voxel size in mm, both included; default ``(0.1, 10.0)``.
        allow_missing_keys: skip missing image keys instead of raising.

    Raises:
        ValueError: at construction, empty ``keys`` or a ``spacing_range`` that is not two numbers with
            ``0 < lowest < highest``; at call time, an image whose voxel size along some axis (column norms of its
            affine) is not finite or lies outside ``spacing_range`` (the message names the file).
        KeyError: a key in ``keys`` is missing from the data and ``allow_missing_keys`` is ``False``.
    """

    def __init__(
        self, keys: KeysCollection, spacing_range: Sequence[float] = SPACING_RANGE_MM, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        lo, hi = (float(v) for v in spacing_range)
        if not 0 < lo < hi:
            raise ValueError(
                f"spacing_range must be (lowest, highest) with 0 < lowest < highest, got {spacing_range!r}"
            )
        self.spacing_range = (lo, hi)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Check the voxel spacing of the images of one case.

        Args:
            data: one case, the images as MetaTensors (``LoadImaged``); entries without an ``affine`` are
                not checked.

        Returns:
            A shallow copy of ``data``; no value is changed.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            affine = getattr(d[key], "affine", None)
            if affine is not None:
                name = f"image '{key}' from {getattr(d[key], 'meta', {}).get('filename_or_obj', '<in-memory image>')}"
                check_spacing(voxel_spacing(affine), name, self.spacing_range)
        return d
