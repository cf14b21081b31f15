"""Ignite handlers of the training loop that hold no run state: stop on divergence, validate after the last
epoch, one console line per epoch, and the rank-aware TensorBoard writer. (The run state — checkpoints, the
best model, the history — lives in :mod:`.checkpoint` and :mod:`.history`.)"""

from __future__ import annotations

import abc
import math
import time
from collections.abc import Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from ignite.engine import Engine
    from monai.engines import Evaluator

    from .rundir import RunDir

__all__ = [
    "loss_value",
    "is_distributed",
    "is_rank_zero",
    "close_process_group",
    "StopOnNaNLoss",
    "TrainingDivergedError",
    "ValidateLastEpoch",
    "EpochProgress",
    "summary_writer",
]


def loss_value(output: Any) -> float | None:
    """The training loss of an engine output (``{"loss": ...}``, a list of such dicts, or a number).

    Args:
        output: an engine's ``state.output``: a dict with a ``"loss"`` entry (MONAI's ``SupervisedTrainer``),
            a list of such dicts (the first is read), a tensor or a number.

    Returns:
        The loss as a float (the mean of a tensor with more than one element), or None when the output holds
        none.
    """
    if isinstance(output, Mapping):
        v = output.get("loss")
    elif isinstance(output, Sequence) and output and isinstance(output[0], Mapping):
        v = output[0].get("loss")
    else:
        v = output
    if isinstance(v, torch.Tensor):
        return float(v.detach().float().mean().cpu())
    return None if v is None else float(v)


def is_distributed() -> bool:
    """True inside an initialised torch.distributed process group (a torchrun job).

    Returns:
        Whether ``torch.distributed`` is available and its default process group is initialised.
    """
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def is_rank_zero() -> bool:
    """True outside torch.distributed and on its rank 0: the one process that writes files.

    Returns:
        False only on the ranks other than 0 of an initialised process group.
    """
    return not is_distributed() or torch.distributed.get_rank() == 0


def close_process_group(grace_seconds: float = 0.2) -> None:
    """End a torchrun process cleanly (the ``finalize`` of ``multi_gpu_train.json``).

    gloo's worker threads release a finished collective's tensors after the collective has returned; for
    tensors that belong to Python objects (the validation metrics' ``all_gather``) that release takes the
    GIL. A rank that reaches interpreter shutdown first (rank 1: it saves nothing at the end) has its worker
    take the GIL during finalisation, which kills the thread through a C++ ``noexcept`` frame:
    ``terminate called without an active exception``, SIGABRT after a good run. So: destroy the process
    group, then block with the GIL released for ``grace_seconds`` so a worker waiting for it finishes while the
    interpreter is still alive. (A ``barrier()`` here does not help: it keeps the last collective's work
    alive inside its own work object, which a worker releases the same way just before exit.)

    Outside a process group it does nothing.

    Args:
        grace_seconds: how long to sleep after destroying the process group, in seconds.
    """
    if is_distributed():
        torch.distributed.destroy_process_group()
        time.sleep(grace_seconds)


class TrainingDivergedError(RuntimeError):
    """The training loss or the network's output became NaN or infinite."""


_ADVICE = (
    "Likely cause: the learning rate is too high for this loss and data (try --learning_rate {lower}); other "
    "causes are AMP overflow (--amp false) and bad data (NaN/inf voxels, unnormalised intensities, label "
    "values: ValidateLabeld). The last epoch checkpoint was written before this iteration: resume with a lower "
    "--learning_rate, or start again with --resume false."
)


class StopOnNaNLoss:
    """Ignite handler: stop the run with a :class:`TrainingDivergedError` as soon as training diverges.

    Two ways a run diverges: the loss becomes NaN/inf (ITERATION_COMPLETED sees it), or the network's output
    does and a validating loss refuses it (``"input holds NaN/Inf"``) before any loss value exists. Both
    stop with one message that names the iteration, the epoch, the learning rate and the likely cause.
    Unlike ignite's ``TerminateOnNan`` (which ends the run quietly) the run fails, so a script notices.
    List it before MONAI's ``StatsHandler``: handlers of an exception run in order, and the first that
    raises ends the others.

    Args:
        optimizer: the trainer's optimizer, read for the learning rate the message names (that of its first
            parameter group) and suggests lowering tenfold; None: the message names no learning rate.
    """

    def __init__(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        self.optimizer = optimizer

    def attach(self, engine: Engine) -> None:
        """Check every iteration's loss (``ITERATION_COMPLETED``) and translate a loss's refusal of a NaN/Inf
        network output (``EXCEPTION_RAISED``).

        At ``EXCEPTION_RAISED`` a ``ValueError`` whose message mentions the input and NaN or Inf becomes a
        :class:`TrainingDivergedError` (chained to it); any other exception is raised again as it is.

        Args:
            engine: the trainer.
        """
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._exception)

    def _where(self, engine) -> str:
        lr = f", learning rate {self.optimizer.param_groups[0]['lr']:.3g}" if self.optimizer is not None else ""
        return f"iteration {engine.state.iteration} (epoch {engine.state.epoch}{lr})"

    def _advice(self) -> str:
        lr = self.optimizer.param_groups[0]["lr"] if self.optimizer is not None else None
        return _ADVICE.format(lower=f"{lr / 10:.3g}" if lr else "<10x lower>")

    def __call__(self, engine: Engine) -> None:
        """Stop the run if this iteration's loss is NaN or infinite.

        Args:
            engine: the trainer, at ``ITERATION_COMPLETED``; the loss is read from ``state.output``.

        Raises:
            TrainingDivergedError: the loss is NaN or infinite; the message names the iteration, the epoch,
                the learning rate (with an ``optimizer``) and the likely causes.
        """
        value = loss_value(engine.state.output)
        if value is not None and not math.isfinite(value):
            raise TrainingDivergedError(
                f"training diverged: the loss is {value} at {self._where(engine)}. {self._advice()}"
            )

    def _exception(self, engine, err: BaseException) -> None:
        text = str(err)
        if isinstance(err, ValueError) and ("NaN" in text or "Inf" in text) and "input" in text:
            first = text.splitlines()[0] if text else type(err).__name__
            raise TrainingDivergedError(
                f"training diverged: the network's output holds NaN/Inf at {self._where(engine)} (the loss "
                f"refused it: {first}). {self._advice()}"
            ) from err
        raise err


class ValidateLastEpoch:
    """Trainer handler: also validate after the last epoch when ``val_interval`` does not divide ``max_epochs``,
    so the best-model checkpoint always sees the final weights (``ValidationHandler`` runs every N epochs).

    Args:
        validator: the evaluator that ``ValidationHandler`` runs (``validator.run(epoch)`` is called).
        interval: the ``ValidationHandler``'s interval in epochs (``--val_interval``; values below 1 count as
            1).
    """

    def __init__(self, validator: Evaluator, interval: int = 1) -> None:
        self.validator = validator
        self.interval = max(1, int(interval))

    def attach(self, engine: Engine) -> None:
        """Run this handler at the trainer's ``EPOCH_COMPLETED``.

        Args:
            engine: the trainer.
        """
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Validate with ``validator.run(epoch)`` after the last epoch, when the interval skipped it.

        Args:
            engine: the trainer, at ``EPOCH_COMPLETED``.
        """
        epoch = engine.state.epoch
        if epoch == engine.state.max_epochs and epoch % self.interval != 0:
            self.validator.run(epoch)


class EpochLoss(abc.ABC):
    """Base of the trainer handlers that report the epoch-mean training loss and the epoch's wall time:
    ``attach`` collects them; subclasses act at ``EPOCH_COMPLETED`` in ``__call__``."""

    def __init__(self) -> None:
        self._losses: list[float] = []
        self._t0 = time.perf_counter()

    def attach(self, engine: Engine) -> None:
        """Collect the losses of each epoch (reset at ``EPOCH_STARTED``, one per ``ITERATION_COMPLETED``) and
        run the handler at ``EPOCH_COMPLETED``.

        Args:
            engine: the trainer.
        """
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _epoch_started(self, engine: Engine) -> None:
        self._losses, self._t0 = [], time.perf_counter()

    def _iteration(self, engine: Engine) -> None:
        v = loss_value(engine.state.output)
        if v is not None:
            self._losses.append(v)

    def epoch_loss(self) -> float | None:
        """The mean training loss of the current epoch.

        Returns:
            The mean over the iterations of the epoch so far, or None when none reported a loss.
        """
        return sum(self._losses) / len(self._losses) if self._losses else None

    def epoch_seconds(self) -> float:
        """The wall time of the current epoch so far.

        Returns:
            Seconds since the epoch started (since the handler was built, before the first epoch).
        """
        return time.perf_counter() - self._t0

    @abc.abstractmethod
    def __call__(self, engine: Engine) -> None:
        """What the handler does with this epoch's loss at ``EPOCH_COMPLETED``.

        Args:
            engine: the trainer, at ``EPOCH_COMPLETED``.
        """


class EpochProgress(EpochLoss):
    """Trainer handler: one console line per epoch (rank 0 only), e.g.

    ``[epoch 12/40] loss 0.3121 | val_mean_dice 0.6120, best 0.6244 at epoch 10 | 8.1 s``

    with the epoch-mean training loss, the last validation of ``validator`` (its key metric; "at epoch N"
    when it was not this epoch) and the best so far (``run_state.best``) when another epoch holds it. List
    it after the validation and checkpoint handlers, so the line reports this epoch's validation and best.

    Args:
        validator: the evaluator whose last key metric the line shows; None: no validation part.
        run_state: where the best so far is read (``run_state.best``, ``{"metric", "value", "epoch"}``), the
            :class:`RunDir` of the run; None: no best.
        stream: the text stream to print to; None: standard output.
    """

    prefix = "[epoch "

    def __init__(
        self, validator: Evaluator | None = None, run_state: RunDir | None = None, stream: IO[str] | None = None
    ) -> None:
        super().__init__()
        self.validator, self.run_state, self.stream = validator, run_state, stream

    def line(self, engine: Engine) -> str:
        """The progress line of the trainer's current epoch.

        Args:
            engine: the trainer, at ``EPOCH_COMPLETED``.

        Returns:
            ``[epoch N/max] loss L | <key metric> V[ at epoch M][, best B at epoch K] | S s``: the loss part
            only when the epoch reported a loss, the validation part only when ``validator`` has its key
            metric.
        """
        parts = [f"{self.prefix}{engine.state.epoch}/{engine.state.max_epochs}]"]
        if self.epoch_loss() is not None:
            parts.append(f"loss {self.epoch_loss():.4f}")
        ev = self.validator
        key = getattr(ev.state, "key_metric_name", None) if ev is not None else None
        if key and key in ev.state.metrics:
            val = f"| {key} {float(ev.state.metrics[key]):.4f}"
            if ev.state.epoch != engine.state.epoch:
                val += f" at epoch {ev.state.epoch}"
            best = getattr(self.run_state, "best", None) or {}
            if best.get("epoch") and best["epoch"] != ev.state.epoch:
                val += f", best {best['value']:.4f} at epoch {best['epoch']}"
            parts.append(val)
        parts.append(f"| {self.epoch_seconds():.1f} s")
        return " ".join(parts)

    def __call__(self, engine: Engine) -> None:
        """Print :meth:`line` to ``stream`` and flush it (rank 0 only).

        Args:
            engine: the trainer, at ``EPOCH_COMPLETED``.
        """
        if is_rank_zero():
            print(self.line(engine), file=self.stream, flush=True)


class _NoSummary:
    """What ``summary_writer`` gives ranks other than 0: accepts every call, writes nothing."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


def summary_writer(run_dir: RunDir) -> Any:
    """One TensorBoard ``SummaryWriter`` for ``run_dir.log_dir`` on rank 0 (shared by the train and validation
    ``TensorBoardStatsHandler``), and a writer that writes nothing on the other ranks of a torchrun job, so
    only rank 0 creates event files. Closed by :meth:`RunDir.run <monai_losses_ext.bundle.rundir.RunDir.run>`.

    Args:
        run_dir: the run folder; its ``log_dir`` receives the event files.

    Returns:
        A ``torch.utils.tensorboard.SummaryWriter`` on rank 0 (and outside torchrun); elsewhere an object whose
        every method accepts any arguments and does nothing.
    """
    if not is_rank_zero():
        return _NoSummary()
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(run_dir.log_dir))
