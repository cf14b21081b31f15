"""Segmentation losses: overlap (region), per-voxel (pixel), compound and Lovasz."""

from .compound import ComboLoss, CompoundLoss, DiceCELoss, DiceFocalLoss, DiceTopKLoss, ExpLogLoss, UnifiedFocalLoss
from .geometry import BlobLoss, BoundaryAlphaScheduler, BoundaryLoss, DiceBoundaryLoss, HausdorffDTLoss, WeightMapCELoss
from .lovasz import LovaszSoftmaxLoss
from .pixel import FocalLoss, TopKCELoss, WeightedBCELoss, WeightedCELoss
from .region import (
    DiceLoss,
    FocalTverskyLoss,
    GeneralizedDiceLoss,
    JaccardLoss,
    LogCoshDiceLoss,
    SensitivitySpecificityLoss,
    TverskyLoss,
)

__all__ = [
    "DiceLoss",
    "JaccardLoss",
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
    "DiceTopKLoss",
    "ComboLoss",
    "UnifiedFocalLoss",
    "ExpLogLoss",
    "CompoundLoss",
    "LovaszSoftmaxLoss",
    "WeightMapCELoss",
    "BoundaryLoss",
    "DiceBoundaryLoss",
    "BoundaryAlphaScheduler",
    "HausdorffDTLoss",
    "BlobLoss",
]
