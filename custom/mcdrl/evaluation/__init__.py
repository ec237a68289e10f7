"""What measures: per-image metrics, the leave-one-site-out benchmark, speed, and CLIP vocabulary probes.

* :mod:`~mcdrl.evaluation.metrics`     Dice, IoU, pixel accuracy, HD95 per image (``monai.metrics``)
* :mod:`~mcdrl.evaluation.loso`        ``python -m mcdrl.evaluation.loso``: leave-one-site-out, as sampled and with the protocol reversed
* :mod:`~mcdrl.evaluation.speed`       ``python -m mcdrl.evaluation.speed``: MCDRL against its CLIP backbone, training step,
  memory, and folder inference per engine against bare model calls
* :mod:`~mcdrl.evaluation.clip_probe`  ``python -m mcdrl.evaluation.clip_probe``: does a CLIP know the vocabulary
"""

from mcdrl.utils import lazy_exports

__getattr__ = lazy_exports(__name__, {})
