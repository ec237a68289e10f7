"""MCDRLNet: the whole MCDRL segmentation network, composed of its named parts.

    image (B, 3, H, W) in [0, 1]
      -> resize to the CLIP input size S
      -> CLIPVisualBackbone        dense C (B, L = h*w, d) and global F_vis (B, d)
      -> [ConfounderProjection]    text-guided de-confounding of C (``deconfounding="all"``) [ours]
      -> RegionSelector (MTRS)     top-alpha indices (B, N) by prompt similarity
      -> [ConfounderProjection]    ... or of the regions only (``deconfounding="regions"``) [ours]
      -> CausalIntervention        F_ca = A(F, Z) over the ConfounderDictionary Z (M, d)
      -> scatter F_ca into C       (unselected positions keep C), grid (B, d, h, w)
      -> SegmentationHead          logits (B, 2, H, W), with skips from the image at its own resolution H x W (or at
                                   ``head_resolution``) [ours]; the paper's head (no skips) decodes to S and is resized;
                                   with ``classifier="text_queries"`` the class prompts and F_vis classify the pixels;
                                   or UNetHead: a MONAI UNet over the image, the grid joining at its bottleneck [ours]
      -> presence decision         F_vis against the class prompts and "normal mucosa": the lesion channel is emptied
                                   when the image-level lesion score is below ``presence_threshold`` [ours]; opt-in,
                                   a trained PresenceProbe on F_vis gives the score instead [ours]
      -> [ConfounderReadout]       (reports only) which confounders the frame shows: F_vis against Z, calibrated on
                                   the source sites (``predict_with_confounders``, ``read_frames``) [ours]

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
from .confounder_readout import ConfounderReadout
from .deconfounding import ConfounderProjection
from .dictionary import ConfounderDictionary
from .head import SegmentationHead, UNetHead
from .intervention import CausalIntervention
from .presence import PresenceProbe
from .region_selection import RegionSelector

__all__ = ["DECONFOUNDING_SCOPES", "HEAD_INPUTS", "MCDRLNet"]

#: where the text-guided projection acts: nowhere (the paper), on every dense position, or on the MTRS regions only
DECONFOUNDING_SCOPES = ("none", "all", "regions")
#: what the head reads: the grid with F_ca scattered in (the paper), or that grid beside the CLIP's own C [ours]
HEAD_INPUTS = ("intervened", "both")
#: how far below the background logit a rejected image's lesion logits are put (softmax lesion prob < 1e-13)
_REJECT_MARGIN = 30.0


class MCDRLNet(nn.Module):
    """MCDRL: CLIP visual -> MTRS -> causal intervention over the confounder dictionary -> segmentation head.

    Args:
        backbone: the CLIP visual encoder with dense read-out.
        dictionary: frozen text embeddings (Z, e_k, t_bar_k, e_bg) as buffers.
        selector: MTRS. ``alpha=1.0`` is the "w/o MTRS" ablation.
        intervention: the cross-attention stack. Its parameters exist even when switched off, so checkpoints of all
            ablations share one key set.
        head: the decoder (with or without skips from the image), or a MONAI UNet over the image that the CLIP grid
            joins at its bottleneck (:class:`~mcdrl.networks.head.UNetHead`, ``configs/unet_head.json``) [ours].
        use_intervention: False is the "w/o CDRL" ablation (the intervention is never applied).
        dropout: if not None, overrides the head's dropout probability (MONAI Label injects it).
        deconfounding: ``"none"`` (the paper), ``"all"`` or ``"regions"``: where the text-guided
            :class:`~mcdrl.networks.deconfounding.ConfounderProjection` acts [ours].
        presence_decision: empty the mask of an image whose lesion score is below :attr:`presence_threshold` [ours].
        tau: temperature of the image-level prompt scores (the L_contrast temperature).
        head_input: ``"intervened"`` (the paper: C with F_ca scattered in) or ``"both"`` ([C, that grid], 2d channels,
            so the head can learn to ignore what the intervention writes) [ours].
        head_resolution: the size (square) at which a head with skips reads the image and decodes; None: the
            input's own H x W, so the logits need no resizing [ours]. Set it to bound the head's cost on large frames
            (the logits are then resized to H x W).
        readout: the confounder readout of the reports (None: an uncalibrated one of the dictionary's size; its
            calibration buffers come from ``model.pt``).
        presence_probe: a trained lesion score (:class:`~mcdrl.networks.presence.PresenceProbe`) that replaces the
            zero-shot one once it is calibrated; None (the default): no probe, and no ``presence_probe.*`` keys in
            ``model.pt`` [ours].

    The runtime switch :attr:`intervention_active` (set by :class:`mcdrl.engines.handlers.InterventionSchedule`) turns
    the intervention off for the first epochs of training; it defaults to on, so a loaded model infers with it.
    The buffer ``presence_threshold`` (saved in ``model.pt``) is chosen on source-site validation during training.

    Shapes:
        eval ``forward``: (B, 3, H, W) -> logits (B, 2, H, W).
        train ``forward``: (B, 3, H, W) -> {"pred": (B, 2, H, W), "image_embedding": F_vis (B, d),
        "region_embedding": Pool(F_ca) (B, d), "features": what the head reads (B, L, d; 2d with head_input "both"),
        "intervention_on": bool}.
    """

    def __init__(
        self,
        backbone: CLIPVisualBackbone,
        dictionary: ConfounderDictionary,
        selector: RegionSelector,
        intervention: CausalIntervention,
        head: SegmentationHead | UNetHead,
        use_intervention: bool = True,
        dropout: float | None = None,
        deconfounding: str = "none",
        presence_decision: bool = False,
        tau: float = 0.5,
        head_resolution: int | None = None,
        head_input: str = "intervened",
        readout: ConfounderReadout | None = None,
        presence_probe: PresenceProbe | None = None,
    ):
        super().__init__()
        d = backbone.embed_dim
        if head_input not in HEAD_INPUTS:
            raise ConfigError(f"head_input must be one of {list(HEAD_INPUTS)}, got {head_input!r}")
        got = {
            "dictionary": int(dictionary.confounders.shape[1]),
            "intervention": int(intervention.layers[0].q_proj.in_features),
            "head": int(head.proj[0].in_channels) // (2 if head_input == "both" else 1),
        }
        if head.uses_text_queries:
            got["head's text-query classifier"] = int(head.classifier.embed_dim)
        for part, dim in got.items():
            if dim != d:
                raise ConfigError(f"MCDRLNet: the CLIP backbone {backbone.model_name!r} has embedding dimension {d}, but the {part} was built for {dim}"
                                  + (" (head_input 'both': the head reads 2 x d channels)." if part == "head" and head_input == "both" else "."))
        self.head_input = head_input
        if deconfounding not in DECONFOUNDING_SCOPES:
            raise ConfigError(f"deconfounding must be one of {list(DECONFOUNDING_SCOPES)}, got {deconfounding!r}")
        dictionary.check_clip_identity(backbone.model_name, backbone.weights_sha256)
        self.backbone = backbone
        self.dictionary = dictionary
        self.selector = selector
        self.intervention = intervention
        self.head = head
        self.use_intervention = bool(use_intervention)
        self.intervention_active = True
        self.deconfounding = deconfounding
        self.projection = ConfounderProjection(dictionary)
        self.presence_decision = bool(presence_decision)
        self.tau = float(tau)
        if head_resolution is not None and int(head_resolution) < 16:
            raise ConfigError(f"head_resolution must be None (the input's own size) or at least 16 pixels, got {head_resolution!r}")
        self.head_resolution = None if head_resolution is None else int(head_resolution)
        self.register_buffer("presence_threshold", torch.zeros(()))
        self.readout = readout if readout is not None else ConfounderReadout(dictionary.num_confounders, d)
        if presence_probe is not None and int(presence_probe.weight.shape[0]) != d:
            raise ConfigError(f"MCDRLNet: the CLIP backbone {backbone.model_name!r} has embedding dimension {d}, but the presence probe was built for {int(presence_probe.weight.shape[0])}.")
        self.presence_probe = presence_probe
        if dropout is not None:
            self.head.dropout.p = float(dropout)
        self.image_size = backbone.image_size
        self.grid_size = backbone.grid_size

    @property
    def applies_intervention(self) -> bool:
        return self.use_intervention and self.intervention_active

    # ---- parts of the forward --------------------------------------------------------------------------------
    def _regions(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """tokens C (B, L, d) -> (what the head reads: C with F_ca scattered in (B, L, d), or with ``head_input="both"``
        [C, that] (B, L, 2d); F_ca (B, N, d); idx (B, N))."""
        raw = tokens
        d = self.dictionary
        if self.deconfounding == "all":
            tokens = self.projection(tokens)
        idx, _ = self.selector(tokens, d.class_embeddings, d.background_embedding)
        gather_idx = idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
        f = torch.gather(tokens, 1, gather_idx)
        changed = False
        if self.deconfounding == "regions":
            f = self.projection(f)
            changed = True
        if self.applies_intervention:
            f = self.intervention(f, d.confounders.to(f.dtype))
            changed = True
        if changed:
            tokens = tokens.scatter(1, gather_idx, f)
        return self._head_tokens(raw, tokens), f, idx

    def _head_tokens(self, raw: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """C (B, L, d) and the de-confounded, intervened grid (B, L, d) -> what the head reads (B, L, d or 2d)."""
        return torch.cat([raw, tokens], dim=-1) if self.head_input == "both" else tokens

    def class_queries(self) -> torch.Tensor:
        """The text-query classifier's queries: [e_1 .. e_K, e_bg] (K + 1, d)."""
        d = self.dictionary
        return torch.cat([d.class_embeddings, d.background_embedding.unsqueeze(0)], dim=0)

    def _decode(self, tokens: torch.Tensor, image: torch.Tensor, image_embedding: torch.Tensor | None = None) -> torch.Tensor:
        """Grid tokens (B, L, d), the input image (B, 3, H, W) [and F_vis (B, d), which a text-query head needs]
        -> logits (B, 2, H, W).

        A head with skips reads the image at its own resolution (or at ``head_resolution``), so its logits come out
        at H x W; the paper's head decodes the grid alone and is resized to H x W."""
        b, _, dim = tokens.shape  # dim: d, or 2d with head_input "both"
        grid = tokens.transpose(1, 2).reshape(b, dim, self.grid_size, self.grid_size)
        size = image.shape[-2:]  # kept symbolic, so a traced network follows the input size
        text = {}
        if self.head.uses_text_queries:
            if image_embedding is None:
                raise ValueError("a head with text queries needs F_vis: pass image_embedding (B, d)")
            text = {"queries": self.class_queries(), "image_embedding": image_embedding}
        if self.head.pixel_encoder is None:
            logits = self.head(grid, **text)
        else:
            if self.head_resolution is not None:
                r = self.head_resolution
                image = F.interpolate(image, size=[r, r], mode="bilinear", align_corners=False, antialias=True)
            logits = self.head(grid, self.backbone.normalize(image), **text)
            if self.head_resolution is None:
                return logits
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    def _resize_in(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and (x.dim() != 4 or x.shape[1] != 3):
            raise ValueError(f"MCDRLNet expects (B, 3, H, W) RGB input in [0, 1], got shape {tuple(x.shape)}")
        s = self.image_size
        return F.interpolate(x, size=[s, s], mode="bilinear", align_corners=False, antialias=True)

    def presence_logits(self, image_embedding: torch.Tensor) -> torch.Tensor:
        """cos(F_vis, [e_1 .. e_K, e_bg]) / tau: (B, d) -> (B, K + 1); the last column is "no lesion" (normal mucosa)."""
        return self.dictionary.prompt_logits(image_embedding, self.tau, with_background=True)

    def lesion_score(self, image_embedding: torch.Tensor) -> torch.Tensor:
        """Image-level lesion score: (B, d) -> (B,) in [0, 1]. The calibrated presence probe's, when the network has
        one; else zero-shot, 1 - P(normal mucosa | F_vis) over the K + 1 prompts."""
        if self.presence_probe is not None and self.presence_probe.is_calibrated:
            return self.presence_probe(image_embedding)
        return 1.0 - torch.softmax(self.presence_logits(image_embedding), dim=-1)[:, -1]

    def gate(self, logits: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        """The presence decision: lesion logits of images with ``score < presence_threshold`` are put far below the
        background logit (the mask becomes empty). (B, 2, H, W), (B,) -> (B, 2, H, W); identity when off."""
        if not self.presence_decision:
            return logits
        reject = (score < self.presence_threshold).view(-1, 1, 1)
        bg, fg = logits[:, 0], logits[:, 1]
        return torch.stack([bg, torch.where(reject, torch.minimum(fg, bg - _REJECT_MARGIN), fg)], dim=1)

    def forward_with_score(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval logits before the presence decision (B, 2, H, W) and the lesion score (B,) (for choosing the threshold)."""
        tokens, pooled = self.backbone.forward_tokens(self._resize_in(x))
        tokens, _, _ = self._regions(tokens)
        return self._decode(tokens, x, pooled), self.lesion_score(pooled)

    def forward(self, x: torch.Tensor):
        if self.training:
            tokens, pooled = self.backbone.forward_tokens(self._resize_in(x))
            tokens, f_ca, _ = self._regions(tokens)
            return {
                "pred": self._decode(tokens, x, pooled),
                "image_embedding": pooled,
                "region_embedding": f_ca.mean(dim=1),
                "features": tokens,
                "intervention_on": self.applies_intervention,
            }
        if not self.presence_decision:
            if self.head.uses_text_queries:  # the head reads F_vis too
                return self.forward_with_score(x)[0]
            tokens, _, _ = self._regions(self.backbone.forward_dense(self._resize_in(x)))
            return self._decode(tokens, x)
        logits, score = self.forward_with_score(x)
        return self.gate(logits, score)

    @torch.no_grad()
    def predict_with_confounders(self, x: torch.Tensor, with_score: bool = False) -> tuple[torch.Tensor, ...]:
        """What the folder runner reports, from one pass: eval logits after the presence decision (B, 2, H, W) (== forward),
        the confounder readout's scores (B, M) (:class:`~mcdrl.networks.confounder_readout.ConfounderReadout`: F_vis
        against the dictionary, higher = more likely present), and with ``with_score`` the image-level lesion score (B,).

        Before issue 23 the report read the MTRS regions' resemblance to the dictionary
        (:meth:`confounder_resemblance`); that reading's top-1 was a true confounder in 22% of frames at site F."""
        tokens, pooled = self.backbone.forward_tokens(self._resize_in(x))
        tokens, _, _ = self._regions(tokens)
        weights = self.readout(pooled, self.dictionary.confounders)
        score = self.lesion_score(pooled)
        logits = self.gate(self._decode(tokens, x, pooled), score)
        return (logits, weights, score) if with_score else (logits, weights)

    @torch.no_grad()
    def read_frames(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The image-level readings only, without segmenting: (B, 3, H, W) -> lesion score (B,), confounder scores (B, M).

        What the site profile reads from each frame (one pass of the CLIP trunk, no decoder)."""
        _, pooled = self.backbone.forward_tokens(self._resize_in(x))
        return self.lesion_score(pooled), self.readout(pooled, self.dictionary.confounders)

    def confounder_resemblance(self, tokens: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """softmax over the dictionary of cos(mean of the tokens at ``idx``, z_m) / tau: (B, L, d), (B, N) -> (B, M).

        The report's reading before issue 23 (kept for ``python -m mcdrl.evaluation.confounder_readout``)."""
        f = torch.gather(tokens, 1, idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])).mean(dim=1)
        z = self.dictionary.confounders.to(f.dtype)
        return torch.softmax(F.normalize(f, dim=-1) @ F.normalize(z, dim=-1).t() / self.tau, dim=-1)

    @property
    def confounder_names(self) -> list[str]:
        return self.dictionary.confounder_names

    def extra_repr(self) -> str:
        return (f"use_intervention={self.use_intervention}, deconfounding={self.deconfounding!r}, presence_decision={self.presence_decision}, "
                f"presence_threshold={float(self.presence_threshold):.3f}, head_input={self.head_input!r}, head_resolution={self.head_resolution}")
