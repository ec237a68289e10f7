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
from pathlib import Path

from mcdrl.synthetic import generate_dataset

__all__ = ["ensure_world", "world_name"]


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
