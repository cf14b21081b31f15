"""Segmentation metrics for lesion and tumour evaluation: voxel Dice, HD95 and lesion-wise detection.

Lesion-wise detection (the MS-lesion / BraTS-2023 style of counting objects, not voxels):

* the connected components of the prediction and of the truth are the *lesions* (``connectivity``:
  1 = faces, ndim = all neighbours, the default, 26 in 3D);
* a truth lesion is **detected** when at least one voxel of it is predicted (it overlaps a predicted
  component); ``TP`` = detected truth lesions, ``FN`` = truth lesions with no predicted voxel;
* a predicted component that touches no truth voxel is a false positive, ``FP``;
* ``sensitivity = TP / (TP + FN)``, ``F1 = 2 TP / (2 TP + FP + FN)``.

So two truth lesions merged into one predicted blob count as two detections and no false positive,
and one truth lesion split into two predicted blobs counts as one detection and no false positive.
Empty cases: no truth lesion and no predicted lesion gives ``F1 = 1`` (nothing to find, nothing
wrongly found) and an undefined (NaN) sensitivity; truth empty but something predicted gives F1 = 0.

The array functions take one case, a boolean mask per class or region (no batch, no channel). The
MONAI metric :class:`LesionWiseF1Metric` takes batches like MONAI's metrics (binarised one-hot
``(B, C, *spatial)``) and plugs into ignite through :class:`LesionF1` (an ``IgniteMetricHandler``), so
it can be a validation metric in a bundle config next to ``MeanDice``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.handlers import IgniteMetricHandler
from monai.metrics import CumulativeIterationMetric, compute_hausdorff_distance
from scipy import ndimage

__all__ = [
    "dice_score",
    "hd95",
    "lesion_details",
    "lesion_counts",
    "size_group_labels",
    "size_group_index",
    "size_group_counts",
    "lesion_wise_scores",
    "score_case",
    "pooled_size_sensitivity",
    "summarize",
    "LesionWiseF1Metric",
    "LesionF1",
]


def _mask(x: Any, what: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype != bool:
        vals = np.unique(x)
        if not np.isin(vals, (0, 1)).all():
            raise ValueError(
                f"{what} must be a binary mask (values 0/1 or bool), found values {vals[:10].tolist()}; "
                "binarise predictions first (argmax / threshold), one mask per class"
            )
        x = x.astype(bool)
    return x


def _pair(pred: Any, truth: Any) -> tuple[np.ndarray, np.ndarray]:
    p, t = _mask(pred, "pred"), _mask(truth, "truth")
    if p.shape != t.shape:
        raise ValueError(f"pred has shape {p.shape} but truth has shape {t.shape}; they must be the same grid")
    return p, t


def dice_score(pred: np.ndarray | torch.Tensor, truth: np.ndarray | torch.Tensor) -> float:
    """Voxel Dice ``2|P∩T| / (|P| + |T|)`` of two binary masks; 1.0 when both are empty.

    Args:
        pred: the predicted mask of one class or region, bool or 0/1, any shape (no batch or channel dim).
        truth: the ground-truth mask, same shape.

    Returns:
        The Dice score in ``[0, 1]``.

    Raises:
        ValueError: a mask holds values other than 0/1 (or bool), or the two masks differ in shape.
    """
    p, t = _pair(pred, truth)
    denom = int(p.sum()) + int(t.sum())
    return 1.0 if denom == 0 else 2.0 * int(np.logical_and(p, t).sum()) / denom


def hd95(
    pred: np.ndarray | torch.Tensor,
    truth: np.ndarray | torch.Tensor,
    spacing: float | Sequence[float] | None = None,
    percentile: float = 95.0,
) -> float:
    """95th-percentile symmetric Hausdorff distance between two binary masks, in the units of ``spacing``.

    Computed by ``monai.metrics.compute_hausdorff_distance(percentile=95)`` (surface voxels, Euclidean
    distance transform). Both masks empty: 0.0; exactly one empty: NaN (undefined, MONAI gives inf/nan
    with a warning); ``summarize`` skips NaN values and counts them.

    Args:
        pred: the predicted mask of one class or region, bool or 0/1, 2D or 3D (no batch or channel dim).
        truth: the ground-truth mask, same shape.
        spacing: voxel size per axis, or one number for all; ``None`` measures in voxels.
        percentile: the percentile of the surface distances, in ``[0, 100]``; 100 gives the maximum (the
            classic Hausdorff distance).

    Returns:
        The distance, in the units of ``spacing`` (voxels without it); 0.0 or NaN for empty masks (see above).

    Raises:
        ValueError: a mask holds values other than 0/1 (or bool), or the two masks differ in shape.
            Also a ``spacing`` with neither one value nor one per axis.
    """
    p, t = _pair(pred, truth)
    if not p.any() and not t.any():
        return 0.0
    if not p.any() or not t.any():
        return float("nan")
    sp = None if spacing is None else [float(s) for s in np.broadcast_to(np.asarray(spacing, dtype=float), (p.ndim,))]
    with warnings.catch_warnings():  # MONAI 1.5+ warns about its own internal argument
        warnings.simplefilter("ignore", FutureWarning)
        val = compute_hausdorff_distance(
            torch.from_numpy(p[None, None]),
            torch.from_numpy(t[None, None]),
            include_background=True,
            percentile=percentile,
            spacing=sp,
        )
    return float(val.reshape(-1)[0])


def _structure(ndim: int, connectivity: int | None) -> np.ndarray:
    conn = ndim if connectivity is None else int(connectivity)
    if not 1 <= conn <= ndim:
        raise ValueError(f"connectivity={connectivity!r}: use 1 (faces) .. {ndim} (all neighbours) or None")
    return ndimage.generate_binary_structure(ndim, conn)


def lesion_details(
    pred: np.ndarray | torch.Tensor,
    truth: np.ndarray | torch.Tensor,
    connectivity: int | None = None,
    min_size: int = 0,
) -> dict[str, np.ndarray]:
    """Per-lesion view of one case (see module doc for the counting rules).

    Returns ``truth_sizes`` (voxels of each truth lesion), ``truth_detected`` (bool per truth lesion: at least
    one of its voxels is predicted), ``pred_sizes`` (voxels of each predicted component) and ``pred_false``
    (bool per predicted component: it touches no truth voxel, a false-positive lesion). ``min_size``:
    predicted components with fewer voxels are dropped first (a common post-processing; truth lesions are
    never dropped).

    Args:
        pred: the predicted mask of one class or region, bool or 0/1 (no batch or channel dim).
        truth: the ground-truth mask, same shape.
        connectivity: neighbourhood of the connected components, 1 = faces .. ndim = all neighbours (26 in 3D);
            ``None`` = ndim.
        min_size: predicted components with fewer voxels are dropped before counting; 0 or 1 keeps all.

    Returns:
        ``{"truth_sizes", "truth_detected", "pred_sizes", "pred_false"}``: 1-D arrays, one entry per truth lesion
        (the first two) or per predicted component (the last two), in the order ``scipy.ndimage.label`` numbers
        them.

    Raises:
        ValueError: a mask holds values other than 0/1 (or bool), or the two masks differ in shape.
            Also a ``connectivity`` outside ``1 .. ndim``.
    """
    p, t = _pair(pred, truth)
    st = _structure(p.ndim, connectivity)
    p_ids, n_pred = ndimage.label(p, structure=st)
    pred_sizes = np.bincount(p_ids.ravel(), minlength=n_pred + 1)
    if min_size > 1 and n_pred:
        keep = pred_sizes >= min_size
        keep[0] = False
        p = keep[p_ids]
        p_ids, n_pred = ndimage.label(p, structure=st)
        pred_sizes = np.bincount(p_ids.ravel(), minlength=n_pred + 1)
    t_ids, n_truth = ndimage.label(t, structure=st)
    both = p & t
    truth_hit = np.bincount(t_ids[both], minlength=n_truth + 1)[1:] > 0
    pred_hit = np.bincount(p_ids[both], minlength=n_pred + 1)[1:] > 0
    return {
        "truth_sizes": np.bincount(t_ids.ravel(), minlength=n_truth + 1)[1:],
        "truth_detected": truth_hit,
        "pred_sizes": pred_sizes[1:],
        "pred_false": ~pred_hit,
    }


def lesion_counts(
    pred: np.ndarray | torch.Tensor,
    truth: np.ndarray | torch.Tensor,
    connectivity: int | None = None,
    min_size: int = 0,
) -> dict[str, int]:
    """Lesion-wise counts of one case: ``tp``, ``fp``, ``fn``, ``n_truth``, ``n_pred`` (see module doc and
    :func:`lesion_details`).

    Args:
        pred: the predicted mask of one class or region, bool or 0/1 (no batch or channel dim).
        truth: the ground-truth mask, same shape.
        connectivity: 1 = faces .. ndim = all neighbours; ``None`` = ndim.
        min_size: predicted components with fewer voxels are dropped before counting.

    Returns:
        ``{"tp", "fp", "fn", "n_truth", "n_pred"}``: detected truth lesions, false-positive predicted
        components, missed truth lesions, and the numbers of truth lesions and predicted components.

    Raises:
        ValueError: a mask holds values other than 0/1 (or bool), or the two masks differ in shape.
            Also a ``connectivity`` outside ``1 .. ndim``.
    """
    return _counts(lesion_details(pred, truth, connectivity, min_size))


def _counts(d: Mapping[str, np.ndarray]) -> dict[str, int]:
    tp, n_truth = int(d["truth_detected"].sum()), int(d["truth_sizes"].size)
    return {
        "tp": tp,
        "fp": int(d["pred_false"].sum()),
        "fn": n_truth - tp,
        "n_truth": n_truth,
        "n_pred": int(d["pred_sizes"].size),
    }


def size_group_labels(edges: Sequence[int] = (10, 50)) -> list[str]:
    """Names of the lesion-size groups cut at ``edges`` (voxels): ``(10, 50)`` gives ``<10``, ``10-50``, ``>50``.

    Args:
        edges: increasing positive lesion sizes in voxels; ``k`` edges make ``k + 1`` groups.

    Returns:
        The group names, smallest lesions first, e.g. ``["<10", "10-50", "51-100", ">100"]`` for
        ``(10, 50, 100)``.

    Raises:
        ValueError: ``edges`` is empty, not strictly increasing, or starts below 1.
    """
    e = [int(v) for v in edges]
    if not e or any(b <= a for a, b in zip(e, e[1:])) or e[0] < 1:
        raise ValueError(f"size edges {list(edges)} must be increasing positive voxel counts, e.g. (10, 50)")
    return [f"<{e[0]}"] + [f"{a if i == 0 else a + 1}-{b}" for i, (a, b) in enumerate(zip(e, e[1:]))] + [f">{e[-1]}"]


def size_group_index(sizes: np.ndarray, edges: Sequence[int] = (10, 50)) -> np.ndarray:
    """Group of each lesion size (voxels) in the groups of :func:`size_group_labels`: below ``edges[0]`` is
    group 0; ``edges[0]..edges[1]`` (both included) group 1; ``edges[k-1]+1..edges[k]`` group k; above the
    last edge the last group.

    Args:
        sizes: lesion sizes in voxels, any shape (e.g. ``truth_sizes`` of :func:`lesion_details`).
        edges: the group edges, as for :func:`size_group_labels`.

    Returns:
        Integer group indices ``0 .. len(edges)``, the shape of ``sizes``.

    Raises:
        ValueError: invalid ``edges`` (see :func:`size_group_labels`).
    """
    size_group_labels(edges)  # validates
    e = np.asarray([int(edges[0])] + [int(v) + 1 for v in edges[1:]])
    return np.searchsorted(e, np.asarray(sizes), side="right")


def size_group_counts(details: Mapping[str, np.ndarray], edges: Sequence[int] = (10, 50)) -> dict[str, dict[str, int]]:
    """Per size group of :func:`size_group_labels`: ``n_truth`` (truth lesions of that size), ``detected``
    (of those, detected) and ``false_positive`` (false-positive predicted lesions of that size).

    Args:
        details: the per-lesion view of one case from :func:`lesion_details`.
        edges: the group edges in voxels, as for :func:`size_group_labels`.

    Returns:
        ``{group name: {"n_truth": ..., "detected": ..., "false_positive": ...}}``, every group present (with
        zeros when it has no lesion); a predicted component is grouped by its own size.

    Raises:
        ValueError: invalid ``edges`` (see :func:`size_group_labels`).
    """
    labels = size_group_labels(edges)
    tg = size_group_index(details["truth_sizes"], edges)
    pg = size_group_index(details["pred_sizes"], edges)
    det = np.asarray(details["truth_detected"], bool)
    fp = np.asarray(details["pred_false"], bool)
    return {
        lab: {
            "n_truth": int((tg == i).sum()),
            "detected": int((det & (tg == i)).sum()),
            "false_positive": int((fp & (pg == i)).sum()),
        }
        for i, lab in enumerate(labels)
    }


def lesion_wise_scores(counts: Mapping[str, int]) -> dict[str, float]:
    """``sensitivity`` (NaN without truth lesions), ``precision`` (NaN without predicted lesions) and ``f1``
    (1.0 when there is neither a truth nor a predicted lesion) from :func:`lesion_counts`.

    Args:
        counts: the counts of :func:`lesion_counts` (or summed over cases for a pooled score); needs ``tp``,
            ``fp``, ``fn`` and ``n_pred``.

    Returns:
        ``{"sensitivity": TP / (TP + FN), "precision": (n_pred - FP) / n_pred, "f1": 2 TP / (2 TP + FP + FN)}``.

    Raises:
        KeyError: ``counts`` lacks one of ``tp``, ``fp``, ``fn``, ``n_pred``.
    """
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    sens = tp / (tp + fn) if tp + fn else float("nan")
    prec = (counts["n_pred"] - fp) / counts["n_pred"] if counts["n_pred"] else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0
    return {"sensitivity": sens, "precision": prec, "f1": f1}


def score_case(
    pred: np.ndarray | torch.Tensor,
    truth: np.ndarray | torch.Tensor,
    structures: Mapping[str, Sequence[int]],
    spacing: float | Sequence[float] | None = None,
    size_edges: Sequence[int] = (10, 50),
    connectivity: int | None = None,
) -> dict[str, float]:
    """Every metric of one case from two **label maps on the same grid** (index values, no channel), the one
    scoring of the bundles' evaluation and of the benchmark. Per structure ``s`` (its label values, e.g.
    ``{"lesion": [1]}`` or the BraTS regions ``{"TC": [1, 3], "WT": [1, 2, 3], "ET": [3]}``): voxel ``dice_s``,
    ``hd95_s`` (mm with ``spacing``), lesion-wise ``f1_s``, ``sensitivity_s`` and ``precision_s``,
    ``fp_lesions_s`` (predicted lesions touching no truth voxel), ``n_truth_s``, ``n_pred_s``, and per
    lesion-size group ``g`` of :func:`size_group_labels` (truth-lesion size in voxels) ``truth_s_g`` /
    ``detected_s_g`` / ``fp_s_g``.

    Args:
        pred: the predicted label map of one case (integer class values, any shape, no channel dim).
        truth: the ground-truth label map, same shape.
        structures: name -> the label values that make the structure (their union is scored).
        spacing: voxel size per axis (or one number) for ``hd95``; ``None`` measures in voxels.
        size_edges: the lesion-size group edges in voxels, as for :func:`size_group_labels`.
        connectivity: neighbourhood of the lesions, 1 = faces .. ndim = all neighbours; ``None`` = ndim.

    Returns:
        One flat row ``{column: value}`` with the columns above for every structure, in the order of
        ``structures``; counts are ints, scores floats (NaN where undefined).

    Raises:
        ValueError: ``pred`` and ``truth`` differ in shape, invalid ``size_edges``, a ``connectivity`` outside
            ``1 .. ndim``, or a ``spacing`` with neither one value nor one per axis.
    """
    p_all, t_all = (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x) for x in (pred, truth))
    if p_all.shape != t_all.shape:
        raise ValueError(f"prediction {p_all.shape} and label {t_all.shape} are not on the same grid")
    row: dict[str, float] = {}
    for s, values in structures.items():
        p, t = np.isin(p_all, list(values)), np.isin(t_all, list(values))
        d = lesion_details(p, t, connectivity=connectivity)
        k = _counts(d)
        sc = lesion_wise_scores(k)
        row[f"dice_{s}"] = dice_score(p, t)
        row[f"hd95_{s}"] = hd95(p, t, spacing)
        row[f"f1_{s}"] = sc["f1"]
        row[f"sensitivity_{s}"] = sc["sensitivity"]
        row[f"precision_{s}"] = sc["precision"]
        row[f"fp_lesions_{s}"] = k["fp"]
        row[f"n_truth_{s}"] = k["n_truth"]
        row[f"n_pred_{s}"] = k["n_pred"]
        for g, c in size_group_counts(d, size_edges).items():
            row[f"truth_{s}_{g}"] = c["n_truth"]
            row[f"detected_{s}_{g}"] = c["detected"]
            row[f"fp_{s}_{g}"] = c["false_positive"]
    return row


def pooled_size_sensitivity(
    rows: Sequence[Mapping[str, Any]], structures: Sequence[str], size_edges: Sequence[int] = (10, 50)
) -> dict[str, float]:
    """Lesion sensitivity per size group pooled over the cases of :func:`score_case` rows:
    ``{"sensitivity_<s>_<g>": detected / truth lesions of that group, NaN without any}``.

    Args:
        rows: the rows of :func:`score_case`, one per case; a missing count column counts as 0.
        structures: the structure names to pool, e.g. ``["lesion"]`` or ``["TC", "WT", "ET"]``.
        size_edges: the group edges used for the rows, as for :func:`size_group_labels`.

    Returns:
        ``{"sensitivity_<s>_<g>": pooled sensitivity}`` for every structure and size group.

    Raises:
        ValueError: invalid ``size_edges`` (see :func:`size_group_labels`).
    """
    out = {}
    for s in structures:
        for g in size_group_labels(size_edges):
            n = sum(int(r.get(f"truth_{s}_{g}", 0)) for r in rows)
            det = sum(int(r.get(f"detected_{s}_{g}", 0)) for r in rows)
            out[f"sensitivity_{s}_{g}"] = det / n if n else float("nan")
    return out


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Per column of numeric values: ``mean``, ``std`` (population), ``median``, ``n`` (values used) and
    ``n_nan`` (undefined values skipped, e.g. HD95 when one mask is empty).

    Args:
        rows: one mapping per case, e.g. from :func:`score_case`; the columns are the keys of the first row
            whose value is an int or a float in every row (other columns are left out).

    Returns:
        ``{column: {"mean", "std", "median", "n", "n_nan"}}``, NaN statistics for a column without finite
        values (infinite values are skipped like NaN); ``{}`` for no rows.
    """
    out: dict[str, dict[str, float]] = {}
    keys = [k for k in (rows[0] if rows else {}) if all(isinstance(r.get(k), (int, float)) for r in rows)]
    for k in keys:
        vals = np.array([float(r[k]) for r in rows], dtype=float)
        ok = vals[np.isfinite(vals)]
        out[k] = {
            "mean": float(ok.mean()) if ok.size else float("nan"),
            "std": float(ok.std()) if ok.size else float("nan"),
            "median": float(np.median(ok)) if ok.size else float("nan"),
            "n": int(ok.size),
            "n_nan": int(vals.size - ok.size),
        }
    return out


class LesionWiseF1Metric(CumulativeIterationMetric):
    """Lesion-wise detection F1 (or sensitivity / precision) as a MONAI cumulative metric.

    Call with binarised one-hot ``y_pred`` and ``y`` of shape ``(B, C, *spatial)`` (as after
    ``AsDiscreted(to_onehot=C)`` or a sigmoid threshold); the per-(case, channel) lesion counts are
    buffered (and all-gathered under DDP by MONAI's ``Cumulative``).

    Args:
        include_background: score channel 0 too (False for one-hot classes, True for region channels).
        connectivity: see :func:`lesion_counts`.
        score: ``"f1"``, ``"sensitivity"`` or ``"precision"``.
        reduction: ``"mean"`` (mean over cases and channels of the per-case score, empty-empty cases
            scoring F1 = 1 and NaN sensitivities skipped), ``"mean_channel"`` (one value per channel),
            or ``"pooled"`` (scores from the counts summed over all cases: micro average).

    A one-channel input is scored whatever ``include_background`` says.

    Raises:
        ValueError: at construction, an unknown ``score`` or ``reduction``; at call time, ``y_pred`` and ``y``
            of different shapes or with fewer than 3 dims.
        RuntimeError: ``aggregate()`` or ``counts()`` before any batch was given.
    """

    def __init__(
        self,
        include_background: bool = False,
        connectivity: int | None = None,
        score: str = "f1",
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if score not in ("f1", "sensitivity", "precision"):
            raise ValueError(f"score={score!r}: use 'f1', 'sensitivity' or 'precision'")
        if reduction not in ("mean", "mean_channel", "pooled"):
            raise ValueError(f"reduction={reduction!r}: use 'mean', 'mean_channel' or 'pooled'")
        self.include_background = include_background
        self.connectivity = connectivity
        self.score = score
        self.reduction = reduction

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if y_pred.shape != y.shape or y_pred.ndim < 3:
            raise ValueError(
                f"y_pred {tuple(y_pred.shape)} and y {tuple(y.shape)} must both be binarised one-hot (B, C, *spatial)"
            )
        first = 0 if self.include_background or y_pred.shape[1] == 1 else 1
        p = y_pred.detach().cpu().numpy() > 0.5
        t = y.detach().cpu().numpy() > 0.5
        out = torch.zeros(p.shape[0], p.shape[1] - first, 5, dtype=torch.float64)
        for b in range(p.shape[0]):
            for i, c in enumerate(range(first, p.shape[1])):
                k = lesion_counts(p[b, c], t[b, c], connectivity=self.connectivity)
                out[b, i] = torch.tensor([k["tp"], k["fp"], k["fn"], k["n_truth"], k["n_pred"]], dtype=torch.float64)
        return out.to(y_pred.device)

    @staticmethod
    def _scores(c: torch.Tensor) -> dict[str, torch.Tensor]:
        tp, fp, fn, n_pred = c[..., 0], c[..., 1], c[..., 2], c[..., 4]
        nan = torch.full_like(tp, float("nan"))
        sens = torch.where(tp + fn > 0, tp / (tp + fn).clamp_min(1), nan)
        prec = torch.where(n_pred > 0, (n_pred - fp) / n_pred.clamp_min(1), nan)
        f1 = torch.where(tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn).clamp_min(1), torch.ones_like(tp))
        return {"sensitivity": sens, "precision": prec, "f1": f1}

    def counts(self) -> torch.Tensor:
        """Buffered counts ``(cases, channels, 5)``: tp, fp, fn, n_truth, n_pred.

        Returns:
            A float64 tensor, one row per case and scored channel (channel 0 left out without
            ``include_background``).

        Raises:
            RuntimeError: nothing was buffered yet.
        """
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise RuntimeError("LesionWiseF1Metric: nothing buffered yet (call it on (y_pred, y) batches first)")
        return data

    def aggregate(self) -> torch.Tensor:  # type: ignore[override]
        """The score over everything buffered since the last ``reset()``.

        Returns:
            A float64 tensor: a scalar for ``reduction="mean"`` and ``"pooled"`` (the pooled per-channel scores
            averaged over channels), ``(channels,)`` for ``"mean_channel"``; NaN where the score is undefined
            for every case (e.g. sensitivity without any truth lesion).

        Raises:
            RuntimeError: nothing was buffered yet.
        """
        c = self.counts()
        if self.reduction == "pooled":
            return self._scores(c.sum(0))[self.score].nanmean()
        s = self._scores(c)[self.score]
        return s.nanmean(0) if self.reduction == "mean_channel" else s.nanmean()


class LesionF1(IgniteMetricHandler):
    """Ignite metric (``monai.handlers`` style) for :class:`LesionWiseF1Metric`, for bundle configs:

    ```json
    "val_lesion_f1": {"_target_": "monai_losses_ext.metrics.LesionF1", "include_background": false,
                      "output_transform": "$monai.handlers.from_engine(['pred', 'label'])"}
    ```

    Args:
        include_background: score channel 0 too (``False`` for one-hot classes, ``True`` for region channels).
        connectivity: 1 = faces .. ndim = all neighbours; ``None`` = ndim (see :func:`lesion_counts`).
        score: ``"f1"``, ``"sensitivity"`` or ``"precision"``.
        reduction: ``"mean"``, ``"mean_channel"`` or ``"pooled"``, as in :class:`LesionWiseF1Metric`.
        output_transform: maps the engine's output to ``(y_pred, y)``, binarised one-hot ``(B, C, *spatial)``;
            the default passes it through.
        save_details: also store the buffered counts ``(cases, channels, 5)`` in
            ``engine.state.metric_details[name]``.

    Raises:
        ValueError: an unknown ``score`` or ``reduction``.
    """

    def __init__(
        self,
        include_background: bool = False,
        connectivity: int | None = None,
        score: str = "f1",
        reduction: str = "mean",
        output_transform: Callable[[Any], Any] = lambda x: x,
        save_details: bool = True,
    ) -> None:
        metric_fn = LesionWiseF1Metric(include_background, connectivity, score, reduction)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)
