"""``python -m monai_losses_ext.phantoms --task lesion|tumour --out DIR --num-cases N``."""

from __future__ import annotations

import argparse
import sys

from ._generate import DEFAULT_SPACING
from ._io import write_dataset


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m monai_losses_ext.phantoms",
        description="Write synthetic lesion (MS-like, binary; FLAIR+T1) or tumour (glioma-like, "
                    "BraTS labels 1/2/3; FLAIR, T1, T1c, T2) cases on deformed MNI152 anatomy "
                    "as NIfTI files with an MSD-style dataset.json. Same seed, same bytes.",
    )
    p.add_argument("--task", required=True, choices=["lesion", "tumour", "tumor"])
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--num-cases", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", type=int, default=0, help="index of the first case (default 0)")
    p.add_argument("--spacing", type=float, default=DEFAULT_SPACING,
                   help=f"isotropic voxel size in mm (default {DEFAULT_SPACING}; 1.0 for full resolution)")
    p.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"),
                   help="grid size in voxels (default: a 176 x 208 x 176 mm field of view)")
    p.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    p.add_argument("--n-lesions", type=int, nargs=2, metavar=("MIN", "MAX"),
                   help="lesion task: lesion count range of a non-empty case (default 1 25)")
    p.add_argument("--empty-fraction", type=float,
                   help="lesion task: probability of a case without lesions (default 0.1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)

    opts = {}
    if a.n_lesions is not None or a.empty_fraction is not None:
        if a.task != "lesion":
            p.error("--n-lesions / --empty-fraction apply to --task lesion only")
        if a.n_lesions is not None:
            opts["n_lesions"] = tuple(a.n_lesions)
        if a.empty_fraction is not None:
            opts["empty_fraction"] = a.empty_fraction
    path = write_dataset(a.out, a.task, a.num_cases, seed=a.seed, spacing=a.spacing, shape=a.shape,
                         workers=a.workers, progress=not a.no_progress, start=a.start, **opts)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
