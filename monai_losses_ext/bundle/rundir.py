"""The output folder of a training run (``bundle_root``): one run at a time, writable before epoch 1, never
mixing two runs' files, and tidy at exit.

:meth:`RunDir.open` runs as the first step of the bundle's ``run`` (before any handler creates a file):

1. takes ``<bundle_root>/.lock`` (pid, host, start time); a second run into the folder stops naming the
   first one; the lock of a process that no longer exists is reported and replaced;
2. checks that ``models/`` and ``logs/`` can be written (a clear error naming the folder, before epoch 1);
3. chooses what to continue: with ``resume``, the newest ``checkpoint_epoch=N.pt`` that loads (a corrupt one
   is named in a warning and skipped) and cuts ``history.jsonl`` back to epoch N; otherwise, or when no
   checkpoint loads, a fresh run — and a fresh run into a used folder first **moves the previous run's
   ``models/`` and ``logs/`` to ``<bundle_root>/previous/<time>/``** (nothing is deleted);
4. removes temporary files left by a save that was killed.

:meth:`RunDir.run` runs the trainer and, however it ends, closes the TensorBoard writers and releases the
lock. Under torchrun only rank 0 locks, checks, moves and writes; the other ranks receive its choice.
"""

from __future__ import annotations

import atexit
import glob
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from .checkpoint import CheckpointError, list_checkpoints, load_checkpoint
from .handlers import is_distributed, is_rank_zero
from .history import truncate_history

if TYPE_CHECKING:
    from ignite.engine import Engine

__all__ = ["RunDir", "RunLockedError"]

logger = logging.getLogger(__name__)


class RunLockedError(RuntimeError):
    """Another live run holds the folder's lock."""


def _start_ticks(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks (Linux), to tell a live process from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, ticks: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = _start_ticks(pid)
    return ticks is None or now is None or now == ticks


class RunDir:
    """The run folder of one training run. See the module docstring for what :meth:`open` does.

    Building it touches no file. After :meth:`open`, ``resume_path`` / ``resume_state`` are the checkpoint
    to continue from (None for a fresh run) and ``best`` (``{"metric", "value", "epoch"}``, empty at first)
    is the best validation so far, kept up to date by :class:`Checkpointer` and :class:`BestModelSaver`.

    Args:
        root: ``bundle_root``; the lock and ``previous/`` live here.
        ckpt_dir: checkpoints and ``model.pt`` (``models/``).
        log_dir: ``history.jsonl`` and TensorBoard events (``logs/``).
        history_file: the history to cut back on resume; None: none.
        resume: continue from the newest loadable checkpoint (``--resume``); ``False`` starts again.
    """

    def __init__(
        self, root: str, ckpt_dir: str, log_dir: str, history_file: str | None = None, resume: bool = True
    ) -> None:
        self.root, self.ckpt_dir, self.log_dir = (os.path.abspath(str(p)) for p in (root, ckpt_dir, log_dir))
        self.history_file = os.path.abspath(str(history_file)) if history_file else None
        self.resume = bool(resume)
        self.lock_path = os.path.join(self.root, ".lock")
        self.resume_path: str | None = None
        self.resume_state: dict | None = None
        self.best: dict = {}
        self._token: str | None = None
        self.created = time.time()

    # ------------------------------------------------------------------------------------------ lock
    def _lock_info(self) -> dict:
        try:
            with open(self.lock_path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def acquire(self) -> None:
        """Take the folder's lock (see the module docstring); :class:`RunLockedError` if a live run has it.

        ``root`` is created when missing. A lock left by a process of this host that no longer runs (or by
        this very process) is replaced with a warning; the lock is released at interpreter exit at the
        latest.

        Raises:
            RunLockedError: another live run (or a run on another host) holds the lock.
            OSError: ``root`` cannot be created or written.
        """
        os.makedirs(self.root, exist_ok=True)
        token = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "start_ticks": _start_ticks(os.getpid()),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "token": token,
        }
        for _ in range(2):
            try:
                fd = os.open(self.lock_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
            except FileExistsError:
                other = self._lock_info()
                pid, host = other.get("pid"), other.get("host")
                here = host == socket.gethostname() and isinstance(pid, int)
                if here and (pid == os.getpid() or not _alive(pid, other.get("start_ticks"))):
                    # a process that no longer runs, or an earlier run of this very process (runs in one
                    # process are sequential) that failed before it could release the lock
                    logger.warning(
                        f"removing the stale lock {self.lock_path} of process {pid} (started "
                        f"{other.get('started')}), which no longer runs there"
                    )
                    os.remove(self.lock_path)
                    continue
                raise RunLockedError(
                    f"{self.root} is in use by another training run (pid {pid} on {host or 'an unknown host'}, "
                    f"started {other.get('started', '?')}; lock file {self.lock_path}). Wait for it to finish, or "
                    "give this run its own folder with --bundle_root. If that run is gone (another machine, a "
                    "crash), delete the lock file."
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(info, f)
            self._token = token
            atexit.register(self.release)
            return
        raise RunLockedError(f"could not take the lock {self.lock_path}: other runs keep starting in {self.root}")

    def release(self) -> None:
        """Remove the lock if this process holds it (idempotent).

        A lock file that another run has taken over since (another token) is left alone.
        """
        if self._token and self._lock_info().get("token") == self._token:
            os.remove(self.lock_path)
        self._token = None

    # -------------------------------------------------------------------------------------- folders
    def _check_writable(self) -> None:
        for folder in (self.ckpt_dir, self.log_dir):
            try:
                os.makedirs(folder, exist_ok=True)
                fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
                os.close(fd)
                os.remove(probe)
            except OSError as err:
                raise PermissionError(
                    f"cannot write to {folder} ({type(err).__name__}: {err.strerror or err}): checkpoints and logs "
                    "go there. Fix its permissions or free space, or give another --bundle_root."
                ) from err

    def _previous_files(self) -> list[str]:
        """The files of an earlier run in the output folders: everything there except what this process
        created since this RunDir exists (a TensorBoard writer built before :meth:`open` already holds its
        event file open)."""
        out = []
        for folder in (self.ckpt_dir, self.log_dir):
            if os.path.isdir(folder):
                for name in sorted(os.listdir(folder)):
                    path = os.path.join(folder, name)
                    if os.lstat(path).st_mtime < self.created:
                        out.append(path)
        return out

    def _move_previous(self, files: list[str]) -> None:
        dest = os.path.join(self.root, "previous", time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}")
        for path in files:
            target = os.path.join(dest, os.path.relpath(path, self.root))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.move(path, target)  # a symbolic link is moved as a link, never followed
        logger.warning(
            f"a fresh run into a used folder: the previous run's {len(files)} file(s) in "
            f"{os.path.relpath(self.ckpt_dir, self.root)}/ and {os.path.relpath(self.log_dir, self.root)}/ "
            f"were moved to {dest}"
        )

    def _clean_partial_saves(self) -> None:
        for tmp in glob.glob(os.path.join(self.ckpt_dir, ".tmp-*")):
            logger.warning(f"removing {tmp}, left by a save that was interrupted")
            os.remove(tmp)

    def _choose(self) -> None:
        for path in list_checkpoints(self.ckpt_dir) if self.resume else []:
            try:
                self.resume_state = load_checkpoint(path)
            except CheckpointError as err:
                logger.warning(f"skipping a checkpoint that does not load: {err}")
                continue
            self.resume_path = path
            return

    # ------------------------------------------------------------------------------------------ open
    def open(self) -> RunDir:
        """Lock, check, choose and tidy the folder (rank 0), then share the choice with the other ranks.

        Under torchrun every rank must call it (the choice is broadcast); the other ranks load the chosen
        checkpoint themselves. On an error rank 0 releases the lock before raising.

        Returns:
            This run folder, opened (the bundles call it as the first step of ``run``: ``"$@run_dir.open()"``).

        Raises:
            RunLockedError: another live run holds the folder's lock.
            PermissionError: ``models/`` or ``logs/`` cannot be created or written.
            CheckpointError: on a rank other than 0, the checkpoint rank 0 chose does not load.
        """
        if is_rank_zero():
            self.acquire()
            try:
                self._prepare()
            except BaseException:
                self.release()
                raise
        if is_distributed():
            choice = [self.resume_path]
            torch.distributed.broadcast_object_list(choice, src=0)
            if torch.distributed.get_rank() != 0 and choice[0] is not None:
                self.resume_path, self.resume_state = choice[0], load_checkpoint(choice[0])
        return self

    def _prepare(self) -> None:
        self._check_writable()
        self._clean_partial_saves()
        self._choose()
        previous = self._previous_files() if self.resume_state is None else []
        if previous:
            self._move_previous(previous)
        if self.resume_state is not None and self.history_file:
            dropped = truncate_history(self.history_file, int(self.resume_state["epoch"]))
            if dropped:
                logger.info(
                    f"{self.history_file}: dropped {dropped} record(s) after epoch {self.resume_state['epoch']}"
                )
        if self.resume_state is None:
            logger.info(f"training from scratch in {self.root}")

    # ------------------------------------------------------------------------------------------- run
    def run(self, engine: Engine, close: Iterable[Any] | Sequence[Any] = ()) -> None:
        """``engine.run()``; afterwards, also when it fails, close every object of ``close`` (the TensorBoard
        writers: their writer threads must not outlive the run) and release the lock. A ``close()`` that fails
        is logged as a warning: it neither hides the run's own error nor keeps the lock.

        Args:
            engine: the trainer (its data and ``max_epochs`` were given when it was built).
            close: objects to close after the run, e.g. the writer of :func:`summary_writer`.

        Raises:
            Exception: whatever ``engine.run()`` raises, after the closing and the release.
        """
        try:
            engine.run()
        finally:
            try:
                for obj in close:
                    try:
                        obj.close()
                    except Exception as err:  # noqa: BLE001 - reported; the run's own outcome comes first
                        logger.warning(f"closing {obj!r} after the run failed: {type(err).__name__}: {err}")
            finally:
                self.release()
