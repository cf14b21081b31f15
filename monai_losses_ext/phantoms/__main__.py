"""``python -m monai_losses_ext.phantoms --task lesion|tumour --out DIR --num-cases N [--site NAME]``."""

from __future__ import annotations

import argparse
import sys

from ._generate import DEFAULT_SPACING, _task, output_grid, split_options, task_options
from ._io import write_dataset
from ._site import LESION_SHAPES, SITES, resolve_site


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m monai_losses_ext.phantoms",
        description="Write synthetic lesion (MS-like, binary; FLAIR+T1) or tumour (glioma-like, "
        "BraTS labels 1/2/3; FLAIR, T1, T1c, T2) cases on deformed MNI152 anatomy "
        "as NIfTI files with an MSD-style dataset.json. Same seed, same bytes. "
        "--site picks an acquisition-site preset (out-of-distribution test sets); "
        "the individual acquisition flags override it.",
    )
    p.add_argument("--task", required=True, choices=["lesion", "tumour", "tumor"])
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--num-cases", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", type=int, default=0, help="index of the first case (default 0)")
    p.add_argument(
        "--spacing",
        type=float,
        nargs="+",
        metavar="MM",
        help=f"voxel size in mm, 1 value (isotropic) or 3 (X Y Z) (default: the site's, "
        f"else {DEFAULT_SPACING}; 1.0 for full resolution)",
    )
    p.add_argument(
        "--shape",
        type=int,
        nargs=3,
        metavar=("X", "Y", "Z"),
        help="grid size in voxels (default: a 176 x 208 x 176 mm field of view)",
    )
    p.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    p.add_argument(
        "--n-lesions",
        type=int,
        nargs=2,
        metavar=("MIN", "MAX"),
        help="lesion task: lesion count range of a non-empty case (default 1 25)",
    )
    p.add_argument(
        "--empty-fraction", type=float, help="lesion task: probability of a case without lesions (default 0.1)"
    )
    s = p.add_argument_group("acquisition site (defaults: the training distribution, site 'in_domain')")
    s.add_argument("--site", choices=sorted(SITES), help="site preset (default in_domain)")
    s.add_argument("--tissue-contrast", type=float, help="scale of the CSF/GM/WM differences (default 1.0)")
    s.add_argument("--contrast-jitter", type=float, help="per-subject tissue-mean jitter (default 0.05)")
    s.add_argument("--lesion-contrast", type=float, help="scale of the lesion's deviation from WM (default 1.0)")
    s.add_argument(
        "--noise",
        type=float,
        nargs=2,
        metavar=("LO", "HI"),
        help="Rician sigma range, fraction of the brightest tissue (default 0.01 0.04)",
    )
    s.add_argument("--bias", type=float, help="bias-field strength (default 0.15)")
    s.add_argument(
        "--blur", type=float, nargs=2, metavar=("LO", "HI"), help="PSF sigma range in voxels (default 0.3 0.6)"
    )
    s.add_argument(
        "--log-gain", type=float, nargs=2, metavar=("LO", "HI"), help="gain = exp(U(LO, HI)) (default -0.2 0.2)"
    )
    s.add_argument(
        "--slice-thickness", type=float, metavar="MM", help="slice-profile FWHM along axis 2 (default: the spacing)"
    )
    s.add_argument(
        "--skull-strip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="zero outside the brain (default) or, with --no-skull-strip, a skull and scalp",
    )
    s.add_argument(
        "--lesion-shapes", nargs="+", choices=LESION_SHAPES, help="lesion task: shapes drawn per lesion (default ovoid)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)

    opts = {}
    if a.n_lesions is not None or a.empty_fraction is not None or a.lesion_shapes is not None:
        if a.task != "lesion":
            p.error("--n-lesions / --empty-fraction / --lesion-shapes apply to --task lesion only")
        if a.n_lesions is not None:
            opts["n_lesions"] = tuple(a.n_lesions)
        if a.empty_fraction is not None:
            opts["empty_fraction"] = a.empty_fraction
        if a.lesion_shapes is not None:
            opts["lesion_shapes"] = tuple(a.lesion_shapes)
    flags = {
        "tissue_contrast": a.tissue_contrast,
        "contrast_jitter": a.contrast_jitter,
        "lesion_contrast": a.lesion_contrast,
        "bias": a.bias,
        "slice_thickness_mm": a.slice_thickness,
        "skull_strip": a.skull_strip,
        "noise": None if a.noise is None else tuple(a.noise),
        "blur": None if a.blur is None else tuple(a.blur),
        "log_gain": None if a.log_gain is None else tuple(a.log_gain),
    }
    opts.update({k: v for k, v in flags.items() if v is not None})
    spacing = None
    if a.spacing is not None:
        if len(a.spacing) not in (1, 3):
            p.error(f"--spacing takes 1 or 3 values, got {len(a.spacing)}")
        spacing = a.spacing[0] if len(a.spacing) == 1 else tuple(a.spacing)
    try:  # validate everything before writing anything
        task_opts, site_opts = split_options(opts)
        task_options(a.task, **task_opts)
        site = resolve_site(_task(a.task), a.site, **site_opts)
        output_grid(spacing if spacing is not None else (site.spacing or DEFAULT_SPACING), a.shape)
    except (TypeError, ValueError) as e:
        p.error(str(e))
    path = write_dataset(
        a.out,
        a.task,
        a.num_cases,
        seed=a.seed,
        spacing=spacing,
        shape=a.shape,
        site=a.site,
        workers=a.workers,
        progress=not a.no_progress,
        start=a.start,
        **opts,
    )
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
