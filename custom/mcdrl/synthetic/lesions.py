"""Lesion classes of the synthetic world: each has its own shape + texture statistics.

=============  ====================================================================================
class          appearance (radius range is a fraction of the image side at zoom 1)
=============  ====================================================================================
polyp          round/oval raised dome (r 0.07-0.15), smooth, slightly lighter, specular rim
tumor          large lobulated irregular mass (r 0.12-0.22), darker red, heterogeneous (exudate,
               haemorrhagic spots, sometimes a central ulcer)
inflammation   diffuse patchy erythema (r 0.11-0.20), soft edges, vessel pattern lost, granular
nodule         small compact round (r 0.032-0.06), pale/whitish, slightly raised
cyst           smooth round/oval (r 0.05-0.10), translucent yellow centre -> bluish rim, sharp edge,
               glossy highlight
=============  ====================================================================================

The mask of a lesion is ``alpha >= 0.5`` of its rendered coverage: exactly the drawn footprint.
"""

from __future__ import annotations

import numpy as np

from mcdrl.networks.prompts import LESION_CLASSES

from ._ops import grid, rgb, smooth_noise, smoothstep, window
from .frames import Scene

#: Radius range (fraction of image side, at zoom 1) of each lesion class.
LESION_RADIUS: dict[str, tuple[float, float]] = {
    "polyp": (0.07, 0.15), "tumor": (0.12, 0.22), "inflammation": (0.11, 0.20),
    "nodule": (0.032, 0.06), "cyst": (0.05, 0.10),
}
assert set(LESION_RADIUS) == set(LESION_CLASSES)
MAX_RADIUS = 0.32  # cap after near-view zoom, fraction of image side


def place_lesion(rng: np.random.Generator, fov_pts: np.ndarray) -> tuple[float, float]:
    """Lesion centre ``(cy, cx)`` drawn uniformly over the whole FOV: no centre prior."""
    y, x = fov_pts[int(rng.integers(0, len(fov_pts)))]
    return float(y + rng.uniform(-0.5, 0.5)), float(x + rng.uniform(-0.5, 0.5))


def _local_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float, octaves: int = 1,
                 gain: float = 0.5) -> np.ndarray:
    n = max(shape)
    return smooth_noise(rng, max(n, 2), max(cell, 1.5), octaves, gain)[: shape[0], : shape[1]]


class _Shape:
    """Polar shape in a window: normalised radius ``dn`` (1 on the edge), angle, dome normal."""

    def __init__(self, scene: Scene, rng: np.random.Generator, cy: float, cx: float, r0: float,
                 asp: float, harmonics: int, amp: float, reach: float = 1.8):
        size = scene.size
        self.win = window(cy, cx, r0 * reach + 4, size)
        self.w3 = (slice(None),) + self.win
        yy, xx = grid(size)
        dy, dx = yy[self.win] - np.float32(cy), xx[self.win] - np.float32(cx)
        rot = rng.uniform(0, np.pi)
        cr, sr = np.float32(np.cos(rot)), np.float32(np.sin(rot))
        u, v = dx * cr + dy * sr, (-dx * sr + dy * cr) / np.float32(asp)
        self.theta = np.arctan2(v, u)
        rth = np.ones_like(u)
        for k in range(2, 2 + harmonics):
            a = rng.uniform(0.3, 1.0) * amp / np.sqrt(k - 1)
            rth += np.float32(a) * np.cos(k * self.theta + np.float32(rng.uniform(0, 2 * np.pi)))
        self.dn = np.sqrt(u * u + v * v) / (np.float32(r0) * np.maximum(rth, 0.3))
        self.r0 = r0
        self.shape = self.dn.shape
        # Light comes from the scope tip (~coaxial) with a small random tilt.
        la = rng.uniform(0, 2 * np.pi)
        self.light = np.array([0.35 * np.cos(la), 0.35 * np.sin(la), 1.0], np.float32)
        self.light /= np.linalg.norm(self.light)
        self.light_angle = float(la)

    def alpha(self, soft_px: float) -> np.ndarray:
        return np.clip((1.0 - self.dn) * np.float32(self.r0 / soft_px) + 0.5, 0.0, 1.0)

    def shading(self, height: np.ndarray, gain: float, shininess: float) -> tuple[np.ndarray, np.ndarray]:
        """Lambert + Blinn specular of a height field (in units of r0) lit by ``self.light``."""
        gy, gx = np.gradient(height * np.float32(gain * self.r0)) if min(self.shape) > 1 else (height * 0, height * 0)
        nrm = np.float32(1.0) / np.sqrt(gx * gx + gy * gy + 1.0)
        ndl = (-gx * self.light[0] - gy * self.light[1] + self.light[2]) * nrm
        half = self.light + np.array([0, 0, 1], np.float32)
        half /= np.linalg.norm(half)
        ndh = np.clip((-gx * half[0] - gy * half[1] + half[2]) * nrm, 0, 1)
        return np.clip(ndl, 0, 1), ndh ** np.float32(shininess)


def _composite(scene: Scene, win, alpha: np.ndarray, col: np.ndarray, heme: float | np.ndarray) -> None:
    w3 = (slice(None),) + win
    scene.rgb[w3] = scene.rgb[w3] * (1 - alpha) + col * alpha
    scene.heme[win] = np.maximum(scene.heme[win], alpha * heme)
    scene.lesion_alpha[win] = np.maximum(scene.lesion_alpha[win], alpha)


def _polyp(scene, rng, cy, cx, r0):
    sh = _Shape(scene, rng, cy, cx, r0, rng.uniform(0.7, 1.0), 3, 0.05)
    w, w3 = sh.win, sh.w3
    height = np.sqrt(np.clip(1 - sh.dn ** 2, 0, 1))
    lam, spec = sh.shading(height, 0.55, 40)
    tex = 1 + 0.05 * _local_noise(rng, sh.shape, 2.5 * scene.zoom) + 0.05 * _local_noise(rng, sh.shape, r0 / 2)
    base = scene.tissue[w3] * rgb(1.08, 0.98, 0.95) * tex
    base *= 1 - 0.5 * scene.v_sup[w] * rgb(0.4, 0.7, 0.6)  # faint surface vessels
    cosl = np.cos(sh.theta - sh.light_angle)
    rim = np.exp(-((sh.dn - 0.78) / 0.1) ** 2) * np.maximum(cosl, 0) ** 3
    col = base * (scene.shade[w] * (0.45 + 0.65 * lam)) + (0.3 * spec + 0.16 * rim)
    ring = np.exp(-((sh.dn - 1.1) / 0.12) ** 2) * (0.3 + 0.7 * np.maximum(-cosl, 0))  # contact shadow
    scene.rgb[w3] *= (1 - 0.3 * ring)
    _composite(scene, w, sh.alpha(0.9), col, 0.25)


def _tumor(scene, rng, cy, cx, r0):
    sh = _Shape(scene, rng, cy, cx, r0, rng.uniform(0.6, 1.0), 6, 0.14)
    w, w3 = sh.win, sh.w3
    sh.dn = sh.dn * (1 + 0.12 * _local_noise(rng, sh.shape, r0 / 3))
    lobes = _local_noise(rng, sh.shape, r0 / 2.2, octaves=2)
    height = 0.7 * np.sqrt(np.clip(1 - sh.dn ** 2, 0, 1)) + 0.18 * lobes
    lam, spec = sh.shading(height, 0.8, 25)
    het = _local_noise(rng, sh.shape, r0 / 4.5, octaves=2)
    base = scene.tissue[w3] * rgb(0.80, 0.47, 0.48)
    exud = smoothstep(1.0, 1.7, het)
    base = base * (1 - 0.55 * exud) + rgb(0.82, 0.72, 0.60) * 0.55 * exud
    hem = smoothstep(-0.5, -1.3, het)
    base = base * (1 - 0.6 * hem) + rgb(0.42, 0.10, 0.12) * 0.6 * hem
    base *= (1 + 0.08 * het)
    if rng.random() < 0.5:  # central ulcer: whitish fibrin base with a dark rim
        ulc = smoothstep(0.40, 0.28, sh.dn * (1 + 0.2 * lobes)) * 0.85
        base = base * (1 - ulc) + rgb(0.80, 0.74, 0.58) * ulc
    col = base * (scene.shade[w] * (0.6 + 0.5 * lam)) + (0.12 * spec)
    _composite(scene, w, sh.alpha(1.6), col, 0.55 + 0.35 * smoothstep(-1, 1, het))


def _inflammation(scene, rng, cy, cx, r0):
    sh = _Shape(scene, rng, cy, cx, r0, rng.uniform(0.55, 1.0), 3, 0.10, reach=1.5)
    w, w3 = sh.win, sh.w3
    field = (1 - sh.dn ** 2) + 0.5 * _local_noise(rng, sh.shape, r0 / 2.5, octaves=2, gain=0.35)
    alpha = smoothstep(-0.25, 0.8, field) * 0.95
    if (alpha >= 0.5).sum() < 30:  # degenerate noise draw: fall back to the plain soft ellipse
        alpha = smoothstep(-0.2, 0.6, 1 - sh.dn ** 2)
    gran = _local_noise(rng, sh.shape, 2.2 * scene.zoom)
    mott = _local_noise(rng, sh.shape, 9.0 * scene.zoom)
    inten = (0.6 + 0.4 * smoothstep(0.0, 1.0, field) + 0.15 * mott)
    red = 1 + inten * (rgb(1.10, 0.62, 0.64) - 1)
    red = red * (1 + 0.05 * gran)
    col = scene.tissue[w3] * red * scene.shade[w]
    spots = smoothstep(1.8, 2.4, _local_noise(rng, sh.shape, 4.5 * scene.zoom))  # erosions
    col = col * (1 - 0.7 * spots) + 0.7 * spots * rgb(0.95, 0.90, 0.82) * scene.shade[w]
    _composite(scene, w, alpha, col, 0.6)


def _nodule(scene, rng, cy, cx, r0):
    sh = _Shape(scene, rng, cy, cx, r0, rng.uniform(0.82, 1.0), 2, 0.04)
    w, w3 = sh.win, sh.w3
    height = np.sqrt(np.clip(1 - sh.dn ** 2, 0, 1))
    lam, spec = sh.shading(height, 0.6, 12)
    pale = rgb(0.93, 0.84, 0.74)
    tex = 1 + 0.04 * _local_noise(rng, sh.shape, 2.0 * scene.zoom)
    base = (scene.tissue[w3] * 0.35 + pale * 0.65) * tex
    col = base * (scene.shade[w] * (0.62 + 0.42 * lam)) + (0.06 * spec)
    halo = smoothstep(1.45, 1.0, sh.dn) * 0.22  # pale halo around the nodule
    scene.rgb[w3] = scene.rgb[w3] * (1 - halo) + pale * scene.shade[w] * halo
    _composite(scene, w, sh.alpha(0.8), col, 0.0)


def _cyst(scene, rng, cy, cx, r0):
    sh = _Shape(scene, rng, cy, cx, r0, rng.uniform(0.62, 1.0), 2, 0.03, reach=1.3)
    w, w3 = sh.win, sh.w3
    height = np.sqrt(np.clip(1 - sh.dn ** 2, 0, 1))
    lam, spec = sh.shading(height, 0.8, 90)
    t = np.clip(sh.dn, 0, 1) ** 2
    content = rgb(0.95, 0.86, 0.52) * (1 - t) + rgb(0.60, 0.70, 0.90) * t
    under = scene.tissue[w3] * scene.shade[w]
    col = 0.3 * under + 0.7 * content * (scene.shade[w] * (0.7 + 0.35 * lam))
    edge = smoothstep(0.9, 1.0, sh.dn)
    col = col * (1 - 0.35 * edge) + (1.1 * spec)
    _composite(scene, w, sh.alpha(0.5), col, 0.0)


_RENDERERS = {"polyp": _polyp, "tumor": _tumor, "inflammation": _inflammation, "nodule": _nodule, "cyst": _cyst}


def render_lesion(scene: Scene, rng: np.random.Generator, lesion_class: str, centre: tuple[float, float]) -> None:
    """Draw one lesion of ``lesion_class`` centred at ``centre=(cy, cx)`` into ``scene`` (in place).

    The radius is drawn from :data:`LESION_RADIUS`, multiplied by ``scene.zoom`` (near/far views)
    and capped at :data:`MAX_RADIUS`. Updates ``scene.rgb``, ``scene.heme``, ``scene.lesion_alpha``
    and ``scene.lesion_box``.
    """
    lo, hi = LESION_RADIUS[lesion_class]
    r0 = float(min(rng.uniform(lo, hi) * scene.zoom, MAX_RADIUS) * scene.size)
    _RENDERERS[lesion_class](scene, rng, centre[0], centre[1], r0)
    scene.lesion_box = (centre[0], centre[1], r0)
