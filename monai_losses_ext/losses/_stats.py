"""One place for the statistics: fused per-(sample, class) sums, batch pooling and DDP all-reduce.

Every overlap loss is a formula over a few sums per sample b and class c, taken over the valid voxels:

    tp  = sum p*g          sp  = sum p          sg  = sum g
    sp2 = sum p^2          sg2 = sum g^2        p2g = sum p^2 * g        n = number of valid voxels
    nll = sum -g * log softmax(x)   (cross-entropy, per true class; needs the softmax activation)

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

import torch
import torch.distributed as dist

__all__ = ["MOMENTS", "region_sums", "pool", "all_reduce_sum", "compute_dtype", "is_distributed"]

MOMENTS = ("tp", "sp", "sg", "sp2", "sg2", "p2g", "n", "nll")
# voxels per chunk of the chunked kernels (focal, checkpointed per-voxel terms): an eighth of a sample, within
# [2^14, 2^18]; the temporaries of one chunk then stay well under one copy of the logits, and the Python loop
# costs little next to the arithmetic.
CHUNK_MIN, CHUNK_MAX = 1 << 14, 1 << 18


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64 (gradient checks); everything else accumulates in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def activate(x: torch.Tensor, act: str, dim: int) -> torch.Tensor:
    if act == "softmax":
        return torch.softmax(x, dim)
    if act == "sigmoid":
        return torch.sigmoid(x)
    return x


def activation_backward(dp: torch.Tensor, p: torch.Tensor, act: str, dim: int) -> torch.Tensor:
    """Gradient w.r.t. the pre-activation input given dL/dp and p = act(x)."""
    if act == "softmax":
        return p * (dp - (p * dp).sum(dim, keepdim=True))
    if act == "sigmoid":
        return dp * p * (1 - p)
    return dp


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


def apply_fused(cls, *args):
    """``cls.apply(*args)`` for a ``fused`` kernel: the jvp-free class while torch.compile traces, else ``eager``."""
    return (cls if compiling() else cls.eager).apply(*args)


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
    return _Backward.apply(fn, kernel, anchor, *tensors)


@fused
class _RegionSums(torch.autograd.Function):
    """Fused activation + sums, one sample at a time. The probabilities (and, for index labels, the int32 flat
    index of each voxel's true class) are kept for backward: about one copy of the logits, cheaper in time
    than recomputing the softmax and far cheaper in memory than autograd's graph of the same computation.

    forward returns ``(out (M, B, C), *probabilities, *flat indices, *log-probabilities)``; the log-probabilities
    (dense targets with the cross-entropy) only when ``keep_logp``: the target's gradient needs them. Every result
    is built out of place (per-sample rows, then stacked), which torch.compile traces exactly."""

    @staticmethod
    def forward(x, target, valid, weight, act, moments, soft_label, keep_logp):
        with torch.autocast(device_type=x.device.type, enabled=False):
            b, c, n = x.shape
            dt = compute_dtype(x)
            is_index = target.shape[1] == 1 and c > 1
            rows, probs, flats, logps = [], [], [], []
            for bi in range(b):
                # dense targets need every log p for the cross-entropy; index labels only the true class's,
                # which _index_sums takes from p (one exp pass less)
                logp = torch.log_softmax(x[bi].to(dt), 0) if "nll" in moments and not is_index else None
                p = logp.exp() if logp is not None else activate(x[bi].to(dt), act, 0)
                v = valid[bi] if valid is not None else None
                w = weight[bi] if weight is not None else None
                if is_index:
                    sums, flat = _index_sums(moments, p, x[bi], target[bi], v, w, c)
                    flats.append(flat)
                else:
                    sums = _dense_sums(moments, p, logp, target[bi].to(dt), _mult(v, w), soft_label)
                    if keep_logp and logp is not None:
                        logps.append(logp)
                if "n" in moments:  # number of valid voxels, whatever the weights
                    sums["n"] = p.new_full((c,), n) if v is None else v.sum().to(dt).expand(c)
                rows.append(torch.stack([sums[m] for m in moments]))
                probs.append(p)
            out = torch.stack(rows, 1)
        return (out, *probs, *flats, *logps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, target, valid, weight, act, moments, soft_label, _ = inputs
        out, *kept = output
        ctx.mark_non_differentiable(*kept)
        ctx.save_for_backward(out, target, valid, weight, *kept)
        ctx.act, ctx.moments, ctx.soft_label, ctx.x_dtype = act, moments, soft_label, x.dtype
        ctx.is_index = target.shape[1] == 1 and x.shape[1] > 1

    @staticmethod
    def backward(ctx, grad_out, *_):
        out, target, valid, weight, *kept = ctx.saved_tensors
        need_x, need_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1] and not ctx.is_index
        if not (need_x or need_t):
            return (None,) * 8
        fn = functools.partial(
            _region_sums_backward, ctx.act, ctx.moments, ctx.soft_label, ctx.is_index, ctx.x_dtype, need_x, need_t
        )
        gx, gt = run_backward(fn, "_RegionSums", out, grad_out, target, valid, weight, *kept)
        return gx, gt, None, None, None, None, None, None

    @staticmethod
    def vmap(info, in_dims, *args):
        return vmap_by_slices(_RegionSums.eager.apply, info, in_dims, args)


def _region_sums_backward(
    act, moments, soft_label, is_index, x_dtype, need_x, need_t, grad_out, target, valid, weight, *kept
):
    """dL/dx (B, C, N) and, for a dense floating target, dL/dtarget, from dL/d(sums) (M, B, C) and what forward
    kept (probabilities, flat indices for index labels, log-probabilities when the target needs a gradient)."""
    b = target.shape[0]
    probs, rest = kept[:b], kept[b:]
    flats = rest if is_index else ()
    logps = rest if not is_index else ()
    c, n = probs[0].shape
    dt = probs[0].dtype
    with torch.autocast(device_type=probs[0].device.type, enabled=False):
        grad_out = grad_out.to(dt)
        gx = Slabs(b, (c, n), x_dtype, probs[0].device) if need_x else None
        gt = Slabs(b, target.shape[1:], target.dtype, target.device) if need_t else None
        for bi in range(b):
            g = {m: grad_out[i, bi] for i, m in enumerate(moments)}
            p = probs[bi]
            v = valid[bi] if valid is not None else None
            w = weight[bi] if weight is not None else None
            if need_t:
                logp = logps[bi] if logps else None
                gt.put(bi, _sums_target_backward(g, p, target[bi].to(dt), _mult(v, w), soft_label, logp))
            if not need_x:
                continue
            if is_index:  # computed in place in the buffer's row where it can (not for half-precision input)
                dx, in_place = gx.slot(bi, p)
                _index_backward(dx, g, p, flats[bi], target[bi].reshape(1, -1), v, w, act)
                if not in_place:
                    gx.put(bi, dx)
                continue
            dp = _sums_backward(g, p, target[bi], _mult(v, w), soft_label, dt)
            dx = activation_backward(dp, p, act, 0)
            if "nll" in g:  # d/dx sum_c e_c (-g_c log p_c) = p * sum_c e_c g_c - e * g, on valid voxels
                eg = g["nll"].unsqueeze(1) * dense_chunk(target[bi], c, dt)
                nll_dx = p * eg.sum(0, keepdim=True) - eg
                dx += nll_dx if v is None else nll_dx * v
            gx.put(bi, dx)
    return None if gx is None else gx.result(), None if gt is None else gt.result()


def _mult(v, w):
    """The per-voxel multiplier of every sum: the valid mask times the weight map (either may be None)."""
    if w is None:
        return v
    return w if v is None else w * v


def dense_chunk(t: torch.Tensor, c: int, dt) -> torch.Tensor:
    if t.shape[0] == 1 and c > 1:
        return torch.zeros(c, t.shape[-1], dtype=dt, device=t.device).scatter_(0, t.reshape(1, -1).long(), 1.0)
    return t.to(dt)


def _at_true_class(w: torch.Tensor | None, flat: torch.Tensor, dtype) -> torch.Tensor | None:
    """A weight map (1 or C, N) read at each voxel's true class: (N,), or None without a map."""
    if w is None:
        return None
    return (w.reshape(-1).index_select(0, flat) if w.shape[0] > 1 else w[0]).to(dtype)


def _take(vec: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """vec[t] for a small per-class vector and index labels t (1, n); index_select is the fast path."""
    return vec.index_select(0, t.reshape(-1)).reshape(t.shape)


def _index_backward(out, g, p, flat, t, v, w, act):
    """Backward for index labels, written into ``out`` (C, N) in place, without building a one-hot or dL/dp.

    dL/dp_c = A_c + [t == c] B with A_c = (a_c + 2 a2_c p_c) w_c and B = (b_t + 2 e_t p_t) w_t, where a, a2, b,
    e are dL/d(sp, sp2, tp, p2g) and w the voxel weight (1 without a map); the cross-entropy adds
    k (p - onehot) in logit space, k = dL/dnll_t. Softmax: dx = p A - p s + [t == c](p_t B - k) with
    s = sum_c p_c A_c + p_t B - k; sigmoid: dx = (A + [t == c] B) p (1 - p); none: dx = A + [t == c] B.
    On CPU every fresh large buffer costs page faults as well as a pass, hence the in-place steps."""
    c = p.shape[0]
    a = g["sp"] if "sp" in g else p.new_zeros(c)
    needs_pt = "tp" in g or "p2g" in g
    pt = p.view(-1).index_select(0, flat).unsqueeze(0) if needs_pt else None  # recomputed: cheaper than kept
    wt = _at_true_class(w, flat, p.dtype)
    # A into out
    if "sp2" in g:
        torch.mul(p, (2 * g["sp2"]).unsqueeze(1), out=out).add_(a.unsqueeze(1))
        if w is not None:
            out.mul_(w)
    elif w is not None:
        torch.mul(w, a.unsqueeze(1), out=out)
    elif act != "softmax":  # (softmax with A_c = a_c takes the gemv path below)
        out.copy_(a.unsqueeze(1).expand_as(out))
    bvec = None  # B, per voxel
    if "tp" in g:
        bvec = _take(g["tp"], t)[0]
    if "p2g" in g:
        e2 = 2 * _take(g["p2g"], t)[0] * pt[0]
        bvec = e2 if bvec is None else bvec + e2
    if bvec is not None and wt is not None:
        bvec = bvec * wt
    if act == "softmax":
        extra = None if bvec is None else pt[0] * bvec
        if "nll" in g:
            k = _take(g["nll"], t)[0]
            extra = -k if extra is None else extra - k
        if w is None and "sp2" not in g:  # A_c = a_c: s by one gemv, out = p * a
            s = a @ p
            torch.mul(p, a.unsqueeze(1).to(p.dtype), out=out)
        else:
            out.mul_(p)
            s = out.sum(0)
        if extra is not None:
            s += extra
        out.addcmul_(p, s.unsqueeze(0), value=-1)
        if extra is not None:
            out.view(-1).index_add_(0, flat, extra)
    else:
        if bvec is not None:
            out.view(-1).index_add_(0, flat, bvec)
        if act == "sigmoid":
            out.mul_(p).mul_(1 - p)
    if v is not None:
        out *= v


def _index_sums(moments, p, x, t, v, w, c):
    """Sums for one sample, index labels t (1, N), probabilities p (C, N) of the logits x, as a dict of (C,)
    vectors, and the flat index of the true class of every voxel, which backward reuses. ``w`` (1 or C, N) weighs
    every voxel's contribution."""
    t = t.reshape(1, -1)
    bins = t[0] if v is None else torch.where(v[0], t[0], c)  # ignored voxels go to an extra bin, dropped
    nb = c + 1

    def binned(src):  # per-class sums of a per-voxel vector; scatter_add, not bincount: one pass, static size
        return torch.zeros(nb, dtype=src.dtype, device=src.device).scatter_add(0, bins, src)[:c]

    flat = _flat_index(t[0], p.shape[1], c)  # position of (t_v, v) in the flattened (C, N) map
    pt = p.view(-1).index_select(0, flat)
    s = {}
    if "nll" in moments:
        s["nll"] = -binned(_log_true_class(pt, x, flat))
    wt = _at_true_class(w, flat, p.dtype)
    ptw = pt if wt is None else pt * wt
    if "tp" in moments:
        s["tp"] = binned(ptw)
    if "p2g" in moments:
        s["p2g"] = binned(pt * ptw)
    if "sg" in moments or "sg2" in moments:
        counts = (bin_counts(bins, nb)[:c] if wt is None else binned(wt)).to(p.dtype)
        for m in ("sg", "sg2"):
            if m in moments:
                s[m] = counts
    m = _mult(v, w)
    pm = p if m is None else p * m
    if "sp" in moments:
        s["sp"] = pm.sum(1)
    if "sp2" in moments:
        s["sp2"] = (pm * p).sum(1)
    return s, flat


def bin_counts(bins: torch.Tensor, nb: int) -> torch.Tensor:
    """How many entries of the int64 vector ``bins`` (values in ``[0, nb)``) fall in each of ``nb`` bins, as int64:
    exact at any size (float32 stops counting at 2^24), and of a static size, unlike ``torch.bincount`` whose
    output size depends on the data (torch.compile cannot trace that)."""
    ones = torch.ones((), dtype=torch.int64, device=bins.device).expand(bins.shape[0])
    return torch.zeros(nb, dtype=torch.int64, device=bins.device).scatter_add(0, bins, ones)


def _log_true_class(pt: torch.Tensor, x: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """log p_t from the softmax probability of the true class; where that probability underflows (a logit gap
    beyond ~80 in float32) it is recomputed exactly as x_t - logsumexp(x), so the cross-entropy equals
    PyTorch's log-softmax value everywhere. Eager recomputes only those voxels (usually none); under
    torch.compile, which cannot branch on the data, every voxel's exact value is computed and selected."""
    lpt = torch.log(pt)
    low = pt < torch.finfo(pt.dtype).tiny * 2**20
    if compiling():
        cols = None
    elif bool(low.any()):
        cols = low.nonzero()[:, 0]
    else:
        return lpt
    xs, fl = (x, flat) if cols is None else (x[:, cols], flat[cols])
    exact = x.reshape(-1).index_select(0, fl).to(pt.dtype) - torch.logsumexp(xs.to(pt.dtype), 0)
    return torch.where(low, exact, lpt) if cols is None else lpt.index_put((cols,), exact)


_ARANGE: dict = {}


def _flat_index(t: torch.Tensor, n: int, c: int) -> torch.Tensor:
    """t * n + arange(n): with it, index_select / index_add on the flattened (C, N) map replace gather /
    scatter along the class axis, which are about twice as slow on CPU. int32 (half the memory kept for
    backward) whenever the map has fewer than 2^31 entries. The arange is cached in eager mode; torch.compile
    fuses it into the addition (and would recompile on every change of a cached global)."""
    dtype = torch.int32 if c * n < 2**31 else torch.int64
    key = (n, t.device, dtype)
    ar = torch.arange(n, device=t.device, dtype=dtype) if compiling() else _ARANGE.get(key)
    if ar is None:
        if len(_ARANGE) >= 8:  # a few sizes (patch, validation volume) recur; keep the cache small
            _ARANGE.pop(next(iter(_ARANGE)))
        ar = _ARANGE[key] = torch.arange(n, device=t.device, dtype=dtype)
    return torch.add(ar, t.to(dtype), alpha=n)


def _dense_sums(moments, p, logp, g, m, soft_label):
    """Sums for one sample with a dense target g (C, N), as a dict of (C,) vectors; m (1 or C, N) multiplies every
    voxel's term."""
    s = {}
    if "nll" in moments:
        nll = -(g * logp)
        s["nll"] = (nll if m is None else nll * m).sum(1)
    pm = p if m is None else p * m
    gm = g if m is None else g * m
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
    return dg if m is None else dg * m


def _sums_backward(g, p, t, m, soft_label, dt):
    """dL/dp for one sample with a dense target t (C, N), given dL/d(sum) per class g[m] (C,); m (1 or C, N)
    multiplies every voxel's term."""
    col = lambda k: g[k].unsqueeze(1)  # noqa: E731
    gt = t.to(dt)
    dp = torch.zeros_like(p)
    if "sp" in g:
        dp += col("sp")
    if "sp2" in g:
        dp += 2 * col("sp2") * p
    if "tp" in g:
        if soft_label:  # d/dp sum(min(p, g)), split evenly at ties as |p - g| does
            dp += col("tp") * (1 - torch.sign(p - gt)) / 2
        else:
            dp += col("tp") * gt
    if "p2g" in g:
        dp += 2 * col("p2g") * p * gt
    if m is not None:
        dp *= m
    return dp


def region_sums(prep, moments, soft_label: bool = False, weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-(sample, class) sums over the valid voxels of a ``Prepared`` input, as (B, C) tensors.

    ``weight`` (B, 1 or C, N), e.g. a distance map, multiplies every voxel's term: with it ``sp`` is
    sum p * w (the boundary loss) and sp2 - 2 tp + sg2 is sum (p - g)^2 w (the Hausdorff-DT loss). It takes
    neither soft labels nor the cross-entropy ``nll``. A dense floating target that requires grad gets its
    gradient (soft labels: that of MONAI's L1 form, subgradient 0 at a target of 0)."""
    unknown = set(moments) - set(MOMENTS)
    if unknown:
        raise ValueError(f"unknown statistics {sorted(unknown)}; known: {MOMENTS}.")
    moments = tuple(moments)
    if weight is not None and soft_label:
        raise ValueError("soft-label statistics take no weight map.")
    if weight is not None and "nll" in moments:
        raise ValueError("the cross-entropy statistic takes no weight map.")
    if "nll" in moments and prep.act != "softmax":
        raise ValueError("the cross-entropy statistic needs softmax=True (it is a softmax cross-entropy).")
    # a soft target that requires grad (distillation) gets its gradient; its cross-entropy term needs log p
    keep_logp = "nll" in moments and not prep.is_index and prep.target.requires_grad
    out = apply_fused(_RegionSums, prep.x, prep.target, prep.valid, weight, prep.act, moments, soft_label, keep_logp)[0]
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
