"""The statistics kernels' internal paths (monai_losses_ext/losses/_stats.py), each against another way to compute
the same thing: the two-class softmax path against the general path (values and gradients, with and without an
ignored label, float32 and float64, extreme logit gaps), the blocked matrix products against float64 products
(sizes below, at and across the block size), the labels' one-hot against ``torch.nn.functional.one_hot``, and the
chunked kernels (focal, per-voxel sums) with many small chunks against one chunk per sample. Checks that read the
labels' range are tested where a narrower integer type would wrap (labels 256 and -256 with two classes)."""

from __future__ import annotations

import math

import pytest
import torch

import monai_losses_ext as E
from monai_losses_ext.losses import _stats as S

SM = dict(softmax=True, to_onehot_y=True)

BINARY_LOSSES = {
    "dice": lambda **k: E.DiceLoss(**SM, **k),
    "dice_batch": lambda **k: E.DiceLoss(**SM, batch=True, **k),
    "dice_ce": lambda **k: E.DiceCELoss(**SM, **k),
    "tversky": lambda **k: E.TverskyLoss(alpha=0.3, beta=0.7, **SM, **k),
    "generalized_dice": lambda **k: E.GeneralizedDiceLoss(**SM, **k),
    "combo": lambda **k: E.ComboLoss(alpha=0.6, beta=0.3, **SM, **k),
}


def _value_and_grad(loss, x, y):
    x = x.clone().requires_grad_(True)
    value = loss(x, y)
    (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad


def _case(dtype, scale, seed=0, shape=(2, 2, 9, 10, 11)):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * scale).to(dtype)
    y = (torch.rand((shape[0], 1, *shape[2:]), generator=g) < 0.2).long()
    return x, y


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1.0, 40.0])  # 40: logit gaps of ~100, where 1 - p rounds to 0 in float32
@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("name", sorted(BINARY_LOSSES))
def test_binary_path_equals_general_path(monkeypatch, name, ignore, scale, dtype):
    x, y = _case(dtype, scale)
    kwargs = {}
    if ignore:
        y[:, :, :3] = 255  # a slab of ignored voxels
        kwargs["ignore_index"] = 255
    loss = BINARY_LOSSES[name](**kwargs)
    calls = []
    original = S._binary_sums
    monkeypatch.setattr(S, "_binary_sums", lambda *a: calls.append(1) or original(*a))
    fast = _value_and_grad(loss, x, y)
    assert calls, "the two-class path was not taken"
    monkeypatch.setattr(S, "_binary_path", lambda *a: False)
    general = _value_and_grad(loss, x, y)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast[0], general[0], **tol)
    torch.testing.assert_close(fast[1], general[1], **tol)
    assert torch.isfinite(fast[1]).all()


def test_binary_path_gradcheck():
    x, y = _case(torch.float64, 3.0, shape=(2, 2, 4, 5))
    y[0, :, 0] = 7  # ignored
    for loss in (E.DiceCELoss(**SM, ignore_index=7), E.TverskyLoss(**SM, alpha=0.2, beta=0.8, ignore_index=7)):
        assert torch.autograd.gradcheck(lambda t, loss=loss: loss(t, y), (x.clone().requires_grad_(True),))


@pytest.mark.parametrize("n", [1, 1000, S._BLOCK, 3 * S._BLOCK + 123])
def test_blocked_sums_equal_float64_sums(n):
    g = torch.Generator().manual_seed(n)
    p = torch.softmax(torch.randn(3, n, generator=g), 0)
    labels = torch.randint(0, 3, (1, n), generator=g)
    onehot = S.label_one_hot(labels, 3, torch.float32)
    pg = S._blocked_mm(p, onehot)
    torch.testing.assert_close(pg, p.double() @ onehot.double().T, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(pg.diagonal(), (p.double() * onehot.double()).sum(1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(pg.sum(1), p.double().sum(1), rtol=1e-6, atol=1e-6)  # one-hot: row sums are sum p
    logp = torch.log(torch.rand(1, n, generator=g))  # like the log-probabilities the cross-entropy sums
    torch.testing.assert_close(S._blocked_mm(onehot, logp), onehot.double() @ logp.double().T, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("c", [2, 5, 300])
def test_label_one_hot_equals_torch_one_hot(c):
    labels = torch.randint(0, c, (1, 777), generator=torch.Generator().manual_seed(c))
    expected = torch.nn.functional.one_hot(labels[0], c).T.float()
    assert torch.equal(S.label_one_hot(labels, c, torch.float32), expected)
    assert torch.equal(S.dense_chunk(labels, c, torch.float64), expected.double())


CHUNKED = {
    "focal": lambda: E.FocalLoss(to_onehot_y=True, gamma=2.0, alpha=0.25),
    "focal_softmax": lambda: E.FocalLoss(to_onehot_y=True, use_softmax=True, gamma=1.5),
    "dice_focal": lambda: E.DiceFocalLoss(**SM),
    "combo": lambda: E.ComboLoss(**SM),
    "exp_log": lambda: E.ExpLogLoss(**SM),
}


@pytest.mark.parametrize("name", sorted(CHUNKED))
def test_many_chunks_equal_one_chunk(monkeypatch, name):
    x, y = _case(torch.float32, 2.0, shape=(2, 3, 10, 11, 12))
    y = torch.randint(0, 3, y.shape, generator=torch.Generator().manual_seed(1))
    one = _value_and_grad(CHUNKED[name](), x, y)
    monkeypatch.setattr(S, "CHUNK_MIN", 97)
    monkeypatch.setattr(S, "CHUNK_MAX", 97)  # 14 chunks of 97 voxels and a partial one per sample
    assert len(list(S._chunks(1320))) == 14
    many = _value_and_grad(CHUNKED[name](), x, y)
    torch.testing.assert_close(many[0], one[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(many[1], one[1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("bad", [2, 256, -256, 258])
def test_out_of_range_labels_are_reported_not_wrapped(bad):
    x, y = _case(torch.float32, 1.0)
    y[0, 0, 0, 0, 0] = bad  # 256 and -256 read as 0 in one byte, 258 as 2
    with pytest.raises(ValueError, match=rf"out of range: \{{{bad}\}}"):
        E.DiceLoss(**SM)(x, y)


def test_ignore_index_labels_pass_and_others_are_reported():
    x, y = _case(torch.float32, 1.0)
    y[0, 0, 0] = 255
    E.DiceLoss(**SM, ignore_index=255)(x, y)  # 255 ignored: no error
    y[1, 0, 0, 0, 0] = 3
    with pytest.raises(ValueError, match=r"out of range: \{3\}"):
        E.DiceLoss(**SM, ignore_index=255)(x, y)


def test_non_integer_float_labels_are_reported():
    x, y = _case(torch.float32, 1.0)
    yf = y.float()
    yf[0, 0, 0, 0, 0] = 0.5
    with pytest.raises(ValueError, match="non-integer"):
        E.DiceLoss(**SM)(x, yf)
    yf[0, 0, 0, 0, 0] = -0.0  # a signed zero is an integer label
    E.DiceLoss(**SM)(x, yf)


@pytest.mark.parametrize("act", ["softmax", "sigmoid"])
@pytest.mark.parametrize("shape", [(2, 1), (4, 7), (3, 70_001), (16, 4097)])
def test_activation_backward_in_place_equals_out_of_place(act, shape):
    """The kernels write dL/dx over dL/dp (no second copy of the logits); PyTorch's fused backward must then give
    what it gives into a separate buffer, or this fails loudly after a PyTorch upgrade."""
    g = torch.Generator().manual_seed(shape[1])
    x = torch.randn(shape, generator=g) * 3
    p = S.activate(x, act, 0)
    dp = torch.randn(shape, generator=g)
    expected = S.activation_backward(dp, p, act, torch.empty_like(dp))
    torch.testing.assert_close(expected, torch.func.vjp(lambda t: S.activate(t, act, 0), x)[1](dp)[0])
    aliased = dp.clone()
    assert torch.equal(S.activation_backward(aliased, p, act, aliased), expected)


@pytest.mark.parametrize("traced", [False, True], ids=["eager", "compile_branch"])
def test_others_keeps_precision_where_one_row_dominates(monkeypatch, traced):
    """``_others`` (row c = sum of the other rows; added into ``out`` where given) equals the float64 total minus
    the row, and in float32 keeps its relative precision where row c holds nearly all the mass (1 - p_c for p_c
    rounding to 1): the eager branches (rows summed directly up to four classes, prefix and suffix sums beyond)
    and torch.compile's alike."""
    monkeypatch.setattr(S, "compiling", lambda: traced)
    g = torch.Generator().manual_seed(3)
    for c in (1, 2, 3, 4, 5, 7):
        a = torch.rand((c, 40), generator=g, dtype=torch.float64)
        torch.testing.assert_close(S._others(a), a.sum(0, keepdim=True) - a, rtol=1e-12, atol=1e-15)
        base = torch.rand((c, 40), generator=g, dtype=torch.float64)
        got = S._others(a, out=base.clone())
        torch.testing.assert_close(got, base + a.sum(0, keepdim=True) - a, rtol=1e-12, atol=1e-15)
    x = torch.randn((4, 1000), generator=g, dtype=torch.float64)
    x[0] += 30  # p_0 within 1e-12 of 1: 1 - p_0 is lost in float32 as a difference, kept as a sum
    p64 = torch.softmax(x, 0)
    exact = torch.stack([p64[[k for k in range(4) if k != c]].sum(0) for c in range(4)])
    got = S._others(torch.softmax(x.float(), 0)).double()
    assert ((got - exact).abs() / exact).max() < 1e-5


def _exact_log_probs(x):
    """float64 log p and log(1 - p) of softmax over axis 1, from logsumexp over the other classes (autograd)."""
    c = x.shape[1]
    rest = torch.stack([torch.logsumexp(x[:, [k for k in range(c) if k != j]], 1) for j in range(c)], 1)
    return -torch.nn.functional.softplus(rest - x), -torch.nn.functional.softplus(x - rest)


def _combo_reference(x, y, alpha, beta, ignore):
    c = x.shape[1]
    v = (y != 255).double() if ignore else torch.ones_like(y, dtype=torch.float64)
    g = torch.nn.functional.one_hot(torch.where(y == 255, 0, y)[:, 0], c).movedim(-1, 1).double()
    logp, log1mp = _exact_log_probs(x)
    bce = -(beta * g * logp + (1 - beta) * (1 - g) * log1mp.clamp_min(math.log(1e-7)))[:, 1:]
    bce = (bce * v).sum() / (v.sum() * (c - 1))
    p, axes = torch.softmax(x, 1), tuple(range(2, x.ndim))
    tp, sp, sg = (p * g * v).sum(axes), (p * v).sum(axes), (g * v).sum(axes)
    return alpha * bce + (1 - alpha) * (1 - (2 * tp + 1e-5) / (sp + sg + 1e-5)).mean()


def _exp_log_reference(x, y, gamma_cross, ignore):
    c = x.shape[1]
    v = (y != 255).double() if ignore else torch.ones_like(y, dtype=torch.float64)
    yl = torch.where(y == 255, 0, y)
    g = torch.nn.functional.one_hot(yl[:, 0], c).movedim(-1, 1).double()
    p, axes = torch.softmax(x, 1), tuple(range(2, x.ndim))
    tp, sp, sg = (p * g * v).sum(axes), (p * v).sum(axes), (g * v).sum(axes)
    l_dice = (-torch.log((2 * tp + 1) / (sp + sg + 1))).pow(0.3).mean()
    f = sg.detach().sum(0)
    w = (f.sum() / f).sqrt()
    nll = -_exact_log_probs(x)[0].gather(1, yl)
    return 0.8 * l_dice + 0.2 * (w[yl] * nll.pow(gamma_cross) * v).sum() / v.sum()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1.0, 40.0])  # 40: gaps of ~100, where p_t rounds to 1 or underflows in float32
@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("name", ["combo", "exp_log", "exp_log_gamma2"])
def test_fused_log_terms_equal_exact_formula(name, ignore, scale, dtype):
    """Combo's BCE (the nll and nlc sums) and the exp-log cross term (nllp), fused into the statistics kernel,
    against autograd of the formulas written on float64 logsumexp over the other classes: values and gradients to
    float32 rounding, also at logit gaps where 1 - p and log p_t lose every digit in float32."""
    x, _ = _case(torch.float64, scale, seed=5, shape=(2, 4, 9, 10, 11))
    y = torch.randint(0, 4, (2, 1, 9, 10, 11), generator=torch.Generator().manual_seed(6))
    confident = torch.rand(y.shape, generator=torch.Generator().manual_seed(7)) < 0.7
    x = x + 3 * scale * torch.nn.functional.one_hot(y[:, 0], 4).movedim(-1, 1) * confident
    kwargs = {"ignore_index": 255} if ignore else {}
    if ignore:
        y[:, :, :3] = 255
    if name == "combo":
        loss = E.ComboLoss(alpha=0.6, beta=0.3, **SM, **kwargs)
        reference = lambda xi, yi: _combo_reference(xi, yi, 0.6, 0.3, ignore)  # noqa: E731
    else:
        gamma = 2.0 if name == "exp_log_gamma2" else 0.3
        loss = E.ExpLogLoss(gamma_cross=gamma, **SM, **kwargs)
        reference = lambda xi, yi: _exp_log_reference(xi, yi, gamma, ignore)  # noqa: E731
    value, grad = _value_and_grad(loss, x.to(dtype), y)
    ref_value, ref_grad = _value_and_grad(reference, x, y)
    tol = 1e-5 if dtype == torch.float32 else 1e-8  # float64: logits of ~300 round at ~1e-14 in both
    assert abs(value.double() - ref_value) <= tol * abs(ref_value)
    assert (grad.double() - ref_grad).abs().max() <= tol * ref_grad.abs().max()


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 70000])
def test_sort_errors_sorts_like_argsort(n):
    """The Lovasz sort's packed-key path orders the errors exactly as argsort(descending=True) (the same sorted
    values: ties, exact 0s and 1s, the ignored voxels' -1 last), returns a permutation of the indices, and the
    ground truth in that order."""
    from monai_losses_ext.losses.lovasz import sort_errors

    g = torch.Generator().manual_seed(n)
    e = torch.rand(n, generator=g)
    e[::7], e[3::11], e[5::13] = -1.0, 0.0, 1.0
    fg = (torch.rand(n, generator=g) < 0.3).float()
    order, fg_sorted = sort_errors(e.clone(), fg)
    assert torch.equal(e[order], e[torch.argsort(e, descending=True)])
    assert torch.equal(torch.sort(order).values, torch.arange(n))
    assert torch.equal(fg_sorted, fg[order])


def test_lovasz_packed_sort_equals_argsort(monkeypatch):
    """LovaszSoftmaxLoss on float32 CPU input (the packed-key sort) equals the argsort path in value and gradient
    (continuous logits: no ties, so the Lovasz weights are the same voxel by voxel), with an ignored label too."""
    from monai_losses_ext.losses import lovasz

    x, _ = _case(torch.float32, 3.0, seed=8, shape=(2, 3, 9, 10, 11))
    y = torch.randint(0, 3, (2, 1, 9, 10, 11), generator=torch.Generator().manual_seed(9))
    y[:, :, :2] = 255
    for kwargs in (dict(), dict(per_image=True, ignore_index=255)):
        yy = y if kwargs else y.clamp_max(2)
        loss = E.LovaszSoftmaxLoss(**kwargs)
        fast = _value_and_grad(loss, x, yy)
        monkeypatch.setattr(lovasz, "compiling", lambda: True)  # sort_errors's argsort branch
        plain = _value_and_grad(loss, x, yy)
        monkeypatch.undo()
        torch.testing.assert_close(fast[0], plain[0], rtol=0, atol=0)
        torch.testing.assert_close(fast[1], plain[1], rtol=0, atol=0)
