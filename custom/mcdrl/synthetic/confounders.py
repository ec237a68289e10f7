"""Image effects of the 12 confounders of :data:`mcdrl.networks.prompts.CONFOUNDERS`.

Each effect is applied at its physical stage of the imaging chain (see :func:`render.render_case`):

* geometry  -- ``a near view`` / ``a far view``: zoom factor of the procedural scene (``ZOOM``),
* surface   -- ``mucus``, ``blood``: material on the tissue (lit by the scene shading),
* colour    -- ``narrow-band imaging`` (NBI colour mapping, vessels enhanced) and
  ``white light imaging`` (explicit HD white-light processor look: structure enhancement +
  saturation; the clean default is plain white light without that enhancement),
* lighting  -- ``bright lighting`` / ``dark lighting`` / ``uneven lighting``,
* optics    -- ``specular reflection`` (saturated white blobs), ``motion blur`` (directional kernel),
* sensor    -- ``imaging artifacts`` (interlace combing + scan lines + noise + JPEG blocking), on
  the final uint8 frame.

None of them changes the lesion mask except near/far (which rescale the whole scene, mask included).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from ._ops import blur_l, blur_rgb, gauss_noise, grid, luminance, random_walk, rgb, smooth_noise, smoothstep, window
from .frames import Scene

#: Zoom ranges of the distance confounders and of the default working distance.
ZOOM = {"a near view": (1.6, 2.0), "a far view": (0.5, 0.62), None: (0.9, 1.12)}


def _soft_clip(y: np.ndarray, knee: float = 0.8) -> np.ndarray:
    return np.where(y > knee, knee + (1 - knee) * (1 - np.exp(-(y - knee) / (1 - knee))), y)


# ----------------------------------------------------------------------------- surface
def mucus(scene: Scene, rng: np.random.Generator) -> None:
    """Translucent whitish mucus streaks and bubble clusters (in place on ``scene.rgb``)."""
    size, z = scene.size, scene.zoom
    streak_im = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(streak_im)
    for _ in range(int(rng.integers(2, 5))):
        start = tuple(float(v) for v in rng.uniform(0.15, 0.85, 2) * size)
        pts = random_walk(rng, start, int(rng.integers(15, 40)), 3.0 * z, 0.12)
        wd = max(3, int(rng.uniform(6, 14) * z))
        draw.line(pts, fill=int(255 * rng.uniform(0.35, 0.6)), width=wd, joint="curve")
        draw.line(pts, fill=int(255 * rng.uniform(0.6, 0.8)), width=max(1, wd // 3), joint="curve")  # thicker core
    streak = blur_l(streak_im, 2.6 * z)
    ring_im, fill_im, spec_im = (Image.new("L", (size, size), 0) for _ in range(3))
    dr, df, ds = ImageDraw.Draw(ring_im), ImageDraw.Draw(fill_im), ImageDraw.Draw(spec_im)
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.uniform(0.2, 0.8, 2) * size
        for _ in range(int(rng.integers(6, 16))):
            r = float(rng.uniform(2, 8) * z)
            y, x = cy + rng.normal(0, 12 * z), cx + rng.normal(0, 12 * z)
            box = (x - r, y - r, x + r, y + r)
            df.ellipse(box, fill=70)
            dr.ellipse(box, outline=230, width=max(1, int(r / 4)))
            ds.ellipse((x - 0.55 * r, y - 0.55 * r, x - 0.25 * r, y - 0.25 * r), fill=255)
    ring, fill, spec = blur_l(ring_im, 0.5), blur_l(fill_im, 0), blur_l(spec_im, 0.6)
    col = rgb(0.96, 0.95, 0.86) * (0.6 + 0.5 * scene.shade)
    a = np.clip(0.75 * streak + fill, 0, 0.75)
    out = scene.rgb * (1 - a) + col * a
    b = np.clip(0.8 * ring + spec, 0, 1)
    scene.rgb = out * (1 - b) + b * (0.6 + 0.5 * scene.shade)


def blood(scene: Scene, rng: np.random.Generator) -> None:
    """Dark-red pooled blood patches (mostly low in the frame) and a few streaks (in place)."""
    size, z = scene.size, scene.zoom
    yy, xx = grid(size)
    box = scene.lesion_box
    for _ in range(int(rng.integers(1, 4))):
        for _try in range(6):  # keep the pool off the lesion core when possible
            cy, cx = size * rng.uniform(0.4, 0.88), size * rng.uniform(0.15, 0.85)
            if box is None or np.hypot(cy - box[0], cx - box[1]) > 0.8 * box[2] + 10:
                break
        r = float(size * rng.uniform(0.07, 0.15) * z ** 0.5)
        w = window(cy, cx, 1.6 * r, size)
        dn = np.hypot((yy[w] - cy) / r, (xx[w] - cx) / (r * rng.uniform(1.0, 1.8)))
        n = smooth_noise(rng, max(dn.shape + (2,)), r / 1.1, 2, 0.3)[: dn.shape[0], : dn.shape[1]]
        field = 1 - dn ** 2 + 0.28 * n
        a = smoothstep(-0.05, 0.3, field) * 0.95
        depth = smoothstep(0.05, 0.7, field)
        col = rgb(0.60, 0.10, 0.09) * (1 - depth) + rgb(0.25, 0.02, 0.025) * depth
        col = col * (0.55 + 0.5 * scene.shade[w]) + (0.5 * smoothstep(1.3, 1.8, n))  # glossy sheen
        w3 = (slice(None),) + w
        scene.rgb[w3] = scene.rgb[w3] * (1 - a) + col * a
        scene.heme[w] = np.maximum(scene.heme[w], a)
    im = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(1, 4))):
        start = (float(rng.uniform(0.15, 0.85) * size), float(rng.uniform(0.1, 0.6) * size))
        pts = random_walk(rng, start, int(rng.integers(10, 30)), 3.0 * z, 0.1, angle=np.pi / 2 + rng.normal(0, 0.4))
        draw.line(pts, fill=int(255 * rng.uniform(0.6, 0.9)), width=max(2, int(rng.uniform(2, 5) * z)), joint="curve")
    a = blur_l(im, 0.8)
    col = rgb(0.55, 0.05, 0.07) * (0.55 + 0.5 * scene.shade)
    scene.rgb = scene.rgb * (1 - a) + col * a
    scene.heme = np.maximum(scene.heme, a)


# ----------------------------------------------------------------------------- colour mode
def narrow_band(img: np.ndarray, scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """NBI: 540 nm (~G) -> display R, 415 nm (~B) -> display G and B; haemoglobin turns brown.

    Mucosa becomes teal/green-grey, superficial capillaries dark brown, deep vessels cyan,
    haemoglobin-rich lesions brownish.
    """
    r, g, b = img[0], img[1], img[2]
    k = rng.uniform(0.95, 1.08)
    out = np.stack([1.02 * g + 0.10 * r, 1.32 * b + 0.26 * g, 1.12 * b + 0.20 * g]) * np.float32(k)
    out *= 1 - scene.v_sup * rgb(0.35, 0.62, 0.72)
    out *= 1 - scene.v_deep * rgb(0.60, 0.22, 0.10)
    out *= 1 - np.clip(scene.heme, 0, 1) * rgb(0.20, 0.48, 0.58)
    return out


def white_light(img: np.ndarray, scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Explicit HD white-light processor look: structure enhancement, +saturation, warm balance."""
    det = img - blur_rgb(img, 1.4)
    out = img + np.float32(rng.uniform(1.2, 1.6)) * det
    lum = luminance(out)
    out = lum + (out - lum) * np.float32(rng.uniform(1.2, 1.35))
    return out * rgb(1.04, 1.0, 0.94)


# ----------------------------------------------------------------------------- lighting
def bright_lighting(img: np.ndarray, scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Global over-exposure: gain 1.45-1.75, soft shoulder, bleached highlights."""
    y = _soft_clip(img * np.float32(rng.uniform(1.45, 1.75)))
    over = smoothstep(0.82, 0.98, luminance(y)) * 0.5
    return y * (1 - over) + over


def dark_lighting(img: np.ndarray, scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Under-exposure: gain 0.3-0.45, crushed shadows, amplified sensor noise."""
    y = np.power(np.clip(img * np.float32(rng.uniform(0.3, 0.45)), 0, None), np.float32(1.12))
    return y + gauss_noise(rng, img.shape, 0.012)


def uneven_lighting(img: np.ndarray, scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Strong illumination gradient across the frame (one side ~3x brighter) + off-centre vignette."""
    size = img.shape[-1]
    yy, xx = grid(size)
    phi = rng.uniform(0, 2 * np.pi)
    p = ((xx - size / 2) * np.float32(np.cos(phi)) + (yy - size / 2) * np.float32(np.sin(phi))) / size
    a = rng.uniform(1.1, 1.5)
    gain = np.exp(np.float32(2 * a) * p)
    hy, hx = rng.uniform(0.2, 0.8, 2) * size
    gain *= 1 - 0.35 * smoothstep(0.15, 0.6, np.hypot(yy - hy, xx - hx) / size)
    return _soft_clip(img * gain)


# ----------------------------------------------------------------------------- optics
def specular_reflection(img: np.ndarray, scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Several small saturated white highlight blobs (wet mucosa), with a faint halo."""
    size, z = scene.size, scene.zoom
    im = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(im)
    n, placed = int(rng.integers(8, 19)), 0
    t = np.linspace(0, 2 * np.pi, 14, endpoint=False)
    for _ in range(120):
        if placed >= n:
            break
        y, x = rng.uniform(0.08, 0.92, 2) * size
        if np.hypot(y - size / 2, x - size / 2) > 0.44 * size or scene.lumen[int(y), int(x)] > 0.3:
            continue
        if rng.random() > min(1.0, scene.shade[int(y), int(x)]) ** 4:  # favour lit ridges
            continue
        a = rng.uniform(1.5, 5.0) * z ** 0.5
        b, th = a * rng.uniform(0.3, 1.0), rng.uniform(0, np.pi)
        px = x + a * np.cos(t) * np.cos(th) - b * np.sin(t) * np.sin(th)
        py = y + a * np.cos(t) * np.sin(th) + b * np.sin(t) * np.cos(th)
        draw.polygon(list(zip(px.tolist(), py.tolist())), fill=255)
        placed += 1
    halo = blur_l(im, 2.5 * z ** 0.5)
    a = np.clip(blur_l(im, 0.6) * 1.3 + 0.45 * halo, 0, 1)
    return img * (1 - a) + np.float32(1.02) * a


def motion_blur(img: np.ndarray, scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """Directional box kernel of length 16-28 px (at 224 px) at a random angle (camera shake).

    Generator v2 used 10-18 px: the demo CLIP never learned it (presence AUC 0.55, linear probe 0.51), and with its
    presence term weighted 8x a fine-tune reached 0.70 after 200 steps, against 0.88 at 16-28 px.
    """
    _, h, w = img.shape
    length = rng.uniform(16, 28) * w / 224
    th = rng.uniform(0, np.pi)
    n = int(np.ceil(length)) + 1
    ts = np.linspace(-length / 2, length / 2, n)
    pad = int(np.ceil(length / 2)) + 1
    p = np.pad(img, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    acc = np.zeros_like(img)
    for t in ts:
        dy, dx = int(round(t * np.sin(th))), int(round(t * np.cos(th)))
        acc += p[:, pad + dy: pad + dy + h, pad + dx: pad + dx + w]
    return acc / np.float32(n)


# ----------------------------------------------------------------------------- sensor (uint8)
def imaging_artifacts(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Analogue-capture / transmission artefacts on a uint8 (H, W, 3) frame.

    Interlace combing in 1-3 horizontal bands (odd lines shifted 2-4 px), scan lines (odd lines
    darker), Gaussian + chroma noise, then heavy JPEG compression (quality 9-18, 8x8 blocking).
    """
    f = img.astype(np.float32)
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


#: Float-stage effects by confounder name, in the order they are applied.
COLOUR = {"narrow-band imaging": narrow_band, "white light imaging": white_light}
LIGHTING = {"bright lighting": bright_lighting, "dark lighting": dark_lighting, "uneven lighting": uneven_lighting}
OPTICS = {"specular reflection": specular_reflection, "motion blur": motion_blur}
SURFACE = {"mucus": mucus, "blood": blood}
#: Pairs that cannot co-occur in one frame (render_case raises ValueError if both are requested).
EXCLUSIVE = [("narrow-band imaging", "white light imaging"), ("a near view", "a far view"),
             ("bright lighting", "dark lighting")]
