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
    """

    def __init__(
        self,
        num_classes: int | None = None,
        regions: Sequence[Sequence[int]] | None = None,
        dtype: Any = torch.float32,
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

    def __call__(self, label: Any, name: str | None = None) -> Any:
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
        num_classes, regions, dtype: see :class:`OneHot`.
        output_keys: where to write the channels (one per key); default ``None`` replaces the label.
        allow_missing_keys: skip missing keys instead of raising.
    """

    def __init__(
        self,
        keys: KeysCollection,
        num_classes: int | None = None,
        regions: Sequence[Sequence[int]] | None = None,
        dtype: Any = torch.float32,
        output_keys: KeysCollection | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = OneHot(num_classes=num_classes, regions=regions, dtype=dtype)
        self.output_keys = output_keys_for(self.keys, output_keys, None, type(self).__name__)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, out_key in self.key_iterator(d, self.output_keys):
            d[out_key] = self.transform(d[key], name=describe(d[key], d, key))
        return d


class RegionsToLabelsd(MapTransform):
    """Binarised region channels ``(R, *spatial)`` -> one label map ``(1, *spatial)`` (for saving predictions).

    Each region is painted with its *own* label: its values that no smaller nested region holds
    (TC [1, 3], WT [1, 2, 3], ET [3] -> WT paints 2, TC paints 1, ET paints 3), largest region first, so the
    nested structure is kept and a voxel gets the label of the smallest region containing it.
    """

    def __init__(self, keys: KeysCollection, regions: Sequence[Sequence[int]], allow_missing_keys: bool = False):
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
        d = dict(data)
        for key in self.key_iterator(d):
            x = d[key]
            out = torch.zeros_like(x[:1]) if isinstance(x, torch.Tensor) else np.zeros_like(x[:1])
            for ch, value in self.paint:
                out[0][x[ch] > 0.5] = value
            d[key] = out
        return d
