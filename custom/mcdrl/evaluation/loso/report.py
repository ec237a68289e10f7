"""Aggregate run records into loso.json / loso.md / loso.png and the per-image CSVs.

Aggregation: for each (method, held-out site, seed) the per-image metrics are averaged over the site's images; a
method's LOSO score for one seed is the mean over held-out sites of those site means (every site weighs the same,
as in the paper's LOSO mean); "mean ± std" is over seeds (sample std). Per-site figures are means over seeds.
Every path in the reports is relative to the repository.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

import numpy as np

from mcdrl.utils import atomic_path

__all__ = ["summarise", "target_check", "write_report"]

METRICS = ("dice", "iou")


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def _mean(xs) -> float:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.mean(xs)) if xs else float("nan")


def _std(xs) -> float:
    return float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0


def summarise(records: list[dict], sites) -> dict:
    """One method's LOSO figures: mean ± std over its seeds, per-site means, false alarms, sensitivity, validation."""
    seeds = sorted({r["seed"] for r in records})
    cells = {(r["held_out"], r["seed"]): r for r in records}
    out: dict = {"seeds": seeds, "n_runs": len(records), "n_test_images": sum(len(r["rows"]) for r in records)}
    for m in METRICS:
        site_seed = {(s, k): _mean([row[m] for row in cells[(s, k)]["rows"]]) for s in sites for k in seeds if (s, k) in cells}
        per_seed = [_mean([site_seed[(s, k)] for s in sites if (s, k) in site_seed]) for k in seeds]
        out[f"{m}_mean"], out[f"{m}_std"], out[f"per_seed_{m}"] = _mean(per_seed), _std(per_seed), per_seed
        out[f"per_site_{m}"] = {s: _mean([site_seed[(s, k)] for k in seeds if (s, k) in site_seed]) for s in sites}
    rows = [row for r in records for row in r["rows"]]
    free = [row for row in rows if not row["lesion"]]
    lesion = [row for row in rows if row["lesion"]]
    out["false_alarm_rate"] = _mean([float(row["false_alarm"]) for row in free]) if free else None
    out["sensitivity"] = _mean([float(row["detected"]) for row in lesion]) if lesion else None
    out["dice_lesion_images"] = _mean([row["dice"] for row in lesion]) if lesion else None
    out["source_validation_dice"] = _mean([r["source_validation_dice"] for r in records])
    out["train_minutes_mean"] = _mean([r["train_seconds"] / 60 for r in records])
    out["per_class_dice"] = {c: _mean([row["dice"] for row in lesion if row["lesion_class"] == c]) for c in sorted({row["lesion_class"] for row in lesion})}
    return out


def target_check(s: dict, base: dict, unet: dict | None, sites) -> dict:
    """The issue's targets for the shipped row ``s`` against the Baseline row and the UNet row."""
    gain = s["dice_mean"] - base["dice_mean"]
    won = [x for x in sites if s["per_site_dice"][x] > base["per_site_dice"][x]]
    shared = [k for k in s["seeds"] if k in base["seeds"]]
    paired = [s["per_seed_dice"][s["seeds"].index(k)] - base["per_seed_dice"][base["seeds"].index(k)] for k in shared]
    seed_std = max(s["dice_std"], base["dice_std"])
    out = {"gain_over_baseline_points": 100 * gain, "target_gain_points": 3.0, "gain_met": bool(gain >= 0.03),
           "sites_better": won, "sites_better_count": len(won), "sites_target": 4, "sites_met": len(won) >= 4,
           "seed_std_points": 100 * seed_std, "paired_gain_std_points": 100 * _std(paired),
           "gain_above_twice_seed_std": bool(gain > 2 * seed_std)}
    if unet is not None:
        out.update({"gain_over_unet_points": 100 * (s["dice_mean"] - unet["dice_mean"]), "target_over_unet_points": 5.0,
                    "unet_met": bool(s["dice_mean"] - unet["dice_mean"] >= 0.05)})
    return out


def _fmt(mean, std=None, scale: float = 100.0) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    return f"{mean * scale:.1f}" + (f" ± {std * scale:.1f}" if std is not None else "")


def _csv_text(records: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = ["id", "site", "lesion_class", "dice", "iou", "lesion", "false_alarm", "detected", "lesion_score"]
    w.writerow(["method", "held_out", "seed", *cols])
    for r in records:
        for row in r["rows"]:
            w.writerow([r["method"], r["held_out"], r["seed"], *["" if row.get(c) is None else row.get(c) for c in cols]])
    return buf.getvalue()


def _bar_plot(path: Path, summaries: dict, sites, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(sites) + ["mean"]
    names = list(summaries)
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(8, 1.4 * len(groups) + 3), 4.4), dpi=110)
    for j, name in enumerate(names):
        s = summaries[name]
        ys = [s["per_site_dice"][g] for g in sites] + [s["dice_mean"]]
        es = [0.0] * len(sites) + [s["dice_std"]]
        xs = np.arange(len(groups)) + (j - (len(names) - 1) / 2) * width
        ax.bar(xs, np.array(ys) * 100, width, yerr=np.array(es) * 100, capsize=2, label=name)
    ax.set_xticks(np.arange(len(groups)), [f"held-out {g}" if g != "mean" else "LOSO mean" for g in groups], fontsize=8)
    ax.set_ylabel("Dice (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=min(5, len(names)), loc="lower center", bbox_to_anchor=(0.5, 1.08))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_report(out_dir, records: list[dict], methods: dict, sites, meta: dict, stem: str = "loso") -> dict:
    """Write ``<stem>.json``, ``<stem>.md``, ``<stem>.png`` and ``<stem>_raw/<method>.csv``; returns the JSON document."""
    out_dir = Path(out_dir)
    by = {name: [r for r in records if r["method"] == name] for name in methods}
    by = {k: v for k, v in by.items() if v}
    summaries = {name: summarise(recs, sites) for name, recs in by.items()}
    validation_only = not any(r["rows"] for r in records)
    doc = {"meta": meta, "validation_only": validation_only, "methods": {}}
    identical = _identical_results(by)
    for name in by:
        m = methods[name]
        same = by[name][0].get("same_runs_as")
        doc["methods"][name] = {"description": m.description, "kind": m.kind, "files": ["train.json", *m.files], "overrides": m.overrides,
                                "same_runs_as": same, "same_results_as": identical.get(name), **summaries[name]}
    if not validation_only and "mcdrl" in summaries and "baseline" in summaries:
        doc["target"] = target_check(summaries["mcdrl"], summaries["baseline"], summaries.get("unet"), sites)
    if not validation_only:
        raw = out_dir / f"{stem}_raw"
        raw.mkdir(parents=True, exist_ok=True)
        for name, recs in by.items():
            _write_text(raw / f"{name}.csv", _csv_text(recs))
        _bar_plot(out_dir / f"{stem}.png", {n: s for n, s in summaries.items() if methods[n].kind == "method"}, sites,
                  f"LOSO held-out Dice, {meta.get('clip_model', '')} (mean over seeds)")
    _write_text(out_dir / f"{stem}.json", json.dumps(_clean(doc), indent=1, allow_nan=False) + "\n")
    _write_text(out_dir / f"{stem}.md", _markdown(doc, summaries, methods, sites, meta, validation_only))
    return doc


def _clean(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _reuse_note(runs: dict | None) -> str:
    """``; of the N distinct runs, C were computed by this invocation (X run-minutes) and R reused ...``"""
    if not runs:
        return ""
    if not runs["reused"]:
        return f" for its {runs['distinct']} distinct runs ({runs['computed_run_minutes']:.1f} run-minutes)"
    return (f"; of the {runs['distinct']} distinct runs, {runs['computed']} were computed by this invocation ({runs['computed_run_minutes']:.1f} "
            f"run-minutes) and {runs['reused']} reused from the cache, written by an earlier invocation for the same configurations "
            f"({runs['reused_run_minutes']:.1f} run-minutes when they ran)")


def _identical_results(by: dict) -> dict[str, str]:
    """Rows whose configuration differs from an earlier row's (no ``same_runs_as``) but whose every held-out image
    scored the same, with the same source-site validation Dice: row -> that earlier row."""
    def key(recs):
        return [(r["held_out"], r["seed"], r["source_validation_dice"], r["rows"]) for r in sorted(recs, key=lambda r: (r["held_out"], r["seed"]))]

    seen, same = {}, {}
    for name, recs in by.items():
        if recs[0].get("same_runs_as") or not any(r["rows"] for r in recs):
            continue
        k = json.dumps(key(recs), sort_keys=True)
        if k in seen:
            same[name] = seen[k]
        else:
            seen[k] = name
    return same


def _markdown(doc: dict, summaries: dict, methods: dict, sites, meta: dict, validation_only: bool) -> str:
    lines = ["# Leave-one-site-out benchmark (synthetic world)", "", f"Generated by `{meta.get('command')}`; do not edit by hand.", "",
             f"CLIP `{meta.get('clip_model')}` (weights sha256 `{str(meta.get('clip_weights_sha256'))[:12]}`), dictionary `{meta.get('dictionary')}`; "
             f"profile `{meta.get('profile')}`: held-out sites {', '.join(sites)}; seeds {meta.get('seeds')} (UNet: {meta.get('unet_seeds')}). "
             f"Wall time {meta.get('wall_time_min', float('nan')):.1f} min on {meta.get('cpu_count')} CPU cores ({meta.get('workers')} worker processes, "
             f"{meta.get('threads')} thread each)" + _reuse_note(meta.get("runs")) + ".", ""]
    if validation_only:
        lines += ["**Source-site validation only** (for choosing settings): no held-out image was scored.", "",
                  "| method | source-site validation Dice (mean over folds and seeds) | train min/run |", "|---|---|---|"]
        for name, s in summaries.items():
            lines.append(f"| {name} | {_fmt(s['source_validation_dice'])} | {s['train_minutes_mean']:.1f} |")
        return "\n".join(lines + ["", "## Budget and protocol notes", ""] + [f"- {n}" for n in meta.get("budget_notes", [])]) + "\n"
    base = summaries.get("baseline", {}).get("dice_mean")
    lines += ["Dice in %: per-image foreground Dice at the original resolution (empty ground truth + empty prediction = 1), mean over a "
              "held-out site's images, then over the 6 sites (the LOSO mean), then mean ± std over seeds. Per-site: mean over seeds. "
              "False alarms: lesion-free test frames with any lesion pixel; sensitivity: lesions whose pixels the mask covers >= 10%.", "",
              "| method | Dice | IoU | " + " | ".join(f"Dice {s}" for s in sites) + " | ΔDice vs Baseline | false alarms | sensitivity | source-val Dice | min/run |",
              "|---|---|---|" + "---|" * len(sites) + "---|---|---|---|---|"]
    for kind in ("method", "ablation"):
        if kind == "ablation":
            lines.append("| *ablations of the shipped MCDRL* |" + " |" * (len(sites) + 7))
        for name, s in summaries.items():
            if methods[name].kind != kind:
                continue
            delta = f"{100 * (s['dice_mean'] - base):+.1f}" if base is not None and name != "baseline" else "--"
            lines.append(f"| {name} | {_fmt(s['dice_mean'], s['dice_std'])} | {_fmt(s['iou_mean'], s['iou_std'])} | "
                         + " | ".join(_fmt(s["per_site_dice"][x]) for x in sites)
                         + f" | {delta} | {_fmt(s['false_alarm_rate'])}% | {_fmt(s['sensitivity'])}% | {_fmt(s['source_validation_dice'])} | {s['train_minutes_mean']:.1f} |")
    lines += ["", "Rows:", ""] + [f"- `{n}`: {doc['methods'][n]['description']} (configs {' + '.join(doc['methods'][n]['files'])}"
                                  + (f"; {doc['methods'][n]['overrides']}" if doc['methods'][n]['overrides'] else "") + f"; seeds {summaries[n]['seeds']})"
                                  + (f"; the same configuration as `{doc['methods'][n]['same_runs_as']}` (train.json already has it so), so the same runs."
                                     if doc['methods'][n]['same_runs_as'] else
                                     f"; another configuration than `{doc['methods'][n]['same_results_as']}`'s, but the same results, image for image and "
                                     "seed for seed (what it changes is not read by this configuration)." if doc['methods'][n]['same_results_as'] else ".")
                                  for n in summaries]
    t = doc.get("target")
    if t:
        lines += ["", "## Target check (shipped MCDRL against the Baseline row)", "",
                  f"- Gain: {t['gain_over_baseline_points']:+.1f} Dice points (target >= +3.0: {'met' if t['gain_met'] else 'NOT met'}).",
                  f"- Better at {t['sites_better_count']} of {len(sites)} held-out sites ({', '.join(t['sites_better']) or 'none'}; target >= 4: "
                  f"{'met' if t['sites_met'] else 'NOT met'}).",
                  f"- Seed std (the larger of the two rows): {t['seed_std_points']:.1f} points; paired per-seed gain std {t['paired_gain_std_points']:.1f}; "
                  f"gain above twice the seed std: {'yes' if t['gain_above_twice_seed_std'] else 'NO'}."]
        if "gain_over_unet_points" in t:
            lines.append(f"- Against the UNet row: {t['gain_over_unet_points']:+.1f} points (target >= +5: {'met' if t['unet_met'] else 'NOT met'}).")
    lines += ["", "## Per lesion class: Dice on lesion images (all held-out sites and seeds pooled)", ""]
    classes = sorted({c for s in summaries.values() for c in s["per_class_dice"]})
    lines += ["| method | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for name, s in summaries.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(s["per_class_dice"].get(c)) for c in classes) + " |")
    lines += ["", "## Budget and protocol notes", ""] + [f"- {n}" for n in meta.get("budget_notes", [])] + [""]
    return "\n".join(lines)
