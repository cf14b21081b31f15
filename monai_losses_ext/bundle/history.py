"""``logs/history.jsonl``: one JSON line per training epoch and per validation, for plots and for the
benchmark's progress. Appends never follow a symbolic link; on resume the file is cut back to the resumed
epoch (:func:`truncate_history`), so it never holds an epoch twice or misses one."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .checkpoint import atomic_write
from .handlers import EpochLoss, is_rank_zero

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["TrainHistory", "ValHistory", "read_history", "truncate_history"]


def _append(path: str, record: dict) -> None:
    if not is_rank_zero():
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _scalar(v: Any) -> float | None:
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu()
        return float(v) if v.numel() == 1 else None
    if isinstance(v, (int, float, np.floating, np.integer)):
        return float(v)
    return None


class TrainHistory(EpochLoss):
    """Trainer handler: appends ``{"kind": "train", "epoch", "iteration", "loss" (epoch mean), "seconds"}``
    after each epoch (rank 0 only). List it before the checkpoint handler: an epoch is in the history before
    its checkpoint exists, and a resume cuts what lies beyond the checkpoint.

    ``loss`` is None for an epoch that reported no loss; ``seconds`` is the epoch's wall time, rounded to
    milliseconds.

    Args:
        path: the history file (``logs/history.jsonl``); its folder is created when missing.
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = str(path)

    def __call__(self, engine: Engine) -> None:
        """Append this epoch's ``"train"`` record (rank 0 only).

        Args:
            engine: the trainer, at ``EPOCH_COMPLETED``.

        Raises:
            OSError: the file cannot be written, or is a symbolic link (appends never follow one).
        """
        _append(
            self.path,
            {
                "kind": "train",
                "epoch": engine.state.epoch,
                "iteration": engine.state.iteration,
                "loss": self.epoch_loss(),
                "seconds": round(self.epoch_seconds(), 3),
            },
        )


class ValHistory:
    """Evaluator handler: appends ``{"kind": "val", "epoch", <scalar metrics>}`` after each validation run
    (``ValidationHandler`` sets the evaluator's epoch to the trainer's); rank 0 only.

    Only the metrics that are one number (a float, an int or a one-element tensor) are recorded; per-class
    tensors are left out.

    Args:
        path: the history file (the trainer's :class:`TrainHistory` writes to the same one).
    """

    def __init__(self, path: str) -> None:
        self.path = str(path)

    def attach(self, engine: Engine) -> None:
        """Run this handler at the evaluator's ``COMPLETED``.

        Args:
            engine: the evaluator.
        """
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Append this validation's ``"val"`` record (rank 0 only).

        Args:
            engine: the evaluator, at ``COMPLETED``.

        Raises:
            OSError: the file cannot be written, or is a symbolic link (appends never follow one).
        """
        rec: dict[str, Any] = {"kind": "val", "epoch": engine.state.epoch}
        rec.update({k: s for k, v in engine.state.metrics.items() if (s := _scalar(v)) is not None})
        _append(self.path, rec)


def _parse(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a kill: its epoch is trained again on resume
    return out


def _read(path: str) -> str:
    if not os.path.exists(path):
        return ""
    with open(path, encoding="utf-8") as f:
        return f.read()


def read_history(path: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(train records, validation records)`` of a history file (empty lists when there is none).

    Lines that are not valid JSON (a line cut short by a kill) are skipped.

    Args:
        path: the history file (``logs/history.jsonl``).

    Returns:
        The records of kind ``"train"`` and all the others (the validations), each in file order.
    """
    recs = _parse(_read(str(path)))
    return [r for r in recs if r.get("kind") == "train"], [r for r in recs if r.get("kind") != "train"]


def truncate_history(path: str, last_epoch: int) -> int:
    """Keep the records of epochs ``<= last_epoch`` (and drop a half-written last line), rewriting the file
    atomically; returns how many records were dropped.

    A missing file, or a symbolic link at ``path``, is left alone. The file is rewritten only when something
    is dropped or its last line is incomplete.

    Args:
        path: the history file.
        last_epoch: the epoch the run resumes after (the checkpoint's epoch).

    Returns:
        The number of records of later epochs that were removed. Lines that are not valid JSON are not
        counted; they are left out whenever the file is rewritten.
    """
    path = str(path)
    if not os.path.exists(path) or os.path.islink(path):
        return 0
    text = _read(path)
    recs = _parse(text)
    keep = [r for r in recs if int(r.get("epoch", 0)) <= int(last_epoch)]
    if len(keep) == len(recs) and (text.endswith("\n") or not recs):
        return 0
    atomic_write(path, lambda f: f.write("".join(json.dumps(r) + "\n" for r in keep).encode()))
    return len(recs) - len(keep)
