"""The benchmark's synthetic world: generated once with :func:`mcdrl.synthetic.generate_dataset`, then cached.

Layout: ``<cache_dir>/world-<sites>-n<n>-s<seed>-<size>px-v<val>/`` holds the PNG images, labels and the
``datalist.json`` that :func:`generate_dataset` writes (``training`` and ``validation`` splits per site). The
folder is written under a temporary name and renamed when complete, so a crash never leaves a half world.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mcdrl.errors import InputFileError
from mcdrl.networks.prompts import LESION_CLASSES
from mcdrl.synthetic import generate_dataset

__all__ = ["World", "ensure_world", "load_world"]


def world_name(sites, n_per_site: int, seed: int, size: int, val_fraction: float) -> str:
    from mcdrl.synthetic import GENERATOR_VERSION

    return f"world-{''.join(sites)}-n{n_per_site}-s{seed}-{size}px-v{val_fraction:g}-g{GENERATOR_VERSION}"


def ensure_world(cache_dir: str | os.PathLike, sites, n_per_site: int, seed: int, size: int, val_fraction: float) -> Path:
    """Generate the world if it is not cached yet; returns its ``datalist.json``."""
    folder = Path(cache_dir) / world_name(sites, n_per_site, seed, size, val_fraction)
    datalist = folder / "datalist.json"
    if datalist.is_file():
        return datalist
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        generate_dataset(tmp, list(sites), n_per_site, seed=seed, split=(1.0 - val_fraction, val_fraction), size=size)
        if folder.exists():  # a concurrent generator won; identical bytes by construction
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return datalist


@dataclass
class World:
    """All images of the world in memory.

    Attributes:
        ids, sites, splits, classes: per image (N,) lists; ``splits`` is ``"training"`` or ``"validation"``;
            ``classes`` are lesion-class indices (-1 = no lesion).
        confounders: per image, the confounder phrases rendered into it.
        images: (N, H, W, 3) uint8. masks: (N, H, W) uint8 in {0, 1}.
        name: the world folder's name (part of the feature-cache key).
    """

    name: str
    ids: list[str]
    sites: list[str]
    splits: list[str]
    classes: list[int]
    confounders: list[list[str]]
    images: np.ndarray
    masks: np.ndarray

    def indices(self, sites, split: str | None = None) -> np.ndarray:
        """Indices of the images of ``sites`` (optionally of one split), in world order."""
        keep = set(sites)
        return np.array([i for i, (s, p) in enumerate(zip(self.sites, self.splits)) if s in keep and (split is None or p == split)], dtype=np.int64)


def load_world(datalist: str | os.PathLike) -> World:
    """Read a world written by :func:`ensure_world` (images sorted by id within each split order)."""
    datalist = Path(datalist)
    if not datalist.is_file():
        raise InputFileError(f"benchmark world datalist not found: {datalist}")
    data = json.loads(datalist.read_text())
    entries = [(e, split) for split in ("training", "validation") for e in data.get(split, [])]
    entries.sort(key=lambda t: t[0]["id"])
    images, masks = [], []
    for e, _ in entries:
        for key in ("image", "label"):
            if not (datalist.parent / e[key]).is_file():
                raise InputFileError(f"benchmark world {datalist}: {key} file missing: {datalist.parent / e[key]}. Delete the folder to regenerate it.")
        images.append(np.asarray(Image.open(datalist.parent / e["image"]).convert("RGB")))
        masks.append((np.asarray(Image.open(datalist.parent / e["label"])) > 0).astype(np.uint8))
    return World(
        name=datalist.parent.name,
        ids=[e["id"] for e, _ in entries],
        sites=[e["site"] for e, _ in entries],
        splits=[s for _, s in entries],
        classes=[LESION_CLASSES.index(e["lesion_class"]) if e["lesion_class"] in LESION_CLASSES else -1 for e, _ in entries],
        confounders=[list(e.get("confounders", [])) for e, _ in entries],
        images=np.stack(images),
        masks=np.stack(masks),
    )
