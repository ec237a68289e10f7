"""Calibrate the confounder readout on source-site frames and store it in ``model.pt`` (the ``calibrate_readout`` run).

::

    python -m monai.bundle run calibrate_readout \\
        --config_file "['bundle/configs/inference.json','bundle/configs/site_profile.json']"

The readout (:class:`mcdrl.networks.confounder_readout.ConfounderReadout`) needs three things that depend on the
trained visual encoder: the neutral prompt's text embedding (encoded here with the CLIP text tower that built the
dictionary), per-confounder presence thresholds and the training sites' profile. All three are set from labelled
frames of the training datalist (each entry's ``confounders`` list, which :mod:`mcdrl.synthetic` writes), at most
``per_site`` frames of each site, and written into ``model.pt``'s ``readout.*`` buffers, so they travel with the
weights. Run it again after every retraining: the buffers of a freshly trained model are unset, and the site profile
and the reports' presence flags refuse an uncalibrated model.

A ``model.pt`` saved before the readout existed (no ``readout.*`` keys) is accepted and completed; every other key must
match exactly.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mcdrl.errors import ConfigError, InputFileError
from mcdrl.networks.prompts import CONFOUNDERS
from mcdrl.utils import atomic_path

__all__ = ["READOUT_PREFIX", "calibrate_readout", "load_weights_uncalibrated_ok"]

logger = logging.getLogger(__name__)
READOUT_PREFIX = "readout."


def load_weights_uncalibrated_ok(network: torch.nn.Module, path: str | os.PathLike, optional_prefixes: tuple[str, ...] = (READOUT_PREFIX,)) -> torch.nn.Module:
    """Load ``model.pt`` into ``network`` strictly, except that calibration buffers may be absent (older files): keys
    under ``optional_prefixes`` (default: the readout's ``readout.*``; the presence probe's calibration passes its own)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"model weights not found: {path}. Train the bundle first (run training).")
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = network.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(tuple(optional_prefixes))]
    if missing or unexpected:
        raise ConfigError(f"{path} does not fit the network: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    return network


def _source_frames(datalist: str | os.PathLike, split: str, per_site: int) -> tuple[list[dict], dict[str, int]]:
    from mcdrl.engines.training import load_datalist

    entries = load_datalist(datalist, split)
    if not entries:
        raise InputFileError(f"{datalist}: split {split!r} has no entries to calibrate the confounder readout on")
    unlabelled = [e.get("image") for e in entries if not isinstance(e.get("confounders"), list)]
    if unlabelled:
        raise ConfigError(f"{datalist}: {len(unlabelled)} entries of split {split!r} have no 'confounders' list (e.g. {unlabelled[0]}); "
                          "the readout is calibrated on frames whose confounders are known (python -m mcdrl.synthetic writes them)")
    taken: dict[str, int] = defaultdict(int)
    chosen = []
    for e in entries:
        site = str(e.get("site"))
        if taken[site] < per_site:
            taken[site] += 1
            chosen.append(e)
    return chosen, dict(taken)


@torch.no_grad()
def _embeddings(network, entries: list[dict], batch_size: int) -> torch.Tensor:
    """F_vis (N, d) of the entries' images, read as RGB and scaled to [0, 1], batched by image size."""
    from PIL import Image

    out: list[torch.Tensor | None] = [None] * len(entries)
    groups: dict[tuple, list[int]] = defaultdict(list)
    images = []
    for i, e in enumerate(entries):
        try:
            images.append(np.asarray(Image.open(e["image"]).convert("RGB")))
        except Exception as err:  # noqa: BLE001 - name the file
            raise InputFileError(f"{e['image']}: unreadable calibration frame ({type(err).__name__}: {err})") from err
        groups[images[-1].shape].append(i)
    for idx in groups.values():
        for s in range(0, len(idx), batch_size):
            part = idx[s : s + batch_size]
            x = torch.stack([torch.from_numpy(images[i]).permute(2, 0, 1).float() / 255.0 for i in part])
            _, pooled = network.backbone.forward_tokens(network._resize_in(x))
            for j, i in enumerate(part):
                out[i] = pooled[j].float()
    return torch.stack(out)


def calibrate_readout(network: torch.nn.Module, model_file: str | os.PathLike, datalist: str | os.PathLike, clip_weights: str | os.PathLike,
                      split: str = "training", per_site: int = 100, reference_prompt: str = "An endoscopy image",
                      false_positive_rate: float = 0.02, report_file: str | os.PathLike | None = None, batch_size: int = 16) -> dict:
    """Calibrate ``network.readout`` on labelled source-site frames and rewrite ``model_file`` with it (atomically).

    Args:
        network: the bundle's network (``network_def``), built with the dictionary artifact.
        model_file: ``models/model.pt``: read, then rewritten with the ``readout.*`` buffers set.
        datalist: the training datalist (entries with ``site`` and ``confounders``). split: its split to read.
        clip_weights: the CLIP weights whose text tower built the dictionary (checked against the dictionary's hash).
        per_site: at most this many frames of each site (the first ones of the split).
        reference_prompt: the neutral prompt r. false_positive_rate: of the presence thresholds on the source frames.
        report_file: if given, a JSON record of what was set (prompt, rate, frames per site, thresholds, shares).

    Returns:
        The record (also written to ``report_file``).
    """
    import open_clip

    from mcdrl.networks.clip_backbone import create_clip, resolve_weights, weights_sha256

    net = getattr(network, "module", network)
    load_weights_uncalibrated_ok(net, model_file)
    net.eval()
    names = list(net.confounder_names)
    weights = resolve_weights(clip_weights)
    if weights is None:
        raise ConfigError("calibrate_readout needs clip_text_weights: the CLIP weights file whose text tower built the dictionary")
    net.dictionary.check_clip_identity(net.backbone.model_name, weights_sha256(weights))
    clip = create_clip(net.backbone.model_name, weights)
    with torch.no_grad():
        reference = F.normalize(clip.encode_text(open_clip.get_tokenizer(net.backbone.model_name)([reference_prompt])).float(), dim=-1)[0]
    del clip
    entries, per_site_taken = _source_frames(datalist, split, int(per_site))
    unknown = sorted({c for e in entries for c in e["confounders"] if c not in names})
    if unknown:
        raise ConfigError(f"{datalist}: confounders {unknown} are not in the model's dictionary {names}")
    labels = torch.tensor([[n in e["confounders"] for n in names] for e in entries], dtype=torch.bool)
    emb = _embeddings(net, entries, int(batch_size))
    record = net.readout.set_calibration(reference, emb, labels, net.dictionary.confounders, float(false_positive_rate))
    state = net.state_dict()
    with atomic_path(model_file) as tmp:
        torch.save(state, tmp)
    doc = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "model_file": Path(model_file).name, "datalist": Path(datalist).name,
           "split": split, "frames_per_site": per_site_taken, "reference_prompt": reference_prompt,
           "false_positive_rate": float(false_positive_rate), "confounders": names,
           **{k: ([round(float(v), 5) for v in val] if isinstance(val, list) else val) for k, val in record.items()}}
    if names != CONFOUNDERS:
        doc["note"] = "the dictionary's confounders differ from the default vocabulary"
    if report_file:
        with atomic_path(report_file) as tmp:
            Path(tmp).write_text(json.dumps(doc, indent=1) + "\n")
    logger.info("confounder readout calibrated on %d source frames (%s); written into %s", len(entries), per_site_taken, model_file)
    return doc
