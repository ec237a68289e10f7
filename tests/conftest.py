"""Shared fixtures: a tiny CLIP with a weights file we saved ourselves, its dictionary, and tiny PNG data.

Everything is small (64 px images, a 2-layer 32-wide ViT) so the whole suite runs on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
PYTHON = sys.executable
TINY = "mcdrl-tiny-vit"

#: overrides that shrink the shipped configs to the tiny test CLIP (passed as --key value on the bundle CLI)
TINY_OVERRIDES = {
    "clip_model": TINY,
    "intervention_heads": 2,
    "decoder_channels": [16, 8],
    "decoder_skip_channels": [4, 8],
    "num_workers": 0,
    "train_size": 64,  # the tiny CLIP's input size: tests train on 64 px frames
}

#: the paper's causal intervention with its L_causal, which the shipped train.json leaves off: for the tests of its
#: schedule, model selection, resume state and DDP
INTERVENTION_ON = {"use_intervention": True, "lambda_causal": 0.5}


def save_tiny_clip(path: Path, model_name: str = TINY, seed: int = 0) -> Path:
    """Build a random tiny open_clip model and save its state_dict as a local weights file."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    import mcdrl.networks.clip_backbone  # noqa: F401  (registers our model configs)

    torch.manual_seed(seed)
    model = open_clip.create_model(model_name, pretrained=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def make_tiny_dataset(root: Path, n_train: int = 6, n_val: int = 2, size: int = 64, seed: int = 0) -> Path:
    """Tiny PNG pairs: a reddish frame with a lighter disc 'lesion' (mask 0/1), plus a decathlon datalist."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    classes = ["polyp", "tumor", "inflammation", "nodule", "cyst", "none"]
    entries = []
    for i in range(n_train + n_val):
        yy, xx = np.mgrid[:size, :size]
        img = np.stack([150 + 30 * rng.random((size, size)), 60 + 20 * rng.random((size, size)), 50 + 20 * rng.random((size, size))], -1)
        cls = classes[i % len(classes)]
        mask = np.zeros((size, size), np.uint8)
        if cls != "none":
            cy, cx, r = rng.integers(16, size - 16, 2).tolist() + [int(rng.integers(5, 12))]
            mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)
            img[mask > 0] = [230, 160, 150]
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "labels").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.astype(np.uint8)).save(root / "images" / f"case{i:02d}.png")
        Image.fromarray(mask).save(root / "labels" / f"case{i:02d}.png")
        entries.append({"image": f"images/case{i:02d}.png", "label": f"labels/case{i:02d}.png", "site": "S1" if i % 2 else "S2", "lesion_class": cls})
    datalist = {"training": entries[:n_train], "validation": entries[n_train:]}
    (root / "datalist.json").write_text(json.dumps(datalist, indent=1))
    return root / "datalist.json"


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """A tiny CLIP weights file, its dictionary artifact and a tiny dataset, built once per session."""
    from mcdrl.networks.dictionary import build_dictionary

    root = tmp_path_factory.mktemp("tiny_world")
    weights = save_tiny_clip(root / "clip" / "tiny.safetensors")
    dictionary = build_dictionary(TINY, weights, root / "dictionary.safetensors")
    datalist = make_tiny_dataset(root / "data")
    return {"root": root, "weights": weights, "dictionary": dictionary, "datalist": datalist, "data": datalist.parent}


def bundle_cli(args: list[str], cwd: Path, overrides: dict | None = None, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle <args> --key value ...`` in ``cwd``; returns the completed process (not checked)."""
    cmd = [PYTHON, "-m", "monai.bundle", *args]
    for k, v in (overrides or {}).items():
        cmd += [f"--{k}", json.dumps(v) if not isinstance(v, str) else v]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)


def tiny_train_overrides(world: dict, bundle_root: Path, **extra) -> dict:
    """Overrides for train/evaluate runs on the tiny world, writing into ``bundle_root`` (a copy of the bundle)."""
    return {
        **TINY_OVERRIDES,
        "bundle_root": str(bundle_root),
        "clip_weights": str(world["weights"]),
        "dictionary_path": str(world["dictionary"]),
        "dataset_dir": str(world["data"]),
        "max_epochs": 2,
        "batch_size": 2,
        **extra,
    }
