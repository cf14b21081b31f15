"""Running the bundles in ``bundles/`` as a user would: ``python -m monai.bundle run`` with overrides, in a
child process (its own threads and memory, its full log to a file). The demo, the benchmark and the tests
drive the bundles through this module.

``configs`` are file names in ``<bundle>/configs``; ``train.json`` comes first and the other configs are
overlays on it (``["train.json", "evaluate.json"]``), as MONAI model-zoo bundles are run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..bundles import bundles_root as bundles_root_default
from .handlers import EpochProgress

REPO = Path(__file__).resolve().parents[2]
BUNDLES = {"lesion": "lesion_segmentation", "tumour": "tumour_segmentation"}


def bundle_dir(task: str, bundles_root: str | Path | None = None) -> Path:
    """The bundle of ``task`` (``lesion`` or ``tumour``) under ``bundles_root`` (default: the shipped bundles, see
    :func:`monai_losses_ext.bundles.bundles_root`: a clone's ``bundles/`` or the copy inside the wheel).

    Args:
        task: ``"lesion"`` (``lesion_segmentation``) or ``"tumour"`` (``tumour_segmentation``).
        bundles_root: the folder holding the bundle folders; None (or empty): the shipped bundles.

    Returns:
        The bundle folder (it holds ``configs/train.json``).

    Raises:
        ValueError: ``task`` is neither ``"lesion"`` nor ``"tumour"``.
        FileNotFoundError: the bundle, or its ``configs/train.json``, is not under ``bundles_root``.
    """
    if task not in BUNDLES:
        raise ValueError(f"task={task!r}: use 'lesion' or 'tumour'")
    root = Path(bundles_root) if bundles_root else bundles_root_default()
    path = root / BUNDLES[task]
    if not (path / "configs" / "train.json").is_file():
        raise FileNotFoundError(
            f"bundle '{BUNDLES[task]}' not found under '{root}': pass the folder that holds it (a clone's bundles/, "
            "or a folder written by `python -m monai_losses_ext.bundles export`) with --bundles"
        )
    return path


def _arg(v: Any) -> str:
    """One CLI value as ``python -m monai.bundle run`` (fire) reads it: Python literals, lists and dicts
    included (JSON would not do: fire reads a JSON ``true`` inside a dict as the string ``'true'``)."""
    return v if isinstance(v, str) else repr(v)


def config_files(bundle: Path, configs: Sequence[str]) -> list[str]:
    """The paths of ``configs`` in ``bundle/configs``, ``train.json`` first: the other configs are overlays.

    Args:
        bundle: the bundle folder.
        configs: config file names in ``bundle/configs``, e.g. ``["evaluate.json"]``; ``train.json`` is put
            first, and added when missing.

    Returns:
        The config paths (as strings), ``train.json`` first, the others in the given order. The files are not
        checked to exist.
    """
    names = list(configs)
    names = names if names[:1] == ["train.json"] else ["train.json", *[c for c in names if c != "train.json"]]
    return [str(Path(bundle) / "configs" / c) for c in names]


def bundle_command(bundle: Path, configs: Sequence[str], overrides: Mapping[str, Any]) -> list[str]:
    """The ``python -m monai.bundle run`` command line of ``configs`` (see :func:`config_files`).

    Args:
        bundle: the bundle folder (it holds ``configs/metadata.json`` and ``configs/logging.conf``).
        configs: the config file names (see :func:`config_files`).
        overrides: bundle arguments, ``{name: value}``, passed as ``--name value``: strings as they are,
            None, booleans and numbers as Python literals, lists and dicts as JSON.

    Returns:
        The command as a list of arguments, starting with this interpreter (``sys.executable``).
    """
    files = config_files(bundle, configs)
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(files),
        "--meta_file",
        str(bundle / "configs" / "metadata.json"),
        "--logging_file",
        str(bundle / "configs" / "logging.conf"),
    ]
    for k, v in overrides.items():
        cmd += [f"--{k}", _arg(v)]
    return cmd


def shown(cmd: Sequence[str]) -> str:
    """A command line as one would type it (quotes around lists).

    Args:
        cmd: a command as a list of arguments; its first item (the interpreter) is shown as ``python``.

    Returns:
        The arguments joined by spaces, those holding a space, ``[`` or ``{`` in quotes (their ``repr``).
    """
    return " ".join(c if " " not in c and "[" not in c and "{" not in c else repr(c) for c in ["python", *cmd[1:]])


def child_env(threads: int | None = None) -> dict[str, str]:
    """The environment of a child run: this checkout importable first, warnings quiet, ``threads`` CPU threads.

    Args:
        threads: ``OMP_NUM_THREADS`` of the child; None (or 0): inherited.

    Returns:
        A copy of this process's environment with ``PYTHONWARNINGS=ignore``, ``OMP_NUM_THREADS`` when
        ``threads`` is given, and the folder that holds this ``monai_losses_ext`` package (a checkout's root)
        first on ``PYTHONPATH``.
    """
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if (REPO / "monai_losses_ext").is_dir():
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run_bundle(
    bundle: Path,
    configs: Sequence[str],
    overrides: Mapping[str, Any],
    log_file: Path,
    env: Mapping[str, str] | None = None,
    poll: Callable[[], None] | None = None,
    poll_seconds: float = 1.0,
    echo: Callable[[str], None] | None = None,
) -> float:
    """Run one bundle command in a child process, its output to ``log_file``; ``poll()`` is called every
    ``poll_seconds`` while it runs (to update progress bars) and ``echo(line)`` gets each per-epoch progress
    line of the log as it appears (``[epoch 3/40] loss ...``; e.g. ``print``). Returns the wall time; raises
    ``RuntimeError`` with the end of the log when the run fails.

    The child runs in ``bundle`` as its working folder. ``echo`` also gets the messages of the run-state
    loggers (resumed from, previous run moved, checkpoint skipped, stale lock). If this process is
    interrupted (``KeyboardInterrupt``) or ``poll`` raises, the child is killed first.

    Args:
        bundle: the bundle folder (see :func:`bundle_dir`).
        configs: the config file names (see :func:`config_files`).
        overrides: the bundle arguments (see :func:`bundle_command`).
        log_file: where the command line and the child's output (stdout and stderr) are written; its folder
            is created, the file overwritten.
        env: the child's environment; None: :func:`child_env`.
        poll: called about every ``poll_seconds`` while the child runs, and once at the end; None: nothing.
        poll_seconds: the interval of ``poll`` and of the log reading, in seconds.
        echo: called with each progress line of the log; None: nothing is echoed.

    Returns:
        The wall time of the run in seconds.

    Raises:
        RuntimeError: the child exited with a non-zero code; the message gives the first exception line of
            the log (:func:`root_cause`), the log's path and its last 40 lines.
    """
    cmd = bundle_command(bundle, configs, overrides)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log_file, "w", encoding="utf-8") as log:
        log.write(f"$ {shown(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(
            cmd, env=dict(env or child_env()), cwd=str(bundle), stdout=log, stderr=subprocess.STDOUT
        )
        tail = _Tail(log_file, echo)
        try:
            while proc.poll() is None:
                if poll:
                    poll()
                tail()
                time.sleep(poll_seconds)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if poll:
        poll()
    tail()
    if proc.returncode != 0:
        lines = log_file.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
        raise RuntimeError(
            f"bundle run failed (exit code {proc.returncode}): {root_cause(lines)}\n"
            f"log {log_file}:\n{''.join(lines[-40:])}"
        )
    return time.perf_counter() - t0


class _Tail:
    """Echoes what a log file gained since the last call that a user should see: the per-epoch lines of
    ``EpochProgress`` and the messages of the run-state loggers (``monai_losses_ext.bundle.*``: resumed
    from, previous run moved, checkpoint skipped, stale lock)."""

    def __init__(self, path: Path, echo: Callable[[str], None] | None) -> None:
        self.path, self.echo, self.pos, self.rest = Path(path), echo, 0, ""

    def __call__(self) -> None:
        if self.echo is None:
            return
        with open(self.path, encoding="utf-8", errors="replace") as f:
            f.seek(self.pos)
            text = self.rest + f.read()
            self.pos = f.tell()
        *lines, self.rest = text.split("\n")
        for line in lines:
            if line.startswith(EpochProgress.prefix):
                self.echo(line)
            elif " - monai_losses_ext.bundle." in line:
                self.echo(line.split(" - ", 2)[-1])  # "<level> - <message>" without the time and logger


def root_cause(lines: Sequence[str]) -> str:
    """The first exception line of a log (in a chained traceback Python prints the original error first),
    which names the cause where the last line often names only a wrapper.

    Args:
        lines: the lines of the log.

    Returns:
        The first line that starts with ``SomeError: ``, ``SomeException: `` or ``SomeInterrupt: `` (a dotted
        name allowed), stripped; ``"no exception in the log"`` when there is none.
    """
    for line in lines:
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt): ", line):
            return line.strip()
    return "no exception in the log"
