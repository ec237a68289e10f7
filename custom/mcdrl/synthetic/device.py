"""Endoscope/video-processor traits of a synthetic site: colour cast, field of view, border, overlay text.

Device traits are *not* confounders of the prompt vocabulary (they never appear in captions);
they are the site "fingerprint" a domain-generalised model must ignore.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ._ops import gauss_noise, grid, smoothstep

FOV_SHAPES = ("circle", "octagon", "cropped_circle", "rect")
BORDERS = ("black", "gray", "bezel")


@dataclass(frozen=True)
class DeviceTraits:
    """Fingerprint of one endoscope + video processor.

    Attributes:
        name: free-text label of the device model (synthetic).
        colour_cast: per-channel RGB gain applied after lighting (white-balance error), e.g.
            ``(1.15, 0.9, 1.1)`` is a strong magenta cast. ``(1, 1, 1)`` is neutral.
        fov_shape: field-of-view mask: ``"circle"``, ``"octagon"`` (rounded octagon),
            ``"cropped_circle"`` (circle wider than the frame, clipped top/bottom) or ``"rect"``
            (full frame with rounded corners).
        fov_radius: half-extent of the FOV as a fraction of the image size.
        border: what is outside the FOV: ``"black"``, ``"gray"`` (dark noisy grey) or ``"bezel"``
            (black with a thin grey ring around the FOV).
        overlay_text: burn fake, non-identifying text strips (timestamp, processor settings).
        text_colour: RGB of the burned-in text.
        noise_sigma: std of the sensor noise, in [0,1] intensity units.
        sharpness: processor edge enhancement (>0) or soft optics (<0), unsharp-mask amount.
        gamma: display gamma applied last (1 = none).
    """

    name: str = "generic scope"
    colour_cast: tuple[float, float, float] = (1.0, 1.0, 1.0)
    fov_shape: str = "circle"
    fov_radius: float = 0.47
    border: str = "black"
    overlay_text: bool = False
    text_colour: tuple[int, int, int] = (235, 235, 235)
    noise_sigma: float = 0.008
    sharpness: float = 0.0
    gamma: float = 1.0

    def __post_init__(self) -> None:
        if self.fov_shape not in FOV_SHAPES:
            raise ValueError(f"unknown fov_shape {self.fov_shape!r}; known: {list(FOV_SHAPES)}")
        if self.border not in BORDERS:
            raise ValueError(f"unknown border {self.border!r}; known: {list(BORDERS)}")

    def jittered(self, rng: np.random.Generator) -> "DeviceTraits":
        """Per-case small variation (same scope model, slightly different white balance/FOV)."""
        cast = tuple(float(c * rng.uniform(0.975, 1.025)) for c in self.colour_cast)
        # FOV radius jitter on a 0.005 grid, so the cached FOV masks are reused across cases.
        return replace(self, colour_cast=cast, fov_radius=round(self.fov_radius + 0.005 * int(rng.integers(-2, 3)), 3))


def random_device(rng: np.random.Generator) -> DeviceTraits:
    """A neutral-ish random device (used by the generic pre-training mixture)."""
    cast = tuple(float(v) for v in rng.uniform(0.94, 1.06, 3))
    return DeviceTraits(
        name="generic scope",
        colour_cast=cast,
        fov_shape=str(rng.choice(["circle", "circle", "octagon", "cropped_circle", "rect"])),
        fov_radius=round(0.44 + 0.005 * int(rng.integers(0, 9)), 3),
        border=str(rng.choice(["black", "black", "gray", "bezel"])),
        overlay_text=bool(rng.random() < 0.15),
        noise_sigma=float(rng.uniform(0.004, 0.012)),
        sharpness=float(rng.uniform(-0.3, 0.4)),
    )


def _fov_sdf(shape: str, radius: float, size: int) -> np.ndarray:
    """Signed distance-like field in pixels, negative inside the FOV."""
    yy, xx = grid(size)
    c = size / 2.0
    x, y = np.abs(xx - c), np.abs(yy - c)
    r = radius * size
    if shape == "circle":
        return np.sqrt(x * x + y * y) - r
    if shape == "cropped_circle":
        circ = np.sqrt(x * x + y * y) - r * 1.18
        return np.maximum(circ, y - (size / 2.0 - 1.5))
    if shape == "octagon":
        k = 0.03 * size  # smooth max (rounded corners) of the square and diamond edges
        d = np.stack([x - r, y - r, (x + y) / np.sqrt(2) - r])
        return k * np.log(np.exp(d / k).sum(0))
    # rect: full frame minus a small margin, corners rounded with radius rc
    rc, m = 0.16 * size, 0.02 * size
    hx = hy = size / 2.0 - m - rc
    qx, qy = np.maximum(x - hx, 0), np.maximum(y - hy, 0)
    return np.sqrt(qx * qx + qy * qy) + np.minimum(np.maximum(x - hx, y - hy), 0) - rc


@lru_cache(maxsize=32)
def fov_mask(shape: str, radius: float, size: int) -> np.ndarray:
    """Anti-aliased FOV mask (size, size) float32 in [0,1] (1 inside), cached, read-only."""
    m = smoothstep(0.7, -0.7, _fov_sdf(shape, round(radius, 3), size)).astype(np.float32)
    m.setflags(write=False)
    return m


@lru_cache(maxsize=32)
def fov_points(shape: str, radius: float, size: int, shrink: float = 1.0) -> np.ndarray:
    """(N, 2) float32 (y, x) pixel centres uniformly covering the FOV scaled about the centre by ``shrink``.

    Lesion centres are drawn uniformly from these (plus sub-pixel jitter): anywhere inside the whole
    FOV, so a lesion near the edge is cut by the FOV border as in real frames, and a centre prior
    localises lesions only ~1.25x better than chance (it scored 1.87x with the FOV shrunk to 0.88).
    """
    yy, xx = grid(size)
    c = size / 2.0
    # Shrink about the centre: a point p is inside the shrunk FOV iff c + (p-c)/shrink is inside.
    sdf = _fov_sdf(shape, round(radius, 3), size)
    inside = sdf < 0
    ys = (c + (yy - c) / shrink).astype(int)
    xs = (c + (xx - c) / shrink).astype(int)
    ok = (ys >= 0) & (ys < size) & (xs >= 0) & (xs < size)
    sel = np.zeros_like(inside)
    sel[ok] = inside[ys[ok], xs[ok]]
    pts = np.stack([yy[sel], xx[sel]], 1).astype(np.float32)
    pts.setflags(write=False)
    return pts


def apply_border(img: np.ndarray, dev: DeviceTraits, rng: np.random.Generator) -> np.ndarray:
    """Black out (or grey out) everything outside the FOV; float (3, H, W) in/out."""
    size = img.shape[-1]
    m = fov_mask(dev.fov_shape, dev.fov_radius, size)
    if dev.border == "gray":
        bg = np.float32(0.09) + gauss_noise(rng, (size, size), 0.012)
        out = img * m + bg * (1 - m)
    else:
        out = img * m
    if dev.border == "bezel":
        grown = fov_mask(dev.fov_shape, dev.fov_radius + 2.5 / size, size)
        out[:, (grown > 0.5) & (m < 0.5)] = 0.33
    return out


@lru_cache(maxsize=4)
def _font(px: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=px)
    except TypeError:  # very old Pillow: bitmap font only
        return ImageFont.load_default()


def overlay_text(img_u8: np.ndarray, dev: DeviceTraits, rng: np.random.Generator) -> np.ndarray:
    """Burn fake processor text strips into a uint8 (H, W, 3) image (no real patient data, ever)."""
    size = img_u8.shape[0]
    im = Image.fromarray(img_u8, "RGB")
    draw = ImageDraw.Draw(im)
    font = _font(max(7, size // 24))
    y, mo, d = int(rng.integers(2016, 2025)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    hh, mm, ss = (int(v) for v in rng.integers(0, [24, 60, 60]))
    lines_tl = [f"{y:04d}/{mo:02d}/{d:02d}", f"{hh:02d}:{mm:02d}:{ss:02d}"]
    lines_bl = [f"SYN-{int(rng.integers(100, 999))}", f"Eh:A{int(rng.integers(1, 8))} Cm:{int(rng.integers(1, 4))}"]
    lines_tr = ["SYNTHETIC", f"Zm x{rng.uniform(1.0, 1.5):.1f}"]
    step = max(8, size // 20)
    col = tuple(int(c) for c in dev.text_colour)
    for i, t in enumerate(lines_tl):
        draw.text((3, 2 + i * step), t, fill=col, font=font)
    for i, t in enumerate(lines_bl):
        draw.text((3, size - 2 - (2 - i) * step), t, fill=col, font=font)
    for i, t in enumerate(lines_tr):
        w = draw.textlength(t, font=font)
        draw.text((size - 3 - w, 2 + i * step), t, fill=col, font=font)
    return np.asarray(im, dtype=np.uint8).copy()
