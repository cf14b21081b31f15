"""``UNetWeightMap`` / ``UNetWeightMapd``: the pixel-wise loss weight map of the U-Net paper.

Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation",
MICCAI 2015, eq. (2)::

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

Exact definition used here
--------------------------
* Classes: index labels (1, *spatial), or the argmax of one-hot labels (C, *spatial); class 0 is
  background.
* ``w_c`` (class balance), per case: with ``class_weights="balanced"`` (default),
  ``w_c(x) = N / (K * N_k)`` for x of class k, where N is the number of voxels, N_k those of class k
  and K the number of classes present in the case -- inverse frequency, scaled so that the mean of
  ``w_c`` over the volume is exactly 1. ``class_weights=None`` gives ``w_c = 1``; a sequence gives fixed
  weights ``w_c(x) = class_weights[k]`` (e.g. dataset-level frequencies).
* Objects: connected components of the foreground (label != 0) with the given ``connectivity``, or
  the instance ids of ``instances`` when given (e.g. from :class:`LesionInstancesd`, so touching
  lesions stay separate objects).
* ``d1(x)``, ``d2(x)``: Euclidean distance from voxel x to the nearest and to the second-nearest object
  (distance to an object = to its nearest voxel), in physical units (``spacing=`` wins, else the
  MetaTensor affine, else voxels). ``w0`` and ``sigma`` are in the same units: the paper's
  ``w0=10, sigma=5`` pixels means 5 mm on 1 mm data; pass ``spacing=1`` to work in voxels.
* The border term is added on background voxels only (as in the paper, where it separates touching
  cells by weighting the thin background gaps between them); foreground voxels get ``w_c`` alone.
* Fewer than 2 objects: there is no second object, ``d2 = inf`` and the border term is 0 everywhere,
  so ``w = w_c`` (the limit of a second object infinitely far away).
* Truncation: distances to an object are computed in its bounding box grown by
  ``R = sigma * sqrt(2 ln 1e7)`` (~5.7 sigma); beyond it ``exp(-R^2 / (2 sigma^2)) = 1e-7``, so the border
  term differs from the exact formula by at most ``1e-7 * w0`` (below float32 resolution of ``w``).
  This keeps the cost at one small EDT per object instead of one full-volume EDT per object.

Output: (1, *spatial) float32, the ``weight`` of the losses' weight-map cross-entropy. Compute it on
the whole volume before random cropping (see :mod:`monai_losses_ext.transforms`). CPU (SciPy) only.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from scipy import ndimage

from ._common import (
    class_index,
    describe,
    fmt_values,
    output_keys_for,
    spacing_of,
    structure_for,
    to_numpy,
    wrap_like,
)

__all__ = ["UNetWeightMap", "UNetWeightMapd", "border_distances"]

_TAIL = 1e-7  # the border term is truncated where exp(-(d1 + d2)^2 / (2 sigma^2)) < _TAIL


def border_distances(
    objects: np.ndarray, spacing: Sequence[float], reach: float = math.inf
) -> tuple[np.ndarray, np.ndarray]:
    """``(d1, d2)``: distance to the nearest and second-nearest object of an instance map.

    ``objects`` (*spatial) holds 0 for background and an id > 0 per object. Distances larger than
    ``reach`` may be reported as ``inf`` (each object's EDT is computed in its bounding box grown by
    ``reach``); with ``reach=inf`` both are exact everywhere. Voxels inside an object get distance 0 to it.

    Args:
        objects: integer instance map ``(*spatial)``, 0 background and ids 1..K (ids without voxels are skipped).
        spacing: voxel size per axis (one value per dim of ``objects``), physical units.
        reach: the distance, in the units of ``spacing``, up to which distances must be exact; default: all.

    Returns:
        ``(d1, d2)``, float64 arrays of ``objects``' shape, ``inf`` where there is no (second) object within
        reach.
    """
    d1 = np.full(objects.shape, np.inf)
    d2 = np.full(objects.shape, np.inf)
    pad = [objects.shape[i] if math.isinf(reach) else int(math.ceil(reach / s)) for i, s in enumerate(spacing)]
    for k, box in enumerate(ndimage.find_objects(objects), start=1):
        if box is None:
            continue
        box = tuple(slice(max(sl.start - p, 0), min(sl.stop + p, n)) for sl, p, n in zip(box, pad, objects.shape))
        dk = ndimage.distance_transform_edt(objects[box] != k, sampling=spacing)
        a, b = d1[box], d2[box]  # views
        np.minimum(b, np.maximum(a, dk), out=b)
        np.minimum(a, dk, out=a)
    return d1, d2


class UNetWeightMap(Transform):
    """Label (1, *spatial) index or (C, *spatial) one-hot -> (1, *spatial) float32 U-Net weight map.

    Args:
        w0: border weight (paper: 10).
        sigma: border width, in physical units (paper: 5 pixels); see the module docstring.
        class_weights: ``"balanced"`` (per case ``N / (K N_k)``), ``None`` (all 1) or one weight per class.
        connectivity: neighbourhood for the connected components that define objects: 1 = faces ..
            ndim = all neighbours (26 in 3D); ``None`` = ndim. Ignored when instances are given.
        spacing: voxel size per axis (or one number); wins over the MetaTensor affine.

    Raises:
        ValueError: at construction, ``w0`` negative or not finite, ``sigma`` not a finite number > 0, or
            ``class_weights`` a string other than ``"balanced"``. At call time, a label that is not channel-first
            ``(C, H, W)`` / ``(C, H, W, D)``; index labels holding fractional, non-finite or negative values; a
            ``class_weights`` sequence with no weight for a class present in the label; and, when ``w0 > 0``,
            ``instances`` whose shape is not ``(1, *spatial)`` of the label, a ``connectivity`` outside
            ``1 .. ndim`` (objects from connected components) or a ``spacing`` that is not one positive number or
            one per spatial axis.
    """

    def __init__(
        self,
        w0: float = 10.0,
        sigma: float = 5.0,
        class_weights: str | Sequence[float] | None = "balanced",
        connectivity: int | None = None,
        spacing: float | Sequence[float] | None = None,
    ) -> None:
        name = type(self).__name__
        if w0 < 0 or not math.isfinite(w0):
            raise ValueError(f"{name}: w0 must be a finite number >= 0, got {w0!r}")
        if not sigma > 0 or not math.isfinite(sigma):
            raise ValueError(f"{name}: sigma must be > 0 (physical units, e.g. mm), got {sigma!r}")
        if isinstance(class_weights, str) and class_weights != "balanced":
            raise ValueError(f"{name}: class_weights={class_weights!r}; use 'balanced', None or a list of weights")
        self.w0, self.sigma = float(w0), float(sigma)
        self.class_weights = class_weights
        self.connectivity = connectivity
        self.spacing = spacing

    def _class_term(self, cls: np.ndarray, name: str) -> np.ndarray:
        if self.class_weights is None:
            return np.ones(cls.shape, dtype=np.float64)
        counts = np.bincount(cls.ravel())
        if isinstance(self.class_weights, str):  # "balanced"
            present = counts > 0
            table = np.zeros(counts.size)
            table[present] = cls.size / (present.sum() * counts[present])
        else:
            table = np.asarray(self.class_weights, dtype=np.float64)
            if table.size < counts.size:
                raise ValueError(
                    f"{type(self).__name__}: {name} holds classes {fmt_values(np.flatnonzero(counts))} but "
                    f"class_weights has {table.size} entries; give one weight per class 0..{counts.size - 1}"
                )
        return table[cls]

    def __call__(
        self,
        label: np.ndarray | torch.Tensor,
        instances: np.ndarray | torch.Tensor | None = None,
        name: str | None = None,
    ) -> np.ndarray | torch.Tensor:
        """Weight map of ``label``; ``instances`` (1, *spatial) optional object ids (0 = background).

        Args:
            label: index labels ``(1, *spatial)`` (whole numbers >= 0) or one-hot channels ``(C, *spatial)``
                (argmax taken), with 2 or 3 spatial dims.
            instances: object ids ``(1, *spatial)`` on the label's grid (e.g. from ``LesionInstances``), 0 for
                background; ``None`` takes the connected components of the foreground. Unused when ``w0 == 0``.
            name: how error messages name the label; ``None`` uses the MetaTensor's ``meta["filename_or_obj"]``,
                else ``"<in-memory label>"``.

        Returns:
            The float32 weight map ``(1, *spatial)``, in the same container type as ``label`` (a MetaTensor keeps
            its meta and affine, a tensor its device).
        """
        name = name or describe(label)
        cls = class_index(label, name)
        w = self._class_term(cls, name)
        if self.w0 > 0:
            if instances is not None:
                objects = to_numpy(instances)
                if objects.shape[1:] != cls.shape or objects.shape[0] != 1:
                    raise ValueError(
                        f"{type(self).__name__}: instances of shape {tuple(objects.shape)} do not fit {name} with "
                        f"spatial shape {cls.shape}; expected (1, *spatial) ids from LesionInstancesd on the same label"
                    )
                objects = objects[0].astype(np.int64, copy=False)
            else:
                st = structure_for(cls.ndim, self.connectivity, type(self).__name__)
                objects, _ = ndimage.label(cls != 0, structure=st)
            spacing = spacing_of(label, self.spacing, cls.ndim)
            reach = self.sigma * math.sqrt(2.0 * math.log(1.0 / _TAIL))
            d1, d2 = border_distances(objects, spacing, reach)
            border = self.w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * self.sigma**2))  # exp(-inf) = 0
            w += np.where(cls == 0, border, 0.0)
        return wrap_like(w.astype(np.float32)[None], label)


class UNetWeightMapd(MapTransform):
    """Dictionary version of :class:`UNetWeightMap`; writes the map under a new key.

    Args:
        keys: label keys.
        w0: border weight (paper: 10); 0 gives the class-balance term alone.
        sigma: border width, in physical units (paper: 5 pixels).
        class_weights: ``"balanced"`` (per case ``N / (K N_k)``), ``None`` (all 1) or one weight per class.
        connectivity: neighbourhood of the connected components that define objects, 1 = faces .. ndim = all
            neighbours; ``None`` = ndim. Ignored with ``instance_key``.
        spacing: voxel size per axis (or one number); wins over the MetaTensor affine.
        instance_key: optional key of instance ids (e.g. ``"label_instances"`` from LesionInstancesd) that
            define the objects; default: connected components of the foreground.
        output_keys: one per key; default ``f"{key}_weight"``.
        allow_missing_keys: skip missing keys instead of raising.

    Raises:
        ValueError: at construction, empty ``keys``, ``output_keys`` not giving one key per key, or the invalid
            ``w0`` / ``sigma`` / ``class_weights`` of ``UNetWeightMap``; at call time, ``instance_key`` missing
            from the data, or the errors of ``UNetWeightMap`` (label, class weights, instances, connectivity,
            spacing), naming the key and the file.
        KeyError: a key in ``keys`` is missing from the data and ``allow_missing_keys`` is ``False``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        w0: float = 10.0,
        sigma: float = 5.0,
        class_weights: str | Sequence[float] | None = "balanced",
        connectivity: int | None = None,
        spacing: float | Sequence[float] | None = None,
        instance_key: Hashable | None = None,
        output_keys: KeysCollection | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = UNetWeightMap(w0, sigma, class_weights, connectivity, spacing)
        self.instance_key = instance_key
        self.output_keys = output_keys_for(self.keys, output_keys, "_weight", type(self).__name__)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Compute the weight maps of one case.

        Args:
            data: one case, each key a label ``(1, *spatial)`` or ``(C, *spatial)`` (and ``instance_key``'s ids
                when set).

        Returns:
            A shallow copy of ``data`` with the float32 ``(1, *spatial)`` weight maps under the output keys (new
            keys by default, so the labels stay); the other entries are the same objects.
        """
        d = dict(data)
        if self.instance_key is not None and self.instance_key not in d:
            raise ValueError(
                f"{type(self).__name__}: instance_key '{self.instance_key}' is not in the data (keys: {list(d)}); "
                "run LesionInstancesd first or set instance_key=None"
            )
        inst = d[self.instance_key] if self.instance_key is not None else None
        for key, out_key in self.key_iterator(d, self.output_keys):
            d[out_key] = self.transform(d[key], instances=inst, name=describe(d[key], d, key))
        return d
