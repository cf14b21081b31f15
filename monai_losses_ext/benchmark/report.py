"""The study's outputs: ``report.md`` (tables with bootstrap intervals and the paired comparison against the
baseline), ``cases.csv`` (every run x test case), ``summary.csv`` (every loss x metric) and two figures,
``sensitivity_by_size.png`` and ``dice_by_loss.png``."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from .. import metrics as M
from .curves import write_curves
from .decision import PRIMARY, decide_default, tumour_validation_summary, validation_summary
from .stats import bootstrap_ci, bootstrap_ratio_ci, paired_comparison, paired_ratio_difference

# per-case metrics reported as a mean: (column prefix, title, higher is better)
CASE_METRICS = [
    ("dice", "Dice", True),
    ("f1", "lesion F1", True),
    ("sensitivity", "lesion sensitivity", True),
    ("fp_lesions", "FP lesions / case", False),
    ("hd95", "HD95 (mm)", False),
]
PAIRED = ("dice", "f1", "fp_lesions", "hd95")
DIFF_KEYS = ("diff", "diff_low", "diff_high")


def _arrays(results: dict, losses, seeds, key: str) -> dict[str, np.ndarray]:
    """``{loss: (n_seeds, n_cases)}`` of one per-case value."""
    out = {}
    for loss in losses:
        out[loss] = np.array([[float(c[key]) for c in results[(loss, s)]["cases"]] for s in seeds], dtype=float)
    return out


def summarize(results: dict, losses, seeds, structures, size_edges, baseline: str, n_boot: int = 2000) -> list[dict]:
    """One row per (structure, loss, metric): value and interval, and for the paired metrics the difference
    to the baseline with its interval, p-value and case counts."""
    groups = M.size_group_labels(size_edges)
    rows = []
    for s in structures:
        for prefix, _, _ in CASE_METRICS:
            arr = _arrays(results, losses, seeds, f"{prefix}_{s}")
            for loss in losses:
                mean, lo, hi = bootstrap_ci(arr[loss], n_boot=n_boot)
                row = {
                    "structure": s,
                    "loss": loss,
                    "metric": prefix,
                    "value": mean,
                    "low": lo,
                    "high": hi,
                    "n_undefined": int(np.isnan(arr[loss]).sum()),
                    "n_cases": int(arr[loss].shape[1]),
                }
                if prefix in PAIRED and loss != baseline:
                    pc = paired_comparison(arr[loss], arr[baseline], n_boot=n_boot)
                    row.update(
                        diff=pc.diff,
                        diff_low=pc.low,
                        diff_high=pc.high,
                        p_value=pc.p_value,
                        higher=pc.higher,
                        equal=pc.equal,
                        lower=pc.lower,
                    )
                rows.append(row)
        for g in groups:
            det = _arrays(results, losses, seeds, f"detected_{s}_{g}")
            tru = _arrays(results, losses, seeds, f"truth_{s}_{g}")
            for loss in losses:
                ratio, lo, hi = bootstrap_ratio_ci(det[loss], tru[loss], n_boot=n_boot)
                row = {
                    "structure": s,
                    "loss": loss,
                    "metric": f"sensitivity_{g}",
                    "value": ratio,
                    "low": lo,
                    "high": hi,
                    "n_lesions": int(tru[loss][0].sum()),
                }
                if loss != baseline:
                    pr = paired_ratio_difference(det[loss], tru[loss], det[baseline], tru[baseline], n_boot=n_boot)
                    row.update(diff=pr.diff, diff_low=pr.low, diff_high=pr.high)
                rows.append(row)
    return rows


def _ci(v: float, lo: float, hi: float, digits: int = 3) -> str:
    if v is None or not math.isfinite(v):
        return "—"
    return f"{v:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _p(p: float) -> str:
    return "—" if p is None or not math.isfinite(p) else (f"{p:.3f}" if p >= 0.001 else "<0.001")


def markdown(rows: list[dict], losses, structures, size_edges, baseline: str, train_minutes: dict) -> str:
    groups = M.size_group_labels(size_edges)
    get = {(r["structure"], r["loss"], r["metric"]): r for r in rows}
    out = []
    for s in structures:
        n_les = {g: get[(s, losses[0], f"sensitivity_{g}")]["n_lesions"] for g in groups}
        head = ["loss", "Dice", "lesion F1"] + [f"sensitivity {g} vox (n={n_les[g]})" for g in groups]
        head += ["FP lesions / case", "HD95 mm", "train min / run"]
        out += [f"### {s}: mean [95% CI]", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for loss in losses:
            cells = [f"`{loss}`" + (" (baseline)" if loss == baseline else "")]
            for m in ("dice", "f1", *[f"sensitivity_{g}" for g in groups], "fp_lesions", "hd95"):
                r = get[(s, loss, m)]
                digits = 1 if m == "hd95" else 2 if m == "fp_lesions" else 3
                cell = _ci(r["value"], r["low"], r["high"], digits)
                if m == "hd95" and r["n_undefined"]:
                    cell += f" ({r['n_undefined']} undefined)"
                cells.append(cell)
            cells.append(f"{train_minutes[loss]:.1f}")
            out.append("| " + " | ".join(cells) + " |")
        out += [
            "",
            f"Paired against `{baseline}` on the same test cases (loss − baseline, each case averaged over "
            "seeds; 95% bootstrap CI; two-sided Wilcoxon signed-rank p; cases higher / equal / lower):",
            "",
        ]
        titles = {m: t for m, t, _ in CASE_METRICS}
        head = ["loss"] + [f"Δ {titles[m]}" for m in PAIRED] + ["cases with Dice higher / equal / lower"]
        out += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for loss in losses:
            if loss == baseline:
                continue
            cells = [f"`{loss}`"]
            for m in PAIRED:
                r = get[(s, loss, m)]
                cells.append(
                    _ci(r["diff"], r["diff_low"], r["diff_high"], 1 if m == "hd95" else 3) + f", p {_p(r['p_value'])}"
                )
            d = get[(s, loss, "dice")]
            cells.append(f"{d['higher']} / {d['equal']} / {d['lower']}")
            out.append("| " + " | ".join(cells) + " |")
        out += [
            "",
            f"Pooled lesion sensitivity by size, paired against `{baseline}` (loss − baseline; detected and truth "
            "lesions summed over the resampled cases and seeds before each ratio, the same cases for both arms; "
            "95% bootstrap CI):",
            "",
        ]
        head = ["loss"] + [f"Δ sensitivity {g} vox" for g in groups]
        out += ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
        for loss in losses:
            if loss != baseline:
                cells = [_ci(*(get[(s, loss, f"sensitivity_{g}")][k] for k in DIFF_KEYS)) for g in groups]
                out.append("| " + " | ".join([f"`{loss}`", *cells]) + " |")
        out.append("")
    return "\n".join(out)


def site_markdown(tables: dict[str, list[dict]], losses, structures, size_edges) -> str:
    """One table per structure: every loss on the in-domain test cases and on each shifted site, mean [95% CI]."""
    groups = M.size_group_labels(size_edges)
    out = []
    for s in structures:
        head = ["loss", "test set", "cases", "Dice", "lesion F1", "FP lesions / case"]
        head += [f"sensitivity {g} vox" for g in groups] + ["HD95 mm"]
        out += [
            f"### {s}: in-domain test cases vs shifted sites, mean [95% CI]",
            "",
            "| " + " | ".join(head) + " |",
            "|---" * len(head) + "|",
        ]
        for loss in losses:
            for name, rows in tables.items():
                get = {(r["structure"], r["loss"], r["metric"]): r for r in rows}
                cells = [f"`{loss}`", name, str(get[(s, loss, "dice")].get("n_cases", ""))]
                for m in ("dice", "f1", "fp_lesions", *[f"sensitivity_{g}" for g in groups], "hd95"):
                    r = get[(s, loss, m)]
                    cells.append(
                        _ci(r["value"], r["low"], r["high"], 1 if m == "hd95" else 2 if m == "fp_lesions" else 3)
                    )
                out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def site_results(results: dict, site: str) -> dict:
    """The results with a shifted site's case rows in place of the test cases."""
    return {k: {**r, "cases": r["sites"][site]} for k, r in results.items()}


def write_csvs(out: Path, results: dict, losses, seeds, rows: list[dict], suffix: str = "") -> None:
    with open(out / f"cases{suffix}.csv", "w", newline="", encoding="utf-8") as f:
        first = results[(losses[0], seeds[0])]["cases"][0]
        cols = ["loss", "seed", *first.keys()]
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for loss in losses:
            for s in seeds:
                for c in results[(loss, s)]["cases"]:
                    w.writerow({"loss": loss, "seed": s, **c})
    cols = [
        "structure",
        "loss",
        "metric",
        "value",
        "low",
        "high",
        "n_undefined",
        "n_cases",
        "n_lesions",
        "diff",
        "diff_low",
        "diff_high",
        "p_value",
        "higher",
        "equal",
        "lower",
    ]
    with open(out / f"summary{suffix}.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in cols})


def plots(
    out: Path, results: dict, losses, seeds, structures, size_edges, rows: list[dict], baseline: str
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = M.size_group_labels(size_edges)
    get = {(r["structure"], r["loss"], r["metric"]): r for r in rows}
    colours = plt.get_cmap("tab10")
    n = len(structures)

    fig, axes = plt.subplots(
        1, n, figsize=(max(6, 1.2 * len(losses) * len(groups)) * min(n, 2) / 1.5, 3.8), squeeze=False
    )
    width = 0.8 / len(losses)
    for ax, s in zip(axes[0], structures):
        x = np.arange(len(groups))
        for i, loss in enumerate(losses):
            r = [get[(s, loss, f"sensitivity_{g}")] for g in groups]
            v = np.array([q["value"] for q in r], dtype=float)
            err = np.array([[q["value"] - q["low"], q["high"] - q["value"]] for q in r], dtype=float).T
            ax.bar(
                x + (i - (len(losses) - 1) / 2) * width,
                np.nan_to_num(v),
                width,
                yerr=np.nan_to_num(err),
                capsize=2,
                color=colours(i % 10),
                label=loss,
            )
        n_les = [get[(s, losses[0], f"sensitivity_{g}")]["n_lesions"] for g in groups]
        ax.set_xticks(x, [f"{g} voxels\n(n={k})" for g, k in zip(groups, n_les)])
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("lesion-wise sensitivity")
        ax.set_title(f"{s}: detected truth lesions by size (95% CI)", fontsize=10)
    axes[0][-1].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    p1 = out / "sensitivity_by_size.png"
    fig.savefig(p1, dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, n, figsize=(max(6, 1.3 * len(losses)) * min(n, 2) / 1.2, 3.8), squeeze=False)
    for ax, s in zip(axes[0], structures):
        arr = _arrays(results, losses, seeds, f"dice_{s}")
        per_case = [np.nanmean(arr[loss], 0) for loss in losses]
        ax.boxplot(per_case, showfliers=False, widths=0.5)
        rng = np.random.default_rng(0)
        for i, v in enumerate(per_case):
            ax.scatter(i + 1 + rng.uniform(-0.12, 0.12, v.size), v, s=10, color=colours(i % 10), zorder=3)
        ax.set_xticks(
            range(1, len(losses) + 1),
            [lo.replace("monai.losses.", "monai ") for lo in losses],
            rotation=20,
            ha="right",
            fontsize=8,
        )
        ax.set_ylim(0, 1)
        ax.set_ylabel("test-case Dice (mean over seeds)")
        ax.set_title(f"{s}: Dice per test case", fontsize=10)
    fig.tight_layout()
    p2 = out / "dice_by_loss.png"
    fig.savefig(p2, dpi=100)
    plt.close(fig)
    return [p1, p2]


def write_report(study, results: dict, command: str, n_boot: int = 2000) -> Path:
    """Write report.md, cases.csv, summary.csv and the figures into ``study.out``; returns report.md's path."""
    import platform

    import monai
    import torch

    from ..bundle import structures_of

    p = study.preset
    losses, seeds = p.losses, p.seeds
    structures = list(structures_of(str(study.dataset_dir()), study.task))
    rows = summarize(results, losses, seeds, structures, p.size_edges, p.baseline, n_boot)
    write_csvs(study.out, results, losses, seeds, rows)
    figs = plots(study.out, results, losses, seeds, structures, p.size_edges, rows, p.baseline)
    tables = {"in-domain test": rows}
    for site in p.sites:
        tables[f"site `{site}`"] = summarize(
            site_results(results, site), losses, seeds, structures, p.size_edges, p.baseline, n_boot
        )
        write_csvs(study.out, site_results(results, site), losses, seeds, tables[f"site `{site}`"], suffix=f"_{site}")
    _, checks = write_curves(study.out, {key: study.run_dir(*key) for key in results}, p.epochs)
    decision = write_decision(study, results) if p.score_validation else None
    train_min = {loss: np.mean([results[(loss, s)]["train_seconds"] for s in seeds]) / 60 for loss in losses}
    # the runs' own times, stored with each run, so a resumed study reports the same total
    run_min = sum(r["train_seconds"] + r["infer_seconds"] for r in results.values()) / 60
    n_test = len(results[(losses[0], seeds[0])]["cases"])
    device = (
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else (platform.processor() or platform.machine())
    )
    lines = [
        f"# Loss study: {study.task}, {len(losses)} losses x {len(seeds)} seeds",
        "",
        f"Command: `{command}`",
        "",
        f"* Data: `{study.dataset_dir().name}`; {n_test} test cases (held out from training and model selection), "
        f"{p.num_val} validation cases for choosing the checkpoint, the rest for training.",
        f"* Schedule: {p.epochs} epochs; bundle overrides `{_compact(p.schedule)}`; seeds {seeds}.",
        f"* Machine: {device}, {p.threads or 'all'} threads; torch {torch.__version__}, MONAI {monai.__version__}; "
        f"the {len(results)} runs took {run_min:.1f} min of training and inference in all.",
        f"* Intervals: 95% bootstrap over test cases and seeds ({n_boot} resamples). Sensitivity by size pools the "
        "truth lesions of all cases (detected / total, size in voxels of the truth lesion). HD95 is undefined "
        "(skipped, counted) when a case has an empty prediction or truth for that structure.",
        "",
        markdown(rows, losses, structures, p.size_edges, p.baseline, train_min),
        *(
            [
                f"## Site shift: the same models on phantoms of other sites ({', '.join(p.sites)}; "
                f"{p.num_site_cases} cases each; parameters in docs/phantoms.md)",
                "",
                site_markdown(tables, losses, structures, p.size_edges),
            ]
            if p.sites
            else []
        ),
        *[f"![{f.stem}]({f.name})" for f in figs],
        "",
        plateau_markdown(checks, p.epochs),
        *(["", decision_markdown(decision)] if decision else []),
        "",
        "How to read it: intervals that overlap heavily mean the study cannot tell the losses apart at this size; "
        "the paired differences are the sharper test because every loss is scored on the same cases. A loss that "
        "raises small-lesion sensitivity while adding false-positive lesions trades precision for recall.",
        "",
    ]
    path = study.out / "report.md"
    path.write_text("\n".join(lines))
    return path


def write_decision(study, results: dict) -> dict:
    """The protocol's decision rule on the validation scores (decision.json in ``study.out``): the bundle's
    current ``loss_name`` is the incumbent, the preset's baseline bounds the false positives."""
    import json

    from ..bundle import bundle_dir

    p = study.preset
    with open(bundle_dir(study.task, study.bundles) / "configs" / "train.json", encoding="utf-8") as f:
        incumbent = json.load(f)["loss_name"]
    incumbent = incumbent if incumbent in p.losses else p.baseline
    if study.task == "tumour":
        summary = tumour_validation_summary(results, p.losses, p.seeds)
        decision = decide_default(summary, p.baseline, incumbent, primary="mean_dice")
    else:
        summary = validation_summary(results, p.losses, p.seeds, size_group=M.size_group_labels(p.size_edges)[0])
        decision = decide_default(summary, p.baseline, incumbent)
    decision["summary"] = summary
    (study.out / "decision.json").write_text(json.dumps(decision, indent=1), encoding="utf-8")
    return decision


def decision_markdown(decision: dict) -> str:
    """The decision and the validation endpoints it read, as Markdown."""
    rule = decision["rule"]
    primary = rule.get("primary", "small_sensitivity")
    tumour = primary == "mean_dice"
    lines = [
        "## Decision on validation scores (docs/study/protocol.md)",
        "",
        f"Default: **`{decision['default']}`** — {decision['reason']}. Eligible: false-positive "
        f"{'components of WT' if tumour else 'lesions'} per case at most {rule['fp_margin']} above "
        f"`{rule['baseline']}`'s; ties and the incumbent's margin: {rule['min_gain']} in {PRIMARY[primary]}.",
        "",
    ]
    if tumour:
        lines += [
            "| arm | mean Dice (TC, WT, ET) | FP components of WT / case | lesion F1 | eligible |",
            "|---|---|---|---|---|",
        ]
    else:
        lines += [
            "| arm | small-lesion sensitivity | FP lesions / case | lesion F1 | Dice | small lesions / seed "
            "| eligible |",
            "|---|---|---|---|---|---|---|",
        ]
    for arm, v in decision["summary"].items():
        cells = [f"`{arm}`", f"{v[primary]:.3f}", f"{v['fp_per_case']:.2f}", f"{v['lesion_f1']:.3f}"]
        if not tumour:
            cells += [f"{v['dice']:.3f}", f"{v['n_small']:.0f}"]
        cells.append("yes" if arm in decision["eligible"] else "no")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plateau_markdown(checks: list[dict], epochs: int) -> str:
    """The plateau rule per run as a Markdown table (rows of :func:`~monai_losses_ext.benchmark.write_curves`)."""

    def cell(c: dict) -> str:
        verdict = {True: "plateaued", False: "**still rising**", None: "too few validations"}[c["plateaued"]]
        return f"{c['m_mid']:.3f} → {c['m_end']:.3f} ({c['gain']:+.3f}, {verdict})"

    metrics = list(dict.fromkeys(c["metric"] for c in checks))
    runs = list(dict.fromkeys((c["loss"], c["seed"]) for c in checks))
    by = {(c["loss"], c["seed"], c["metric"]): c for c in checks}
    lines = [
        "## Validation curves: the plateau rule (every validation in curves.csv)",
        "",
        f"Mean of the last 3 validations at 75% of the {epochs} epochs → at the end; a run has plateaued when the "
        "rise is under 0.01 (docs/study/protocol.md).",
        "",
        "| loss | seed | " + " | ".join(metrics) + " |",
        "|---|---|" + "---|" * len(metrics),
    ]
    for loss, seed in runs:
        lines.append(f"| `{loss}` | {seed} | " + " | ".join(cell(by[(loss, seed, m)]) for m in metrics) + " |")
    return "\n".join(lines)


def _compact(d: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items() if k not in ("progress_bar", "log_every"))
