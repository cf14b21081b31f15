"""Losses that read maps precomputed by the transforms: weight-map CE, boundary, Hausdorff-DT, blob.

The maps (distance maps, U-Net weight maps, lesion instances) belong in the data pipeline: computed once per
case on the whole volume by ``monai_losses_ext.transforms`` (cached, then cropped together with the image),
and passed to the loss as forward keyword arguments, batched by the data loader:

    BoundaryLoss(softmax=True)(logits, target, distance_map=batch["label_sdf"])       # (B, C, *spatial)
    HausdorffDTLoss(softmax=True)(logits, target, distance_map=batch["label_dt"])     # (B, C, *spatial)
    WeightMapCELoss()(logits, target, weight_map=batch["label_weight"])               # (B, 1, *spatial)
    BlobLoss(softmax=True, to_onehot_y=True)(logits, target, instances=batch["label_instances"])  # (B, 1, ...)

Without a map the loss computes it from the target with the same transform, on the CPU, at every call, and
warns once: that is the slow path MONAI takes (seconds per step at 96^3), kept for convenience and testing.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ._base import LossBase, not_scriptable, reduce_loss
from ._inputs import Prepared, check_label_smoothing
from ._stats import (
    Slabs,
    _chunks,
    activate,
    all_reduce_sum,
    apply_fused,
    compute_dtype,
    fused,
    region_sums,
    run_backward,
    vmap_by_slices,
)
from .pixel import cross_entropy_map, masked_mean
from .region import DiceLoss

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = [
    "WeightMapCELoss",
    "BoundaryLoss",
    "DiceBoundaryLoss",
    "BoundaryAlphaScheduler",
    "HausdorffDTLoss",
    "LogHausdorffDTLoss",
    "BlobLoss",
]

_warned: set[str] = set()


def _warn_on_the_fly(loss: str, key: str, transform: str) -> None:
    if loss in _warned:
        return
    _warned.add(loss)
    warnings.warn(
        f"{loss}: no {key}= given, so it is computed from the target with {transform} at every call (on the CPU, "
        f"slow for 3D). Compute it once in the data pipeline ({transform}d, before random cropping) and pass "
        f"{key}=batch[...] instead.",
        stacklevel=5,  # the user's call: _warn -> forward -> Module._call_impl -> Module.__call__ -> caller
    )


def _check_map(m: torch.Tensor, name: str, input: torch.Tensor, channels: Sequence[int]) -> torch.Tensor:
    if not isinstance(m, torch.Tensor):
        m = torch.as_tensor(np.asarray(m))
    ok = m.ndim == input.ndim and m.shape[0] == input.shape[0] and m.shape[2:] == input.shape[2:]
    if not ok or m.shape[1] not in channels:
        want = " or ".join(f"({input.shape[0]}, {c}, {', '.join(map(str, input.shape[2:]))})" for c in channels)
        raise ValueError(
            f"{name} has shape {tuple(m.shape)} but input is {tuple(input.shape)}: expected {want}. Maps must be "
            "computed on the whole volume and cropped together with the image (list the map's key in the crop "
            "transform's keys)."
        )
    return m.to(input.device)


def _per_case(target: torch.Tensor, n_classes: int, make) -> torch.Tensor:
    """Apply a one-case transform to each sample of a (B, 1|C, ...) target, stacking the results."""
    outs = [torch.as_tensor(make(n_classes)(target[b].detach().cpu())) for b in range(target.shape[0])]
    return torch.stack(outs).to(target.device)


class WeightMapCELoss(LossBase):
    """Cross-entropy weighted per voxel by a map: the U-Net loss (Ronneberger et al., 2015),
    ``sum_x w(x) CE(x) / N`` over the N valid voxels, with ``w`` from ``UNetWeightMapd`` (class balance plus
    a border term that makes the thin gaps between touching lesions count).

    forward(input, target, weight_map=None): input logits (B, C, ...); target index labels (B, 1, ...) or
    one-hot; weight_map (B, 1, ...) (B, C, ... is not accepted: the map weighs voxels). One output channel:
    binary CE with logits. Without ``weight_map`` it is computed with ``UNetWeightMap(w0, sigma)`` (slow).

    Args:
        ignore_index: label of the voxels left out (weight 0, not counted in N); it may lie outside
            ``[0, C)``, e.g. 255. With a C-channel target, the voxels where channel ``ignore_index`` is nonzero
            or, if it is not a channel index, the voxels whose target is zero in every channel. None: every
            voxel counts.
        label_smoothing: label smoothing of the cross-entropy, in ``[0, 1]`` (not applied with one output
            channel). It is not checked at construction.
        reduction: ``"mean"``: ``sum_x w(x) CE(x) / N``, a 0-d tensor. ``"sum"``: ``sum_x w(x) CE(x)``, a 0-d
            tensor. ``"none"``: the per-voxel ``w(x) CE(x)``, ``(B, 1, *spatial)``, 0 at ignored voxels.
        w0: border weight of the map computed on the fly (``UNetWeightMap``); unused with ``weight_map=``.
        sigma: border width of the map computed on the fly, in physical units (voxels for a plain tensor
            target); unused with ``weight_map=``.
        distributed: for DDP: the mean and the sum run over every rank's voxels. No effect in a single
            process.
        validate: check the values of ``input``, ``target`` and the map at every call (NaN/Inf, ranges,
            labels), each check a host-device synchronisation; ``False`` skips them (the shape checks always
            run).

    Raises:
        ValueError: at construction: ``reduction`` is not ``"mean"``, ``"sum"`` or ``"none"``; ``label_smoothing``
            lies outside ``[0, 1]``.
        ValueError: at call time: ``weight_map`` is not ``(B, 1, *spatial)``, or, with ``validate=True``,
            holds negative or non-finite values; the shapes of ``input`` and ``target`` do not match (a target
            with neither 1 nor C channels); with ``validate=True`` also NaN/Inf input values, non-integer or
            out-of-range index labels (other than ``ignore_index``), or a dense target outside ``[0, 1]``.
            Without ``weight_map``, ``w0 < 0`` or ``sigma <= 0`` (from ``UNetWeightMap``).
        TypeError: ``ignore_index`` is not an int (construction); ``input`` or ``target`` is not a tensor, or
            ``input`` is not floating point (call).
    """

    probabilities = False

    def __init__(
        self,
        ignore_index: int | None = None,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
        w0: float = 10.0,
        sigma: float = 5.0,
        distributed: bool = False,
        validate: bool = True,
    ) -> None:
        super().__init__(
            to_onehot_y=None, reduction=reduction, ignore_index=ignore_index, distributed=distributed, validate=validate
        )
        self.label_smoothing, self.w0, self.sigma = check_label_smoothing(label_smoothing), float(w0), float(sigma)

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, weight_map: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Compute the weighted cross-entropy of a batch.

        Args:
            input: logits ``(B, C, *spatial)``, at least one spatial dimension, floating point (no activation
                is applied before: the cross-entropy takes the logits).
            target: ``(B, 1, *spatial)`` index labels in ``[0, C)`` (or ``ignore_index``), or ``(B, C, *spatial)``
                one-hot / probabilities; with one output channel, a ``(B, 1, *spatial)`` binary target.
            weight_map: the per-voxel weights ``w``, ``(B, 1, *spatial)``, ``>= 0`` (from ``UNetWeightMapd``,
                cropped together with the image; an array is converted). None: computed from the target with
                ``UNetWeightMap(w0, sigma)`` on the CPU at every call (slow; warns once).

        Returns:
            The loss: a 0-d tensor for ``reduction="mean"`` and ``"sum"``, the per-voxel weighted
            cross-entropy ``(B, 1, *spatial)`` for ``"none"``.
        """
        prep = self._prepare(input, target)
        if weight_map is None:
            from ..transforms import UNetWeightMap

            _warn_on_the_fly("WeightMapCELoss", "weight_map", "UNetWeightMap")
            weight_map = _per_case(target, input.shape[1], lambda c: UNetWeightMap(w0=self.w0, sigma=self.sigma))
        return self.from_prepared(prep, _check_map(weight_map, "weight_map", input, (1,)))

    def from_prepared(self, prep: Prepared, w: torch.Tensor) -> torch.Tensor:
        """The loss of an input already checked and aligned by ``_prepare``, with its checked weight map.

        Args:
            prep: the prepared input and target.
            w: the weight map, ``(B, 1, *spatial)``.

        Returns:
            The loss, shaped as ``forward`` returns it.
        """
        if self.validate and (not torch.isfinite(w).all() or (w < 0).any()):
            raise ValueError("weight_map must be finite and >= 0; recompute it with UNetWeightMapd.")
        loss, norm = cross_entropy_map(prep, None, self.label_smoothing)
        loss = loss * w.reshape(loss.shape).to(loss.dtype)
        if self.reduction == "mean":
            return masked_mean(loss.sum(), norm.sum(), self.distributed)
        if self.reduction == "sum":
            return all_reduce_sum(loss.sum(), self.distributed)
        return loss.reshape(loss.shape[0], 1, *prep.spatial)


class _MapRegionLoss(LossBase):
    """Per-(sample, class) mean over the valid voxels of a term that reads the probabilities and a distance
    map: the fused statistics of ``_stats`` weighted per voxel by the map (``voxel_weight``), so the cost and
    memory are those of a Dice loss."""

    map_mode = "signed"

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable | None = None,
        reduction: str = "mean",
        batch: bool = False,
        spacing: float | Sequence[float] | None = None,
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
            distributed=distributed,
            validate=validate,
        )
        self.batch, self.spacing = batch, spacing

    def _distance_map(self, target, distance_map, input):
        if distance_map is None:
            from ..transforms import SignedDistanceMap

            _warn_on_the_fly(type(self).__name__, "distance_map", "SignedDistanceMap")
            n = input.shape[1]
            distance_map = _per_case(
                target,
                n,
                lambda c: SignedDistanceMap(
                    num_classes=c if target.shape[1] == 1 else None,
                    mode=self.map_mode,
                    spacing=self.spacing,
                    backend="scipy",
                ),
            )
        return _check_map(distance_map, "distance_map", input, (input.shape[1],))

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, distance_map: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Compute the loss of a batch.

        Args:
            input: the network output ``(B, C, *spatial)``, at least one spatial dimension, floating point:
                logits when the loss applies an activation, otherwise probabilities in ``[0, 1]``.
            target: ``(B, 1, *spatial)`` index labels (``to_onehot_y=True``) or ``(B, C, *spatial)`` one-hot;
                a single-channel input takes a ``(B, 1, *spatial)`` binary target.
            distance_map: one map per input channel, ``(B, C, *spatial)`` (background included, whatever
                ``include_background``), from ``SignedDistanceMapd`` on the whole volume and cropped together
                with the image: ``mode="signed"`` for ``BoundaryLoss``, ``mode="unsigned"`` for
                ``HausdorffDTLoss``; distances in its units (physical, or voxels). An array is converted.
                None: computed from the target with ``SignedDistanceMap(spacing=spacing)`` on the CPU at every
                call (slow; warns once).

        Returns:
            The loss: a 0-d tensor for ``reduction="mean"`` (mean over samples and scored classes) and
            ``"sum"``; for ``"none"`` the per-(sample, class) values ``(B, C)``, or ``(C,)`` with
            ``batch=True`` (``C`` counts the scored classes).
        """
        prep = self._prepare(input, target)
        return self.from_prepared(prep, self._distance_map(target, distance_map, input))

    def from_prepared(self, prep: Prepared, dmap: torch.Tensor) -> torch.Tensor:
        """The loss of an input already checked and aligned by ``_prepare``, with its checked distance map.

        Args:
            prep: the prepared input and target.
            dmap: the distance map, ``(B, C, *spatial)``.

        Returns:
            The loss, shaped as ``forward`` returns it.
        """
        # the map weighs the fused statistics (no probability map or product is kept under autograd)
        sums = region_sums(prep, self.moments + ("n",), weight=self.voxel_weight(dmap.reshape(prep.x.shape), prep))
        first = self._first_kept(prep.num_classes)
        f = self.term(sums)[:, first:] / sums["n"][:, first:].clamp_min(1)
        if self.batch:
            f = all_reduce_sum(f.sum(0), self.distributed) / all_reduce_sum(
                torch.tensor(float(f.shape[0]), device=f.device), self.distributed
            )
        return reduce_loss(f, self.reduction, self.distributed and not self.batch)


class BoundaryLoss(_MapRegionLoss):
    """Boundary loss (Kervadec et al., MIDL 2019): ``mean over voxels of p_c(x) * phi_c(x)`` per sample and
    class, with phi_c the signed distance to the boundary of class c in the target (negative inside). It is
    minimal when the prediction covers exactly the inside of the object (boundary voxels have phi = 0, so a
    prediction one layer thinner ties with it); it is negative at the optimum, not bounded below by 0.
    Same formula, arguments and reductions as ``monai.losses.BoundaryLoss`` (the values agree when given the
    same map); the difference is that the map comes precomputed (``distance_map=`` from
    ``SignedDistanceMapd``) instead of two Euclidean distance transforms per class at every step.
    Use it with a region loss (``DiceBoundaryLoss``): alone it can collapse to an empty prediction.
    Empty patch: phi is 0 for an absent class (``SignedDistanceMap``), so that class contributes 0.

    Called as ``loss(input, target, distance_map=batch["label_sdf"])``: ``input`` ``(B, C, *spatial)``, the
    target as for ``DiceLoss``, and ``distance_map`` ``(B, C, *spatial)``, one signed map per input channel
    (background included) from ``SignedDistanceMapd``, in its units (physical, or voxels). Without
    ``distance_map`` the map is computed from the target on the CPU at every call (slow; warns once). It
    returns a 0-d tensor, or ``(B, C)`` / ``(C,)`` for ``reduction="none"``.

    Args:
        include_background: whether channel 0 (background) is scored. With ``False`` and more than one
            channel, channel 0 is dropped after the activation. Ignored, with a warning, for a single-channel
            input.
        to_onehot_y: ``True``: the target is ``(B, 1, *spatial)`` index labels (read as they are, never
            expanded). ``False``: the target has one channel per input channel (one-hot); a single-channel input
            takes a ``(B, 1, *spatial)`` binary target.
        sigmoid: apply a sigmoid to the input: independent channels (binary tasks, overlapping regions).
        softmax: apply a softmax over the channels: mutually exclusive classes. Ignored, with a warning, for
            a single channel.
        other_act: any other activation, called on the input first. At most one of ``sigmoid``, ``softmax``
            and ``other_act``; with none of them the input is read as probabilities in ``[0, 1]``.
        reduction: ``"mean"`` averages the per-(sample, class) values, ``"sum"`` adds them, ``"none"``
            returns them: ``(B, C)``, or ``(C,)`` with ``batch=True`` (``C`` counts the scored classes).
        batch: average the per-sample values over the batch first (over every rank with ``distributed``):
            one value per class. The mean is the same; only ``reduction="none"`` and ``"sum"`` differ.
        spacing: voxel size per axis (or one number) of the map computed on the fly, e.g. in mm; it wins
            over a MetaTensor target's affine. None: the affine's spacing, or 1 voxel. Unused with
            ``distance_map=``.
        ignore_index: label of the voxels left out of the loss (it may lie outside ``[0, C)``, e.g. 255);
            with a C-channel target, the voxels where channel ``ignore_index`` is nonzero or, if it is not a
            channel index, the voxels whose target is zero in every channel. None: every voxel counts.
        distributed: for DDP: the mean / sum runs over every rank's samples. No effect in a single process.
        validate: check the values of ``input`` and ``target`` at every call (NaN/Inf, ranges, labels), each
            check a host-device synchronisation; ``False`` skips them (the shape checks always run). The
            signed map's values are not checked.

    Raises:
        ValueError: at construction: ``reduction`` is not ``"mean"``, ``"sum"`` or ``"none"``; more than one of
            ``sigmoid``, ``softmax``, ``other_act`` is set.
        ValueError: at call time: ``distance_map`` is not ``(B, C, *spatial)`` with ``C`` the input's channels;
            the shapes of ``input`` and ``target`` do not match; a one-channel target for a multi-channel input
            without ``to_onehot_y=True``, or a multi-channel target with it; with ``validate=True`` also NaN/Inf
            values, input outside ``[0, 1]`` when no activation is chosen, non-integer or out-of-range index
            labels (other than ``ignore_index``), a dense target outside ``[0, 1]``, or, with ``softmax=True``, a
            one-hot target that does not sum to 1 over the channels. Without ``distance_map``, an invalid
            ``spacing`` (from ``SignedDistanceMap``).
        TypeError: ``other_act`` is not callable or ``ignore_index`` is not an int (construction); ``input`` or
            ``target`` is not a tensor, or ``input`` is not floating point (call).
    """

    moments = ("sp",)

    def voxel_weight(self, d: torch.Tensor, prep: Prepared) -> torch.Tensor:
        """The per-voxel weight of the statistics: the signed distance map itself.

        Args:
            d: the distance map, ``(B, C, N)`` (spatial dimensions flattened).
            prep: the prepared input (its dtype sets the computation's).

        Returns:
            ``d`` in float32 (float64 for float64 input).
        """
        return d.to(compute_dtype(prep.x))

    def term(self, s: dict[str, torch.Tensor]) -> torch.Tensor:
        """The per-(sample, class) sum of the loss from the map-weighted statistics.

        Args:
            s: the weighted sums, each ``(B, C)``; ``s["sp"]`` is ``sum p * phi``.

        Returns:
            ``sum p * phi``, ``(B, C)``, divided by the number of valid voxels by the caller.
        """
        return s["sp"]


class HausdorffDTLoss(_MapRegionLoss):
    """Hausdorff distance-transform loss (Karimi & Salcudean, IEEE TMI 2019):
    ``mean over voxels of (p - g)^2 * (d_G^alpha + d_P^alpha)`` per sample and class, where d_G is the
    unsigned distance to the target's boundary (``SignedDistanceMapd(mode="unsigned")``, passed as
    ``distance_map=``) and d_P the same for the thresholded prediction.

    d_P changes at every step and cannot be precomputed: by default (``include_pred_dt=False``) the loss uses
    the target term only, the one-sided form that costs one pass; ``include_pred_dt=True`` adds d_P computed
    on the fly with SciPy, the paper's two-sided form at MONAI's cost. ``alpha`` = 2 as in the paper.
    Defaults as ``monai.losses.HausdorffDTLoss`` (include_background=False). Empty patch: d_G is 0 for an
    absent class, so only the two-sided form penalises a false positive there.

    Called as ``loss(input, target, distance_map=batch["label_dt"])``; the call, the reductions and the
    shapes are those of ``BoundaryLoss``.

    Args:
        alpha: exponent of the distances, ``> 0``.
        include_background: whether channel 0 (background) is scored (default ``False``, as MONAI). Ignored,
            with a warning, for a single-channel input.
        *args: the further positional arguments of ``BoundaryLoss``, in its order: ``to_onehot_y``,
            ``sigmoid``, ``softmax``, ``other_act``, ``reduction``, ``batch``, ``spacing`` (also that of d_P),
            ``ignore_index``, ``distributed``, ``validate``.
        include_pred_dt: add the distance map of the thresholded prediction (``p > 0.5``), computed with
            SciPy on the CPU at every call and not differentiated: the paper's two-sided form.
        **kwargs: the same arguments of ``BoundaryLoss`` by keyword.

    Raises:
        ValueError: at construction: ``alpha <= 0``; ``reduction`` is not ``"mean"``, ``"sum"`` or ``"none"``;
            more than one of ``sigmoid``, ``softmax``, ``other_act`` is set.
        ValueError: at call time: ``distance_map`` is not ``(B, C, *spatial)`` with ``C`` the input's channels;
            with ``validate=True`` it holds negative values (a signed map); the shapes of ``input`` and
            ``target`` do not match; a one-channel target for a multi-channel input without ``to_onehot_y=True``,
            or a multi-channel target with it; with ``validate=True`` also NaN/Inf values, input outside
            ``[0, 1]`` when no activation is chosen, non-integer or out-of-range index labels (other than
            ``ignore_index``), a dense target outside ``[0, 1]``, or, with ``softmax=True``, a one-hot target that
            does not sum to 1 over the channels. Without ``distance_map`` (or with ``include_pred_dt``), an
            invalid ``spacing`` (from ``SignedDistanceMap``).
        TypeError: an argument that ``BoundaryLoss`` does not take; ``other_act`` is not callable or
            ``ignore_index`` is not an int (construction); ``input`` or ``target`` is not a tensor, or ``input``
            is not floating point (call).
    """

    map_mode = "unsigned"

    def __init__(
        self,
        alpha: float = 2.0,
        include_background: bool = False,
        *args: Any,
        include_pred_dt: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(include_background, *args, **kwargs)
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}.")
        self.alpha, self.include_pred_dt = float(alpha), include_pred_dt

    moments = ("sp2", "tp", "sg2")

    def voxel_weight(self, d: torch.Tensor, prep: Prepared) -> torch.Tensor:
        """The per-voxel weight of the statistics: ``d_G^alpha``, plus ``d_P^alpha`` with ``include_pred_dt``.

        Args:
            d: the unsigned distance map of the target, ``(B, C, N)`` (spatial dimensions flattened).
            prep: the prepared input (the prediction's map is computed from it).

        Returns:
            The weight, ``(B, C, N)``, in float32 (float64 for float64 input).

        Raises:
            ValueError: with ``validate=True``, ``d`` holds negative values.
        """
        d = d.to(compute_dtype(prep.x))
        if self.validate and bool(d.amin() < 0):  # a minimum, not a bool map: bool kernels are slow on CPU
            raise ValueError(
                "HausdorffDTLoss reads unsigned distance maps (>= 0), got negative values: compute them "
                "with SignedDistanceMapd(mode='unsigned')."
            )
        dist = d.square() if self.alpha == 2 else d**self.alpha
        if self.include_pred_dt:
            from ..transforms import SignedDistanceMap

            with torch.no_grad():
                p = activate(prep.x.to(dist.dtype), prep.act, 1)
            pred = (p > 0.5).to(torch.uint8).reshape(p.shape[0], p.shape[1], *prep.spatial).cpu()
            sdm = SignedDistanceMap(
                num_classes=None if p.shape[1] > 1 else 1, mode="unsigned", spacing=self.spacing, backend="scipy"
            )
            dp = torch.stack([torch.as_tensor(sdm(pred[b])) for b in range(pred.shape[0])])
            dist = dist + dp.reshape(dist.shape).to(dist) ** self.alpha
        return dist

    def term(self, s: dict[str, torch.Tensor]) -> torch.Tensor:
        """The per-(sample, class) sum of the loss from the map-weighted statistics.

        Args:
            s: the weighted sums ``sp2``, ``tp``, ``sg2``, each ``(B, C)``.

        Returns:
            ``sum (p - g)^2 w``, ``(B, C)``, divided by the number of valid voxels by the caller.
        """
        # sum (p - g)^2 w = sum p^2 w - 2 sum p g w + sum g^2 w
        return s["sp2"] - 2 * s["tp"] + s["sg2"]


class LogHausdorffDTLoss(HausdorffDTLoss):
    """Logarithm of the Hausdorff distance-transform loss, drop-in for ``monai.losses.LogHausdorffDTLoss``
    (same arguments, values and input gradients): ``log(1 + h)`` with h MONAI's ``HausdorffDTLoss``, the mean
    over voxels of ``(p - g)^2 (d_P^alpha + d_G^alpha)`` per sample and scored class, reduced, then the log
    (elementwise for ``reduction="none"``).

    The distance fields are MONAI's (Karimi & Salcudean's ``dt_fg + dt_bg``): for the mask ``F`` of a channel
    (the target, and the activated prediction, each thresholded at 0.5), ``edt(F)`` inside and ``edt(~F)``
    outside, all zeros when ``F`` is empty or fills the volume; ``SignedDistanceMap(mode="unsigned",
    convention="reference")`` computes the same map. Unlike ``HausdorffDTLoss`` (one-sided by default, maps of
    the boundary voxels) this class is two-sided by default (``include_pred_dt=True``) and computes ``d_G`` itself
    when no ``distance_map`` is given, without warning; both fields are computed on the CPU (SciPy) at every
    call, at MONAI's cost. Precompute ``d_G`` with ``SignedDistanceMapd(mode="unsigned",
    convention="reference")`` and pass ``distance_map=`` to save half of it with the same values. As MONAI, the
    weight ``d_P^alpha + d_G^alpha`` is computed in float32 (also for float64 input); unit voxels unless
    ``spacing`` is given (a MetaTensor's affine is not read, as MONAI does not).

    Exact relations: without ``distance_map``, equal to ``monai.losses.LogHausdorffDTLoss`` with the same
    arguments; with ``include_pred_dt=False`` and a map m,
    ``LogHausdorffDTLoss(...)(x, y, distance_map=m) = log(1 + HausdorffDTLoss(...)(x, y, distance_map=m))``
    (to float32 rounding of ``m^alpha``), except for the shape of ``"none"``: ``(B, C, 1, ..., 1)`` here as
    MONAI's, ``(B, C)`` there. Empty patch: ``d_G`` is 0 for an absent class, so only ``d_P`` (a predicted
    false positive) makes its term nonzero.

    Args:
        alpha: exponent of the distances, ``> 0``.
        include_background: whether channel 0 (background) is scored (default ``False``, as MONAI). Ignored,
            with a warning, for a single-channel input.
        to_onehot_y: ``True``: the target is ``(B, 1, *spatial)`` index labels. ``False``: the target has one
            channel per input channel (one-hot); a single-channel input takes a ``(B, 1, *spatial)`` binary
            target.
        sigmoid: apply a sigmoid to the input.
        softmax: apply a softmax over the channels. Ignored, with a warning, for a single channel.
        other_act: any other activation, called on the input first. At most one of ``sigmoid``, ``softmax``
            and ``other_act``; with none of them the input is read as probabilities in ``[0, 1]``.
        reduction: ``"mean"`` or ``"sum"`` of the per-(sample, class) values before the log, or ``"none"``:
            ``log(1 + value)`` of each, ``(B, C, 1, ..., 1)`` (``(1, C, 1, ..., 1)`` with ``batch=True``).
        batch: average the per-sample values over the batch first: one value per class.
        include_pred_dt: add the prediction's field ``d_P`` (MONAI's two-sided form); ``False``: the target's
            field only.
        spacing: voxel size per axis (or one number) for the fields computed here; None: unit voxels.
        ignore_index: label of the voxels left out of the loss (as ``HausdorffDTLoss``); they belong to no class
            in the target's fields. None: every voxel counts.
        distributed: for DDP: the mean / sum runs over every rank's samples. No effect in a single process.
        validate: check the values of ``input``, ``target`` and ``distance_map`` at every call; ``False`` skips
            them (the shape checks always run).

    Raises:
        ValueError: at construction: ``alpha <= 0``; ``reduction`` is not ``"mean"``, ``"sum"`` or ``"none"``;
            more than one of ``sigmoid``, ``softmax``, ``other_act`` is set.
        ValueError: at call time (see ``forward``): the input is not 2D or 3D; ``distance_map`` is not
            ``(B, C, *spatial)`` or, with ``validate=True``, holds negative values; every input error of
            ``HausdorffDTLoss``; an invalid ``spacing``.
        TypeError: ``other_act`` is not callable or ``ignore_index`` is not an int (construction); ``input`` or
            ``target`` is not a tensor, or ``input`` is not floating point (call).
    """

    def __init__(
        self,
        alpha: float = 2.0,
        include_background: bool = False,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable | None = None,
        reduction: str = "mean",
        batch: bool = False,
        *,
        include_pred_dt: bool = True,
        spacing: float | Sequence[float] | None = None,
        ignore_index: int | None = None,
        distributed: bool = False,
        validate: bool = True,
    ) -> None:
        super().__init__(
            alpha,
            include_background,
            to_onehot_y,
            sigmoid,
            softmax,
            other_act,
            reduction,
            batch,
            spacing,
            ignore_index,
            distributed,
            validate,
            include_pred_dt=include_pred_dt,
        )

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, distance_map: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Compute the loss of a batch.

        Args:
            input: the network output ``(B, C, H, W[, D])``: logits with an activation, otherwise probabilities.
            target: ``(B, 1, H, W[, D])`` index labels (``to_onehot_y=True``) or ``(B, C, H, W[, D])`` one-hot;
                a single-channel input takes a ``(B, 1, H, W[, D])`` binary target.
            distance_map: the target's field ``(B, C, H, W[, D])`` (background included), e.g. from
                ``SignedDistanceMapd(mode="unsigned", convention="reference")``; None: computed here from the
                target (MONAI's field).

        Returns:
            ``log(1 + loss)``: 0-d for ``"mean"``/``"sum"``; ``(B, C, 1, ..., 1)`` (``(1, C, 1, ..., 1)`` with
            ``batch=True``) for ``"none"``, ``C`` the scored classes.

        Raises:
            ValueError: the input is not 2D or 3D ``(B, C, H, W[, D])``; ``distance_map`` has the wrong shape or,
                with ``validate=True``, negative values; every input error of ``HausdorffDTLoss.forward``.
            TypeError: ``input`` or ``target`` is not a tensor, or ``input`` is not floating point.
        """
        if isinstance(input, torch.Tensor) and input.ndim not in (4, 5):
            raise ValueError(
                f"LogHausdorffDTLoss takes 2D or 3D input (B, C, H, W[, D]), got shape {tuple(input.shape)}."
            )
        return super().forward(input, target, distance_map)

    def from_prepared(self, prep: Prepared, dmap: torch.Tensor) -> torch.Tensor:
        """``log(1 + HausdorffDT loss)`` of a prepared input with the target's field.

        Args:
            prep: the prepared input and target.
            dmap: the target's field, ``(B, C, *spatial)``.

        Returns:
            The loss, shaped as ``forward`` returns it.
        """
        f = super().from_prepared(prep, dmap)
        if self.reduction == "none":  # MONAI's broadcastable shape
            f = f.reshape(-1, f.shape[-1], *[1] * len(prep.spatial))
        return torch.log(f + 1)

    def _distance_map(self, target, distance_map, input):
        if distance_map is not None:
            return _check_map(distance_map, "distance_map", input, (input.shape[1],))
        t = target.as_subclass(torch.Tensor).detach() if isinstance(target, torch.Tensor) else target
        c = input.shape[1]
        if c > 1 and t.shape[1] == 1:  # index labels; an ignored label belongs to no class
            masks = t == torch.arange(c, device=t.device).view(1, c, *[1] * (t.ndim - 2))
        else:
            masks = t > 0.5
            if self.ignore_index is not None:
                masks = masks & (t != self.ignore_index)
        return self._fields(masks, c)

    def _fields(self, masks: torch.Tensor, c: int) -> torch.Tensor:
        """MONAI's field of each (sample, scored channel) mask ``(B, C, *spatial)``, float32 (0 for the
        channels left out by ``include_background=False``)."""
        from ..transforms.distance import distance_to_boundary

        nd = masks.ndim - 2
        sp = self.spacing
        sp = None if sp is None else tuple(float(v) for v in sp) if isinstance(sp, Sequence) else (float(sp),) * nd
        first = 1 if not self.include_background and c > 1 else 0
        cpu = masks.cpu()
        out = torch.zeros(masks.shape, dtype=torch.float32)
        for bi in range(masks.shape[0]):
            for ci in range(first, masks.shape[1]):
                out[bi, ci] = distance_to_boundary(cpu[bi, ci], sp, False, "scipy", "reference")
        return out.to(masks.device)

    def voxel_weight(self, d: torch.Tensor, prep: Prepared) -> torch.Tensor:
        """The per-voxel weight ``d_P^alpha + d_G^alpha``, computed in float32 as MONAI.

        Args:
            d: the target's field ``(B, C, N)`` (spatial dimensions flattened).
            prep: the prepared input (the prediction's field is computed from it).

        Returns:
            The weight, ``(B, C, N)``, in float32 (float64 for float64 input, from the float32 values).

        Raises:
            ValueError: with ``validate=True``, ``d`` holds negative values.
        """
        if self.validate and bool(d.amin() < 0):  # a minimum, not a bool map: bool kernels are slow on CPU
            raise ValueError(
                "LogHausdorffDTLoss reads unsigned distance maps (>= 0), got negative values: compute them "
                "with SignedDistanceMapd(mode='unsigned', convention='reference')."
            )
        w = d.float() ** self.alpha
        if self.include_pred_dt:
            with torch.no_grad():
                p = activate(prep.x.to(compute_dtype(prep.x)), prep.act, 1)
            pred = (p > 0.5).reshape(p.shape[0], p.shape[1], *prep.spatial)
            w = self._fields(pred, p.shape[1]).reshape(w.shape) ** self.alpha + w
        return w.to(compute_dtype(prep.x))


class DiceBoundaryLoss(torch.nn.Module):
    """``alpha * region + (1 - alpha) * BoundaryLoss`` with the rebalancing schedule of Kervadec et al.: alpha
    starts at 1 (region loss only) and falls by ``step`` after every epoch down to ``min_alpha``, so the
    boundary term takes over once the region loss has found the object. Call ``.step_alpha()`` at the end
    of each epoch, or attach ``BoundaryAlphaScheduler(loss)`` to an ignite/MONAI trainer.

    forward(input, target, distance_map=None). ``region`` defaults to ``DiceLoss`` with the same input
    arguments (the paper uses generalised Dice); the boundary term scores the foreground classes only.

    Args:
        region: the region loss, called as ``region(input, target)``. None: ``DiceLoss`` with
            ``include_background`` and the input arguments below (``reduction="mean"``).
        alpha: the starting weight of the region term, in ``[min_alpha, 1]``; 1: region loss only.
        step: how much ``step_alpha()`` lowers ``alpha``, ``>= 0``.
        min_alpha: the floor of ``alpha``, in ``[0, alpha]``.
        include_background: whether channel 0 is scored by the boundary term (and by the default region
            term). The default ``False`` scores the foreground classes only.
        to_onehot_y: ``True``: the target is ``(B, 1, *spatial)`` index labels. ``False``: the target has one
            channel per input channel (one-hot); a single-channel input takes a ``(B, 1, *spatial)`` binary
            target.
        sigmoid: apply a sigmoid to the input: independent channels (binary tasks, overlapping regions).
        softmax: apply a softmax over the channels: mutually exclusive classes.
        other_act: any other activation, called on the input first. At most one of ``sigmoid``, ``softmax``
            and ``other_act``; with none of them the input is read as probabilities in ``[0, 1]``.
        spacing: voxel size per axis (or one number) of the distance map computed on the fly; unused with
            ``distance_map=``.
        distributed: for DDP: the means run over every rank's samples. No effect in a single process.
        validate: check the values of ``input`` and ``target`` at every call; ``False`` skips the checks.

    Raises:
        ValueError: at construction: not ``0 <= min_alpha <= alpha <= 1``, or ``step < 0``; more than one of
            ``sigmoid``, ``softmax``, ``other_act`` is set.
        ValueError: at call time: the shapes of ``input`` and ``target`` do not match, or their values fail
            the checks of ``DiceLoss`` / ``BoundaryLoss`` (see there); once ``alpha < 1``, ``distance_map`` is
            not ``(B, C, *spatial)`` with ``C`` the input's channels.
        TypeError: ``other_act`` is not callable (construction); ``input`` or ``target`` is not a tensor, or
            ``input`` is not floating point (call).
    """

    __prepare_scriptable__ = not_scriptable

    def __init__(
        self,
        region: torch.nn.Module | None = None,
        alpha: float = 1.0,
        step: float = 0.01,
        min_alpha: float = 0.01,
        include_background: bool = False,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable | None = None,
        spacing: float | Sequence[float] | None = None,
        distributed: bool = False,
        validate: bool = True,
    ) -> None:
        super().__init__()
        if not 0 <= min_alpha <= alpha <= 1 or step < 0:
            raise ValueError(f"need 0 <= min_alpha <= alpha <= 1 and step >= 0, got {min_alpha}, {alpha}, {step}.")
        common = dict(
            to_onehot_y=to_onehot_y,
            sigmoid=sigmoid,
            softmax=softmax,
            other_act=other_act,
            distributed=distributed,
            validate=validate,
        )
        self.region = region if region is not None else DiceLoss(include_background=include_background, **common)
        self.boundary = BoundaryLoss(include_background=include_background, spacing=spacing, **common)
        self.alpha, self.step, self.min_alpha = float(alpha), float(step), float(min_alpha)

    def step_alpha(self) -> float:
        """Lower ``alpha`` by ``step``, not below ``min_alpha``: call it at the end of each epoch.

        Returns:
            The new ``alpha``.
        """
        self.alpha = max(self.min_alpha, self.alpha - self.step)
        return self.alpha

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, distance_map: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Compute ``alpha * region + (1 - alpha) * boundary`` for a batch.

        Args:
            input: the network output ``(B, C, *spatial)``: logits when an activation is chosen, otherwise
                probabilities in ``[0, 1]``.
            target: ``(B, 1, *spatial)`` index labels (``to_onehot_y=True``) or ``(B, C, *spatial)`` one-hot.
            distance_map: signed distance maps ``(B, C, *spatial)``, one per input channel, from
                ``SignedDistanceMapd``. None: computed from the target on the CPU at every call (slow; warns
                once). Unused while ``alpha >= 1``.

        Returns:
            The loss, a 0-d tensor with the default region term (a custom ``region`` with an unreduced
            output broadcasts). While ``alpha >= 1`` it is the region loss alone and the boundary term is not
            computed.
        """
        region = self.region(input, target)
        if self.alpha >= 1:
            return region
        return self.alpha * region + (1 - self.alpha) * self.boundary(input, target, distance_map=distance_map)


class BoundaryAlphaScheduler:
    """Ignite/MONAI handler: lowers ``DiceBoundaryLoss.alpha`` by its step after every epoch.

    ``BoundaryAlphaScheduler(loss).attach(trainer)``. ``loss`` may be a ``DiceBoundaryLoss``, a
    ``CompoundLoss`` holding some, or a wrapper with a ``.loss`` attribute (the bundles' ``LossWithMaps``).
    Resume-aware: ``state_dict()`` / ``load_state_dict()`` hold the current alphas, so a checkpoint that saves
    it (the bundles' checkpoints do; ignite's ``Checkpoint`` does when it is listed in ``to_save``) continues
    the schedule where it stopped. With ``required=False`` a loss without a schedule is accepted and the
    handler does nothing, so a config can always list it.

    Args:
        loss: the loss to schedule: any module with a ``step_alpha()`` method (a ``DiceBoundaryLoss``), a
            ``CompoundLoss`` whose terms include some, or a wrapper whose ``.loss`` is one of these.
        required: ``True``: a ``loss`` with nothing to schedule is an error. ``False``: it is accepted and the
            handler does nothing.

    Raises:
        TypeError: ``required=True`` and ``loss`` holds no loss with a ``step_alpha()`` method.
    """

    def __init__(self, loss: torch.nn.Module, required: bool = True) -> None:
        inner = getattr(loss, "loss", loss)
        terms = getattr(inner, "terms", None)
        parts = [inner, *(terms.values() if isinstance(terms, (dict, torch.nn.ModuleDict)) else [])]
        self.losses = [p for p in parts if callable(getattr(p, "step_alpha", None))]
        if required and not self.losses:
            raise TypeError(f"BoundaryAlphaScheduler needs a DiceBoundaryLoss, got {type(loss).__name__}.")

    def attach(self, engine: Engine) -> None:
        """Run the handler at every ``Events.EPOCH_COMPLETED`` of ``engine`` (not at all with nothing to
        schedule).

        Args:
            engine: the ignite engine that trains, e.g. a MONAI ``SupervisedTrainer``.

        Raises:
            ImportError: pytorch-ignite is not installed.
        """
        from ignite.engine import Events

        if self.losses:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        """Lower the ``alpha`` of every scheduled loss by its step (the event handler; ``engine`` is unused)."""
        for loss in self.losses:
            loss.step_alpha()

    def state_dict(self) -> dict:
        """The schedule's state, for checkpoints.

        Returns:
            ``{"alpha": [...]}``, the current ``alpha`` of each scheduled loss as floats.
        """
        return {"alpha": [float(loss.alpha) for loss in self.losses]}

    def load_state_dict(self, state: dict) -> None:
        """Restore the ``alpha`` of each scheduled loss from ``state_dict()``'s output.

        Args:
            state: ``{"alpha": [...]}``, one value per scheduled loss.

        Raises:
            ValueError: ``state`` does not hold one ``alpha`` per scheduled loss (a checkpoint written with
                another loss).
        """
        alphas = list(state.get("alpha", []))
        if len(alphas) != len(self.losses):
            raise ValueError(
                f"BoundaryAlphaScheduler state holds {len(alphas)} alpha(s) for {len(self.losses)} "
                "scheduled loss(es): the checkpoint was written with another loss"
            )
        for loss, a in zip(self.losses, alphas):
            loss.alpha = float(a)


@fused
class _ForegroundProb(torch.autograd.Function):
    """1 - softmax(x)[:, 0] for x (B, C, N), chunk by chunk: nothing of size (B, C, N) is kept (autograd's
    logsumexp would keep two), backward recomputes the softmax. d(1 - p_0)/dx_c = p_0 (p_c - [c == 0])."""

    @staticmethod
    def forward(x):
        out = Slabs(x.shape[0], (x.shape[2],), x.dtype, x.device)
        for bi in range(x.shape[0]):
            for sl in _chunks(x.shape[2]):
                out.put(bi, 1 - torch.softmax(x[bi, :, sl], 0)[0], sl)
        return out.result()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        return run_backward(_foreground_prob_backward, "_ForegroundProb", x, grad_out, x)[0]

    @staticmethod
    def vmap(info, in_dims, *args):
        return vmap_by_slices(_ForegroundProb.eager.apply, info, in_dims, args)


def _foreground_prob_backward(grad_out, x):
    """dL/dx of ``_ForegroundProb``, the softmax recomputed chunk by chunk."""
    gx = Slabs(x.shape[0], x.shape[1:], x.dtype, x.device)
    for bi in range(x.shape[0]):
        for sl in _chunks(x.shape[2]):
            p = torch.softmax(x[bi, :, sl], 0)
            p[0] -= 1
            gx.put(bi, p.mul_(p[0:1] + 1).mul_(grad_out[bi, sl]), sl)
    return (gx.result(),)


class BlobLoss(LossBase):
    """Blob loss (Kofler et al., IPMI 2023): ``alpha * global + beta * mean over lesions of blob_n``, so that a
    10-voxel lesion weighs as much as a 1000-voxel one.

    blob_n is the region loss of lesion n alone: the prediction is restricted to lesion n and the background
    (the other lesions are masked out of both prediction and target), scored on the foreground probability
    (sum of the foreground classes with softmax, the channel with one sigmoid channel). ``region="dice"``
    (1 - 2TP/(P+G)) or ``"tversky"`` (``tversky_alpha`` on FP, ``tversky_beta`` on FN). All lesions are
    scored in one pass (per-lesion sums by scatter-add), not one loss call per lesion. The global term is
    ``global_loss`` (default: ``DiceLoss`` with the same input arguments). Paper defaults: alpha 2, beta 1.

    forward(input, target, instances=None): instances (B, 1, ...) lesion ids from ``LesionInstancesd``
    (0 background, 1..K); computed on the fly with ``LesionInstances`` when absent. The blob term
    (``lesion_mean``): ``"batch"`` (default) the mean over every lesion of the batch (over every rank's lesions
    with ``distributed``), so that every lesion weighs the same; ``"image"`` the authors' order, the mean over
    each image's lesions, then the mean over the images that hold a lesion, so that every image weighs the
    same. The two agree when every image holds the same number of lesions. Empty patch: no lesion, the blob
    term is 0 and only the global term remains.

    Per lesion n: ``blob_n = 1 - (2 TP_n + smooth_nr) / (2 TP_n + FP_n + FN_n + smooth_dr)`` (``"dice"``) or
    ``1 - (TP_n + smooth_nr) / (TP_n + tversky_alpha FP_n + tversky_beta FN_n + smooth_dr)`` (``"tversky"``),
    with TP_n the foreground probability summed over lesion n, FP_n over the background (instance 0) and
    ``FN_n = |lesion n| - TP_n``.

    Args:
        global_loss: the global term, called as ``global_loss(input, target)``. None: ``DiceLoss`` with
            ``include_background=False`` and the input arguments below. Not called when ``alpha`` is 0.
        alpha: weight of the global term, ``>= 0`` (paper: 2).
        beta: weight of the blob term, ``>= 0`` (paper: 1).
        region: the per-lesion loss: ``"dice"`` or ``"tversky"``.
        tversky_alpha: weight of the false positives in the Tversky index (``region="tversky"``).
        tversky_beta: weight of the false negatives in the Tversky index (``region="tversky"``).
        to_onehot_y: ``True``: the target is ``(B, 1, *spatial)`` index labels. ``False``: the target has one
            channel per input channel (one-hot); a single-channel input takes a ``(B, 1, *spatial)`` binary
            target.
        sigmoid: apply a sigmoid: only for one output channel (the foreground).
        softmax: apply a softmax over the channels; channel 0 is the background, the foreground probability
            is ``1 - p_0``.
        other_act: any other activation, called on the input first; its output is read as probabilities. At
            most one of ``sigmoid``, ``softmax`` and ``other_act``; with none of them the input is read as
            probabilities in ``[0, 1]``.
        smooth_nr: added to the numerator of each lesion's score.
        smooth_dr: added to the denominator of each lesion's score.
        ignore_index: label of the voxels left out of the blob term (their probability counts 0) and of the
            default global term; it may lie outside ``[0, C)``, e.g. 255. None: every voxel counts.
        distributed: for DDP: the blob mean runs over every rank's lesions, the default global term's mean
            over every rank's samples. No effect in a single process.
        validate: check the values of ``input``, ``target`` and ``instances`` at every call (NaN/Inf, ranges,
            labels), each check a host-device synchronisation; ``False`` skips them (the shape checks always
            run).
        lesion_mean: ``"batch"``: the blob term is the mean over the batch's lesions; ``"image"``: the mean
            over each image's lesions, then over the images with a lesion (Kofler et al.'s code).

    Raises:
        ValueError: at construction: ``region`` is not ``"dice"`` or ``"tversky"``; ``alpha`` or ``beta`` is
            negative; more than one of ``sigmoid``, ``softmax``, ``other_act`` is set; ``lesion_mean`` is not
            ``"batch"`` or ``"image"``.
        ValueError: at call time: ``instances`` is not ``(B, 1, *spatial)``, holds non-integer values, or, with
            ``validate=True``, negative ids; ``sigmoid=True`` with more than one channel (overlapping channels
            have no single foreground); the shapes of ``input`` and ``target`` do not match; a one-channel
            target for a multi-channel input without ``to_onehot_y=True``, or a multi-channel target with it;
            with ``validate=True`` also NaN/Inf values, input outside ``[0, 1]`` when no activation is chosen,
            non-integer or out-of-range index labels (other than ``ignore_index``), a dense target outside
            ``[0, 1]``, or, with ``softmax=True``, a one-hot target that does not sum to 1 over the channels.
        TypeError: ``other_act`` is not callable or ``ignore_index`` is not an int (construction); ``input`` or
            ``target`` is not a tensor, or ``input`` is not floating point (call).
    """

    def __init__(
        self,
        global_loss: torch.nn.Module | None = None,
        alpha: float = 2.0,
        beta: float = 1.0,
        region: str = "dice",
        tversky_alpha: float = 0.3,
        tversky_beta: float = 0.7,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable | None = None,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        ignore_index: int | None = None,
        distributed: bool = False,
        validate: bool = True,
        lesion_mean: str = "batch",
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
        if region not in ("dice", "tversky"):
            raise ValueError(f"region must be 'dice' or 'tversky', got {region!r}.")
        if lesion_mean not in ("batch", "image"):
            raise ValueError(
                f"lesion_mean must be 'batch' or 'image' (the authors' per-image mean), got {lesion_mean!r}."
            )
        self.lesion_mean = lesion_mean
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be >= 0, got {alpha}, {beta}.")
        self.global_loss = (
            global_loss
            if global_loss is not None
            else DiceLoss(
                include_background=False,
                to_onehot_y=to_onehot_y,
                sigmoid=sigmoid,
                softmax=softmax,
                other_act=other_act,
                ignore_index=ignore_index,
                distributed=distributed,
                validate=False,
            )
        )
        self.alpha, self.beta, self.region = float(alpha), float(beta), region
        self.tversky_alpha, self.tversky_beta = float(tversky_alpha), float(tversky_beta)
        self.smooth_nr, self.smooth_dr = float(smooth_nr), float(smooth_dr)

    def forward(self, input: torch.Tensor, target: torch.Tensor, instances: torch.Tensor | None = None) -> torch.Tensor:
        """Compute ``alpha * global + beta * blob`` for a batch.

        Args:
            input: the network output ``(B, C, *spatial)``: logits when an activation is chosen, otherwise
                probabilities in ``[0, 1]``.
            target: ``(B, 1, *spatial)`` index labels (``to_onehot_y=True``) or ``(B, C, *spatial)`` one-hot;
                a single-channel input takes a ``(B, 1, *spatial)`` binary target.
            instances: lesion ids ``(B, 1, *spatial)``, integers: 0 background, 1..K the lesions of each
                sample (from ``LesionInstancesd`` on the whole volume, cropped together with the image; an
                array is converted). None: computed from the target's foreground with ``LesionInstances`` on
                the CPU at every call (slow; warns once).

        Returns:
            The loss, a 0-d tensor with the default global term (a custom ``global_loss`` with an unreduced
            output broadcasts).
        """
        prep = self._prepare(input, target)
        if instances is None:
            from ..transforms import LesionInstances

            _warn_on_the_fly("BlobLoss", "instances", "LesionInstances")
            fg = (
                (target > 0).to(torch.uint8)
                if target.shape[1] == 1
                else target[:, 1:].sum(1, keepdim=True).gt(0.5).to(torch.uint8)
            )
            instances = _per_case(fg, 1, lambda c: LesionInstances())
        global_term = self.global_loss(input, target) if self.alpha else None
        return self.from_prepared(prep, _check_map(instances, "instances", input, (1,)), global_term)

    def from_prepared(self, prep: Prepared, inst: torch.Tensor, global_term: torch.Tensor | None) -> torch.Tensor:
        """The loss of an input already checked and aligned by ``_prepare``, with its lesion ids.

        Args:
            prep: the prepared input and target.
            inst: the lesion ids, ``(B, 1, *spatial)``.
            global_term: the value of the global term, or None to leave it out.

        Returns:
            ``beta * blob`` plus ``alpha * global_term`` when given.

        Raises:
            ValueError: ``inst`` holds non-integer values or, with ``validate=True``, negative ids; ``sigmoid``
                with more than one channel.
        """
        if inst.is_floating_point() and (inst != inst.round()).any():
            raise ValueError("instances must hold integer lesion ids (0 background, 1..K) from LesionInstancesd.")
        inst = inst.reshape(inst.shape[0], -1).long()
        if self.validate and int(inst.min()) < 0:
            raise ValueError(
                f"instances hold negative ids (min {int(inst.min())}); expected 0 background, 1..K lesions."
            )
        total = self.beta * self._blob_term(prep, inst)
        return total if global_term is None else total + self.alpha * global_term

    def _blob_term(self, prep: Prepared, inst: torch.Tensor) -> torch.Tensor:
        dt = compute_dtype(prep.x)
        x, c = prep.x.to(dt), prep.num_classes
        # (B, N) foreground probability, without materialising the (B, C, N) probabilities under autograd
        if c == 1:
            pf = torch.sigmoid(x[:, 0]) if prep.act == "sigmoid" else x[:, 0]
        elif prep.act == "softmax":
            pf = apply_fused(_ForegroundProb, x)  # 1 - softmax(x)_0, chunked, no graph
        elif prep.act == "none":
            pf = 1 - x[:, 0]
        else:
            raise ValueError(
                "BlobLoss scores the foreground: use softmax=True (class 0 = background) or one "
                "sigmoid channel; overlapping sigmoid channels have no single foreground."
            )
        if prep.valid is not None:
            pf = pf * prep.valid[:, 0]
        k = int(inst.max()) + 1 if inst.numel() else 1
        # per lesion n: TP_n = sum of p over lesion n; P_n = TP_n + sum of p over background; G_n = |lesion n|
        # out of place: torch.func.vmap cannot scatter a batched source into a fresh unbatched buffer
        s_lesion = pf.new_zeros(inst.shape[0], k).scatter_add(1, inst, pf)
        counts = torch.zeros(inst.shape[0], k, dtype=dt, device=pf.device).scatter_add(1, inst, torch.ones_like(pf))
        tp, bg_p, g = s_lesion[:, 1:], s_lesion[:, :1], counts[:, 1:]
        fp, fn = bg_p, g - tp
        if self.region == "dice":
            score = (2 * tp + self.smooth_nr) / (2 * tp + fp + fn + self.smooth_dr)
        else:
            score = (tp + self.smooth_nr) / (tp + self.tversky_alpha * fp + self.tversky_beta * fn + self.smooth_dr)
        present = g > 0
        losses = (1 - score) * present
        if self.lesion_mean == "batch":
            return masked_mean(losses.sum(), present.sum(), self.distributed)
        n_lesions = present.sum(1)
        per_image = losses.sum(1) / n_lesions.clamp_min(1)
        return masked_mean(per_image.sum(), (n_lesions > 0).sum(), self.distributed)
