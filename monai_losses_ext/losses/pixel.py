"""Per-voxel losses: weighted cross-entropy, weighted BCE, focal, TopK.

Cross-entropy and BCE use PyTorch's fused kernels. Focal loss runs in a chunked kernel (``_FocalTerms``)
that computes the gradient during forward and keeps only it, so backward is one multiplication and the
extra memory stays near two copies of the logits (MONAI's autograd graph takes about 12). TopK ranks the
voxels without a graph and differentiates only the chosen ones. With ``distributed=True`` the normalisers of
the means (voxel counts, weight sums) and the TopK threshold are pooled over all ranks.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ._base import LossBase, reduce_loss
from ._inputs import Prepared
from ._stats import _chunks, _take, all_reduce_sum, compute_dtype, dense_chunk, is_distributed

__all__ = ["WeightedCELoss", "WeightedBCELoss", "FocalLoss", "TopKCELoss", "cross_entropy_map", "masked_mean"]


def masked_mean(num: torch.Tensor, den: torch.Tensor | float, distributed: bool) -> torch.Tensor:
    """num / den where both are totals over this rank; pooled over ranks when distributed.

    Args:
        num: the numerator, a total over this rank's terms.
        den: the normaliser, a total over this rank (a count or a sum of weights); clamped away from 0.
        distributed: sum ``num`` and ``den`` over every rank of an initialised process group first.

    Returns:
        The 0-d ratio, in the dtype of ``num``.
    """
    num = all_reduce_sum(num, distributed)
    if not isinstance(den, torch.Tensor):
        den = torch.tensor(float(den), device=num.device, dtype=num.dtype)
    den = all_reduce_sum(den.to(num.dtype), distributed)
    return num / den.clamp_min(torch.finfo(num.dtype).tiny)


def cross_entropy_map(
    prep: Prepared, weight: torch.Tensor | None, label_smoothing: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-voxel (B, N) cross-entropy and its per-voxel normaliser, as torch.nn.CrossEntropyLoss defines them.

    Index targets: loss_i weighted by weight[t_i], normaliser weight[t_i] (0 where ignored).
    Dense (probability) targets: normaliser 1 per valid voxel, as PyTorch's mean for probability targets.
    C == 1: binary cross-entropy with logits, ``weight`` as pos_weight, no label smoothing (as MONAI's DiceCELoss).

    Args:
        prep: the prepared input (logits) and target.
        weight: one weight per class (the pos_weight for C == 1), or None.
        label_smoothing: as ``torch.nn.CrossEntropyLoss``, in ``[0, 1]``; unused for C == 1.

    Returns:
        ``(loss, norm)``, both ``(B, N)``: the weighted per-voxel loss and the per-voxel normaliser of the mean,
        0 at ignored voxels.
    """
    x = prep.x
    dt = compute_dtype(x)
    w = weight.to(device=x.device, dtype=dt) if weight is not None else None
    if prep.num_classes == 1:  # as MONAI's DiceCELoss: BCE, no label smoothing
        t = prep.target.to(dt)
        loss = F.binary_cross_entropy_with_logits(x.to(dt), t, pos_weight=w, reduction="none")[:, 0]
        norm = torch.ones_like(loss)
    elif prep.is_index:
        t = prep.target[:, 0]
        if prep.valid is not None:
            t = torch.where(prep.valid[:, 0], t, -100)
        loss = F.cross_entropy(x.to(dt), t, weight=w, reduction="none", label_smoothing=label_smoothing)
        norm = (w[t.clamp_min(0)] if w is not None else torch.ones_like(loss)) * (t >= 0)
    else:
        loss = F.cross_entropy(
            x.to(dt), prep.target.to(dt), weight=w, reduction="none", label_smoothing=label_smoothing
        )
        norm = torch.ones_like(loss)
    if prep.valid is not None:
        v = prep.valid[:, 0]
        loss = loss * v
        norm = norm * v
    return loss, norm


def _cross_entropy_total(prep: Prepared, weight: torch.Tensor | None, label_smoothing: float):
    """Summed softmax cross-entropy by PyTorch's fused kernel, and the normaliser of its mean (the summed
    weights of the valid voxels for index labels, their number for probability targets)."""
    x = prep.x
    dt = compute_dtype(x)
    w = weight.to(device=x.device, dtype=dt) if weight is not None else None
    if prep.is_index:
        t = prep.target[:, 0]
        if prep.valid is not None:
            t = torch.where(prep.valid[:, 0], t, -100)
        num = F.cross_entropy(x.to(dt), t, weight=w, reduction="sum", label_smoothing=label_smoothing)
        counts = torch.bincount((t + 1).clamp_min(0).reshape(-1), minlength=prep.num_classes + 1)[1:].to(
            dt
        )  # ignored -> bin 0
        den = (counts * w).sum() if w is not None else counts.sum()
        return num, den
    num = F.cross_entropy(x.to(dt), prep.target.to(dt), weight=w, reduction="sum", label_smoothing=label_smoothing)
    return num, float(x.shape[0] * x.shape[2])


CE_MOMENTS = ("nll", "sg", "n")


def fused_ce_applies(prep: Prepared, label_smoothing: float, reduction: str) -> bool:
    """Cross-entropy can come from the fused statistics (one softmax shared with Dice) unless it needs
    per-voxel values, label smoothing, or is the binary (one-channel) case."""
    return prep.num_classes > 1 and not label_smoothing and reduction in ("mean", "sum")


def ce_from_sums(s: dict, weight: torch.Tensor | None, is_index: bool, reduction: str, distributed: bool):
    """Softmax cross-entropy from the per-(sample, class) sums nll_c = sum -g_c log p_c, sg_c and n, with
    PyTorch's normalisation: index labels divide by sum_c w_c sg_c (the weights of the valid voxels),
    probability targets by the number of valid voxels."""
    w = weight.to(s["nll"]) if weight is not None else None
    num = (s["nll"] * w).sum() if w is not None else s["nll"].sum()
    if reduction == "sum":
        return all_reduce_sum(num, distributed)
    if is_index:
        den = (s["sg"] * w).sum() if w is not None else s["sg"].sum()
    else:
        den = s["n"][:, 0].sum()
    return masked_mean(num, den, distributed)


def _ce_reduce(loss: torch.Tensor, norm: torch.Tensor, reduction: str, distributed: bool, spatial) -> torch.Tensor:
    if reduction == "mean":
        return masked_mean(loss.sum(), norm.sum(), distributed)
    if reduction == "sum":
        return all_reduce_sum(loss.sum(), distributed)
    return loss.reshape(loss.shape[0], *spatial)


class WeightedCELoss(LossBase):
    """Cross-entropy with class weights, ``ignore_index`` and label smoothing, on logits.

    Values equal ``torch.nn.CrossEntropyLoss(weight, ignore_index, label_smoothing)``: the weighted mean is
    ``sum_i w[t_i] CE_i / sum_i w[t_i]``. The target may be index labels (B, 1, ...) (no one-hot is built) or
    probabilities (B, C, ...). One output channel: binary cross-entropy with logits, ``weight`` as pos_weight.
    With ``distributed=True`` the weighted mean runs over every rank's voxels.
    Empty patch: the background voxels' CE; no special case is needed.

    Shapes: ``input`` ``(B, C, *spatial)`` logits (the softmax is applied inside; there is no activation
    argument); ``target`` ``(B, 1, *spatial)`` index labels (recognised from the shape) or ``(B, C, *spatial)``
    class probabilities. ``reduction="none"`` returns the per-voxel loss ``(B, *spatial)``, 0 at ignored voxels.

    Args:
        weight: one weight ``>= 0`` per class, as ``torch.nn.CrossEntropyLoss``'s ``weight``; None: all 1. For a
            single-channel input, the BCE ``pos_weight``.
        ignore_index: label of the voxels to leave out of the loss and of the mean's normaliser; None: every
            voxel counts. With index labels, the voxels holding it (it may lie outside ``[0, C)``, e.g. 255);
            with a C-channel target, the voxels where channel ``ignore_index`` is nonzero or, if it is not a
            channel index, the voxels whose target is zero in every channel.
        label_smoothing: in ``[0, 1]``, as ``torch.nn.CrossEntropyLoss``: the target is mixed with the uniform
            distribution over the C classes. Not used for a single-channel input.
        reduction: ``"mean"``: the weighted mean over the valid voxels (normalised by ``sum_i w[t_i]`` for index
            labels, by the number of valid voxels for probability targets); ``"sum"``: the sum of the weighted
            per-voxel losses; ``"none"``: the per-voxel map.
        distributed: for DDP (an initialised process group with more than one rank): the sum and the mean's
            normaliser run over every rank's voxels. No effect in a single process.
        validate: run the value checks on every call (NaN/Inf input, label range, target range), each a
            reduction over the tensor and a host-device synchronisation. ``False`` skips them; the shape checks
            always run.

    Raises:
        ValueError: at construction: ``reduction`` is not ``"mean"``, ``"sum"`` or ``"none"``; ``label_smoothing``
            lies outside ``[0, 1]``; ``weight`` has more than one dimension, or holds negative or non-finite
            values.
        ValueError: at call time: the shapes do not match (``input`` ``(B, C, *spatial)``, ``target``
            ``(B, 1, *spatial)`` or ``(B, C, *spatial)``); ``weight`` does not have one value per channel
            (C > 1); with ``validate=True`` also NaN/Inf values, non-integer or out-of-range index labels (other
            than ``ignore_index``), or a dense target outside ``[0, 1]``.
        TypeError: ``ignore_index`` is not an int (construction); ``input`` or ``target`` is not a tensor, or
            ``input`` is not floating point (call).
    """

    probabilities = False

    def __init__(
        self,
        weight: Sequence[float] | torch.Tensor | None = None,
        ignore_index: int | None = None,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
        distributed: bool = False,
        validate: bool = True,
    ) -> None:
        super().__init__(
            to_onehot_y=None, reduction=reduction, ignore_index=ignore_index, distributed=distributed, validate=validate
        )
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1], got {label_smoothing}.")
        self.label_smoothing = float(label_smoothing)
        self._register_class_vector("class_weight", weight)

    def from_prepared(self, prep: Prepared) -> torch.Tensor:
        """The weighted cross-entropy of an already prepared input (see the class for the reductions)."""
        w = self.class_weight
        if w is not None and w.ndim == 1 and prep.num_classes > 1 and w.numel() != prep.num_classes:
            raise ValueError(f"weight has {w.numel()} values but the input has {prep.num_classes} classes.")
        if self.reduction != "none" and prep.num_classes > 1 and (prep.is_index or prep.valid is None):
            num, den = _cross_entropy_total(prep, w, self.label_smoothing)
            return (
                masked_mean(num, den, self.distributed)
                if self.reduction == "mean"
                else all_reduce_sum(num, self.distributed)
            )
        loss, norm = cross_entropy_map(prep, w, self.label_smoothing)
        return _ce_reduce(loss, norm, self.reduction, self.distributed, prep.spatial)


class WeightedBCELoss(LossBase):
    """Weighted binary cross-entropy on logits, per channel (binary or multi-label tasks).

    ``-(beta g log sigmoid(x) + (1 - g) log(1 - sigmoid(x)))``, equal to
    ``torch.nn.BCEWithLogitsLoss(pos_weight=beta)``.
    ``pos_weight`` (beta, a float or one value per channel) > 1 weighs the lesion voxels more: fewer false
    negatives at the price of more false positives. For a lesion occupying a fraction f of the volume,
    beta = (1 - f) / f balances the two classes. Index labels are accepted with ``to_onehot_y=True``.
    Empty patch: the background term only.

    Shapes: ``input`` ``(B, C, *spatial)`` logits (the sigmoid is applied inside); ``target`` ``(B, C, *spatial)``
    in ``[0, 1]``, or ``(B, 1, *spatial)`` index labels with ``to_onehot_y=True`` (expanded to a one-hot outside
    autograd, since every channel's target is needed). ``reduction="none"`` returns the per-voxel, per-channel
    loss ``(B, C, *spatial)``, 0 at ignored voxels.

    Args:
        pos_weight: beta, the weight ``>= 0`` of the positive (lesion) voxels: a scalar, or one value per channel.
            1 (the default) is the plain BCE.
        to_onehot_y: ``True``: a ``(B, 1, *spatial)`` target holds index labels of a multi-channel input.
            ``False``: the target has one channel per input channel.
        reduction: ``"mean"``: the mean over every (sample, channel, valid voxel); ``"sum"``: their sum;
            ``"none"``: the per-voxel map.
        ignore_index: label of the voxels to leave out of the loss and of the mean's normaliser; None: every
            voxel counts. With index labels, the voxels holding it (it may lie outside ``[0, C)``, e.g. 255);
            with a C-channel target, the voxels where channel ``ignore_index`` is nonzero or, if it is not a
            channel index, the voxels whose target is zero in every channel.
        distributed: for DDP (an initialised process group with more than one rank): the sum and the mean's
            count run over every rank's voxels. No effect in a single process.
        validate: run the value checks on every call (NaN/Inf input, label range, target range), each a
            reduction over the tensor and a host-device synchronisation. ``False`` skips them; the shape checks
            always run.

    Raises:
        ValueError: at construction: ``reduction`` is not ``"mean"``, ``"sum"`` or ``"none"``; ``pos_weight`` is
            not a scalar or 1-D, or holds negative or non-finite values.
        ValueError: at call time: the shapes do not match (``input`` ``(B, C, *spatial)``, ``target``
            ``(B, 1, *spatial)`` or ``(B, C, *spatial)``); a one-channel target for a multi-channel input
            without ``to_onehot_y=True``, or a multi-channel target with it; a 1-D ``pos_weight`` without one
            value per channel; with ``validate=True`` also NaN/Inf values, non-integer or out-of-range index
            labels (other than ``ignore_index``), or a dense target outside ``[0, 1]``.
        TypeError: ``ignore_index`` is not an int (construction); ``input`` or ``target`` is not a tensor, or
            ``input`` is not floating point (call).

    Warns:
        UserWarning: ``to_onehot_y=True`` with a single-channel input (the flag is ignored).
    """

    probabilities = False

    def __init__(
        self,
        pos_weight: float | Sequence[float] | torch.Tensor = 1.0,
        to_onehot_y: bool = False,
        reduction: str = "mean",
        ignore_index: int | None = None,
        distributed: bool = False,
        validate: bool = True,
    ) -> None:
        super().__init__(
            to_onehot_y=to_onehot_y,
            reduction=reduction,
            ignore_index=ignore_index,
            distributed=distributed,
            validate=validate,
        )
        self._register_class_vector("pos_weight", pos_weight)

    def from_prepared(self, prep: Prepared) -> torch.Tensor:
        """The weighted BCE of an already prepared input (see the class for the reductions)."""
        x = prep.x
        dt = compute_dtype(x)
        c = prep.num_classes
        pw = self.pos_weight.to(device=x.device, dtype=dt)
        if pw.ndim == 1 and pw.numel() != c:
            raise ValueError(f"pos_weight has {pw.numel()} values but the input has {c} channels.")
        pw = pw.reshape(-1, 1) if pw.ndim == 1 else pw
        t = _dense_target(prep, dt)
        loss = F.binary_cross_entropy_with_logits(x.to(dt), t, pos_weight=pw, reduction="none")
        count = float(loss.numel())
        if prep.valid is not None:
            loss = loss * prep.valid
            count = prep.valid.sum() * c
        if self.reduction == "mean":
            return masked_mean(loss.sum(), count, self.distributed)
        return reduce_loss(loss, self.reduction, self.distributed, (loss.shape[0], c, *prep.spatial))


def _dense_target(prep: Prepared, dt) -> torch.Tensor:
    """A (B, C, N) float target; for index labels this builds the one-hot, which only the per-voxel losses that
    need every channel's target do (BCE; focal without the background), outside autograd."""
    if not prep.is_index:
        return prep.target.to(dt)
    t = torch.zeros(prep.x.shape, dtype=dt, device=prep.x.device)
    return t.scatter_(1, prep.target, 1.0)


class _FocalTerms(torch.autograd.Function):
    """Focal terms per voxel and class, fused. Formulas as MONAI's sigmoid/softmax focal loss:

    sigmoid: l = a * sigmoid(-x (2g - 1))^gamma * (softplus(x) - x g)
    softmax: l_c = -a_c * (1 - p_c)^gamma_c * g_c * log p_c,  p = softmax(x)
    with a the alpha/class-weight factor; ``gamma`` is per class (the unified focal loss needs that).

    Forward returns the per-(sample, class) sums (or the per-voxel map for reduction "none"). When the input
    needs a gradient, forward also computes d(sum of terms)/dx chunk by chunk and keeps it: backward is
    then one multiplication, and nothing else of the computation is stored (MONAI's autograd graph holds
    about a dozen tensors of the size of the logits). For the per-voxel map, backward recomputes instead.
    """

    @staticmethod
    def forward(ctx, x, target, valid, gamma, alpha, alpha_pos_only, weight, use_softmax, per_voxel):
        with torch.autocast(device_type=x.device.type, enabled=False):
            b, c, n = x.shape
            dt = compute_dtype(x)
            p = _FocalParams(gamma, alpha, alpha_pos_only, weight, use_softmax, dt)
            out = (
                torch.empty(b, c, n, dtype=dt, device=x.device)
                if per_voxel
                else torch.zeros(b, c, dtype=dt, device=x.device)
            )
            keep_grad = ctx.needs_input_grad[0] and not per_voxel
            grad = torch.empty(b, c, n, dtype=dt, device=x.device) if keep_grad else None
            for bi in range(b):
                for sl in _chunks(n):
                    loss, g = _focal_chunk(
                        x[bi, :, sl].to(dt), target[bi, :, sl], _vchunk(valid, bi, sl), p, 1.0 if keep_grad else None
                    )
                    if per_voxel:
                        out[bi, :, sl] = loss
                    else:
                        out[bi] += loss.sum(1)
                    if keep_grad:
                        grad[bi, :, sl] = g
            ctx.save_for_backward(x, target, valid, grad)
            ctx.params, ctx.per_voxel = p, per_voxel
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, target, valid, grad = ctx.saved_tensors
        p = ctx.params
        with torch.autocast(device_type=x.device.type, enabled=False):
            b, c, n = x.shape
            grad_out = grad_out.to(p.dt)
            if grad is not None:
                u = grad_out.unsqueeze(-1)  # (B, C, 1)
                if not p.use_softmax:  # elementwise: exact for any per-(sample, class) weight
                    return (grad * u).to(x.dtype), *[None] * 8
                if bool((u == u[:, :1]).all()):  # softmax couples the classes: exact for one weight per sample
                    return (grad * u[:, :1]).to(x.dtype), *[None] * 8
            gx = torch.empty_like(x)
            for bi in range(b):
                for sl in _chunks(n):
                    u = grad_out[bi, :, sl] if ctx.per_voxel else grad_out[bi].unsqueeze(1)
                    gx[bi, :, sl] = _focal_chunk(
                        x[bi, :, sl].to(p.dt), target[bi, :, sl], _vchunk(valid, bi, sl), p, u
                    )[1]
        return gx, *[None] * 8


class _FocalParams:
    """Per-class focal parameters in the compute dtype, with the special cases that make the kernel cheap."""

    def __init__(self, gamma, alpha, alpha_pos_only, weight, use_softmax, dt):
        self.dt, self.use_softmax, self.alpha_pos_only = dt, use_softmax, alpha_pos_only
        self.gamma = gamma.to(dt)
        g0 = float(gamma[0])
        self.gamma_scalar = g0 if bool((gamma == g0).all()) else None
        self.alpha = alpha.to(dt) if alpha.numel() else None
        self.weight = weight.to(dt) if weight.numel() else None

    def pow(self, q, gam_col):
        """q ** gamma with the exponent per class (column) or one scalar; gamma = 2 is a square."""
        if self.gamma_scalar is None:
            return q.pow(gam_col)
        if self.gamma_scalar == 2:
            return q.square()
        return q.pow(self.gamma_scalar)


def _focal_chunk(x, t, v, p: _FocalParams, u):
    """Focal terms of one chunk: x (C, n) logits, t (1, n) index or (C, n) dense target, v (1, n) mask or None.
    Returns (loss (C, n), sum_c u_c dloss_c/dx (C, n) or None when u is None); u broadcasts to (C, n)."""
    c, dt = x.shape[0], x.dtype
    index = t.shape[0] == 1 and c > 1
    if p.use_softmax and index:
        return _softmax_focal_index(x, t.long(), v, p, u)
    g = (t.long() == torch.arange(c, device=x.device).unsqueeze(1)) if index else t.to(dt)
    hard = index or bool(((g == 0) | (g == 1)).all())
    gb = g.bool() if hard else None
    gam = p.gamma.unsqueeze(1)
    # the alpha / class-weight / mask factor a
    if p.alpha is None:
        a = None
    elif p.alpha_pos_only:  # per-class alpha on positives only (MONAI's sequence alpha, sigmoid)
        a = torch.where(g == 1, p.alpha.unsqueeze(1), 1.0)
    elif p.use_softmax:
        a = p.alpha.unsqueeze(1)
    else:  # scalar alpha, sigmoid: alpha on positives, 1 - alpha on negatives
        al = p.alpha[0]
        a = torch.where(gb, al, 1 - al) if hard else g * al + (1 - g) * (1 - al)
    if p.weight is not None:
        a = p.weight.unsqueeze(1) if a is None else a * p.weight.unsqueeze(1)
    if v is not None:
        a = v.to(dt) if a is None else a * v
    if u is not None:
        a_u = u if a is None else a * u
        a_u = 1.0 if isinstance(a_u, float) else a_u
    if p.use_softmax:  # dense targets: every class term
        logp = torch.log_softmax(x, 0)
        pr = logp.exp()
        q = (1 - pr).clamp_min(0)
        mod = p.pow(q, gam)
        loss = -mod * g * logp
        loss = loss if a is None else loss * a
        if u is None:
            return loss, None
        # d/dlogp [-(1-p)^gamma logp] = -(1-p)^gamma + gamma (1-p)^(gamma-1) p logp
        dmod = torch.where(gam > 0, gam * q.clamp_min(torch.finfo(dt).tiny).pow(gam - 1), 0.0)
        s = -a_u * g * (mod - dmod * pr * logp)
        return loss, s - pr * s.sum(0, keepdim=True)
    if hard:  # z = -x for positives, x for negatives: bce = softplus(z), focal factor sigmoid(z)^gamma
        sgn = torch.where(gb, -1.0, 1.0).to(dt)
        z = x * sgn
        s = torch.sigmoid(z)
        sp = F.softplus(z)
        mod = p.pow(s, gam)
        if a is not None:
            mod = mod * a
        loss = mod * sp
        if u is None:
            return loss, None
        # d/dz [s^gamma softplus(z)] = s^gamma (s + gamma (1 - s) softplus(z)); dz/dx = sgn
        inner = (
            torch.addcmul(s, 1 - s, sp, value=p.gamma_scalar) if p.gamma_scalar is not None else s + gam * (1 - s) * sp
        )
        d = torch.mul(mod, inner, out=inner)
        if not (isinstance(u, float) and u == 1.0):
            d = d * u
        return loss, d.mul_(sgn)
    z = -x * (2 * g - 1)  # soft targets: MONAI's general formula
    mod = torch.exp(F.logsigmoid(z) * gam)
    bce = F.softplus(x) - x * g
    loss = mod * bce if a is None else mod * bce * a
    if u is None:
        return loss, None
    dmod = gam * mod * torch.sigmoid(-z) * (1 - 2 * g)
    return loss, a_u * (mod * (torch.sigmoid(x) - g) + bce * dmod)


def _softmax_focal_index(x, t, v, p: _FocalParams, u):
    """Softmax focal with index labels: only the true class has a term, so everything but the softmax is a
    per-voxel vector; the gradient is (onehot - p) * dl/dlogp_t. Returns the terms as a (C, n) map."""
    c = x.shape[0]
    logp = torch.log_softmax(x, 0)
    lt = logp.gather(0, t)
    q = (1 - lt.exp()).clamp_min(0)
    gam = _take(p.gamma, t) if p.gamma_scalar is None else p.gamma_scalar
    a = None
    for vec in (p.alpha, p.weight):
        if vec is not None:
            a = _take(vec, t) if a is None else a * _take(vec, t)
    if v is not None:
        a = v.to(x.dtype) if a is None else a * v
    mod = p.pow(q, gam) if not isinstance(gam, torch.Tensor) else q.pow(gam)
    lval = -mod * lt if a is None else -mod * lt * a
    loss = torch.zeros_like(x).scatter_(0, t, lval)
    if u is None:
        return loss, None
    if isinstance(u, float):
        ut = u
    else:
        ut = u.expand(c, -1).gather(0, t) if u.shape[-1] > 1 else _take(u[:, 0], t)
    gam_t = gam if isinstance(gam, torch.Tensor) else torch.full_like(q, gam)
    dmod = torch.where(gam_t > 0, gam_t * q.clamp_min(torch.finfo(x.dtype).tiny).pow(gam_t - 1), 0.0)
    s = -(mod - dmod * (1 - q) * lt) * ut  # dl_t/dlogp_t times the upstream weight
    if a is not None:
        s = s * a
    gx = logp.exp().mul_(-s)
    return loss, gx.scatter_add_(0, t, s)


def focal_terms(
    prep: Prepared, gamma, alpha=None, alpha_pos_only=False, weight=None, use_softmax=False, per_voxel=False
):
    """Focal terms per (sample, class) summed over voxels, or per voxel (B, C, N). gamma: float or (C,)."""
    x = prep.x
    c = x.shape[1]
    dev = x.device
    gamma_v = torch.as_tensor(gamma, dtype=torch.float64, device=dev).reshape(-1).expand(c).contiguous()
    alpha_v = (
        torch.as_tensor(alpha, dtype=torch.float64, device=dev).reshape(-1)
        if alpha is not None
        else torch.empty(0, device=dev)
    )
    weight_v = (
        torch.as_tensor(weight, dtype=torch.float64, device=dev).reshape(-1).expand(c).contiguous()
        if weight is not None
        else torch.empty(0, device=dev)
    )
    return _FocalTerms.apply(
        x, prep.target, prep.valid, gamma_v, alpha_v, alpha_pos_only, weight_v, use_softmax, per_voxel
    )


class FocalLoss(LossBase):
    """Focal loss (Lin et al., 2017) on logits, drop-in for ``monai.losses.FocalLoss`` (same arguments, values,
    gradients and reductions; "sum" is, as in MONAI, the sum over (B, C) of the spatial means).

    ``use_softmax=False``: sigmoid focal per channel, ``sigmoid(-x (2g - 1))^gamma * BCE``; a scalar ``alpha``
    weighs positives by alpha and negatives by 1 - alpha, a sequence weighs the positives of each class.
    ``use_softmax=True``: ``-(1 - p_c)^gamma g_c log p_c``; scalar alpha gives [1 - alpha, alpha, ...] per class.
    ``weight`` scales each class. The fused kernel keeps only logits and target for backward.
    Empty patch: background terms only, shrunk by the focal factor as the prediction becomes confident.

    Shapes: ``input`` ``(B, C, *spatial)`` logits (the activation is applied inside); ``target``
    ``(B, C, *spatial)`` in ``[0, 1]``, or ``(B, 1, *spatial)`` index labels with ``to_onehot_y=True``.
    ``reduction="none"`` returns the per-voxel, per-class terms ``(B, C, *spatial)``; ``C`` counts the scored
    classes (one less with ``include_background=False``).

    Args:
        include_background: whether channel 0 (background) is scored. With ``False`` and more than one channel,
            channel 0 is dropped from input and target before the activation (as MONAI: with ``use_softmax`` the
            softmax then runs over the remaining channels). Ignored, with a warning, for a single channel.
        to_onehot_y: ``True``: a ``(B, 1, *spatial)`` target holds index labels of a multi-channel input.
            ``False``: the target has one channel per input channel.
        gamma: the focusing exponent, ``>= 0``; 0 gives the (alpha-weighted) cross-entropy, larger values
            down-weight the voxels that are already well classified.
        alpha: balance factor in ``[0, 1]``; None: none. A scalar: with sigmoid, ``alpha`` on the positives and
            ``1 - alpha`` on the negatives; with softmax, ``1 - alpha`` for class 0 and ``alpha`` for the other
            classes (ignored, with a warning, when ``include_background=False``). A sequence, one value per
            scored class: with sigmoid, the factor of each class's positives (negatives keep 1); with softmax,
            the factor of each class.
        weight: factor of each scored class's terms: a scalar, or one value ``>= 0`` per scored class (a
            sequence needs more than one channel); None: all 1.
        reduction: ``"mean"``: the mean over every (sample, class, voxel) term, but with ``ignore_index`` the
            sum of the valid terms divided by the number of valid voxels (not times the classes), as MONAI 1.6
            does: then C times the mean of the valid terms; ``"sum"``: as MONAI, the sum over (sample, class)
            of the spatial means; ``"none"``: the per-voxel terms.
        use_softmax: ``False``: sigmoid focal loss per channel (binary or overlapping channels); ``True``:
            softmax focal loss over the channels (mutually exclusive classes).
        ignore_index: label of the voxels to leave out of the loss and of the spatial means; None: every
            voxel counts. With index labels, the voxels holding it (it may lie outside ``[0, C)``, e.g. 255);
            with a C-channel target, the voxels where channel ``ignore_index`` is nonzero or, if it is not a
            channel index, the voxels whose target is zero in every channel.
        distributed: for DDP (an initialised process group with more than one rank): the sum and the mean's
            normaliser run over every rank's voxels. No effect in a single process.
        validate: run the value checks on every call (NaN/Inf input, label range, target range), each a
            reduction over the tensor and a host-device synchronisation. ``False`` skips them; the shape checks
            always run.

    Raises:
        ValueError: at construction: ``reduction`` is not ``"mean"``, ``"sum"`` or ``"none"``; ``gamma < 0``;
            ``alpha`` lies outside ``[0, 1]``; ``alpha`` or ``weight`` is not a scalar or 1-D, or holds negative
            or non-finite values.
        ValueError: at call time: the shapes do not match (``input`` ``(B, C, *spatial)``, ``target``
            ``(B, 1, *spatial)`` or ``(B, C, *spatial)``); a one-channel target for a multi-channel input
            without ``to_onehot_y=True``, or a multi-channel target with it; a sequence ``alpha`` or ``weight``
            without one value per scored class, or a sequence ``weight`` with a single-channel input; with
            ``validate=True`` also NaN/Inf values, non-integer or out-of-range index labels (other than
            ``ignore_index``), or a dense target outside ``[0, 1]``.
        TypeError: ``ignore_index`` is not an int (construction); ``input`` or ``target`` is not a tensor, or
            ``input`` is not floating point (call).

    Warns:
        UserWarning: a single-channel input with ``include_background=False`` or ``to_onehot_y=True`` (the flag
            is ignored); a scalar ``alpha`` with ``use_softmax=True`` and ``include_background=False`` (alpha is
            ignored).
    """

    probabilities = False

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        gamma: float = 2.0,
        alpha: float | Sequence[float] | None = None,
        weight: Sequence[float] | float | torch.Tensor | None = None,
        reduction: str = "mean",
        use_softmax: bool = False,
        ignore_index: int | None = None,
        distributed: bool = False,
        validate: bool = True,
    ) -> None:
        super().__init__(
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            reduction=reduction,
            ignore_index=ignore_index,
            distributed=distributed,
            validate=validate,
        )
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}.")
        self.gamma = float(gamma)
        self.use_softmax = use_softmax
        self._register_class_vector("alpha", alpha)
        if self.alpha is not None and ((self.alpha < 0) | (self.alpha > 1)).any():
            raise ValueError(f"alpha must lie in [0, 1], got {self.alpha.tolist()}.")
        self._register_class_vector("class_weight", weight)

    def from_prepared(self, prep: Prepared) -> torch.Tensor:
        """The focal loss of an already prepared input (see the class for the reductions)."""
        c = prep.num_classes
        first = self._first_kept(c)
        if first:
            prep = _drop_background(prep)
        c = prep.num_classes
        alpha, pos_only = self.alpha, False
        if alpha is not None:
            if alpha.ndim == 0:
                if self.use_softmax:
                    if first:
                        warnings.warn(
                            "`include_background=False`, scalar `alpha` ignored when using softmax.", stacklevel=2
                        )
                        alpha = None
                    else:
                        alpha = torch.cat([1 - alpha.reshape(1), alpha.reshape(1).expand(c - 1)])
            else:
                if alpha.numel() != c:
                    raise ValueError(f"alpha has {alpha.numel()} values but {c} classes are scored.")
                pos_only = not self.use_softmax
        w = self.class_weight
        if w is not None and w.ndim == 1:
            if c == 1:
                raise ValueError("a per-class weight needs more than one output channel.")
            if w.numel() != c:
                raise ValueError(f"weight has {w.numel()} values but {c} classes are scored.")
        per_voxel = self.reduction == "none"
        out = focal_terms(prep, self.gamma, alpha, pos_only, w, self.use_softmax, per_voxel)
        if per_voxel:
            return out.reshape(out.shape[0], c, *prep.spatial)
        n_vox = prep.valid.sum() if prep.valid is not None else prep.x.shape[2]
        if self.reduction == "sum":  # MONAI: spatial mean per (b, c), then sum
            per_b = prep.valid.sum((1, 2)).unsqueeze(1) if prep.valid is not None else prep.x.shape[2]
            if prep.valid is not None:
                per_b = per_b.clamp_min(1)
            return all_reduce_sum((out / per_b).sum(), self.distributed)
        den = n_vox if prep.valid is not None else prep.x.shape[0] * c * n_vox
        return masked_mean(out.sum(), den, self.distributed)


def _drop_background(prep: Prepared) -> Prepared:
    """Drop channel 0 from input and target (MONAI order: before the softmax, for the focal loss)."""
    t = _dense_target(prep, compute_dtype(prep.x))
    return Prepared(prep.x[:, 1:], prep.act, t[:, 1:], False, prep.valid, prep.spatial)


class TopKCELoss(LossBase):
    """TopK cross-entropy: the mean CE of the hardest ``k`` percent of the voxels of the batch (as nnU-Net's
    TopK loss), so the easy background stops dominating. ``weight``, ``ignore_index`` and ``label_smoothing``
    as ``WeightedCELoss``; the CE values are ranked after weighting.

    With ``distributed=True`` the k% are chosen over every rank's voxels (exact: the global threshold is found
    from each rank's candidates, ties split in rank order), so 2 ranks x batch 2 equals 1 process x batch 4.
    Empty patch: the hardest background voxels.

    Shapes: ``input`` ``(B, C, *spatial)`` logits (softmax inside; a single channel is read as binary logits,
    BCE); ``target`` ``(B, 1, *spatial)`` index labels (recognised from the shape) or ``(B, C, *spatial)``
    class probabilities. There is no ``reduction``: the result is always a scalar, the sum of the chosen
    voxels' (weighted) CE divided by their number ``k`` (not by their weights).

    Args:
        k: the percentage of the batch's valid voxels kept, in ``(0, 100]``: the ``ceil(k% of n)`` voxels with
            the largest CE. 100 keeps every voxel: the mean CE (divided by the voxel count, even with ``weight``).
        weight: one weight ``>= 0`` per class, as ``torch.nn.CrossEntropyLoss``'s ``weight``; None: all 1.
            For a single-channel input, the BCE ``pos_weight``.
        ignore_index: label of the voxels to leave out of the ranking (they are never chosen); None: every voxel
            counts. With index labels, the voxels holding it (it may lie outside ``[0, C)``, e.g. 255);
            with a C-channel target, the voxels where channel ``ignore_index`` is nonzero or, if it is not a
            channel index, the voxels whose target is zero in every channel.
        label_smoothing: in ``[0, 1]``, as ``torch.nn.CrossEntropyLoss``; not used for a single-channel input.
            Not checked at construction: torch raises at call time.
        distributed: for DDP (an initialised process group with more than one rank): the k% are chosen over
            every rank's voxels, exactly. No effect in a single process.
        validate: run the value checks on every call (NaN/Inf input, label range, target range), each a
            reduction over the tensor and a host-device synchronisation. ``False`` skips them; the shape checks
            always run.

    Raises:
        ValueError: at construction: ``k`` lies outside ``(0, 100]``; ``weight`` has more than one dimension, or
            holds negative or non-finite values.
        ValueError: at call time: the shapes do not match (``input`` ``(B, C, *spatial)``, ``target``
            ``(B, 1, *spatial)`` or ``(B, C, *spatial)``); with ``validate=True`` also NaN/Inf values,
            non-integer or out-of-range index labels (other than ``ignore_index``), or a dense target outside
            ``[0, 1]``.
        TypeError: ``ignore_index`` is not an int (construction); ``input`` or ``target`` is not a tensor, or
            ``input`` is not floating point (call).
        RuntimeError: at call time, from ``torch.nn.functional.cross_entropy`` (C > 1): ``label_smoothing``
            outside ``[0, 1]``, or ``weight`` without one value per class.
    """

    probabilities = False

    def __init__(
        self,
        k: float = 10.0,
        weight: Sequence[float] | torch.Tensor | None = None,
        ignore_index: int | None = None,
        label_smoothing: float = 0.0,
        distributed: bool = False,
        validate: bool = True,
    ) -> None:
        super().__init__(to_onehot_y=None, ignore_index=ignore_index, distributed=distributed, validate=validate)
        if not 0 < k <= 100:
            raise ValueError(f"k is a percentage of voxels and must lie in (0, 100], got {k}.")
        self.k = float(k)
        self.label_smoothing = float(label_smoothing)
        self._register_class_vector("class_weight", weight)

    def from_prepared(self, prep: Prepared) -> torch.Tensor:
        """The mean cross-entropy of the hardest k% voxels of an already prepared input, a 0-d tensor."""
        # rank every voxel without a graph, then recompute the cross-entropy with autograd on the chosen ones
        # only: the graph (and the backward work) is k% of the volume, not all of it
        with torch.no_grad():
            values, _ = cross_entropy_map(prep, self.class_weight, self.label_smoothing)
        flat_valid = None if prep.valid is None else prep.valid.reshape(-1).nonzero()[:, 0]
        values = values.reshape(-1) if flat_valid is None else values.reshape(-1)[flat_valid]
        chosen, k = topk_select(values, self.k, self.distributed)
        if flat_valid is not None:
            chosen = flat_valid[chosen]
        b_idx, v_idx = chosen // prep.x.shape[2], chosen % prep.x.shape[2]
        x_sel = prep.x[b_idx, :, v_idx].unsqueeze(-1)  # (k, C, 1)
        t_sel = prep.target[b_idx, :, v_idx].unsqueeze(-1)
        sel = Prepared(x_sel, prep.act, t_sel, prep.is_index, None, (1,))
        ce, _ = cross_entropy_map(sel, self.class_weight, self.label_smoothing)
        return all_reduce_sum(ce.sum(), self.distributed) / k


def _topk_count(k_percent: float, n: int) -> int:
    """ceil(k% of n), robust to floating point (7/100 * 100 is 7.000000000000001)."""
    return max(1, math.ceil(k_percent * n / 100 - 1e-9))


def topk_select(values: torch.Tensor, k_percent: float, distributed: bool) -> tuple[torch.Tensor, int]:
    """Indices of this rank's entries among the ceil(k% * n) largest of ``values`` (n and the ranking pooled
    over every rank when distributed; ties at the threshold are split in rank order), and that global k."""
    n_local = values.numel()
    if not is_distributed(distributed):
        k = _topk_count(k_percent, n_local) if n_local else 1
        return torch.topk(values, min(k, n_local), sorted=False).indices, k
    import torch.distributed as dist

    n_total = int(all_reduce_sum(torch.tensor(float(n_local), device=values.device), True).item())
    k = _topk_count(k_percent, n_total)
    cand_v, cand_i = torch.topk(values, min(k, n_local), sorted=True)
    # global threshold: the k-th largest among every rank's local top-k candidates
    sizes = [torch.zeros(1, dtype=torch.long, device=values.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([cand_v.numel()], device=values.device))
    width = max(int(s) for s in sizes)
    padded = torch.full((width,), -float("inf"), dtype=cand_v.dtype, device=cand_v.device)
    padded[: cand_v.numel()] = cand_v
    gathered = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded)
    thr = torch.topk(torch.cat(gathered), k).values[-1]
    above, ties = cand_v > thr, cand_v == thr
    counts = torch.stack([above.sum(), ties.sum()]).to(torch.long)
    all_counts = [torch.empty_like(counts) for _ in sizes]
    dist.all_gather(all_counts, counts)
    n_above = sum(int(ci[0]) for ci in all_counts)
    ties_before = sum(int(ci[1]) for ci in all_counts[: dist.get_rank()])
    take = max(0, min(int(counts[1]), k - n_above - ties_before))
    return torch.cat([cand_i[above], cand_i[ties][:take]]), k


class _VoxelSums(torch.autograd.Function):
    """Per-(sample, class) sums of a per-voxel term ``fn(x, g, v) -> (C, n)``, checkpointed by chunk: forward
    runs without a graph, backward rebuilds each chunk's graph and differentiates it, so the memory held is
    one chunk's graph instead of the whole volume's."""

    @staticmethod
    def forward(ctx, x, target, valid, fn):
        with torch.autocast(device_type=x.device.type, enabled=False):
            b, c, n = x.shape
            dt = compute_dtype(x)
            out = None
            for bi in range(b):
                for sl in _chunks(n):
                    with torch.no_grad():
                        val = fn(x[bi, :, sl].to(dt), dense_chunk(target[bi, :, sl], c, dt), _vchunk(valid, bi, sl))
                    if out is None:
                        out = torch.zeros(b, *val.shape[:-1], dtype=dt, device=x.device)
                    out[bi] += val.sum(-1)
        ctx.save_for_backward(x, target, valid)
        ctx.fn = fn
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, target, valid = ctx.saved_tensors
        with torch.autocast(device_type=x.device.type, enabled=False):
            b, c, n = x.shape
            dt = compute_dtype(x)
            gx = torch.empty_like(x)
            for bi in range(b):
                for sl in _chunks(n):
                    with torch.enable_grad():
                        xc = x[bi, :, sl].detach().to(dt).requires_grad_(True)
                        val = ctx.fn(xc, dense_chunk(target[bi, :, sl], c, dt), _vchunk(valid, bi, sl))
                        (g,) = torch.autograd.grad(val.sum(-1), xc, grad_out[bi].to(dt))
                    gx[bi, :, sl] = g
        return gx, None, None, None


def _vchunk(valid, bi, sl):
    return None if valid is None else valid[bi, :, sl]


def voxel_sums(fn, prep: Prepared) -> torch.Tensor:
    """Sum over the voxels of ``fn(x_chunk (C, n), g_chunk (C, n), valid_chunk (1, n) | None) -> (K, n)`` per
    sample: returns (B, K). ``x`` is the raw input in float32/64, ``g`` the dense target of the chunk."""
    return _VoxelSums.apply(prep.x, prep.target, prep.valid, fn)
