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
# voxels per chunk of the fused kernels: small enough to stay in cache-sized temporaries, large enough
# that the Python loop costs nothing next to the arithmetic.
CHUNK = 1 << 18


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
    for start in range(0, n, CHUNK):
        yield slice(start, min(start + CHUNK, n))


class _RegionSums(torch.autograd.Function):
    """Fused activation + sums, one sample at a time. The probabilities (and, for index labels, the probability
    of the true class) are kept for backward: one copy of the logits, which is cheaper in time than
    recomputing the softmax and far cheaper in memory than autograd's graph of the same computation."""

    @staticmethod
    def forward(ctx, x, target, valid, act, moments, soft_label):
        with torch.autocast(device_type=x.device.type, enabled=False):
            b, c, n = x.shape
            dt = compute_dtype(x)
            out = torch.zeros(len(moments), b, c, dtype=dt, device=x.device)
            idx = {m: i for i, m in enumerate(moments)}
            is_index = target.shape[1] == 1 and c > 1
            if "nll" in idx and act != "softmax":
                raise ValueError("the cross-entropy statistic needs softmax=True (it is a softmax cross-entropy).")
            probs, pts, flats = [], [], []
            for bi in range(b):
                logp = torch.log_softmax(x[bi].to(dt), 0) if "nll" in idx else None
                p = logp.exp() if logp is not None else activate(x[bi].to(dt), act, 0)
                v = valid[bi] if valid is not None else None
                if is_index:
                    pt, flat = _index_sums(out[:, bi], idx, p, logp, target[bi], v, c)
                    pts.append(pt)
                    flats.append(flat)
                else:
                    _dense_sums(out[:, bi], idx, p, logp, target[bi].to(dt), v, soft_label)
                probs.append(p)
            ctx.save_for_backward(target, valid, *probs, *pts, *flats)
            ctx.act, ctx.idx, ctx.soft_label, ctx.is_index, ctx.x_dtype = act, idx, soft_label, is_index, x.dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        target, valid, *saved = ctx.saved_tensors
        b = target.shape[0]
        probs, pts, flats = saved[:b], saved[b : 2 * b], saved[2 * b :]
        idx, act = ctx.idx, ctx.act
        c, n = probs[0].shape
        dt = probs[0].dtype
        with torch.autocast(device_type=probs[0].device.type, enabled=False):
            grad_out = grad_out.to(dt)
            gx = torch.empty((b, c, n), dtype=ctx.x_dtype, device=probs[0].device)
            fast = set(idx) <= _LINEAR and ctx.is_index and act == "softmax"
            for bi in range(b):
                g = {m: grad_out[i, bi] for m, i in idx.items()}
                p = probs[bi]
                v = valid[bi] if valid is not None else None
                if fast and gx.dtype == dt:
                    _softmax_index_backward(gx[bi], g, p, pts[bi], flats[bi], target[bi], v)
                    continue
                dp = _sums_backward(g, p, target[bi], v, ctx.is_index, ctx.soft_label, dt)
                dx = activation_backward(dp, p, act, 0)
                if "nll" in g:  # d/dx sum_c e_c (-g_c log p_c) = p * sum_c e_c g_c - e * g, on valid voxels
                    eg = g["nll"].unsqueeze(1) * dense_chunk(target[bi], c, dt)
                    nll_dx = p * eg.sum(0, keepdim=True) - eg
                    dx += nll_dx if v is None else nll_dx * v
                gx[bi] = dx
        return gx, None, None, None, None, None


# statistics whose gradient w.r.t. p does not depend on p (tp, sp), that take none (target-only sums), or
# whose gradient w.r.t. the logits is as simple (nll)
_LINEAR = {"tp", "sp", "sg", "sg2", "n", "nll"}


def dense_chunk(t: torch.Tensor, c: int, dt) -> torch.Tensor:
    if t.shape[0] == 1 and c > 1:
        return torch.zeros(c, t.shape[-1], dtype=dt, device=t.device).scatter_(0, t.reshape(1, -1).long(), 1.0)
    return t.to(dt)


def _take(vec: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """vec[t] for a small per-class vector and index labels t (1, n); index_select is the fast path."""
    return vec.index_select(0, t.reshape(-1)).reshape(t.shape)


def _softmax_index_backward(out, g, p, pt, flat, t, v):
    """Softmax backward of sum_c (a_c sp_c + b_c tp_c + e_c nll_c) for index labels, written into ``out``
    (C, N) without building dL/dp. With k = e_t (per voxel), s = sum_c p_c a_c + p_t b_t - k:
        dx_c = m (p_c (a_c - s) + [t == c] (p_t b_t - k)),  m the valid mask.
    Every step writes in place: on CPU each fresh large buffer costs page faults as well as a pass."""
    c = p.shape[0]
    a = g["sp"] if "sp" in g else p.new_zeros(c)
    s = a @ p  # one pass (gemv)
    extra = None  # the per-voxel term added at the true class
    if "tp" in g:
        extra = pt * _take(g["tp"], t)
    if "nll" in g:
        k = _take(g["nll"], t)
        extra = -k if extra is None else extra - k
    if extra is not None:
        s += extra[0]
    torch.mul(p, a.unsqueeze(1).to(p.dtype), out=out)
    out.addcmul_(p, s.unsqueeze(0), value=-1)
    if extra is not None:
        out.view(-1).index_add_(0, flat, extra[0])
    if v is not None:
        out *= v


def _index_sums(out, idx, p, logp, t, v, c):
    """Sums for one sample, index labels t (1, N), probabilities p (C, N) (and their log when the
    cross-entropy is asked for); out (M, C) is accumulated in place. Returns p_t (1, N), the probability of
    the true class, which backward reuses."""
    t = t.reshape(1, -1)
    bins = t[0] if v is None else torch.where(v[0], t[0], c)  # ignored voxels go to an extra bin, dropped
    nb = c + 1
    flat = _flat_index(t[0], p.shape[1])  # position of (t_v, v) in the flattened (C, N) map
    if logp is not None:
        lpt = logp.view(-1).index_select(0, flat).unsqueeze(0)
        out[idx["nll"]] -= p.new_zeros(nb).scatter_add_(0, bins, lpt[0])[:c]
        pt = lpt.exp()
    else:
        pt = p.view(-1).index_select(0, flat).unsqueeze(0)
    # scatter_add rather than a weighted bincount: bincount scans its input for min/max first
    if "tp" in idx:
        out[idx["tp"]] += p.new_zeros(nb).scatter_add_(0, bins, pt[0])[:c]
    if "p2g" in idx:
        out[idx["p2g"]] += p.new_zeros(nb).scatter_add_(0, bins, pt[0] * pt[0])[:c]
    if "sg" in idx or "sg2" in idx:
        counts = torch.bincount(bins, minlength=nb)[:c].to(out.dtype)
        for m in ("sg", "sg2"):
            if m in idx:
                out[idx[m]] += counts
    pm = p if v is None else p * v
    if "sp" in idx:
        out[idx["sp"]] += pm.sum(1)
    if "sp2" in idx:
        out[idx["sp2"]] += (pm * p).sum(1)
    if "n" in idx:
        out[idx["n"]] += t.numel() if v is None else v.sum()
    return pt, flat


_ARANGE: dict = {}


def _flat_index(t: torch.Tensor, n: int) -> torch.Tensor:
    """t * n + arange(n): with it, index_select / index_add on the flattened (C, N) map replace gather /
    scatter along the class axis, which are about twice as slow on CPU."""
    key = (n, t.device)
    ar = _ARANGE.get(key)
    if ar is None:
        ar = _ARANGE[key] = torch.arange(n, device=t.device)
    return torch.add(ar, t, alpha=n)


def _dense_sums(out, idx, p, logp, g, v, soft_label):
    if "nll" in idx:
        nll = -(g * logp)
        out[idx["nll"]] += (nll if v is None else nll * v).sum(1)
    if v is not None:
        g = g * v
        pm = p * v
    else:
        pm = p
    if "tp" in idx:
        out[idx["tp"]] += (torch.minimum(pm, g) if soft_label else pm * g).sum(1)
    if "sp" in idx:
        out[idx["sp"]] += pm.sum(1)
    if "sg" in idx:
        out[idx["sg"]] += g.sum(1)
    if "sp2" in idx:
        out[idx["sp2"]] += (pm * p).sum(1)
    if "sg2" in idx:
        out[idx["sg2"]] += (g * g).sum(1)
    if "p2g" in idx:
        out[idx["p2g"]] += (pm * p * g).sum(1)
    if "n" in idx:
        out[idx["n"]] += g.shape[1] if v is None else v.sum()


def _sums_backward(g, p, t, v, is_index, soft_label, dt):
    """dL/dp for one chunk given dL/d(sum) per class: g[m] is (C,)."""
    col = lambda m: g[m].unsqueeze(1)  # noqa: E731
    dp = torch.zeros_like(p)
    if "sp" in g:
        dp += col("sp")
    if "sp2" in g:
        dp += 2 * col("sp2") * p
    if is_index:
        ti = t.reshape(1, -1)
        if "tp" in g:
            dp.scatter_add_(0, ti, _take(g["tp"], ti))
        if "p2g" in g:
            dp.scatter_add_(0, ti, 2 * _take(g["p2g"], ti) * p.gather(0, ti))
    else:
        gt = t.to(dt)
        if "tp" in g:
            if soft_label:  # d/dp sum(min(p, g)), split evenly at ties as |p - g| does
                dp += col("tp") * (1 - torch.sign(p - gt)) / 2
            else:
                dp += col("tp") * gt
        if "p2g" in g:
            dp += 2 * col("p2g") * p * gt
    if v is not None:
        dp *= v
    return dp


def region_sums(prep, moments, soft_label: bool = False) -> dict[str, torch.Tensor]:
    """Per-(sample, class) sums over the valid voxels of a ``Prepared`` input, as (B, C) tensors."""
    unknown = set(moments) - set(MOMENTS)
    if unknown:
        raise ValueError(f"unknown statistics {sorted(unknown)}; known: {MOMENTS}.")
    moments = tuple(moments)
    out = _RegionSums.apply(prep.x, prep.target, prep.valid, prep.act, moments, soft_label)
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
