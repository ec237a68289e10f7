"""The paper's parts, one module each, and :class:`MCDRLNet`, which composes them (Segment Anything style).

* :mod:`~mcdrl.networks.clip_backbone`     CLIP factory (name + local weights) and the dense visual read-out
* :mod:`~mcdrl.networks.region_selection`  MTRS: top-alpha candidate lesion regions by prompt similarity
* :mod:`~mcdrl.networks.dictionary`        stage 1: the confounder dictionary artifact and its buffers
* :mod:`~mcdrl.networks.intervention`      stage 2: the causal intervention (cross-attention to the dictionary)
* :mod:`~mcdrl.networks.head`              the segmentation decoder H
* :mod:`~mcdrl.networks.mcdrlnet`          :class:`MCDRLNet`, composing the parts
* :mod:`~mcdrl.networks.losses`            L_seg + lambda_causal L_causal + lambda_contrast L_contrast
* :mod:`~mcdrl.networks.prompts`           the default vocabulary: lesion classes, confounders, templates
* :mod:`~mcdrl.networks.weights`           loading model.pt; weights that do not fit the config name the config key

Nothing here imports :mod:`mcdrl.engines`, :mod:`mcdrl.evaluation`, :mod:`mcdrl.deploy` or :mod:`mcdrl.io`
(``tests/test_layout.py`` enforces it). Names are imported on first use.
"""

from mcdrl.utils import lazy_exports

__all__ = ["CLIPVisualBackbone", "CausalIntervention", "ConfounderDictionary", "MCDRLLoss", "MCDRLNet", "RegionSelector",
           "SegmentationHead", "UNetHead", "build_dictionary", "create_clip"]

__getattr__ = lazy_exports(__name__, {
    "CLIPVisualBackbone": "clip_backbone", "create_clip": "clip_backbone", "RegionSelector": "region_selection",
    "ConfounderDictionary": "dictionary", "build_dictionary": "dictionary", "CausalIntervention": "intervention",
    "SegmentationHead": "head", "UNetHead": "head", "MCDRLNet": "mcdrlnet", "MCDRLLoss": "losses",
})
