"""One input path for every loss: check, choose the activation, align the target, build the ignore mask.

Nothing here builds a float one-hot target: index labels stay (B, 1, N) integers and the statistics
and per-voxel kernels read them directly. The activation itself is applied later, fused into the
statistics (``_stats``) or per-voxel (``pixel``) kernels, so that no probability tensor has to be kept
for backward.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "InputShapeError",
    "Prepared",
    "prepare",
    "check_activation_flags",
    "check_label_smoothing",
    "check_reduction",
    "as_class_vector",
    "as_class_logits",
]

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str) -> str:
    value = getattr(reduction, "value", reduction)
    if value not in REDUCTIONS:
        raise ValueError(f"reduction={reduction!r} is not supported: use one of {REDUCTIONS}.")
    return value


def check_label_smoothing(value: float) -> float:
    """``label_smoothing`` as a float in ``[0, 1]`` (checked at construction, not by torch at the first call)."""
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1], got {value}.")
    return float(value)


def check_activation_flags(sigmoid: bool, softmax: bool, other_act: Callable | None) -> None:
    if other_act is not None and not callable(other_act):
        raise TypeError(f"other_act must be None or a callable, got {type(other_act).__name__}.")
    if int(bool(sigmoid)) + int(bool(softmax)) + int(other_act is not None) > 1:
        raise ValueError(
            f"conflicting activation flags: sigmoid={sigmoid}, softmax={softmax}, other_act={other_act!r}; "
            "choose one (softmax for mutually exclusive classes, sigmoid for binary or overlapping channels)."
        )


def as_class_vector(value, name: str, allow_negative: bool = False) -> torch.Tensor | None:
    """Turn a per-class argument (scalar, sequence or tensor) into a float64 tensor, checked once at init."""
    if value is None:
        return None
    vec = torch.as_tensor(value, dtype=torch.float64).detach().clone()
    if vec.ndim > 1:
        raise ValueError(
            f"{name} must be a scalar or a 1-D sequence of per-class values, got shape {tuple(vec.shape)}."
        )
    if not torch.isfinite(vec).all():
        raise ValueError(f"{name} must be finite, got {vec.tolist()}.")
    if not allow_negative and (vec < 0).any():
        raise ValueError(f"{name} values must be >= 0, got {vec.tolist()}.")
    return vec


@dataclass
class Prepared:
    """Inputs of one loss call in the layout every kernel reads.

    x: (B, C, N) raw input (logits or probabilities), spatial dimensions flattened.
    act: activation still to apply to ``x``: "softmax", "sigmoid" or "none".
    target: (B, 1, N) int64 index labels (``is_index``) or (B, C, N) dense one-hot / soft target.
    valid: (B, 1, N) bool mask of voxels that count (``ignore_index``), or None when all count.
    spatial: the spatial shape, for losses that return per-voxel maps.
    """

    x: torch.Tensor
    act: str
    target: torch.Tensor
    is_index: bool
    valid: torch.Tensor | None
    spatial: tuple[int, ...]

    @property
    def num_classes(self) -> int:
        return self.x.shape[1]

    @property
    def n_valid(self) -> torch.Tensor | int:
        """Number of valid voxels over the batch (the normaliser of per-voxel means)."""
        return self.valid.sum() if self.valid is not None else self.x.shape[0] * self.x.shape[2]


class InputShapeError(ValueError, AssertionError):
    """``input`` and ``target`` do not fit together (shapes, channels, an empty batch).

    A ``ValueError`` like every input error here, and also an ``AssertionError``: MONAI's Dice, Tversky,
    generalized Dice and Hausdorff-DT losses raise ``AssertionError`` for a shape mismatch, so code (and
    tests) written against MONAI that catch that type catch ours too.
    """


def _fmt(v: float | int, dtype: torch.dtype) -> str:
    """The shortest text that reads back as the same value in ``dtype`` (1 + 1e-7 stays ``1.0000001``)."""
    if isinstance(v, int) or not dtype.is_floating_point or (math.isfinite(v) and float(v).is_integer()):
        return str(int(v))
    if dtype == torch.float64:
        return repr(float(v))
    return str(np.float16(v) if dtype == torch.float16 else np.float32(v))


def _describe(values: torch.Tensor, limit: int = 10) -> str:
    vals = torch.unique(values.detach()).cpu().tolist()
    shown = ", ".join(_fmt(v, values.dtype) for v in vals[:limit])
    return "{" + shown + (", ..." if len(vals) > limit else "") + "}"


def _bad_labels(t: torch.Tensor, n_classes: int, ignore_index: int | None) -> torch.Tensor:
    """Mask of the index labels outside ``[0, n_classes)`` that are not ``ignore_index``."""
    bad = (t < 0) | (t >= n_classes)
    return bad if ignore_index is None else bad & (t != ignore_index)


def _off_one_hot(t: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mask of the (valid) voxels of a C-channel target whose channels do not sum to 1."""
    off = (t.sum(1, keepdim=True) - 1).abs() > 1e-3
    return off if valid is None else off & valid


def _value_checks(
    x: torch.Tensor,
    t: torch.Tensor,
    *,
    probabilities: bool,
    is_index: bool,
    ignore_index: int | None,
    act: str,
    soft_label: bool,
    valid: torch.Tensor | None,
) -> None:
    """Every value check of one call, with a single device-to-host transfer.

    The few numbers the checks need (ranges: of the input, of the target, of the labels' fractional parts, of
    the labels other than ``ignore_index``, of each voxel's channel sum) are reduced on the device into one
    small tensor and read back once, so a GPU step pays
    one synchronisation (one graph break under ``torch.compile``) for all the checks. Only when a check fails
    are more values fetched, to write the message.
    """
    n_classes = x.shape[1]
    td = t.detach()
    ranges = [x.detach(), td]  # every check is a range: aminmax only (bool-valued kernels are slow on CPU)
    if is_index:
        if td.is_floating_point():  # non-integer labels: a fractional part other than 0 (NaN shows in the range)
            ranges.append(torch.frac(td))
        if ignore_index is not None:  # the labels other than ignore_index (read as 0)
            ranges.append(td - (td == ignore_index).to(td.dtype) * ignore_index)
    elif act == "softmax" and t.shape[1] > 1 and not soft_label:  # each voxel's channel sum (1 when unchecked)
        sums = td.sum(1, keepdim=True)
        ranges.append(sums if valid is None else torch.where(valid, sums, 1))
    stats = torch.cat([torch.stack(torch.aminmax(r)).to(torch.float64) for r in ranges]).tolist()  # the one sync
    x_lo, x_hi, t_lo, t_hi = stats[:4]
    if not (math.isfinite(x_lo) and math.isfinite(x_hi)):
        bad = int((~torch.isfinite(x.detach())).sum())
        raise ValueError(
            f"input holds {bad} NaN/Inf values (range [{x_lo}, {x_hi}]): the network diverged or the data holds "
            "NaN; check the learning rate, the AMP loss scaling and the input images."
        )
    if probabilities and (x_lo < -1e-6 or x_hi > 1 + 1e-6):
        raise ValueError(
            f"input values lie in [{x_lo:.4g}, {x_hi:.4g}] but no activation was asked for, so they are read as "
            "probabilities in [0, 1]: these look like logits. Pass softmax=True (mutually exclusive classes) "
            "or sigmoid=True (binary / overlapping channels), or other_act=..., or apply it before the loss."
        )
    if not (math.isfinite(t_lo) and math.isfinite(t_hi)):
        what = "target index labels" if is_index else "target"
        raise ValueError(f"{what} hold NaN/Inf values; check the label files.")
    hint255 = (
        " Masks saved as 0/255 must be remapped: ValidateLabeld(keys='label', num_classes=2, remap={255: 1})."
        if t_hi == 255
        else ""
    )
    if is_index:
        if td.is_floating_point() and stats[4:6] != [0.0, 0.0]:
            raise ValueError(
                f"target index labels hold non-integer values such as {_describe(td[td != torch.round(td)], 5)}: "
                "labels were probably resampled with linear interpolation; resample labels with mode='nearest', "
                "or pass a one-hot / soft target with one channel per class."
            )
        lo, hi = stats[-2:] if ignore_index is not None else (t_lo, t_hi)
        if lo < 0 or hi > n_classes - 1:
            raise ValueError(
                f"target holds labels {_describe(td)} but input has {n_classes} channel(s), so labels must lie in "
                f"[0, {n_classes - 1}]"
                + (f" (or equal ignore_index={ignore_index})" if ignore_index is not None else "")
                + f"; out of range: {_describe(td[_bad_labels(td, n_classes, ignore_index)])}.{hint255} If the "
                "network should predict more classes, give it more output channels."
            )
        return
    if t_lo < 0 or t_hi > 1:
        raise ValueError(
            f"target values lie in [{t_lo:g}, {t_hi:g}] but a one-hot/soft target must lie in [0, 1]. For index "
            f"labels (B, 1, ...) with several classes pass to_onehot_y=True.{hint255}"
        )
    if len(stats) > 4 and (stats[4] < 1 - 1e-3 or stats[5] > 1 + 1e-3):
        off = _off_one_hot(td, valid)
        sums = td.sum(1, keepdim=True)
        raise ValueError(
            f"with softmax=True each voxel of a one-hot target must sum to 1 over its {t.shape[1]} channels, "
            f"but {int(off.sum())} voxels sum to {_describe(sums[off], 5)}. Overlapping region channels (e.g. "
            "BraTS TC/WT/ET) need sigmoid=True; missing labels need ignore_index."
        )


def prepare(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    sigmoid: bool = False,
    softmax: bool = False,
    other_act: Callable | None = None,
    to_onehot_y: bool | None = False,
    ignore_index: int | None = None,
    validate: bool = True,
    probabilities: bool = True,
    soft_label: bool = False,
    allow_no_spatial: bool = False,
) -> Prepared:
    """Check and align ``input``/``target`` for every loss.

    Args:
        to_onehot_y: MONAI's flag. True: a (B, 1, ...) target holds index labels. False: the target must have
            as many channels as the input (a single-channel input takes a (B, 1, ...) binary target). None: decide
            from the shape (index labels when the target has one channel and the input several), as
            cross-entropy does.
        probabilities: whether the loss reads probabilities when no activation is given (overlap losses);
            False for losses that always read logits (cross-entropy, focal).
        allow_no_spatial: accept ``(B, C)`` inputs without spatial axes (read as one voxel per sample), as
            MONAI's Dice, Tversky, focal and cross-entropy losses do; losses that need a spatial layout (maps,
            blobs, Lovasz) keep it False.
    """
    if not isinstance(input, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError(
            f"input and target must be torch.Tensors, got {type(input).__name__} and {type(target).__name__}."
        )
    # MetaTensor (or any subclass) -> plain tensor views: same data and autograd graph, none of the per-op
    # metadata handling in the kernels
    if type(input) is not torch.Tensor:
        input = input.as_subclass(torch.Tensor)
    if type(target) is not torch.Tensor:
        target = target.as_subclass(torch.Tensor)
    if not input.is_floating_point():
        raise TypeError(f"input must be a floating point tensor (logits or probabilities), got {input.dtype}.")
    min_ndim = 2 if allow_no_spatial else 3
    if input.ndim < min_ndim:
        layout = "(B, C) or (B, C, *spatial)" if allow_no_spatial else "(B, C, *spatial) with at least one spatial axis"
        raise InputShapeError(f"input must be {layout}, got shape {tuple(input.shape)}.")
    if target.ndim != input.ndim or target.shape[0] != input.shape[0] or target.shape[2:] != input.shape[2:]:
        raise InputShapeError(
            f"target shape {tuple(target.shape)} does not match input shape {tuple(input.shape)}: expected "
            f"(B, 1, *spatial) index labels or (B, C, *spatial) one-hot with B={input.shape[0]} and "
            f"spatial={tuple(input.shape[2:])}. A (B, *spatial) label needs a channel axis: target.unsqueeze(1)."
        )
    if input.numel() == 0:
        raise InputShapeError(
            f"input {tuple(input.shape)} is empty (B={input.shape[0]}, an axis of length 0): a loss needs at least "
            "one sample and one voxel. An empty batch usually comes from a data loader whose last batch is empty "
            "or a sampler that found no patch: skip it before the loss, or use drop_last=True."
        )
    n_ch, t_ch = input.shape[1], target.shape[1]
    if t_ch not in (1, n_ch):
        raise InputShapeError(
            f"target has {t_ch} channels but input has {n_ch}: give index labels (B, 1, ...) or a one-hot target "
            f"with {n_ch} channels (input {tuple(input.shape)}, target {tuple(target.shape)})."
        )
    if other_act is not None:
        input = other_act(input)
    act = "sigmoid" if sigmoid else "softmax" if softmax else "none"
    if act == "softmax" and n_ch == 1:
        warnings.warn("single channel prediction, `softmax=True` ignored.", stacklevel=3)
        act = "none"
    if to_onehot_y and n_ch == 1:
        warnings.warn("single channel prediction, `to_onehot_y=True` ignored.", stacklevel=3)
    is_index = n_ch > 1 and t_ch == 1
    if is_index and to_onehot_y is False:
        raise InputShapeError(
            f"target has 1 channel but input has {n_ch}: for index labels (B, 1, ...) pass to_onehot_y=True, "
            f"or give a one-hot target with {n_ch} channels (input {tuple(input.shape)}, target {tuple(target.shape)})."
        )
    if to_onehot_y and n_ch > 1 and t_ch != 1:
        raise InputShapeError(
            f"to_onehot_y=True expects index labels with 1 channel, got a target with {t_ch} channels "
            f"{tuple(target.shape)}: it already looks one-hot, so pass to_onehot_y=False."
        )
    if target.dtype == torch.bool:
        target = target.to(torch.uint8)
    b = input.shape[0]
    x = input.reshape(b, n_ch, -1)
    checks = dict(
        probabilities=probabilities and act == "none" and other_act is None,
        is_index=is_index,
        ignore_index=ignore_index,
        act=act,
        soft_label=soft_label,
    )
    if is_index:
        t = target.reshape(b, 1, -1)
        if validate:
            _value_checks(x, t, valid=None, **checks)
        valid = (t != ignore_index) if ignore_index is not None else None
        t = t.long()
        if valid is not None:
            t = torch.where(valid, t, 0)
    else:
        t = target.reshape(b, t_ch, -1)
        if not t.is_floating_point():
            t = t.to(x.dtype if x.dtype == torch.float64 else torch.float32)
        valid = None
        if ignore_index is not None:
            if t_ch == 1:
                valid = t != ignore_index
            elif 0 <= ignore_index < t_ch:
                valid = t[:, ignore_index : ignore_index + 1] == 0
            else:
                valid = t.sum(1, keepdim=True) > 0
        if validate:
            checked = t if valid is None or t_ch > 1 else torch.where(valid, t, 0)
            _value_checks(x, checked, valid=valid, **checks)
        if valid is not None and t_ch == 1:
            t = torch.where(valid, t, 0)
    return Prepared(x=x, act=act, target=t, is_index=is_index, valid=valid, spatial=tuple(input.shape[2:]))


_EPS_LOG = 1e-7


def as_class_logits(prep: Prepared, cls: str) -> Prepared:
    """Re-express the input as logits over mutually exclusive classes (softmax gives the probabilities):
    a single sigmoid channel becomes [background, foreground]; probabilities become their logarithms."""
    x, t, c = prep.x, prep.target, prep.num_classes
    if prep.act == "sigmoid" and c > 1:
        raise ValueError(
            f"{cls} needs mutually exclusive classes: use softmax=True with {c} channels, or one channel with "
            "sigmoid=True for a binary task (overlapping sigmoid channels have no single true class)."
        )
    if c == 1:
        if prep.act == "sigmoid":
            x = torch.cat([torch.zeros_like(x), x], 1)
        else:
            p = x.clamp(_EPS_LOG, 1 - _EPS_LOG)
            x = torch.cat([torch.log1p(-p), torch.log(p)], 1)
        t = torch.cat([1 - t, t], 1)
    elif prep.act == "none":
        x = torch.log(x.clamp_min(_EPS_LOG))
    return Prepared(x, "softmax", t, prep.is_index, prep.valid, prep.spatial)
