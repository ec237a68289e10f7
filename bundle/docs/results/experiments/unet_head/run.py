"""The UNet head (``configs/unet_head.json``) on held-out source sites at the release's budget (issue 23, after 0.9.9).

The candidate is the shipped network with one part swapped: the head is the MONAI UNet of ``unet.json`` over the
image, with the intervened CLIP grid joining at its bottleneck (:class:`mcdrl.networks.head.UNetHead`). Everything
else is ``train.json``'s (0.9.9's keys: run 2's ``lambda_contrast`` 1.0 and ``tau`` 0.07; the validator picks the
epoch and the presence threshold on the four training sites' validation frames).

Per fold, in the order A-E: train on the other four sites through the bundle CLI (``train.json`` +
``unet_head.json``, as :mod:`mcdrl.evaluation.compare` trains its UNet), for the epochs that fit the second run's
budget (``../unet_source_sites/release_budget.py``: 5 of the shipped recipe's epochs at the first run's pace, 1585 s)
at the pace of one timed epoch (a 1-epoch run on fold A's training sites, alone on the machine; recorded first);
fixed, not stopped by a clock. Then read the model as the shipped recipe's rows were read
(``../presence_in_training/run.py``'s ``run_variants``): ``held_out_source_site``, the bundle's segmentation of all
600 frames of the held-out site; ``presence``, ``../head_source_sites/profile_check.py``'s ``check_site`` with the
confounder-readout buffers of 0.9.2's ``model.pt`` (``--readout_from``, as the baseline's reads).

No frame of F, G or any other site is read. Writes ``runs.json`` beside this file (the timing, then one record per
fold; finished ones are kept, so it resumes; a fold whose training finished keeps its model). The rule that reads it
is in ``README.md``, committed before any fold ran.

    git show 29298f9:bundle/models/model.pt > /work/logs/unet_head/model_0.9.2.pt
    PYTHONPATH=custom HF_HUB_OFFLINE=1 .venv/bin/python bundle/docs/results/experiments/unet_head/run.py \\
        --scratch /work/logs/unet_head --readout_from /work/logs/unet_head/model_0.9.2.pt
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from pathlib import Path

import torch

from mcdrl.evaluation.compare import _train_unet, unet_epochs_for

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[4]
CONFIGS, BUNDLE = REPO / "bundle/configs", REPO / "bundle"
SITES = ("A", "B", "C", "D", "E")
VARIANT = "unet_head.json"
#: the variant's keys as overrides of the network's config, for the reads (they build from train.json / inference.json)
HEAD_KEYS = {k: v for k, v in json.loads((CONFIGS / VARIANT).read_text()).items() if k != "_desc_"}
SHIPPED_EPOCHS = 5


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def budget_s() -> float:
    """The second run's budget: ``SHIPPED_EPOCHS`` of the shipped recipe's epochs at the first run's pace (1585 s)."""
    run1 = json.loads((HERE.parent / "unet_source_sites/runs.json").read_text())
    return SHIPPED_EPOCHS * run1["budget_s"] / 2


def _extra(held_out: str, epochs: int) -> list[str]:
    return ["--train_sites", json.dumps([s for s in SITES if s != held_out]), "--max_epochs", str(epochs)]


def _save(doc: dict, out: Path) -> None:
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, out)


def _trained(work: Path, epochs: int) -> dict | None:
    """The record of a training that finished in ``work`` with ``epochs`` epochs (its reads interrupted), else None."""
    record, model = work / "run/training_time.json", work / "models/model.pt"
    if not (record.exists() and model.exists()):
        return None
    rec = json.loads(record.read_text())
    return rec if rec.get("epochs") == epochs else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scratch", required=True, help="weights and logs of the runs (not kept in git)")
    p.add_argument("--readout_from", required=True,
                   help="the model.pt whose confounder-readout buffers the presence reads borrow (0.9.2's, as the baseline's reads)")
    args = p.parse_args(argv)
    scratch, out = Path(args.scratch), HERE / "runs.json"
    head_run = _load(HERE.parent / "head_source_sites/run.py", "head_source_sites_run")
    profile_check = _load(HERE.parent / "head_source_sites/profile_check.py", "head_source_sites_profile_check")
    shipped = torch.load(args.readout_from, weights_only=True)
    doc = json.loads(out.read_text()) if out.exists() else {"folds": []}
    doc.update({"variant": VARIANT, "budget_s": budget_s()})
    if "timed_epoch_s" not in doc:
        timing = _train_unet(CONFIGS, BUNDLE, scratch / f"timing_{SITES[0]}", None, _extra(SITES[0], 1), variants=(VARIANT,))
        doc.update({"timed_epoch_s": timing["seconds"], "timed_process_s": timing["process_s"]})
        _save(doc, out)
    epochs = unet_epochs_for(doc["budget_s"], doc["timed_epoch_s"])
    print(f"budget {doc['budget_s']:.0f} s, one epoch {doc['timed_epoch_s']:.0f} s: {epochs} epochs", flush=True)
    for held_out in SITES:
        if held_out in {r["held_out"] for r in doc["folds"]}:
            continue
        work = scratch / f"unet_head_{epochs}_epochs_{held_out}"
        record = _trained(work, epochs)
        reused = record is not None
        if not reused:
            record = _train_unet(CONFIGS, BUNDLE, work, None, _extra(held_out, epochs), variants=(VARIANT,))
        model = work / "models/model.pt"
        doc["folds"].append({"held_out": held_out, "max_epochs": epochs, "epochs": record.get("epochs"), "seed": 0,
                             "train_s": record["seconds"], "process_s": record.get("process_s"), "training_reused": reused,
                             "held_out_source_site": head_run._score("conv", held_out, work, HEAD_KEYS),
                             "presence": profile_check.check_site(held_out, model, shipped, overrides=HEAD_KEYS)})
        _save(doc, out)
        print(json.dumps({"held_out": held_out, "epochs": epochs, "train_s": record["seconds"]}),
              doc["folds"][-1]["held_out_source_site"]["dice"], doc["folds"][-1]["presence"]["lesion_score_auc"], flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
