"""``generate_case``: one synthetic case, deterministic given (task, seed, index, options)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._atlas import load_atlas
from ._fields import Grid
from ._lesion import LESION_DEFAULTS, insert_ms_lesions
from ._site import SITE_DEFAULTS, resolve_site
from ._subject import apply_artefacts, make_subject, synthesise_contrasts, synthesise_head
from ._tumour import TUMOUR_DEFAULTS, insert_tumour

__all__ = [
    "Case",
    "TASKS",
    "MODALITIES",
    "LABELS",
    "DEFAULT_SPACING",
    "DEFAULT_FOV_MM",
    "output_grid",
    "generate_case",
    "task_options",
    "split_options",
]

TASKS = ("lesion", "tumour")
# Channel order; the tumour order is the one of MSD Task01_BrainTumour (FLAIR, T1, T1gd, T2).
MODALITIES = {"lesion": ("FLAIR", "T1"), "tumour": ("FLAIR", "T1", "T1c", "T2")}
LABELS = {
    "lesion": {"0": "background", "1": "lesion"},
    "tumour": {"0": "background", "1": "necrotic tumour core", "2": "peritumoral oedema", "3": "enhancing tumour"},
}
DEFAULT_SPACING = 2.0
# Field of view (mm) around the template brain's centre: 176 x 208 x 176 mm holds the
# 145 x 181 x 155 mm brain after up to 6 % scaling, rotation and warping.
DEFAULT_FOV_MM = (176.0, 208.0, 176.0)
_DEFAULTS = {"lesion": LESION_DEFAULTS, "tumour": TUMOUR_DEFAULTS}
_ALIASES = {"tumor": "tumour", "lesions": "lesion", "ms": "lesion", "glioma": "tumour"}


class Case(NamedTuple):
    """One case: ``image`` float32 (C, X, Y, Z), ``label`` uint8 (X, Y, Z), ``affine`` 4x4
    (voxel -> world mm, RAS), ``info`` a JSON-serialisable dict."""

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    info: dict


def _task(task: str) -> str:
    t = _ALIASES.get(str(task).lower(), str(task).lower())
    if t not in TASKS:
        raise ValueError(f"unknown task {task!r}: use one of {TASKS}")
    return t


def task_options(task: str, **opts) -> dict:
    """The task's default options updated with ``opts`` (unknown names raise TypeError)."""
    task = _task(task)
    defaults = _DEFAULTS[task]
    unknown = sorted(set(opts) - set(defaults))
    if unknown:
        raise TypeError(
            f"unknown option(s) {unknown} for task {task!r}; known: {sorted(defaults)}"
            f" (acquisition-site options: {sorted(SITE_DEFAULTS)})"
        )
    return {**defaults, **opts}


def split_options(opts: dict) -> tuple[dict, dict]:
    """(task options, site options) of a flat keyword dict: site options are the keys of
    :data:`SITE_DEFAULTS`, everything else goes to the task (and is checked there)."""
    site = {k: v for k, v in opts.items() if k in SITE_DEFAULTS}
    return {k: v for k, v in opts.items() if k not in SITE_DEFAULTS}, site


def _spacing(spacing, site_spacing):
    if spacing is not None:
        return spacing
    return DEFAULT_SPACING if site_spacing is None else site_spacing


def output_grid(spacing=DEFAULT_SPACING, shape=None) -> Grid:
    """The output grid: ``spacing`` mm (scalar or 3 values) and ``shape`` voxels, centred on the
    template brain.  ``shape=None`` covers :data:`DEFAULT_FOV_MM`: (88, 104, 88) at 2 mm,
    (176, 208, 176) at 1 mm, (44, 52, 44) at 4 mm."""
    sp = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,))
    if not np.all(sp > 0):
        raise ValueError(f"spacing must be positive, got {spacing!r}")
    if shape is None:
        shape = tuple(int(round(f / s)) for f, s in zip(DEFAULT_FOV_MM, sp))
    else:
        shape = tuple(int(v) for v in np.broadcast_to(np.asarray(shape), (3,)))
        if min(shape) < 8:
            raise ValueError(f"shape must be at least 8 voxels per axis, got {shape}")
    return Grid.centred(load_atlas().centre, shape, sp)


def generate_case(task: str, seed: int = 0, index: int = 0, *, spacing=None, shape=None, site=None, **opts) -> Case:
    """Generate case ``index`` of the synthetic ``task`` ("lesion" or "tumour").

    The random stream is ``SeedSequence([seed, index])`` spawned into five independent
    children: anatomy, contrast, pathology, artefacts, and a fifth for what only non-default
    site options need (the head, lesion shapes), so the defaults draw exactly what they always
    drew.  Any case can be made on its own, in any order or process, and the same subject
    anatomy is shared by both tasks.

    Keyword options: ``spacing`` / ``shape`` of the output grid (see :func:`output_grid`;
    ``spacing=None`` is the site's spacing, else :data:`DEFAULT_SPACING`), ``site`` (None =
    "in_domain", a name in :data:`SITES` or a mapping of site options), the task options
    (:data:`LESION_DEFAULTS` or :data:`TUMOUR_DEFAULTS`) and the site options
    (:data:`SITE_DEFAULTS`), which override the preset's.
    """
    task = _task(task)
    task_opts, site_opts = split_options(opts)
    options = task_options(task, **task_opts)
    site = resolve_site(task, site, **site_opts)
    so = site.options
    seed, index = int(seed), int(index)
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    grid = output_grid(_spacing(spacing, site.spacing), shape)
    streams = np.random.SeedSequence([seed, index]).spawn(5)
    rng_anat, rng_contrast, rng_path, rng_art = (np.random.default_rng(s) for s in streams[:4])
    rng_head, rng_shape = (np.random.default_rng(s) for s in streams[4].spawn(2))
    channels = MODALITIES[task]
    subject = make_subject(rng_anat, grid)
    image, means = synthesise_contrasts(
        rng_contrast, subject, channels, jitter=so["contrast_jitter"], contrast=so["tissue_contrast"]
    )
    if task == "lesion":
        label, path_info = insert_ms_lesions(
            rng_path,
            subject,
            image,
            means,
            channels,
            options,
            shapes=so["lesion_shapes"],
            lesion_contrast=so["lesion_contrast"],
            rng_shape=rng_shape,
        )
    else:
        label, path_info = insert_tumour(
            rng_path, subject, image, means, channels, options, lesion_contrast=so["lesion_contrast"]
        )
    head_info = (
        None if so["skull_strip"] else synthesise_head(rng_head, image, subject, channels, jitter=so["contrast_jitter"])
    )
    art_info = apply_artefacts(
        rng_art,
        image,
        subject,
        means,
        bias=so["bias"],
        noise=so["noise"],
        blur=so["blur"],
        log_gain=so["log_gain"],
        slice_thickness_mm=so["slice_thickness_mm"],
        skull_strip=so["skull_strip"],
    )
    info = {
        "task": task,
        "seed": seed,
        "index": index,
        "channels": list(channels),
        "shape": list(grid.shape),
        "spacing_mm": list(grid.spacing),
        "site": site.name,
        "anatomy": subject.info,
        "tissue_means": {name: [round(float(v), 5) for v in means[name]] for name in channels},
        "artefacts": art_info,
        **path_info,
    }
    if head_info is not None:
        info["head"] = head_info
    return Case(image, label, grid.affine, info)
