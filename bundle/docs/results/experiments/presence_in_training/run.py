"""The presence term trained *inside* the training loop, chosen on held-out *source* sites (issue 23, item 2).

``../presence_source_sites/`` fitted a lesion score on a frozen encoder's F_vis, after training: no linear readout
of that encoder separated a held-out source site's lesion-free frames from its lesions much better than the
zero-shot score (best mean AUC gain +0.020, per-fold std 0.042). The encoder itself was barely asked to: the
presence term of training is L_contrast's "normal mucosa" class (``no_lesion_class``), weighted 0.1, on a backbone
whose last block learns at 0.01 x the head's rate. This script tests turning that term up, with the do(z) the
training already has (``RandConfounderd``, 1-2 dictionary confounders on half of the frames, lesion or not, then the
photometric augmentation). Each variant is one or two existing config keys:

* ``contrast_1``: ``lambda_contrast`` 1.0 (10 x the shipped 0.1);
* ``contrast_1_backbone_0.1``: ``lambda_contrast`` 1.0 and ``backbone_lr_scale`` 0.1 (10 x the shipped 0.01), so that
  the encoder's last block can move;
* ``contrast_1_tau_0.07`` (run 2, written after run 1): ``lambda_contrast`` 1.0 and ``tau`` 0.07, the temperature of
  L_contrast and of the lesion score (run 1's term barely learnt at tau 0.5).

For each variant and each source site S of A-E, the bundle trains on the other four sites exactly as
``../head_source_sites/run.py`` trains its ``text_queries`` models (the shipped recipe, seed 0, 2 epochs; the
validator picks the epoch and the presence threshold on the four sites' validation frames), with the variant's keys
added. The model is then read at S by the two scripts that read the baseline (the ``text_queries`` rows of
``../head_source_sites/runs.json`` and ``profile_check.json``), unchanged:

* ``held_out_source_site``: the bundle's own segmentation of all 600 frames of S (:mod:`mcdrl.evaluation.scoring`);
* ``presence``: ``profile_check.check_site``: the lesion score's AUC on 300 rendered frames of S, the false alarms and
  sensitivity at the stored threshold, with each site profile's threshold (60 other frames), and the label-reading
  reference.

Both reads build the network with the variant's keys too: ``tau`` is the lesion score's temperature, and the stored
threshold is on that score (run 1's keys do not reach the network, so its reads are the baseline's). A fold whose
training finished but whose reads were interrupted keeps its model (``training_reused``; ``train_s`` from its log).

No frame of F, G or any other site is read. Writes ``runs.json`` beside this file (one record per variant and fold;
finished ones are kept, so the script resumes). The rule that reads it is in ``README.md``, committed before any
fold ran.

    PYTHONPATH=custom HF_HUB_OFFLINE=1 .venv/bin/python bundle/docs/results/experiments/presence_in_training/run.py \
        --scratch /work/logs/presence_in_training
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[4]
SITES = ("A", "B", "C", "D", "E")
VARIANTS = {
    "contrast_1": {"lambda_contrast": 1.0},
    "contrast_1_backbone_0.1": {"lambda_contrast": 1.0, "backbone_lr_scale": 0.1},
    # run 2 (README): the presence term's temperature, not its weight
    "contrast_1_tau_0.07": {"lambda_contrast": 1.0, "tau": 0.07},
}


def _load(name: str):
    """A script of ``../head_source_sites/`` (``run`` or ``profile_check``), loaded by path."""
    spec = importlib.util.spec_from_file_location(f"head_source_sites_{name}", HERE.parent / f"head_source_sites/{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _finished(run_dir: Path) -> float | None:
    """The training time (s) of a training that finished in ``run_dir`` before its reads were interrupted (its log's
    last "training took" line, and its ``model.pt``), else None: the fold is trained (again) from the start."""
    log, model = run_dir / "train.log", run_dir / "models/model.pt"
    if not (log.exists() and model.exists()):
        return None
    text = log.read_text()
    took = [line for line in text.splitlines() if "training took" in line]
    if not took or "Engine run finished" not in text:
        return None
    return float(took[-1].split("training took ")[1].split(" s")[0])


def run_variants(variants: dict[str, dict], out: Path, scratch: Path, epochs: int = 2,
                 shipped_model: Path = REPO / "bundle/models/model.pt", sites: tuple[str, ...] = SITES) -> list[dict]:
    """Trains and reads each variant (its overrides of ``train.json``) at each of the five folds, into ``out`` (a JSON
    list, rewritten atomically after every fold; folds already in it are kept, so a second call resumes).
    ``shipped_model``: the ``model.pt`` whose confounder-readout buffers the presence reads borrow (this experiment's
    runs used 0.9.2's, the model shipped then). ``sites``: the folds to run (``../unet_source_sites/release_budget.py``
    runs one at a time). ``../pixel_pathway/run.py`` calls it with its own variants."""
    head_run, profile_check = _load("run"), _load("profile_check")
    shipped = torch.load(shipped_model, weights_only=True)
    runs = json.loads(out.read_text()) if out.exists() else []
    done = {(r["variant"], r["held_out"]) for r in runs}
    for variant, overrides in variants.items():
        for held_out in sites:
            if (variant, held_out) in done:
                continue
            run_dir = Path(scratch) / f"{variant}_{held_out}"
            run_dir.mkdir(parents=True, exist_ok=True)
            train_s = _finished(run_dir)
            reused = train_s is not None
            if not reused:
                train_s = head_run._train("text_queries", held_out, run_dir, epochs, overrides)
            # the reads build the network with the training's keys: tau is the lesion score's temperature
            rec = {"variant": variant, "overrides": overrides, "held_out": held_out, "epochs": epochs,
                   "seed": 0, "train_s": round(train_s, 1), "training_reused": reused,
                   "held_out_source_site": head_run._score("text_queries", held_out, run_dir, overrides),
                   "presence": profile_check.check_site(held_out, run_dir / "models/model.pt", shipped, overrides=overrides)}
            runs.append(rec)
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(runs, indent=1) + "\n")
            os.replace(tmp, out)
            print(json.dumps({k: rec[k] for k in ("variant", "held_out", "train_s")}), rec["presence"]["lesion_score_auc"],
                  rec["held_out_source_site"]["dice"], flush=True)
    return runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scratch", required=True, help="weights and logs of the runs (not kept in git)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS)[:2], choices=list(VARIANTS), help="default: run 1's two")
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args(argv)
    run_variants({v: VARIANTS[v] for v in args.variants}, HERE / "runs.json", Path(args.scratch), args.epochs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
