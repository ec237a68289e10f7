"""Fit the presence probe on source-site frames and store it in ``model.pt`` (the ``calibrate_presence`` run) [ours].

::

    python -m monai.bundle run calibrate_presence \\
        --config_file "['bundle/configs/inference.json','bundle/configs/presence_probe.json']"

:class:`mcdrl.networks.presence.PresenceProbe` is a linear lesion score on the trained network's image embedding
F_vis. It is fitted here, after training, in three steps:

1. **Frames.** The training datalist's frames of the source sites, and ``copies`` do(z) copies of each
   (``doz="all"``; ``"negatives"``: of the lesion-free frames only; ``"none"``: no copies). A do(z) copy is the
   frame with 1-2 dictionary confounders applied as image effects (:class:`mcdrl.transforms.RandConfounder`, the
   generator's effect functions), then the bundle's photometric augmentation: the confounders are set by us, so
   they carry no information about the lesion (the backdoor adjustment's world).
2. **Fit.** A class-balanced, L2-regularised logistic regression on n(F_vis) (each dimension standardised; the
   standardisation is folded into the stored weight). The L2 strength is the one of ``l2_grid`` with the best mean
   leave-one-*site*-out AUC, each left-out site scored on its frames as they are, so it is chosen for a site the
   probe did not see.
3. **Threshold.** The presence threshold is chosen again, on the validation split, by the validator's rule
   (:func:`mcdrl.engines.presence.best_threshold`: the best mean per-image Dice of the post-processed masks), since
   the old one belongs to the old score.

``model.pt`` is rewritten atomically with the ``presence_probe.*`` buffers and the new ``presence_threshold``. A
``model.pt`` without ``presence_probe.*`` keys (trained before, or without the probe) is accepted and completed; every
other key must match. The run then rewrites ``large_files.yml`` (the sha256 of ``model.pt`` changed). Run it after every
retraining of a model that uses the probe.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from mcdrl.errors import ConfigError, InputFileError
from mcdrl.utils import atomic_path

from .presence import best_threshold
from .readout_calibration import load_weights_uncalibrated_ok

__all__ = ["DOZ_MODES", "PROBE_PREFIX", "calibrate_presence", "choose_l2", "doz_copy", "fit_probe", "probe_auc"]

logger = logging.getLogger(__name__)
PROBE_PREFIX = "presence_probe."
#: which frames get do(z) copies
DOZ_MODES = ("all", "negatives", "none")


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-8)


def fit_probe(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """Class-balanced L2 logistic regression on L2-normalised, standardised features.

    Args:
        x: (N, d) image embeddings. y: (N,) bool, lesion frames. l2: the penalty on the standardised weights.

    Returns:
        (weight (d,), bias) of the score ``w . n(x) + b`` (the standardisation folded in).
    """
    y = np.asarray(y, bool)
    if y.all() or not y.any():
        raise ConfigError(f"the presence probe needs lesion and lesion-free frames; got {int(y.sum())} lesion frames of {y.size}")
    xn = _normalise(np.asarray(x, np.float64))
    mu, sd = xn.mean(0), np.maximum(xn.std(0), 1e-6)
    xt = torch.from_numpy((xn - mu) / sd)
    yt = torch.from_numpy(y.astype(np.float64))
    wt = torch.where(yt > 0, 0.5 / yt.mean(), 0.5 / (1 - yt.mean()))
    w = torch.zeros(xt.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        bce = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b, yt, reduction="none")
        loss = (wt * bce).mean() + 0.5 * float(l2) * (w @ w)
        loss.backward()
        return loss

    opt.step(closure)
    w_std = w.detach().numpy() / sd
    return w_std, float(b.detach()) - float(w_std @ mu)


def probe_auc(x: np.ndarray, y: np.ndarray, weight: np.ndarray, bias: float) -> float:
    """AUC of the probe's score (lesion frames against lesion-free ones); ties count half."""
    s = _normalise(np.asarray(x, np.float64)) @ weight + bias
    y = np.asarray(y, bool)
    pos, neg = s[y], s[~y]
    if not pos.size or not neg.size:
        return float("nan")
    return float(((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (pos.size * neg.size))


def choose_l2(x: np.ndarray, y: np.ndarray, site: np.ndarray, original: np.ndarray, grid) -> tuple[float, dict]:
    """The L2 strength of ``grid`` with the best mean leave-one-site-out AUC, and each value's mean AUC.

    Args:
        x, y, site: (N, d), (N,), (N,) the fitting set (frames and their do(z) copies). original: (N,) bool, the
            frames as they are (the left-out site is scored on those only).

    A site is left out only when the other sites hold both classes and it does too; with no such site the middle
    value of ``grid`` is used, and the record says so.
    """
    y = np.asarray(y, bool)
    usable = [s for s in sorted(set(site.tolist()))
              if len(set(y[site != s].tolist())) == 2 and len(set(y[(site == s) & original].tolist())) == 2]
    if not usable:
        best = float(grid[len(grid) // 2])
        return best, {"note": f"no site can be left out (each needs lesion and lesion-free frames, and so must the rest); the middle value {best} is used"}
    scores = {}
    for l2 in grid:
        aucs = []
        for s in usable:
            w, b = fit_probe(x[site != s], y[site != s], l2)
            held = (site == s) & original
            aucs.append(probe_auc(x[held], y[held], w, b))
        scores[str(l2)] = round(float(np.mean(aucs)), 4)
    best = max(grid, key=lambda v: scores[str(v)])
    return float(best), {**scores, "sites_left_out": usable}


def doz_copy(image: np.ndarray, seed: int) -> np.ndarray:
    """One do(z) copy of an (H, W, 3) uint8 frame: 1-2 dictionary confounders, then the photometric augmentation
    (each transform with probability 0.5). Deterministic given ``seed``."""
    from monai.transforms import Compose

    from mcdrl.transforms import RandConfounder, photometric_augmentation

    conf = RandConfounder(prob=1.0, max_per_image=2)
    conf.set_random_state(seed)
    photo = Compose(photometric_augmentation("image", strength=1.0, prob=0.5))
    photo.set_random_state(seed + 1)
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
    x = torch.as_tensor(photo({"image": conf(x)})["image"]).clamp(0, 1)
    return (x.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


def _frames(datalist, split: str, label_threshold) -> list[dict]:
    from PIL import Image

    from mcdrl.transforms import binarize_mask

    from .training import load_datalist

    entries = load_datalist(datalist, split)
    if not entries:
        raise InputFileError(f"{datalist}: split {split!r} has no entries to fit the presence probe on")
    out = []
    for e in entries:
        try:
            image = np.asarray(Image.open(e["image"]).convert("RGB"))
            mask = binarize_mask(Image.open(e["label"]), label_threshold, e["label"])
        except InputFileError:
            raise
        except Exception as err:  # noqa: BLE001 - name the file
            raise InputFileError(f"{e['image']}: unreadable frame for the presence probe ({type(err).__name__}: {err})") from err
        out.append({"image": image, "mask": np.asarray(mask, bool), "site": str(e.get("site"))})
    return out


@torch.no_grad()
def _embed(net, images: list[np.ndarray], batch_size: int) -> np.ndarray:
    """F_vis (N, d) of (H, W, 3) uint8 frames (batched while the size stays the same)."""
    out, s = [], 0
    while s < len(images):
        part = [images[s]]
        while s + len(part) < len(images) and len(part) < batch_size and images[s + len(part)].shape == images[s].shape:
            part.append(images[s + len(part)])
        x = torch.stack([torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float() / 255.0 for a in part])
        out.append(net.backbone.forward_tokens(net._resize_in(x))[1].float().numpy())
        s += len(part)
    return np.concatenate(out)


@torch.no_grad()
def _validation_dice(net, frames: list[dict], post) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame Dice of the post-processed masks with the presence decision open, and the lesion scores (N,), (N,)."""
    dice, scores = [], []
    for f in frames:
        x = torch.from_numpy(np.ascontiguousarray(f["image"])).permute(2, 0, 1).float()[None] / 255.0
        logits, score = net.forward_with_score(x)
        pred = post((logits[0, 1] > logits[0, 0]).to(torch.uint8).numpy()) > 0
        gt = f["mask"]
        denom = int(pred.sum() + gt.sum())
        dice.append(1.0 if denom == 0 else 2.0 * float((pred & gt).sum()) / denom)
        scores.append(float(score[0]))
    return np.array(dice), np.array(scores)


def calibrate_presence(network: torch.nn.Module, model_file: str | os.PathLike, datalist: str | os.PathLike, split: str = "training",
                       validation_split: str = "validation", doz: str = "all", copies: int = 2, l2_grid=(1e-2, 1e-1, 1.0),
                       seed: int = 0, label_threshold="auto", min_lesion_fraction: float = 0.0, keep_largest_lesion: bool = False,
                       report_file: str | os.PathLike | None = None, batch_size: int = 16) -> dict:
    """Fit ``network.presence_probe`` on the source sites, choose the presence threshold again, rewrite ``model_file``.

    Args:
        network: the bundle's network (``network_def``) built with a presence probe (``configs/presence_probe.json``).
        model_file: ``models/model.pt``: read, then rewritten (atomically) with the probe and the new threshold.
        datalist: the training datalist. split: the split the probe is fitted on. validation_split: the split the
            threshold is chosen on.
        doz: ``"all"``, ``"negatives"`` or ``"none"``: which frames get do(z) copies. copies: how many per frame.
        l2_grid: the L2 strengths tried (leave-one-site-out). seed: of the do(z) copies.
        label_threshold: how masks are binarised (the training's ``label_threshold``).
        min_lesion_fraction, keep_largest_lesion: the bundle's post-processing (the validator scores with it).
        report_file: if given, a JSON record of the fit.

    Returns:
        The record (also written to ``report_file``).
    """
    from mcdrl.transforms import LesionPostprocess

    net = getattr(network, "module", network)
    if getattr(net, "presence_probe", None) is None:
        raise ConfigError("calibrate_presence needs a network built with a presence probe: add bundle/configs/presence_probe.json to --config_file")
    if doz not in DOZ_MODES:
        raise ConfigError(f"doz must be one of {list(DOZ_MODES)}, got {doz!r}")
    if int(copies) < 0:
        raise ConfigError(f"copies must be >= 0, got {copies!r}")
    model_file = Path(model_file)
    load_weights_uncalibrated_ok(net, model_file, (PROBE_PREFIX,))
    net.eval()
    frames = _frames(datalist, split, label_threshold)
    images = [f["image"] for f in frames]
    y0 = np.array([f["mask"].any() for f in frames])
    site0 = np.array([f["site"] for f in frames])
    x, y, site, original = [_embed(net, images, batch_size)], [y0], [site0], [np.ones(len(frames), bool)]
    take = {"all": np.ones(len(frames), bool), "negatives": ~y0, "none": np.zeros(len(frames), bool)}[doz]
    picked = [i for i in range(len(frames)) if take[i]]
    for c in range(int(copies) if picked else 0):
        x.append(_embed(net, [doz_copy(images[i], int(seed) + 100_003 * c + i) for i in picked], batch_size))
        y.append(y0[picked]), site.append(site0[picked]), original.append(np.zeros(len(picked), bool))
    x, y, site, original = np.concatenate(x), np.concatenate(y), np.concatenate(site), np.concatenate(original)
    n_frames = len(frames)
    del images, frames  # the pixels are not needed again; the validation frames are read next
    l2, inner = choose_l2(x, y, site, original, list(l2_grid))
    weight, bias = fit_probe(x, y, l2)
    net.presence_probe.set_weights(torch.from_numpy(weight).float(), bias)

    val = _frames(datalist, validation_split, label_threshold)
    post = LesionPostprocess(float(min_lesion_fraction), bool(keep_largest_lesion))
    dice, scores = _validation_dice(net, val, post)
    empty = np.array([not f["mask"].any() for f in val])
    old_threshold = float(net.presence_threshold)
    threshold, best = best_threshold(scores, dice, empty)
    net.presence_threshold.fill_(threshold)
    with atomic_path(model_file) as tmp:
        torch.save(net.state_dict(), tmp)
    doc = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "model_file": model_file.name, "datalist": Path(datalist).name,
           "split": split, "frames": int(n_frames), "lesion_frames": int(y0.sum()), "doz": doz, "copies": int(copies),
           "fitting_rows": int(len(y)), "seed": int(seed), "l2": l2, "l2_leave_one_site_out_auc": inner,
           "validation_split": validation_split, "validation_frames": int(len(val)),
           "presence_threshold": round(threshold, 5), "previous_presence_threshold": round(old_threshold, 5),
           "validation_dice": round(best, 4), "validation_dice_ungated": round(float(dice.mean()), 4)}
    if report_file:
        with atomic_path(report_file) as tmp:
            Path(tmp).write_text(json.dumps(doc, indent=1) + "\n")
    logger.info("presence probe fitted on %d rows (%d frames, do(z) %s x%d, l2 %g); threshold %.4f (validation Dice %.4f); written into %s",
                len(y), n_frames, doz, int(copies), l2, threshold, best, model_file)
    return doc
