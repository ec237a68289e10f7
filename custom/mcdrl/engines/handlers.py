"""Ignite handlers: the intervention schedule, per-term loss logging, the time budget and an atomic model saver.

They attach to MONAI's ``SupervisedTrainer`` / ``SupervisedEvaluator`` through ``train#handlers`` and
``validate#handlers``; none edits the engines.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointSaver

__all__ = ["AtomicCheckpointSaver", "InterventionSchedule", "LossTermsLogger", "TimeBudget", "unwrap"]

logger = logging.getLogger("mcdrl.train")


def unwrap(network):
    """The bare network inside DistributedDataParallel / DataParallel wrappers."""
    return getattr(network, "module", network)


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class InterventionSchedule:
    """Switch the causal intervention on after ``start_epoch`` epochs [paper: after epoch 10].

    At the start of epoch e (1-based), ``network.intervention_active = e > start_epoch``. The state is derived from
    the epoch alone, so a resumed run restores it without storing anything. Validation after an epoch runs with the
    same setting as the epoch it follows.

    [ours] With ``select_after_start``, model selection forgets the epochs before the switch: when the intervention
    comes on, the validator's best metric and the key-metric checkpoint savers are reset, so ``model.pt`` is the best
    epoch of the configured model (intervention on), never a pre-intervention network.

    [ours] With ``warmup_epochs`` and an ``optimizer`` whose parameter groups include one named ``"intervention"``
    (:func:`mcdrl.engines.training.param_groups`), that group's learning rate ramps linearly from 0 over the first
    ``warmup_epochs`` epochs after the switch, per iteration: the factor is applied for each optimizer step and taken
    back after it, so the epoch-level LR scheduler never sees it, and it follows from the iteration count alone (a
    resumed run ramps the same).

    Args:
        network: the MCDRL network (wrapped or not).
        start_epoch: the number of epochs trained without the intervention (0 = on from the start).
        validator: the evaluator whose ``best_metric`` is reset (with ``select_after_start``).
        key_metric_savers: MONAI ``CheckpointSaver`` handlers whose key-metric checkpoint is reset.
        select_after_start: reset model selection when the intervention comes on.
        optimizer: the trainer's optimizer (for the warm-up). warmup_epochs: length of the ramp (0: none).
    """

    def __init__(self, network, start_epoch: int = 10, validator=None, key_metric_savers=(), select_after_start: bool = False,
                 optimizer=None, warmup_epochs: float = 0.0):
        self.network = network
        self.start_epoch = int(start_epoch)
        self.validator = validator
        self.key_metric_savers = list(key_metric_savers or [])
        self.select_after_start = bool(select_after_start)
        self.optimizer = optimizer
        self.warmup_epochs = float(warmup_epochs or 0.0)
        self._restore: list[tuple[dict, float]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)
        if self.warmup_epochs > 0 and self.optimizer is not None:
            engine.add_event_handler(Events.ITERATION_STARTED, self._warm)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._unwarm)

    def warmup_factor(self, iteration: int, epoch_length: int) -> float:
        """The intervention group's learning-rate factor for (1-based) ``iteration``: 0 < f <= 1 once on."""
        since = iteration - self.start_epoch * epoch_length  # 1 at the first step with the intervention on
        return max(0.0, min(1.0, since / max(1.0, self.warmup_epochs * epoch_length)))

    def _warm(self, engine: Engine) -> None:
        factor = self.warmup_factor(engine.state.iteration, engine.state.epoch_length)
        self._restore = [(g, g["lr"]) for g in self.optimizer.param_groups if g.get("name") == "intervention"]
        for g, lr in self._restore:
            g["lr"] = lr * factor

    def _unwarm(self, engine: Engine) -> None:
        for g, lr in self._restore:
            g["lr"] = lr
        self._restore = []

    def __call__(self, engine: Engine) -> None:
        net = unwrap(self.network)
        if not hasattr(net, "intervention_active"):  # a network without the intervention (e.g. a UNet baseline)
            return
        active = engine.state.epoch > self.start_epoch
        if active != net.intervention_active or engine.state.epoch == 1:
            logger.info("epoch %d: causal intervention %s%s", engine.state.epoch, "ON" if active else "OFF",
                        "" if net.use_intervention else " in the schedule, never applied (use_intervention=false)")
        net.intervention_active = active
        if self.select_after_start and self.start_epoch > 0 and engine.state.epoch == self.start_epoch + 1:
            self.reset_selection()

    def reset_selection(self) -> None:
        """Forget the best metric so far: the next validation's checkpoint becomes ``model.pt``."""
        if self.validator is not None:
            self.validator.state.best_metric = -1
            self.validator.state.best_metric_epoch = -1
        for saver in self.key_metric_savers:
            ckpt = getattr(saver, "_key_metric_checkpoint", None)
            if ckpt is not None:
                ckpt._saved = []  # ignite keeps the n best here; empty -> the next score is saved (same file name)
        logger.info("model selection restarts now that the intervention is on (select_after_causal_start)"
                    if getattr(unwrap(self.network), "use_intervention", True) else
                    "model selection restarts at causal_start_epoch (select_after_causal_start; the intervention itself is off)")


class LossTermsLogger:
    """Log the mean of each loss term per epoch, and append it as one JSON line to ``output_file`` (rank 0 only).

    Args:
        loss_function: the :class:`mcdrl.networks.losses.MCDRLLoss` whose ``last_terms`` are read after every iteration.
        network: to record whether the intervention was on.
        output_file: JSON-lines file, one record per epoch (None: log only).
    """

    def __init__(self, loss_function, network=None, output_file: str | os.PathLike | None = None):
        self.loss_function = loss_function
        self.network = network
        self.output_file = Path(output_file) if output_file else None
        self._sums: dict[str, float] = defaultdict(float)
        self._count = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._emit)

    def _reset(self, engine: Engine) -> None:
        self._sums.clear()
        self._count = 0

    def _accumulate(self, engine: Engine) -> None:
        for k, v in getattr(self.loss_function, "last_terms", {}).items():
            self._sums[k] += v
        self._count += 1

    def _emit(self, engine: Engine) -> None:
        means = {k: v / max(self._count, 1) for k, v in self._sums.items()}
        on = getattr(unwrap(self.network), "applies_intervention", None) if self.network is not None else None
        on = None if on is None else bool(on)
        record = {"epoch": engine.state.epoch, "iteration": engine.state.iteration, "intervention": on, **{f"loss_{k}": round(v, 6) for k, v in means.items()}}
        logger.info("epoch %d loss terms: %s", engine.state.epoch, " ".join(f"{k}={v:.4f}" for k, v in means.items()) + f" intervention={'on' if on else 'off'}")
        if self.output_file is not None and _rank() == 0:
            self.output_file.parent.mkdir(parents=True, exist_ok=True)
            with open(self.output_file, "a") as f:
                f.write(json.dumps(record) + "\n")


class TimeBudget:
    """Stop training at an epoch boundary once the next epoch would end past ``seconds`` of wall time, and record the
    run's wall time [ours].

    The budget counts from the trainer's start (validation included), and an epoch is only begun when the mean epoch
    time so far says it will end within the budget, so the run never exceeds it by more than one epoch's variation.
    Used to give two models the same wall time (``python -m mcdrl.evaluation.compare``).

    Args:
        seconds: the wall-time budget; None or 0: no limit (the time is still recorded).
        record_file: a JSON file that receives ``{"seconds", "epochs", "stopped_by_budget"}`` when training ends
            (rank 0 only). A resumed run counts only the time of its own process.
        clock: the time source in seconds (default ``time.perf_counter``); tests pass their own to decide the time.
    """

    def __init__(self, seconds: float | None = None, record_file: str | os.PathLike | None = None,
                 clock: Callable[[], float] = time.perf_counter):
        self.seconds = float(seconds) if seconds else 0.0
        self.record_file = Path(record_file) if record_file else None
        self.clock = clock
        self._t0 = 0.0
        self._epochs = 0
        self._stopped = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._check)
        engine.add_event_handler(Events.COMPLETED, self._record)

    def _start(self, engine: Engine) -> None:
        self._t0, self._epochs, self._stopped = self.clock(), 0, False

    def _check(self, engine: Engine) -> None:
        self._epochs += 1
        elapsed = self.clock() - self._t0
        per_epoch = elapsed / self._epochs
        if self.seconds > 0 and elapsed + per_epoch > self.seconds and engine.state.epoch < engine.state.max_epochs:
            logger.info("time budget: %.0f s used after epoch %d (%.0f s per epoch), budget %.0f s: stopping", elapsed, engine.state.epoch, per_epoch, self.seconds)
            self._stopped = True
            engine.terminate()

    def _record(self, engine: Engine) -> None:
        elapsed = self.clock() - self._t0
        logger.info("training took %.1f s (%.1f min) over %d epoch(s) in this process", elapsed, elapsed / 60, self._epochs)
        if self.record_file is None or _rank() != 0:
            return
        from mcdrl.utils import atomic_path

        with atomic_path(self.record_file) as tmp:
            Path(tmp).write_text(json.dumps({"seconds": round(elapsed, 1), "epochs": self._epochs, "last_epoch": engine.state.epoch,
                                             "budget_s": self.seconds or None, "stopped_by_budget": self._stopped}, indent=1) + "\n")



class _AtomicFileSaver(BaseSaveHandler):
    """ignite save handler: ``torch.save`` to a temporary file beside the target, fsync, rename.

    With a fixed ``filename`` (MONAI's ``model.pt``), ``remove`` is a no-op: ignite removes the old best *before* it
    saves the new one, and the rename replaces it, so a crash in between can no longer leave no file at all.
    """

    def __init__(self, dirname, filename: str | None = None):
        self.dirname = Path(dirname)
        self.filename = filename

    def __call__(self, checkpoint, filename: str, metadata=None) -> None:
        if _rank() != 0:
            return
        from mcdrl.utils import atomic_torch_save

        atomic_torch_save(checkpoint, self.dirname / (self.filename or filename))

    def remove(self, filename: str) -> None:
        if _rank() != 0 or self.filename is not None:
            return
        (self.dirname / filename).unlink(missing_ok=True)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments), writing every file atomically.

    MONAI's own saver writes ``model.pt`` in place (ignite's ``DiskSaver(atomic=False)``), so a run killed while
    saving leaves a truncated ``model.pt``. This one writes a temporary file beside it and renames it over the old one
    (:func:`mcdrl.utils.atomic_torch_save`): the file under the final name is always a whole checkpoint, the previous
    best until the new one is complete. It is still a ``monai.handlers.CheckpointSaver`` for every ``isinstance`` check.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for ckpt in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if ckpt is not None:
                old = ckpt.save_handler
                ckpt.save_handler = _AtomicFileSaver(old.dirname, getattr(old, "filename", None))
