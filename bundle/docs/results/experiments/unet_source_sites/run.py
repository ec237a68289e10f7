"""The MONAI UNet on held-out *source* sites, at the shipped recipe's wall time (issue 23, after 0.9.9).

Every experiment since ``../head_source_sites/`` has judged a candidate on the same split (train on four of A-E, read
the fifth's 600 frames) against the shipped recipe's own 2-epoch rows, never against the model issue 23 measures it by:
the MONAI UNet trained for the same wall time. This script trains that UNet on each fold, exactly as
:mod:`mcdrl.evaluation.compare` trains it for the release (``train.json`` + ``unet.json`` through the bundle CLI: the
same data, augmentation, schedule and model selection; the cosine schedule as long as the epochs that fit the budget;
stopped only past the budget x ``BUDGET_TOLERANCE``), and scores it as ``../head_source_sites/run.py`` scores the
shipped recipe (:mod:`mcdrl.evaluation.scoring`, the bundle's post-processing, all 600 frames of the held-out site).

**The budget** is the same for every fold: the median training time of the baseline's five folds (the
``contrast_1_tau_0.07`` rows of ``../presence_in_training/runs.json``: run 2's keys, the shipped classifier, 2 epochs;
each time is the whole training process, set-up included, which favours the UNet slightly, as in ``compare``). The
UNet's epochs are as many as fit it at the pace of one timed epoch (a 1-epoch run on the first fold, alone on the
machine; ``training_time.json``'s seconds), as ``compare`` chooses them.

No frame of F, G or any other site is read. Writes ``runs.json`` beside this file (the timing, then one record per
fold; finished ones are kept, so it resumes). The rule that reads it is in ``README.md``, committed before any fold ran.

    PYTHONPATH=custom HF_HUB_OFFLINE=1 .venv/bin/python bundle/docs/results/experiments/unet_source_sites/run.py \
        --scratch /work/logs/unet_source_sites
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

from mcdrl.evaluation.compare import BUDGET_TOLERANCE, _train_unet, unet_epochs_for
from mcdrl.evaluation.scoring import build_bundle_network, load_labelled_images, score_images, summarise

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[4]
CONFIGS, BUNDLE = REPO / "bundle/configs", REPO / "bundle"
SITES = ("A", "B", "C", "D", "E")
BASELINE = "contrast_1_tau_0.07"


def baseline_budget() -> tuple[float, list[float]]:
    """(the median, the five) training times in seconds of the baseline's folds."""
    runs = json.loads((HERE.parent / "presence_in_training/runs.json").read_text())
    times = [next(r["train_s"] for r in runs if r["variant"] == BASELINE and r["held_out"] == s) for s in SITES]
    return statistics.median(times), times


def _extra(held_out: str, epochs: int) -> list[str]:
    return ["--train_sites", json.dumps([s for s in SITES if s != held_out]), "--max_epochs", str(epochs)]


def _score(held_out: str, model: Path) -> dict:
    """The UNet in ``model`` segments all 600 frames of ``held_out`` (its training and validation frames)."""
    net, post = build_bundle_network([str(CONFIGS / "train.json"), str(CONFIGS / "unet.json")], model,
                                     {"bundle_root": str(BUNDLE)})
    datalist = REPO / "data/synthetic/datalist.json"
    frames = [f for split in ("training", "validation") for f in load_labelled_images(datalist, split, [held_out])]
    return summarise(score_images(net, frames, post))


def _save(doc: dict, out: Path) -> None:
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scratch", required=True, help="weights and logs of the runs (not kept in git)")
    args = p.parse_args(argv)
    scratch, out = Path(args.scratch), HERE / "runs.json"
    doc = json.loads(out.read_text()) if out.exists() else {"folds": []}
    budget, times = baseline_budget()
    doc.update({"baseline": BASELINE, "baseline_train_s": times, "budget_s": budget, "budget_tolerance": BUDGET_TOLERANCE})
    if "timed_epoch_s" not in doc:
        timing = _train_unet(CONFIGS, BUNDLE, scratch / f"timing_{SITES[0]}", None, _extra(SITES[0], 1))
        doc.update({"timed_epoch_s": timing["seconds"], "timed_process_s": timing["process_s"]})
        _save(doc, out)
    epochs = unet_epochs_for(budget, doc["timed_epoch_s"])
    print(f"UNet: one epoch took {doc['timed_epoch_s']:.0f} s; {epochs} epoch(s) fit the {budget:.0f} s budget", flush=True)
    done = {r["held_out"] for r in doc["folds"]}
    for held_out in SITES:
        if held_out in done:
            continue
        work = scratch / f"unet_{held_out}"
        record = _train_unet(CONFIGS, BUNDLE, work, budget * BUDGET_TOLERANCE, _extra(held_out, epochs))
        rec = {"held_out": held_out, "max_epochs": epochs, "epochs": record.get("epochs"), "seed": 0,
               "train_s": record["seconds"], "process_s": record["process_s"],
               "stopped_by_budget": record.get("stopped_by_budget"),
               "held_out_source_site": _score(held_out, work / "models/model.pt")}
        doc["folds"].append(rec)
        _save(doc, out)
        print(json.dumps({k: rec[k] for k in ("held_out", "epochs", "train_s")}), rec["held_out_source_site"]["dice"], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
