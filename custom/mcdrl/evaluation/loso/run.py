"""One leave-one-site-out run: the bundle's own training with one site held out, then the held-out site scored twice.

The run is ``monai.bundle``'s ``ConfigWorkflow`` on ``train.json`` plus the method's files and overrides (the same
objects ``python -m monai.bundle run training`` builds), with ``datalist`` (training) and ``validation_datalist``
(model selection) pointing into the world (:mod:`.world`) and ``train_sites`` holding the held-out site out
(:func:`run_data`). Model selection (best epoch, presence threshold) uses the **interventional** validation split: the
source sites' validation frames with their protocol off. Afterwards the selected ``model.pt`` is loaded into a fresh
``network_def`` and :func:`mcdrl.evaluation.scoring.score_images` scores, with the configs' post-processing:

* both validation splits (plain: the source sites' validation frames as sampled; interventional), for the record;
* every frame of the held-out site as sampled (``rows``) and with its protocol reversed (``rows_reversed``: the same
  scenes), each row carrying ``protocol_confounder``: any of the site's protocol confounders present in the frame.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from mcdrl.errors import InputFileError
from mcdrl.evaluation.scoring import build_bundle_network, load_labelled_images, score_images

from .methods import Method
from .profiles import Profile

__all__ = ["load_frames", "run_data", "run_one", "run_overrides"]


def run_data(method: Method, profile: Profile, held_out: str, world: dict) -> dict[str, tuple[str, list[str]]]:
    """Which datalist and sites each stage of a run reads: ``{stage: (datalist, sites)}``.

    Stages: ``train`` (training split), ``select`` (validation split that selects the epoch and the presence threshold:
    the interventional one), ``plain`` (validation split as sampled, scored for the record), ``test`` and
    ``test_reversed`` (both splits of the held-out site). ``world`` maps the parts of :data:`.world.PARTS` to datalists.
    """
    sources = [s for s in profile.sites if s != held_out]
    if method.world == "oracle":
        data = {"train": (world["oracle"], [held_out]), "select": (world["oracle_off"], [held_out]), "plain": (world["oracle"], [held_out])}
    else:
        data = {"train": (world[method.world], sources), "select": (world["protocol_off"], sources), "plain": (world["sampled"], sources)}
    return {**{k: (str(p), s) for k, (p, s) in data.items()},
            "test": (str(world["sampled"]), [held_out]), "test_reversed": (str(world["reversed"]), [held_out])}


def run_overrides(method: Method, profile: Profile, held_out: str, seed: int, common: dict, world: dict, run_dir: Path) -> dict:
    """All ``--key value`` pairs of a run, in the order they apply."""
    data = run_data(method, profile, held_out, world)
    return {**common, **method.overrides, **profile.budget_overrides(), "datalist": data["train"][0],
            "validation_datalist": data["select"][0], "train_sites": data["train"][1], "seed": seed,
            "ckpt_dir": str(run_dir / "models"), "output_dir": str(run_dir / "run"), "resume": False, "num_workers": 0,
            "checkpoint_interval": 10**6}


def load_frames(datalist: str, sites: list[str], splits: tuple[str, ...] = ("training", "validation")) -> list[dict]:
    """The labelled frames of ``sites`` in ``splits`` of ``datalist`` (see :func:`load_labelled_images`), each with
    ``protocol_confounder``: whether a confounder whose rate depends on the lesion at its site is present.

    Raises:
        InputFileError: an entry without ``protocol_confounders`` (a datalist of generator version < 4).
    """
    frames = [f for split in splits for f in load_labelled_images(datalist, split, sites)]
    for f in frames:
        if f.get("protocol_confounders") is None:
            raise InputFileError(f"{datalist}: entry {f['id']} has no 'protocol_confounders'; the LOSO world is written by "
                                 "mcdrl.synthetic.generate_dataset (generator version 4 or later): delete the world folder to regenerate it")
        f["protocol_confounder"] = bool(f["protocol_confounders"])
    return frames


def _score(net, post, frames: list[dict]) -> list[dict]:
    with torch.no_grad():
        rows = score_images(net, frames, post)
    out = []
    for row, f in zip(rows, frames):
        row.pop("predicted_any", None)
        row.update(protocol_confounder=f["protocol_confounder"], protocol_confounders=list(f["protocol_confounders"]))
        out.append({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()})
    return out


def run_one(method: Method, profile: Profile, held_out: str, seed: int, configs_dir: Path, common: dict, world: dict, run_dir: Path,
            validation_only: bool = False, keep_weights: bool = False) -> dict:
    """Train ``method`` with ``held_out`` held out; return the run's record (JSON-ready).

    Args:
        configs_dir: ``bundle/configs``. common: keys every run sets (bundle_root, CLIP, dictionary).
        world: ``{part: datalist}`` of :func:`mcdrl.evaluation.loso.world.ensure_world`.
        run_dir: scratch folder of this run (weights, log); removed after scoring except the log.
        validation_only: score the two validation splits only, not the held-out site (for choosing settings).
        keep_weights: keep ``run_dir/models/model.pt`` (tests compare it with the bundle CLI's).

    Returns:
        ``{"method", "held_out", "seed", "world", "selected_epoch", "selection_dice" (the validator's best metric on the
        interventional split), "validation_dice_interventional", "validation_dice_plain" (mean per-frame Dice of the
        selected weights), "train_seconds", "presence_threshold", "rows", "rows_reversed", "wall_s", ...}``.
    """
    from monai.bundle import ConfigWorkflow

    t0 = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    files = [str(configs_dir / "train.json")] + [str(configs_dir / f) for f in method.files]
    overrides = run_overrides(method, profile, held_out, seed, common, world, run_dir)
    data = run_data(method, profile, held_out, world)
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
    record = {"method": method.name, "held_out": held_out, "seed": seed, "world": method.world, "files": list(method.files),
              "overrides": method.overrides, "selected_epoch": best_epoch, "selection_dice": best_val, "train_seconds": timing["seconds"],
              "rows": [], "rows_reversed": []}
    net, post = build_bundle_network(files, run_dir / "models" / "model.pt", {k: v for k, v in overrides.items() if k != "train_sites"})
    for name, stage in (("validation_dice_interventional", "select"), ("validation_dice_plain", "plain")):
        path, sites = data[stage]
        rows = _score(net, post, load_frames(path, sites, ("validation",)))
        record[name] = round(float(np.mean([r["dice"] for r in rows])), 5)
    if not validation_only:
        record["rows"] = _score(net, post, load_frames(*data["test"]))
        record["rows_reversed"] = _score(net, post, load_frames(*data["test_reversed"]))
    record["presence_threshold"] = float(net.presence_threshold) if hasattr(net, "presence_threshold") else None
    record["wall_s"] = round(time.perf_counter() - t0, 1)
    if not keep_weights:
        shutil.rmtree(run_dir / "models", ignore_errors=True)
    shutil.rmtree(run_dir / "run" / "checkpoints", ignore_errors=True)
    return record
