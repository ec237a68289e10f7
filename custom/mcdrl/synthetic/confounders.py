"""Image effects of the 12 confounders of :data:`mcdrl.networks.prompts.CONFOUNDERS`, on any RGB frame.

One implementation, two users: the synthetic generator (:func:`mcdrl.synthetic.render.render_case`) calls these
functions with its scene's exact layers, and :class:`mcdrl.transforms.RandConfounder` calls them on any frame (a real
photo or a generated one) through :func:`apply_confounders`, with the layers estimated from the pixels
(:class:`~mcdrl.synthetic.layers.Layers`). A name means the same effect in the text dictionary and in the image.

Each effect acts at its physical stage of the imaging chain (:data:`STAGES`, the order both users apply them in):

* geometry  -- ``a near view`` / ``a far view``: the generator renders its scene at a zoom factor (:data:`ZOOM`); on
  a finished frame :func:`near_view` / :func:`far_view` zoom in (crop + resize) / out (shrink, reflected surround) by
  a factor from the same table, label included,
* surface   -- ``mucus``, ``blood``: material on the tissue (lit by the scene shading),
* colour    -- ``narrow-band imaging`` (NBI colour mapping, vessels enhanced) and
  ``white light imaging`` (explicit HD white-light processor look: structure enhancement +
  saturation; the clean default is plain white light without that enhancement),
* lighting  -- ``bright lighting`` / ``dark lighting`` / ``uneven lighting``,
* optics    -- ``specular reflection`` (saturated white blobs), ``motion blur`` (directional kernel),
* sensor    -- ``imaging artifacts`` (interlace combing + scan lines + noise + JPEG blocking), on
  the final 8-bit frame.

Pixel effects (:data:`EFFECTS`) are ``fn(img, rng, layers=None) -> img`` with ``img`` (3, H, W) float32, values
~[0, 1] (not clipped in between, as in the generator), any H and W; their pixel sizes are stated for the 224 px
reference frame and scaled by ``layers.px`` (default ``min(H, W) / 224``). None of them changes the lesion mask;
only the geometric ones (:data:`GEOMETRY`) move it, identically to the image.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable

import numpy as np
from PIL import Image, ImageDraw

from mcdrl.networks.prompts import CONFOUNDERS

from ._ops import (blur_l, blur_rgb, gauss_noise, grid, luminance, random_walk, resize_f, rgb, rng_for, smooth_noise,
                   smoothstep, to_u8, window)
from .layers import REFERENCE_SIDE, Layers

#: Zoom ranges of the distance confounders and of the default working distance.
ZOOM = {"a near view": (1.6, 2.0), "a far view": (0.5, 0.62), None: (0.9, 1.12)}


def _soft_clip(y: np.ndarray, knee: float = 0.8) -> np.ndarray:
    return np.where(y > knee, knee + (1 - knee) * (1 - np.exp(-(y - knee) / (1 - knee))), y)


# ----------------------------------------------------------------------------- surface
def mucus(img: np.ndarray, rng: np.random.Generator, layers: Layers | None = None) -> np.ndarray:
    """Translucent whitish mucus streaks and bubble clusters, lit by the scene shading.

    Args:
        img: (3, H, W) float32 frame. rng: the effect's random stream.
        layers: reads ``shade``, ``zoom``, ``px`` (estimated from ``img`` when None).

    Returns:
        (3, H, W) float32.
    """
    layers = Layers() if layers is None else layers
    h, w = img.shape[-2:]
    z, px = layers.zoom, layers.scale(img)
    shade = layers.get("shade", img)
    streak_im = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(streak_im)
    for _ in range(int(rng.integers(2, 5))):
        start = tuple(float(v) for v in rng.uniform(0.15, 0.85, 2) * (w, h))
        pts = random_walk(rng, start, int(rng.integers(15, 40)), 3.0 * z * px, 0.12)
        wd = max(3, int(rng.uniform(6, 14) * z * px))
        draw.line(pts, fill=int(255 * rng.uniform(0.35, 0.6)), width=wd, joint="curve")
        draw.line(pts, fill=int(255 * rng.uniform(0.6, 0.8)), width=max(1, wd // 3), joint="curve")  # thicker core
    streak = blur_l(streak_im, 2.6 * z * px)
    ring_im, fill_im, spec_im = (Image.new("L", (w, h), 0) for _ in range(3))
    dr, df, ds = ImageDraw.Draw(ring_im), ImageDraw.Draw(fill_im), ImageDraw.Draw(spec_im)
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.uniform(0.2, 0.8, 2) * (h, w)
        for _ in range(int(rng.integers(6, 16))):
            r = float(rng.uniform(2, 8) * z * px)
            y, x = cy + rng.normal(0, 12 * z * px), cx + rng.normal(0, 12 * z * px)
            box = (x - r, y - r, x + r, y + r)
            df.ellipse(box, fill=70)
            dr.ellipse(box, outline=230, width=max(1, int(r / 4)))
            ds.ellipse((x - 0.55 * r, y - 0.55 * r, x - 0.25 * r, y - 0.25 * r), fill=255)
    ring, fill, spec = blur_l(ring_im, 0.5 * px), blur_l(fill_im, 0), blur_l(spec_im, 0.6 * px)
    col = rgb(0.96, 0.95, 0.86) * (0.6 + 0.5 * shade)
    a = np.clip(0.75 * streak + fill, 0, 0.75)
    out = img * (1 - a) + col * a
    b = np.clip(0.8 * ring + spec, 0, 1)
    return out * (1 - b) + b * (0.6 + 0.5 * shade)


def blood(img: np.ndarray, rng: np.random.Generator, layers: Layers | None = None) -> np.ndarray:
    """Dark-red pooled blood patches (mostly low in the frame) and a few streaks.

    Args:
        img: (3, H, W) float32 frame. rng: the effect's random stream.
        layers: reads ``shade``, ``zoom``, ``px``, ``lesion_box`` (pools keep off the lesion core when possible);
            adds the blood coverage to ``heme`` in place, so that a later narrow-band imaging turns it brown.

    Returns:
        (3, H, W) float32.
    """
    layers = Layers() if layers is None else layers
    h, w = img.shape[-2:]
    z, px = layers.zoom, layers.scale(img)
    shade, heme = layers.get("shade", img), layers.get("heme", img)
    yy, xx = grid(h, w)
    box = layers.lesion_box
    out = img.copy()
    for _ in range(int(rng.integers(1, 4))):
        for _try in range(6):  # keep the pool off the lesion core when possible
            cy, cx = h * rng.uniform(0.4, 0.88), w * rng.uniform(0.15, 0.85)
            if box is None or np.hypot(cy - box[0], cx - box[1]) > 0.8 * box[2] + 10 * px:
                break
        r = float(min(h, w) * rng.uniform(0.07, 0.15) * z ** 0.5)
        win = window(cy, cx, 1.6 * r, h, w)
        dn = np.hypot((yy[win] - cy) / r, (xx[win] - cx) / (r * rng.uniform(1.0, 1.8)))
        n = smooth_noise(rng, max(dn.shape + (2,)), r / 1.1, 2, 0.3)[: dn.shape[0], : dn.shape[1]]
        field = 1 - dn ** 2 + 0.28 * n
        a = smoothstep(-0.05, 0.3, field) * 0.95
        depth = smoothstep(0.05, 0.7, field)
        col = rgb(0.60, 0.10, 0.09) * (1 - depth) + rgb(0.25, 0.02, 0.025) * depth
        col = col * (0.55 + 0.5 * shade[win]) + (0.5 * smoothstep(1.3, 1.8, n))  # glossy sheen
        w3 = (slice(None),) + win
        out[w3] = out[w3] * (1 - a) + col * a
        heme[win] = np.maximum(heme[win], a)
    im = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(1, 4))):
        start = (float(rng.uniform(0.15, 0.85) * w), float(rng.uniform(0.1, 0.6) * h))
        pts = random_walk(rng, start, int(rng.integers(10, 30)), 3.0 * z * px, 0.1, angle=np.pi / 2 + rng.normal(0, 0.4))
        draw.line(pts, fill=int(255 * rng.uniform(0.6, 0.9)), width=max(2, int(rng.uniform(2, 5) * z * px)), joint="curve")
    a = blur_l(im, 0.8 * px)
    col = rgb(0.55, 0.05, 0.07) * (0.55 + 0.5 * shade)
    np.maximum(heme, a, out=heme)
    return out * (1 - a) + col * a


# ----------------------------------------------------------------------------- colour mode
def narrow_band_imaging(img: np.ndarray, rng: np.random.Generator, layers: Layers | None = None) -> np.ndarray:
    """NBI: 540 nm (~G) -> display R, 415 nm (~B) -> display G and B; haemoglobin turns brown.

    Mucosa becomes teal/green-grey, superficial capillaries dark brown, deep vessels cyan,
    haemoglobin-rich lesions brownish.

    Args:
        img: (3, H, W) float32 frame. rng: the effect's random stream.
        layers: reads ``v_sup``, ``v_deep``, ``heme`` (on a real frame: fine / coarse dark detail of green, redness).

    Returns:
        (3, H, W) float32.
    """
    layers = Layers() if layers is None else layers
    r, g, b = img[0], img[1], img[2]
    k = rng.uniform(0.95, 1.08)
    out = np.stack([1.02 * g + 0.10 * r, 1.32 * b + 0.26 * g, 1.12 * b + 0.20 * g]) * np.float32(k)
    out *= 1 - layers.get("v_sup", img) * rgb(0.35, 0.62, 0.72)
    out *= 1 - layers.get("v_deep", img) * rgb(0.60, 0.22, 0.10)
    out *= 1 - np.clip(layers.get("heme", img), 0, 1) * rgb(0.20, 0.48, 0.58)
    return out


def white_light_imaging(img: np.ndarray, rng: np.random.Generator, layers: Layers | None = None) -> np.ndarray:
    """Explicit HD white-light processor look: structure enhancement, +saturation, warm balance.

    Args:
        img: (3, H, W) float32 frame. rng: the effect's random stream. layers: reads ``px`` (detail scale).

    Returns:
        (3, H, W) float32.
    """
    px = (Layers() if layers is None else layers).scale(img)
    det = img - blur_rgb(img, 1.4 * px)
    out = img + np.float32(rng.uniform(1.2, 1.6)) * det
    lum = luminance(out)
    out = lum + (out - lum) * np.float32(rng.uniform(1.2, 1.35))
    return out * rgb(1.04, 1.0, 0.94)


# ----------------------------------------------------------------------------- lighting
def bright_lighting(img: np.ndarray, rng: np.random.Generator, layers: Layers | None = None) -> np.ndarray:
    """Global over-exposure: gain 1.45-1.75, soft shoulder, bleached highlights. (3, H, W) float32 in and out."""
    y = _soft_clip(img * np.float32(rng.uniform(1.45, 1.75)))
    over = smoothstep(0.82, 0.98, luminance(y)) * 0.5
    return y * (1 - over) + over


def dark_lighting(img: np.ndarray, rng: np.random.Generator, layers: Layers | None = None) -> np.ndarray:
    """Under-exposure: gain 0.3-0.45, crushed shadows, amplified sensor noise. (3, H, W) float32 in and out."""
    y = np.power(np.clip(img * np.float32(rng.uniform(0.3, 0.45)), 0, None), np.float32(1.12))
    return y + gauss_noise(rng, img.shape, 0.012)


def uneven_lighting(img: np.ndarray, rng: np.random.Generator, layers: Layers | None = None) -> np.ndarray:
    """Strong illumination gradient across the frame (one side ~3x brighter) + off-centre vignette.

    Distances are in units of ``sqrt(H * W)`` (the side of a square frame). (3, H, W) float32 in and out.
    """
    h, w = img.shape[-2:]
    side = math.sqrt(h * w)
    yy, xx = grid(h, w)
    phi = rng.uniform(0, 2 * np.pi)
    p = ((xx - w / 2) * np.float32(np.cos(phi)) + (yy - h / 2) * np.float32(np.sin(phi))) / side
    a = rng.uniform(1.1, 1.5)
    gain = np.exp(np.float32(2 * a) * p)
    hy, hx = rng.uniform(0.2, 0.8, 2) * (h, w)
    gain *= 1 - 0.35 * smoothstep(0.15, 0.6, np.hypot(yy - hy, xx - hx) / side)
    return _soft_clip(img * gain)


# ----------------------------------------------------------------------------- optics
def specular_reflection(img: np.ndarray, rng: np.random.Generator, layers: Layers | None = None) -> np.ndarray:
    """Several small saturated white highlight blobs on lit tissue (wet mucosa), with a faint halo.

    Args:
        img: (3, H, W) float32 frame. rng: the effect's random stream.
        layers: reads ``lumen`` (no highlight in the lumen), ``shade`` (favours lit ridges), ``zoom``, ``px``.

    Returns:
        (3, H, W) float32.
    """
    layers = Layers() if layers is None else layers
    h, w = img.shape[-2:]
    m = min(h, w)
    z, px = layers.zoom, layers.scale(img)
    lumen, shade = layers.get("lumen", img), layers.get("shade", img)
    im = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(im)
    n, placed = int(rng.integers(8, 19)), 0
    t = np.linspace(0, 2 * np.pi, 14, endpoint=False)
    for _ in range(120):
        if placed >= n:
            break
        y, x = rng.uniform(0.08, 0.92, 2) * (h, w)
        if np.hypot((y - h / 2) * (m / h), (x - w / 2) * (m / w)) > 0.44 * m or lumen[int(y), int(x)] > 0.3:
            continue
        if rng.random() > min(1.0, shade[int(y), int(x)]) ** 4:  # favour lit ridges
            continue
        a = rng.uniform(1.5, 5.0) * z ** 0.5 * px
        b, th = a * rng.uniform(0.3, 1.0), rng.uniform(0, np.pi)
        px_ = x + a * np.cos(t) * np.cos(th) - b * np.sin(t) * np.sin(th)
        py_ = y + a * np.cos(t) * np.sin(th) + b * np.sin(t) * np.cos(th)
        draw.polygon(list(zip(px_.tolist(), py_.tolist())), fill=255)
        placed += 1
    halo = blur_l(im, 2.5 * z ** 0.5 * px)
    a = np.clip(blur_l(im, 0.6 * px) * 1.3 + 0.45 * halo, 0, 1)
    return img * (1 - a) + np.float32(1.02) * a


def _shift_mean(img: np.ndarray, ts: np.ndarray, th: float) -> np.ndarray:
    """Mean of ``img`` (3, H, W) shifted by ``t`` pixels along angle ``th`` for each ``t`` of ``ts`` (edge padded)."""
    _, h, w = img.shape
    pad = int(np.ceil(np.abs(ts).max())) + 1
    p = np.pad(img, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    acc = np.zeros_like(img)
    for t in ts:
        dy, dx = int(round(t * np.sin(th))), int(round(t * np.cos(th)))
        acc += p[:, pad + dy: pad + dy + h, pad + dx: pad + dx + w]
    return acc / np.float32(len(ts))


def motion_blur(img: np.ndarray, rng: np.random.Generator, layers: Layers | None = None, *,
                max_taps: int | None = None) -> np.ndarray:
    """Directional box kernel of length 16-28 px (at 224 px) at a random angle (camera shake).

    The length scales with the frame, ``min(H, W) / 224``, at every size (never with ``layers.px``, as in the
    generator since v3). Generator v2 used 10-18 px: the demo CLIP never learned it (presence AUC 0.55, linear
    probe 0.51), and with its presence term weighted 8x a fine-tune reached 0.70 after 200 steps, against 0.88 at
    16-28 px.

    Args:
        img: (3, H, W) float32 frame. rng: the effect's random stream. layers: unused.
        max_taps: above this many kernel taps (frames larger than ~250 px) the line is applied as a short line
            convolved with a comb of the same total length, ~2 sqrt(n) shifted copies instead of n (within a pixel of
            the exact kernel). None: always exact (the generator).

    Returns:
        (3, H, W) float32.
    """
    h, w = img.shape[-2:]
    length = rng.uniform(16, 28) * min(h, w) / REFERENCE_SIDE
    th = rng.uniform(0, np.pi)
    n = int(np.ceil(length)) + 1
    if max_taps is None or n <= max_taps:
        return _shift_mean(img, np.linspace(-length / 2, length / 2, n), th)
    k = int(np.ceil(np.sqrt(n)))
    m = int(np.ceil(n / k))
    step = length / (k * m - 1)  # k * m >= n taps spaced step apart cover the same length
    fine = _shift_mean(img, (np.arange(k) - (k - 1) / 2) * step, th)
    return _shift_mean(fine, (np.arange(m) - (m - 1) / 2) * (k * step), th)


# ----------------------------------------------------------------------------- sensor (8-bit)
def imaging_artifacts_u8(frame: np.ndarray, rng: np.random.Generator, px: float = 1.0) -> np.ndarray:
    """Analogue-capture / transmission artefacts on a uint8 (H, W, 3) frame.

    Interlace combing in 1-3 horizontal bands (odd lines shifted 2-4 px), scan lines (odd lines
    darker), Gaussian + chroma noise, then heavy JPEG compression (quality 9-18, 8x8 blocking).

    Args:
        frame: (H, W, 3) uint8, H > 16. rng: the effect's random stream.
        px: frame pixels per 224 px reference pixel. Above 1.25 the artefacts are made on the frame shrunk to the
            reference scale and the result is enlarged back (a low-resolution capture shown on a large screen), so
            that they look the same after the network's resize; the generator uses 1.

    Returns:
        (H, W, 3) uint8.
    """
    if px > 1.25:
        h0, w0 = frame.shape[:2]
        small = Image.fromarray(frame, "RGB").resize((max(17, round(w0 / px)), max(17, round(h0 / px))), Image.BOX)
        out = imaging_artifacts_u8(np.asarray(small), rng)
        return np.asarray(Image.fromarray(out, "RGB").resize((w0, h0), Image.BILINEAR), dtype=np.uint8).copy()
    f = frame.astype(np.float32)
    h = f.shape[0]
    for _ in range(int(rng.integers(1, 4))):
        y0 = int(rng.integers(0, h - 16))
        y1 = min(h, y0 + int(rng.integers(16, 50)))
        s = int(rng.integers(2, 5)) * (1 if rng.random() < 0.5 else -1)
        f[y0 + (y0 % 2 == 0): y1: 2] = np.roll(f[y0 + (y0 % 2 == 0): y1: 2], s, axis=1)
    f[1::2] *= np.float32(rng.uniform(0.86, 0.92))
    f += gauss_noise(rng, (3, h, f.shape[1]), 7.0).transpose(1, 2, 0)
    chroma = gauss_noise(rng, (3, h // 4 + 1, f.shape[1] // 4 + 1), 5.0).transpose(1, 2, 0)
    f += chroma.repeat(4, 0).repeat(4, 1)[:h, : f.shape[1]]
    buf = io.BytesIO()
    Image.fromarray(np.clip(f + 0.5, 0, 255).astype(np.uint8), "RGB").save(buf, "JPEG", quality=int(rng.integers(9, 19)))
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"), dtype=np.uint8).copy()


def imaging_artifacts(img: np.ndarray, rng: np.random.Generator, layers: Layers | None = None) -> np.ndarray:
    """:func:`imaging_artifacts_u8` on a (3, H, W) float frame: quantised to 8 bits, returned as float32 in [0, 1].

    Args:
        img: (3, H, W) float32 frame (H > 16). rng: the effect's random stream. layers: reads ``px``.
    """
    px = (Layers() if layers is None else layers).scale(img)
    frame = np.ascontiguousarray(to_u8(img).transpose(1, 2, 0))
    out = imaging_artifacts_u8(frame, rng, px)
    return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32) * np.float32(1 / 255)


# ----------------------------------------------------------------------------- geometry (finished frames)
def _fill_outside(img: np.ndarray, fov: np.ndarray) -> np.ndarray:
    """``img`` (3, H, W) with the dark border outside ``fov`` (H, W), and a rim of ~4 % inside it (the soft FOV edge,
    vignetting), replaced by smeared colours of the tissue next to it (normalised blur at <= 64 px)."""
    from scipy import ndimage

    h, w = fov.shape
    f = max(1.0, max(h, w) / 64)
    size = (max(1, round(w / f)), max(1, round(h / f)))

    def shrink(m: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(np.ascontiguousarray(m, np.float32), "F").resize(size, Image.BOX))

    inner = ndimage.binary_erosion(shrink(fov) > 0.98, iterations=2)
    if not inner.any():
        return img
    m = inner.astype(np.float32)
    sigma = 0.08 * max(size)
    den = ndimage.gaussian_filter(m, sigma, mode="nearest") + 1e-4
    smear = [resize_f(ndimage.gaussian_filter(shrink(c) * m, sigma, mode="nearest") / den, (h, w), Image.BILINEAR)
             for c in img]
    keep = np.clip(resize_f(m, (h, w), Image.BILINEAR), 0, 1)
    return img * keep + np.stack(smear) * (1 - keep)


def _resample(img: np.ndarray, label: np.ndarray | None, z: float, cy: float, cx: float,
              fov: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Scale the content of ``img`` by ``z`` about source point ``(cy, cx)`` -> frame centre; the label follows.

    Bilinear for the image, nearest for the label, both on the same sampling grid with reflected borders; the frame's
    dark border (outside ``fov``) stays where it was and the label is cleared there.
    """
    import torch
    import torch.nn.functional as F

    h, w = img.shape[-2:]
    src = img if fov is None else _fill_outside(img, fov)
    if z < 1:  # anti-alias before shrinking
        from scipy import ndimage

        src = ndimage.gaussian_filter(src, (0, 0.45 / z, 0.45 / z), mode="mirror")
    ys = (cy + ((np.arange(h) + 0.5) - h / 2) / z) * (2 / h) - 1
    xs = (cx + ((np.arange(w) + 0.5) - w / 2) / z) * (2 / w) - 1
    g = torch.from_numpy(np.stack(np.meshgrid(xs, ys, indexing="xy"), -1).astype(np.float32))[None]
    out = F.grid_sample(torch.from_numpy(np.ascontiguousarray(src, np.float32))[None], g, mode="bilinear",
                        padding_mode="reflection", align_corners=False)[0].numpy()
    if fov is not None:
        out = out * fov + img * (1 - fov)
    lab = None
    if label is not None:
        arr = np.asarray(label)
        lab3 = arr.reshape((-1,) + arr.shape[-2:]).astype(np.float32)
        lab3 = F.grid_sample(torch.from_numpy(lab3)[None], g, mode="nearest", padding_mode="reflection",
                             align_corners=False)[0].numpy()
        if fov is not None:
            lab3 = lab3 * (fov >= 0.5)
        lab = lab3.reshape(arr.shape).astype(arr.dtype)
    return out.astype(np.float32), lab


def near_view(img: np.ndarray, rng: np.random.Generator, label: np.ndarray | None = None,
              fov: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Zoom in on a finished frame: magnify by ``ZOOM["a near view"]`` (1.6-2x) about a point near the centre.

    Args:
        img: (3, H, W) float32 frame. rng: the effect's random stream.
        label: (H, W) or (C, H, W) mask of any dtype, resampled (nearest) exactly like the image, or None.
        fov: (H, W) field of view; the dark border outside it stays put (None: the frame has no border).

    Returns:
        ``(img, label, zoom)``: (3, H, W) float32, the label (same shape and dtype) or None, the zoom factor.
    """
    h, w = img.shape[-2:]
    z = float(rng.uniform(*ZOOM["a near view"]))
    off = rng.uniform(-1, 1, 2) * 0.5 * (1 - 1 / z) / 2  # centre of the magnified window, within the middle half
    out, lab = _resample(img, label, z, h * (0.5 + off[0]), w * (0.5 + off[1]), fov)
    return out, lab, z


def far_view(img: np.ndarray, rng: np.random.Generator, label: np.ndarray | None = None,
             fov: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Zoom out of a finished frame: shrink by ``ZOOM["a far view"]`` (0.5-0.62x); the surround is the reflected frame.

    The frame's dark border (outside ``fov``) is first filled with smeared tissue colours, so the shrunk frame does
    not show a frame inside the frame, and is restored afterwards. A lesion reflected into the surround is labelled
    too: the label is resampled (nearest) on the same grid as the image.

    Args and returns: as :func:`near_view`.
    """
    h, w = img.shape[-2:]
    z = float(rng.uniform(*ZOOM["a far view"]))
    off = rng.uniform(-1, 1, 2) * 0.1 * (1 - z)
    out, lab = _resample(img, label, z, h * (0.5 + off[0]), w * (0.5 + off[1]), fov)
    return out, lab, z


# ----------------------------------------------------------------------------- the dictionary
#: Pixel effects by confounder name: ``fn(img (3, H, W) float32, rng, layers=None) -> (3, H, W) float32``.
EFFECTS = {
    "mucus": mucus, "blood": blood,
    "narrow-band imaging": narrow_band_imaging, "white light imaging": white_light_imaging,
    "bright lighting": bright_lighting, "dark lighting": dark_lighting, "uneven lighting": uneven_lighting,
    "specular reflection": specular_reflection, "motion blur": motion_blur,
    "imaging artifacts": imaging_artifacts,
}
#: Geometric confounders on a finished frame: ``fn(img, rng, label=None, fov=None) -> (img, label, zoom)``.
GEOMETRY = {"a near view": near_view, "a far view": far_view}
#: The imaging chain: stage -> its confounders, in the order the generator and :func:`apply_confounders` apply them.
STAGES: dict[str, tuple[str, ...]] = {
    "geometry": ("a near view", "a far view"),
    "surface": ("mucus", "blood"),
    "colour": ("narrow-band imaging", "white light imaging"),
    "lighting": ("bright lighting", "dark lighting", "uneven lighting"),
    "optics": ("specular reflection", "motion blur"),
    "sensor": ("imaging artifacts",),
}
#: Pairs that cannot co-occur in one frame (render_case and apply_confounders raise ValueError if both are requested).
EXCLUSIVE = [("narrow-band imaging", "white light imaging"), ("a near view", "a far view"),
             ("bright lighting", "dark lighting")]


def check_names(names: Iterable[str]) -> list[str]:
    """The confounder names, validated, in chain order (:data:`STAGES`).

    Raises:
        ValueError: a bare string, an unknown name (the message lists the known ones), or an exclusive pair.
    """
    if isinstance(names, str):
        raise ValueError(f"confounders must be a list of names, got the string {names!r}; known: {CONFOUNDERS}")
    names = list(names)
    chain = [n for stage in STAGES.values() for n in stage]
    for c in names:
        if c not in chain:
            raise ValueError(f"unknown confounder {c!r}; known: {CONFOUNDERS}")
    for a, b in EXCLUSIVE:
        if a in names and b in names:
            raise ValueError(f"confounders {a!r} and {b!r} cannot both be present in one frame")
    return [c for c in chain if c in names]


def apply_confounders(img: np.ndarray, names: Iterable[str], seed: int, label: np.ndarray | None = None, *,
                      keep_border: bool = True, max_taps: int | None = 32) -> tuple[np.ndarray, np.ndarray | None]:
    """Apply confounders to any RGB frame, in imaging-chain order, with its layers estimated from the pixels.

    Each confounder draws from its own stream ``rng_for(seed, name)`` (as in the generator), so adding one leaves
    the others' draws unchanged. After a near / far view the later effects see the new zoom (wider / narrower
    mucus streaks, as in the generator). Every effect but ``imaging artifacts`` (the sensor's, on the whole frame) is
    kept inside the frame's field of view, as the generator's border is applied after them.

    Args:
        img: (3, H, W) float32 in [0, 1], any H, W > 16.
        names: confounder prompts (:data:`mcdrl.networks.prompts.CONFOUNDERS`), any order, no exclusive pair.
        seed: the frame's seed.
        label: (H, W) or (C, H, W) mask (any dtype), moved with the image by near / far views only; or None.
        keep_border: keep the dark border outside the estimated field of view unchanged.
        max_taps: see :func:`motion_blur` (32: exact up to ~250 px frames).

    Returns:
        ``(img, label)``: (3, H, W) float32 clipped to [0, 1], and the label (same shape and dtype) or None.

    Example::

        out, lab = apply_confounders(img, ["mucus", "a near view"], seed=7, label=mask)
    """
    names = check_names(names)
    out = np.ascontiguousarray(img, dtype=np.float32)
    fov = Layers(source=out).get("fov", out) if keep_border else None
    border = fov is not None and float(fov.min()) < 1.0
    zoom = 1.0
    for name in STAGES["geometry"]:
        if name in names:
            out, label, zoom = GEOMETRY[name](out, rng_for(seed, name), label, fov if border else None)
    layers = Layers(source=out, fov=fov, zoom=zoom)
    for name in names:
        if name in EFFECTS:
            kwargs = {"max_taps": max_taps} if name == "motion blur" else {}
            res = EFFECTS[name](out, rng_for(seed, name), layers, **kwargs)
            out = res if not border or name == "imaging artifacts" else res * fov + out * (1 - fov)
    return np.clip(out, 0, 1).astype(np.float32, copy=False), label
