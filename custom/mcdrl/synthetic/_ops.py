"""Small numpy/PIL image helpers shared by the synthetic renderer (no scipy needed).

All float images are ``float32`` in ``[0, 1]``; maps are (H, W). Colour images are kept
*channel-first* (3, H, W) while rendering: numpy broadcasting of an (H, W, 3) array against a
3-vector or an (H, W, 1) map is ~10x slower than the channel-first equivalent. Only the final
uint8 frame is (H, W, 3).
"""

from __future__ import annotations

import zlib
from functools import lru_cache

import numpy as np
from PIL import Image, ImageFilter


def rng_for(seed: int, *keys: int | str) -> np.random.Generator:
    """Independent, deterministic random stream for ``seed`` and a tuple of stream keys.

    Strings are hashed with CRC32 (stable across processes, unlike :func:`hash`), so adding or
    removing one stream (e.g. one more confounder) never changes the draws of another.
    """
    ints = [int(seed) & 0xFFFFFFFF] + [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    return np.random.default_rng(np.random.SeedSequence(ints))


def grid(size: int, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(yy, xx)``, each (size, width) float32 (width defaults to size), read-only."""
    return _grid(size, size if width is None else width)


@lru_cache(maxsize=8)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float32) + 0.5, np.arange(w, dtype=np.float32) + 0.5, indexing="ij")
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def resize_f(arr: np.ndarray, size: tuple[int, int], resample=Image.BICUBIC) -> np.ndarray:
    """Resize a 2-D float map to ``size=(H, W)`` with PIL (mode "F")."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32), "F").resize(
        (size[1], size[0]), resample), dtype=np.float32)


def smooth_noise(rng: np.random.Generator, size: int, cell: float, octaves: int = 1,
                 gain: float = 0.5) -> np.ndarray:
    """Band-limited noise (size, size) float32 with roughly unit std for one octave.

    ``cell`` is the feature size in pixels of the coarsest octave; each further octave halves it
    and multiplies the amplitude by ``gain``. Made by bicubic up-sampling of a random grid.
    """
    out = np.zeros((size, size), np.float32)
    amp, total = 1.0, 0.0
    for _ in range(octaves):
        n = max(2, int(np.ceil(size / max(cell, 1.0))) + 1)
        g = rng.standard_normal((n, n)).astype(np.float32)
        out += amp * resize_f(g, (size, size))
        total += amp * amp
        amp *= gain
        cell /= 2.0
    return out / np.float32(np.sqrt(total))


def rgb(r: float, g: float, b: float) -> np.ndarray:
    """A colour as a (3, 1, 1) float32 array, broadcastable against (3, H, W) images."""
    return np.array([r, g, b], np.float32).reshape(3, 1, 1)


_BANK_SIDE = 512


@lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    bank = np.random.default_rng(20240531).standard_normal((3, _BANK_SIDE, _BANK_SIDE), dtype=np.float32)
    bank.setflags(write=False)
    return bank


def gauss_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Fast N(0, sigma^2) float32 noise of ``shape`` ((H, W) or (3, H, W)).

    Drawing 150k normals costs ~1.5 ms, so this crops a precomputed (3, 512, 512) bank at a random
    offset with a random channel permutation and sign (deterministic given ``rng``).
    """
    h, w = shape[-2:]
    if h > _BANK_SIDE or w > _BANK_SIDE:
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)
    oy, ox = (int(v) for v in rng.integers(0, [_BANK_SIDE - h + 1, _BANK_SIDE - w + 1]))
    perm = rng.permutation(3)
    sgn = np.float32(sigma if rng.random() < 0.5 else -sigma)
    bank = _noise_bank()
    if len(shape) == 2:
        return bank[perm[0], oy: oy + h, ox: ox + w] * sgn
    return bank[perm[: shape[0]], oy: oy + h, ox: ox + w] * sgn


def to_u8(img: np.ndarray) -> np.ndarray:
    """float [0,1] -> uint8 with rounding and clipping."""
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def blur_l(im: Image.Image, radius: float) -> np.ndarray:
    """Approximately Gaussian-blur an 8-bit "L" PIL image; return a float32 [0,1] map (H, W).

    Cheap approximations (PIL's GaussianBlur costs ~0.7 ms at 224 px): a single box pass for
    radius < 1.5, box down-sampling + bilinear up-sampling for larger radii.
    """
    if 0 < radius < 1.5:
        im = im.filter(ImageFilter.BoxBlur(radius))
    elif radius >= 1.5:
        f = max(2, int(round(radius * 1.4)))
        w, h = im.size
        small = im.resize((max(1, w // f), max(1, h // f)), Image.BOX).filter(ImageFilter.BoxBlur(0.5))
        im = small.resize((w, h), Image.BILINEAR)
    return np.asarray(im, dtype=np.float32) * np.float32(1 / 255)


def blur_map(m: np.ndarray, radius: float) -> np.ndarray:
    """Gaussian blur of a [0,1] map (via PIL "L", 8-bit precision is plenty for alpha maps)."""
    if radius <= 0:
        return m.astype(np.float32)
    return blur_l(Image.fromarray(to_u8(m), "L"), radius)


def blur_rgb(img: np.ndarray, radius: float) -> np.ndarray:
    """Blur of a float (3, H, W) image (8-bit round trip through PIL; box blur below radius 1.5)."""
    if radius <= 0:
        return img
    im = Image.fromarray(np.ascontiguousarray(to_u8(img).transpose(1, 2, 0)), "RGB")
    flt = ImageFilter.BoxBlur(radius) if radius < 1.5 else ImageFilter.GaussianBlur(radius)
    out = np.asarray(im.filter(flt), dtype=np.float32).transpose(2, 0, 1)
    return np.ascontiguousarray(out) * np.float32(1 / 255)


def smoothstep(e0: float | np.ndarray, e1: float | np.ndarray, x: np.ndarray) -> np.ndarray:
    """Hermite smooth step from 0 (x <= e0) to 1 (x >= e1)."""
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def random_walks(rng: np.random.Generator, starts: np.ndarray, n: int, step: float, turn: float,
                 angles: np.ndarray | None = None) -> np.ndarray:
    """``k`` smooth curvy polylines at once (vessels, streaks): returns (k, n, 2) float (x, y).

    Args:
        starts: (k, 2) start points (x, y).
        n: points per polyline (callers slice shorter ones).
        step: step length in pixels.
        turn: std of the per-step turning angle (radians), low-passed over 5 steps.
        angles: (k,) initial directions; uniform random if None.
    """
    k = len(starts)
    a0 = rng.uniform(0, 2 * np.pi, k) if angles is None else np.asarray(angles, float)
    dturn = rng.normal(0.0, turn, (k, n + 4))
    c = np.cumsum(dturn, axis=1)
    dturn = (c[:, 4:] - np.concatenate([np.zeros((k, 1)), c[:, :-5]], axis=1)) / 5.0  # moving average
    ang = a0[:, None] + np.cumsum(dturn, axis=1)
    xs = starts[:, :1] + np.cumsum(step * np.cos(ang), axis=1)
    ys = starts[:, 1:2] + np.cumsum(step * np.sin(ang), axis=1)
    return np.stack([xs, ys], axis=-1)


def random_walk(rng: np.random.Generator, start: tuple[float, float], n: int, step: float,
                turn: float, angle: float | None = None) -> list[float]:
    """One smooth curvy polyline of ``n`` points as a flat [x0, y0, x1, y1, ...] list (for PIL)."""
    a = None if angle is None else np.array([angle])
    return random_walks(rng, np.array([start], float), n, step, turn, a)[0].ravel().tolist()


def window(cy: float, cx: float, half: float, size: int, width: int | None = None) -> tuple[slice, slice]:
    """Square window of half-width ``half`` around ``(cy, cx)``, clipped to a (size, width) image (width = size)."""
    width = size if width is None else width
    y0, y1 = max(0, int(cy - half)), min(size, int(np.ceil(cy + half)) + 1)
    x0, x1 = max(0, int(cx - half)), min(width, int(np.ceil(cx + half)) + 1)
    return slice(y0, max(y0, y1)), slice(x0, max(x0, x1))


def luminance(img: np.ndarray) -> np.ndarray:
    """Rec. 601 luma (H, W) of a float (3, H, W) image."""
    return 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]
