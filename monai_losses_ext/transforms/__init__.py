"""MONAI transforms that prepare labels for the losses, once per case, on data-loader workers.

Each transform has an array version (``monai.transforms.Transform``, input one case channel-first
``(C, *spatial)``, no batch dim) and a dictionary version (``MapTransform`` with ``keys`` and
``allow_missing_keys``). A MetaTensor input gives a MetaTensor output carrying the input's meta,
affine and applied operations; a tensor gives a tensor, an ndarray an ndarray. All constructor
arguments are plain values, so the transforms can be written in MONAI bundle configs.

| Transform | What it does |
| --- | --- |
| ``ValidateLabel(d)`` | check values (``num_classes=`` / ``labels=``, integers), shape vs image; ``remap={255: 1}`` |
| ``OneHot(d)`` | index labels -> one-hot ``(C, *spatial)``, or region channels |
| ``SignedDistanceMap(d)`` | per-class signed (boundary) or unsigned (HD-DT) maps ``(C, *spatial)``, physical units |
| ``UNetWeightMap(d)`` | U-Net border + class-balance weight map ``(1, *spatial)`` |
| ``LesionInstances(d)`` | connected-component lesion ids ``(1, *spatial)`` |
| ``ValidateSpacingd`` | voxel spacing of an image within a sane range (header units, broken affines) |
| ``ForegroundMask`` | the head / brain foreground found from the image (Otsu), skull-stripped or not |
| ``ForegroundNormalize(d)`` | per-channel percentile clipping + z-score over that foreground |

Pipeline rules
--------------
* Validate first: ``ValidateLabeld`` right after loading (and after ``Spacingd(mode="nearest")`` /
  ``Orientationd``), so a bad file stops with its name in the message.
* Maps are computed on the **whole volume, before random cropping**: a distance measured inside a
  crop would see the crop edge as the end of the world. They are deterministic, so a
  ``CacheDataset`` caches them (the costly part runs once per case, not once per epoch).
* The crop must carry the extra keys: list them in the crop transform's ``keys`` so image, label and
  maps are cropped at the same place, e.g.::

      Compose([
          LoadImaged(["image", "label"]), EnsureChannelFirstd(["image", "label"]),
          ValidateLabeld("label", num_classes=2, remap={255: 1}, image_key="image"),
          SignedDistanceMapd("label", num_classes=2),            # -> "label_sdf"
          UNetWeightMapd("label"),                                # -> "label_weight"
          RandCropByPosNegLabeld(["image", "label", "label_sdf", "label_weight"],
                                 label_key="label", spatial_size=(96, 96, 96)),
      ])

* One-hot labels contain a background channel that ``RandCropByPosNegLabeld`` would count as
  positive everywhere: crop on the index label and apply ``OneHotd`` after the crop (or write the
  one-hot under ``output_keys``).
* Data loaders batch the ``(C, *spatial)`` outputs to ``(B, C, *spatial)``, the layout the losses take as
  forward keyword arguments.
* Distance transforms: ``backend="auto"`` uses cuCIM/CuPy when installed and the label is on CUDA,
  SciPy otherwise; ``"scipy"`` and ``"cupy"`` force one (``"cupy"`` raises
  :class:`BackendUnavailableError` when missing).
"""

from ._common import voxel_spacing
from .distance import (
    BackendUnavailableError,
    SignedDistanceMap,
    SignedDistanceMapd,
    distance_to_boundary,
    resolve_backend,
)
from .instances import LesionInstances, LesionInstancesd
from .intensity import ForegroundMask, ForegroundNormalize, ForegroundNormalized, otsu_threshold
from .onehot import OneHot, OneHotd, RegionsToLabelsd
from .validate import ValidateLabel, ValidateLabeld, ValidateSpacingd, check_spacing
from .weightmap import UNetWeightMap, UNetWeightMapd, border_distances

__all__ = [
    "BackendUnavailableError",
    "ForegroundMask",
    "ForegroundNormalize",
    "ForegroundNormalized",
    "LesionInstances",
    "LesionInstancesd",
    "OneHot",
    "OneHotd",
    "RegionsToLabelsd",
    "SignedDistanceMap",
    "SignedDistanceMapd",
    "UNetWeightMap",
    "UNetWeightMapd",
    "ValidateLabel",
    "ValidateLabeld",
    "ValidateSpacingd",
    "check_spacing",
    "otsu_threshold",
    "voxel_spacing",
    "border_distances",
    "distance_to_boundary",
    "resolve_backend",
]
