"""Shared module plumbing: argument checks done once at construction, the reductions, per-class weights."""

from __future__ import annotations

import warnings
from abc import ABCMeta, abstractmethod
from collections.abc import Callable, Sequence

import torch
from torch.nn.modules.loss import _Loss

from ._inputs import Prepared, as_class_vector, check_activation_flags, check_reduction, prepare
from ._stats import all_reduce_sum, is_distributed

__all__ = ["LossBase", "reduce_loss", "apply_class_weight", "safe_pow", "not_scriptable"]


def safe_pow(u: torch.Tensor, gamma: float) -> torch.Tensor:
    """u ** gamma for u >= 0 with an exact value (0 at u = 0) and a finite gradient: a fractional power has
    an infinite slope at 0, which is where a perfect prediction puts focal-Tversky and exp-log terms; the
    gradient there is taken as 0 (the minimum). Negative rounding noise is treated as 0.

    Args:
        u: the base, expected ``>= 0`` (entries ``<= 0`` give 0), any shape.
        gamma: the exponent.

    Returns:
        ``u ** gamma`` elementwise, same shape as ``u``.
    """
    pos = u > 0
    return torch.where(pos, torch.where(pos, u, 1.0) ** gamma, 0.0)


def reduce_loss(
    f: torch.Tensor, reduction: str, distributed: bool = False, none_shape: Sequence[int] | None = None
) -> torch.Tensor:
    """Mean / sum over all elements of ``f``; with ``distributed`` the mean and the sum run over every rank's
    elements (so unequal per-rank batches still give the full-batch value). ``none`` reshapes to ``none_shape``.

    Args:
        f: the unreduced loss terms, any shape.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (already checked by the loss).
        distributed: pool the sum and the element count over every rank of the initialised process group
            (no effect in a single process).
        none_shape: the shape ``f`` takes for ``"none"``; None keeps the shape of ``f``.

    Returns:
        A 0-d tensor for ``"mean"``/``"sum"``; ``f`` (reshaped to ``none_shape`` if given) for ``"none"``.
    """
    if reduction == "none":
        return f if none_shape is None else f.reshape(none_shape)
    total = all_reduce_sum(f.sum(), distributed)
    if reduction == "sum":
        return total
    count = f.numel()
    if is_distributed(distributed):
        count = all_reduce_sum(torch.tensor(float(count), device=f.device), True)
    return total / count


def apply_class_weight(f: torch.Tensor, weight: torch.Tensor | None, n_kept: int) -> torch.Tensor:
    """Multiply per-class scores f (..., C_kept) by a per-class weight (MONAI: ignored for one channel).

    Args:
        f: per-class scores, classes on the last axis ``(..., C_kept)``.
        weight: a 0-d (one factor for every class) or 1-D tensor with one value per scored class; None leaves
            ``f`` unchanged.
        n_kept: the number of scored classes (after ``include_background``); with 1 the weight is ignored.

    Returns:
        ``f * weight``, same shape as ``f``.

    Raises:
        ValueError: a 1-D ``weight`` does not have ``n_kept`` values.
    """
    if weight is None or n_kept == 1:
        return f
    if weight.ndim == 1 and weight.numel() != n_kept:
        raise ValueError(
            f"weight has {weight.numel()} values but {n_kept} classes are scored; give one weight per scored "
            "class (with include_background=False the background class 0 is not scored and takes no weight)."
        )
    return f * weight.to(f)


def not_scriptable(self: torch.nn.Module) -> torch.nn.Module:
    """``__prepare_scriptable__`` of every loss: ``torch.jit.script`` calls it first, so scripting stops with
    this explanation instead of a TorchScript parse error deep inside a kernel.

    Args:
        self: the loss module being scripted.

    Returns:
        Never returns.

    Raises:
        TypeError: always.
    """
    raise TypeError(
        f"{type(self).__name__} cannot be compiled by torch.jit.script: the losses dispatch in Python (custom "
        "autograd Functions with chunk loops, prepared-input dataclasses, arbitrary other_act callables), and "
        "TorchScript is deprecated in PyTorch 2. Compile the training step with torch.compile instead (the "
        "losses give their eager values under it); see docs/losses.md, 'torch.compile, torch.func, TorchScript'."
    )


class LossBase(_Loss, metaclass=ABCMeta):
    """Holds the arguments every loss shares and runs the one input path.

    A subclass implements ``from_prepared``; ``forward`` checks and aligns ``input``/``target`` once
    (``_inputs.prepare``) and passes the result on. The activation is not applied here but fused into the
    statistics or per-voxel kernels. Class attribute ``probabilities``: whether the input is read as
    probabilities when no activation is chosen (overlap losses); False for losses that always read logits.

    Args:
        include_background: whether channel 0 (background) is scored. With ``False`` and more than one channel,
            channel 0 is left out; ignored (with a warning) for a single-channel input.
        to_onehot_y: ``True``: a ``(B, 1, *spatial)`` target holds index labels (never expanded to a float
            one-hot). ``False``: the target has as many channels as the input (a single-channel input takes a
            ``(B, 1, *spatial)`` binary target). ``None``: decided from the shapes, index labels when the target
            has one channel and the input several (as cross-entropy does).
        sigmoid: apply a sigmoid to the input (independent channels).
        softmax: apply a softmax over the channels (mutually exclusive classes); ignored, with a warning, for a
            single channel.
        other_act: any other activation, called on the input before everything else. At most one of
            ``sigmoid``, ``softmax`` and ``other_act`` may be set.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (a ``LossReduction`` enum is accepted too).
        ignore_index: label value of the voxels to leave out of the loss; None: every voxel counts. For index
            labels, the voxels holding it (it may lie outside ``[0, C)``); for a one-channel target the voxels
            equal to it; for a C-channel target the voxels where channel ``ignore_index`` is nonzero or, when it
            is not a channel index, the voxels whose target is zero in every channel.
        soft_label: the target holds soft values in ``[0, 1]`` rather than a one-hot; the sum-to-one check
            of softmax targets is skipped and the overlap losses take ``TP = sum min(p, g)``.
        distributed: pool the loss's normalisers and statistics over every rank of an initialised
            ``torch.distributed`` process group (world size > 1); no effect in a single process.
        validate: run the value checks on every call (NaN/Inf input, probability range, label range, one-hot
            target); each costs a reduction and a host-device synchronisation. ``False`` skips them; the shape
            checks always run.

    Raises:
        ValueError: ``reduction`` is not supported, more than one activation is chosen, or (at call time, see
            ``forward``) the input or target is malformed.
        TypeError: ``other_act`` is not callable, ``ignore_index`` is not an int or None, or (at call time)
            ``input``/``target`` is not a tensor or ``input`` is not floating point.
    """

    probabilities = True  # overlap losses read probabilities when no activation is given
    __prepare_scriptable__ = not_scriptable
    accepts_no_spatial = False  # (B, C) inputs without spatial axes, where MONAI's peer takes them

    def __init__(
        self,
        *,
        include_background: bool = True,
        to_onehot_y: bool | None = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Callable | None = None,
        reduction: str = "mean",
        ignore_index: int | None = None,
        soft_label: bool = False,
        distributed: bool = False,
        validate: bool = True,
    ) -> None:
        super().__init__(reduction=check_reduction(reduction))
        check_activation_flags(sigmoid, softmax, other_act)
        if ignore_index is not None and not isinstance(ignore_index, int):
            raise TypeError(f"ignore_index must be an int or None, got {ignore_index!r}.")
        self.include_background = include_background
        self.to_onehot_y = to_onehot_y
        self.sigmoid = sigmoid
        self.softmax = softmax
        self.other_act = other_act
        self.ignore_index = ignore_index
        self.soft_label = soft_label
        self.distributed = distributed
        self.validate = validate

    def _prepare(self, input: torch.Tensor, target: torch.Tensor) -> Prepared:
        return prepare(
            input,
            target,
            sigmoid=self.sigmoid,
            softmax=self.softmax,
            other_act=self.other_act,
            to_onehot_y=self.to_onehot_y,
            ignore_index=self.ignore_index,
            validate=self.validate,
            probabilities=self.probabilities,
            soft_label=self.soft_label,
            allow_no_spatial=self.accepts_no_spatial,
        )

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the loss of a batch.

        Args:
            input: the network output ``(B, C, *spatial)``, at least one spatial dimension, floating point.
                Logits when the loss applies an activation (``sigmoid``/``softmax``/``other_act``, and always
                for the cross-entropy, BCE, focal and TopK losses); otherwise probabilities in ``[0, 1]``.
                A MONAI ``MetaTensor`` is read as a plain tensor (same data and graph).
            target: the reference, same batch size and spatial shape: ``(B, 1, *spatial)`` integer index labels
                in ``[0, C)`` (any integer, bool or integer-valued float dtype), or ``(B, C, *spatial)`` one-hot
                or soft values in ``[0, 1]``. A single-channel input takes a ``(B, 1, *spatial)`` binary target.

        Returns:
            The loss: a 0-d tensor for ``reduction="mean"`` (the mean of the loss's terms) and ``"sum"``.
            For ``"none"`` the unreduced terms, whose shape depends on the loss (see its class docstring):
            e.g. ``(B, C, 1, ..., 1)`` for Dice (``RegionLoss.none_keeps_spatial``), ``(B, C)`` for
            Tversky, a per-voxel map ``(B, *spatial)`` or ``(B, C, *spatial)`` for the per-voxel losses.
            ``C`` counts the scored classes (one less with ``include_background=False``).

        Raises:
            TypeError: ``input`` or ``target`` is not a tensor, or ``input`` is not floating point.
            ValueError: the shapes do not match (see ``input``/``target``); a one-channel target with a
                multi-channel input while ``to_onehot_y=False``, or a multi-channel target with
                ``to_onehot_y=True``; with ``validate=True`` also NaN/Inf values, probabilities outside
                ``[0, 1]`` when no activation is chosen, non-integer or out-of-range index labels (other than
                ``ignore_index``), a dense target outside ``[0, 1]``, or, with ``softmax=True`` and
                ``soft_label=False``, a one-hot target whose channels do not sum to 1 at some voxel.
        """
        return self.from_prepared(self._prepare(input, target))

    @abstractmethod
    def from_prepared(self, prep: Prepared) -> torch.Tensor:
        """The loss of an already prepared input; compound losses prepare once and call this on each term."""

    def _register_class_vector(self, name: str, value: object, allow_negative: bool = False) -> None:
        """Check a per-class argument once and keep it as a non-persistent buffer ``name`` (the ``class_``
        prefix of the buffer name is not the argument's: errors name the argument, e.g. ``weight``)."""
        arg = name.removeprefix("class_") if name == "class_weight" else name
        self.register_buffer(name, as_class_vector(value, arg, allow_negative), persistent=False)

    def _first_kept(self, n_channels: int) -> int:
        """Index of the first scored channel: 1 when the background is excluded (and there is one)."""
        if self.include_background:
            return 0
        if n_channels == 1:
            warnings.warn("single channel prediction, `include_background=False` ignored.", stacklevel=4)
            return 0
        return 1
