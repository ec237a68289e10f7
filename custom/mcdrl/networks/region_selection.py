"""MTRS, multimodal target region selection: keep the top-alpha positions most similar to the lesion prompts.

Stage 1a of MCDRL [paper]: S[n, k] = cos(C[n], e_k) for every dense position n and lesion class k, the unified
map is S_hat = max_k S (no label needed, so the same step runs at test time), and the top N = alpha * h * w
positions of S_hat are kept per image.

[ours] ``scoring="max_minus_background"`` (default) scores max_k S - cos(C, e_bg), with e_bg the "normal mucosa"
prompt: dark and red structures (lumen, vessels, blood) fire on every lesion prompt, and subtracting the
background prompt cancels that. ``scoring="max"`` is the paper's plain rule.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RegionSelector", "num_selected"]


def num_selected(alpha: float, num_positions: int) -> int:
    """N = round(alpha * h * w), at least 1 and at most h * w."""
    return max(1, min(num_positions, int(math.floor(alpha * num_positions + 0.5))))


class RegionSelector(nn.Module):
    """Top-alpha region selection over dense CLIP features.

    Args:
        alpha: fraction of positions kept, in (0, 1]. ``alpha=1.0`` keeps every position (the "w/o MTRS" ablation).
        scoring: ``"max_minus_background"`` or ``"max"``.

    Example:
        >>> sel = RegionSelector(alpha=0.5)
        >>> idx, score = sel(tokens, class_emb, background_emb)   # tokens (B, L, d) -> idx (B, N)
    """

    def __init__(self, alpha: float = 0.5, scoring: str = "max_minus_background"):
        super().__init__()
        if not 0.0 < float(alpha) <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        if scoring not in ("max", "max_minus_background"):
            raise ValueError(f"scoring must be 'max' or 'max_minus_background', got {scoring!r}")
        self.alpha = float(alpha)
        self.subtract_background = scoring == "max_minus_background"

    def score(self, tokens: torch.Tensor, class_emb: torch.Tensor, background_emb: torch.Tensor) -> torch.Tensor:
        """Unified similarity map.

        Args:
            tokens: (B, L, d) dense features in the joint space.
            class_emb: (K, d) lesion-class text embeddings e_k.
            background_emb: (d,) "normal mucosa" text embedding.

        Returns:
            (B, L) scores S_hat.
        """
        t = F.normalize(tokens.float(), dim=-1)
        sim = t @ F.normalize(class_emb.float(), dim=-1).t()  # (B, L, K)
        s = sim.max(dim=-1).values
        if self.subtract_background:
            s = s - t @ F.normalize(background_emb.float(), dim=-1)
        return s

    def forward(self, tokens: torch.Tensor, class_emb: torch.Tensor, background_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Select the top N = alpha * L positions per image.

        Returns:
            idx: (B, N) int64 indices into L, sorted by descending score.
            scores: (B, L) the full S_hat map (for inspection and the localisation metrics).
        """
        scores = self.score(tokens, class_emb, background_emb)
        n = num_selected(self.alpha, tokens.shape[1])
        idx = scores.topk(n, dim=1).indices
        return idx, scores

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, scoring={'max_minus_background' if self.subtract_background else 'max'}"
