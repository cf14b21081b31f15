"""``python -m monai_losses_ext.benchmark``: which loss for which lesion, with evidence.

Two parts (``speed``, ``quality``; both by default):

* :mod:`.speed`: every registered loss, forward+backward time and peak extra memory, against MONAI's
  equivalent and installed peers on the same tensors in one run;
* :mod:`.quality`: the lesion (or tumour) bundle trained with each loss x seed under one schedule, scored on
  held-out test cases (voxel Dice, lesion-wise F1 and sensitivity by lesion size, false-positive lesions,
  HD95) with bootstrap intervals (:mod:`.stats`) and a paired comparison against a baseline loss
  (:mod:`.report`), and each run's validation curves with the plateau rule of the loss-study protocol
  (:mod:`.curves`) and the protocol's decision rule on validation scores (:mod:`.decision`). Resumable.
"""

from .curves import plateau_check, validation_curves, write_curves
from .decision import decide_default, tumour_validation_summary, validation_summary
from .quality import PRESETS, Preset, Study
from .stats import bootstrap_ci, bootstrap_ratio_ci, paired_comparison, paired_ratio_difference

__all__ = [
    "PRESETS",
    "Preset",
    "Study",
    "bootstrap_ci",
    "bootstrap_ratio_ci",
    "decide_default",
    "paired_comparison",
    "paired_ratio_difference",
    "plateau_check",
    "tumour_validation_summary",
    "validation_curves",
    "validation_summary",
    "write_curves",
]
