"""Aggregate run records into loso.json / loso.md / loso.png, the per-image CSVs, and the ablation report.

Aggregation: for each (method, held-out site, seed) the per-image metrics are averaged over the site's images;
a method's LOSO score for one seed is the mean over held-out sites of those site means (every site weighs the
same, as in the paper's LOSO mean); "mean ± std" is over seeds. Per-site figures are mean ± std over seeds.
HD95 is averaged over the images where it is defined (both masks non-empty).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

import numpy as np

from mcdrl.networks.prompts import LESION_CLASSES
from mcdrl.utils import atomic_path

__all__ = ["METRICS", "summarise", "write_ablation_report", "write_loso_report"]

METRICS = ("dice", "iou", "pixel_accuracy", "hd95")
_LABEL = {"dice": "Dice", "iou": "IoU", "pixel_accuracy": "Pixel acc.", "hd95": "HD95 (px)"}


def _publish(tmp) -> None:
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are for everyone to read


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)
        _publish(tmp)


def _cell_means(records: list[dict]) -> dict:
    """{(site, seed): {metric: mean over the site's images}}."""
    out = {}
    for r in records:
        vals = {}
        for m in METRICS:
            xs = [row[m] for row in r["rows"] if row[m] is not None and not (isinstance(row[m], float) and math.isnan(row[m]))]
            vals[m] = float(np.mean(xs)) if xs else float("nan")  # HD95: NaN when undefined for every image
        out[(r["held_out"], r["seed"])] = vals
    return out


def _clean(obj):
    """NaN -> None recursively, so the published JSON is strict JSON."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def _nanmean(xs) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return float(np.mean(xs)) if xs else float("nan")


def summarise(records: list[dict], sites, seeds) -> dict:
    """Mean ± std over seeds of the site-averaged metrics, and per-site mean ± std, for one method's records."""
    cells = _cell_means(records)
    out: dict = {"n_runs": len(records), "n_test_images": sum(len(r["rows"]) for r in records)}
    for m in METRICS:
        per_seed = [_nanmean([cells[(s, k)][m] for s in sites]) for k in seeds]
        out[f"{m}_mean"] = float(np.mean(per_seed))
        out[f"{m}_std"] = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0
        out[f"per_seed_{m}"] = per_seed
        out[f"per_site_{m}"] = {s: float(np.mean([cells[(s, k)][m] for k in seeds])) for s in sites}
        out[f"per_site_{m}_std"] = {s: (float(np.std([cells[(s, k)][m] for k in seeds], ddof=1)) if len(seeds) > 1 else 0.0) for s in sites}
    epochs = [r["selected_epoch"] for r in records]
    out["selected_epochs"] = {str(e): epochs.count(e) for e in sorted(set(epochs))}
    recalls = [r["mtrs_lesion_recall"] for r in records if r.get("mtrs_lesion_recall") is not None]
    out["mtrs_lesion_recall"] = float(np.mean(recalls)) if recalls else None
    out["per_class_dice"] = {}
    for k, name in enumerate(LESION_CLASSES + ["none"]):
        ci = k if name != "none" else -1
        xs = [row["dice"] for r in records for row in r["rows"] if row["lesion_class"] == ci]
        if xs:
            out["per_class_dice"][name] = float(np.mean(xs))
    return out


def _attention_stats(records: list[dict], world_confounders: dict) -> dict | None:
    """Mean attention per confounder, and mean(present) - mean(absent) per confounder over the test images."""
    recs = [r for r in records if r.get("attention")]
    if not recs:
        return None
    names = recs[0]["confounder_names"]
    weights, present = [], []
    for r in recs:
        for row, w in zip(r["rows"], r["attention"]):
            weights.append(w)
            present.append([n in world_confounders.get(row["id"], ()) for n in names])
    w, p = np.array(weights), np.array(present, bool)
    diff = {}
    for j, n in enumerate(names):
        diff[n] = float(w[p[:, j], j].mean() - w[~p[:, j], j].mean()) if p[:, j].any() and (~p[:, j]).any() else None
    ent = -(w * np.log(np.clip(w, 1e-12, None))).sum(1)
    return {
        "confounders": names,
        "mean_weight": {n: float(x) for n, x in zip(names, w.mean(0))},
        "present_minus_absent": diff,
        "uniform_weight": 1.0 / len(names),
        "mean_entropy": float(ent.mean()),
        "max_entropy": float(np.log(len(names))),
        "per_image_weight_std": float(w.std(0).mean()),
    }


def _fmt(mean: float, std: float, scale: float = 100.0, digits: int = 1) -> str:
    if mean is None or math.isnan(mean):
        return "n/a"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def _csv_text(records: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["held_out", "seed", "id", "lesion_class", *METRICS])
    names = LESION_CLASSES
    for r in records:
        for row in r["rows"]:
            cls = names[row["lesion_class"]] if row["lesion_class"] >= 0 else "none"
            vals = ["" if (row[m] is None or (isinstance(row[m], float) and math.isnan(row[m]))) else f"{row[m]:.4g}" for m in METRICS]
            w.writerow([row["held_out"], row["seed"], row["id"], cls, *vals])
    return buf.getvalue()


def _bar_plot(path: Path, summaries: dict, sites, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(sites) + ["mean"]
    names = list(summaries)
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(max(7, 1.3 * len(groups) + 2), 4.2), dpi=110)
    for j, name in enumerate(names):
        s = summaries[name]
        ys = [s["per_site_dice"][g] for g in sites] + [s["dice_mean"]]
        es = [s["per_site_dice_std"][g] for g in sites] + [s["dice_std"]]
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
        _publish(tmp)
    plt.close(fig)


def write_loso_report(out_dir, records: list[dict], methods, sites, seeds, meta: dict, world_confounders: dict, zero_shot: dict | None = None) -> dict:
    """Write loso.json, loso.md, loso.png and loso_raw/<method>.csv; returns the JSON document."""
    out_dir = Path(out_dir)
    by_method = {m.name: [r for r in records if r["method"] == m.name] for m in methods}
    summaries = {name: summarise(recs, sites, seeds) for name, recs in by_method.items()}
    doc = {"meta": meta, "methods": {}}
    for m in methods:
        s = summaries[m.name]
        doc["methods"][m.name] = {"description": m.description, "settings": by_method[m.name][0]["settings"], **s}
    if "mcdrl" in by_method and "baseline" in by_method:
        doc["comparison"] = _paired(by_method, sites, seeds, summaries)
    doc["diagnostics"] = {"dictionary_zero_shot": zero_shot,
                          "mcdrl_attention": _attention_stats(by_method.get("mcdrl", []), world_confounders),
                          "wo_mtrs_attention": _attention_stats(by_method.get("wo_mtrs", []), world_confounders)}
    raw = out_dir / "loso_raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name, recs in by_method.items():
        _write_text(raw / f"{name}.csv", _csv_text(recs))
    _write_text(out_dir / "loso.json", json.dumps(_clean(doc), indent=1, allow_nan=False) + "\n")
    _write_text(out_dir / "loso.md", _loso_markdown(doc, summaries, methods, sites, seeds, meta))
    _bar_plot(out_dir / "loso.png", summaries, sites, f"LOSO held-out Dice, {meta.get('clip_model', '')} ({len(seeds)} seeds, mean ± std)")
    return doc


def _paired(by_method: dict, sites, seeds, summaries: dict) -> dict:
    out = {}
    base_cells = _cell_means(by_method["baseline"])
    for name, recs in by_method.items():
        if name == "baseline":
            continue
        cells = _cell_means(recs)
        diffs = [cells[(s, k)]["dice"] - base_cells[(s, k)]["dice"] for s in sites for k in seeds]
        out[f"{name}_minus_baseline_dice"] = {
            "mean": summaries[name]["dice_mean"] - summaries["baseline"]["dice_mean"],
            "cells_won": int(sum(d > 0 for d in diffs)), "cells": len(diffs),
            "per_site": {s: summaries[name]["per_site_dice"][s] - summaries["baseline"]["per_site_dice"][s] for s in sites},
        }
    mc = summaries["mcdrl"]["dice_mean"]
    others = {n: s["dice_mean"] for n, s in summaries.items() if n != "mcdrl"}
    out["target"] = {
        "mcdrl_minus_baseline_points": 100 * (mc - summaries["baseline"]["dice_mean"]),
        "met_5_points_over_baseline": bool(mc - summaries["baseline"]["dice_mean"] >= 0.05),
        "above_every_other_method": bool(all(mc > v for v in others.values())),
    }
    return out


def _loso_markdown(doc: dict, summaries: dict, methods, sites, seeds, meta: dict) -> str:
    lines = [
        "# Leave-one-site-out benchmark (synthetic world)",
        "",
        f"Generated by `{meta.get('command', 'python -m mcdrl.evaluation.loso')}`; do not edit by hand.",
        "",
        f"CLIP `{meta.get('clip_model')}` (weights sha256 `{str(meta.get('clip_weights_sha256'))[:12]}`), dictionary "
        f"`{meta.get('dictionary')}`; profile `{meta.get('profile')}`: held-out sites {', '.join(sites)}, seeds {list(seeds)}, "
        f"{meta.get('test_images_per_site')} test images per held-out site. Wall time {meta.get('wall_time_min', float('nan')):.1f} min on "
        f"{meta.get('cpu_count')} CPU cores ({meta.get('workers')} worker processes).",
        "",
        "Scores in % (per-image foreground metrics at the original resolution; empty ground truth + empty prediction = 1). "
        "LOSO mean = mean over held-out sites, then mean ± std over seeds. Per-site: mean ± std over seeds.",
        "",
        "## LOSO mean",
        "",
        "| method | Dice | IoU | Pixel acc. | HD95 (px) | ΔDice vs baseline |",
        "|---|---|---|---|---|---|",
    ]
    base = summaries.get("baseline", {}).get("dice_mean")
    for m in methods:
        s = summaries[m.name]
        delta = f"{100 * (s['dice_mean'] - base):+.1f}" if base is not None and m.name != "baseline" else "--"
        lines.append(f"| {m.name} | {_fmt(s['dice_mean'], s['dice_std'])} | {_fmt(s['iou_mean'], s['iou_std'])} | "
                     f"{_fmt(s['pixel_accuracy_mean'], s['pixel_accuracy_std'])} | {_fmt(s['hd95_mean'], s['hd95_std'], 1.0)} | {delta} |")
    for metric in ("dice", "iou", "pixel_accuracy"):
        lines += ["", f"## Per held-out site: {_LABEL[metric]}", "", "| method | " + " | ".join(sites) + " |", "|---|" + "---|" * len(sites)]
        for m in methods:
            s = summaries[m.name]
            lines.append(f"| {m.name} | " + " | ".join(_fmt(s[f"per_site_{metric}"][x], s[f"per_site_{metric}_std"][x]) for x in sites) + " |")
    lines += ["", "## Per lesion class: Dice (all held-out sites and seeds pooled)", "",
              "| method | " + " | ".join(LESION_CLASSES + ["none"]) + " |", "|---|" + "---|" * (len(LESION_CLASSES) + 1)]
    for m in methods:
        pc = summaries[m.name]["per_class_dice"]
        lines.append(f"| {m.name} | " + " | ".join(f"{100 * pc[c]:.1f}" if c in pc else "--" for c in LESION_CLASSES + ["none"]) + " |")
    comp = doc.get("comparison")
    if comp:
        t = comp["target"]
        lines += ["", "## Target check", "",
                  f"- MCDRL − Baseline: {t['mcdrl_minus_baseline_points']:+.1f} Dice points (target ≥ +5: {'met' if t['met_5_points_over_baseline'] else 'not met'}).",
                  f"- MCDRL above every other method: {'yes' if t['above_every_other_method'] else 'no'}."]
        for name, c in comp.items():
            if name != "target":
                lines.append(f"- {name.replace('_minus_baseline_dice', '')} − baseline: {100 * c['mean']:+.1f} points; better in {c['cells_won']}/{c['cells']} (site, seed) cells.")
    lines += ["", "## Diagnostics", "", "| method | selected epochs (count) | MTRS lesion-token recall |", "|---|---|---|"]
    for m in methods:
        s = summaries[m.name]
        rec, alpha = s["mtrs_lesion_recall"], doc["methods"][m.name]["settings"]["alpha"]
        rec_text = f"{rec:.2f} (alpha {alpha})" if rec is not None else "--"
        epochs = ", ".join(f"{k}: {v}" for k, v in s["selected_epochs"].items())
        lines.append(f"| {m.name} | {epochs} | {rec_text} |")
    att = (doc.get("diagnostics") or {}).get("mcdrl_attention")
    if att:
        lines += ["", f"Intervention attention of `mcdrl` on the test images (last layer, mean over heads and selected regions; uniform = "
                  f"{att['uniform_weight']:.3f}; mean entropy {att['mean_entropy']:.3f} of max {att['max_entropy']:.3f}; mean per-image std "
                  f"{att['per_image_weight_std']:.4f}):", "", "| confounder | mean weight | present − absent |", "|---|---|---|"]
        for n in att["confounders"]:
            d = att["present_minus_absent"][n]
            lines.append(f"| {n} | {att['mean_weight'][n]:.4f} | {f'{d:+.4f}' if d is not None else '--'} |")
    zs = (doc.get("diagnostics") or {}).get("dictionary_zero_shot")
    if zs:
        lines += ["", "What the frozen CLIP reads from the prompts (image embedding vs. text embedding, before any training; all "
                  f"{zs['n_images']} images of the world): lesion-class zero-shot accuracy {zs['class_zero_shot_accuracy']:.2f} "
                  f"(chance {zs['class_chance']:.2f}); per confounder, the AUC of cos(F_vis, z_m) for images with vs. without it:", "",
                  "| confounder | AUC |", "|---|---|"]
        for n, v in zs["confounder_auc"].items():
            lines.append(f"| {n} | {f'{v:.2f}' if v is not None else '--'} |")
        lines += ["", "Site signature through the dictionary (best single entry per site): "
                  + "; ".join(f"{s}: {e['entry']} AUC {e['auc']:.2f}" for s, e in zs["site_auc"].items() if e["auc"] is not None) + "."]
    lines += ["", "## Budget and protocol notes", ""] + [f"- {n}" for n in meta.get("budget_notes", [])] + [""]
    return "\n".join(lines)


def write_ablation_report(out_dir, records: list[dict], ablations, reference_records: list[dict], reference_values: dict, sites, seeds, meta: dict) -> dict:
    """Write ablations.json, ablations.md and ablations.png. ``reference_records`` are full MCDRL's runs on ``sites``."""
    out_dir = Path(out_dir)
    ref = summarise([r for r in reference_records if r["held_out"] in sites and r["seed"] in seeds], sites, seeds)
    groups: dict = {}
    for group, value in reference_values.items():
        groups[group] = [{"method": "mcdrl", "value": value, **_short(ref)}]
    for m in ablations:
        recs = [r for r in records if r["method"] == m.name]
        groups.setdefault(m.tags["group"], []).append({"method": m.name, "value": m.tags["value"], **_short(summarise(recs, sites, seeds))})
    for g in groups.values():
        g.sort(key=lambda e: e["value"])
    doc = {"meta": meta, "sites": list(sites), "seeds": list(seeds), "groups": groups,
           "mcdrl_above_every_ablation": bool(all(e["dice_mean"] < ref["dice_mean"] for g in groups.values() for e in g if e["method"] != "mcdrl"))}
    _write_text(out_dir / "ablations.json", json.dumps(_clean(doc), indent=1, allow_nan=False) + "\n")
    lines = ["# MCDRL ablations (synthetic world, leave-one-site-out)", "", f"Generated by `{meta.get('command')}`; do not edit by hand.", "",
             f"Held-out sites {', '.join(sites)}, seeds {list(seeds)}; Dice and IoU in %, LOSO mean ± std over seeds. The row marked * is full MCDRL "
             "(the same runs as in loso.md, restricted to these held-out sites). Each ablation changes one setting of full MCDRL; "
             "everything else (data, views, batches, steps, epoch selection on source validation) is the same. "
             f"{meta.get('ablation_sites_note', '')} {meta.get('ablation_seeds_note', '')}".rstrip(), ""]
    for group, entries in groups.items():
        lines += [f"## {group}", "", f"| {group} | Dice | IoU | " + " | ".join(f"Dice {s}" for s in sites) + " |", "|---|---|---|" + "---|" * len(sites)]
        for e in entries:
            star = " *" if e["method"] == "mcdrl" else ""
            lines.append(f"| {e['value']}{star} | {_fmt(e['dice_mean'], e['dice_std'])} | {_fmt(e['iou_mean'], e['iou_std'])} | "
                         + " | ".join(f"{100 * e['per_site_dice'][s]:.1f}" for s in sites) + " |")
        lines.append("")
    lines.append(f"Full MCDRL above every ablation: {'yes' if doc['mcdrl_above_every_ablation'] else 'no'}.")
    lines += ["", "Dictionary prompts (M = 3, 6: round-robin over the five families; 15: the 12 plus three [ours]):", ""]
    for k, v in meta.get("dictionary_prompts", {}).items():
        lines.append(f"- M = {k}: {', '.join(v)}")
    _write_text(out_dir / "ablations.md", "\n".join(lines) + "\n")
    _ablation_plot(out_dir / "ablations.png", groups)
    return doc


def _short(s: dict) -> dict:
    return {k: s[k] for k in ("dice_mean", "dice_std", "iou_mean", "iou_std", "per_site_dice", "per_seed_dice")}


def _ablation_plot(path: Path, groups: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(groups), figsize=(3.6 * len(groups), 3.4), dpi=110, squeeze=False)
    for ax, (group, entries) in zip(axes[0], groups.items()):
        xs = np.arange(len(entries))
        ys = [100 * e["dice_mean"] for e in entries]
        es = [100 * e["dice_std"] for e in entries]
        colors = ["tab:red" if e["method"] == "mcdrl" else "tab:blue" for e in entries]
        ax.bar(xs, ys, yerr=es, capsize=3, color=colors)
        ax.set_xticks(xs, [str(e["value"]) for e in entries])
        lo = min(y - e for y, e in zip(ys, es))
        ax.set_ylim(max(0, lo - 5), min(100, max(y + e for y, e in zip(ys, es)) + 3))
        ax.set_title(group, fontsize=10)
        ax.set_ylabel("held-out Dice (%)")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("MCDRL ablations (red: the full model's setting)", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
        _publish(tmp)
    plt.close(fig)
