"""Transforms shared by training, evaluation, inference and the clinical folder runner.

Each is a small MONAI ``Transform`` with a dictionary twin, so that it drops into ``Compose``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform
from monai.transforms import SaveImaged as _SaveImaged

from mcdrl.networks.prompts import LESION_CLASSES, NO_LESION

from .errors import ConfigError

__all__ = ["LabelToBinary", "LabelToBinaryd", "LesionClassToIndexd", "LesionPostprocess", "LesionPostprocessd", "SaveImaged", "ToModelInput", "ToModelInputd"]

logger = logging.getLogger(__name__)


class ToModelInput(Transform):
    """Channel-first image of any common kind -> float32 RGB (3, *spatial) in [0, 1], the network's input.

    * channels: 3 kept; 1 (grey) replicated to 3; 4 (RGBA) alpha dropped; 2 (grey + alpha) grey replicated;
      anything else is an error naming the count.
    * intensity: values that are whole numbers in [0, 255] (8-bit photos, loaded as uint8 or float) are divided by
      255; values already in [0, 1] are kept; anything else (16-bit PNG, CT, MR) is min-max scaled between its
      0.5 and 99.5 percentiles. NaN and inf become 0 (and are counted in a warning).
    """

    def __call__(self, img):
        meta = getattr(img, "meta", None)
        arr = img if isinstance(img, torch.Tensor) else torch.as_tensor(np.asarray(img))
        src_dtype = getattr(img, "dtype", arr.dtype)
        c = arr.shape[0]
        if c == 4:
            arr = arr[:3]
        elif c == 2:
            arr = arr[:1]
        elif c not in (1, 3):
            raise ValueError(f"expected 1, 3 or 4 channels (grey, RGB, RGBA), got {c} (shape {tuple(arr.shape)})")
        if arr.shape[0] == 1:
            arr = arr.expand(3, *arr.shape[1:])
        x = arr.float()
        finite = torch.isfinite(x)
        bad = int((~finite).sum())
        if bad == x.numel():
            raise ValueError("image has no finite values")
        if bad:
            logger.warning("%d non-finite values set to 0", bad)
            x = torch.where(finite, x, torch.zeros_like(x))
        lo, hi = float(x.min()), float(x.max())
        if lo >= 0 and hi <= 255 and (src_dtype in (torch.uint8, np.uint8) or bool((x == x.round()).all())) and hi > 1:
            x = x / 255.0
        elif not (lo >= 0 and hi <= 1):
            vals = x[finite]
            if vals.numel() > 1_000_000:
                vals = vals[torch.randperm(vals.numel(), generator=torch.Generator().manual_seed(0))[:1_000_000]]
            q = torch.quantile(vals, torch.tensor([0.005, 0.995]))
            x = torch.where(finite, (x - q[0]) / (q[1] - q[0]).clamp_min(1e-6), torch.zeros_like(x))
        x = x.clamp(0, 1).contiguous()
        if meta is not None:
            from monai.data import MetaTensor

            return MetaTensor(x, meta=meta, affine=getattr(img, "affine", None))
        return x


class ToModelInputd(MapTransform):
    """Dictionary twin of :class:`ToModelInput`; the error names the file."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.t = ToModelInput()

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            try:
                d[key] = self.t(d[key])
            except ValueError as e:
                name = getattr(d[key], "meta", {}).get("filename_or_obj", key)
                raise ValueError(f"{name}: {e}") from e
        return d


class LabelToBinary(Transform):
    """Any mask (0/1, 0/255, multi-channel PNG) -> (1, *spatial) float {0, 1}: lesion where the first channel > 0."""

    def __call__(self, lab):
        return (lab[:1] > 0).to(torch.float32) if isinstance(lab, torch.Tensor) else (np.asarray(lab)[:1] > 0).astype(np.float32)


class LabelToBinaryd(MapTransform):
    """Dictionary twin of :class:`LabelToBinary`."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.t = LabelToBinary()

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.t(d[key])
        return d


class LesionClassToIndexd(MapTransform):
    """Map a lesion-class name to its index in ``classes``; -1 for "none" (no lesion) or a missing field.

    A missing field (e.g. MONAI Label's datalists, which carry only image and label) is not guessed: the image then
    contributes to L_seg only, not to the class-dependent L_causal and L_contrast. An unknown name is an error.

    Args:
        keys: the class field, usually ``"lesion_class"``. classes: the class list of the network.
    """

    def __init__(self, keys: KeysCollection = "lesion_class", classes: Sequence[str] = LESION_CLASSES):
        super().__init__(keys, allow_missing_keys=True)
        self.classes = list(classes)
        self._warned = False

    def __call__(self, data):
        d = dict(data)
        for key in self.keys:
            name = d.get(key)
            if name is None and not self._warned:
                logger.warning("datalist entries without %r: those images train with L_seg only", key)
                self._warned = True
            if name is None or name == NO_LESION:
                d[key] = torch.tensor(-1)
            elif name in self.classes:
                d[key] = torch.tensor(self.classes.index(name))
            else:
                raise ConfigError(f"{d.get('image', '?')}: unknown lesion_class {name!r}; known: {self.classes + [NO_LESION]}")
        return d


class SaveImaged(_SaveImaged):
    """MONAI's ``SaveImaged`` that writes 2-D PNG/JPEG in the natural (row, column) order.

    The bundle reads PNG/JPEG with ``PILReader(reverse_indexing=False)``, so arrays are (rows, columns) like
    numpy and PIL, which CLIP was trained on; MONAI's PNG writer would otherwise transpose them back. Same name as
    MONAI's class, so that MONAI Label strips it from ``postprocessing`` like the original.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_options(write_kwargs={"reverse_indexing": False})


def _plain(x) -> torch.Tensor:
    """A MetaTensor's data as a plain tensor (anything else through ``torch.as_tensor``)."""
    x = torch.as_tensor(x)
    return x.as_tensor() if hasattr(x, "as_tensor") else x


class LesionPostprocess(Transform):
    """Clean a predicted lesion label map with MONAI's ``RemoveSmallObjects`` and ``KeepLargestConnectedComponent``.

    The minimum lesion size is a fraction of the image area, so that one setting suits a 224 px synthetic frame and a
    1280 x 1024 endoscope frame alike. Both steps are off by default; the bundle's configs set them
    (``min_lesion_fraction``, ``keep_largest_lesion``) to what measured best on source-site validation.

    Args:
        min_fraction: lesion components smaller than this fraction of the image's pixels are removed (0 = off).
        keep_largest: keep only the largest lesion component of each image (off for data with several lesions per frame).

    Shapes:
        (1, H, W) or (H, W) integer or {0, 1} float label map (tensor or ndarray) -> the same type and shape.
    """

    def __init__(self, min_fraction: float = 0.0, keep_largest: bool = False):
        self.min_fraction = float(min_fraction)
        self.keep_largest = bool(keep_largest)

    def __call__(self, label):
        if self.min_fraction <= 0 and not self.keep_largest:
            return label
        from monai.transforms import KeepLargestConnectedComponent, RemoveSmallObjects

        is_np = isinstance(label, np.ndarray)
        x = _plain(torch.as_tensor(label))
        squeeze = x.dim() == 2
        x = x[None] if squeeze else x
        fg = (x > 0).to(torch.uint8)
        if self.min_fraction > 0 and bool(fg.any()):
            size = int(self.min_fraction * fg.shape[-1] * fg.shape[-2])
            if size > 0:
                with warnings.catch_warnings():  # monai passes skimage's deprecated min_size; same semantics
                    warnings.simplefilter("ignore")
                    fg = _plain(RemoveSmallObjects(min_size=size)(fg)).to(torch.uint8)
        if self.keep_largest and bool(fg.any()):
            fg = _plain(KeepLargestConnectedComponent(applied_labels=[1])(fg)).to(torch.uint8)
        out = x * fg.to(x.dtype) if x.dtype != torch.bool else x & fg.bool()
        out = out[0] if squeeze else out
        if is_np:
            return out.numpy()
        if hasattr(label, "meta"):
            from monai.data import MetaTensor

            return MetaTensor(out, meta=label.meta)
        return out


class LesionPostprocessd(MapTransform):
    """Dictionary twin of :class:`LesionPostprocess` (after the argmax, before any one-hot)."""

    def __init__(self, keys: KeysCollection, min_fraction: float = 0.0, keep_largest: bool = False, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.t = LesionPostprocess(min_fraction, keep_largest)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.t(d[key])
        return d
