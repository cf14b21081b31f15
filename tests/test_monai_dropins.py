"""Four more MONAI drop-ins against MONAI's classes at test time, and the unified focal weight convention.

* ``AsymmetricUnifiedFocalLoss``, ``GeneralizedDiceFocalLoss``, ``MaskedDiceLoss``, ``LogHausdorffDTLoss``:
  same constructor (names, order, defaults of MONAI 1.6's class, then our extras) and the same value and
  input gradient as ``monai.losses.<same name>`` (float32 within 1e-5; float64 within 1e-10, except where
  MONAI itself computes in float32) over grids of their arguments: activation, target layout (index labels /
  one-hot / one binary channel), include_background, reduction (with MONAI's "none" shapes), weights,
  gamma / delta / lambdas / w_type / alpha, batch, masks (binary, soft, bool, broadcast), ignore_index, 2D and
  3D, float32 and float64.
* The situations MONAI's own tests of these classes check, rebuilt from MONAI's source (every ``raise`` and
  branch): known values (a perfect prediction, MONAI's docstring example), ill shapes and ill options (ours
  raises a ValueError / TypeError wherever MONAI raises; where MONAI's type differs it is noted at the case),
  and MONAI's warnings (same category and message).
* The documented relations: ``MaskedDiceLoss`` against ``DiceLoss(ignore_index=...)``; ``LogHausdorffDTLoss``
  with a precomputed map and against ``log(1 + HausdorffDTLoss)``; ``GeneralizedDiceFocalLoss`` with
  ``ignore_index`` against its two terms.
* ``UnifiedFocalLoss(convention=...)``: ``"monai"`` equals MONAI's ``AsymmetricUnifiedFocalLoss`` on a binary
  task (probabilities, and logits through a softmax); the default (``"authors"``) equals a float64
  re-derivation of the authors' formula, multi-class, asymmetric and symmetric; the two conventions differ.
"""

from __future__ import annotations

import inspect
import itertools
import math
import os
import sys
import warnings
from functools import partial

import monai.losses as ml
import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_monai_equivalence import TOL32, _compare, _data, _ids, _rr, _seed  # noqa: E402

import monai_losses_ext as ext  # noqa: E402
from monai_losses_ext.transforms import SignedDistanceMap  # noqa: E402

NEW = {
    "asymmetric_unified_focal": "AsymmetricUnifiedFocalLoss",
    "generalized_dice_focal": "GeneralizedDiceFocalLoss",
    "masked_dice": "MaskedDiceLoss",
    "log_hausdorff_dt": "LogHausdorffDTLoss",
}


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


def _binary(seed, dim=2, dtype=torch.float32, ignore=None):
    """One-channel probabilities in (0, 1) and a {0, 1} target (B, 1, ...), optionally with ignore labels."""
    g = torch.Generator().manual_seed(seed)
    shape = (2, 1) + ((7, 6) if dim == 2 else (6, 5, 4))
    p = torch.sigmoid(torch.randn(shape, generator=g, dtype=torch.float64) * 2)
    y = (torch.rand(shape, generator=g, dtype=torch.float64) < 0.4).to(torch.float64)
    if ignore is not None:
        y = torch.where(torch.rand(shape, generator=g, dtype=torch.float64) < 0.2, float(ignore), y)
    return p.to(dtype), y.to(dtype)


# ----------------------------------------------------------------------------------------------------
# registry and signatures
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(NEW))
def test_registered_and_signature_is_monais(name):
    """Registered under its name; MONAI's constructor parameters (names, order, defaults) come first, our extras
    after; forward takes MONAI's parameters."""
    cls = getattr(ext, NEW[name])
    assert ext.get_loss(name).__class__ is cls and name in ext.list_losses()
    ref = getattr(ml, NEW[name])
    theirs = list(inspect.signature(ref.__init__).parameters.values())[1:]
    ours = list(inspect.signature(cls.__init__).parameters.values())[1:]
    assert [p.name for p in ours[: len(theirs)]] == [p.name for p in theirs]
    for a, b in zip(ours, theirs):
        default = getattr(b.default, "value", b.default)  # MONAI's enum defaults
        assert a.default == default, (name, a.name, a.default, default)
    assert {p.name for p in ours[len(theirs) :]} <= {
        "ignore_index",
        "distributed",
        "validate",
        "sigmoid",
        "softmax",
        "include_pred_dt",
        "spacing",
    }
    fwd_theirs = list(inspect.signature(ref.forward).parameters)[1:]
    fwd_ours = list(inspect.signature(cls.forward).parameters)[1:]
    assert fwd_ours[: len(fwd_theirs)] == fwd_theirs and fwd_ours[len(fwd_theirs) :] in ([], ["distance_map"])


# ----------------------------------------------------------------------------------------------------
# AsymmetricUnifiedFocalLoss
# ----------------------------------------------------------------------------------------------------

AUFL_GRID = [
    dict(target=t, weight=w, gamma=g, delta=d, reduction=_rr(i, "mean", "sum", "none"), dim=_rr(i // 3, 2, 3))
    for i, (t, (w, g, d)) in enumerate(
        itertools.product(
            ["binary", "index", "onehot"],
            [(0.5, 0.5, 0.7), (0.2, 0.0, 0.6), (0.8, 1.0, 0.3), (1.0, 0.25, 0.5), (0.0, 0.75, 0.9)],
        )
    )
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", AUFL_GRID, ids=_ids(AUFL_GRID))
def test_asymmetric_unified_focal_grid(case, dtype):
    case = dict(case)
    target, dim = case.pop("target"), case.pop("dim")
    seed = _seed("aufl", target, sorted(case.items()))
    if target == "binary":
        x, y = _binary(seed, dim, dtype)
    else:
        x, y = _data(seed, dim=dim, channels=2, act="none", target=target, dtype=dtype)
    _compare(
        ext.AsymmetricUnifiedFocalLoss, ml.AsymmetricUnifiedFocalLoss, dict(case, to_onehot_y=target == "index"), x, y
    )


AUFL_IGNORE = [
    dict(target="index", ignore_index=255),
    dict(target="index", ignore_index=0),
    dict(target="index", ignore_index=1, weight=0.3),
    dict(target="onehot", ignore_index=255),
    dict(target="onehot", ignore_index=1),
    dict(target="binary", ignore_index=255, gamma=0.2),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", AUFL_IGNORE, ids=_ids(AUFL_IGNORE))
def test_asymmetric_unified_focal_ignore_index(case, dtype):
    """MONAI's ignore semantics reproduced: the ignored voxels add eps to FP and stay in the focal mean's count."""
    case = dict(case)
    target, ii = case.pop("target"), case["ignore_index"]
    if target == "binary":
        x, y = _binary(3, 3, dtype, ignore=ii)
    else:
        sentinel = ii if not 0 <= ii < 2 else None
        x, y = _data(4, dim=3, channels=2, act="none", target=target, ignore_index=sentinel, dtype=dtype)
    _compare(
        ext.AsymmetricUnifiedFocalLoss, ml.AsymmetricUnifiedFocalLoss, dict(case, to_onehot_y=target == "index"), x, y
    )


def test_asymmetric_unified_focal_known_values():
    """MONAI's docstring example (ones everywhere) and a perfect / a wrong two-channel prediction: both classes
    give the same value; a perfect prediction scores ~0 (eps clamp), a wrong one clearly not."""
    pred, grnd = torch.ones((1, 1, 32, 32)), torch.ones((1, 1, 32, 32), dtype=torch.int64)
    kw = dict(to_onehot_y=True)
    ours, theirs = (
        _quiet(c(**kw), pred, grnd) for c in (ext.AsymmetricUnifiedFocalLoss, ml.AsymmetricUnifiedFocalLoss)
    )
    torch.testing.assert_close(ours, theirs)
    y = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]]])
    perfect = _quiet(ext.AsymmetricUnifiedFocalLoss(), y, y)
    torch.testing.assert_close(perfect, ml.AsymmetricUnifiedFocalLoss()(y, y))
    assert float(perfect) < 1e-4
    empty = torch.zeros(1, 1, 8, 8)  # no foreground, none predicted: the clamp keeps TI_1 = 1 / (1 + 0.3 * 64)
    value = ext.AsymmetricUnifiedFocalLoss()(empty, empty)
    torch.testing.assert_close(value, ml.AsymmetricUnifiedFocalLoss()(empty, empty))
    eps = 1e-7
    n, p0 = 64, 1 - eps  # the background: g0 = 1 everywhere, p0 clamped to 1 - eps
    l_f = 0.3 * eps**0.5 * -math.log(p0) / 2  # mean over the 2 class maps; the foreground CE is 0
    ti_0 = (n * p0 + eps) / (n * p0 + 0.7 * n * eps + eps)
    expected = 0.5 * l_f + 0.5 * ((1 - ti_0) + (1 - 1 / (1 + 0.3 * n)) ** 0.5) / 2
    assert abs(float(value) - expected) < 1e-6 and float(value) > 0.2
    wrong = ext.AsymmetricUnifiedFocalLoss()(y.flip(1), y)
    torch.testing.assert_close(wrong, ml.AsymmetricUnifiedFocalLoss()(y.flip(1), y))
    assert float(wrong) > 1.0


@pytest.mark.parametrize("act", ["sigmoid", "softmax"])
def test_asymmetric_unified_focal_logits_extra(act):
    """Our extra sigmoid / softmax flags: MONAI's loss on the activated input (gradient through the activation)."""
    g = torch.Generator().manual_seed(9)
    c = 1 if act == "sigmoid" else 2
    x = torch.randn(2, c, 6, 5, 4, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, 2, (2, 1, 6, 5, 4), generator=g).double()
    kw = dict(to_onehot_y=c == 2, weight=0.3, delta=0.6)
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    ours = ext.AsymmetricUnifiedFocalLoss(**kw, **{act: True})(a, y)
    fn = torch.sigmoid if act == "sigmoid" else partial(torch.softmax, dim=1)
    theirs = ml.AsymmetricUnifiedFocalLoss(**kw)(fn(b), y)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(a.grad, b.grad, atol=1e-10, rtol=1e-10)


def test_asymmetric_unified_focal_warnings_match_monai():
    x, y = _binary(5)
    for kw in (dict(to_onehot_y=True), dict(ignore_index=255)):
        msgs = []
        for cls in (ml.AsymmetricUnifiedFocalLoss, ext.AsymmetricUnifiedFocalLoss):
            with warnings.catch_warnings(record=True) as rec:
                warnings.simplefilter("always")
                cls(**kw)(x, y)
            msgs.append({(w.category, str(w.message)) for w in rec})
        assert msgs[1] >= msgs[0] and msgs[0], (kw, msgs)


def _aufl_bad_calls():
    p1, y1 = _binary(6)
    p2 = torch.softmax(torch.randn(2, 2, 7, 6), 1)
    return [
        # (id, constructor kwargs, input, target, MONAI's type)
        ("ndim-3", {}, torch.rand(2, 1, 4), torch.rand(2, 1, 4), ValueError),
        ("ndim-6", {}, torch.rand(1, 1, 3, 3, 3, 3), torch.rand(1, 1, 3, 3, 3, 3), ValueError),
        ("spatial", {}, p1, y1[..., :5], ValueError),
        ("batch", {}, p1, torch.cat([y1, y1]), ValueError),
        ("two-channel-index-without-to_onehot_y", {}, p2, y1, ValueError),
        ("label-2-one-channel", {}, p1, y1 * 2, ValueError),
        ("label-2-index", dict(to_onehot_y=True), p2, y1 * 2, RuntimeError),  # MONAI: one_hot's scatter
        ("one-hot-with-to_onehot_y", dict(to_onehot_y=True), p2, torch.cat([1 - y1, y1], 1), AssertionError),
        ("three-channels", {}, torch.softmax(torch.randn(2, 3, 7, 6), 1), torch.zeros(2, 3, 7, 6), None),
        ("logits", {}, torch.randn(2, 1, 7, 6) * 3, y1, None),  # MONAI clamps them silently
        ("sigmoid-two-channels", dict(sigmoid=True), torch.randn(2, 2, 7, 6), torch.cat([1 - y1, y1], 1), None),
    ]


@pytest.mark.parametrize("case", _aufl_bad_calls(), ids=lambda c: c[0] if isinstance(c, tuple) else None)
def test_asymmetric_unified_focal_ill_calls(case):
    """Ours raises a ValueError wherever MONAI raises (MONAI's type in the last field: a RuntimeError from its
    one_hot, an AssertionError from one_hot's channel check; None: MONAI computes a value)."""
    _, kw, x, y, monai_type = case
    if monai_type is not None and "sigmoid" not in kw:
        with pytest.raises(monai_type):
            _quiet(ml.AsymmetricUnifiedFocalLoss(**kw), x, y)
    with pytest.raises(ValueError):
        _quiet(ext.AsymmetricUnifiedFocalLoss(**kw), x, y)


@pytest.mark.parametrize(
    "kw",
    [
        dict(num_classes=3),  # MONAI accepts it, then fails at call time or scores channels 0 and 1 only
        dict(num_classes=1),
        dict(reduction="unknown"),  # MONAI: ValueError too
        dict(weight=1.5),
        dict(gamma=2.0),  # MONAI accepts it: (1 - TI)^(1 - gamma) then blows up at a good match
        dict(delta=-0.1),
        dict(sigmoid=True, softmax=True),
    ],
    ids=str,
)
def test_asymmetric_unified_focal_ill_options(kw):
    with pytest.raises(ValueError):
        ext.AsymmetricUnifiedFocalLoss(**kw)


def test_asymmetric_unified_focal_ignore_index_type():
    with pytest.raises(TypeError):
        ext.AsymmetricUnifiedFocalLoss(ignore_index=1.5)


# ----------------------------------------------------------------------------------------------------
# UnifiedFocalLoss: the weight convention
# ----------------------------------------------------------------------------------------------------

UFL_MONAI = [dict(weight=w, delta=d, gamma=g) for (w, d, g) in [(0.5, 0.7, 0.5), (0.2, 0.6, 0.0), (0.9, 0.3, 1.0)]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kw", UFL_MONAI, ids=_ids(UFL_MONAI))
def test_unified_focal_monai_convention_equals_monai(kw, dtype):
    """convention="monai" with MONAI's epsilon as smoothing: MONAI's AsymmetricUnifiedFocalLoss on one-channel
    probabilities (value and gradient); with softmax=True on logits, MONAI's on their softmax."""
    x, y = _binary(_seed("ufl", sorted(kw.items())), 3, dtype)
    smooth = dict(smooth_nr=1e-7, smooth_dr=1e-7)
    _compare(
        lambda **k: ext.UnifiedFocalLoss(**k, **smooth, convention="monai"), ml.AsymmetricUnifiedFocalLoss, kw, x, y
    )
    g = torch.Generator().manual_seed(17)
    logits = (torch.randn(2, 2, 6, 5, generator=g, dtype=torch.float64) * 2).to(dtype)
    lab = torch.randint(0, 2, (2, 1, 6, 5), generator=g).to(dtype)
    a, b = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    ours = ext.UnifiedFocalLoss(**kw, **smooth, softmax=True, to_onehot_y=True, convention="monai")(a, lab)
    theirs = ml.AsymmetricUnifiedFocalLoss(**kw, to_onehot_y=True)(torch.softmax(b, 1), lab)
    ours.backward()
    theirs.backward()
    tol = TOL32 if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(ours, theirs, **tol)
    torch.testing.assert_close(a.grad, b.grad, **tol)


def _authors_unified_focal(p, onehot, weight, delta, gamma, asymmetric, smooth):
    """The authors' code (Yeung et al., github mlyg/unified-focal-loss), re-derived in float64 for C classes with
    class 0 the background: weight on the focal Tversky term, the focal term summed over the classes."""
    p, onehot = p.double(), onehot.double()
    ce = -onehot * torch.log(p)
    mod = (1 - p) ** gamma
    terms = [(1 - delta) * mod[:, 0] * ce[:, 0]]
    for c in range(1, p.shape[1]):
        terms.append(delta * (mod[:, c] if not asymmetric else 1.0) * ce[:, c])
    l_f = torch.stack(terms, 1).sum(1).mean()
    axes = tuple(range(2, p.ndim))
    tp = (onehot * p).sum(axes)
    fn = (onehot * (1 - p)).sum(axes)
    fp = ((1 - onehot) * p).sum(axes)
    ti = (tp + smooth) / (tp + delta * fn + (1 - delta) * fp + smooth)
    ft = (1 - ti) ** (1 - gamma)
    if asymmetric:
        ft = torch.cat([1 - ti[:, :1], ft[:, 1:]], 1)
    return weight * ft.mean() + (1 - weight) * l_f, l_f, ft.mean()


@pytest.mark.parametrize("asymmetric", [True, False])
@pytest.mark.parametrize(
    "kw", [dict(weight=0.5, delta=0.6, gamma=0.5), dict(weight=0.8, delta=0.3, gamma=0.2)], ids=str
)
def test_unified_focal_default_is_the_authors_formula(kw, asymmetric):
    """Default convention = the float64 re-derivation above (4 classes); convention="monai" = weight * L_F / C +
    (1 - weight) * L_FT from the same two terms; the conventions give different losses."""
    g = torch.Generator().manual_seed(23)
    p = torch.softmax(torch.randn(2, 4, 6, 5, 4, generator=g, dtype=torch.float64) * 2, 1)
    lab = torch.randint(0, 4, (2, 1, 6, 5, 4), generator=g)
    onehot = torch.zeros_like(p).scatter_(1, lab, 1.0)
    smooth = 1e-6
    ref, l_f, l_ft = _authors_unified_focal(p, onehot, asymmetric=asymmetric, smooth=smooth, **kw)
    common = dict(kw, asymmetric=asymmetric, to_onehot_y=True, smooth_nr=smooth, smooth_dr=smooth)
    ours = ext.UnifiedFocalLoss(**common)(p, lab.double())
    assert abs(float(ours) - float(ref)) < 1e-10
    monai_conv = ext.UnifiedFocalLoss(**common, convention="monai")(p, lab.double())
    expected = kw["weight"] * l_f / 4 + (1 - kw["weight"]) * l_ft
    assert abs(float(monai_conv) - float(expected)) < 1e-10
    assert abs(float(monai_conv) - float(ours)) > 1e-3


def test_unified_focal_conventions_differ_where_monai_users_would_notice():
    """A user moving from MONAI's class to UnifiedFocalLoss with the same arguments gets another loss unless
    convention="monai" is passed: the harness tells them apart."""
    x, y = _binary(31, 3, torch.float64)
    kw = dict(weight=0.7, delta=0.7, gamma=0.5)
    with pytest.raises(AssertionError):
        _compare(
            lambda **k: ext.UnifiedFocalLoss(**k, smooth_nr=1e-7, smooth_dr=1e-7),
            ml.AsymmetricUnifiedFocalLoss,
            kw,
            x,
            y,
        )
    with pytest.raises(ValueError, match="convention"):
        ext.UnifiedFocalLoss(convention="paper")


# ----------------------------------------------------------------------------------------------------
# GeneralizedDiceFocalLoss
# ----------------------------------------------------------------------------------------------------

GDFL_GRID = [
    dict(
        act=a,
        target=_rr(i, "index", "onehot"),
        include_background=ib,
        w_type=_rr(i // 2, "square", "simple", "uniform"),
        batch=bt,
        reduction=r,
        gamma=_rr(i // 3, 2.0, 0.5, 0.0),
        weight=_rr(i // 5, None, "w", 2.0),
        lambdas=_rr(i // 7, (1.0, 1.0), (0.3, 1.7)),
    )
    for i, (a, ib, bt, r) in enumerate(
        itertools.product(["softmax", "sigmoid", "none"], [True, False], [False, True], ["mean", "sum", "none"])
    )
]


@pytest.mark.parametrize("case", GDFL_GRID, ids=_ids(GDFL_GRID))
def test_generalized_dice_focal_grid(case):
    case = dict(case)
    act, target, lam = case.pop("act"), case.pop("target"), case.pop("lambdas")
    if case["weight"] == "w":
        case["weight"] = [0.5, 1.0, 2.0] if case["include_background"] else [1.0, 3.0]
    seed = _seed("gdfl", str(sorted((k, str(v)) for k, v in case.items())), act, target, lam)
    x, y = _data(seed, dim=2 + seed % 2, act=act, target=target)
    kw = dict(case, to_onehot_y=target == "index", lambda_gdl=lam[0], lambda_focal=lam[1])
    kw.update({"softmax": {"softmax": True}, "sigmoid": {"sigmoid": True}, "none": {}}[act])
    _compare(ext.GeneralizedDiceFocalLoss, ml.GeneralizedDiceFocalLoss, kw, x, y)


@pytest.mark.parametrize(
    "kw",
    [
        dict(softmax=True, to_onehot_y=True),
        dict(sigmoid=True, reduction="none", weight=[1.0, 2.0, 0.5]),
        dict(other_act=torch.tanh, include_background=False, batch=True, reduction="sum"),
    ],
    ids=["softmax", "sigmoid-none", "other_act"],
)
def test_generalized_dice_focal_float64_and_binary(kw):
    """MONAI's FocalLoss computes in float32 (so float32 tolerance in float64); ours keeps float64. One sigmoid
    channel: the binary task."""
    x, y = _data(81, act="softmax", target="index" if kw.get("to_onehot_y") else "onehot", dtype=torch.float64)
    if "other_act" in kw:
        x = x.abs() / (x.abs().max() + 1)  # tanh of these stays in [0, 1)
    _compare(ext.GeneralizedDiceFocalLoss, ml.GeneralizedDiceFocalLoss, kw, x, y, tol=TOL32)
    assert _quiet(ext.GeneralizedDiceFocalLoss(**kw), x, y).dtype == torch.float64
    xb, yb = _data(82, channels=1, act="sigmoid")
    for bkw in (dict(sigmoid=True), dict(sigmoid=True, gamma=1.0, reduction="none", batch=True)):
        _compare(ext.GeneralizedDiceFocalLoss, ml.GeneralizedDiceFocalLoss, bkw, xb, yb)


@pytest.mark.parametrize("target", ["index", "onehot"])
def test_generalized_dice_focal_ignore_index_is_its_two_terms(target):
    """Our extra ignore_index (MONAI's class has none): exactly lambda_gdl GDL + lambda_focal Focal with it."""
    x, y = _data(83, act="softmax", target=target, ignore_index=255, dtype=torch.float64)
    kw = dict(softmax=True, to_onehot_y=target == "index", ignore_index=255)
    gd = ext.GeneralizedDiceFocalLoss(**kw, lambda_gdl=0.4, lambda_focal=1.5, gamma=1.0, weight=[1.0, 2.0, 3.0])(x, y)
    ref = 0.4 * ext.GeneralizedDiceLoss(**kw)(x, y) + 1.5 * ext.FocalLoss(
        to_onehot_y=target == "index", ignore_index=255, gamma=1.0, weight=[1.0, 2.0, 3.0]
    )(x, y)
    assert abs(float(gd) - float(ref)) < 1e-12
    if target == "index":  # the same target without the ignored voxels' labels gives another loss
        y0 = torch.where(y == 255, 0.0, y)
        same = dict(lambda_gdl=0.4, lambda_focal=1.5, gamma=1.0, weight=[1.0, 2.0, 3.0])
        plain = ext.GeneralizedDiceFocalLoss(softmax=True, to_onehot_y=True, **same)(x, y0)
        assert abs(float(plain) - float(gd)) > 1e-3


@pytest.mark.parametrize("name", ["GeneralizedDiceFocalLoss", "DiceFocalLoss", "DiceCELoss"])
def test_other_act_is_the_region_terms_only(name):
    """As MONAI: other_act feeds the (generalised) Dice term; the focal / cross-entropy term reads the raw input."""
    x, y = _data(85, act="softmax", target="onehot")
    x = x.abs() / (x.abs().max() + 1)  # tanh keeps these in [0, 1)
    _compare(getattr(ext, name), getattr(ml, name), dict(other_act=torch.tanh), x, y)


def _gdfl_bad_calls():
    x, y = _data(84, act="softmax", target="index")
    return [
        ("ndim", dict(softmax=True), x, y[:, 0], ValueError),
        ("channels", dict(softmax=True), x, torch.zeros(2, 2, *x.shape[2:]), ValueError),
        ("index-without-to_onehot_y", dict(softmax=True), x, y, AssertionError),  # MONAI's GeneralizedDiceLoss
        ("spatial", dict(softmax=True, to_onehot_y=True), x, y[..., :-1], AssertionError),
        ("weight-length", dict(softmax=True, to_onehot_y=True, weight=[1.0, 2.0]), x, y, ValueError),
        ("label-out-of-range", dict(softmax=True, to_onehot_y=True), x, y + 1, RuntimeError),  # one_hot scatter
    ]


@pytest.mark.parametrize("case", _gdfl_bad_calls(), ids=lambda c: c[0] if isinstance(c, tuple) else None)
def test_generalized_dice_focal_ill_calls(case):
    """Ours raises a ValueError wherever MONAI raises; MONAI's AssertionError (shape checks of its generalised
    Dice term) and RuntimeError (one_hot) are noted at the cases."""
    _, kw, x, y, monai_type = case
    with pytest.raises(monai_type):
        _quiet(ml.GeneralizedDiceFocalLoss(**kw), x, y)
    with pytest.raises((ValueError,)):
        _quiet(ext.GeneralizedDiceFocalLoss(**kw), x, y)


@pytest.mark.parametrize(
    "kw, err",
    [
        (dict(lambda_gdl=-0.1), ValueError),
        (dict(lambda_focal=-1.0), ValueError),
        (dict(w_type="cubic"), ValueError),
        (dict(reduction="unknown"), ValueError),
        (dict(sigmoid=True, softmax=True), ValueError),
        (dict(other_act="tanh"), TypeError),
        (dict(weight=[1.0, -2.0, 1.0]), ValueError),  # MONAI: ValueError at the first call
    ],
    ids=str,
)
def test_generalized_dice_focal_ill_options(kw, err):
    with pytest.raises(err):
        ext.GeneralizedDiceFocalLoss(**kw)
    if "weight" not in kw:
        with pytest.raises(err):
            ml.GeneralizedDiceFocalLoss(**kw)


def test_generalized_dice_focal_lambda_message_names_it():
    with pytest.raises(ValueError, match="lambda_gdl"):
        ext.GeneralizedDiceFocalLoss(lambda_gdl=-1.0)


# ----------------------------------------------------------------------------------------------------
# MaskedDiceLoss
# ----------------------------------------------------------------------------------------------------


def _mask(seed, x, kind):
    g = torch.Generator().manual_seed(seed)
    b, sp = x.shape[0], x.shape[2:]
    if kind == "binary":
        return (torch.rand((b, 1, *sp), generator=g) < 0.6).to(x.dtype)
    if kind == "shared":  # (1, 1, *spatial), broadcast over the batch
        return (torch.rand((1, 1, *sp), generator=g) < 0.6).to(x.dtype)
    if kind == "bool":
        return torch.rand((b, 1, *sp), generator=g) < 0.6
    if kind == "soft":
        return torch.rand((b, 1, *sp), generator=g, dtype=torch.float64).to(x.dtype)
    if kind == "broadcast":  # a spatial axis of length 1 (MONAI warns and broadcasts)
        return (torch.rand((b, 1, *sp[:-1], 1), generator=g) < 0.6).to(x.dtype)
    raise AssertionError(kind)


def _masked_compare(kw, x, y, m, tol=None):
    _compare(
        lambda **k: partial(ext.MaskedDiceLoss(**k), mask=m),
        lambda **k: partial(ml.MaskedDiceLoss(**k), mask=m),
        kw,
        x,
        y,
        tol,
    )


MDL_GRID = [
    dict(
        act=a,
        target=t,
        include_background=ib,
        squared_pred=_rr(i, False, True),
        jaccard=_rr(i // 2, False, True),
        batch=_rr(i // 3, False, True),
        reduction=_rr(i, "mean", "sum", "none"),
        mask=_rr(i // 4, "binary", "shared", "bool", "broadcast") if t == "index" else _rr(i, "binary", "soft"),
    )
    for i, (a, t, ib) in enumerate(
        itertools.product(["softmax", "sigmoid", "none"], ["index", "onehot", "index", "onehot"], [True, False])
    )
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", MDL_GRID, ids=_ids(MDL_GRID))
def test_masked_dice_grid(case, dtype):
    """Activation before the mask, input and target multiplied by it, index labels turned into background
    outside it: every combination equals MONAI's value and gradient."""
    case = dict(case)
    act, target, mk = case.pop("act"), case.pop("target"), case.pop("mask")
    seed = _seed("mdl", sorted(case.items()), act, target, mk)
    x, y = _data(seed, dim=2 + seed % 2, act=act, target=target, dtype=dtype)
    kw = dict(case, to_onehot_y=target == "index")
    kw.update({"softmax": {"softmax": True}, "sigmoid": {"sigmoid": True}, "none": {}}[act])
    # MONAI's squared_pred sums g^2 as a float32 vector norm of its float32 one-hot (its DiceLoss too): float32
    # rounding of e.g. sqrt(37)^2, so float32 tolerance there
    tol = TOL32 if case["squared_pred"] and target == "index" else None
    _masked_compare(kw, x, y, _mask(seed, x, mk), tol)


@pytest.mark.parametrize(
    "kw, mask",
    [
        (dict(softmax=True, to_onehot_y=True, weight=[0.2, 1.0, 3.0]), "binary"),
        (dict(softmax=True, to_onehot_y=True, include_background=False, weight=[2.0, 0.5]), "shared"),
        (dict(softmax=True, weight=2.5, smooth_nr=1.0, smooth_dr=1.0), "soft"),
        (dict(soft_label=True), "soft"),
        (dict(soft_label=True, jaccard=True, batch=True), "binary"),
        (dict(other_act=torch.sigmoid), "binary"),
        (dict(softmax=True, smooth_nr=0.0, smooth_dr=1e-6, reduction="none"), "soft"),
    ],
    ids=lambda v: str(v) if isinstance(v, str) else None,
)
def test_masked_dice_extra(kw, mask):
    soft = kw.get("soft_label", False)
    act = "none" if soft or "other_act" in kw else "softmax"
    x, y = _data(91, act=act, target="index" if kw.get("to_onehot_y") else "onehot", soft=soft)
    if "other_act" in kw:
        x = torch.logit(x.clamp(1e-3, 1 - 1e-3))
    _masked_compare(kw, x, y, _mask(91, x, mask))


def test_masked_dice_single_channel_and_no_mask():
    """One sigmoid channel; no mask: MONAI's warning and the plain Dice loss; an all-zero and an all-one mask."""
    x, y = _data(92, channels=1, act="sigmoid")
    for kw in (dict(sigmoid=True), dict(sigmoid=True, batch=True, reduction="none")):
        _masked_compare(kw, x, y, _mask(92, x, "binary"))
        _masked_compare(kw, x, y, torch.zeros_like(x))
    x3, y3 = _data(93, act="softmax", target="index")
    with pytest.warns(UserWarning, match="No mask value specified"):
        v = ext.MaskedDiceLoss(softmax=True, to_onehot_y=True)(x3, y3)
    torch.testing.assert_close(v, ext.DiceLoss(softmax=True, to_onehot_y=True)(x3, y3))
    _compare(ext.MaskedDiceLoss, ml.MaskedDiceLoss, dict(softmax=True, to_onehot_y=True), x3, y3)
    ones = torch.ones_like(x3[:, :1])
    torch.testing.assert_close(
        ext.MaskedDiceLoss(softmax=True, to_onehot_y=True)(x3, y3, mask=ones),
        ext.DiceLoss(softmax=True, to_onehot_y=True)(x3, y3),
    )


def test_masked_dice_warnings_match_monai():
    x, y = _data(94, act="softmax", target="index")
    m = _mask(94, x, "broadcast")
    kw = dict(softmax=True, to_onehot_y=True)
    msgs = []
    for cls in (ml.MaskedDiceLoss, ext.MaskedDiceLoss):
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            cls(**kw)(x, y, mask=m)
        msgs.append({(w.category, str(w.message)) for w in rec})
    assert msgs[0] and msgs[1] == msgs[0]


@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("target", ["index", "onehot"])
def test_masked_dice_relation_to_ignore_index(target, include_background):
    """Binary mask = DiceLoss(ignore_index) on the target with the masked-out voxels marked ignored, exactly,
    except for the background class with index labels (MONAI's masking makes those voxels background): there
    the background's sum g grows by the number of masked voxels."""
    x, y = _data(95, act="softmax", target=target, dtype=torch.float64)
    m = _mask(95, x, "binary")
    kw = dict(softmax=True, to_onehot_y=target == "index", include_background=include_background, reduction="none")
    masked = ext.MaskedDiceLoss(**kw)(x, y, mask=m)
    marked = torch.where(m.bool(), y, 255.0) if target == "index" else y * m
    ignored = ext.DiceLoss(**kw, ignore_index=255)(x, marked)
    if target == "onehot" or not include_background:
        torch.testing.assert_close(masked, ignored, atol=1e-12, rtol=1e-12)
        return
    torch.testing.assert_close(masked[:, 1:], ignored[:, 1:], atol=1e-12, rtol=1e-12)
    p0 = torch.softmax(x, 1)[:, 0] * m[:, 0]
    g0 = ((y[:, 0] == 0) & m[:, 0].bool()).double()
    axes = tuple(range(1, p0.ndim))
    n_out = (1 - m[:, 0]).sum(axes)
    expected = 1 - (2 * (p0 * g0).sum(axes) + 1e-5) / (p0.sum(axes) + g0.sum(axes) + n_out + 1e-5)
    torch.testing.assert_close(masked[:, 0].flatten(), expected, atol=1e-12, rtol=1e-12)
    assert (masked[:, 0] - ignored[:, 0]).abs().min() > 1e-3


def test_masked_dice_with_ignore_index():
    """ignore_index and a mask together: the ignored voxels leave every sum, the mask applies to the rest."""
    x, y = _data(96, act="softmax", target="index", ignore_index=255, dtype=torch.float64)
    m = _mask(96, x, "binary")
    kw = dict(softmax=True, to_onehot_y=True, include_background=False)
    both = ext.MaskedDiceLoss(**kw, ignore_index=255)(x, y, mask=m)
    ref = ext.DiceLoss(**kw, ignore_index=255)(x, torch.where(m.bool(), y, 255.0))
    torch.testing.assert_close(both, ref, atol=1e-12, rtol=1e-12)


def _mdl_bad_calls():
    x, y = _data(97, act="softmax", target="index")
    b, sp = x.shape[0], x.shape[2:]
    return [
        # (id, constructor kwargs, input, target, mask, MONAI's type or None when MONAI computes a value)
        ("mask-batch", {}, x, y, torch.ones(3, 1, *sp), ValueError),
        ("mask-channels", {}, x, y, torch.ones(b, 2, *sp), ValueError),
        ("mask-no-channel-axis", {}, x, y, torch.ones(1, *sp), ValueError),
        ("mask-ndim", {}, x, y, torch.ones(b, 1, *sp[:-1]), RuntimeError),  # MONAI: warns, then broadcasting fails
        ("mask-spatial", {}, x, y, torch.ones(b, 1, *sp[:-1], sp[-1] - 1), RuntimeError),  # broadcasting fails
        ("mask-0-255", {}, x, y, torch.full((b, 1, *sp), 255.0), RuntimeError),  # MONAI: one_hot of label * 255
        ("soft-mask-index-labels", {}, x, y, torch.full((b, 1, *sp), 0.5), None),  # MONAI halves the labels
        ("mask-nan", {}, x, y, torch.full((b, 1, *sp), float("nan")), None),
        ("index-without-to_onehot_y", dict(to_onehot_y=False), x, y, torch.ones(b, 1, *sp), AssertionError),
        ("target-spatial", {}, x, y[..., :-1], torch.ones(b, 1, *sp), None),  # MONAI: RuntimeError or Assertion
        ("weight-length", dict(weight=[1.0, 2.0]), x, y, torch.ones(b, 1, *sp), ValueError),
    ]


@pytest.mark.parametrize("case", _mdl_bad_calls(), ids=lambda c: c[0] if isinstance(c, tuple) else None)
def test_masked_dice_ill_calls(case):
    """Ours raises a ValueError wherever MONAI raises (and for masks MONAI would misread); MONAI's type is noted
    at the case: RuntimeError from torch broadcasting or one_hot, AssertionError from DiceLoss's shape check."""
    _, extra, x, y, m, monai_type = case
    kw = dict(dict(softmax=True, to_onehot_y=True), **extra)
    if monai_type is not None:
        with pytest.raises(monai_type):
            _quiet(ml.MaskedDiceLoss(**kw), x, y, mask=m)
    with pytest.raises((ValueError,)):
        _quiet(ext.MaskedDiceLoss(**kw), x, y, mask=m)


@pytest.mark.parametrize(
    "kw, err",
    [
        (dict(sigmoid=True, softmax=True), ValueError),
        (dict(sigmoid=True, other_act=torch.tanh), ValueError),
        (dict(other_act="tanh"), TypeError),
        (dict(reduction="unknown"), ValueError),
    ],
    ids=str,
)
def test_masked_dice_ill_options(kw, err):
    with pytest.raises(err):
        ml.MaskedDiceLoss(**kw)
    with pytest.raises(err):
        ext.MaskedDiceLoss(**kw)


# ----------------------------------------------------------------------------------------------------
# LogHausdorffDTLoss
# ----------------------------------------------------------------------------------------------------

LHD_GRID = [
    dict(
        act=a,
        target=_rr(i, "index", "onehot"),
        include_background=ib,
        alpha=_rr(i // 2, 2.0, 1.0, 1.5),
        batch=bt,
        reduction=r,
    )
    for i, (a, ib, bt, r) in enumerate(
        itertools.product(["softmax", "sigmoid", "none"], [False, True], [False, True], ["mean", "sum", "none"])
    )
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", LHD_GRID, ids=_ids(LHD_GRID))
def test_log_hausdorff_dt_grid(case, dtype):
    """No map given: MONAI's fields of the target and the prediction, computed here, give MONAI's value and
    gradient (float64 too: the weights are float32 in both)."""
    case = dict(case)
    act, target = case.pop("act"), case.pop("target")
    seed = _seed("lhd", sorted(case.items()), act, target)
    x, y = _data(seed, dim=2 + seed % 2, act=act, target=target, absent_class=2 if seed % 3 == 0 else None, dtype=dtype)
    kw = dict(case, to_onehot_y=target == "index")
    kw.update({"softmax": {"softmax": True}, "sigmoid": {"sigmoid": True}, "none": {}}[act])
    _compare(ext.LogHausdorffDTLoss, ml.LogHausdorffDTLoss, kw, x, y)


def test_log_hausdorff_dt_single_channel_and_full_class():
    """One sigmoid channel; a class that fills a sample and one that is absent (fields all zero there)."""
    x, y = _data(101, channels=1, act="sigmoid")
    for kw in (dict(sigmoid=True), dict(sigmoid=True, reduction="none", batch=True)):
        _compare(ext.LogHausdorffDTLoss, ml.LogHausdorffDTLoss, kw, x, y)
    x3, y3 = _data(102, act="softmax", target="index")
    y3[0] = 1.0  # class 1 fills sample 0, classes 0 and 2 are absent there
    _compare(
        ext.LogHausdorffDTLoss, ml.LogHausdorffDTLoss, dict(softmax=True, to_onehot_y=True, reduction="none"), x3, y3
    )


def _reference_maps(y, c):
    kind = "index" if y.shape[1] == 1 and c > 1 else "dense"
    sdm = SignedDistanceMap(num_classes=c if kind == "index" else None, mode="unsigned", convention="reference")
    return torch.stack([torch.as_tensor(sdm(y[b].long() if kind == "index" else y[b])) for b in range(y.shape[0])])


@pytest.mark.parametrize("target", ["index", "onehot"])
def test_log_hausdorff_dt_with_precomputed_reference_map(target):
    """distance_map from SignedDistanceMap(mode="unsigned", convention="reference") gives MONAI's values."""
    x, y = _data(103, act="softmax", target=target)
    dmap = _reference_maps(y, 3)
    kw = dict(softmax=True, to_onehot_y=target == "index", include_background=True, reduction="none")
    with_map = ext.LogHausdorffDTLoss(**kw)(x, y, distance_map=dmap)
    torch.testing.assert_close(with_map, ext.LogHausdorffDTLoss(**kw)(x, y), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(with_map, ml.LogHausdorffDTLoss(**kw)(x, y), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("batch", [False, True])
def test_log_hausdorff_dt_is_log_of_hausdorff_dt(batch):
    """One-sided, with the same map: log(1 + HausdorffDTLoss) in float32 (HausdorffDTLoss's "none" is (B, C))."""
    x, y = _data(104, act="softmax", target="index")
    dmap = torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) * 3
    kw = dict(softmax=True, to_onehot_y=True, batch=batch)
    for reduction in ("mean", "none"):
        log_hd = ext.LogHausdorffDTLoss(**kw, include_pred_dt=False, reduction=reduction)(x, y, distance_map=dmap)
        hd = ext.HausdorffDTLoss(**kw, reduction=reduction)(x, y, distance_map=dmap)
        torch.testing.assert_close(log_hd.reshape(hd.shape), torch.log(hd + 1), atol=1e-6, rtol=1e-6)
    two_sided = ext.LogHausdorffDTLoss(**kw)(x, y, distance_map=dmap)
    assert float(two_sided) > float(ext.LogHausdorffDTLoss(**kw, include_pred_dt=False)(x, y, distance_map=dmap))


def test_log_hausdorff_dt_ignore_index_leaves_voxels_out():
    """Our extra ignore_index: the ignored voxels get no gradient."""
    x, y = _data(105, act="softmax", target="index", ignore_index=255, dtype=torch.float64)
    loss = ext.LogHausdorffDTLoss(softmax=True, to_onehot_y=True, ignore_index=255, include_pred_dt=False)
    xx = x.clone().requires_grad_(True)
    loss(xx, y).backward()
    ignored = (y == 255).expand_as(x)
    assert ignored.any() and float(xx.grad[ignored].abs().max()) == 0.0


def _lhd_bad_calls():
    x, y = _data(106, act="softmax", target="index")
    return [
        ("ndim-3", {}, torch.rand(2, 3, 4), torch.rand(2, 3, 4), ValueError),
        ("ndim-6", {}, torch.rand(1, 3, 3, 3, 3, 3), torch.rand(1, 3, 3, 3, 3, 3), ValueError),
        ("index-without-to_onehot_y", dict(to_onehot_y=False), x, y, AssertionError),
        ("spatial", {}, x, y[..., :-1], AssertionError),
        ("label-out-of-range", {}, x, y + 1, RuntimeError),  # MONAI: one_hot's scatter
    ]


@pytest.mark.parametrize("case", _lhd_bad_calls(), ids=lambda c: c[0] if isinstance(c, tuple) else None)
def test_log_hausdorff_dt_ill_calls(case):
    """Ours raises a ValueError wherever MONAI raises; MONAI's AssertionError (shape) and RuntimeError (one_hot)
    noted at the cases."""
    _, extra, x, y, monai_type = case
    kw = dict(dict(softmax=True, to_onehot_y=True), **extra)
    with pytest.raises(monai_type):
        _quiet(ml.LogHausdorffDTLoss(**kw), x, y)
    with pytest.raises((ValueError,)):
        _quiet(ext.LogHausdorffDTLoss(**kw), x, y)


def test_log_hausdorff_dt_ill_options_and_maps():
    for kw, err in [
        (dict(sigmoid=True, softmax=True), ValueError),
        (dict(other_act=3), TypeError),
        (dict(reduction="unknown"), ValueError),
    ]:
        with pytest.raises(err):
            ml.LogHausdorffDTLoss(**kw)
        with pytest.raises(err):
            ext.LogHausdorffDTLoss(**kw)
    with pytest.raises(ValueError):
        ext.LogHausdorffDTLoss(alpha=0.0)
    x, y = _data(107, act="softmax", target="index")
    loss = ext.LogHausdorffDTLoss(softmax=True, to_onehot_y=True)
    with pytest.raises(ValueError, match="negative"):
        loss(x, y, distance_map=-torch.ones_like(x))
    with pytest.raises(ValueError, match="distance_map"):
        loss(x, y, distance_map=torch.ones_like(x[:, :2]))


def test_log_hausdorff_dt_perfect_prediction_is_zero():
    """MONAI's known value: a prediction equal to the target scores 0 (both ways of the field)."""
    _, y = _data(108, act="softmax", target="onehot")
    for cls in (ext.LogHausdorffDTLoss, ml.LogHausdorffDTLoss):
        assert float(cls(include_background=True)(y, y)) == 0.0
    assert math.isclose(
        float(ext.LogHausdorffDTLoss()(1 - y, y)), float(ml.LogHausdorffDTLoss()(1 - y, y)), rel_tol=1e-6
    )
