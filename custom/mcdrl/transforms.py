"""Transforms shared by training, evaluation, inference and the clinical folder runner.

Each is a small MONAI ``Transform`` with a dictionary twin, so that it drops into ``Compose``.

Augmentation for domain generalisation (training only, after ``ToModelInputd`` and ``Resized``):

* :class:`RandConfounder` / :class:`RandConfounderd`: the 12 dictionary confounders as image effects on any frame,
  by their prompt names (the same functions the synthetic generator renders them with,
  :mod:`mcdrl.synthetic.confounders`); near / far views move the label too.
* :func:`photometric_augmentation`: colour, hue, saturation, brightness, contrast, gamma, blur / sharpen and noise,
  MONAI transforms plus :class:`RandHueSaturationd` (torchvision's hue and saturation).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform, Transform
from monai.transforms import SaveImaged as _SaveImaged
from monai.utils import convert_to_dst_type

from mcdrl.networks.prompts import CONFOUNDERS, LESION_CLASSES, NO_LESION

from .errors import ConfigError
from .synthetic.confounders import EXCLUSIVE, apply_confounders, check_names

__all__ = ["JPEG_SUFFIXES", "LabelToBinary", "LabelToBinaryd", "binarize_mask", "mask_threshold", "LesionClassToIndexd", "LesionPostprocess", "LesionPostprocessd", "RandConfounder",
           "RandConfounderd", "RandHueSaturation", "RandHueSaturationd", "SaveImaged", "ToModelInput", "ToModelInputd",
           "photometric_augmentation"]

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

            out = MetaTensor(x, meta=meta)  # the meta dict holds the affine already (passing it again makes MONAI warn)
            if "affine" not in meta and getattr(img, "affine", None) is not None:
                out.affine = img.affine
            return out
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


#: File suffixes of masks stored with lossy JPEG compression (a halo of intermediate values around every edge).
JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")
#: What ``label_threshold`` accepts besides a number (see :func:`mask_threshold`).
THRESHOLD_MODES = ("auto", "half_range", "otsu")


def is_jpeg(filename) -> bool:
    """Whether ``filename`` (a path, or None) names a JPEG file, by its suffix."""
    return filename is not None and str(filename).lower().endswith(JPEG_SUFFIXES)


def nominal_range(values: np.ndarray) -> float:
    """The top of the value range a mask was stored in: 1 (0/1 masks, floats), 255 (8-bit) or 65535 (16-bit).

    Inferred from the largest value, so that a 0/1 PNG and a 0/255 PNG of the same mask read alike.
    """
    hi = float(np.max(values)) if values.size else 0.0
    return 1.0 if hi <= 1 else 255.0 if hi <= 255 else 65535.0


def otsu_threshold(values: np.ndarray, top: float) -> float:
    """Otsu's threshold of ``values`` in [0, ``top``] (256-bin histogram), kept within [top/4, 3 top/4].

    The clamp makes a lesion-free JPEG mask (background plus compression noise, one mode only) read as empty instead of
    splitting its noise in two.
    """
    hist, edges = np.histogram(np.asarray(values, np.float64).ravel(), bins=256, range=(0.0, top))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        mu0, mu1 = m0 / w0, (m0[-1] - m0) / w1
        between = np.where((w0 > 0) & (w1 > 0), w0 * w1 * (mu0 - mu1) ** 2, -1.0)
    t = float(edges[int(np.argmax(between)) + 1]) if between.max() > 0 else top / 2
    return float(min(max(t, top / 4), 3 * top / 4))


def mask_threshold(values: np.ndarray, threshold: float | str = "auto", filename=None) -> float:
    """The value above which a mask pixel is lesion.

    Args:
        values: the mask's values (any shape; the first channel of a multi-channel mask).
        threshold: a number (in the mask's own units); ``"half_range"``: half the mask's value range (0.5 for 0/1
            masks, 127.5 for 8-bit, 32767.5 for 16-bit); ``"otsu"``: Otsu's threshold, within a quarter and three
            quarters of that range; ``"auto"`` (the bundle's ``label_threshold`` default): ``"otsu"`` for JPEG masks
            (``filename`` ends in .jpg/.jpeg), ``"half_range"`` otherwise.
        filename: the mask's file, for ``"auto"`` (None: not JPEG).

    Raises:
        ValueError: an unknown mode.
    """
    if not isinstance(threshold, str):
        return float(threshold)
    if threshold not in THRESHOLD_MODES:
        raise ValueError(f"label_threshold must be a number or one of {list(THRESHOLD_MODES)}, got {threshold!r}")
    values = np.asarray(values)
    top = nominal_range(values)
    if threshold == "otsu" or (threshold == "auto" and is_jpeg(filename)):
        return otsu_threshold(values, top)
    return top / 2


def binarize_mask(mask, threshold: float | str = "auto", filename=None) -> np.ndarray:
    """A mask as datasets publish it (0/1, 0/255, JPEG, grey or multi-channel) -> bool lesion map of the first channel.

    Args:
        mask: (H, W) array, or (H, W, C) as PIL gives a colour mask. threshold, filename: see :func:`mask_threshold`.

    Returns:
        (H, W) bool.
    """
    arr = np.asarray(mask)
    arr = arr[..., 0] if arr.ndim == 3 else arr
    return arr > mask_threshold(arr, threshold, filename)


class LabelToBinary(Transform):
    """Any mask (0/1, 0/255, JPEG, multi-channel PNG) -> (1, *spatial) float {0, 1} of the first channel.

    Lesion where the value is above :func:`mask_threshold`: by default half the mask's value range, or Otsu's threshold
    for a JPEG mask, whose compression leaves a halo of intermediate values around every edge (``> 0`` would count
    that halo as lesion).

    Args:
        threshold: a number, ``"auto"``, ``"half_range"`` or ``"otsu"`` (see :func:`mask_threshold`); the bundle's
            ``label_threshold``.

    Shapes: (C, *spatial) tensor or array -> (1, *spatial) float32 of the same kind. ``__call__(lab, filename=None)``:
    the file decides ``"auto"`` (a MetaTensor's ``filename_or_obj`` is used when no filename is given).
    """

    def __init__(self, threshold: float | str = "auto"):
        mask_threshold(np.zeros(1), threshold)  # an unknown mode fails here, when the config is parsed
        self.threshold = threshold

    def __call__(self, lab, filename=None):
        if filename is None:
            filename = getattr(lab, "meta", {}).get("filename_or_obj")
        if isinstance(lab, torch.Tensor):
            first = lab[:1]
            t = mask_threshold(first.detach().cpu().numpy(), self.threshold, filename)
            return (first > t).to(torch.float32)
        first = np.asarray(lab)[:1]
        return (first > mask_threshold(first, self.threshold, filename)).astype(np.float32)


class LabelToBinaryd(MapTransform):
    """Dictionary twin of :class:`LabelToBinary` (``threshold``: the bundle's ``label_threshold``)."""

    def __init__(self, keys: KeysCollection, threshold: float | str = "auto", allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.t = LabelToBinary(threshold)

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
        return out.numpy() if is_np else convert_to_dst_type(out, label, dtype=out.dtype)[0]  # keeps a MetaTensor's meta


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

# ----------------------------------------------------------------------------- confounders as image effects
def _rgb_numpy(img, what: str = "image") -> np.ndarray:
    """(3, H, W) float RGB in [0, 1] of any array type -> float32 numpy (a copy); a clear error otherwise."""
    arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    if arr.ndim != 3 or arr.shape[0] != 3 or not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{what}: expected a (3, H, W) float RGB image in [0, 1] (mcdrl.transforms.ToModelInput), "
                         f"got {arr.dtype} {tuple(arr.shape)}")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -0.01 or hi > 1.01:
        raise ValueError(f"{what}: values must be in [0, 1] (mcdrl.transforms.ToModelInput), got [{lo:.3g}, {hi:.3g}]")
    return np.array(arr, dtype=np.float32)


class RandConfounder(RandomizableTransform):
    """Apply dictionary confounders, by their prompt names, to a channel-first RGB frame as image effects.

    With probability ``prob`` a frame gets 1 to ``max_per_image`` confounders (uniformly many), drawn without
    replacement with relative ``weights`` and never two of a mutually exclusive pair (narrow-band / white light
    imaging, near / far view, bright / dark lighting). They are applied in imaging-chain order by
    :func:`mcdrl.synthetic.confounders.apply_confounders`, the same effect functions the synthetic generator uses, with
    the scene layers they need (shading, lumen, vessels, haemoglobin, field of view) estimated from the pixels. Only
    ``a near view`` / ``a far view`` change geometry, and they move the ``label`` identically (nearest). Deterministic
    given :meth:`set_random_state`. The names applied by the last call are in :attr:`applied`.

    Args:
        confounders: prompt names to draw from (default: all 12 of :data:`mcdrl.networks.prompts.CONFOUNDERS`).
        prob: probability that a frame gets any confounder.
        max_per_image: most confounders per frame (>= 1).
        weights: relative probability of each name being drawn (missing names: 1; 0: never).
        keep_border: leave the scope's dark border (estimated field of view) unchanged.

    Shapes: ``img`` (3, H, W) float in [0, 1] (MetaTensor, Tensor or ndarray, any H, W > 16) -> same type, dtype,
    device and metadata, values in [0, 1]; ``label`` (C, H, W) or (H, W), any dtype -> same.

    Example::

        t = RandConfounder(["mucus", "blood", "a near view"], prob=1.0, max_per_image=2)
        t.set_random_state(0)
        out = t(img)                      # (3, H, W)
        out, lab = t(img, label=mask)     # near view: the mask moves with the image
        t.applied                         # e.g. ["a near view", "blood"]
    """

    def __init__(self, confounders: Sequence[str] | None = None, prob: float = 0.5, max_per_image: int = 2,
                 weights: Mapping[str, float] | None = None, keep_border: bool = True):
        RandomizableTransform.__init__(self, prob)
        if isinstance(confounders, str):
            raise ValueError(f"confounders must be a list of names, got the string {confounders!r}; "
                             f"known: {CONFOUNDERS}")
        names = list(CONFOUNDERS if confounders is None else confounders)
        for n in names:
            if n not in CONFOUNDERS:
                raise ValueError(f"unknown confounder {n!r}; known: {CONFOUNDERS}")
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"confounders must be distinct names, at least one; got {names}")
        if int(max_per_image) < 1:
            raise ValueError(f"max_per_image must be >= 1, got {max_per_image}")
        weights = dict(weights or {})
        for n, wt in weights.items():
            if n not in names:
                raise ValueError(f"weights: {n!r} is not one of the confounders {names}")
            if not float(wt) >= 0:
                raise ValueError(f"weights: {n!r} must be >= 0, got {wt}")
        self.names = names
        self.weights = np.array([float(weights.get(n, 1.0)) for n in names])
        self.max_per_image = int(max_per_image)
        self.keep_border = bool(keep_border)
        self.applied: list[str] = []
        self._seed = 0

    def randomize(self, data=None) -> None:
        """Draw whether to apply, which confounders (into :attr:`applied`, chain order) and the effects' seed."""
        super().randomize(None)
        self.applied = []
        if not self._do_transform:
            return
        k = int(self.R.randint(1, self.max_per_image + 1))
        chosen: list[str] = []
        for _ in range(k):
            ok = np.array([wt > 0 and n not in chosen and not any({n, c} == set(p) for c in chosen for p in EXCLUSIVE)
                           for n, wt in zip(self.names, self.weights)])
            if not ok.any():
                break
            p = np.where(ok, self.weights, 0.0)
            chosen.append(self.names[int(self.R.choice(len(self.names), p=p / p.sum()))])
        self.applied = check_names(chosen)
        self._seed = int(self.R.randint(0, 2**31 - 1))

    def __call__(self, img, label=None, randomize: bool = True):
        """Returns the image, or ``(image, label)`` when a label is given (see the class doc for shapes)."""
        if randomize:
            self.randomize()
        if not self.applied:
            return img if label is None else (img, label)
        arr = _rgb_numpy(img)
        lab = None
        if label is not None:
            lab = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
            if lab.shape[-2:] != arr.shape[-2:]:
                raise ValueError(f"label {tuple(lab.shape)} and image {tuple(arr.shape)} differ in size")
        out, lab = apply_confounders(arr, self.applied, self._seed, lab, keep_border=self.keep_border)
        out = convert_to_dst_type(out, img, dtype=img.dtype)[0]
        if label is None:
            return out
        return out, convert_to_dst_type(lab, label, dtype=label.dtype)[0]


class RandConfounderd(RandomizableTransform, MapTransform):
    """Dictionary twin of :class:`RandConfounder`: the same confounders on every key, the label moved with them.

    Records the confounders applied in ``d[applied_key]``: a float32 multi-hot tensor (len(vocabulary),), index i =
    ``vocabulary[i]`` (zeros when nothing was applied), which collates to (B, len(vocabulary)) for a trainer that
    supervises or pairs on them; :attr:`RandConfounder.applied` of :attr:`confounder` has the names.

    Args:
        keys: image keys ((3, H, W) float in [0, 1]); all get identical draws.
        label_key: mask key moved with near / far views (nearest), or None.
        confounders, prob, max_per_image, weights, keep_border: see :class:`RandConfounder`.
        applied_key: where to record the multi-hot vector (None: not recorded).
        vocabulary: order of the multi-hot vector (default :data:`mcdrl.networks.prompts.CONFOUNDERS`, the rows of
            the confounder dictionary; pass ``@confounders`` in a bundle config).

    Example (config)::

        {"_target_": "mcdrl.transforms.RandConfounderd", "keys": "image", "label_key": "label", "prob": 0.5,
         "max_per_image": 2}
    """

    def __init__(self, keys: KeysCollection, label_key: str | None = None, confounders: Sequence[str] | None = None,
                 prob: float = 0.5, max_per_image: int = 2, weights: Mapping[str, float] | None = None,
                 keep_border: bool = True, applied_key: str | None = "applied_confounders",
                 vocabulary: Sequence[str] = CONFOUNDERS, allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.confounder = RandConfounder(confounders, 1.0, max_per_image, weights, keep_border)
        self.label_key = label_key
        self.applied_key = applied_key
        self.vocabulary = list(vocabulary)
        missing = [n for n in self.confounder.names if n not in self.vocabulary]
        if missing:
            raise ValueError(f"confounders {missing} are not in the vocabulary {self.vocabulary}")

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandConfounderd:
        super().set_random_state(seed, state)
        self.confounder.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        self.randomize(None)
        self.confounder.applied = []
        if self._do_transform:
            self.confounder.randomize()
        moved = False
        for key in self.key_iterator(d):
            name = getattr(d[key], "meta", {}).get("filename_or_obj", key)
            try:
                if self.label_key is not None and self.label_key in d and not moved:
                    d[key], d[self.label_key] = self.confounder(d[key], label=d[self.label_key], randomize=False)
                    moved = True
                else:
                    d[key] = self.confounder(d[key], randomize=False)
            except ValueError as e:
                raise ValueError(f"{name}: {e}") from e
        if self.applied_key is not None:
            vec = torch.zeros(len(self.vocabulary), dtype=torch.float32)
            for n in self.confounder.applied:
                vec[self.vocabulary.index(n)] = 1.0
            d[self.applied_key] = vec
        return d


# ----------------------------------------------------------------------------- photometric augmentation
class RandHueSaturation(RandomizableTransform):
    """Random hue shift and saturation factor of a (3, H, W) RGB image in [0, 1] (torchvision's ColorJitter maths).

    Unlike MONAI's ``RandTorchVision(name="ColorJitter")``, the factors come from this transform's own random state,
    so :meth:`set_random_state` (and ``monai.utils.set_determinism`` through ``Compose``) makes it reproducible.

    Args:
        prob: probability of applying it.
        hue: largest hue shift, in turns (0.5 = half the colour circle); drawn from [-hue, hue].
        saturation: (low, high) saturation factor (1 = unchanged, 0 = grey).

    Shapes: (3, H, W) float MetaTensor / Tensor / ndarray -> same type and dtype, values in [0, 1].

    Example::

        RandHueSaturation(prob=1.0, hue=0.04, saturation=(0.7, 1.3))(img)
    """

    def __init__(self, prob: float = 0.3, hue: float = 0.04, saturation: tuple[float, float] = (0.7, 1.3)):
        RandomizableTransform.__init__(self, prob)
        if not 0 <= hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {hue}")
        self.hue, self.saturation = float(hue), (float(saturation[0]), float(saturation[1]))
        self._h, self._s = 0.0, 1.0

    def randomize(self, data=None) -> None:
        super().randomize(None)
        if self._do_transform:
            self._h = float(self.R.uniform(-self.hue, self.hue))
            self._s = float(self.R.uniform(*self.saturation))

    def __call__(self, img, randomize: bool = True):
        from torchvision.transforms.v2 import functional as TF

        if randomize:
            self.randomize()
        if not self._do_transform:
            return img
        x = (img.as_tensor() if hasattr(img, "as_tensor") else torch.as_tensor(np.asarray(img))).float().clamp(0, 1)
        x = TF.adjust_saturation(TF.adjust_hue(x, self._h), self._s)
        return convert_to_dst_type(x, img, dtype=img.dtype)[0]


class RandHueSaturationd(RandomizableTransform, MapTransform):
    """Dictionary twin of :class:`RandHueSaturation` (the same factors for every key)."""

    def __init__(self, keys: KeysCollection, prob: float = 0.3, hue: float = 0.04,
                 saturation: tuple[float, float] = (0.7, 1.3), allow_missing_keys: bool = False):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.t = RandHueSaturation(1.0, hue, saturation)

    def set_random_state(self, seed: int | None = None,
                         state: np.random.RandomState | None = None) -> RandHueSaturationd:
        super().set_random_state(seed, state)
        self.t.set_random_state(seed, state)
        return self

    def __call__(self, data):
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        self.t.randomize()
        for key in self.key_iterator(d):
            d[key] = self.t(d[key], randomize=False)
        return d


def photometric_augmentation(keys: KeysCollection = "image", strength: float = 1.0, prob: float = 0.3) -> list:
    """The usual photometric augmentation for domain generalisation, as a list of MONAI dictionary transforms.

    In order, each with probability ``prob`` (ranges scale with ``strength``; 0 = identity):

    ==========================  ==========================================================  =====================
    what                        transform                                                   range at strength 1
    ==========================  ==========================================================  =====================
    hue, saturation             :class:`RandHueSaturationd` (torchvision maths)             hue +-0.04 turn, x0.7-1.3
    colour (white balance)      ``RandScaleIntensityd(channel_wise=True)``                  gain x0.92-1.08 per channel
    brightness                  ``RandScaleIntensityd``                                     gain x0.8-1.2
    contrast                    ``RandScaleIntensityFixedMeand`` (about the mean)           x0.75-1.25
    gamma                       ``RandAdjustContrastd``                                     gamma 0.74-1.35
    blur or sharpen (one)       ``OneOf(RandGaussianSmoothd, RandGaussianSharpend)``        sigma 0.25-1 px / alpha 0.3-1.5
    noise                       ``RandGaussianNoised``                                      std up to 0.03
    clip                        ``ScaleIntensityRanged(0, 1, 0, 1, clip=True)``             always
    ==========================  ==========================================================  =====================

    Input and output: (3, H, W) float32 in [0, 1] (after ``ToModelInputd`` and ``Resized``; pixel sigmas are for
    ~224 px). Reproducible: ``Compose`` seeds every transform (``set_random_state``, ``monai.utils.set_determinism``).

    Args:
        keys: image keys (never the label: nothing here moves pixels).
        strength: scales every range (0 = identity, 1 = the table, 2 = twice as wide).
        prob: probability of each transform.

    Returns:
        list of transforms, for ``Compose`` or a nested ``Compose`` item in a bundle config.

    Example::

        Compose([LoadImaged(...), ToModelInputd("image"), Resized(...), *photometric_augmentation("image")])
    """
    from monai.transforms import (OneOf, RandAdjustContrastd, RandGaussianNoised, RandGaussianSharpend,
                                  RandGaussianSmoothd, RandScaleIntensityd, RandScaleIntensityFixedMeand,
                                  ScaleIntensityRanged)

    s = float(strength)
    if s < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    p = float(prob) if s > 0 else 0.0
    sig = (0.25, 0.25 + 0.75 * s)
    return [
        RandHueSaturationd(keys, prob=p, hue=min(0.5, 0.04 * s), saturation=(max(0.0, 1 - 0.3 * s), 1 + 0.3 * s)),
        RandScaleIntensityd(keys, factors=0.08 * s, prob=p, channel_wise=True),
        RandScaleIntensityd(keys, factors=0.2 * s, prob=p),
        RandScaleIntensityFixedMeand(keys, factors=0.25 * s, prob=p, fixed_mean=True),
        RandAdjustContrastd(keys, gamma=(1 / (1 + 0.35 * s), 1 + 0.35 * s), prob=p),
        OneOf([RandGaussianSmoothd(keys, sigma_x=sig, sigma_y=sig, prob=p),
               RandGaussianSharpend(keys, sigma1_x=(0.2, 0.4), sigma1_y=(0.2, 0.4), sigma2_x=(0.5, 1.0),
                                    sigma2_y=(0.5, 1.0), alpha=(0.3 * s, 1.5 * s), prob=p)]),
        RandGaussianNoised(keys, prob=p, mean=0.0, std=0.03 * s),
        ScaleIntensityRanged(keys, a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True),
    ]
