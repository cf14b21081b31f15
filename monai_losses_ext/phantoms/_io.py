"""Writing cases as NIfTI files plus an MSD-style ``dataset.json`` (byte-reproducible)."""

from __future__ import annotations

import gzip
import json
import multiprocessing
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

import numpy as np

from ._atlas import load_atlas
from ._generate import LABELS, MODALITIES, _spacing, _task, generate_case, output_grid, split_options, task_options
from ._site import resolve_site

__all__ = ["write_nifti", "write_case", "write_dataset", "case_name"]

_DESCRIPTION = {
    "lesion": "Synthetic MS-like white-matter lesions (binary) on deformed MNI152 anatomy; "
    "FLAIR and T1 synthesised from tissue classes.",
    "tumour": "Synthetic glioma-like tumours on deformed MNI152 anatomy with BraTS labels "
    "(1 necrotic core, 2 oedema, 3 enhancing); FLAIR, T1, T1c and T2 synthesised "
    "from tissue classes.",
}
_NAME = {"lesion": "SyntheticMSLesions", "tumour": "SyntheticGlioma"}


def write_nifti(path: str, data: np.ndarray, affine: np.ndarray, compresslevel: int = 6) -> None:
    """Write a NIfTI-1 file; ``.nii.gz`` is gzipped with ``mtime=0`` and no file name in the
    header, so the same array gives the same bytes.

    The file is written to ``path + ".part"`` and then renamed to ``path``, so a reader never finds a
    half-written file. The header says mm units and holds ``affine`` as both qform and sform (code 1).

    Args:
        path: the file to write; a name ending in ``.gz`` (``.nii.gz``) is gzipped, any other (``.nii``) is not.
        data: the voxels, stored with their dtype and shape, e.g. a float32 ``(X, Y, Z, C)`` image or a
            uint8 ``(X, Y, Z)`` label map.
        affine: ``(4, 4)`` voxel index to world mm (RAS).
        compresslevel: gzip level, 0 (none) to 9 (smallest); unused for ``.nii``.
    """
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header["descrip"] = b"monai-losses-ext synthetic phantom"
    raw = img.to_bytes()
    if path.endswith(".gz"):
        raw = gzip.compress(raw, compresslevel=compresslevel, mtime=0)
    tmp = path + ".part"
    with open(tmp, "wb") as fh:
        fh.write(raw)
    os.replace(tmp, path)


def case_name(task: str, index: int, num_cases: int) -> str:
    """The file name (without suffix) of case ``index`` in a dataset of ``num_cases`` cases.

    ``synth_<task>_<index>``, the index zero-padded to 3 digits, or more when ``num_cases - 1`` has more, so
    the names sort in index order.

    Args:
        task: ``"lesion"`` or ``"tumour"`` (or an alias, see `task_options`); the name holds the canonical one.
        index: the case's index.
        num_cases: the number of cases the dataset's names are padded for (``write_dataset`` passes
            ``start + num_cases``).

    Returns:
        The name, e.g. ``synth_lesion_007`` for index 7 of 32 cases, ``synth_tumour_0007`` of 1500.

    Raises:
        ValueError: ``task`` is not a known task.
    """
    return f"synth_{_task(task)}_{index:0{max(3, len(str(max(num_cases - 1, 0))))}d}"


def write_case(
    out_dir: str,
    task: str,
    seed: int,
    index: int,
    name: str,
    spacing: float | Sequence[float] | None,
    shape: int | Sequence[int] | None,
    opts: Mapping[str, Any],
    site: str | Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Generate one case and write imagesTr/<name>.nii.gz (X, Y, Z, C) and labelsTr/<name>.nii.gz."""
    case = generate_case(task, seed, index, spacing=spacing, shape=shape, site=site, **opts)
    write_nifti(
        os.path.join(out_dir, "imagesTr", name + ".nii.gz"),
        np.ascontiguousarray(np.moveaxis(case.image, 0, -1)),
        case.affine,
    )
    write_nifti(os.path.join(out_dir, "labelsTr", name + ".nii.gz"), case.label, case.affine)
    return {"name": name, **case.info}


def write_dataset(
    out_dir: str,
    task: str,
    num_cases: int,
    seed: int = 0,
    *,
    spacing: float | Sequence[float] | None = None,
    shape: int | Sequence[int] | None = None,
    site: str | Mapping[str, Any] | None = None,
    workers: int = 1,
    progress: bool = True,
    start: int = 0,
    **opts: Any,
) -> str:
    """Write ``num_cases`` cases (indices ``start`` ...) and the MSD-style ``dataset.json``.

    Layout: ``imagesTr/<name>.nii.gz`` 4-D float32 (X, Y, Z, C) like the MSD,
    ``labelsTr/<name>.nii.gz`` uint8, ``dataset.json`` (readable by
    ``monai.data.load_decathlon_datalist``) and ``phantoms.json`` (generator settings, the
    site and its resolved options, and per-case information: lesion counts and volumes,
    tumour compartment volumes).  ``site`` and the site options are those of
    :func:`generate_case`; ``spacing=None`` is the site's spacing, else 2 mm.
    ``workers > 1`` generates cases in parallel processes; the files do not depend on it.
    Returns the path of ``dataset.json``.

    The names, settings and options are checked before anything is written; ``seed``, ``start`` and the
    values of the lesion-count options are checked when the first case is generated. ``dataset.json`` and
    ``phantoms.json`` list the cases of this call only: a second call into the same folder rewrites them.

    Args:
        out_dir: the dataset folder (created, with ``imagesTr`` and ``labelsTr``); files already there with
            the same names are replaced.
        task: ``"lesion"`` or ``"tumour"`` (or an alias, see `task_options`).
        num_cases: how many cases to write, >= 0.
        seed: the dataset's seed, >= 0; case ``i`` is ``generate_case(task, seed, i, ...)``.
        spacing: voxel size in mm, one value or three; None: the site's spacing, else 2 mm.
        shape: grid size in voxels, one value or three; None: the ``DEFAULT_FOV_MM`` field of view.
        site: None (``"in_domain"``), a preset name of ``SITES`` or a mapping of site options, as in
            `generate_case`.
        workers: number of processes generating cases; 1 (or less) generates them in this process.
        progress: show a progress bar (tqdm).
        start: the index of the first case, >= 0; the cases are ``start`` to ``start + num_cases - 1``.
        **opts: task options (keys of ``LESION_DEFAULTS`` or ``TUMOUR_DEFAULTS``) and site options (keys of
            ``SITE_DEFAULTS``), as in `generate_case`.

    Returns:
        The path of the ``dataset.json`` written into ``out_dir``.

    Raises:
        ValueError: ``num_cases`` is negative, or an argument or option is invalid (see `generate_case`).
        TypeError: an option name is neither a task nor a site option, or ``site`` has the wrong type.
        RuntimeError: a tumour could not be placed in a case (the grid is too small or too coarse).
        ImportError: nilearn is not installed (the anatomy is read from it, see `atlas_paths`).
        FileNotFoundError: the template files are missing from nilearn.
    """
    task = _task(task)
    num_cases = int(num_cases)
    if num_cases < 0:
        raise ValueError(f"num_cases must be >= 0, got {num_cases}")
    task_opts, site_opts = split_options(opts)
    opts = task_options(task, **task_opts)
    resolved = resolve_site(task, site, **site_opts)  # validates the site options early
    spacing = _spacing(spacing, resolved.spacing)
    grid = output_grid(spacing, shape)  # validates spacing / shape early
    os.makedirs(os.path.join(out_dir, "imagesTr"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "labelsTr"), exist_ok=True)
    total = start + num_cases
    jobs = [
        (out_dir, task, seed, i, case_name(task, i, total), spacing, shape, {**opts, **site_opts}, site)
        for i in range(start, total)
    ]

    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc=f"{task} phantoms", unit="case", disable=not progress)
    infos = {}
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            infos[job[3]] = write_case(*job)
            bar.update()
    else:
        # fork (where available) shares the template already read here; spawn re-imports
        # torch in every worker.  Workers run numpy/scipy only.
        load_atlas()
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with ProcessPoolExecutor(max_workers=int(workers), mp_context=ctx) as pool:
            futures = {pool.submit(write_case, *job): job[3] for job in jobs}
            for fut in as_completed(futures):
                infos[futures[fut]] = fut.result()
                bar.update()
    bar.close()

    names = [job[4] for job in jobs]
    dataset = {
        "name": _NAME[task],
        "description": _DESCRIPTION[task] + " The data are synthetic and the ground truth is exact "
        "(label = voxels whose lesion occupancy is >= 0.5). Generated by "
        f"monai_losses_ext.phantoms (task={task}, seed={seed})."
        + (
            ""
            if resolved.name == "in_domain"
            else f" Acquisition site {resolved.name!r}: see phantoms.json for its options."
        ),
        "reference": "monai-losses-ext; anatomy: MNI ICBM152 2009 nonlinear symmetric template "
        "read at run time from the installed nilearn package",
        "licence": "synthetic; see the MNI ICBM152 template terms for the anatomy",
        "release": "1.0",
        "tensorImageSize": "4D",
        "site": resolved.name,
        "modality": {str(i): m for i, m in enumerate(MODALITIES[task])},
        "labels": LABELS[task],
        "numTraining": len(names),
        "numTest": 0,
        "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in names],
        "test": [],
    }
    path = os.path.join(out_dir, "dataset.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(dataset, fh, indent=2)
        fh.write("\n")
    meta = {
        "generator": "monai_losses_ext.phantoms",
        "task": task,
        "seed": int(seed),
        "spacing_mm": list(grid.spacing),
        "shape": list(grid.shape),
        "options": {k: list(v) if isinstance(v, tuple) else v for k, v in opts.items()},
        "site": resolved.name,
        "site_options": {k: list(v) if isinstance(v, tuple) else v for k, v in resolved.options.items()},
        "cases": [infos[i] for i in sorted(infos)],
    }
    with open(os.path.join(out_dir, "phantoms.json"), "w") as fh:
        json.dump(meta, fh, indent=1)
        fh.write("\n")
    return path
