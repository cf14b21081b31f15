"""A new subject: deformed template tissues, synthetic contrasts, acquisition artefacts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ._atlas import load_atlas, smoothed_maps
from ._fields import FourierField, Grid

__all__ = ["TISSUE_MEANS", "Subject", "make_subject", "synthesise_contrasts", "apply_artefacts"]

# Mean intensity of (CSF, GM, WM) per contrast, arbitrary units (WM on T1 = 1).
TISSUE_MEANS = {
    "T1": (0.30, 0.65, 1.00),
    "T1c": (0.33, 0.68, 1.00),
    "T2": (1.00, 0.60, 0.45),
    "FLAIR": (0.12, 0.75, 0.55),
}


@dataclass
class Subject:
    """Tissue probabilities of one synthetic subject on the output grid (float32 (X, Y, Z))."""

    grid: Grid
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    ventricles: np.ndarray
    info: dict

    @property
    def parenchyma(self) -> np.ndarray:
        return self.gm + self.wm

    @property
    def brain_mask(self) -> np.ndarray:
        return (self.gm + self.wm + self.csf) >= 0.5


def make_subject(rng: np.random.Generator, grid: Grid, *, rotation_deg=6.0, scale=0.06,
                 shift_mm=3.0, warp_mm=2.5, warp_lengthscale_mm=30.0) -> Subject:
    """Warp the template into a new subject and resample it onto ``grid``.

    Output point y (world mm) reads the template at
    ``x = c + A^-1 (y - c - t) + u(y)``: ``A`` a random rotation (up to ``rotation_deg`` per
    axis) times an anisotropic scaling (``exp(N(0, scale/2))`` per axis, clipped to
    ``1 +- scale``), ``t`` a shift, ``u`` a smooth random displacement (Fourier field,
    standard deviation up to ``warp_mm`` per component).  The template is low-pass filtered
    before resampling to a coarser grid so that its partial volumes stay partial volumes.
    """
    atlas = load_atlas()
    angles = np.deg2rad(rng.uniform(-rotation_deg, rotation_deg, size=3))
    rot = np.eye(3)
    for axis, ang in enumerate(angles):
        c, s = np.cos(ang), np.sin(ang)
        r = np.eye(3)
        i, j = [k for k in range(3) if k != axis]
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        rot = rot @ r
    scales = np.clip(np.exp(rng.normal(0.0, scale / 2.0, size=3)), 1 - scale, 1 + scale)
    shift = rng.uniform(-shift_mm, shift_mm, size=3)
    amp = rng.uniform(0.4, 1.0) * warp_mm
    warps = [FourierField(rng, warp_lengthscale_mm) for _ in range(3)]

    a_inv = np.linalg.inv(rot @ np.diag(scales))
    axes = grid.axes()
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=0).reshape(3, -1)
    src = atlas.centre[:, None] + a_inv @ (pts - atlas.centre[:, None] - shift[:, None])
    for d in range(3):
        src[d] += amp * warps[d].on_axes(axes).ravel() - atlas.origin[d]  # -> template voxel index
    # Anti-aliasing: Gaussian with FWHM^2 = spacing^2 - 1 mm^2 (template at 1 mm).
    sigma = tuple(float(np.sqrt(max(s * s - 1.0, 0.0)) / 2.355) for s in grid.spacing)
    maps = smoothed_maps(sigma)
    out = np.empty((len(maps), *grid.shape), dtype=np.float32)
    for k, m in enumerate(maps):
        out[k] = ndi.map_coordinates(m, src, order=1, mode="constant", cval=0.0).reshape(grid.shape)
    np.clip(out, 0.0, 1.0, out=out)
    info = {
        "rotation_deg": np.rad2deg(angles).round(3).tolist(),
        "scale": scales.round(4).tolist(),
        "shift_mm": shift.round(3).tolist(),
        "warp_mm": round(float(amp), 3),
    }
    return Subject(grid, out[0], out[1], out[2], out[3], info)


def synthesise_contrasts(rng: np.random.Generator, subject: Subject, channels, jitter=0.05):
    """Partial-volume mixture of per-tissue means, jittered per subject.

    Returns (image float32 (C, X, Y, Z), means {channel: (csf, gm, wm)}).
    """
    image = np.empty((len(channels), *subject.grid.shape), dtype=np.float32)
    means = {}
    for c, name in enumerate(channels):
        mu = np.asarray(TISSUE_MEANS[name]) * np.exp(rng.normal(0.0, jitter, size=3))
        means[name] = mu
        image[c] = mu[0] * subject.csf + mu[1] * subject.gm + mu[2] * subject.wm
    return image, means


def apply_artefacts(rng: np.random.Generator, image: np.ndarray, subject: Subject, means: dict,
                    *, bias=0.15, bias_lengthscale_mm=70.0, noise=(0.01, 0.04), blur=(0.3, 0.6)) -> dict:
    """In place: multiplicative bias field, blur (PSF), Rician noise, skull strip, gain.

    Per channel: ``exp(b(x))`` with ``b`` a smooth field of std up to ``bias``; a Gaussian
    blur of ``blur`` voxels (same for all channels); Rician noise
    ``sqrt((I + s n1)^2 + (s n2)^2)`` with ``s`` a fraction ``noise`` of the channel's brightest
    tissue; voxels outside the brain mask set to 0 (skull-stripped, like BraTS/MSD);
    a random gain ``exp(U(-0.2, 0.2))``.
    """
    grid = subject.grid
    axes = grid.axes()
    mask = subject.brain_mask
    sigma_blur = float(rng.uniform(*blur))
    info = {"blur_vox": round(sigma_blur, 3), "bias_std": [], "noise_sigma": [], "gain": []}
    for c, name in enumerate(means):
        strength = float(rng.uniform(0.3, 1.0) * bias)
        field = FourierField(rng, bias_lengthscale_mm).on_axes(axes)
        sd = float(rng.uniform(*noise) * max(means[name]))
        gain = float(np.exp(rng.uniform(-0.2, 0.2)))
        n1 = rng.standard_normal(grid.shape, dtype=np.float32)
        n2 = rng.standard_normal(grid.shape, dtype=np.float32)
        x = image[c] * np.exp(strength * field)
        x = ndi.gaussian_filter(x, sigma_blur, truncate=3.0)
        x = np.sqrt((x + sd * n1) ** 2 + (sd * n2) ** 2)
        x[~mask] = 0.0
        image[c] = gain * x
        info["bias_std"].append(round(strength, 4))
        info["noise_sigma"].append(round(sd * gain, 5))
        info["gain"].append(round(gain, 4))
    return info
