"""A new subject: deformed template tissues, synthetic contrasts, acquisition artefacts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.special import ndtr

from ._atlas import load_atlas, smoothed_maps
from ._fields import FourierField, Grid
from ._site import SITE_DEFAULTS

__all__ = [
    "TISSUE_MEANS",
    "HEAD_MEANS",
    "HEAD_THICKNESS_MM",
    "Subject",
    "make_subject",
    "synthesise_contrasts",
    "synthesise_head",
    "apply_artefacts",
]

# Mean intensity of (CSF, GM, WM) per contrast, arbitrary units (WM on T1 = 1).
TISSUE_MEANS = {
    "T1": (0.30, 0.65, 1.00),
    "T1c": (0.33, 0.68, 1.00),
    "T2": (1.00, 0.60, 0.45),
    "FLAIR": (0.12, 0.75, 0.55),
}
"""Mean intensity of (CSF, GM, WM) per contrast, arbitrary units (WM on T1 = 1), before the per-subject jitter."""
# Mean intensity of (skull, scalp fat) per contrast, same units; used with ``skull_strip=False``.
# Cortical bone is dark on every sequence; fat is bright on T1 and moderately bright on
# (fast spin echo) T2 and FLAIR.
HEAD_MEANS = {
    "T1": (0.10, 1.30),
    "T1c": (0.11, 1.30),
    "T2": (0.08, 0.95),
    "FLAIR": (0.06, 0.85),
}
"""Mean intensity of (skull, scalp fat) per contrast, same units as ``TISSUE_MEANS``; used without skull
stripping (``skull_strip=False``)."""
# Thickness ranges (mm) of the skull and scalp shells; smooth random fields (40 mm length
# scale) map into them, so each subject's thickness varies around the head.
HEAD_THICKNESS_MM = {"skull": (4.0, 7.0), "scalp": (4.0, 8.0)}
_HEAD_LENGTHSCALE_MM = 40.0


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


def make_subject(
    rng: np.random.Generator,
    grid: Grid,
    *,
    rotation_deg=6.0,
    scale=0.06,
    shift_mm=3.0,
    warp_mm=2.5,
    warp_lengthscale_mm=30.0,
) -> Subject:
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


def synthesise_contrasts(
    rng: np.random.Generator,
    subject: Subject,
    channels,
    jitter=SITE_DEFAULTS["contrast_jitter"],
    contrast=SITE_DEFAULTS["tissue_contrast"],
):
    """Partial-volume mixture of per-tissue means, jittered per subject.

    ``contrast`` scales the differences of the (CSF, GM, WM) table means around their mean per
    channel (1: the table); then each mean is multiplied by ``exp(N(0, jitter))``.
    Returns (image float32 (C, X, Y, Z), means {channel: (csf, gm, wm)}).
    """
    image = np.empty((len(channels), *subject.grid.shape), dtype=np.float32)
    means = {}
    for c, name in enumerate(channels):
        table = np.asarray(TISSUE_MEANS[name])
        if contrast != 1.0:
            table = table.mean() + contrast * (table - table.mean())
        mu = table * np.exp(rng.normal(0.0, jitter, size=3))
        means[name] = mu
        image[c] = mu[0] * subject.csf + mu[1] * subject.gm + mu[2] * subject.wm
    return image, means


def synthesise_head(
    rng: np.random.Generator, image: np.ndarray, subject: Subject, channels, jitter=SITE_DEFAULTS["contrast_jitter"]
) -> dict:
    """In place: a dark skull shell and a bright scalp (fat) shell around the brain mask.

    ``d`` = distance (mm) outside the brain mask's surface (Euclidean distance transform minus
    half a voxel); skull where ``0 < d <= t_skull``, scalp where
    ``t_skull < d <= t_skull + t_scalp``, air beyond; ``t = lo + (hi - lo) Phi(f)`` with ``f``
    a smooth unit-variance field, ``Phi`` the normal CDF and (lo, hi) from
    :data:`HEAD_THICKNESS_MM`.  Shell boundaries get a linear partial-volume falloff of one
    voxel, and the shells fill the part of each voxel that is not brain tissue
    (``1 - CSF - GM - WM``).  Means from :data:`HEAD_MEANS`, jittered like the tissues.
    """
    grid = subject.grid
    axes = grid.axes()
    h = float(np.mean(grid.spacing))
    d = ndi.distance_transform_edt(~subject.brain_mask, sampling=grid.spacing).astype(np.float32) - 0.5 * h
    thick = {}
    for part, (lo, hi) in HEAD_THICKNESS_MM.items():
        f = FourierField(rng, _HEAD_LENGTHSCALE_MM).on_axes(axes)
        thick[part] = (lo + (hi - lo) * ndtr(f)).astype(np.float32)
    outer_skull = thick["skull"]
    outer_scalp = thick["skull"] + thick["scalp"]
    f_in_skull = np.clip(0.5 - (d - outer_skull) / h, 0.0, 1.0)
    f_in_scalp = np.clip(0.5 - (d - outer_scalp) / h, 0.0, 1.0)
    rest = np.clip(1.0 - (subject.csf + subject.gm + subject.wm), 0.0, 1.0)
    f_skull, f_scalp = rest * f_in_skull, rest * (f_in_scalp - f_in_skull)
    info = {
        "skull_mm": [round(float(thick["skull"].min()), 2), round(float(thick["skull"].max()), 2)],
        "scalp_mm": [round(float(thick["scalp"].min()), 2), round(float(thick["scalp"].max()), 2)],
        "means": {},
    }
    for c, name in enumerate(channels):
        mu = np.asarray(HEAD_MEANS[name]) * np.exp(rng.normal(0.0, jitter, size=2))
        image[c] += mu[0] * f_skull + mu[1] * f_scalp
        info["means"][name] = np.round(mu, 4).tolist()
    return info


def apply_artefacts(
    rng: np.random.Generator,
    image: np.ndarray,
    subject: Subject,
    means: dict,
    *,
    bias=SITE_DEFAULTS["bias"],
    bias_lengthscale_mm=70.0,
    noise=SITE_DEFAULTS["noise"],
    blur=SITE_DEFAULTS["blur"],
    log_gain=SITE_DEFAULTS["log_gain"],
    slice_thickness_mm=SITE_DEFAULTS["slice_thickness_mm"],
    skull_strip=SITE_DEFAULTS["skull_strip"],
) -> dict:
    """In place: multiplicative bias field, blur (PSF and slice profile), Rician noise, skull
    strip, gain.

    Per channel: ``exp(b(x))`` with ``b`` a smooth field of std up to ``bias``; a Gaussian
    blur of ``blur`` voxels (same for all channels); with ``slice_thickness_mm`` = T larger
    than the spacing ``s_z`` along axis 2, an extra Gaussian along axis 2 of
    FWHM ``sqrt(T^2 - s_z^2)``, so that with the resampling's anti-aliasing
    (FWHM^2 = s_z^2 - 1 mm^2 on a 1 mm template) the slice profile has FWHM T (T < s_z, slice
    gaps, is not modelled: the profile is then s_z); Rician noise
    ``sqrt((I + s n1)^2 + (s n2)^2)`` with ``s`` a fraction ``noise`` of the channel's brightest
    tissue; with ``skull_strip`` voxels outside the brain mask set to 0 (like BraTS/MSD);
    a random gain ``exp(U(*log_gain))``.
    """
    grid = subject.grid
    axes = grid.axes()
    mask = subject.brain_mask
    sigma_blur = float(rng.uniform(*blur))
    info = {"blur_vox": round(sigma_blur, 3), "bias_std": [], "noise_sigma": [], "gain": []}
    sigma = sigma_blur
    if slice_thickness_mm is not None:
        sz = grid.spacing[2]
        extra_vox = np.sqrt(max(slice_thickness_mm**2 - sz**2, 0.0)) / 2.355 / sz
        if extra_vox > 0:
            sigma = (sigma_blur, sigma_blur, float(np.hypot(sigma_blur, extra_vox)))
        info["slice_fwhm_mm"] = round(float(max(slice_thickness_mm, sz)), 3)
    for c, name in enumerate(means):
        strength = float(rng.uniform(0.3, 1.0) * bias)
        field = FourierField(rng, bias_lengthscale_mm).on_axes(axes)
        sd = float(rng.uniform(*noise) * max(means[name]))
        gain = float(np.exp(rng.uniform(*log_gain)))
        n1 = rng.standard_normal(grid.shape, dtype=np.float32)
        n2 = rng.standard_normal(grid.shape, dtype=np.float32)
        x = image[c] * np.exp(strength * field)
        x = ndi.gaussian_filter(x, sigma, truncate=3.0)
        x = np.sqrt((x + sd * n1) ** 2 + (sd * n2) ** 2)
        if skull_strip:
            x[~mask] = 0.0
        image[c] = gain * x
        info["bias_std"].append(round(strength, 4))
        info["noise_sigma"].append(round(sd * gain, 5))
        info["gain"].append(round(gain, 4))
    return info
