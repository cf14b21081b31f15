"""Segmentation losses: overlap (region), per-voxel (pixel), compound and Lovasz."""

from ._inputs import InputShapeError
from .compound import (
    AsymmetricUnifiedFocalLoss,
    ComboLoss,
    CompoundLoss,
    DiceCELoss,
    DiceFocalLoss,
    DiceTopKLoss,
    ExpLogLoss,
    GeneralizedDiceFocalLoss,
    UnifiedFocalLoss,
)
from .geometry import (
    BlobLoss,
    BoundaryAlphaScheduler,
    BoundaryLoss,
    DiceBoundaryLoss,
    HausdorffDTLoss,
    LogHausdorffDTLoss,
    WeightMapCELoss,
)
from .lovasz import LovaszSoftmaxLoss
from .pixel import FocalLoss, TopKCELoss, WeightedBCELoss, WeightedCELoss
from .region import (
    DiceLoss,
    FocalTverskyLoss,
    GeneralizedDiceLoss,
    JaccardLoss,
    LogCoshDiceLoss,
    MaskedDiceLoss,
    SensitivitySpecificityLoss,
    TverskyLoss,
)

__all__ = [
    "InputShapeError",
    "DiceLoss",
    "JaccardLoss",
    "MaskedDiceLoss",
    "TverskyLoss",
    "FocalTverskyLoss",
    "GeneralizedDiceLoss",
    "LogCoshDiceLoss",
    "SensitivitySpecificityLoss",
    "WeightedCELoss",
    "WeightedBCELoss",
    "FocalLoss",
    "TopKCELoss",
    "DiceCELoss",
    "DiceFocalLoss",
    "GeneralizedDiceFocalLoss",
    "DiceTopKLoss",
    "ComboLoss",
    "UnifiedFocalLoss",
    "AsymmetricUnifiedFocalLoss",
    "ExpLogLoss",
    "CompoundLoss",
    "LovaszSoftmaxLoss",
    "WeightMapCELoss",
    "BoundaryLoss",
    "DiceBoundaryLoss",
    "BoundaryAlphaScheduler",
    "HausdorffDTLoss",
    "LogHausdorffDTLoss",
    "BlobLoss",
]
