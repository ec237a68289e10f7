"""A trained image-level lesion score for the presence decision [ours, issue 23 item 2].

The presence decision of :class:`mcdrl.networks.mcdrlnet.MCDRLNet` empties the mask of a frame whose lesion score
is below ``presence_threshold``. Its default score is zero-shot: 1 - P(normal mucosa | F_vis) over the class prompts
and "normal mucosa". :class:`PresenceProbe` replaces it with a linear score on the same embedding,

    s = sigmoid(w . n(F_vis) + b),        n(x) = x / ||x||,

fitted after training on the source sites' frames and on do(z) copies of them (dictionary confounders applied as
image effects, then photometric shifts), so that what the score learns is the lesion and not the confounders that
travel with it at the source sites (see :mod:`mcdrl.engines.presence_calibration`).

Like the confounder readout, the probe is a function of the trained visual encoder, so it lives in buffers saved in
``model.pt`` with the weights. ``calibrated`` is 0 until it is fitted; until then the network keeps its zero-shot
score, so a network built with a probe trains exactly as one without.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PresenceProbe"]


class PresenceProbe(nn.Module):
    """A linear lesion score on the CLIP image embedding, stored as buffers.

    Args:
        embed_dim: d, the CLIP embedding dimension.

    Buffers: ``weight`` (d,), ``bias`` (), ``calibrated`` () (0 or 1).

    Shapes: ``forward``: F_vis (B, d) -> lesion score (B,) in [0, 1].

    Example:
        >>> probe = PresenceProbe(4)
        >>> probe.set_weights(torch.tensor([1.0, 0, 0, 0]), -0.5)
        >>> probe(torch.tensor([[2.0, 0, 0, 0]])).round(decimals=3)
        tensor([0.6220])
    """

    def __init__(self, embed_dim: int):
        super().__init__()
        self.register_buffer("weight", torch.zeros(int(embed_dim)))
        self.register_buffer("bias", torch.zeros(()))
        self.register_buffer("calibrated", torch.zeros(()))

    @property
    def is_calibrated(self) -> bool:
        return bool(self.calibrated > 0)

    def set_weights(self, weight: torch.Tensor, bias: float) -> None:
        """Store a fitted probe: ``weight`` (d,) on n(F_vis) and ``bias``; marks it calibrated."""
        if weight.shape != self.weight.shape:
            raise ValueError(f"probe weight must have shape {tuple(self.weight.shape)}, got {tuple(weight.shape)}")
        self.weight.copy_(weight.to(self.weight))
        self.bias.fill_(float(bias))
        self.calibrated.fill_(1.0)

    def forward(self, image_embedding: torch.Tensor) -> torch.Tensor:
        """sigmoid(w . n(F_vis) + b): (B, d) -> (B,)."""
        x = F.normalize(image_embedding.float(), dim=-1)
        return torch.sigmoid(x @ self.weight.float() + self.bias.float())
