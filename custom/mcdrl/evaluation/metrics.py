"""Per-image foreground metrics: Dice, IoU and pixel accuracy via ``monai.metrics``, plus HD95.

Rules [ours]: metrics are per image, for the lesion (foreground) channel only, at the original resolution.
An empty ground truth with an empty prediction scores Dice 1 and IoU 1 (``ignore_empty=False``); an empty ground
truth with a non-empty prediction scores 0. HD95 is NaN when either mask is empty (reported as such, never 0).
"""

from __future__ import annotations

import warnings

import torch
from monai.metrics import CumulativeIterationMetric, DiceMetric, HausdorffDistanceMetric, MeanIoU
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction

__all__ = ["PixelAccuracyMetric", "per_image_metrics"]


class PixelAccuracyMetric(CumulativeIterationMetric):
    """Fraction of pixels whose predicted class equals the label, per image; one-hot (B, C, *spatial) inputs.

    Returns (B, 1) per image, so MONAI's ``MetricsSaver`` writes one row per image.
    """

    def __init__(self, reduction: MetricReduction | str = MetricReduction.MEAN, get_not_nans: bool = False):
        super().__init__()
        self.reduction = reduction
        self.get_not_nans = get_not_nans

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        same = (y_pred.argmax(dim=1) == y.argmax(dim=1)).float()
        return same.flatten(1).mean(dim=1, keepdim=True)

    def aggregate(self, reduction: MetricReduction | str | None = None):
        data = self.get_buffer()
        f, not_nans = do_metric_reduction(data, reduction or self.reduction)
        return (f, not_nans) if self.get_not_nans else f


def per_image_metrics(pred: torch.Tensor, label: torch.Tensor, spacing: tuple[float, ...] | None = None) -> dict[str, float]:
    """Dice, IoU, pixel accuracy and HD95 of one binary prediction against its label.

    Args:
        pred, label: (H, W) or (1, H, W) tensors, lesion > 0.
        spacing: pixel spacing for HD95 (pixels if None).
    """
    p = (pred.reshape(1, 1, *pred.shape[-2:]) > 0).long()
    y = (label.reshape(1, 1, *label.shape[-2:]) > 0).long()
    p1 = torch.cat([1 - p, p], 1).float()
    y1 = torch.cat([1 - y, y], 1).float()
    dice = DiceMetric(include_background=False, ignore_empty=False)(p1, y1)
    iou = MeanIoU(include_background=False, ignore_empty=False)(p1, y1)
    acc = PixelAccuracyMetric()(p1, y1)
    if p.any() and y.any():
        with warnings.catch_warnings():  # MONAI 1.6's HD95 calls its own get_mask_edges with a deprecated argument, per image
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy")
            hd95 = float(HausdorffDistanceMetric(include_background=False, percentile=95)(p1, y1, spacing=spacing).item())
    else:
        hd95 = float("nan")
    return {"dice": float(dice.item()), "iou": float(iou.item()), "pixel_accuracy": float(acc.item()), "hd95": hd95}
