"""The MCDRL training objective: L = L_seg + lambda_causal L_causal + lambda_contrast L_contrast [+ lambda_cf L_cf].

* L_seg [paper]: pixel cross-entropy over (background, lesion). [ours] ``dice_weight`` > 0 adds a soft Dice term
  (default 0, the paper's loss).
* L_causal [paper]: || Pool(F_ca) - t_bar_y ||^2, with y the image's lesion class; [ours] both sides L2-normalised.
  Off while the intervention is off (the first ``causal_start_epoch`` epochs) and for images with no lesion class.
  [ours] ``causal_loss="anchor_ce"``: a cross-entropy over the K class anchors, cos(Pool(F_ca), t_bar_k) / tau,
  instead. The squared distance to one anchor is lowest for one constant, text-ward vector added to every token
  (the raw tokens share a dominant direction, at cosine -0.09 to t_bar): the intervention learnt exactly that offset,
  3.9x the tokens' norm in 12 steps. A cross-entropy rewards telling the classes apart, which an offset shared by
  every image cannot do.
* L_contrast [paper]: cross-entropy over the K classes of cos(F_vis, e_k) / tau, tau = 0.5; it fine-tunes the CLIP
  visual encoder. Images with no known lesion class do not contribute. [ours] With ``no_lesion_class``, "normal
  mucosa" (the dictionary's background prompt) is class K, the target of every image whose mask is empty, so that
  F_vis learns the presence decision of :class:`mcdrl.networks.mcdrlnet.MCDRLNet`.
* L_cf [ours, counterfactual consistency, the do-operator made literal]: when the batch holds pairs (an image and a
  copy of it with confounders added or changed, same scene and geometry; see
  :class:`mcdrl.engines.training.PrepareBatchWithClass`), the de-confounded, intervened features and the predictions
  of the two must agree: mean ||n(F) - n(F')||^2 over grid positions plus the Jensen-Shannon divergence of the pixel
  predictions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from .dictionary import ConfounderDictionary

__all__ = ["CAUSAL_LOSSES", "MCDRLLoss", "js_divergence"]

#: the forms of L_causal: the paper's squared distance to the class anchor, or a cross-entropy over the anchors [ours]
CAUSAL_LOSSES = ("mse", "anchor_ce")


def js_divergence(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Mean Jensen-Shannon divergence (nats, in [0, ln 2]) between the softmax of two (B, C, *spatial) logit maps."""
    la, lb = F.log_softmax(logits_a.float(), dim=1), F.log_softmax(logits_b.float(), dim=1)
    lm = torch.logsumexp(torch.stack([la, lb]), dim=0) - math.log(2.0)
    kl_a = (la.exp() * (la - lm)).sum(dim=1)
    kl_b = (lb.exp() * (lb - lm)).sum(dim=1)
    return 0.5 * (kl_a + kl_b).mean()


class MCDRLLoss(nn.Module):
    """The MCDRL loss; the last batch's terms are kept in :attr:`last_terms` for logging.

    Args:
        dictionary: the network's :class:`ConfounderDictionary` (t_bar_k, e_k and e_bg).
        lambda_causal: weight of L_causal (0.5). lambda_contrast: weight of L_contrast (0.1). tau: temperature (0.5).
        dice_weight: [ours] weight of an extra soft Dice term in L_seg (0 = pure cross-entropy).
        no_lesion_class: [ours] L_contrast over K + 1 classes, "normal mucosa" for images whose mask is empty.
        lambda_counterfactual: [ours] weight of L_cf on paired batches (0 = off).
        causal_loss: ``"mse"`` (the paper's squared distance) or ``"anchor_ce"`` (cross-entropy over the anchors) [ours].

    Call:
        ``loss(output, target)`` with ``output`` the training-mode network dict (or a plain logits tensor for a
        network without auxiliary outputs) and ``target`` either a label tensor (B, 1, H, W) or
        ``{"label": (B, 1, H, W), "lesion_class": (B,), "paired": bool}`` with class index -1 meaning "unknown or none".
        With ``paired`` the batch is [x_1 .. x_P, x'_1 .. x'_P]: image i and image P + i show the same scene.
    """

    def __init__(self, dictionary: ConfounderDictionary, lambda_causal: float = 0.5, lambda_contrast: float = 0.1, tau: float = 0.5,
                 dice_weight: float = 0.0, no_lesion_class: bool = False, lambda_counterfactual: float = 0.0, causal_loss: str = "mse"):
        super().__init__()
        if causal_loss not in CAUSAL_LOSSES:
            raise ValueError(f"causal_loss must be one of {list(CAUSAL_LOSSES)}, got {causal_loss!r}")
        self.causal_loss = causal_loss
        self.dictionary = dictionary
        self.lambda_causal = float(lambda_causal)
        self.lambda_contrast = float(lambda_contrast)
        self.tau = float(tau)
        self.dice_weight = float(dice_weight)
        self.no_lesion_class = bool(no_lesion_class)
        self.lambda_counterfactual = float(lambda_counterfactual)
        self.dice = DiceLoss(softmax=True, to_onehot_y=True, include_background=False)
        self.last_terms: dict[str, float] = {}

    def causal(self, region_embedding: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Mean over images with a class of ||norm(Pool(F_ca)) - norm(t_bar_y)||^2, or with ``causal_loss="anchor_ce"``
        the cross-entropy of cos(Pool(F_ca), t_bar_k) / tau against y; 0 if there are none. (B, d), (B,) -> ()."""
        all_anchors = self.dictionary.class_anchors
        keep = (classes >= 0) & (classes < all_anchors.shape[0])
        if not bool(keep.any()):
            return region_embedding.sum() * 0.0
        f = F.normalize(region_embedding[keep].float(), dim=-1)
        if self.causal_loss == "anchor_ce":
            return F.cross_entropy(f @ F.normalize(all_anchors.float(), dim=-1).t() / self.tau, classes[keep])
        diff = f - F.normalize(all_anchors[classes[keep]].float(), dim=-1)
        return diff.pow(2).sum(dim=-1).mean()

    def contrast_targets(self, classes: torch.Tensor, label: torch.Tensor | None) -> torch.Tensor:
        """Per image the L_contrast target: its class, K ("normal mucosa") for an empty mask with ``no_lesion_class``,
        or -1 (no term). (B,) -> (B,)."""
        k = self.dictionary.class_embeddings.shape[0]
        targets = torch.where((classes >= 0) & (classes < k), classes, torch.full_like(classes, -1))
        if self.no_lesion_class and label is not None:
            empty = ~label.flatten(1).bool().any(dim=1)
            targets = torch.where(empty, torch.full_like(targets, k), targets)
        return targets

    def contrast(self, image_embedding: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of cos(F_vis, prompts) / tau against the targets of :meth:`contrast_targets`; 0 if none."""
        keep = targets >= 0
        if not bool(keep.any()):
            return image_embedding.sum() * 0.0
        logits = self.dictionary.prompt_logits(image_embedding[keep], self.tau, with_background=self.no_lesion_class)
        return F.cross_entropy(logits, targets[keep])

    def counterfactual(self, output: dict) -> torch.Tensor:
        """L_cf of a paired batch: feature agreement over grid positions + JS divergence of the predictions."""
        f, logits = output["features"], output["pred"]
        p = f.shape[0] // 2
        fa, fb = F.normalize(f[:p].float(), dim=-1), F.normalize(f[p : 2 * p].float(), dim=-1)
        return (fa - fb).pow(2).sum(dim=-1).mean() + js_divergence(logits[:p], logits[p : 2 * p])

    def forward(self, output, target) -> torch.Tensor:
        paired = False
        if isinstance(target, dict):
            label, classes, paired = target["label"], target.get("lesion_class"), bool(target.get("paired", False))
        else:
            label, classes = target, None
        logits = output["pred"] if isinstance(output, dict) else output
        label = label.long()
        seg = F.cross_entropy(logits, label[:, 0])
        if self.dice_weight > 0:
            seg = seg + self.dice_weight * self.dice(logits, label)
        total = seg
        terms = {"seg": float(seg.detach())}
        if isinstance(output, dict) and classes is not None:
            classes = classes.view(-1).long().to(logits.device)
            if self.lambda_contrast > 0:
                lc = self.contrast(output["image_embedding"], self.contrast_targets(classes, label))
                total = total + self.lambda_contrast * lc
                terms["contrast"] = float(lc.detach())
            if self.lambda_causal > 0 and bool(output["intervention_on"]):
                lk = self.causal(output["region_embedding"], classes)
                total = total + self.lambda_causal * lk
                terms["causal"] = float(lk.detach())
        if isinstance(output, dict) and paired and self.lambda_counterfactual > 0:
            lcf = self.counterfactual(output)
            total = total + self.lambda_counterfactual * lcf
            terms["counterfactual"] = float(lcf.detach())
        terms["total"] = float(total.detach())
        self.last_terms = terms
        return total
