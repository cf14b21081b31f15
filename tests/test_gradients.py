"""Analytical input gradients of every registered differentiable loss against finite differences
(torch.autograd.gradcheck, float64: random-projection ("fast_mode") on 2 x 3 x 3x4x3 for every configuration,
full Jacobian on 2 x 3 x 2x2x2 for the first configuration of each loss), with index and one-hot targets where both
apply; finite gradients on 1-voxel targets and on all-empty targets.

Every name in ``list_losses()`` must have an entry in CONFIGS below (or in NOT_COVERED with a reason), so a
newly registered loss cannot slip through untested.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import monai_losses_ext as ext

B, C, SPATIAL = 2, 3, (3, 4, 3)
SMALL = (2, 2, 2)  # full-Jacobian gradcheck size (fast_mode gradcheck runs on SPATIAL)


def _softmax_kw(target):
    return dict(softmax=True, to_onehot_y=target == "index")


# name -> list of (constructor kwargs, target kind ("index" | "onehot" | "binary"), channels).
# kwargs may be a callable target -> kwargs.
CONFIGS = {
    "dice": [
        (_softmax_kw, "index", C),
        (_softmax_kw, "onehot", C),
        (lambda t: dict(_softmax_kw(t), squared_pred=True, batch=True), "onehot", C),
        (lambda t: dict(_softmax_kw(t), jaccard=True, include_background=False, ignore_index=255), "index", C),
        (dict(sigmoid=True), "binary", 1),
    ],
    "jaccard": [(_softmax_kw, "index", C), (_softmax_kw, "onehot", C)],
    "tversky": [
        (lambda t: dict(_softmax_kw(t), alpha=0.3, beta=0.7), "index", C),
        (lambda t: dict(_softmax_kw(t), batch=True), "onehot", C),
    ],
    "focal_tversky": [
        (_softmax_kw, "index", C),
        (_softmax_kw, "onehot", C),
        (dict(sigmoid=True, gamma=1.5), "binary", 1),
    ],
    "generalized_dice": [
        (_softmax_kw, "index", C),
        (lambda t: dict(_softmax_kw(t), w_type="simple", batch=True), "onehot", C),
    ],
    "log_cosh_dice": [(_softmax_kw, "index", C), (_softmax_kw, "onehot", C)],
    "sensitivity_specificity": [(_softmax_kw, "index", C), (lambda t: dict(_softmax_kw(t), r=0.3), "onehot", C)],
    "weighted_ce": [
        (dict(weight=[0.5, 1.0, 2.0]), "index", C),
        (dict(label_smoothing=0.1), "onehot", C),
        (dict(ignore_index=255), "index", C),
    ],
    "weighted_bce": [
        (dict(pos_weight=3.0, to_onehot_y=True), "index", C),
        (dict(pos_weight=[1.0, 2.0, 5.0]), "onehot", C),
        (dict(pos_weight=4.0), "binary", 1),
    ],
    "focal": [
        (dict(to_onehot_y=True), "index", C),
        (dict(use_softmax=True, alpha=0.25), "onehot", C),
        (dict(to_onehot_y=True, use_softmax=True, gamma=0.5, ignore_index=255), "index", C),
        (dict(gamma=2.0, alpha=0.25), "binary", 1),
    ],
    "topk_ce": [(dict(k=20), "index", C), (dict(k=30, weight=[1.0, 2.0, 3.0]), "onehot", C)],
    "dice_ce": [(_softmax_kw, "index", C), (_softmax_kw, "onehot", C), (dict(sigmoid=True), "binary", 1)],
    "dice_focal": [(_softmax_kw, "index", C), (lambda t: dict(_softmax_kw(t), gamma=1.0, alpha=0.3), "onehot", C)],
    "dice_topk": [
        (lambda t: dict(_softmax_kw(t), k=20), "index", C),
        (lambda t: dict(_softmax_kw(t), k=20), "onehot", C),
    ],
    "combo": [
        (_softmax_kw, "index", C),
        (lambda t: dict(_softmax_kw(t), alpha=0.3, beta=0.7), "onehot", C),
        (dict(sigmoid=True), "binary", 1),
    ],
    "unified_focal": [
        (_softmax_kw, "index", C),
        (lambda t: dict(_softmax_kw(t), asymmetric=False), "onehot", C),
        (dict(sigmoid=True), "binary", 1),
    ],
    "exp_log": [
        (_softmax_kw, "index", C),
        (lambda t: dict(_softmax_kw(t), class_frequencies=[5.0, 2.0, 1.0]), "onehot", C),
    ],
    "compound": [
        (
            lambda t: dict(terms={"dice": (ext.DiceLoss(**_softmax_kw(t)), 0.6), "ce": (ext.WeightedCELoss(), 0.4)}),
            "index",
            C,
        ),
        (
            lambda t: dict(terms={"tv": (ext.TverskyLoss(**_softmax_kw(t)), 1.0), "f": (ext.FocalLoss(), 2.0)}),
            "onehot",
            C,
        ),
    ],
    "generalized_dice_focal": [
        (_softmax_kw, "index", C),
        (lambda t: dict(sigmoid=True, w_type="simple", batch=True, weight=[1.0, 2.0, 0.5]), "onehot", C),
    ],
    "asymmetric_unified_focal": [(dict(sigmoid=True, weight=0.3, gamma=0.4), "binary", 1)],
    "lovasz_softmax": [
        (dict(), "index", C),
        (dict(to_onehot_y=False, per_image=True), "onehot", C),
        (dict(classes="all", include_background=False), "index", C),
    ],
}


# geometry losses read precomputed maps, passed as forward keyword arguments: any fixed map will do for a
# gradient check, so these are random (signed / unsigned distance maps, U-Net weight map, lesion ids)
def _maps(seed):
    g = torch.Generator().manual_seed(seed)
    lab = torch.randint(0, C, (B, 1) + SPATIAL, generator=g)
    return dict(
        distance_map_signed=torch.randn((B, C) + SPATIAL, generator=g, dtype=torch.float64) * 2,
        distance_map_unsigned=torch.rand((B, C) + SPATIAL, generator=g, dtype=torch.float64) * 3,
        weight_map=torch.rand((B, 1) + SPATIAL, generator=g, dtype=torch.float64) * 5 + 0.5,
        lab=lab,
    )


def _instances(lab):
    """lesion ids 1..3 on the foreground voxels of the index target, 0 elsewhere"""
    ids = (torch.arange(lab.numel()).reshape(lab.shape) % 3) + 1
    return torch.where(lab > 0, ids, 0)


CONFIGS.update(
    {
        "boundary": [
            (_softmax_kw, "index", C, lambda m: dict(distance_map=m["distance_map_signed"])),
            (
                lambda t: dict(_softmax_kw(t), include_background=False, batch=True),
                "onehot",
                C,
                lambda m: dict(distance_map=m["distance_map_signed"]),
            ),
        ],
        "hausdorff_dt": [
            (_softmax_kw, "index", C, lambda m: dict(distance_map=m["distance_map_unsigned"])),
            (
                lambda t: dict(_softmax_kw(t), alpha=1.0, include_background=True),
                "onehot",
                C,
                lambda m: dict(distance_map=m["distance_map_unsigned"]),
            ),
        ],
        "log_hausdorff_dt": [
            (_softmax_kw, "index", C, lambda m: dict(distance_map=m["distance_map_unsigned"])),
            (lambda t: dict(_softmax_kw(t), alpha=1.0, include_background=True), "onehot", C),
        ],
        "masked_dice": [
            (_softmax_kw, "index", C, lambda m: dict(mask=(m["weight_map"] > 2).double())),
            (
                lambda t: dict(_softmax_kw(t), squared_pred=True),
                "onehot",
                C,
                lambda m: dict(mask=m["weight_map"] / 6),  # a soft mask in (0, 1)
            ),
        ],
        "dice_boundary": [
            (
                lambda t: dict(_softmax_kw(t), alpha=0.5),
                "index",
                C,
                lambda m: dict(distance_map=m["distance_map_signed"]),
            ),
            (
                lambda t: dict(_softmax_kw(t), alpha=0.3),
                "onehot",
                C,
                lambda m: dict(distance_map=m["distance_map_signed"]),
            ),
        ],
        "weight_map_ce": [
            (dict(), "index", C, lambda m: dict(weight_map=m["weight_map"])),
            (dict(label_smoothing=0.1), "onehot", C, lambda m: dict(weight_map=m["weight_map"])),
        ],
        "blob": [
            (_softmax_kw, "index", C, lambda m: dict(instances=_instances(m["lab"]))),
            (
                lambda t: dict(_softmax_kw(t), region="tversky"),
                "onehot",
                C,
                lambda m: dict(instances=_instances(m["lab"])),
            ),
        ],
    }
)

# losses that cannot be called as loss(input, target) with these tensors; each needs a reason
NOT_COVERED: dict[str, str] = {}


def _target(kind, channels, seed, ignore=False, lab=None):
    g = torch.Generator().manual_seed(seed)
    if lab is None:
        lab = torch.randint(0, C, (B, 1) + SPATIAL, generator=g)
    if kind == "binary":
        return (lab == 1).to(torch.float64)
    if ignore:
        lab = lab.clone()
        lab[:, :, 0, 0, 0] = 255
    if kind == "index":
        return lab.to(torch.float64)
    oh = torch.zeros((B, C) + tuple(lab.shape[2:]), dtype=torch.float64)
    return oh.scatter_(1, lab.clamp(max=C - 1), 1.0)


def _build(name, kw, kind):
    kw = kw(kind) if callable(kw) else dict(kw)
    return ext.get_loss(name, **kw), kw


def _cases():
    out = []
    for name, cfgs in CONFIGS.items():
        for i, cfg in enumerate(cfgs):
            kw, kind, ch = cfg[:3]
            fwd = cfg[3] if len(cfg) > 3 else None
            out.append(pytest.param(name, kw, kind, ch, fwd, id=f"{name}-{kind}-{i}"))
    return out


def test_every_registered_loss_has_a_gradient_test():
    names = set(ext.list_losses())
    missing = names - set(CONFIGS) - set(NOT_COVERED)
    assert not missing, f"registered losses without a gradient test: {sorted(missing)}"
    unknown = set(CONFIGS) - names
    assert not unknown, f"CONFIGS names not registered: {sorted(unknown)}"


def _full_cases():
    seen, out = set(), []
    for p in _cases():
        if p.values[0] not in seen:
            seen.add(p.values[0])
            out.append(pytest.param(*p.values, True, id=p.id + "-full"))
    return out


@pytest.mark.parametrize(
    "name,kw,kind,ch,fwd,full", [pytest.param(*p.values, False, id=p.id) for p in _cases()] + _full_cases()
)
def test_gradcheck(name, kw, kind, ch, fwd, full):
    loss, kwargs = _build(name, kw, kind)
    seed = sum(map(ord, name + kind))
    g = torch.Generator().manual_seed(seed)
    spatial = SMALL if full else SPATIAL
    x = (torch.randn((B, ch) + spatial, generator=g, dtype=torch.float64) * 1.5).requires_grad_(True)
    maps = {k: v[(slice(None), slice(None)) + tuple(slice(0, n) for n in spatial)] for k, v in _maps(seed).items()}
    y = _target(kind, ch, seed, ignore=kwargs.get("ignore_index") == 255, lab=maps["lab"])
    extra = fwd(maps) if fwd else {}

    def f(inp):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return loss(inp, y, **extra)

    out = f(x)
    assert out.dtype == torch.float64, f"{name}: float64 input must give a float64 loss, got {out.dtype}"
    assert out.ndim == 0 and torch.isfinite(out)
    (grad,) = torch.autograd.grad(out, x)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0, f"{name}: gradient zero or not finite"
    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=not full)


def _edge_target(kind, which):
    """which: 'one_voxel' (class 1 at a single voxel, rest background) or 'empty' (all background)."""
    lab = torch.zeros((B, 1) + SPATIAL, dtype=torch.long)
    if which == "one_voxel":
        lab[0, 0, 1, 2, 1] = 1
        lab[1, 0, 0, 0, 0] = 2
    if kind == "binary":
        return (lab == 1).to(torch.float64)
    if kind == "index":
        return lab.to(torch.float64)
    return torch.zeros((B, C) + SPATIAL, dtype=torch.float64).scatter_(1, lab, 1.0)


@pytest.mark.parametrize("which", ["one_voxel", "empty"])
@pytest.mark.parametrize("name,kw,kind,ch,fwd", _cases())
def test_finite_gradients_on_tiny_and_empty_targets(name, kw, kind, ch, fwd, which):
    """Maps, where a loss reads them, are computed by the loss itself from this target (its documented
    fallback), so that they describe the 1-voxel / empty target."""
    loss, kwargs = _build(name, kw, kind)
    y = _edge_target(kind, which)
    for scale in (1.0, 8.0):
        g = torch.Generator().manual_seed(3)
        x = (torch.randn((B, ch) + SPATIAL, generator=g, dtype=torch.float32) * scale).requires_grad_(True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = loss(x, y.float())
        assert torch.isfinite(out).all(), f"{name} {which}: loss {out}"
        out.sum().backward()
        assert torch.isfinite(x.grad).all(), f"{name} {which} scale={scale}: non-finite gradient"
