"""Which image-level lesion score ranks best at a held-out source site? (issue 23's presence decision, without F or G)

``profile_check.py`` found that no threshold on the shipped lesion score (1 - P(normal mucosa | F_vis), CLIP's global
embedding against the prompts) meets issue 23's two presence targets at four of the five held-out source sites: the
score ranks too poorly there. This script compares it, on the same models and frames (the text-query models of
``run.py``, 300 frames of each held-out source site rendered with ``profile_check.py``'s seeds), with scores read
from the segmentation itself, which need no training:

* ``clip``: the shipped lesion score;
* ``pixel_max``: the largest lesion probability over the frame (softmax of the logits before the presence decision);
* ``pixel_top1``: the mean of the frame's top 1% lesion probabilities;
* ``area``: the share of the frame with lesion probability > 0.5.

For each: the AUC (lesion frames against lesion-free ones), and the most lesion-level sensitivity any single
threshold keeps at <= 20% false alarms (it reads the labels: a ceiling for every threshold method), beside the
uncalibrated model's sensitivity. Writes ``score_check.json`` beside this file; chooses nothing.

    PYTHONPATH=custom HF_HUB_OFFLINE=1 .venv/bin/python bundle/docs/results/experiments/head_source_sites/score_check.py \
        --scratch /work/logs/head_source_sites
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[4]
SCORES = ("clip", "pixel_max", "pixel_top1", "area")


class _AllScores(torch.nn.Module):
    """Wraps an MCDRLNet for ``score_images``: the gate open, and every candidate score of each frame kept in order."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net, self.kept = net, []

    def forward_with_score(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, clip = self.net.forward_with_score(x)
        p = torch.softmax(logits, dim=1)[:, 1].flatten(1)  # (B, H*W)
        k = max(1, p.shape[1] // 100)
        for j in range(p.shape[0]):
            self.kept.append({"clip": float(clip[j]), "pixel_max": float(p[j].max()),
                              "pixel_top1": float(p[j].topk(k).values.mean()), "area": float((p[j] > 0.5).float().mean())})
        return logits, clip

    def gate(self, logits: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        return logits


def main(argv: list[str] | None = None) -> int:
    from mcdrl.evaluation.clip_probe import auc
    from mcdrl.evaluation.confounder_readout import render_site
    from mcdrl.evaluation.scoring import build_bundle_network, score_images
    from mcdrl.evaluation.site_profile import TARGETS, best_threshold, gated
    from mcdrl.synthetic import SITES

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scratch", required=True)
    p.add_argument("--n_score", type=int, default=300)
    p.add_argument("--seed", type=int, default=23)
    a = p.parse_args(argv)
    out = {}
    for s in "ABCDE":
        net, post = build_bundle_network(str(REPO / "bundle/configs/inference.json"), Path(a.scratch) / f"text_queries_{s}/models/model.pt",
                                         {"bundle_root": str(REPO / "bundle")})
        threshold = float(net.presence_threshold)
        wrapped = _AllScores(net)
        cases = render_site(SITES[s], a.n_score, a.seed, "site_profile/score")
        records = score_images(wrapped, [{"id": f"{s}_{i:05d}", "site": s, "lesion_class": c.lesion_class, "image": c.image,
                                          "mask": c.mask > 0} for i, c in enumerate(cases)], post)
        lesion = np.array([r["lesion"] for r in records])
        row = {"uncalibrated": gated(records, threshold)}
        for name in SCORES:
            for r, k in zip(records, wrapped.kept):
                r["lesion_score"] = k[name]
            ceiling = best_threshold(records, TARGETS["false_alarm_max"])
            row[name] = {"auc": round(auc(np.array([k[name] for k in wrapped.kept]), lesion), 4),
                         "ceiling_sensitivity": ceiling["sensitivity"], "ceiling_false_alarm_rate": ceiling["false_alarm_rate"]}
        out[s] = row
        print(s, json.dumps(row), flush=True)
    tmp = HERE / "score_check.tmp"
    tmp.write_text(json.dumps({"n_score": a.n_score, "seed": a.seed, "sites": out}, indent=1) + "\n")
    os.replace(tmp, HERE / "score_check.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
