"""Helpers that keep the MONAI bundle configs in ``bundles/`` thin.

Everything here is referenced from the bundle configs by its dotted path, e.g.
``"$monai_losses_ext.bundle_utils.msd_datalist(@dataset_dir, 'train')"`` or
``{"_target_": "monai_losses_ext.bundle_utils.StopOnNaNLoss"}``:

=============================  ====================================================================
``msd_datalist``               the cases of an MSD-style ``dataset.json`` (phantoms or a real MSD
                               task), split deterministically into train / validation / test; a clear
                               error (with the phantom command) when the dataset is missing
``tumour_regions``             TC / WT / ET region label sets read from ``dataset.json`` label names
                               (BraTS numbering for the phantoms, MSD Task01 numbering for real data)
``build_loss``                 a loss by registry name (``"focal_tversky"``) or dotted path
                               (``"monai.losses.DiceLoss"``) with the input format as defaults
``loss_map_keys`` /            the label maps a loss's ``forward`` asks for (distance / weight maps,
``label_map_transforms``       lesion instances) and the transforms that compute them, empty when the
                               loss needs none
``LossWithMaps``               passes those maps from the batch to the loss inside ``SupervisedTrainer``
``StopOnNaNLoss``              stops training on a non-finite loss with a message that says what to do
``ResumeFromCheckpoint``       restores network / optimizer / trainer from the newest epoch checkpoint
``TrainHistory`` /             per-epoch loss and validation metrics as JSON lines (for plots)
``ValHistory``
``CaseMetricsWriter``          per-case CSV (Dice, HD95, lesion-wise sensitivity / F1) and summary
``RegionsToLabelsd``           region channels (TC, WT, ET) back to one label map for saving
``check_metadata``             the required fields of a bundle's ``metadata.json``
=============================  ====================================================================
"""

from __future__ import annotations

import contextlib
import csv
import glob
import importlib
import inspect
import json
import logging
import math
import os
import re
import time
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

from . import metrics as _metrics
from .registry import get_loss
from .transforms import LesionInstancesd, OneHotd, SignedDistanceMapd, UNetWeightMapd

__all__ = [
    "DatasetNotFoundError",
    "resolve_device",
    "msd_datalist",
    "tumour_regions",
    "build_loss",
    "loss_map_keys",
    "label_map_transforms",
    "LabelMaps",
    "LossWithMaps",
    "StopOnNaNLoss",
    "ValidateLastEpoch",
    "LossEpochHook",
    "ResumeFromCheckpoint",
    "EngineCheckpointSaver",
    "TrainHistory",
    "ValHistory",
    "CaseMetricsWriter",
    "RegionsToLabelsd",
    "select_channel",
    "check_metadata",
    "REQUIRED_METADATA",
]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- device
def resolve_device(distributed: bool = False) -> torch.device:
    """CUDA when available (``cuda:LOCAL_RANK`` under torchrun with ``distributed``), CPU otherwise."""
    if torch.cuda.is_available():
        if distributed:
            return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
        return torch.device("cuda")
    return torch.device("cpu")


# -------------------------------------------------------------------------------------------- dataset
class DatasetNotFoundError(FileNotFoundError):
    """The dataset folder, its ``dataset.json`` or a file it lists is missing."""


_PHANTOM_HINT = (
    "Generate the synthetic phantoms with\n"
    "    python -m monai_losses_ext.phantoms --task {task} --out {dir} --num-cases 24\n"
    "or point the bundle at a real MSD-style task with --dataset_dir /path/to/Task (a folder holding "
    "dataset.json, imagesTr/ and labelsTr/{extra})."
)


def _hint(dataset_dir: str, task: str | None) -> str:
    extra = ", e.g. Task01_BrainTumour" if task == "tumour" else ""
    return _PHANTOM_HINT.format(task=task or "lesion", dir=dataset_dir, extra=extra)


def _resolve(dataset_dir: str, p: str) -> str:
    p = str(p)
    return os.path.normpath(p if os.path.isabs(p) else os.path.join(dataset_dir, p[2:] if p.startswith("./") else p))


def _load_dataset_json(dataset_dir: str, task: str | None = None) -> dict:
    dataset_dir = os.path.expanduser(str(dataset_dir))
    path = os.path.join(dataset_dir, "dataset.json")
    if not os.path.isdir(dataset_dir):
        raise DatasetNotFoundError(f"dataset_dir '{dataset_dir}' does not exist.\n" + _hint(dataset_dir, task))
    if not os.path.isfile(path):
        raise DatasetNotFoundError(f"'{path}' not found: dataset_dir holds no MSD-style dataset.\n" + _hint(dataset_dir, task))
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"'{path}' is not valid JSON ({e}); regenerate it or fix the file") from e


def msd_datalist(
    dataset_dir: str,
    split: str = "train",
    val_fraction: float = 0.2,
    num_val: int | None = None,
    max_cases: int | None = None,
    task: str | None = None,
) -> list[dict[str, str]]:
    """Cases of an MSD-style dataset (``dataset.json`` with ``training`` = [{image, label}] and ``test`` = [path]).

    The ``training`` cases are split deterministically, in the order of ``dataset.json``: the last
    ``num_val`` (default ``max(1, round(val_fraction * n))``) are the held-out **validation** cases, the
    others are **train**. ``split``: ``"train"``, ``"validation"``, ``"all"`` (every labelled case) or
    ``"test"`` (the unlabelled ``test`` images, ``[{"image": path}]``; the validation images when the
    dataset lists none). ``max_cases`` keeps the first N cases of the labelled list before splitting (for
    quick runs). Paths are resolved against ``dataset_dir``; a missing folder, ``dataset.json`` or listed
    file raises :class:`DatasetNotFoundError` whose message says how to generate the phantoms.
    """
    if split not in ("train", "validation", "all", "test"):
        raise ValueError(f"split={split!r}: use 'train', 'validation', 'all' or 'test'")
    dataset_dir = os.path.expanduser(str(dataset_dir))
    meta = _load_dataset_json(dataset_dir, task)
    cases = []
    for item in meta.get("training", []):
        if not isinstance(item, Mapping) or "image" not in item or "label" not in item:
            raise ValueError(f"{dataset_dir}/dataset.json: each 'training' entry needs 'image' and 'label', got {item!r}")
        cases.append({"image": _resolve(dataset_dir, item["image"]), "label": _resolve(dataset_dir, item["label"])})
    if max_cases:
        cases = cases[: int(max_cases)]
    n_val = int(num_val) if num_val is not None else max(1, int(round(val_fraction * len(cases))))
    if split in ("train", "validation", "all") and len(cases) < (1 if split == "all" else n_val + 1):
        raise DatasetNotFoundError(
            f"{dataset_dir}/dataset.json lists {len(cases)} labelled case(s); split '{split}' needs at least "
            f"{n_val + 1} ({n_val} held out for validation).\n" + _hint(dataset_dir, task)
        )
    if split == "train":
        out = cases[: len(cases) - n_val]
    elif split == "validation":
        out = cases[len(cases) - n_val :]
    elif split == "all":
        out = cases
    else:
        tests = [{"image": _resolve(dataset_dir, p if isinstance(p, str) else p["image"])} for p in meta.get("test", [])]
        out = tests or [{"image": c["image"]} for c in cases[len(cases) - n_val :]]
    missing = [p for c in out for p in c.values() if not os.path.exists(p)]
    if missing:
        raise DatasetNotFoundError(
            f"{len(missing)} file(s) listed in {dataset_dir}/dataset.json do not exist, e.g. '{missing[0]}'.\n"
            + _hint(dataset_dir, task)
        )
    return out


def tumour_regions(dataset_dir: str, order: Sequence[str] = ("TC", "WT", "ET")) -> list[list[int]]:
    """Label values of the BraTS regions, read from the ``labels`` names of ``dataset.json``.

    WT (whole tumour) = every foreground label; ET (enhancing) = the label named *enhancing*; TC (tumour
    core) = WT without the label named *oedema/edema*. Works for the phantoms (BraTS numbering: 1 necrotic
    core, 2 oedema, 3 enhancing -> TC [1, 3], WT [1, 2, 3], ET [3]) and for MSD Task01_BrainTumour
    (1 edema, 2 non-enhancing tumour, 3 enhancing tumour -> TC [2, 3], WT [1, 2, 3], ET [3]). Without
    recognisable names the BraTS numbering is assumed.
    """
    meta = _load_dataset_json(os.path.expanduser(str(dataset_dir)), "tumour")
    labels = {int(k): str(v).lower() for k, v in (meta.get("labels") or {}).items() if str(k).lstrip("-").isdigit()}
    fg = sorted(v for v in labels if v != 0)
    oedema = [v for v in fg if "edema" in labels[v] or "oedema" in labels[v]]
    enh = [v for v in fg if "enhanc" in labels[v] and "non" not in labels[v]]
    if len(fg) < 3 or len(oedema) != 1 or len(enh) != 1:
        fg, oedema, enh = [1, 2, 3], [2], [3]
    regions = {"WT": fg, "TC": [v for v in fg if v not in oedema], "ET": enh}
    return [regions[r] for r in order]


# ----------------------------------------------------------------------------------------------- loss
def _import_dotted(path: str) -> Any:
    mod, _, attr = path.rpartition(".")
    if not mod:
        raise ValueError(f"{path!r} is not a dotted path such as 'monai.losses.DiceLoss'")
    try:
        return getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import loss {path!r}: {e}") from e


def build_loss(name: Any, defaults: Mapping[str, Any] | None = None, kwargs: Mapping[str, Any] | None = None) -> torch.nn.Module:
    """A loss from a registry name (``"dice_ce"``, ``"focal_tversky"``; see ``list_losses()``), a dotted class
    path (``"monai.losses.DiceLoss"``), a class, or a ready module (returned as is).

    ``defaults`` (the input format, e.g. ``{"softmax": True, "to_onehot_y": True}``) are passed only where the
    constructor takes them; ``kwargs`` always are (an argument the loss does not take is an error).
    """
    if isinstance(name, torch.nn.Module):
        return name
    kwargs = dict(kwargs or {})
    if isinstance(name, str) and "." not in name:
        return get_loss(name, defaults=dict(defaults or {}), **kwargs)
    cls = _import_dotted(name) if isinstance(name, str) else name
    if not callable(cls):
        raise TypeError(f"loss {name!r} is not a class or callable")
    params = inspect.signature(cls).parameters
    takes_all = any(p.kind == p.VAR_KEYWORD for p in params.values())
    args = {k: v for k, v in (defaults or {}).items() if takes_all or k in params}
    return cls(**{**args, **kwargs})


# forward keyword -> kind of map (its transform); ``distance_map`` is signed or unsigned after the loss's
# ``map_mode`` (BoundaryLoss: signed, HausdorffDTLoss: unsigned)
_MAPS: dict[str, str] = {
    "distance_map": "distance",
    "weight_map": "weight",
    "instances": "instances",
}


def _parts(loss: Any) -> list[Any]:
    """The loss, the terms of a :class:`~monai_losses_ext.CompoundLoss` and their ``boundary`` terms."""
    terms = getattr(loss, "terms", None)
    out = [loss, *(terms.values() if isinstance(terms, (Mapping, torch.nn.ModuleDict)) else [])]
    return out + [b for o in out if (b := getattr(o, "boundary", None)) is not None]


def _map_mode(loss: Any) -> str:
    """``"signed"`` / ``"unsigned"``: the distance map a loss (or its boundary term / terms) reads."""
    modes = {o.map_mode for o in _parts(loss)
             if getattr(o, "map_mode", None) in ("signed", "unsigned") and "distance_map" in _forward_kwargs(o)}  # fmt: skip
    if len(modes) > 1:
        raise ValueError(
            f"{type(loss).__name__} combines losses that read a signed distance map (boundary) and an unsigned one "
            "(Hausdorff-DT) through the same 'distance_map' keyword; compute both maps in the pipeline "
            "(SignedDistanceMapd with mode='signed' and mode='unsigned') and call the two losses yourself"
        )
    return modes.pop() if modes else "signed"


def _forward_kwargs(loss: Any) -> list[str]:
    fwd = getattr(loss, "forward", None)
    if fwd is None:
        return []
    try:
        params = inspect.signature(fwd).parameters
    except (TypeError, ValueError):
        return []
    names = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return [n for n in names[2:] if n in _MAPS]  # the first two are (input, target)


def loss_map_keys(loss: Any, label_key: str = "label") -> dict[str, str]:
    """``{forward keyword: data key}`` for the label maps ``loss.forward`` takes (``distance_map``,
    ``weight_map``, ``instances``); ``{}`` for losses that take ``(input, target)``
    only, which is every overlap / pixel loss. A :class:`~monai_losses_ext.CompoundLoss` asks for the union
    of its terms' maps."""
    names = {n for part in _parts(loss) for n in _forward_kwargs(part)}
    return {n: f"{label_key}_{n}" for n in sorted(names)}


def label_map_transforms(
    loss: Any,
    label_key: str = "label",
    num_classes: int | None = None,
    regions: Sequence[Sequence[int]] | None = None,
) -> "LabelMaps":
    """One deterministic transform computing the maps ``loss`` needs (see :func:`loss_map_keys`) on the whole
    label, before cropping; the identity when it needs none, so plain losses pay nothing. (A plain
    ``MapTransform``, not a nested ``Compose``: ``CacheDataset`` caches everything up to the first
    ``Randomizable``, and ``Compose`` is one.)

    With ``regions`` (sigmoid region training) the distance maps are computed per region channel.
    """
    keys = loss_map_keys(loss, label_key)
    if not keys:
        return LabelMaps([])
    out: list = []
    src, n = label_key, num_classes
    if regions is not None and any(_MAPS[k] == "distance" for k in keys):
        src = f"{label_key}_regions_for_maps"
        out.append(OneHotd(label_key, regions=regions, output_keys=src))
        n = None
    for kw, key in keys.items():
        kind = _MAPS[kw]
        if kind == "distance":
            out.append(SignedDistanceMapd(src, num_classes=n, mode=_map_mode(loss), output_keys=key))
        elif kind == "weight":
            out.append(UNetWeightMapd(label_key, output_keys=key))
        else:
            out.append(LesionInstancesd(label_key, output_keys=key))
    return LabelMaps(out, drop=[src] if src != label_key else [])


class LabelMaps(Transform):
    """Applies ``transforms`` in order (deterministic), then drops the ``drop`` keys."""

    def __init__(self, transforms: Sequence[Any], drop: Sequence[str] = ()) -> None:
        self.transforms = list(transforms)
        self.drop = list(drop)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for t in self.transforms:
            d = t(d)
        for k in self.drop:
            d.pop(k, None)
        return d


class LossWithMaps(torch.nn.Module):
    """Wraps a loss so ``SupervisedTrainer`` can give it the label maps of the batch.

    ``SupervisedTrainer`` calls ``loss_function(pred, label)``; maps are extra batch keys. Pass
    ``prepare_batch=wrapper.prepare_batch`` to the trainer: it returns ``(image, label)`` as MONAI's default
    does and keeps this iteration's maps (``{forward keyword: data key}``, by default
    :func:`loss_map_keys`) for the next ``forward``. With no maps it is a transparent pass-through.
    """

    def __init__(self, loss: torch.nn.Module, label_key: str = "label", map_keys: Mapping[str, str] | None = None):
        super().__init__()
        self.loss = loss
        self.map_keys = dict(loss_map_keys(loss, label_key) if map_keys is None else map_keys)
        self._maps: dict[str, torch.Tensor] = {}

    def prepare_batch(self, batchdata: Mapping, device=None, non_blocking: bool = False, **kwargs):
        from monai.engines.utils import default_prepare_batch

        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        missing = [k for k in self.map_keys.values() if k not in batchdata]
        if missing:
            raise KeyError(
                f"the loss {type(self.loss).__name__} needs the maps {missing} but the batch has only "
                f"{sorted(map(str, batchdata))}; add label_map_transforms(loss) to the preprocessing and list the "
                "map keys in the crop transform's keys"
            )
        self._maps = {kw: batchdata[key].to(device=device, non_blocking=non_blocking) for kw, key in self.map_keys.items()}
        return image, label

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.map_keys and not self._maps:
            raise RuntimeError("LossWithMaps: no maps prepared; give the trainer prepare_batch=<this>.prepare_batch")
        return self.loss(input, target, **self._maps)


# ------------------------------------------------------------------------------------------- handlers
def _loss_value(output: Any) -> float | None:
    if isinstance(output, Mapping):
        v = output.get("loss")
    elif isinstance(output, Sequence) and output and isinstance(output[0], Mapping):
        v = output[0].get("loss")
    else:
        v = output
    if isinstance(v, torch.Tensor):
        return float(v.detach().float().mean().cpu())
    return None if v is None else float(v)


class LossEpochHook:
    """Trainer handler for losses with an epoch schedule (``DiceBoundaryLoss.step_alpha``: the boundary term's
    weight grows epoch by epoch): steps it after every epoch, and on a resumed run replays the schedule up to
    the restored epoch. A no-op for every other loss, so bundle configs can always list it."""

    def __init__(self, loss: Any) -> None:
        self.loss = getattr(loss, "loss", loss)  # unwrap LossWithMaps
        self.active = callable(getattr(self.loss, "step_alpha", None))

    def attach(self, engine) -> None:
        from ignite.engine import Events

        if self.active:
            engine.add_event_handler(Events.STARTED, self._started)
            engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: self.loss.step_alpha())

    def _started(self, engine) -> None:
        for _ in range(int(engine.state.epoch)):
            self.loss.step_alpha()


class ValidateLastEpoch:
    """Trainer handler: also validate after the last epoch when ``val_interval`` does not divide ``max_epochs``,
    so the best-model checkpoint always sees the final weights (``ValidationHandler`` runs every N epochs)."""

    def __init__(self, validator, interval: int = 1) -> None:
        self.validator = validator
        self.interval = max(1, int(interval))

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine) -> None:
        epoch = engine.state.epoch
        if epoch == engine.state.max_epochs and epoch % self.interval != 0:
            self.validator.run(epoch)


class StopOnNaNLoss:
    """Ignite handler: raise ``RuntimeError`` as soon as the training loss is NaN or infinite.

    The message names the epoch and iteration and says what usually causes it. Unlike ignite's
    ``TerminateOnNan`` (which ends the run quietly), the run fails, so a script or CI notices; the last
    epoch checkpoint (written before the NaN) stays usable.
    """

    def __init__(self, output_transform=None) -> None:
        self.output_transform = output_transform

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine) -> None:
        out = engine.state.output if self.output_transform is None else self.output_transform(engine.state.output)
        value = _loss_value(out)
        if value is not None and not math.isfinite(value):
            raise RuntimeError(
                f"training loss is {value} at iteration {engine.state.iteration} (epoch {engine.state.epoch}); "
                "stopping. Try a lower learning rate (--learning_rate), disable AMP (--amp false), and check the "
                "data: image intensities (NaN/inf voxels, unnormalised values) and label values "
                "(ValidateLabeld). The last epoch checkpoint was written before this iteration."
            )


def _checkpoint_epoch(path: str) -> int:
    m = re.search(r"epoch=(\d+)", os.path.basename(path))
    return int(m.group(1)) if m else -1


def latest_checkpoint(ckpt_dir: str, pattern: str = "checkpoint_epoch=*.pt") -> str | None:
    """The epoch checkpoint with the largest epoch number in ``ckpt_dir``, or None."""
    files = glob.glob(os.path.join(str(ckpt_dir), pattern))
    return max(files, key=lambda f: (_checkpoint_epoch(f), os.path.getmtime(f))) if files else None


class EngineCheckpointSaver:
    """MONAI ``CheckpointSaver`` whose ``save_dict`` also holds the engine it is attached to (under
    ``engine_key``), built at ``attach``: a bundle config cannot list ``@train#trainer`` inside the trainer's
    own handlers (circular reference). Keyword arguments are ``CheckpointSaver``'s; e.g. the "last"
    checkpoint of a resumable run: ``save_dict={"network": ..., "optimizer": ...}, save_interval=1, n_saved=1``.
    """

    def __init__(self, save_dir: str, save_dict: dict, engine_key: str = "trainer", **kwargs: Any) -> None:
        self.save_dir, self.save_dict, self.engine_key, self.kwargs = save_dir, dict(save_dict), engine_key, kwargs
        self.saver = None

    def attach(self, engine) -> None:
        from monai.handlers import CheckpointSaver

        from ignite.engine import Events

        self.saver = CheckpointSaver(self.save_dir, {**self.save_dict, self.engine_key: engine}, **self.kwargs)
        self.saver.attach(engine)
        if self.kwargs.get("save_interval") and self.kwargs.get("n_saved"):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._prune)

    def _prune(self, engine) -> None:
        """Keep only the newest ``n_saved`` epoch files, also those left by an earlier (resumed) run."""
        prefix = self.kwargs.get("file_prefix") or ""
        pattern = f"{prefix}_checkpoint_epoch=*.pt" if prefix else "checkpoint_epoch=*.pt"
        files = sorted(glob.glob(os.path.join(str(self.save_dir), pattern)), key=_checkpoint_epoch)
        for f in files[: -int(self.kwargs["n_saved"])]:
            with contextlib.suppress(FileNotFoundError):  # another rank or process removed it first
                os.remove(f)


class ResumeFromCheckpoint:
    """Ignite handler: at ``STARTED``, load the newest epoch checkpoint (``CheckpointSaver(save_interval=1,
    n_saved=1)`` writes ``checkpoint_epoch=N.pt``) into ``load_dict`` (network, optimizer, ...) plus the
    engine itself (under ``engine_key``: epoch and iteration counters) with MONAI's ``CheckpointLoader``, so an
    interrupted run continues at epoch N+1; does nothing (a fresh run) when there is none or ``enabled`` is
    false. Attach it first among the trainer handlers.
    """

    def __init__(
        self,
        ckpt_dir: str,
        load_dict: dict,
        enabled: bool = True,
        pattern: str = "checkpoint_epoch=*.pt",
        map_location: Any = None,
        engine_key: str = "trainer",
    ) -> None:
        self.ckpt_dir = ckpt_dir
        self.load_dict = dict(load_dict)
        self.engine_key = engine_key
        self.enabled = bool(enabled)
        self.pattern = pattern
        self.map_location = map_location
        self.loaded_from: str | None = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine) -> None:
        from monai.handlers import CheckpointLoader

        path = latest_checkpoint(self.ckpt_dir, self.pattern) if self.enabled else None
        if path is None:
            if self.enabled:
                engine.logger.info(f"no checkpoint in {self.ckpt_dir}: training from scratch")
            return
        epoch = _checkpoint_epoch(path)
        if engine.state.max_epochs is not None and epoch >= engine.state.max_epochs:
            engine.logger.warning(
                f"{path} already reached epoch {epoch} >= max_epochs {engine.state.max_epochs}: nothing left to "
                "train. Raise --epochs to continue training, or pass --resume false to start again."
            )
        map_location = self.map_location
        if map_location is None:
            map_location = {"cuda:0": str(engine.state.device)} if torch.cuda.is_available() else "cpu"
        load_dict = {**self.load_dict, self.engine_key: engine}
        horizons = {k: s.T_max for k, s in self.load_dict.items() if isinstance(getattr(s, "T_max", None), int)}
        CheckpointLoader(load_path=path, load_dict=load_dict, map_location=map_location)(engine)
        self.loaded_from = path
        engine.logger.info(f"resumed from {path}: continuing after epoch {engine.state.epoch}")
        for key, t_max in horizons.items():
            self._keep_horizon(engine, self.load_dict[key], t_max)

    @staticmethod
    def _keep_horizon(engine, scheduler, t_max: int) -> None:
        """A run resumed with more ``--epochs`` anneals to the new end: the checkpoint's ``T_max`` (the old
        number of epochs) is replaced by this run's, and the learning rate is set to the closed-form value of
        the new schedule at the restored epoch (otherwise the cosine would climb back after the old end)."""
        if scheduler.T_max == t_max:
            return
        old, scheduler.T_max = scheduler.T_max, t_max
        lrs = scheduler._get_closed_form_lr()
        for group, lr in zip(scheduler.optimizer.param_groups, lrs):
            group["lr"] = lr
        scheduler._last_lr = list(lrs)
        engine.logger.info(
            f"learning-rate schedule: T_max {old} from the checkpoint -> {t_max} (this run's epochs); "
            f"learning rate now {lrs[0]:.3g}"
        )


class _JsonLines:
    def __init__(self, path: str) -> None:
        self.path = str(path)

    def _write(self, record: dict) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _scalar(v: Any) -> float | None:
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu()
        return float(v) if v.numel() == 1 else None
    if isinstance(v, (int, float, np.floating, np.integer)):
        return float(v)
    return None


class TrainHistory(_JsonLines):
    """Trainer handler: appends ``{"kind": "train", "epoch", "iteration", "loss" (epoch mean), "seconds"}``
    per epoch to a JSON-lines file. A fresh run (trainer epoch 0 at start) truncates the file; a resumed run
    appends."""

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _started(self, engine) -> None:
        if engine.state.epoch == 0 and os.path.exists(self.path):
            os.remove(self.path)

    def _epoch_started(self, engine) -> None:
        self._losses: list[float] = []
        self._t0 = time.perf_counter()

    def _iteration(self, engine) -> None:
        v = _loss_value(engine.state.output)
        if v is not None:
            self._losses.append(v)

    def _epoch_completed(self, engine) -> None:
        losses = getattr(self, "_losses", [])
        self._write({
            "kind": "train", "epoch": engine.state.epoch, "iteration": engine.state.iteration,
            "loss": float(np.mean(losses)) if losses else None,
            "seconds": round(time.perf_counter() - getattr(self, "_t0", time.perf_counter()), 3),
        })  # fmt: skip


class ValHistory(_JsonLines):
    """Evaluator handler: appends ``{"kind": "val", "epoch", <scalar metrics>}`` after each validation run
    (``ValidationHandler`` sets the evaluator's epoch to the trainer's)."""

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine) -> None:
        rec: dict[str, Any] = {"kind": "val", "epoch": engine.state.epoch}
        for k, v in engine.state.metrics.items():
            s = _scalar(v)
            if s is not None:
                rec[k] = s
        self._write(rec)


def read_history(path: str) -> tuple[list[dict], list[dict]]:
    """``(train records, validation records)`` of a :class:`TrainHistory` / :class:`ValHistory` file."""
    train, val = [], []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    (train if r.get("kind") == "train" else val).append(r)
    return train, val


def _case_name(item: Mapping, keys: Sequence[str] = ("label", "pred", "image")) -> str:
    for k in keys:
        v = item.get(k)
        meta = getattr(v, "meta", None)
        if meta and meta.get("filename_or_obj"):
            name = os.path.basename(str(meta["filename_or_obj"]))
            return re.sub(r"\.nii(\.gz)?$", "", name)
    return "case"


def _spacing(item: Mapping, key: str) -> list[float] | None:
    v = item.get(key)
    aff = getattr(v, "affine", None)
    if aff is None:
        return None
    a = np.asarray(aff.detach().cpu() if isinstance(aff, torch.Tensor) else aff, dtype=float)
    nd = a.shape[0] - 1
    return [float(s) for s in np.sqrt((a[:nd, :nd] ** 2).sum(0))]


class CaseMetricsWriter:
    """Evaluator handler: per-case metrics (see :func:`monai_losses_ext.metrics.case_metrics`) into
    ``<output_dir>/metrics.csv`` (one row per case) and the mean / std / median / n / n_nan per column into
    ``summary.csv`` and ``summary.json``; the summary is also logged.

    Args:
        output_dir: folder for the files.
        names: one name per scored channel (``["lesion"]``, ``["TC", "WT", "ET"]``).
        skip_first: channel 0 is background (one-hot classes) and is not scored.
        pred_key, label_key: binarised ``(C, *spatial)`` items of the decollated evaluator output.
        connectivity: lesion connectivity (None: all neighbours).
    """

    def __init__(
        self,
        output_dir: str,
        names: Sequence[str],
        skip_first: bool = True,
        pred_key: str = "pred",
        label_key: str = "label",
        connectivity: int | None = None,
    ) -> None:
        self.output_dir = str(output_dir)
        self.names = list(names)
        self.skip_first = skip_first
        self.pred_key, self.label_key = pred_key, label_key
        self.connectivity = connectivity
        self.rows: list[dict] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, lambda e: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _iteration(self, engine) -> None:
        items = engine.state.output
        if isinstance(items, Mapping):  # decollate=False: split the batch
            from monai.data import decollate_batch

            items = decollate_batch(items)
        for item in items:
            row = {"case": _case_name(item)}
            row.update(
                _metrics.case_metrics(
                    item[self.pred_key], item[self.label_key], self.names, spacing=_spacing(item, self.label_key),
                    connectivity=self.connectivity, skip_first=self.skip_first,
                )
            )  # fmt: skip
            self.rows.append(row)

    def _completed(self, engine) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        if not self.rows:
            engine.logger.warning("CaseMetricsWriter: no case evaluated")
            return
        cols = list(self.rows[0])
        with open(os.path.join(self.output_dir, "metrics.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows(self.rows)
        summary = _metrics.summarize(self.rows)
        with open(os.path.join(self.output_dir, "summary.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["metric", "mean", "std", "median", "n", "n_nan"])
            for k, s in summary.items():
                w.writerow([k, s["mean"], s["std"], s["median"], s["n"], s["n_nan"]])
        with open(os.path.join(self.output_dir, "summary.json"), "w") as f:
            json.dump({"cases": len(self.rows), "metrics": summary}, f, indent=2)
        lines = [f"{k:32s} {s['mean']:.4f} ± {s['std']:.4f} (n={s['n']})" for k, s in summary.items()]
        engine.logger.info(f"per-case metrics of {len(self.rows)} cases -> {self.output_dir}/metrics.csv\n" + "\n".join(lines))


# --------------------------------------------------------------------------------------------- transforms
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
            smaller = set().union(*[set(regs[j]) for j in range(len(regs)) if j != i and len(regs[j]) < len(regs[i]) and set(regs[j]) <= set(regs[i])])
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


def select_channel(keys: Sequence[str] = ("pred", "label"), channel: int = 0):
    """Output transform for ignite metrics: ``(pred[:, c:c+1], label[:, c:c+1])`` of a decollated output, for
    per-class / per-region Dice next to the mean."""

    def _f(output):
        items = output if isinstance(output, Sequence) and not isinstance(output, Mapping) else [output]
        res = []
        for k in keys:
            res.append([it[k][channel : channel + 1] for it in items])
        return tuple(res)

    return _f


# ----------------------------------------------------------------------------------------------- metadata
REQUIRED_METADATA = (
    "schema", "version", "changelog", "monai_version", "pytorch_version", "numpy_version",
    "required_packages_version", "task", "description", "authors", "copyright", "network_data_format",
)  # fmt: skip
_REQUIRED_TENSOR = ("type", "format", "num_channels", "spatial_shape", "dtype", "value_range")


def check_metadata(meta: str | Mapping) -> list[str]:
    """Problems of a bundle ``metadata.json`` (path or dict) against the fields MONAI's bundle schema requires
    (offline: ``python -m monai.bundle verify_metadata`` downloads the schema). Empty list: fine."""
    if not isinstance(meta, Mapping):
        with open(meta) as f:
            meta = json.load(f)
    problems = [f"missing '{k}'" for k in REQUIRED_METADATA if k not in meta]
    if "version" in meta and str(meta["version"]) not in meta.get("changelog", {}):
        problems.append(f"changelog has no entry for version {meta['version']}")
    ndf = meta.get("network_data_format", {})
    for part in ("inputs", "outputs"):
        if not isinstance(ndf.get(part), Mapping) or not ndf.get(part):
            problems.append(f"network_data_format.{part} missing or empty")
            continue
        for name, spec in ndf[part].items():
            problems += [f"network_data_format.{part}.{name}: missing '{k}'" for k in _REQUIRED_TENSOR if k not in spec]
    return problems
