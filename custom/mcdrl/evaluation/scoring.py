"""Scoring a trained network on labelled images, the way the bundle's inference segments them.

Shared by ``python -m mcdrl.evaluation.compare`` (the shipped model against a UNet trained for the same time),
``python -m mcdrl.evaluation.robustness`` (image shifts and a new site) and the leave-one-site-out benchmark. The
network runs its eval forward (so the presence decision acts with the threshold stored in ``model.pt``), then the
bundle's post-processing (:class:`mcdrl.transforms.LesionPostprocess`, as configured), and each image is scored at its
original resolution:

* ``dice``, ``iou``: :func:`mcdrl.evaluation.metrics.per_image_metrics` (an empty label with an empty mask scores 1);
* ``false_alarm`` (lesion-free images only): any lesion pixel predicted;
* ``detected`` (lesion images only): the prediction covers at least ``DETECTION_COVERAGE`` of the lesion's pixels
  (lesion-level sensitivity; every synthetic frame holds at most one lesion);
* ``lesion_score``: the network's image-level lesion score, when it has one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from mcdrl.evaluation.metrics import per_image_metrics
from mcdrl.transforms import LesionPostprocess, binarize_mask

__all__ = ["DETECTION_COVERAGE", "SMALL_LESION_FRACTION", "build_bundle_network", "load_labelled_images", "parse_sets", "score_images", "summarise", "write_json", "write_report"]

#: a lesion counts as detected when the predicted mask covers at least this fraction of its pixels
DETECTION_COVERAGE = 0.1
#: a small lesion covers less than this fraction of the frame (issue 23's "lesions under 1% of the frame")
SMALL_LESION_FRACTION = 0.01


def build_bundle_network(config_files: str | Sequence[str], ckpt_file: str | os.PathLike, overrides: dict | None = None,
                         net_id: str = "network_def") -> tuple[torch.nn.Module, LesionPostprocess]:
    """The network of bundle config(s) with ``ckpt_file`` loaded strictly (eval mode), and the configs' post-processing.

    Args:
        config_files: e.g. ``bundle/configs/inference.json``, or ``[train.json, unet.json]``.
        ckpt_file: a bare state_dict (``models/model.pt``).
        overrides: config values to set first (``{"bundle_root": ...}``).

    Returns:
        (network, post-processing of one label map) built from ``min_lesion_fraction`` / ``keep_largest_lesion``.
    """
    from monai.bundle import ConfigParser

    from mcdrl.io import load_weights

    parser = ConfigParser()
    parser.read_config(config_files if isinstance(config_files, (list, tuple)) else [config_files])
    for k, v in (overrides or {}).items():
        parser[k] = v
    net = load_weights(parser.get_parsed_content(net_id, instantiate=True), ckpt_file, "cpu").eval()
    post = LesionPostprocess(parser.get("min_lesion_fraction", 0.0), bool(parser.get("keep_largest_lesion", False)))
    return net, post


def load_labelled_images(datalist: str | os.PathLike, split: str, sites: Sequence[str] | None = None,
                         label_threshold: float | str = "auto") -> list[dict]:
    """``[{"id", "site", "lesion_class", "confounders", "protocol_confounders", "image": (H, W, 3) uint8, "mask": (H, W) bool},
    ...]`` of one datalist split (``protocol_confounders`` is None where the entry has none: generator version < 4).

    Masks are binarised as the bundle's training reads them (:func:`mcdrl.transforms.binarize_mask`, ``label_threshold``).
    """
    from PIL import Image

    from mcdrl.engines.training import load_datalist

    out = []
    for e in load_datalist(datalist, split, sites=list(sites) if sites else None):
        out.append({"id": e.get("id", Path(e["image"]).stem), "site": e.get("site"), "lesion_class": e.get("lesion_class"),
                    "confounders": e.get("confounders", []), "protocol_confounders": e.get("protocol_confounders"),
                    "image": np.array(Image.open(e["image"]).convert("RGB")),
                    "mask": binarize_mask(Image.open(e["label"]), label_threshold, e["label"])})
    return out


@torch.no_grad()
def score_images(network: torch.nn.Module, images: Iterable[dict], post: LesionPostprocess | None = None, batch_size: int = 8,
                 image_fn=None) -> list[dict]:
    """Per-image records (see the module doc) for ``images`` = dicts with ``image`` (H, W, 3) uint8 and ``mask`` (H, W).

    Args:
        network: eval-mode network, (B, 3, H, W) in [0, 1] -> logits (B, 2, H, W).
        post: the bundle's post-processing of each label map (None: none).
        image_fn: optional shift applied to each (H, W, 3) uint8 image first (robustness).
    """
    records, batch = [], []

    def run(batch: list[dict]) -> None:
        arrs = [image_fn(b["image"]) if image_fn else b["image"] for b in batch]
        x = torch.stack([torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float() / 255.0 for a in arrs])
        scores = None
        if hasattr(network, "forward_with_score"):
            logits, scores = network.forward_with_score(x)
            logits = network.gate(logits, scores)
        else:
            logits = network(x)
        masks = (logits[:, 1] > logits[:, 0]).to(torch.uint8)
        for j, b in enumerate(batch):
            pred = masks[j].numpy()
            pred = post(pred) if post is not None else pred
            gt = np.asarray(b["mask"], bool)
            m = per_image_metrics(torch.from_numpy(pred > 0), torch.from_numpy(gt))
            rec = {"id": b.get("id"), "site": b.get("site"), "lesion_class": b.get("lesion_class"), "dice": m["dice"], "iou": m["iou"],
                   "lesion": bool(gt.any()), "predicted_any": bool(pred.any())}
            if gt.any():
                rec["detected"] = bool((pred[gt] > 0).mean() >= DETECTION_COVERAGE)
                rec["lesion_fraction"] = float(gt.mean())
            else:
                rec["false_alarm"] = bool(pred.any())
            if scores is not None:
                rec["lesion_score"] = float(scores[j])
            records.append(rec)

    for item in images:
        if batch and (item["image"].shape != batch[0]["image"].shape or len(batch) >= batch_size):
            run(batch)
            batch = []
        batch.append(item)
    if batch:
        run(batch)
    return records


def summarise(records: list[dict]) -> dict:
    """Mean Dice / IoU, false-alarm rate on lesion-free images, lesion-level sensitivity (all lesions, and those under
    :data:`SMALL_LESION_FRACTION` of the frame), Dice per class (rounded)."""
    if not records:
        return {"n": 0}
    free = [r for r in records if not r["lesion"]]
    lesion = [r for r in records if r["lesion"]]
    classes = sorted({r["lesion_class"] for r in lesion if r.get("lesion_class")})
    out = {
        "n": len(records), "dice": float(np.mean([r["dice"] for r in records])), "iou": float(np.mean([r["iou"] for r in records])),
        "dice_lesion_images": float(np.mean([r["dice"] for r in lesion])) if lesion else None,
        "lesion_free_images": len(free), "false_alarm_rate": float(np.mean([r["false_alarm"] for r in free])) if free else None,
        "lesion_images": len(lesion), "sensitivity": float(np.mean([r["detected"] for r in lesion])) if lesion else None,
        "small_lesion_images": len(small := [r for r in lesion if r.get("lesion_fraction", 1.0) < SMALL_LESION_FRACTION]),
        "sensitivity_small": float(np.mean([r["detected"] for r in small])) if small else None,
        "dice_per_class": {c: float(np.mean([r["dice"] for r in lesion if r["lesion_class"] == c])) for c in classes},
    }
    return {k: (round(v, 4) if isinstance(v, float) else {kk: round(vv, 4) for kk, vv in v.items()} if isinstance(v, dict) else v) for k, v in out.items()}


def write_json(path: str | os.PathLike, doc: dict) -> Path:
    """Write ``doc`` as indented JSON, atomically."""
    from mcdrl.utils import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(doc, indent=1) + "\n")
    return path


def write_report(path: str | os.PathLike, lines: list[str]) -> Path:
    """Write a markdown report atomically and print it."""
    from mcdrl.utils import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return path


def parse_sets(items: list[str]) -> dict:
    """``["key=JSON", ...]`` (the ``--set`` options of the evaluation commands) -> ``{key: value}``; a value that is not
    JSON is taken as a string."""
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE with a JSON value, e.g. deconfounding='\"all\"' or lambda_counterfactual=0.5")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out
