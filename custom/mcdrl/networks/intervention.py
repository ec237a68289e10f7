"""Stage 2: the causal intervention (CDRL), a backdoor adjustment over the confounder dictionary.

[paper] P(Y | do(F)) = sum_z P(Y | F, z) P(z) is approximated as H(E_z[A(F, z)]), where A is cross-attention
with query F (the selected region features) and key = value Z (the M confounder embeddings). [ours] P(z) is
uniform, so the expectation is the attention-weighted mean that softmax already computes.

[ours] Each layer is a pre-norm block with residuals:
    x <- x + g_a MHA(LN(x), LN(Z), LN(Z));  x <- x + g_f FFN(LN(x))
The residual keeps the image content; pure attention output would replace it with a mixture of text vectors.
``residual`` sets the gates g: ``"zero"`` (g = 1, the branches' last layers zero-initialised, release 0.7) or
``"gated"`` (g = tanh(alpha), alpha a learnt scalar per branch initialised at 0, the branches initialised as usual;
Flamingo's gated cross-attention). Both start as the identity, but only the gate survives AdamW: its first step moves
every weight of a zero-initialised layer by about lr, which shifted the selected tokens by 26% of their norm in one
step at lr 1e-3 (``python -m mcdrl.evaluation.intervention_probe``), while a gate moves the branch by tanh(lr).

Speed: with only M = 12 keys, the attention is computed with W_q folded into the keys and W_o into the values
(:meth:`InterventionBlock._attend_folded`), which skips projecting every region token through two d x d matrices.
In eval without autograd the folded matrices depend only on the weights and the dictionary, so they are cached and
recomputed whenever either changes (in place or by a device/dtype move).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RESIDUALS", "CausalIntervention", "InterventionBlock"]

#: how a block's residual branches start: zero-initialised last layers, or learnt tanh gates at 0
RESIDUALS = ("zero", "gated")


class InterventionBlock(nn.Module):
    """One cross-attention layer from region features to the confounder dictionary.

    Args:
        dim: d, the joint-space dimension. heads: attention heads (d must divide). mlp_ratio: FFN width / d.
        dropout: dropout on the attention and FFN outputs.
        weighting: ``"attention"`` (default; the paper's cross-attention: each region weights the confounders by
            softmax similarity, i.e. by how much the image resembles them) or ``"prior"`` (an experiment [ours]: every
            confounder weighted by the uniform prior P(z) = 1/M whatever the image, the literal E_z over P(z); the
            attention branch then adds the same vector to every region).
        residual: ``"zero"`` or ``"gated"`` (see the module docstring) [ours].

    Shapes:
        x (B, N, d), z (M, d) -> (B, N, d).
    """

    def __init__(self, dim: int, heads: int = 8, mlp_ratio: float = 4.0, dropout: float = 0.0, weighting: str = "attention",
                 residual: str = "zero"):
        super().__init__()
        if dim % heads:
            raise ValueError(f"intervention dim {dim} is not divisible by heads {heads}")
        if weighting not in ("attention", "prior"):
            raise ValueError(f"intervention weighting must be 'attention' or 'prior', got {weighting!r}")
        if residual not in RESIDUALS:
            raise ValueError(f"intervention residual must be one of {list(RESIDUALS)}, got {residual!r}")
        self.heads = heads
        self.weighting = weighting
        self.residual = residual
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.norm_ffn = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)
        # [ours] a fresh block is the identity, so switching the intervention on after `causal_start_epoch` does not
        # scramble the features the head has learnt (without it the demo model collapsed to all-background the epoch
        # the intervention came on): zero-initialised branches, or gates at tanh(0) = 0
        if residual == "zero":
            for layer in (self.out_proj, self.ffn[2]):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        else:
            self.gate_attn = nn.Parameter(torch.zeros(()))
            self.gate_ffn = nn.Parameter(torch.zeros(()))
        self._fold_cache: tuple | None = None  # (key, z, (a_w, a_b, u)) of the last eval-time fold

    def _qkv(self, x: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, d = x.shape
        h = self.heads
        zn = self.norm_kv(z)
        q = self.q_proj(self.norm_q(x)).view(b, n, h, d // h).transpose(1, 2)  # (B, h, N, d/h)
        k = self.k_proj(zn).view(1, -1, h, d // h).transpose(1, 2).expand(b, -1, -1, -1)  # (B, h, M, d/h)
        v = self.v_proj(zn).view(1, -1, h, d // h).transpose(1, 2).expand(b, -1, -1, -1)
        return q, k, v

    def attention_weights(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Weights over the confounders, (B, heads, N, M); each row sums to 1 (uniform under ``weighting="prior"``)."""
        if self.weighting == "prior":
            b, n, _ = x.shape
            return torch.full((b, self.heads, n, z.shape[0]), 1.0 / z.shape[0], dtype=x.dtype, device=x.device)
        q, k, _ = self._qkv(x, z)
        return torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)

    def _gated(self, branch: torch.Tensor, gate: str) -> torch.Tensor:
        return branch if self.residual == "zero" else torch.tanh(getattr(self, gate)) * branch

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h, m = self.heads, z.shape[0]
        if self.weighting == "prior":  # E_z over P(z) = 1/M of the values: one (d,) vector for every region
            a = self.out_proj(self.v_proj(self.norm_kv(z)).mean(dim=0))
        elif h * m < d:
            a = self._attend_folded(x, z)
        else:
            q, k, v = self._qkv(x, z)
            a = self.out_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))  # == weights @ v
        x = x + self.drop(self._gated(a, "gate_attn"))
        return x + self.drop(self._gated(self.ffn(self.norm_ffn(x)), "gate_ffn"))

    def _attend_folded(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """out_proj(MHA(LN(x), LN(z), LN(z))) with the M keys folded into W_q and the M values into W_o.

        Exact algebra (same result up to float rounding): per head, scores = LN(x) (W_q,h^T k_h^T) + b_q,h k_h^T and
        out = sum_h softmax(scores_h) (v_h W_o,h^T) + b_o. Each of the N region tokens then costs 2 d (heads * M)
        multiply-adds instead of the 2 d^2 of q_proj and out_proj (d = 512, heads * M = 96 at ViT-B-16), for a
        per-call cost of 2 M d^2 to fold, independent of N and B. Used when heads * M < d.
        """
        b, n, d = x.shape
        h, m = self.heads, z.shape[0]
        a_w, a_b, u = self._folded(z)
        scores = torch.addmm(a_b, self.norm_q(x).reshape(b * n, d), a_w).view(b * n, h, m)
        p = torch.softmax(scores, dim=-1).view(b * n, h * m)  # == attention_weights(x, z), (B*N, heads*M)
        return torch.addmm(self.out_proj.bias, p, u).view(b, n, d)

    def _folded(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The folded matrices a_w (d, heads*M), a_b (heads*M,) and u (heads*M, d) for dictionary z (M, d).

        Cached in eval mode without autograd (not while tracing or compiling). A cached fold is reused only when the
        autocast state, the storage and in-place version counter of every weight used, and the values of z (compared
        exactly; M x d is tiny next to the fold) are unchanged, so switching autocast, a weight update,
        ``load_state_dict``, ``.to()`` or another dictionary invalidates it. Weights created under inference mode
        have no version counter and are never cached.
        """
        params = (self.norm_kv.weight, self.norm_kv.bias, self.k_proj.weight, self.k_proj.bias, self.v_proj.weight, self.v_proj.bias,
                  self.q_proj.weight, self.q_proj.bias, self.out_proj.weight)
        cacheable = not (self.training or torch.is_grad_enabled() or torch.jit.is_tracing() or torch.jit.is_scripting()
                         or torch.compiler.is_compiling() or any(p.is_inference() for p in params))
        if cacheable:
            device = z.device.type
            key = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device), z.dtype, z.device, tuple(z.shape),
                   tuple((p.data_ptr(), p._version, p.dtype) for p in params))
            cached = self._fold_cache
            if cached is not None and cached[0] == key and torch.equal(cached[1], z):
                return cached[2]
        d, h = z.shape[-1], self.heads
        c = d // h
        zn = self.norm_kv(z)
        k = self.k_proj(zn).view(-1, h, c)  # (M, h, c)
        v = self.v_proj(zn).view(-1, h, c)
        m = k.shape[0]
        scale = c**-0.5
        a_w = torch.einsum("hci,mhc->ihm", self.q_proj.weight.view(h, c, d), k).reshape(d, h * m) * scale
        a_b = torch.einsum("hc,mhc->hm", self.q_proj.bias.view(h, c), k).reshape(h * m) * scale
        u = torch.einsum("mhc,ohc->hmo", v, self.out_proj.weight.view(d, h, c)).reshape(h * m, d)
        if cacheable:
            self._fold_cache = (key, z.clone(), (a_w, a_b, u))
        return a_w, a_b, u

    def train(self, mode: bool = True):
        self._fold_cache = None
        return super().train(mode)


class CausalIntervention(nn.Module):
    """A stack of :class:`InterventionBlock` layers (depth 3 by default [paper]).

    Args:
        dim: d. depth: number of layers (1, 3 or 5 in the paper's ablation). heads, mlp_ratio, dropout, weighting,
            residual: per layer (see :class:`InterventionBlock`).

    Shapes:
        forward: F (B, N, d), Z (M, d) -> F_ca (B, N, d).
        confounder_weights: F (B, N, d), Z (M, d) -> (B, M), the last layer's attention averaged over heads and
        regions: which confounders the model attends to for each image.
        forward_with_weights: both of the above from one pass.
    """

    def __init__(self, dim: int, depth: int = 3, heads: int = 8, mlp_ratio: float = 4.0, dropout: float = 0.0, weighting: str = "attention",
                 residual: str = "zero"):
        super().__init__()
        if depth < 1:
            raise ValueError(f"intervention depth must be >= 1, got {depth}")
        self.layers = nn.ModuleList([InterventionBlock(dim, heads, mlp_ratio, dropout, weighting, residual) for _ in range(depth)])

    def forward(self, f: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            f = layer(f, z)
        return f

    @torch.jit.unused
    def confounder_weights(self, f: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            f = layer(f, z)
        return self.layers[-1].attention_weights(f, z).mean(dim=(1, 2))

    @torch.jit.unused
    def forward_with_weights(self, f: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(forward(f, z), confounder_weights(f, z))`` in one pass over the layers: F_ca (B, N, d), weights (B, M)."""
        for layer in self.layers[:-1]:
            f = layer(f, z)
        last = self.layers[-1]
        return last(f, z), last.attention_weights(f, z).mean(dim=(1, 2))
