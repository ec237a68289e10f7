"""Scene layers that the confounder effects read, given exactly by the generator or estimated from any RGB frame.

The generator knows its scene (shading, lumen, vessels, haemoglobin) and passes those layers as they are
(:meth:`mcdrl.synthetic.frames.Scene.layers`). A real frame has none of them, so :class:`Layers` estimates each one
from the pixels the first time an effect asks for it:

==========  ==========================================================================================
layer       estimate on a real frame (``img`` (3, H, W) float in [0, 1])
==========  ==========================================================================================
fov         field of view: convex hull of the largest bright region, if three corners are dark (else all ones)
shade       illumination x shape: luminance blurred over ~1/20 of the frame, divided by its 95th percentile
lumen       dark regions inside the field of view: ``1 - smoothstep(0.12, 0.35, shade)``
v_sup       superficial vessels: fine dark detail of the green channel (haemoglobin absorbs green)
v_deep      deep vessels: coarser dark detail of the green channel
heme        haemoglobin: redness r / (r + g + b) above the frame's median redness
==========  ==========================================================================================

All estimates are cheap (coarse maps are computed on a frame shrunk to at most 128 px, fine ones use box filters).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from ._ops import luminance, resize_f, smoothstep

#: Side, in pixels, of the reference frame in which the effects' pixel sizes are stated (the generator's 224 px).
REFERENCE_SIDE = 224


def _shrink(m: np.ndarray, side: int = 128) -> np.ndarray:
    """Box-downsample a (H, W) float map so that its longer side is at most ``side``."""
    h, w = m.shape
    f = max(h, w) / side
    if f <= 1:
        return np.asarray(m, np.float32)
    size = (max(1, round(w / f)), max(1, round(h / f)))
    return np.asarray(Image.fromarray(np.ascontiguousarray(m, np.float32), "F").resize(size, Image.BOX), np.float32)


def _grow(m: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return m if m.shape == tuple(shape) else resize_f(m, shape, Image.BILINEAR)


def estimate_fov(img: np.ndarray) -> np.ndarray:
    """Field-of-view map (H, W) float32 in [0, 1] of a (3, H, W) frame: 0 on the scope's dark border, 1 inside.

    A frame has a border when at least three of its four corners are dark (max channel below
    ``max(0.04, min(0.13, 0.2 * p75))``); otherwise (a photo, a cropped frame) the map is all ones. With a border, the
    field of view is the convex hull of the largest bright component: burned-in text on the border is dropped, and a
    dark lumen at the edge of the field of view stays inside it. Found at <= 128 px, the hull drawn at full size.
    """
    from PIL import ImageDraw, ImageFilter
    from scipy import ndimage
    from scipy.spatial import ConvexHull

    h, w = img.shape[-2:]
    v = _shrink(np.maximum(np.maximum(img[0], img[1]), img[2]))
    thr = max(0.04, min(0.13, 0.2 * float(np.percentile(v, 75))))
    tissue = v >= thr
    k = max(2, round(0.06 * min(v.shape)))
    corners = [tissue[:k, :k], tissue[:k, -k:], tissue[-k:, :k], tissue[-k:, -k:]]
    if sum(float(c.mean()) < 0.4 for c in corners) < 3:
        return np.ones((h, w), np.float32)
    lab, n = ndimage.label(tissue)
    if n == 0:
        return np.ones((h, w), np.float32)
    comp = lab == 1 + int(np.argmax(np.bincount(lab.ravel())[1:]))
    ys, xs = np.nonzero(comp & ~ndimage.binary_erosion(comp))
    pts = np.stack([xs, ys], 1).astype(np.float64)
    corners_px = np.concatenate([pts, pts + [1, 0], pts + [0, 1], pts + [1, 1]])  # pixel squares, not centres
    try:
        hull = corners_px[ConvexHull(corners_px).vertices]
    except Exception:  # degenerate (a line of pixels): no usable field of view
        return np.ones((h, w), np.float32)
    hull = hull * [w / v.shape[1], h / v.shape[0]]  # drawn at full resolution, edge softened over ~1 px
    im = Image.new("L", (w, h), 0)
    ImageDraw.Draw(im).polygon([tuple(p) for p in hull.tolist()], fill=255)
    return np.asarray(im.filter(ImageFilter.BoxBlur(1)), np.float32) * np.float32(1 / 255)


def estimate_shade(img: np.ndarray, fov: np.ndarray | None = None) -> np.ndarray:
    """Shading (H, W) float32 in [0, 1.05]: luminance blurred over ~1/20 of the frame, / its 95th percentile in the FOV."""
    from scipy import ndimage

    h, w = img.shape[-2:]
    small = _shrink(luminance(img), 64)
    small = ndimage.uniform_filter(ndimage.uniform_filter(small, 3, mode="nearest"), 3, mode="nearest")
    ref = small if fov is None else small[_shrink(fov, 64) > 0.5]
    top = float(np.percentile(ref, 95)) if ref.size else 1.0
    return np.clip(_grow(small / max(top, 1e-3), (h, w)), 0, 1.05).astype(np.float32)


def estimate_vessels(img: np.ndarray, px: float) -> tuple[np.ndarray, np.ndarray]:
    """(superficial, deep) vessel opacity maps (H, W) float32 in [0, 1]: relative dark detail of the green channel.

    Superficial = green darker than its ~3 px (x ``px``) neighbourhood; deep = the ~3 px blur darker than its ~11 px
    neighbourhood. Relative darkening of 4 % -> 0, of 25 % (superficial) / 20 % (deep) or more -> 1.
    """
    from scipy import ndimage

    g = np.ascontiguousarray(img[1], np.float32)
    k1, k2 = max(3, int(round(3 * px)) | 1), max(7, int(round(11 * px)) | 1)
    b1 = ndimage.uniform_filter(g, k1, mode="nearest")
    b2 = ndimage.uniform_filter(b1, k2, mode="nearest")
    v_sup = smoothstep(0.04, 0.25, (b1 - g) / (b1 + 0.05))
    v_deep = smoothstep(0.04, 0.20, (b2 - b1) / (b2 + 0.05))
    return v_sup.astype(np.float32), v_deep.astype(np.float32)


def estimate_heme(img: np.ndarray, fov: np.ndarray | None = None) -> np.ndarray:
    """Haemoglobin density (H, W) float32 in [0, 1]: redness r/(r+g+b) 0.03-0.15 above the FOV's median redness."""
    red = img[0] / (img.sum(axis=0) + 1e-3)
    ref = red if fov is None else red[fov > 0.5]
    med = float(np.median(ref)) if ref.size else float(np.median(red))
    heme = smoothstep(0.03, 0.15, red - med)
    return (heme if fov is None else heme * fov).astype(np.float32)


@dataclass
class Layers:
    """Scene layers of one (3, H, W) frame for the confounder effects; a layer left None is estimated on first use.

    Attributes:
        source: (3, H, W) float32 frame the missing layers are estimated from (None: the image an effect is given).
        fov, shade, lumen, v_sup, v_deep, heme: (H, W) float32 maps (see the module doc for their estimates).
            ``blood`` adds its coverage to ``heme`` in place, so ``narrow-band imaging`` turns it brown.
        zoom: working-distance scale of the scene (1 = normal; the generator's ``Scene.zoom``; ~1.8 after a near
            view, ~0.56 after a far view).
        px: image pixels per pixel of the 224 px reference frame; None = ``min(H, W) / 224`` (the generator passes 1,
            its historical look at every size).
        lesion_box: (cy, cx, radius) of a lesion that blood pools avoid, in pixels, or None.
        estimate: False where every layer is exact (the generator): a missing one is then an error, not a guess.

    Example::

        layers = Layers(source=img)            # a real frame: everything estimated lazily
        shade = layers.get("shade", img)       # (H, W)
    """

    source: np.ndarray | None = None
    fov: np.ndarray | None = None
    shade: np.ndarray | None = None
    lumen: np.ndarray | None = None
    v_sup: np.ndarray | None = None
    v_deep: np.ndarray | None = None
    heme: np.ndarray | None = None
    zoom: float = 1.0
    px: float | None = None
    lesion_box: tuple[float, float, float] | None = None
    estimate: bool = True

    def scale(self, img: np.ndarray) -> float:
        """Pixels per reference pixel for ``img`` (3, H, W)."""
        return float(self.px) if self.px is not None else min(img.shape[-2:]) / REFERENCE_SIDE

    def get(self, name: str, img: np.ndarray) -> np.ndarray:
        """The (H, W) layer ``name``, estimated from :attr:`source` (or ``img``) and stored if it was None."""
        val = getattr(self, name)
        if val is not None:
            return val
        if not self.estimate:
            raise ValueError(f"layer {name!r} is missing and these layers are exact (estimate=False)")
        src = self.source if self.source is not None else img
        if name == "fov":
            val = estimate_fov(src)
        elif name == "shade":
            val = estimate_shade(src, self.get("fov", img))
        elif name == "lumen":
            val = ((1 - smoothstep(0.12, 0.35, self.get("shade", img))) * self.get("fov", img)).astype(np.float32)
        elif name in ("v_sup", "v_deep"):
            fov = self.get("fov", img)
            v_sup, v_deep = estimate_vessels(src, self.scale(src))
            self.v_sup = v_sup * fov if self.v_sup is None else self.v_sup
            self.v_deep = v_deep * fov if self.v_deep is None else self.v_deep
            return getattr(self, name)
        elif name == "heme":
            val = estimate_heme(src, self.get("fov", img))
        else:
            raise KeyError(f"unknown layer {name!r}; known: fov, shade, lumen, v_sup, v_deep, heme")
        setattr(self, name, val)
        return val
