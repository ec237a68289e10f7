"""Does a site profile fix the presence decision at a held-out *source* site? (issue 23, item 4, without F or G)

For each source site S of A-E, the text-query model of ``run.py`` that never saw S (its weights in the scratch
folder) reads 60 unlabelled frames of S (``mcdrl.io.site_profile.SiteProfiler``, the two threshold methods) and
is scored on 300 other labelled frames of S, exactly as ``python -m mcdrl.evaluation.site_profile`` scores F and G:
false alarms and lesion-level sensitivity with the model's own threshold ("uncalibrated"), with each profile's, and
the label-reading reference (the best single threshold at <= 20% false alarms: a ceiling, not a method), and the
AUC of the lesion score for lesion frames against lesion-free ones.

The frames are rendered for S by the generator with the evaluation's own seeds (not the bundle's data). The
scratch models were not calibrated for the confounder readout, which the profiler's confounder table needs and the
presence threshold does not: its four buffers are copied from the shipped model, and the confounder table is not
read here. Writes ``profile_check.json`` beside this file.

    PYTHONPATH=custom HF_HUB_OFFLINE=1 .venv/bin/python bundle/docs/results/experiments/head_source_sites/profile_check.py \
        --scratch /work/logs/head_source_sites
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[4]


def check_site(s: str, model_path: Path, shipped: dict, n_profile: int = 60, n_score: int = 300, seed: int = 23,
               overrides: dict | None = None) -> dict:
    """One held-out source site S read by the model at ``model_path`` (trained without S): the lesion score's AUC and
    the presence rows (uncalibrated, each profile, the label-reading reference) on S's ``n_score`` scored frames.
    ``overrides``: config keys of the model's training that the network reads (``tau`` sets the lesion score's
    temperature, and the stored threshold is on that score)."""
    from mcdrl.evaluation.clip_probe import auc
    from mcdrl.evaluation.confounder_readout import render_site
    from mcdrl.evaluation.scoring import build_bundle_network, score_images
    from mcdrl.evaluation.site_profile import TARGETS, best_threshold, gated, nominal_lesion_free_share
    from mcdrl.io.site_profile import SiteProfiler
    from mcdrl.synthetic import SITES

    ckpt = torch.load(model_path, weights_only=True)
    for k in ("readout.reference", "readout.thresholds", "readout.source_share", "readout.calibrated"):
        ckpt[k] = shipped[k]
    with tempfile.TemporaryDirectory(prefix=f"mcdrl_check_{s}_") as tmp:
        torch.save(ckpt, Path(tmp) / "model.pt")
        net, post = build_bundle_network(str(REPO / "bundle/configs/inference.json"), Path(tmp) / "model.pt",
                                         {"bundle_root": str(REPO / "bundle"), **(overrides or {})})
        threshold = float(net.presence_threshold)
        spec = SITES[s]
        frames = Path(tmp) / "frames"
        frames.mkdir()
        for i, case in enumerate(render_site(spec, n_profile, seed, "site_profile/profile")):
            Image.fromarray(case.image).save(frames / f"{s}_{i:04d}.png")
        profiles = {m: SiteProfiler(net, Path(tmp) / m, site=s, min_frames=30, threshold_method=m,
                                    target_false_alarm=TARGETS["false_alarm_max"], lesion_free_share=share).run(frames)
                    for m, share in (("mixture", None), ("lesion_free_share", nominal_lesion_free_share(spec)))}
    cases = render_site(spec, n_score, seed, "site_profile/score")
    net.presence_threshold.fill_(0.0)  # gate open; each threshold is applied afterwards, as the evaluation does
    records = score_images(net, [{"id": f"{s}_{i:05d}", "site": s, "lesion_class": c.lesion_class, "image": c.image,
                                  "mask": c.mask > 0} for i, c in enumerate(cases)], post)
    rows = {"uncalibrated": gated(records, threshold)}
    for m, prof in profiles.items():
        rows[f"profile: {m}"] = gated(records, prof["presence_threshold"]["value"])
        rows[f"profile: {m}"]["sensitivity_drop"] = round(rows["uncalibrated"]["sensitivity"] - rows[f"profile: {m}"]["sensitivity"], 4)
    rows["reference (labels)"] = best_threshold(records, TARGETS["false_alarm_max"])
    return {"lesion_score_auc": round(auc(np.array([r["lesion_score"] for r in records]), np.array([r["lesion"] for r in records])), 4),
            "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scratch", required=True)
    p.add_argument("--n_profile", type=int, default=60)
    p.add_argument("--n_score", type=int, default=300)
    p.add_argument("--seed", type=int, default=23)
    a = p.parse_args(argv)
    shipped = torch.load(REPO / "bundle/models/model.pt", weights_only=True)
    out = {}
    for s in "ABCDE":
        out[s] = check_site(s, Path(a.scratch) / f"text_queries_{s}/models/model.pt", shipped, a.n_profile, a.n_score, a.seed)
        rows = out[s]["rows"]
        print(s, out[s]["lesion_score_auc"], json.dumps({k: (v["false_alarm_rate"], v["sensitivity"], v["threshold"]) for k, v in rows.items()}), flush=True)
    tmp = HERE / "profile_check.tmp"
    tmp.write_text(json.dumps({"n_profile": a.n_profile, "n_score": a.n_score, "seed": a.seed, "sites": out}, indent=1) + "\n")
    os.replace(tmp, HERE / "profile_check.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
