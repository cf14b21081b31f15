"""What the MONAI bundles in ``bundles/`` call, one job per module. The bundle configs import only this
package (``"$monai_losses_ext.bundle.msd_datalist(...)"``, ``{"_target_": "monai_losses_ext.bundle.Checkpointer"}``).

| Module | What it holds |
| --- | --- |
| `data` | MSD-style ``dataset.json`` lists and splits, tumour regions from label names, the modality check, the device, ``CaseDataset`` (names the case and file of a failure) |
| `loss` | the loss by registry name or dotted path, the label maps its ``forward`` reads, the transforms that compute them, ``LossWithMaps`` for ``SupervisedTrainer`` |
| `handlers` | stop on divergence, validate after the last epoch, one console line per epoch, the rank-aware TensorBoard writer |
| `rundir` | the run folder: lock, writability, fresh run vs resume, the previous run moved aside |
| `checkpoint` | atomic checkpoints, resume from the newest loadable one, the best model across resumes |
| `history` | ``history.jsonl``, one record per epoch and validation, cut back on resume |
| `recipe` | the target spacing (training median, stored with the model) and the augmentation presets |
| `evaluation` | scoring predictions against the label files on their own grids (evaluate and benchmark), per-channel metric selection |
| `metadata` | the required fields of ``metadata.json`` |
| `runner` | ``python -m monai.bundle run`` in a child process (demo, benchmark, tests) |
"""  # noqa: E501 - a Markdown table row is one line

from .checkpoint import (
    BestModelSaver,
    Checkpointer,
    CheckpointError,
    atomic_save,
    atomic_write,
    atomic_write_json,
    checkpoint_epoch,
    list_checkpoints,
    load_checkpoint,
)
from .data import (
    CaseDataset,
    CaseError,
    DatasetNotFoundError,
    case_name,
    check_modalities,
    msd_datalist,
    resolve_device,
    structures_of,
    tumour_regions,
)
from .evaluation import CaseScorer, read_label, score_label_file, select_channel, summarize_scores
from .handlers import (
    EpochProgress,
    StopOnNaNLoss,
    TrainingDivergedError,
    ValidateLastEpoch,
    close_process_group,
    is_distributed,
    is_rank_zero,
    summary_writer,
)
from .history import TrainHistory, ValHistory, read_history, truncate_history
from .loss import LabelMaps, LossWithMaps, build_loss, label_map_transforms, loss_map_keys
from .metadata import METADATA_SCHEMA, REQUIRED_METADATA, check_metadata
from .recipe import (
    AUGMENTATION_DEFAULTS,
    AUGMENTATION_PRESETS,
    augmentation_settings,
    augmentations,
    crop_size,
    file_spacing,
    target_spacing,
    trained_spacing,
)
from .rundir import RunDir, RunLockedError
from .runner import bundle_command, bundle_dir, child_env, config_files, root_cause, run_bundle, shown

__all__ = [
    "AUGMENTATION_DEFAULTS",
    "AUGMENTATION_PRESETS",
    "BestModelSaver",
    "CaseDataset",
    "CaseError",
    "CaseScorer",
    "CheckpointError",
    "Checkpointer",
    "DatasetNotFoundError",
    "EpochProgress",
    "LabelMaps",
    "LossWithMaps",
    "METADATA_SCHEMA",
    "REQUIRED_METADATA",
    "RunDir",
    "RunLockedError",
    "StopOnNaNLoss",
    "TrainHistory",
    "TrainingDivergedError",
    "ValHistory",
    "ValidateLastEpoch",
    "atomic_save",
    "atomic_write",
    "atomic_write_json",
    "build_loss",
    "bundle_command",
    "bundle_dir",
    "case_name",
    "check_metadata",
    "check_modalities",
    "close_process_group",
    "is_distributed",
    "is_rank_zero",
    "checkpoint_epoch",
    "child_env",
    "config_files",
    "label_map_transforms",
    "list_checkpoints",
    "load_checkpoint",
    "loss_map_keys",
    "msd_datalist",
    "read_history",
    "resolve_device",
    "root_cause",
    "run_bundle",
    "select_channel",
    "shown",
    "summary_writer",
    "truncate_history",
    "tumour_regions",
    "augmentation_settings",
    "augmentations",
    "crop_size",
    "file_spacing",
    "read_label",
    "score_label_file",
    "structures_of",
    "summarize_scores",
    "target_spacing",
    "trained_spacing",
]
