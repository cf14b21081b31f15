"""The decision rule of the loss-study protocol (docs/study/protocol.md), applied to validation scores only.

Every run's validation cases are scored with its selected checkpoint (``Preset.score_validation``); this module
reads those rows, never the test rows, and picks the bundle's default loss:

1. an arm is eligible when its false-positive lesions per case exceed the baseline's by at most ``fp_margin``;
2. among the eligible arms, the highest small-lesion sensitivity wins; arms within ``min_gain`` of the best are
   tied, and the tie goes to the higher lesion-wise F1;
3. the incumbent (the bundle's current default) stays unless the winner's sensitivity exceeds its own by at
   least ``min_gain``;
4. a MONAI class that wins is replaced by our drop-in for it (same arguments and values).

The tumour task is decided the same way (`tumour_validation_summary`): the primary endpoint is the mean Dice over
the regions (TC, WT, ET), the safety endpoint the false-positive components of WT per case, and ties go to the
mean lesion-wise F1 over the regions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["DROP_INS", "PRIMARY", "decide_default", "tumour_validation_summary", "validation_summary"]

DROP_INS = {"monai.losses.DiceLoss": "dice", "monai.losses.DiceCELoss": "dice_ce"}
"""MONAI classes and the registry names of our drop-ins for them."""

PRIMARY = {"small_sensitivity": "small-lesion sensitivity", "mean_dice": "mean Dice over the regions"}
"""The primary endpoints the rule can rank by: the lesion task's and the tumour task's, and how they read."""


def _mean(values: Sequence[float]) -> float:
    kept = [v for v in values if math.isfinite(v)]
    return sum(kept) / len(kept) if kept else math.nan


def validation_summary(
    results: Mapping[tuple[str, int], Mapping[str, Any]],
    losses: Sequence[str],
    seeds: Sequence[int],
    structure: str = "lesion",
    size_group: str = "<10",
) -> dict[str, dict[str, float]]:
    """Per arm, the validation endpoints of the protocol, each averaged over the seeds.

    Args:
        results: the study's results, ``{(arm, seed): result}``; each result needs ``"validation"`` rows.
        losses: the arms.
        seeds: the seeds.
        structure: the scored structure (``"lesion"``; a tumour region such as ``"WT"``).
        size_group: the size group of the primary endpoint, as the case rows name it (``"<10"``).

    Returns:
        ``{arm: {"small_sensitivity", "fp_per_case", "lesion_f1", "dice", "n_small"}}``: the detected fraction of
        the true lesions of ``size_group``, pooled over the validation cases of a seed; the mean false-positive
        lesions per case; the mean lesion-wise F1 and Dice (NaN values skipped); the mean number of true lesions
        in the group per seed.

    Raises:
        KeyError: a run has no validation scores (score them with ``score_validation``), or its rows lack the
            structure's columns.
    """
    out = {}
    keys = ("small_sensitivity", "fp_per_case", "lesion_f1", "dice", "n_small")
    for arm in losses:
        per_seed: dict[str, list[float]] = {k: [] for k in keys}
        for seed in seeds:
            rows = _validation_rows(results, arm, seed)
            truth = sum(int(r[f"truth_{structure}_{size_group}"]) for r in rows)
            found = sum(int(r[f"detected_{structure}_{size_group}"]) for r in rows)
            per_seed["small_sensitivity"].append(found / truth if truth else math.nan)
            per_seed["fp_per_case"].append(_mean([float(r[f"fp_lesions_{structure}"]) for r in rows]))
            per_seed["lesion_f1"].append(_mean([float(r[f"f1_{structure}"]) for r in rows]))
            per_seed["dice"].append(_mean([float(r[f"dice_{structure}"]) for r in rows]))
            per_seed["n_small"].append(float(truth))
        out[arm] = {k: _mean(v) for k, v in per_seed.items()}
    return out


def tumour_validation_summary(
    results: Mapping[tuple[str, int], Mapping[str, Any]],
    losses: Sequence[str],
    seeds: Sequence[int],
    regions: Sequence[str] = ("TC", "WT", "ET"),
    safety: str = "WT",
) -> dict[str, dict[str, float]]:
    """Per arm, the tumour task's validation endpoints, each averaged over the seeds.

    Args:
        results: the study's results, ``{(arm, seed): result}``; each result needs ``"validation"`` rows.
        losses: the arms.
        seeds: the seeds.
        regions: the scored regions whose Dice is averaged (the primary endpoint).
        safety: the region whose false-positive components per case bound eligibility.

    Returns:
        ``{arm: {"mean_dice", "fp_per_case", "lesion_f1", "dice"}}``: the mean over cases and regions of the
        Dice; the mean false-positive components of ``safety`` per case; the mean lesion-wise F1 over cases and
        regions (NaN values skipped); ``dice`` repeats ``mean_dice``.

    Raises:
        KeyError: a run has no validation scores (score them with ``score_validation``), or its rows lack a
            region's columns.
    """
    out = {}
    for arm in losses:
        per_seed: dict[str, list[float]] = {"mean_dice": [], "fp_per_case": [], "lesion_f1": []}
        for seed in seeds:
            rows = _validation_rows(results, arm, seed)
            per_seed["mean_dice"].append(_mean([float(r[f"dice_{g}"]) for r in rows for g in regions]))
            per_seed["fp_per_case"].append(_mean([float(r[f"fp_lesions_{safety}"]) for r in rows]))
            per_seed["lesion_f1"].append(_mean([float(r[f"f1_{g}"]) for r in rows for g in regions]))
        out[arm] = {k: _mean(v) for k, v in per_seed.items()}
        out[arm]["dice"] = out[arm]["mean_dice"]
    return out


def _validation_rows(results: Mapping, arm: str, seed: int) -> list:
    res = results[(arm, seed)]
    if "validation" not in res:
        raise KeyError(f"{arm} seed {seed} has no validation scores: run the study with --score-validation")
    return res["validation"]


def decide_default(
    summary: Mapping[str, Mapping[str, float]],
    baseline: str,
    incumbent: str,
    fp_margin: float = 0.5,
    min_gain: float = 0.02,
    primary: str = "small_sensitivity",
) -> dict[str, Any]:
    """Apply the protocol's decision rule to a `validation_summary` (or a `tumour_validation_summary`).

    Args:
        summary: ``{arm: endpoints}`` of `validation_summary` or `tumour_validation_summary`.
        baseline: the arm whose false-positive rate bounds eligibility (``monai.losses.DiceLoss``).
        incumbent: the bundle's current default loss (an arm of ``summary``).
        fp_margin: the most false-positive lesions (components) per case an eligible arm may add to the
            baseline's.
        min_gain: the margin of the primary endpoint that breaks a tie and that a challenger must beat the
            incumbent by.
        primary: the endpoint ranked: ``"small_sensitivity"`` (lesion task) or ``"mean_dice"`` (tumour task).

    Returns:
        ``{"default", "winner", "eligible", "reason", "rule"}``: the registry name of the new default (a MONAI
        class replaced by its drop-in), the arm that won, the eligible arms, one sentence on why, and the rule's
        parameters (``primary`` among them).

    Raises:
        ValueError: ``baseline`` or ``incumbent`` is not an arm of ``summary``, ``primary`` is not one of
            `PRIMARY`, or no arm has a finite primary endpoint.
    """
    if primary not in PRIMARY:
        raise ValueError(f"primary={primary!r}: rank by one of {sorted(PRIMARY)}")
    for name, arm in (("baseline", baseline), ("incumbent", incumbent)):
        if arm not in summary:
            raise ValueError(f"{name} {arm!r} is not among the arms {sorted(summary)}")
    what = PRIMARY[primary]
    limit = summary[baseline]["fp_per_case"] + fp_margin
    eligible = [a for a, s in summary.items() if s["fp_per_case"] <= limit and math.isfinite(s[primary])]
    if not eligible:
        raise ValueError(f"no arm is eligible: every arm adds too many false positives or has no finite {what}")
    top = max(summary[a][primary] for a in eligible)
    tied = [a for a in eligible if summary[a][primary] >= top - min_gain]
    winner = max(tied, key=lambda a: (summary[a]["lesion_f1"], summary[a][primary]))
    score = {a: summary[a][primary] for a in summary}
    if incumbent in eligible and winner != incumbent and score[winner] - score[incumbent] < min_gain:
        reason = (
            f"{winner} leads ({score[winner]:.3f}) but by less than {min_gain} over the incumbent {incumbent} "
            f"({score[incumbent]:.3f}): the incumbent stays"
        )
        winner = incumbent
    elif winner == incumbent:
        reason = f"the incumbent {incumbent} has the best eligible {what} ({score[winner]:.3f})"
    else:
        reason = (
            f"{winner} has the best eligible {what} ({score[winner]:.3f}, incumbent "
            f"{incumbent} {score[incumbent]:.3f}" + ("" if incumbent in eligible else ", not eligible") + ")"
        )
    return {
        "default": DROP_INS.get(winner, winner),
        "winner": winner,
        "eligible": eligible,
        "reason": reason,
        "rule": {
            "baseline": baseline,
            "incumbent": incumbent,
            "fp_margin": fp_margin,
            "min_gain": min_gain,
            "primary": primary,
        },
    }
