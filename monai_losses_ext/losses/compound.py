"""Compound losses: weighted sums of a region and a per-voxel term, Combo, unified focal, exp-log, and
``CompoundLoss`` for any weighted sum. Each prepares its input once and hands it to its terms."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F

from ._base import LossBase, reduce_loss, safe_pow
from ._inputs import Prepared, as_class_logits
from ._stats import activate, all_reduce_sum, pool, region_sums
from .pixel import (
    CE_MOMENTS,
    FocalLoss,
    TopKCELoss,
    WeightedCELoss,
    ce_from_sums,
    focal_terms,
    fused_ce_applies,
    masked_mean,
    voxel_sums,
)
from .region import DiceLoss, tversky_index

__all__ = [
    "DiceCELoss",
    "DiceFocalLoss",
    "DiceTopKLoss",
    "ComboLoss",
    "UnifiedFocalLoss",
    "ExpLogLoss",
    "CompoundLoss",
]

_EPS = 1e-7


def _check_lambda(**lams: float) -> None:
    for name, v in lams.items():
        if v < 0:
            raise ValueError(f"{name} should be no less than 0.0, got {v}.")


def _mean_or_sum(reduction: str, cls: str) -> str:
    reduction = getattr(reduction, "value", reduction)
    if reduction not in ("mean", "sum"):
        raise ValueError(f"{cls} supports reduction 'mean' or 'sum' (as MONAI's), got {reduction!r}.")
    return reduction


class _DicePlus(LossBase):
    """lambda_dice * DiceLoss + lambda_other * other, one input preparation shared by both terms."""

    def _combine(self, dice: DiceLoss, other: LossBase, lambda_dice: float, lambda_other: float) -> None:
        _check_lambda(lambda_dice=lambda_dice, lambda_other=lambda_other)
        self.dice, self.other = dice, other
        self.lambda_dice, self.lambda_other = float(lambda_dice), float(lambda_other)

    def _prepare(self, input, target):
        return self.dice._prepare(input, target)

    def from_prepared(self, prep: Prepared) -> torch.Tensor:
        return self.lambda_dice * self.dice.from_prepared(prep) + self.lambda_other * self.other.from_prepared(prep)


def _dice_kwargs(loc: dict) -> dict:
    keys = (
        "include_background",
        "to_onehot_y",
        "sigmoid",
        "softmax",
        "other_act",
        "squared_pred",
        "jaccard",
        "reduction",
        "smooth_nr",
        "smooth_dr",
        "batch",
        "ignore_index",
        "distributed",
        "validate",
    )
    return {k: loc[k] for k in keys}


class DiceCELoss(_DicePlus):
    """``lambda_dice * DiceLoss + lambda_ce * cross-entropy``, drop-in for ``monai.losses.DiceCELoss``.

    The cross-entropy reads the logits (``weight`` as class weights, ``label_smoothing``); with one output
    channel it is binary cross-entropy with ``weight`` as pos_weight, as in MONAI. ``weight`` also weighs the
    Dice classes (without the background entry when ``include_background=False``). Index targets are read
    directly by both terms: no one-hot is built. Extra: ``ignore_index``, ``distributed``, ``validate``.
    """

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable | None = None,
        squared_pred: bool = False,
        jaccard: bool = False,
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        weight: torch.Tensor | Sequence[float] | None = None,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        label_smoothing: float = 0.0,
        ignore_index: int | None = None,
        distributed: bool = False,
        validate: bool = True,
    ) -> None:
        reduction = _mean_or_sum(reduction, "DiceCELoss")
        super().__init__(reduction=reduction)
        dice_weight = weight
        if weight is not None and not include_background:
            dice_weight = torch.as_tensor(weight)[1:]
        dice = DiceLoss(weight=dice_weight, **_dice_kwargs(locals()))
        ce = WeightedCELoss(weight, ignore_index, label_smoothing, reduction, distributed, validate=False)
        self._combine(dice, ce, lambda_dice, lambda_ce)
        self.lambda_ce = self.lambda_other

    def from_prepared(self, prep: Prepared) -> torch.Tensor:
        if prep.act != "softmax" or not fused_ce_applies(prep, self.other.label_smoothing, self.reduction):
            return super().from_prepared(prep)
        # one pass: the Dice sums and the cross-entropy sums come from the same softmax
        moments = tuple(dict.fromkeys(self.dice.moments + CE_MOMENTS))
        sums = region_sums(prep, moments, soft_label=self.dice.soft_tp)
        dice = self.dice.from_sums(sums, len(prep.spatial))
        ce = ce_from_sums(sums, self.other.class_weight, prep.is_index, self.reduction, self.other.distributed)
        return self.lambda_dice * dice + self.lambda_ce * ce


class DiceFocalLoss(_DicePlus):
    """``lambda_dice * DiceLoss + lambda_focal * FocalLoss``, drop-in for ``monai.losses.DiceFocalLoss``.

    As in MONAI the focal term reads the logits with a sigmoid per channel (``use_softmax=True`` switches it
    to the softmax focal loss); ``include_background``, ``weight``, ``alpha``, ``gamma`` and ``reduction``
    apply to the focal term, ``weight`` to the Dice classes too.
    """

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable | None = None,
        squared_pred: bool = False,
        jaccard: bool = False,
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        gamma: float = 2.0,
        weight: Sequence[float] | float | torch.Tensor | None = None,
        lambda_dice: float = 1.0,
        lambda_focal: float = 1.0,
        alpha: float | None = None,
        use_softmax: bool = False,
        ignore_index: int | None = None,
        distributed: bool = False,
        validate: bool = True,
    ) -> None:
        super().__init__(reduction=reduction)
        dice = DiceLoss(weight=weight, **_dice_kwargs(locals()))
        focal = FocalLoss(
            include_background,
            to_onehot_y,
            gamma,
            alpha,
            weight,
            reduction,
            use_softmax,
            ignore_index,
            distributed,
            validate=False,
        )
        self._combine(dice, focal, lambda_dice, lambda_focal)
        self.lambda_focal = self.lambda_other


class DiceTopKLoss(_DicePlus):
    """``lambda_dice * DiceLoss + lambda_topk * TopKCELoss(k)`` (nnU-Net's Dice + TopK10): Dice for overlap,
    cross-entropy on the hardest k% voxels for the boundaries and small structures that Dice underweights."""

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable | None = None,
        squared_pred: bool = False,
        jaccard: bool = False,
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        k: float = 10.0,
        weight: Sequence[float] | torch.Tensor | None = None,
        lambda_dice: float = 1.0,
        lambda_topk: float = 1.0,
        label_smoothing: float = 0.0,
        ignore_index: int | None = None,
        distributed: bool = False,
        validate: bool = True,
    ) -> None:
        reduction = _mean_or_sum(reduction, "DiceTopKLoss")
        if reduction != "mean":
            raise ValueError("DiceTopKLoss supports reduction='mean' only: the TopK term is a mean by definition.")
        super().__init__(reduction=reduction)
        dice_weight = torch.as_tensor(weight)[1:] if weight is not None and not include_background else weight
        dice = DiceLoss(weight=dice_weight, **_dice_kwargs(locals()))
        topk = TopKCELoss(k, weight, ignore_index, label_smoothing, distributed, validate=False)
        self._combine(dice, topk, lambda_dice, lambda_topk)
        self.lambda_topk = self.lambda_other


def _log_probs(x: torch.Tensor, act: str) -> tuple[torch.Tensor, torch.Tensor]:
    """log p and log(1 - p) per channel, computed stably from logits (or clamped probabilities)."""
    if act == "sigmoid":
        return F.logsigmoid(x), F.logsigmoid(-x)
    p = activate(x, act, 0)
    logp = torch.log_softmax(x, 0) if act == "softmax" else torch.log(p.clamp_min(_EPS))
    return logp, torch.log1p(-p.clamp_max(1 - _EPS))


class ComboLoss(LossBase):
    """Combo loss (Taghanaki et al., 2019): ``alpha * L_wBCE + (1 - alpha) * DiceLoss``.

    ``L_wBCE = -mean over voxels and scored channels of [beta g log p + (1 - beta)(1 - g) log(1 - p)]``:
    beta > 0.5 penalises false negatives more than false positives. The paper subtracts the Dice *score*;
    this uses the Dice *loss* (the same up to the constant 1 - alpha), so the loss is never negative.
    Works with sigmoid (binary / multi-label) or softmax (multi-class, every scored channel as one binary
    term). Index targets are read directly. Empty patch: the background's BCE, and the Dice term 0.
    """

    def __init__(
        self,
        alpha: float = 0.5,
        beta: float = 0.5,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable | None = None,
        squared_pred: bool = False,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        ignore_index: int | None = None,
        distributed: bool = False,
        validate: bool = True,
    ) -> None:
        super().__init__(include_background=include_background)
        if not (0 <= alpha <= 1 and 0 <= beta <= 1):
            raise ValueError(f"alpha and beta must lie in [0, 1], got alpha={alpha}, beta={beta}.")
        jaccard, reduction = False, "mean"
        self.dice = DiceLoss(**_dice_kwargs(locals()))
        self.alpha, self.beta = float(alpha), float(beta)

    def _prepare(self, input, target):
        return self.dice._prepare(input, target)

    def from_prepared(self, prep: Prepared) -> torch.Tensor:
        first = self.dice._first_kept(prep.num_classes)
        act, beta = prep.act, self.beta

        def wbce(x, g, v):
            logp, log1mp = _log_probs(x, act)
            term = -(beta * g * logp + (1 - beta) * (1 - g) * log1mp)[first:]
            return term if v is None else term * v

        sums = voxel_sums(wbce, prep)
        bce = masked_mean(sums.sum(), prep.n_valid * sums.shape[1], self.dice.distributed)
        return self.alpha * bce + (1 - self.alpha) * self.dice.from_prepared(prep)


class UnifiedFocalLoss(LossBase):
    """Unified focal loss (Yeung et al., 2022), multi-class: ``weight * L_FT + (1 - weight) * L_F``.

    Class 0 is the background, classes >= 1 are the rare classes (binary tasks: one sigmoid channel or two
    softmax channels). With TI_c = (TP + s) / (TP + delta FN + (1 - delta) FP + s):
    asymmetric (default): L_F = mean over voxels of [(1 - delta)(1 - p_0)^gamma CE_0 + delta sum_{c>=1} CE_c],
    L_FT = mean over classes of [1 - TI_0, (1 - TI_c)^(1 - gamma) for c >= 1]: the background is suppressed,
    the rare classes enhanced. symmetric: the focal factor and the 1 - gamma exponent apply to every class.
    Defaults as the paper: weight (lambda) 0.5, delta 0.6, gamma 0.5. Targets: index labels or one-hot.
    Empty patch: the foreground Tversky terms are 0, the background terms remain.
    """

    def __init__(
        self,
        weight: float = 0.5,
        delta: float = 0.6,
        gamma: float = 0.5,
        asymmetric: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable | None = None,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        ignore_index: int | None = None,
        distributed: bool = False,
        validate: bool = True,
    ) -> None:
        super().__init__(
            to_onehot_y=to_onehot_y,
            sigmoid=sigmoid,
            softmax=softmax,
            other_act=other_act,
            ignore_index=ignore_index,
            distributed=distributed,
            validate=validate,
        )
        for name, v in (("weight", weight), ("delta", delta), ("gamma", gamma)):
            if not 0 <= v <= 1:
                raise ValueError(f"{name} must lie in [0, 1], got {v}.")
        self.weight, self.delta, self.gamma, self.asymmetric = float(weight), float(delta), float(gamma), asymmetric
        self.smooth_nr, self.smooth_dr, self.batch = float(smooth_nr), float(smooth_dr), batch

    def from_prepared(self, prep: Prepared) -> torch.Tensor:
        prep = as_class_logits(prep, "UnifiedFocalLoss")
        c, d, g = prep.num_classes, self.delta, self.gamma
        gammas = [g] + [0.0 if self.asymmetric else g] * (c - 1)
        alphas = [1 - d] + [d] * (c - 1)
        focal = focal_terms(prep, gammas, alphas, use_softmax=True)
        l_f = masked_mean(focal.sum(), prep.n_valid, self.distributed)
        s = pool(region_sums(prep, ("tp", "sp", "sg")), self.batch, self.distributed)
        ti = tversky_index(s, 1 - d, d, self.smooth_nr, self.smooth_dr)
        ft = safe_pow(1 - ti, 1 - g)
        if self.asymmetric:
            ft = torch.cat([1 - ti[..., :1], ft[..., 1:]], -1)
        l_ft = reduce_loss(ft, "mean", self.distributed and not self.batch)
        return self.weight * l_ft + (1 - self.weight) * l_f


class ExpLogLoss(LossBase):
    """Exponential logarithmic loss (Wong et al., 2018): ``w_dice * L_exp-Dice + w_cross * L_exp-cross``.

    ``L_exp-Dice = mean over classes (and samples) of (-ln Dice_c)^gamma_dice`` with
    Dice_c = (2 TP + smooth_nr) / (sum p + sum g + smooth_dr) (the paper's pseudo-count is 1);
    ``L_exp-cross = mean over voxels of w_l (-ln p_l)^gamma_cross`` for the true label l, with
    w_l = (sum_k f_k / f_l)^0.5 from ``class_frequencies`` (label counts or fractions of the training set),
    or from the batch's label counts when not given. gamma < 1 focuses on the less accurate classes.
    Mutually exclusive classes: softmax, or one sigmoid channel. Empty patch: background terms only.
    """

    def __init__(
        self,
        w_dice: float = 0.8,
        w_cross: float = 0.2,
        gamma_dice: float = 0.3,
        gamma_cross: float = 0.3,
        class_frequencies: Sequence[float] | None = None,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable | None = None,
        smooth_nr: float = 1.0,
        smooth_dr: float = 1.0,
        batch: bool = False,
        ignore_index: int | None = None,
        distributed: bool = False,
        validate: bool = True,
    ) -> None:
        super().__init__(
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            sigmoid=sigmoid,
            softmax=softmax,
            other_act=other_act,
            ignore_index=ignore_index,
            distributed=distributed,
            validate=validate,
        )
        _check_lambda(w_dice=w_dice, w_cross=w_cross)
        if gamma_dice <= 0 or gamma_cross <= 0:
            raise ValueError(f"gamma_dice and gamma_cross must be > 0, got {gamma_dice}, {gamma_cross}.")
        self.w_dice, self.w_cross = float(w_dice), float(w_cross)
        self.gamma_dice, self.gamma_cross = float(gamma_dice), float(gamma_cross)
        self.smooth_nr, self.smooth_dr, self.batch = float(smooth_nr), float(smooth_dr), batch
        self._register_class_vector("class_frequencies", class_frequencies)

    def from_prepared(self, prep: Prepared) -> torch.Tensor:
        prep = as_class_logits(prep, "ExpLogLoss")
        c = prep.num_classes
        stats = region_sums(prep, ("tp", "sp", "sg"))
        first = 1 if not self.include_background else 0
        s = pool({k: v[:, first:] for k, v in stats.items()}, self.batch, self.distributed)
        dice = (2 * s["tp"] + self.smooth_nr) / (s["sp"] + s["sg"] + self.smooth_dr)
        l_dice_terms = safe_pow(-torch.log(dice), self.gamma_dice)
        l_dice = reduce_loss(l_dice_terms, "mean", self.distributed and not self.batch)
        if self.class_frequencies is not None:
            if self.class_frequencies.numel() != c:
                raise ValueError(f"class_frequencies has {self.class_frequencies.numel()} values for {c} classes.")
            freq = self.class_frequencies.to(stats["sg"])
        else:
            freq = all_reduce_sum(stats["sg"].detach().sum(0), self.distributed)
        w = torch.where(freq > 0, (freq.sum() / freq.clamp_min(_EPS)).sqrt(), 0.0)
        gamma = self.gamma_cross

        def cross(x, g, v):
            term = (w.to(x).unsqueeze(1) * g * safe_pow(-torch.log_softmax(x, 0), gamma)).sum(0, keepdim=True)
            return term if v is None else term * v

        l_cross = masked_mean(voxel_sums(cross, prep).sum(), prep.n_valid, self.distributed)
        return self.w_dice * l_dice + self.w_cross * l_cross


class CompoundLoss(torch.nn.Module):
    """A weighted sum of any losses, each term kept for logging.

    ``terms`` maps a name to a loss module, a registry name, or a ``(loss, weight)`` pair, e.g.
    ``CompoundLoss({"dice": DiceLoss(softmax=True, to_onehot_y=True), "ce": (WeightedCELoss(), 0.5)})``.
    After each forward ``last_terms`` holds each term's detached (unweighted) value as a tensor (no device
    sync; call ``float()`` when logging). Keyword arguments of forward (e.g. ``distance_map=``) go to the terms
    whose forward accepts them.
    """

    def __init__(self, terms: Mapping[str, object]) -> None:
        super().__init__()
        from ..registry import get_loss

        if not terms:
            raise ValueError("CompoundLoss needs at least one term, e.g. {'dice': DiceLoss(), 'ce': WeightedCELoss()}.")
        self.terms = torch.nn.ModuleDict()
        self.weights: dict[str, float] = {}
        self._accepts: dict[str, set[str] | None] = {}
        for name, spec in terms.items():
            loss, w = spec if isinstance(spec, (tuple, list)) else (spec, 1.0)
            if isinstance(loss, str):
                loss = get_loss(loss)
            if not isinstance(loss, torch.nn.Module):
                raise TypeError(f"term {name!r} must be a loss module or a registry name, got {type(loss).__name__}.")
            if float(w) < 0:
                raise ValueError(f"term {name!r} has a negative weight {w}.")
            self.terms[name] = loss
            self.weights[name] = float(w)
            params = inspect.signature(loss.forward).parameters
            var_kw = any(p.kind == p.VAR_KEYWORD for p in params.values())
            self._accepts[name] = None if var_kw else set(params) - {"input", "target"}
        self.last_terms: dict[str, torch.Tensor] = {}

    def forward(self, input: torch.Tensor, target: torch.Tensor, **kwargs) -> torch.Tensor:
        total = 0.0
        for name, loss in self.terms.items():
            acc = self._accepts[name]
            kw = kwargs if acc is None else {k: v for k, v in kwargs.items() if k in acc}
            value = loss(input, target, **kw)
            self.last_terms[name] = value.detach()
            total = total + self.weights[name] * value
        return total
