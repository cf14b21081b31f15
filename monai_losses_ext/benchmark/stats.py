"""Bootstrap confidence intervals and paired comparisons for a study of losses x seeds x test cases.

Values are arrays ``(n_seeds, n_cases)``: every seed of a loss is scored on the same test cases. The
bootstrap resamples *cases* with replacement and, independently, *seeds* with replacement, so an interval
reflects both how the test cases vary and how training varies with the seed (with one seed it is the
ordinary case bootstrap). Intervals are percentile intervals of ``n_boot`` resamples from a fixed seed, so
the same numbers give the same interval.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats as _st

__all__ = [
    "bootstrap_ci",
    "bootstrap_ratio_ci",
    "paired_comparison",
    "paired_ratio_difference",
    "Paired",
    "PairedRatio",
]


def _as_2d(values, what: str = "values") -> np.ndarray:
    a = np.asarray(values, dtype=float)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[1] == 0 or a.shape[0] == 0:
        raise ValueError(
            f"{what} must be (n_cases,) or (n_seeds, n_cases) with at least one case, got shape {np.shape(values)}"
        )
    return a


def _resample_indices(shape: tuple[int, int], n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    s_idx = rng.integers(0, shape[0], size=(n_boot, shape[0]))
    c_idx = rng.integers(0, shape[1], size=(n_boot, shape[1]))
    return s_idx, c_idx


def _gather(a: np.ndarray, s_idx: np.ndarray, c_idx: np.ndarray) -> np.ndarray:
    return a[s_idx[:, :, None], c_idx[:, None, :]]  # (n_boot, n_seeds, n_cases)


def _interval(boot: np.ndarray, level: float) -> tuple[float, float]:
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(boot, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def _check_level(level: float, n_boot: int) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level={level}: a confidence level lies in (0, 1), e.g. 0.95")
    if n_boot < 100:
        raise ValueError(f"n_boot={n_boot}: use at least 100 resamples (2000 is the default)")


def bootstrap_ci(
    values: ArrayLike, level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``values`` (NaN entries skipped, e.g. an undefined HD95) and its bootstrap interval.

    Returns ``(mean, low, high)``; all NaN when no value is finite.

    Each resample draws the cases and, independently, the seeds with replacement and takes the mean of the
    values that are not NaN; the interval is the central ``level`` percentile range of the ``n_boot`` resample means.

    Args:
        values: one metric, ``(n_cases,)`` (one seed) or ``(n_seeds, n_cases)``; NaN marks an undefined value.
        level: the confidence level, in ``(0, 1)``.
        n_boot: the number of resamples, at least 100.
        seed: the seed of the resampling (the same inputs and seed give the same interval).

    Returns:
        ``(mean, low, high)``: the mean of the values that are not NaN and the interval's bounds; all NaN when
            no value is finite.

    Raises:
        ValueError: ``level`` is not in ``(0, 1)``, ``n_boot`` is under 100, or ``values`` is not 1-D or 2-D
            with at least one case.
    """
    _check_level(level, n_boot)
    a = _as_2d(values)
    if not np.isfinite(a).any():
        return float("nan"), float("nan"), float("nan")
    s_idx, c_idx = _resample_indices(a.shape, n_boot, seed)
    with _quiet():
        boot = np.nanmean(_gather(a, s_idx, c_idx), axis=(1, 2))
    return (float(np.nanmean(a)), *_interval(boot, level))


def bootstrap_ratio_ci(
    num: ArrayLike, den: ArrayLike, level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """Pooled ratio ``sum(num) / sum(den)`` (e.g. detected lesions / truth lesions of a size group, over all
    seeds and cases) and its bootstrap interval, resampling cases and seeds together for both.

    Returns ``(ratio, low, high)``; NaN when ``den`` sums to zero (no lesion of that size in the test set).

    Resamples whose ``den`` sums to zero are left out of the interval.

    Args:
        num: the numerator counts, ``(n_cases,)`` or ``(n_seeds, n_cases)``.
        den: the denominator counts, the same shape as ``num``.
        level: the confidence level, in ``(0, 1)``.
        n_boot: the number of resamples, at least 100.
        seed: the seed of the resampling.

    Returns:
        ``(ratio, low, high)``: the pooled ratio and the interval's bounds; all NaN when ``den`` sums to zero
            or less.

    Raises:
        ValueError: ``level`` is not in ``(0, 1)``, ``n_boot`` is under 100, ``num`` or ``den`` is not 1-D or
            2-D with at least one case, or their shapes differ.
    """
    _check_level(level, n_boot)
    n, d = _as_2d(num, "num"), _as_2d(den, "den")
    if n.shape != d.shape:
        raise ValueError(f"num {n.shape} and den {d.shape} must have the same shape")
    if d.sum() <= 0:
        return float("nan"), float("nan"), float("nan")
    s_idx, c_idx = _resample_indices(n.shape, n_boot, seed)
    bn, bd = _gather(n, s_idx, c_idx).sum((1, 2)), _gather(d, s_idx, c_idx).sum((1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = np.where(bd > 0, bn / np.where(bd > 0, bd, 1), np.nan)
    return (float(n.sum() / d.sum()), *_interval(boot, level))


@dataclass
class Paired:
    """A loss against the baseline on the same test cases: ``diff`` = mean over cases of (loss - baseline),
    each case first averaged over seeds; its bootstrap interval; the two-sided Wilcoxon signed-rank p-value
    of the per-case differences (NaN with fewer than 2 non-zero differences); and how many cases the loss
    scored higher / equal / lower than the baseline.

    Attributes:
        diff: mean over the compared cases of (loss - baseline), each side first averaged over its seeds.
        low: lower bound of the bootstrap interval of ``diff``.
        high: upper bound of the bootstrap interval of ``diff``.
        p_value: two-sided Wilcoxon signed-rank p-value of the per-case differences (zero differences left
            out); NaN with fewer than 2 non-zero differences.
        higher: cases where the loss scored higher than the baseline.
        equal: cases where both scored the same.
        lower: cases where the loss scored lower.
        n_cases: cases compared (those with a value that is not NaN for at least one seed on each side).
    """

    diff: float
    low: float
    high: float
    p_value: float
    higher: int
    equal: int
    lower: int
    n_cases: int


def paired_comparison(
    values: ArrayLike, baseline: ArrayLike, level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> Paired:
    """Compare ``values`` with ``baseline`` (both ``(n_seeds, n_cases)`` on the same cases; the seed counts may
    differ). Cases where either side is NaN for every seed are left out.

    The bootstrap resamples the cases (the same ones for both sides) and, for each side independently, its
    seeds.

    Args:
        values: the loss's metric, ``(n_cases,)`` or ``(n_seeds, n_cases)``.
        baseline: the baseline's metric on the same cases in the same order, ``(n_cases,)`` or
            ``(n_seeds, n_cases)``.
        level: the confidence level of the interval of the difference, in ``(0, 1)``.
        n_boot: the number of resamples, at least 100.
        seed: the seed of the resampling.

    Returns:
        The comparison as a `Paired` record: the mean difference with its interval, the Wilcoxon p-value and
            the counts of cases higher / equal / lower; NaN values and zero counts when no case is left.

    Raises:
        ValueError: ``level`` is not in ``(0, 1)``, ``n_boot`` is under 100, an input is not 1-D or 2-D with at
            least one case, or the two score a different number of cases.
    """
    _check_level(level, n_boot)
    a, b = _as_2d(values), _as_2d(baseline, "baseline")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"values score {a.shape[1]} cases and baseline {b.shape[1]}: a paired comparison needs the same cases"
        )
    with _quiet():
        d = np.nanmean(a, 0) - np.nanmean(b, 0)
    d = d[np.isfinite(d)]
    if d.size == 0:
        nan = float("nan")
        return Paired(nan, nan, nan, nan, 0, 0, 0, 0)
    boot = _paired_boot(a, b, n_boot, np.random.default_rng(seed))
    nz = d[d != 0]
    p = float(_st.wilcoxon(nz).pvalue) if nz.size >= 2 else float("nan")
    lo, hi = _interval(boot, level)
    return Paired(float(d.mean()), lo, hi, p, int((d > 0).sum()), int((d == 0).sum()), int((d < 0).sum()), int(d.size))


def _paired_boot(a: np.ndarray, b: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Resamples cases (the same for both sides) and, for each side, its seeds."""
    with _quiet():
        keep = np.isfinite(np.nanmean(a, 0) - np.nanmean(b, 0))
    a, b = a[:, keep], b[:, keep]
    c_idx = rng.integers(0, a.shape[1], size=(n_boot, a.shape[1]))
    sa = rng.integers(0, a.shape[0], size=(n_boot, a.shape[0]))
    sb = rng.integers(0, b.shape[0], size=(n_boot, b.shape[0]))
    with _quiet():
        da = np.nanmean(_gather(a, sa, c_idx), 1)
        db = np.nanmean(_gather(b, sb, c_idx), 1)
        return np.nanmean(da - db, 1)


@dataclass
class PairedRatio:
    """A pooled ratio of a loss against the baseline's on the same test cases, e.g. small-lesion sensitivity.

    Attributes:
        diff: ``sum(num) / sum(den) - sum(base_num) / sum(base_den)``, each side pooled over its seeds and cases.
        low: lower bound of the bootstrap interval of ``diff``.
        high: upper bound of the bootstrap interval of ``diff``.
        n_den: the baseline's denominator total over its first seed (e.g. the number of truth lesions).
    """

    diff: float
    low: float
    high: float
    n_den: int


def paired_ratio_difference(
    num: ArrayLike,
    den: ArrayLike,
    base_num: ArrayLike,
    base_den: ArrayLike,
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> PairedRatio:
    """Difference of two pooled ratios on the same cases, with a paired bootstrap interval.

    Each resample draws the cases with replacement, the same ones for both sides, and each side's seeds
    independently; the counts are summed over the resampled seeds and cases before each ratio, so a case with
    many lesions weighs as much as its lesions. Resamples in which either side's denominator sums to zero are
    left out of the interval. No p-value: per-case ratios of a few lesions are not a sound basis for a rank test.

    Args:
        num: the loss's numerator counts (e.g. detected lesions of a size group), ``(n_cases,)`` or
            ``(n_seeds, n_cases)``.
        den: the loss's denominator counts (truth lesions), the same shape as ``num``.
        base_num: the baseline's numerator counts on the same cases, ``(n_cases,)`` or ``(n_seeds, n_cases)``.
        base_den: the baseline's denominator counts, the same shape as ``base_num``.
        level: the confidence level, in ``(0, 1)``.
        n_boot: the number of resamples, at least 100.
        seed: the seed of the resampling.

    Returns:
        The difference, its interval and the baseline's denominator total, as a `PairedRatio`; NaN difference
            and bounds when either denominator sums to zero.

    Raises:
        ValueError: ``level`` is not in ``(0, 1)``, ``n_boot`` is under 100, an input is not 1-D or 2-D with at
            least one case, a numerator's shape differs from its denominator's, or the two sides score a
            different number of cases.
    """
    _check_level(level, n_boot)
    a_n, a_d = _as_2d(num, "num"), _as_2d(den, "den")
    b_n, b_d = _as_2d(base_num, "base_num"), _as_2d(base_den, "base_den")
    if a_n.shape != a_d.shape or b_n.shape != b_d.shape:
        raise ValueError(
            f"num {a_n.shape} / den {a_d.shape} and base_num {b_n.shape} / base_den {b_d.shape}: each numerator "
            "must have its denominator's shape"
        )
    if a_n.shape[1] != b_n.shape[1]:
        raise ValueError(
            f"the loss scores {a_n.shape[1]} cases and the baseline {b_n.shape[1]}: a paired comparison needs the "
            "same cases"
        )
    n_den = int(b_d[0].sum())
    if a_d.sum() <= 0 or b_d.sum() <= 0:
        nan = float("nan")
        return PairedRatio(nan, nan, nan, n_den)
    rng = np.random.default_rng(seed)
    c_idx = rng.integers(0, a_n.shape[1], size=(n_boot, a_n.shape[1]))
    sa = rng.integers(0, a_n.shape[0], size=(n_boot, a_n.shape[0]))
    sb = rng.integers(0, b_n.shape[0], size=(n_boot, b_n.shape[0]))

    def ratio(n, d, s):
        bn, bd = _gather(n, s, c_idx).sum((1, 2)), _gather(d, s, c_idx).sum((1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(bd > 0, bn / np.where(bd > 0, bd, 1), np.nan)

    boot = ratio(a_n, a_d, sa) - ratio(b_n, b_d, sb)
    diff = float(a_n.sum() / a_d.sum() - b_n.sum() / b_d.sum())
    return PairedRatio(diff, *_interval(boot, level), n_den)


@contextmanager
def _quiet():
    """numpy's all-NaN-slice RuntimeWarning is expected here (a case undefined for one resampled seed)."""
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
