"""Checkpoints that survive a kill: atomic writes, the newest loadable checkpoint found on resume, the best
model kept across resumes.

* :func:`atomic_save`: a temporary file in the same folder, flushed and fsynced, then renamed over the
  target (a rename replaces a symbolic link planted at the target instead of writing through it).
* ``checkpoint_epoch=N.pt`` (one per epoch, the older ones removed only once the new one is complete) holds
  the network, optimizer, LR scheduler, the trainer's epoch / iteration, the best-metric state, the state of
  every other listed object (the boundary-loss alpha schedule) and the run's arguments.
* :class:`Checkpointer` (trainer handler) restores such a checkpoint at ``STARTED`` and writes one after every
  epoch; :class:`BestModelSaver` (evaluator handler) replaces ``model.pt`` only when the key metric beats the
  best of every epoch so far, including those before a resume.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import math
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Mapping
from typing import IO, TYPE_CHECKING, Any

import torch

from .handlers import is_rank_zero

if TYPE_CHECKING:
    from ignite.engine import Engine

    from .rundir import RunDir

__all__ = [
    "CHECKPOINT_PATTERN",
    "CheckpointError",
    "atomic_save",
    "atomic_write",
    "atomic_write_json",
    "checkpoint_epoch",
    "list_checkpoints",
    "load_checkpoint",
    "Checkpointer",
    "BestModelSaver",
]

logger = logging.getLogger(__name__)
CHECKPOINT_PATTERN = "checkpoint_epoch=*.pt"
FORMAT = 1  # the layout of a checkpoint written by Checkpointer


class CheckpointError(ValueError):
    """A checkpoint cannot be read, or does not fit this run; the message names the file and the way out."""


def _fsync_dir(folder: str) -> None:
    """Make a rename in ``folder`` durable. Best effort: some file systems cannot open or fsync a directory,
    and the rename is atomic without it (only its durability across a power cut is at stake)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str, write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` through ``write(binary file)`` so that it holds either its old content or the complete
    new one: a temporary file in the same folder, flushed and fsynced, renamed over ``path``.

    The new file gets the usual permissions of a new file (``0666`` minus the umask); a symbolic link at
    ``path`` is replaced by the file, never written through. If ``write`` fails the temporary file is removed
    and ``path`` is left as it was.

    Args:
        path: the file to write; its folder must exist.
        write: called once with the temporary file, opened for binary writing; it writes the whole content.

    Raises:
        OSError: the folder cannot be written (permissions, full disk). Whatever ``write`` raises is raised
            as it is.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a checkpoint is as readable as any output
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(folder)


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` that leaves either the old file or the complete new one, never a part.

    Args:
        obj: what to save (a state dict, a checkpoint dict).
        path: the file to write (see :func:`atomic_write`).
    """
    atomic_write(str(path), lambda f: torch.save(obj, f))


def atomic_write_json(obj: Any, path: str, indent: int = 2) -> None:
    """``json.dump`` with the same guarantee as :func:`atomic_save`.

    Args:
        obj: a JSON-serialisable value.
        path: the file to write (see :func:`atomic_write`).
        indent: spaces per indentation level of the JSON text.

    Raises:
        TypeError: ``obj`` holds a value JSON cannot represent (nothing is written then).
    """
    atomic_write(str(path), lambda f: f.write(json.dumps(obj, indent=indent).encode()))


def checkpoint_epoch(path: str) -> int:
    """The epoch in a ``checkpoint_epoch=N.pt`` file name (-1 for another name).

    Args:
        path: a file name or path; only its last component is read.

    Returns:
        ``N`` of ``checkpoint_epoch=N.pt``, or -1 when the name has another form.
    """
    m = re.fullmatch(r"checkpoint_epoch=(\d+)\.pt", os.path.basename(str(path)))
    return int(m.group(1)) if m else -1


def list_checkpoints(ckpt_dir: str) -> list[str]:
    """The epoch checkpoints of ``ckpt_dir``, newest epoch first.

    Args:
        ckpt_dir: the folder of the checkpoints (``models/`` of a run).

    Returns:
        The paths of its ``checkpoint_epoch=N.pt`` files, highest ``N`` first; empty when there is none (or no
        such folder). The files are only listed, not opened: see :func:`load_checkpoint`.
    """
    files = [f for f in glob.glob(os.path.join(str(ckpt_dir), CHECKPOINT_PATTERN)) if checkpoint_epoch(f) >= 0]
    return sorted(files, key=checkpoint_epoch, reverse=True)


def load_checkpoint(path: str) -> dict[str, Any]:
    """A checkpoint written by :class:`Checkpointer`, read with ``weights_only=True`` (tensors and plain
    values only); a :class:`CheckpointError` naming the file when it is a symbolic link, empty, truncated,
    or not such a checkpoint.

    Args:
        path: a ``checkpoint_epoch=N.pt`` file.

    Returns:
        The checkpoint, its tensors on the CPU: ``format``, ``epoch``, ``iteration``, ``network`` (the state
        dict), ``best``, ``args``, ``objects`` and, when the run had them, ``optimizer`` and ``lr_scheduler``.

    Raises:
        CheckpointError: ``path`` is a symbolic link, cannot be read (missing, empty, cut short, not a
            ``weights_only`` file), or is not a checkpoint of this format.
    """
    path = str(path)
    if os.path.islink(path):
        raise CheckpointError(f"{path} is a symbolic link, not a checkpoint written by this bundle; not followed")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - EOFError, zip / unpickling errors of a cut file
        size = os.path.getsize(path) if os.path.exists(path) else 0
        raise CheckpointError(f"{path} cannot be read ({size} bytes; {type(err).__name__}: {err})") from err
    if not isinstance(ckpt, Mapping) or ckpt.get("format") != FORMAT or "network" not in ckpt:
        raise CheckpointError(
            f"{path} is not a checkpoint of this bundle (no 'format': {FORMAT} and 'network' entries)"
        )
    return dict(ckpt)


def _unwrap(network: torch.nn.Module) -> torch.nn.Module:
    return network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network


def _shape_report(network: torch.nn.Module, state: Mapping) -> str:
    own = _unwrap(network).state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    resized = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    parts = []
    for label, items in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("other shape (checkpoint vs now)", resized),
    ):
        if items:
            parts.append(f"{len(items)} {label}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}")
    return "; ".join(parts)


_COUNTERS = {"last_epoch", "_step_count", "_last_lr", "_get_lr_called_within_step", "verbose", "_is_initial"}


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            out = json.load(f)
        return out if isinstance(out, dict) else {}
    except (OSError, ValueError):
        return {}


class Checkpointer:
    """Trainer handler that owns the epoch checkpoints of a :class:`~monai_losses_ext.bundle.rundir.RunDir`.

    At ``STARTED`` it restores the checkpoint the run folder chose (``run_dir.resume_state``): network (a
    mismatch stops with the file, the differing arguments and ``--resume False``), optimizer, LR scheduler,
    epoch and iteration, best-metric state and every object of ``objects``. Arguments of ``args`` that differ
    from the checkpoint's are applied and logged; a changed learning rate or number of epochs resets the LR
    schedule to this run's and replays it to the restored epoch (public scheduler API only). A checkpoint
    that already reached more epochs than ``--epochs`` is refused.

    After every epoch (rank 0 only) it writes ``checkpoint_epoch=N.pt`` atomically, then removes the older
    ones beyond ``n_saved``. List it after the validation and history handlers of the epoch.

    Args:
        run_dir: the run folder, opened (``RunDir.open()``): it says which checkpoint to resume from, where to
            write them (``run_dir.ckpt_dir``) and holds the best-metric state (``run_dir.best``) that travels
            with each checkpoint.
        network: the trained network (a ``DistributedDataParallel`` wrapper is removed: the checkpoint holds
            the plain module's state dict).
        optimizer: its optimizer; None saves and restores no optimizer state.
        lr_scheduler: the learning-rate scheduler stepped by the run (anything with ``state_dict``,
            ``load_state_dict`` and ``step``, e.g. a ``torch.optim.lr_scheduler`` object); None: none.
        objects: other run state to save and restore, ``{name: object with state_dict / load_state_dict}``
            (the bundles pass the boundary-loss alpha schedule). An object the checkpoint lacks keeps its state.
        args: the run's arguments (``--learning_rate``, ``--epochs``, the target spacing, ...), stored in every
            checkpoint and compared with the checkpoint's on resume.
        n_saved: how many epoch checkpoints to keep (at least 1; values below count as 1).
    """

    def __init__(
        self,
        run_dir: RunDir,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        lr_scheduler: Any = None,
        objects: Mapping[str, Any] | None = None,
        args: Mapping[str, Any] | None = None,
        n_saved: int = 1,
    ) -> None:
        self.run_dir, self.network, self.optimizer, self.lr_scheduler = run_dir, network, optimizer, lr_scheduler
        self.objects = dict(objects or {})
        self.args = dict(args or {})
        self.n_saved = max(1, int(n_saved))

    def attach(self, engine: Engine) -> None:
        """Register :meth:`restore` at ``STARTED`` and :meth:`save` at ``EPOCH_COMPLETED`` of the trainer.

        Args:
            engine: the trainer (MONAI's ``SupervisedTrainer`` or any ignite ``Engine``).
        """
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self.restore)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)

    # ------------------------------------------------------------------------------------------- save
    def state(self, engine: Engine) -> dict[str, Any]:
        """The checkpoint of the trainer's current epoch, as :meth:`save` writes it.

        Args:
            engine: the trainer; its ``state.epoch`` and ``state.iteration`` are recorded.

        Returns:
            ``{"format", "epoch", "iteration", "network", "best", "args", "objects"}``, plus ``"optimizer"``
            and ``"lr_scheduler"`` when the handler has them: the state dicts as the objects return them (not
            copied).
        """
        out = {
            "format": FORMAT,
            "epoch": int(engine.state.epoch),
            "iteration": int(engine.state.iteration),
            "network": _unwrap(self.network).state_dict(),
            "best": dict(self.run_dir.best),
            "args": self.args,
        }
        if self.optimizer is not None:
            out["optimizer"] = self.optimizer.state_dict()
        if self.lr_scheduler is not None:
            out["lr_scheduler"] = self.lr_scheduler.state_dict()
        out["objects"] = {k: o.state_dict() for k, o in self.objects.items()}
        return out

    def save(self, engine: Engine) -> None:
        """Write ``<ckpt_dir>/checkpoint_epoch=N.pt`` for the trainer's epoch ``N`` atomically, then remove
        the older epoch checkpoints beyond ``n_saved``. Does nothing on ranks other than 0.

        Args:
            engine: the trainer, at ``EPOCH_COMPLETED``.

        Raises:
            OSError: the checkpoint cannot be written (permissions, full disk); the previous ones are kept.
        """
        if not is_rank_zero():
            return
        path = os.path.join(self.run_dir.ckpt_dir, f"checkpoint_epoch={engine.state.epoch}.pt")
        atomic_save(self.state(engine), path)
        for old in list_checkpoints(self.run_dir.ckpt_dir)[self.n_saved :]:
            if checkpoint_epoch(old) < engine.state.epoch:
                os.remove(old)  # os.remove on a planted symlink removes the link, never its target
        engine.logger.info(f"saved {path}")

    # ---------------------------------------------------------------------------------------- restore
    def restore(self, engine: Engine) -> None:
        """Restore the checkpoint ``run_dir`` chose to resume from (nothing for a fresh run) into the network,
        the optimizer, the LR scheduler, ``objects``, the trainer's epoch and iteration and ``run_dir.best``.

        When a ``model.json`` beside the checkpoints records a later and better epoch than the checkpoint
        (the run was killed between saving the best model and that epoch's checkpoint), that epoch stays the
        best to beat. Arguments that changed since the checkpoint are logged as warnings.

        Args:
            engine: the trainer, at ``STARTED``.

        Raises:
            CheckpointError: the checkpoint reached more epochs than the trainer's ``max_epochs``; its network
                weights do not fit ``network`` (the message lists the missing, unexpected and resized entries
                and the changed arguments); or the optimizer, scheduler or object state does not fit.
        """
        ckpt, path = self.run_dir.resume_state, self.run_dir.resume_path
        if ckpt is None:
            return
        epoch = int(ckpt["epoch"])
        if engine.state.max_epochs is not None and epoch > engine.state.max_epochs:
            raise CheckpointError(
                f"{path} reached epoch {epoch}, more than --epochs {engine.state.max_epochs}: resuming would train "
                f"nothing and report epoch {epoch}. Give --epochs {epoch} or more to continue, or --resume False "
                "to start again (the old run is moved to previous/)."
            )
        changed = self._changed_args(ckpt)
        way_out = (
            "Give the arguments it was trained with, or start again with --resume False (the old run is "
            "moved to previous/)."
        )
        try:
            _unwrap(self.network).load_state_dict(ckpt["network"])
        except RuntimeError as err:
            raise CheckpointError(
                f"{path} does not fit this network ({_shape_report(self.network, ckpt['network'])}); "
                + (f"arguments changed since it was written (checkpoint -> now): {changed}. " if changed else "")
                + way_out
            ) from err
        try:
            if self.optimizer is not None and "optimizer" in ckpt:
                self.optimizer.load_state_dict(ckpt["optimizer"])
            self._restore_schedule(engine, ckpt, epoch)
            for key, obj in self.objects.items():
                if key in ckpt.get("objects", {}):
                    obj.load_state_dict(ckpt["objects"][key])
        except (ValueError, KeyError, RuntimeError) as err:
            raise CheckpointError(
                f"{path}: the optimizer / schedule state does not fit this run ({err}). {way_out}"
            ) from err
        engine.state.epoch, engine.state.iteration = epoch, int(ckpt["iteration"])
        self.run_dir.best = dict(ckpt.get("best") or self.run_dir.best)
        lost = _read_json(os.path.join(self.run_dir.ckpt_dir, "model.json"))
        if lost.get("epoch", 0) > epoch and lost.get("value", float("-inf")) > self.run_dir.best.get(
            "value", float("-inf")
        ):
            # killed between saving model.pt and this epoch's checkpoint: model.pt is that lost epoch's model,
            # validated and better than the restored best, so it stays the best to beat
            self.run_dir.best = {k: lost[k] for k in ("metric", "value", "epoch") if k in lost}
        logger.info(f"resumed from {path}: continuing after epoch {epoch}")
        for k, (a, b) in changed.items():
            logger.warning(f"resume: --{k} changed from {a!r} (checkpoint) to {b!r}: applied from epoch {epoch + 1}")

    def _changed_args(self, ckpt: Mapping) -> dict[str, tuple[Any, Any]]:
        """``{name: (checkpoint's value, this run's)}`` for the run arguments that differ."""
        old = ckpt.get("args") or {}
        return {k: (old[k], v) for k, v in self.args.items() if k in old and old[k] != v}

    def _restore_schedule(self, engine, ckpt: Mapping, epoch: int) -> None:
        sched = self.lr_scheduler
        if sched is None or "lr_scheduler" not in ckpt:
            return
        fresh = sched.state_dict()
        saved = ckpt["lr_scheduler"]
        differ = sorted(k for k in fresh if k not in _COUNTERS and k in saved and saved[k] != fresh[k])
        if not differ:
            sched.load_state_dict(saved)
            return
        # this run's schedule (other learning rate / epochs), replayed to the restored epoch on the restored
        # optimizer, so the learning rate is the one the new schedule has at this epoch
        for group, base in zip(self.optimizer.param_groups, fresh.get("base_lrs", [])):
            group["initial_lr"] = group["lr"] = base
        sched.load_state_dict({**fresh, "last_epoch": 0})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()": a replay
            for _ in range(epoch):
                sched.step()
        lr = self.optimizer.param_groups[0]["lr"]
        changes = ", ".join(f"{k} {saved[k]} -> {fresh[k]}" for k in differ)
        logger.warning(
            f"resume: the LR schedule changed since {self.run_dir.resume_path} ({changes}): "
            f"this run's schedule is applied, learning rate now {lr:.4g} at epoch {epoch}"
        )


class BestModelSaver:
    """Evaluator handler: after each validation, when ``metric`` (default: the evaluator's key metric) beats
    the best of every earlier epoch of this run (``run_dir.best``, restored on resume), write the network's
    weights atomically to ``<ckpt_dir>/model.pt`` (a plain state_dict, DDP wrapper removed, as MONAI's
    ``CheckpointLoader`` reads it) and ``model.json`` (``{"metric", "value", "epoch", "args"}``: ``args`` are the
    run arguments the model was trained with, among them the target spacing evaluation and inference resample
    to). Rank 0 only.

    The comparison is "higher is better" (Dice-like metrics); a tie keeps the earlier model. A NaN metric (a
    validation with nothing to score) is saved only when there is no model yet, and any number replaces it. Every rank
    updates ``run_dir.best``, only rank 0 writes the files.

    Args:
        run_dir: the run folder: ``model.pt`` goes to ``run_dir.ckpt_dir`` and ``run_dir.best``
            (``{"metric", "value", "epoch"}``, empty before the first validation) is the best to beat.
        network: the network whose weights are saved.
        metric: the name of the validation metric to compare; None: the evaluator's key metric
            (``key_val_metric``).
        filename: the file name of the best model in ``run_dir.ckpt_dir``; its record has the same name with
            ``.json`` (``model.json``).
        args: the run's arguments, recorded in the ``.json`` file (a value JSON cannot hold is written as its
            ``repr``).
    """

    def __init__(
        self,
        run_dir: RunDir,
        network: torch.nn.Module,
        metric: str | None = None,
        filename: str = "model.pt",
        args: Mapping[str, Any] | None = None,
    ) -> None:
        self.run_dir, self.network, self.metric, self.filename = run_dir, network, metric, filename
        self.args = dict(args or {})

    def attach(self, engine: Engine) -> None:
        """Run this handler at the evaluator's ``COMPLETED`` (after each validation).

        Args:
            engine: the evaluator (MONAI's ``SupervisedEvaluator`` or any ignite ``Engine`` with metrics).
        """
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Compare this validation's metric with the best so far; when it is higher, record it in
        ``run_dir.best`` and (rank 0) save the weights and the ``.json`` record atomically.

        Args:
            engine: the evaluator after a validation run; its ``state.epoch`` is the trainer's epoch.

        Raises:
            KeyError: the metric (``metric``, or the key metric) is not among the evaluator's metrics.
        """
        name = self.metric or getattr(engine.state, "key_metric_name", None)
        if name not in engine.state.metrics:
            raise KeyError(
                f"BestModelSaver: metric {name!r} not among the validation metrics {sorted(engine.state.metrics)}"
            )
        value, best = float(engine.state.metrics[name]), self.run_dir.best
        if best.get("epoch"):
            stored = float(best["value"])
            # a NaN validation (nothing to score) never replaces a model; a NaN best is replaced by any number
            if math.isnan(value) or not (value > stored or math.isnan(stored)):
                return
        self.run_dir.best = {"metric": name, "value": value, "epoch": int(engine.state.epoch)}
        if is_rank_zero():
            path = os.path.join(self.run_dir.ckpt_dir, self.filename)
            atomic_save(_unwrap(self.network).state_dict(), path)
            # run arguments that are no JSON value (a tensor given as a loss weight) are recorded as their repr
            args = json.loads(json.dumps(self.args, default=repr))
            atomic_write_json({**self.run_dir.best, "args": args}, os.path.splitext(path)[0] + ".json")
            engine.logger.info(f"best {name} {value:.4f} at epoch {engine.state.epoch}: saved {path}")
