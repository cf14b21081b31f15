"""Glioma-like tumours with BraTS labels: 1 necrotic core, 2 oedema, 3 enhancing tumour."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ._fields import FourierField, falloff_occupancy, random_rotation
from ._site import SITE_DEFAULTS
from ._subject import Subject

__all__ = ["TUMOUR_DEFAULTS", "insert_tumour"]

TUMOUR_DEFAULTS = dict(
    core_radius_mm=(10.0, 22.0),  # mean radius of the tumour core (enhancing rim + necrosis)
    oedema_extent_mm=(6.0, 20.0),  # reach of the oedema beyond the core, before the WM bias
    rim_mm=(2.5, 7.0),  # mean thickness of the enhancing rim around the necrosis
    p_no_necrosis=0.15,  # probability of a core without necrosis
)
"""The tumour task's options and their defaults.

* ``core_radius_mm``: ``(lo, hi)`` range of the mean radius of the tumour core (enhancing rim + necrosis);
* ``oedema_extent_mm``: ``(lo, hi)`` range of the oedema's reach beyond the core, before the WM bias;
* ``rim_mm``: ``(lo, hi)`` range of the mean thickness of the enhancing rim around the necrosis;
* ``p_no_necrosis``: probability of a core without necrosis.
"""

_STRUCT26 = np.ones((3, 3, 3), dtype=bool)
# Intensity of each compartment relative to the subject's white matter, per channel.
_COMPARTMENTS = {
    #            T1    T1c   T2    FLAIR
    "oedema": {"T1": 0.62, "T1c": 0.64, "T2": 2.00, "FLAIR": 1.90},
    "enhancing": {"T1": 0.55, "T1c": 1.60, "T2": 1.70, "FLAIR": 1.55},
    "necrosis": {"T1": 0.30, "T1c": 0.32, "T2": 2.20, "FLAIR": 0.85},
}


def insert_tumour(
    rng: np.random.Generator,
    subject: Subject,
    image: np.ndarray,
    means: dict,
    channels,
    opts: dict,
    *,
    lesion_contrast=SITE_DEFAULTS["lesion_contrast"],
) -> tuple[np.ndarray, dict]:
    """Grow one tumour; blend it into ``image`` in place; return (label, info).

    ``lesion_contrast`` k scales each compartment's deviation from WM: a compartment at
    ``v`` times WM becomes ``1 + k (v - 1)`` times WM (at least 0.05).

    Geometry as signed-distance-like fields (mm, negative inside):

    * core      ``(rho - 1 - 0.2 n1) R``, ``rho`` the ellipsoidal radius, ``n1`` smooth noise;
    * necrosis  the core shrunk by an irregular rim ``t (1 + 0.4 n2)`` (``t`` the rim thickness);
    * oedema    ``s = 1 - d/L + 1.2 (WM - 0.5) - 2 CSF + 0.35 n3 > 0`` (d the distance outside
      the core, L the extent), so it reaches ~1.6 L in white matter and ~0.4 L in grey
      matter; whole tumour = core + a shell of max(3 mm, 1.8 voxels) + oedema;
    * everything is intersected with the parenchyma (GM + WM >= 0.5).

    Occupancies come from :func:`falloff_occupancy`, then are forced to nest
    (f_necrosis <= f_core <= f_whole); necrosis is kept one voxel away from the core border
    and oedema islands that do not touch the core are removed.  Labels: whole tumour
    f_whole >= 0.5, core f_core >= 0.5, necrosis f_necrosis >= 0.5.
    """
    grid = subject.grid
    spacing = np.asarray(grid.spacing)
    brain = subject.brain_mask
    depth = ndi.distance_transform_edt(brain, sampling=grid.spacing)
    wm_ref = {name: means[name][2] for name in channels}

    for attempt in range(50):  # noqa: B007 (the count is reported after the loop)
        r_core = rng.uniform(*opts["core_radius_mm"])
        extent = rng.uniform(*opts["oedema_extent_mm"])
        axes_mm = r_core * np.exp(rng.normal(0.0, 0.15, size=3))
        rot = random_rotation(rng)
        rim = rng.uniform(*opts["rim_mm"])
        has_necrosis = bool(rng.random() >= opts["p_no_necrosis"])
        noises = [FourierField(rng, ls) for ls in (0.6 * r_core, 10.0, 12.0, 8.0, 8.0, 8.0)]
        weight = subject.wm.astype(np.float64) ** 2 * (depth > min(r_core + 5.0, 25.0))
        if weight.sum() <= 0:
            weight = subject.wm.astype(np.float64) ** 2
        cdf = np.cumsum(weight.ravel())
        idx = np.unravel_index(int(np.searchsorted(cdf, rng.uniform(0.0, cdf[-1]), side="right")), grid.shape)
        centre = grid.world(np.asarray(idx) + rng.uniform(-0.5, 0.5, size=3))

        reach = 1.3 * axes_mm.max() + 2.7 * extent + 2.0 * spacing.max()
        box = grid.box_around(centre, reach)
        ax = grid.axes(box)
        n1, n2, n3, *tex = (nf.on_axes(ax) for nf in noises)
        d = np.meshgrid(*[a - c for a, c in zip(ax, centre)], indexing="ij")
        local = np.einsum("ij,j...->i...", rot.T, np.stack(d)) / axes_mm[:, None, None, None]
        rho = np.sqrt((local**2).sum(0)).astype(np.float32)

        gm, wm, csf = subject.gm[box], subject.wm[box], subject.csf[box]
        phi_par = (0.5 - (gm + wm)) * 4.0
        d_core = (rho - 1.0 - 0.2 * n1) * r_core
        s = 1.0 - np.maximum(d_core, 0.0) / extent + 1.2 * (wm - 0.5) - 2.0 * csf + 0.35 * n3
        phi_core = np.maximum(d_core, phi_par)
        phi_whole = np.maximum(np.minimum(d_core - max(3.0, 1.8 * spacing.max()), -s * extent), phi_par)
        f_core = falloff_occupancy(phi_core, grid.spacing)
        f_whole = np.maximum(falloff_occupancy(phi_whole, grid.spacing), f_core)
        if has_necrosis:
            phi_nec = np.maximum(d_core + rim * np.maximum(1.0 + 0.4 * n2, 0.3), phi_core)
            f_nec = np.minimum(falloff_occupancy(phi_nec, grid.spacing), f_core)
        else:
            f_nec = np.zeros_like(f_core)

        core = f_core >= 0.5
        if core.sum() * grid.voxel_volume < 1000.0:  # less than 1 ml of core left: redraw
            continue
        # Necrosis never touches the outside of the core (an enhancing rim of >= 1 voxel).
        f_nec[~ndi.binary_erosion(core, _STRUCT26, border_value=1)] = 0.0
        # Whole-tumour components that hold no core voxel are oedema islands: drop them.
        comp, n = ndi.label(f_whole >= 0.5, _STRUCT26)
        keep = np.zeros(n + 1, dtype=bool)
        keep[np.unique(comp[core])] = True
        keep[0] = False
        islands = (comp > 0) & ~keep[comp]
        f_whole[islands] = f_core[islands]
        break
    else:
        raise RuntimeError("could not place a tumour with >= 1 ml of core: the grid is too small/coarse")

    label_box = np.zeros(f_core.shape, dtype=np.uint8)
    label_box[f_whole >= 0.5] = 2
    label_box[f_core >= 0.5] = 3
    label_box[f_nec >= 0.5] = 1
    label = np.zeros(grid.shape, dtype=np.uint8)
    label[box] = label_box

    f_bg, f_oed, f_enh = 1.0 - f_whole, f_whole - f_core, f_core - f_nec
    values = {}
    for c, name in enumerate(channels):
        anat = image[c][box]
        comp_i = {k: wm_ref[name] * v[name] * float(np.exp(rng.normal(0.0, 0.08))) for k, v in _COMPARTMENTS.items()}
        if lesion_contrast != 1.0:
            comp_i = {
                k: wm_ref[name] * max(1.0 + lesion_contrast * (v / wm_ref[name] - 1.0), 0.05) for k, v in comp_i.items()
            }
        values[name] = {k: round(v, 4) for k, v in comp_i.items()}
        oedema = 0.3 * anat + 0.7 * comp_i["oedema"] * (1.0 + 0.08 * tex[0])
        enh = comp_i["enhancing"] * (1.0 + 0.12 * tex[1])
        nec = comp_i["necrosis"] * (1.0 + 0.08 * tex[2])
        image[c][box] = f_bg * anat + f_oed * oedema + f_enh * enh + f_nec * nec

    vv = grid.voxel_volume
    info = {
        "centre_mm": np.round(centre, 2).tolist(),
        "core_radius_mm": round(float(r_core), 3),
        "rim_mm": round(float(rim), 3),
        "oedema_extent_mm": round(float(extent), 3),
        "has_necrosis": has_necrosis and bool((label_box == 1).any()),
        "volumes_mm3": {
            "whole_tumour": round(float((label_box > 0).sum()) * vv, 3),
            "tumour_core": round(float(np.isin(label_box, (1, 3)).sum()) * vv, 3),
            "enhancing": round(float((label_box == 3).sum()) * vv, 3),
            "necrosis": round(float((label_box == 1).sum()) * vv, 3),
            "oedema": round(float((label_box == 2).sum()) * vv, 3),
        },
        "attempts": attempt + 1,
    }
    return label, info
