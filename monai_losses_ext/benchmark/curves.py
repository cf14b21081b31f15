"""Validation curves of a study's runs and the plateau rule of the loss-study protocol (docs/study/protocol.md).

Each run's ``logs/history.jsonl`` holds one record per validation (``val_mean_dice``, ``val_lesion_f1``, ...).
The plateau rule compares the mean of the last ``window`` validations at the end of training with the same mean at
``fraction`` of the training: a run whose curve still rose by ``tol`` or more in its last quarter had not
plateaued.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..bundle.history import read_history

__all__ = ["CURVE_METRICS", "plateau_check", "validation_curves", "write_curves"]

CURVE_METRICS = ("val_mean_dice", "val_lesion_f1")
"""The validation metrics the plateau rule is applied to (both must plateau)."""


def _trailing_mean(epochs: Sequence[int], values: Sequence[float], at: float, window: int) -> float:
    """The mean of the last ``window`` finite values at epochs ``<= at``; NaN when there are fewer."""
    kept = [v for e, v in zip(epochs, values) if e <= at and math.isfinite(v)]
    return sum(kept[-window:]) / window if len(kept) >= window else math.nan


def plateau_check(
    epochs: Sequence[int],
    values: Sequence[float],
    total_epochs: int,
    window: int = 3,
    fraction: float = 0.75,
    tol: float = 0.01,
) -> dict[str, Any]:
    """The plateau rule on one validation curve: ``m(E) - m(fraction * E) < tol``, with ``m(e)`` the mean of the
    last ``window`` validations at or before epoch ``e``.

    Args:
        epochs: the validation epochs, increasing.
        values: the metric at those epochs (higher is better); NaN values are skipped.
        total_epochs: E, the run's planned number of epochs.
        window: validations averaged at each end.
        fraction: where the earlier mean is taken, as a fraction of E, in ``(0, 1)``.
        tol: the largest rise, in the metric's units, that still counts as a plateau.

    Returns:
        ``{"m_end", "m_mid", "gain", "plateaued"}``: the two means, their difference and whether it is below
        ``tol``; ``plateaued`` is None when the curve has too few validations on either side (or did not reach
        E) to decide.

    Raises:
        ValueError: ``epochs`` and ``values`` differ in length, ``window < 1``, ``fraction`` is outside
            ``(0, 1)`` or ``total_epochs < 1``.
    """
    if len(epochs) != len(values):
        raise ValueError(f"{len(epochs)} epochs but {len(values)} values")
    if window < 1 or not 0 < fraction < 1 or total_epochs < 1:
        raise ValueError(f"window={window} (>= 1), fraction={fraction} (in (0, 1)), total_epochs={total_epochs} (>= 1)")
    reached = bool(epochs) and max(epochs) >= total_epochs
    m_end = _trailing_mean(epochs, values, total_epochs, window) if reached else math.nan
    m_mid = _trailing_mean(epochs, values, fraction * total_epochs, window)
    gain = m_end - m_mid
    return {"m_end": m_end, "m_mid": m_mid, "gain": gain, "plateaued": None if math.isnan(gain) else gain < tol}


def validation_curves(run_dirs: dict[tuple[str, int], Path]) -> list[dict[str, Any]]:
    """One row per validation of every run: ``{"loss", "seed", "epoch", <metric>: value, ...}``.

    Args:
        run_dirs: ``{(loss, seed): run folder}`` (each with ``logs/history.jsonl``).

    Returns:
        The rows, run by run in the order of ``run_dirs``, each run's validations in epoch order (a validation
        recorded twice, e.g. after a resume, is kept once: the last record of that epoch).
    """
    rows = []
    for (loss, seed), rd in run_dirs.items():
        _, val = read_history(str(Path(rd) / "logs" / "history.jsonl"))
        by_epoch = {int(r["epoch"]): r for r in val}
        for epoch in sorted(by_epoch):
            rec = by_epoch[epoch]
            rows.append(
                {"loss": loss, "seed": seed, "epoch": epoch, **{k: v for k, v in rec.items() if k.startswith("val_")}}
            )
    return rows


def write_curves(
    out: Path, run_dirs: dict[tuple[str, int], Path], total_epochs: int, metrics: Sequence[str] = CURVE_METRICS
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Write ``curves.csv`` (every validation of every run) and ``plateau.csv`` (the rule per run and metric).

    Args:
        out: the study's output folder.
        run_dirs: ``{(loss, seed): run folder}``.
        total_epochs: E of the runs.
        metrics: the validation metrics checked.

    Returns:
        ``(curve rows, plateau rows)``; a plateau row is ``{"loss", "seed", "metric", "m_end", "m_mid", "gain",
        "plateaued"}``.
    """
    curves = validation_curves(run_dirs)
    checks = []
    for loss, seed in run_dirs:
        mine = [r for r in curves if r["loss"] == loss and r["seed"] == seed]
        for metric in metrics:
            pts = [(r["epoch"], float(r[metric])) for r in mine if metric in r]
            res = plateau_check([e for e, _ in pts], [v for _, v in pts], total_epochs)
            checks.append({"loss": loss, "seed": seed, "metric": metric, **res})
    out = Path(out)
    columns = ["loss", "seed", "epoch", *sorted({k for r in curves for k in r} - {"loss", "seed", "epoch"})]
    for name, rows, cols in (
        ("curves.csv", curves, columns),
        ("plateau.csv", checks, ["loss", "seed", "metric", "m_end", "m_mid", "gain", "plateaued"]),
    ):
        with open(out / name, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, cols, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    return curves, checks
