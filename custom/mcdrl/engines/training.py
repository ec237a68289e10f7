"""Training glue referenced by the bundle configs: datalists, parameter groups, batch preparation, seeding."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from monai.data import load_decathlon_datalist
from monai.engines import PrepareBatch

from mcdrl.errors import ConfigError, InputFileError

from .handlers import unwrap

__all__ = ["PrepareBatchWithClass", "list_images", "load_datalist", "param_groups"]

logger = logging.getLogger(__name__)


def load_datalist(path: str | os.PathLike, key: str = "training", base_dir: str | os.PathLike | None = None, sites: list[str] | None = None, check_files: bool = True) -> list[dict]:
    """Read one split of a JSON datalist and check that every file exists.

    Entries are ``{"image", "label", "site", "lesion_class", ...}``; relative paths are resolved against
    ``base_dir`` (default: the datalist's folder).

    Args:
        path: the datalist JSON. key: the split (``"training"``, ``"validation"``, ``"test"``).
        sites: if given, keep only entries of these sites.
        check_files: raise if an image or label file is missing.

    Raises:
        FileNotFoundError: naming the datalist, the entry and the missing file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"datalist not found: {path}. Point 'datalist' at a JSON file (python -m mcdrl.synthetic writes one).")
    base = Path(base_dir) if base_dir else path.parent
    try:
        items = load_decathlon_datalist(str(path), is_segmentation=True, data_list_key=key, base_dir=str(base))
    except (ValueError, KeyError, json.JSONDecodeError) as e:
        raise ConfigError(f"datalist {path}: cannot read split {key!r} ({e})") from e
    if sites:
        items = [d for d in items if d.get("site") in set(sites)]
    if check_files:
        for i, item in enumerate(items):
            for field in ("image", "label"):
                if field in item and not Path(item[field]).is_file():
                    raise InputFileError(f"datalist {path}, {key}[{i}]: {field} file not found: {item[field]}. Fix the path or remove the entry.")
    return items


def param_groups(network, lr: float, backbone_lr_scale: float = 0.01, weight_decay: float = 1e-4) -> list[dict]:
    """AdamW parameter groups [ours]: new modules at ``lr``, the CLIP visual encoder at ``lr * backbone_lr_scale``.

    The text tower is not part of the network (its embeddings are frozen buffers), so it is never trained.
    ``backbone_lr_scale=0`` freezes the visual encoder.
    """
    net = unwrap(network)
    backbone = [p for p in net.backbone.parameters() if p.requires_grad]
    ids = {id(p) for p in backbone}
    new = [p for p in net.parameters() if p.requires_grad and id(p) not in ids]
    groups = [{"params": new, "lr": lr, "weight_decay": weight_decay}]
    if backbone_lr_scale > 0:
        groups.append({"params": backbone, "lr": lr * backbone_lr_scale, "weight_decay": weight_decay})
    else:
        for p in backbone:
            p.requires_grad_(False)
    return groups


class PrepareBatchWithClass(PrepareBatch):
    """Batch -> (image, {"label", "lesion_class"}): passes each image's class index to :class:`mcdrl.networks.losses.MCDRLLoss`."""

    def __init__(self, class_key: str = "lesion_class"):
        self.class_key = class_key

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs):
        image = batchdata["image"].to(device=device, non_blocking=non_blocking, **kwargs)
        label = batchdata["label"].to(device=device, non_blocking=non_blocking, **kwargs)
        classes = batchdata.get(self.class_key)
        if classes is None:
            classes = torch.full((image.shape[0],), -1, dtype=torch.long)
        return image, {"label": label, "lesion_class": torch.as_tensor(classes).to(device)}


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def list_images(folder: str | os.PathLike, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[dict]:
    """``[{"image": path}, ...]`` for every 2-D image file under ``folder`` (recursive, sorted); a single file works too.

    Raises:
        FileNotFoundError: the folder does not exist or holds no image with one of ``suffixes``.
    """
    root = Path(folder)
    if root.is_file():
        return [{"image": str(root)}]
    if not root.is_dir():
        raise InputFileError(f"input folder not found: {root}. Pass --dataset_dir pointing at a folder of images.")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise InputFileError(f"no {'/'.join(suffixes)} images under {root}")
    return [{"image": str(p)} for p in files]
