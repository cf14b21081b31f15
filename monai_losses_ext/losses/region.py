"""Overlap losses: each one a formula on the per-(sample, class) sums of ``_stats``.

Notation per sample b and class c, over the valid voxels: TP = sum p*g, FP = sum p - TP, FN = sum g - TP.
With ``batch=True`` the sums run over the whole batch (and, with ``distributed=True``, over every rank)
before the formula. ``smooth_nr``/``smooth_dr`` keep the scores defined: with the defaults (equal
smoothing) an empty target with an empty prediction scores as a perfect match, loss 0 for that term.
"""

from __future__ import annotations

import warnings
from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ._base import LossBase, apply_class_weight, reduce_loss, safe_pow
from ._inputs import InputShapeError, Prepared
from ._stats import activate, compute_dtype, pool, region_sums

__all__ = [
    "RegionLoss",
    "DiceLoss",
    "JaccardLoss",
    "MaskedDiceLoss",
    "TverskyLoss",
    "FocalTverskyLoss",
    "GeneralizedDiceLoss",
    "LogCoshDiceLoss",
    "SensitivitySpecificityLoss",
]


class RegionLoss(LossBase):
    """Base of the overlap losses. A subclass names the sums it needs (``moments``) and maps them to a
    per-class loss in ``score``; input preparation, pooling, class weights and reduction live here.

    ``reduction="none"`` returns the per-(sample, class) losses ``(B, C)`` (``(C,)`` with ``batch=True``),
    reshaped to ``(B, C, 1, ..., 1)`` (one 1 per spatial dimension) when the class attribute
    ``none_keeps_spatial`` is True, as MONAI's Dice does. ``C`` counts the scored classes.

    Args:
        include_background: whether channel 0 (background) is scored. With ``False`` and more than one
            channel, channel 0 is dropped after the activation: it takes no weight and does not enter the mean.
            Ignored, with a warning, for a single-channel input.
        to_onehot_y: ``True``: the target is ``(B, 1, *spatial)`` index labels (read as they are, never
            expanded to a float one-hot). ``False``: the target already has one channel per input channel.
        sigmoid: apply a sigmoid to the input: independent channels (binary tasks, overlapping regions such
            as BraTS TC/WT/ET).
        softmax: apply a softmax over the channels: mutually exclusive classes. Ignored, with a warning, for
            a single channel.
        other_act: any other activation, called on the input first (e.g. ``torch.tanh``). At most one of
            ``sigmoid``, ``softmax`` and ``other_act``; with none of them the input is read as probabilities in
            ``[0, 1]``.
        reduction: ``"mean"`` averages the per-(sample, class) losses, ``"sum"`` adds them, ``"none"``
            returns them (shapes above).
        smooth_nr: added to the numerator of the score.
        smooth_dr: added to the denominator of the score. With ``smooth_nr == smooth_dr`` (the defaults,
            1e-5) a class empty in target and prediction scores a perfect match.
        batch: ``False``: one score per sample and class, then reduced. ``True``: the sums are pooled over the
            batch first (over every rank with ``distributed``), one score per class; steadier when a class is
            small or absent in some patches.
        weight: factor of each scored class's loss (after ``include_background``): a scalar or one value per
            scored class, each ``>= 0``; None: all 1. Ignored when a single class is scored. The mean is not
            renormalised by the weights.
        soft_label: the target holds soft values in ``[0, 1]`` (label smoothing, averaged annotations):
            ``TP = sum min(p, g)`` as in MONAI, and the sum-to-one check of softmax targets is skipped.
        ignore_index: label of the voxels to leave out of every sum; None: every voxel counts. With index
            labels, the voxels holding it (it may lie outside ``[0, C)``, e.g. 255); with a C-channel target, the
            voxels where channel ``ignore_index`` is nonzero or, if it is not a channel index, the voxels whose
            target is zero in every channel.
        distributed: for DDP (an initialised process group with more than one rank): with ``batch=True``
            the sums are pooled over every rank (an all-reduce that keeps autograd); otherwise the mean/sum runs
            over every rank's samples. No effect in a single process.
        validate: run the value checks on every call (NaN/Inf, probability range, label range, one-hot
            sums), each a reduction over the tensor and a host-device synchronisation. ``False`` skips them;
            the shape checks always run.

    Raises:
        ValueError: at construction: ``reduction`` is not ``"mean"``, ``"sum"`` or ``"none"``; more than one of
            ``sigmoid``, ``softmax``, ``other_act`` is set; ``weight`` is not a scalar or 1-D, or holds negative
            or non-finite values.
        ValueError: at call time: the shapes do not match (``input`` ``(B, C, *spatial)``, ``target``
            ``(B, 1, *spatial)`` or ``(B, C, *spatial)``); a one-channel target for a multi-channel input without
            ``to_onehot_y=True``, or a multi-channel target with it; a 1-D ``weight`` without one value per
            scored class; with ``validate=True`` also NaN/Inf values, input outside ``[0, 1]`` when no activation
            is chosen, non-integer or out-of-range index labels (other than ``ignore_index``), a dense target
            outside ``[0, 1]``, or, with ``softmax=True`` and ``soft_label=False``, a one-hot target that does
            not sum to 1 over the channels.
        TypeError: ``other_act`` is not callable or ``ignore_index`` is not an int (construction); ``input`` or
            ``target`` is not a tensor, or ``input`` is not floating point (call).

    Warns:
        UserWarning: a single-channel input with ``include_background=False``, ``softmax=True`` or
            ``to_onehot_y=True`` (the flag is ignored).
    """

    moments: tuple[str, ...] = ("tp", "sp", "sg")
    accepts_no_spatial = True
    none_keeps_spatial = True  # MONAI's Dice returns (B, C, 1, ..., 1) for reduction="none"; Tversky (B, C)

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable | None = None,
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        weight: Sequence[float] | float | torch.Tensor | None = None,
        soft_label: bool = False,
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
            reduction=reduction,
            ignore_index=ignore_index,
            soft_label=soft_label,
            distributed=distributed,
            validate=validate,
        )
        self.smooth_nr = float(smooth_nr)
        self.smooth_dr = float(smooth_dr)
        self.batch = batch
        self._register_class_vector("class_weight", weight)

    def from_prepared(self, prep: Prepared) -> torch.Tensor:
        """The loss of an already prepared input (compound losses prepare once for all their terms)."""
        return self.from_sums(region_sums(prep, self.moments, soft_label=self.soft_tp), len(prep.spatial))

    @property
    def soft_tp(self) -> bool:
        """Soft labels use TP = sum min(p, g) (MONAI's L1 form); the squared form keeps TP = sum p g."""
        return self.soft_label and not getattr(self, "squared_pred", False)

    def from_sums(self, sums: dict[str, torch.Tensor], n_spatial: int) -> torch.Tensor:
        """The loss from per-(sample, class) sums of every channel (a compound loss may have computed them
        together with its own statistics in the same pass)."""
        n_classes = next(iter(sums.values())).shape[1]
        first = self._first_kept(n_classes)
        s = {k: sums[k][:, first:] for k in self.moments}
        n_kept = n_classes - first
        if n_spatial == 0 and not self.batch:
            # a (B, C) input: MONAI sums over an empty list of spatial axes, which torch reads as every axis, so
            # its score is one number pooled over the samples and the classes; the class weights then scale it
            s = pool({k: v.reshape(-1, 1) for k, v in s.items()}, True, self.distributed)
            f = self.score(s).reshape(())
            if self.class_weight is not None and n_kept > 1:
                f = apply_class_weight(f.expand(n_kept), self.class_weight, n_kept)
            return reduce_loss(f, self.reduction)
        s = pool(s, self.batch, self.distributed)
        f = apply_class_weight(self.score(s), self.class_weight, n_kept)
        none_shape = list(f.shape) + [1] * n_spatial if self.none_keeps_spatial else None
        return reduce_loss(f, self.reduction, self.distributed and not self.batch, none_shape)

    @abstractmethod
    def score(self, s: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-class loss from the pooled sums; each overlap loss defines its formula here."""


def dice_score(
    s: dict[str, torch.Tensor], squared: bool, jaccard: bool, smooth_nr: float, smooth_dr: float
) -> torch.Tensor:
    tp = s["tp"]
    union = s["sp2"] + s["sg2"] if squared else s["sp"] + s["sg"]
    if jaccard:  # written as MONAI does, so the smoothing terms weigh the same: 2 TP / 2 (TP + FP + FN)
        return (2 * tp + smooth_nr) / (2 * (union - tp) + smooth_dr)
    return (2 * tp + smooth_nr) / (union + smooth_dr)


def tversky_index(
    s: dict[str, torch.Tensor], alpha: float, beta: float, smooth_nr: float, smooth_dr: float
) -> torch.Tensor:
    tp = s["tp"]
    fp, fn = s["sp"] - tp, s["sg"] - tp
    return (tp + smooth_nr) / (tp + alpha * fp + beta * fn + smooth_dr)


class DiceLoss(RegionLoss):
    """Soft Dice loss, drop-in for ``monai.losses.DiceLoss`` (same arguments, values and gradients).

    ``1 - (2 TP + smooth_nr) / (sum p + sum g + smooth_dr)`` per sample and class; with ``squared_pred`` the
    V-Net denominator ``sum p^2 + sum g^2`` (Milletari et al., 2016); with ``jaccard`` the soft IoU
    ``1 - (2 TP + smooth_nr) / (2 (sum p + sum g - TP) + smooth_dr)``. ``weight`` scales each scored class;
    ``soft_label`` uses ``TP = sum min(p, g)`` for soft targets (Wang et al., 2023), as MONAI does.

    Extra arguments: ``distributed`` (with ``batch=True`` the sums are pooled over every DDP rank; without it
    the mean runs over every rank's samples), ``validate`` (cheap input checks; False skips them).
    Index-label targets (``to_onehot_y=True``) are never expanded to a float one-hot.

    Empty patch: with smooth_nr == smooth_dr, a class absent from target and prediction scores 0; a class
    absent from the target but predicted scores close to 1 (per-sample Dice punishes every false positive
    in an empty patch; ``batch=True`` pools such patches with the rest of the batch).

    Shapes: ``input`` ``(B, C, *spatial)``; ``target`` ``(B, 1, *spatial)`` index labels or ``(B, C, *spatial)``.
    ``reduction="none"`` returns ``(B, C, 1, ..., 1)`` (``(C, 1, ..., 1)`` with ``batch=True``), one 1 per
    spatial dimension, as MONAI does; ``C`` counts the scored classes.

    Args:
        include_background: whether channel 0 (background) is scored. With ``False`` and more than one
            channel, channel 0 is dropped after the activation: it takes no weight and does not enter the mean.
            Ignored, with a warning, for a single-channel input.
        to_onehot_y: ``True``: the target is ``(B, 1, *spatial)`` index labels (read as they are, never
            expanded to a float one-hot). ``False``: the target already has one channel per input channel.
        sigmoid: apply a sigmoid to the input: independent channels (binary tasks, overlapping regions such
            as BraTS TC/WT/ET).
        softmax: apply a softmax over the channels: mutually exclusive classes. Ignored, with a warning, for
            a single channel.
        other_act: any other activation, called on the input first (e.g. ``torch.tanh``). At most one of
            ``sigmoid``, ``softmax`` and ``other_act``; with none of them the input is read as probabilities in
            ``[0, 1]``.
        squared_pred: use the V-Net denominator ``sum p^2 + sum g^2`` instead of ``sum p + sum g``.
        jaccard: compute the soft Jaccard (IoU) loss instead of Dice (see above).
        reduction: ``"mean"`` averages the per-(sample, class) losses, ``"sum"`` adds them, ``"none"``
            returns them (shapes above).
        smooth_nr: added to the numerator of the score.
        smooth_dr: added to the denominator of the score. With ``smooth_nr == smooth_dr`` (the defaults,
            1e-5) a class empty in target and prediction scores a perfect match.
        batch: ``False``: one score per sample and class, then reduced. ``True``: the sums are pooled over the
            batch first (over every rank with ``distributed``), one score per class; steadier when a class is
            small or absent in some patches.
        weight: factor of each scored class's loss (after ``include_background``): a scalar or one value per
            scored class, each ``>= 0``; None: all 1. Ignored when a single class is scored. The mean is not
            renormalised by the weights.
        soft_label: the target holds soft values in ``[0, 1]`` (label smoothing, averaged annotations):
            ``TP = sum min(p, g)`` as in MONAI (with ``squared_pred`` TP stays ``sum p g``), and the sum-to-one
            check of softmax targets is skipped.
        ignore_index: label of the voxels to leave out of every sum; None: every voxel counts. With index
            labels, the voxels holding it (it may lie outside ``[0, C)``, e.g. 255); with a C-channel target, the
            voxels where channel ``ignore_index`` is nonzero or, if it is not a channel index, the voxels whose
            target is zero in every channel.
        distributed: for DDP (an initialised process group with more than one rank): with ``batch=True``
            the sums are pooled over every rank (an all-reduce that keeps autograd); otherwise the mean/sum runs
            over every rank's samples. No effect in a single process.
        validate: run the value checks on every call (NaN/Inf, probability range, label range, one-hot
            sums), each a reduction over the tensor and a host-device synchronisation. ``False`` skips them;
            the shape checks always run.

    Raises:
        ValueError: at construction: ``reduction`` is not ``"mean"``, ``"sum"`` or ``"none"``; more than one of
            ``sigmoid``, ``softmax``, ``other_act`` is set; ``weight`` is not a scalar or 1-D, or holds negative
            or non-finite values.
        ValueError: at call time: the shapes do not match (``input`` ``(B, C, *spatial)``, ``target``
            ``(B, 1, *spatial)`` or ``(B, C, *spatial)``); a one-channel target for a multi-channel input without
            ``to_onehot_y=True``, or a multi-channel target with it; a 1-D ``weight`` without one value per
            scored class; with ``validate=True`` also NaN/Inf values, input outside ``[0, 1]`` when no activation
            is chosen, non-integer or out-of-range index labels (other than ``ignore_index``), a dense target
            outside ``[0, 1]``, or, with ``softmax=True`` and ``soft_label=False``, a one-hot target that does
            not sum to 1 over the channels.
        TypeError: ``other_act`` is not callable or ``ignore_index`` is not an int (construction); ``input`` or
            ``target`` is not a tensor, or ``input`` is not floating point (call).

    Warns:
        UserWarning: a single-channel input with ``include_background=False``, ``softmax=True`` or
            ``to_onehot_y=True`` (the flag is ignored).
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
        weight: Sequence[float] | float | torch.Tensor | None = None,
        soft_label: bool = False,
        ignore_index: int | None = None,
        distributed: bool = False,
        validate: bool = True,
    ) -> None:
        super().__init__(
            include_background,
            to_onehot_y,
            sigmoid,
            softmax,
            other_act,
            reduction,
            smooth_nr,
            smooth_dr,
            batch,
            weight,
            soft_label,
            ignore_index,
            distributed,
            validate,
        )
        self.squared_pred = squared_pred
        self.jaccard = jaccard
        self.moments = ("tp", "sp2", "sg2") if squared_pred else ("tp", "sp", "sg")

    def score(self, s: dict[str, torch.Tensor]) -> torch.Tensor:
        """The Dice (with ``jaccard``: Jaccard) loss per class from the pooled sums: ``(B, C)``, ``(C,)`` with
        ``batch``."""
        return 1 - dice_score(s, self.squared_pred, self.jaccard, self.smooth_nr, self.smooth_dr)


class JaccardLoss(DiceLoss):
    """Soft Jaccard (IoU) loss: ``DiceLoss(jaccard=True)``, ``1 - (2 TP + smooth_nr) / (2 (TP + FP + FN) + smooth_dr)``
    (MONAI's form of the smoothing).

    Shapes and ``reduction="none"`` as ``DiceLoss``: ``(B, C, 1, ..., 1)``, ``(C, 1, ..., 1)`` with ``batch=True``.
    Empty patch: as ``DiceLoss``.

    Args:
        *args: the positional arguments of ``DiceLoss``, in its order (``include_background``, ``to_onehot_y``,
            ``sigmoid``, ``softmax``, ``other_act``, ``squared_pred``); ``jaccard`` must not be among them.
        **kwargs: the keyword arguments of ``DiceLoss``; ``jaccard`` is always set to True.

    Raises:
        ValueError: at construction: ``reduction`` is not ``"mean"``, ``"sum"`` or ``"none"``; more than one of
            ``sigmoid``, ``softmax``, ``other_act`` is set; ``weight`` is not a scalar or 1-D, or holds negative
            or non-finite values.
        ValueError: at call time: the shapes do not match (``input`` ``(B, C, *spatial)``, ``target``
            ``(B, 1, *spatial)`` or ``(B, C, *spatial)``); a one-channel target for a multi-channel input without
            ``to_onehot_y=True``, or a multi-channel target with it; a 1-D ``weight`` without one value per
            scored class; with ``validate=True`` also NaN/Inf values, input outside ``[0, 1]`` when no activation
            is chosen, non-integer or out-of-range index labels (other than ``ignore_index``), a dense target
            outside ``[0, 1]``, or, with ``softmax=True`` and ``soft_label=False``, a one-hot target that does
            not sum to 1 over the channels.
        TypeError: ``other_act`` is not callable or ``ignore_index`` is not an int (construction); ``input`` or
            ``target`` is not a tensor, or ``input`` is not floating point (call).

    Warns:
        UserWarning: a single-channel input with ``include_background=False``, ``softmax=True`` or
            ``to_onehot_y=True`` (the flag is ignored).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["jaccard"] = True
        super().__init__(*args, **kwargs)


class MaskedDiceLoss(DiceLoss):
    """Dice loss restricted to a region by a mask, drop-in for ``monai.losses.MaskedDiceLoss`` (same arguments,
    ``forward(input, target, mask=None)``, values and input gradients).

    As MONAI: the activation (``sigmoid``, ``softmax`` or ``other_act``) runs first, on the whole input; then the
    probabilities *and* the target are multiplied by ``mask`` (``(B, 1, *spatial)`` or ``(1, 1, *spatial)``,
    1 = keep), and ``DiceLoss`` scores the products. A voxel outside the mask therefore has probability 0 in
    every channel (not the activation of a zeroed logit). With index labels (``to_onehot_y=True``) MONAI
    multiplies the *labels* by the mask, so a voxel outside the mask becomes background (label 0) with a
    zero prediction: the background class counts it in its ``sum g`` (a false negative), kept here for equal
    values. A soft mask m in ``(0, 1)`` weighs ``TP`` by ``m^2`` and ``sum p``, ``sum g`` by ``m``.

    Exact relation to ``ignore_index``: for a binary mask, ``MaskedDiceLoss(**kw)(x, y, mask=m)`` equals
    ``DiceLoss(**kw, ignore_index=k)(x, y_k)``, with ``y_k`` the target whose voxels outside the mask hold
    ``k`` (index labels), or are zero in every channel with ``k`` outside ``[0, C)`` (one-hot), whenever the
    target is one-hot / one-channel or ``include_background=False``; with index labels and
    ``include_background=True`` the background term differs as said above (``ignore_index`` leaves those
    voxels out of every sum). Both may be combined: ``ignore_index`` voxels are left out of every sum, the
    mask then applies to the rest. A binary mask runs the fused statistics (no probability map kept); a
    soft mask computes the masked probabilities explicitly.

    Empty patch: as ``DiceLoss``; an all-zero mask scores every class as empty (0 with the default
    smoothing), except the background with index labels (about 1: it counts the masked voxels as missed).

    Args:
        include_background: whether channel 0 (background) is scored. With ``False`` and more than one
            channel, channel 0 is dropped after the activation. Ignored, with a warning, for a single-channel
            input.
        to_onehot_y: ``True``: the target is ``(B, 1, *spatial)`` index labels. ``False``: the target already
            has one channel per input channel.
        sigmoid: apply a sigmoid to the input (before the mask).
        softmax: apply a softmax over the channels (before the mask). Ignored, with a warning, for a single
            channel.
        other_act: any other activation, called on the input first. At most one of ``sigmoid``, ``softmax``
            and ``other_act``; with none of them the input is read as probabilities in ``[0, 1]``.
        squared_pred: use the V-Net denominator ``sum p^2 + sum g^2``.
        jaccard: compute the soft Jaccard (IoU) loss instead of Dice.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (``(B, C, 1, ..., 1)``, as ``DiceLoss``).
        smooth_nr: added to the numerator of the score.
        smooth_dr: added to the denominator of the score.
        batch: pool the sums over the batch (over every rank with ``distributed``) before the score.
        weight: factor of each scored class's loss: a scalar or one value ``>= 0`` per scored class.
        soft_label: the target holds soft values in ``[0, 1]``: ``TP = sum min(p, g)`` as in MONAI.
        ignore_index: label of the voxels to leave out of every sum (as ``DiceLoss``); None: every voxel counts.
        distributed: as ``DiceLoss``: with ``batch=True`` the sums are pooled over every DDP rank, otherwise
            the mean runs over every rank's samples. No effect in a single process.
        validate: check the values of ``input``, ``target`` and ``mask`` at every call; ``False`` skips them
            (the shape checks always run).

    Raises:
        ValueError: at construction: as ``DiceLoss``.
        ValueError: at call time (see ``forward``): ``mask`` is not ``(B, 1, *spatial)`` or ``(1, 1, *spatial)``
            (an axis of length 1 broadcasts); with ``validate=True`` it holds NaN/Inf or values outside
            ``[0, 1]``; a soft (non-binary) mask with index labels; every input error of ``DiceLoss``.
        TypeError: as ``DiceLoss``.

    Warns:
        UserWarning: no ``mask`` given (the plain Dice loss is returned), or a mask whose spatial shape differs
            from the input's and broadcasts, both as MONAI; the single-channel warnings of ``DiceLoss``.
    """

    def forward(self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Compute the masked Dice loss of a batch.

        Args:
            input: the network output ``(B, C, *spatial)``: logits with an activation, otherwise probabilities.
            target: ``(B, 1, *spatial)`` index labels (``to_onehot_y=True``) or ``(B, C, *spatial)`` one-hot;
                a single-channel input takes a ``(B, 1, *spatial)`` binary target.
            mask: ``(B, 1, *spatial)`` or ``(1, 1, *spatial)`` values in ``[0, 1]`` (1 = the voxel counts; bool
                is accepted); a spatial axis of length 1 broadcasts. None: no mask, the plain Dice loss (warns).

        Returns:
            The loss, shaped as ``DiceLoss`` returns it: 0-d for ``"mean"``/``"sum"``, ``(B, C, 1, ..., 1)``
            (``(C, 1, ..., 1)`` with ``batch=True``) for ``"none"``.

        Raises:
            ValueError: ``mask`` has another number of dimensions than ``input``, more than one channel, a
                batch size other than 1 or B, or a spatial axis that neither matches nor is 1; with
                ``validate=True`` it holds NaN/Inf or values outside ``[0, 1]``; a non-binary mask with index
                labels (MONAI would scale the labels themselves); every input error of ``DiceLoss.forward``.
            TypeError: ``input`` or ``target`` is not a tensor, or ``input`` is not floating point.
        """
        if mask is None:
            warnings.warn("No mask value specified for the MaskedLoss.", stacklevel=2)
            return super().forward(input, target)
        prep = self._prepare(input, target)
        m = self._flat_mask(mask, input)
        binary = m.dtype == torch.bool or bool(((m == 0) | (m == 1)).all())
        b, n = prep.x.shape[0], prep.x.shape[2]
        if binary:
            keep = (m > 0).expand(b, 1, n)
            valid = keep if prep.valid is None else prep.valid & keep
            sums = region_sums(
                Prepared(prep.x, prep.act, prep.target, prep.is_index, valid, prep.spatial),
                self.moments,
                soft_label=self.soft_tp,
            )
            if prep.is_index:  # MONAI's target * mask: a masked voxel is background with prediction 0
                out = ~keep if prep.valid is None else prep.valid & ~keep
                key = "sg2" if self.squared_pred else "sg"
                extra = torch.zeros_like(sums[key])
                extra[:, 0] = out.sum((1, 2))
                sums = dict(sums, **{key: sums[key] + extra})
            return self.from_sums(sums, len(prep.spatial))
        if prep.is_index:
            raise ValueError(
                "a soft mask (values strictly between 0 and 1) with index labels: MONAI multiplies the labels "
                "themselves by the mask, turning label 2 at m = 0.5 into label 1. Pass a binary mask, or a one-hot "
                "target (to_onehot_y=False), which a soft mask weighs as documented."
            )
        dt = compute_dtype(prep.x)
        m = m.to(dt)
        p = activate(prep.x.to(dt), prep.act, 1) * m
        masked = Prepared(p, "none", prep.target.to(dt) * m, False, prep.valid, prep.spatial)
        return self.from_sums(region_sums(masked, self.moments, soft_label=self.soft_tp), len(prep.spatial))

    def _flat_mask(self, mask: torch.Tensor, input: torch.Tensor) -> torch.Tensor:
        """Check ``mask`` against ``input`` and return it as ``(B or 1, 1, N)`` (bool, or float in [0, 1])."""
        if not isinstance(mask, torch.Tensor):
            mask = torch.as_tensor(mask)
        if type(mask) is not torch.Tensor:
            mask = mask.as_subclass(torch.Tensor)
        mask = mask.detach().to(input.device)
        want = f"(B, 1, *spatial) or (1, 1, *spatial) with B={input.shape[0]}, spatial={tuple(input.shape[2:])}"
        if mask.ndim != input.ndim:
            raise ValueError(f"mask has shape {tuple(mask.shape)} but input is {tuple(input.shape)}: expected {want}.")
        if mask.shape[0] not in (1, input.shape[0]):
            raise ValueError(
                f"batch size of mask {tuple(mask.shape)} must be one or equal to input {tuple(input.shape)}: "
                f"expected {want}."
            )
        if mask.shape[1] != 1:
            raise ValueError(f"mask {tuple(mask.shape)} must have only one channel: expected {want}.")
        if any(ms not in (1, s) for ms, s in zip(mask.shape[2:], input.shape[2:])):
            raise ValueError(f"mask has shape {tuple(mask.shape)} but input is {tuple(input.shape)}: expected {want}.")
        if mask.shape[2:] != input.shape[2:]:
            warnings.warn(f"Spatial size of input ({input.shape}) is different from mask ({mask.shape}).", stacklevel=3)
            mask = mask.expand(mask.shape[0], 1, *input.shape[2:])
        if mask.dtype != torch.bool:
            if not mask.is_floating_point():
                mask = mask.to(torch.float32)
            if self.validate:
                lo, hi = (float(v) for v in torch.aminmax(mask))
                if not (0 <= lo and hi <= 1):  # also False for NaN
                    raise ValueError(
                        f"mask values lie in [{lo:g}, {hi:g}]: a mask holds weights in [0, 1] (1 = the voxel counts); "
                        "a 0/255 mask needs mask / 255 or mask > 0."
                    )
        return mask.reshape(mask.shape[0], 1, -1)


class TverskyLoss(RegionLoss):
    """Tversky loss (Salehi et al., 2017), drop-in for ``monai.losses.TverskyLoss``.

    ``1 - (TP + smooth_nr) / (TP + alpha FP + beta FN + smooth_dr)``: ``alpha`` weighs false positives,
    ``beta`` false negatives (beta > alpha favours recall, as for small lesions). alpha = beta = 0.5 is Dice.
    ``reduction="none"`` gives (B, C) as MONAI's does. Empty patch: as ``DiceLoss``.

    Shapes: ``input`` ``(B, C, *spatial)``; ``target`` ``(B, 1, *spatial)`` index labels or ``(B, C, *spatial)``.
    ``reduction="none"``: ``(B, C)``, or ``(C,)`` with ``batch=True``; ``C`` counts the scored classes.

    Args:
        include_background: whether channel 0 (background) is scored. With ``False`` and more than one
            channel, channel 0 is dropped after the activation: it takes no weight and does not enter the mean.
            Ignored, with a warning, for a single-channel input.
        to_onehot_y: ``True``: the target is ``(B, 1, *spatial)`` index labels (read as they are, never
            expanded to a float one-hot). ``False``: the target already has one channel per input channel.
        sigmoid: apply a sigmoid to the input: independent channels (binary tasks, overlapping regions such
            as BraTS TC/WT/ET).
        softmax: apply a softmax over the channels: mutually exclusive classes. Ignored, with a warning, for
            a single channel.
        other_act: any other activation, called on the input first (e.g. ``torch.tanh``). At most one of
            ``sigmoid``, ``softmax`` and ``other_act``; with none of them the input is read as probabilities in
            ``[0, 1]``.
        alpha: weight of the false positives, ``>= 0``.
        beta: weight of the false negatives, ``>= 0``.
        reduction: ``"mean"`` averages the per-(sample, class) losses, ``"sum"`` adds them, ``"none"``
            returns them (shapes above).
        smooth_nr: added to the numerator of the score.
        smooth_dr: added to the denominator of the score. With ``smooth_nr == smooth_dr`` (the defaults,
            1e-5) a class empty in target and prediction scores a perfect match.
        batch: ``False``: one score per sample and class, then reduced. ``True``: the sums are pooled over the
            batch first (over every rank with ``distributed``), one score per class; steadier when a class is
            small or absent in some patches.
        soft_label: the target holds soft values in ``[0, 1]`` (label smoothing, averaged annotations):
            ``TP = sum min(p, g)`` as in MONAI, and the sum-to-one check of softmax targets is skipped.
        ignore_index: label of the voxels to leave out of every sum; None: every voxel counts. With index
            labels, the voxels holding it (it may lie outside ``[0, C)``, e.g. 255); with a C-channel target, the
            voxels where channel ``ignore_index`` is nonzero or, if it is not a channel index, the voxels whose
            target is zero in every channel.
        weight: factor of each scored class's loss (after ``include_background``): a scalar or one value per
            scored class, each ``>= 0``; None: all 1. Ignored when a single class is scored. The mean is not
            renormalised by the weights.
        distributed: for DDP (an initialised process group with more than one rank): with ``batch=True``
            the sums are pooled over every rank (an all-reduce that keeps autograd); otherwise the mean/sum runs
            over every rank's samples. No effect in a single process.
        validate: run the value checks on every call (NaN/Inf, probability range, label range, one-hot
            sums), each a reduction over the tensor and a host-device synchronisation. ``False`` skips them;
            the shape checks always run.

    Raises:
        ValueError: at construction: ``reduction`` is not ``"mean"``, ``"sum"`` or ``"none"``; more than one of
            ``sigmoid``, ``softmax``, ``other_act`` is set; ``weight`` is not a scalar or 1-D, or holds negative
            or non-finite values; ``alpha`` or ``beta`` is negative.
        ValueError: at call time: the shapes do not match (``input`` ``(B, C, *spatial)``, ``target``
            ``(B, 1, *spatial)`` or ``(B, C, *spatial)``); a one-channel target for a multi-channel input without
            ``to_onehot_y=True``, or a multi-channel target with it; a 1-D ``weight`` without one value per
            scored class; with ``validate=True`` also NaN/Inf values, input outside ``[0, 1]`` when no activation
            is chosen, non-integer or out-of-range index labels (other than ``ignore_index``), a dense target
            outside ``[0, 1]``, or, with ``softmax=True`` and ``soft_label=False``, a one-hot target that does
            not sum to 1 over the channels.
        TypeError: ``other_act`` is not callable or ``ignore_index`` is not an int (construction); ``input`` or
            ``target`` is not a tensor, or ``input`` is not floating point (call).

    Warns:
        UserWarning: a single-channel input with ``include_background=False``, ``softmax=True`` or
            ``to_onehot_y=True`` (the flag is ignored).
    """

    none_keeps_spatial = False

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable | None = None,
        alpha: float = 0.5,
        beta: float = 0.5,
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        soft_label: bool = False,
        ignore_index: int | None = None,
        weight: Sequence[float] | float | torch.Tensor | None = None,
        distributed: bool = False,
        validate: bool = True,
    ) -> None:
        super().__init__(
            include_background,
            to_onehot_y,
            sigmoid,
            softmax,
            other_act,
            reduction,
            smooth_nr,
            smooth_dr,
            batch,
            weight,
            soft_label,
            ignore_index,
            distributed,
            validate,
        )
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got alpha={alpha}, beta={beta}.")
        self.alpha = float(alpha)
        self.beta = float(beta)

    def score(self, s: dict[str, torch.Tensor]) -> torch.Tensor:
        """``1 - TI`` per class from the pooled sums: ``(B, C)``, ``(C,)`` with ``batch``."""
        return 1 - tversky_index(s, self.alpha, self.beta, self.smooth_nr, self.smooth_dr)


class FocalTverskyLoss(TverskyLoss):
    """Focal Tversky loss (Abraham & Khan, 2019): ``(1 - TI)^gamma`` per sample and class.

    TI is the Tversky index of ``TverskyLoss`` (``alpha`` weighs FP, ``beta`` FN). The paper's recommended
    setting, "alpha = 0.7 on false negatives, exponent 1/gamma = 0.75", is ``beta=0.7, alpha=0.3, gamma=0.75``
    here (the defaults). gamma < 1 keeps the gradient large near a good match, where small lesions live.
    At a perfect match the value is 0 and the gradient is taken as 0 (``safe_pow``), never infinite.
    Empty patch: as ``DiceLoss`` (0 for an empty class predicted empty).

    Shapes and ``reduction="none"`` as ``TverskyLoss``: ``(B, C)``, ``(C,)`` with ``batch=True``.

    Args:
        *args: positional arguments of ``TverskyLoss``; only its first five (``include_background``,
            ``to_onehot_y``, ``sigmoid``, ``softmax``, ``other_act``) may be given by position.
        alpha: weight of the false positives in the Tversky index, ``>= 0``.
        beta: weight of the false negatives in the Tversky index, ``>= 0``.
        gamma: exponent applied to ``1 - TI``, ``> 0``; 1 gives ``TverskyLoss``.
        **kwargs: the other keyword arguments of ``TverskyLoss`` (``reduction``, ``smooth_nr``, ``batch``,
            ``weight``, ...).

    Raises:
        ValueError: at construction: ``reduction`` is not ``"mean"``, ``"sum"`` or ``"none"``; more than one of
            ``sigmoid``, ``softmax``, ``other_act`` is set; ``weight`` is not a scalar or 1-D, or holds negative
            or non-finite values; ``alpha`` or ``beta`` is negative, or ``gamma <= 0``.
        ValueError: at call time: the shapes do not match (``input`` ``(B, C, *spatial)``, ``target``
            ``(B, 1, *spatial)`` or ``(B, C, *spatial)``); a one-channel target for a multi-channel input without
            ``to_onehot_y=True``, or a multi-channel target with it; a 1-D ``weight`` without one value per
            scored class; with ``validate=True`` also NaN/Inf values, input outside ``[0, 1]`` when no activation
            is chosen, non-integer or out-of-range index labels (other than ``ignore_index``), a dense target
            outside ``[0, 1]``, or, with ``softmax=True`` and ``soft_label=False``, a one-hot target that does
            not sum to 1 over the channels.
        TypeError: ``other_act`` is not callable or ``ignore_index`` is not an int (construction); ``input`` or
            ``target`` is not a tensor, or ``input`` is not floating point (call).

    Warns:
        UserWarning: a single-channel input with ``include_background=False``, ``softmax=True`` or
            ``to_onehot_y=True`` (the flag is ignored).
    """

    def __init__(self, *args: Any, alpha: float = 0.3, beta: float = 0.7, gamma: float = 0.75, **kwargs: Any) -> None:
        super().__init__(*args, alpha=alpha, beta=beta, **kwargs)
        if gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {gamma}.")
        self.gamma = float(gamma)

    def score(self, s: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(1 - TI)^gamma`` per class from the pooled sums: ``(B, C)``, ``(C,)`` with ``batch``."""
        return safe_pow(super().score(s), self.gamma)


class GeneralizedDiceLoss(RegionLoss):
    """Generalised Dice loss (Sudre et al., 2017), drop-in for ``monai.losses.GeneralizedDiceLoss``.

    ``1 - (2 sum_c w_c TP_c + smooth_nr) / (sum_c w_c (sum p_c + sum g_c) + smooth_dr)`` with class weights
    from the reference volume: ``w_type="square"`` 1/V^2, ``"simple"`` 1/V, ``"uniform"`` 1. As in MONAI, a
    class absent from the reference takes the largest finite weight of its sample (of the batch with
    ``batch=True``). With ``batch`` and ``distributed`` the class volumes are pooled over every rank.
    Returns one value per sample: ``reduction="none"`` gives (B, 1, 1, ..., 1).
    Empty patch (all classes empty, e.g. include_background=False on a lesion-free patch): every weight is
    infinite, so all become 0 and the loss is 1 - smooth_nr / smooth_dr = 0 with the defaults.

    Shapes: ``input`` ``(B, C, *spatial)``; ``target`` ``(B, 1, *spatial)`` index labels or ``(B, C, *spatial)``.
    ``reduction="none"``: ``(B, 1, 1, ..., 1)`` (one 1 per spatial dimension), ``(1, 1, ..., 1)`` with
    ``batch=True``; ``"mean"`` averages over the samples.

    Args:
        include_background: whether channel 0 (background) is scored. With ``False`` and more than one
            channel, channel 0 is dropped after the activation and takes no part in the weights or the sums.
            Ignored, with a warning, for a single-channel input.
        to_onehot_y: ``True``: the target is ``(B, 1, *spatial)`` index labels (read as they are, never
            expanded to a float one-hot). ``False``: the target already has one channel per input channel.
        sigmoid: apply a sigmoid to the input: independent channels (binary tasks, overlapping regions such
            as BraTS TC/WT/ET).
        softmax: apply a softmax over the channels: mutually exclusive classes. Ignored, with a warning, for
            a single channel.
        other_act: any other activation, called on the input first (e.g. ``torch.tanh``). At most one of
            ``sigmoid``, ``softmax`` and ``other_act``; with none of them the input is read as probabilities in
            ``[0, 1]``.
        w_type: class weights from the reference volume V of each class: ``"square"`` 1/V^2, ``"simple"`` 1/V,
            ``"uniform"`` 1 (a ``Weight`` enum is accepted too).
        reduction: ``"mean"`` averages the per-sample losses, ``"sum"`` adds them, ``"none"`` returns
            them (shapes above).
        smooth_nr: added to the numerator of the score.
        smooth_dr: added to the denominator of the score. With ``smooth_nr == smooth_dr`` (the defaults,
            1e-5) a class empty in target and prediction scores a perfect match.
        batch: ``False``: one loss per sample. ``True``: the sums (and the class volumes of the weights) are
            pooled over the batch first (over every rank with ``distributed``), one loss for the batch.
        soft_label: the target holds soft values in ``[0, 1]``: ``TP = sum min(p, g)`` as in MONAI, and the
            sum-to-one check of softmax targets is skipped.
        ignore_index: label of the voxels to leave out of every sum; None: every voxel counts. With index
            labels, the voxels holding it (it may lie outside ``[0, C)``, e.g. 255); with a C-channel target, the
            voxels where channel ``ignore_index`` is nonzero or, if it is not a channel index, the voxels whose
            target is zero in every channel.
        distributed: for DDP (an initialised process group with more than one rank): with ``batch=True``
            the sums are pooled over every rank (an all-reduce that keeps autograd); otherwise the mean/sum runs
            over every rank's samples. No effect in a single process.
        validate: run the value checks on every call (NaN/Inf, probability range, label range, one-hot
            sums), each a reduction over the tensor and a host-device synchronisation. ``False`` skips them;
            the shape checks always run.

    Raises:
        ValueError: at construction: ``reduction`` is not ``"mean"``, ``"sum"`` or ``"none"``; more than one of
            ``sigmoid``, ``softmax``, ``other_act`` is set; ``w_type`` is not ``"square"``, ``"simple"`` or
            ``"uniform"``.
        ValueError: at call time: the shapes do not match (``input`` ``(B, C, *spatial)``, ``target``
            ``(B, 1, *spatial)`` or ``(B, C, *spatial)``); a one-channel target for a multi-channel input without
            ``to_onehot_y=True``, or a multi-channel target with it; with ``validate=True`` also NaN/Inf values,
            input outside ``[0, 1]`` when no activation is chosen, non-integer or out-of-range index labels
            (other than ``ignore_index``), a dense target outside ``[0, 1]``, or, with ``softmax=True`` and
            ``soft_label=False``, a one-hot target that does not sum to 1 over the channels.
        TypeError: ``other_act`` is not callable or ``ignore_index`` is not an int (construction); ``input`` or
            ``target`` is not a tensor, or ``input`` is not floating point (call).

    Warns:
        UserWarning: a single-channel input with ``include_background=False``, ``softmax=True`` or
            ``to_onehot_y=True`` (the flag is ignored).
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
        soft_label: bool = False,
        ignore_index: int | None = None,
        distributed: bool = False,
        validate: bool = True,
    ) -> None:
        super().__init__(
            include_background,
            to_onehot_y,
            sigmoid,
            softmax,
            other_act,
            reduction,
            smooth_nr,
            smooth_dr,
            batch,
            None,
            soft_label,
            ignore_index,
            distributed,
            validate,
        )
        w_type = str(getattr(w_type, "value", w_type))
        if w_type not in ("square", "simple", "uniform"):
            raise ValueError(f"w_type={w_type!r} is not supported: use 'square', 'simple' or 'uniform'.")
        self.w_type = w_type

    def from_sums(self, sums: dict[str, torch.Tensor], n_spatial: int) -> torch.Tensor:
        """The loss from per-(sample, class) sums; a ``(B, C)`` input (no spatial axes) needs ``batch=True``."""
        if n_spatial == 0 and not self.batch:
            raise InputShapeError(
                "GeneralizedDiceLoss got a (B, C) input without spatial axes: its class weights need each class's "
                "volume, which one voxel per sample does not give; pass batch=True (the volumes over the batch) "
                "or give the input spatial axes (B, C, *spatial)."
            )
        return super().from_sums(sums, n_spatial)

    def score(self, s: dict[str, torch.Tensor]) -> torch.Tensor:
        """The generalised Dice loss from the pooled sums, one value per sample: ``(B, 1)``, ``(1,)`` with ``batch``."""
        tp, sg = s["tp"], s["sg"]
        weights = {"square": lambda v: 1 / (v * v), "simple": lambda v: 1 / v, "uniform": torch.ones_like}[self.w_type]
        # as MONAI, the weights are not detached: a soft target that requires grad gets their gradient too; an
        # empty class's infinite weight is replaced, and its volume taken as 1 so that no inf/NaN enters backward
        infs = torch.isinf(weights(sg.detach()))
        w = torch.where(infs, 0.0, weights(torch.where(infs, 1.0, sg)))
        wmax = w.max() if self.batch else w.max(dim=-1, keepdim=True).values
        w = w + infs * wmax
        numer = 2 * (tp * w).sum(-1, keepdim=True) + self.smooth_nr
        denom = ((s["sp"] + sg) * w).sum(-1, keepdim=True) + self.smooth_dr
        return 1 - numer / denom


class LogCoshDiceLoss(DiceLoss):
    """Log-cosh Dice loss (Jadon, 2020): ``log(cosh(dice_loss))`` per sample and class, a smoothed Dice loss
    whose gradient is small near the optimum. Same arguments as ``DiceLoss``; range [0, log cosh 1 = 0.434].
    Empty patch: as ``DiceLoss``.

    Shapes and ``reduction="none"`` as ``DiceLoss``: ``(B, C, 1, ..., 1)``, ``(C, 1, ..., 1)`` with ``batch=True``.

    Args:
        include_background: whether channel 0 (background) is scored. With ``False`` and more than one
            channel, channel 0 is dropped after the activation: it takes no weight and does not enter the mean.
            Ignored, with a warning, for a single-channel input.
        to_onehot_y: ``True``: the target is ``(B, 1, *spatial)`` index labels (read as they are, never
            expanded to a float one-hot). ``False``: the target already has one channel per input channel.
        sigmoid: apply a sigmoid to the input: independent channels (binary tasks, overlapping regions such
            as BraTS TC/WT/ET).
        softmax: apply a softmax over the channels: mutually exclusive classes. Ignored, with a warning, for
            a single channel.
        other_act: any other activation, called on the input first (e.g. ``torch.tanh``). At most one of
            ``sigmoid``, ``softmax`` and ``other_act``; with none of them the input is read as probabilities in
            ``[0, 1]``.
        squared_pred: use the V-Net denominator ``sum p^2 + sum g^2`` instead of ``sum p + sum g``.
        jaccard: take the log-cosh of the soft Jaccard (IoU) loss of ``DiceLoss`` instead of Dice.
        reduction: ``"mean"`` averages the per-(sample, class) losses, ``"sum"`` adds them, ``"none"``
            returns them (shapes above).
        smooth_nr: added to the numerator of the score.
        smooth_dr: added to the denominator of the score. With ``smooth_nr == smooth_dr`` (the defaults,
            1e-5) a class empty in target and prediction scores a perfect match.
        batch: ``False``: one score per sample and class, then reduced. ``True``: the sums are pooled over the
            batch first (over every rank with ``distributed``), one score per class; steadier when a class is
            small or absent in some patches.
        weight: factor of each scored class's loss (after ``include_background``): a scalar or one value per
            scored class, each ``>= 0``; None: all 1. Ignored when a single class is scored. The mean is not
            renormalised by the weights.
        soft_label: the target holds soft values in ``[0, 1]`` (label smoothing, averaged annotations):
            ``TP = sum min(p, g)`` as in MONAI (with ``squared_pred`` TP stays ``sum p g``), and the sum-to-one
            check of softmax targets is skipped.
        ignore_index: label of the voxels to leave out of every sum; None: every voxel counts. With index
            labels, the voxels holding it (it may lie outside ``[0, C)``, e.g. 255); with a C-channel target, the
            voxels where channel ``ignore_index`` is nonzero or, if it is not a channel index, the voxels whose
            target is zero in every channel.
        distributed: for DDP (an initialised process group with more than one rank): with ``batch=True``
            the sums are pooled over every rank (an all-reduce that keeps autograd); otherwise the mean/sum runs
            over every rank's samples. No effect in a single process.
        validate: run the value checks on every call (NaN/Inf, probability range, label range, one-hot
            sums), each a reduction over the tensor and a host-device synchronisation. ``False`` skips them;
            the shape checks always run.

    Raises:
        ValueError: at construction: ``reduction`` is not ``"mean"``, ``"sum"`` or ``"none"``; more than one of
            ``sigmoid``, ``softmax``, ``other_act`` is set; ``weight`` is not a scalar or 1-D, or holds negative
            or non-finite values.
        ValueError: at call time: the shapes do not match (``input`` ``(B, C, *spatial)``, ``target``
            ``(B, 1, *spatial)`` or ``(B, C, *spatial)``); a one-channel target for a multi-channel input without
            ``to_onehot_y=True``, or a multi-channel target with it; a 1-D ``weight`` without one value per
            scored class; with ``validate=True`` also NaN/Inf values, input outside ``[0, 1]`` when no activation
            is chosen, non-integer or out-of-range index labels (other than ``ignore_index``), a dense target
            outside ``[0, 1]``, or, with ``softmax=True`` and ``soft_label=False``, a one-hot target that does
            not sum to 1 over the channels.
        TypeError: ``other_act`` is not callable or ``ignore_index`` is not an int (construction); ``input`` or
            ``target`` is not a tensor, or ``input`` is not floating point (call).

    Warns:
        UserWarning: a single-channel input with ``include_background=False``, ``softmax=True`` or
            ``to_onehot_y=True`` (the flag is ignored).
    """

    def score(self, s: dict[str, torch.Tensor]) -> torch.Tensor:
        """``log(cosh(dice_loss))`` per class from the pooled sums: ``(B, C)``, ``(C,)`` with ``batch``."""
        d = super().score(s)
        # log(cosh(d)) = d + log1p(exp(-2d)) - log 2, stable for any d
        return d + torch.nn.functional.softplus(-2 * d) - torch.log(torch.tensor(2.0, dtype=d.dtype))


class SensitivitySpecificityLoss(RegionLoss):
    """Sensitivity-specificity loss (Brosch et al., 2015), for very small lesions.

    Per sample and class: ``r * sum((g - p)^2 g) / sum(g) + (1 - r) * sum((g - p)^2 (1 - g)) / sum(1 - g)``
    (``smooth_dr`` added to both denominators). The first term is the squared error on the lesion voxels
    (sensitivity), the second on the background (specificity); ``r`` trades them (paper: r = 0.05). Targets
    are read as binary (soft targets give the expansion ``sum g - 2 sum pg + sum p^2 g``).
    Empty patch: the sensitivity term is 0, the loss is the specificity error of the prediction.

    Shapes: ``input`` ``(B, C, *spatial)``; ``target`` ``(B, 1, *spatial)`` index labels or ``(B, C, *spatial)``.
    ``reduction="none"``: ``(B, C)``, or ``(C,)`` with ``batch=True``; ``C`` counts the scored classes.

    Args:
        *args: the positional arguments of ``RegionLoss``, in its order: ``include_background``,
            ``to_onehot_y``, ``sigmoid``, ``softmax``, ``other_act``, ``reduction``, ``smooth_nr``, ``smooth_dr``,
            ``batch``, ``weight``, ``soft_label``, ``ignore_index``, ``distributed``, ``validate`` (the same
            meaning as for ``DiceLoss``; ``smooth_nr`` is not used by this loss).
        r: weight of the sensitivity term, in ``[0, 1]``; ``1 - r`` weighs the specificity term.
        **kwargs: the same arguments of ``RegionLoss`` by keyword.

    Raises:
        ValueError: at construction: ``reduction`` is not ``"mean"``, ``"sum"`` or ``"none"``; more than one of
            ``sigmoid``, ``softmax``, ``other_act`` is set; ``weight`` is not a scalar or 1-D, or holds negative
            or non-finite values; ``r`` lies outside ``[0, 1]``.
        ValueError: at call time: the shapes do not match (``input`` ``(B, C, *spatial)``, ``target``
            ``(B, 1, *spatial)`` or ``(B, C, *spatial)``); a one-channel target for a multi-channel input without
            ``to_onehot_y=True``, or a multi-channel target with it; a 1-D ``weight`` without one value per
            scored class; with ``validate=True`` also NaN/Inf values, input outside ``[0, 1]`` when no activation
            is chosen, non-integer or out-of-range index labels (other than ``ignore_index``), a dense target
            outside ``[0, 1]``, or, with ``softmax=True`` and ``soft_label=False``, a one-hot target that does
            not sum to 1 over the channels.
        TypeError: ``other_act`` is not callable or ``ignore_index`` is not an int (construction); ``input`` or
            ``target`` is not a tensor, or ``input`` is not floating point (call).

    Warns:
        UserWarning: a single-channel input with ``include_background=False``, ``softmax=True`` or
            ``to_onehot_y=True`` (the flag is ignored).
    """

    moments = ("tp", "sg", "sp2", "p2g", "n")
    none_keeps_spatial = False

    def __init__(self, *args: Any, r: float = 0.05, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not 0 <= r <= 1:
            raise ValueError(f"r must lie in [0, 1], got {r}.")
        self.r = float(r)

    def score(self, s: dict[str, torch.Tensor]) -> torch.Tensor:
        """The sensitivity-specificity loss per class from the pooled sums: ``(B, C)``, ``(C,)`` with ``batch``."""
        sens = (s["sg"] - 2 * s["tp"] + s["p2g"]) / (s["sg"] + self.smooth_dr)
        # sum p^2 (1 - g) = sp2 - p2g; a class filling every valid voxel has no such voxel: exactly 0, not the
        # rounding noise of the difference divided by smooth_dr
        n_bg = s["n"] - s["sg"]
        spec = torch.where(n_bg > 0, s["sp2"] - s["p2g"], 0.0) / (n_bg + self.smooth_dr)
        return self.r * sens + (1 - self.r) * spec
