"""``SignedDistanceMap`` / ``SignedDistanceMapd``: per-class distance maps for boundary and Hausdorff losses.

Definition (exact)
------------------
For class k let ``F`` be its foreground voxels and ``B`` its *boundary voxels*: the voxels of ``F``
with at least one face neighbour (2*ndim neighbours) outside ``F``. The edge of the array is not a
boundary (an object cut by the field of view has no surface there). With ``d(x, B)`` the Euclidean
distance, in physical units, from the centre of voxel x to the nearest centre of a boundary voxel::

    signed:   phi_k(x) = -d(x, B)  for x in F      (<= 0 inside, 0 on B)
              phi_k(x) = +d(x, B)  for x not in F  (> 0 outside)
    unsigned: phi_k(x) =  d(x, B)                  (distance to the boundary on both sides)

Outside the object ``d(x, B)`` equals the distance to the nearest foreground voxel (the nearest
foreground voxel of a background voxel is always a boundary voxel), i.e. ``edt(~F, sampling)`` -- the
outside part of Kervadec et al.'s map. Inside, Kervadec et al. use ``edt(F) - 1`` voxel (distance to
the nearest background voxel minus one), which is 0 on the boundary only for isotropic voxels; the
distance to ``B`` keeps the boundary at exactly 0 with any spacing and satisfies
``edt(F) - max(spacing) <= d(x, B) < edt(F)``, so both definitions agree within one voxel. One EDT per
class (of ``~B``) computes it, instead of two.

``convention="reference"`` gives the published maps instead, exactly: signed ``edt(~F)`` outside and
``-(edt(F) - 1)`` inside (Kervadec et al.'s code and MONAI's ``BoundaryLoss``; the 1 is subtracted in physical
units whatever the spacing), unsigned ``edt(~F)`` outside and ``edt(F)`` inside (Karimi & Salcudean's
``dt_fg + dt_bg`` and MONAI's ``HausdorffDTLoss``). With unit spacing the signed maps agree on every voxel
whose nearest background voxel lies along an axis, and differ by less than one voxel elsewhere; the
unsigned reference map is larger inside by ``edt(F) - d(x, B)``, between 0 and 1 voxel.

* Signed map: boundary loss ``mean(softmax_k * phi_k)`` (Kervadec et al., "Boundary loss for highly
  unbalanced segmentation", MIDL 2019 / MedIA 2021).
* Unsigned map: the ground-truth distance term of the Hausdorff-distance loss
  ``mean((p - g)^2 * (d_G^alpha + d_P^alpha))`` (Karimi & Salcudean, "Reducing the Hausdorff distance in
  medical image segmentation with convolutional neural networks", IEEE TMI 2019), who use
  ``dt_fg + dt_bg``: the distance to the object boundary inside and outside.

A class with no boundary voxel -- absent from the case, or filling the whole volume -- gets an all-zero
map: no surface exists to measure from, and a zero map makes its boundary / HD-DT term exactly zero
(finite, no NaN), which is also what the reference boundary-loss code does for absent classes. Its
region term (e.g. Dice, which the boundary loss is always combined with) still penalises false
positives.

Units: distances are in physical units (e.g. mm). ``spacing=`` wins; otherwise the spacing is the
column norms of ``affine[:ndim, :ndim]`` of a MetaTensor; a plain tensor/array has unit spacing.

Pipeline: compute maps on the whole volume, *before* random cropping (a crop would move the
boundary to the crop edge and distances would be wrong), and list the map keys in the crop
transform's ``keys`` so they are cropped with the image and label. See :mod:`monai_losses_ext.transforms`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from scipy import ndimage

from ._common import as_torch, class_masks, describe, output_keys_for, spacing_of, wrap_like

__all__ = [
    "BackendUnavailableError",
    "SignedDistanceMap",
    "SignedDistanceMapd",
    "distance_to_boundary",
    "inner_boundary",
    "resolve_backend",
]

_BACKENDS = ("auto", "scipy", "cupy")


class BackendUnavailableError(ValueError, ImportError):
    """``backend="cupy"`` was requested but neither cuCIM nor CuPy's EDT can be imported."""


def _gpu_edt() -> Callable | None:
    """cuCIM's ``distance_transform_edt`` or CuPy's (``cupyx.scipy.ndimage``, CuPy >= 13); None if missing."""
    for mod in ("cucim.core.operations.morphology", "cupyx.scipy.ndimage"):
        try:
            fn = getattr(importlib.import_module(mod), "distance_transform_edt", None)
        except Exception:  # ImportError, or CUDA missing at import time
            fn = None
        if fn is not None:
            return fn
    return None


def resolve_backend(backend: str, on_cuda: bool) -> str:
    """``"scipy"`` or ``"cupy"`` for a label on CUDA (``on_cuda``) or not.

    ``"auto"``: cupy when a GPU EDT (cuCIM or CuPy) is importable and the label is on CUDA, else scipy.
    ``"cupy"``: raises :class:`BackendUnavailableError` when no GPU EDT is installed (a CPU label is then
    copied to the current GPU).

    Args:
        backend: the requested backend, ``"auto"``, ``"scipy"`` or ``"cupy"``.
        on_cuda: whether the label lies on a CUDA device (only ``"auto"`` looks at it).

    Returns:
        ``"scipy"`` or ``"cupy"``, the backend to pass to :func:`distance_to_boundary`.

    Raises:
        ValueError: ``backend`` is not one of ``"auto"``, ``"scipy"``, ``"cupy"``.
        BackendUnavailableError: ``backend="cupy"`` and neither cuCIM nor CuPy's EDT can be imported.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"backend={backend!r}; choose one of {_BACKENDS}")
    if backend == "scipy":
        return "scipy"
    available = _gpu_edt() is not None
    if backend == "cupy":
        if not available:
            raise BackendUnavailableError(
                "backend='cupy' needs cuCIM (cucim.core.operations.morphology.distance_transform_edt) or CuPy >= 13 "
                "(cupyx.scipy.ndimage.distance_transform_edt), and neither can be imported: install cupy-cuda12x "
                "(or cucim-cu12), or use backend='scipy' / 'auto'"
            )
        return "cupy"
    return "cupy" if (available and on_cuda) else "scipy"


def inner_boundary(fg: torch.Tensor) -> torch.Tensor:
    """Foreground voxels with at least one face neighbour outside ``fg`` (array edges do not count).

    Args:
        fg: a boolean mask ``(*spatial)``.

    Returns:
        The boundary voxels, a boolean mask of the same shape and device.
    """
    interior = fg.clone()
    for ax in range(fg.ndim):
        lo = [slice(None)] * fg.ndim
        hi = [slice(None)] * fg.ndim
        lo[ax], hi[ax] = slice(None, -1), slice(1, None)
        interior[tuple(lo)] &= fg[tuple(hi)]
        interior[tuple(hi)] &= fg[tuple(lo)]
    return fg & ~interior


def _edt(not_boundary: torch.Tensor, spacing: tuple[float, ...], backend: str) -> torch.Tensor:
    """Distance from every voxel to the nearest zero of ``not_boundary`` (float32, on the input's device)."""
    if backend == "cupy":
        import cupy as cp  # noqa: PLC0415 - optional dependency

        x = not_boundary.to(torch.uint8)  # uint8: bool is not exchanged by every DLPack version
        x = x if x.is_cuda else x.cuda()
        d = _gpu_edt()(cp.from_dlpack(x.contiguous()), sampling=spacing)
        return torch.from_dlpack(d.astype(cp.float32)).to(not_boundary.device)
    d = ndimage.distance_transform_edt(not_boundary.cpu().numpy(), sampling=spacing)
    return torch.from_numpy(d.astype(np.float32)).to(not_boundary.device)


def distance_to_boundary(
    fg: torch.Tensor,
    spacing: Sequence[float] | None = None,
    signed: bool = True,
    backend: str = "scipy",
    convention: str = "boundary",
) -> torch.Tensor:
    """The map of one binary mask (*spatial) as defined in the module docstring (float32).

    ``backend`` must already be resolved ("scipy" or "cupy"), see :func:`resolve_backend`.

    Args:
        fg: the mask ``(*spatial)`` of one class (non-zero = foreground), any number of spatial dims.
        spacing: voxel size per axis (one value per dim of ``fg``, physical units); ``None`` = 1 (voxels).
        signed: ``True`` for the signed map (negative inside), ``False`` for the unsigned distance to the
            boundary.
        backend: ``"scipy"`` or ``"cupy"``; any value other than ``"cupy"`` runs SciPy.
        convention: ``"boundary"``: the distance to the boundary voxels on both sides; ``"reference"``: the
            published maps from two EDTs (module docstring).

    Returns:
        The float32 map ``(*spatial)`` on ``fg``'s device, in the units of ``spacing``; all zeros when the mask
        has no boundary voxel (empty, or filling the array).

    Raises:
        RuntimeError: ``spacing`` does not have one value per dim of ``fg`` (raised by SciPy's EDT, when the mask
            has a boundary).
    """
    fg = fg.bool()
    spacing = tuple(spacing) if spacing is not None else (1.0,) * fg.ndim
    b = inner_boundary(fg)
    if not bool(b.any()):  # absent class or class filling the volume: no surface
        return torch.zeros(fg.shape, dtype=torch.float32, device=fg.device)
    if convention == "reference":
        outside, inside = _edt(~fg, spacing, backend), _edt(fg, spacing, backend)
        return torch.where(fg, -(inside - 1), outside) if signed else torch.where(fg, inside, outside)
    d = _edt(~b, spacing, backend)
    return torch.where(fg, -d, d) if signed else d


class SignedDistanceMap(Transform):
    """One case's label -> (C, *spatial) float32 per-class distance maps (see module docstring).

    Args:
        num_classes: needed for index labels (1, *spatial): one map per class 0..C-1 (background
            included, to line up with the network's channels). ``num_classes=1`` treats a one-channel
            input as a binary mask. One-hot input (C, *spatial) needs none.
        mode: ``"signed"`` (boundary loss, negative inside) or ``"unsigned"`` (distance to the boundary,
            Hausdorff-DT loss).
        spacing: voxel size per axis (or one number); wins over the MetaTensor affine.
        normalize: divide each class map by its max ``|phi|`` (so it lies in [-1, 1]); all-zero maps stay 0.
        backend: ``"auto"`` | ``"scipy"`` | ``"cupy"`` for the EDT (see :func:`resolve_backend`).
        convention: ``"boundary"`` (default: the distance to the boundary voxels, 0 on the boundary with any
            spacing) or ``"reference"`` (Kervadec et al.'s / Karimi's maps, as MONAI's losses compute them).

    Raises:
        ValueError: at construction, a ``mode`` other than ``"signed"`` / ``"unsigned"``, an unknown
            ``backend`` or ``convention``. At call time, a label that is not channel-first ``(C, H, W)`` /
            ``(C, H, W, D)``; index labels ``(1, *spatial)`` without ``num_classes``, or holding fractional values
            or values outside ``0 .. num_classes-1`` (``{0, 1}`` for ``num_classes=1``); one-hot labels whose
            channel count is not ``num_classes``; or a ``spacing`` that is not one positive number or one per
            spatial axis.
        BackendUnavailableError: at construction, ``backend="cupy"`` while neither cuCIM nor CuPy's EDT can be
            imported (it is also a ``ValueError`` and an ``ImportError``).
    """

    def __init__(
        self,
        num_classes: int | None = None,
        mode: str = "signed",
        spacing: float | Sequence[float] | None = None,
        normalize: bool = False,
        backend: str = "auto",
        convention: str = "boundary",
    ) -> None:
        if mode not in ("signed", "unsigned"):
            raise ValueError(f"mode={mode!r}; choose 'signed' (boundary loss) or 'unsigned' (Hausdorff-DT loss)")
        if convention not in ("boundary", "reference"):
            raise ValueError(f"convention={convention!r}; choose 'boundary' or 'reference' (the published maps)")
        if backend not in _BACKENDS:
            raise ValueError(f"backend={backend!r}; choose one of {_BACKENDS}")
        if backend == "cupy":
            resolve_backend(backend, on_cuda=True)  # fail at construction when it cannot work
        self.num_classes = num_classes
        self.mode = mode
        self.spacing = spacing
        self.normalize = bool(normalize)
        self.backend = backend
        self.convention = convention

    def __call__(self, label: np.ndarray | torch.Tensor, name: str | None = None) -> np.ndarray | torch.Tensor:
        """Distance maps of one case's label.

        Args:
            label: index labels ``(1, *spatial)`` (needs ``num_classes``) or one-hot / multi-label channels
                ``(C, *spatial)`` (binarised at 0.5), with 2 or 3 spatial dims.
            name: how error messages name the label; ``None`` uses the MetaTensor's ``meta["filename_or_obj"]``,
                else ``"<in-memory label>"``.

        Returns:
            float32 maps ``(C, *spatial)``, one per class (``C = num_classes`` for index labels, else the input's
            channels), in physical units (or in ``[-1, 1]`` with ``normalize=True``); the same container type as
            ``label`` (a MetaTensor keeps its meta and affine, a tensor its device).
        """
        name = name or describe(label)
        masks = class_masks(label, self.num_classes, name, type(self).__name__)
        spacing = spacing_of(label, self.spacing, masks.ndim - 1)
        backend = resolve_backend(self.backend, as_torch(label).is_cuda)
        out = torch.stack(
            [distance_to_boundary(m, spacing, self.mode == "signed", backend, self.convention) for m in masks]
        )
        if self.normalize:
            peak = out.abs().flatten(1).amax(1).clamp_min(torch.finfo(torch.float32).tiny)
            out = out / peak.view(-1, *([1] * (out.ndim - 1)))
        return wrap_like(out, label)


class SignedDistanceMapd(MapTransform):
    """Dictionary version of :class:`SignedDistanceMap`; writes the maps under new keys.

    Args:
        keys: label keys.
        num_classes: the number of classes C (background included), needed for index labels ``(1, *spatial)``;
            ``1`` treats a one-channel label as a binary mask; one-hot labels need none.
        mode: ``"signed"`` (boundary loss, negative inside) or ``"unsigned"`` (Hausdorff-DT loss).
        spacing: voxel size per axis (or one number); wins over the MetaTensor affine.
        normalize: divide each class map by its max ``|phi|`` (so it lies in [-1, 1]).
        backend: ``"auto"`` | ``"scipy"`` | ``"cupy"`` for the EDT (as in ``SignedDistanceMap``).
        convention: ``"boundary"`` or ``"reference"`` (as in ``SignedDistanceMap``).
        output_keys: one per key; default ``f"{key}_sdf"`` (signed) or ``f"{key}_dt"`` (unsigned).
        allow_missing_keys: skip missing keys instead of raising.

    Raises:
        ValueError: at construction, empty ``keys``, ``output_keys`` not giving one key per key, a bad ``mode``
            or ``backend``; at call time, the label errors of ``SignedDistanceMap`` (shape, values, channels,
            spacing), naming the key and the file.
        BackendUnavailableError: at construction, ``backend="cupy"`` without cuCIM or CuPy.
        KeyError: a key in ``keys`` is missing from the data and ``allow_missing_keys`` is ``False``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        num_classes: int | None = None,
        mode: str = "signed",
        spacing: float | Sequence[float] | None = None,
        normalize: bool = False,
        backend: str = "auto",
        output_keys: KeysCollection | None = None,
        allow_missing_keys: bool = False,
        convention: str = "boundary",
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = SignedDistanceMap(num_classes, mode, spacing, normalize, backend, convention)
        postfix = "_sdf" if mode == "signed" else "_dt"
        self.output_keys = output_keys_for(self.keys, output_keys, postfix, type(self).__name__)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Compute the distance maps of one case.

        Args:
            data: one case, each key a label ``(1, *spatial)`` or ``(C, *spatial)``.

        Returns:
            A shallow copy of ``data`` with the float32 ``(C, *spatial)`` maps under the output keys (new keys by
            default, so the labels stay); the other entries are the same objects.
        """
        d = dict(data)
        for key, out_key in self.key_iterator(d, self.output_keys):
            d[out_key] = self.transform(d[key], name=describe(d[key], d, key))
        return d
