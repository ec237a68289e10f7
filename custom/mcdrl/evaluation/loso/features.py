"""The frozen-trunk token cache: every image of the world, every view, encoded once.

A view is a flip of the image (identity, horizontal, vertical, both: views 0..3) applied to the pixels *before*
encoding, so it is real augmentation, not a permutation of tokens. ``flip`` views feed every method except
``baseline_gin``, whose ``gin`` views are :func:`mcdrl.evaluation.loso.gin.gin_augment` applied to the same flips (one
independent random network per image and view). Validation and test images use view 0 of ``flip`` only.

File: ``<cache_dir>/features/<key>.safetensors`` with

* ``flip``, ``gin``: (N, V, 1 + h*w, width) float16, the tokens entering the last ViT block;
* ``label_model``: (N, S, S) uint8, each mask resized (nearest) to the CLIP input size S for the training loss.

The key names the world, the CLIP (model name and weights hash), the read-out, V and the GIN seed.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from mcdrl.networks.clip_backbone import CLIPVisualBackbone
from mcdrl.utils import atomic_path

from .gin import gin_augment
from .model import encode_trunk
from .world import World

__all__ = ["FLIP_DIMS", "apply_flip", "feature_cache_path", "load_or_build_features"]

logger = logging.getLogger(__name__)

#: view v flips these dims of a (..., H, W) tensor: identity, horizontal (columns), vertical (rows), both
FLIP_DIMS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


def apply_flip(x: torch.Tensor, view: int) -> torch.Tensor:
    """Flip the last two dims of ``x`` as view ``view`` (0..3) does."""
    dims = FLIP_DIMS[view % len(FLIP_DIMS)]
    return x.flip(dims) if dims else x


def feature_cache_path(cache_dir: str | os.PathLike, world: World, backbone: CLIPVisualBackbone, views: int, gin_seed: int) -> Path:
    key = f"{world.name}-{backbone.model_name}-{backbone.weights_sha256[:12]}-{backbone.readout}-v{views}-g{gin_seed}"
    return Path(cache_dir) / "features" / f"{key}.safetensors"


@torch.no_grad()
def _build(world: World, backbone: CLIPVisualBackbone, views: int, gin_seed: int, batch_size: int) -> dict[str, torch.Tensor]:
    n = len(world.ids)
    images = torch.from_numpy(world.images).permute(0, 3, 1, 2)  # (N, 3, H, W) uint8
    out = {}
    for kind in ("flip", "gin"):
        chunks = []
        for start in range(0, n, batch_size):
            x = images[start : start + batch_size].float() / 255.0
            per_view = []
            for v in range(views):
                xv = apply_flip(x, v)
                if kind == "gin":
                    xv = torch.cat([gin_augment(xv[j : j + 1], torch.Generator().manual_seed(gin_seed * 1_000_003 + (start + j) * 101 + v)) for j in range(xv.shape[0])])
                per_view.append(encode_trunk(backbone, xv).half())
            chunks.append(torch.stack(per_view, dim=1))
        out[kind] = torch.cat(chunks)
    s = backbone.image_size
    masks = torch.from_numpy(world.masks).unsqueeze(1).float()
    out["label_model"] = F.interpolate(masks, size=[s, s], mode="nearest")[:, 0].to(torch.uint8)
    return out


def load_or_build_features(cache_dir: str | os.PathLike, world: World, backbone: CLIPVisualBackbone, views: int, gin_seed: int = 0,
                           batch_size: int = 32) -> tuple[Path, dict[str, torch.Tensor]]:
    """Load the cache for (world, CLIP, views), building and writing it (atomically) first if needed.

    Returns:
        (path, tensors) with tensors as described in the module doc.
    """
    path = feature_cache_path(cache_dir, world, backbone, views, gin_seed)
    if path.is_file():
        try:
            tensors = load_file(str(path))
            if tensors["flip"].shape[:2] == (len(world.ids), views):
                return path, tensors
        except Exception as e:  # a corrupt cache is rebuilt, never trusted
            logger.warning("feature cache %s unreadable (%s); rebuilding", path, e)
    t0 = time.perf_counter()
    tensors = _build(world, backbone, views, gin_seed, batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"world": world.name, "clip_model": backbone.model_name,
                                                                                       "clip_weights_sha256": backbone.weights_sha256})
    logger.info("cached %d images x %d views x 2 kinds of trunk tokens in %.1f s -> %s", len(world.ids), views, time.perf_counter() - t0, path)
    return path, tensors
