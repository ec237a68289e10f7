"""Choosing the presence threshold on source-site validation, inside the bundle's own validation loop.

:class:`mcdrl.networks.mcdrlnet.MCDRLNet` empties the mask of an image whose lesion score is below its buffer
``presence_threshold``. The threshold is a setting, so it is chosen on source-site validation only, and it is stored
with the weights:

* :func:`scored_iteration` is the validator's ``iteration_update``: the standard evaluator iteration, except that the
  network gives its logits *before* the presence decision and the lesion score (``forward_with_score``), and the
  score goes into ``engine.state.output["lesion_score"]``;
* :class:`PresenceThresholdDice` is the key metric ``val_mean_dice``: per-image Dice with the mask emptied below a
  threshold, for every threshold between two validation scores, and the best one is written into the network's
  buffer. The saver that keeps the best epoch's ``model.pt`` therefore saves the threshold that epoch was scored with.

Evaluation of a trained model (``evaluate.json``) uses neither: it runs the plain forward with the stored threshold,
so a held-out site is never used to choose it.
"""

from __future__ import annotations

import logging

import numpy as np
import ignite.distributed as idist
import torch
from ignite.metrics import Metric
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys

from .handlers import unwrap

__all__ = ["PresenceThresholdDice", "best_threshold", "scored_iteration"]

logger = logging.getLogger("mcdrl.train")


def _gather_uneven(rows: torch.Tensor) -> torch.Tensor:
    """All ranks' (n_r, C) rows, concatenated in rank order, for shards of different lengths (the validation sampler
    does not pad): (n_r, C) on each rank -> (sum n_r, C) on every rank. Collectives need equal shapes, so each rank
    pads to the longest shard and the padding is cut off again."""
    counts = idist.all_gather(torch.tensor([rows.shape[0]], dtype=torch.int64))
    longest = int(counts.max())
    padded = torch.full((longest, rows.shape[1]), float("nan"), dtype=rows.dtype)
    padded[: rows.shape[0]] = rows
    gathered = idist.all_gather(padded)
    return torch.cat([gathered[r * longest: r * longest + int(n)] for r, n in enumerate(counts.tolist())])


def scored_iteration(engine, batchdata: dict) -> dict:
    """``SupervisedEvaluator`` iteration that also records the lesion score (B,) as ``output["lesion_score"]``.

    Networks without ``forward_with_score`` (a plain UNet) run through the evaluator's inferer as usual; their score is
    NaN, which :class:`PresenceThresholdDice` reads as "no presence decision".
    """
    if batchdata is None:
        raise ValueError("Must provide batch data for current iteration.")
    batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
    inputs, targets = batch[0], batch[1]
    engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
    net = unwrap(engine.network)
    with engine.mode(engine.network):
        if hasattr(net, "forward_with_score"):
            pred, score = net.forward_with_score(inputs)
            engine.state.output[Keys.PRED] = pred
            engine.state.output["lesion_score"] = score
        else:
            engine.state.output[Keys.PRED] = engine.inferer(inputs, engine.network)
            engine.state.output["lesion_score"] = torch.full((inputs.shape[0],), float("nan"), device=inputs.device)
    engine.fire_event(IterationEvents.FORWARD_COMPLETED)
    engine.fire_event(IterationEvents.MODEL_COMPLETED)
    return engine.state.output


def best_threshold(scores: np.ndarray, dice_kept: np.ndarray, label_empty: np.ndarray) -> tuple[float, float]:
    """The threshold t maximising the mean per-image Dice when images with score < t get an empty mask.

    An emptied image scores 1 if its label is empty, else 0. Candidates: 0 (nothing emptied) and the midpoints
    between consecutive distinct scores; ties go to the lowest t (the fewest emptied masks).

    Args:
        scores: (N,) lesion scores. dice_kept: (N,) Dice of the un-emptied masks. label_empty: (N,) bool.

    Returns:
        (t, mean Dice at t).
    """
    s = np.unique(np.asarray(scores, float))
    candidates = np.concatenate([[0.0], (s[:-1] + s[1:]) / 2, [s[-1] + 1e-6] if s.size else []])
    empty_score = np.asarray(label_empty, float)
    best_t, best = 0.0, -1.0
    for t in candidates:
        d = np.where(scores < t, empty_score, dice_kept).mean()
        if d > best + 1e-12:
            best_t, best = float(t), float(d)
    return best_t, best


class PresenceThresholdDice(Metric):
    """Mean per-image lesion Dice after the best presence threshold on these images, which it stores in the network.

    Args:
        network: the MCDRL network whose ``presence_threshold`` buffer is set (wrappers are unwrapped). Without a
            presence decision (``presence_decision`` false, or no such buffer) the metric is the plain mean Dice.
        output_transform: ``from_engine(["pred", "label", "lesion_score"])``: post-processed one-hot (2, H, W) masks.

    Per image, an empty label with an empty prediction scores 1 (the bundle's rule, ``ignore_empty=False``).
    """

    def __init__(self, network, output_transform=lambda x: x, device="cpu"):
        self.network = network
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._dice, self._empty, self._scores = [], [], []

    @torch.no_grad()
    def iteration_completed(self, engine) -> None:  # three decollated lists, not ignite's (y_pred, y) pair
        self.update(self._output_transform(engine.state.output))

    def update(self, output) -> None:
        preds, labels = output[0], output[1]
        scores = output[2] if len(output) > 2 else [None] * len(preds)
        for p, y, s in zip(preds, labels, scores):
            pm, ym = p[1].bool(), y[1].bool()
            denom = int(pm.sum() + ym.sum())
            self._dice.append(1.0 if denom == 0 else float(2 * (pm & ym).sum()) / denom)
            self._empty.append(not bool(ym.any()))
            self._scores.append(np.nan if s is None else float(s))

    def compute(self) -> float:
        cols = torch.tensor([self._dice, self._empty, self._scores], dtype=torch.float64).reshape(3, -1)
        if idist.get_world_size() > 1:  # every rank chooses from all validation images (DDP validation is sharded)
            cols = _gather_uneven(cols.t().contiguous()).t()
        dice, empty, scores = cols[0].numpy(), cols[1].numpy().astype(bool), cols[2].numpy()
        if dice.size == 0:
            raise RuntimeError("PresenceThresholdDice needs at least one validation image")
        net = unwrap(self.network)
        if not getattr(net, "presence_decision", False) or np.isnan(scores).any():
            return float(dice.mean())
        t, best = best_threshold(scores, dice, empty)
        net.presence_threshold.fill_(t)
        rejected = scores < t
        logger.info("presence threshold %.4f (validation): empties %d of %d masks (%d of %d lesion-free frames), Dice %.4f (%.4f without)",
                    t, int(rejected.sum()), len(dice), int((rejected & empty).sum()), int(empty.sum()), best, dice.mean())
        return best
