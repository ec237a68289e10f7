"""The MCDRL training objective: L = L_seg + lambda_causal * L_causal + lambda_contrast * L_contrast.

* L_seg [paper]: pixel cross-entropy over (background, lesion). [ours] ``dice_weight`` > 0 adds a soft Dice term
  (default 0, the paper's loss).
* L_causal [paper]: || Pool(F_ca) - t_bar_y ||^2, with y the image's lesion class; [ours] both sides L2-normalised.
  Off while the intervention is off (the first ``causal_start_epoch`` epochs) and for images with no lesion class.
* L_contrast [paper]: cross-entropy over the K classes of cos(F_vis, e_k) / tau, tau = 0.5; it fine-tunes the CLIP
  visual encoder. Images with no lesion class (-1) do not contribute.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from .dictionary import ConfounderDictionary

__all__ = ["MCDRLLoss"]


class MCDRLLoss(nn.Module):
    """The three-term MCDRL loss; the last batch's terms are kept in :attr:`last_terms` for logging.

    Args:
        dictionary: the network's :class:`ConfounderDictionary` (t_bar_k and e_k).
        lambda_causal: weight of L_causal (0.5). lambda_contrast: weight of L_contrast (0.1). tau: temperature (0.5).
        dice_weight: [ours] weight of an extra soft Dice term in L_seg (0 = pure cross-entropy).

    Call:
        ``loss(output, target)`` with ``output`` the training-mode network dict (or a plain logits tensor for the
        baseline) and ``target`` either a label tensor (B, 1, H, W) or ``{"label": (B, 1, H, W), "lesion_class": (B,)}``
        with class index -1 meaning "no lesion or unknown".
    """

    def __init__(self, dictionary: ConfounderDictionary, lambda_causal: float = 0.5, lambda_contrast: float = 0.1, tau: float = 0.5, dice_weight: float = 0.0):
        super().__init__()
        self.dictionary = dictionary
        self.lambda_causal = float(lambda_causal)
        self.lambda_contrast = float(lambda_contrast)
        self.tau = float(tau)
        self.dice_weight = float(dice_weight)
        self.dice = DiceLoss(softmax=True, to_onehot_y=True, include_background=False)
        self.last_terms: dict[str, float] = {}

    def causal(self, region_embedding: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Mean over images with a class of ||norm(Pool(F_ca)) - norm(t_bar_y)||^2; 0 if there are none."""
        keep = classes >= 0
        if not bool(keep.any()):
            return region_embedding.sum() * 0.0
        anchors = self.dictionary.class_anchors[classes[keep]]
        diff = F.normalize(region_embedding[keep].float(), dim=-1) - F.normalize(anchors.float(), dim=-1)
        return diff.pow(2).sum(dim=-1).mean()

    def contrast(self, image_embedding: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of cos(F_vis, e_k) / tau against the image's class; 0 if no image has a class."""
        keep = classes >= 0
        if not bool(keep.any()):
            return image_embedding.sum() * 0.0
        logits = F.normalize(image_embedding[keep].float(), dim=-1) @ F.normalize(self.dictionary.class_embeddings.float(), dim=-1).t()
        return F.cross_entropy(logits / self.tau, classes[keep])

    def forward(self, output, target) -> torch.Tensor:
        if isinstance(target, dict):
            label, classes = target["label"], target.get("lesion_class")
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
                lc = self.contrast(output["image_embedding"], classes)
                total = total + self.lambda_contrast * lc
                terms["contrast"] = float(lc.detach())
            if self.lambda_causal > 0 and bool(output["intervention_on"]):
                lk = self.causal(output["region_embedding"], classes)
                total = total + self.lambda_causal * lk
                terms["causal"] = float(lk.detach())
        terms["total"] = float(total.detach())
        self.last_terms = terms
        return total
