"""One leave-one-site-out run: the bundle's own training with one site held out, then the held-out site scored.

The run is ``monai.bundle``'s ``ConfigWorkflow`` on ``train.json`` plus the method's files and overrides (the same
objects ``python -m monai.bundle run training`` builds), with the training and validation datalists restricted to
the source sites (``train_sites``). Model selection (best epoch, presence threshold) therefore uses source-site
validation only. Afterwards the best ``model.pt`` is loaded into a fresh ``network_def`` and every image of the
held-out site is scored by :func:`mcdrl.evaluation.scoring.score_images` with the configs' post-processing.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import torch

from mcdrl.evaluation.scoring import build_bundle_network, load_labelled_images, score_images

from .methods import Method
from .profiles import Profile

__all__ = ["run_one", "run_overrides"]


def run_overrides(method: Method, profile: Profile, held_out: str, seed: int, common: dict, run_dir: Path) -> dict:
    """All ``--key value`` pairs of a run, in the order they apply."""
    sources = [s for s in profile.sites if s != held_out]
    return {**common, **method.overrides, **profile.budget_overrides(), "train_sites": sources, "seed": seed,
            "ckpt_dir": str(run_dir / "models"), "output_dir": str(run_dir / "run"), "resume": False, "num_workers": 0,
            "checkpoint_interval": 10**6}


def run_one(method: Method, profile: Profile, held_out: str, seed: int, configs_dir: Path, common: dict, run_dir: Path,
            validation_only: bool = False, keep_weights: bool = False) -> dict:
    """Train ``method`` with ``held_out`` held out; return the run's record (JSON-ready).

    Args:
        configs_dir: ``bundle/configs``. common: keys every run sets (bundle_root, CLIP, dictionary, dataset_dir).
        run_dir: scratch folder of this run (weights, log); removed after scoring except the log.
        validation_only: skip the held-out site (for choosing settings on source-site validation).
        keep_weights: keep ``run_dir/models/model.pt`` (tests compare it with the bundle CLI's).
    """
    from monai.bundle import ConfigWorkflow

    t0 = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    files = [str(configs_dir / "train.json")] + [str(configs_dir / f) for f in method.files]
    overrides = run_overrides(method, profile, held_out, seed, common, run_dir)
    log = logging.FileHandler(run_dir / "train.log", mode="w")
    log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(log)
    level = root.level
    root.setLevel(logging.INFO)
    stats = logging.getLogger("monai.handlers.StatsHandler")  # it logs to stdout unless its logger exists already
    stats_handlers, stats.handlers = stats.handlers, [log]
    try:
        wf = ConfigWorkflow(config_file=files, workflow_type="train", logging_file=False, **overrides)  # our log file, not logging.conf
        wf.initialize()
        wf.run()
        best_epoch = int(getattr(wf.parser.get_parsed_content("validate#evaluator").state, "best_metric_epoch", -1))
        best_val = float(getattr(wf.parser.get_parsed_content("validate#evaluator").state, "best_metric", float("nan")))
        wf.finalize()
    finally:
        root.removeHandler(log)
        root.setLevel(level)
        stats.handlers = stats_handlers
        log.close()
    timing = json.loads((run_dir / "run" / "training_time.json").read_text())
    record = {"method": method.name, "held_out": held_out, "seed": seed, "files": list(method.files), "overrides": method.overrides,
              "selected_epoch": best_epoch, "source_validation_dice": best_val, "train_seconds": timing["seconds"], "rows": []}
    if not validation_only:
        net, post = build_bundle_network(files, run_dir / "models" / "model.pt", {k: v for k, v in overrides.items() if k != "train_sites"})
        images = load_labelled_images(Path(common["dataset_dir"]) / "datalist.json", "training", [held_out]) + \
            load_labelled_images(Path(common["dataset_dir"]) / "datalist.json", "validation", [held_out])
        with torch.no_grad():
            record["rows"] = [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()} for r in score_images(net, images, post)]
        record["presence_threshold"] = float(net.presence_threshold) if hasattr(net, "presence_threshold") else None
    record["wall_s"] = round(time.perf_counter() - t0, 1)
    if not keep_weights:
        shutil.rmtree(run_dir / "models", ignore_errors=True)
    shutil.rmtree(run_dir / "run" / "checkpoints", ignore_errors=True)
    return record
