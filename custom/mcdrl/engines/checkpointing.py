"""Full training checkpoints and resume: a restarted run continues where it stopped and loses nothing.

:class:`ResumableCheckpointer` is an ignite handler in ``train#handlers``. Every ``interval`` epochs (and after the
last one) rank 0 writes ``<output_dir>/checkpoints/checkpoint_epochNNNN.pt`` atomically
(:func:`mcdrl.utils.atomic_torch_save`) and keeps the newest ``keep_last`` (2). A checkpoint holds

* the network (bare ``state_dict``), the optimizer, the LR scheduler and the AMP scaler;
* the trainer's epoch and iteration; the validator's best metric and the key-metric ``CheckpointSaver`` state, so
  ``models/model.pt`` is only replaced by a better model after a resume, as without one;
* the intervention state (``intervention_active``; it is re-derived from the epoch by
  :class:`mcdrl.engines.handlers.InterventionSchedule`, and stored to check that the schedule did not change);
* every rank's RNG states: torch (and CUDA), numpy, python ``random`` and the train transforms' own
  ``RandomState`` objects (MONAI random transforms draw from those, not from the global numpy RNG);
* a fingerprint of the network: ``state_dict`` keys, shapes and dtypes, and each submodule's class and scalar
  settings (heads, alpha, readout, ...). A checkpoint of another network configuration is refused, naming the
  differences.

On ``Events.STARTED`` the handler resumes according to ``resume``: ``"auto"`` (default) resumes from the newest
readable checkpoint if there is one, ``True`` requires one, ``False`` starts over (old checkpoints and metric files
are moved aside), a path resumes from that file. An unreadable checkpoint (a truncated file) is skipped with a
warning, falling back to the previous one. The epoch that was running when the process died restarts from its
beginning with the RNG states of the checkpoint, so the resumed run draws the same batches and augmentations as
an uninterrupted one. JSON-lines metric files (``loss_terms.jsonl``) are trimmed to the checkpoint's epoch, so
no epoch appears twice.

Checkpoints hold only tensors and plain Python values: they load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events

from mcdrl.utils import atomic_path, atomic_torch_save

from .handlers import unwrap
from .run_state import capture_rng_state, compare_fingerprints, fingerprint_digest, network_fingerprint, random_states_of, restore_rng_state, state_dict_digest

__all__ = [
    "CHECKPOINT_FORMAT",
    "ResumableCheckpointer",
    "capture_rng_state",
    "compare_fingerprints",
    "list_checkpoints",
    "load_checkpoint",
    "network_fingerprint",
    "restore_rng_state",
    "state_dict_digest",
]

logger = logging.getLogger("mcdrl.engines.checkpointing")
CHECKPOINT_FORMAT = "mcdrl-resume/1"
_NAME = re.compile(r"^checkpoint_epoch(\d{4,})\.pt$")
_REQUIRED = ("format", "epoch", "iteration", "model", "optimizer", "fingerprint", "rng")


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def checkpoint_name(epoch: int) -> str:
    return f"checkpoint_epoch{int(epoch):04d}.pt"


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Checkpoint files in ``directory``, newest (highest epoch) first. Temporary files are never listed."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if p.is_file() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


# ---- loading ----------------------------------------------------------------------------------------------------------
def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read and check one resume checkpoint (``weights_only=True``, on the CPU).

    Raises:
        ValueError: naming the file, when it is unreadable (e.g. truncated by a crash) or not a resume checkpoint.
    """
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, garbage, permission: one message naming the file
        lines = [x.strip() for x in str(e).splitlines() if x.strip()] or [""]
        detail = next((x for x in lines if "WeightsUnpickler error" in x), lines[0])
        raise ValueError(f"resume checkpoint {path} is unreadable ({type(e).__name__}: {detail[:300]})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an MCDRL resume checkpoint (format tag {CHECKPOINT_FORMAT!r} missing); "
                         "models/model.pt is an inference state_dict and cannot be resumed from")
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing:
        raise ValueError(f"resume checkpoint {path} is incomplete: missing {missing}")
    return ckpt


def _parse_resume(resume) -> bool | str | Path:
    if isinstance(resume, bool) or resume is None:
        return bool(resume)
    text = str(resume).strip()
    low = text.lower()
    if low == "auto":
        return "auto"
    if low in ("true", "yes", "1", "always"):
        return True
    if low in ("false", "no", "0", "never", "none", ""):
        return False
    return Path(text).expanduser()


class ResumableCheckpointer:
    """Write full training checkpoints on an epoch interval and resume from them (see the module docstring).

    Args:
        checkpoint_dir: where ``checkpoint_epochNNNN.pt`` files go (``@output_dir + '/checkpoints'``).
        network, optimizer, lr_scheduler: the training objects (the network may be wrapped in DDP).
        resume: ``"auto"``, ``True``, ``False`` or a checkpoint path.
        interval: save every ``interval`` epochs; the last epoch is always saved. keep_last: checkpoints kept (>= 2,
            so that a checkpoint corrupted while being written leaves a good one).
        validator: the ``SupervisedEvaluator`` whose best metric is kept. key_metric_savers: MONAI ``CheckpointSaver``
            objects whose key-metric tracking (which model.pt is the best so far) is kept.
        datasets: datasets (or transforms) whose random transforms' RNG states are kept.
        metrics_files: JSON-lines files with an ``"epoch"`` field, trimmed to the resumed epoch.
        intervention_start_epoch: ``causal_start_epoch``, to check the stored intervention state on resume.

    Shapes: not applicable (ignite handler). Only rank 0 writes files; every rank loads the same checkpoint.
    """

    def __init__(self, checkpoint_dir, network, optimizer, lr_scheduler=None, resume="auto", interval: int = 1, keep_last: int = 2,
                 validator=None, key_metric_savers=(), datasets=(), metrics_files=(), intervention_start_epoch: int | None = None):
        if int(interval) < 1:
            raise ValueError(f"checkpoint interval must be >= 1 epoch, got {interval}")
        if int(keep_last) < 2:
            raise ValueError(f"checkpoint keep_last must be >= 2 (a checkpoint interrupted while being written must leave a good one), got {keep_last}")
        self.dir = Path(checkpoint_dir)
        self.network, self.optimizer, self.lr_scheduler = network, optimizer, lr_scheduler
        self.resume = _parse_resume(resume)
        self.interval, self.keep_last = int(interval), int(keep_last)
        self.validator = validator
        self.key_metric_savers = [s for s in (key_metric_savers or []) if getattr(s, "_key_metric_checkpoint", None) is not None]
        self.datasets = list(datasets or [])
        self.metrics_files = [Path(f) for f in (metrics_files or []) if f]
        self.intervention_start_epoch = intervention_start_epoch
        self.resumed_from: Path | None = None
        self.trainer: Engine | None = None

    def attach(self, engine: Engine) -> None:
        self.trainer = engine
        engine.add_event_handler(Events.STARTED, self.on_started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.on_epoch_completed)

    # ---- saving -------------------------------------------------------------------------------------------------------
    def state_dict(self, engine: Engine) -> dict:
        """The checkpoint content; a collective in DDP (every rank's RNG states are gathered to all)."""
        net = unwrap(self.network)
        rng = capture_rng_state(random_states_of(*self.datasets))
        if _world() > 1:
            gathered: list = [None] * _world()
            dist.all_gather_object(gathered, rng)
            rng_all = gathered
        else:
            rng_all = [rng]
        fp = network_fingerprint(net)
        scaler = getattr(engine, "scaler", None)
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": int(engine.state.epoch),
            "iteration": int(engine.state.iteration),
            "epoch_length": int(engine.state.epoch_length or 0),
            "max_epochs": int(engine.state.max_epochs or 0),
            "world_size": _world(),
            "model": net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None and hasattr(scaler, "state_dict") else None,
            "validator": self._validator_state(),
            "key_metric_savers": [[(float(p), str(f)) for p, f in s._key_metric_checkpoint._saved] for s in self.key_metric_savers],
            "intervention": {"active": bool(getattr(net, "intervention_active", False)), "use_intervention": bool(getattr(net, "use_intervention", False))},
            "rng": rng_all,
            "fingerprint": fp,
            "fingerprint_sha256": fingerprint_digest(fp),
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "torch_version": str(torch.__version__),
        }

    def _validator_state(self) -> dict | None:
        st = getattr(self.validator, "state", None)
        if st is None:
            return None
        best = getattr(st, "best_metric", None)
        return {"best_metric": float(best) if best is not None else None, "best_metric_epoch": int(getattr(st, "best_metric_epoch", -1))}

    def on_epoch_completed(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        if epoch % self.interval and epoch != engine.state.max_epochs:
            return
        state = self.state_dict(engine)
        if _rank() != 0:
            return
        path = self.dir / checkpoint_name(epoch)
        atomic_torch_save(state, path)
        for old in list_checkpoints(self.dir)[self.keep_last:]:
            old.unlink(missing_ok=True)
        logger.info("epoch %d: saved resume checkpoint %s (iteration %d)", epoch, path, engine.state.iteration)

    # ---- resuming -----------------------------------------------------------------------------------------------------
    def _select(self) -> tuple[Path, dict] | None:
        """The checkpoint to resume from, or None to start over. Unreadable files are skipped with a warning."""
        if self.resume is False:
            return None
        if isinstance(self.resume, Path):
            return self.resume, load_checkpoint(self.resume)
        candidates = list_checkpoints(self.dir)
        for i, path in enumerate(candidates):
            try:
                return path, load_checkpoint(path)
            except ValueError as e:
                if _rank() == 0:
                    after = f"falling back to {candidates[i + 1].name}" if i + 1 < len(candidates) else "no older checkpoint left"
                    logger.warning("%s; %s", e, after)
        if self.resume is True:
            raise FileNotFoundError(f"resume=True but {self.dir} holds no readable checkpoint ({len(candidates)} unreadable). "
                                    "Use --resume auto to start over when there is none, or --resume <file>.")
        return None

    def on_started(self, engine: Engine) -> None:
        if _rank() == 0 and self.dir.is_dir():
            for tmp in self.dir.glob(".checkpoint_epoch*.tmp"):  # a write killed before its atomic rename
                logger.warning("removing %s, left by a checkpoint write that was interrupted", tmp.name)
                tmp.unlink(missing_ok=True)
        selected = self._select()
        if _world() > 1:
            dist.barrier()  # every rank has read its checkpoint before rank 0 moves or rewrites files
        if selected is None:
            if _rank() == 0:
                self._start_over()
        else:
            self._apply(engine, *selected)
        if _world() > 1:
            dist.barrier()

    def _start_over(self) -> None:
        """Fresh run: remove temporary files of killed writes, move old checkpoints and metric files aside."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        if self.dir.is_dir():
            old = list(self.dir.glob("checkpoint_epoch*.pt"))
            if old:
                dest = self.dir / f"superseded-{stamp}"
                dest.mkdir(parents=True, exist_ok=True)
                for p in old:
                    os.replace(p, dest / p.name)
                logger.warning("starting a new run: moved %d old checkpoint(s) to %s", len(old), dest)
        for f in self.metrics_files:
            if f.is_file() and f.stat().st_size > 0:
                dest = f.with_name(f"{f.stem}.superseded-{stamp}{f.suffix}")
                os.replace(f, dest)
                logger.warning("starting a new run: moved the old %s to %s", f.name, dest.name)

    def _apply(self, engine: Engine, path: Path, ckpt: dict) -> None:
        net = unwrap(self.network)
        diffs = compare_fingerprints(ckpt["fingerprint"], network_fingerprint(net))
        if diffs:
            raise ValueError(f"resume checkpoint {path} was saved by a different network configuration: " + "; ".join(diffs)
                             + ". Restore the original network settings, pass --resume <matching checkpoint>, or start over with --resume false.")
        epoch, max_epochs = int(ckpt["epoch"]), engine.state.max_epochs
        if max_epochs is not None and epoch > max_epochs:
            raise ValueError(f"resume checkpoint {path} is at epoch {epoch}, beyond max_epochs={max_epochs}. Raise max_epochs or start over with --resume false.")
        net.load_state_dict(ckpt["model"], strict=True)
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError) as e:
            raise ValueError(f"resume checkpoint {path}: its optimizer state does not fit this optimizer ({e}). "
                             "Were the parameter groups (backbone_lr_scale) changed?") from e
        if self.lr_scheduler is not None and ckpt.get("lr_scheduler") is not None:
            self.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
        scaler = getattr(engine, "scaler", None)
        if scaler is not None and ckpt.get("scaler") is not None:
            scaler.load_state_dict(ckpt["scaler"])
        self._restore_trainer(engine, path, ckpt)
        if self.validator is not None and ckpt.get("validator"):
            self.validator.state.best_metric = ckpt["validator"]["best_metric"] if ckpt["validator"]["best_metric"] is not None else self.validator.state.best_metric
            self.validator.state.best_metric_epoch = ckpt["validator"]["best_metric_epoch"]
        for saver, saved in zip(self.key_metric_savers, ckpt.get("key_metric_savers", [])):
            # a best model whose file is gone (killed while MONAI rewrote it) is forgotten: the next validation rewrites it
            kept = [(float(p), str(f)) for p, f in saved if self._saved_file(saver, str(f)).is_file()]
            if len(kept) < len(saved) and _rank() == 0:
                logger.warning("best-metric model file(s) %s missing; the next validation writes a new one",
                               [str(self._saved_file(saver, str(f))) for q, f in saved if (float(q), str(f)) not in kept])
            saver.load_state_dict({"_saved": kept})
        self._restore_intervention(net, epoch, ckpt["intervention"])
        rng = ckpt["rng"]
        if len(rng) != _world():
            logger.warning("checkpoint %s was written by %d process(es), this run has %d: every rank restores rank %d's RNG "
                           "states, so batches and augmentations differ from an uninterrupted run", path.name, len(rng), _world(), 0)
        restore_rng_state(rng[_rank()] if len(rng) == _world() else rng[0], random_states_of(*self.datasets))
        if _rank() == 0:
            for f in self.metrics_files:
                self._trim(f, epoch)
        self.resumed_from = path
        if max_epochs is not None and epoch >= max_epochs:
            logger.info("resumed from %s: the run is already complete (epoch %d of %d); nothing to train. "
                        "Raise max_epochs to train on, or pass --resume false to start over.", path, epoch, max_epochs)
        else:
            logger.info("resumed from %s: epoch %d (iteration %d) done, continuing with epoch %d of %s", path, epoch, engine.state.iteration, epoch + 1, max_epochs)

    @staticmethod
    def _saved_file(saver, name: str) -> Path:
        """The file a key-metric saver wrote for a ``_saved`` entry: MONAI's fixed ``key_metric_filename`` (model.pt)
        replaces ignite's generated name."""
        handler = getattr(saver._key_metric_checkpoint, "save_handler", None)
        return Path(getattr(handler, "dirname", saver.save_dir)) / (getattr(handler, "filename", None) or name)

    def _restore_trainer(self, engine: Engine, path: Path, ckpt: dict) -> None:
        epoch, iteration = int(ckpt["epoch"]), int(ckpt["iteration"])
        length = engine.state.epoch_length
        if length and iteration != epoch * length:
            logger.warning("checkpoint %s: %d iterations over %d epochs, but an epoch now has %d iterations (the data changed); "
                           "counting iterations from %d", path.name, iteration, epoch, length, epoch * length)
            iteration = epoch * length
        engine.state.epoch = epoch
        engine.state.iteration = iteration

    def _restore_intervention(self, net, epoch: int, saved: dict) -> None:
        if not hasattr(net, "intervention_active"):
            return
        net.intervention_active = bool(saved["active"])
        if self.intervention_start_epoch is not None and epoch > 0:
            expected = epoch > int(self.intervention_start_epoch)
            if expected != bool(saved["active"]) and _rank() == 0:
                logger.warning("checkpoint: the intervention was %s after epoch %d, but causal_start_epoch=%s implies %s; "
                               "the schedule changed since the checkpoint", "on" if saved["active"] else "off", epoch,
                               self.intervention_start_epoch, "on" if expected else "off")

    @staticmethod
    def _trim(path: Path, epoch: int) -> None:
        """Keep only the records of epochs <= ``epoch`` in a JSON-lines file (and drop a torn last line)."""
        if not path.is_file():
            return
        lines = path.read_text().splitlines()
        kept, dropped = [], 0
        for line in lines:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            if isinstance(rec, dict) and int(rec.get("epoch", 0)) > epoch:
                dropped += 1
                continue
            kept.append(line)
        if dropped:
            with atomic_path(path) as tmp:
                tmp.write_text("".join(x + "\n" for x in kept))
            logger.info("%s: dropped %d record(s) written after the checkpoint (epoch > %d)", path.name, dropped, epoch)
