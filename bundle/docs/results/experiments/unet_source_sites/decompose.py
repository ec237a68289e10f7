"""Where the gap between the shipped recipe and the UNet lies on held-out source sites: in the segmenter or in the
presence decision (a diagnostic written before it ran; it chooses nothing).

For each fold, the baseline (``../presence_in_training/``'s ``contrast_1_tau_0.07`` model, read with its keys as that
experiment read it) and the UNet of ``run.py`` segment all 600 frames of the held-out site with the gate open; each
set of per-frame records is then read four ways:

* ``baseline``: the baseline's masks under its own presence decision (its stored threshold, as the bundle serves it;
  this reproduces ``runs.json``'s figures of the baseline);
* ``baseline, gate open``: its segmenter alone;
* ``UNet``: the UNet's masks (it has no presence decision);
* ``UNet, the baseline's gate``: the UNet's masks, emptied where the baseline's lesion score is below its threshold.

An emptied frame scores as the bundle scores an empty mask: Dice 1 on a lesion-free frame, 0 on a lesion frame, no
false alarm, nothing detected. No frame of F, G or any other site is read. Writes ``decompose.json`` beside this file.

    PYTHONPATH=custom HF_HUB_OFFLINE=1 .venv/bin/python bundle/docs/results/experiments/unet_source_sites/decompose.py \
        --presence_scratch /work/logs/presence_in_training --unet_scratch /work/logs/unet_source_sites

``--run release_budget`` reads the second run's models instead (``release_budget.py``: the shipped recipe at 5 epochs,
``shipped_5_epochs_S``, as the baseline, and ``unet_10_epochs_S``; both under that script's ``--scratch``, so pass
it as both scratch folders) into ``decompose_release_budget.json``. The scratch folders do not outlive a machine, so
``--sites`` reads the folds whose models are there; folds already in the output are kept.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from mcdrl.evaluation.scoring import build_bundle_network, load_labelled_images, score_images, summarise

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[4]
CONFIGS = REPO / "bundle/configs"
SITES = ("A", "B", "C", "D", "E")
BASELINE = "contrast_1_tau_0.07"
RUN2 = {"lambda_contrast": 1.0, "tau": 0.07}
#: run -> (the baseline's folder, the UNet's folder, the output); the folders' "{}" is the held-out site
RUNS = {"first": (BASELINE + "_{}", "unet_{}", "decompose.json"),
        "release_budget": ("shipped_5_epochs_{}", "unet_10_epochs_{}", "decompose_release_budget.json")}


def emptied(records: list[dict], scores: list[float], threshold: float) -> list[dict]:
    """``records`` with every frame whose score is below ``threshold`` given an empty mask."""
    out = []
    for rec, score in zip(records, scores):
        if score >= threshold:
            out.append(rec)
            continue
        rec = {**rec, "dice": 0.0 if rec["lesion"] else 1.0, "iou": 0.0 if rec["lesion"] else 1.0, "predicted_any": False}
        rec.update({"detected": False} if rec["lesion"] else {"false_alarm": False})
        out.append(rec)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presence_scratch", required=True, help="../presence_in_training/run.py's --scratch (the baseline's models)")
    p.add_argument("--unet_scratch", required=True, help="run.py's --scratch (the UNets)")
    p.add_argument("--run", default="first", choices=list(RUNS), help="the first run's models, or the second's (release_budget.py)")
    p.add_argument("--sites", nargs="+", default=list(SITES), choices=list(SITES), help="the folds to read (default: all five)")
    args = p.parse_args(argv)
    base_dir, unet_dir, out_name = RUNS[args.run]
    out = HERE / out_name
    datalist = REPO / "data/synthetic/datalist.json"
    folds = json.loads(out.read_text())["folds"] if out.exists() else {}
    for held_out in args.sites:
        if held_out in folds:
            continue
        frames = [f for split in ("training", "validation") for f in load_labelled_images(datalist, split, [held_out])]
        base, post = build_bundle_network(str(CONFIGS / "train.json"), Path(args.presence_scratch) / base_dir.format(held_out) / "models/model.pt",
                                          {"bundle_root": str(REPO / "bundle"), "decoder_classifier": "text_queries", **RUN2})
        threshold = float(base.presence_threshold)
        base.presence_decision = False  # the gate open: masks of the segmenter alone, and the lesion score per frame
        open_records = score_images(base, frames, post)
        scores = [r["lesion_score"] for r in open_records]
        unet, unet_post = build_bundle_network([str(CONFIGS / "train.json"), str(CONFIGS / "unet.json")],
                                               Path(args.unet_scratch) / unet_dir.format(held_out) / "models/model.pt",
                                               {"bundle_root": str(REPO / "bundle")})
        unet_records = score_images(unet, frames, unet_post)
        folds[held_out] = {"threshold": round(threshold, 5), "reads": {
            "baseline": summarise(emptied(open_records, scores, threshold)),
            "baseline, gate open": summarise(open_records),
            "UNet": summarise(unet_records),
            "UNet, the baseline's gate": summarise(emptied(unet_records, scores, threshold))}}
        print(held_out, {k: v["dice"] for k, v in folds[held_out]["reads"].items()}, flush=True)
        command = ("PYTHONPATH=custom HF_HUB_OFFLINE=1 .venv/bin/python bundle/docs/results/experiments/unet_source_sites/decompose.py "
                   "--presence_scratch SCRATCH --unet_scratch SCRATCH" + ("" if args.run == "first" else f" --run {args.run}"))
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"command": command, "folds": {s: folds[s] for s in SITES if s in folds}}, indent=1) + "\n")
        os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
