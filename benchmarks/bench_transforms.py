"""Per-case CPU cost of the label transforms against a bare SciPy reference, measured in the same run.

Reference: what any distance-map code must at least do, one ``scipy.ndimage.distance_transform_edt``
per class for the inside and one for the outside (2 EDTs per class), with the same spacing.

    python benchmarks/bench_transforms.py [--size 96] [--repeats 5]

Prints a Markdown table (min over repeats, ratio = ours / reference; target <= 1.5 for the maps) and
writes it to benchmarks/results/transforms_cpu.md.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from monai_losses_ext.benchmark._measure import time_call
from monai_losses_ext.transforms import (
    LesionInstances,
    OneHot,
    SignedDistanceMap,
    UNetWeightMap,
    ValidateLabel,
)

NUM_CLASSES = 4
SPACING = (1.0, 1.0, 1.5)


def make_label(size: int, seed: int = 0) -> torch.Tensor:
    """(1, size, size, size) labels 0..3: a tumour-like nest (2 around 1 around 3) plus a few lesions."""
    rng = np.random.default_rng(seed)
    g = np.indices((size,) * 3).astype(np.float32) / size
    lab = np.zeros((size,) * 3, dtype=np.int64)

    def blob(centre, radii):
        return sum(((gi - c) / r) ** 2 for gi, c, r in zip(g, centre, radii)) <= 1.0

    lab[blob((0.45, 0.5, 0.5), (0.28, 0.22, 0.25))] = 2
    lab[blob((0.45, 0.52, 0.5), (0.14, 0.12, 0.13))] = 1
    lab[blob((0.47, 0.5, 0.52), (0.07, 0.06, 0.06))] = 3
    for _ in range(5):  # small separate lesions of random classes
        c = rng.uniform(0.1, 0.9, 3)
        c[0] = rng.uniform(0.78, 0.9)
        lab[blob(c, rng.uniform(0.02, 0.05, 3))] = rng.integers(1, NUM_CLASSES)
    return torch.from_numpy(lab[None])


def reference(label: torch.Tensor) -> np.ndarray:
    """Bare reference: EDT inside + EDT outside for every class."""
    lab = label[0].numpy()
    out = np.empty((NUM_CLASSES, *lab.shape), dtype=np.float32)
    for k in range(NUM_CLASSES):
        fg = lab == k
        out[k] = ndimage.distance_transform_edt(~fg, sampling=SPACING) - ndimage.distance_transform_edt(
            fg, sampling=SPACING
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=96, help="cube side in voxels (default 96)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats; the minimum is reported (default 5)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "transforms_cpu.md")
    args = ap.parse_args()
    torch.set_num_threads(1)

    label = make_label(args.size)
    n_objects = ndimage.label(label[0].numpy() > 0, structure=np.ones((3, 3, 3)))[1]
    cases = [
        ("reference: 2 x scipy EDT per class", lambda: reference(label)),
        ("SignedDistanceMap (signed)", lambda: SignedDistanceMap(NUM_CLASSES, spacing=SPACING)(label)),
        (
            "SignedDistanceMap (unsigned, HD-DT)",
            lambda: SignedDistanceMap(NUM_CLASSES, "unsigned", spacing=SPACING)(label),
        ),
        ("UNetWeightMap (w0=10, sigma=5)", lambda: UNetWeightMap(spacing=SPACING)(label)),
        ("LesionInstances", lambda: LesionInstances()(label)),
        ("ValidateLabel", lambda: ValidateLabel(num_classes=NUM_CLASSES)(label)),
        ("OneHot", lambda: OneHot(num_classes=NUM_CLASSES)(label)),
    ]
    times = {name: time_call(fn, torch.device("cpu"), args.repeats) for name, fn in cases}
    ref = times[cases[0][0]]
    lines = [
        f"Label (1, {args.size}, {args.size}, {args.size}), {NUM_CLASSES} classes, {n_objects} objects, "
        f"spacing {SPACING}; "
        f"min of {args.repeats} repeats, 1 torch thread; {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}.",
        "",
        "| transform | time (ms) | ratio vs reference |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {t * 1e3:.1f} | {t / ref:.2f} |" for name, t in times.items()]
    table = "\n".join(lines)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table + "\n")
    print(f"\nsaved to {args.out}")


if __name__ == "__main__":
    main()
