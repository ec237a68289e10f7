"""Network assembly for the benchmark, and MCDRLNet's forward from cached trunk tokens.

The benchmark builds the bundle's own :class:`mcdrl.networks.mcdrlnet.MCDRLNet` from its parts. The only change is where
the forward starts: the CLIP ViT trunk up to (not including) its last block is frozen and its output tokens
``x_in`` (B, 1 + h*w, width) are cached (:func:`encode_trunk`). :func:`forward_cached` then runs the rest exactly
as ``MCDRLNet.forward`` does, through the network's own methods (the backbone's dense and global read-outs,
``MCDRLNet._regions`` and ``MCDRLNet._decode``), so from the same input it returns the same logits (a test checks
this against the eval forward).
"""

from __future__ import annotations

import copy
import os

import torch
import torch.nn.functional as F

from mcdrl.errors import ConfigError
from mcdrl.networks.clip_backbone import CLIPVisualBackbone
from mcdrl.networks.dictionary import ConfounderDictionary
from mcdrl.networks.head import SegmentationHead
from mcdrl.networks.intervention import CausalIntervention
from mcdrl.networks.mcdrlnet import MCDRLNet
from mcdrl.networks.prompts import LESION_CLASSES
from mcdrl.networks.region_selection import RegionSelector

__all__ = ["build_network", "encode_trunk", "forward_cached", "forward_diagnostics", "load_backbone"]


def load_backbone(clip_model: str, clip_weights: str | os.PathLike | None, readout: str = "maskclip") -> CLIPVisualBackbone:
    """The CLIP visual backbone the benchmark caches from (ViT only: the cache holds transformer tokens)."""
    backbone = CLIPVisualBackbone(clip_model, clip_weights, readout)
    if not backbone.is_vit:
        raise ConfigError(f"the benchmark caches ViT trunk tokens; CLIP {clip_model!r} has a ResNet visual tower. Use a ViT CLIP.")
    return backbone.eval()


@torch.no_grad()
def encode_trunk(backbone: CLIPVisualBackbone, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> tokens entering the last ViT block, (B, 1 + h*w, width).

    Resizes exactly as ``MCDRLNet._resize_in`` (bilinear, antialiased) to the CLIP input size.
    """
    s = backbone.image_size
    x = F.interpolate(images.float(), size=[s, s], mode="bilinear", align_corners=False, antialias=True)
    return backbone._vit_tokens(backbone.normalize(x))


def build_network(backbone: CLIPVisualBackbone, dictionary_path: str | os.PathLike, num_confounders: int, settings: dict,
                  heads: int, decoder_channels, mtrs_scoring: str, lesion_classes=LESION_CLASSES) -> MCDRLNet:
    """A fresh MCDRLNet on a private copy of ``backbone``, trainable from the last ViT block on.

    Args:
        backbone: the shared frozen backbone (copied, never modified).
        dictionary_path: the stage-1 artifact. num_confounders: its M.
        settings: :meth:`mcdrl.evaluation.loso.methods.Method.settings` (alpha, depth, use_intervention, ...).
        heads, decoder_channels, mtrs_scoring: shared by every method.

    Returns:
        the network in train mode; only the last ViT block, ``ln_post``, ``proj``, the intervention and the head
        have ``requires_grad``.
    """
    bb = copy.deepcopy(backbone)
    for p in bb.parameters():
        p.requires_grad_(False)
    visual = bb.visual
    for p in list(visual.transformer.resblocks[-1].parameters()) + list(visual.ln_post.parameters()) + [visual.proj]:
        p.requires_grad_(True)
    d = bb.embed_dim
    net = MCDRLNet(
        bb,
        ConfounderDictionary(dictionary_path, d, num_confounders, list(lesion_classes)),
        RegionSelector(settings["alpha"], mtrs_scoring),
        CausalIntervention(d, settings["depth"], heads, weighting=settings.get("weighting", "attention")),
        SegmentationHead(d, tuple(decoder_channels)),
        use_intervention=settings["use_intervention"],
    )
    return net.train()


def forward_cached(net: MCDRLNet, x_in: torch.Tensor, size) -> torch.Tensor | dict:
    """MCDRLNet's forward from cached trunk tokens ``x_in`` (B, 1 + h*w, width).

    Returns, like ``MCDRLNet.forward``: in eval mode logits (B, 2, *size); in train mode
    ``{"pred", "image_embedding" (B, d), "region_embedding" (B, d), "intervention_on"}``.
    """
    bb = net.backbone
    if net.training:
        tokens, f_ca, _ = net._regions(bb._vit_dense(x_in))
        return {
            "pred": net._decode(tokens, size, None),
            "image_embedding": bb._vit_global(x_in),
            "region_embedding": f_ca.mean(dim=1),
            "intervention_on": net.applies_intervention,
        }
    tokens, _, _ = net._regions(bb._vit_dense(x_in))
    return net._decode(tokens, size, None)


@torch.no_grad()
def forward_diagnostics(net: MCDRLNet, x_in: torch.Tensor, size) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Eval logits (B, 2, *size), the MTRS-selected positions (B, N) and the intervention's attention over the M
    confounders (B, M; last layer, averaged over heads and regions), or None when the intervention is off."""
    bb, d = net.backbone, net.dictionary
    dense = bb._vit_dense(x_in)
    idx, _ = net.selector(dense, d.class_embeddings, d.background_embedding)
    weights = None
    if net.applies_intervention:
        f = torch.gather(dense, 1, idx.unsqueeze(-1).expand(-1, -1, dense.shape[-1]))
        weights = net.intervention.confounder_weights(f, d.confounders.to(f.dtype))
    tokens, _, _ = net._regions(dense)
    return net._decode(tokens, size, None), idx, weights
