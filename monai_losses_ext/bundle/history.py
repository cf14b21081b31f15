"""``logs/history.jsonl``: one JSON line per training epoch and per validation, for plots and for the
benchmark's progress. Appends never follow a symbolic link; on resume the file is cut back to the resumed
epoch (:func:`truncate_history`), so it never holds an epoch twice or misses one."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch

from .checkpoint import atomic_write
from .handlers import EpochLoss, is_rank_zero

__all__ = ["TrainHistory", "ValHistory", "read_history", "truncate_history"]


def _append(path: str, record: dict) -> None:
    if not is_rank_zero():
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "a") as f:
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
    its checkpoint exists, and a resume cuts what lies beyond the checkpoint."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = str(path)

    def __call__(self, engine) -> None:
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
    (``ValidationHandler`` sets the evaluator's epoch to the trainer's); rank 0 only."""

    def __init__(self, path: str) -> None:
        self.path = str(path)

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine) -> None:
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
    with open(path) as f:
        return f.read()


def read_history(path: str) -> tuple[list[dict], list[dict]]:
    """``(train records, validation records)`` of a history file (empty lists when there is none)."""
    recs = _parse(_read(str(path)))
    return [r for r in recs if r.get("kind") == "train"], [r for r in recs if r.get("kind") != "train"]


def truncate_history(path: str, last_epoch: int) -> int:
    """Keep the records of epochs ``<= last_epoch`` (and drop a half-written last line), rewriting the file
    atomically; returns how many records were dropped."""
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
