"""The command line of ``python -m mcdrl.evaluation.loso``: the leave-one-site-out benchmark and its ablations.

Examples:
    python -m mcdrl.evaluation.loso --profile full                 # the published run -> bundle/docs/results/loso.*
    python -m mcdrl.evaluation.loso --profile full --ablations     # ... plus bundle/docs/results/ablations.*
    python -m mcdrl.evaluation.loso --profile smoke --clip_model mcdrl-tiny-vit --clip_weights W --dictionary_path D --out /tmp/r

Defaults: the demo CLIP and its dictionary from ``bundle/models/``, results into ``bundle/docs/results/``, the
generated world, token cache and per-run results under ``data/benchmark/`` (git-ignored). Interrupted runs
resume: finished runs are reused.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from mcdrl.paths import default_bundle_root

from . import report, runner
from .methods import ABLATION_REFERENCE, ABLATIONS, EXPERIMENTS, METHODS, dictionary_prompts
from .profiles import PROFILES, get_profile


def _parser() -> argparse.ArgumentParser:
    bundle = Path(default_bundle_root())
    p = argparse.ArgumentParser(prog="python -m mcdrl.evaluation.loso", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=sorted(PROFILES), default="full", help="smoke: minutes, mechanics only; full: the published run")
    p.add_argument("--clip_model", default="mcdrl-demo-vit", help="open_clip config name (a ViT)")
    p.add_argument("--clip_weights", default=str(bundle / "models" / "clip" / "mcdrl-demo-vit.safetensors"), help="local CLIP weights file")
    p.add_argument("--dictionary_path", default=str(bundle / "models" / "confounder_dictionary.safetensors"), help="stage-1 artifact of the same CLIP")
    p.add_argument("--out", default=str(bundle / "docs" / "results"), help="where loso.* / ablations.* go")
    p.add_argument("--cache_dir", default=str(bundle.parent / "data" / "benchmark"), help="world, token cache, per-run results")
    p.add_argument("--methods", nargs="+", choices=[*METHODS, *EXPERIMENTS], default=list(METHODS),
                   help=f"the compared methods (default: the published five; experiments: {', '.join(EXPERIMENTS)})")
    p.add_argument("--ablations", action="store_true", help="also run the ablation grid (dictionary size, depth, alpha)")
    p.add_argument("--ablation_sites", nargs="+", default=None, help="held-out sites of the ablation grid (default: the profile's)")
    p.add_argument("--sites", nargs="+", default=None, help="override the profile's sites")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="override the profile's seeds")
    p.add_argument("--ablation_seeds", nargs="+", type=int, default=None, help="seeds of the ablation grid (default: the profile's)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--n_per_site", type=int, default=None)
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: the profile's)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    profile = get_profile(args.profile).replace(
        sites=tuple(args.sites) if args.sites else None, seeds=tuple(args.seeds) if args.seeds else None, epochs=args.epochs,
        n_per_site=args.n_per_site, workers=args.workers, threads=args.threads,
        ablation_sites=tuple(args.ablation_sites) if args.ablation_sites else None,
        ablation_seeds=tuple(args.ablation_seeds) if args.ablation_seeds else None,
    )
    if "mcdrl" not in args.methods and args.ablations:
        raise SystemExit("--ablations needs the mcdrl method (its runs are the ablations' reference)")
    abl_sites = tuple(profile.ablation_sites or profile.sites) if args.ablations else ()
    abl_seeds = tuple(profile.ablation_seeds or profile.seeds)
    if not set(abl_seeds) <= set(profile.seeds):
        raise SystemExit(f"--ablation_seeds {list(abl_seeds)} must be seeds of the main grid {list(profile.seeds)} (full MCDRL is their reference)")
    unknown = [s for s in abl_sites if s not in profile.sites]
    if unknown:
        raise SystemExit(f"--ablation_sites {unknown} are not sites of the profile ({list(profile.sites)})")
    sizes = sorted({m.dictionary_size for m in ABLATIONS.values()} - {None}) if args.ablations else []
    print(f"mcdrl.evaluation.loso: profile {profile.name}, sites {list(profile.sites)}, seeds {list(profile.seeds)}, {profile.epochs} epochs, "
          f"{profile.workers} worker(s) x {profile.threads} thread(s); CLIP {args.clip_model} ({args.clip_weights})", flush=True)
    prep = runner.prepare(profile, args.clip_model, args.clip_weights, args.dictionary_path, args.cache_dir, sizes)
    print(f"prepared in {sum(prep.timings.values()):.0f} s ({', '.join(f'{k} {v:.0f}' for k, v in prep.timings.items())}); runs in {prep.work_dir}", flush=True)
    known = {**METHODS, **EXPERIMENTS}
    methods = [known[m] for m in known if m in args.methods]
    cells = [(m, profile.sites) for m in methods] + ([(m, abl_sites, abl_seeds) for m in ABLATIONS.values()] if args.ablations else [])
    all_records = runner.run_grid(prep, cells, profile.seeds)
    main_names = {m.name for m in methods}
    records = [r for r in all_records if r["method"] in main_names]
    ablation_records = [r for r in all_records if r["method"] not in main_names]
    wall = time.perf_counter() - t_start
    from mcdrl.networks.clip_backbone import resolve_weights, weights_sha256
    meta = {
        "command": "python -m mcdrl.evaluation.loso " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "profile": profile.name, "sites": list(profile.sites), "seeds": list(profile.seeds), "epochs": profile.epochs,
        "n_per_site": profile.n_per_site, "image_size": profile.image_size, "val_fraction": profile.val_fraction,
        "world_seed": profile.world_seed, "views": profile.views, "causal_start_epoch": profile.causal_start,
        "decoder_channels": list(profile.decoder_channels), "train_hyperparameters": profile.train,
        "test_images_per_site": profile.n_per_site,
        "clip_model": args.clip_model, "clip_weights": str(args.clip_weights),
        "clip_weights_sha256": weights_sha256(resolve_weights(args.clip_weights)), "dictionary": str(args.dictionary_path),
        "wall_time_s": wall, "wall_time_min": wall / 60, "timings_s": {**prep.timings, "total": wall},
        "run_wall_s_sum": sum(r["wall_s"] for r in records + ablation_records),
        "cpu_count": os.cpu_count(), "workers": profile.workers, "threads_per_worker": profile.threads,
        "load_average_start_end": [load_start, os.getloadavg()[0]], "torch": torch.__version__,
        "budget_notes": profile.budget_notes(),
        "note_on_reuse": "runs already present in the cache are reused; wall_time covers only what this invocation computed",
    }
    datalist = json.loads(Path(prep.datalist).read_text())
    confs = {e["id"]: e.get("confounders", []) for split in ("training", "validation") for e in datalist.get(split, [])}
    out = Path(args.out)
    doc = report.write_loso_report(out, records, methods, profile.sites, profile.seeds, meta, confs, prep.zero_shot)
    for name, m in doc["methods"].items():
        print(f"{name:>12}: Dice {100 * m['dice_mean']:.1f} ± {100 * m['dice_std']:.1f}  IoU {100 * m['iou_mean']:.1f}  "
              f"acc {100 * m['pixel_accuracy_mean']:.1f}  per site " + " ".join(f"{s} {100 * v:.1f}" for s, v in m["per_site_dice"].items()))
    if args.ablations:
        meta = {**meta, "ablation_sites_note": "" if set(abl_sites) == set(profile.sites) else
                f"Held-out subset {', '.join(abl_sites)} (every other site of the world; fixed in the profile before any result) to fit the CPU budget.",
                "ablation_seeds": list(abl_seeds), "ablation_seeds_note": "" if set(abl_seeds) == set(profile.seeds) else
                f"Seeds {list(abl_seeds)} only (fixed in the profile before any result) to fit the CPU budget; full MCDRL, the reference, is summarised over the same seeds.",
                "dictionary_prompts": {str(k): dictionary_prompts(k) for k in sorted(sizes + [ABLATION_REFERENCE['dictionary size']])}}
        abl = report.write_ablation_report(out, ablation_records, list(ABLATIONS.values()), [r for r in records if r["method"] == "mcdrl"],
                                           ABLATION_REFERENCE, abl_sites, abl_seeds, meta)
        for group, entries in abl["groups"].items():
            print(f"{group}: " + ", ".join(f"{e['value']}: {100 * e['dice_mean']:.1f}" for e in entries))
    print(f"wrote {out}/loso.json, loso.md, loso.png, loso_raw/" + (", ablations.*" if args.ablations else "") + f" in {wall / 60:.1f} min", flush=True)
    return 0
