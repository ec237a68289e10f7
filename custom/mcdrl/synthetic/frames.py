"""Procedural lesion-free endoscopy background: mucosa, vessels, folds, lumen.

Geometry is procedural in a zoom factor ``zoom`` (1 = normal working distance, ~1.6-2 = near
view, ~0.5-0.6 = far view): every structure size (texture cells, vessel widths, folds, lumen) is
scaled by it, so near/far views are rendered at full resolution and the lesion mask drawn in the
same coordinates is exactly the visible footprint.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from ._ops import blur_l, grid, random_walks, resize_f, rgb, smooth_noise, smoothstep
from .layers import Layers

#: WLI mucosa reflectance (pink-red) before per-case jitter.
MUCOSA_RGB = rgb(0.90, 0.48, 0.38)
#: Multiplicative darkening per unit vessel opacity: superficial (dark red) and deep (bluish) vessels.
SUP_VESSEL_K = rgb(0.42, 0.72, 0.66)
DEEP_VESSEL_K = rgb(0.30, 0.30, 0.12)


@dataclass
class Scene:
    """Working state of one frame while it is rendered (all float32, values ~[0,1], channel-first).

    Attributes:
        size: image side S in pixels.
        zoom: geometric zoom factor (see module doc).
        rgb: (3, S, S) current colour image = reflectance x shading.
        tissue: (3, S, S) vessel-free mucosa reflectance (used by lesions that hide vessels).
        shade: (S, S) illumination/shape shading (depth fall-off, folds, lumen darkness).
        v_sup, v_deep: (S, S) superficial / deep vessel opacity (NBI enhances them).
        heme: (S, S) extra haemoglobin density (lesions, blood) for the NBI colour mapping.
        lumen: (S, S) lumen darkness in [0,1] (1 = deep lumen).
        lesion_alpha: (S, S) soft lesion coverage, zeros if no lesion.
        lesion_box: (cy, cx, radius) of the lesion in pixels, or None.
    """

    size: int
    zoom: float
    rgb: np.ndarray
    tissue: np.ndarray
    shade: np.ndarray
    v_sup: np.ndarray
    v_deep: np.ndarray
    heme: np.ndarray
    lumen: np.ndarray
    lesion_alpha: np.ndarray
    lesion_box: tuple[float, float, float] | None = None
    extras: dict = field(default_factory=dict)

    def layers(self) -> Layers:
        """The scene's exact layers for the confounder effects (shared arrays: ``blood`` adds to :attr:`heme`).

        Pixel sizes are those of the 224 px reference at every size (``px=1``), the generator's look since v1.
        """
        return Layers(shade=self.shade, lumen=self.lumen, v_sup=self.v_sup, v_deep=self.v_deep, heme=self.heme,
                      zoom=self.zoom, px=1.0, lesion_box=self.lesion_box, estimate=False)


def _draw_vessels(rng: np.random.Generator, size: int, zoom: float, n: int, steps: tuple[int, int],
                  width: tuple[float, float], opacity: tuple[float, float], turn: float,
                  branch_p: float) -> Image.Image:
    """``n`` random curvy vessel polylines (some with a thinner branch) drawn into an "L" image."""
    im = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(im)
    step = 3.0 * zoom
    starts = rng.uniform(-0.1, 1.1, (n, 2)) * size
    lengths = rng.integers(steps[0], steps[1], n)
    paths = random_walks(rng, starts, int(steps[1]), step, turn)
    widths = np.maximum(1, np.round(rng.uniform(*width, n) * zoom)).astype(int)
    fills = (255 * rng.uniform(*opacity, n)).astype(int)
    has_branch = rng.random(n) < branch_p
    at = (rng.random(n) * lengths).astype(int)
    bpaths = random_walks(rng, paths[np.arange(n), at], int(steps[1]) // 2, step, turn * 1.3)
    blen = rng.integers(steps[0] // 2, steps[1] // 2 + 1, n)
    for i in range(n):
        w = int(widths[i])
        draw.line(paths[i, : lengths[i]].ravel().tolist(), fill=int(fills[i]), width=w,
                  joint="curve" if w >= 3 else None)
        if has_branch[i]:
            draw.line(bpaths[i, : blen[i]].ravel().tolist(), fill=int(fills[i] * 0.8), width=max(1, w - 1))
    return im


def render_background(rng: np.random.Generator, size: int, zoom: float) -> Scene:
    """Render a lesion-free mucosa scene (before any confounder / device effect).

    Args:
        rng: the case's "scene" random stream (draw order does not depend on ``zoom``).
        size: output side S in pixels.
        zoom: geometric zoom (see module doc).

    Returns:
        :class:`Scene` with (3, S, S) ``rgb`` and its layers.
    """
    # Smooth shading fields are computed at half resolution (they have no fine detail) and
    # up-sampled bicubically; coordinates below are in full-resolution pixels.
    h = max(16, size // 2)
    f = size / h
    yy, xx = grid(h)
    yy, xx = yy * f, xx * f
    c = size / 2.0
    # --- lumen: a dark blurred elliptical hole; bigger and more central in far views.
    lr = float(size * rng.uniform(0.055, 0.10) * zoom ** -0.85)
    ang = rng.uniform(0, 2 * np.pi)
    off = float(size * (0.04 + 0.36 * np.sqrt(rng.random())) * zoom ** 0.8)
    ly, lx = float(c + off * np.sin(ang)), float(c + off * np.cos(ang))
    asp, rot = rng.uniform(0.65, 1.0), rng.uniform(0, np.pi)
    dy, dx = yy - ly, xx - lx
    cr, sr = float(np.cos(rot)), float(np.sin(rot))
    u = dx * cr + dy * sr
    v = (-dx * sr + dy * cr) / asp
    dist = np.sqrt(u * u + v * v)
    warp = smooth_noise(rng, h, 55 * zoom / f, octaves=2)
    dn = dist / lr * (1.0 + 0.16 * warp)
    lumen = 1.0 - smoothstep(0.5, 1.9, dn)
    depth = 1.0 - 0.78 * np.exp(-dn / 2.4)
    # --- haustral folds: shaded arcs concentric about the lumen, log-spaced (perspective).
    t = dist / zoom
    ph = 2 * np.pi * (2.2 * np.log1p(t / (0.06 * size)) + 0.12 * warp) + rng.uniform(0, 2 * np.pi)
    s = np.sin(ph)
    fold_mod = smoothstep(-0.6, 0.4, smooth_noise(rng, h, 70 * zoom / f))
    fold = 1.0 + fold_mod * (0.12 * np.maximum(np.cos(ph), 0) ** 2 - 0.26 * np.maximum(-s, 0) ** 3)
    # --- endoscope light: brighter near the optical centre.
    rho2 = ((yy - c) ** 2 + (xx - c) ** 2) / (0.5 * size) ** 2
    light = 1.05 - 0.28 * rho2
    shade = resize_f(depth * fold * light * (1.0 - 0.95 * lumen), (size, size))
    lumen = resize_f(lumen, (size, size))
    depth = resize_f(depth, (size, size))
    # --- mucosa reflectance: smooth multi-scale texture, redness patches, fine granularity.
    red = rng.uniform(-0.05, 0.06)
    base = MUCOSA_RGB + rgb(red * 0.4, -red, -red * 0.9)
    n1 = resize_f(smooth_noise(rng, h, 30 * zoom / f, octaves=3), (size, size))
    n2 = resize_f(smooth_noise(rng, h, 48 * zoom / f, octaves=2), (size, size))
    n3 = smooth_noise(rng, size, 3.2 * zoom)
    bright = 1.0 + 0.06 * n1 + 0.03 * n3
    tissue = base * bright
    tissue[1:] *= 1.0 - 0.07 * n2
    # --- vessels.
    n_sup = int(rng.integers(12, 22))
    v_sup = blur_l(_draw_vessels(rng, size, zoom, n_sup, (15, 50), (0.8, 1.7), (0.25, 0.75), 0.22, 0.8),
                   0.45 * zoom)
    v_deep = blur_l(_draw_vessels(rng, size, zoom, int(rng.integers(2, 6)), (40, 90), (2.5, 4.5), (0.15, 0.32),
                                  0.15, 0.3), 2.2 * zoom)
    vis = smoothstep(0.0, 0.6, depth - 0.2)  # vessels fade into the dark depth
    v_sup, v_deep = v_sup * vis, v_deep * vis
    refl = tissue * (1.0 - v_sup * SUP_VESSEL_K) * (1.0 - v_deep * DEEP_VESSEL_K)
    z = np.zeros((size, size), np.float32)
    return Scene(size=size, zoom=zoom, rgb=(refl * shade).astype(np.float32), tissue=tissue.astype(np.float32),
                 shade=shade, v_sup=v_sup, v_deep=v_deep, heme=z.copy(), lumen=lumen.astype(np.float32),
                 lesion_alpha=z.copy())
