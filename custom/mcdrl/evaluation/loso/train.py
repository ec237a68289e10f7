"""One benchmark run: train a method with one held-out site and one seed, select the epoch on source
validation, and score every image of the held-out site.

Pairing: the batch order and the view drawn for each image come from a generator seeded by (seed, held-out
site) only, so every method sees the same images in the same order; the network's initialisation is seeded
by ``seed``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch

from mcdrl.engines.training import param_groups
from mcdrl.evaluation.metrics import per_image_metrics
from mcdrl.networks.losses import MCDRLLoss

from .features import apply_flip
from .methods import Method
from .model import build_network, forward_cached, forward_diagnostics
from .profiles import Profile
from .world import World

__all__ = ["RunContext", "batch_dice", "run_one"]


@dataclass
class RunContext:
    """What every run of a worker shares: the frozen backbone, the world, the token cache and the dictionaries.

    ``dictionaries`` maps a dictionary size (None = the main artifact) to ``(path, M)``.
    """

    profile: Profile
    backbone: object
    world: World
    features: dict
    dictionaries: dict


def batch_dice(pred: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Per-image foreground Dice of binary (B, H, W) masks; empty label + empty prediction = 1 (the
    :func:`mcdrl.evaluation.metrics.per_image_metrics` rule, vectorised for validation). Returns (B,)."""
    p, y = pred.flatten(1).bool(), label.flatten(1).bool()
    inter = (p & y).sum(1).float()
    denom = (p.sum(1) + y.sum(1)).float()
    return torch.where(denom > 0, 2 * inter / denom.clamp(min=1), torch.ones_like(denom))


def _binary(logits: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W) logits -> (B, H, W) lesion mask; == ``argmax(1)`` (ties go to background) and much faster on CPU."""
    return logits[:, 1] > logits[:, 0]


@torch.no_grad()
def _predict(net, tokens: torch.Tensor, size, batch_size: int = 32) -> torch.Tensor:
    """Binary predictions (B, *size) from cached tokens (B, T, w) in eval mode."""
    net.eval()
    out = [_binary(forward_cached(net, tokens[i : i + batch_size].float(), size)) for i in range(0, tokens.shape[0], batch_size)]
    return torch.cat(out)


def _lesion_tokens(masks: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, H, W) masks -> (B, grid*grid) bool: does the patch's footprint hold any lesion pixel."""
    pooled = torch.nn.functional.adaptive_max_pool2d(masks.float().unsqueeze(1), grid)
    return pooled.flatten(1) > 0


def run_one(ctx: RunContext, method: Method, held_out: str, seed: int) -> dict:
    """Train ``method`` with ``held_out`` held out, return the run's result record (JSON-ready)."""
    t0 = time.perf_counter()
    prof, world, feats, hp = ctx.profile, ctx.world, ctx.features, ctx.profile.train
    settings = method.settings(hp)
    dict_path, num_conf = ctx.dictionaries[settings["dictionary_size"]]
    torch.manual_seed(seed)
    net = build_network(ctx.backbone, dict_path, num_conf, settings, hp["intervention_heads"], prof.decoder_channels, hp["mtrs_scoring"])
    loss_fn = MCDRLLoss(net.dictionary, settings["lambda_causal"], settings["lambda_contrast"], hp["tau"], hp["dice_weight"])
    optimizer = torch.optim.AdamW(param_groups(net, hp["learning_rate"], hp["backbone_lr_scale"], hp["weight_decay"]), lr=hp["learning_rate"])
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=prof.epochs)

    sources = [s for s in prof.sites if s != held_out]
    train_idx, val_idx, test_idx = world.indices(sources, "training"), world.indices(sources, "validation"), world.indices([held_out])
    if len(train_idx) == 0 or len(val_idx) == 0 or len(test_idx) == 0:
        raise ValueError(f"held-out site {held_out}: empty split (train {len(train_idx)}, val {len(val_idx)}, test {len(test_idx)}); enlarge n_per_site")
    rng = np.random.default_rng([seed, prof.sites.index(held_out)])
    tokens = feats["gin" if settings["augmentation"] == "gin" else "flip"]
    labels, classes = feats["label_model"], torch.tensor(world.classes)
    s = ctx.backbone.image_size
    full_size = tuple(world.masks.shape[1:])
    val_masks = torch.from_numpy(world.masks[val_idx])
    val_tokens = feats["flip"][torch.from_numpy(val_idx), 0]  # un-augmented view, for every method
    best_dice, best_state, best_epoch = -1.0, None, -1
    history = []
    for epoch in range(prof.epochs):
        net.train()
        net.intervention_active = epoch >= prof.causal_start
        order = rng.permutation(train_idx)
        views = rng.integers(prof.views, size=len(order))
        terms: dict[str, list[float]] = {}
        for b in range(0, len(order), hp["batch_size"]):
            idx, v = order[b : b + hp["batch_size"]], views[b : b + hp["batch_size"]]
            x = tokens[torch.from_numpy(idx), torch.from_numpy(v)].float()
            lab = torch.stack([apply_flip(labels[i], int(vi)) for i, vi in zip(idx, v)]).unsqueeze(1).long()
            out = forward_cached(net, x, (s, s))
            loss = loss_fn(out, {"label": lab, "lesion_class": classes[torch.from_numpy(idx)]})
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for k, val in loss_fn.last_terms.items():
                terms.setdefault(k, []).append(val)
        scheduler.step()
        record = {"epoch": epoch, "intervention_on": net.applies_intervention, **{f"loss_{k}": float(np.mean(v)) for k, v in terms.items()}}
        if epoch >= prof.causal_start:  # selection window: the configured model (intervention on), source validation only
            val_dice = float(batch_dice(_predict(net, val_tokens, full_size), val_masks).mean())
            record["val_dice"] = val_dice
            if val_dice > best_dice:
                best_dice, best_epoch = val_dice, epoch
                best_state = copy.deepcopy(net.state_dict())
        history.append(record)
    net.load_state_dict(best_state)
    net.eval()
    rows, attention, recalls = _test(net, feats["flip"][torch.from_numpy(test_idx), 0], world, test_idx, full_size, held_out, seed)
    return {
        "method": method.name, "held_out": held_out, "seed": seed, "settings": settings,
        "selected_epoch": best_epoch, "selected_val_dice": best_dice, "history": history, "rows": rows,
        "attention": attention, "confounder_names": list(net.confounder_names),
        "mtrs_lesion_recall": float(np.mean(recalls)) if recalls else None, "alpha": settings["alpha"],
        "wall_s": time.perf_counter() - t0,
    }


@torch.no_grad()
def _test(net, tokens: torch.Tensor, world: World, test_idx: np.ndarray, size, held_out: str, seed: int, batch_size: int = 32):
    rows, attention, recalls = [], [], []
    grid = net.grid_size
    for start in range(0, len(test_idx), batch_size):
        idx = test_idx[start : start + batch_size]
        logits, sel, weights = forward_diagnostics(net, tokens[start : start + batch_size].float(), size)
        pred = _binary(logits).long()
        masks = torch.from_numpy(world.masks[idx])
        lesion_tok = _lesion_tokens(masks, grid)
        chosen = torch.zeros_like(lesion_tok).scatter_(1, sel, True)
        for j, i in enumerate(idx):
            m = per_image_metrics(pred[j], masks[j])
            rows.append({"held_out": held_out, "seed": seed, "id": world.ids[i], "lesion_class": world.classes[i],
                         **{k: round(v, 5) for k, v in m.items()}})
            if lesion_tok[j].any():
                recalls.append(float((chosen[j] & lesion_tok[j]).sum() / lesion_tok[j].sum()))
            if weights is not None:
                attention.append([round(float(w), 5) for w in weights[j]])
    return rows, (attention or None), recalls
