"""Data-loader throughput of the lesion bundle's training pipeline, as the bundle builds it from train.json:
training patches per second with 0, 2 and 4 loader workers, for the default augmentation ("strong") and the
old recipe ("legacy"), with the deterministic part cached in memory (``cache_rate`` 1, the default) or
recomputed from the files for every sample (``cache_rate`` 0), at the demo's schedule (48^3 patches, two
per case, 1.5 mm phantoms). Also the per-sample cost of carrying a loss's label maps through the spatial
augmentation (transformed with the label) against recomputing them on each augmented patch.

    python benchmarks/bench_loader.py [--data DIR] [--epochs 2] [--workers 0 2 4]

Prints Markdown tables and writes them to benchmarks/results/loader_cpu.md. A GPU step of the demo's U-Net
takes a few tens of milliseconds; the loader keeps up when patches/s x that step time exceeds the batch size.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "lesion_segmentation" / "configs" / "train.json"


def n_cases(data: Path) -> int:
    import json

    return len(json.loads((data / "dataset.json").read_text())["training"])


def loader(data: Path, augmentation: str, cache_rate: float, workers: int, loss: str = "dice_ce", patch: int = 48):
    from monai.bundle import ConfigParser

    from monai_losses_ext.benchmark.quality import CPU_SCHEDULE

    p = ConfigParser()
    p.read_config(str(BUNDLE))
    for k, v in {
        **CPU_SCHEDULE,
        "patch_size": [patch] * 3,
        "dataset_dir": str(data),
        "num_val": max(1, min(4, n_cases(data) // 5)),
        "augmentation": augmentation,
        "cache_rate": cache_rate,
        "num_workers": workers,
        "loss_name": loss,
        "bundle_root": "/tmp/bench_loader_unused",
    }.items():
        p[k] = v
    return p.get_parsed_content("train#dataloader")


def throughput(dl, epochs: int) -> float:
    """Patches per second over ``epochs`` epochs after one warm-up epoch (workers started, cache filled)."""
    for _ in dl:
        pass
    n, t0 = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in dl:
            n += batch["image"].shape[0]
    return n / (time.perf_counter() - t0)


def map_cost(data: Path, repeats: int = 20, patch: int = 48) -> list[tuple[str, float]]:
    """Milliseconds per sample: the strong augmentation without maps, with a signed distance map carried
    through it, and the same patch with the map recomputed after augmenting the label."""
    from monai.transforms import Compose

    from monai_losses_ext.bundle import augmentations, crop_size
    from monai_losses_ext.transforms import SignedDistanceMapd

    dl = loader(data, "strong", 1.0, 0, loss="dice_boundary", patch=patch)
    case = dl.dataset[0][0]  # one crop of the cached, padded volume (image, label, label_distance_map)
    big = crop_size([patch] * 3)
    centre = [s // 2 for s in case["label"].shape[1:]]
    sl = (slice(None),) + tuple(slice(max(c - b // 2, 0), max(c - b // 2, 0) + b) for c, b in zip(centre, big))
    sample = {k: case[k][sl] for k in ("image", "label", "label_distance_map")}
    plain = Compose(augmentations("strong", {"p_affine": 1.0, "p_elastic": 1.0}, [patch] * 3, {}))
    carried = Compose(
        augmentations(
            "strong", {"p_affine": 1.0, "p_elastic": 1.0}, [patch] * 3, {"distance_map": "label_distance_map"}
        )
    )
    sdf = SignedDistanceMapd("label", num_classes=2, output_keys="label_distance_map")

    def best(fn) -> float:
        times = []
        for i in range(repeats):
            t0 = time.perf_counter()
            fn(i)
            times.append(time.perf_counter() - t0)
        return 1000 * min(times)

    no_map = {k: sample[k] for k in ("image", "label")}
    t_plain = best(lambda i: plain(no_map))
    t_carried = best(lambda i: carried(sample))
    t_recompute = best(lambda i: sdf(plain(no_map)))
    return [
        ("strong augmentation, no map", t_plain),
        ("+ distance map transformed with the label", t_carried),
        ("+ distance map recomputed on the augmented patch", t_recompute),
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "phantoms" / "lesion_demo")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if not (a.data / "dataset.json").exists():
        cmd = [
            sys.executable,
            "-m",
            "monai_losses_ext.phantoms",
            "--task",
            "lesion",
            "--out",
            str(a.data),
            "--num-cases",
            "24",
            "--spacing",
            "1.5",
            "--workers",
            "2",
            "--no-progress",
        ]
        subprocess.run(cmd, check=True)
    rows = []
    for aug in ("strong", "legacy"):
        for cache in (1.0, 0.0):
            for w in a.workers:
                rate = throughput(loader(a.data, aug, cache, w), a.epochs)
                rows.append((aug, "cached" if cache else "not cached", w, rate))
                print(
                    f"{aug:7s} {'cached' if cache else 'not cached':10s} workers={w}: {rate:.1f} patches/s", flush=True
                )
    costs = map_cost(a.data)
    lines = [
        "# Data-loader throughput of the lesion bundle (train.json, demo schedule: 48^3 patches, 2 per case)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{a.threads} threads in the main process; {a.epochs} timed epochs after one warm-up epoch; "
        f"data `{a.data.name}`.",
        "",
        "| augmentation | deterministic part | workers | patches / s |",
        "|---|---|---|---|",
        *[f"| {aug} | {cache} | {w} | {rate:.1f} |" for aug, cache, w, rate in rows],
        "",
        "Per-sample cost of the label maps a boundary loss reads (affine and elastic forced on, min of repeats):",
        "",
        "| pipeline | ms / sample |",
        "|---|---|",
        *[f"| {name} | {ms:.1f} |" for name, ms in costs],
        "",
    ]
    text = "\n".join(lines)
    print(text)
    out = ROOT / "benchmarks" / "results" / "loader_cpu.md"
    out.write_text(text)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
