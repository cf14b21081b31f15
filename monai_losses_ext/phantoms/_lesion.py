"""MS-like white-matter lesions: many small ovoids, mostly periventricular."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ._fields import Grid, random_rotation
from ._subject import Subject

__all__ = ["LESION_DEFAULTS", "insert_ms_lesions"]

LESION_DEFAULTS = dict(
    n_lesions=(1, 25),          # inclusive range of the lesion count of a non-empty case
    empty_fraction=0.1,         # probability that a case has no lesion at all
    volume_median_mm3=50.0,     # log-normal volume: median ...
    volume_sigma=1.1,           # ... and sigma of log(volume)
    volume_range_mm3=(5.0, 3000.0),
    supersampling=4,            # sub-samples per voxel and axis for the occupancy
)

_STRUCT26 = np.ones((3, 3, 3), dtype=bool)
# Per-lesion intensity relative to the subject's white matter: (low, high) per channel.
_LESION_VS_WM = {"FLAIR": (1.7, 2.3), "T1": (0.55, 0.85), "T2": (1.8, 2.2), "T1c": (0.55, 0.85)}


def _n_lesions(rng, n_lesions, empty_fraction) -> int:
    if np.isscalar(n_lesions):
        lo = hi = int(n_lesions)
    else:
        lo, hi = (int(v) for v in n_lesions)
    if lo < 0 or hi < lo:
        raise ValueError(f"n_lesions must be an int >= 0 or a range (lo, hi) with 0 <= lo <= hi, got {n_lesions!r}")
    if not 0.0 <= empty_fraction <= 1.0:
        raise ValueError(f"empty_fraction must lie in [0, 1], got {empty_fraction!r}")
    if rng.random() < empty_fraction:
        return 0
    return int(rng.integers(lo, hi + 1))


def _volume(rng, median, sigma, vmin, vmax) -> float:
    """Log-normal volume truncated to [vmin, vmax] by rejection."""
    for _ in range(1000):
        v = float(np.exp(rng.normal(np.log(median), sigma)))
        if vmin <= v <= vmax:
            return v
    return float(np.clip(median, vmin, vmax))


def _ellipsoid_occupancy(grid: Grid, centre, axes_mm, rot, s: int):
    """Supersampled occupancy of an ellipsoid: (index box, float32 fraction per voxel)."""
    box = grid.box_around(centre, axes_mm.max() + max(grid.spacing))
    ax = grid.axes(box)
    sub = (np.arange(s) + 0.5) / s - 0.5  # sub-voxel offsets in voxel units
    coords = [(a[:, None] + sp * sub[None, :]).ravel() for a, sp in zip(ax, grid.spacing)]
    # Quadratic form (x - c)^T M (x - c) with M = R diag(1/a^2) R^T, evaluated on the fine grid.
    m = rot @ np.diag(1.0 / axes_mm**2) @ rot.T
    d = [c - c0 for c, c0 in zip(coords, centre)]
    q = (
        m[0, 0] * d[0][:, None, None] ** 2
        + m[1, 1] * d[1][None, :, None] ** 2
        + m[2, 2] * d[2][None, None, :] ** 2
        + 2 * m[0, 1] * d[0][:, None, None] * d[1][None, :, None]
        + 2 * m[0, 2] * d[0][:, None, None] * d[2][None, None, :]
        + 2 * m[1, 2] * d[1][None, :, None] * d[2][None, None, :]
    )
    inside = (q <= 1.0).reshape(len(ax[0]), s, len(ax[1]), s, len(ax[2]), s)
    return box, inside.mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)


def insert_ms_lesions(rng: np.random.Generator, subject: Subject, image: np.ndarray, means: dict,
                      channels, opts: dict) -> tuple[np.ndarray, dict]:
    """Place non-touching ovoid lesions; blend them into ``image`` in place; return (label, info).

    Centres are drawn with weight ``WM^2 * (3 exp(-d_vent / 8 mm) + 0.1)`` (periventricular
    and deep white matter); near the ventricles the long axis points away from them
    (Dawson's fingers).  A placement is rejected and redrawn when its support, grown by one
    voxel, touches another lesion's support, when it leaves the grid, when less than 70 % of
    it lies in GM+WM, or when its label (occupancy >= 0.5) is empty or not one 26-connected
    component; hence every lesion is exactly one connected component of the label.
    """
    grid = subject.grid
    n_req = _n_lesions(rng, opts["n_lesions"], opts["empty_fraction"])
    label = np.zeros(grid.shape, dtype=np.uint8)
    info = {"n_requested": n_req, "n_lesions": 0, "lesions": []}
    if n_req == 0:
        return label, info

    vent = subject.ventricles >= 0.5
    if vent.any():
        d_vent = ndi.distance_transform_edt(~vent, sampling=grid.spacing).astype(np.float32)
    else:
        d_vent = np.full(grid.shape, np.inf, dtype=np.float32)
    weight = subject.wm.astype(np.float64) ** 2 * (3.0 * np.exp(-d_vent / 8.0) + 0.1)
    weight[subject.parenchyma < 0.5] = 0.0
    cdf = np.cumsum(weight.ravel())
    if cdf[-1] <= 0:
        raise ValueError("the grid holds no white matter: enlarge `shape` or use a finer `spacing`")
    parenchyma = subject.parenchyma
    wm_ref = {name: means[name][2] for name in channels}
    vmin = max(opts["volume_range_mm3"][0], grid.voxel_volume)
    vmax = opts["volume_range_mm3"][1]
    occupied = np.zeros(grid.shape, dtype=bool)  # supports of placed lesions, grown by one voxel
    s = int(opts["supersampling"])

    for _ in range(n_req):
        volume = _volume(rng, opts["volume_median_mm3"], opts["volume_sigma"], vmin, vmax)
        for attempt in range(500):
            idx = np.unravel_index(int(np.searchsorted(cdf, rng.uniform(0.0, cdf[-1]), side="right")), grid.shape)
            centre = grid.world(np.asarray(idx) + rng.uniform(-0.5, 0.5, size=3))
            r = (3.0 * volume / (4.0 * np.pi)) ** (1.0 / 3.0)
            elong, asym = rng.uniform(1.0, 2.0), rng.uniform(0.85, 1.15)
            axes_mm = r * np.array([elong ** (2 / 3), elong ** (-1 / 3) * asym, elong ** (-1 / 3) / asym])
            periventricular = bool(d_vent[idx] < 10.0)
            direction = None
            if periventricular:
                g = np.array([_diff(d_vent, idx, d) for d in range(3)]) / np.asarray(grid.spacing)
                if np.linalg.norm(g) > 1e-6:
                    direction = g / np.linalg.norm(g) + rng.normal(0.0, 0.25, size=3)
            rot = random_rotation(rng, direction)
            box, f = _ellipsoid_occupancy(grid, centre, axes_mm, rot, s)
            if (f[[0, -1], :, :].any() or f[:, [0, -1], :].any() or f[:, :, [0, -1]].any()):
                continue  # clipped by the grid border
            support = f > 0
            if (occupied[box] & support).any():
                continue
            if float((f * parenchyma[box]).sum()) < 0.7 * float(f.sum()):
                continue
            lab = f >= 0.5
            if not lab.any() or ndi.label(lab, _STRUCT26)[1] != 1:
                continue
            break
        else:
            continue  # could not place this lesion; reported by n_lesions < n_requested
        occupied[box] |= ndi.binary_dilation(support, _STRUCT26)
        label[box][lab] = 1
        values = {}
        for c, name in enumerate(channels):
            lo, hi = _LESION_VS_WM[name]
            values[name] = float(wm_ref[name] * rng.uniform(lo, hi))
            image[c][box] = (1.0 - f) * image[c][box] + f * values[name]
        info["lesions"].append({
            "centre_mm": np.round(centre, 2).tolist(),
            "axes_mm": np.round(axes_mm, 3).tolist(),
            "volume_mm3": round(4.0 / 3.0 * np.pi * float(np.prod(axes_mm)), 3),
            "label_volume_mm3": round(float(lab.sum()) * grid.voxel_volume, 3),
            "partial_volume_mm3": round(float(f.sum()) * grid.voxel_volume, 3),
            "periventricular": periventricular,
            "attempts": attempt + 1,
        })
    info["n_lesions"] = len(info["lesions"])
    return label, info


def _diff(a: np.ndarray, idx, axis: int) -> float:
    """Central difference of ``a`` at ``idx`` along ``axis`` (one-sided at the border)."""
    lo, hi = list(idx), list(idx)
    lo[axis] = max(idx[axis] - 1, 0)
    hi[axis] = min(idx[axis] + 1, a.shape[axis] - 1)
    span = hi[axis] - lo[axis]
    return float(a[tuple(hi)] - a[tuple(lo)]) / span if span else 0.0
