"""Each loss against its independent float64 numpy reference (tests/reference.py) on small random 2D and 3D
inputs: index and one-hot targets, include_background, batch, weights, ignore_index, reductions.

Tolerance: 1e-5 (atol and rtol) for float32 input (the reference is evaluated on the same float32-rounded
values), 1e-10 for float64 input. Also checks the paper / forum forms users copy (V-Net Dice, weighted
two-class Dice, Tversky with 0.7 on FN, focal Tversky 0.75, Sudre GDL, Dice+BCE, pos_weight BCE, ...).
"""

from __future__ import annotations

import itertools
import os
import sys
import warnings
import zlib

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference as R  # noqa: E402

import monai_losses_ext as ext  # noqa: E402

SHAPES = {2: (7, 6), 3: (6, 5, 4)}
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-10, rtol=1e-10)}


def _seed(*parts):
    return zlib.crc32(repr(parts).encode()) % 100_000


def make(seed, *, B=2, C=3, dim=3, scale=2.0, ignore=None, ignore_frac=0.2, absent=None, binary=False):
    """logits x (B, C, *), index labels yi (B, 1, *) (float64, may hold `ignore`), one-hot g (B, C, *)."""
    rng = np.random.default_rng(seed)
    shape = (B, C) + SHAPES[dim]
    x = rng.normal(size=shape) * scale
    n_lab = 2 if binary else C
    yi = rng.integers(0, n_lab, size=(B, 1) + SHAPES[dim]).astype(np.float64)
    if absent is not None:  # class `absent` missing from sample 0
        yi[0][yi[0] == absent] = (absent + 1) % n_lab
    if ignore is not None:
        drop = rng.random(yi.shape) < ignore_frac
        yi = np.where(drop, float(ignore), yi)
    valid = (yi >= 0) & (yi < C)
    g = R.one_hot(np.where(valid, yi, 0), C) * valid
    return x, yi, g


def torch_in(a, dtype):
    return torch.as_tensor(np.asarray(a), dtype=dtype)


def rounded(x, dtype):
    """The float64 values the loss actually sees for an input of `dtype`."""
    return torch_in(x, dtype).to(torch.float64).numpy()


def run(loss, x, y, dtype, *, target_dtype=None):
    xt = torch_in(x, dtype)
    yt = torch_in(y, target_dtype or dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = loss(xt, yt)
    return out


def check(out, expected, dtype, *, exact_shape=True, what=""):
    exp = np.asarray(expected, dtype=np.float64)
    assert torch.isfinite(out).all(), f"{what}: non-finite {out}"
    if exact_shape:
        assert tuple(out.shape) == exp.shape, f"{what}: shape {tuple(out.shape)} != expected {exp.shape}"
    else:
        assert out.numel() == exp.size, f"{what}: {out.numel()} elements, expected {exp.size}"
    got = out.detach().to(torch.float64).reshape(exp.shape).numpy()
    np.testing.assert_allclose(got, exp, **TOL[dtype], err_msg=what)


def probs(x, act):
    return R.softmax(x) if act == "softmax" else R.sigmoid(x) if act == "sigmoid" else x


DTYPES = [torch.float32, torch.float64]

# ----------------------------------------------------------------------------------------------------
# Dice / Jaccard
# ----------------------------------------------------------------------------------------------------

DICE_CASES = [
    dict(dim=d, target=t, act=a, include_background=ib, batch=bt, squared_pred=sq, reduction=r)
    for d, t, a, ib, bt, sq, r in itertools.product(
        [2, 3],
        ["index", "onehot"],
        ["softmax", "sigmoid"],
        [True, False],
        [False, True],
        [False, True],
        ["mean", "sum", "none"],
    )
    if (d + (t == "index") + (a == "softmax") + ib + bt + sq) % 2 == 0  # a half fraction of the full grid
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", DICE_CASES, ids=[str(i) for i in range(len(DICE_CASES))])
def test_dice(case, dtype):
    c = dict(case)
    dim, target, act = c.pop("dim"), c.pop("target"), c.pop("act")
    x, yi, g = make(_seed("dice", case), dim=dim)
    y = yi if target == "index" else g
    kw = dict(c, to_onehot_y=target == "index", **{act: True})
    out = run(ext.DiceLoss(**kw), x, y, dtype)
    check(out, R.dice_loss(rounded(x, dtype), y, **kw), dtype, what=str(kw))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize(
    "kw",
    [
        dict(weight=[0.2, 1.0, 3.0]),
        dict(weight=[0.2, 1.0, 3.0], reduction="none", batch=True),
        dict(weight=[2.0, 0.5], include_background=False),
        dict(weight=1.5, reduction="sum"),
        dict(ignore_index=255),
        dict(ignore_index=255, batch=True, reduction="none"),
        dict(ignore_index=-1, include_background=False),
        dict(ignore_index=2),
        dict(ignore_index=255, onehot=True),
        dict(ignore_index=0, onehot=True, batch=True),
        dict(smooth_nr=0.0, smooth_dr=1e-8),
        dict(smooth_nr=1.0, smooth_dr=1.0),
        dict(squared_pred=True, smooth_nr=0.3, smooth_dr=0.7),
        dict(probabilities=True),
    ],
    ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()),
)
def test_dice_options(kw, dtype):
    kw = dict(kw)
    onehot, as_prob = kw.pop("onehot", False), kw.pop("probabilities", False)
    ii = kw.get("ignore_index")
    sentinel = ii if ii is not None and not (0 <= ii < 3) else None
    x, yi, g = make(_seed("dice_opt", kw), ignore=sentinel)
    y = g if onehot else yi
    if as_prob:
        x = R.softmax(x)
        kw.update(to_onehot_y=not onehot)
    else:
        kw.update(softmax=True, to_onehot_y=not onehot)
    out = run(ext.DiceLoss(**kw), x, y, dtype)
    check(out, R.dice_loss(rounded(x, dtype), y, **kw), dtype, what=str(kw))


@pytest.mark.parametrize("target_dtype", [torch.int64, torch.uint8, torch.float32])
def test_dice_index_target_dtypes(target_dtype):
    x, yi, _ = make(3)
    out = run(ext.DiceLoss(softmax=True, to_onehot_y=True), x, yi, torch.float32, target_dtype=target_dtype)
    check(out, R.dice_loss(rounded(x, torch.float32), yi, softmax=True, to_onehot_y=True), torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("batch", [False, True])
def test_jaccard_default_smoothing(dtype, batch):
    """JaccardLoss == DiceLoss(jaccard=True) == soft IoU; with the default 1e-5 smoothing the MONAI form and the
    spec's printed form agree to ~1e-7, so float32 tolerance is used for both dtypes here."""
    x, yi, _ = make(_seed("jac", batch))
    kw = dict(softmax=True, to_onehot_y=True, batch=batch)
    a = run(ext.JaccardLoss(**kw), x, yi, dtype)
    b = run(ext.DiceLoss(jaccard=True, **kw), x, yi, dtype)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    check(a, R.dice_loss(rounded(x, dtype), yi, jaccard=True, **kw), torch.float32)


def test_jaccard_smoothing_is_monais():
    """Spec: DiceLoss(jaccard=True) == monai.losses.DiceLoss, whose soft IoU is (2TP + snr) / (2(SP+SG-TP) + sdr).
    With smooth 1 the two ways of adding the smoothing differ by ~1e-2; this pins MONAI's (float64)."""
    x, yi, _ = make(4)
    kw = dict(softmax=True, to_onehot_y=True, smooth_nr=1.0, smooth_dr=1.0, reduction="none")
    out = run(ext.DiceLoss(jaccard=True, **kw), x, yi, torch.float64)
    check(out, R.dice_loss(x, yi, jaccard=True, **kw), torch.float64, what="jaccard smoothing")


def test_dice_forum_forms():
    """V-Net Dice (Milletari 2016), weighted two-class Dice and soft Jaccard, flattened, zero smoothing."""
    x, yi, g = make(5, B=1, C=2, binary=True)
    p = R.softmax(x)
    vnet = run(ext.DiceLoss(squared_pred=True, smooth_nr=0.0, smooth_dr=0.0, reduction="none"), p, g, torch.float64)
    for c in range(2):
        assert abs(vnet.flatten()[c].item() - (1 - R.vnet_dice(p[0, c], g[0, c]))) < 1e-12
    w = np.array([0.25, 1.75])  # forum: 1 - sum w_c D_c / sum w_c  ==  mean_c (w_c C / sum w) (1 - D_c)
    wd = run(ext.DiceLoss(weight=list(w * 2 / w.sum()), smooth_nr=0.0, smooth_dr=0.0), p, g, torch.float64)
    assert abs(wd.item() - R.weighted_dice_forum(p[0], g[0], w)) < 1e-12
    jac = run(ext.JaccardLoss(smooth_nr=0.0, smooth_dr=0.0, reduction="none"), p, g, torch.float64)
    for c in range(2):
        assert abs(jac.flatten()[c].item() - (1 - R.jaccard_index(p[0, c], g[0, c]))) < 1e-12
    # binary sigmoid Dice on one channel
    xb = x[:, 1:]
    d = run(ext.DiceLoss(sigmoid=True, smooth_nr=0.0, smooth_dr=0.0), xb, g[:, 1:], torch.float64)
    assert abs(d.item() - (1 - R.dice_coefficient(R.sigmoid(xb), g[:, 1:]))) < 1e-12


def test_dice_soft_label_squared_pred():
    """soft_label with squared_pred: MONAI's ord-2 form gives TP = sum p*g (so the V-Net Dice), not sum min(p, g)."""
    rng = np.random.default_rng(6)
    p = R.softmax(rng.normal(size=(2, 3, 6, 5, 4)))
    g = R.softmax(rng.normal(size=(2, 3, 6, 5, 4)) * 2)
    for jac in (False, True):
        out = run(ext.DiceLoss(soft_label=True, squared_pred=True, jaccard=jac), p, g, torch.float64)
        check(
            out,
            R.dice_loss(p, g, soft_label=True, squared_pred=True, jaccard=jac),
            torch.float64,
            what=f"soft_label squared_pred jaccard={jac}",
        )
    out = run(ext.DiceLoss(soft_label=True), p, g, torch.float64)  # L1 form: TP = (SP + SG - |p - g|) / 2
    check(out, R.dice_loss(p, g, soft_label=True), torch.float64, what="soft_label L1")


# ----------------------------------------------------------------------------------------------------
# Tversky family
# ----------------------------------------------------------------------------------------------------

TVERSKY_CASES = [
    dict(dim=d, target=t, include_background=ib, batch=bt, alpha=al, beta=be, reduction=r)
    for d, t, ib, bt, (al, be), r in itertools.product(
        [2, 3],
        ["index", "onehot"],
        [True, False],
        [False, True],
        [(0.5, 0.5), (0.3, 0.7), (0.9, 0.2)],
        ["mean", "sum", "none"],
    )
    if (d + (t == "index") + ib + bt) % 2 == 0
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", TVERSKY_CASES, ids=[str(i) for i in range(len(TVERSKY_CASES))])
def test_tversky(case, dtype):
    c = dict(case)
    dim, target = c.pop("dim"), c.pop("target")
    x, yi, g = make(_seed("tv", case), dim=dim)
    y = yi if target == "index" else g
    kw = dict(c, softmax=True, to_onehot_y=target == "index")
    out = run(ext.TverskyLoss(**kw), x, y, dtype)
    check(out, R.tversky_loss(rounded(x, dtype), y, **kw), dtype, what=str(kw))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(gamma=1.0),
        dict(gamma=2.0, alpha=0.5, beta=0.5),
        dict(batch=True, reduction="none"),
        dict(include_background=False, reduction="sum"),
        dict(ignore_index=255, reduction="none"),
        dict(ignore_index=1, onehot=True),
        dict(sigmoid=True),
        dict(smooth_nr=1.0, smooth_dr=1.0),
    ],
    ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "defaults",
)
def test_focal_tversky(kw, dtype):
    kw = dict(kw)
    onehot = kw.pop("onehot", False)
    ii = kw.get("ignore_index")
    x, yi, g = make(_seed("ftv", kw), ignore=ii if ii == 255 else None)
    y = g if onehot else yi
    act = {} if kw.get("sigmoid") else dict(softmax=True)
    kw.update(act, to_onehot_y=not onehot)
    out = run(ext.FocalTverskyLoss(**kw), x, y, dtype)
    check(out, R.focal_tversky_loss(rounded(x, dtype), y, **kw), dtype, what=str(kw))


def test_tversky_forum_convention():
    """Forum/Abraham & Khan: TI = TP / (TP + 0.7 FN + 0.3 FP) is TverskyLoss(alpha=0.3 (FP), beta=0.7 (FN));
    focal Tversky = (1 - TI)^0.75 is FocalTverskyLoss() with its defaults. Checked on one binary channel."""
    x, yi, g = make(7, B=1, C=2, binary=True)
    p = R.sigmoid(x[:, 1:])
    gt = g[:, 1:]
    ti = R.tversky_index_forum(p, gt, w_fn=0.7, w_fp=0.3)
    tv = run(ext.TverskyLoss(alpha=0.3, beta=0.7, smooth_nr=0.0, smooth_dr=0.0), p, gt, torch.float64)
    assert abs(tv.item() - (1 - ti)) < 1e-12
    swapped = run(ext.TverskyLoss(alpha=0.7, beta=0.3, smooth_nr=0.0, smooth_dr=0.0), p, gt, torch.float64)
    assert abs(swapped.item() - (1 - ti)) > 1e-3  # the convention matters on this case
    ft = run(ext.FocalTverskyLoss(smooth_nr=0.0, smooth_dr=0.0), p, gt, torch.float64)
    assert abs(ft.item() - R.focal_tversky_forum(p, gt, gamma=0.75)) < 1e-12


# ----------------------------------------------------------------------------------------------------
# Generalized Dice
# ----------------------------------------------------------------------------------------------------

GDL_CASES = [
    dict(dim=d, target=t, include_background=ib, batch=bt, w_type=w, reduction=r, absent=ab)
    for d, t, ib, bt, w, r, ab in itertools.product(
        [2, 3],
        ["index", "onehot"],
        [True, False],
        [False, True],
        ["square", "simple", "uniform"],
        ["mean", "none"],
        [None, 2],
    )
    if (d + (t == "index") + ib + bt + (ab is None)) % 2 == 0
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", GDL_CASES, ids=[str(i) for i in range(len(GDL_CASES))])
def test_generalized_dice(case, dtype):
    c = dict(case)
    dim, target, absent = c.pop("dim"), c.pop("target"), c.pop("absent")
    x, yi, g = make(_seed("gdl", case), dim=dim, absent=absent)
    y = yi if target == "index" else g
    kw = dict(c, softmax=True, to_onehot_y=target == "index")
    out = run(ext.GeneralizedDiceLoss(**kw), x, y, dtype)
    check(out, R.generalized_dice_loss(rounded(x, dtype), y, **kw), dtype, what=str(kw))


def test_generalized_dice_sudre_form():
    """Sudre et al. 2017 with w = 1/(sum r)^2, on probabilities, zero smoothing, per sample."""
    x, yi, g = make(8, B=1)
    p = R.softmax(x)
    out = run(ext.GeneralizedDiceLoss(smooth_nr=0.0, smooth_dr=0.0), p, g, torch.float64)
    assert abs(out.item() - R.sudre_gdl(p[0], g[0])) < 1e-12


def test_generalized_dice_ignore_index():
    x, yi, _ = make(9, ignore=255)
    kw = dict(softmax=True, to_onehot_y=True, ignore_index=255)
    out = run(ext.GeneralizedDiceLoss(**kw), x, yi, torch.float64)
    check(out, R.generalized_dice_loss(x, yi, **kw), torch.float64)


# ----------------------------------------------------------------------------------------------------
# log-cosh Dice, sensitivity-specificity
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(batch=True),
        dict(include_background=False, reduction="sum"),
        dict(ignore_index=255),
        dict(squared_pred=True),
        dict(onehot=True, reduction="none"),
    ],
    ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "defaults",
)
def test_log_cosh_dice(kw, dtype):
    kw = dict(kw)
    onehot = kw.pop("onehot", False)
    x, yi, g = make(_seed("lc", kw), ignore=kw.get("ignore_index"))
    y = g if onehot else yi
    kw.update(softmax=True, to_onehot_y=not onehot)
    out = run(ext.LogCoshDiceLoss(**kw), x, y, dtype)
    check(out, R.log_cosh_dice_loss(rounded(x, dtype), y, **kw), dtype, exact_shape=False, what=str(kw))


def test_log_cosh_dice_forum():
    x, yi, g = make(10, B=1, C=1, binary=True)
    yb = yi.clip(0, 1)
    out = run(ext.LogCoshDiceLoss(sigmoid=True, smooth_nr=0.0, smooth_dr=0.0), x, yb, torch.float64)
    assert abs(out.item() - R.log_cosh_dice_forum(R.sigmoid(x), yb)) < 1e-12


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(r=0.5),
        dict(batch=True),
        dict(include_background=False, reduction="sum"),
        dict(ignore_index=255),
        dict(ignore_index=255, batch=True, r=0.3),
        dict(ignore_index=1, onehot=True),
        dict(onehot=True, reduction="none"),
        dict(sigmoid=True, r=0.2),
    ],
    ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "defaults",
)
def test_sensitivity_specificity(kw, dtype):
    kw = dict(kw)
    onehot = kw.pop("onehot", False)
    ii = kw.get("ignore_index")
    x, yi, g = make(_seed("ss", kw), ignore=ii if ii == 255 else None)
    y = g if onehot else yi
    kw.update({} if kw.get("sigmoid") else dict(softmax=True), to_onehot_y=not onehot)
    out = run(ext.SensitivitySpecificityLoss(**kw), x, y, dtype)
    check(out, R.sensitivity_specificity_loss(rounded(x, dtype), y, **kw), dtype, exact_shape=False, what=str(kw))


def test_sensitivity_specificity_brosch_form():
    x, yi, g = make(11, B=1, C=1, binary=True)
    yb = yi.clip(0, 1)
    p = R.sigmoid(x)
    out = run(ext.SensitivitySpecificityLoss(r=0.05, smooth_dr=0.0), p, yb, torch.float64)
    assert abs(out.item() - R.sensitivity_specificity_forum(p, yb, r=0.05)) < 1e-12


# ----------------------------------------------------------------------------------------------------
# per-voxel losses
# ----------------------------------------------------------------------------------------------------

CE_CASES = [
    dict(dim=d, target=t, weight=w, ignore_index=ii, label_smoothing=ls, reduction=r)
    for d, t, w, ii, ls, r in itertools.product(
        [2, 3],
        ["index", "prob"],
        [None, [0.3, 1.0, 2.5]],
        [None, 255, 1],
        [0.0, 0.1],
        ["mean", "sum", "none"],
    )
    if not (t == "prob" and ii is not None) and (d + (w is None) + (ls == 0)) % 2 == 0
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", CE_CASES, ids=[str(i) for i in range(len(CE_CASES))])
def test_weighted_ce(case, dtype):
    c = dict(case)
    dim, target = c.pop("dim"), c.pop("target")
    ii = c["ignore_index"]
    x, yi, g = make(_seed("ce", case), dim=dim, ignore=ii if ii == 255 else None)
    if target == "prob":
        y = R.softmax(np.random.default_rng(1).normal(size=g.shape) * 2)
    else:
        y = yi
    out = run(ext.WeightedCELoss(**c), x, y, dtype)
    exp = R.cross_entropy(rounded(x, dtype), y, **c)
    check(out, exp, dtype, what=str(c))
    # and torch's own CrossEntropyLoss, which the spec names
    tkw = dict(
        weight=None if c["weight"] is None else torch.tensor(c["weight"], dtype=torch.float64),
        label_smoothing=c["label_smoothing"],
        reduction=c["reduction"],
    )
    if c["ignore_index"] is not None:
        tkw["ignore_index"] = c["ignore_index"]
    yt = torch.as_tensor(y)
    yt = yt[:, 0].long() if target == "index" else yt
    ref_t = torch.nn.CrossEntropyLoss(**tkw)(torch_in(rounded(x, dtype), torch.float64), yt)
    np.testing.assert_allclose(np.asarray(exp), ref_t.numpy(), rtol=1e-10, atol=1e-10)


def test_weighted_ce_onehot_equals_index():
    x, yi, g = make(12)
    a = run(ext.WeightedCELoss(weight=[0.5, 1.0, 2.0]), x, yi, torch.float64)
    check(a, R.cross_entropy(x, yi, weight=[0.5, 1.0, 2.0]), torch.float64)
    b = run(ext.WeightedCELoss(), x, g, torch.float64)
    check(b, R.cross_entropy(x, yi), torch.float64)


@pytest.mark.parametrize("weight", [None, 4.0])
def test_weighted_ce_single_channel_is_bce(weight):
    x, yi, _ = make(13, C=1, binary=True)
    yb = yi.clip(0, 1)
    out = run(ext.WeightedCELoss(weight=weight), x, yb, torch.float64)
    check(out, R.bce_with_logits_forum(x, yb, 1.0 if weight is None else weight), torch.float64)


WBCE_CASES = [
    dict(pos_weight=pw, target=t, ignore_index=ii, reduction=r)
    for pw, t, ii, r in itertools.product(
        [1.0, 5.0, [0.5, 2.0, 9.0]],
        ["index", "onehot", "multilabel"],
        [None, 255],
        ["mean", "sum", "none"],
    )
    if not (t == "multilabel" and ii is not None)
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", WBCE_CASES, ids=[str(i) for i in range(len(WBCE_CASES))])
def test_weighted_bce(case, dtype):
    c = dict(case)
    target = c.pop("target")
    x, yi, g = make(_seed("wbce", case), ignore=c["ignore_index"])
    if target == "index":
        y, c["to_onehot_y"] = yi, True
    elif target == "onehot":
        y = g
    else:
        y = (np.random.default_rng(2).random(g.shape) < 0.3).astype(np.float64)
    out = run(ext.WeightedBCELoss(**c), x, y, dtype)
    exp = R.weighted_bce_loss(rounded(x, dtype), y, **c)
    check(out, exp, dtype, what=str(c))
    if c["ignore_index"] is None:  # the spec names torch.nn.BCEWithLogitsLoss(pos_weight)
        pw = torch.as_tensor(c["pos_weight"], dtype=torch.float64)
        pw = pw.reshape(-1, *([1] * len(SHAPES[3]))) if pw.ndim else pw
        gt = torch.as_tensor(R.one_hot(y, 3) if target == "index" else y)
        ref_t = torch.nn.BCEWithLogitsLoss(pos_weight=pw, reduction=c["reduction"])(
            torch_in(rounded(x, dtype), torch.float64), gt
        )
        np.testing.assert_allclose(np.asarray(exp), ref_t.numpy(), rtol=1e-10, atol=1e-10)


FOCAL_CASES = [  # every 5th case of the full product (5 is coprime with the inner dimensions, so all pairs occur)
    dict(target=t, use_softmax=sm, include_background=ib, gamma=ga, alpha=al, weight=w, reduction=r, ignore_index=ii)
    for i, (t, sm, ib, ga, al, w, r, ii) in enumerate(
        itertools.product(
            ["index", "onehot"],
            [False, True],
            [True, False],
            [0.0, 2.0, 0.7],
            [None, 0.25, "seq"],
            [None, "w"],
            ["mean", "sum", "none"],
            [None, 255],
        )
    )
    if i % 5 == 0
]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", FOCAL_CASES, ids=[str(i) for i in range(len(FOCAL_CASES))])
def test_focal(case, dtype):
    c = dict(case)
    target = c.pop("target")
    nk = 3 if c["include_background"] else 2
    if c["alpha"] == "seq":
        c["alpha"] = [0.2, 0.6, 0.9][-nk:]
    if c["weight"] == "w":
        c["weight"] = [0.5, 1.0, 3.0][-nk:]
    x, yi, g = make(_seed("focal", case), ignore=c["ignore_index"], dim=2 + _seed("d", case) % 2)
    y = yi if target == "index" else g
    c["to_onehot_y"] = target == "index"
    out = run(ext.FocalLoss(**c), x, y, dtype)
    check(out, R.focal_loss(rounded(x, dtype), y, **c), dtype, what=str(c))


@pytest.mark.parametrize("kw", [{}, {"use_softmax": True}, {"include_background": False}])
def test_focal_mean_with_ignore_index_follows_monai(kw):
    """MONAI 1.6's FocalLoss (matched in test_monai_equivalence) divides the valid terms' sum by the number of valid
    voxels, not by voxels x classes: the mean with ``ignore_index`` is C times the mean of the valid terms, even
    when no voxel is ignored (the relation docs/losses.md and the docstring state)."""
    x, yi, _ = make(21, C=3)
    x, yi = torch.as_tensor(x), torch.as_tensor(yi)
    y = yi.clone()
    y[..., :2] = 7
    c = 3 if kw.get("include_background", True) else 2
    plain = run(ext.FocalLoss(to_onehot_y=True, **kw), x, yi, torch.float64).item()
    assert run(ext.FocalLoss(to_onehot_y=True, ignore_index=7, **kw), x, yi, torch.float64).item() == pytest.approx(
        c * plain, rel=1e-12
    )
    terms = run(ext.FocalLoss(to_onehot_y=True, ignore_index=7, reduction="none", **kw), x, y, torch.float64)
    mean = run(ext.FocalLoss(to_onehot_y=True, ignore_index=7, **kw), x, y, torch.float64).item()
    assert mean == pytest.approx(c * terms[(y != 7).expand_as(terms)].mean().item(), rel=1e-12)


def test_focal_forum_form():
    """Lin et al. 2017 binary focal loss, alpha-balanced, on one sigmoid channel (mean over voxels)."""
    x, yi, _ = make(14, C=1, binary=True, scale=3.0)
    yb = yi.clip(0, 1)
    for gamma, alpha in [(2.0, 0.25), (0.0, None), (1.0, 0.75)]:
        out = run(ext.FocalLoss(gamma=gamma, alpha=alpha), x, yb, torch.float64)
        assert abs(out.item() - R.focal_binary_forum(x, yb, gamma, alpha)) < 1e-12


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize(
    "kw",
    [
        dict(k=10),
        dict(k=25, weight=[0.5, 1.0, 2.0]),
        dict(k=10, ignore_index=255),
        dict(k=5, label_smoothing=0.1),
        dict(k=100),
        dict(k=33, onehot=True),
        dict(k=10, dim=2),
    ],
    ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()),
)
def test_topk_ce(kw, dtype):
    kw = dict(kw)
    onehot, dim = kw.pop("onehot", False), kw.pop("dim", 3)
    x, yi, g = make(_seed("topk", kw), ignore=kw.get("ignore_index"), dim=dim)
    out = run(ext.TopKCELoss(**kw), x, g if onehot else yi, dtype)
    check(out, R.topk_ce_loss(rounded(x, dtype), yi, **kw), dtype, what=str(kw))


def test_topk_count_is_exact_ceil():
    """ceil(k/100 * n_valid): with k=7 and 100 valid voxels that is 7 voxels (7/100*100 is 7.000000000000001 in
    floating point, whose ceil would be 8)."""
    rng = np.random.default_rng(15)
    x = rng.normal(size=(1, 3, 10, 10)) * 2
    yi = rng.integers(0, 3, size=(1, 1, 10, 10)).astype(np.float64)
    out = run(ext.TopKCELoss(k=7), x, yi, torch.float64)
    vals = np.sort(R.per_voxel_ce(x, yi).ravel())[::-1]
    assert abs(out.item() - vals[:7].mean()) < 1e-12, (out.item(), vals[:7].mean(), vals[:8].mean())


@pytest.mark.parametrize("k", [10, 7.5, 60])
@pytest.mark.parametrize("ignore", [None, 255])
def test_topk_ce_nnunet_convention(k, ignore):
    """k_of="all", rounding="floor" is nnU-Net's TopKLoss: k% of every voxel, truncated, ignored voxels at CE 0;
    the default differs exactly by the count (ceil of k% of the valid voxels, ignored never chosen)."""
    x, yi, _ = make(_seed("topk-nnunet", dict(k=k)), ignore=ignore)
    nn = run(ext.TopKCELoss(k=k, ignore_index=ignore, k_of="all", rounding="floor"), x, yi, torch.float64).item()
    assert abs(nn - R.topk_ce_nnunet(x, yi, k=k, ignore_index=ignore)) < 1e-12
    ours = run(ext.TopKCELoss(k=k, ignore_index=ignore), x, yi, torch.float64).item()
    assert abs(ours - R.topk_ce_loss(x, yi, k=k, ignore_index=ignore)) < 1e-12
    if ignore is not None and k == 60:
        assert ours > nn  # fewer voxels kept (60% of the valid ones, not of all): the hardest, a higher mean


# ----------------------------------------------------------------------------------------------------
# compound losses
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(include_background=False, weight=[0.5, 1.0, 2.0]),
        dict(batch=True, lambda_dice=0.3, lambda_ce=2.0),
        dict(label_smoothing=0.1, reduction="sum"),
        dict(onehot=True, squared_pred=True),
        dict(sigmoid=True),
    ],
    ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "defaults",
)
def test_dice_ce(kw, dtype):
    kw = dict(kw)
    onehot = kw.pop("onehot", False)
    x, yi, g = make(_seed("dce", kw))
    y = g if onehot else yi
    kw.setdefault("softmax", not kw.get("sigmoid"))
    kw["to_onehot_y"] = not onehot
    out = run(ext.DiceCELoss(**kw), x, y, dtype)
    check(out, R.dice_ce_loss(rounded(x, dtype), y, **kw), dtype, what=str(kw))


def test_dice_bce_forum_form():
    """Forum 'DiceBCELoss' on one binary logit channel: BCE + (1 - Dice)."""
    x, yi, _ = make(16, B=1, C=1, binary=True)
    yb = yi.clip(0, 1)
    out = run(ext.DiceCELoss(sigmoid=True, smooth_nr=0.0, smooth_dr=0.0), x, yb, torch.float64)
    assert abs(out.item() - R.dice_bce_forum(x, yb)) < 1e-12


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(include_background=False, weight=[1.0, 2.0]),
        dict(gamma=0.5, alpha=0.25, lambda_focal=3.0),
        dict(batch=True, reduction="none"),
        dict(onehot=True, sigmoid=True),
    ],
    ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "defaults",
)
def test_dice_focal(kw, dtype):
    kw = dict(kw)
    onehot = kw.pop("onehot", False)
    x, yi, g = make(_seed("dfl", kw))
    y = g if onehot else yi
    kw.setdefault("softmax", not kw.get("sigmoid"))
    kw["to_onehot_y"] = not onehot
    out = run(ext.DiceFocalLoss(**kw), x, y, dtype)
    check(out, R.dice_focal_loss(rounded(x, dtype), y, **kw), dtype, what=str(kw))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(k=20, lambda_dice=0.5, lambda_topk=2.0),
        dict(batch=True, include_background=False),
        dict(ignore_index=255),
    ],
    ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "defaults",
)
def test_dice_topk(kw, dtype):
    kw = dict(kw)
    x, yi, _ = make(_seed("dtk", kw), ignore=kw.get("ignore_index"))
    kw.update(softmax=True, to_onehot_y=True)
    out = run(ext.DiceTopKLoss(**kw), x, yi, dtype)
    check(out, R.dice_topk_loss(rounded(x, dtype), yi, **kw), dtype, what=str(kw))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(alpha=0.3, beta=0.7),
        dict(sigmoid=True, alpha=0.8, beta=0.2),
        dict(batch=True),
        dict(include_background=False),
        dict(ignore_index=255),
        dict(onehot=True, squared_pred=True),
    ],
    ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "defaults",
)
def test_combo(kw, dtype):
    kw = dict(kw)
    onehot = kw.pop("onehot", False)
    x, yi, g = make(_seed("combo", kw), ignore=kw.get("ignore_index"))
    y = g if onehot else yi
    kw.setdefault("softmax", not kw.get("sigmoid"))
    kw["to_onehot_y"] = not onehot
    out = run(ext.ComboLoss(**kw), x, y, dtype)
    check(out, R.combo_loss(rounded(x, dtype), y, **kw), dtype, what=str(kw))


def test_combo_taghanaki_form():
    """Taghanaki 2019 / forum code (probabilities, one channel, smooth 1): ours = forum + (1 - alpha)."""
    x, yi, _ = make(17, B=1, C=1, binary=True)
    yb = yi.clip(0, 1)
    p = R.sigmoid(x)
    for alpha, beta in [(0.5, 0.5), (0.3, 0.7)]:
        out = run(ext.ComboLoss(alpha=alpha, beta=beta, smooth_nr=1.0, smooth_dr=1.0), p, yb, torch.float64)
        assert abs(out.item() - (R.combo_forum(p, yb, alpha, beta, smooth=1.0) + 1 - alpha)) < 1e-9


def test_combo_beta_acts_with_two_softmax_channels():
    """Two softmax channels, background included: beta weighs the foreground's false negatives, as in the paper's
    binary form with p = softmax foreground probability (before the fix both channels' terms summed to plain CE
    and beta had no effect)."""
    x, yi, _ = make(23, B=2, C=2)
    xf = torch.as_tensor(x, dtype=torch.float64)
    p1 = torch.softmax(xf, 1)[:, 1].numpy()
    g1 = (np.asarray(yi)[:, 0] == 1).astype(np.float64)
    values = []
    for beta in (0.2, 0.5, 0.8):
        kw = dict(alpha=1.0, beta=beta, softmax=True, to_onehot_y=True)
        out = run(ext.ComboLoss(**kw), x, yi, torch.float64).item()
        paper = -np.mean(beta * g1 * np.log(p1) + (1 - beta) * (1 - g1) * np.log(1 - p1))
        assert abs(out - paper) < 1e-10, (beta, out, paper)
        values.append(out)
    assert len({round(v, 8) for v in values}) == 3, values


@pytest.mark.parametrize("kw", [dict(softmax=True, to_onehot_y=True), dict(sigmoid=True, onehot=True, batch=True)])
def test_combo_dice_term_paper(kw):
    """dice_term="paper" subtracts the sum over the K scored classes of the Dice score (mean over samples);
    L_loss = alpha L_wBCE + (1 - alpha) + (L_paper - alpha L_wBCE) / K."""
    kw = dict(kw)
    onehot = kw.pop("onehot", False)
    x, yi, g = make(29, B=2, C=3)
    y = g if onehot else yi
    alpha = 0.4
    ours = run(ext.ComboLoss(alpha=alpha, **kw), x, y, torch.float64).item()
    paper = run(ext.ComboLoss(alpha=alpha, dice_term="paper", **kw), x, y, torch.float64).item()
    bce = run(ext.ComboLoss(alpha=1.0, **kw), x, y, torch.float64).item()
    dsc = 1 - run(ext.DiceLoss(reduction="none", **kw), x, y, torch.float64).detach().numpy().reshape(-1, 3)
    assert abs(paper - (alpha * bce - (1 - alpha) * dsc.mean(0).sum())) < 1e-10
    assert abs(ours - (alpha * bce + (1 - alpha) + (paper - alpha * bce) / 3)) < 1e-10


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(asymmetric=False),
        dict(weight=0.0),
        dict(weight=1.0),
        dict(delta=0.7, gamma=0.2),
        dict(batch=True),
        dict(asymmetric=False, batch=True, gamma=0.75),
        dict(ignore_index=255),
        dict(onehot=True),
        dict(C=4),
        dict(binary_sigmoid=True),
        dict(binary_sigmoid=True, asymmetric=False, weight=0.3),
    ],
    ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "defaults",
)
def test_unified_focal(kw, dtype):
    kw = dict(kw)
    onehot, C, binary = kw.pop("onehot", False), kw.pop("C", 3), kw.pop("binary_sigmoid", False)
    if binary:
        x, yi, _ = make(_seed("ufl", kw), C=1, binary=True)
        y = yi.clip(0, 1)
        kw.update(sigmoid=True)
    else:
        x, yi, g = make(_seed("ufl", kw), C=C, ignore=kw.get("ignore_index"))
        y = g if onehot else yi
        kw.update(softmax=True, to_onehot_y=not onehot)
    out = run(ext.UnifiedFocalLoss(**kw), x, y, dtype)
    check(out, R.unified_focal_loss(rounded(x, dtype), y, **kw), dtype, what=str(kw))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(smooth_nr=1e-5, smooth_dr=1e-5),
        dict(class_frequencies=[0.7, 0.2, 0.1]),
        dict(gamma_dice=1.0, gamma_cross=1.0, w_dice=0.5, w_cross=0.5),
        dict(batch=True),
        dict(onehot=True),
        dict(absent=1),
    ],
    ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "defaults",
)
def test_exp_log(kw, dtype):
    kw = dict(kw)
    onehot, absent = kw.pop("onehot", False), kw.pop("absent", None)
    x, yi, g = make(_seed("el", kw), absent=absent)
    y = g if onehot else yi
    ref_kw = dict(kw)
    ref_kw.setdefault("smooth_nr", 1.0)  # the implementation's default pseudo-count (Wong et al. use 1)
    ref_kw.setdefault("smooth_dr", 1.0)
    kw.update(softmax=True, to_onehot_y=not onehot)
    out = run(ext.ExpLogLoss(**kw), x, y, dtype)
    check(out, R.exp_log_loss(rounded(x, dtype), y, **ref_kw), dtype, what=str(kw))


def test_compound_loss_terms():
    x, yi, _ = make(18)
    dice = ext.DiceLoss(softmax=True, to_onehot_y=True)
    ce = ext.WeightedCELoss(weight=[0.5, 1.0, 2.0])
    comp = ext.CompoundLoss({"dice": (dice, 0.7), "ce": (ce, 0.3)})
    out = run(comp, x, yi, torch.float64)
    d = R.dice_loss(x, yi, softmax=True, to_onehot_y=True)
    c = R.cross_entropy(x, yi, weight=[0.5, 1.0, 2.0])
    check(out, 0.7 * d + 0.3 * c, torch.float64)
    assert set(comp.last_terms) == {"dice", "ce"}
    assert abs(float(comp.last_terms["dice"]) - d) < 1e-10
    assert abs(float(comp.last_terms["ce"]) - c) < 1e-10
    assert not any(torch.as_tensor(v).requires_grad for v in comp.last_terms.values())
    # registry names and the list form of terms
    comp2 = ext.CompoundLoss(
        {
            "d": (ext.get_loss("dice", softmax=True, to_onehot_y=True), 1.0),
            "f": (ext.get_loss("FocalLoss", to_onehot_y=True), 2.0),
        }
    )
    out2 = run(comp2, x, yi, torch.float64)
    check(out2, d + 2.0 * R.focal_loss(x, yi, to_onehot_y=True), torch.float64)


# ----------------------------------------------------------------------------------------------------
# Lovasz-softmax
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        dict(classes="all"),
        dict(per_image=True),
        dict(per_image=True, classes="all"),
        dict(include_background=False),
        dict(ignore_index=255),
        dict(ignore_index=255, per_image=True),
        dict(onehot=True),
        dict(absent=2),
        dict(absent=2, classes="all", per_image=True),
        dict(dim=2),
    ],
    ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()) or "defaults",
)
def test_lovasz_softmax(kw, dtype):
    kw = dict(kw)
    onehot, absent, dim = kw.pop("onehot", False), kw.pop("absent", None), kw.pop("dim", 3)
    x, yi, g = make(_seed("lov", kw), ignore=kw.get("ignore_index"), absent=absent, dim=dim)
    if absent is not None:  # class absent from the whole batch
        yi = np.where(yi == absent, 0.0, yi)
        g = R.one_hot(yi, 3)
    y = g if onehot else yi
    loss_kw = dict(kw, to_onehot_y=not onehot) if onehot else kw
    out = run(ext.LovaszSoftmaxLoss(**loss_kw), x, y, dtype)
    check(out, R.lovasz_softmax_loss(rounded(x, dtype), y, **kw), dtype, what=str(kw))


def test_lovasz_hard_prediction_is_one_minus_iou():
    """On a one-hot (vertex) prediction the Lovasz extension equals the Jaccard loss 1 - IoU per class."""
    rng = np.random.default_rng(19)
    yi = rng.integers(0, 3, size=(2, 1, 6, 5, 4)).astype(np.float64)
    pred = R.one_hot(rng.integers(0, 3, size=(2, 1, 6, 5, 4)), 3)
    out = run(ext.LovaszSoftmaxLoss(softmax=False), pred, yi, torch.float64)
    g = R.one_hot(yi, 3)
    expect = np.mean([1 - R.jaccard_index(pred[:, c], g[:, c]) for c in range(3)])
    assert abs(out.item() - expect) < 1e-12


def test_lovasz_binary_sigmoid():
    x, yi, _ = make(20, C=1, binary=True)
    yb = yi.clip(0, 1)
    out = run(ext.LovaszSoftmaxLoss(sigmoid=True, softmax=False), x, yb, torch.float64)
    p = R.sigmoid(x)
    two = np.concatenate([1 - p, p], 1)  # one sigmoid channel = [background, foreground], both scored
    assert abs(out.item() - R.lovasz_softmax_loss(two, yb, softmax=False)) < 1e-12
    fg_only = run(ext.LovaszSoftmaxLoss(sigmoid=True, softmax=False, include_background=False), x, yb, torch.float64)
    assert abs(fg_only.item() - R.lovasz_softmax_loss(two, yb, softmax=False, include_background=False)) < 1e-12


# ----------------------------------------------------------------------------------------------------
# the oracle itself agrees with MONAI / torch where the spec says "=="
# ----------------------------------------------------------------------------------------------------


def test_reference_self_check():
    assert R.self_check()


@pytest.mark.parametrize("seed", [0, 1])
def test_reference_matches_monai(seed):
    import monai.losses as ml

    x, yi, g = make(seed, ignore=255)
    x0, yi0, g0 = make(seed + 10)
    xt = torch.as_tensor(x)
    cases = [
        (ml.DiceLoss, R.dice_loss, dict(softmax=True, to_onehot_y=True, ignore_index=255, batch=True), xt, yi),
        (
            ml.DiceLoss,
            R.dice_loss,
            dict(sigmoid=True, jaccard=True, squared_pred=True, smooth_nr=1.0, smooth_dr=1.0, weight=[1.0, 2.0, 3.0]),
            torch.as_tensor(x0),
            g0,
        ),
        (
            ml.TverskyLoss,
            R.tversky_loss,
            dict(softmax=True, to_onehot_y=True, alpha=0.3, beta=0.7, include_background=False, ignore_index=255),
            xt,
            yi,
        ),
        (
            ml.GeneralizedDiceLoss,
            R.generalized_dice_loss,
            dict(softmax=True, to_onehot_y=True, w_type="simple"),
            torch.as_tensor(x0),
            yi0,
        ),
        (ml.FocalLoss, R.focal_loss, dict(to_onehot_y=True, ignore_index=255, alpha=0.25, reduction="sum"), xt, yi),
        (
            ml.FocalLoss,
            R.focal_loss,
            dict(use_softmax=True, include_background=False, alpha=[0.3, 0.9], weight=[2.0, 1.0]),
            torch.as_tensor(x0),
            g0,
        ),
        (
            ml.DiceCELoss,
            R.dice_ce_loss,
            dict(
                softmax=True,
                to_onehot_y=True,
                include_background=False,
                weight=torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64),
                label_smoothing=0.1,
            ),
            torch.as_tensor(x0),
            yi0,
        ),
        (
            ml.DiceFocalLoss,
            R.dice_focal_loss,
            dict(softmax=True, to_onehot_y=True, gamma=1.5, alpha=0.3, weight=[1.0, 2.0, 0.5]),
            torch.as_tensor(x0),
            yi0,
        ),
    ]
    for mcls, ref, kw, xx, yy in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = mcls(**kw)(xx, torch.as_tensor(yy)).double().numpy()
        rkw = {k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
        # MONAI's focal runs in float32, its GDL weights are float32 (ground_o.float())
        tol = 1e-6 if mcls in (ml.FocalLoss, ml.DiceFocalLoss, ml.GeneralizedDiceLoss) else 1e-10
        np.testing.assert_allclose(m, ref(x if xx is xt else x0, yy, **rkw), rtol=tol, atol=tol, err_msg=mcls.__name__)
