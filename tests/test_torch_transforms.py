"""The fused loss kernels (torch.autograd.Functions) under PyTorch's function transforms, and soft-target gradients.

Covers:

* torch.compile: every registered loss (one configuration of each from ``test_properties.CONFIGS``) equals eager
  mode, value and input gradient within 1e-6 relative, under ``backend="aot_eager"`` and ``backend="inductor"``, at
  C=2 and C=4, on a batch with an all-background sample (and, for C=4, a class absent from the batch); index labels
  at C=2, one-hot targets at C=4. To keep the sweep cheap, the losses that compile without a graph break run
  together in one module (both class counts), each with its own input leaf, so each is still compared on its own;
  every graph dynamo captures is compiled by both backends and the test picks which version runs, so one dynamo
  trace serves both; inductor generates scalar C++ (``cpp.vec_isa_ok=False``), which cuts its code generation and
  compile time while lowering the same graphs. The few losses with data-dependent Python outside the kernels
  (graph breaks) are compiled one by one. The value checks (``validate``) are host syncs that break graphs by
  design, so they are off. Cost: the first run on a machine compiles every graph (minutes); later runs reuse
  torch's on-disk compile caches.
* ``torch.compile(fullgraph=True)`` for DiceLoss, DiceCELoss, TverskyLoss and FocalLoss with ``validate=False``
  (softmax with index labels, sigmoid with one-hot targets), and the original regression (DiceCE, C=2, one
  all-background sample, validation on) under aot_eager.
* torch.func: ``grad``, ``vmap`` and ``vmap(grad)`` of every loss whose autograd graph holds a fused kernel (one
  configuration each, both target layouts) against per-sample eager autograd (not vmapped: Lovász, which ranks the
  voxels with data-dependent Python, and LogHausdorffDT, whose NumPy distance transform of the prediction rules out
  grad as well); second derivatives (create_graph then backward, ``hessian``) and forward-mode derivatives (``jvp``,
  ``jacfwd``) raise the kernels' clear RuntimeError.
* soft targets that require grad: the target gradient equals MONAI's (Dice, Tversky, generalised Dice, DiceCE,
  DiceFocal, sigmoid and softmax Focal; ``soft_label`` False and True where MONAI has it), and, for the statistics
  kernel and the per-voxel-sum losses, the plain autograd gradient of the same formula in float64; nothing extra is
  kept for backward when the target needs no gradient.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import warnings

import monai
import pytest
import torch
from test_properties import CONFIGS, build
from torch._inductor.compile_fx import compile_fx
from torch.func import grad, hessian, jacfwd, jvp, vmap

import monai_losses_ext as ext
from monai_losses_ext.losses import compound
from monai_losses_ext.losses._inputs import prepare
from monai_losses_ext.losses._stats import MOMENTS, region_sums
from monai_losses_ext.losses.pixel import _voxel_sums_forward, voxel_sums

SPATIAL = (6, 5, 4)
# losses whose own Python (outside the fused kernels) is data-dependent, so torch.compile breaks their graph:
# they are compiled one by one (a break inside the batched module would fall back to compiling each frame anyway)
GRAPH_BREAKING = {"masked_dice", "lovasz_softmax", "log_hausdorff_dt", "blob"}
FUSED = {"_RegionSumsBackward", "_FocalTermsBackward", "_VoxelSumsBackward", "_ForegroundProbBackward"}


def _configs_per_loss():
    """One configuration of each registered loss: its first one that applies an activation, else its first."""
    chosen = {}
    for cfg in CONFIGS:
        if cfg[1] not in chosen or (chosen[cfg[1]][3] != "logits" and cfg[3] == "logits"):
            chosen[cfg[1]] = cfg
    return [chosen[name] for name in sorted(chosen)]


def _no_validation(loss):
    for m in loss.modules():
        if hasattr(m, "validate"):
            m.validate = False
    return loss


def _extras(loss, b, c, g, dtype):
    """The optional maps a loss's forward takes (distance map, weight map, lesion instances, mask), given so that
    no map is computed on the fly (a NumPy/SciPy transform of the target that dynamo cannot trace)."""
    params = inspect.signature(loss.forward).parameters
    extra = {}
    if "distance_map" in params:
        extra["distance_map"] = torch.randn((b, c, *SPATIAL), generator=g, dtype=dtype).abs()
    if "weight_map" in params:
        extra["weight_map"] = torch.rand((b, 1, *SPATIAL), generator=g, dtype=dtype) + 0.5
    if "instances" in params:
        extra["instances"] = torch.randint(0, 3, (b, 1, *SPATIAL), generator=g)
    if "mask" in params:
        extra["mask"] = (torch.rand((b, 1, *SPATIAL), generator=g) > 0.3).to(dtype)
    return extra


def _labels(b, c, g):
    """Index labels with empty classes: sample 0 is all background and, for C > 2, class C - 1 is absent."""
    lab = torch.randint(0, c, (b, 1, *SPATIAL), generator=g)
    lab[0] = 0
    if c > 2:
        lab[lab == c - 1] = 0
    return lab


def _case(cfg, kind, c, b=2, dtype=torch.float32, seed=0):
    """(label, loss, input, target, extra forward arguments) of one configuration."""
    g = torch.Generator().manual_seed(seed)
    loss, inp = build(cfg, kind, c)
    loss = _no_validation(loss)
    x = torch.randn((b, c, *SPATIAL), generator=g, dtype=dtype) * 2
    if inp == "probs":
        x = torch.softmax(x, 1)
    lab = _labels(b, c, g)
    y = lab if kind == "index" else torch.zeros((b, c, *SPATIAL), dtype=dtype).scatter_(1, lab, 1.0)
    return f"{cfg[0]}/{kind}", loss, x, y, _extras(loss, b, c, g, dtype)


class _Batch(torch.nn.Module):
    """Several losses in one module: one compilation for all of them; each loss reads its own input. Returns the
    stacked (summed) losses: one graph output, whatever the losses' shapes."""

    def __init__(self, losses):
        super().__init__()
        self.losses = torch.nn.ModuleList(losses)

    def forward(self, xs, ys, extras):
        return torch.stack([loss(x, y, **e).sum() for loss, x, y, e in zip(self.losses, xs, ys, extras)])


INDUCTOR_OPTIONS = {"cpp.vec_isa_ok": False}  # scalar C++: the same graphs lowered, far less to generate and build


class _TwoBackends:
    """A torch.compile backend that compiles every graph dynamo captures twice, with aot_eager and with inductor;
    ``use`` picks which compiled version runs. One dynamo trace (guards, graph breaks) then serves both backends."""

    def __init__(self) -> None:
        self.use = "inductor"
        self._aot_eager = torch._dynamo.lookup_backend("aot_eager")

    def __call__(self, gm, example_inputs):
        compiled = {
            "aot_eager": self._aot_eager(copy.deepcopy(gm), example_inputs),
            "inductor": compile_fx(gm, example_inputs, config_patches=INDUCTOR_OPTIONS),
        }
        return lambda *args: compiled[self.use](*args)


def _leaves(cases):
    return [c[2].clone().requires_grad_(True) for c in cases]


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _compile_mismatches(cases):
    """Compile ``_Batch`` of the cases and run it in eager mode and with each backend; the labels (with the error)
    of the cases whose value or input gradient differs from eager mode by more than 1e-6 relative."""
    torch._dynamo.reset()
    module = _Batch([c[1] for c in cases])
    backends = _TwoBackends()
    compiled = torch.compile(module, backend=backends)
    results = {}
    for name, fn in (("eager", module), ("inductor", compiled), ("aot_eager", compiled)):
        if name != "eager":
            backends.use = name
        xs = _leaves(cases)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = fn(xs, [c[3] for c in cases], [c[4] for c in cases])
        results[name] = (out.detach(), torch.autograd.grad(out.sum(), xs))
    ref_v, ref_g = results.pop("eager")
    bad = []
    for name, (vals, grads) in results.items():
        for i, c in enumerate(cases):
            err = max(_rel(vals[i], ref_v[i]), _rel(grads[i], ref_g[i]))
            if not err <= 1e-6:
                bad.append(f"{name} {c[0]}: {err:.2e}")
    return bad


def _kind(c):
    return "index" if c == 2 else "onehot"  # both target layouts, one per class count (each compile is costly)


def test_compile_matches_eager():
    """Every loss without a graph break, at C=2 and C=4, in one module: one dynamo trace, two backends."""
    cases = [_case(cfg, _kind(c), c) for c in (2, 4) for cfg in _configs_per_loss() if cfg[1] not in GRAPH_BREAKING]
    assert len(cases) >= 2 * (len(ext.list_losses()) - len(GRAPH_BREAKING))
    assert not _compile_mismatches(cases)


@pytest.mark.parametrize("c", [2, 4])
@pytest.mark.parametrize("name", sorted(GRAPH_BREAKING))
def test_compile_matches_eager_graph_breaking(name, c):
    (cfg,) = [cfg for cfg in _configs_per_loss() if cfg[1] == name]
    assert not _compile_mismatches([_case(cfg, _kind(c), c)])


def test_compile_covers_every_registered_loss():
    assert {cfg[1] for cfg in _configs_per_loss()} == set(ext.list_losses())
    assert GRAPH_BREAKING <= set(ext.list_losses())


def test_compile_dice_ce_regression():
    """The original report: DiceCE (softmax, index labels, C=2, one all-background sample, value checks on) under
    aot_eager differed from eager by 4% (a sample's scatter-add landed in another sample's row)."""
    torch.manual_seed(0)
    x = torch.randn(2, 2, 8, 8, 8)
    y = torch.randint(0, 2, (2, 1, 8, 8, 8))
    y[0] = 0
    loss = ext.DiceCELoss(softmax=True, to_onehot_y=True)
    torch._dynamo.reset()
    compiled = torch.compile(loss, backend="aot_eager")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _rel(compiled(x, y), loss(x, y)) <= 1e-6
        p = prepare(x, y, softmax=True, to_onehot_y=True)
        ref = region_sums(p, ("tp", "sp", "sg", "n", "nll"))
        got = torch.compile(lambda q: region_sums(q, ("tp", "sp", "sg", "n", "nll")), backend="aot_eager")(p)
    for k in ref:
        assert _rel(got[k], ref[k]) <= 1e-6, k


FULLGRAPH = [
    ("DiceLoss", lambda act: ext.DiceLoss(validate=False, **act)),
    ("DiceCELoss", lambda act: ext.DiceCELoss(validate=False, **act)),
    ("TverskyLoss", lambda act: ext.TverskyLoss(alpha=0.3, beta=0.7, validate=False, **act)),
    (
        "FocalLoss",
        lambda act: ext.FocalLoss(
            use_softmax=act.get("softmax", False), to_onehot_y=act["to_onehot_y"], validate=False
        ),
    ),
]


@pytest.mark.parametrize("mode", ["softmax-index", "sigmoid-onehot"])
@pytest.mark.parametrize("name,make", FULLGRAPH, ids=[f[0] for f in FULLGRAPH])
def test_fullgraph(name, make, mode):
    c = 3
    g = torch.Generator().manual_seed(1)
    x = torch.randn((2, c, *SPATIAL), generator=g, requires_grad=True)
    lab = _labels(2, c, g)
    if mode == "softmax-index":
        loss, y = make({"softmax": True, "to_onehot_y": True}), lab
    else:
        loss, y = make({"sigmoid": True, "to_onehot_y": False}), torch.zeros_like(x).scatter_(1, lab, 1.0)
    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")  # raises on any graph break
    v = compiled(x, y)
    (gx,) = torch.autograd.grad(v, x)
    ref = loss(x, y)
    (rx,) = torch.autograd.grad(ref, x)
    assert _rel(v, ref) <= 1e-6 and _rel(gx, rx) <= 1e-6


# ---------------------------------------------------------------------------------------------------------------
# torch.func
# ---------------------------------------------------------------------------------------------------------------


def _kernels(out):
    """Names of the fused kernels' backward nodes in the autograd graph of ``out``."""
    seen, stack, found = set(), [out.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ in FUSED:
            found.add(type(node).__name__)
        stack += [f for f, _ in node.next_functions]
    return found


# not vmappable for reasons outside the kernels: Lovász ranks the voxels with data-dependent Python into buffers
# written in place, LogHausdorffDT runs a NumPy distance transform of the prediction (not even grad), and BlobLoss
# sizes its per-lesion sums by the number of lesions (vmap is checked with instances shared by the samples)
NOT_VMAPPABLE = {"lovasz_softmax", "log_hausdorff_dt", "blob"}
UNFUSED = {"weighted_ce", "weighted_bce", "topk_ce", "weight_map_ce"}  # PyTorch's own kernels, no fused Function
FUNC_CASES = [
    (cfg, kind)
    for cfg in _configs_per_loss()
    if cfg[1] not in UNFUSED | {"log_hausdorff_dt"}
    for kind in ("index", "onehot")
]


def test_unfused_losses_have_no_fused_kernel():
    for cfg in CONFIGS:
        if cfg[1] in UNFUSED:
            _, loss, x, y, extra = _case(cfg, "index", 3)
            assert not _kernels(loss(x.requires_grad_(True), y, **extra)), cfg[0]


@pytest.mark.parametrize("cfg,kind", FUNC_CASES, ids=[f"{c[0]}/{k}" for c, k in FUNC_CASES])
def test_torch_func(cfg, kind):
    _, loss, x, y, extra = _case(cfg, kind, 3, b=3, dtype=torch.float64, seed=2)
    assert _kernels(loss(x.clone().requires_grad_(True), y, **extra)), "no fused kernel on this loss's path"
    # BlobLoss: one lesion map for every sample (its number of lesions sizes a tensor, which vmap cannot batch)
    shared = {k: v[0] for k, v in extra.items() if cfg[1] == "blob"}
    per_sample = {k: v for k, v in extra.items() if k not in shared}

    def f(xi, yi, *maps):
        e = {k: m.unsqueeze(0) for k, m in zip(per_sample, maps)}
        e.update({k: m.unsqueeze(0) for k, m in shared.items()})
        return loss(xi.unsqueeze(0), yi.unsqueeze(0), **e)

    values, grads = [], []
    for i in range(x.shape[0]):
        xi = x[i].clone().requires_grad_(True)
        v = f(xi, y[i], *[m[i] for m in per_sample.values()])
        values.append(v.detach())
        grads.append(torch.autograd.grad(v, xi)[0])
    g1 = grad(f)(x[1], y[1], *[m[1] for m in per_sample.values()])
    assert torch.allclose(g1, grads[1], rtol=1e-9, atol=1e-12)
    if cfg[1] in NOT_VMAPPABLE - {"blob"}:
        return
    v = vmap(f)(x, y, *per_sample.values())
    vg = vmap(grad(f))(x, y, *per_sample.values())
    assert torch.allclose(v, torch.stack(values), rtol=1e-9, atol=1e-12)
    assert torch.allclose(vg, torch.stack(grads), rtol=1e-9, atol=1e-12)


KERNEL_LOSSES = {
    "_RegionSums": (lambda: ext.DiceCELoss(softmax=True, to_onehot_y=True, validate=False), "monai.losses."),
    "_FocalTerms": (lambda: ext.FocalLoss(use_softmax=True, to_onehot_y=True, validate=False), "monai.losses.Focal"),
    "_VoxelSums": (lambda: _VoxelSumsLoss(), "plain PyTorch"),
    "_ForegroundProb": (lambda: ext.BlobLoss(softmax=True, to_onehot_y=True, alpha=0.0, validate=False), "softmax"),
}


class _VoxelSumsLoss(torch.nn.Module):
    """The per-voxel-sum kernel alone (the losses using it also run the statistics kernel)."""

    def forward(self, x, y):
        prep = prepare(x, y, softmax=True, to_onehot_y=True, validate=False)
        return voxel_sums(lambda xc, gc, vc: -(gc * torch.log_softmax(xc, 0)), prep).sum()


@pytest.mark.parametrize("kernel", sorted(KERNEL_LOSSES))
def test_higher_order_derivatives_raise_clearly(kernel):
    make, alternative = KERNEL_LOSSES[kernel]
    loss = make()
    g = torch.Generator().manual_seed(3)
    x = torch.randn((2, 3, *SPATIAL), generator=g, dtype=torch.float64)
    y = _labels(2, 3, g)
    inst = torch.randint(0, 3, (2, 1, *SPATIAL), generator=g)
    extra = {"instances": inst} if kernel == "_ForegroundProb" else {}
    f = lambda xi: loss(xi, y, **extra)  # noqa: E731

    def create_graph_then_backward():
        xr = x.clone().requires_grad_(True)
        (gx,) = torch.autograd.grad(f(xr), xr, create_graph=True)
        torch.autograd.grad(gx.square().sum(), xr)

    attempts = {
        "double backward": create_graph_then_backward,
        "hessian": lambda: hessian(f)(x),
        "jvp": lambda: jvp(f, (x,), (torch.ones_like(x),)),
        "jacfwd": lambda: jacfwd(f)(x),
    }
    for what, attempt in attempts.items():
        with pytest.raises(RuntimeError) as info:
            attempt()
        msg = str(info.value)
        assert kernel in msg and "second derivatives" in msg and "not supported" in msg, (what, msg)
        assert "forward-mode" in msg and alternative in msg, (what, msg)
    # a first derivative with create_graph=True (no second one) still works
    xr = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(f(xr), xr, create_graph=True)
    (ref,) = torch.autograd.grad(f(xr), xr)
    assert torch.equal(gx.detach(), ref)


# ---------------------------------------------------------------------------------------------------------------
# gradients of soft targets that require grad
# ---------------------------------------------------------------------------------------------------------------


def _soft_target(b, c, seed, hard=False):
    g = torch.Generator().manual_seed(seed)
    if hard:  # one-hot (exact zeros: the subgradient of MONAI's L1 soft-label form)
        return torch.zeros((b, c, *SPATIAL), dtype=torch.float64).scatter_(1, _labels(b, c, g), 1.0)
    return torch.softmax(2 * torch.randn((b, c, *SPATIAL), generator=g, dtype=torch.float64), 1)


def _grads(loss, x, t, **extra):
    xr, tr = x.clone().requires_grad_(True), t.clone().requires_grad_(True)
    v = loss(xr, tr, **extra)
    gx, gt = torch.autograd.grad(v, (xr, tr))
    return v.detach(), gx, gt


def _assert_same_grads(ours, ref, rtol):
    for a, b in zip(ours, ref):
        assert _rel(a, b) <= rtol, (_rel(a, b), b.abs().max().item())


MONAI_PAIRS = [
    ("DiceLoss", {"softmax": True}, True),
    ("DiceLoss", {"sigmoid": True, "include_background": False}, True),
    ("DiceLoss", {"softmax": True, "jaccard": True, "batch": True}, True),
    ("DiceLoss", {"softmax": True, "squared_pred": True}, True),
    ("TverskyLoss", {"softmax": True, "alpha": 0.3, "beta": 0.7}, True),
    ("TverskyLoss", {"sigmoid": True, "batch": True}, True),
    ("GeneralizedDiceLoss", {"softmax": True}, True),
    ("GeneralizedDiceLoss", {"sigmoid": True, "batch": True, "w_type": "simple"}, True),
    ("DiceCELoss", {"softmax": True}, False),
    ("DiceCELoss", {"sigmoid": True}, False),
    ("DiceCELoss", {"softmax": True, "lambda_dice": 0.3, "weight": torch.tensor([1.0, 2.0, 3.0])}, False),
    ("DiceFocalLoss", {"softmax": True, "gamma": 1.5}, False),
    ("DiceFocalLoss", {"sigmoid": True, "alpha": 0.3, "include_background": False}, False),
    ("FocalLoss", {}, False),
    ("FocalLoss", {"alpha": 0.25, "gamma": 1.5}, False),
    ("FocalLoss", {"alpha": [0.2, 0.5, 0.7], "weight": [1.0, 2.0, 0.5]}, False),
    ("FocalLoss", {"use_softmax": True}, False),
    ("FocalLoss", {"use_softmax": True, "alpha": 0.3, "include_background": False, "reduction": "sum"}, False),
]


@pytest.mark.parametrize("hard", [False, True], ids=["soft", "onehot"])
@pytest.mark.parametrize(
    "name,kwargs,has_soft_label", MONAI_PAIRS, ids=[f"{p[0]}-{i}" for i, p in enumerate(MONAI_PAIRS)]
)
def test_target_gradient_matches_monai(name, kwargs, has_soft_label, hard):
    c = 3
    x = torch.randn((2, c, *SPATIAL), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    t = _soft_target(2, c, 5, hard)
    if name == "GeneralizedDiceLoss":  # every class present in each sample: MONAI's weights are finite
        t = _soft_target(2, c, 5, hard=False)
    focal = "Focal" in name  # MONAI's focal term runs in float32
    for soft_label in (False, True) if has_soft_label else (None,):
        kw = dict(kwargs) if soft_label is None else dict(kwargs, soft_label=soft_label)
        ours = _grads(getattr(ext, name)(**kw), x, t)
        # MONAI's generalised Dice zeroes its infinite weights in place, which autograd refuses when the target
        # requires grad; allowing the mutation runs MONAI's own graph unchanged
        with torch.autograd.graph.allow_mutation_on_saved_tensors():
            ref = _grads(getattr(monai.losses, name)(**kw), x, t)
        assert ours[2].abs().max() > 0
        _assert_same_grads(ours, ref, 1e-6 if focal or name == "GeneralizedDiceLoss" else 1e-9)


def _sums_reference(x, t, act, moments, soft_label, valid, weight):
    """The statistics written with plain autograd operations (float64, dense target)."""
    p = torch.softmax(x, 1) if act == "softmax" else torch.sigmoid(x) if act == "sigmoid" else x
    m = torch.ones_like(x[:, :1])
    if valid is not None:
        m = m * valid
    if weight is not None:
        m = m * weight
    terms = {
        "tp": torch.minimum(p * m, t * m) if soft_label else p * t * m,
        "sp": p * m,
        "sg": t * m,
        "sp2": p * p * m,
        "sg2": t * t * m,
        "p2g": p * p * t * m,
        "n": (torch.ones_like(p) * (valid if valid is not None else 1)),
        "nll": -t * torch.log_softmax(x, 1) * m if act == "softmax" else None,
        "nlc": -(1 - t) * torch.log((1 - p).clamp_min(1e-7)) * m if act == "softmax" else None,
    }
    return {k: terms[k].sum(-1) for k in moments}


@pytest.mark.parametrize("act", ["softmax", "sigmoid", "none"])
@pytest.mark.parametrize("variant", ["plain", "soft_label", "valid", "weight"])
def test_region_sums_target_gradient_matches_autograd(act, variant):
    g = torch.Generator().manual_seed(6)
    b, c, n = 3, 4, 60
    x = torch.randn(b, c, n, generator=g, dtype=torch.float64)
    if act == "none":
        x = torch.softmax(x, 1)
    t = torch.softmax(2 * torch.randn(b, c, n, generator=g, dtype=torch.float64), 1)
    t[0, 0, :7] = 0  # exact zeros
    valid = (torch.rand(b, 1, n, generator=g) > 0.3) if variant == "valid" else None
    weight = torch.rand(b, 1, n, generator=g, dtype=torch.float64) if variant == "weight" else None
    soft_label = variant == "soft_label"
    # nllp takes index labels only (tests/test_stats.py); the log terms softmax and no weight map
    log_ok = act == "softmax" and weight is None
    moments = [m for m in MOMENTS if m not in ("nll", "nlc", "nllp") or (m != "nllp" and log_ok)]
    if soft_label:
        t[0, 1, :5] = 1.0  # ties p = g do not occur; exact 0s and 1s do
    coef = {m: torch.randn(b, c, generator=g, dtype=torch.float64) for m in moments}

    def total(sums):
        return sum((sums[m] * coef[m]).sum() for m in moments)

    xr, tr = x.clone().requires_grad_(True), t.clone().requires_grad_(True)
    prep = prepare(xr, tr, softmax=act == "softmax", sigmoid=act == "sigmoid", soft_label=soft_label, validate=False)
    prep = dataclasses.replace(prep, valid=valid)
    ours = torch.autograd.grad(total(region_sums(prep, moments, soft_label=soft_label, weight=weight)), (xr, tr))
    xr2, tr2 = x.clone().requires_grad_(True), t.clone().requires_grad_(True)
    ref_sums = _sums_reference(xr2, tr2, act, moments, soft_label, valid, weight)
    ref = torch.autograd.grad(total(ref_sums), (xr2, tr2))
    if soft_label:  # MONAI's L1 form: d|t|_1/dt = sign(t), 0 at t = 0, where autograd's sum(min) gives 1
        zero = t == 0
        coef_t = (coef["sg"] + coef["tp"] / 2).unsqueeze(-1).expand_as(t)
        ref = (ref[0], torch.where(zero, ref[1] - coef_t * (1 if valid is None else valid), ref[1]))
    assert torch.allclose(ours[0], ref[0], rtol=1e-10, atol=1e-12)
    assert torch.allclose(ours[1], ref[1], rtol=1e-10, atol=1e-12)


def test_generalized_dice_target_gradient_with_an_empty_class():
    """An absent class: its infinite weight is replaced by the largest one (MONAI's rule) and no NaN reaches the
    target's gradient; elsewhere the weights' own dependence on the target is differentiated, as MONAI's graph does
    (re-derived here in float64 without MONAI's in-place zeroing, whose backward is NaN at an empty class)."""
    x = torch.randn((2, 3, *SPATIAL), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    t = _soft_target(2, 3, 8)
    t[1, 2] = 0
    t[1] = t[1] / t[1].sum(0, keepdim=True)

    def reference(xi, ti):
        p = torch.softmax(xi, 1)
        tp, sp, sg = (p * ti).sum((2, 3, 4)), p.sum((2, 3, 4)), ti.sum((2, 3, 4))
        empty = sg.detach() == 0
        w = torch.where(empty, 0.0, 1 / torch.where(empty, 1.0, sg) ** 2)
        w = w + empty * w.max(1, keepdim=True).values
        return (1 - (2 * (tp * w).sum(1) + 1e-5) / (((sp + sg) * w).sum(1) + 1e-5)).mean()

    ours = _grads(ext.GeneralizedDiceLoss(softmax=True), x, t)
    ref = _grads(lambda a, b: reference(a, b), x, t)
    assert torch.isfinite(ours[2]).all() and ours[2][1, 2].abs().max() > 0
    _assert_same_grads(ours, ref, 1e-10)


def test_combo_softmax_target_gradient_matches_autograd():
    """Softmax Combo takes its BCE from the fused statistics (nll, nlc): value, input and soft-target gradients
    equal plain autograd of the paper's formula on torch.softmax (float64)."""
    x = torch.randn((2, 3, *SPATIAL), generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    t = _soft_target(2, 3, 10)
    alpha, beta = 0.4, 0.7

    def reference(xi, ti):
        p = torch.softmax(xi, 1)
        bce = -(beta * ti * torch.log(p) + (1 - beta) * (1 - ti) * torch.log(1 - p))[:, 1:].mean()
        tp, sp, sg = (p * ti).sum((2, 3, 4)), p.sum((2, 3, 4)), ti.sum((2, 3, 4))
        dice = (1 - (2 * tp + 1e-5) / (sp + sg + 1e-5)).mean()
        return alpha * bce + (1 - alpha) * dice

    loss = ext.ComboLoss(alpha=alpha, beta=beta, softmax=True, validate=False)
    ours, ref = _grads(loss, x, t), _grads(reference, x, t)
    assert ours[2].abs().max() > 0
    _assert_same_grads(ours, ref, 1e-10)


@pytest.mark.parametrize("name", ["exp_log", "asymmetric_unified_focal"])
def test_voxel_sums_losses_target_gradient_matches_autograd(name, monkeypatch):
    """The per-voxel-sum kernel (no MONAI peer for these losses): its target (and input) gradient equals plain
    autograd of the same per-voxel formula, evaluated by the kernel's own forward without the kernel."""
    cfg = [cfg for cfg in CONFIGS if cfg[1] == name][0]
    loss, inp = build(cfg, "onehot", 3)
    loss = _no_validation(loss)
    x = torch.randn((2, 3, *SPATIAL), generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    if inp == "probs":
        x = torch.softmax(x, 1)
    t = _soft_target(2, 3, 10)
    ours = _grads(loss, x, t)
    calls = []

    def unfused(fn, prep, *params):
        calls.append(fn)
        return _voxel_sums_forward(prep.x, prep.target, prep.valid, fn, params)

    monkeypatch.setattr(compound, "voxel_sums", unfused)
    ref = _grads(loss, x, t)
    assert calls and ours[2].abs().max() > 0
    _assert_same_grads(ours, ref, 1e-10)


def test_voxel_sums_parameter_gradient():
    """Tensors passed to the per-voxel formula as parameters get their gradient too, as do input and target."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 3, 50, generator=g, dtype=torch.float64)
    t = torch.softmax(torch.randn(2, 3, 50, generator=g, dtype=torch.float64), 1)
    w = torch.rand(3, generator=g, dtype=torch.float64)

    def fn(xc, gc, vc, wc):
        return (wc.unsqueeze(1) * gc * torch.log_softmax(xc, 0)).square()

    args = [a.clone().requires_grad_(True) for a in (x, t, w)]
    prep = prepare(args[0], args[1], softmax=True, soft_label=True, validate=False)
    ours = torch.autograd.grad(voxel_sums(fn, prep, args[2]).sum(), args)
    ref_args = [a.clone().requires_grad_(True) for a in (x, t, w)]
    total = sum(fn(ref_args[0][i], ref_args[1][i], None, ref_args[2]).sum() for i in range(2))
    ref = torch.autograd.grad(total, ref_args)
    for a, b in zip(ours, ref):
        assert a.abs().max() > 0 and torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_index_targets_and_detached_targets_keep_nothing_extra():
    """Index labels never need a gradient; a dense target that does not require grad makes the statistics kernel
    keep only the probabilities (and the output), the log-probabilities being kept only for a target's gradient."""
    g = torch.Generator().manual_seed(12)
    x = torch.randn((2, 3, *SPATIAL), generator=g, requires_grad=True)
    t = _soft_target(2, 3, 13).float()
    loss = ext.DiceCELoss(softmax=True)

    def kept(target):
        out = loss(x, target)
        (node,) = [n for n in _nodes(out) if type(n).__name__ == "_RegionSumsBackward"]
        return len([s for s in node.saved_tensors if s is not None])

    assert kept(t) == 1 + 1 + 2  # output, target, 2 probabilities
    assert kept(t.clone().requires_grad_(True)) == 1 + 1 + 2 + 2  # + 2 log-probabilities
    lab = torch.randint(0, 3, (2, 1, *SPATIAL), generator=g)
    out = ext.DiceCELoss(softmax=True, to_onehot_y=True)(x, lab)
    (gx,) = torch.autograd.grad(out, x)
    assert torch.isfinite(gx).all()


def _nodes(out):
    seen, stack = [], [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.append(node)
        stack += [f for f, _ in node.next_functions]
    return seen
