"""The bundles' training recipe beyond the loss: the target spacing every case is resampled to, and the data
augmentation (named presets whose probabilities and ranges are bundle arguments).

Target spacing (``--spacing``): ``null`` (default) is the per-axis median voxel size of the training cases (the
nnU-Net fingerprint's choice), computed once from the file headers when training starts and stored with the
run (the epoch checkpoints and ``models/model.json`` carry it in their ``args``), so evaluation and inference
resample new data to the spacing the model was trained at, whatever the files' own spacing; predictions are
written back on each input's own grid (``Invertd``). A list gives the spacing explicitly; ``"native"`` keeps
every file at its own spacing (no resampling: only sensible when all cases share one).

Augmentation (``--augmentation``, ``--augment_args``): MONAI transforms, run on the data-loader workers after
the random crop, in this order:

1. random affine (rotation about all axes, scaling) and elastic deformation: image bilinear, label nearest,
   and the loss's label maps **transformed with the label** (distance and weight maps bilinear, lesion
   instances nearest). The maps are computed once on the whole volume (a distance measured inside a patch would
   stop at the patch edge) and cached; rotation keeps distances exactly, scaling by ``s`` changes them by the
   factor ``s`` (at most the preset's range), an elastic deformation by its local stretch (a few per cent at the
   presets' magnitudes). Recomputing them per patch would cost one distance transform per sample on the loader
   and cut distances at the patch border; the cost of transforming them is one interpolated channel per map
   (measured in ``benchmarks/bench_loader.py``). A larger region is cropped first so that rotated and scaled
   patches sample real data, not padding.
2. mirroring along each listed axis;
3. intensity (image only): Gaussian noise, Gaussian blur, brightness (multiplicative), contrast (around the
   mean, range preserved), low-resolution simulation, gamma (statistics retained), a smooth bias field and an
   additive shift.

Presets (``AUGMENTATION_PRESETS``): ``"strong"`` (default; the nnU-Net recipe's transforms and probabilities,
plus a bias field and a mild elastic deformation), ``"light"`` (mirroring, small affine, mild intensity),
``"legacy"`` (what the bundles did before: left-right mirroring and +-10% intensity scale and shift) and
``"none"``. Any key of :data:`AUGMENTATION_DEFAULTS` can be overridden with ``--augment_args``, e.g.
``"{'p_elastic': 0, 'rotate_deg': 15}"``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..transforms import check_spacing, voxel_spacing
from ..transforms.validate import SPACING_RANGE_MM

if TYPE_CHECKING:
    from monai.transforms import MapTransform

__all__ = [
    "AUGMENTATION_DEFAULTS",
    "AUGMENTATION_PRESETS",
    "augmentation_settings",
    "augmentations",
    "crop_size",
    "file_spacing",
    "target_spacing",
    "trained_spacing",
]

logger = logging.getLogger(__name__)

NATIVE = "native"


# ----------------------------------------------------------------------------------------------- spacing
def file_spacing(path: str) -> list[float]:
    """Voxel size (mm) of an image file along the RAS axes the bundles reorient to (``Orientationd("RAS")``):
    from the NIfTI header when nibabel reads it, else from the image MONAI's ``LoadImage`` returns.

    Only the header (the affine) is needed; the voxel sizes are the column norms of the affine, permuted to
    the RAS axis order, so the result does not depend on how the file's axes are stored.

    Args:
        path: an image file (NIfTI, MHA, NRRD, ...) or DICOM series folder.

    Returns:
        The voxel size in mm along the R, A and S axes (one value per spatial axis).

    Raises:
        FileNotFoundError: the file does not exist (other errors of MONAI's readers are raised as they are).
    """
    import nibabel as nib

    try:
        affine = np.asarray(nib.load(path).affine, dtype=np.float64)
    except Exception:  # not a NIfTI / nibabel format (MHA, NRRD, DICOM series): MONAI's readers
        from monai.transforms import LoadImage

        affine = np.asarray(LoadImage(image_only=True)(path).affine, dtype=np.float64)
    zooms = voxel_spacing(affine)
    ornt = nib.orientations.io_orientation(affine)  # input axis i -> output (RAS) axis ornt[i, 0]
    out = [0.0] * len(zooms)
    for i, (axis, _) in enumerate(ornt):
        out[int(axis)] = zooms[i]
    return out


def _explicit(spacing: Any, name: str, spacing_range) -> list[float] | None:
    if isinstance(spacing, str):
        if spacing.lower() == NATIVE:
            return None
        raise ValueError(
            f"{name}: spacing {spacing!r} is not understood; give null (the training median), "
            f"'{NATIVE}' (no resampling) or one value / three values in mm"
        )
    values = [spacing] if isinstance(spacing, (int, float)) else list(spacing)
    if len(values) == 1:
        values = values * 3
    if len(values) != 3:
        raise ValueError(f"{name}: spacing {spacing!r} needs one value or three values (mm)")
    return check_spacing(values, f"{name} (--spacing)", spacing_range)


def target_spacing(
    datalist: Sequence[Mapping[str, Any]],
    spacing: Any = None,
    key: str = "image",
    spacing_range: Sequence[float] = SPACING_RANGE_MM,
) -> list[float] | None:
    """The spacing the bundle resamples every case to: ``spacing`` when given (one or three values in mm;
    ``"native"``: ``None``, no resampling), else the per-axis median voxel size of ``datalist``'s ``key``
    files. Every file's spacing must lie in ``spacing_range`` mm (a ``ValueError`` names the file).

    Args:
        datalist: the training cases, ``[{"image": path, ...}, ...]`` (e.g. of :func:`msd_datalist`).
        spacing: the bundle's ``--spacing``: None (the median of ``datalist``), one value (isotropic) or three
            values in mm, or ``"native"`` (case-insensitive).
        key: the data key of the image files whose headers are read.
        spacing_range: ``(lowest, highest)`` voxel size accepted, in mm, both included.

    Returns:
        The target voxel size in mm, three values (a computed median is rounded to 4 decimals); None for
        ``"native"``.

    Raises:
        ValueError: ``spacing`` is another string or has neither one nor three values, a value (given, or of
            a file) lies outside ``spacing_range`` or is not finite, or ``datalist`` is empty while
            ``spacing`` is None.
        FileNotFoundError: a file of ``datalist`` does not exist.
    """
    if spacing is not None:
        return _explicit(spacing, "target spacing", spacing_range)
    if not datalist:
        raise ValueError("no training case to take the target spacing from; give --spacing explicitly")
    per_file = [check_spacing(file_spacing(str(c[key])), str(c[key]), spacing_range) for c in datalist]
    median = [round(float(v), 4) for v in np.median(np.asarray(per_file), axis=0)]
    logger.info(f"target spacing {median} mm: the median of {len(per_file)} training cases")
    return median


def trained_spacing(
    ckpt_path: str, spacing: Any = None, spacing_range: Sequence[float] = SPACING_RANGE_MM
) -> list[float] | None:
    """The target spacing for evaluation / inference: ``spacing`` when given (as :func:`target_spacing`), else
    the one the model at ``ckpt_path`` was trained at, read from ``model.json`` beside it (``args.target_spacing``).

    Args:
        ckpt_path: the trained model (``models/model.pt``); its record is the file of the same name with
            ``.json``.
        spacing: an explicit spacing that wins over the recorded one (as in :func:`target_spacing`); None:
            the recorded one.
        spacing_range: ``(lowest, highest)`` voxel size accepted, in mm, both included.

    Returns:
        The voxel size in mm the cases are resampled to, or None for no resampling (``"native"``, given or
        recorded).

    Raises:
        ValueError: the record cannot be read or does not hold ``args.target_spacing`` (a model saved before
            the spacing was stored: give ``spacing``), or the spacing fails the checks of
            :func:`target_spacing`.
    """
    if spacing is not None:
        return _explicit(spacing, "target spacing", spacing_range)
    meta_path = os.path.splitext(str(ckpt_path))[0] + ".json"
    try:
        with open(meta_path, encoding="utf-8") as f:
            args = json.load(f).get("args") or {}
    except (OSError, ValueError) as err:
        raise ValueError(
            f"cannot read the training spacing of {ckpt_path} from {meta_path} ({err}); give --spacing (the voxel "
            "size in mm the model was trained at, e.g. [1.5, 1.5, 1.5], or 'native')"
        ) from None
    if "target_spacing" not in args:
        raise ValueError(
            f"{meta_path} does not record the training spacing (a model trained before it was stored); "
            "give --spacing, e.g. [1.5, 1.5, 1.5], or 'native' for no resampling"
        )
    value = args["target_spacing"]
    return None if value is None else check_spacing(value, meta_path, spacing_range)


# ------------------------------------------------------------------------------------------ augmentation
AUGMENTATION_DEFAULTS: dict[str, Any] = {
    "flip_axes": [0, 1, 2],
    "p_flip": 0.0,
    "p_affine": 0.0,
    "rotate_deg": 30.0,
    "scale": [0.7, 1.4],
    "p_elastic": 0.0,
    "elastic_sigma": [5.0, 8.0],
    "elastic_magnitude": [80.0, 160.0],
    "p_noise": 0.0,
    "noise_std": 0.3,
    "p_blur": 0.0,
    "blur_sigma": [0.5, 1.0],
    "p_brightness": 0.0,
    "brightness": [0.75, 1.25],
    "p_contrast": 0.0,
    "contrast": [0.75, 1.25],
    "p_lowres": 0.0,
    "lowres_zoom": [0.5, 1.0],
    "p_gamma": 0.0,
    "gamma": [0.7, 1.5],
    "p_bias": 0.0,
    "bias_coeff": [0.0, 0.3],
    "p_shift": 0.0,
    "shift": 0.1,
}

AUGMENTATION_PRESETS: dict[str, dict[str, Any]] = {
    "none": {},
    "legacy": {"flip_axes": [0], "p_flip": 0.5, "p_brightness": 0.5, "brightness": [0.9, 1.1], "p_shift": 0.5},
    "light": {
        "p_flip": 0.5,
        "p_affine": 0.2,
        "rotate_deg": 15.0,
        "scale": [0.85, 1.15],
        "p_noise": 0.1,
        "noise_std": 0.1,
        "p_brightness": 0.15,
        "p_contrast": 0.15,
        "p_gamma": 0.15,
    },
    "strong": {
        "p_flip": 0.5,
        "p_affine": 0.3,
        "p_elastic": 0.2,
        "p_noise": 0.15,
        "p_blur": 0.2,
        "p_brightness": 0.15,
        "p_contrast": 0.15,
        "p_lowres": 0.25,
        "p_gamma": 0.3,
        "p_bias": 0.3,
    },
}


def augmentation_settings(preset: str = "strong", overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The full settings of ``preset`` updated with ``overrides`` (unknown names and probabilities outside
    [0, 1] raise ``ValueError``).

    Args:
        preset: a name of :data:`AUGMENTATION_PRESETS` (``"strong"``, ``"light"``, ``"legacy"``, ``"none"``).
        overrides: settings that replace the preset's (``--augment_args``), any keys of
            :data:`AUGMENTATION_DEFAULTS`; None: none.

    Returns:
        Every key of :data:`AUGMENTATION_DEFAULTS`: the defaults, updated with the preset, updated with
        ``overrides``.

    Raises:
        ValueError: an unknown preset or override name, a ``p_*`` probability outside [0, 1], or a
            ``flip_axes`` entry that is not 0, 1 or 2.
    """
    if preset not in AUGMENTATION_PRESETS:
        raise ValueError(f"--augmentation {preset!r}: use one of {sorted(AUGMENTATION_PRESETS)}")
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(AUGMENTATION_DEFAULTS))
    if unknown:
        raise ValueError(f"--augment_args: unknown setting(s) {unknown}; known: {sorted(AUGMENTATION_DEFAULTS)}")
    cfg = {**AUGMENTATION_DEFAULTS, **AUGMENTATION_PRESETS[preset], **overrides}
    bad = {k: v for k, v in cfg.items() if k.startswith("p_") and not 0.0 <= float(v) <= 1.0}
    if bad:
        raise ValueError(f"augmentation probabilities must lie in [0, 1], got {bad}")
    if not all(int(a) in (0, 1, 2) for a in cfg["flip_axes"]):
        raise ValueError(f"flip_axes {cfg['flip_axes']}: spatial axes are 0, 1, 2")
    return cfg


def crop_size(
    patch_size: Sequence[int], preset: str = "strong", overrides: Mapping[str, Any] | None = None
) -> list[int]:
    """The region cropped before the spatial augmentation: ``patch_size`` when no affine is drawn, else large
    enough that a patch rotated by up to ``rotate_deg`` (about one axis) and scaled by up to ``max(scale)`` reads
    image, not padding (capped at twice the patch).

    The factor per axis is ``min(max(1, max(scale)) * (cos t + sin t), 2)`` with ``t`` the rotation, capped at
    45 degrees; the random affine then cuts the patch out of this region.

    Args:
        patch_size: the training patch size in voxels, one value per spatial axis.
        preset: the augmentation preset (see :func:`augmentation_settings`).
        overrides: the preset's overrides (``--augment_args``).

    Returns:
        The crop size in voxels, one value per axis (``patch_size`` itself when ``p_affine`` is 0).

    Raises:
        ValueError: the settings are invalid (see :func:`augmentation_settings`).
    """
    cfg = augmentation_settings(preset, overrides)
    if cfg["p_affine"] <= 0:
        return [int(p) for p in patch_size]
    theta = math.radians(min(abs(float(cfg["rotate_deg"])), 45.0))
    factor = min(max(1.0, float(max(cfg["scale"]))) * (math.cos(theta) + math.sin(theta)), 2.0)
    return [int(math.ceil(int(p) * factor)) for p in patch_size]


def augmentations(
    preset: str = "strong",
    overrides: Mapping[str, Any] | None = None,
    patch_size: Sequence[int] = (64, 64, 64),
    map_keys: Mapping[str, str] | None = None,
    image_key: str = "image",
    label_key: str = "label",
) -> list[MapTransform]:
    """The augmentation transforms of ``preset`` (after the random crop; see the module doc). ``map_keys``:
    the loss's label maps ``{forward keyword: data key}`` (:func:`~monai_losses_ext.bundle.loss_map_keys`);
    they follow every spatial transform of the label.

    A transform whose probability is 0 is left out, so ``"none"`` gives an empty list.

    Args:
        preset: the augmentation preset (see :func:`augmentation_settings`).
        overrides: the preset's overrides (``--augment_args``).
        patch_size: the training patch size in voxels; the random affine and the elastic deformation output
            patches of this size (from the larger :func:`crop_size` region).
        map_keys: the loss's label maps ``{forward keyword: data key}``; None: none.
        image_key: the data key of the image (every transform applies to it).
        label_key: the data key of the label (spatial transforms only, nearest-neighbour).

    Returns:
        MONAI dictionary transforms, in the order of the module doc: affine, elastic, one flip per axis, then
        the intensity transforms of the image.

    Raises:
        ValueError: the settings are invalid (see :func:`augmentation_settings`).
    """
    from monai.transforms import (
        Rand3DElasticd,
        RandAdjustContrastd,
        RandAffined,
        RandBiasFieldd,
        RandFlipd,
        RandGaussianNoised,
        RandGaussianSmoothd,
        RandScaleIntensityd,
        RandScaleIntensityFixedMeand,
        RandShiftIntensityd,
        RandSimulateLowResolutiond,
    )

    cfg = augmentation_settings(preset, overrides)
    maps = dict(map_keys or {})
    keys = [image_key, label_key, *maps.values()]
    modes = ["bilinear", "nearest", *("nearest" if kw == "instances" else "bilinear" for kw in maps)]
    patch = [int(p) for p in patch_size]
    out: list = []
    if cfg["p_affine"] > 0:  # (the crop is then larger than the patch: RandAffined also cuts it to the patch)
        rot = math.radians(float(cfg["rotate_deg"]))
        lo, hi = (float(s) - 1.0 for s in cfg["scale"])
        out.append(
            RandAffined(
                keys,
                spatial_size=patch,
                prob=cfg["p_affine"],
                rotate_range=[(-rot, rot)] * 3,
                scale_range=[(lo, hi)] * 3,
                mode=modes,
                padding_mode="border",
                cache_grid=True,
            )
        )
    if cfg["p_elastic"] > 0:
        out.append(
            Rand3DElasticd(
                keys,
                sigma_range=tuple(cfg["elastic_sigma"]),
                magnitude_range=tuple(cfg["elastic_magnitude"]),
                prob=cfg["p_elastic"],
                spatial_size=patch,
                mode=modes,
                padding_mode="border",
            )
        )
    if cfg["p_flip"] > 0:
        out += [RandFlipd(keys, prob=cfg["p_flip"], spatial_axis=int(a)) for a in cfg["flip_axes"]]
    img = image_key
    if cfg["p_noise"] > 0:
        out.append(RandGaussianNoised(img, prob=cfg["p_noise"], mean=0.0, std=float(cfg["noise_std"])))
    if cfg["p_blur"] > 0:
        s = tuple(cfg["blur_sigma"])
        out.append(RandGaussianSmoothd(img, sigma_x=s, sigma_y=s, sigma_z=s, prob=cfg["p_blur"]))
    if cfg["p_brightness"] > 0:
        lo, hi = (float(v) - 1.0 for v in cfg["brightness"])
        out.append(RandScaleIntensityd(img, factors=(lo, hi), prob=cfg["p_brightness"]))
    if cfg["p_contrast"] > 0:
        lo, hi = (float(v) - 1.0 for v in cfg["contrast"])
        out.append(RandScaleIntensityFixedMeand(img, factors=(lo, hi), preserve_range=True, prob=cfg["p_contrast"]))
    if cfg["p_lowres"] > 0:
        out.append(RandSimulateLowResolutiond(img, zoom_range=tuple(cfg["lowres_zoom"]), prob=cfg["p_lowres"]))
    if cfg["p_gamma"] > 0:
        out.append(RandAdjustContrastd(img, gamma=tuple(cfg["gamma"]), retain_stats=True, prob=cfg["p_gamma"]))
    if cfg["p_bias"] > 0:
        out.append(RandBiasFieldd(img, degree=3, coeff_range=tuple(cfg["bias_coeff"]), prob=cfg["p_bias"]))
    if cfg["p_shift"] > 0:
        out.append(RandShiftIntensityd(img, offsets=float(cfg["shift"]), prob=cfg["p_shift"]))
    return out
