"""GIN: global intensity non-linear augmentation by random shallow convolution networks.

Ouyang et al., "Causality-inspired single-source domain generalization for medical image segmentation",
IEEE TMI 2022 (the GIN part of GIN-IPA). Each image gets its own freshly drawn network: ``n_layers`` convolutions
with N(0, 1) weights and biases, kernel size drawn from {1, 3} per layer, ``interm_channels`` channels between
layers and LeakyReLU between them. The output is blended with the input, ``alpha * GIN(x) + (1 - alpha) * x`` with
alpha ~ U(0, 1) per image, and rescaled to the input's Frobenius norm (the authors' ``frob`` output norm).

[ours] Our images are RGB in [0, 1]; GIN runs on ``2x - 1`` (zero-centred, as the authors' normalised inputs)
and the result is mapped back and clipped to [0, 1]. The IPA part (pseudo-correlation maps and the consistency
loss) is not used: ``baseline_gin`` is the Baseline trained on GIN-augmented views.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["gin_augment"]


def gin_augment(x: torch.Tensor, generator: torch.Generator | None = None, n_layers: int = 4, interm_channels: int = 2,
                kernel_sizes: tuple[int, ...] = (1, 3)) -> torch.Tensor:
    """Apply an independent random GIN network to every image.

    Args:
        x: (B, C, H, W) images in [0, 1].
        generator: torch generator for reproducible draws (CPU).
        n_layers: convolution layers (>= 2). interm_channels: channels between layers. kernel_sizes: drawn per layer.

    Returns:
        (B, C, H, W) augmented images in [0, 1], same dtype as ``x``.
    """
    if x.dim() != 4:
        raise ValueError(f"gin_augment expects (B, C, H, W), got {tuple(x.shape)}")
    if n_layers < 2:
        raise ValueError(f"n_layers must be >= 2, got {n_layers}")
    b, c, h, w = x.shape
    x_in = x.float() * 2.0 - 1.0
    y = x_in
    chans = [c] + [interm_channels] * (n_layers - 1) + [c]
    for layer in range(n_layers):
        cin, cout = chans[layer], chans[layer + 1]
        k = kernel_sizes[int(torch.randint(len(kernel_sizes), (1,), generator=generator))]
        weight = torch.randn(b * cout, cin, k, k, generator=generator)
        bias = torch.randn(b * cout, generator=generator)
        y = F.conv2d(y.reshape(1, b * cin, h, w), weight, bias, padding=k // 2, groups=b).view(b, cout, h, w)
        if layer < n_layers - 1:
            y = F.leaky_relu(y)
    alpha = torch.rand(b, 1, 1, 1, generator=generator)
    mixed = alpha * y + (1.0 - alpha) * x_in
    in_norm = x_in.flatten(1).norm(dim=1).view(b, 1, 1, 1)
    out_norm = mixed.flatten(1).norm(dim=1).view(b, 1, 1, 1)
    mixed = mixed * (in_norm / (out_norm + 1e-5))
    return ((mixed + 1.0) * 0.5).clamp(0.0, 1.0).to(x.dtype)
