"""Command line of the loss benchmark; ``python -m monai_losses_ext.benchmark --help``."""

from __future__ import annotations

import argparse
import ast
import shlex
import sys
from dataclasses import replace
from pathlib import Path

EPILOG = r"""examples:
  python -m monai_losses_ext.benchmark                      # both parts, CPU preset (~30 min on 2 cores)
  python -m monai_losses_ext.benchmark quality --preset gpu # the larger study on a GPU
  python -m monai_losses_ext.benchmark quality --data /data/Task01_BrainTumour --task tumour --num-test 40
  python -m monai_losses_ext.benchmark quality --losses dice_ce focal_tversky --seeds 0 1 2
  python -m monai_losses_ext.benchmark quality --preset demo --out runs/recipe/new   # in-domain vs shifted sites
  python -m monai_losses_ext.benchmark quality --data /data/MyLesions \
      --bundle-args "{'in_channels': 1, 'label_remap': {255: 1}}"
  python -m monai_losses_ext.benchmark speed --device cuda --size 128 --amp
  python -m monai_losses_ext.benchmark regime               # sparse labels, the bundles' patch sizes, step share

Run the same command again to resume: finished runs are read back, an interrupted training continues from
its last checkpoint. Outputs (default runs/benchmark/<preset>/): report.md, cases.csv, summary.csv,
sensitivity_by_size.png, dice_by_loss.png, speed.md, speed.csv.
"""

SPEED_PRESETS = {
    "cpu": dict(size=64, repeats=3, amp=False),
    "gpu": dict(size=128, repeats=10, amp=True),
    "tiny": dict(size=16, repeats=1, amp=False),
}


def parser() -> argparse.ArgumentParser:
    from .quality import PRESETS

    p = argparse.ArgumentParser(
        prog="python -m monai_losses_ext.benchmark",
        description=__doc__.split(";")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("part", nargs="?", default="all", choices=["all", "speed", "quality", "regime"])
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="study size (default cpu)")
    p.add_argument("--out", type=Path, help="output folder (default runs/benchmark/<preset>)")
    q = p.add_argument_group("quality study (defaults from the preset)")
    q.add_argument("--task", default="lesion", choices=["lesion", "tumour"], help="bundle and metrics (default lesion)")
    q.add_argument("--data", type=Path, help="an MSD-layout dataset (default: generate lesion/tumour phantoms)")
    q.add_argument("--losses", nargs="+", help="registry names or dotted paths, e.g. dice_ce monai.losses.DiceLoss")
    q.add_argument("--baseline", help="the loss every other is paired against (default monai.losses.DiceLoss)")
    q.add_argument("--seeds", nargs="+", type=int)
    q.add_argument("--epochs", type=int)
    q.add_argument("--num-cases", type=int, help="phantoms to generate")
    q.add_argument("--num-test", type=int, help="last N labelled cases: the test set")
    q.add_argument("--num-val", type=int, help="validation cases (checkpoint choice), before the test cases")
    q.add_argument("--size-edges", nargs="+", type=int, help="lesion-size group edges in voxels (default 10 50)")
    q.add_argument(
        "--sites", nargs="*", help="shifted phantom sites every model is also scored on, e.g. scanner site_c"
    )
    q.add_argument("--num-site-cases", type=int, help="phantoms per shifted site (default 12)")
    q.add_argument("--threads", type=int, help="CPU threads per run (0: all)")
    q.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default 2000)")
    q.add_argument("--bundles", type=Path, help="the bundles/ folder (default: this checkout's)")
    q.add_argument(
        "--bundle-args",
        type=_literal_dict,
        default={},
        metavar="DICT",
        help="more bundle overrides for every run, a Python dict, e.g. \"{'in_channels': 1, "
        "'label_remap': {255: 1}}\" for single-channel images with 0/255 masks",
    )
    q.add_argument(
        "--loss-args",
        type=_literal_dict,
        metavar="DICT",
        help="arguments of loss variants, by arm, a Python dict, e.g. \"{'dice_ce@batch': {'batch': True}}\" "
        "with --losses dice_ce dice_ce@batch",
    )
    q.add_argument(
        "--score-validation",
        action="store_true",
        default=None,
        help="also score the validation cases with each run's selected checkpoint, and apply the loss-study "
        "protocol's decision rule to them (decision.json)",
    )
    q.add_argument("--no-progress", action="store_true")
    s = p.add_argument_group("speed (defaults from the preset: cpu 64^3, gpu 128^3 + AMP)")
    s.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    s.add_argument("--size", type=int)
    s.add_argument("--batch", type=int, default=2)
    s.add_argument("--classes", type=int, default=4)
    s.add_argument("--repeats", type=int)
    s.add_argument("--amp", action="store_true", default=None)
    s.add_argument("--only", nargs="*", help="case names or registry names to time")
    s.add_argument("--no-peers", action="store_true", help="skip segmentation_models_pytorch / kornia")
    r = p.add_argument_group("regime (sparse labels at the bundles' patch sizes; the loss's share of a step)")
    r.add_argument("--sizes", nargs="+", type=int, help="patch edges of the sparse-label table (default 64 96)")
    r.add_argument("--step-patch", type=int, help="patch edge of the step-share run (default: the bundle's)")
    r.add_argument("--no-step", action="store_true", help="skip the step-share run")
    return p


def _literal_dict(text: str) -> dict:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as err:
        raise argparse.ArgumentTypeError(f"not a Python literal: {text!r} ({err})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a dict such as \"{{'in_channels': 1}}\", got {text!r}")
    return value


def study_from_args(a):
    from .quality import PRESETS, Study

    changes = {
        k: v
        for k, v in {
            "losses": a.losses,
            "seeds": a.seeds,
            "epochs": a.epochs,
            "num_cases": a.num_cases,
            "num_test": a.num_test,
            "num_val": a.num_val,
            "threads": a.threads,
            "baseline": a.baseline,
            "size_edges": tuple(a.size_edges) if a.size_edges else None,
            "sites": tuple(a.sites) if a.sites is not None else None,
            "num_site_cases": a.num_site_cases,
            "loss_args": a.loss_args,
            "score_validation": a.score_validation,
        }.items()
        if v is not None
    }
    if a.bundle_args:
        changes["schedule"] = {**PRESETS[a.preset].schedule, **a.bundle_args}
    preset = replace(PRESETS[a.preset], **changes)
    return Study(preset, a.out, task=a.task, data=a.data, bundles=a.bundles)


def main(argv=None) -> int:
    import torch

    a = parser().parse_args(argv)
    a.out = (a.out or Path("runs") / "benchmark" / a.preset).resolve()
    command = "python -m monai_losses_ext.benchmark " + shlex.join(sys.argv[1:] if argv is None else argv)
    if a.part in ("all", "speed"):
        from . import speed

        for k, v in SPEED_PRESETS[a.preset].items():
            if getattr(a, k) is None:
                setattr(a, k, v)
        a.device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
        a.threads_speed = a.threads
        print(f"== speed and memory ({a.device}, {a.size}^3) ==", flush=True)
        speed.main(argparse.Namespace(**{**vars(a), "out": a.out, "threads": a.threads}))
    if a.part == "regime":
        from . import regime

        a.device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
        a.repeats = a.repeats or 7
        print(f"== loss speed in the bundles' regime ({a.device}) ==", flush=True)
        regime.main(a)
    if a.part in ("all", "quality"):
        from .report import write_report

        study = study_from_args(a)
        print(
            f"== quality study ({study.task}; {len(study.preset.losses)} losses x {len(study.preset.seeds)} seeds, "
            f"{study.preset.epochs} epochs) -> {study.out} ==",
            flush=True,
        )
        results = study.run(progress=not a.no_progress)
        report = write_report(study, results, command, n_boot=a.n_boot)
        print(report.read_text())
        print(f"wrote {report}, cases.csv, summary.csv and the figures in {study.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
