"""Property tests (hypothesis) over every registered loss: range, minimum at a perfect prediction, invariance
to the order of the batch, empty target + empty prediction scoring 0 (never NaN), half precision (fp16 /
bf16 inputs and torch.autocast) close to fp32, and finite values and gradients for logits of magnitude 50.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import monai_losses_ext as ext

# no shrinking: a failing property reports its first counterexample at once (keeps a failing run short)
SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
)

# ----------------------------------------------------------------------------------------------------
# loss configurations: name -> (kwargs(target_kind) , input kind)
#   input kind "logits": the loss applies its activation; "probs": it reads probabilities
# ----------------------------------------------------------------------------------------------------

OVERLAP = [
    "dice",
    "jaccard",
    "tversky",
    "focal_tversky",
    "generalized_dice",
    "log_cosh_dice",
    "sensitivity_specificity",
]


def _oh(t):
    return t == "index"


class Cfg(tuple):
    """(label, registry name, kwargs-builder, input kind, upper bound or None, lower bound or None,
    minimum: "zero" (perfect prediction scores 0) or "argmin" (perfect prediction is the minimum, value < 0))."""

    def __new__(cls, label, name, kw, kind, upper=None, lower=0.0, minimum="zero"):
        return super().__new__(cls, (label, name, kw, kind, upper, lower, minimum))


class _ClassOne(torch.nn.Module):
    """A binary loss on a C-class case: the probability of class 1 against "label == 1" (a channel taken as it
    is, so half-precision inputs are not rounded again here)."""

    def __init__(self, loss):
        super().__init__()
        self.loss = loss

    def forward(self, x, y):
        return self.loss(x[:, 1:2], (y == 1).to(x.dtype) if y.shape[1] == 1 else y[:, 1:2])


class _HoleMask(_ClassOne):
    """A masked loss called with the first slice of the last spatial axis masked out (the same for every sample)."""

    def forward(self, x, y):
        mask = torch.ones((1, 1, *x.shape[2:]), device=x.device)
        mask[..., 0] = 0
        return self.loss(x, y, mask=mask)


def _configs():
    cfg = []
    for name in OVERLAP:
        upper = math.log(math.cosh(1.0)) if name == "log_cosh_dice" else 1.0
        cfg.append((f"{name}-probs", name, lambda t: dict(to_onehot_y=_oh(t)), "probs", upper))
        cfg.append((f"{name}-softmax", name, lambda t: dict(softmax=True, to_onehot_y=_oh(t)), "logits", upper))
    cfg = [Cfg(*c) for c in cfg]
    cfg += [
        Cfg(*c)
        for c in [
            ("dice-batch", "dice", lambda t: dict(softmax=True, to_onehot_y=_oh(t), batch=True), "logits", 1.0),
            ("dice-squared", "dice", lambda t: dict(squared_pred=True, to_onehot_y=_oh(t)), "probs", 1.0),
            (
                "tversky-0.3-0.7-batch",
                "tversky",
                lambda t: dict(softmax=True, to_onehot_y=_oh(t), alpha=0.3, beta=0.7, batch=True),
                "logits",
                1.0,
            ),
            (
                "focal_tversky-batch",
                "focal_tversky",
                lambda t: dict(softmax=True, to_onehot_y=_oh(t), batch=True),
                "logits",
                1.0,
            ),
            (
                "generalized_dice-batch",
                "generalized_dice",
                lambda t: dict(softmax=True, to_onehot_y=_oh(t), batch=True),
                "logits",
                1.0,
            ),
            ("weighted_ce", "weighted_ce", lambda t: dict(), "logits", None),
            ("weighted_ce-w", "weighted_ce", lambda t: dict(weight=[1.0, 2.0, 3.0, 4.0]), "logits", None),
            ("weighted_bce", "weighted_bce", lambda t: dict(pos_weight=3.0, to_onehot_y=_oh(t)), "logits", None),
            ("focal", "focal", lambda t: dict(to_onehot_y=_oh(t)), "logits", None),
            (
                "focal-softmax",
                "focal",
                lambda t: dict(to_onehot_y=_oh(t), use_softmax=True, alpha=0.25),
                "logits",
                None,
            ),
            ("topk_ce", "topk_ce", lambda t: dict(k=10), "logits", None),
            ("dice_ce", "dice_ce", lambda t: dict(softmax=True, to_onehot_y=_oh(t)), "logits", None),
            ("dice_ce-batch", "dice_ce", lambda t: dict(softmax=True, to_onehot_y=_oh(t), batch=True), "logits", None),
            ("dice_focal", "dice_focal", lambda t: dict(softmax=True, to_onehot_y=_oh(t)), "logits", None),
            (
                "generalized_dice_focal",
                "generalized_dice_focal",
                lambda t: dict(softmax=True, to_onehot_y=_oh(t)),
                "logits",
                None,
            ),
            (
                "masked_dice-hole",
                "masked_dice",
                lambda t: dict(softmax=True, to_onehot_y=_oh(t), include_background=False, _adapt=_HoleMask),
                "logits",
                1.0,
            ),
            ("dice_topk", "dice_topk", lambda t: dict(softmax=True, to_onehot_y=_oh(t)), "logits", None),
            ("combo", "combo", lambda t: dict(softmax=True, to_onehot_y=_oh(t)), "logits", None),
            ("unified_focal", "unified_focal", lambda t: dict(softmax=True, to_onehot_y=_oh(t)), "logits", None),
            (
                "unified_focal-sym-batch",
                "unified_focal",
                lambda t: dict(softmax=True, to_onehot_y=_oh(t), asymmetric=False, batch=True),
                "logits",
                None,
            ),
            (
                "asymmetric_unified_focal-class1",
                "asymmetric_unified_focal",
                lambda t: dict(_adapt=_ClassOne),
                "probs",
                None,
                0.0,
                "argmin",  # MONAI's clamp: a sample without class 1 keeps 1 - TI_1 near 1 even when predicted empty
            ),
            ("exp_log", "exp_log", lambda t: dict(softmax=True, to_onehot_y=_oh(t)), "logits", None),
            ("lovasz_softmax", "lovasz_softmax", lambda t: dict(to_onehot_y=_oh(t)), "logits", 1.0),
            (
                "lovasz_softmax-per_image",
                "lovasz_softmax",
                lambda t: dict(to_onehot_y=_oh(t), per_image=True),
                "logits",
                1.0,
            ),
            (
                "compound",
                "compound",
                lambda t: dict(
                    terms={"d": (ext.DiceLoss(softmax=True, to_onehot_y=_oh(t)), 0.5), "c": (ext.WeightedCELoss(), 0.5)}
                ),
                "logits",
                None,
            ),
        ]
    ]
    # geometry losses: no map is passed, so each computes its map from the target (its documented fallback)
    cfg += [
        Cfg("boundary", "boundary", lambda t: dict(softmax=True, to_onehot_y=_oh(t)), "logits", None, None, "argmin"),
        Cfg(
            "dice_boundary",
            "dice_boundary",
            lambda t: dict(softmax=True, to_onehot_y=_oh(t), alpha=0.5),
            "logits",
            None,
            None,
            "argmin",
        ),
        Cfg("hausdorff_dt", "hausdorff_dt", lambda t: dict(softmax=True, to_onehot_y=_oh(t)), "logits"),
        Cfg("log_hausdorff_dt", "log_hausdorff_dt", lambda t: dict(softmax=True, to_onehot_y=_oh(t)), "logits"),
        Cfg("weight_map_ce", "weight_map_ce", lambda t: dict(), "logits"),
        Cfg("blob", "blob", lambda t: dict(softmax=True, to_onehot_y=_oh(t)), "logits"),
    ]
    return cfg


CONFIGS = _configs()
IDS = [c[0] for c in CONFIGS]


def build(cfg, target_kind, C):
    label, name, kw, kind = cfg[:4]
    kwargs = kw(target_kind)
    if "weight" in kwargs and isinstance(kwargs["weight"], list):
        kwargs["weight"] = kwargs["weight"][:C]
    adapt = kwargs.pop("_adapt", None)  # a wrapper for losses called otherwise (binary only, extra mask)
    loss = ext.get_loss(name, **kwargs)
    return (adapt(loss) if adapt else loss), kind


def call(loss, x, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return loss(x, y)


def test_configs_cover_registry():
    assert {c[1] for c in CONFIGS} == set(ext.list_losses()), "every registered loss needs a property config"


# ----------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------


@st.composite
def cases(draw, max_b=3):
    seed = draw(st.integers(0, 2**31 - 1))
    b = draw(st.integers(1, max_b))
    c = draw(st.integers(2, 4))
    dim = draw(st.sampled_from([2, 3]))
    spatial = tuple(draw(st.integers(2, 5)) for _ in range(dim))
    scale = draw(st.sampled_from([0.5, 2.0, 6.0]))
    target_kind = draw(st.sampled_from(["index", "onehot"]))
    return dict(seed=seed, b=b, c=c, spatial=spatial, scale=scale, target_kind=target_kind)


def tensors(case, dtype=torch.float64):
    g = torch.Generator().manual_seed(case["seed"])
    b, c, sp = case["b"], case["c"], case["spatial"]
    logits = torch.randn((b, c) + sp, generator=g, dtype=torch.float64) * case["scale"]
    lab = torch.randint(0, c, (b, 1) + sp, generator=g)
    onehot = torch.zeros((b, c) + sp, dtype=torch.float64).scatter_(1, lab, 1.0)
    y = lab.to(torch.float64) if case["target_kind"] == "index" else onehot
    return logits.to(dtype), y.to(dtype), lab, onehot


def inputs_for(kind, logits):
    return torch.softmax(logits, 1) if kind == "probs" else logits


# ----------------------------------------------------------------------------------------------------
# range
# ----------------------------------------------------------------------------------------------------


@SETTINGS
@given(case=cases())
def test_range(case):
    logits, y, _, _ = tensors(case)
    for cfg in CONFIGS:
        loss, kind = build(cfg, case["target_kind"], case["c"])
        v = call(loss, inputs_for(kind, logits), y)
        assert torch.isfinite(v).all(), cfg[0]
        if cfg[5] is not None:
            assert v.min() >= cfg[5] - 1e-9, f"{cfg[0]}: loss {v} below {cfg[5]}"
        if cfg[4] is not None:
            assert v.max() <= cfg[4] + 1e-9, f"{cfg[0]}: loss {v} above {cfg[4]}"


@SETTINGS
@given(case=cases(), alpha=st.floats(0.0, 1.0), beta=st.floats(0.0, 1.0))
def test_tversky_range_any_weights(case, alpha, beta):
    logits, y, _, _ = tensors(case)
    for cls in (ext.TverskyLoss, ext.FocalTverskyLoss):
        v = call(
            cls(alpha=alpha, beta=beta, to_onehot_y=case["target_kind"] == "index", reduction="none"),
            torch.softmax(logits, 1),
            y,
        )
        assert torch.isfinite(v).all() and v.min() >= -1e-9 and v.max() <= 1 + 1e-9, (cls.__name__, alpha, beta, v)


# ----------------------------------------------------------------------------------------------------
# minimum at a perfect prediction
# ----------------------------------------------------------------------------------------------------


@SETTINGS
@given(case=cases())
def test_perfect_prediction_gives_minimum(case):
    """One-hot probabilities (or logits +-30 around the true class) give the documented minimum 0."""
    _, y, lab, onehot = tensors(case)
    perfect_logits = 30.0 * (2 * onehot - 1)
    failures = []
    for cfg in CONFIGS:
        loss, kind = build(cfg, case["target_kind"], case["c"])
        x = onehot.clone() if kind == "probs" else perfect_logits
        v = call(loss, x, y)
        assert torch.isfinite(v).all(), cfg[0]
        if cfg[6] == "zero" and not v.abs().max() < 1e-3:
            failures.append(f"{cfg[0]}: perfect prediction gives {v.max().item():.3g}, minimum is 0")
        # and it is the minimum: a random prediction does not go below
        noisy = call(loss, inputs_for(kind, torch.randn_like(onehot) * 2.0), y)
        assert noisy.min() >= v.max() - 1e-9, cfg[0]
    assert not failures, "; ".join(failures)


@SETTINGS
@given(case=cases())
def test_perfect_probabilities_give_exact_zero_for_overlap_losses(case):
    _, y, _, onehot = tensors(case)
    for name in OVERLAP:
        for batch in (False, True):
            loss = ext.get_loss(name, to_onehot_y=case["target_kind"] == "index", batch=batch)
            v = call(loss, onehot, y)
            assert abs(v.item()) < 1e-5, f"{name} batch={batch}: {v.item()}"


# ----------------------------------------------------------------------------------------------------
# invariance to the order of the batch
# ----------------------------------------------------------------------------------------------------


@SETTINGS
@given(case=cases(max_b=4), data=st.data())
def test_batch_permutation_invariance(case, data):
    logits, y, _, _ = tensors(case)
    perm = torch.tensor(data.draw(st.permutations(list(range(case["b"])))))
    for cfg in CONFIGS:
        loss, kind = build(cfg, case["target_kind"], case["c"])
        x = inputs_for(kind, logits)
        a = call(loss, x, y)
        b = call(loss, x[perm], y[perm])
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10, msg=lambda m, name=cfg[0]: f"{name}: {m}")


# ----------------------------------------------------------------------------------------------------
# empty target + empty prediction
# ----------------------------------------------------------------------------------------------------


@SETTINGS
@given(case=cases())
def test_empty_class_scores_zero(case):
    """A class absent from the target and predicted with probability exactly 0 scores 0 for its (b, c) term,
    never NaN, for every overlap loss (reduction="none")."""
    g = torch.Generator().manual_seed(case["seed"])
    b, c, sp = case["b"], case["c"], case["spatial"]
    lab = torch.randint(0, c - 1, (b, 1) + sp, generator=g)  # the last class never occurs
    onehot = torch.zeros((b, c) + sp, dtype=torch.float64).scatter_(1, lab, 1.0)
    p = torch.softmax(torch.randn((b, c) + sp, generator=g, dtype=torch.float64) * case["scale"], 1)
    p[:, -1] = 0.0
    p = p / p.sum(1, keepdim=True)
    y = lab.double() if case["target_kind"] == "index" else onehot
    for name in ["dice", "jaccard", "tversky", "focal_tversky", "log_cosh_dice", "sensitivity_specificity"]:
        for batch in (False, True):
            v = call(
                ext.get_loss(name, to_onehot_y=case["target_kind"] == "index", reduction="none", batch=batch), p, y
            )
            assert torch.isfinite(v).all(), name
            v = v.reshape(c) if batch else v.reshape(b, c)
            assert v[..., -1].abs().max() < 1e-5, f"{name} batch={batch}: empty class scores {v[..., -1]}"
            if c >= 3:  # the prediction is imperfect on the present classes, so they do not score 0
                assert (v[..., :-1] > 1e-3).all(), f"{name}: present classes must not score 0 here"


@SETTINGS
@given(case=cases())
def test_empty_patch_and_empty_prediction(case):
    """Binary lesion task on a lesion-free patch predicted lesion-free (sigmoid logits -30): every loss finite,
    overlap losses 0, gradients finite."""
    b, sp = case["b"], case["spatial"]
    x = torch.full((b, 1) + sp, -30.0, dtype=torch.float64, requires_grad=True)
    y = torch.zeros((b, 1) + sp, dtype=torch.float64)
    for name in ["dice", "jaccard", "tversky", "focal_tversky", "log_cosh_dice", "generalized_dice"]:
        for batch in (False, True):
            v = call(ext.get_loss(name, sigmoid=True, batch=batch), x, y)
            # 1e-4: sigmoid(-30) ~ 1e-13 per voxel; focal Tversky's power 0.75 lifts the 1e-7 residual to 1e-5
            assert torch.isfinite(v) and abs(v.item()) < 1e-4, f"{name} batch={batch}: {v.item()}"
            (gx,) = torch.autograd.grad(v, x)
            assert torch.isfinite(gx).all(), name
    for name, kw in [
        ("sensitivity_specificity", dict(sigmoid=True)),
        ("weighted_bce", dict()),
        ("focal", dict()),
        ("dice_ce", dict(sigmoid=True)),
        ("dice_focal", dict(sigmoid=True)),
        ("combo", dict(sigmoid=True)),
        ("unified_focal", dict(sigmoid=True)),
        ("lovasz_softmax", dict(sigmoid=True, softmax=False)),
    ]:
        v = call(ext.get_loss(name, **kw), x, y)
        assert torch.isfinite(v) and v.item() < 1e-3, f"{name}: empty patch, empty prediction gives {v.item()}"
        (gx,) = torch.autograd.grad(v, x)
        assert torch.isfinite(gx).all(), name


# ----------------------------------------------------------------------------------------------------
# half precision
# ----------------------------------------------------------------------------------------------------

HALF_TOL = 1e-2


@SETTINGS
@given(case=cases(), half=st.sampled_from([torch.float16, torch.bfloat16]))
def test_half_inputs_close_to_fp32(case, half):
    """fp16 / bf16 input: a float32 loss (spec), finite, within 1e-2 relative of the fp32 loss on the same
    (rounded) values; the gradient reaches the half input and is finite."""
    logits, y, _, _ = tensors(case, dtype=torch.float32)
    for cfg in CONFIGS:
        loss, kind = build(cfg, case["target_kind"], case["c"])
        xh = inputs_for(kind, logits.double()).to(half)
        x32 = xh.float()
        ref = call(loss, x32, y.float())
        xh = xh.detach().requires_grad_(True)
        v = call(loss, xh, y)
        assert v.dtype == torch.float32, f"{cfg[0]}: {half} input gave a {v.dtype} loss (spec: float32)"
        assert torch.isfinite(v).all(), cfg[0]
        torch.testing.assert_close(v, ref, rtol=HALF_TOL, atol=1e-4, msg=lambda m, name=cfg[0]: f"{name} {half}: {m}")
        v.sum().backward()
        assert xh.grad is not None and xh.grad.dtype == half and torch.isfinite(xh.grad).all(), cfg[0]


@SETTINGS
@given(case=cases(), half=st.sampled_from([torch.float16, torch.bfloat16]))
def test_autocast_close_to_fp32(case, half):
    """Under torch.autocast("cpu") with a small conv producing the logits (as in training)."""
    logits, y, _, _ = tensors(case, dtype=torch.float32)
    dim = logits.ndim - 2
    conv = (torch.nn.Conv2d if dim == 2 else torch.nn.Conv3d)(case["c"], case["c"], 1)
    torch.manual_seed(case["seed"] % 1000)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(case["c"]).reshape(conv.weight.shape) + 0.05 * torch.randn(conv.weight.shape))
        conv.bias.zero_()
    for cfg in CONFIGS:
        loss, kind = build(cfg, case["target_kind"], case["c"])
        with torch.autocast("cpu", dtype=half):
            out = conv(logits)
            x = torch.softmax(out.float(), 1).to(out.dtype) if kind == "probs" else out
            v = call(loss, x, y)
        ref = call(loss, x.float(), y)
        assert torch.isfinite(v).all(), f"{cfg[0]} {half}"
        torch.testing.assert_close(
            v.float(), ref, rtol=HALF_TOL, atol=1e-4, msg=lambda m, name=cfg[0]: f"{name} {half}: {m}"
        )


# ----------------------------------------------------------------------------------------------------
# large logits
# ----------------------------------------------------------------------------------------------------


@SETTINGS
@given(case=cases(), magnitude=st.sampled_from([20.0, 50.0, 100.0]))
def test_large_logits_finite(case, magnitude):
    """Random logits of magnitude up to 100 (confidently right and confidently wrong voxels): values and
    gradients finite, in float32 and float64."""
    logits, y, _, onehot = tensors(case)
    g = torch.Generator().manual_seed(case["seed"] + 1)
    signs = torch.where(torch.rand(logits.shape, generator=g, dtype=torch.float64) < 0.5, -1.0, 1.0)
    big = signs * magnitude + torch.randn(logits.shape, generator=g, dtype=torch.float64)
    for dtype in (torch.float32, torch.float64):
        for cfg in CONFIGS:
            loss, kind = build(cfg, case["target_kind"], case["c"])
            if kind == "probs":
                continue  # probabilities are bounded; covered by the softmax variant
            x = big.to(dtype).requires_grad_(True)
            v = call(loss, x, y.to(dtype))
            assert torch.isfinite(v).all(), f"{cfg[0]} {dtype}: {v}"
            v.sum().backward()
            assert torch.isfinite(x.grad).all(), f"{cfg[0]} {dtype}: non-finite gradient"


def test_properties_are_not_vacuous():
    """A random prediction scores clearly above the perfect one for every configuration."""
    logits, y, _, onehot = tensors(dict(seed=1, b=2, c=3, spatial=(4, 4, 3), scale=2.0, target_kind="index"))
    for cfg in CONFIGS:
        loss, kind = build(cfg, "index", 3)
        v = call(loss, inputs_for(kind, logits), y)
        best = call(loss, onehot if kind == "probs" else 30.0 * (2 * onehot - 1), y)
        assert v.item() > best.item() + 1e-2, f"{cfg[0]}: random {v.item()} vs perfect {best.item()}"


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
