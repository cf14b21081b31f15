"""Drop-in equivalence with MONAI: same arguments to ours and to ``monai.losses.<same name>``, same value and
same input gradient (float32 within 1e-5 atol and rtol; float64 within 1e-10).

Covers DiceLoss, TverskyLoss, GeneralizedDiceLoss, FocalLoss, DiceCELoss and DiceFocalLoss over many
argument combinations (activation, target layout, include_background, squared_pred, jaccard, batch, weight,
reduction incl. "none" shapes, ignore_index, smoothing, soft labels, w_type, gamma/alpha, use_softmax,
lambda_*).
"""

from __future__ import annotations

import itertools
import warnings
import zlib

import monai.losses as ml
import pytest
import torch

import monai_losses_ext as ext

B, C = 2, 3
SHAPES = {2: (7, 6), 3: (6, 5, 4)}
TOL32 = dict(atol=1e-5, rtol=1e-5)
TOL64 = dict(atol=1e-10, rtol=1e-10)


def _data(
    seed,
    dim=3,
    channels=C,
    act="softmax",
    target="index",
    ignore_index=None,
    soft=False,
    absent_class=None,
    dtype=torch.float32,
):
    """Returns (input, target) tensors. act "none" gives probabilities (softmax / sigmoid of logits)."""
    g = torch.Generator().manual_seed(seed)
    shape = (B, channels) + SHAPES[dim]
    logits = torch.randn(shape, generator=g, dtype=torch.float64) * 2.0
    if act == "none":
        x = torch.softmax(logits, 1) if channels > 1 else torch.sigmoid(logits)
    else:
        x = logits
    lab = torch.randint(0, max(channels, 2), (B, 1) + SHAPES[dim], generator=g)
    if absent_class is not None:
        lab[0][lab[0] == absent_class] = (absent_class + 1) % channels
    if ignore_index is not None:
        drop = torch.rand((B, 1) + SHAPES[dim], generator=g) < 0.2
        lab = torch.where(drop, torch.full_like(lab, ignore_index), lab)
    if channels == 1:
        y = lab.clamp(max=1).to(torch.float64)
    elif target == "index":
        y = lab.to(torch.float64)
    else:
        oh = torch.zeros(shape, dtype=torch.float64)
        valid = (lab >= 0) & (lab < channels)
        oh.scatter_(1, torch.where(valid, lab, 0), 1.0)
        y = oh * valid
        if soft:
            y = torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64), 1)
    return x.to(dtype), y.to(dtype)


def _run(loss, x, y, seed=123):
    """Value and d(sum(out * r))/dx for a random r (so "none" outputs are checked elementwise too)."""
    xx = x.detach().clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = loss(xx, y.clone())
    r = (torch.rand(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.5).to(out.dtype)
    (out * r).sum().backward()
    return out.detach(), xx.grad.detach()


def _compare(ours_cls, monai_cls, kwargs, x, y, tol=None):
    tol = tol or (TOL64 if x.dtype == torch.float64 else TOL32)
    ref_v, ref_g = _run(monai_cls(**kwargs), x, y)
    our_v, our_g = _run(ours_cls(**kwargs), x, y)
    assert tuple(our_v.shape) == tuple(ref_v.shape), f"shape {tuple(our_v.shape)} != MONAI {tuple(ref_v.shape)}"
    assert torch.isfinite(ref_v).all()
    torch.testing.assert_close(our_v.to(ref_v.dtype), ref_v, **tol, msg=lambda m: f"value {kwargs}\n{m}")
    torch.testing.assert_close(our_g, ref_g, **tol, msg=lambda m: f"input gradient {kwargs}\n{m}")


def _seed(*parts):
    """Deterministic seed from the case (hash() of str is randomised per process)."""
    return zlib.crc32(repr(parts).encode()) % 10_000


def _sentinel(ii, channels=C):
    """The ignore value to write into the labels: only out-of-range values are injected."""
    return ii if ii is not None and not (0 <= ii < channels) else None


def _rr(i, *options):
    """Round-robin choice for the secondary dimensions of a grid (keeps the grid small but covering)."""
    return options[i % len(options)]


def _ids(cases):
    return [",".join(f"{k}={v}" for k, v in c.items()) for c in cases]


def _act_kwargs(act):
    return {"softmax": {"softmax": True}, "sigmoid": {"sigmoid": True}, "none": {}}[act]


# ----------------------------------------------------------------------------------------------------
# DiceLoss
# ----------------------------------------------------------------------------------------------------

DICE_GRID = [
    dict(
        act=a,
        target=_rr(i, "index", "onehot"),
        include_background=ib,
        squared_pred=sq,
        jaccard=j,
        batch=bt,
        reduction=r,
    )
    for i, (a, ib, sq, j, bt, r) in enumerate(
        itertools.product(
            ["softmax", "sigmoid", "none"],
            [True, False],
            [False, True],
            [False, True],
            [False, True],
            ["mean", "sum", "none"],
        )
    )
]


@pytest.mark.parametrize("case", DICE_GRID, ids=_ids(DICE_GRID))
def test_dice_grid(case):
    case = dict(case)
    act, target = case.pop("act"), case.pop("target")
    seed = _seed(tuple(sorted(case.items())) + (act, target))
    dim = 2 + seed % 2
    x, y = _data(seed, dim=dim, act=act, target=target)
    kw = dict(case, **_act_kwargs(act), to_onehot_y=target == "index")
    _compare(ext.DiceLoss, ml.DiceLoss, kw, x, y)


DICE_EXTRA = [
    dict(weight=[0.2, 1.0, 3.0]),
    dict(weight=[0.2, 1.0, 3.0], reduction="none"),
    dict(weight=[2.0, 0.5], include_background=False),
    dict(weight=[2.0, 0.5], include_background=False, batch=True),
    dict(weight=2.5),
    dict(smooth_nr=0.0, smooth_dr=1e-6),
    dict(smooth_nr=1.0, smooth_dr=1.0),
    dict(smooth_nr=1.0, smooth_dr=1.0, batch=True, reduction="sum"),
    dict(smooth_nr=1e-3, smooth_dr=2e-3, squared_pred=True),
    dict(smooth_nr=1.0, smooth_dr=1.0, jaccard=True),
    dict(smooth_nr=0.5, smooth_dr=0.5, jaccard=True, squared_pred=True, batch=True),
    dict(ignore_index=255),
    dict(ignore_index=255, batch=True),
    dict(ignore_index=255, include_background=False, reduction="none"),
    dict(ignore_index=255, sigmoid=True, softmax=False),
    dict(ignore_index=2),
    dict(ignore_index=0, weight=[1.0, 2.0, 3.0]),
    dict(ignore_index=255, target="onehot"),
    dict(ignore_index=1, target="onehot", batch=True),
    dict(ignore_index=-1, target="onehot", include_background=False),
    dict(other_act=torch.sigmoid, softmax=False),
]


@pytest.mark.parametrize("case", DICE_EXTRA, ids=_ids(DICE_EXTRA))
def test_dice_extra(case):
    case = dict(case)
    target = case.pop("target", "index")
    kw = dict(softmax=True, to_onehot_y=target == "index")
    kw.update(case)
    x, y = _data(11, dim=3, act="softmax", target=target, ignore_index=_sentinel(kw.get("ignore_index")))
    if kw.get("other_act") is not None or kw.get("sigmoid"):
        kw.pop("softmax", None)
    _compare(ext.DiceLoss, ml.DiceLoss, kw, x, y)


@pytest.mark.parametrize("jaccard", [False, True])
@pytest.mark.parametrize("squared_pred", [False, True])
def test_dice_soft_label(jaccard, squared_pred):
    x, y = _data(5, act="none", target="onehot", soft=True)
    kw = dict(soft_label=True, jaccard=jaccard, squared_pred=squared_pred)
    _compare(ext.DiceLoss, ml.DiceLoss, kw, x, y)


@pytest.mark.parametrize("jaccard", [False, True])
def test_dice_float64(jaccard):
    x, y = _data(6, act="softmax", target="index", dtype=torch.float64)
    kw = dict(softmax=True, to_onehot_y=True, jaccard=jaccard, smooth_nr=1e-5, smooth_dr=1e-5)
    _compare(ext.DiceLoss, ml.DiceLoss, kw, x, y)


def test_dice_single_channel_sigmoid():
    x, y = _data(7, channels=1, act="sigmoid")
    for kw in [dict(sigmoid=True), dict(sigmoid=True, batch=True, reduction="none"), dict(sigmoid=True, weight=[3.0])]:
        _compare(ext.DiceLoss, ml.DiceLoss, kw, x, y)


def test_dice_empty_class():
    """A class absent from one sample's target: values and gradients still equal MONAI's."""
    x, y = _data(8, act="softmax", target="index", absent_class=2)
    for kw in [
        dict(softmax=True, to_onehot_y=True, reduction="none"),
        dict(softmax=True, to_onehot_y=True, batch=True),
    ]:
        _compare(ext.DiceLoss, ml.DiceLoss, kw, x, y)


# ----------------------------------------------------------------------------------------------------
# TverskyLoss
# ----------------------------------------------------------------------------------------------------

TVERSKY_GRID = [
    dict(act=a, target=_rr(i, "index", "onehot"), include_background=ib, alpha=al, beta=be, batch=bt, reduction=r)
    for i, (a, ib, (al, be), bt, r) in enumerate(
        itertools.product(
            ["softmax", "sigmoid", "none"],
            [True, False],
            [(0.5, 0.5), (0.3, 0.7), (0.8, 0.1)],
            [False, True],
            ["mean", "sum", "none"],
        )
    )
]


@pytest.mark.parametrize("case", TVERSKY_GRID, ids=_ids(TVERSKY_GRID))
def test_tversky_grid(case):
    case = dict(case)
    act, target = case.pop("act"), case.pop("target")
    seed = _seed(tuple(sorted(case.items())) + (act, target))
    x, y = _data(seed, dim=2 + seed % 2, act=act, target=target)
    kw = dict(case, **_act_kwargs(act), to_onehot_y=target == "index")
    _compare(ext.TverskyLoss, ml.TverskyLoss, kw, x, y)


TVERSKY_EXTRA = [
    dict(ignore_index=255),
    dict(ignore_index=255, batch=True, reduction="none"),
    dict(ignore_index=255, include_background=False, alpha=0.3, beta=0.7),
    dict(ignore_index=255, target="onehot"),
    dict(ignore_index=1, target="onehot"),
    dict(ignore_index=2),
    dict(smooth_nr=1.0, smooth_dr=1.0),
    dict(smooth_nr=0.0, smooth_dr=1e-4, alpha=0.2, beta=0.9),
    dict(soft_label=True, target="soft"),
]


@pytest.mark.parametrize("case", TVERSKY_EXTRA, ids=_ids(TVERSKY_EXTRA))
def test_tversky_extra(case):
    case = dict(case)
    target = case.pop("target", "index")
    ii = case.get("ignore_index")
    if target == "soft":
        x, y = _data(21, act="none", target="onehot", soft=True)
        kw = {}
    else:
        x, y = _data(22, act="softmax", target=target, ignore_index=_sentinel(ii))
        kw = dict(softmax=True, to_onehot_y=target == "index")
    kw.update(case)
    _compare(ext.TverskyLoss, ml.TverskyLoss, kw, x, y)


# ----------------------------------------------------------------------------------------------------
# GeneralizedDiceLoss
# ----------------------------------------------------------------------------------------------------

GDL_GRID = [
    dict(
        act=a,
        target=_rr(i, "index", "onehot"),
        include_background=ib,
        w_type=w,
        batch=bt,
        reduction=r,
        absent=a != "sigmoid" and _rr(i // 2, False, True),
    )
    for i, (a, ib, w, bt, r) in enumerate(
        itertools.product(
            ["softmax", "sigmoid", "none"],
            [True, False],
            ["square", "simple", "uniform"],
            [False, True],
            ["mean", "sum", "none"],
        )
    )
]


@pytest.mark.parametrize("case", GDL_GRID, ids=_ids(GDL_GRID))
def test_generalized_dice_grid(case):
    case = dict(case)
    act, target, absent = case.pop("act"), case.pop("target"), case.pop("absent")
    seed = _seed(tuple(sorted(case.items())) + (act, target, absent))
    x, y = _data(seed, dim=2 + seed % 2, act=act, target=target, absent_class=2 if absent else None)
    kw = dict(case, **_act_kwargs(act), to_onehot_y=target == "index")
    _compare(ext.GeneralizedDiceLoss, ml.GeneralizedDiceLoss, kw, x, y)


@pytest.mark.parametrize("smooth", [(0.0, 1e-6), (1.0, 1.0), (1e-3, 1e-2)])
def test_generalized_dice_smoothing(smooth):
    x, y = _data(31, act="softmax", target="index", absent_class=1)
    kw = dict(softmax=True, to_onehot_y=True, smooth_nr=smooth[0], smooth_dr=smooth[1])
    _compare(ext.GeneralizedDiceLoss, ml.GeneralizedDiceLoss, kw, x, y)


def test_generalized_dice_soft_label():
    x, y = _data(32, act="none", target="onehot", soft=True)
    _compare(ext.GeneralizedDiceLoss, ml.GeneralizedDiceLoss, dict(soft_label=True), x, y)


# ----------------------------------------------------------------------------------------------------
# FocalLoss
# ----------------------------------------------------------------------------------------------------

FOCAL_GRID = [
    dict(target=_rr(i, "index", "onehot"), use_softmax=sm, include_background=ib, gamma=ga, alpha=al, reduction=r)
    for i, (sm, ib, ga, al, r) in enumerate(
        itertools.product(
            [False, True],
            [True, False],
            [0.0, 2.0, 0.5],
            [None, 0.25, "seq"],
            ["mean", "sum", "none"],
        )
    )
]


@pytest.mark.parametrize("case", FOCAL_GRID, ids=_ids(FOCAL_GRID))
def test_focal_grid(case):
    case = dict(case)
    target = case.pop("target")
    if case["alpha"] == "seq":
        case["alpha"] = [0.2, 0.5, 0.9] if case["include_background"] else [0.3, 0.8]
    seed = _seed(str(sorted(case.items())) + target)
    x, y = _data(seed, dim=2 + seed % 2, act="softmax", target=target)
    kw = dict(case, to_onehot_y=target == "index")
    _compare(ext.FocalLoss, ml.FocalLoss, kw, x, y)


FOCAL_EXTRA = [
    dict(weight=[0.5, 1.0, 2.0]),
    dict(weight=[0.5, 1.0, 2.0], use_softmax=True, reduction="sum"),
    dict(weight=[1.0, 4.0], include_background=False, reduction="none"),
    dict(weight=3.0, alpha=0.25),
    dict(ignore_index=255),
    dict(ignore_index=255, reduction="sum"),
    dict(ignore_index=255, reduction="none", use_softmax=True),
    dict(ignore_index=255, use_softmax=True, alpha=0.75),
    dict(ignore_index=255, include_background=False, weight=[1.0, 2.0]),
    dict(ignore_index=0),
    dict(ignore_index=255, target="onehot"),
    dict(ignore_index=2, target="onehot", use_softmax=True),
]


@pytest.mark.parametrize("case", FOCAL_EXTRA, ids=_ids(FOCAL_EXTRA))
def test_focal_extra(case):
    case = dict(case)
    target = case.pop("target", "index")
    ii = case.get("ignore_index")
    x, y = _data(41, act="softmax", target=target, ignore_index=_sentinel(ii))
    kw = dict(case, to_onehot_y=target == "index")
    _compare(ext.FocalLoss, ml.FocalLoss, kw, x, y)


@pytest.mark.parametrize("alpha", [None, 0.25])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_focal_binary_single_channel(alpha, reduction):
    x, y = _data(42, channels=1, act="sigmoid")
    _compare(ext.FocalLoss, ml.FocalLoss, dict(alpha=alpha, reduction=reduction), x, y)


def test_focal_float64_soft_target():
    """MONAI's FocalLoss casts to float32 internally (ours keeps float64, checked against the numpy reference in
    test_reference_values), so float32 tolerance here; the output dtype must stay float64 per the spec."""
    x, y = _data(43, act="softmax", target="onehot", soft=True, dtype=torch.float64)
    for kw in [dict(gamma=2.0), dict(gamma=1.5, alpha=0.3)]:
        _compare(ext.FocalLoss, ml.FocalLoss, kw, x, y, tol=TOL32)
        assert ext.FocalLoss(**kw)(x, y).dtype == torch.float64


# ----------------------------------------------------------------------------------------------------
# DiceCELoss
# ----------------------------------------------------------------------------------------------------

DICECE_GRID = [
    dict(
        target=_rr(i, "index", "onehot"),
        act=a,
        include_background=ib,
        batch=bt,
        reduction=r,
        weight=w,
        lambdas=_rr(i // 2, (1.0, 1.0), (0.3, 1.7)),
        label_smoothing=ls,
    )
    for i, (a, ib, bt, r, w, ls) in enumerate(
        itertools.product(
            ["softmax", "sigmoid"],
            [True, False],
            [False, True],
            ["mean", "sum"],
            [None, "w"],
            [0.0, 0.1],
        )
    )
]


@pytest.mark.parametrize("case", DICECE_GRID, ids=_ids(DICECE_GRID))
def test_dice_ce_grid(case):
    case = dict(case)
    target, act, lam = case.pop("target"), case.pop("act"), case.pop("lambdas")
    if case["weight"] == "w":
        case["weight"] = torch.tensor([0.5, 1.0, 2.0])
    seed = _seed(str(sorted((k, str(v)) for k, v in case.items())) + target + act + str(lam))
    x, y = _data(seed, dim=2 + seed % 2, act="softmax", target=target)
    kw = dict(case, **_act_kwargs(act), to_onehot_y=target == "index", lambda_dice=lam[0], lambda_ce=lam[1])
    _compare(ext.DiceCELoss, ml.DiceCELoss, kw, x, y)


DICECE_EXTRA = [
    dict(squared_pred=True),
    dict(jaccard=True),
    dict(jaccard=True, smooth_nr=1.0, smooth_dr=1.0),
    dict(smooth_nr=0.0, smooth_dr=1e-6),
    dict(smooth_nr=1.0, smooth_dr=1.0, batch=True),
    dict(lambda_dice=0.0),
    dict(lambda_ce=0.0),
    dict(target="soft", to_onehot_y=False),
]


@pytest.mark.parametrize("case", DICECE_EXTRA, ids=_ids(DICECE_EXTRA))
def test_dice_ce_extra(case):
    case = dict(case)
    target = case.pop("target", "index")
    if target == "soft":
        x, y = _data(51, act="softmax", target="onehot", soft=True)
    else:
        x, y = _data(52, act="softmax", target=target)
    kw = dict(softmax=True, to_onehot_y=True)
    kw.update(case)
    _compare(ext.DiceCELoss, ml.DiceCELoss, kw, x, y)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weight", [None, torch.tensor([4.0])])
def test_dice_ce_binary_bce(weight, label_smoothing):
    """C == 1: the CE part is BCE with logits, weight -> pos_weight (MONAI applies no label smoothing to it)."""
    x, y = _data(53, channels=1, act="sigmoid")
    _compare(ext.DiceCELoss, ml.DiceCELoss, dict(sigmoid=True, weight=weight, label_smoothing=label_smoothing), x, y)


# ----------------------------------------------------------------------------------------------------
# DiceFocalLoss
# ----------------------------------------------------------------------------------------------------

DICEFOCAL_GRID = [
    dict(
        target=_rr(i, "index", "onehot"),
        act=a,
        include_background=ib,
        batch=bt,
        reduction=r,
        gamma=_rr(i // 2, 2.0, 0.5),
        alpha=al,
        weight=w,
        lambdas=_rr(i // 3, (1.0, 1.0), (0.4, 2.0)),
    )
    for i, (a, ib, bt, r, al, w) in enumerate(
        itertools.product(
            ["softmax", "sigmoid"],
            [True, False],
            [False, True],
            ["mean", "sum", "none"],
            [None, 0.25],
            [None, "w"],
        )
    )
]


@pytest.mark.parametrize("case", DICEFOCAL_GRID, ids=_ids(DICEFOCAL_GRID))
def test_dice_focal_grid(case):
    case = dict(case)
    target, act, lam = case.pop("target"), case.pop("act"), case.pop("lambdas")
    if case["weight"] == "w":
        case["weight"] = [0.5, 1.0, 2.0] if case["include_background"] else [1.0, 3.0]
    seed = _seed(str(sorted((k, str(v)) for k, v in case.items())) + target + act + str(lam))
    x, y = _data(seed, dim=2 + seed % 2, act="softmax", target=target)
    kw = dict(case, **_act_kwargs(act), to_onehot_y=target == "index", lambda_dice=lam[0], lambda_focal=lam[1])
    _compare(ext.DiceFocalLoss, ml.DiceFocalLoss, kw, x, y)


DICEFOCAL_EXTRA = [
    dict(squared_pred=True),
    dict(jaccard=True),
    dict(smooth_nr=0.0, smooth_dr=1e-6),
    dict(smooth_nr=1.0, smooth_dr=1.0, batch=True),
    dict(lambda_focal=0.0),
    dict(lambda_dice=0.0, gamma=0.0),
]


@pytest.mark.parametrize("case", DICEFOCAL_EXTRA, ids=_ids(DICEFOCAL_EXTRA))
def test_dice_focal_extra(case):
    x, y = _data(61, act="softmax", target="index")
    kw = dict(softmax=True, to_onehot_y=True)
    kw.update(case)
    _compare(ext.DiceFocalLoss, ml.DiceFocalLoss, kw, x, y)


def test_dice_focal_binary():
    x, y = _data(62, channels=1, act="sigmoid")
    for kw in [dict(sigmoid=True), dict(sigmoid=True, alpha=0.75, gamma=1.0, reduction="none")]:
        _compare(ext.DiceFocalLoss, ml.DiceFocalLoss, kw, x, y)


# ----------------------------------------------------------------------------------------------------
# the comparison itself is not vacuous
# ----------------------------------------------------------------------------------------------------


def test_comparison_detects_differences():
    """Sanity of the harness: different arguments must be told apart at this tolerance."""
    x, y = _data(71, act="softmax", target="index")
    with pytest.raises(AssertionError):
        _compare(
            lambda **k: ext.DiceLoss(**dict(k, smooth_nr=1e-2)), ml.DiceLoss, dict(softmax=True, to_onehot_y=True), x, y
        )
    with pytest.raises(AssertionError):
        _compare(
            lambda **k: ext.TverskyLoss(**dict(k, alpha=0.51)),
            ml.TverskyLoss,
            dict(softmax=True, to_onehot_y=True),
            x,
            y,
        )


# ----------------------------------------------------------------------------------------------------
# (B, C) inputs without spatial axes (MONAI's FocalLoss tests use (128, 10))
# ----------------------------------------------------------------------------------------------------


def _no_spatial_grid():
    grid = []
    for name in ("DiceLoss", "TverskyLoss", "GeneralizedDiceLoss", "FocalLoss", "DiceCELoss", "DiceFocalLoss"):
        overlap = name != "FocalLoss"
        for i, (reduction, batch, include_background, weighted, index) in enumerate(
            itertools.product(["mean", "sum", "none"], [False, True], [True, False], [False, True], [True, False])
        ):
            if (batch and not overlap) or (weighted and name in ("TverskyLoss", "GeneralizedDiceLoss")):
                continue
            if name in ("DiceCELoss", "DiceFocalLoss") and reduction == "none":
                continue
            if name == "GeneralizedDiceLoss" and not batch:
                continue  # MONAI fails (IndexError); ours asks for batch=True, see the test below
            kw = dict(reduction=reduction, include_background=include_background, to_onehot_y=index)
            kw.update(dict(softmax=True, batch=batch) if overlap else dict(use_softmax=bool(i % 2)))
            if weighted:  # MONAI weighs the scored classes, except DiceCELoss's cross-entropy (every class)
                scored = include_background or name == "DiceCELoss"
                kw["weight"] = [0.5, 1.0, 2.0] if scored else [1.0, 2.0]
            grid.append((name, kw))
    return grid


NO_SPATIAL = _no_spatial_grid()


@pytest.mark.parametrize("name, kw", NO_SPATIAL, ids=[f"{n}-{i}" for i, (n, _) in enumerate(NO_SPATIAL)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_no_spatial_inputs_equal_monai(name, kw, dtype):
    """(B, C) logits: MONAI sums the overlap statistics over an empty list of spatial axes, which torch reads as
    every axis (one score pooled over samples and classes unless batch=True); ours gives the same values, shapes
    and input gradients."""
    g = torch.Generator().manual_seed(_seed("no-spatial", name, sorted(kw.items())))
    x = (torch.randn(6, 3, generator=g, dtype=torch.float64) * 2).to(dtype)
    lab = torch.randint(0, 3, (6, 1), generator=g)
    y = lab.to(dtype) if kw["to_onehot_y"] else torch.nn.functional.one_hot(lab[:, 0], 3).to(dtype)
    kwargs = dict(kw)
    if "weight" in kwargs:
        kwargs["weight"] = torch.tensor(kwargs["weight"], dtype=dtype)
    tol = None  # float32: TOL32
    if dtype == torch.float64:  # MONAI's focal term casts to float32; its generalized Dice differs in the last bits
        tol = TOL32 if "Focal" in name else dict(atol=1e-8, rtol=1e-8)
    _compare(getattr(ext, name), getattr(ml, name), kwargs, x, y, tol)


def test_no_spatial_generalized_dice_needs_batch():
    x, y = torch.randn(4, 3), torch.randint(0, 3, (4, 1)).float()
    with pytest.raises(ValueError, match="batch=True"):
        ext.GeneralizedDiceLoss(softmax=True, to_onehot_y=True)(x, y)
    with pytest.raises(ValueError, match=r"\(B, C, \*spatial\) with at least one spatial axis"):
        ext.BlobLoss(softmax=True, to_onehot_y=True)(x, y)  # a per-lesion loss needs a spatial layout
