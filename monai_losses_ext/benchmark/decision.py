"""The decision rule of the loss-study protocol (docs/study/protocol.md), applied to validation scores only.

Every run's validation cases are scored with its selected checkpoint (``Preset.score_validation``); this module
reads those rows, never the test rows, and picks the bundle's default loss:

1. an arm is eligible when its false-positive lesions per case exceed the baseline's by at most ``fp_margin``;
2. among the eligible arms, the highest small-lesion sensitivity wins; arms within ``min_gain`` of the best are
   tied, and the tie goes to the higher lesion-wise F1;
3. the incumbent (the bundle's current default) stays unless the winner's sensitivity exceeds its own by at
   least ``min_gain``;
4. a MONAI class that wins is replaced by our drop-in for it (same arguments and values).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["DROP_INS", "decide_default", "validation_summary"]

DROP_INS = {"monai.losses.DiceLoss": "dice", "monai.losses.DiceCELoss": "dice_ce"}
"""MONAI classes and the registry names of our drop-ins for them."""


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
            res = results[(arm, seed)]
            if "validation" not in res:
                raise KeyError(f"{arm} seed {seed} has no validation scores: run the study with --score-validation")
            rows = res["validation"]
            truth = sum(int(r[f"truth_{structure}_{size_group}"]) for r in rows)
            found = sum(int(r[f"detected_{structure}_{size_group}"]) for r in rows)
            per_seed["small_sensitivity"].append(found / truth if truth else math.nan)
            per_seed["fp_per_case"].append(_mean([float(r[f"fp_lesions_{structure}"]) for r in rows]))
            per_seed["lesion_f1"].append(_mean([float(r[f"f1_{structure}"]) for r in rows]))
            per_seed["dice"].append(_mean([float(r[f"dice_{structure}"]) for r in rows]))
            per_seed["n_small"].append(float(truth))
        out[arm] = {k: _mean(v) for k, v in per_seed.items()}
    return out


def decide_default(
    summary: Mapping[str, Mapping[str, float]],
    baseline: str,
    incumbent: str,
    fp_margin: float = 0.5,
    min_gain: float = 0.02,
) -> dict[str, Any]:
    """Apply the protocol's decision rule to a `validation_summary`.

    Args:
        summary: ``{arm: endpoints}`` of `validation_summary`.
        baseline: the arm whose false-positive rate bounds eligibility (``monai.losses.DiceLoss``).
        incumbent: the bundle's current default loss (an arm of ``summary``).
        fp_margin: the most false-positive lesions per case an eligible arm may add to the baseline's.
        min_gain: the sensitivity margin that breaks a tie and that a challenger must beat the incumbent by.

    Returns:
        ``{"default", "winner", "eligible", "reason", "rule"}``: the registry name of the new default (a MONAI
        class replaced by its drop-in), the arm that won, the eligible arms, one sentence on why, and the rule's
        parameters.

    Raises:
        ValueError: ``baseline`` or ``incumbent`` is not an arm of ``summary``, or no arm has a finite
            small-lesion sensitivity.
    """
    for name, arm in (("baseline", baseline), ("incumbent", incumbent)):
        if arm not in summary:
            raise ValueError(f"{name} {arm!r} is not among the arms {sorted(summary)}")
    limit = summary[baseline]["fp_per_case"] + fp_margin
    eligible = [a for a, s in summary.items() if s["fp_per_case"] <= limit and math.isfinite(s["small_sensitivity"])]
    if not eligible:
        raise ValueError("no arm is eligible: every arm adds too many false positives or has no small lesion")
    top = max(summary[a]["small_sensitivity"] for a in eligible)
    tied = [a for a in eligible if summary[a]["small_sensitivity"] >= top - min_gain]
    winner = max(tied, key=lambda a: (summary[a]["lesion_f1"], summary[a]["small_sensitivity"]))
    sens = {a: summary[a]["small_sensitivity"] for a in summary}
    if incumbent in eligible and winner != incumbent and sens[winner] - sens[incumbent] < min_gain:
        reason = (
            f"{winner} leads ({sens[winner]:.3f}) but by less than {min_gain} over the incumbent {incumbent} "
            f"({sens[incumbent]:.3f}): the incumbent stays"
        )
        winner = incumbent
    elif winner == incumbent:
        reason = f"the incumbent {incumbent} has the best eligible small-lesion sensitivity ({sens[winner]:.3f})"
    else:
        reason = (
            f"{winner} has the best eligible small-lesion sensitivity ({sens[winner]:.3f}, incumbent "
            f"{incumbent} {sens[incumbent]:.3f}" + ("" if incumbent in eligible else ", not eligible") + ")"
        )
    return {
        "default": DROP_INS.get(winner, winner),
        "winner": winner,
        "eligible": eligible,
        "reason": reason,
        "rule": {"baseline": baseline, "incumbent": incumbent, "fp_margin": fp_margin, "min_gain": min_gain},
    }
