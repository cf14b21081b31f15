"""Shared module plumbing: argument checks done once at construction, the reductions, per-class weights."""

from __future__ import annotations

import warnings
from abc import ABCMeta, abstractmethod
from collections.abc import Callable

import torch
from torch.nn.modules.loss import _Loss

from ._inputs import Prepared, as_class_vector, check_activation_flags, check_reduction, prepare
from ._stats import all_reduce_sum, is_distributed

__all__ = ["LossBase", "reduce_loss", "apply_class_weight", "safe_pow"]


def safe_pow(u: torch.Tensor, gamma: float) -> torch.Tensor:
    """u ** gamma for u >= 0 with an exact value (0 at u = 0) and a finite gradient: a fractional power has
    an infinite slope at 0, which is where a perfect prediction puts focal-Tversky and exp-log terms; the
    gradient there is taken as 0 (the minimum). Negative rounding noise is treated as 0."""
    pos = u > 0
    return torch.where(pos, torch.where(pos, u, 1.0) ** gamma, 0.0)


def reduce_loss(f: torch.Tensor, reduction: str, distributed: bool = False, none_shape=None) -> torch.Tensor:
    """Mean / sum over all elements of ``f``; with ``distributed`` the mean and the sum run over every rank's
    elements (so unequal per-rank batches still give the full-batch value). ``none`` reshapes to ``none_shape``."""
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
    """Multiply per-class scores f (..., C_kept) by a per-class weight (MONAI: ignored for one channel)."""
    if weight is None or n_kept == 1:
        return f
    if weight.ndim == 1 and weight.numel() != n_kept:
        raise ValueError(
            f"weight has {weight.numel()} values but {n_kept} classes are scored; give one weight per scored "
            "class (with include_background=False the background class 0 is not scored and takes no weight)."
        )
    return f * weight.to(f)


class LossBase(_Loss, metaclass=ABCMeta):
    """Holds the arguments every loss shares and runs the one input path."""

    probabilities = True  # overlap losses read probabilities when no activation is given

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
        )

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.from_prepared(self._prepare(input, target))

    @abstractmethod
    def from_prepared(self, prep: Prepared) -> torch.Tensor:
        """The loss of an already prepared input; compound losses prepare once and call this on each term."""

    def _register_class_vector(self, name: str, value, allow_negative: bool = False) -> None:
        self.register_buffer(name, as_class_vector(value, name, allow_negative), persistent=False)

    def _first_kept(self, n_channels: int) -> int:
        """Index of the first scored channel: 1 when the background is excluded (and there is one)."""
        if self.include_background:
            return 0
        if n_channels == 1:
            warnings.warn("single channel prediction, `include_background=False` ignored.", stacklevel=4)
            return 0
        return 1
