"""``OneHot`` / ``OneHotd``: index labels -> one-hot channels, or overlapping region channels; and back:
``RegionsToLabelsd`` paints binarised region channels into one label map (for saving predictions).

The output (C, *spatial) is what the losses take as a target with ``to_onehot_y=False``. For the
multi-label (sigmoid) BraTS set-up with labels 1 necrotic core, 2 oedema, 3 enhancing tumour,
``regions=[[1, 2, 3], [1, 3], [3]]`` gives whole tumour, tumour core and enhancing tumour, in that
order. Each region is the union of the listed label values, channels in the order given; check your
dataset's label meanings (original BraTS uses 4 for enhancing, MSD Task01 uses 1 for oedema).

Note for cropping: ``RandCropByPosNegLabeld`` counts a voxel as positive when *any* channel of its
``label_key`` is non-zero, so a one-hot label with a background channel makes every voxel positive.
Crop with the index label (``OneHotd(..., output_keys="label_onehot")`` keeps it) or one-hot after cropping.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from ._common import (
    as_torch,
    check_channel_first,
    check_label_values,
    class_masks,
    describe,
    output_keys_for,
    torch_dtype,
    unique_values,
    wrap_like,
)

__all__ = ["OneHot", "OneHotd", "RegionsToLabelsd"]


class OneHot(Transform):
    """Index labels (1, *spatial) -> float channels (C, *spatial).

    Args:
        num_classes: C for plain one-hot: channel k = (label == k), k = 0..C-1 (background included).
            With ``regions``, optional: declares the allowed label values 0..num_classes-1.
        regions: overlapping region channels for multi-label tasks: channel i = label in ``regions[i]``
            (union of the listed values). Allowed label values are then 0 plus every listed value
            (or ``range(num_classes)`` when given), so an unexpected value (e.g. BraTS 4 vs 3) is an error
            instead of silently falling out of every region.
        dtype: output dtype (torch dtype or name), default ``torch.float32``.

    Raises ``ValueError`` naming the file and the values when labels are out of range or fractional,
    and when the input already has several channels.

    Raises:
        ValueError: at construction, neither ``num_classes`` nor ``regions`` given, ``num_classes`` not a
            positive int, ``regions`` empty or a string or holding an empty region or a string, or a region
            value outside ``0 .. num_classes-1``. At call time, a label that is not channel-first
            ``(C, H, W)`` / ``(C, H, W, D)``, has more than one channel, or holds fractional values or values
            outside the allowed ones.
        TypeError: ``dtype`` is not a torch / NumPy dtype or dtype name.
    """

    def __init__(
        self,
        num_classes: int | None = None,
        regions: Sequence[Sequence[int]] | None = None,
        dtype: str | torch.dtype | np.dtype | type = torch.float32,
    ) -> None:
        name = type(self).__name__
        if regions is None and num_classes is None:
            raise ValueError(f"{name}: give num_classes= (one-hot) or regions=[[...], ...] (region channels)")
        if num_classes is not None and (
            isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1
        ):
            raise ValueError(f"{name}: num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = None if num_classes is None else int(num_classes)
        if regions is not None:
            if (
                isinstance(regions, (str, bytes))
                or not len(regions)
                or any(isinstance(r, (str, bytes)) or not len(r) for r in regions)
            ):
                raise ValueError(f"{name}: regions must be a list of non-empty lists of label values, got {regions!r}")
            regions = [sorted({int(v) for v in r}) for r in regions]
            if self.num_classes is not None:
                out = sorted({v for r in regions for v in r if not 0 <= v < self.num_classes})
                if out:
                    raise ValueError(
                        f"{name}: regions list values {out} outside 0..{self.num_classes - 1} (num_classes)"
                    )
                self.allowed = list(range(self.num_classes))
            else:
                self.allowed = sorted({0} | {v for r in regions for v in r})
        else:
            self.allowed = list(range(self.num_classes))
        self.regions = regions
        self.dtype = torch_dtype(dtype)

    def __call__(self, label: np.ndarray | torch.Tensor, name: str | None = None) -> np.ndarray | torch.Tensor:
        """One-hot (or region) channels of one case's index label.

        Args:
            label: index labels ``(1, *spatial)`` with 2 or 3 spatial dims (whole numbers, any dtype).
            name: how error messages name the label; ``None`` uses the MetaTensor's ``meta["filename_or_obj"]``,
                else ``"<in-memory label>"``.

        Returns:
            ``(C, *spatial)`` in ``dtype`` (float32 by default; 0/1 values), ``C = num_classes`` for plain one-hot
            or ``len(regions)`` for region channels; the same container type as ``label`` (a MetaTensor keeps
            its meta and affine, a tensor its device).
        """
        name = name or describe(label)
        check_channel_first(label, "label", name)
        if label.shape[0] != 1:
            raise ValueError(
                f"{type(self).__name__}: {name} has shape {tuple(label.shape)}; expected index labels with one channel "
                "(1, *spatial). If it is already one-hot, drop OneHotd; if the channel dim is missing or misplaced, "
                "use EnsureChannelFirstd."
            )
        if self.regions is None:
            out = class_masks(label, self.num_classes, name, type(self).__name__)
        else:
            t = as_torch(label)
            check_label_values(unique_values(t), self.allowed, name)
            lab = t[0]
            out = torch.stack([torch.isin(lab, torch.tensor(r, device=lab.device).to(lab.dtype)) for r in self.regions])
        return wrap_like(out.to(self.dtype), label)


class OneHotd(MapTransform):
    """Dictionary version of :class:`OneHot`.

    Args:
        keys: index-label keys.
        num_classes: C for plain one-hot, channel k = (label == k), background included; with ``regions``,
            optional: the allowed label values ``0 .. num_classes-1`` (as in ``OneHot``).
        regions: region channels instead, channel i = label in ``regions[i]``, e.g. ``[[1, 2, 3], [1, 3], [3]]``.
        dtype: output dtype (torch dtype or name), default ``torch.float32``.
        output_keys: where to write the channels (one per key); default ``None`` replaces the label.
        allow_missing_keys: skip missing keys instead of raising.

    Raises:
        ValueError: at construction, empty ``keys``, ``output_keys`` not giving one key per key, or the invalid
            arguments listed in ``OneHot``; at call time, the label errors of ``OneHot`` (shape, values), naming
            the key and the file.
        TypeError: ``dtype`` is not a torch / NumPy dtype or dtype name.
        KeyError: a key in ``keys`` is missing from the data and ``allow_missing_keys`` is ``False``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        num_classes: int | None = None,
        regions: Sequence[Sequence[int]] | None = None,
        dtype: str | torch.dtype | np.dtype | type = torch.float32,
        output_keys: KeysCollection | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = OneHot(num_classes=num_classes, regions=regions, dtype=dtype)
        self.output_keys = output_keys_for(self.keys, output_keys, None, type(self).__name__)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """One-hot encode the labels of one case.

        Args:
            data: one case, each key an index label ``(1, *spatial)``.

        Returns:
            A shallow copy of ``data`` with the ``(C, *spatial)`` channels of ``OneHot`` under the output keys
            (replacing the labels by default); the other entries are the same objects.
        """
        d = dict(data)
        for key, out_key in self.key_iterator(d, self.output_keys):
            d[out_key] = self.transform(d[key], name=describe(d[key], d, key))
        return d


class RegionsToLabelsd(MapTransform):
    """Binarised region channels ``(R, *spatial)`` -> one label map ``(1, *spatial)`` (for saving predictions).

    Each region is painted with its *own* label: its values that no smaller nested region holds
    (TC [1, 3], WT [1, 2, 3], ET [3] -> WT paints 2, TC paints 1, ET paints 3), largest region first, so the
    nested structure is kept and a voxel gets the label of the smallest region containing it.

    Args:
        keys: keys of the region channels ``(R, *spatial)`` (probabilities or 0/1; a channel counts where it is
            above 0.5), e.g. the binarised sigmoid output of a BraTS model.
        regions: the label values of each channel, in channel order, as given to ``OneHotd(regions=...)``,
            e.g. ``[[1, 2, 3], [1, 3], [3]]``.
        allow_missing_keys: skip missing keys instead of raising.

    Raises:
        ValueError: at construction, empty ``keys``, or a region value that is a non-numeric string.
        KeyError: a key in ``keys`` is missing from the data and ``allow_missing_keys`` is ``False``.
        IndexError: an input has fewer channels than ``regions`` has entries.
    """

    def __init__(
        self, keys: KeysCollection, regions: Sequence[Sequence[int]], allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        regs = [sorted({int(v) for v in r}) for r in regions]
        order = sorted(range(len(regs)), key=lambda i: -len(regs[i]))
        self.paint: list[tuple[int, int]] = []
        for i in order:
            smaller = set().union(
                *[
                    set(regs[j])
                    for j in range(len(regs))
                    if j != i and len(regs[j]) < len(regs[i]) and set(regs[j]) <= set(regs[i])
                ]
            )
            own = [v for v in regs[i] if v not in smaller] or regs[i]
            self.paint.append((i, min(own)))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Paint the region channels of one case into label maps.

        Args:
            data: one case, each key holding region channels ``(R, *spatial)`` (tensor, MetaTensor or ndarray,
                no batch dim).

        Returns:
            A shallow copy of ``data`` with each key replaced by a label map ``(1, *spatial)`` of the input's
            container type and dtype (0 background, otherwise the painted label value); the other entries are
            the same objects.
        """
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            out = torch.zeros_like(x[:1]) if isinstance(x, torch.Tensor) else np.zeros_like(x[:1])
            for ch, value in self.paint:
                out[0][x[ch] > 0.5] = value
            d[key] = out
        return d
