"""Networks for timing: an :class:`mcdrl.networks.mcdrlnet.MCDRLNet` built from an open_clip config with random weights.

Random weights are fine for timing (the cost of a forward pass does not depend on the values). The confounder
dictionary gets random unit vectors instead of text-tower embeddings, so no text tower is ever built or run,
exactly as at inference time, and region selection ranks real (random) similarities instead of ties.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from mcdrl.networks.clip_backbone import CLIPVisualBackbone
from mcdrl.networks.dictionary import ConfounderDictionary
from mcdrl.networks.head import SegmentationHead
from mcdrl.networks.intervention import CausalIntervention
from mcdrl.networks.mcdrlnet import MCDRLNet
from mcdrl.networks.prompts import LESION_CLASSES
from mcdrl.networks.region_selection import RegionSelector

__all__ = ["QUICK_MODEL", "build_network", "random_batch"]

#: the tiny test CLIP (64 px, 2 layers), used by ``--quick``
QUICK_MODEL = "mcdrl-tiny-vit"


def _shipped(key: str):
    """A value of ``bundle/configs/inference.json`` (the architecture the bundle ships)."""
    import json

    from mcdrl.paths import default_bundle_root

    return json.loads((Path(default_bundle_root()) / "configs" / "inference.json").read_text())[key]


def build_network(
    model_name: str,
    use_intervention: bool = True,
    seed: int = 0,
    depth: int | None = None,
    heads: int | None = None,
    decoder_channels: tuple[int, ...] | None = None,
    alpha: float = 0.5,
    num_confounders: int = 12,
    skip_channels: tuple[int, ...] | None = None,
    presence_decision: bool | None = None,
    deconfounding: str | None = None,
) -> MCDRLNet:
    """The bundle's network (the architecture of ``bundle/configs/inference.json`` unless given) with random CLIP
    weights, in eval mode.

    Args:
        model_name: an open_clip config name (``"ViT-B-16"``, ``"mcdrl-demo-vit"``, ...).
        use_intervention: False builds the Baseline (CLIP + MTRS gather + head, the "w/o CDRL" ablation).
        seed: seeds every random weight, so two builds with the same seed are identical.
        skip_channels: the head's pixel-encoder levels; None: inference.json's, as many as the decoder has stages.

    Returns:
        MCDRLNet; eval ``forward`` maps (B, 3, H, W) in [0, 1] to logits (B, 2, H, W).
    """
    depth = _shipped("intervention_layers") if depth is None else depth
    heads = _shipped("intervention_heads") if heads is None else heads
    decoder_channels = tuple(_shipped("decoder_channels") if decoder_channels is None else decoder_channels)
    skip_channels = tuple(_shipped("decoder_skip_channels") if skip_channels is None else skip_channels)[: len(decoder_channels)]
    presence_decision = _shipped("presence_decision") if presence_decision is None else presence_decision
    deconfounding = _shipped("deconfounding") if deconfounding is None else deconfounding
    torch.manual_seed(seed)
    backbone = CLIPVisualBackbone(model_name, None)
    d = backbone.embed_dim
    dictionary = ConfounderDictionary(None, embed_dim=d, num_confounders=num_confounders, lesion_classes=list(LESION_CLASSES))
    gen = torch.Generator().manual_seed(seed + 1)
    for name in ("confounders", "class_embeddings", "class_anchors", "background_embedding"):
        buf = getattr(dictionary, name)
        buf.copy_(F.normalize(torch.randn(buf.shape, generator=gen), dim=-1))
    net = MCDRLNet(
        backbone=backbone,
        dictionary=dictionary,
        selector=RegionSelector(alpha=alpha),
        intervention=CausalIntervention(d, depth=depth, heads=heads),
        head=SegmentationHead(d, channels=decoder_channels, skip_channels=skip_channels),
        use_intervention=use_intervention,
        deconfounding=deconfounding,
        presence_decision=presence_decision,
    )
    return net.eval()


def random_batch(batch: int, size: int, seed: int = 0, num_classes: int = len(LESION_CLASSES)) -> dict[str, torch.Tensor]:
    """A reproducible batch: ``image`` (B, 3, size, size) in [0, 1], ``label`` (B, 1, size, size) in {0, 1} (a disc
    per image) and ``lesion_class`` (B,) int64."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, size, size, generator=gen)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centres = torch.randint(size // 4, 3 * size // 4, (batch, 2), generator=gen)
    radius = size // 6
    label = torch.stack([((yy - c[0]) ** 2 + (xx - c[1]) ** 2 <= radius * radius) for c in centres]).unsqueeze(1).float()
    classes = torch.randint(0, num_classes, (batch,), generator=gen)
    return {"image": image, "label": label, "lesion_class": classes}
