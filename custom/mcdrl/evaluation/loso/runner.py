"""The run grid: prepare the shared inputs once, run every (method, held-out site, seed) cell, keep each result.

Each finished run is written atomically to ``<cache_dir>/runs/<profile>-<fingerprint>/<run>.json``; a rerun of the
command skips runs whose file exists, so an interrupted benchmark resumes where it stopped. The fingerprint
covers the profile, the CLIP weights and the dictionary, so changing any of them starts afresh. Runs execute in
``workers`` spawned processes (each loads the cache once, with ``threads`` torch threads).
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mcdrl.errors import ConfigError, InputFileError
from mcdrl.networks.clip_backbone import create_clip, resolve_weights, weights_sha256
from mcdrl.networks.dictionary import build_dictionary, load_artifact
from mcdrl.utils import atomic_path

from .diagnostics import dictionary_response
from .features import load_or_build_features
from .methods import Method, dictionary_prompts
from .model import build_network, load_backbone
from .profiles import Profile
from .train import RunContext, run_one
from .world import ensure_world, load_world

__all__ = ["Prepared", "prepare", "run_grid"]

logger = logging.getLogger(__name__)


@dataclass
class Prepared:
    """Picklable description of the shared inputs (each worker loads them from these paths)."""

    profile: Profile
    clip_model: str
    clip_weights: str | None
    datalist: str
    features_path: str
    dictionaries: dict  # size (None = main) -> (path, M)
    work_dir: str
    timings: dict
    zero_shot: dict  # mcdrl.evaluation.loso.diagnostics.dictionary_response of the frozen CLIP


def _sha(path) -> str:
    return weights_sha256(Path(path))


def prepare(profile: Profile, clip_model: str, clip_weights, dictionary_path, cache_dir, dictionary_sizes=()) -> Prepared:
    """Generate the world, cache the trunk tokens, build the ablation dictionaries, check the CLIP/dictionary pair."""
    cache_dir = Path(cache_dir)
    dictionary_path = Path(dictionary_path)
    if not dictionary_path.is_file():
        raise InputFileError(f"--dictionary_path {dictionary_path} does not exist. Build it with: python -m monai.bundle run build_dictionary "
                             "--config_file bundle/configs/dictionary.json (with the same --clip_model/--clip_weights).")
    timings = {}
    backbone = load_backbone(clip_model, clip_weights, profile.train["readout"])
    _, meta = load_artifact(dictionary_path)
    dictionaries = {None: (str(dictionary_path), len(meta["confounders"]))}
    # fail fast on a dictionary of another CLIP (MCDRLNet checks the model name and weights hash)
    build_network(backbone, dictionary_path, dictionaries[None][1], Method("check", "").settings(profile.train),
                  profile.train["intervention_heads"], profile.decoder_channels, profile.train["mtrs_scoring"])
    t = time.perf_counter()
    datalist = ensure_world(cache_dir, profile.sites, profile.n_per_site, profile.world_seed, profile.image_size, profile.val_fraction)
    world = load_world(datalist)
    timings["world_s"] = time.perf_counter() - t
    t = time.perf_counter()
    torch.set_num_threads(max(1, profile.workers * profile.threads))
    features_path, feats = load_or_build_features(cache_dir, world, backbone, profile.views)
    timings["features_s"] = time.perf_counter() - t
    zero_shot = dictionary_response(backbone, feats["flip"][:, 0], world, dictionary_path)
    del feats
    t = time.perf_counter()
    clip = None
    for size in dictionary_sizes:
        prompts = dictionary_prompts(size)
        if prompts == list(meta["confounders"]):
            dictionaries[size] = dictionaries[None]
            continue
        path = cache_dir / "dictionaries" / f"{clip_model}-{backbone.weights_sha256[:12]}-M{size}.safetensors"
        if not path.is_file():
            clip = clip if clip is not None else create_clip(clip_model, clip_weights)
            build_dictionary(clip_model, clip_weights, path, lesion_classes=meta["lesion_classes"], confounders=prompts,
                             anchor_template=meta["anchor_template"], background_prompt=meta["background_prompt"], model=clip)
        dictionaries[size] = (str(path), size)
    timings["dictionaries_s"] = time.perf_counter() - t
    identity = {k: v for k, v in asdict(profile).items() if k not in ("workers", "threads", "seeds", "ablation_sites", "ablation_seeds")}
    fingerprint = hashlib.sha256(json.dumps([identity, clip_model, backbone.weights_sha256, _sha(dictionary_path)], sort_keys=True, default=str).encode()).hexdigest()[:10]
    work_dir = cache_dir / "runs" / f"{profile.name}-{fingerprint}"
    work_dir.mkdir(parents=True, exist_ok=True)
    weights = resolve_weights(clip_weights)
    return Prepared(profile, clip_model, str(weights) if weights else None, str(datalist), str(features_path), dictionaries, str(work_dir), timings, zero_shot)


def run_id(method: Method, held_out: str, seed: int, settings: dict) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    return f"{method.name}-{held_out}-s{seed}-{digest}"


_CTX: RunContext | None = None


def _init_worker(prep: Prepared) -> None:
    global _CTX
    from safetensors.torch import load_file

    torch.set_num_threads(prep.profile.threads)
    backbone = load_backbone(prep.clip_model, prep.clip_weights, prep.profile.train["readout"])
    _CTX = RunContext(prep.profile, backbone, load_world(prep.datalist), load_file(prep.features_path), prep.dictionaries)


def _work(task: tuple[Method, str, int, str]) -> tuple[str, dict]:
    method, held_out, seed, out_path = task
    result = run_one(_CTX, method, held_out, seed)
    with atomic_path(out_path) as tmp:
        Path(tmp).write_text(json.dumps(result))
    return out_path, result


def run_grid(prep: Prepared, cells: list[tuple], seeds, progress=print) -> list[dict]:
    """Run (or reuse) every (method, held-out site, seed) of ``cells`` in one pool.

    ``cells`` = [(method, held-out sites), ...] or [(method, held-out sites, seeds), ...] (the cell's own seeds
    instead of ``seeds``). Returns the result records in grid order.
    """
    tasks, results, order = [], {}, []
    for method, sites, *cell_seeds in cells:
        settings = method.settings(prep.profile.train)
        if settings["dictionary_size"] not in prep.dictionaries:
            raise ConfigError(f"method {method.name}: no dictionary of size {settings['dictionary_size']} was prepared")
        for site in sites:
            for seed in (cell_seeds[0] if cell_seeds else seeds):
                path = str(Path(prep.work_dir) / f"{run_id(method, site, seed, settings)}.json")
                order.append(path)
                if os.path.isfile(path):
                    try:
                        results[path] = json.loads(Path(path).read_text())
                        continue
                    except json.JSONDecodeError:
                        pass
                tasks.append((method, site, seed, path))
    if tasks:
        progress(f"{len(tasks)} runs to do ({len(results)} reused) with {prep.profile.workers} worker(s)")
        t0 = time.perf_counter()
        if prep.profile.workers > 1 and len(tasks) > 1:
            with mp.get_context("spawn").Pool(min(prep.profile.workers, len(tasks)), initializer=_init_worker, initargs=(prep,)) as pool:
                for done, (path, result) in enumerate(pool.imap_unordered(_work, tasks), 1):
                    results[path] = result
                    _report(progress, done, len(tasks), result, t0)
        else:
            _init_worker(prep)
            for done, task in enumerate(tasks, 1):
                path, result = _work(task)
                results[path] = result
                _report(progress, done, len(tasks), result, t0)
    else:
        progress(f"all {len(results)} runs reused from {prep.work_dir}")
    return [results[p] for p in order]


def _report(progress, done: int, total: int, result: dict, t0: float) -> None:
    rows = result["rows"]
    dice = sum(r["dice"] for r in rows) / max(1, len(rows))
    elapsed = time.perf_counter() - t0
    progress(f"[{done}/{total}] {result['method']:>12} held-out {result['held_out']} seed {result['seed']}: Dice {dice:.3f} "
             f"(epoch {result['selected_epoch']}, {result['wall_s']:.0f} s; elapsed {elapsed / 60:.1f} min, ETA {elapsed / done * (total - done) / 60:.1f} min)")
