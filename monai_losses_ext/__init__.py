"""monai-losses-ext: segmentation losses and label transforms for MONAI.

Drop-in replacements for MONAI's DiceLoss, MaskedDiceLoss, TverskyLoss, GeneralizedDiceLoss, FocalLoss,
DiceCELoss, DiceFocalLoss, GeneralizedDiceFocalLoss, AsymmetricUnifiedFocalLoss and LogHausdorffDTLoss (same
arguments and values, fused, lower memory, exact under DDP with ``distributed=True``), plus the losses MONAI
lacks. Pick one by name with ``get_loss``.
"""

from .losses import *  # noqa: F401,F403
from .losses import __all__ as _losses
from .registry import get_loss, list_losses, register_loss

__version__ = "0.1.0"

_NAMES = {
    "dice": "DiceLoss",
    "jaccard": "JaccardLoss",
    "masked_dice": "MaskedDiceLoss",
    "tversky": "TverskyLoss",
    "focal_tversky": "FocalTverskyLoss",
    "generalized_dice": "GeneralizedDiceLoss",
    "log_cosh_dice": "LogCoshDiceLoss",
    "sensitivity_specificity": "SensitivitySpecificityLoss",
    "weighted_ce": "WeightedCELoss",
    "weighted_bce": "WeightedBCELoss",
    "focal": "FocalLoss",
    "topk_ce": "TopKCELoss",
    "dice_ce": "DiceCELoss",
    "dice_focal": "DiceFocalLoss",
    "generalized_dice_focal": "GeneralizedDiceFocalLoss",
    "dice_topk": "DiceTopKLoss",
    "combo": "ComboLoss",
    "unified_focal": "UnifiedFocalLoss",
    "asymmetric_unified_focal": "AsymmetricUnifiedFocalLoss",
    "exp_log": "ExpLogLoss",
    "compound": "CompoundLoss",
    "lovasz_softmax": "LovaszSoftmaxLoss",
    "weight_map_ce": "WeightMapCELoss",
    "boundary": "BoundaryLoss",
    "dice_boundary": "DiceBoundaryLoss",
    "hausdorff_dt": "HausdorffDTLoss",
    "log_hausdorff_dt": "LogHausdorffDTLoss",
    "blob": "BlobLoss",
}
for _name, _cls in _NAMES.items():
    register_loss(_name, globals()[_cls])

__all__ = [*_losses, "get_loss", "list_losses", "register_loss"]
