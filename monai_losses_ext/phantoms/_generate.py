"""``generate_case``: one synthetic case, deterministic given (task, seed, index, options)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

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
"""The tasks of the generator: MS-like white-matter lesions and glioma-like tumours."""
# Channel order; the tumour order is the one of MSD Task01_BrainTumour (FLAIR, T1, T1gd, T2).
MODALITIES = {"lesion": ("FLAIR", "T1"), "tumour": ("FLAIR", "T1", "T1c", "T2")}
"""The image channels of each task, in channel order (the tumour order is that of MSD Task01_BrainTumour)."""
LABELS = {
    "lesion": {"0": "background", "1": "lesion"},
    "tumour": {"0": "background", "1": "necrotic tumour core", "2": "peritumoral oedema", "3": "enhancing tumour"},
}
"""The label values of each task and their names, as written into ``dataset.json``."""
DEFAULT_SPACING = 2.0
"""Voxel size (mm) of the output grid when neither the caller nor the site gives one."""
# Field of view (mm) around the template brain's centre: 176 x 208 x 176 mm holds the
# 145 x 181 x 155 mm brain after up to 6 % scaling, rotation and warping.
DEFAULT_FOV_MM = (176.0, 208.0, 176.0)
"""Field of view (mm, X Y Z) of the output grid when no ``shape`` is given, centred on the template brain."""
_DEFAULTS = {"lesion": LESION_DEFAULTS, "tumour": TUMOUR_DEFAULTS}
_ALIASES = {"tumor": "tumour", "lesions": "lesion", "ms": "lesion", "glioma": "tumour"}


class Case(NamedTuple):
    """One case: ``image`` float32 (C, X, Y, Z), ``label`` uint8 (X, Y, Z), ``affine`` 4x4
    (voxel -> world mm, RAS), ``info`` a JSON-serialisable dict.

    A named tuple, so ``image, label, affine, info = generate_case(...)`` works.

    Attributes:
        image: float32 ``(C, X, Y, Z)``, one channel per modality in the order of ``MODALITIES[task]``
            (lesion: FLAIR, T1; tumour: FLAIR, T1, T1c, T2), arbitrary units (WM on T1 about 1 before the gain);
            zero outside the brain when the site skull-strips.
        label: uint8 ``(X, Y, Z)``, the exact ground truth (voxels with occupancy >= 0.5), values of
            ``LABELS[task]``: 0/1 for the lesion task; 0 background, 1 necrotic core, 2 oedema, 3 enhancing
            tumour for the tumour task.
        affine: float64 ``(4, 4)``, voxel index to world mm (RAS): a diagonal of the spacing and the origin.
        info: JSON-serialisable description of the case: ``task``, ``seed``, ``index``, ``channels``,
            ``shape``, ``spacing_mm``, ``site``, the subject's deformation (``anatomy``), ``tissue_means``,
            the drawn ``artefacts``, the pathology (lesion task: ``n_requested``, ``n_lesions`` and one entry
            per lesion in ``lesions``; tumour task: its geometry and ``volumes_mm3`` per compartment) and,
            without skull stripping, the ``head``.
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    info: dict[str, Any]


def _task(task: str) -> str:
    t = _ALIASES.get(str(task).lower(), str(task).lower())
    if t not in TASKS:
        raise ValueError(f"unknown task {task!r}: use one of {TASKS}")
    return t


def task_options(task: str, **opts: Any) -> dict[str, Any]:
    """The task's default options updated with ``opts`` (unknown names raise TypeError).

    Only the names are checked here; the values are used as given when a case is generated.

    Args:
        task: ``"lesion"`` or ``"tumour"``, case-insensitive (``"tumor"``, ``"glioma"``, ``"lesions"`` and
            ``"ms"`` are aliases).
        **opts: task options by name, the keys of ``LESION_DEFAULTS`` (lesion count range, empty-case
            probability, volume distribution, supersampling) or ``TUMOUR_DEFAULTS`` (core radius, oedema
            extent, rim thickness, probability of no necrosis). Acquisition-site options are not task options.

    Returns:
        A new dict with every option of the task: the defaults, replaced by ``opts`` where given.

    Raises:
        ValueError: ``task`` is not a known task.
        TypeError: a name in ``opts`` is not an option of the task.
    """
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


def output_grid(spacing: float | Sequence[float] = DEFAULT_SPACING, shape: int | Sequence[int] | None = None) -> Grid:
    """The output grid: ``spacing`` mm (scalar or 3 values) and ``shape`` voxels, centred on the
    template brain.  ``shape=None`` covers :data:`DEFAULT_FOV_MM`: (88, 104, 88) at 2 mm,
    (176, 208, 176) at 1 mm, (44, 52, 44) at 4 mm.

    Args:
        spacing: voxel size in mm, one value (isotropic) or three (X, Y, Z), each > 0.
        shape: grid size in voxels, one value or three, each at least 8; None: the number of voxels that
            covers ``DEFAULT_FOV_MM`` (176 x 208 x 176 mm) at ``spacing``, rounded.

    Returns:
        The axis-aligned grid (a frozen dataclass ``Grid``): ``shape`` (voxels), ``spacing`` (mm) and
            ``origin`` (world mm of voxel ``(0, 0, 0)``), with the properties ``affine`` (4x4, voxel to world,
            RAS) and ``voxel_volume`` (mm³).

    Raises:
        ValueError: ``spacing`` is not positive, ``shape`` has an axis under 8 voxels, or either is neither
            one value nor three.
        ImportError: nilearn is not installed (the grid is centred on the template, see `atlas_paths`).
        FileNotFoundError: the template files are missing from nilearn.
    """
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


def generate_case(
    task: str,
    seed: int = 0,
    index: int = 0,
    *,
    spacing: float | Sequence[float] | None = None,
    shape: int | Sequence[int] | None = None,
    site: str | Mapping[str, Any] | None = None,
    **opts: Any,
) -> Case:
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

    Args:
        task: ``"lesion"`` (MS-like white-matter lesions, binary label; FLAIR and T1) or ``"tumour"``
            (one glioma-like tumour, labels 1 necrotic core, 2 oedema, 3 enhancing; FLAIR, T1, T1c and T2);
            case-insensitive, ``"tumor"``, ``"glioma"``, ``"lesions"`` and ``"ms"`` are aliases.
        seed: the dataset's seed, >= 0.
        index: the case's number in the dataset, >= 0; ``(seed, index)`` decides the case.
        spacing: voxel size in mm, one value (isotropic) or three; None: the site's spacing, else
            ``DEFAULT_SPACING`` (2 mm).
        shape: grid size in voxels, one value or three (each >= 8); None: the ``DEFAULT_FOV_MM`` field of view.
        site: the acquisition site: None (``"in_domain"``, the training distribution), a preset name of
            ``SITES`` (``"scanner"``, ``"site_c"``) or a mapping of site options (and optionally
            ``"spacing"``) over ``SITE_DEFAULTS``, reported as ``"custom"``.
        **opts: task options (keys of ``LESION_DEFAULTS`` or ``TUMOUR_DEFAULTS``) and site options (keys of
            ``SITE_DEFAULTS``), by name; a site option given here replaces the site's value.

    Returns:
        The case as a `Case` named tuple ``(image, label, affine, info)``: image float32 ``(C, X, Y, Z)``,
            label uint8 ``(X, Y, Z)``, affine float64 ``(4, 4)`` (voxel to world mm), info a JSON-serialisable
            dict.

    Raises:
        ValueError: ``task`` is unknown; ``seed`` or ``index`` is negative; ``spacing`` or ``shape`` is invalid
            (see `output_grid`); ``site`` names no preset; a site option value is out of its range;
            ``lesion_shapes`` is given for the tumour task; ``n_lesions`` or ``empty_fraction`` is invalid; or
            the grid holds no white matter to place lesions in.
        TypeError: a keyword is neither a task option nor a site option, ``site`` is not None, a string or a
            mapping, or a site mapping has an unknown key.
        RuntimeError: the tumour task found no place for a tumour with at least 1 ml of core in 50 draws (the
            grid is too small or too coarse).
        ImportError: nilearn is not installed (the anatomy is read from it, see `atlas_paths`).
        FileNotFoundError: the template files are missing from nilearn.
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
