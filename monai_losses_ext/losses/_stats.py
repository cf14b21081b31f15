"""One place for the statistics: fused per-(sample, class) sums, batch pooling and DDP all-reduce.

Every overlap loss is a formula over a few sums per sample b and class c, taken over the valid voxels:

    tp  = sum p*g          sp  = sum p          sg  = sum g
    sp2 = sum p^2          sg2 = sum g^2        p2g = sum p^2 * g        n = number of valid voxels
    nll = sum -g * log softmax(x)   (cross-entropy, per true class; needs the softmax activation)
    nlc = sum -(1 - g) * log max(1 - p, 1e-7)   (the one-vs-rest complement term of a BCE; softmax)
    nllp = sum g * (-log p)^power    (a power of the cross-entropy, per true class; softmax, index labels)

For softmax, 1 - p_c is taken as the sum of the other classes' probabilities and -log p_t as
log1p(sum_{k != t} p_k / p_t): both exact to rounding also where p_c rounds to 1, where 1 - p and log p
lose every digit in float32.

``region_sums`` computes the requested sums in one fused pass per sample that applies the activation on
the fly, in float32 (float64 for float64 input). Backward keeps one tensor of the size of the logits (the
probabilities) and, for index labels, the probability of the true class; no float one-hot target, product
or autograd graph is stored, and index targets are read through gather/scatter-add, never expanded.
Because cross-entropy is one more sum (``nll``), Dice + CE costs one softmax, not two.

``pool`` sums the statistics over the batch (batch Dice) and, with ``distributed=True``, over all ranks
with an all-reduce that keeps autograd: every rank then holds the full-batch statistics, and after
DDP's gradient averaging the parameter gradients equal those of one process on the whole batch.
"""

from __future__ import annotations

import functools
import itertools
import math

import torch
import torch.distributed as dist

__all__ = ["MOMENTS", "region_sums", "pool", "all_reduce_sum", "compute_dtype", "is_distributed"]

MOMENTS = ("tp", "sp", "sg", "sp2", "sg2", "p2g", "n", "nll", "nlc", "nllp")
# the floor of 1 - p under the logarithm of ``nlc`` (the Combo loss's clamp: log(1 - p) >= log 1e-7)
NLC_EPS = 1e-7
# voxels per chunk of the chunked kernels (focal, checkpointed per-voxel terms): an eighth of a sample, within
# [2^16, 2^18] (a 64^3 patch: 4 chunks, 96^3: 8); the temporaries of one chunk then stay well under one copy of the
# logits, and the Python loop (about twenty operations per chunk, some 10 us each) costs little next to the
# arithmetic.
CHUNK_MIN, CHUNK_MAX = 1 << 16, 1 << 18


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64 (gradient checks); everything else accumulates in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def activate(x: torch.Tensor, act: str, dim: int) -> torch.Tensor:
    if act == "softmax":
        return torch.softmax(x, dim)
    if act == "sigmoid":
        return torch.sigmoid(x)
    return x


def activation_backward(dp: torch.Tensor, p: torch.Tensor, act: str, out: torch.Tensor) -> torch.Tensor:
    """dL/dx, written into ``out``, from dL/dp (C, N) given p = act(x) with the activation over axis 0: PyTorch's
    fused softmax and sigmoid backward kernels, one pass. ``dp`` may be ``out`` (no second copy of a sample's
    logits): the sigmoid's is element-wise, and the softmax's over a non-last axis reads each voxel's values
    before it writes them (tests/test_stats.py checks both against the out-of-place result)."""
    if act == "softmax":
        return torch.ops.aten._softmax_backward_data.out(dp, p, 0, p.dtype, grad_input=out)
    if act == "sigmoid":
        return torch.ops.aten.sigmoid_backward.grad_input(dp, p, grad_input=out)
    return dp if dp is out else out.copy_(dp)


def _chunks(n: int):
    size = min(max(n // 8, CHUNK_MIN), CHUNK_MAX)
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


# ----------------------------------------------------------------------------------------------------------------
# What every fused kernel (a torch.autograd.Function with a hand-written first derivative) shares, so that it works
# under torch.compile, torch.func.grad / vmap and vmap(grad): forward(...) + setup_context, a vmap rule that runs
# the kernel once per slice of the vmapped dimension, and a backward that runs as one opaque ``_Backward`` step,
# itself vmapped slice by slice, whose own derivative (a second derivative) and every jvp raise a clear error.
# ----------------------------------------------------------------------------------------------------------------

_ALTERNATIVES = {
    "_RegionSums": "the unfused MONAI class of the loss (e.g. monai.losses.DiceLoss, DiceCELoss, TverskyLoss, "
    "GeneralizedDiceLoss), or the loss's formula written on torch.softmax(input, 1) and the one-hot target",
    "_FocalTerms": "monai.losses.FocalLoss (or DiceFocalLoss), which autograd differentiates to any order",
    "_VoxelSums": "the loss's per-voxel formula written with plain PyTorch operations",
    "_ForegroundProb": "1 - torch.softmax(input, 1)[:, 0] written with plain PyTorch operations",
}


def compiling() -> bool:
    """Whether torch.compile is tracing: the kernels then avoid their data-dependent eager shortcuts."""
    return torch.compiler.is_compiling()


def first_order_error(kernel: str) -> RuntimeError:
    """The error of a second derivative or a forward-mode derivative through fused kernel ``kernel``."""
    return RuntimeError(
        f"monai_losses_ext fused loss kernel {kernel} has a hand-written first derivative only: second derivatives "
        "(backward through a gradient taken with create_graph=True, torch.func.hessian, jacfwd(jacrev(...))) and "
        "forward-mode derivatives (torch.func.jvp, jacfwd, torch.autograd.forward_ad) are not supported. For "
        f"higher-order or forward-mode derivatives use {_ALTERNATIVES.get(kernel, 'an unfused implementation')}."
    )


def vmap_by_slices(apply, info, in_dims, args):
    """A vmap rule: ``apply`` once per slice of the vmapped dimension, outputs stacked along dimension 0 (None
    outputs stay None). ``in_dims`` holds an int for each vmapped tensor (None, or a tree of Nones for a
    non-tensor argument, otherwise)."""
    outs = []
    for i in range(info.batch_size):
        outs.append(apply(*(a.select(d, i) if isinstance(d, int) else a for a, d in zip(args, in_dims))))
    single = not isinstance(outs[0], tuple)
    cols = [[o] if single else o for o in outs]
    stacked = tuple(None if col[0] is None else torch.stack(col) for col in zip(*cols))
    dims = tuple(None if t is None else 0 for t in stacked)
    return (stacked[0], dims[0]) if single else (stacked, dims)


class _Backward(torch.autograd.Function):
    """A fused kernel's backward ``fn(*tensors)`` as one step: vmapped slice by slice (``vmap(grad(f))``), and
    raising ``first_order_error`` when differentiated. ``anchor`` (the kernel's output) is not read: it only makes
    the result depend on the kernel's inputs, so that a second derivative reaches this Function and raises."""

    @staticmethod
    def forward(fn, kernel, anchor, *tensors):
        return tuple(fn(*tensors))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.kernel = inputs[1]

    @staticmethod
    def backward(ctx, *grads):
        raise first_order_error(ctx.kernel)

    @staticmethod
    def jvp(ctx, *tangents):
        raise first_order_error(ctx.kernel)

    @staticmethod
    def vmap(info, in_dims, fn, kernel, anchor, *tensors):
        return vmap_by_slices(lambda a, *t: _Backward.apply(fn, kernel, a, *t), info, in_dims[2:], (anchor, *tensors))


def fused(cls):
    """Class decorator of a fused kernel: ``cls.eager`` is ``cls`` with a ``jvp`` that raises ``first_order_error``
    (forward-mode AD). torch.compile traces ``cls`` itself, as dynamo refuses Functions that define a jvp; call
    the kernel through ``apply_fused``, which picks the right one."""

    def jvp(ctx, *tangents):
        raise first_order_error(cls.__name__)

    cls.eager = type(cls.__name__, (cls,), {"jvp": staticmethod(jvp), "__doc__": cls.__doc__})
    return cls


def _apply(cls, *args):
    """``cls.apply(*args)`` with every argument given positionally. Outside torch.func transforms this calls
    autograd's C++ entry directly: ``Function.apply`` binds the arguments to ``forward``'s signature through
    ``inspect`` on every call when ``setup_context`` is defined, about 60 us per call, a tenth of a small loss's
    step. Inside a transform (and should PyTorch's internals move) it is ``cls.apply`` itself."""
    if _FAST_APPLY is None or torch._C._are_functorch_transforms_active():
        return cls.apply(*args)
    return _FAST_APPLY(cls, *args)


def _fast_apply():
    desc = getattr(getattr(torch._C, "_FunctionBase", None), "__dict__", {}).get("apply")
    if not hasattr(desc, "__get__") or not hasattr(torch._C, "_are_functorch_transforms_active"):
        return None
    return lambda cls, *args: desc.__get__(None, cls)(*args)


_FAST_APPLY = _fast_apply()


def apply_fused(cls, *args):
    """``cls.apply(*args)`` for a ``fused`` kernel: the jvp-free class while torch.compile traces, else ``eager``."""
    if compiling():
        return cls.apply(*args)
    return _apply(cls.eager, *args)


class Slabs:
    """A (B, *shape) result assembled sample by sample (and chunk by chunk along the last axis): written into one
    preallocated buffer in eager mode (no extra copy), collected and concatenated under torch.compile, where
    writes into slices of a fresh buffer proved fragile (inductor lost a gradient later added to such a buffer)
    and the compiler plans the memory itself."""

    def __init__(self, b: int, shape, dtype, device) -> None:
        self.dtype = dtype
        self.buf = None if compiling() else torch.empty((b, *shape), dtype=dtype, device=device)
        self.rows: list[list[torch.Tensor]] = [[] for _ in range(b)]

    def slot(self, bi: int, like: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Where sample ``bi``'s result may be computed in place: (the buffer's row, True) in eager mode with a
        matching dtype, else (a fresh tensor like ``like``, False); hand the latter to ``put``."""
        if self.buf is not None and self.buf.dtype == like.dtype:
            return self.buf[bi], True
        return torch.empty_like(like), False

    def put(self, bi: int, value: torch.Tensor, sl: slice | None = None) -> None:
        """Sample ``bi``'s result, or its chunk ``sl`` of the last axis (chunks in order)."""
        if self.buf is None:
            self.rows[bi].append(value.to(self.dtype))
        elif sl is None:
            self.buf[bi] = value
        else:
            self.buf[bi, ..., sl] = value

    def result(self) -> torch.Tensor:
        """The assembled (B, *shape) tensor."""
        if self.buf is not None:
            return self.buf
        return torch.stack([r[0] if len(r) == 1 else torch.cat(r, -1) for r in self.rows])


def run_backward(fn, kernel: str, anchor: torch.Tensor, *tensors) -> tuple:
    """Run a kernel's backward ``fn(*tensors)`` through ``_Backward`` (see there); while torch.compile traces the
    backward it is called directly (the compiled graph is differentiated once)."""
    if compiling():
        return tuple(fn(*tensors))
    return _apply(_Backward, fn, kernel, anchor, *tensors)


@fused
class _RegionSums(torch.autograd.Function):
    """Fused activation + sums, one sample at a time. The probabilities are kept for backward: one copy of the
    logits, cheaper in time than recomputing the softmax and far cheaper in memory than autograd's graph of the
    same computation. Index labels are read once into one byte per voxel (``compact_labels``, kept for backward)
    and, one sample at a time, into a one-hot that lives only inside the kernel (``label_one_hot``): no gather or
    scatter by the label (a scatter-add into one bucket serialises when nearly every voxel is background).

    forward returns ``(out (M, B, C), *probabilities, *extra)``: for index labels the compact labels (B, 1, N)
    and, with ``nllp``, each sample's factor power (-log p_t)^(power - 1) (1, N); for dense targets with the
    cross-entropy and ``keep_logp`` the log-probabilities (the target's gradient needs them), else nothing.
    Every result is built out of place (per-sample rows, then stacked), which torch.compile traces exactly."""

    @staticmethod
    def forward(x, target, valid, weight, act, moments, soft_label, keep_logp, power):
        with torch.autocast(device_type=x.device.type, enabled=False):
            b, c, n = x.shape
            dt = compute_dtype(x)
            is_index = target.shape[1] == 1 and c > 1
            labels = compact_labels(target, c) if is_index else None  # read once; 1 byte per voxel, kept
            if _binary_path(is_index, c, act, weight, moments):  # two softmax classes: from the logit gap
                v = valid.to(dt) if valid is not None else None
                p1, sums, unfloored = _binary_sums(moments, x.to(dt), labels, v, n)
                return torch.stack([sums[m] for m in moments]), p1, labels, *unfloored
            rows, probs, logps, factors = [], [], [], []
            core = tuple(m for m in moments if m != "nllp")  # nllp: its own kernel, which keeps a factor
            for bi in range(b):
                xb = x[bi].to(dt)
                # dense targets need every log p for the cross-entropy; index labels only the true class's, which
                # _sums takes from p (one exp pass less)
                logp = torch.log_softmax(xb, 0) if "nll" in moments and not is_index else None
                p = logp.exp() if logp is not None else activate(xb, act, 0)
                v = valid[bi].to(dt) if valid is not None else None  # 0/1 floats: bool arithmetic is slow on CPU
                w = weight[bi] if weight is not None else None
                t = label_one_hot(labels[bi], c, dt) if is_index else target[bi].to(dt)
                sums = _sums(core, p, logp, t, _mult(v, w), soft_label, xb if is_index else None)
                if "nllp" in moments:  # index labels only (region_sums checks)
                    sums["nllp"], fac = _true_class_power(p, xb, t, v, power)
                    factors.append(fac)
                if keep_logp and logp is not None:
                    logps.append(logp)
                if "n" in moments:  # number of valid voxels, whatever the weights
                    sums["n"] = p.new_full((c,), n) if v is None else v.sum().to(dt).expand(c)
                rows.append(torch.stack([sums[m] for m in moments]))
                probs.append(p)
            out = torch.stack(rows, 1)
        return (out, *probs, *((labels, *factors) if is_index else logps))

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, target, valid, weight, act, moments, soft_label, _, _ = inputs
        out, *kept = output
        ctx.mark_non_differentiable(*kept)
        ctx.set_materialize_grads(False)  # no zero gradients for the kept tensors: a copy of the logits saved
        ctx.save_for_backward(out, target, valid, weight, *kept)
        ctx.act, ctx.moments, ctx.soft_label, ctx.x_dtype = act, moments, soft_label, x.dtype
        ctx.is_index = target.shape[1] == 1 and x.shape[1] > 1
        ctx.binary = _binary_path(ctx.is_index, x.shape[1], act, weight, moments)

    @staticmethod
    def backward(ctx, grad_out, *_):
        out, target, valid, weight, *kept = ctx.saved_tensors
        need_x, need_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1] and not ctx.is_index
        if grad_out is None or not (need_x or need_t):
            return (None,) * 9
        if ctx.binary:
            fn = functools.partial(_binary_backward, ctx.moments, ctx.x_dtype)
        else:
            fn = functools.partial(
                _region_sums_backward, ctx.act, ctx.moments, ctx.soft_label, ctx.is_index, ctx.x_dtype, need_x, need_t
            )
        gx, gt = run_backward(fn, "_RegionSums", out, grad_out, target, valid, weight, *kept)
        return gx, gt, None, None, None, None, None, None, None

    @staticmethod
    def vmap(info, in_dims, *args):
        return vmap_by_slices(_RegionSums.eager.apply, info, in_dims, args)


def _region_sums_backward(
    act, moments, soft_label, is_index, x_dtype, need_x, need_t, grad_out, target, valid, weight, *kept
):
    """dL/dx (B, C, N) and, for a dense floating target, dL/dtarget, from dL/d(sums) (M, B, C) and what forward
    kept (probabilities, log-probabilities when the target needs a gradient)."""
    b = target.shape[0]
    probs, extra = kept[:b], kept[b:]
    labels = extra[0] if is_index else None
    factors = extra[1:] if is_index else ()  # nllp's per-voxel factors
    logps = () if is_index else extra
    c, n = probs[0].shape
    dt = probs[0].dtype
    with torch.autocast(device_type=probs[0].device.type, enabled=False):
        grad_out = grad_out.to(dt)
        gx = Slabs(b, (c, n), x_dtype, probs[0].device) if need_x else None
        gt = Slabs(b, target.shape[1:], target.dtype, target.device) if need_t else None
        for bi in range(b):
            g = dict(zip(moments, grad_out[:, bi].unbind(0)))
            p = probs[bi]
            v = valid[bi].to(dt) if valid is not None else None
            w = weight[bi] if weight is not None else None
            # index labels: read class by class from the label bytes, no one-hot in backward (it would cost half a
            # copy of a sample's logits more); under torch.compile the one-hot, which the compiler fuses
            from_labels = is_index and not compiling()
            t = None if from_labels else label_one_hot(labels[bi], c, dt) if is_index else target[bi].to(dt)
            if need_t:
                logp = logps[bi] if logps else None
                gt.put(bi, _sums_target_backward(g, p, t, _mult(v, w), soft_label, logp))
            if not need_x:
                continue
            dx, in_place = gx.slot(bi, p)  # in the buffer's row where it can (not for half-precision input)
            dp = dx  # dL/dp, then through the activation in place (see activation_backward)
            if from_labels:
                _label_dp(dp, g, p, labels[bi], _mult(v, w))
            else:
                _sums_backward(dp, g, p, t, _mult(v, w), soft_label)
            if "nlc" in g:
                dp = _nlc_dp(dp, g["nlc"], p, labels[bi] if from_labels else None, t, v)
            activation_backward(dp, p, act, dx)
            if "nll" in g:
                k = g["nll"].unsqueeze(1)
                if from_labels:
                    _nll_backward_labels(dx, k, p, labels[bi], v)
                else:
                    _nll_backward(dx, k, p, t, v)
            if "nllp" in g:
                _nllp_backward(dx, g["nllp"], p, labels[bi] if from_labels else None, t, _mult(v, factors[bi]))
            if not in_place:
                gx.put(bi, dx)
    return None if gx is None else gx.result(), None if gt is None else gt.result()


_BINARY_MOMENTS = frozenset(("tp", "sp", "sg", "n", "nll", "nlc"))


def _binary_path(is_index, c, act, weight, moments) -> bool:
    """Whether ``_RegionSums`` takes its two-class path: softmax over two channels with index labels, no weight
    map, and only the sums that path computes (those of Dice, Tversky, DiceCE, Combo, ...)."""
    return is_index and c == 2 and act == "softmax" and weight is None and _BINARY_MOMENTS.issuperset(moments)


def _binary_sums(moments, x, t, v, n):
    """Sums for two softmax classes and index labels t (B, 1, N) (0/1), the whole batch at once, from the logit
    gap d = x_1 - x_0 alone: p_1 = sigmoid(d), p_0 = 1 - p_1, so every class-0 sum is a count minus a class-1 sum
    (the difference taken in float64) and one value per voxel serves both classes. The cross-entropy is
    softplus(-z) with z = d for t = 1 and -d for t = 0: exact at any logit gap. Returns p_1 (B, 1, N), kept for
    backward, the sums, each (B, 2), and, with ``nlc``, a one-element tuple of the bytes that mark where its floor
    does not apply (B, 1, N) (backward needs them: near the floor, at a logit gap of about 16, p_1 rounds to 1 in
    float32 and no longer tells the two sides apart), else (). The complement term of class c is the other
    class's -log p, floored: nlc_0 = sum over t = 1 of min(-log p_1, -log 1e-7), nlc_1 likewise over t = 0."""
    d = x[:, 1:2] - x[:, 0:1]
    p1 = torch.sigmoid(d)
    tf = t.to(x.dtype)
    tv = tf if v is None else tf * v

    def total(a):  # (B,) float64 sums over the voxels (float32 sums, as every kernel takes them)
        return a.sum((1, 2)).double()

    n_valid = total(v) if v is not None else torch.full((x.shape[0],), float(n), dtype=torch.float64, device=x.device)
    sg1 = total(tv)

    def pair(whole, one):  # (class 0, class 1) from a sum over the valid voxels and its class-1 part
        return torch.stack([whole - one, one], 1).to(x.dtype)

    s = {}
    if "tp" in moments or "sp" in moments:
        sp1 = total(p1 if v is None else p1 * v)
        if "tp" in moments:  # tp_0 = sum over valid t = 0 of (1 - p_1) = (N_valid - sg_1) - (sp_1 - tp_1)
            tp1 = total(p1 * tv)
            s["tp"] = torch.stack([n_valid - sg1 - sp1 + tp1, tp1], 1).to(x.dtype)
        if "sp" in moments:
            s["sp"] = pair(n_valid, sp1)
    if "sg" in moments:
        s["sg"] = pair(n_valid, sg1)
    if "n" in moments:
        s["n"] = n_valid.to(x.dtype).unsqueeze(1).expand(-1, 2)
    unfloored = ()
    if "nll" in moments or "nlc" in moments:  # in place where it can: no more memory than MONAI's
        nll = torch.nn.functional.softplus(d.mul_(tf.mul(-2).add_(1)))  # -log p_t
        del d
        if v is not None:
            nll.mul_(v)
        if "nlc" in moments:  # the voxels of label 1 hold nlc_0, the others nlc_1
            floor = -math.log(NLC_EPS)
            unfloored = (torch.lt(nll, floor, out=torch.empty(nll.shape, dtype=torch.uint8, device=nll.device)),)
            floored = nll.clamp_max(floor)
            whole = total(floored)
            ones = total(floored.mul_(tf))
            s["nlc"] = torch.stack([ones, whole - ones], 1).to(x.dtype)
            del floored
        if "nll" in moments:
            whole = total(nll)
            s["nll"] = pair(whole, total(nll.mul_(tf)))
    return p1, s, unfloored


def _binary_backward(moments, x_dtype, grad_out, target, valid, weight, p, labels, unfloored=None):
    """dL/dx of ``_binary_sums``: with a, b, k, j = dL/d(sp, tp, nll, nlc) (each (B, 2)) and p = p_1,
    dL/dd = v [p (1 - p) (a_1 - a_0 - b_0 + (b_0 + b_1) t) + (k_0 + (k_1 - k_0) t + m (j_1 + (j_0 - j_1) t))
    (p - t)] and dx_1 = -dx_0 = dL/dd, with m = ``unfloored`` (0 where nlc's floor applies, p_t <= 1e-7, else 1,
    marked in forward from -log p_t itself). Returns (dL/dx, None)."""
    dt = p.dtype
    b, n = p.shape[0], p.shape[-1]
    with torch.autocast(device_type=p.device.type, enabled=False):
        eager = not compiling() and x_dtype == dt
        gx = torch.empty((b, 2, n), dtype=dt, device=p.device) if eager else None
        parts = []
        for bi in range(b):  # sample by sample: the temporaries stay a fraction of the logits
            sl = slice(bi, bi + 1)
            g = dict(zip(moments, grad_out[:, sl].to(dt).unsqueeze(-1).unbind(0)))  # each (1, 2, 1)
            zero = grad_out.new_zeros((1, 2, 1), dtype=dt)
            a, bt, k = g.get("sp", zero), g.get("tp", zero), g.get("nll", zero)
            ps, tf = p[sl], labels[sl].to(dt)
            # dL/dd, in eager mode straight into the rows of class 1, its negative into those of class 0
            gd = torch.addcmul(ps, ps, ps, value=-1, out=gx[sl, 1:2] if eager else None)  # p (1 - p)
            gd.mul_(torch.addcmul(a[:, 1:2] - a[:, 0:1] - bt[:, 0:1], tf, bt[:, 0:1] + bt[:, 1:2]))
            if "nll" in g or "nlc" in g:
                kv = torch.addcmul(k[:, 0:1], tf, k[:, 1:2] - k[:, 0:1]) if "nll" in g else torch.zeros_like(tf)
                if "nlc" in g:  # the other class's weight, where the floor does not apply
                    j = g["nlc"]
                    kv.addcmul_(torch.addcmul(j[:, 1:2], tf, j[:, 0:1] - j[:, 1:2]), unfloored[sl].to(dt))
                gd.addcmul_(kv, ps - tf)
            if valid is not None:
                gd.mul_(valid[sl])
            if eager:
                torch.neg(gd, out=gx[sl, 0:1])
            else:
                parts.append(torch.cat([-gd, gd], 1).to(x_dtype))
    return (gx if eager else torch.cat(parts)), None


def _mult(v, w):
    """The per-voxel multiplier of every sum: the valid mask times the weight map (either may be None)."""
    if w is None:
        return v
    return w if v is None else w * v


def compact_labels(t: torch.Tensor, c: int) -> torch.Tensor:
    """Index labels (values in ``[0, c)``) in the smallest integer type that holds them: one byte per voxel up to
    256 classes. Comparisons on int64 labels run several times slower than on bytes, and the bytes are cheap to
    keep for backward."""
    small = torch.uint8 if c <= 256 else torch.int32
    return t if t.dtype == small else t.to(small)


def label_one_hot(t: torch.Tensor, c: int, dt) -> torch.Tensor:
    """The (C, n) float one-hot of index labels t (1, n), built inside a kernel for one sample (or chunk) at a
    time and dropped after use, never kept nor part of an autograd graph: C comparisons of the labels' bytes
    (``compact_labels``) written into one buffer, on CPU and GPU alike far cheaper than a scatter, a gather or a
    scatter-add by the label (which serialises on one bucket when nearly every voxel is background). Floats, not
    bool or bytes: PyTorch's CPU kernels run bool-valued operations unvectorised, and a product of floats with
    bytes first copies the bytes to floats."""
    t = compact_labels(t, c)
    if compiling():  # one fused comparison; no writes into slices of a fresh buffer
        return (t == torch.arange(c, device=t.device, dtype=t.dtype).view(c, 1)).to(dt)
    out = torch.empty((c, t.shape[-1]), dtype=dt, device=t.device)
    for k in range(c):
        torch.eq(t[0], k, out=out[k])
    return out


def dense_chunk(t: torch.Tensor, c: int, dt) -> torch.Tensor:
    """A target chunk as C float channels: index labels t (1, n) become their one-hot (C, n); a dense target is
    only cast."""
    if t.shape[0] != 1 or c == 1:
        return t.to(dt)
    return label_one_hot(t, c, dt)


def _class_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum over the class axis of a * b, (C, n) maps (either may have one row), as (1, n)."""
    if compiling() or max(a.shape[0], b.shape[0]) == 1:
        return (a * b).sum(0, keepdim=True)
    c = max(a.shape[0], b.shape[0])
    row = lambda m, k: m[k : k + 1] if m.shape[0] > 1 else m  # noqa: E731
    out = row(a, 0) * row(b, 0)
    for k in range(1, c):
        out.addcmul_(row(a, k), row(b, k))
    return out


def _take(vec: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """vec[t] for a small per-class vector and index labels t (1, n); index_select is the fast path."""
    return vec.index_select(0, t.reshape(-1)).reshape(t.shape)


def _log_true_class(
    pt: torch.Tensor, x: torch.Tensor, onehot: torch.Tensor, lpt: torch.Tensor | None = None
) -> torch.Tensor:
    """log p_t (1, n) from the softmax probability of the true class pt (1, n) (x the logits, onehot the labels'
    one-hot), or ``lpt`` where given (a more exact value computed from pt); where that probability underflows (a
    logit gap beyond ~80 in float32) it is recomputed exactly as x_t - logsumexp(x), so the cross-entropy equals
    PyTorch's log-softmax value everywhere. Eager recomputes only those voxels (usually none); under
    torch.compile, which cannot branch on the data, every voxel's exact value is computed and selected."""
    lpt = torch.log(pt) if lpt is None else lpt
    tiny = torch.finfo(pt.dtype).tiny * 2**20
    if compiling():
        return torch.where(pt < tiny, _class_dot(x, onehot) - torch.logsumexp(x, 0, keepdim=True), lpt)
    if not bool(pt.amin() < tiny):  # a minimum, not a bool map: bool kernels are slow on CPU
        return lpt
    low = pt < tiny
    cols = low[0].nonzero()[:, 0]
    xs = x[:, cols]
    exact = _class_dot(xs, onehot[:, cols])[0] - torch.logsumexp(xs, 0)
    return lpt.index_put((torch.zeros_like(cols), cols), exact)


def _others(a: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """(C, n) -> (C, n): row c is the sum of the other rows of ``a`` (added to ``out`` where given, in place in
    eager mode), added up from the rows themselves, not as the total minus row c, which cancels where one row
    holds nearly all the mass (1 - p_c as sum_{k != c} p_k keeps its relative precision where p_c rounds to 1).
    Eager: up to four rows each row's sum directly, beyond that running prefix and suffix sums (one row of
    temporaries); under torch.compile out of place."""
    c = a.shape[0]
    if compiling():
        prefix = list(itertools.accumulate(a[k] for k in range(c - 1)))
        suffix = list(itertools.accumulate(a[k] for k in range(c - 1, 0, -1)))[::-1]
        rows = [sum(r) for r in zip([0, *prefix], [*suffix, 0])]
        others = torch.stack([r if isinstance(r, torch.Tensor) else torch.zeros_like(a[0]) for r in rows])
        return others if out is None else out + others
    if c <= 4:
        fresh = out is None
        out = torch.empty_like(a) if fresh else out
        for k in range(c):
            rest = [a[i] for i in range(c) if i != k]
            if fresh and len(rest) >= 2:
                torch.add(rest[0], rest[1], out=out[k])
                rest = rest[2:]
            elif fresh:
                out[k].copy_(rest[0]) if rest else out[k].zero_()
                rest = []
            for r in rest:
                out[k].add_(r)
        return out
    out = torch.zeros_like(a) if out is None else out
    acc = torch.empty_like(a[0])
    for k in range(c - 1, 0, -1):  # suffix sums: out[k - 1] += a[k] + ... + a[c - 1]
        (acc.copy_ if k == c - 1 else acc.add_)(a[k])
        out[k - 1].add_(acc)
    for k in range(c - 1):  # prefix sums: out[k + 1] += a[0] + ... + a[k]
        (acc.copy_ if k == 0 else acc.add_)(a[k])
        out[k + 1].add_(acc)
    return out


def _log_complement(p: torch.Tensor) -> torch.Tensor:
    """log max(1 - p_c, NLC_EPS) per class for softmax probabilities p (C, n), 1 - p_c from the other classes."""
    return _others(p).clamp_min_(NLC_EPS).log_()


def _nlc_dp(dp, k, p, labels, t, v):
    """dp (C, N) plus d/dp of sum_c k_c nlc_c (in place in eager mode): d/dp_j = -sum_{c != j} u_c with
    u_c = k_c v (1 - g_c) [q_c > eps] / q_c and q_c = sum_{i != c} p_i = 1 - p_c. Summed over the other classes,
    not as u_j - sum_c u_c (the softmax's backward would cancel the constant): where a wrong class's p_c rounds
    to 1, u_c is large and the softmax's backward then rounds away the p_c u_c q_c that is its exact share. The
    target from the label bytes (labels (1, N), eager) or the dense t (C, N)."""
    # q, then d log max(q, eps) / dq in place: 1 / q, 0 where clamped (q -> inf there; no bool map, slow on CPU)
    u = torch.nn.functional.threshold(_others(p), NLC_EPS, float("inf"), inplace=True).reciprocal_()
    if labels is not None:
        e = torch.empty_like(p[0])
        for c in range(p.shape[0]):
            torch.ne(labels[0], c, out=e)  # 1 - g_c
            u[c].mul_(e).mul_(-k[c])
    else:
        u = u.mul_(1 - t).mul_(-k.unsqueeze(1))
    return _others(u if v is None else u.mul_(v), out=dp)


def _true_class_power(p, x, g, v, power):
    """``nllp`` for one sample: (sum over the valid voxels labelled c of (-log p_c)^power per class (C,), the
    per-voxel factor power (-log p_t)^(power - 1) (1, N), 0 where -log p_t = 0, for backward). -log p_t is
    log1p(sum_{k != t} p_k / p_t), exact to rounding where p_t rounds to 1 (where log p_t loses every digit and a
    fractional power magnifies the loss), and from the logits where p_t underflows (``_log_true_class``)."""
    pt = _class_dot(p, g)
    qt = _class_dot(p, 1 - g) if compiling() else torch.zeros_like(pt)  # sum_{k != t} p_k
    if not compiling():
        for j in range(p.shape[0]):
            qt.addcmul_(p[j : j + 1], 1 - g[j : j + 1])
    nll = -_log_true_class(pt, x, g, -torch.log1p(qt.div_(pt)))
    pw = nll.pow(power)
    fac = (pw / nll.clamp_min(torch.finfo(nll.dtype).tiny)).mul_(power)  # 0 where nll = 0 (pw = 0 there)
    return _blocked_mm(g, pw if v is None else pw * v)[:, 0].to(p.dtype), fac


def _nllp_backward(dx, k, p, labels, t, f):
    """Adds d/dx of sum_c k_c nllp_c to ``dx`` (C, N): f k_t (p_j - [t == j]) per voxel and class j, with f the
    power's factor (times the valid mask) and p_t - 1 written as -sum_{i != t} p_i: the factor grows without
    bound as -log p_t -> 0, so p_t - 1 rounded in float32 would dominate the gradient. The labels from their
    bytes (labels (1, N), eager; rows of temporaries only) or the one-hot t (C, N)."""
    if labels is None:
        kf = _class_dot(k.unsqueeze(1).expand_as(p), t) * f
        return dx.add_(kf * (p * (1 - t) - _class_dot(p, 1 - t) * t))
    c = p.shape[0]
    on, off = torch.empty_like(p[:1]), torch.empty_like(p[:1])
    kt, qt = torch.zeros_like(p[:1]), torch.zeros_like(p[:1])
    for j in range(c):  # k_t and q_t = sum_{i != t} p_i
        torch.eq(labels, j, out=on)
        kt.addcmul_(on, k[j : j + 1].unsqueeze(1))
        torch.ne(labels, j, out=off)
        qt.addcmul_(off, p[j : j + 1])
    kt.mul_(f)
    for j in range(c):  # p_j [t != j] - q_t [t == j]: each product exactly 0 where it does not apply
        torch.ne(labels, j, out=off)
        off.mul_(p[j : j + 1])
        torch.eq(labels, j, out=on)
        off.addcmul_(on, qt, value=-1)
        dx[j : j + 1].addcmul_(off, kt)
    return dx


def _nll_backward(dx, k, p, t, v):
    """Adds the cross-entropy's dL/dx to ``dx`` (C, N): d/dx sum_c t_c (-k_c log p_c) = p sum_c t_c k_c - t k (for
    a target t that sums to 1 over the classes) on the valid voxels (v), with k = dL/dnll (C, 1)."""
    tk = _class_dot(k.expand_as(p), t)  # sum_c t_c k_c: k at each voxel's label for a one-hot
    if v is None:
        return dx.addcmul_(p, tk).addcmul_(t, k, value=-1)
    return dx.addcmul_(p, tk * v).sub_(t * k * v)


def _sums(moments, p, logp, g, m, soft_label, x=None):
    """Sums for one sample with probabilities p and a target g (C, N), as a dict of (C,) vectors; m (1 or C, N)
    multiplies every voxel's term. ``x`` (the sample's logits) is given exactly when g is the one-hot of index
    labels (``_index_sums``); otherwise g is a dense one-hot / soft target and the cross-entropy reads logp."""
    if x is not None:
        return _index_sums(moments, p, x, g, m)
    s = {}
    gm = g if m is None else g * m
    pm = p if m is None else p * m
    if "nll" in moments:
        s["nll"] = -(gm * logp).sum(1)
    if "nlc" in moments:
        s["nlc"] = -((1 - g) * _log_complement(p) * (1 if m is None else m)).sum(1)
    if "tp" in moments:  # soft labels: sum min(p, g) (m is the 0/1 valid mask there)
        s["tp"] = (torch.minimum(pm, gm) if soft_label else pm * g).sum(1)
    if "sp" in moments:
        s["sp"] = pm.sum(1)
    if "sg" in moments:
        s["sg"] = gm.sum(1)
    if "sp2" in moments:
        s["sp2"] = (pm * p).sum(1)
    if "sg2" in moments:
        s["sg2"] = (gm * g).sum(1)
    if "p2g" in moments:
        s["p2g"] = (pm * p * g).sum(1)
    return s


def _index_sums(moments, p, x, g, m):
    """``_sums`` for the one-hot g of index labels: every sum of a product is a diagonal entry of a blocked matrix
    product (``_blocked_mm``), so that no product map is written: tp and sp from pm g^T (its row sums are sum pm,
    each voxel's channels of g summing to 1), sp2 from pm p^T, the counts from g m^T, the cross-entropy (one log
    per voxel, of the true class's probability) from g log(p_t)^T."""
    diag = lambda a, b: torch.diagonal(_blocked_mm(a, b)).to(p.dtype)  # noqa: E731
    s = {}
    pm = p if m is None else p * m
    if "nll" in moments:  # with the 0/1 valid mask as m (no weight maps with the cross-entropy)
        lpt = _log_true_class(_class_dot(p, g), x, g)
        s["nll"] = -_blocked_mm(g, lpt if m is None else lpt * m)[:, 0].to(p.dtype)
    if "tp" in moments or "sp" in moments:
        pg = _blocked_mm(pm, g)
        s["tp"], s["sp"] = torch.diagonal(pg).to(p.dtype), pg.sum(1).to(p.dtype)
    if "sg" in moments or "sg2" in moments:  # g^2 = g
        if m is None:
            counts = g.sum(1)
        else:
            gm = _blocked_mm(g, m)
            counts = (gm[:, 0] if m.shape[0] == 1 else torch.diagonal(gm)).to(p.dtype)
        s["sg"] = s["sg2"] = counts
    if "sp2" in moments:
        s["sp2"] = diag(pm, p)
    if "p2g" in moments:
        s["p2g"] = diag(pm * p, g)
    if "nlc" in moments:  # [c, k] = sum over the voxels labelled k of m log(1 - p_c): the off-diagonal row sums
        lq = _log_complement(p)
        pg = _blocked_mm(lq if m is None else lq * m, g)
        off = 1 - torch.eye(pg.shape[0], dtype=pg.dtype, device=pg.device)
        s["nlc"] = -(pg * off).sum(1).to(p.dtype)  # not the row sum minus the diagonal: no cancellation
    return {k: s[k] for k in moments if k in s}


def _sums_target_backward(g, p, t, m, soft_label, logp):
    """dL/dt for one sample with a dense target t (C, N) (the gradient of a soft target, e.g. distillation), given
    dL/d(sum) per class g[m] (C,); m (1 or C, N) multiplies every voxel's term. Soft labels differentiate MONAI's
    L1 form TP = (|p|_1 + |t|_1 - |p - t|_1) / 2, sum t = |t|_1, with its subgradient sign(0) = 0."""
    col = lambda k: g[k].unsqueeze(1)  # noqa: E731
    dg = torch.zeros_like(p)
    sgn = torch.sign(t) if soft_label else None
    if "tp" in g:
        dg += col("tp") * ((sgn + torch.sign(p - t)) / 2 if soft_label else p)
    if "sg" in g:
        dg += col("sg") * sgn if soft_label else col("sg")
    if "sg2" in g:
        dg += 2 * col("sg2") * t
    if "p2g" in g:
        dg += col("p2g") * p * p
    if "nll" in g:
        dg -= col("nll") * logp
    if "nlc" in g:  # d/dg_c of -(1 - g_c) log(1 - p_c)
        dg += col("nlc") * _log_complement(p)
    return dg if m is None else dg * m


def _label_dp(out: torch.Tensor, g: dict, p: torch.Tensor, t: torch.Tensor, m) -> torch.Tensor:
    """dL/dp for index labels t (1, N), written class by class into ``out`` (C, N) from the label bytes, without a
    one-hot: dL/dp_c = m (a_c + 2 a2_c p_c + [t == c] (b_c + 2 e_c p_c)) with a, a2, b, e = dL/d(sp, sp2, tp, p2g)
    (absent ones 0) and m (1 or C, N) the voxel multiplier (None: 1). Temporaries: one row."""
    t = compact_labels(t, out.shape[0])
    a, a2, b, e = (g.get(k) for k in ("sp", "sp2", "tp", "p2g"))
    for k in range(out.shape[0]):
        row = out[k]
        if b is None and e is None:
            row.zero_()
        else:
            torch.eq(t[0], k, out=row)  # [t == k]
            if e is None:
                row.mul_(b[k])
            else:  # [t == k] (b_k + 2 e_k p_k)
                row.mul_(torch.mul(p[k], 2 * e[k]).add_(b[k] if b is not None else 0))
        if a is not None:
            row.add_(a[k])
        if a2 is not None:
            row.add_(p[k] * (2 * a2[k]))
    if m is not None:
        out *= m
    return out


def _nll_backward_labels(dx, k, p, t, v):
    """``_nll_backward`` for index labels t (1, N), class by class from the labels: two rows of temporaries."""
    t = compact_labels(t, dx.shape[0])
    e = torch.empty_like(p[:1])
    kt = torch.zeros_like(p[:1])
    for j in range(dx.shape[0]):
        torch.eq(t, j, out=e)  # [t == j]
        kt.addcmul_(e, k[j : j + 1])
        if v is not None:
            e.mul_(v)
        dx[j : j + 1].addcmul_(e, k[j : j + 1], value=-1)
    return dx.addcmul_(p, kt if v is None else kt.mul_(v))


_BLOCK = 1 << 15  # voxels per block of ``_blocked_mm``'s matrix products


def _blocked_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a b^T in float64 for (C or K, N) maps: one batched matrix product over blocks of 2^15 voxels, which reads a
    and b once and writes no product map (on CPU and GPU alike fewer bytes than a product and a sum); each block's
    sums are exact to float32 rounding and the blocks are added in float64. With a one-hot b (every voxel's
    channels sum to 1) the diagonal of ``a b^T`` is sum a g per class and its row sums are sum a."""
    (ka, n), kb = a.shape, b.shape[0]
    nb = n // _BLOCK
    total = a.new_zeros((ka, kb), dtype=torch.float64)
    if nb:
        head = nb * _BLOCK
        blocks_a = a[:, :head].reshape(ka, nb, _BLOCK).transpose(0, 1)
        blocks_b = b[:, :head].reshape(kb, nb, _BLOCK).permute(1, 2, 0)
        total = total + torch.bmm(blocks_a, blocks_b).double().sum(0)
    if nb * _BLOCK < n:
        tail = slice(nb * _BLOCK, n)
        total = total + (a[:, tail] @ b[:, tail].T).double()
    return total


def _sums_backward(out, g, p, t, m, soft_label):
    """dL/dp for one sample with a dense one-hot / soft target t (C, N), or the one-hot of index labels under
    torch.compile, given dL/d(sum) per class g[m] (C,), written into ``out`` (C, N); m (1 or C, N) multiplies every
    voxel's term. In place, term by term: on CPU every fresh large buffer costs page faults as well as a pass."""
    col = lambda k: g[k].unsqueeze(1)  # noqa: E731
    terms = []  # (map, per-class factor): dL/dp = sum of map * factor, plus the constant dL/d(sum p)
    if "sp2" in g:
        terms.append((p, 2 * col("sp2")))
    if "tp" in g:  # soft labels: d/dp sum(min(p, g)), split evenly at ties as |p - g| does
        terms.append(((1 - torch.sign(p - t)) / 2 if soft_label else t, col("tp")))
    if "p2g" in g:
        terms.append((p * t, 2 * col("p2g")))
    if terms:
        torch.mul(*terms[0], out=out)
        for a, f in terms[1:]:
            out.addcmul_(a, f)
        if "sp" in g:
            out.add_(col("sp"))
    elif "sp" in g:
        out.copy_(col("sp").expand_as(out))
    else:
        out.zero_()
    if m is not None:
        out *= m
    return out


def region_sums(
    prep, moments, soft_label: bool = False, weight: torch.Tensor | None = None, power: float = 1.0
) -> dict[str, torch.Tensor]:
    """Per-(sample, class) sums over the valid voxels of a ``Prepared`` input, as (B, C) tensors.

    ``weight`` (B, 1 or C, N), e.g. a distance map, multiplies every voxel's term: with it ``sp`` is
    sum p * w (the boundary loss) and sp2 - 2 tp + sg2 is sum (p - g)^2 w (the Hausdorff-DT loss). It takes
    neither soft labels nor the cross-entropy ``nll``. A dense floating target that requires grad gets its
    gradient (soft labels: that of MONAI's L1 form, subgradient 0 at a target of 0). ``power`` is the exponent of
    ``nllp``."""
    unknown = set(moments) - set(MOMENTS)
    if unknown:
        raise ValueError(f"unknown statistics {sorted(unknown)}; known: {MOMENTS}.")
    moments = tuple(moments)
    if weight is not None and soft_label:
        raise ValueError("soft-label statistics take no weight map.")
    log_terms = {"nll", "nlc", "nllp"}.intersection(moments)
    if weight is not None and log_terms:
        raise ValueError(f"the statistics {sorted(log_terms)} take no weight map.")
    if log_terms and prep.act != "softmax":
        raise ValueError(f"the statistics {sorted(log_terms)} need softmax=True (they read softmax probabilities).")
    if "nllp" in moments and not (prep.is_index and power > 0):
        raise ValueError(f"the statistic nllp needs index labels and a power > 0, got power={power}.")
    # a soft target that requires grad (distillation) gets its gradient; its cross-entropy term needs log p
    keep_logp = "nll" in moments and not prep.is_index and prep.target.requires_grad
    args = (prep.x, prep.target, prep.valid, weight, prep.act, moments, soft_label, keep_logp, float(power))
    out = apply_fused(_RegionSums, *args)[0]
    return {m: out[i] for i, m in enumerate(moments)}


def is_distributed(flag: bool) -> bool:
    return bool(flag) and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: torch.Tensor, distributed: bool) -> torch.Tensor:
    """Sum over ranks when ``distributed`` and a process group is up; keeps autograd (its backward is
    again a sum over ranks, which DDP's gradient averaging turns into the exact full-batch gradient)."""
    if not is_distributed(distributed):
        return t
    if t.requires_grad:
        from torch.distributed.nn.functional import all_reduce

        return all_reduce(t)
    t = t.clone()
    dist.all_reduce(t)
    return t


def pool(stats: dict[str, torch.Tensor], batch: bool, distributed: bool) -> dict[str, torch.Tensor]:
    """Batch statistics: sum over the batch (B, C) -> (C,), then over ranks when distributed.

    Without ``batch`` the statistics stay per sample and nothing crosses ranks: per-sample scores need
    no pooling, only the final mean does (see ``reduce_loss``).
    """
    if not batch:
        return stats
    keys = list(stats)
    stacked = torch.stack([stats[k].sum(0) for k in keys])
    stacked = all_reduce_sum(stacked, distributed)
    return {k: stacked[i] for i, k in enumerate(keys)}
