"""A trained lesion score, chosen on held-out *source* sites (issue 23, item 2, without F or G).

``../head_source_sites/`` found the presence decision's limit: the shipped lesion score (1 - P(normal mucosa | F_vis),
the CLIP image embedding against the prompts, ``clip`` below) ranks a held-out source site's frames with AUC 0.68-0.89,
and at four of five such sites no threshold meets issue 23's two presence targets. Issue 23 asks for the presence term
to be *trained* on lesion-free frames given the dictionary's confounders and photometric shifts (do(z) on negatives).
This script tests that as a linear probe on F_vis, fitted after training, for each of the five text-query models of
``../head_source_sites/run.py`` (trained on four of A-E, seed 0, 2 epochs; retrained here with the same command when
the scratch folder lacks them):

* ``probe``: L2 logistic regression, lesion against lesion-free, on the L2-normalised F_vis of the four training
  sites' training frames as they are;
* ``probe_doz_neg``: the same, plus ``copies`` do(z) copies of each *lesion-free* frame (issue 23's wording);
* ``probe_doz_all``: the same, plus ``copies`` do(z) copies of *every* frame, so that the added confounders are
  independent of the label (the backdoor adjustment's world).

A do(z) copy: 1-2 of the 12 dictionary confounders applied as image effects (:class:`mcdrl.transforms.RandConfounder`,
the generator's own effect functions), then the bundle's photometric augmentation (strength 1, each transform with
probability 0.5). The probe's L2 strength is chosen by leave-one-*training*-site-out AUC (3 values), so the held-out
site chooses nothing inside a fold.

Each score is then read at the fold's held-out source site exactly as ``../head_source_sites/profile_check.py`` reads
the shipped one (300 scored frames, 60 other frames for the profile, the evaluation's seeds):

* AUC (lesion frames against lesion-free ones);
* the presence threshold chosen as the bundle's validator chooses it (:func:`mcdrl.engines.presence.best_threshold`,
  the best mean per-image Dice on the four training sites' validation frames): false alarms and lesion-level
  sensitivity ("uncalibrated"), and the mean per-image Dice of the 300 frames with that presence decision. For
  ``clip`` the model's stored threshold is used, as published;
* the site profile's mixture threshold on the 60 profile frames' scores (:func:`mcdrl.io.site_profile.choose_threshold`);
* the label-reading ceiling: the most sensitivity any threshold keeps at <= 20% false alarms.

No frame of F, G or any other site is read. Writes ``runs.json`` beside this file (one record per fold; finished
folds are kept, so the script resumes). The rule that reads it is in ``README.md``, written before any fold ran.

    PYTHONPATH=custom HF_HUB_OFFLINE=1 .venv/bin/python bundle/docs/results/experiments/presence_source_sites/run.py \
        --scratch /work/logs/head_source_sites
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[4]
SITES = ("A", "B", "C", "D", "E")
PROBES = ("probe", "probe_doz_neg", "probe_doz_all")
L2_GRID = (1e-3, 1e-2, 1e-1)  # on standardised features


def _head_run():
    """``../head_source_sites/run.py`` (its training command), loaded by path."""
    spec = importlib.util.spec_from_file_location("head_source_sites_run", HERE.parent / "head_source_sites/run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _Capture(torch.nn.Module):
    """Wraps an MCDRLNet for ``score_images``: the gate open, and each frame's F_vis (d,) and CLIP lesion score kept."""

    def __init__(self, net: torch.nn.Module, dense: bool = False):
        super().__init__()
        self.net, self.dense, self.f_vis, self.clip = net, dense, [], []

    def forward_with_score(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.net
        raw, pooled = net.backbone.forward_tokens(net._resize_in(x))
        tokens, regions, _ = net._regions(raw)
        score = net.lesion_score(pooled)
        self.f_vis.append(_features(pooled, raw, regions, self.dense))
        self.clip.append(score.float())
        return net._decode(tokens, x, pooled), score

    def gate(self, logits: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        return logits

    def features(self) -> tuple[np.ndarray, np.ndarray]:
        return torch.cat(self.f_vis).numpy(), torch.cat(self.clip).numpy()


def _features(pooled: torch.Tensor, raw: torch.Tensor, regions: torch.Tensor, dense: bool) -> torch.Tensor:
    """What a probe reads: F_vis (B, d); with ``dense`` (run 3), [n(F_vis), n(mean of the MTRS region tokens),
    n(max over the grid of the dense tokens)] (B, 3d)."""
    if not dense:
        return pooled.float()
    n = torch.nn.functional.normalize
    return torch.cat([n(pooled.float(), dim=-1), n(regions.float().mean(1), dim=-1), n(raw.float().amax(1), dim=-1)], dim=-1)


@torch.no_grad()
def _f_vis(net: torch.nn.Module, images: list[np.ndarray], batch_size: int = 16, dense: bool = False) -> np.ndarray:
    """The probe's features (N, d), or (N, 3d) with ``dense``, of (H, W, 3) uint8 frames."""
    out = []
    for s in range(0, len(images), batch_size):
        x = torch.stack([torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).float() / 255.0 for a in images[s: s + batch_size]])
        raw, pooled = net.backbone.forward_tokens(net._resize_in(x))
        regions = net._regions(raw)[1] if dense else None
        out.append(_features(pooled, raw, regions, dense))
    return torch.cat(out).numpy()


def probe_score(x: np.ndarray, w: np.ndarray, b: float) -> np.ndarray:
    """The shipped probe's score (:class:`mcdrl.networks.presence.PresenceProbe`) of F_vis rows: (N, d) -> (N,)."""
    from mcdrl.networks.presence import PresenceProbe

    probe = PresenceProbe(x.shape[1])
    probe.set_weights(torch.from_numpy(w).float(), b)
    with torch.no_grad():
        return probe(torch.from_numpy(x).float()).double().numpy()


def _training_set(feats: dict, variant: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(features, labels, site, is-original) of one probe variant from the fold's training-frame features."""
    n = feats["y"].size
    x, y, site, orig = [feats["x"]], [feats["y"]], [feats["site"]], [np.ones(n, bool)]
    if variant != "probe":
        keep = ~feats["y"] if variant == "probe_doz_neg" else np.ones(n, bool)
        for xc in feats["x_doz"]:
            x.append(xc[keep]), y.append(feats["y"][keep]), site.append(feats["site"][keep]), orig.append(np.zeros(int(keep.sum()), bool))
    return np.concatenate(x), np.concatenate(y), np.concatenate(site), np.concatenate(orig)


def run_fold(held_out: str, scratch: Path, copies: int, seed: int, l2_grid=L2_GRID, dense: bool = False) -> dict:
    from mcdrl.engines.presence import best_threshold as validator_threshold
    from mcdrl.engines.presence_calibration import choose_l2, doz_copy, fit_probe
    from mcdrl.evaluation.clip_probe import auc
    from mcdrl.evaluation.confounder_readout import render_site
    from mcdrl.evaluation.scoring import build_bundle_network, load_labelled_images, score_images
    from mcdrl.evaluation.site_profile import TARGETS, best_threshold, gated
    from mcdrl.io.site_profile import choose_threshold
    from mcdrl.synthetic import SITES as SPECS

    t0 = time.time()
    run_dir = scratch / f"text_queries_{held_out}"
    ckpt = run_dir / "models/model.pt"
    trained_here = None
    if not ckpt.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        trained_here = round(_head_run()._train("text_queries", held_out, run_dir, 2), 1)
    net, post = build_bundle_network(str(REPO / "bundle/configs/inference.json"), ckpt, {"bundle_root": str(REPO / "bundle")})
    stored_threshold = float(net.presence_threshold)
    train_sites = [s for s in SITES if s != held_out]
    datalist = REPO / "data/synthetic/datalist.json"

    # the probe's training frames: the four training sites' training split, and do(z) copies of them (the package's
    # own copy function, seeded per frame and copy as calibrate_presence seeds them)
    frames = load_labelled_images(datalist, "training", train_sites)
    images = [f["image"] for f in frames]
    feats = {"x": _f_vis(net, images, dense=dense), "y": np.array([bool(f["mask"].any()) for f in frames]),
             "site": np.array([f["site"] for f in frames]),
             "x_doz": [_f_vis(net, [doz_copy(a, seed + 100_003 * c + i) for i, a in enumerate(images)], dense=dense) for c in range(copies)]}
    del images, frames

    # the validator's frames (threshold choice) and the held-out site's frames, segmented once with the gate open
    def capture(items: list[dict]) -> tuple[list[dict], np.ndarray, np.ndarray]:
        wrapped = _Capture(net, dense)
        recs = score_images(wrapped, items, post)
        return (recs, *wrapped.features())

    val = load_labelled_images(datalist, "validation", train_sites)
    val_recs, val_x, val_clip = capture(val)
    spec = SPECS[held_out]
    scored = [{"id": f"{held_out}_{i:05d}", "site": held_out, "lesion_class": c.lesion_class, "image": c.image, "mask": c.mask > 0}
              for i, c in enumerate(render_site(spec, 300, 23, "site_profile/score"))]
    recs, x_ho, clip_ho = capture(scored)
    prof_images = [c.image for c in render_site(spec, 60, 23, "site_profile/profile")]
    prof_x = _f_vis(net, prof_images, dense=dense)
    with torch.no_grad():
        prof_clip = net.lesion_score(torch.from_numpy(_f_vis(net, prof_images))).numpy()
    lesion = np.array([r["lesion"] for r in recs])

    scores = {"clip": (clip_ho, val_clip, prof_clip)}
    probes = {}
    for variant in PROBES:
        x, y, site, orig = _training_set(feats, variant)
        l2, inner = choose_l2(x, y, site, orig, list(l2_grid))
        w, b = fit_probe(x, y, l2)
        probes[variant] = {"l2": l2, "inner_auc": inner, "n_train": int(len(y)), "lesion_share": round(float(y.mean()), 4)}
        scores[variant] = (probe_score(x_ho, w, b), probe_score(val_x, w, b), probe_score(prof_x, w, b))

    rows = {}
    for name, (s_ho, s_val, s_prof) in scores.items():
        if name == "clip":
            t_val = stored_threshold
        else:
            t_val = validator_threshold(s_val, np.array([r["dice"] for r in val_recs]), np.array([not r["lesion"] for r in val_recs]))[0]
        for r, v in zip(recs, s_ho):
            r["lesion_score"] = float(v)
        mixture = choose_threshold(s_prof, "mixture")["value"]
        kept = s_ho >= t_val
        dice = np.where(kept, [r["dice"] for r in recs], (~lesion).astype(float))  # an emptied mask scores 1 on a lesion-free frame
        row = {"auc": round(auc(s_ho, lesion), 4), "threshold": round(float(t_val), 4), "dice": round(float(dice.mean()), 4),
               "uncalibrated": gated(recs, t_val), "profile: mixture": gated(recs, mixture),
               "reference (labels)": best_threshold(recs, TARGETS["false_alarm_max"]),
               "lesion_free_score": {"validation_median": round(float(np.median(s_val[[not r["lesion"] for r in val_recs]])), 4),
                                     "held_out_median": round(float(np.median(s_ho[~lesion])), 4)}}
        row["profile: mixture"]["sensitivity_drop"] = round(row["uncalibrated"]["sensitivity"] - row["profile: mixture"]["sensitivity"], 4)
        rows[name] = row
    # reproduction check: the stored threshold against the one the validator's rule picks from these validation frames
    clip_val_threshold = validator_threshold(val_clip, np.array([r["dice"] for r in val_recs]), np.array([not r["lesion"] for r in val_recs]))[0]
    return {"held_out": held_out, "copies": copies, "seed": seed, "trained_here_s": trained_here,
            "stored_threshold": round(stored_threshold, 4), "clip_threshold_recomputed": round(float(clip_val_threshold), 4),
            "n_scored": len(recs), "n_lesion_free": int((~lesion).sum()), "probes": probes, "scores": rows,
            "wall_s": round(time.time() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scratch", required=True, help="the text-query models of ../head_source_sites (trained here if missing)")
    p.add_argument("--copies", type=int, default=2, help="do(z) copies of each training frame")
    p.add_argument("--seed", type=int, default=97)
    p.add_argument("--sites", nargs="*", default=list(SITES))
    p.add_argument("--l2_grid", nargs="*", type=float, default=list(L2_GRID), help="L2 strengths the inner choice tries")
    p.add_argument("--out", default="runs.json", help="results file beside this script")
    p.add_argument("--dense", action="store_true", help="run 3: the probes read F_vis, the MTRS regions' mean token and the grid's max-pooled token")
    a = p.parse_args(argv)
    out = HERE / a.out
    runs = json.loads(out.read_text()) if out.exists() else []
    done = {r["held_out"] for r in runs}
    for s in a.sites:
        if s in done:
            continue
        rec = run_fold(s, Path(a.scratch), a.copies, a.seed, a.l2_grid, a.dense)
        rec["l2_grid"], rec["dense"] = a.l2_grid, a.dense
        runs.append(rec)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(runs, indent=1) + "\n")
        os.replace(tmp, out)
        print(json.dumps({k: rec[k] for k in ("held_out", "stored_threshold", "clip_threshold_recomputed", "wall_s")}),
              json.dumps({n: (v["auc"], v["uncalibrated"]["false_alarm_rate"], v["uncalibrated"]["sensitivity"]) for n, v in rec["scores"].items()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
