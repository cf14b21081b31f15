"""Per-voxel losses: weighted cross-entropy, weighted BCE, focal, TopK.

Cross-entropy and BCE use PyTorch's fused kernels. Focal loss runs in a chunked kernel (``_FocalTerms``)
that computes the gradient during forward and keeps only it, so backward is one multiplication and the
extra memory stays near two copies of the logits (MONAI's autograd graph takes about 12). TopK ranks the
voxels without a graph and differentiates only the chosen ones. With ``distributed=True`` the normalisers of
the means (voxel counts, weight sums) and the TopK threshold are pooled over all ranks.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ._base import LossBase, reduce_loss
from ._inputs import Prepared, check_label_smoothing
from ._stats import (
    Slabs,
    _chunks,
    _take,
    all_reduce_sum,
    apply_fused,
    compiling,
    compute_dtype,
    dense_chunk,
    fused,
    is_distributed,
    run_backward,
    vmap_by_slices,
)

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
        # the normaliser without per-class counts (a scatter-add by the label serialises on the background's
        # bucket): the number of valid voxels, or the sum of their classes' weights (an ignored voxel weighs 0)
        if w is None:
            den = prep.n_valid
        else:
            den = _take(torch.cat([w, w.new_zeros(1)]), torch.where(t < 0, w.shape[0], t)).sum()
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
    accepts_no_spatial = True

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
        self.label_smoothing = check_label_smoothing(label_smoothing)
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
    accepts_no_spatial = True

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


@fused
class _FocalTerms(torch.autograd.Function):
    """Focal terms per voxel and class, fused. Formulas as MONAI's sigmoid/softmax focal loss:

    sigmoid: l = a * sigmoid(-x (2g - 1))^gamma * (softplus(x) - x g)
    softmax: l_c = -a_c * (1 - p_c)^gamma_c * g_c * log p_c,  p = softmax(x)
    with a the alpha/class-weight factor; ``gamma`` is per class (the unified focal loss needs that).

    Forward returns the per-(sample, class) sums (or the per-voxel map for reduction "none"). With ``keep_grad``
    (the input needs a gradient) forward also computes d(sum of terms)/dx chunk by chunk and keeps it: backward is
    then one multiplication, and nothing else of the computation is stored (MONAI's autograd graph holds
    about a dozen tensors of the size of the logits). For the per-voxel map, backward recomputes instead, and so
    does the softmax kernel under torch.compile (its shortcut needs a data-dependent test). A dense floating
    target that requires grad gets its gradient, recomputed chunk by chunk in backward.
    """

    @staticmethod
    def forward(
        x, target, valid, gamma, gamma_scalar, alpha, alpha_pos_only, weight, use_softmax, per_voxel, keep_grad
    ):
        with torch.autocast(device_type=x.device.type, enabled=False):
            b, c, n = x.shape
            dt = compute_dtype(x)
            p = _FocalParams(gamma, gamma_scalar, alpha, alpha_pos_only, weight, use_softmax, dt)
            terms = Slabs(b, (c, n), dt, x.device) if per_voxel else None
            grad = Slabs(b, (c, n), dt, x.device) if keep_grad else None
            rows = []
            for bi in range(b):
                row = None
                for sl in _chunks(n):
                    loss, g = _focal_chunk(
                        x[bi, :, sl].to(dt), target[bi, :, sl], _vchunk(valid, bi, sl), p, 1.0 if keep_grad else None
                    )
                    if per_voxel:
                        terms.put(bi, loss, sl)
                    else:
                        row = loss.sum(1) if row is None else row + loss.sum(1)
                    if keep_grad:
                        grad.put(bi, g, sl)
                rows.append(row)
        out = terms.result() if per_voxel else torch.stack(rows)
        return out, None if grad is None else grad.result()

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, target, valid, gamma, gamma_scalar, alpha, alpha_pos_only, weight, use_softmax, per_voxel, _ = inputs
        grad = output[1]
        if grad is not None:
            ctx.mark_non_differentiable(grad)
        ctx.set_materialize_grads(False)  # no zero gradient for the kept derivative: a copy of the logits saved
        ctx.save_for_backward(x, target, valid, grad, gamma, alpha, weight)
        ctx.config = (gamma_scalar, alpha_pos_only, use_softmax, per_voxel)

    @staticmethod
    def backward(ctx, grad_out, _):
        x = ctx.saved_tensors[0]
        need_x, need_t = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if grad_out is None or not (need_x or need_t):
            return (None,) * 11
        fn = functools.partial(_focal_backward, ctx.config, need_x, need_t)
        gx, gt = run_backward(fn, "_FocalTerms", x, grad_out, *ctx.saved_tensors)
        return gx, gt, *[None] * 9

    @staticmethod
    def vmap(info, in_dims, *args):
        return vmap_by_slices(_FocalTerms.eager.apply, info, in_dims, args)


def _focal_backward(config, need_x, need_t, grad_out, x, target, valid, grad, gamma, alpha, weight):
    """dL/dx and, for a dense floating target, dL/dtarget of the focal sums (or map) given dL/dout; ``config`` is
    (gamma_scalar, alpha_pos_only, use_softmax, per_voxel)."""
    gamma_scalar, alpha_pos_only, use_softmax, per_voxel = config
    dt = compute_dtype(x)
    p = _FocalParams(gamma, gamma_scalar, alpha, alpha_pos_only, weight, use_softmax, dt)
    with torch.autocast(device_type=x.device.type, enabled=False):
        b, c, n = x.shape
        grad_out = grad_out.to(dt)
        gx = None
        if need_x and grad is not None:
            u = grad_out.unsqueeze(-1)  # (B, C, 1)
            if not use_softmax:  # elementwise: exact for any per-(sample, class) weight
                gx = (grad * u).to(x.dtype)
            elif bool((u == u[:, :1]).all()):  # softmax couples the classes: exact for one weight per sample
                gx = (grad * u[:, :1]).to(x.dtype)
        recompute = need_x and gx is None
        gxs = Slabs(b, (c, n), x.dtype, x.device) if recompute else None
        gt = Slabs(b, target.shape[1:], target.dtype, target.device) if need_t else None
        if recompute or need_t:
            for bi in range(b):
                for sl in _chunks(n):
                    u = grad_out[bi, :, sl] if per_voxel else grad_out[bi].unsqueeze(1)
                    xc, tc, vc = x[bi, :, sl].to(dt), target[bi, :, sl], _vchunk(valid, bi, sl)
                    if recompute:
                        gxs.put(bi, _focal_chunk(xc, tc, vc, p, u)[1], sl)
                    if need_t:
                        gt.put(bi, _focal_target_grad(xc, tc.to(dt), vc, p, u), sl)
    return (gxs.result() if recompute else gx), None if gt is None else gt.result()


class _FocalParams:
    """Per-class focal parameters in the compute dtype, with the special cases that make the kernel cheap;
    ``gamma_scalar`` is the common exponent when every class has the same one (a Python float), else None."""

    def __init__(self, gamma, gamma_scalar, alpha, alpha_pos_only, weight, use_softmax, dt):
        self.dt, self.use_softmax, self.alpha_pos_only = dt, use_softmax, alpha_pos_only
        self.gamma = gamma.to(dt)
        self.gamma_scalar = gamma_scalar
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
    # a 0/1 target takes the cheaper, exact hard-label formulas; torch.compile, which cannot branch on the data,
    # takes MONAI's general (soft-target) formulas, equal up to rounding
    hard = index or (not compiling() and bool(((g == 0) | (g == 1)).all()))
    gb = g.bool() if hard else None
    gam = p.gamma.unsqueeze(1)
    a = _times(_alpha_factor(g, gb, p), _weight_mask_factor(p, v, dt))  # the alpha / class-weight / mask factor
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


def _times(a, b):
    """a * b where None stands for 1."""
    if a is None:
        return b
    return a if b is None else a * b


def _alpha_factor(g, gb, p: _FocalParams):
    """MONAI's alpha factor of every focal term (None: no alpha); ``gb`` is the boolean target of a 0/1 target,
    None for the general (soft) formula."""
    if p.alpha is None:
        return None
    if p.alpha_pos_only:  # per-class alpha on positives only (MONAI's sequence alpha, sigmoid)
        return torch.where(g == 1, p.alpha.unsqueeze(1), 1.0)
    if p.use_softmax:
        return p.alpha.unsqueeze(1)
    al = p.alpha[0]  # scalar alpha, sigmoid: alpha on positives, 1 - alpha on negatives
    return torch.where(gb, al, 1 - al) if gb is not None else g * al + (1 - g) * (1 - al)


def _weight_mask_factor(p: _FocalParams, v, dt):
    """The class-weight and valid-mask factor of every focal term (None: 1)."""
    a = None if p.weight is None else p.weight.unsqueeze(1)
    if v is not None:
        a = v.to(dt) if a is None else a * v
    return a


def _focal_target_grad(x, g, v, p: _FocalParams, u):
    """u * dloss/dg (C, n) for one chunk with a dense floating target g (C, n): MONAI's focal formulas
    differentiated in the target (soft targets, distillation)."""
    gam = p.gamma.unsqueeze(1)
    rest = _weight_mask_factor(p, v, x.dtype)
    a = _times(_alpha_factor(g, None, p), rest)
    if p.use_softmax:  # l_c = -a_c (1 - p_c)^gamma g_c log p_c
        logp = torch.log_softmax(x, 0)
        d = -p.pow((1 - logp.exp()).clamp_min(0), gam) * logp
        return _times(d, a) * u
    # l = a mod bce, mod = sigmoid(z)^gamma, z = x (1 - 2g), bce = softplus(x) - x g:
    # dl/dg = a mod (-x) (1 + 2 gamma sigmoid(-z) bce) + da/dg mod bce
    z = x * (1 - 2 * g)
    mod = p.pow(torch.sigmoid(z), gam)
    bce = F.softplus(x) - x * g
    d = _times(-mod * x * (1 + 2 * gam * torch.sigmoid(-z) * bce), a)
    if p.alpha is not None and not p.alpha_pos_only:  # a = (g alpha + (1 - g)(1 - alpha)) * rest
        d = d + _times(mod * bce * (2 * p.alpha[0] - 1), rest)
    return d * u


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
    # the common exponent, decided from the Python values (no tensor read, which torch.compile cannot branch on)
    gammas = gamma.reshape(-1).tolist() if isinstance(gamma, torch.Tensor) else gamma
    gammas = [float(g) for g in gammas] if isinstance(gammas, Sequence) else [float(gammas)]
    gamma_scalar = gammas[0] if all(g == gammas[0] for g in gammas) else None
    gamma_v = torch.as_tensor(gammas, dtype=torch.float64, device=dev).reshape(-1).expand(c).contiguous()
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
    # the gradient kept by forward: not for the per-voxel map, nor for the softmax kernel under torch.compile
    keep_grad = torch.is_grad_enabled() and x.requires_grad and not per_voxel and not (use_softmax and compiling())
    out, _ = apply_fused(
        _FocalTerms,
        x,
        prep.target,
        prep.valid,
        gamma_v,
        gamma_scalar,
        alpha_v,
        alpha_pos_only,
        weight_v,
        use_softmax,
        per_voxel,
        keep_grad,
    )
    return out


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
    accepts_no_spatial = True

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
        # MONAI's "sum": the spatial mean per (b, c), then the sum. For a (B, C) input MONAI's spatial mean runs
        # over an empty list of axes, which torch reads as every axis: its "sum" is then the mean, as here
        if self.reduction == "sum" and prep.spatial:
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
    """TopK cross-entropy: the mean CE of the hardest ``k`` percent of the voxels of the batch (nnU-Net's TopK
    loss), so the easy background stops dominating. ``weight``, ``ignore_index`` and ``label_smoothing`` as
    ``WeightedCELoss``; the CE values are ranked after weighting.

    Relation to nnU-Net's ``TopKLoss``: by default the count is ``ceil(k% of the valid voxels)`` and ignored
    voxels are never chosen; nnU-Net takes ``int(k% of all voxels)`` (truncated), ignored voxels included with
    a CE of 0 (they enter the mean when fewer voxels have a positive CE). ``k_of="all", rounding="floor"``
    gives nnU-Net's value exactly (except that at least one voxel is kept where nnU-Net's count is 0 and its
    mean is NaN); without ``ignore_index`` only the rounding differs.

    With ``distributed=True`` the k% are chosen over every rank's voxels (exact: the global threshold is found
    from each rank's candidates, ties split in rank order), so 2 ranks x batch 2 equals 1 process x batch 4.
    Empty patch: the hardest background voxels.

    Shapes: ``input`` ``(B, C, *spatial)`` logits (softmax inside; a single channel is read as binary logits,
    BCE); ``target`` ``(B, 1, *spatial)`` index labels (recognised from the shape) or ``(B, C, *spatial)``
    class probabilities. There is no ``reduction``: the result is always a scalar, the sum of the chosen
    voxels' (weighted) CE divided by their number ``k`` (not by their weights).

    Args:
        k: the percentage of the batch's voxels kept, in ``(0, 100]``: the ``ceil(k% of n)`` voxels with the
            largest CE (``n`` and the rounding: ``k_of``, ``rounding``). 100 keeps every voxel: the mean CE
            (divided by the voxel count, even with ``weight``).
        weight: one weight ``>= 0`` per class, as ``torch.nn.CrossEntropyLoss``'s ``weight``; None: all 1.
            For a single-channel input, the BCE ``pos_weight``.
        ignore_index: label of the voxels to leave out of the ranking (they are never chosen); None: every voxel
            counts. With index labels, the voxels holding it (it may lie outside ``[0, C)``, e.g. 255);
            with a C-channel target, the voxels where channel ``ignore_index`` is nonzero or, if it is not a
            channel index, the voxels whose target is zero in every channel.
        label_smoothing: in ``[0, 1]``, as ``torch.nn.CrossEntropyLoss``; not used for a single-channel input.
        distributed: for DDP (an initialised process group with more than one rank): the k% are chosen over
            every rank's voxels, exactly. No effect in a single process.
        validate: run the value checks on every call (NaN/Inf input, label range, target range), each a
            reduction over the tensor and a host-device synchronisation. ``False`` skips them; the shape checks
            always run.
        k_of: ``"valid"``: ``n`` counts the valid voxels, and ignored voxels are never chosen; ``"all"``: ``n``
            counts every voxel, and ignored voxels (CE 0) may be chosen, as nnU-Net does.
        rounding: ``"ceil"`` (at least k%) or ``"floor"`` (nnU-Net's ``int()``; at least one voxel).

    Raises:
        ValueError: at construction: ``k`` lies outside ``(0, 100]``; ``label_smoothing`` lies outside ``[0, 1]``;
            ``weight`` has more than one dimension, or holds negative or non-finite values; ``k_of`` or
            ``rounding`` is not one of its values.
        ValueError: at call time: the shapes do not match (``input`` ``(B, C, *spatial)``, ``target``
            ``(B, 1, *spatial)`` or ``(B, C, *spatial)``); with ``validate=True`` also NaN/Inf values,
            non-integer or out-of-range index labels (other than ``ignore_index``), or a dense target outside
            ``[0, 1]``.
        TypeError: ``ignore_index`` is not an int (construction); ``input`` or ``target`` is not a tensor, or
            ``input`` is not floating point (call).
        RuntimeError: at call time, from ``torch.nn.functional.cross_entropy`` (C > 1): ``weight`` without one
            value per class.
    """

    probabilities = False
    accepts_no_spatial = True

    def __init__(
        self,
        k: float = 10.0,
        weight: Sequence[float] | torch.Tensor | None = None,
        ignore_index: int | None = None,
        label_smoothing: float = 0.0,
        distributed: bool = False,
        validate: bool = True,
        k_of: str = "valid",
        rounding: str = "ceil",
    ) -> None:
        super().__init__(to_onehot_y=None, ignore_index=ignore_index, distributed=distributed, validate=validate)
        if not 0 < k <= 100:
            raise ValueError(f"k is a percentage of voxels and must lie in (0, 100], got {k}.")
        if k_of not in ("valid", "all"):
            raise ValueError(f"k_of must be 'valid' or 'all' (nnU-Net), got {k_of!r}.")
        if rounding not in ("ceil", "floor"):
            raise ValueError(f"rounding must be 'ceil' or 'floor' (nnU-Net), got {rounding!r}.")
        self.k = float(k)
        self.k_of, self.rounding = k_of, rounding
        self.label_smoothing = check_label_smoothing(label_smoothing)
        self._register_class_vector("class_weight", weight)

    def from_prepared(self, prep: Prepared) -> torch.Tensor:
        """The mean cross-entropy of the hardest k% voxels of an already prepared input, a 0-d tensor."""
        # rank every voxel without a graph, then recompute the cross-entropy with autograd on the chosen ones
        # only: the graph (and the backward work) is k% of the volume, not all of it
        with torch.no_grad():
            values, _ = cross_entropy_map(prep, self.class_weight, self.label_smoothing)
        rank_valid = prep.valid is not None and self.k_of == "valid"
        flat_valid = prep.valid.reshape(-1).nonzero()[:, 0] if rank_valid else None
        values = values.reshape(-1) if flat_valid is None else values.reshape(-1)[flat_valid]
        chosen, k = topk_select(values, self.k, self.distributed, self.rounding)
        if flat_valid is not None:
            chosen = flat_valid[chosen]
        b_idx, v_idx = chosen // prep.x.shape[2], chosen % prep.x.shape[2]
        x_sel = prep.x[b_idx, :, v_idx].unsqueeze(-1)  # (k, C, 1)
        t_sel = prep.target[b_idx, :, v_idx].unsqueeze(-1)
        # k_of="all": a chosen ignored voxel keeps its CE of 0
        v_sel = None if prep.valid is None or rank_valid else prep.valid[b_idx, :, v_idx].unsqueeze(-1)
        sel = Prepared(x_sel, prep.act, t_sel, prep.is_index, v_sel, (1,))
        ce, _ = cross_entropy_map(sel, self.class_weight, self.label_smoothing)
        return all_reduce_sum(ce.sum(), self.distributed) / k


def _topk_count(k_percent: float, n: int, rounding: str = "ceil") -> int:
    """ceil (or floor) of k% of n, at least 1, robust to floating point (7/100 * 100 is 7.000000000000001)."""
    if rounding == "floor":
        return max(1, math.floor(k_percent * n / 100 + 1e-9))
    return max(1, math.ceil(k_percent * n / 100 - 1e-9))


def topk_select(
    values: torch.Tensor, k_percent: float, distributed: bool, rounding: str = "ceil"
) -> tuple[torch.Tensor, int]:
    """Indices of this rank's entries among the k largest of ``values``, k = ceil (or floor) of k% of n (n and
    the ranking pooled over every rank when distributed; ties at the threshold are split in rank order), and
    that global k."""
    n_local = values.numel()
    if not is_distributed(distributed):
        k = _topk_count(k_percent, n_local, rounding) if n_local else 1
        return torch.topk(values, min(k, n_local), sorted=False).indices, k
    import torch.distributed as dist

    n_total = int(all_reduce_sum(torch.tensor(float(n_local), device=values.device), True).item())
    k = _topk_count(k_percent, n_total, rounding)
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


@fused
class _VoxelSums(torch.autograd.Function):
    """Per-(sample, class) sums of a per-voxel term ``fn(x, g, v, *params) -> (C, n)``, checkpointed by chunk:
    forward runs without a graph, backward rebuilds each chunk's graph and differentiates it, so the memory held
    is one chunk's graph instead of the whole volume's. A dense floating target (and any parameter) that
    requires grad gets its gradient from the same rebuilt graphs. Tensors ``fn`` reads go in ``params``, not in
    its closure, so that vmap slices them and autograd sees them."""

    @staticmethod
    def forward(x, target, valid, fn, *params):
        return _voxel_sums_forward(x, target, valid, fn, params)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, target, valid, fn, *params = inputs
        ctx.save_for_backward(x, target, valid, *params)
        ctx.fn = fn

    @staticmethod
    def backward(ctx, grad_out):
        x = ctx.saved_tensors[0]
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], *ctx.needs_input_grad[4:])
        if not any(need):
            return (None,) * len(ctx.needs_input_grad)
        fn = functools.partial(_voxel_sums_backward, ctx.fn, need)
        gx, gt, *gp = run_backward(fn, "_VoxelSums", x, grad_out, *ctx.saved_tensors)
        return gx, gt, None, None, *gp

    @staticmethod
    def vmap(info, in_dims, *args):
        return vmap_by_slices(_VoxelSums.eager.apply, info, in_dims, args)


def _voxel_sums_forward(x, target, valid, fn, params):
    """The sums of ``_VoxelSums``, chunk by chunk (differentiable when run under autograd)."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        b, c, n = x.shape
        dt = compute_dtype(x)
        rows = []
        for bi in range(b):
            row = None
            for sl in _chunks(n):
                val = fn(x[bi, :, sl].to(dt), dense_chunk(target[bi, :, sl], c, dt), _vchunk(valid, bi, sl), *params)
                row = val.sum(-1) if row is None else row + val.sum(-1)
            rows.append(row)
    return torch.stack(rows)


def _voxel_sums_backward(fn, need, grad_out, x, target, valid, *params):
    """dL/dx, dL/dtarget (a dense floating target) and dL/dparams of ``_VoxelSums``, for those ``need`` flags:
    each chunk's graph rebuilt and differentiated."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        b, c, n = x.shape
        dt = compute_dtype(x)
        gx = Slabs(b, (c, n), x.dtype, x.device) if need[0] else None
        gt = Slabs(b, target.shape[1:], target.dtype, target.device) if need[1] else None
        gp = [torch.zeros_like(q) if nq else None for q, nq in zip(params, need[2:])]
        for bi in range(b):
            for sl in _chunks(n):
                with torch.enable_grad():
                    xc = x[bi, :, sl].detach().to(dt).requires_grad_(need[0])
                    tc = dense_chunk(target[bi, :, sl].detach(), c, dt).requires_grad_(need[1])
                    ps = [q.detach().requires_grad_(nq) for q, nq in zip(params, need[2:])]
                    val = fn(xc, tc, _vchunk(valid, bi, sl), *ps)
                    wrt = [t for t, nt in zip((xc, tc, *ps), need) if nt]
                    grads = list(torch.autograd.grad(val.sum(-1), wrt, grad_out[bi].to(dt)))
                if need[0]:
                    gx.put(bi, grads.pop(0), sl)
                if need[1]:
                    gt.put(bi, grads.pop(0), sl)
                for k, nq in enumerate(need[2:]):
                    if nq:
                        gp[k] = gp[k] + grads.pop(0)
    return None if gx is None else gx.result(), None if gt is None else gt.result(), *gp


def _vchunk(valid, bi, sl):
    return None if valid is None else valid[bi, :, sl]


def voxel_sums(fn, prep: Prepared, *params: torch.Tensor) -> torch.Tensor:
    """Sum over the voxels of ``fn(x_chunk (C, n), g_chunk (C, n), valid_chunk (1, n) | None, *params) -> (K, n)``
    per sample: returns (B, K). ``x`` is the raw input in float32/64, ``g`` the dense target of the chunk; every
    tensor ``fn`` reads besides them must come in ``params`` (not from its closure: vmap slices params). Under
    torch.compile the sums are traced directly (dynamo cannot trace the checkpointed backward's
    ``torch.autograd.grad``; the compiler plans what to keep or recompute itself)."""
    if compiling():
        return _voxel_sums_forward(prep.x, prep.target, prep.valid, fn, params)
    return apply_fused(_VoxelSums, prep.x, prep.target, prep.valid, fn, *params)
