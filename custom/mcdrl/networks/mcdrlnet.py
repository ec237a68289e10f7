"""MCDRLNet: the whole MCDRL segmentation network, composed of its named parts.

    image (B, 3, H, W) in [0, 1]
      -> resize to the CLIP input size S
      -> CLIPVisualBackbone        dense C (B, L = h*w, d) [+ global F_vis (B, d) in training]
      -> RegionSelector (MTRS)     top-alpha indices (B, N) by prompt similarity
      -> CausalIntervention        F_ca = A(F, Z) over the ConfounderDictionary Z (M, d)
      -> scatter F_ca into C       (unselected positions keep C), grid (B, d, h, w)
      -> SegmentationHead          logits, resized back to (B, 2, H, W)

The parts are injected (Segment Anything style): the bundle config builds each one as a nested ``_target_``
component, so a backbone swap or an ablation is a config edit. Eval ``forward`` returns one tensor, so the
network traces to TorchScript and fits ``verify_net_in_out``, MONAI Label and MONAI Deploy. Training
``forward`` returns a dict with the auxiliary terms the losses need.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mcdrl.errors import ConfigError

from .clip_backbone import CLIPVisualBackbone
from .dictionary import ConfounderDictionary
from .head import SegmentationHead
from .intervention import CausalIntervention
from .region_selection import RegionSelector

__all__ = ["MCDRLNet"]


class MCDRLNet(nn.Module):
    """MCDRL: CLIP visual -> MTRS -> causal intervention over the confounder dictionary -> segmentation head.

    Args:
        backbone: the CLIP visual encoder with dense read-out.
        dictionary: frozen text embeddings (Z, e_k, t_bar_k, e_bg) as buffers.
        selector: MTRS. ``alpha=1.0`` is the "w/o MTRS" ablation.
        intervention: the cross-attention stack. Its parameters exist even when switched off, so checkpoints of all
            ablations share one key set.
        head: the decoder.
        use_intervention: False is the "w/o CDRL" ablation (the intervention is never applied).
        dropout: if not None, overrides the head's dropout probability (MONAI Label injects it).

    The runtime switch :attr:`intervention_active` (set by :class:`mcdrl.engines.handlers.InterventionSchedule`) turns the
    intervention off for the first epochs of training; it defaults to on, so a loaded model infers with it.

    Shapes:
        eval ``forward``: (B, 3, H, W) -> logits (B, 2, H, W).
        train ``forward``: (B, 3, S, S) -> {"pred": (B, 2, S, S), "image_embedding": F_vis (B, d),
        "region_embedding": Pool(F_ca) (B, d), "intervention_on": bool}.
    """

    def __init__(
        self,
        backbone: CLIPVisualBackbone,
        dictionary: ConfounderDictionary,
        selector: RegionSelector,
        intervention: CausalIntervention,
        head: SegmentationHead,
        use_intervention: bool = True,
        dropout: float | None = None,
    ):
        super().__init__()
        d = backbone.embed_dim
        got = {
            "dictionary": int(dictionary.confounders.shape[1]),
            "intervention": int(intervention.layers[0].q_proj.in_features),
            "head": int(head.proj[0].in_channels),
        }
        for part, dim in got.items():
            if dim != d:
                raise ConfigError(f"MCDRLNet: the CLIP backbone {backbone.model_name!r} has embedding dimension {d}, but the {part} was built for {dim}.")
        dictionary.check_clip_identity(backbone.model_name, backbone.weights_sha256)
        self.backbone = backbone
        self.dictionary = dictionary
        self.selector = selector
        self.intervention = intervention
        self.head = head
        self.use_intervention = bool(use_intervention)
        self.intervention_active = True
        if dropout is not None:
            self.head.dropout.p = float(dropout)
        self.image_size = backbone.image_size
        self.grid_size = backbone.grid_size

    @property
    def applies_intervention(self) -> bool:
        return self.use_intervention and self.intervention_active

    def _regions(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """tokens (B, L, d) -> (tokens with F_ca scattered in (B, L, d), F_ca (B, N, d), idx (B, N))."""
        d = self.dictionary
        idx, _ = self.selector(tokens, d.class_embeddings, d.background_embedding)
        gather_idx = idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
        f = torch.gather(tokens, 1, gather_idx)
        if self.applies_intervention:
            f = self.intervention(f, d.confounders.to(f.dtype))
            tokens = tokens.scatter(1, gather_idx, f)
        return tokens, f, idx

    def _decode(self, tokens: torch.Tensor, size: torch.Size) -> torch.Tensor:
        b, _, dim = tokens.shape
        grid = tokens.transpose(1, 2).reshape(b, dim, self.grid_size, self.grid_size)
        logits = self.head(grid)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    def _resize_in(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and (x.dim() != 4 or x.shape[1] != 3):
            raise ValueError(f"MCDRLNet expects (B, 3, H, W) RGB input in [0, 1], got shape {tuple(x.shape)}")
        s = self.image_size
        return F.interpolate(x, size=[s, s], mode="bilinear", align_corners=False, antialias=True)

    def forward(self, x: torch.Tensor):
        size = x.shape[-2:]  # kept symbolic, so a traced network follows the input size
        xs = self._resize_in(x)
        if self.training:
            tokens, pooled = self.backbone.forward_tokens(xs)
            tokens, f_ca, _ = self._regions(tokens)
            return {
                "pred": self._decode(tokens, size),
                "image_embedding": pooled,
                "region_embedding": f_ca.mean(dim=1),
                "intervention_on": self.applies_intervention,
            }
        tokens, _, _ = self._regions(self.backbone.forward_dense(xs))
        return self._decode(tokens, size)

    @torch.no_grad()
    def predict_with_confounders(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval logits (B, 2, H, W) and the intervention's attention over the M confounders (B, M), averaged over
        heads and selected regions (uniform 1/M when the intervention is off)."""
        size = x.shape[-2:]
        tokens = self.backbone.forward_dense(self._resize_in(x))
        z = self.dictionary.confounders
        if self.applies_intervention:  # one pass of the intervention gives F_ca and the weights (== forward's logits)
            idx, _ = self.selector(tokens, self.dictionary.class_embeddings, self.dictionary.background_embedding)
            gather_idx = idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
            f, weights = self.intervention.forward_with_weights(torch.gather(tokens, 1, gather_idx), z.to(tokens.dtype))
            tokens = tokens.scatter(1, gather_idx, f)
        else:
            weights = torch.full((x.shape[0], z.shape[0]), 1.0 / z.shape[0], device=x.device)
        return self._decode(tokens, size), weights

    @property
    def confounder_names(self) -> list[str]:
        return self.dictionary.confounder_names
