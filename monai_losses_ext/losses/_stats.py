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

import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

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


class _RegionSums(torch.autograd.Function):
    """Fused activation + sums, one sample at a time. The probabilities (and, for index labels, the int32 flat
    index of each voxel's true class) are kept for backward: about one copy of the logits, cheaper in time
    than recomputing the softmax and far cheaper in memory than autograd's graph of the same computation."""

    @staticmethod
    def forward(ctx, x, target, valid, weight, act, moments, soft_label):
        with torch.autocast(device_type=x.device.type, enabled=False):
            b, c, n = x.shape
            dt = compute_dtype(x)
            out = torch.zeros(len(moments), b, c, dtype=dt, device=x.device)
            idx = {m: i for i, m in enumerate(moments)}
            is_index = target.shape[1] == 1 and c > 1
            if "nll" in idx and act != "softmax":
                raise ValueError("the cross-entropy statistic needs softmax=True (it is a softmax cross-entropy).")
            probs, flats = [], []
            for bi in range(b):
                # dense targets need every log p for the cross-entropy; index labels only the true class's,
                # which _index_sums takes from p (one exp pass less)
                logp = torch.log_softmax(x[bi].to(dt), 0) if "nll" in idx and not is_index else None
                p = logp.exp() if logp is not None else activate(x[bi].to(dt), act, 0)
                v = valid[bi] if valid is not None else None
                w = weight[bi] if weight is not None else None
                if is_index:
                    flats.append(_index_sums(out[:, bi], idx, p, x[bi], target[bi], v, w, c))
                else:
                    _dense_sums(out[:, bi], idx, p, logp, target[bi].to(dt), _mult(v, w), soft_label)
                if "n" in idx:  # number of valid voxels, whatever the weights
                    out[idx["n"], bi] += n if v is None else v.sum()
                probs.append(p)
            ctx.save_for_backward(target, valid, weight, *probs, *flats)
            ctx.act, ctx.idx, ctx.soft_label, ctx.is_index, ctx.x_dtype = act, idx, soft_label, is_index, x.dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        target, valid, weight, *saved = ctx.saved_tensors
        b = target.shape[0]
        probs, flats = saved[:b], saved[b:]
        idx, act = ctx.idx, ctx.act
        c, n = probs[0].shape
        dt = probs[0].dtype
        with torch.autocast(device_type=probs[0].device.type, enabled=False):
            grad_out = grad_out.to(dt)
            gx = torch.empty((b, c, n), dtype=ctx.x_dtype, device=probs[0].device)
            for bi in range(b):
                g = {m: grad_out[i, bi] for m, i in idx.items()}
                p = probs[bi]
                v = valid[bi] if valid is not None else None
                w = weight[bi] if weight is not None else None
                if ctx.is_index:
                    in_place = gx.dtype == dt  # half-precision input: compute in float32, then cast
                    out = gx[bi] if in_place else torch.empty_like(p)
                    _index_backward(out, g, p, flats[bi], target[bi].reshape(1, -1), v, w, act)
                    if not in_place:
                        gx[bi] = out
                    continue
                m = _mult(v, w)
                dp = _sums_backward(g, p, target[bi], m, ctx.soft_label, dt)
                dx = activation_backward(dp, p, act, 0)
                if "nll" in g:  # d/dx sum_c e_c (-g_c log p_c) = p * sum_c e_c g_c - e * g, on valid voxels
                    eg = g["nll"].unsqueeze(1) * dense_chunk(target[bi], c, dt)
                    nll_dx = p * eg.sum(0, keepdim=True) - eg
                    dx += nll_dx if v is None else nll_dx * v
                gx[bi] = dx
        return gx, None, None, None, None, None, None


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


def _index_sums(out, idx, p, x, t, v, w, c):
    """Sums for one sample, index labels t (1, N), probabilities p (C, N) of the logits x; out (M, C) is
    accumulated in place. Returns the flat index of the true class of every voxel, which backward reuses.
    ``w`` (1 or C, N) weighs every voxel's contribution."""
    t = t.reshape(1, -1)
    bins = t[0] if v is None else torch.where(v[0], t[0], c)  # ignored voxels go to an extra bin, dropped
    nb = c + 1
    flat = _flat_index(t[0], p.shape[1], c)  # position of (t_v, v) in the flattened (C, N) map
    pt = p.view(-1).index_select(0, flat).unsqueeze(0)
    if "nll" in idx:
        out[idx["nll"]] -= p.new_zeros(nb).scatter_add_(0, bins, _log_true_class(pt[0], x, flat))[:c]
    wt = _at_true_class(w, flat, p.dtype)
    ptw = pt[0] if wt is None else pt[0] * wt
    # scatter_add rather than a weighted bincount: bincount scans its input for min/max first
    if "tp" in idx:
        out[idx["tp"]] += p.new_zeros(nb).scatter_add_(0, bins, ptw)[:c]
    if "p2g" in idx:
        out[idx["p2g"]] += p.new_zeros(nb).scatter_add_(0, bins, pt[0] * ptw)[:c]
    if "sg" in idx or "sg2" in idx:
        if wt is None:
            counts = torch.bincount(bins, minlength=nb)[:c].to(out.dtype)
        else:
            counts = p.new_zeros(nb).scatter_add_(0, bins, wt)[:c]
        for m in ("sg", "sg2"):
            if m in idx:
                out[idx[m]] += counts
    m = _mult(v, w)
    pm = p if m is None else p * m
    if "sp" in idx:
        out[idx["sp"]] += pm.sum(1)
    if "sp2" in idx:
        out[idx["sp2"]] += (pm * p).sum(1)
    return flat


def _log_true_class(pt: torch.Tensor, x: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """log p_t from the softmax probability of the true class; where that probability underflows (a logit gap
    beyond ~80 in float32) it is recomputed exactly as x_t - logsumexp(x), so the cross-entropy equals
    PyTorch's log-softmax value everywhere."""
    lpt = torch.log(pt)
    low = pt < torch.finfo(pt.dtype).tiny * 2**20
    if bool(low.any()):
        cols = low.nonzero()[:, 0]
        xs = x[:, cols].to(pt.dtype)
        lpt[cols] = x.reshape(-1).index_select(0, flat[cols]).to(pt.dtype) - torch.logsumexp(xs, 0)
    return lpt


_ARANGE: dict = {}


def _flat_index(t: torch.Tensor, n: int, c: int) -> torch.Tensor:
    """t * n + arange(n): with it, index_select / index_add on the flattened (C, N) map replace gather /
    scatter along the class axis, which are about twice as slow on CPU. int32 (half the memory kept for
    backward) whenever the map has fewer than 2^31 entries."""
    dtype = torch.int32 if c * n < 2**31 else torch.int64
    key = (n, t.device, dtype)
    ar = _ARANGE.get(key)
    if ar is None:
        if len(_ARANGE) >= 8:  # a few sizes (patch, validation volume) recur; keep the cache small
            _ARANGE.pop(next(iter(_ARANGE)))
        ar = _ARANGE[key] = torch.arange(n, device=t.device, dtype=dtype)
    return torch.add(ar, t.to(dtype), alpha=n)


def _dense_sums(out, idx, p, logp, g, m, soft_label):
    """Sums for one sample with a dense target g (C, N); m (1 or C, N) multiplies every voxel's term."""
    if "nll" in idx:
        nll = -(g * logp)
        out[idx["nll"]] += (nll if m is None else nll * m).sum(1)
    pm = p if m is None else p * m
    gm = g if m is None else g * m
    if "tp" in idx:  # soft labels: sum min(p, g) (m is the 0/1 valid mask there)
        out[idx["tp"]] += (torch.minimum(pm, gm) if soft_label else pm * g).sum(1)
    if "sp" in idx:
        out[idx["sp"]] += pm.sum(1)
    if "sg" in idx:
        out[idx["sg"]] += gm.sum(1)
    if "sp2" in idx:
        out[idx["sp2"]] += (pm * p).sum(1)
    if "sg2" in idx:
        out[idx["sg2"]] += (gm * g).sum(1)
    if "p2g" in idx:
        out[idx["p2g"]] += (pm * p * g).sum(1)


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
    sum p * w (the boundary loss) and sp2 - 2 tp + sg2 is sum (p - g)^2 w (the Hausdorff-DT loss)."""
    unknown = set(moments) - set(MOMENTS)
    if unknown:
        raise ValueError(f"unknown statistics {sorted(unknown)}; known: {MOMENTS}.")
    moments = tuple(moments)
    if weight is not None and soft_label:
        raise ValueError("soft-label statistics take no weight map.")
    out = _RegionSums.apply(prep.x, prep.target, prep.valid, weight, prep.act, moments, soft_label)
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
