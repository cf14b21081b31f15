"""Compound losses: weighted sums of a region and a per-voxel term, Combo, unified focal, exp-log, and
``CompoundLoss`` for any weighted sum. Each prepares its input once and hands it to its terms."""

from __future__ import annotations

import dataclasses
import inspect
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ._base import LossBase, not_scriptable, reduce_loss, safe_pow
from ._inputs import Prepared, as_class_logits
from ._stats import activate, all_reduce_sum, compute_dtype, pool, region_sums
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
from .region import DiceLoss, GeneralizedDiceLoss, tversky_index

__all__ = [
    "DiceCELoss",
    "DiceFocalLoss",
    "GeneralizedDiceFocalLoss",
    "DiceTopKLoss",
    "ComboLoss",
    "UnifiedFocalLoss",
    "AsymmetricUnifiedFocalLoss",
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

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the loss of a batch: both terms from one checked and aligned input.

        Args:
            input: the network output ``(B, C, *spatial)``; ``other_act``, as in MONAI, applies to the region
                term only: the per-voxel term reads the raw input as logits.
            target: ``(B, 1, *spatial)`` index labels or ``(B, C, *spatial)`` one-hot, as the class describes.

        Returns:
            The weighted sum of the two terms, shaped as the class describes for its ``reduction``.
        """
        prep = self._prepare(input, target)
        if self.dice.other_act is None:
            return self.from_prepared(prep)
        raw = input if type(input) is torch.Tensor else input.as_subclass(torch.Tensor)
        raw_prep = dataclasses.replace(prep, x=raw.reshape(prep.x.shape))
        return self.lambda_dice * self.dice.from_prepared(prep) + self.lambda_other * self.other.from_prepared(raw_prep)


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

    Called as ``loss(input, target)`` (``LossBase.forward``), it returns a 0-d tensor. With ``softmax=True``,
    more than one channel and no label smoothing, the Dice and cross-entropy sums come from one pass over the
    logits (one softmax).

    Args:
        include_background: whether channel 0 (background) is scored by the Dice term; the cross-entropy
            always covers every class, as in MONAI. Ignored, with a warning, for a single-channel input.
        to_onehot_y: ``True``: the target is ``(B, 1, *spatial)`` index labels, read as they are by both
            terms. ``False``: the target has one channel per input channel (one-hot or soft); a single-channel
            input takes a ``(B, 1, *spatial)`` binary target.
        sigmoid: apply a sigmoid to the input of the Dice term (binary or overlapping channels).
        softmax: apply a softmax over the channels for the Dice term (mutually exclusive classes).
        other_act: any other activation for the Dice term, e.g. ``torch.tanh``. At most one of ``sigmoid``,
            ``softmax`` and ``other_act``; with none of them the input must be probabilities in ``[0, 1]``.
            Whatever the activation, the cross-entropy reads the raw input as logits, as in MONAI.
        squared_pred: Dice with the V-Net denominator ``sum p^2 + sum g^2``.
        jaccard: the soft Jaccard (IoU) loss instead of Dice.
        reduction: ``"mean"`` (Dice: mean over samples and classes; cross-entropy: weighted mean over the
            voxels) or ``"sum"`` (both summed); the result is a 0-d tensor either way. ``"none"`` is not
            supported.
        smooth_nr: added to the numerator of the Dice score.
        smooth_dr: added to the denominator of the Dice score.
        batch: pool the Dice sums over the batch (over every rank with ``distributed``) before the score: one
            Dice per class instead of one per sample and class.
        weight: one weight per class, background included (``C`` values, each ``>= 0``): the cross-entropy's
            class weights, ``sum_i w[t_i] CE_i / sum_i w[t_i]`` for index labels as in
            ``torch.nn.CrossEntropyLoss``; with one output channel the BCE ``pos_weight``. The Dice term weighs
            its scored classes with the same values (entry 0 dropped when ``include_background=False``).
            None: all 1.
        lambda_dice: factor of the Dice term, ``>= 0``.
        lambda_ce: factor of the cross-entropy term, ``>= 0``.
        label_smoothing: label smoothing of the cross-entropy, in ``[0, 1]``; not applied with one output
            channel (binary cross-entropy), as in MONAI.
        ignore_index: label of the voxels left out of both terms (it may lie outside ``[0, C)``, e.g. 255);
            with a C-channel target, the voxels where channel ``ignore_index`` is nonzero or, if it is not a
            channel index, the voxels whose target is zero in every channel. None: every voxel counts.
        distributed: for DDP: the Dice mean (or, with ``batch=True``, its sums) and the cross-entropy's
            weighted mean run over every rank's samples. No effect in a single process.
        validate: check the values of ``input`` and ``target`` at every call (NaN/Inf, ranges, labels), each
            check a host-device synchronisation; ``False`` skips them (the shape checks always run).

    Raises:
        ValueError: at construction: ``reduction`` is not ``"mean"`` or ``"sum"``; more than one of
            ``sigmoid``, ``softmax``, ``other_act`` is set; ``lambda_dice`` or ``lambda_ce`` is negative;
            ``label_smoothing`` lies outside ``[0, 1]``; ``weight`` has more than one dimension or holds negative
            or non-finite values.
        ValueError: at call time: the shapes of ``input`` and ``target`` do not match; a one-channel target
            for a multi-channel input without ``to_onehot_y=True``, or a multi-channel target with it;
            ``weight`` does not hold one value per channel; with ``validate=True`` also NaN/Inf values, input
            outside ``[0, 1]`` when no activation is chosen, non-integer or out-of-range index labels (other
            than ``ignore_index``), a dense target outside ``[0, 1]``, or, with ``softmax=True``, a one-hot
            target that does not sum to 1 over the channels.
        TypeError: ``other_act`` is not callable or ``ignore_index`` is not an int (construction); ``input`` or
            ``target`` is not a tensor, or ``input`` is not floating point (call).
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
        """The loss of an input already checked and aligned by ``_prepare`` (as compound losses hand it on).

        Args:
            prep: the prepared input and target.

        Returns:
            The loss, a 0-d tensor.
        """
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

    Focal term: ``sigmoid(-x (2g - 1))^gamma * BCE(x, g)`` per voxel and channel, or with ``use_softmax``
    ``-(1 - p_c)^gamma g_c log p_c``; see ``FocalLoss``.

    Args:
        include_background: whether channel 0 (background) is scored, by both terms (the focal term drops it
            before its softmax, as MONAI does). Ignored, with a warning, for a single-channel input.
        to_onehot_y: ``True``: the target is ``(B, 1, *spatial)`` index labels. ``False``: the target has one
            channel per input channel (one-hot or soft); a single-channel input takes a ``(B, 1, *spatial)``
            binary target.
        sigmoid: apply a sigmoid to the input of the Dice term (binary or overlapping channels).
        softmax: apply a softmax over the channels for the Dice term (mutually exclusive classes).
        other_act: any other activation for the Dice term, e.g. ``torch.tanh``. At most one of ``sigmoid``,
            ``softmax`` and ``other_act``; with none of them the input must be probabilities in ``[0, 1]``.
            The focal term always reads the raw input as logits (``use_softmax`` chooses its activation).
        squared_pred: Dice with the V-Net denominator ``sum p^2 + sum g^2``.
        jaccard: the soft Jaccard (IoU) loss instead of Dice.
        reduction: ``"mean"``: a 0-d tensor, each term's mean. ``"sum"``: a 0-d tensor, the sum of the
            per-(sample, class) Dice losses plus, as in MONAI, the sum over (sample, class) of the focal term's
            spatial means. ``"none"``: ``(B, C, *spatial)``, the per-voxel focal term plus the per-(sample, class)
            Dice loss broadcast over the voxels (``C`` counts the scored classes).
        smooth_nr: added to the numerator of the Dice score.
        smooth_dr: added to the denominator of the Dice score.
        batch: pool the Dice sums over the batch (over every rank with ``distributed``) before the score.
        gamma: focusing exponent of the focal term, ``>= 0`` (0: plain BCE / cross-entropy).
        weight: factor of each scored class in both terms: a scalar or one value per scored class (after
            ``include_background``), each ``>= 0``. None: all 1.
        lambda_dice: factor of the Dice term, ``>= 0``.
        lambda_focal: factor of the focal term, ``>= 0``.
        alpha: class balance of the focal term in ``[0, 1]``: with sigmoid focal, positives weigh ``alpha``
            and negatives ``1 - alpha``; with ``use_softmax``, ``[1 - alpha, alpha, ...]`` per class (ignored,
            with a warning, when ``include_background=False``). None: no balancing.
        use_softmax: the softmax focal loss (mutually exclusive classes) instead of the sigmoid one.
        ignore_index: label of the voxels left out of both terms (it may lie outside ``[0, C)``, e.g. 255);
            with a C-channel target, the voxels where channel ``ignore_index`` is nonzero or, if it is not a
            channel index, the voxels whose target is zero in every channel. None: every voxel counts.
        distributed: for DDP: the means (and, with ``batch=True``, the Dice sums) run over every rank. No
            effect in a single process.
        validate: check the values of ``input`` and ``target`` at every call (NaN/Inf, ranges, labels), each
            check a host-device synchronisation; ``False`` skips them (the shape checks always run).

    Raises:
        ValueError: at construction: ``reduction`` is not ``"mean"``, ``"sum"`` or ``"none"``; more than one of
            ``sigmoid``, ``softmax``, ``other_act`` is set; ``lambda_dice`` or ``lambda_focal`` is negative;
            ``gamma < 0``; ``alpha`` outside ``[0, 1]``; ``weight`` is not a scalar or 1-D, or holds negative or
            non-finite values.
        ValueError: at call time: the shapes of ``input`` and ``target`` do not match; a one-channel target
            for a multi-channel input without ``to_onehot_y=True``, or a multi-channel target with it; a 1-D
            ``weight`` without one value per scored class, or when a single class is scored; with
            ``validate=True`` also NaN/Inf values, input outside ``[0, 1]`` when no activation is chosen,
            non-integer or out-of-range index labels (other than ``ignore_index``), a dense target outside
            ``[0, 1]``, or, with ``softmax=True``, a one-hot target that does not sum to 1 over the channels.
        TypeError: ``other_act`` is not callable or ``ignore_index`` is not an int (construction); ``input`` or
            ``target`` is not a tensor, or ``input`` is not floating point (call).
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


class GeneralizedDiceFocalLoss(_DicePlus):
    """``lambda_gdl * GeneralizedDiceLoss + lambda_focal * FocalLoss``, drop-in for
    ``monai.losses.GeneralizedDiceFocalLoss`` (same arguments, values and input gradients).

    As in MONAI, the generalised Dice term applies the activation (``sigmoid``, ``softmax`` or ``other_act``)
    and its class weights from the reference volumes (``w_type``); the focal term always reads the raw input as
    logits, with a sigmoid per channel (``FocalLoss`` with ``use_softmax=False`` and no ``alpha``), and is the
    only term that takes ``weight``. ``include_background``, ``to_onehot_y`` and ``reduction`` apply to both.
    The input is checked and aligned once for both terms; index targets are never expanded to a float one-hot.
    Extra: ``ignore_index``, ``distributed``, ``validate``.

    Focal term: ``sigmoid(-x (2g - 1))^gamma * BCE(x, g)`` per voxel and scored channel, see ``FocalLoss``.
    Empty patch: the generalised Dice term as ``GeneralizedDiceLoss`` (0 when every scored class is absent and
    predicted absent), plus the background focal terms.

    Args:
        include_background: whether channel 0 (background) is scored, by both terms. Ignored, with a warning,
            for a single-channel input.
        to_onehot_y: ``True``: the target is ``(B, 1, *spatial)`` index labels. ``False``: the target has one
            channel per input channel (one-hot or soft); a single-channel input takes a ``(B, 1, *spatial)``
            binary target.
        sigmoid: apply a sigmoid to the input of the generalised Dice term.
        softmax: apply a softmax over the channels for the generalised Dice term.
        other_act: any other activation for the generalised Dice term, e.g. ``torch.tanh``. At most one of
            ``sigmoid``, ``softmax`` and ``other_act``; with none of them the input must be probabilities in
            ``[0, 1]``. The focal term always reads the raw input as logits, as in MONAI.
        w_type: class weights of the generalised Dice term from the reference volume V of each class:
            ``"square"`` 1/V^2, ``"simple"`` 1/V, ``"uniform"`` 1.
        reduction: ``"mean"``: a 0-d tensor, the mean over samples of the generalised Dice loss plus the focal
            term's mean. ``"sum"``: a 0-d tensor, the sum over samples of the generalised Dice loss plus, as in
            MONAI, the sum over (sample, class) of the focal term's spatial means. ``"none"``:
            ``(B, C, *spatial)``, the per-voxel focal terms plus the per-sample generalised Dice loss broadcast
            over classes and voxels (``C`` counts the scored classes).
        smooth_nr: added to the numerator of the generalised Dice score.
        smooth_dr: added to the denominator of the generalised Dice score.
        batch: pool the generalised Dice sums (and class volumes) over the batch (over every rank with
            ``distributed``) before the score.
        gamma: focusing exponent of the focal term, ``>= 0`` (0: plain BCE).
        weight: factor of each scored class in the focal term: a scalar or one value ``>= 0`` per scored class
            (after ``include_background``). None: all 1.
        lambda_gdl: factor of the generalised Dice term, ``>= 0``.
        lambda_focal: factor of the focal term, ``>= 0``.
        ignore_index: label of the voxels left out of both terms (it may lie outside ``[0, C)``, e.g. 255);
            with a C-channel target, the voxels where channel ``ignore_index`` is nonzero or, if it is not a
            channel index, the voxels whose target is zero in every channel. None: every voxel counts.
        distributed: for DDP: the means (and, with ``batch=True``, the generalised Dice sums) run over every
            rank. No effect in a single process.
        validate: check the values of ``input`` and ``target`` at every call (NaN/Inf, ranges, labels), each
            check a host-device synchronisation; ``False`` skips them (the shape checks always run).

    Raises:
        ValueError: at construction: ``reduction`` is not ``"mean"``, ``"sum"`` or ``"none"``; more than one of
            ``sigmoid``, ``softmax``, ``other_act`` is set; ``w_type`` is not ``"square"``, ``"simple"`` or
            ``"uniform"``; ``lambda_gdl`` or ``lambda_focal`` is negative; ``gamma < 0``; ``weight`` is not a
            scalar or 1-D, or holds negative or non-finite values.
        ValueError: at call time: the shapes of ``input`` and ``target`` do not match (also a different number
            of dimensions, or a target with neither 1 nor C channels, which MONAI reports as ValueError); a
            one-channel target for a multi-channel input without ``to_onehot_y=True``, or a multi-channel target
            with it; a 1-D ``weight`` without one value per scored class, or with a single-channel input; with
            ``validate=True`` also NaN/Inf values, input outside ``[0, 1]`` when no activation is chosen,
            non-integer or out-of-range index labels (other than ``ignore_index``), a dense target outside
            ``[0, 1]``, or, with ``softmax=True``, a one-hot target that does not sum to 1 over the channels.
        TypeError: ``other_act`` is not callable or ``ignore_index`` is not an int (construction); ``input`` or
            ``target`` is not a tensor, or ``input`` is not floating point (call).
    """

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable | None = None,
        w_type: str = "square",
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        gamma: float = 2.0,
        weight: Sequence[float] | float | torch.Tensor | None = None,
        lambda_gdl: float = 1.0,
        lambda_focal: float = 1.0,
        ignore_index: int | None = None,
        distributed: bool = False,
        validate: bool = True,
    ) -> None:
        super().__init__(reduction=reduction)
        _check_lambda(lambda_gdl=lambda_gdl, lambda_focal=lambda_focal)
        gdl = GeneralizedDiceLoss(
            include_background,
            to_onehot_y,
            sigmoid,
            softmax,
            other_act,
            w_type,
            reduction,
            smooth_nr,
            smooth_dr,
            batch,
            ignore_index=ignore_index,
            distributed=distributed,
            validate=validate,
        )
        focal = FocalLoss(
            include_background, to_onehot_y, gamma, None, weight, reduction, False, ignore_index, distributed, False
        )
        self._combine(gdl, focal, lambda_gdl, lambda_focal)
        self.lambda_gdl, self.lambda_focal = self.lambda_dice, self.lambda_other


class DiceTopKLoss(_DicePlus):
    """``lambda_dice * DiceLoss + lambda_topk * TopKCELoss(k)`` (nnU-Net's Dice + TopK10): Dice for overlap,
    cross-entropy on the hardest k% voxels for the boundaries and small structures that Dice underweights.

    TopK term: the mean cross-entropy of the ``ceil(k% * N)`` voxels of the batch (N valid voxels) with the
    highest (weighted) cross-entropy; see ``TopKCELoss``. Called as ``loss(input, target)``
    (``LossBase.forward``), it returns a 0-d tensor.

    Args:
        include_background: whether channel 0 (background) is scored by the Dice term; the cross-entropy
            always covers every class. Ignored, with a warning, for a single-channel input.
        to_onehot_y: ``True``: the target is ``(B, 1, *spatial)`` index labels, read as they are by both
            terms. ``False``: the target has one channel per input channel (one-hot or soft); a single-channel
            input takes a ``(B, 1, *spatial)`` binary target.
        sigmoid: apply a sigmoid to the input of the Dice term (binary or overlapping channels).
        softmax: apply a softmax over the channels for the Dice term (mutually exclusive classes).
        other_act: any other activation for the Dice term, e.g. ``torch.tanh``. At most one of ``sigmoid``,
            ``softmax`` and ``other_act``; with none of them the input must be probabilities in ``[0, 1]``.
            The TopK term always reads the raw input as logits (binary cross-entropy with one channel).
        squared_pred: Dice with the V-Net denominator ``sum p^2 + sum g^2``.
        jaccard: the soft Jaccard (IoU) loss instead of Dice.
        reduction: ``"mean"`` only (the TopK term is a mean by definition); the result is a 0-d tensor.
        smooth_nr: added to the numerator of the Dice score.
        smooth_dr: added to the denominator of the Dice score.
        batch: pool the Dice sums over the batch (over every rank with ``distributed``) before the score.
        k: the percentage of voxels kept by the TopK term, in ``(0, 100]`` (nnU-Net's TopK10: 10).
        weight: one weight per class, background included (``C`` values, each ``>= 0``): the cross-entropy's
            class weights, applied before the voxels are ranked. The Dice term weighs its scored classes with
            the same values (entry 0 dropped when ``include_background=False``). None: all 1.
        lambda_dice: factor of the Dice term, ``>= 0``.
        lambda_topk: factor of the TopK term, ``>= 0``.
        label_smoothing: label smoothing of the cross-entropy, in ``[0, 1]``.
        ignore_index: label of the voxels left out of both terms (it may lie outside ``[0, C)``, e.g. 255);
            with a C-channel target, the voxels where channel ``ignore_index`` is nonzero or, if it is not a
            channel index, the voxels whose target is zero in every channel. None: every voxel counts.
        distributed: for DDP: the Dice mean runs over every rank's samples (with ``batch=True`` its sums are
            pooled), and the k% are chosen among every rank's voxels. No effect in a single process.
        validate: check the values of ``input`` and ``target`` at every call (NaN/Inf, ranges, labels), each
            check a host-device synchronisation; ``False`` skips them (the shape checks always run).
        k_of: as ``TopKCELoss``: ``"valid"`` (k% of the valid voxels) or ``"all"`` (of every voxel, nnU-Net).
        rounding: as ``TopKCELoss``: ``"ceil"`` or ``"floor"`` (nnU-Net).

    Raises:
        ValueError: at construction: ``reduction`` is not ``"mean"``; more than one of ``sigmoid``,
            ``softmax``, ``other_act`` is set; ``lambda_dice`` or ``lambda_topk`` is negative; ``k`` lies outside
            ``(0, 100]``; ``label_smoothing`` lies outside ``[0, 1]``; ``weight`` has more than one dimension or
            holds negative or non-finite values; ``k_of`` or ``rounding`` is not one of its values.
        ValueError: at call time: the shapes of ``input`` and ``target`` do not match; a one-channel target
            for a multi-channel input without ``to_onehot_y=True``, or a multi-channel target with it;
            ``weight`` does not hold one value per channel; with ``validate=True`` also NaN/Inf values, input
            outside ``[0, 1]`` when no activation is chosen, non-integer or out-of-range index labels (other
            than ``ignore_index``), a dense target outside ``[0, 1]``, or, with ``softmax=True``, a one-hot
            target that does not sum to 1 over the channels.
        TypeError: ``other_act`` is not callable or ``ignore_index`` is not an int (construction); ``input`` or
            ``target`` is not a tensor, or ``input`` is not floating point (call).
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
        k: float = 10.0,
        weight: Sequence[float] | torch.Tensor | None = None,
        lambda_dice: float = 1.0,
        lambda_topk: float = 1.0,
        label_smoothing: float = 0.0,
        ignore_index: int | None = None,
        distributed: bool = False,
        validate: bool = True,
        k_of: str = "valid",
        rounding: str = "ceil",
    ) -> None:
        reduction = _mean_or_sum(reduction, "DiceTopKLoss")
        if reduction != "mean":
            raise ValueError("DiceTopKLoss supports reduction='mean' only: the TopK term is a mean by definition.")
        super().__init__(reduction=reduction)
        dice_weight = torch.as_tensor(weight)[1:] if weight is not None and not include_background else weight
        dice = DiceLoss(weight=dice_weight, **_dice_kwargs(locals()))
        topk = TopKCELoss(k, weight, ignore_index, label_smoothing, distributed, False, k_of, rounding)
        self._combine(dice, topk, lambda_dice, lambda_topk)
        self.lambda_topk = self.lambda_other


def _logsumexp_others(x: torch.Tensor) -> torch.Tensor:
    """r_c = logsumexp over the classes k != c of x (C, n), per voxel. With it log p_c = -softplus(r_c - x_c) and
    log(1 - p_c) = -softplus(x_c - r_c) for p = softmax(x) are exact in float32 also where p_c rounds to 1 (where
    log_softmax and log1p(-p) lose every digit: gradients off by 1e-5 relative in float32)."""
    if x.shape[0] == 2:  # the one other class's logit itself
        return x.flip(0)
    return torch.stack([torch.logsumexp(torch.cat([x[:c], x[c + 1 :]]), 0) for c in range(x.shape[0])])


def _log_probs(x: torch.Tensor, act: str) -> tuple[torch.Tensor, torch.Tensor]:
    """log p and log(1 - p) per channel, computed stably from logits (or clamped probabilities)."""
    if act == "sigmoid":
        return F.logsigmoid(x), F.logsigmoid(-x)
    if act == "softmax":
        rest = _logsumexp_others(x)
        return -F.softplus(rest - x), (-F.softplus(x - rest)).clamp_min(math.log(_EPS))
    p = activate(x, act, 0)
    return torch.log(p.clamp_min(_EPS)), torch.log1p(-p.clamp_max(1 - _EPS))


class ComboLoss(LossBase):
    """Combo loss (Taghanaki et al., 2019): ``alpha * L_wBCE + (1 - alpha) * DiceLoss``.

    ``L_wBCE = -mean over voxels and BCE channels of [beta g log p + (1 - beta)(1 - g) log(1 - p)]``: beta > 0.5
    penalises false negatives more than false positives. The BCE channels: with ``sigmoid`` (or
    probabilities) the scored channels; with ``softmax`` the foreground channels ``1..C-1`` whatever
    ``include_background`` says, because the background is the complement of the foreground: its one-vs-rest
    term counts every voxel again with beta and 1 - beta swapped, so that, for two channels, the sum of both
    terms is the plain cross-entropy whatever beta. For two softmax channels this is exactly the paper's
    binary form with ``p`` the foreground probability. Index targets are read directly. Empty patch: the
    BCE of the background voxels, and the Dice term 0. With ``softmax`` the BCE comes from the same fused pass
    as the Dice sums, ``log(1 - p_c)`` from the other classes' probabilities: exact to float32 rounding also
    where ``p_c`` rounds to 1; ``log(1 - p)`` is floored at ``log(1e-7)`` (no gradient below it).

    The Dice term (``dice_term``): ``"loss"`` (default) adds ``(1 - alpha)`` times the Dice *loss*, the mean
    over samples and the K scored classes of ``1 - DSC``, so the loss is never negative. ``"paper"`` subtracts
    ``(1 - alpha)`` times the sum over the K classes of the Dice *score* (averaged over samples), as the
    paper writes it. Exactly: ``L_loss = alpha L_wBCE + (1 - alpha) + (L_paper - alpha L_wBCE) / K``; for one
    scored class a constant shift, ``L_loss = L_paper + (1 - alpha)``.

    Called as ``loss(input, target)`` (``LossBase.forward``), it returns a 0-d tensor.

    Args:
        alpha: weight of the BCE term, in ``[0, 1]``; the Dice term weighs ``1 - alpha``.
        beta: weight of the positive (``g = 1``) voxels in the BCE, in ``[0, 1]``; the negatives weigh
            ``1 - beta``. 0.5: the plain BCE halved.
        include_background: whether channel 0 (background) is scored: by the Dice term, and by the BCE with
            ``sigmoid`` or probabilities (with ``softmax`` the BCE never scores it, see above). Ignored, with a
            warning, for a single-channel input.
        to_onehot_y: ``True``: the target is ``(B, 1, *spatial)`` index labels. ``False``: the target has one
            channel per input channel (one-hot or soft); a single-channel input takes a ``(B, 1, *spatial)``
            binary target.
        sigmoid: apply a sigmoid to the input: independent channels (binary or multi-label).
        softmax: apply a softmax over the channels: mutually exclusive classes.
        other_act: any other activation, called on the input first. At most one of ``sigmoid``, ``softmax``
            and ``other_act``; with none of them the input is read as probabilities in ``[0, 1]`` (both terms).
        squared_pred: Dice with the V-Net denominator ``sum p^2 + sum g^2``.
        smooth_nr: added to the numerator of the Dice score.
        smooth_dr: added to the denominator of the Dice score.
        batch: pool the Dice sums over the batch (over every rank with ``distributed``) before the score.
        ignore_index: label of the voxels left out of both terms (it may lie outside ``[0, C)``, e.g. 255);
            with a C-channel target, the voxels where channel ``ignore_index`` is nonzero or, if it is not a
            channel index, the voxels whose target is zero in every channel. None: every voxel counts.
        distributed: for DDP: both means run over every rank's voxels / samples (with ``batch=True`` the Dice
            sums are pooled). No effect in a single process.
        validate: check the values of ``input`` and ``target`` at every call (NaN/Inf, ranges, labels), each
            check a host-device synchronisation; ``False`` skips them (the shape checks always run).
        dice_term: ``"loss"``: add the mean Dice loss (never negative); ``"paper"``: subtract the sum over the
            scored classes of the Dice score, as Taghanaki et al. write it (the loss is then negative near the
            optimum). See above for the exact relation.

    Raises:
        ValueError: at construction: ``alpha`` or ``beta`` lies outside ``[0, 1]``; more than one of
            ``sigmoid``, ``softmax``, ``other_act`` is set; ``dice_term`` is not ``"loss"`` or ``"paper"``.
        ValueError: at call time: the shapes of ``input`` and ``target`` do not match; a one-channel target
            for a multi-channel input without ``to_onehot_y=True``, or a multi-channel target with it; with
            ``validate=True`` also NaN/Inf values, input outside ``[0, 1]`` when no activation is chosen,
            non-integer or out-of-range index labels (other than ``ignore_index``), a dense target outside
            ``[0, 1]``, or, with ``softmax=True``, a one-hot target that does not sum to 1 over the channels.
        TypeError: ``other_act`` is not callable or ``ignore_index`` is not an int (construction); ``input`` or
            ``target`` is not a tensor, or ``input`` is not floating point (call).
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
        dice_term: str = "loss",
    ) -> None:
        super().__init__(include_background=include_background)
        if not (0 <= alpha <= 1 and 0 <= beta <= 1):
            raise ValueError(f"alpha and beta must lie in [0, 1], got alpha={alpha}, beta={beta}.")
        if dice_term not in ("loss", "paper"):
            raise ValueError(f"dice_term must be 'loss' or 'paper', got {dice_term!r}.")
        jaccard, reduction = False, "none"  # the Dice term is reduced here (see dice_term)
        self.dice = DiceLoss(**_dice_kwargs(locals()))
        self.alpha, self.beta, self.dice_term = float(alpha), float(beta), dice_term

    def _prepare(self, input, target):
        return self.dice._prepare(input, target)

    def from_prepared(self, prep: Prepared) -> torch.Tensor:
        """The loss of an input already checked and aligned by ``_prepare`` (as compound losses hand it on).

        Args:
            prep: the prepared input and target.

        Returns:
            The loss, a 0-d tensor.
        """
        c = prep.num_classes
        first = self.dice._first_kept(c)
        act, beta = prep.act, self.beta
        distributed = self.dice.distributed
        if act == "softmax" and c > 1:  # one fused pass: the Dice sums, and the BCE's from the same softmax
            # sum over the voxels of -[beta g_c log p_c + (1 - beta)(1 - g_c) log(1 - p_c)] is
            # beta nll_c + (1 - beta) nlc_c, for the foreground classes c >= 1
            sums = region_sums(prep, tuple(dict.fromkeys((*self.dice.moments, "nll", "nlc"))), self.dice.soft_tp)
            bce_sum = (beta * sums["nll"][:, 1:] + (1 - beta) * sums["nlc"][:, 1:]).sum()
            bce = masked_mean(bce_sum, prep.n_valid * (c - 1), distributed)
            dice = self.dice.from_sums(sums, len(prep.spatial))
        else:

            def wbce(x, g, v):
                logp, log1mp = _log_probs(x, act)
                term = -(beta * g * logp + (1 - beta) * (1 - g) * log1mp)[first:]
                return term if v is None else term * v

            vsums = voxel_sums(wbce, prep)
            bce = masked_mean(vsums.sum(), prep.n_valid * vsums.shape[1], distributed)
            dice = self.dice.from_prepared(prep)
        dice_loss = reduce_loss(dice, "mean", distributed and not self.dice.batch)
        if self.dice_term == "paper":  # minus the sum over the K scored classes of the mean Dice score
            dice_loss = -(1 - dice_loss) * (prep.num_classes - first)
        return self.alpha * bce + (1 - self.alpha) * dice_loss


class UnifiedFocalLoss(LossBase):
    """Unified focal loss (Yeung et al., 2022), multi-class: ``weight * L_FT + (1 - weight) * L_F`` (the authors'
    code; ``convention="monai"`` weighs the terms as ``monai.losses.AsymmetricUnifiedFocalLoss``).

    Class 0 is the background, classes >= 1 are the rare classes (binary tasks: one sigmoid channel or two
    softmax channels). With TI_c = (TP + s) / (TP + delta FN + (1 - delta) FP + s):
    asymmetric (default): L_F = mean over voxels of [(1 - delta)(1 - p_0)^gamma CE_0 + delta sum_{c>=1} CE_c],
    L_FT = mean over classes of [1 - TI_0, (1 - TI_c)^(1 - gamma) for c >= 1]: the background is suppressed,
    the rare classes enhanced. symmetric: the focal factor and the 1 - gamma exponent apply to every class.
    Defaults as the paper: weight (lambda) 0.5, delta 0.6, gamma 0.5. Targets: index labels or one-hot.
    Empty patch: the foreground Tversky terms are 0, the background terms remain.

    What ``weight`` weighs (``convention``): ``"authors"`` (default), the authors' released code,
    ``weight * L_FT + (1 - weight) * L_F``; the paper's equation ``lambda L_F + (1 - lambda) L_FT`` is the same
    loss with ``weight = 1 - lambda``. ``"monai"``, as ``monai.losses.AsymmetricUnifiedFocalLoss``:
    ``weight * L_F / C + (1 - weight) * L_FT``, the weight on the focal term, and the focal term averaged over
    the C class maps as well as the voxels (MONAI takes the mean of its stacked ``(B, 2, *spatial)`` map: for a
    binary task half the authors' L_F). With the defaults (weight 0.5) that is ``0.25 L_F + 0.5 L_FT`` instead
    of ``0.5 L_F + 0.5 L_FT``. On a binary task, ``convention="monai"`` with ``smooth_nr = smooth_dr = 1e-7``
    (MONAI's epsilon) gives MONAI's value and gradient for the same ``weight``, ``delta``, ``gamma``, wherever
    no probability lies within 1e-7 of 0 or 1 (MONAI clamps there); MONAI's default delta is 0.7.

    Every class is scored (there is no ``include_background``). Called as ``loss(input, target)``
    (``LossBase.forward``), it returns a 0-d tensor.

    Args:
        weight: lambda, the weight of the focal Tversky term ``L_FT``, in ``[0, 1]``; the focal term ``L_F``
            weighs ``1 - weight``.
        delta: in ``[0, 1]``: the weight of false negatives in the Tversky index (false positives weigh
            ``1 - delta``), and the class balance of ``L_F`` (background ``1 - delta``, rare classes ``delta``).
        gamma: in ``[0, 1]``: the focal exponent of ``L_F`` and, as ``1 - gamma``, the exponent of ``L_FT``.
        asymmetric: ``True``: the asymmetric form (focal factor on the background only, Tversky exponent on
            the rare classes only). ``False``: the symmetric form, both on every class.
        to_onehot_y: ``True``: the target is ``(B, 1, *spatial)`` index labels. ``False``: the target has one
            channel per input channel (one-hot); a single-channel input takes a ``(B, 1, *spatial)`` binary
            target.
        sigmoid: apply a sigmoid: only for one output channel (a binary task).
        softmax: apply a softmax over the channels (mutually exclusive classes).
        other_act: any other activation, called on the input first; its output is read as probabilities. At
            most one of ``sigmoid``, ``softmax`` and ``other_act``; with none of them the input is read as
            probabilities in ``[0, 1]``.
        smooth_nr: added to the numerator of the Tversky index.
        smooth_dr: added to the denominator of the Tversky index.
        batch: pool the Tversky sums over the batch (over every rank with ``distributed``) before the index:
            one index per class instead of one per sample and class.
        ignore_index: label of the voxels left out of both terms (it may lie outside ``[0, C)``, e.g. 255);
            with a C-channel target, the voxels where channel ``ignore_index`` is nonzero or, if it is not a
            channel index, the voxels whose target is zero in every channel. None: every voxel counts.
        distributed: for DDP: the means run over every rank's voxels / samples (with ``batch=True`` the
            Tversky sums are pooled). No effect in a single process.
        validate: check the values of ``input`` and ``target`` at every call (NaN/Inf, ranges, labels), each
            check a host-device synchronisation; ``False`` skips them (the shape checks always run).
        convention: ``"authors"``: ``weight * L_FT + (1 - weight) * L_F`` (the authors' code); ``"monai"``:
            ``weight * L_F / C + (1 - weight) * L_FT`` (MONAI's ``AsymmetricUnifiedFocalLoss``), see above.

    Raises:
        ValueError: at construction: ``weight``, ``delta`` or ``gamma`` lies outside ``[0, 1]``; more than one
            of ``sigmoid``, ``softmax``, ``other_act`` is set; ``convention`` is not ``"authors"`` or
            ``"monai"``.
        ValueError: at call time: ``sigmoid=True`` with more than one channel (overlapping channels have no
            single true class); the shapes of ``input`` and ``target`` do not match; a one-channel target for a
            multi-channel input without ``to_onehot_y=True``, or a multi-channel target with it; with
            ``validate=True`` also NaN/Inf values, input outside ``[0, 1]`` when no activation is chosen,
            non-integer or out-of-range index labels (other than ``ignore_index``), a dense target outside
            ``[0, 1]``, or, with ``softmax=True``, a one-hot target that does not sum to 1 over the channels.
        TypeError: ``other_act`` is not callable or ``ignore_index`` is not an int (construction); ``input`` or
            ``target`` is not a tensor, or ``input`` is not floating point (call).
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
        convention: str = "authors",
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
        if convention not in ("authors", "monai"):
            raise ValueError(
                f"convention must be 'authors' (weight on the focal Tversky term, the authors' code) or 'monai' "
                f"(weight on the focal term, averaged over the classes, as MONAI's AsymmetricUnifiedFocalLoss), "
                f"got {convention!r}."
            )
        self.weight, self.delta, self.gamma, self.asymmetric = float(weight), float(delta), float(gamma), asymmetric
        self.smooth_nr, self.smooth_dr, self.batch = float(smooth_nr), float(smooth_dr), batch
        self.convention = convention

    def from_prepared(self, prep: Prepared) -> torch.Tensor:
        """The loss of an input already checked and aligned by ``_prepare`` (as compound losses hand it on).

        Args:
            prep: the prepared input and target.

        Returns:
            The loss, a 0-d tensor.
        """
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
        if self.convention == "monai":  # MONAI: the focal term is a mean over the class maps too
            return self.weight * l_f / c + (1 - self.weight) * l_ft
        return self.weight * l_ft + (1 - self.weight) * l_f


class AsymmetricUnifiedFocalLoss(LossBase):
    """Asymmetric unified focal loss for binary segmentation, drop-in for
    ``monai.losses.AsymmetricUnifiedFocalLoss`` (same arguments, values and input gradients), in MONAI's
    convention: ``weight * L_F + (1 - weight) * L_FT`` (Yeung et al., 2022).

    The input holds probabilities, as MONAI reads it (it applies no activation, whatever its docstring says):
    one channel p, the foreground (the background is 1 - p), or two channels [background, foreground] taken
    as they are. Every probability is clamped to ``[eps, 1 - eps]``, eps = 1e-7, as MONAI. With
    ``TI_c = (TP_c + eps) / (TP_c + delta FN_c + (1 - delta) FP_c + eps)`` and ``CE_c = -g_c log p_c``:

    * ``L_F`` = mean over the voxels *and the 2 class maps* of ``[(1 - delta)(1 - p_0)^gamma CE_0, delta CE_1]``:
      the focal modulation suppresses the background, the foreground keeps its plain cross-entropy;
    * ``L_FT`` = mean over samples and the 2 classes of ``[1 - TI_0, (1 - TI_1)^(1 - gamma)]``: the exponent
      1 - gamma < 1 enhances the foreground.

    Relation to ``UnifiedFocalLoss`` (the authors' code: ``weight * L_FT + (1 - weight) * L_F'`` with
    ``L_F' = 2 L_F``, their focal term summing the two classes): this loss is ``UnifiedFocalLoss(weight, delta,
    gamma, convention="monai", smooth_nr=1e-7, smooth_dr=1e-7)`` on the same probabilities, wherever no
    probability lies within eps of 0 or 1; ``UnifiedFocalLoss(..., softmax=True, convention="monai")`` takes
    logits and any number of classes. Mind the defaults: delta 0.7 here (MONAI's), 0.6 there (the paper's).

    MONAI's behaviour kept for equal values: two input channels are read independently (not renormalised);
    every ``reduction`` returns the 0-d loss (MONAI's terms reduce with their mean first, although its
    docstring promises ``(B, 2)`` for ``"none"``); with ``ignore_index`` the ignored voxels are zeroed before the
    clamp, so each adds eps to the false positives of both classes, and they still count in the denominator of
    the focal mean (the valid voxels' terms summed, divided by 2 x all voxels). Departures: ``num_classes`` must
    be 2 (MONAI accepts other values, then fails at call time or scores channels 0 and 1 only); an input with
    more than 2 channels, outside ``[0, 1]`` (logits; MONAI clamps them silently) or labels outside {0, 1} raise
    a ValueError; ``weight``, ``delta``, ``gamma`` must lie in ``[0, 1]``; at a perfect foreground match the
    gradient of ``(1 - TI_1)^(1 - gamma)`` is taken as 0 (MONAI's is infinite). Extra: ``sigmoid`` /
    ``softmax`` (logits), ``distributed``, ``validate``.

    Empty patch (no foreground, none predicted): not a perfect score, as in MONAI. The clamp leaves every voxel
    a foreground probability of at least eps, whose sum over the N voxels (``N eps`` false positives) outweighs
    the eps smoothing, so ``TI_1 = 1 / (1 + (1 - delta) N)`` and the foreground Tversky term stays near 1 (the
    loss is 0.24 for an 8 x 8 patch with the defaults). ``UnifiedFocalLoss`` on logits scores such a patch about 0.

    Args:
        to_onehot_y: ``True``: with a two-channel input, the target is ``(B, 1, *spatial)`` index labels in
            {0, 1}. ``False``: the target has two channels (one-hot), or one binary channel for a one-channel
            input. Ignored, with a warning, for a one-channel input.
        num_classes: the number of classes; only 2 is supported, as in MONAI.
        weight: the weight of the focal term ``L_F``, in ``[0, 1]``; the focal Tversky term ``L_FT`` weighs
            ``1 - weight`` (MONAI's convention, see above).
        gamma: in ``[0, 1]``: the focal exponent of the background's cross-entropy and, as ``1 - gamma``, the
            exponent of the foreground's ``1 - TI``.
        delta: in ``[0, 1]``: the weight of false negatives in the Tversky index (false positives weigh
            ``1 - delta``), and the class balance of ``L_F`` (background ``1 - delta``, foreground ``delta``).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``: accepted as MONAI does; each returns the same 0-d loss.
        ignore_index: label of the voxels to leave out (it may lie outside ``[0, 2)``, e.g. 255): for index
            labels and a one-channel binary target the voxels holding it; for a two-channel target the voxels
            where channel ``ignore_index`` is nonzero or, if it is not 0 or 1, the voxels whose target is zero in
            both channels. Their effect on the means is MONAI's (see above). None: every voxel counts.
        sigmoid: read the input as logits of one channel (a sigmoid gives p); not for two channels.
        softmax: read the input as logits of two channels (a softmax gives the probabilities).
        distributed: for DDP: the means run over every rank's voxels / samples. No effect in a single process.
        validate: check the values of ``input`` and ``target`` at every call (NaN/Inf, probability range,
            labels), each check a host-device synchronisation; ``False`` skips them (the shape checks always
            run).

    Raises:
        ValueError: at construction: ``num_classes`` is not 2; ``weight``, ``gamma`` or ``delta`` lies outside
            ``[0, 1]``; ``reduction`` is not ``"mean"``, ``"sum"`` or ``"none"``; both ``sigmoid`` and
            ``softmax``.
        ValueError: at call time (see ``forward``): the input is not 2D or 3D ``(B, C, H, W[, D])`` or has more
            than 2 channels; the shapes do not match; with ``validate=True`` values outside ``[0, 1]``, NaN/Inf,
            or labels outside {0, 1} (other than ``ignore_index``).
        TypeError: ``ignore_index`` is not an int (construction); ``input`` or ``target`` is not a tensor, or
            ``input`` is not floating point (call).
    """

    def __init__(
        self,
        to_onehot_y: bool = False,
        num_classes: int = 2,
        weight: float = 0.5,
        gamma: float = 0.5,
        delta: float = 0.7,
        reduction: str = "mean",
        ignore_index: int | None = None,
        sigmoid: bool = False,
        softmax: bool = False,
        distributed: bool = False,
        validate: bool = True,
    ) -> None:
        super().__init__(
            to_onehot_y=to_onehot_y,
            sigmoid=sigmoid,
            softmax=softmax,
            reduction=reduction,
            ignore_index=ignore_index,
            distributed=distributed,
            validate=validate,
        )
        if num_classes != 2:
            raise ValueError(
                f"AsymmetricUnifiedFocalLoss is binary (num_classes=2, as MONAI supports), got num_classes="
                f"{num_classes}; for more classes use UnifiedFocalLoss(softmax=True, to_onehot_y=True, "
                "convention='monai')."
            )
        for name, v in (("weight", weight), ("gamma", gamma), ("delta", delta)):
            if not 0 <= v <= 1:
                raise ValueError(f"{name} must lie in [0, 1], got {v}.")
        self.num_classes = num_classes
        self.weight, self.gamma, self.delta = float(weight), float(gamma), float(delta)

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        """Compute the loss of a batch (MONAI's argument names).

        Args:
            y_pred: ``(B, 1, H, W[, D])`` foreground probabilities or ``(B, 2, H, W[, D])`` probabilities of
                [background, foreground] (logits with ``sigmoid`` / ``softmax``), floating point.
            y_true: ``(B, 1, H, W[, D])`` binary target for a one-channel input; for a two-channel input
                ``(B, 2, H, W[, D])`` one-hot, or ``(B, 1, H, W[, D])`` index labels with ``to_onehot_y=True``.

        Returns:
            The loss, a 0-d tensor (for every ``reduction``, as MONAI).

        Raises:
            ValueError: the input is not 2D or 3D, has more than 2 channels, or ``sigmoid=True`` with 2 channels;
                the shapes do not match; with ``validate=True`` values outside ``[0, 1]``, NaN/Inf, or labels
                outside {0, 1} (other than ``ignore_index``).
            TypeError: ``y_pred`` or ``y_true`` is not a tensor, or ``y_pred`` is not floating point.
        """
        if isinstance(y_pred, torch.Tensor):
            if y_pred.ndim not in (4, 5):
                raise ValueError(
                    f"AsymmetricUnifiedFocalLoss takes 2D or 3D input (B, C, H, W[, D]), got shape "
                    f"{tuple(y_pred.shape)}."
                )
            if y_pred.shape[1] == 1 and self.ignore_index is not None:
                warnings.warn(
                    "single channel prediction, `ignore_index` is applied to label-encoded targets.", stacklevel=2
                )
        return super().forward(y_pred, y_true)

    def from_prepared(self, prep: Prepared) -> torch.Tensor:
        """The loss of an input already checked and aligned by ``_prepare``.

        Args:
            prep: the prepared input and target.

        Returns:
            The loss, a 0-d tensor.

        Raises:
            ValueError: the input has more than 2 channels, or ``sigmoid=True`` with 2 channels.
        """
        c, b, n = prep.num_classes, prep.x.shape[0], prep.x.shape[2]
        if c > 2:
            raise ValueError(
                f"AsymmetricUnifiedFocalLoss is binary: the input has {c} channels, expected 1 (foreground) or 2 "
                "(background, foreground); for more classes use UnifiedFocalLoss(convention='monai')."
            )
        if prep.act == "sigmoid" and c == 2:
            raise ValueError("sigmoid=True needs a one-channel input; two channels take softmax=True.")
        p = activate(prep.x.to(compute_dtype(prep.x)), prep.act, 1)
        t = prep.target
        if c == 1:  # MONAI: [1 - p, p] and [1 - g, g]
            p, t = torch.cat([1 - p, p], 1), torch.cat([1 - t, t], 1)
        p = p.clamp(_EPS, 1 - _EPS)
        pair = Prepared(p, "none", t, prep.is_index, prep.valid, prep.spatial)
        d, g = self.delta, self.gamma

        def focal(q, y, v):  # MONAI's asymmetric focal terms of one chunk, (1, n)
            ce = -y * torch.log(q)
            term = (1 - d) * (1 - q[:1]) ** g * ce[:1] + d * ce[1:]
            return term if v is None else term * v

        # MONAI's mean over the (B, 2, *spatial) map of all voxels, the ignored ones included
        l_f = masked_mean(voxel_sums(focal, pair).sum(), 2 * b * n, self.distributed)
        s = region_sums(pair, ("tp", "sp", "sg"))
        if prep.valid is not None:  # MONAI zeroes ignored voxels, then clamps them to eps: each adds eps to FP
            s["sp"] = s["sp"] + _EPS * (n - prep.valid.sum((1, 2))).unsqueeze(1)
        ti = tversky_index(s, 1 - d, d, _EPS, _EPS)
        ft = torch.stack([1 - ti[:, 0], safe_pow(1 - ti[:, 1], 1 - g)], -1)
        l_ft = reduce_loss(ft, "mean", self.distributed)
        return self.weight * l_f + (1 - self.weight) * l_ft


class ExpLogLoss(LossBase):
    """Exponential logarithmic loss (Wong et al., 2018): ``w_dice * L_exp-Dice + w_cross * L_exp-cross``.

    ``L_exp-Dice = mean over classes (and samples) of (-ln Dice_c)^gamma_dice`` with
    Dice_c = (2 TP + smooth_nr) / (sum p + sum g + smooth_dr) (the paper's pseudo-count is 1);
    ``L_exp-cross = mean over voxels of w_l (-ln p_l)^gamma_cross`` for the true label l, with
    w_l = (sum_k f_k / f_l)^0.5 from ``class_frequencies`` (label counts or fractions of the training set),
    or from the batch's label counts when not given. gamma < 1 focuses on the less accurate classes.
    Mutually exclusive classes: softmax, or one sigmoid channel. Empty patch: background terms only. With index
    labels the cross term comes from the same fused pass as the Dice sums, ``-ln p_l`` as
    ``log1p(sum_{k != l} p_k / p_l)``: exact to float32 rounding also where ``p_l`` rounds to 1, where a
    fractional ``gamma_cross`` magnifies any rounding of ``-ln p_l``.

    A single output channel is scored as two classes (background, foreground). Called as
    ``loss(input, target)`` (``LossBase.forward``), it returns a 0-d tensor.

    Args:
        w_dice: factor of the exponential Dice term, ``>= 0``.
        w_cross: factor of the exponential cross-entropy term, ``>= 0``.
        gamma_dice: exponent of ``-ln Dice_c``, ``> 0``.
        gamma_cross: exponent of ``-ln p_l``, ``> 0``.
        class_frequencies: one value ``>= 0`` per class, background included (two for a single output
            channel): label counts or fractions over the training set, giving ``w_l``. None: ``w_l`` comes from
            each batch's label counts (a class absent from the batch weighs 0).
        include_background: whether class 0 enters the Dice term; the cross-entropy term always covers every
            class.
        to_onehot_y: ``True``: the target is ``(B, 1, *spatial)`` index labels. ``False``: the target has one
            channel per input channel (one-hot); a single-channel input takes a ``(B, 1, *spatial)`` binary
            target.
        sigmoid: apply a sigmoid: only for one output channel (a binary task).
        softmax: apply a softmax over the channels (mutually exclusive classes).
        other_act: any other activation, called on the input first; its output is read as probabilities. At
            most one of ``sigmoid``, ``softmax`` and ``other_act``; with none of them the input is read as
            probabilities in ``[0, 1]``.
        smooth_nr: added to the numerator of the Dice score (the paper's pseudo-count, 1).
        smooth_dr: added to the denominator of the Dice score.
        batch: pool the Dice sums over the batch (over every rank with ``distributed``) before the score: one
            Dice per class instead of one per sample and class.
        ignore_index: label of the voxels left out of both terms (it may lie outside ``[0, C)``, e.g. 255);
            with a C-channel target, the voxels where channel ``ignore_index`` is nonzero or, if it is not a
            channel index, the voxels whose target is zero in every channel. None: every voxel counts.
        distributed: for DDP: the means, and the batch label counts behind ``w_l``, run over every rank. No
            effect in a single process.
        validate: check the values of ``input`` and ``target`` at every call (NaN/Inf, ranges, labels), each
            check a host-device synchronisation; ``False`` skips them (the shape checks always run).

    Raises:
        ValueError: at construction: ``w_dice`` or ``w_cross`` is negative; ``gamma_dice`` or ``gamma_cross``
            is not ``> 0``; ``class_frequencies`` is not 1-D or holds negative or non-finite values; more than
            one of ``sigmoid``, ``softmax``, ``other_act`` is set.
        ValueError: at call time: ``class_frequencies`` does not hold one value per class; ``sigmoid=True``
            with more than one channel; the shapes of ``input`` and ``target`` do not match; a one-channel
            target for a multi-channel input without ``to_onehot_y=True``, or a multi-channel target with it;
            with ``validate=True`` also NaN/Inf values, input outside ``[0, 1]`` when no activation is chosen,
            non-integer or out-of-range index labels (other than ``ignore_index``), a dense target outside
            ``[0, 1]``, or, with ``softmax=True``, a one-hot target that does not sum to 1 over the channels.
        TypeError: ``other_act`` is not callable or ``ignore_index`` is not an int (construction); ``input`` or
            ``target`` is not a tensor, or ``input`` is not floating point (call).
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
        """The loss of an input already checked and aligned by ``_prepare`` (as compound losses hand it on).

        Args:
            prep: the prepared input and target.

        Returns:
            The loss, a 0-d tensor.
        """
        prep = as_class_logits(prep, "ExpLogLoss")
        c = prep.num_classes
        # index labels: the cross-entropy term's sums come from the same fused pass as the Dice sums (nllp)
        fused_cross = prep.is_index
        moments = ("tp", "sp", "sg", "nllp") if fused_cross else ("tp", "sp", "sg")
        stats = region_sums(prep, moments, power=self.gamma_cross)
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
        if fused_cross:
            l_cross = masked_mean((stats["nllp"] * w).sum(), prep.n_valid, self.distributed)
            return self.w_dice * l_dice + self.w_cross * l_cross
        gamma = self.gamma_cross

        def cross(x, g, v, w):  # w passed as a parameter of voxel_sums, not read from the closure (vmap)
            nll = F.softplus(_logsumexp_others(x) - x)  # -log softmax(x), exact also where p -> 1 (see there)
            term = (w.to(x).unsqueeze(1) * g * safe_pow(nll, gamma)).sum(0, keepdim=True)
            return term if v is None else term * v

        l_cross = masked_mean(voxel_sums(cross, prep, w).sum(), prep.n_valid, self.distributed)
        return self.w_dice * l_dice + self.w_cross * l_cross


class CompoundLoss(torch.nn.Module):
    """A weighted sum of any losses, each term kept for logging.

    ``terms`` maps a name to a loss module, a registry name, or a ``(loss, weight)`` pair, e.g.
    ``CompoundLoss({"dice": DiceLoss(softmax=True, to_onehot_y=True), "ce": (WeightedCELoss(), 0.5)})``.
    After each forward ``last_terms`` holds each term's detached (unweighted) value as a tensor (no device
    sync; call ``float()`` when logging). Keyword arguments of forward (e.g. ``distance_map=``) go to the terms
    whose forward accepts them.

    ``loss = sum over terms of weight * term(input, target, **kwargs)``.

    Args:
        terms: ``{name: spec}``, at least one entry; each spec is a loss module, a registry name (built by
            ``get_loss(name)`` with the constructor's defaults) or a ``(loss, weight)`` pair of either with a
            weight ``>= 0`` (default 1). The names key ``last_terms``.

    Raises:
        ValueError: ``terms`` is empty, a weight is negative, a pair does not have two items, or a string is
            neither a registry name nor an importable dotted path.
        TypeError: a term is neither a ``torch.nn.Module`` nor a string, or its string names a class that is
            not a ``torch.nn.Module``.
    """

    __prepare_scriptable__ = not_scriptable

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

    def forward(self, input: torch.Tensor, target: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """Compute every term and their weighted sum; store each term's value in ``last_terms``.

        Args:
            input: the network output, given unchanged to every term (typically ``(B, C, *spatial)`` logits).
            target: the reference, given unchanged to every term.
            **kwargs: extra keyword arguments of the terms' forward (e.g. ``distance_map=``,
                ``weight_map=``, ``instances=``): each goes only to the terms whose forward takes it (all of
                them to a term whose forward takes ``**kwargs``); one that no term takes is dropped silently.

        Returns:
            The weighted sum of the terms' values: a 0-d tensor when every term reduces to one; otherwise
            the broadcast of the terms' shapes (e.g. a term with ``reduction="none"``). A term's error
            propagates unchanged.
        """
        total = 0.0
        for name, loss in self.terms.items():
            acc = self._accepts[name]
            kw = kwargs if acc is None else {k: v for k, v in kwargs.items() if k in acc}
            value = loss(input, target, **kw)
            self.last_terms[name] = value.detach()
            total = total + self.weights[name] * value
        return total
