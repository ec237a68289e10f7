"""The segmentation head H: a progressive-upsampling conv decoder from the feature grid to the output size.

[paper] H is a light decoder on the (intervened) dense features. [ours] Optionally (``skip_channels``) it also
reads the image itself through a small pixel encoder, at the image's own resolution, and concatenates those features
at every decoder stage (U-Net style skips). The CLIP grid is coarse (10 x 10 for the demo CLIP, 14 x 14 for
ViT-B/16), and far-view polyps and nodules are a few pixels wide; the skips give the decoder the detail the grid
cannot hold, while the lesion semantics still come from the CLIP features, which join at their own scale: a stage
with a skip resizes its input to that skip's size, so the logits come out at the image's resolution (any H x W) with
no upsampling from the CLIP size. ``skip_channels=()`` is the paper's head (x2 per stage from the grid).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PixelEncoder", "SegmentationHead"]


def _group_norm(c: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups (the largest count that divides ``c``)."""
    return nn.GroupNorm(math.gcd(8, c), c)


def _conv_norm_act(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), _group_norm(cout), nn.GELU())


class _UpBlock(nn.Module):
    def __init__(self, cin: int, cout: int, skip: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(cin + skip, cout, 3, padding=1, bias=False)
        self.norm = _group_norm(cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """(B, cin, h, w) [+ skip (B, skip, H', W')] -> (B, cout, H', W') with a skip, else (B, cout, 2h, 2w)."""
        if skip is None:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        else:
            x = torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False), skip], dim=1)
        return F.gelu(self.norm(self.conv(x)))


class PixelEncoder(nn.Module):
    """High-resolution skip features from the image: one (3x3 conv, GroupNorm, GELU) per level.

    Level 0 keeps the input resolution, every further level halves it (stride 2).

    Args:
        channels: widths of the levels, finest first, e.g. ``(8, 16, 32, 64)`` for S, S/2, S/4, S/8.

    Shapes:
        (B, 3, H, W) CLIP-normalised image -> [(B, channels[k], ceil(H / 2^k), ceil(W / 2^k)) for each level k].
    """

    def __init__(self, channels: tuple[int, ...]):
        super().__init__()
        ins = (3,) + tuple(channels[:-1])
        self.levels = nn.ModuleList([_conv_norm_act(a, b, 1 if k == 0 else 2) for k, (a, b) in enumerate(zip(ins, channels))])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for level in self.levels:
            x = level(x)
            out.append(x)
        return out


class SegmentationHead(nn.Module):
    """Feature grid (B, d, h, w) [+ image (B, 3, H, W)] -> logits (B, out_channels, H, W) with skips, else
    (B, out_channels, h * 2^n, w * 2^n), n = len(channels).

    A 1x1 projection, then one (upsample, 3x3 conv, GroupNorm, GELU) stage per entry of ``channels``, then a
    1x1 classifier. ``dropout`` (Dropout2d on the projected grid) is the knob MONAI Label sets for epistemic scoring.

    With ``skip_channels`` (finest level first), a :class:`PixelEncoder` reads the image at its own resolution
    H x W, and stage j (of n) concatenates level k = n - 1 - j, upsampling to that level's size (any ratio: the CLIP
    grid joins at its own scale); the last stage has level 0, so the logits are H x W. Stages without a level (more
    stages than levels) upsample x2. Without skips (the paper's head), every stage upsamples x2.

    Args:
        in_dim: d. channels: widths of the upsampling stages. out_channels: 2 (background, lesion). dropout: p.
        skip_channels: widths of the pixel encoder's levels (``()``: no skips, the paper's head).

    Example:
        >>> head = SegmentationHead(192, (128, 64, 32, 16), skip_channels=(8, 16, 32, 64))
        >>> head(torch.rand(2, 192, 10, 10), torch.rand(2, 3, 224, 200)).shape
        torch.Size([2, 2, 224, 200])
    """

    def __init__(self, in_dim: int, channels: tuple[int, ...] = (128, 64, 32, 16), out_channels: int = 2, dropout: float = 0.0,
                 skip_channels: tuple[int, ...] = ()):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        skip_channels = tuple(int(c) for c in (skip_channels or ()))
        n = len(channels)
        if len(skip_channels) > n:
            raise ValueError(f"skip_channels {list(skip_channels)} has more levels than the {n} decoder stages")
        self.proj = nn.Sequential(nn.Conv2d(in_dim, channels[0], 1), _group_norm(channels[0]), nn.GELU())
        self.dropout = nn.Dropout2d(float(dropout))
        # stage j outputs resolution S / 2^(n-1-j): it takes pixel-encoder level k = n-1-j when that level exists
        self.skip_levels = [n - 1 - j if n - 1 - j < len(skip_channels) else -1 for j in range(n)]
        self.stages = nn.ModuleList([_UpBlock(a, b, skip_channels[k] if k >= 0 else 0)
                                     for a, b, k in zip((channels[0],) + channels[:-1], channels, self.skip_levels)])
        self.pixel_encoder = PixelEncoder(skip_channels) if skip_channels else None
        self.classifier = nn.Conv2d(channels[-1], out_channels, 1)

    def forward(self, x: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        # channels_last without autograd: the 3x3 convs (oneDNN) infer ~20% faster on CPU; with autograd the backward
        # of GroupNorm is slower in that layout (measured 1.2x on 2 CPU cores), so training keeps the standard one
        fmt = torch.contiguous_format if torch.is_grad_enabled() else torch.channels_last
        x = self.dropout(self.proj(x.contiguous(memory_format=fmt)))
        skips: list[torch.Tensor] = []
        if self.pixel_encoder is not None:
            if image is None:
                raise ValueError("this SegmentationHead has skip_channels: pass the image (B, 3, S, S) too")
            skips = self.pixel_encoder(image.contiguous(memory_format=fmt))
        for stage, k in zip(self.stages, self.skip_levels):
            x = stage(x, skips[k] if k >= 0 and skips else None)
        return self.classifier(x).contiguous()
