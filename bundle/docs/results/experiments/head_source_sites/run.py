"""The head's classifier chosen on held-out *source* sites: train on four of A-E, score the fifth (issue 23).

For each classifier (``text_queries``, the shipped one, and the 1x1 ``conv``) and each source site S of A-E, this runs
``python -m monai.bundle run training`` on the shipped recipe (``train.json``, seed 0) with ``train_sites`` = A-E minus S
and ``max_epochs`` 2 (the budget of the 0.9.2 head comparison), weights into a scratch folder. The validator picks the
epoch and the presence threshold on the four training sites' validation frames, as in every bundle run. The model is
then scored, as the bundle's inference segments (:mod:`mcdrl.evaluation.scoring`), on all 600 frames of S (its
training and validation frames: the run never saw S).

No frame of F, G or any site outside A-E is read. Results go to ``runs.json`` beside this file, one record per run;
finished runs are kept, so the script resumes.

    PYTHONPATH=custom HF_HUB_OFFLINE=1 .venv/bin/python bundle/docs/results/experiments/head_source_sites/run.py \
        --scratch /work/logs/head_source_sites
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[4]
SITES = ("A", "B", "C", "D", "E")
CLASSIFIERS = ("text_queries", "conv")


def _train(classifier: str, held_out: str, run_dir: Path, epochs: int, overrides: dict | None = None) -> float:
    """Trains on A-E minus ``held_out`` into ``run_dir``; ``overrides``: further config keys (as ``--key json``)."""
    train_sites = [s for s in SITES if s != held_out]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training",
           "--config_file", str(REPO / "bundle/configs/train.json"), "--meta_file", str(REPO / "bundle/configs/metadata.json"),
           "--bundle_root", str(REPO / "bundle"), "--train_sites", json.dumps(train_sites), "--max_epochs", str(epochs),
           "--decoder_classifier", json.dumps(classifier), "--ckpt_dir", str(run_dir / "models"),
           "--output_dir", str(run_dir / "run"), "--resume", "False"]
    for key, value in (overrides or {}).items():
        cmd += [f"--{key}", json.dumps(value)]
    t0 = time.time()
    with open(run_dir / "train.log", "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    return time.time() - t0


def _score(classifier: str, held_out: str, run_dir: Path, overrides: dict | None = None) -> dict:
    """The model in ``run_dir`` segments all 600 frames of ``held_out``; ``overrides``: the training's further keys
    (those that the network reads, such as ``tau``, must be the training's)."""
    from mcdrl.evaluation.scoring import build_bundle_network, load_labelled_images, score_images, summarise

    net, post = build_bundle_network(str(REPO / "bundle/configs/train.json"), run_dir / "models/model.pt",
                                     {"bundle_root": str(REPO / "bundle"), "decoder_classifier": classifier, **(overrides or {})})
    datalist = REPO / "data/synthetic/datalist.json"
    frames = [f for split in ("training", "validation") for f in load_labelled_images(datalist, split, [held_out])]
    return summarise(score_images(net, frames, post))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scratch", required=True, help="weights and logs of the runs (not kept in git)")
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args(argv)
    out = HERE / "runs.json"
    runs = json.loads(out.read_text()) if out.exists() else []
    done = {(r["classifier"], r["held_out"]) for r in runs}
    for held_out in SITES:
        for classifier in CLASSIFIERS:
            if (classifier, held_out) in done:
                continue
            run_dir = Path(args.scratch) / f"{classifier}_{held_out}"
            run_dir.mkdir(parents=True, exist_ok=True)
            train_s = _train(classifier, held_out, run_dir, args.epochs)
            rec = {"classifier": classifier, "held_out": held_out, "epochs": args.epochs, "seed": 0,
                   "train_s": round(train_s, 1), "held_out_source_site": _score(classifier, held_out, run_dir)}
            runs.append(rec)
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(runs, indent=1) + "\n")
            os.replace(tmp, out)
            print(json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
