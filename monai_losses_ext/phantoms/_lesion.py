"""MS-like white-matter lesions: many small ovoids (or irregular, confluent, elongated
shapes), mostly periventricular."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ._fields import Grid, random_rotation
from ._site import SITE_DEFAULTS
from ._subject import Subject

__all__ = ["LESION_DEFAULTS", "insert_ms_lesions"]

LESION_DEFAULTS = dict(
    n_lesions=(1, 25),  # inclusive range of the lesion count of a non-empty case
    empty_fraction=0.1,  # probability that a case has no lesion at all
    volume_median_mm3=50.0,  # log-normal volume: median ...
    volume_sigma=1.1,  # ... and sigma of log(volume)
    volume_range_mm3=(5.0, 3000.0),
    supersampling=4,  # sub-samples per voxel and axis for the occupancy
)
"""The lesion task's options and their defaults.

* ``n_lesions``: inclusive ``(lo, hi)`` range of the lesion count of a non-empty case (or one int);
* ``empty_fraction``: probability that a case has no lesion at all, in ``[0, 1]``;
* ``volume_median_mm3`` and ``volume_sigma``: the log-normal lesion volume, its median (mm³) and the sigma of
  its log;
* ``volume_range_mm3``: ``(min, max)`` mm³ the volumes are truncated to;
* ``supersampling``: sub-samples per voxel and axis for the partial-volume occupancy.
"""

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


def _quadratic_form(coords, centre, axes_mm, rot) -> np.ndarray:
    """(x - c)^T M (x - c) with M = R diag(1/a^2) R^T on the grid spanned by three 1-D arrays."""
    m = rot @ np.diag(1.0 / axes_mm**2) @ rot.T
    d = [c - c0 for c, c0 in zip(coords, centre)]
    return (
        m[0, 0] * d[0][:, None, None] ** 2
        + m[1, 1] * d[1][None, :, None] ** 2
        + m[2, 2] * d[2][None, None, :] ** 2
        + 2 * m[0, 1] * d[0][:, None, None] * d[1][None, :, None]
        + 2 * m[0, 2] * d[0][:, None, None] * d[2][None, None, :]
        + 2 * m[1, 2] * d[1][None, :, None] * d[2][None, None, :]
    )


def _fine_coords(grid: Grid, box, s: int):
    ax = grid.axes(box)
    sub = (np.arange(s) + 0.5) / s - 0.5  # sub-voxel offsets in voxel units
    return ax, [(a[:, None] + sp * sub[None, :]).ravel() for a, sp in zip(ax, grid.spacing)]


def _ellipsoid_occupancy(grid: Grid, centre, axes_mm, rot, s: int):
    """Supersampled occupancy of an ellipsoid: (index box, float32 fraction per voxel)."""
    return _union_occupancy(grid, centre, [(np.zeros(3), axes_mm, rot)], s)


def _union_occupancy(grid: Grid, centre, comps, s: int):
    """Supersampled occupancy of a union of ellipsoids ``(offset_mm, axes_mm, rot)`` around
    ``centre``: (index box, float32 fraction per voxel)."""
    reach = max(float(np.linalg.norm(o)) + a.max() for o, a, _ in comps)
    box = grid.box_around(centre, reach + max(grid.spacing))
    ax, coords = _fine_coords(grid, box, s)
    inside = None
    for o, a, r in comps:
        q = _quadratic_form(coords, np.asarray(centre) + o if o.any() else centre, a, r) <= 1.0
        inside = q if inside is None else inside | q
    inside = inside.reshape(len(ax[0]), s, len(ax[1]), s, len(ax[2]), s)
    return box, inside.mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)


def _unit_axes(elong: float, asym: float = 1.0) -> np.ndarray:
    """Semi-axes of a unit-volume-radius ellipsoid (volume 4/3 pi) with that elongation."""
    return np.array([elong ** (2 / 3), elong ** (-1 / 3) * asym, elong ** (-1 / 3) / asym])


def _union_volume(comps, n: int = 48) -> float:
    """Volume of a union of ellipsoids (offset, axes, rot), midpoint rule on an n^3 lattice."""
    reach = max(float(np.linalg.norm(o)) + a.max() for o, a, _ in comps)
    t = -reach + (np.arange(n) + 0.5) * (2 * reach / n)
    inside = np.zeros((n, n, n), dtype=bool)
    for o, a, r in comps:
        inside |= _quadratic_form([t, t, t], o, a, r) <= 1.0
    return float(inside.mean()) * (2 * reach) ** 3


def _components(rng: np.random.Generator, shape: str, main_axes: np.ndarray) -> list:
    """The ellipsoids of an ``irregular`` / ``confluent`` lesion in its unit frame (the main
    ellipsoid: offset 0, ``main_axes``, identity), as (offset, axes, rot) triples.

    Each extra ellipsoid is centred in a random direction ``u`` from a parent ellipsoid's
    centre, at ``f`` times the parent's radius along ``u`` (its surface for f = 1), so the
    union is connected:

    * irregular: 2-4 ellipsoids; the extra ones are 0.4-0.7 of the main size, centred at
      f = 0.9-1.15 from the main one (lobes at about the main radius);
    * confluent: 3-7 ellipsoids of 0.55-0.9 of the main size, each centred at f = 0.9-1.15 from
      a randomly chosen earlier one (merged plaques spread over about two radii).
    """
    comps = [(np.zeros(3), main_axes, np.eye(3))]
    n = int(rng.integers(2, 5)) if shape == "irregular" else int(rng.integers(3, 8))
    for _ in range(n - 1):
        if shape == "irregular":
            parent, size, f = comps[0], rng.uniform(0.4, 0.7), rng.uniform(0.9, 1.15)
        else:
            parent = comps[int(rng.integers(len(comps)))]
            size, f = rng.uniform(0.55, 0.9), rng.uniform(0.9, 1.15)
        u = rng.normal(size=3)
        u /= np.linalg.norm(u)
        p_off, p_axes, p_rot = parent
        local = p_rot.T @ u
        radius = 1.0 / np.sqrt(np.sum((local / p_axes) ** 2))  # parent's surface along u
        comps.append((p_off + f * radius * u, size * _unit_axes(rng.uniform(1.0, 2.0)), random_rotation(rng)))
    return comps


def insert_ms_lesions(
    rng: np.random.Generator,
    subject: Subject,
    image: np.ndarray,
    means: dict,
    channels,
    opts: dict,
    *,
    shapes=SITE_DEFAULTS["lesion_shapes"],
    lesion_contrast=SITE_DEFAULTS["lesion_contrast"],
    rng_shape: np.random.Generator | None = None,
) -> tuple[np.ndarray, dict]:
    """Place non-touching lesions; blend them into ``image`` in place; return (label, info).

    Centres are drawn with weight ``WM^2 * (3 exp(-d_vent / 8 mm) + 0.1)`` (periventricular
    and deep white matter); near the ventricles the long axis points away from them
    (Dawson's fingers).  A placement is rejected and redrawn when its support, grown by one
    voxel, touches another lesion's support, when it leaves the grid, when less than 70 % of
    it lies in GM+WM, or when its label (occupancy >= 0.5) is empty or not one 26-connected
    component; hence every lesion is exactly one connected component of the label.

    ``shapes``: each lesion's shape is drawn uniformly from it (with ``rng_shape``, so the
    default ``("ovoid",)`` draws nothing): "ovoid" (elongation 1-2), "irregular" and
    "confluent" (unions of ellipsoids, see :func:`_components`, scaled to the drawn volume,
    confluent ones to 2-4 times it, at most ``volume_range_mm3[1]``), "elongated"
    (elongation 2.5-4, long axis along the gradient of the distance to the ventricles, i.e.
    perpendicular to the ventricle wall, wherever there are ventricles).
    ``lesion_contrast`` k scales the lesion's deviation from WM: intensity
    ``WM (1 + k (u - 1))`` with ``u`` the per-lesion ratio (e.g. FLAIR 1.7-2.3), at least
    0.05 WM.
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
    shapes = tuple(shapes)
    if len(shapes) > 1 or shapes[0] != "ovoid":
        if rng_shape is None:
            raise ValueError("lesion shapes other than 'ovoid' need rng_shape")

    for _ in range(n_req):
        volume = _volume(rng, opts["volume_median_mm3"], opts["volume_sigma"], vmin, vmax)
        shape = shapes[0] if len(shapes) == 1 else shapes[int(rng_shape.integers(len(shapes)))]
        target = volume
        if shape == "confluent":
            target = min(volume * float(rng_shape.uniform(2.0, 4.0)), vmax)
        for attempt in range(500):  # noqa: B007 (the count is reported after the loop)
            idx = np.unravel_index(int(np.searchsorted(cdf, rng.uniform(0.0, cdf[-1]), side="right")), grid.shape)
            centre = grid.world(np.asarray(idx) + rng.uniform(-0.5, 0.5, size=3))
            r = (3.0 * volume / (4.0 * np.pi)) ** (1.0 / 3.0)
            elong, asym = rng.uniform(1.0, 2.0), rng.uniform(0.85, 1.15)
            if shape == "elongated":
                elong = 2.5 + 1.5 * (elong - 1.0)  # U(2.5, 4) from the same draw
            axes_mm = r * np.array([elong ** (2 / 3), elong ** (-1 / 3) * asym, elong ** (-1 / 3) / asym])
            periventricular = bool(d_vent[idx] < 10.0)
            direction = None
            if periventricular or (shape == "elongated" and np.isfinite(d_vent[idx])):
                g = np.array([_diff(d_vent, idx, d) for d in range(3)]) / np.asarray(grid.spacing)
                if np.linalg.norm(g) > 1e-6:
                    if shape == "elongated":  # always along the gradient, +-0.1 rad or so
                        jitter = (
                            0.4 * rng.normal(0.0, 0.25, size=3)
                            if periventricular
                            else rng_shape.normal(0.0, 0.1, size=3)
                        )
                        direction = g / np.linalg.norm(g) + jitter
                    else:
                        direction = g / np.linalg.norm(g) + rng.normal(0.0, 0.25, size=3)
            rot = random_rotation(rng, direction)
            if shape in ("irregular", "confluent"):
                unit = _components(rng_shape, shape, axes_mm / r)
                scale = r * (target / (r**3 * _union_volume(unit))) ** (1.0 / 3.0)
                comps = [(scale * (rot @ o), scale * a, rot @ q) for o, a, q in unit]
                axes_mm = comps[0][1]
                box, f = _union_occupancy(grid, centre, comps, s)
            else:
                comps = None
                box, f = _ellipsoid_occupancy(grid, centre, axes_mm, rot, s)
            if f[[0, -1], :, :].any() or f[:, [0, -1], :].any() or f[:, :, [0, -1]].any():
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
            if lesion_contrast == 1.0:
                values[name] = float(wm_ref[name] * rng.uniform(lo, hi))
            else:
                u = rng.uniform(lo, hi)
                values[name] = float(wm_ref[name] * max(1.0 + lesion_contrast * (u - 1.0), 0.05))
            image[c][box] = (1.0 - f) * image[c][box] + f * values[name]
        info["lesions"].append(
            {
                "shape": shape,
                "components": 1 if comps is None else len(comps),
                "elongation": round(float(elong), 3),
                "centre_mm": np.round(centre, 2).tolist(),
                "axes_mm": np.round(axes_mm, 3).tolist(),
                "volume_mm3": round(4.0 / 3.0 * np.pi * float(np.prod(axes_mm)) if comps is None else target, 3),
                "intensity_vs_wm": {name: round(values[name] / wm_ref[name], 4) for name in channels},
                "label_volume_mm3": round(float(lab.sum()) * grid.voxel_volume, 3),
                "partial_volume_mm3": round(float(f.sum()) * grid.voxel_volume, 3),
                "periventricular": periventricular,
                "attempts": attempt + 1,
            }
        )
    info["n_lesions"] = len(info["lesions"])
    return label, info


def _diff(a: np.ndarray, idx, axis: int) -> float:
    """Central difference of ``a`` at ``idx`` along ``axis`` (one-sided at the border)."""
    lo, hi = list(idx), list(idx)
    lo[axis] = max(idx[axis] - 1, 0)
    hi[axis] = min(idx[axis] + 1, a.shape[axis] - 1)
    span = hi[axis] - lo[axis]
    return float(a[tuple(hi)] - a[tuple(lo)]) / span if span else 0.0
