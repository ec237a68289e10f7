"""Optional speed paths for MCDRL inference, each checked against the plain fp32 path.

* :class:`AutocastInferer`: a MONAI inferer that runs the network under ``torch.autocast`` (bf16 by default) on
  the input's device, CPU included (MONAI's own ``amp`` switch autocasts CUDA only). It returns fp32 logits.
  Use it in ``inference.json`` with ``"inferer": {"_target_": "mcdrl.evaluation.speed.fast.AutocastInferer"}``.
  bf16 changes the numbers, so it is checked by mask agreement (:func:`mask_dice`), not by equality: the
  tests require >= 0.99 Dice between the bf16 and fp32 masks.
* :func:`compile_network`: ``torch.compile`` (inductor). Same outputs within fp32 rounding; the first call
  compiles for minutes on a small CPU, so it pays off only for long folder runs.

Neither is on by default: on CPUs without native bf16 (AVX2 only, like the 2-core build machines) bf16 is
several times *slower* than fp32; see ``bundle/docs/results/bench.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.inferers import SimpleInferer
from torch import nn

__all__ = ["AutocastInferer", "compile_network", "mask_dice"]


class AutocastInferer(SimpleInferer):
    """``SimpleInferer`` under ``torch.autocast(device_type=inputs.device.type, dtype=dtype)``.

    Args:
        dtype: ``"bfloat16"`` (default) or ``"float16"`` (CUDA only), or a ``torch.dtype``.
        enabled: False makes it a plain :class:`monai.inferers.SimpleInferer` (a config switch).

    Call:
        ``inferer(inputs (B, 3, H, W), network) -> logits (B, 2, H, W)``, always float32.
    """

    def __init__(self, dtype: str | torch.dtype = "bfloat16", enabled: bool = True):
        super().__init__()
        self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        if self.dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f"AutocastInferer: dtype must be bfloat16 or float16, got {dtype!r}")
        self.enabled = bool(enabled)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
        if not self.enabled:
            return network(inputs, *args, **kwargs)
        if inputs.device.type == "cpu" and self.dtype == torch.float16:
            raise ValueError("AutocastInferer: float16 autocast is for CUDA; use bfloat16 on CPU")
        with torch.autocast(device_type=inputs.device.type, dtype=self.dtype):
            out = network(inputs, *args, **kwargs)
        return out.float()


def mask_dice(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Per-image Dice between the argmax foreground masks of two logit tensors (B, C, H, W) -> (B,).

    An image where both masks are empty scores 1 (the bundle's metric convention).
    """
    if logits_a.shape != logits_b.shape:
        raise ValueError(f"mask_dice: shapes differ, {tuple(logits_a.shape)} vs {tuple(logits_b.shape)}")
    a = (logits_a.float().argmax(dim=1) > 0).flatten(1).float()
    b = (logits_b.float().argmax(dim=1) > 0).flatten(1).float()
    inter = (a * b).sum(dim=1)
    total = a.sum(dim=1) + b.sum(dim=1)
    return torch.where(total > 0, 2.0 * inter / total.clamp_min(1.0), torch.ones_like(total))


def compile_network(network: nn.Module, mode: str | None = None, dynamic: bool | None = False) -> nn.Module:
    """``torch.compile(network)`` for inference (inductor backend; needs a C++ compiler on CPU).

    Returns the compiled module; its outputs equal the eager ones within fp32 rounding. The first call per input
    shape compiles (about 1-2 minutes on 2 CPU cores for ViT-B-16).
    """
    return torch.compile(network, mode=mode, dynamic=dynamic)
