"""``LesionInstances`` / ``LesionInstancesd``: connected-component lesion instances.

Output (1, *spatial) integer ids: 0 background, 1..K one per lesion, numbered consecutively in the
order ``scipy.ndimage.label`` finds them (raster order of each component's first voxel); with
``per_class=True`` class 1's lesions come first, then class 2's, and so on. Used by instance-aware
losses (blob loss: Kofler et al., "blob loss: instance imbalance aware loss functions for semantic
segmentation", IPMI 2023) and as the objects of :class:`UNetWeightMap`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from scipy import ndimage

from ._common import class_index, describe, output_keys_for, structure_for, torch_dtype, wrap_like

__all__ = ["LesionInstances", "LesionInstancesd"]


class LesionInstances(Transform):
    """Label (1, *spatial) index or (C, *spatial) one-hot (argmax, channel 0 = background) -> instance ids.

    Args:
        connectivity: 1 = face neighbours (6 in 3D) .. ndim = all neighbours (26 in 3D, the convention of
            lesion-wise evaluation such as BraTS 2023); ``None`` = ndim.
        per_class: False: components of the foreground union (label != 0), so touching lesions of
            different classes form one instance; True: components of each class separately.
        classes: label values that count as lesion (default: every value != 0).
        min_size: components with fewer voxels are dropped (set to 0) before numbering.
        dtype: output dtype, default ``torch.int64``.

    Raises:
        ValueError: at construction, ``min_size`` not a whole number >= 0 or ``connectivity`` not a whole number
            >= 1. At call time, a label that is not channel-first ``(C, H, W)`` / ``(C, H, W, D)``, index labels
            holding fractional, non-finite or negative values, or a ``connectivity`` above the number of spatial
            dims.
        TypeError: ``dtype`` is not a torch / NumPy dtype or dtype name.
    """

    def __init__(
        self,
        connectivity: int | None = None,
        per_class: bool = False,
        classes: Sequence[int] | None = None,
        min_size: int = 0,
        dtype: str | torch.dtype | np.dtype | type = torch.int64,
    ) -> None:
        if isinstance(min_size, bool) or int(min_size) != min_size or min_size < 0:
            raise ValueError(f"{type(self).__name__}: min_size must be a whole number of voxels >= 0, got {min_size!r}")
        if connectivity is not None and (
            isinstance(connectivity, bool) or int(connectivity) != connectivity or connectivity < 1
        ):
            raise ValueError(
                f"{type(self).__name__}: connectivity={connectivity!r}; use 1 (faces) .. ndim (all neighbours) or None"
            )
        self.connectivity = connectivity
        self.per_class = bool(per_class)
        self.classes = None if classes is None else sorted({int(c) for c in classes})
        self.min_size = int(min_size)
        self.dtype = torch_dtype(dtype)

    def _components(self, mask: np.ndarray, st: np.ndarray) -> tuple[np.ndarray, int]:
        ids, n = ndimage.label(mask, structure=st)
        if self.min_size > 1 and n:
            sizes = np.bincount(ids.ravel(), minlength=n + 1)
            keep = sizes >= self.min_size
            keep[0] = False
            relabel = np.zeros(n + 1, dtype=np.int64)
            relabel[keep] = np.arange(1, int(keep.sum()) + 1)
            ids, n = relabel[ids], int(keep.sum())
        return ids, n

    def __call__(self, label: np.ndarray | torch.Tensor, name: str | None = None) -> np.ndarray | torch.Tensor:
        """Number the lesions of one case.

        Args:
            label: index labels ``(1, *spatial)`` (whole numbers >= 0) or one-hot channels ``(C, *spatial)``
                (argmax taken), with 2 or 3 spatial dims.
            name: how error messages name the label; ``None`` uses the MetaTensor's ``meta["filename_or_obj"]``,
                else ``"<in-memory label>"``.

        Returns:
            Instance ids ``(1, *spatial)`` in ``dtype`` (int64 by default): 0 background, 1..K one per lesion; the
            same container type as ``label`` (a MetaTensor keeps its meta and affine, a tensor its device).
        """
        name = name or describe(label)
        cls = class_index(label, name)
        st = structure_for(cls.ndim, self.connectivity, type(self).__name__)
        lesion = cls != 0 if self.classes is None else np.isin(cls, self.classes)
        if not self.per_class:
            out, _ = self._components(lesion, st)
        else:
            out = np.zeros(cls.shape, dtype=np.int64)
            total = 0
            for k in np.unique(cls[lesion]):
                ids, n = self._components(cls == k, st)
                out[ids > 0] = ids[ids > 0] + total
                total += n
        return wrap_like(torch.from_numpy(np.asarray(out, dtype=np.int64)[None]).to(self.dtype), label)


class LesionInstancesd(MapTransform):
    """Dictionary version of :class:`LesionInstances`; writes ids under ``f"{key}_instances"`` by default.

    Args:
        keys: label keys.
        connectivity: 1 = face neighbours (6 in 3D) .. ndim = all neighbours (26 in 3D); ``None`` = ndim.
        per_class: ``False``: components of the foreground union; ``True``: components of each class separately.
        classes: label values that count as lesion (default: every value != 0).
        min_size: components with fewer voxels are dropped before numbering.
        dtype: output dtype, default ``torch.int64``.
        output_keys: one per key; default ``f"{key}_instances"``.
        allow_missing_keys: skip missing keys instead of raising.

    Raises:
        ValueError: at construction, empty ``keys``, ``output_keys`` not giving one key per key, or a bad
            ``min_size`` / ``connectivity``; at call time, the label errors of ``LesionInstances``, naming the key
            and the file.
        TypeError: ``dtype`` is not a torch / NumPy dtype or dtype name.
        KeyError: a key in ``keys`` is missing from the data and ``allow_missing_keys`` is ``False``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        connectivity: int | None = None,
        per_class: bool = False,
        classes: Sequence[int] | None = None,
        min_size: int = 0,
        dtype: str | torch.dtype | np.dtype | type = torch.int64,
        output_keys: KeysCollection | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = LesionInstances(connectivity, per_class, classes, min_size, dtype)
        self.output_keys = output_keys_for(self.keys, output_keys, "_instances", type(self).__name__)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Number the lesions of one case.

        Args:
            data: one case, each key a label ``(1, *spatial)`` or ``(C, *spatial)``.

        Returns:
            A shallow copy of ``data`` with the ``(1, *spatial)`` instance ids under the output keys (new keys by
            default, so the labels stay); the other entries are the same objects.
        """
        d = dict(data)
        for key, out_key in self.key_iterator(d, self.output_keys):
            d[out_key] = self.transform(d[key], name=describe(d[key], d, key))
        return d
