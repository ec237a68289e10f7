"""Which confounders a frame shows, read zero-shot from the image embedding against the confounder dictionary [ours].

For a frame with CLIP image embedding F_vis (the pooled embedding the network's forward already computes) and the
dictionary's confounder embeddings z_m (M, d), the readout's score of confounder m is

    s_m = cos(F_vis, z_m) - cos(F_vis, r)

where r is the text embedding of a neutral reference prompt ("An endoscopy image"). The reference term is the same for
every confounder of a frame, so the ranking of a frame's confounders is the ranking of cos(F_vis, z_m); what it
removes is how "endoscopic" the frame looks overall, which makes the scores of different frames comparable (the
per-confounder AUC on held-out source sites rises from 0.84 to 0.96 with it; see
``bundle/docs/results/experiments/confounder_readout/``). A confounder is read as *present* when
``s_m >= thresholds[m]``; each threshold is set on source-site frames (sites A-E) at a false-positive rate (2%) among
the frames that do not have it.

The calibration (r, the thresholds, and the share of source frames read with each confounder, the training sites'
profile) is a function of the trained visual encoder, so it lives in buffers that are saved in ``model.pt`` with the
weights: a model and its calibration cannot be separated. ``calibrated`` is 0 until
:meth:`ConfounderReadout.set_calibration` has run (``python -m monai.bundle run calibrate_readout ...``, see
:mod:`mcdrl.engines.readout_calibration`). Without a calibration the ranking still works (r = 0 scores plain cosines)
but :meth:`present` refuses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mcdrl.errors import ConfigError

__all__ = ["ConfounderReadout", "thresholds_at_false_positive_rate"]

_HOW = ("Calibrate it on the source sites: python -m monai.bundle run calibrate_readout --config_file "
        "\"['bundle/configs/inference.json','bundle/configs/site_profile.json']\"")


def thresholds_at_false_positive_rate(scores: torch.Tensor, labels: torch.Tensor, rate: float) -> torch.Tensor:
    """Per-confounder thresholds such that a fraction ``rate`` of the frames *without* the confounder score at or above it.

    Args:
        scores: (N, M) readout scores of labelled frames. labels: (N, M) bool, the confounders each frame has.
        rate: the false-positive rate, in (0, 1).

    Returns:
        (M,) thresholds: the (1 - rate) quantile of the negatives' scores (linear interpolation); +inf for a confounder
        that every frame has (no negatives to set it on).

    Example:
        >>> thresholds_at_false_positive_rate(torch.tensor([[0.0], [1.0], [2.0]]), torch.tensor([[False], [False], [True]]), 0.5)
        tensor([0.5000])
    """
    if not 0.0 < rate < 1.0:
        raise ValueError(f"false-positive rate must be in (0, 1), got {rate}")
    labels = labels.bool()
    out = torch.full((scores.shape[1],), float("inf"))
    for m in range(scores.shape[1]):
        neg = scores[~labels[:, m], m].float()
        if neg.numel():
            out[m] = torch.quantile(neg, 1.0 - rate)
    return out


class ConfounderReadout(nn.Module):
    """Confounder scores of frames from their image embeddings, and which confounders are present.

    Args:
        num_confounders: M, the dictionary's size.
        embed_dim: d, the CLIP joint-space dimension.

    Buffers (saved in ``model.pt``):
        reference (d,): the neutral prompt's text embedding r (zeros until calibrated).
        thresholds (M,): presence thresholds on the scores.
        source_share (M,): the share of source-site frames read with each confounder (the training sites' profile).
        calibrated (): 1 once calibrated.

    Shapes:
        ``forward(image_embedding (B, d), confounders (M, d))`` -> scores (B, M).

    Example:
        >>> readout = ConfounderReadout(12, 192)
        >>> scores = readout(f_vis, dictionary.confounders)   # (B, 12)
        >>> present = readout.present(scores)                  # (B, 12) bool, once calibrated
    """

    def __init__(self, num_confounders: int, embed_dim: int):
        super().__init__()
        m, d = int(num_confounders), int(embed_dim)
        self.register_buffer("reference", torch.zeros(d))
        self.register_buffer("thresholds", torch.zeros(m))
        self.register_buffer("source_share", torch.zeros(m))
        self.register_buffer("calibrated", torch.zeros(()))

    @property
    def is_calibrated(self) -> bool:
        return bool(self.calibrated.item() > 0)

    def forward(self, image_embedding: torch.Tensor, confounders: torch.Tensor) -> torch.Tensor:
        """s_m = cos(F_vis, z_m) - cos(F_vis, r): (B, d), (M, d) -> (B, M)."""
        f = F.normalize(image_embedding.float(), dim=-1)
        cos = f @ F.normalize(confounders.float(), dim=-1).t()
        return cos - (f @ F.normalize(self.reference.float(), dim=0))[:, None]

    def present(self, scores: torch.Tensor) -> torch.Tensor:
        """Which confounders each frame shows: (B, M) scores -> (B, M) bool. Raises ConfigError when uncalibrated."""
        if not self.is_calibrated:
            raise ConfigError(f"This model's confounder readout is not calibrated (its buffers in model.pt are unset). {_HOW}")
        return scores >= self.thresholds.to(scores.device)

    @torch.no_grad()
    def set_calibration(self, reference: torch.Tensor, image_embeddings: torch.Tensor, labels: torch.Tensor,
                        confounders: torch.Tensor, false_positive_rate: float = 0.02) -> dict:
        """Calibrate on labelled source-site frames; returns what was set (lists, for a report).

        Args:
            reference: (d,) text embedding of the neutral prompt.
            image_embeddings: (N, d) F_vis of the source frames. labels: (N, M) bool, their confounders.
            confounders: (M, d) the dictionary. false_positive_rate: see :func:`thresholds_at_false_positive_rate`.
        """
        if image_embeddings.shape[0] != labels.shape[0] or labels.shape[1] != self.thresholds.shape[0]:
            raise ValueError(f"calibration frames: {tuple(image_embeddings.shape)} embeddings against {tuple(labels.shape)} labels (M = {self.thresholds.shape[0]})")
        self.reference.copy_(F.normalize(reference.float(), dim=0))
        scores = self(image_embeddings, confounders)
        self.thresholds.copy_(thresholds_at_false_positive_rate(scores, labels, false_positive_rate))
        self.calibrated.fill_(1.0)
        self.source_share.copy_(self.present(scores).float().mean(0))
        return {"thresholds": self.thresholds.tolist(), "source_share": self.source_share.tolist(),
                "labelled_share": labels.float().mean(0).tolist(), "frames": int(labels.shape[0])}

    def extra_repr(self) -> str:
        return f"M={self.thresholds.shape[0]}, d={self.reference.shape[0]}, calibrated={self.is_calibrated}"
