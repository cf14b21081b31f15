"""Independent float64 numpy re-derivations of the losses in docs/SPEC_losses.md.

Nothing here imports monai_losses_ext or MONAI: every formula is written again from the papers and the
spec, so the tests compare the implementation with a second, separate derivation.  Activations
(sigmoid, softmax, log-softmax) are written by hand.

Two layers:

* "forum / paper forms" (``vnet_dice``, ``tversky_index_forum``, ``sudre_gdl``, ``combo_forum`` ...):
  the short formulas users copy from papers and forums, on flattened binary or per-class arrays;
* spec-level functions (``dice_loss``, ``tversky_loss``, ``focal_loss`` ...) that take logits /
  probabilities (B, C, *spatial) and targets (index (B, 1, *) or one-hot (B, C, *)) with the MONAI-style
  arguments of the spec, and return the reduced value (python float) or the "none" array.

``self_check()`` verifies the two layers against each other and a few closed-form facts (identical
masks give 0, Tversky(0.5, 0.5) is Dice, Lovasz extension equals the brute-force Jaccard set function
on binary vertices ...).  Run ``python tests/reference.py``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

# ----------------------------------------------------------------------------------------------------
# activations (by hand)
# ----------------------------------------------------------------------------------------------------


def sigmoid(x):
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def log_sigmoid(x):
    """log(sigmoid(x)) = -log(1 + exp(-x)), stable for both signs."""
    x = np.asarray(x, dtype=np.float64)
    return np.minimum(x, 0.0) - np.log1p(np.exp(-np.abs(x)))


def softmax(x, axis=1):
    x = np.asarray(x, dtype=np.float64)
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x, axis=1):
    x = np.asarray(x, dtype=np.float64)
    z = x - x.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def one_hot(idx, num_classes):
    """(B, 1, *) integer-valued labels -> (B, C, *) float64 one-hot (labels outside [0, C) give all-zero)."""
    idx = np.asarray(idx)
    assert idx.shape[1] == 1, idx.shape
    lab = idx[:, 0].astype(np.int64)
    out = np.zeros((idx.shape[0], num_classes) + idx.shape[2:], dtype=np.float64)
    for c in range(num_classes):
        out[:, c] = lab == c
    return out


def _spatial_axes(a):
    return tuple(range(2, a.ndim))


# ----------------------------------------------------------------------------------------------------
# common input path: activation, target alignment, ignore mask (MONAI semantics)
# ----------------------------------------------------------------------------------------------------


def ignore_mask(y, ignore_index):
    """(B, 1, *) float mask, 1 = valid voxel, from the *original* target.

    index target (C == 1): y != ignore_index.
    one-hot target: ignore_index a channel -> 1 - y[:, ignore_index]; otherwise (sentinel) -> voxels whose
    channels are all zero are ignored.
    """
    y = np.asarray(y, dtype=np.float64)
    if ignore_index is None:
        return np.ones((y.shape[0], 1) + y.shape[2:])
    if y.shape[1] == 1:
        return (y != ignore_index).astype(np.float64)
    C = y.shape[1]
    if 0 <= ignore_index < C:
        return 1.0 - y[:, ignore_index : ignore_index + 1]
    return (y.sum(axis=1, keepdims=True) > 0).astype(np.float64)


def prepare(
    x,
    y,
    *,
    sigmoid_act=False,
    softmax_act=False,
    to_onehot_y=False,
    include_background=True,
    ignore_index=None,
):
    """Returns (p, g, m): activated prediction, aligned target (both (B, C', *)), mask (B, 1, *)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    C = x.shape[1]
    p = x
    if sigmoid_act:
        p = sigmoid(p)
    if softmax_act and C > 1:
        p = softmax(p, axis=1)
    m = ignore_mask(y, ignore_index)
    g = y
    if to_onehot_y and C > 1:
        yy = y.copy()
        if ignore_index is not None and not (0 <= ignore_index < C):
            yy[yy == ignore_index] = 0
        g = one_hot(yy, C)
    if not include_background and C > 1:
        p = p[:, 1:]
        g = g[:, 1:]
    assert p.shape == g.shape, (p.shape, g.shape)
    return p, g, m


def overlap_sums(p, g, m=None, *, batch=False, squared=False, soft_label=False):
    """Per (b, c) (or per c with batch=True) sums over valid voxels.

    Returns dict TP, SP, SG (SP/SG are sum(p^2)/sum(g^2) when squared); FP = SP - TP, FN = SG - TP.
    soft_label with the L1 form: TP = (SP + SG - sum|p - g|) / 2 (Wang et al. 2023), identical to sum(p*g)
    for hard labels.
    """
    if m is None:
        m = np.ones((p.shape[0], 1) + p.shape[2:])
    pm, gm = p * m, g * m
    axes = _spatial_axes(p)
    if batch:
        axes = (0,) + axes
    if squared:
        sp = (pm * pm).sum(axis=axes)
        sg = (gm * gm).sum(axis=axes)
        tp = (pm * gm).sum(axis=axes)
    else:
        sp = pm.sum(axis=axes)
        sg = gm.sum(axis=axes)
        if soft_label:
            tp = (sp + sg - np.abs(pm - gm).sum(axis=axes)) / 2.0
        else:
            tp = (pm * gm).sum(axis=axes)
    return {"TP": tp, "SP": sp, "SG": sg, "FP": sp - tp, "FN": sg - tp}


def _reduce(f, reduction):
    if reduction == "mean":
        return float(np.mean(f))
    if reduction == "sum":
        return float(np.sum(f))
    if reduction == "none":
        return f
    raise ValueError(reduction)


def _class_weight(f, weight):
    """MONAI: weight (scalar or per kept class) multiplies f (..., C) when C != 1."""
    if weight is None:
        return f
    C = f.shape[-1]
    w = np.asarray(weight, dtype=np.float64)
    if C == 1:
        return f
    if w.ndim == 0:
        w = np.full(C, float(w))
    assert w.shape == (C,), (w.shape, C)
    return f * w


def _none_shape_dice(f, ndim_spatial):
    return f.reshape(f.shape + (1,) * ndim_spatial)


# ----------------------------------------------------------------------------------------------------
# paper / forum forms (flattened, no batch or class bookkeeping)
# ----------------------------------------------------------------------------------------------------


def dice_coefficient(p, g, smooth_nr=0.0, smooth_dr=0.0):
    p, g = np.ravel(p).astype(np.float64), np.ravel(g).astype(np.float64)
    return (2 * np.sum(p * g) + smooth_nr) / (np.sum(p) + np.sum(g) + smooth_dr)


def vnet_dice(p, g, smooth=0.0):
    """Milletari et al. 2016, eq. (1): D = 2 sum p g / (sum p^2 + sum g^2)."""
    p, g = np.ravel(p).astype(np.float64), np.ravel(g).astype(np.float64)
    return (2 * np.sum(p * g) + smooth) / (np.sum(p * p) + np.sum(g * g) + smooth)


def jaccard_index(p, g, smooth=0.0):
    p, g = np.ravel(p).astype(np.float64), np.ravel(g).astype(np.float64)
    inter = np.sum(p * g)
    return (inter + smooth) / (np.sum(p) + np.sum(g) - inter + smooth)


def weighted_dice_forum(p_classes, g_classes, w):
    """Forum 'weighted multi-class Dice': 1 - sum_c w_c D_c / sum_c w_c, D_c on flattened class maps."""
    d = np.array([dice_coefficient(p_classes[c], g_classes[c]) for c in range(len(w))])
    w = np.asarray(w, dtype=np.float64)
    return 1.0 - float(np.sum(w * d) / np.sum(w))


def tversky_index_forum(p, g, w_fn=0.7, w_fp=0.3, smooth=0.0):
    """Forum (Abraham & Khan 2019 repo): TI = TP / (TP + 0.7 FN + 0.3 FP)."""
    p, g = np.ravel(p).astype(np.float64), np.ravel(g).astype(np.float64)
    tp = np.sum(p * g)
    fn = np.sum(g * (1 - p))
    fp = np.sum((1 - g) * p)
    return (tp + smooth) / (tp + w_fn * fn + w_fp * fp + smooth)


def focal_tversky_forum(p, g, gamma=0.75, smooth=0.0):
    return (1.0 - tversky_index_forum(p, g, 0.7, 0.3, smooth)) ** gamma


def sudre_gdl(p_classes, g_classes):
    """Sudre et al. 2017: 1 - 2 sum_l w_l sum_n r p / sum_l w_l sum_n (r + p), w_l = 1 / (sum_n r)^2."""
    num = 0.0
    den = 0.0
    for p, g in zip(p_classes, g_classes):
        p, g = np.ravel(p).astype(np.float64), np.ravel(g).astype(np.float64)
        w = 1.0 / np.sum(g) ** 2
        num += w * np.sum(p * g)
        den += w * np.sum(p + g)
    return 1.0 - 2.0 * num / den


def bce_with_logits_forum(x, y, pos_weight=1.0):
    """-[beta y log sigma(x) + (1 - y) log(1 - sigma(x))], mean over all elements."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return float(np.mean(-(pos_weight * y * log_sigmoid(x) + (1 - y) * log_sigmoid(-x))))


def dice_bce_forum(x, y):
    """Forum 'DiceBCELoss' (binary, logits): BCE + (1 - Dice) on the flattened volume (smooth 0)."""
    return bce_with_logits_forum(x, y) + 1.0 - dice_coefficient(sigmoid(x), y)


def log_cosh_dice_forum(p, g):
    """Jadon 2020: log(cosh(1 - D))."""
    return float(np.log(np.cosh(1.0 - dice_coefficient(p, g))))


def sensitivity_specificity_forum(p, g, r=0.05, smooth=0.0):
    """Brosch et al. 2015, eq. (2): r * sum (g - p)^2 g / sum g + (1 - r) * sum (g - p)^2 (1 - g) / sum (1 - g)."""
    p, g = np.ravel(p).astype(np.float64), np.ravel(g).astype(np.float64)
    d2 = (g - p) ** 2
    return r * np.sum(d2 * g) / (np.sum(g) + smooth) + (1 - r) * np.sum(d2 * (1 - g)) / (np.sum(1 - g) + smooth)


def focal_binary_forum(x, y, gamma=2.0, alpha=None):
    """Lin et al. 2017: FL = -alpha_t (1 - p_t)^gamma log p_t, mean over elements."""
    p = sigmoid(x)
    y = np.asarray(y, np.float64)
    pt = np.where(y == 1, p, 1 - p)
    at = 1.0 if alpha is None else np.where(y == 1, alpha, 1 - alpha)
    return float(np.mean(-at * (1 - pt) ** gamma * np.log(pt)))


def combo_forum(p, g, alpha=0.5, ce_ratio=0.5, smooth=1.0, eps=1e-9):
    """Kaggle/Taghanaki 2019 form on flattened probabilities:
    alpha * mean(-(ce_ratio g log p + (1 - ce_ratio)(1 - g) log(1 - p))) - (1 - alpha) * Dice."""
    p, g = np.ravel(p).astype(np.float64), np.ravel(g).astype(np.float64)
    dice = (2 * np.sum(p * g) + smooth) / (np.sum(p) + np.sum(g) + smooth)
    pc = np.clip(p, eps, 1 - eps)
    ce = -(ce_ratio * g * np.log(pc) + (1 - ce_ratio) * (1 - g) * np.log(1 - pc))
    return float(alpha * np.mean(ce) - (1 - alpha) * dice)


# ----------------------------------------------------------------------------------------------------
# overlap losses (spec "region")
# ----------------------------------------------------------------------------------------------------


def dice_loss(
    x,
    y,
    *,
    include_background=True,
    to_onehot_y=False,
    sigmoid=False,
    softmax=False,
    squared_pred=False,
    jaccard=False,
    reduction="mean",
    smooth_nr=1e-5,
    smooth_dr=1e-5,
    batch=False,
    weight=None,
    ignore_index=None,
    soft_label=False,
):
    """Spec DiceLoss (== monai.losses.DiceLoss).

    dice:    1 - (2 TP + snr) / (SP + SG + sdr)
    jaccard: MONAI's form 1 - (2 TP + snr) / (2 (SP + SG - TP) + sdr)  (the spec's printed
             (TP + snr) / (SP + SG - TP + sdr) only differs in how the smoothing is scaled; the spec also says
             "== monai.losses.DiceLoss", which this follows; see jaccard_spec_printed for the other).
    """
    p, g, m = prepare(
        x,
        y,
        sigmoid_act=sigmoid,
        softmax_act=softmax,
        to_onehot_y=to_onehot_y,
        include_background=include_background,
        ignore_index=ignore_index,
    )
    s = overlap_sums(p, g, m, batch=batch, squared=squared_pred, soft_label=soft_label)
    tp, sp, sg = s["TP"], s["SP"], s["SG"]
    if jaccard:
        f = 1.0 - (2 * tp + smooth_nr) / (2 * (sp + sg - tp) + smooth_dr)
    else:
        f = 1.0 - (2 * tp + smooth_nr) / (sp + sg + smooth_dr)
    f = _class_weight(f, weight)
    if reduction == "none":
        return _none_shape_dice(f, p.ndim - 2)
    return _reduce(f, reduction)


def jaccard_spec_printed(x, y, *, smooth_nr=1e-5, smooth_dr=1e-5, **kw):
    """The spec's printed Jaccard: 1 - (TP + snr) / (SP + SG - TP + sdr), mean over (b, c)."""
    p, g, m = prepare(x, y, **kw)
    s = overlap_sums(p, g, m)
    return float(np.mean(1.0 - (s["TP"] + smooth_nr) / (s["SP"] + s["SG"] - s["TP"] + smooth_dr)))


def tversky_index(
    x,
    y,
    *,
    alpha=0.5,
    beta=0.5,
    smooth_nr=1e-5,
    smooth_dr=1e-5,
    batch=False,
    soft_label=False,
    include_background=True,
    to_onehot_y=False,
    sigmoid=False,
    softmax=False,
    ignore_index=None,
):
    """TI per (b, c) (or c): (TP + snr) / (TP + alpha FP + beta FN + sdr); alpha weighs FP, beta FN."""
    p, g, m = prepare(
        x,
        y,
        sigmoid_act=sigmoid,
        softmax_act=softmax,
        to_onehot_y=to_onehot_y,
        include_background=include_background,
        ignore_index=ignore_index,
    )
    s = overlap_sums(p, g, m, batch=batch, soft_label=soft_label)
    return (s["TP"] + smooth_nr) / (s["TP"] + alpha * s["FP"] + beta * s["FN"] + smooth_dr)


def tversky_loss(x, y, *, reduction="mean", **kw):
    f = 1.0 - tversky_index(x, y, **kw)
    return _reduce(f, reduction)


def focal_tversky_loss(x, y, *, alpha=0.3, beta=0.7, gamma=0.75, reduction="mean", **kw):
    """Abraham & Khan 2019: (1 - TI)^gamma with beta (=0.7) on FN, alpha (=0.3) on FP."""
    ti = tversky_index(x, y, alpha=alpha, beta=beta, **kw)
    f = np.clip(1.0 - ti, 0.0, None) ** gamma
    return _reduce(f, reduction)


def generalized_dice_loss(
    x,
    y,
    *,
    include_background=True,
    to_onehot_y=False,
    sigmoid=False,
    softmax=False,
    w_type="square",
    reduction="mean",
    smooth_nr=1e-5,
    smooth_dr=1e-5,
    batch=False,
    ignore_index=None,
    soft_label=False,
):
    """Sudre 2017 with MONAI's details: w = 1/SG^2 ("square"), 1/SG ("simple"), 1 ("uniform");
    infinite weights (SG = 0) replaced by the max finite weight of the sample (batch=True: of all classes)."""
    p, g, m = prepare(
        x,
        y,
        sigmoid_act=sigmoid,
        softmax_act=softmax,
        to_onehot_y=to_onehot_y,
        include_background=include_background,
        ignore_index=ignore_index,
    )
    s = overlap_sums(p, g, m, batch=batch, soft_label=soft_label)
    tp, sp, sg = s["TP"], s["SP"], s["SG"]
    with np.errstate(divide="ignore"):
        if w_type == "square":
            w = 1.0 / (sg * sg)
        elif w_type == "simple":
            w = 1.0 / sg
        elif w_type == "uniform":
            w = np.ones_like(sg)
        else:
            raise ValueError(w_type)
    infs = np.isinf(w)
    w = np.where(infs, 0.0, w)
    if batch:
        w = w + infs * w.max()
        num = 2.0 * np.sum(w * tp) + smooth_nr
        den = np.sum(w * (sp + sg)) + smooth_dr
        f = np.array([1.0 - num / den])  # shape (1,)
    else:
        w = w + infs * w.max(axis=1, keepdims=True)
        num = 2.0 * np.sum(w * tp, axis=1, keepdims=True) + smooth_nr
        den = np.sum(w * (sp + sg), axis=1, keepdims=True) + smooth_dr
        f = 1.0 - num / den  # shape (B, 1)
    if reduction == "none":
        return _none_shape_dice(f, p.ndim - 2)
    return _reduce(f, reduction)


def log_cosh_dice_loss(x, y, *, reduction="mean", **dice_kw):
    """Jadon 2020: log(cosh(dice_loss_bc)) per (b, c), then reduction; returned "none" as (B, C) / (C,)."""
    f = dice_loss(x, y, reduction="none", **dice_kw)
    f = f.reshape(f.shape[: (1 if dice_kw.get("batch") else 2)])
    f = np.log(np.cosh(f))
    return _reduce(f, reduction)


def sensitivity_specificity_loss(
    x,
    y,
    *,
    r=0.05,
    include_background=True,
    to_onehot_y=False,
    sigmoid=False,
    softmax=False,
    reduction="mean",
    smooth_dr=1e-5,
    batch=False,
    ignore_index=None,
    **_ignored,
):
    """Brosch et al. 2015, per (b, c), sums over valid voxels only:
    r * sum((g-p)^2 g)/(sum g + sdr) + (1-r) * sum((g-p)^2 (1-g))/(sum(1-g) + sdr)."""
    p, g, m = prepare(
        x,
        y,
        sigmoid_act=sigmoid,
        softmax_act=softmax,
        to_onehot_y=to_onehot_y,
        include_background=include_background,
        ignore_index=ignore_index,
    )
    axes = _spatial_axes(p)
    if batch:
        axes = (0,) + axes
    d2 = (g - p) ** 2
    sens = (d2 * g * m).sum(axis=axes) / ((g * m).sum(axis=axes) + smooth_dr)
    spec = (d2 * (1 - g) * m).sum(axis=axes) / (((1 - g) * m).sum(axis=axes) + smooth_dr)
    f = r * sens + (1 - r) * spec
    return _reduce(f, reduction)


# ----------------------------------------------------------------------------------------------------
# per-voxel losses (spec "pixel")
# ----------------------------------------------------------------------------------------------------


def cross_entropy(x, y, *, weight=None, ignore_index=None, label_smoothing=0.0, reduction="mean"):
    """torch.nn.CrossEntropyLoss semantics (written from its documentation).

    x logits (B, C, *). y index (B, 1, *) or probabilities (B, C, *) (C > 1).
    index targets: l_n = -(1-eps) w_{y_n} log p_{y_n} - (eps/C) sum_c w_c log p_c ; "mean" divides the first part
    by sum of w_{y_n} over non-ignored voxels and the smoothing part by the same weight sum (torch's choice).
    probability targets: t' = (1-eps) t + eps/C; l_n = -sum_c w_c t'_c log p_c; "mean" divides by N voxels.
    C == 1: binary cross-entropy with logits, pos_weight = weight.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    B, C = x.shape[:2]
    if C == 1:
        pw = 1.0 if weight is None else np.asarray(weight, np.float64).reshape((1, -1) + (1,) * (x.ndim - 2))
        l = -(pw * y * log_sigmoid(x) + (1 - y) * log_sigmoid(-x))
        return _reduce(l, reduction)
    w = np.ones(C) if weight is None else np.asarray(weight, np.float64)
    wb = w.reshape((1, C) + (1,) * (x.ndim - 2))
    lp = log_softmax(x, axis=1)
    if y.shape[1] == 1:
        lab = y[:, 0]
        valid = np.ones_like(lab, dtype=bool) if ignore_index is None else lab != ignore_index
        lab_i = np.where(valid, lab, 0).astype(np.int64)
        oh = one_hot(lab_i[:, None], C)
        nll = -(oh * lp).sum(axis=1) * w[lab_i]  # (B, *)
        smooth = -(wb * lp).sum(axis=1)
        nll = np.where(valid, nll, 0.0)
        smooth = np.where(valid, smooth, 0.0)
        if reduction == "none":
            return (1 - label_smoothing) * nll + label_smoothing / C * smooth
        if reduction == "sum":
            return float((1 - label_smoothing) * nll.sum() + label_smoothing / C * smooth.sum())
        wsum = np.where(valid, w[lab_i], 0.0).sum()
        return float(((1 - label_smoothing) * nll.sum() + label_smoothing / C * smooth.sum()) / wsum)
    t = (1 - label_smoothing) * y + label_smoothing / C
    l = -(wb * t * lp).sum(axis=1)
    return _reduce(l, reduction)


def per_voxel_ce(x, y, *, weight=None, label_smoothing=0.0, ignore_index=None):
    """(B, *) per-voxel CE as torch's reduction="none" (index y (B, 1, *)); 0 at ignored voxels."""
    return cross_entropy(
        x, y, weight=weight, label_smoothing=label_smoothing, reduction="none", ignore_index=ignore_index
    )


def weighted_bce_loss(x, y, *, pos_weight=1.0, reduction="mean", ignore_index=None, to_onehot_y=False):
    """BCEWithLogits with pos_weight (float or per channel): -(beta g log s(x) + (1-g) log(1-s(x))).
    ignore_index: mean over the valid (b, c, voxel) elements."""
    x = np.asarray(x, np.float64)
    p, g, m = prepare(x, y, to_onehot_y=to_onehot_y, ignore_index=ignore_index)
    pw = np.asarray(pos_weight, np.float64)
    if pw.ndim:
        pw = pw.reshape((1, -1) + (1,) * (x.ndim - 2))
    l = -(pw * g * log_sigmoid(x) + (1 - g) * log_sigmoid(-x)) * m
    if reduction == "none":
        return l
    if reduction == "sum":
        return float(l.sum())
    return float(l.sum() / (m.sum() * x.shape[1]))


def focal_loss(
    x,
    y,
    *,
    include_background=True,
    to_onehot_y=False,
    gamma=2.0,
    alpha=None,
    weight=None,
    reduction="mean",
    use_softmax=False,
    ignore_index=None,
):
    """Lin et al. 2017 with monai.losses.FocalLoss bookkeeping (the spec says ==):

    sigmoid: BCE(x, g) * (1 - p_t)^gamma, (1 - p_t) = sigmoid(-x (2g - 1)); scalar alpha: alpha g + (1-alpha)(1-g);
             sequence alpha: alpha_c where g == 1, 1 elsewhere.
    softmax: -(1 - p_c)^gamma log p_c g_c, softmax over the *kept* channels (MONAI drops the background channel
             first); scalar alpha -> [1 - alpha, alpha, ...], ignored when include_background=False.
    reductions: "mean" = mean over all elements, or with ignore_index sum / (number of valid voxels);
                "sum" = sum over (B, C) of the spatial means (masked: spatial sum / valid count);
                "none" = (B, C, *spatial).
    """
    x = np.asarray(x, np.float64)
    C = x.shape[1]
    _, g, m = prepare(x, y, to_onehot_y=to_onehot_y, include_background=True, ignore_index=ignore_index)
    if not include_background and C > 1:
        x = x[:, 1:]
        g = g[:, 1:]
    x = x * m
    g = g * m
    Ck = x.shape[1]
    bshape = (1, Ck) + (1,) * (x.ndim - 2)
    if use_softmax:
        lp = log_softmax(x, axis=1)
        l = -((1 - np.exp(lp)) ** gamma) * lp * g
        a = alpha
        if a is not None and np.ndim(a) == 0 and not include_background:
            a = None
        if a is not None:
            if np.ndim(a) == 0:
                fac = np.array([1 - a] + [a] * (Ck - 1), dtype=np.float64)
            else:
                fac = np.asarray(a, np.float64)
            l = l * fac.reshape(bshape)
    else:
        bce = -(g * log_sigmoid(x) + (1 - g) * log_sigmoid(-x))
        mod = np.exp(gamma * log_sigmoid(-x * (2 * g - 1)))
        l = mod * bce
        if alpha is not None:
            if np.ndim(alpha) == 0:
                l = l * (g * alpha + (1 - g) * (1 - alpha))
            else:
                a = np.asarray(alpha, np.float64).reshape(bshape)
                l = l * np.where(g == 1, a, 1.0)
    if ignore_index is not None:
        l = l * m
    if weight is not None:
        w = np.asarray(weight, np.float64)
        l = l * (w if w.ndim == 0 else w.reshape(bshape))
    sp = _spatial_axes(l)
    if reduction == "none":
        return l
    if reduction == "sum":
        if ignore_index is not None:
            cnt = np.maximum(m.sum(axis=sp, keepdims=True), np.finfo(np.float32).eps)
            return float((l.sum(axis=sp, keepdims=True) / cnt).sum())
        return float(l.mean(axis=sp).sum())
    if ignore_index is not None:
        return float(l.sum() / max(m.sum(), np.finfo(np.float32).eps))
    return float(l.mean())


def topk_ce_loss(x, y, *, k=10, weight=None, ignore_index=None, label_smoothing=0.0):
    """nnU-Net TopK: mean of the hardest ceil(k/100 * n_valid) per-voxel CE values of the whole batch."""
    y = np.asarray(y, np.float64)
    if y.shape[1] != 1:  # one-hot / probability target: per-voxel -sum_c w_c t_c log p_c (hard one-hot == index)
        y = y.argmax(axis=1)[:, None].astype(np.float64)
    l = per_voxel_ce(x, y, weight=weight, label_smoothing=label_smoothing, ignore_index=ignore_index)
    valid = np.ones(l.shape, bool) if ignore_index is None else y[:, 0] != ignore_index
    vals = np.sort(l[valid].ravel())[::-1]
    n_valid = vals.size
    if float(k).is_integer():
        n = -(-int(k) * n_valid // 100)  # exact integer ceil
    else:
        n = math.ceil(k / 100.0 * n_valid)
    n = max(1, min(n, n_valid))
    return float(vals[:n].mean())


def topk_ce_nnunet(x, y, *, k=10, ignore_index=None):
    """nnU-Net v2's TopKLoss (loss/robust_ce_loss.py, as its formula reads): the per-voxel CE with ignored voxels
    at 0, over every voxel of the batch; the mean of the int(k/100 * n_all) largest."""
    y = np.asarray(y, np.float64)
    l = per_voxel_ce(x, y, ignore_index=ignore_index)
    if ignore_index is not None:
        l = np.where(y[:, 0] == ignore_index, 0.0, l)
    n = int(l.size * k / 100)
    return float(np.sort(l.ravel())[::-1][:n].mean())


# ----------------------------------------------------------------------------------------------------
# compound losses
# ----------------------------------------------------------------------------------------------------


def dice_ce_loss(
    x,
    y,
    *,
    lambda_dice=1.0,
    lambda_ce=1.0,
    label_smoothing=0.0,
    weight=None,
    include_background=True,
    to_onehot_y=False,
    reduction="mean",
    **dice_kw,
):
    """monai DiceCELoss: lambda_dice * Dice(weight[1:] without background) + lambda_ce * CE(weight)
    (BCE with logits and pos_weight when C == 1)."""
    x = np.asarray(x, np.float64)
    dw = None
    if weight is not None:
        dw = np.asarray(weight, np.float64)
        if not include_background:
            dw = dw[1:]
    d = dice_loss(
        x, y, include_background=include_background, to_onehot_y=to_onehot_y, weight=dw, reduction=reduction, **dice_kw
    )
    yy = np.asarray(y, np.float64)
    ce = cross_entropy(x, yy, weight=weight, label_smoothing=label_smoothing, reduction=reduction)
    return lambda_dice * d + lambda_ce * ce


def dice_focal_loss(
    x,
    y,
    *,
    lambda_dice=1.0,
    lambda_focal=1.0,
    gamma=2.0,
    alpha=None,
    weight=None,
    include_background=True,
    to_onehot_y=False,
    reduction="mean",
    **dice_kw,
):
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if to_onehot_y and x.shape[1] > 1:
        y = one_hot(y, x.shape[1])
    d = dice_loss(x, y, include_background=include_background, weight=weight, reduction=reduction, **dice_kw)
    f = focal_loss(
        x, y, include_background=include_background, gamma=gamma, alpha=alpha, weight=weight, reduction=reduction
    )
    return lambda_dice * d + lambda_focal * f


def dice_topk_loss(x, y, *, k=10, lambda_dice=1.0, lambda_topk=1.0, weight=None, label_smoothing=0.0, **dice_kw):
    d = dice_loss(x, y, **dice_kw)
    t = topk_ce_loss(
        x, y, k=k, weight=weight, label_smoothing=label_smoothing, ignore_index=dice_kw.get("ignore_index")
    )
    return lambda_dice * d + lambda_topk * t


def combo_loss(
    x,
    y,
    *,
    alpha=0.5,
    beta=0.5,
    include_background=True,
    to_onehot_y=False,
    sigmoid=False,
    softmax=False,
    ignore_index=None,
    eps=0.0,
    **dice_kw,
):
    """Spec Combo: alpha * mean_{valid voxels, BCE channels}(-(beta g log p + (1-beta)(1-g) log(1-p)))
    + (1 - alpha) * DiceLoss (same args). BCE channels: the kept channels with sigmoid / probabilities, the
    foreground channels 1..C-1 with softmax (the background is their complement)."""
    p, g, m = prepare(
        x,
        y,
        sigmoid_act=sigmoid,
        softmax_act=softmax,
        to_onehot_y=to_onehot_y,
        include_background=True,
        ignore_index=ignore_index,
    )
    c = p.shape[1]
    bce_from = 1 if (softmax and c > 1) or (not include_background and c > 1) else 0
    p, g = p[:, bce_from:], g[:, bce_from:]
    pc = np.clip(p, eps, 1 - eps) if eps else p
    ce = -(beta * g * np.log(pc) + (1 - beta) * (1 - g) * np.log(1 - pc))
    ce = float((ce * m).sum() / (m.sum() * p.shape[1]))
    d = dice_loss(
        x,
        y,
        include_background=include_background,
        to_onehot_y=to_onehot_y,
        sigmoid=sigmoid,
        softmax=softmax,
        ignore_index=ignore_index,
        **dice_kw,
    )
    return alpha * ce + (1 - alpha) * d


def unified_focal_loss(
    x,
    y,
    *,
    weight=0.5,
    delta=0.6,
    gamma=0.5,
    asymmetric=True,
    sigmoid=False,
    softmax=False,
    to_onehot_y=False,
    smooth_nr=1e-5,
    smooth_dr=1e-5,
    batch=False,
    ignore_index=None,
):
    """Yeung et al. 2022 (authors' code), multi-class as in the spec; class 0 background.

    F  = mean_voxels sum_c  [c == 0: (1-delta)(1-p0)^gamma (-g0 log p0);
                             c >= 1: delta (-gc log pc)  (asym) | delta (1-pc)^gamma (-gc log pc)  (sym)]
    FT = mean_c [c == 0: 1 - mTI_0 (asym) | (1 - mTI_0)^(1-gamma) (sym);  c >= 1: (1 - mTI_c)^(1-gamma)],
         mTI_c = (TP + snr) / (TP + delta FN + (1 - delta) FP + sdr) per (b, c), then mean over b.
    loss = weight * FT + (1 - weight) * F.  C == 1 (sigmoid): channels [1 - p, p].
    """
    p, g, m = prepare(
        x, y, sigmoid_act=sigmoid, softmax_act=softmax, to_onehot_y=to_onehot_y, ignore_index=ignore_index
    )
    if p.shape[1] == 1:
        p = np.concatenate([1 - p, p], axis=1)
        g = np.concatenate([1 - g, g], axis=1)
    C = p.shape[1]
    ce = -g * np.log(p)
    mod = (1 - p) ** gamma
    fac = np.empty((1, C) + (1,) * (p.ndim - 2))
    fac[:, 0] = 1 - delta
    fac[:, 1:] = delta
    focal_vox = ce * fac
    focal_vox[:, 0] = focal_vox[:, 0] * mod[:, 0]
    if not asymmetric:
        focal_vox[:, 1:] = focal_vox[:, 1:] * mod[:, 1:]
    F = float((focal_vox.sum(axis=1, keepdims=True) * m).sum() / m.sum())
    s = overlap_sums(p, g, m, batch=batch)
    mti = (s["TP"] + smooth_nr) / (s["TP"] + delta * s["FN"] + (1 - delta) * s["FP"] + smooth_dr)
    one = np.clip(1 - mti, 0, None)
    t = one ** (1 - gamma)
    if asymmetric:
        t[..., 0] = one[..., 0]
    FT = float(np.mean(t))
    return weight * FT + (1 - weight) * F


def exp_log_loss(
    x,
    y,
    *,
    w_dice=0.8,
    w_cross=0.2,
    gamma_dice=0.3,
    gamma_cross=0.3,
    class_frequencies=None,
    to_onehot_y=False,
    smooth_nr=1e-5,
    smooth_dr=1e-5,
    batch=False,
):
    """Wong et al. 2018: w_dice E_c[(-ln Dice_c)^gd] + w_cross E_x[w_l (-ln p_l(x))^gc],
    w_l = (sum_k f_k / f_l)^0.5, f = class_frequencies or the label counts of the batch; softmax on logits."""
    x = np.asarray(x, np.float64)
    C = x.shape[1]
    p = softmax(x, axis=1)
    y = np.asarray(y, np.float64)
    g = one_hot(y, C) if (y.shape[1] == 1 and C > 1) else y
    s = overlap_sums(p, g, batch=batch)
    dice = (2 * s["TP"] + smooth_nr) / (s["SP"] + s["SG"] + smooth_dr)
    dice_term = float(np.mean((-np.log(dice)) ** gamma_dice))
    f = g.sum(axis=(0,) + _spatial_axes(g)) if class_frequencies is None else np.asarray(class_frequencies, np.float64)
    with np.errstate(divide="ignore"):
        wl = np.sqrt(f.sum() / f)
    lab = g.argmax(axis=1)  # (B, *)
    lp = np.take_along_axis(np.log(p), lab[:, None], axis=1)[:, 0]
    cross = float(np.mean(wl[lab] * (-lp) ** gamma_cross))
    return w_dice * dice_term + w_cross * cross


# ----------------------------------------------------------------------------------------------------
# Lovasz-softmax (Berman et al. 2018)
# ----------------------------------------------------------------------------------------------------


def lovasz_grad(gt_sorted):
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. sorted errors (Berman alg. 1)."""
    gt_sorted = np.asarray(gt_sorted, np.float64)
    n = gt_sorted.size
    gts = gt_sorted.sum()
    inter = gts - np.cumsum(gt_sorted)
    union = gts + np.cumsum(1.0 - gt_sorted)
    jac = 1.0 - inter / union
    if n > 1:
        jac[1:] = jac[1:] - jac[:-1]
    return jac


def jaccard_set_loss(fg, mispredicted):
    """Delta_J(M) = |M| / |{y = c} U M| (Berman eq. 3) for a boolean set M of mispredicted voxels."""
    fg = np.asarray(fg, bool)
    M = np.asarray(mispredicted, bool)
    denom = np.sum(fg | M)
    return 0.0 if denom == 0 else float(np.sum(M) / denom)


def lovasz_extension_bruteforce(errors, fg):
    """Lovasz extension by definition: sort errors descending, sum_i e_i (Delta(S_i) - Delta(S_{i-1}))."""
    errors = np.asarray(errors, np.float64)
    order = np.argsort(-errors, kind="stable")
    total = 0.0
    prev = 0.0
    M = np.zeros(errors.size, bool)
    for i in order:
        M[i] = True
        cur = jaccard_set_loss(fg, M)
        total += errors[i] * (cur - prev)
        prev = cur
    return total


def lovasz_flat(probas, fg_classes, classes="present", class_ids=None):
    """probas (N, C), fg_classes (N, C) binary; mean over the selected classes."""
    C = probas.shape[1]
    class_ids = range(C) if class_ids is None else class_ids
    losses = []
    for c in class_ids:
        fg = fg_classes[:, c]
        if classes == "present" and fg.sum() == 0:
            continue
        err = np.abs(fg - probas[:, c])
        order = np.argsort(-err, kind="stable")
        losses.append(float(np.dot(err[order], lovasz_grad(fg[order]))))
    return float(np.mean(losses)) if losses else 0.0


def lovasz_softmax_loss(
    x, y, *, classes="present", per_image=False, include_background=True, softmax=True, ignore_index=None
):
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    C = x.shape[1]
    p = softmax_fn(x) if softmax else x
    m = ignore_mask(y, ignore_index)[:, 0] > 0
    if y.shape[1] == 1:
        yy = np.where(m[:, None], y, 0)
        g = one_hot(yy, C)
    else:
        g = y
    class_ids = list(range(C)) if include_background else list(range(1, C))

    def flat(pb, gb, mb):
        pf = np.moveaxis(pb, 1, -1).reshape(-1, C)
        gf = np.moveaxis(gb, 1, -1).reshape(-1, C)
        keep = mb.reshape(-1)
        return pf[keep], gf[keep]

    if per_image:
        vals = []
        for b in range(x.shape[0]):
            pf, gf = flat(p[b : b + 1], g[b : b + 1], m[b : b + 1])
            vals.append(lovasz_flat(pf, gf, classes, class_ids))
        return float(np.mean(vals))
    pf, gf = flat(p, g, m)
    return lovasz_flat(pf, gf, classes, class_ids)


softmax_fn = softmax


# ----------------------------------------------------------------------------------------------------
# self-check
# ----------------------------------------------------------------------------------------------------


def _close(a, b, tol=1e-12):
    assert np.allclose(a, b, rtol=tol, atol=tol), (a, b)


def self_check(seed=0):
    rng = np.random.default_rng(seed)
    B, C, S = 2, 3, (6, 5, 4)
    x = rng.normal(size=(B, C) + S)
    yi = rng.integers(0, C, size=(B, 1) + S).astype(np.float64)
    g = one_hot(yi, C)
    p = softmax(x)

    # activations
    _close(softmax(x).sum(axis=1), 1.0)
    _close(np.exp(log_softmax(x)), softmax(x))
    _close(sigmoid(x), 1 / (1 + np.exp(-x)))
    _close(np.exp(log_sigmoid(x)), sigmoid(x))
    _close(sigmoid(np.array([-800.0, 800.0])), [0.0, 1.0])
    assert np.isfinite(log_sigmoid(np.array([-800.0, 800.0]))).all()

    # identical masks -> 0 loss; disjoint -> ~1
    _close(dice_loss(g, g), 0.0, 1e-9)
    _close(dice_loss(g, yi, to_onehot_y=True), 0.0, 1e-9)
    _close(dice_loss(g, g, jaccard=True), 0.0, 1e-9)
    _close(tversky_loss(g, g, alpha=0.3, beta=0.7), 0.0, 1e-9)
    _close(generalized_dice_loss(g, g), 0.0, 1e-9)
    _close(sensitivity_specificity_loss(g, g), 0.0)
    _close(log_cosh_dice_loss(g, g), 0.0, 1e-9)
    assert abs(dice_loss(1 - g, g, smooth_nr=0, smooth_dr=0) - 1.0) < 1e-12

    # general reference vs paper forms
    for b, c in itertools.product(range(B), range(C)):
        d = dice_loss(p, g, reduction="none", smooth_nr=0, smooth_dr=0)[b, c].item()
        _close(d, 1 - dice_coefficient(p[b, c], g[b, c]))
        d2 = dice_loss(p, g, reduction="none", squared_pred=True, smooth_nr=0, smooth_dr=0)[b, c].item()
        _close(d2, 1 - vnet_dice(p[b, c], g[b, c]))
        ti = tversky_index(p, g, alpha=0.3, beta=0.7, smooth_nr=0, smooth_dr=0)[b, c]
        _close(ti, tversky_index_forum(p[b, c], g[b, c], 0.7, 0.3))
        _close(
            jaccard_spec_printed(p[b : b + 1, c : c + 1], g[b : b + 1, c : c + 1], smooth_nr=0, smooth_dr=0),
            1 - jaccard_index(p[b, c], g[b, c]),
        )
        _close(
            dice_loss(p[b : b + 1, c : c + 1], g[b : b + 1, c : c + 1], jaccard=True, smooth_nr=0, smooth_dr=0),
            1 - jaccard_index(p[b, c], g[b, c]),
        )
        ss = sensitivity_specificity_loss(p[b : b + 1, c : c + 1], g[b : b + 1, c : c + 1], smooth_dr=0)
        _close(ss, sensitivity_specificity_forum(p[b, c], g[b, c]))
        _close(
            log_cosh_dice_loss(p[b : b + 1, c : c + 1], g[b : b + 1, c : c + 1], smooth_nr=0, smooth_dr=0),
            log_cosh_dice_forum(p[b, c], g[b, c]),
        )
        _close(
            focal_tversky_loss(p[b : b + 1, c : c + 1], g[b : b + 1, c : c + 1], smooth_nr=0, smooth_dr=0),
            focal_tversky_forum(p[b, c], g[b, c]),
        )
    # Tversky(0.5, 0.5) == Dice when Tversky's smoothing is half of Dice's
    _close(tversky_loss(p, g, smooth_nr=1e-3, smooth_dr=1e-3), dice_loss(p, g, smooth_nr=2e-3, smooth_dr=2e-3))
    _close(
        tversky_loss(p, g, alpha=1.0, beta=1.0, smooth_nr=0, smooth_dr=0),
        dice_loss(p, g, jaccard=True, smooth_nr=0, smooth_dr=0),
    )
    # soft-label L1 form equals the plain sums for hard labels
    _close(dice_loss(p, g, soft_label=True), dice_loss(p, g))
    # weighted two-class Dice (forum) == DiceLoss(weight normalised to mean 1)
    w = np.array([0.2, 1.8])
    x2 = rng.normal(size=(1, 2) + S)
    y2 = one_hot(rng.integers(0, 2, size=(1, 1) + S), 2)
    p2 = softmax(x2)
    _close(dice_loss(p2, y2, weight=w * 2 / w.sum(), smooth_nr=0, smooth_dr=0), weighted_dice_forum(p2[0], y2[0], w))
    # Sudre GDL
    _close(generalized_dice_loss(p[:1], g[:1], smooth_nr=0, smooth_dr=0), sudre_gdl(p[0], g[0]))
    # GDL inf-weight replacement: an absent class takes the max finite weight
    g_abs = g.copy()
    g_abs[:, 0] = 0  # (not one-hot any more, fine for this check)
    sums = overlap_sums(p, g_abs)
    wmax = (1 / sums["SG"][:, 1:] ** 2).max(axis=1)
    wfull = np.concatenate([wmax[:, None], 1 / sums["SG"][:, 1:] ** 2], axis=1)
    manual = 1 - (2 * (wfull * sums["TP"]).sum(1) + 1e-5) / ((wfull * (sums["SP"] + sums["SG"])).sum(1) + 1e-5)
    _close(generalized_dice_loss(p, g_abs), manual.mean())
    # CE: index == one-hot probability target (no smoothing, no weight); weights
    _close(cross_entropy(x, yi), cross_entropy(x, g))
    _close(cross_entropy(x, yi), float(np.mean(-(g * log_softmax(x)).sum(1))))
    wc = np.array([0.5, 1.0, 2.0])
    manual = (-(g * log_softmax(x)).sum(1) * wc[yi[:, 0].astype(int)]).sum() / wc[yi[:, 0].astype(int)].sum()
    _close(cross_entropy(x, yi, weight=wc), manual)
    # label smoothing (no weight): index form == probability form
    _close(cross_entropy(x, yi, label_smoothing=0.1), cross_entropy(x, g, label_smoothing=0.1))
    # BCE forms
    xb = rng.normal(size=(B, 1) + S) * 3
    yb = (rng.random((B, 1) + S) > 0.7).astype(np.float64)
    _close(weighted_bce_loss(xb, yb, pos_weight=3.0), bce_with_logits_forum(xb, yb, 3.0))
    _close(cross_entropy(xb, yb, weight=3.0), bce_with_logits_forum(xb, yb, 3.0))
    _close(dice_ce_loss(xb[:1], yb[:1], sigmoid=True, smooth_nr=0, smooth_dr=0), dice_bce_forum(xb[:1], yb[:1]))
    # focal
    _close(focal_loss(xb, yb, gamma=0.0), bce_with_logits_forum(xb, yb))
    _close(focal_loss(xb, yb, gamma=2.0, alpha=0.25), focal_binary_forum(xb, yb, 2.0, 0.25))
    fl_soft = focal_loss(x, g, gamma=2.0, use_softmax=True)
    _close(fl_soft, float(np.mean(-((1 - p) ** 2) * np.log(p) * g)))
    _close(focal_loss(x, g, gamma=0.0, use_softmax=True) * C, cross_entropy(x, yi))
    # TopK with k=100 is CE; k tiny is the max
    _close(topk_ce_loss(x, yi, k=100), cross_entropy(x, yi))
    _close(topk_ce_loss(x, yi, k=1e-9), per_voxel_ce(x, yi).max())
    # Combo (spec) == forum form + (1 - alpha) for B = C = 1 with the same smoothing
    pb = sigmoid(xb[:1])
    _close(
        combo_loss(pb, yb[:1], alpha=0.3, beta=0.6, smooth_nr=1.0, smooth_dr=1.0, eps=1e-9),
        combo_forum(pb, yb[:1], alpha=0.3, ce_ratio=0.6, smooth=1.0) + 0.7,
    )
    # unified focal: weight=1 -> FT only; weight=0 -> F only; C == 1 sigmoid == 2-channel probabilities
    u1 = unified_focal_loss(xb, yb, sigmoid=True)
    p2c = np.concatenate([1 - sigmoid(xb), sigmoid(xb)], 1)
    g2c = np.concatenate([1 - yb, yb], 1)
    _close(u1, unified_focal_loss(p2c, g2c))
    # symmetric and asymmetric differ only by the modulating factors
    assert unified_focal_loss(p, g, asymmetric=False) < unified_focal_loss(p, g, asymmetric=True)
    uf_perfect = unified_focal_loss(np.clip(g, 1e-12, 1), g)
    assert abs(uf_perfect) < 1e-6, uf_perfect
    # exp-log: perfect prediction -> 0; gamma = 1 and uniform freq -> -ln D mean + CE
    assert abs(exp_log_loss(np.log(np.clip(g, 1e-300, 1)) * 1.0 + 0.0, g)) < 1e-6
    el = exp_log_loss(x, yi, gamma_dice=1.0, gamma_cross=1.0, class_frequencies=[1, 1, 1], w_dice=1, w_cross=1)
    sums = overlap_sums(p, g)
    dd = (2 * sums["TP"] + 1e-5) / (sums["SP"] + sums["SG"] + 1e-5)
    _close(el, np.mean(-np.log(dd)) + math.sqrt(3) * cross_entropy(x, yi))

    # Lovasz: grad formula vs brute-force set function, and binary vertices == Jaccard set loss
    for _trial in range(20):
        n = int(rng.integers(1, 9))
        fg = (rng.random(n) > 0.5).astype(np.float64)
        err = rng.random(n)
        order = np.argsort(-err, kind="stable")
        _close(np.dot(err[order], lovasz_grad(fg[order])), lovasz_extension_bruteforce(err, fg))
        pred = (rng.random(n) > 0.5).astype(np.float64)
        e01 = np.abs(fg - pred)
        order = np.argsort(-e01, kind="stable")
        _close(np.dot(e01[order], lovasz_grad(fg[order])), jaccard_set_loss(fg, e01 > 0))
        if fg.sum() > 0:  # hard prediction: 1 - IoU(pred, fg)
            _close(jaccard_set_loss(fg, e01 > 0), 1 - jaccard_index(pred, fg))
    # Lovasz on a hard one-hot prediction == mean over present classes of 1 - IoU
    lab_pred = rng.integers(0, C, size=(B, 1) + S)
    hard = one_hot(lab_pred, C)
    expect = np.mean([1 - jaccard_index(hard[:, c], g[:, c]) for c in range(C)])
    _close(lovasz_softmax_loss(hard, yi, softmax=False), expect)
    _close(lovasz_softmax_loss(g, yi, softmax=False), 0.0)
    return True


if __name__ == "__main__":
    self_check()
    print("reference self-check OK")
