"""Render one synthetic endoscopy case: background -> lesion -> confounders -> device.

Imaging chain (in order): zoom (near/far view) -> mucosa background -> lesion -> mucus/blood ->
colour mode (NBI / explicit WLI) -> lighting -> device colour cast + sharpness -> specular
reflection -> motion blur -> sensor noise -> FOV border -> display gamma -> uint8 -> overlay
text -> imaging artifacts. Every stage draws from its own seeded random stream, so adding one
confounder leaves the rest of the frame (and the mask) unchanged. The confounder effects are looked up in
:data:`.confounders.EFFECTS` at call time, the functions :class:`mcdrl.transforms.RandConfounder` applies to any frame.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from mcdrl.networks.prompts import CONFOUNDERS, LESION_CLASSES, NO_LESION

from . import confounders as _confounders
from ._ops import blur_rgb, gauss_noise, rng_for, to_u8
from .confounders import EXCLUSIVE, STAGES, ZOOM
from .device import DeviceTraits, apply_border, fov_mask, fov_points, overlay_text
from .frames import render_background
from .lesions import place_lesion, render_lesion

#: How each lesion class is named in a caption.
CLASS_PHRASE = {"polyp": "a polyp", "tumor": "a tumor", "inflammation": "inflammation",
                "nodule": "a nodule", "cyst": "a cyst", NO_LESION: "normal mucosa"}


@dataclass
class Case:
    """One rendered frame and its labels.

    Attributes:
        image: (H, W, 3) uint8 RGB frame.
        mask: (H, W) uint8 lesion mask, values in {0, 1}; all zeros when ``lesion_class == "none"``.
        lesion_class: one of :data:`mcdrl.networks.prompts.LESION_CLASSES` or ``"none"``.
        confounders: the confounders present, in :data:`mcdrl.networks.prompts.CONFOUNDERS` order.
        caption: e.g. ``"An endoscopy image of a polyp with motion blur and narrow-band imaging"``.
        site: name of the site it was sampled from, or None.
        seed: the seed it was rendered from.
        device: the device traits used.
    """

    image: np.ndarray
    mask: np.ndarray
    lesion_class: str
    confounders: list[str]
    caption: str
    site: str | None = None
    seed: int | None = None
    device: DeviceTraits | None = None


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def make_caption(lesion_class: str, confounders: list[str]) -> str:
    """Caption naming the lesion and the confounders (confounders in canonical order)."""
    cap = f"An endoscopy image of {CLASS_PHRASE[lesion_class]}"
    return cap + (f" with {_join(list(confounders))}" if confounders else "")


def validate(lesion_class: str, confounders: Iterable[str]) -> list[str]:
    """Check names; return the confounders de-duplicated in canonical order.

    Raises:
        ValueError: unknown lesion class / confounder (message names the bad value and the known
            ones), a bare string instead of a list, or two mutually exclusive confounders.
    """
    known_cls = LESION_CLASSES + [NO_LESION]
    if lesion_class not in known_cls:
        raise ValueError(f"unknown lesion class {lesion_class!r}; known: {known_cls}")
    if isinstance(confounders, str):
        raise ValueError(f"confounders must be a list of names, got the string {confounders!r}; known: {CONFOUNDERS}")
    confounders = list(confounders)
    for c in confounders:
        if c not in CONFOUNDERS:
            raise ValueError(f"unknown confounder {c!r}; known: {CONFOUNDERS}")
    for a, b in EXCLUSIVE:
        if a in confounders and b in confounders:
            raise ValueError(f"confounders {a!r} and {b!r} cannot both be present in one frame")
    return [c for c in CONFOUNDERS if c in confounders]


def render_case(seed: int, lesion_class: str, confounders: Iterable[str], device: DeviceTraits | None = None,
                size: int = 224, *, site: str | None = None) -> Case:
    """Render one frame deterministically (same arguments -> identical bytes).

    Args:
        seed: case seed; all randomness derives from it.
        lesion_class: a class of :data:`mcdrl.networks.prompts.LESION_CLASSES`, or ``"none"`` (no lesion).
        confounders: any of :data:`mcdrl.networks.prompts.CONFOUNDERS`; ``[]`` gives a clean white-light frame.
        device: endoscope traits (colour cast, FOV, text overlay...); None = neutral default.
        size: output side S in pixels.
        site: stored in :attr:`Case.site`.

    Returns:
        :class:`Case` with ``image`` (S, S, 3) uint8 and ``mask`` (S, S) uint8 in {0, 1}.
    """
    confs = validate(lesion_class, confounders)
    dev = device if device is not None else DeviceTraits()
    dist = "a near view" if "a near view" in confs else "a far view" if "a far view" in confs else None
    zoom = float(rng_for(seed, "zoom").uniform(*ZOOM[dist]))
    scene = render_background(rng_for(seed, "scene"), size, zoom)
    fov = fov_mask(dev.fov_shape, dev.fov_radius, size)
    if lesion_class != NO_LESION:
        centre = place_lesion(rng_for(seed, "place"), fov_points(dev.fov_shape, dev.fov_radius, size))
        render_lesion(scene, rng_for(seed, "lesion", lesion_class), lesion_class, centre)
    layers = scene.layers()
    effects = _confounders.EFFECTS  # looked up at call time: the one implementation, shared with RandConfounder
    for name in STAGES["surface"]:
        if name in confs:
            scene.rgb = effects[name](scene.rgb, rng_for(seed, name), layers)
    img = scene.rgb
    for stage in ("colour", "lighting"):
        for name in STAGES[stage]:
            if name in confs:
                img = effects[name](img, rng_for(seed, name), layers)
    img = img * np.asarray(dev.colour_cast, np.float32).reshape(3, 1, 1)
    if dev.sharpness:
        img = img + np.float32(dev.sharpness) * (img - blur_rgb(img, 1.2))
    for name in STAGES["optics"]:
        if name in confs:
            img = effects[name](img, rng_for(seed, name), layers)
    rs = rng_for(seed, "sensor")
    img = img + gauss_noise(rs, img.shape, dev.noise_sigma)
    img = apply_border(img, dev, rs)
    if dev.gamma != 1.0:
        img = np.power(np.clip(img, 0, 1), np.float32(1.0 / dev.gamma))
    out = np.ascontiguousarray(to_u8(img).transpose(1, 2, 0))
    if dev.overlay_text:
        out = overlay_text(out, dev, rng_for(seed, "text"))
    if "imaging artifacts" in confs:  # on the 8-bit frame; the float round trip is exact
        frame = out.transpose(2, 0, 1) * np.float32(1 / 255)
        art = effects["imaging artifacts"](frame, rng_for(seed, "imaging artifacts"), layers)
        out = np.ascontiguousarray(to_u8(art).transpose(1, 2, 0))
    mask = ((scene.lesion_alpha >= 0.5) & (fov >= 0.5)).astype(np.uint8)
    return Case(image=out, mask=mask, lesion_class=lesion_class, confounders=confs,
                caption=make_caption(lesion_class, confs), site=site, seed=int(seed), device=dev)
