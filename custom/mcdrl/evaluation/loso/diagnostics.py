"""What the frozen CLIP and the dictionary respond to, measured on the benchmark world before any training.

* ``confounder_auc``: for each dictionary entry z_m, the ROC AUC of cos(F_vis, z_m) for telling the images that
  contain confounder m from those that do not (F_vis = the image embedding of the un-augmented view). 0.5 = the
  text embedding carries no information about that confounder in the image space, so an intervention that
  attends to it cannot single that confounder out.
* ``class_zero_shot_accuracy``: argmax_k cos(F_vis, e_k) against the image's lesion class (chance = 1/K), the
  signal L_contrast and L_causal build on.
* ``site_auc``: for each site, the AUC of the best single confounder entry for telling that site's images from the
  rest: how visible the site signature is through the dictionary.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mcdrl.networks.dictionary import load_artifact

__all__ = ["auc", "dictionary_response"]


def auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """ROC AUC by the rank (Mann-Whitney) formula, ties averaged; None if a class is empty."""
    pos, neg = int(positive.sum()), int((~positive).sum())
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[positive].sum() - pos * (pos + 1) / 2) / (pos * neg))


@torch.no_grad()
def dictionary_response(backbone, tokens: torch.Tensor, world, dictionary_path, batch_size: int = 64) -> dict:
    """Zero-shot responses of the frozen CLIP to the dictionary and class prompts (see the module doc).

    Args:
        backbone: the frozen CLIPVisualBackbone. tokens: (N, 1 + h*w, width) cached trunk tokens (view 0).
        world: the :class:`~mcdrl.evaluation.loso.world.World`. dictionary_path: the stage-1 artifact.
    """
    tensors, meta = load_artifact(dictionary_path)
    emb = torch.cat([backbone._vit_global(tokens[i : i + batch_size].float()) for i in range(0, tokens.shape[0], batch_size)])
    emb = F.normalize(emb, dim=-1)
    conf_sim = (emb @ F.normalize(tensors["confounders"].float(), dim=-1).t()).numpy()
    class_sim = (emb @ F.normalize(tensors["class_embeddings"].float(), dim=-1).t()).numpy()
    names = list(meta["confounders"])
    present = np.array([[n in c for n in names] for c in world.confounders], bool)
    conf_auc = {n: auc(conf_sim[:, j], present[:, j]) for j, n in enumerate(names)}
    classes = np.array(world.classes)
    has = classes >= 0
    acc = float((class_sim[has].argmax(1) == classes[has]).mean()) if has.any() else None
    sites = np.array(world.sites)
    site_auc = {}
    for s in sorted(set(world.sites)):
        vals = [auc(conf_sim[:, j], sites == s) for j in range(len(names))]
        best = max(range(len(names)), key=lambda j: abs((vals[j] or 0.5) - 0.5))
        site_auc[s] = {"entry": names[best], "auc": vals[best]}
    valid = [v for v in conf_auc.values() if v is not None]
    return {
        "confounder_auc": conf_auc,
        "mean_abs_auc_minus_half": float(np.mean([abs(v - 0.5) for v in valid])) if valid else None,
        "class_zero_shot_accuracy": acc,
        "class_chance": 1.0 / len(meta["lesion_classes"]),
        "site_auc": site_auc,
        "n_images": int(len(world.ids)),
    }
