"""The run grid: generate the world once, run every (method, held-out site, seed) cell, keep each result.

Each finished run is written atomically to ``<cache_dir>/runs/<profile>-<fingerprint>/<run id>.json``; a rerun of
the command skips runs whose file exists, so an interrupted benchmark resumes where it stopped (it can run in the
background). The grid's fingerprint covers the profile, the world (its name carries the generator version), the
evaluation's version, the CLIP weights and the dictionary; a run's id is the digest of the configuration it trains
(:func:`run_config`: ``train.json``, the method's files, its overrides) and of the world it trains on, with the
held-out site and the seed. Changing a config therefore re-runs exactly the runs whose configuration it changes,
and two rows that train the same configuration (from any files) share their runs. Runs execute in ``workers``
spawned processes with ``threads`` torch threads.
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

from mcdrl.errors import ConfigError, InputFileError
from mcdrl.networks.clip_backbone import resolve_weights, weights_sha256
from mcdrl.utils import atomic_path

from .methods import Method
from .profiles import Profile
from .world import ensure_world, world_name

__all__ = ["EVALUATION_VERSION", "Prepared", "effective_key", "prepare", "run_config", "run_grid", "run_id"]

#: what a run record holds; part of the grid's fingerprint, so records of another version are never reused
#: (2: issue 22, reversed protocol, interventional selection, both validation scores)
EVALUATION_VERSION = 2

logger = logging.getLogger(__name__)


@dataclass
class Prepared:
    """Picklable description of what every run shares."""

    profile: Profile
    configs_dir: str
    common: dict  # keys every run sets: bundle_root, CLIP, dictionary
    world: dict  # part of the world (world.PARTS) -> its datalist.json
    work_dir: str
    fingerprint: str
    timings: dict


def _sha(path) -> str:
    return weights_sha256(Path(path))


def prepare(profile: Profile, bundle_root, clip_model: str, clip_weights, dictionary_path, cache_dir) -> Prepared:
    """Check the profile against the configuration, generate (or reuse) the world and fix what identifies this grid.

    Raises:
        InputFileError: the dictionary file does not exist.
        ConfigError: the world's frames are not at the size the configuration trains at (``train_size``).
    """
    bundle_root, cache_dir = Path(bundle_root), Path(cache_dir)
    dictionary_path = Path(dictionary_path)
    if not dictionary_path.is_file():
        raise InputFileError(f"--dictionary_path {dictionary_path} does not exist. Build it with: python -m monai.bundle run build_dictionary "
                             "--config_file bundle/configs/dictionary.json (with the same --clip_model/--clip_weights).")
    configs_dir = bundle_root / "configs"
    _check_train_size(profile, configs_dir)
    t = time.perf_counter()
    world = ensure_world(cache_dir, profile.sites, profile.n_per_site, profile.world_seed, profile.image_size, profile.val_fraction,
                         profile.oracle_frames, profile.protocol)
    timings = {"world_s": round(time.perf_counter() - t, 1)}
    weights = resolve_weights(clip_weights)
    # the configs are part of each run's id (run_config), not of the grid's
    # what a run's result depends on: the world and the budget, not the profile's name, seeds or rows (so the quick
    # profile's runs are the full profile's runs with the same world and budget)
    # (the protocol is in the world's name, so that a world of the generator's own protocol keeps its runs' ids)
    identity = {k: v for k, v in asdict(profile).items()
                if k not in ("name", "workers", "threads", "seeds", "row_seeds", "methods", "protocol")}
    name = world_name(profile.sites, profile.n_per_site, profile.world_seed, profile.image_size, profile.val_fraction, profile.oracle_frames,
                      profile.protocol)
    fingerprint = hashlib.sha256(json.dumps([identity, name, EVALUATION_VERSION, clip_model, weights_sha256(weights), _sha(dictionary_path)],
                                            sort_keys=True, default=str).encode()).hexdigest()[:10]
    work_dir = cache_dir / "runs" / fingerprint
    work_dir.mkdir(parents=True, exist_ok=True)
    common = {"bundle_root": str(bundle_root), "clip_model": clip_model, "clip_weights": str(weights) if weights else None,
              "dictionary_path": str(dictionary_path)}
    return Prepared(profile, str(configs_dir), common, {k: str(v) for k, v in world.items()}, str(work_dir), fingerprint, timings)


def _check_train_size(profile: Profile, configs_dir: Path) -> None:
    """The world's frames must be at the size every run trains at (``train_size`` of train.json or the profile's
    overrides; the variant files do not change it), so that no run resamples its frames."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(configs_dir / "train.json"))
    size = dict(profile.overrides).get("train_size", parser.get("train_size"))
    if size != profile.image_size:
        raise ConfigError(f"profile {profile.name}: the world's frames are {profile.image_size} px but {configs_dir / 'train.json'} "
                          f"trains at train_size {size}; set the profile's image_size to {size} (or its overrides' train_size)")


def effective_key(method: Method, configs_dir: str | os.PathLike) -> dict:
    """The method's config files and the overrides that change something: an override equal to what train.json (plus the
    method's files) already sets is dropped, so two methods that train the same configuration share their runs."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(Path(configs_dir) / "train.json")] + [str(Path(configs_dir) / f) for f in method.files])
    changed = {}
    for k, v in method.overrides.items():
        try:
            current = parser.get_parsed_content(k, instantiate=False)
        except Exception:  # noqa: BLE001 - a key the config does not have: keep the override
            current = object()
        if current != v:
            changed[k] = v
    return {"files": list(method.files), "overrides": changed}


def run_config(method: Method, configs_dir: str | os.PathLike) -> dict:
    """The configuration ``method``'s runs train, unparsed: ``train.json``, then the method's files, then the overrides
    of :func:`effective_key` (the run's per-run keys, such as the held-out site, the seed and the profile's budget,
    come on top and are the same for every method). Every config a run reads is one of those files (``run_one``
    trains and scores with them and nothing else), so this is what a run's result depends on besides the profile,
    the CLIP and the dictionary; the bundle's metadata (changelog, reported metrics) is not part of it."""
    from monai.bundle import ConfigParser

    # a parser of its own: effective_key's has resolved content (get_parsed_content), after which parser.get() is no
    # longer the unparsed configuration, and the ids (and the runs they name) would change
    parser = ConfigParser()
    parser.read_config([str(Path(configs_dir) / "train.json")] + [str(Path(configs_dir) / f) for f in method.files])
    for k, v in effective_key(method, configs_dir)["overrides"].items():
        parser[k] = v
    return parser.get()


def run_id(method: Method, held_out: str, seed: int, validation_only: bool, configs_dir: str | os.PathLike) -> str:
    """``<digest>-<held-out site>-s<seed>``: the digest of :func:`run_config` and the training world, so identical
    configurations trained on the same frames share runs, whichever files or overrides set them."""
    digest = hashlib.sha256(json.dumps([run_config(method, configs_dir), method.world], sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{digest}-{held_out}-s{seed}{'-val' if validation_only else ''}"


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for h in list(logging.getLogger().handlers):  # each run's own log file gets its INFO lines, the terminal warnings only
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
            h.setLevel(logging.WARNING)


def _work(task: tuple) -> tuple[str, dict]:
    from .run import run_one

    prep, method, held_out, seed, out_path, validation_only = task
    run_dir = Path(out_path).with_suffix("")
    record = run_one(method, prep.profile, held_out, seed, Path(prep.configs_dir), prep.common, prep.world, run_dir, validation_only)
    with atomic_path(out_path) as tmp:
        Path(tmp).write_text(json.dumps(record))
    return out_path, record


def run_grid(prep: Prepared, cells: list[tuple[Method, tuple[int, ...]]], validation_only: bool = False, progress=print,
             held_out: tuple[str, ...] | None = None) -> list[dict]:
    """Run (or reuse) every (method, held-out site, seed) of ``cells`` = [(method, seeds), ...]; records in grid order.

    ``held_out`` restricts the folds (the world keeps every site of the profile). Each returned record also says
    ``same_runs_as`` (the row whose runs it shares, or None) and ``reused`` (True: read from the cache, written by an
    earlier invocation; False: computed now)."""
    tasks, results, order, planned, reused = [], {}, [], {}, set()
    for method, seeds in cells:
        for site in held_out or prep.profile.sites:
            for seed in seeds:
                path = str(Path(prep.work_dir) / f"{run_id(method, site, seed, validation_only, prep.configs_dir)}.json")
                order.append((method.name, path))
                if path in planned:
                    continue
                planned[path] = method.name
                if os.path.isfile(path):
                    try:
                        results[path] = json.loads(Path(path).read_text())
                        reused.add(path)
                        continue
                    except json.JSONDecodeError:
                        pass
                tasks.append((prep, method, site, seed, path, validation_only))
    if tasks:
        progress(f"{len(tasks)} runs to do ({len(results)} reused) with {prep.profile.workers} worker(s)")
        t0 = time.perf_counter()
        if prep.profile.workers > 1 and len(tasks) > 1:
            ctx = mp.get_context("spawn")
            with ctx.Pool(min(prep.profile.workers, len(tasks)), initializer=_init_worker, initargs=(prep.profile.threads,), maxtasksperchild=8) as pool:
                for done, (path, result) in enumerate(pool.imap_unordered(_work, tasks), 1):
                    results[path] = result
                    _report(progress, done, len(tasks), result, t0)
        else:
            _init_worker(prep.profile.threads)
            for done, task in enumerate(tasks, 1):
                path, result = _work(task)
                results[path] = result
                _report(progress, done, len(tasks), result, t0)
    else:
        progress(f"all {len(results)} runs reused from {prep.work_dir}")
    return [{**results[p], "method": name, "same_runs_as": planned[p] if planned[p] != name else None, "reused": p in reused}
            for name, p in order]


def _report(progress, done: int, total: int, result: dict, t0: float) -> None:
    rows, rev = result["rows"], result["rows_reversed"]
    held = (f"held-out Dice {sum(r['dice'] for r in rows) / len(rows):.3f}, reversed {sum(r['dice'] for r in rev) / len(rev):.3f}; "
            if rows and rev else "")
    elapsed = time.perf_counter() - t0
    progress(f"[{done}/{total}] {result['method']:>18} held-out {result['held_out']} seed {result['seed']}: {held}validation Dice "
             f"interventional {result['validation_dice_interventional']:.3f}, plain {result['validation_dice_plain']:.3f} "
             f"(epoch {result['selected_epoch']}, {result['wall_s']:.0f} s; elapsed {elapsed / 60:.1f} min, "
             f"ETA {elapsed / done * (total - done) / 60:.1f} min)")
