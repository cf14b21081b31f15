"""End-to-end demo on CPU: synthetic MS-like lesion phantoms -> train the lesion bundle -> evaluate on fresh
phantoms of the training site and of two shifted sites (another scanner; another site, not skull-stripped) ->
a PNG with slices (truth and prediction) and the loss / validation Dice curves.

    python scripts/demo.py                     # ~6 min on 2 quiet CPU cores, writes runs/demo/
    python scripts/demo.py --compare-monai     # also trains MONAI's DiceLoss under the same schedule
    python scripts/demo.py --loss focal_tversky --out runs/demo_ft
    python scripts/demo.py --bundle-args "{'augmentation': 'legacy', 'foreground': 'nonzero', 'spacing': 'native'}"

Every step is a plain ``python -m monai.bundle run`` of bundles/lesion_segmentation (the commands are
printed, with one progress line per epoch), so what the demo does is what a user runs. Running it again
into the same --out is safe: the bundle moves the previous run's models/ and logs/ to <out>/previous/. The
lesions are synthetic (inserted with partial volume into deformed MNI152 anatomy) and their ground truth is
exact: the figures show that the pipeline learns and how it holds up off its training distribution, not how it
would do on patients.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
import time
from pathlib import Path

from monai_losses_ext.benchmark.quality import CPU_SCHEDULE
from monai_losses_ext.bundle import bundle_command, child_env, read_history, run_bundle, shown

ROOT = Path(__file__).resolve().parents[1]

BUNDLE = ROOT / "bundles" / "lesion_segmentation"

# The schedule tuned for a few minutes of training on 2 CPU cores (figures in
# bundles/lesion_segmentation/docs/README.md); the loss benchmark's CPU preset trains with the same one.
DEMO_OVERRIDES = CPU_SCHEDULE


def log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def bundle_run(configs: list[str], overrides: dict, env: dict, log_file: Path) -> float:
    """Run ``python -m monai.bundle run`` on the lesion bundle (its full output to ``log_file``), print the
    command and its metric lines; returns the wall time."""
    log(f"$ {shown(bundle_command(BUNDLE, configs, overrides))}")
    try:
        seconds = run_bundle(
            BUNDLE, configs, overrides, log_file, env, echo=lambda line: print("    " + line, flush=True)
        )
    except RuntimeError as err:
        raise SystemExit(str(err)) from None
    lines = log_file.read_text().splitlines()
    keep = [ln for ln in lines if " - INFO - " in ln and "±" in ln]
    for ln in keep[-12:]:
        print("    " + ln.split(" - INFO - ", 1)[-1], flush=True)
    return seconds


# the test sets: fresh phantoms of the training site and two shifted sites (monai_losses_ext.phantoms.SITES);
# their seeds differ from the training set's, so no test subject shares the anatomy of a training one
TEST_SITES = {"in_domain": 1, "scanner": 2, "site_c": 3}


def ensure_phantoms(
    data: Path, num_cases: int, spacing: float | None, seed: int, env: dict, site: str | None = None
) -> None:
    if (data / "dataset.json").exists():
        log(f"phantoms found in {data}")
        return
    cmd = [
        sys.executable,
        "-m",
        "monai_losses_ext.phantoms",
        "--task",
        "lesion",
        "--out",
        str(data),
        "--num-cases",
        str(num_cases),
        "--seed",
        str(seed),
        "--workers",
        env.get("OMP_NUM_THREADS", "1"),
        "--no-progress",
    ]
    if site and site != "in_domain":
        cmd += ["--site", site]  # the site's own resolution and acquisition
    else:
        cmd += ["--spacing", str(spacing)]
    log("$ python " + " ".join(cmd[1:]))
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True)
    log(f"generated {num_cases} phantoms in {time.perf_counter() - t0:.0f} s")


def scores(summary: dict) -> dict:
    m, p = summary["metrics"], summary["pooled"]
    return {
        "cases": summary["cases"],
        "dice": m["dice_lesion"]["mean"],
        "dice_std": m["dice_lesion"]["std"],
        "hd95_mm": m["hd95_lesion"]["mean"],
        "lesion_f1": m["f1_lesion"]["mean"],
        "lesion_sensitivity": m["sensitivity_lesion"]["mean"],
        "fp_lesions_per_case": p["fp_lesions_per_case_lesion"],
        "sensitivity_by_size": {k.split("_")[-1]: v for k, v in p.items() if k.startswith("sensitivity_lesion_")},
    }


def train_and_evaluate(name: str, loss: str, out: Path, args, env: dict, test_sets: dict[str, Path]) -> dict:
    run = {
        **DEMO_OVERRIDES,
        **args.bundle_args,
        "bundle_root": str(out),
        "dataset_dir": str(args.data),
        "num_val": args.num_val,
        "epochs": args.epochs,
        "loss_name": loss,
        "num_threads": args.threads,
        "seed": args.seed,
        "resume": False,
    }
    log(f"[{name}] training with loss '{loss}' for {args.epochs} epochs -> {out}")
    t_train = bundle_run(["train.json"], run, env, out / "train.log")
    ev = {
        k: run[k]
        for k in (
            "bundle_root",
            "patch_size",
            "channels",
            "strides",
            "num_res_units",
            "sw_batch_size",
            "num_threads",
            *args.bundle_args,
        )
    }
    res = {"loss": loss, "train_seconds": round(t_train, 1), "eval_overrides": ev, "sites": {}}
    for site, data in test_sets.items():
        log(f"[{name}] evaluating the best checkpoint on {site}: every case of {data}")
        t_eval = bundle_run(
            ["train.json", "evaluate.json"],
            {**ev, "dataset_dir": str(data), "output_dir": str(out / "eval" / site)},
            env,
            out / f"evaluate_{site}.log",
        )
        summary = json.loads((out / "eval" / site / "summary.json").read_text())
        res["sites"][site] = {**scores(summary), "eval_seconds": round(t_eval, 1)}
    return res


def plot(out: Path, data: Path, png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib
    import numpy as np

    preds = sorted((out / "pred").glob("*_seg.nii.gz"))[:3]
    train, val = read_history(str(out / "logs" / "history.jsonl"))
    fig = plt.figure(figsize=(4 * max(3, len(preds)), 8), constrained_layout=True)
    gs = fig.add_gridspec(2, max(3, len(preds)))
    for i, p in enumerate(preds):
        case = p.name.replace("_seg.nii.gz", "")
        img = np.asarray(nib.load(str(data / "imagesTr" / f"{case}.nii.gz")).dataobj, dtype=np.float32)
        gt = np.asarray(nib.load(str(data / "labelsTr" / f"{case}.nii.gz")).dataobj) > 0
        pr = np.asarray(nib.load(str(p)).dataobj) > 0
        z = int(np.argmax(gt.sum((0, 1)))) if gt.any() else gt.shape[2] // 2
        ax = fig.add_subplot(gs[0, i])
        ax.imshow(np.rot90(img[:, :, z, 0]), cmap="gray")
        if gt[:, :, z].any():
            ax.contour(np.rot90(gt[:, :, z]).astype(float), levels=[0.5], colors="lime", linewidths=1.2)
        if pr[:, :, z].any():
            ax.contour(np.rot90(pr[:, :, z]).astype(float), levels=[0.5], colors="red", linewidths=1.0)
        ax.set_title(f"{case}, slice {z}\nFLAIR; truth green, prediction red", fontsize=9)
        ax.axis("off")
    ax = fig.add_subplot(gs[1, : max(3, len(preds)) // 2 + (max(3, len(preds)) % 2)])
    ax.plot([r["epoch"] for r in train], [r["loss"] for r in train], color="tab:blue")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (epoch mean)")
    ax.set_title("training loss")
    ax = fig.add_subplot(gs[1, max(3, len(preds)) // 2 + (max(3, len(preds)) % 2) :])
    for key, lab in (("val_mean_dice", "lesion Dice"), ("val_lesion_f1", "lesion-wise F1")):
        pts = [(r["epoch"], r[key]) for r in val if key in r]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=lab)
    ax.set_ylim(0, 1)
    ax.set_xlabel("epoch")
    ax.set_title("validation (held-out cases)")
    ax.legend()
    fig.suptitle(title, fontsize=11)
    fig.savefig(str(png), dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "demo")
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "phantoms" / "lesion_demo")
    ap.add_argument("--num-cases", type=int, default=24)
    ap.add_argument("--num-val", type=int, default=4)
    ap.add_argument("--spacing", type=float, default=1.5)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--loss", default="dice_ce", help="registry name or dotted class path")
    ap.add_argument("--compare-monai", action="store_true", help="also train monai.losses.DiceLoss, same schedule")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--test-cases", type=int, default=8, help="fresh phantoms per test site (default 8)")
    ap.add_argument(
        "--sites",
        nargs="+",
        default=list(TEST_SITES),
        choices=list(TEST_SITES),
        help="test sites (default: all): in_domain = the training site, scanner, site_c",
    )
    ap.add_argument(
        "--bundle-args",
        type=ast.literal_eval,
        default={},
        metavar="DICT",
        help="more bundle overrides for training and evaluation, a Python dict",
    )
    args = ap.parse_args(argv)
    args.out, args.data = args.out.resolve(), args.data.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    env = child_env(args.threads)

    t0 = time.perf_counter()
    ensure_phantoms(args.data, args.num_cases, args.spacing, args.seed, env)
    test_sets = {site: args.data.with_name(f"{args.data.name}_test_{site}") for site in args.sites}
    for site, folder in test_sets.items():
        ensure_phantoms(folder, args.test_cases, args.spacing, TEST_SITES[site], env, site)
    runs = {"ours": (args.loss, args.out)}
    if args.compare_monai:
        runs["monai"] = ("monai.losses.DiceLoss", args.out / "monai_dice")
    results = {}
    for name, (loss, out) in runs.items():
        results[name] = train_and_evaluate(name, loss, out, args, env, test_sets)
    # predictions of the first model on the first test set, for the figure
    ev = results["ours"]["eval_overrides"]
    first = next(iter(test_sets))
    log(f"writing NIfTI predictions of the {first} test cases (inference config)")
    bundle_run(
        ["train.json", "inference.json"],
        {**ev, "dataset_dir": str(test_sets[first]), "infer_split": "all"},
        env,
        args.out / "inference.log",
    )
    total = time.perf_counter() - t0

    r = results["ours"]
    d = r["sites"][first]
    title = (
        f"lesion bundle, loss {r['loss']}, {args.epochs} epochs on {args.num_cases - args.num_val} phantoms "
        f"({args.spacing} mm): {first} test Dice {d['dice']:.3f}, lesion F1 {d['lesion_f1']:.3f}"
    )
    png = args.out / "demo.png"
    plot(args.out, test_sets[first], png, title)
    summary = {
        "total_seconds": round(total, 1),
        "threads": args.threads,
        "epochs": args.epochs,
        "num_cases": args.num_cases,
        "num_val": args.num_val,
        "spacing_mm": args.spacing,
        "test_sets": {k: str(v) for k, v in test_sets.items()},
        "overrides": {**DEMO_OVERRIDES, **args.bundle_args},
        "results": {k: {kk: vv for kk, vv in v.items() if kk != "eval_overrides"} for k, v in results.items()},
    }
    (args.out / "results.json").write_text(json.dumps(summary, indent=2))
    print()
    groups = list(d["sensitivity_by_size"])
    head = f"{'run':6s} {'loss':22s} {'test site':10s} {'cases':>5s} {'Dice':>14s} {'lesion F1':>9s} {'FP/case':>7s} "
    print(head + " ".join(f"{'sens ' + g:>10s}" for g in groups) + f" {'HD95 mm':>8s}")
    for k, v in results.items():
        for site, m in v["sites"].items():
            sens = " ".join(f"{m['sensitivity_by_size'][g]:10.2f}" for g in groups)
            print(
                f"{k:6s} {v['loss']:22s} {site:10s} {m['cases']:5d} {m['dice']:7.3f} ± {m['dice_std']:.3f} "
                f"{m['lesion_f1']:9.3f} {m['fp_lesions_per_case']:7.2f} {sens} {m['hd95_mm']:8.2f}"
            )
    print()
    log(
        f"done in {total / 60:.1f} min: {png}, {args.out / 'results.json'}, "
        f"per-case {args.out / 'eval' / '<site>' / 'metrics.csv'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
