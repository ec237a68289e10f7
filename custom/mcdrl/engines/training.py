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

__all__ = ["MissingData", "PrepareBatchWithClass", "list_images", "load_datalist", "param_groups", "require_data"]

logger = logging.getLogger(__name__)


class MissingData(list):
    """An empty datalist standing for input that is not on disk: a workflow builds without its data (MONAI's
    ``check_properties`` and the model zoo instantiate the datasets, the trainer and the evaluator), and
    :func:`require_data` raises ``error``, one clear line, when a run starts.

    Attributes:
        error: the :class:`~mcdrl.errors.InputFileError` naming the missing file or folder and the fix.
    """

    def __init__(self, error: InputFileError):
        super().__init__()
        self.error = error


def require_data(*datasets, nonempty: str | None = None) -> None:
    """Raise the :class:`MissingData` error of the first dataset (or datalist) whose input is missing (run time).

    Args:
        datasets: MONAI datasets or datalists.
        nonempty: if given (e.g. ``"training"``), the first dataset must also have at least one entry; otherwise a
            :class:`~mcdrl.errors.ConfigError` says so. MONAI's trainer skips an empty data loader with only a warning,
            and the run would end as if it had trained (MONAI Label then reports the /train as DONE).
    """
    for d in datasets:
        data = getattr(d, "data", d)
        if isinstance(data, MissingData):
            raise data.error
    if nonempty is not None and datasets and len(getattr(datasets[0], "data", datasets[0])) == 0:
        raise ConfigError(f"no {nonempty} images: nothing to train (the datalist's {nonempty!r} split is empty, or MONAI Label "
                          "has no labelled images in its datastore); the run stops instead of ending as if it had trained")


def load_datalist(path: str | os.PathLike | list, key: str = "training", base_dir: str | os.PathLike | None = None, sites: list[str] | None = None, check_files: bool = True,
                  missing_ok: bool = False, allow_missing_split: bool = False) -> list[dict]:
    """Read one split of a JSON datalist (or the concatenation over several) and check that every file exists.

    Entries are ``{"image", "label", "site", "lesion_class", ...}``; relative paths are resolved against
    ``base_dir`` (default: the datalist's folder).

    Args:
        path: the datalist JSON, or a list of them (each split is the concatenation, in order; a datalist without the
            split contributes nothing, e.g. a pool of extra training scenes has no validation split).
        key: the split (``"training"``, ``"validation"``, ``"test"``).
        sites: if given, keep only entries of these sites.
        check_files: raise if an image or label file is missing.
        allow_missing_split: a datalist without split ``key`` contributes nothing instead of being an error (set for
            each file of a list).
        missing_ok: a missing datalist file gives an empty :class:`MissingData` (the configs: the error then comes
            from :func:`require_data` when the run starts) instead of raising.

    Raises:
        FileNotFoundError: naming the datalist, the entry and the missing file.
    """
    if isinstance(path, (list, tuple)):
        if not path:
            raise ConfigError("datalist is an empty list; name at least one datalist JSON file")
        parts = [load_datalist(p, key, base_dir, sites, check_files, missing_ok, allow_missing_split=len(path) > 1) for p in path]
        missing = [part for part in parts if isinstance(part, MissingData)]
        return missing[0] if missing else [item for part in parts for item in part]
    path = Path(path)
    if not path.is_file():
        error = InputFileError(f"datalist not found: {path}. Point 'datalist' at a JSON file (python -m mcdrl.synthetic writes one), or pass --dataset_dir.")
        if missing_ok:
            return MissingData(error)
        raise error
    base = Path(base_dir) if base_dir else path.parent
    if allow_missing_split:
        try:
            if key not in json.loads(path.read_text()):
                return []
        except json.JSONDecodeError as e:
            raise ConfigError(f"datalist {path} is not valid JSON ({e})") from e
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


def trainable_backbone_parameters(backbone, blocks: int | None = None) -> list:
    """The CLIP visual parameters that train when only the last ``blocks`` blocks are unfrozen (None: all of them).

    ViT: the last ``blocks`` transformer blocks plus ``ln_post`` and ``proj`` (the read-out); ResNet: the last ``blocks``
    of (layer1, layer2, layer3, layer4, attnpool). ``blocks=0`` freezes the whole encoder.
    """
    visual = backbone.visual
    if blocks is None or int(blocks) < 0:
        return list(visual.parameters())
    blocks = int(blocks)
    if blocks == 0:
        return []
    if backbone.is_vit:
        parts = list(visual.transformer.resblocks)[-blocks:]
        return [p for m in parts for p in m.parameters()] + list(visual.ln_post.parameters()) + [visual.proj]
    stages = [visual.layer1, visual.layer2, visual.layer3, visual.layer4, visual.attnpool]
    return [p for m in stages[-blocks:] for p in m.parameters()]


def param_groups(network, lr: float, backbone_lr_scale: float = 0.01, weight_decay: float = 1e-4, backbone_trainable_blocks: int | None = None,
                 intervention_lr_scale: float | None = None) -> list[dict]:
    """AdamW parameter groups [ours]: new modules at ``lr``, the CLIP visual encoder at ``lr * backbone_lr_scale``.

    The text tower is not part of the network (its embeddings are frozen buffers), so it is never trained.
    ``backbone_lr_scale=0`` freezes the visual encoder; ``backbone_trainable_blocks=n`` trains only its last n blocks
    (:func:`trainable_backbone_parameters`) and freezes the trunk below them, whose forward then builds no autograd
    graph. Networks without a CLIP backbone (e.g. a MONAI UNet baseline) get one group at ``lr``.
    With ``intervention_lr_scale`` (not None), the causal intervention gets a group of its own, named
    ``"intervention"``, at ``lr * intervention_lr_scale`` (:class:`mcdrl.engines.handlers.InterventionSchedule` warms
    it up after the switch-on).
    """
    net = unwrap(network)
    if not hasattr(net, "backbone"):
        return [{"params": [p for p in net.parameters() if p.requires_grad], "lr": lr, "weight_decay": weight_decay}]
    all_backbone = list(net.backbone.parameters())
    ids_all = {id(p) for p in all_backbone}
    trainable = [] if backbone_lr_scale <= 0 else trainable_backbone_parameters(net.backbone, backbone_trainable_blocks)
    ids_trainable = {id(p) for p in trainable}
    for p in all_backbone:
        p.requires_grad_(id(p) in ids_trainable)
    own = set()
    if intervention_lr_scale is not None and hasattr(net, "intervention"):
        own = {id(p) for p in net.intervention.parameters() if p.requires_grad}
    new = [p for p in net.parameters() if p.requires_grad and id(p) not in ids_all and id(p) not in own]
    groups = [{"params": new, "lr": lr, "weight_decay": weight_decay}]
    if own:
        groups.append({"params": [p for p in net.intervention.parameters() if id(p) in own], "lr": lr * float(intervention_lr_scale),
                       "weight_decay": weight_decay, "name": "intervention"})
    if trainable:
        groups.append({"params": trainable, "lr": lr * backbone_lr_scale, "weight_decay": weight_decay})
    return groups


class PrepareBatchWithClass(PrepareBatch):
    """Batch -> (image, {"label", "lesion_class", "paired"}) for :class:`mcdrl.networks.losses.MCDRLLoss`.

    With counterfactual pairs (the batch also holds ``image_cf``: each image with confounders added or changed, same
    scene and geometry), the network gets both halves in one batch [x_1 .. x_B, x'_1 .. x'_B], the labels and classes
    are repeated (``label_cf`` when present), and ``paired`` is True.
    """

    def __init__(self, class_key: str = "lesion_class", counterfactual_key: str = "image_cf"):
        self.class_key = class_key
        self.counterfactual_key = counterfactual_key

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs):
        image = batchdata["image"]
        label = batchdata["label"]
        classes = batchdata.get(self.class_key)
        if classes is None:
            classes = torch.full((image.shape[0],), -1, dtype=torch.long)
        classes = torch.as_tensor(classes)
        paired = self.counterfactual_key in batchdata
        if paired:
            image = torch.cat([image, batchdata[self.counterfactual_key]])
            label = torch.cat([label, batchdata.get("label_cf", label)])
            classes = torch.cat([classes, classes])
        image = image.to(device=device, non_blocking=non_blocking, **kwargs)
        label = label.to(device=device, non_blocking=non_blocking, **kwargs)
        return image, {"label": label, "lesion_class": classes.to(device), "paired": paired}


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def list_images(folder: str | os.PathLike, suffixes: tuple[str, ...] = IMAGE_SUFFIXES, missing_ok: bool = False) -> list[dict]:
    """``[{"image": path}, ...]`` for every 2-D image file under ``folder`` (recursive, sorted); a single file works too.

    Args:
        missing_ok: a folder that does not exist gives an empty :class:`MissingData` instead of raising.

    Raises:
        FileNotFoundError: the folder does not exist or holds no image with one of ``suffixes``.
    """
    root = Path(folder)
    if root.is_file():
        return [{"image": str(root)}]
    if not root.is_dir():
        error = InputFileError(f"input folder not found: {root}. Pass --dataset_dir pointing at a folder of images.")
        if missing_ok:
            return MissingData(error)
        raise error
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise InputFileError(f"no {'/'.join(suffixes)} images under {root}")
    return [{"image": str(p)} for p in files]
