"""The anatomy: MNI152 2009c tissue maps read from nilearn's installed package.

nilearn's wheel ships ``mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``
(197 x 233 x 189 voxels, 1 mm, skull-stripped T1, grey- and white-matter
probabilities).  Their licence is not stated, so this package never copies them:
they are located inside the *installed* nilearn at run time and read with nibabel.

From them we derive, once per process:

* brain mask  = T1 > 0 (the template T1 is skull-stripped; holes filled),
* CSF         = clip(brain - GM - WM, 0, 1),
* ventricles  = CSF > 0.5 deeper than 15 mm inside the brain, large components only
  (these are the lateral and third ventricles; used to bias MS-like lesions to the
  periventricular white matter).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

__all__ = ["Atlas", "atlas_paths", "load_atlas"]

_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
_MARGIN_MM = 12  # kept around the brain box when cropping the template


@dataclass(frozen=True)
class Atlas:
    """Tissue probabilities on a 1 mm grid aligned with the world axes (MNI mm).

    ``maps`` is float32 (4, X, Y, Z): GM, WM, CSF, ventricles (each in [0, 1]);
    ``origin`` is the world position (mm) of voxel (0, 0, 0); ``centre`` the world
    centre of the brain's bounding box.

    Attributes:
        maps: float32 ``(4, X, Y, Z)``, read-only: the GM, WM, CSF and ventricle maps of the template,
            cropped to the brain's bounding box plus a 12 mm margin.
        origin: float64 ``(3,)``, world position (MNI mm) of voxel ``(0, 0, 0)`` of ``maps``.
        centre: float64 ``(3,)``, world position (MNI mm) of the centre of the brain's bounding box; the
            output grids of the phantoms are centred on it.
    """

    maps: np.ndarray
    origin: np.ndarray
    centre: np.ndarray


def atlas_paths() -> dict[str, str]:
    """Paths of the three template files inside the installed nilearn package.

    Nothing is downloaded: the files are the ones nilearn's package ships in ``nilearn/datasets/data``.

    Returns:
        ``{"t1": ..., "gm": ..., "wm": ...}``: the paths of the skull-stripped T1 and of the grey- and
            white-matter probability maps (``.nii.gz``, 1 mm).

    Raises:
        ImportError: nilearn is not installed.
        FileNotFoundError: nilearn is installed but one of the three files is missing from it.
    """
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the phantoms read the MNI152 tissue maps shipped inside the nilearn package, "
            "but nilearn is not installed: pip install nilearn "
            "(or pip install 'monai-losses-ext[phantoms]')"
        )
    root = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data")
    paths = {k: os.path.join(root, f) for k, f in _FILES.items()}
    missing = [p for p in paths.values() if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"nilearn is installed but its MNI152 template files are missing: {missing}; "
            "reinstall it with pip install --force-reinstall nilearn"
        )
    return paths


def _read(path: str) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    img = nib.load(path)
    return np.asarray(img.dataobj, dtype=np.float32), img.affine


def _ventricles(brain: np.ndarray, csf: np.ndarray) -> np.ndarray:
    """Deep CSF components (lateral + third ventricles), computed on a 2 mm subgrid."""
    b2, c2 = brain[::2, ::2, ::2], csf[::2, ::2, ::2]
    depth = ndi.distance_transform_edt(b2, sampling=2.0)
    deep = (c2 > 0.5) & (depth > 15.0)
    lab, n = ndi.label(deep)
    if n:
        sizes = ndi.sum(deep, lab, np.arange(1, n + 1)) * 8.0  # mm^3
        deep = np.isin(lab, 1 + np.flatnonzero(sizes >= 1000.0))
    up = deep.repeat(2, 0).repeat(2, 1).repeat(2, 2)[: brain.shape[0], : brain.shape[1], : brain.shape[2]]
    return (up & (csf > 0.5)).astype(np.float32)


@functools.lru_cache(maxsize=1)
def load_atlas() -> Atlas:
    """Read and prepare the template (about 1 s, cached per process).

    Returns:
        The template as an `Atlas`: read-only float32 maps ``(4, X, Y, Z)`` (GM, WM, CSF, ventricles) on
            the template's 1 mm grid cropped around the brain, with their ``origin`` and the brain's
            ``centre`` in world mm. Every call of a process returns the same object.

    Raises:
        ImportError: nilearn or nibabel is not installed.
        FileNotFoundError: the template files are missing from the installed nilearn.
        ValueError: the template's affine is not 1 mm and axis-aligned (another template version).
    """
    paths = atlas_paths()
    t1, affine = _read(paths["t1"])
    gm = _read(paths["gm"])[0] / 255.0
    wm = _read(paths["wm"])[0] / 255.0
    if not np.allclose(affine[:3, :3], np.eye(3)):
        raise ValueError(f"unexpected template affine (expected 1 mm, axis aligned):\n{affine}")
    brain = ndi.binary_fill_holes(t1 > 0)
    csf = np.clip(brain - gm - wm, 0.0, 1.0)
    vent = _ventricles(brain, csf)

    nz = np.argwhere(brain)
    lo = np.maximum(nz.min(0) - _MARGIN_MM, 0)
    hi = np.minimum(nz.max(0) + 1 + _MARGIN_MM, brain.shape)
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    maps = np.stack([gm[crop], wm[crop], csf[crop], vent[crop]]).astype(np.float32)
    origin = affine[:3, 3] + lo
    centre = affine[:3, 3] + (nz.min(0) + nz.max(0)) / 2.0
    maps.setflags(write=False)
    return Atlas(maps=maps, origin=origin.astype(np.float64), centre=centre.astype(np.float64))


@functools.lru_cache(maxsize=4)
def smoothed_maps(sigma_mm: tuple[float, float, float]) -> np.ndarray:
    """Atlas maps low-pass filtered before resampling to a coarser grid (anti-aliasing)."""
    maps = load_atlas().maps
    if max(sigma_mm) <= 0:
        return maps
    out = np.stack([ndi.gaussian_filter(m, sigma_mm, mode="constant", truncate=3.0) for m in maps])
    out.setflags(write=False)
    return out
