"""The command line of ``python -m mcdrl.evaluation.loso``: leave-one-site-out through the bundle's own training.

Examples:
    python -m mcdrl.evaluation.loso --profile full                   # the published run -> bundle/docs/results/loso.*
    python -m mcdrl.evaluation.loso --profile quick --validation_only --methods mcdrl --set deconfounding=all --out DIR
    python -m mcdrl.evaluation.loso --profile smoke --clip_model mcdrl-tiny-vit --clip_weights W --dictionary_path D --out /tmp/r

``--validation_only`` trains every run but scores no held-out frame: it reports each run's validation Dice on the
interventional split (the source sites' validation frames with their protocol off), which settings are chosen by,
and on the plain source-site split, which rewards a shortcut. ``--set key=value`` (repeatable, JSON values) changes
the bundle config of every run, e.g. to try a setting of the shipped configuration on all rows at once.

Defaults: the demo CLIP and its dictionary from ``bundle/models/``, results into ``bundle/docs/results/``, the
generated world and per-run results under ``data/benchmark/`` (git-ignored). Interrupted runs resume.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

from mcdrl.evaluation.scoring import parse_sets
from mcdrl.networks.clip_backbone import resolve_weights, weights_sha256
from mcdrl.paths import default_bundle_root, portable_command, repo_relative
from mcdrl.synthetic import PROTOCOLS

from . import report, runner
from .methods import Method, all_methods
from .profiles import PROFILES, get_profile


def _parser() -> argparse.ArgumentParser:
    bundle = Path(default_bundle_root())
    p = argparse.ArgumentParser(prog="python -m mcdrl.evaluation.loso", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=sorted(PROFILES), default="full", help="smoke: mechanics only; quick: <= 15 min; full: the published run (<= 150 min)")
    p.add_argument("--clip_model", default="mcdrl-demo-vit", help="open_clip config name")
    p.add_argument("--clip_weights", default=str(bundle / "models" / "clip" / "mcdrl-demo-vit.safetensors"), help="local CLIP weights file")
    p.add_argument("--dictionary_path", default=str(bundle / "models" / "confounder_dictionary.safetensors"), help="stage-1 artifact of the same CLIP")
    p.add_argument("--out", default=str(bundle / "docs" / "results"), help="where loso.* go")
    p.add_argument("--stem", default="loso", help="report file names: <stem>.json, <stem>.md, ...")
    p.add_argument("--cache_dir", default=str(bundle.parent / "data" / "benchmark"), help="world and per-run results")
    p.add_argument("--methods", nargs="+", choices=list(all_methods()), default=None, help="rows to run (default: the profile's, else all)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="a config override for every run (repeatable)")
    p.add_argument("--validation_only", action="store_true", help="score no held-out frame; report both validation Dice (choose by the interventional one)")
    p.add_argument("--held_out", nargs="+", default=None, help="run only these folds (checks; the report then covers only them)")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="every row on these seeds (instead of the profile's)")
    p.add_argument("--row_seeds", action="append", default=[], metavar="ROW=S[,S...]",
                   help="run ROW on these seeds only (repeatable; e.g. erm_unconfounded=0 when time is short); the report lists them")
    p.add_argument("--protocol", choices=sorted(PROTOCOLS), default=None,
                   help="the world's protocol table (default: the profile's, the generator's own 'issue'; 'strong': the same cues in most frames of their kind)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--n_per_site", type=int, default=None)
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: the profile's)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker")
    return p


def parse_row_seeds(pairs: list[str], known) -> dict[str, tuple[int, ...]]:
    """``["row=0,1", ...]`` -> ``{"row": (0, 1)}``; an unknown row or a bad seed list is a usage error."""
    out = {}
    for pair in pairs:
        row, _, seeds = pair.partition("=")
        if row not in known or not seeds:
            raise SystemExit(f"--row_seeds {pair!r}: expected ROW=S[,S...] with ROW one of {sorted(known)}")
        try:
            out[row] = tuple(int(x) for x in seeds.split(","))
        except ValueError:
            raise SystemExit(f"--row_seeds {pair!r}: seeds must be integers, e.g. {row}=0,1") from None
    return out


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t_start = time.perf_counter()
    bundle = Path(default_bundle_root())
    repo = bundle.parent
    sets = parse_sets(args.set)
    profile = get_profile(args.profile).replace(seeds=tuple(args.seeds) if args.seeds else None, epochs=args.epochs,
                                                n_per_site=args.n_per_site, workers=args.workers, threads=args.threads,
                                                protocol=args.protocol)
    if sets:
        profile = profile.replace(overrides=tuple(dict(profile.overrides, **sets).items()))
    if args.row_seeds:
        profile = profile.replace(row_seeds=tuple(dict(profile.row_seeds, **parse_row_seeds(args.row_seeds, all_methods())).items()))
    say = functools.partial(print, flush=True)
    known = all_methods()
    chosen = args.methods or profile.methods or list(known)
    methods = {m: known[m] for m in known if m in chosen}
    folds = len(args.held_out) if args.held_out else len(profile.sites)
    say(f"mcdrl.evaluation.loso: profile {profile.name}, sites {list(profile.sites)}, seeds {list(profile.seeds)}, {profile.epochs} epochs, "
        f"{profile.workers} worker(s) x {profile.threads} thread(s); CLIP {args.clip_model}" + (f"; every run sets {sets}" if sets else "")
        + f"; rows {list(methods)}: about {profile.estimate_minutes({n: m.cost for n, m in methods.items()}) * folds / len(profile.sites):.0f} min "
        "on 2 free cores with nothing cached (profiles.py)")
    prep = runner.prepare(profile, bundle, args.clip_model, args.clip_weights, args.dictionary_path, args.cache_dir)
    cells = [(m, profile.seeds_of(m.name)) for m in methods.values()]
    records = runner.run_grid(prep, cells, validation_only=args.validation_only, progress=say, held_out=tuple(args.held_out) if args.held_out else None)
    sites = tuple(args.held_out) if args.held_out else profile.sites
    wall = time.perf_counter() - t_start
    meta = {
        "command": portable_command("python -m mcdrl.evaluation.loso", list(argv if argv is not None else sys.argv[1:]), repo),
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "profile": profile.name, "sites": list(profile.sites),
        "seeds": list(profile.seeds), "row_seeds": {n: list(profile.seeds_of(n)) for n in methods if profile.seeds_of(n) != profile.seeds},
        "epochs": profile.epochs, "causal_start_epoch": profile.causal_start, "n_per_site": profile.n_per_site, "n_oracle": profile.oracle_frames,
        "image_size": profile.image_size, "world": repo_relative(Path(prep.world["sampled"]).parents[1], repo), "world_parts": list(prep.world),
        "val_fraction": profile.val_fraction, "world_seed": profile.world_seed, "every_run_sets": sets,
        "clip_model": args.clip_model, "clip_weights": repo_relative(args.clip_weights, repo),
        "clip_weights_sha256": weights_sha256(resolve_weights(args.clip_weights)), "dictionary": repo_relative(args.dictionary_path, repo),
        "grid_fingerprint": prep.fingerprint, "wall_time_min": wall / 60, "run_minutes_sum": sum(r["wall_s"] for r in records) / 60,
        "cpu_count": os.cpu_count(), "workers": profile.workers, "threads": profile.threads, "torch": torch.__version__,
        "budget_notes": profile.budget_notes() + _frozen_notes(methods),
        "note_on_reuse": "runs already present in the cache are reused; wall_time covers only what this invocation computed",
        "runs": _run_counts(records),
    }
    doc = report.write_report(Path(args.out), records, methods, sites, meta, stem=args.stem)
    for name, m in doc["methods"].items():
        val = f"validation Dice interventional {100 * m['validation_dice_interventional']:.1f}, plain {100 * m['validation_dice_plain']:.1f}"
        if doc["validation_only"]:
            say(f"{name:>18}: {val}")
        else:
            say(f"{name:>18}: Dice {100 * m['dice_mean']:.1f} ± {100 * m['dice_std']:.1f}, reversed {100 * m['dice_mean_reversed']:.1f} ± "
                f"{100 * m['dice_std_reversed']:.1f}; worst group {100 * m['worst_group_dice']:.1f} / {100 * m['worst_group_dice_reversed']:.1f}; ({val})")
    if doc.get("shortcut"):
        say(f"ERM learnt the shortcut: {'yes' if doc['shortcut']['learnt'] else 'no'} (reversed - as sampled {-doc['shortcut']['drop_points']:+.1f} points)")
    for t in doc.get("targets", []):
        say(f"{t['target']}: {t['value_points']:+.1f} ({'met' if t['met'] else 'NOT met'})")
    say(f"wrote {repo_relative(Path(args.out) / (args.stem + '.md'), repo)} in {wall / 60:.1f} min")
    return 0


def _run_counts(records: list[dict]) -> dict:
    """Distinct runs of the grid (rows sharing runs count once), how many this invocation computed and how many it
    reused from the cache, and the run time of each group (minutes, as the runs logged it; workers run in parallel)."""
    distinct = [r for r in records if not r.get("same_runs_as")]
    groups = {"computed": [r for r in distinct if not r.get("reused")], "reused": [r for r in distinct if r.get("reused")]}
    return {"distinct": len(distinct), **{k: len(v) for k, v in groups.items()},
            **{f"{k}_run_minutes": round(sum(r["wall_s"] for r in v) / 60, 1) for k, v in groups.items()}}


def _frozen_notes(methods: dict[str, Method]) -> list[str]:
    """Which parts of the CLIP encoder each configuration trains (the benchmark caches nothing; this is the recipe's own)."""
    from monai.bundle import ConfigParser

    bundle = Path(default_bundle_root())
    notes = []
    for files in sorted({m.files for m in methods.values()}):
        p = ConfigParser()
        p.read_config([str(bundle / "configs" / "train.json")] + [str(bundle / "configs" / f) for f in files])
        if "unet.json" in files:
            notes.append("unet.json: a UNet from scratch, every parameter trains.")
            continue
        blocks = p.get("backbone_trainable_blocks")
        what = "all of the CLIP visual encoder" if blocks is None or blocks < 0 else f"the last {blocks} CLIP ViT block(s) (+ ln_post, proj); the trunk below is frozen"
        notes.append(f"{' + '.join(['train.json', *files])}: trains {what} at lr x {p.get('backbone_lr_scale')}, the new modules at lr {p.get('learning_rate')}.")
    return notes
