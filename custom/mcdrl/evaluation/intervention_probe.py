"""What the first optimizer steps after the switch-on do to the features the intervention writes (issue 22).

Switching the causal intervention on after ``causal_start_epoch`` hands the head new features. This probe measures
how far they move: it builds the bundle's network from ``train.json`` (plus variant files and overrides), loads the
shipped weights, switches the intervention on, and takes ``steps`` AdamW steps of batch ``batch`` on ``n_images``
source-site frames with the configured loss, optimizer groups and warm-up. After every step it records, on a fixed
probe batch in eval mode:

* ``shift``: ||F_ca - F|| / ||F|| over the MTRS positions (F the selected tokens, F_ca what the intervention writes);
* ``coherence``: the mean cosine of each token's shift (F_ca - F) with the mean shift over all probe tokens: near 1
  means one constant vector is added to every token (an offset, not an image-dependent intervention);
* ``train_dice``: the Dice of the step's training batch (before the step), to see whether segmentation suffers.

Each configuration (a set of overrides) starts from the same weights and sees the same batches::

    python -m mcdrl.evaluation.intervention_probe                      # the table in experiments/intervention_probe.md
    python -m mcdrl.evaluation.intervention_probe --steps 12 --batch 8 --n_images 30
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

from mcdrl.paths import default_bundle_root

__all__ = ["CONFIGURATIONS", "probe", "token_shift"]

#: name -> overrides of train.json: release 0.7's intervention as it was trained, each fix alone, and all of them
CONFIGURATIONS: dict[str, dict] = {
    "0.7 (zero-init, shared lr, L_causal off)": {"lambda_causal": 0.0},
    "0.7 + L_causal 0.5 (mse)": {"lambda_causal": 0.5},
    "paper lr 5e-3 + L_causal 0.5": {"lambda_causal": 0.5, "learning_rate": 0.005},
    "gated residual": {"lambda_causal": 0.5, "intervention_residual": "gated"},
    "own lr x0.1 + 1-epoch warm-up": {"lambda_causal": 0.5, "intervention_lr_scale": 0.1, "intervention_warmup_epochs": 1},
    "L_causal as anchor CE": {"lambda_causal": 0.5, "causal_loss": "anchor_ce"},
    "head reads [C, F_ca]": {"lambda_causal": 0.5, "head_input": "both"},
    "all fixes (cdrl.json)": "cdrl.json",
}


def token_shift(before: torch.Tensor, after: torch.Tensor) -> tuple[float, float]:
    """(||after - before|| / ||before||, mean cosine of each token's shift with the mean shift) for (T, d) tokens."""
    delta = (after - before).double()
    shift = float(delta.norm() / before.double().norm().clamp_min(1e-12))
    mean = delta.mean(0, keepdim=True)
    if float(mean.norm()) < 1e-12:
        return shift, 0.0
    return shift, float(torch.nn.functional.cosine_similarity(delta, mean.expand_as(delta), dim=-1).mean())


def _frames(n: int, seed: int, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` frames of sites A-E: images (n, 3, S, S) in [0, 1], labels (n, 1, S, S), class indices (n,) (-1 none)."""
    from mcdrl.networks.prompts import LESION_CLASSES
    from mcdrl.synthetic import SITES, sample_case

    cases = [sample_case(SITES["ABCDE"[i % 5]], seed + i, size) for i in range(n)]
    img = torch.from_numpy(np.stack([c.image for c in cases])).permute(0, 3, 1, 2).float() / 255
    lab = torch.from_numpy(np.stack([c.mask for c in cases]))[:, None].float()
    cls = torch.tensor([LESION_CLASSES.index(c.lesion_class) if c.lesion_class in LESION_CLASSES else -1 for c in cases])
    return img, lab, cls


def _build(bundle: Path, overrides: dict | str, weights: Path):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    files = [bundle / "configs" / "train.json"] + ([bundle / "configs" / overrides] if isinstance(overrides, str) else [])
    parser.read_config([str(f) for f in files])
    parser.update({"bundle_root": str(bundle), "device": "$torch.device('cpu')", "displayable_configs#use_intervention": True})
    if isinstance(overrides, dict):
        parser.update(overrides)
    net = parser.get_parsed_content("network")
    # the intervention never trained in the shipped model (it ships off): every configuration starts from its own
    # fresh initialisation (zero-initialised branches, or gates at 0 over default-initialised branches), seeded
    state = {k: v for k, v in torch.load(weights, map_location="cpu", weights_only=True).items() if not k.startswith("intervention.")}
    w = state["head.proj.0.weight"]
    if net.head_input == "both" and w.shape[1] * 2 == net.head.proj[0].in_channels:
        # a head trained on C alone reads [C, C] (the intervention off) identically with its weights split in halves
        state = {**state, "head.proj.0.weight": torch.cat([w / 2, w / 2], dim=1)}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("intervention.") for k in missing):
        raise RuntimeError(f"{weights}: keys do not fit this configuration: missing {missing}, unexpected {unexpected}")
    loss = parser.get_parsed_content("loss")
    optimizer = parser.get_parsed_content("optimizer")
    warmup = float(parser.get_parsed_content("intervention_warmup_epochs") or 0)
    return net, loss, optimizer, warmup


def _selected(net, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode (F, F_ca) at the MTRS positions of ``x``: (B * N, d) each."""
    with torch.no_grad():
        tokens = net.backbone.forward_dense(net._resize_in(x))
        d = net.dictionary
        idx, _ = net.selector(tokens, d.class_embeddings, d.background_embedding)
        f = torch.gather(tokens, 1, idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        f_ca = net.intervention(f, d.confounders.to(f.dtype))
    return f.flatten(0, 1), f_ca.flatten(0, 1)


def probe(bundle: Path, weights: Path, overrides: dict | str, steps: int = 12, batch: int = 8, n_images: int = 30, seed: int = 0,
          epoch_length: int = 355, size: int = 224) -> list[dict]:
    """One configuration: per step ``{"step", "shift", "coherence", "train_dice", "lr_factor"}`` (step 0: before any)."""
    from monai.metrics import compute_dice

    from mcdrl.engines.handlers import InterventionSchedule

    torch.manual_seed(seed)
    net, loss, optimizer, warmup = _build(bundle, overrides, weights)
    schedule = InterventionSchedule(net, start_epoch=0, optimizer=optimizer, warmup_epochs=warmup)
    img, lab, cls = _frames(n_images, seed, size)
    probe_x = img[:batch]
    net.intervention_active = True
    rows = []
    net.eval()
    f, f_ca = _selected(net, probe_x)
    rows.append({"step": 0, "shift": token_shift(f, f_ca)[0], "coherence": 0.0, "train_dice": None, "lr_factor": 0.0})
    order = torch.randperm(n_images, generator=torch.Generator().manual_seed(seed))
    for step in range(1, steps + 1):
        pick = order[torch.arange((step - 1) * batch, step * batch) % n_images]
        net.train()
        out = net(img[pick])
        total = loss(out, {"label": lab[pick], "lesion_class": cls[pick]})
        dice = float(compute_dice(out["pred"].argmax(1, keepdim=True).eq(1).float(), lab[pick], ignore_empty=False).nanmean())
        optimizer.zero_grad()
        total.backward()
        factor = schedule.warmup_factor(step, epoch_length) if warmup > 0 else 1.0
        groups = [(g, g["lr"]) for g in optimizer.param_groups if g.get("name") == "intervention"]
        for g, lr in groups:
            g["lr"] = lr * factor
        optimizer.step()
        for g, lr in groups:
            g["lr"] = lr
        net.eval()
        f, f_ca = _selected(net, probe_x)
        shift, coherence = token_shift(f, f_ca)
        rows.append({"step": step, "shift": shift, "coherence": coherence, "train_dice": dice, "lr_factor": factor})
    return rows


def _markdown(results: dict[str, list[dict]], args: argparse.Namespace) -> str:
    lines = [
        "# The first steps after the intervention is switched on",
        "",
        f"Generated by `python -m mcdrl.evaluation.intervention_probe --steps {args.steps} --batch {args.batch} --n_images {args.n_images}`"
        " on the shipped weights (`models/model.pt`), with the intervention switched on; do not edit by hand.",
        "`shift` = ||F_ca - F|| / ||F|| over the MTRS positions of a fixed probe batch (0 = the intervention changes nothing);",
        "`coherence` = mean cosine of each token's shift with the mean shift (1 = one constant offset added to every token).",
        "",
        "| configuration | shift after 1 step | after 3 | after 12 | coherence after 12 | train Dice (mean of steps) |",
        "|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        at = {r["step"]: r for r in rows}
        last = rows[-1]
        dice = [r["train_dice"] for r in rows if r["train_dice"] is not None]
        lines.append(f"| {name} | {at[1]['shift']:.3g} | {at[min(3, last['step'])]['shift']:.3g} | {last['shift']:.3g} | "
                     f"{last['coherence']:.2f} | {float(np.mean(dice)):.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle_root", default=str(default_bundle_root()))
    p.add_argument("--weights", default=None, help="default: <bundle_root>/models/model.pt")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--n_images", type=int, default=30)
    p.add_argument("--only", nargs="*", default=None, help="configuration names to run (default: all)")
    p.add_argument("--out", default=None, help="default: <bundle_root>/docs/results/experiments/intervention_probe")
    a = p.parse_args(argv)
    bundle = Path(a.bundle_root)
    weights = Path(a.weights) if a.weights else bundle / "models" / "model.pt"
    out = Path(a.out) if a.out else bundle / "docs" / "results" / "experiments" / "intervention_probe"
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    results = {}
    for name, overrides in CONFIGURATIONS.items():
        if a.only and name not in a.only:
            continue
        results[name] = probe(bundle, weights, overrides, a.steps, a.batch, a.n_images)
        r = results[name]
        print(f"{name}: shift {r[1]['shift']:.3g} after 1 step, {r[-1]['shift']:.3g} after {a.steps}; coherence {r[-1]['coherence']:.2f}", flush=True)
    from mcdrl.utils import atomic_path

    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "probe.json") as tmp:
        Path(tmp).write_text(json.dumps({"steps": a.steps, "batch": a.batch, "n_images": a.n_images, "weights": weights.name,
                                         "configurations": {k: v for k, v in CONFIGURATIONS.items() if k in results},
                                         "results": results}, indent=1) + "\n")
    with atomic_path(out / "README.md") as tmp:
        Path(tmp).write_text(_markdown(results, a))
    print(f"wrote {out / 'README.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
