"""Text-guided de-confounding [ours]: remove the confounder text directions from the features, with no training.

The confounder dictionary gives M text directions z_m in the joint space. Each also carries some "lesion" meaning
(an endoscopy image with blood looks like a lesion to CLIP), so the directions are first orthogonalised against the
class embeddings e_k and the normal-mucosa embedding e_bg. With Q (d, r) an orthonormal basis of what remains
(r <= M), the projection

    P = I - Q Q^T,      P e_k = e_k,  P e_bg = e_bg,  P z_m in span(e_1 .. e_K, e_bg)

keeps every direction the class prompts read and removes the rest of each confounder. Because it comes from text,
it also reaches a confounder that the training sites barely show. It can act on every dense position (before MTRS)
or on the MTRS regions only; see :class:`mcdrl.networks.mcdrlnet.MCDRLNet` (``deconfounding``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .dictionary import ConfounderDictionary

__all__ = ["ConfounderProjection", "confounder_basis"]


def confounder_basis(confounders: torch.Tensor, keep: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """Orthonormal basis (d, r) of the confounder directions after removing their span(keep) components.

    Args:
        confounders: (M, d) text embeddings z_m. keep: (K', d) directions to preserve (classes and background).
        tol: directions whose residual norm falls below ``tol`` (relative) are dropped.

    Returns:
        Q (d, r), r <= M, with Q^T Q = I and keep @ Q = 0. Zero columns (r = 0) when ``confounders`` is all zero
        (an uninitialised dictionary whose values come from a state_dict).
    """
    z = confounders.double()
    k = keep.double()
    if not bool(z.abs().sum() > 0):
        return torch.zeros(confounders.shape[1], 0, dtype=confounders.dtype)
    qk, _ = torch.linalg.qr(k.t())  # (d, K') orthonormal span of keep
    resid = z.t() - qk @ (qk.t() @ z.t())  # (d, M)
    q, r = torch.linalg.qr(resid)
    scale = resid.norm(dim=0).max().clamp_min(1e-12)
    rank = int((r.diagonal().abs() > tol * scale).sum())
    return q[:, :rank].to(confounders.dtype)


class ConfounderProjection(nn.Module):
    """x -> x - (x Q) Q^T: the component of every feature along the (orthogonalised) confounder text directions is
    removed. Q is a buffer (saved in ``model.pt``), computed once from the dictionary.

    Args:
        dictionary: the network's :class:`ConfounderDictionary` (Z, e_k, e_bg). The basis always has M columns, so
            that the state_dict has one shape; directions that vanish after the orthogonalisation are zero columns.

    Shapes:
        (..., d) -> (..., d).
    """

    def __init__(self, dictionary: ConfounderDictionary):
        super().__init__()
        z = dictionary.confounders
        keep = torch.cat([dictionary.class_embeddings, dictionary.background_embedding[None]], dim=0)
        q = confounder_basis(z, F.normalize(keep, dim=-1) if bool(keep.abs().sum() > 0) else keep)
        basis = torch.zeros(z.shape[1], z.shape[0])
        basis[:, : q.shape[1]] = q
        self.register_buffer("basis", basis)

    @property
    def rank(self) -> int:
        return int((self.basis.abs().sum(0) > 0).sum())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.basis.to(x.dtype)
        return x - (x @ q) @ q.t()

    def extra_repr(self) -> str:
        return f"d={self.basis.shape[0]}, directions={self.basis.shape[1]}"
