"""The README's tables from ``runs.json`` and the baseline's files in ``../head_source_sites/``: the lesion score's AUC
per held-out source site, the rule's figures, Dice on the 600 frames, and the presence targets (false alarms /
lesion-level sensitivity in %).

    python bundle/docs/results/experiments/presence_in_training/table.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SITES = ("A", "B", "C", "D", "E")
TARGET_FA, TARGET_DROP = 0.20, 0.05
DICE_TOLERANCE = 0.01
# each run's rule reads only its own variants: run 1's are not candidates again in run 2
RUNS = {"run 1": ("contrast_1", "contrast_1_backbone_0.1"), "run 2": ("contrast_1_tau_0.07",)}


def _baseline() -> dict:
    """The shipped keys' fold models, as ``../head_source_sites/`` read them:
    {site: {"auc", "dice", "held_out_source_site", "rows"}}."""
    base = HERE.parent / "head_source_sites"
    runs = {r["held_out"]: r for r in json.loads((base / "runs.json").read_text()) if r["classifier"] == "text_queries"}
    check = json.loads((base / "profile_check.json").read_text())["sites"]
    return {s: {"auc": check[s]["lesion_score_auc"], "dice": runs[s]["held_out_source_site"]["dice"],
                "held_out_source_site": runs[s]["held_out_source_site"], "rows": check[s]["rows"]} for s in SITES}


def _variants() -> dict:
    """{variant: {site: {"auc", "dice", "held_out_source_site", "rows"}}} for every fold recorded so far; ``main``
    leaves a variant without all five folds out of the rule."""
    out: dict = {}
    for r in json.loads((HERE / "runs.json").read_text()):
        out.setdefault(r["variant"], {})[r["held_out"]] = {
            "auc": r["presence"]["lesion_score_auc"], "dice": r["held_out_source_site"]["dice"],
            "held_out_source_site": r["held_out_source_site"], "rows": r["presence"]["rows"]}
    return out


def main() -> int:
    rows = {"baseline (shipped keys)": _baseline()}
    variants = _variants()
    for name, folds in variants.items():
        if set(folds) != set(SITES):
            print(f"{name}: {len(folds)} of 5 folds so far ({', '.join(sorted(folds))}); not in the rule yet")
    rows.update({k: v for k, v in variants.items() if set(v) == set(SITES)})
    base = rows["baseline (shipped keys)"]
    print("| model | AUC " + " / ".join(SITES) + " | mean AUC | AUC gain (per-fold std) | Dice " + " / ".join(SITES) + " | mean Dice | Dice change (per-fold std) |")
    print("|---|---|---|---|---|---|---|")
    for name, folds in rows.items():
        auc = np.array([folds[s]["auc"] for s in SITES])
        dice = np.array([folds[s]["dice"] for s in SITES])
        gain = auc - np.array([base[s]["auc"] for s in SITES])
        ddice = dice - np.array([base[s]["dice"] for s in SITES])
        first = name.startswith("baseline")
        print(f"| {name} | " + " / ".join(f"{v:.3f}" for v in auc) + f" | {auc.mean():.3f} | "
              + ("-" if first else f"{gain.mean():+.3f} ({gain.std(ddof=1):.3f})") + " | "
              + " / ".join(f"{v:.3f}" for v in dice) + f" | {dice.mean():.3f} | " + ("-" if first else f"{ddice.mean():+.3f} ({ddice.std(ddof=1):.3f})") + " |")
    for run, names in RUNS.items():
        done = [k for k in names if k in rows]
        if not done:
            continue
        cand = max(done, key=lambda k: np.mean([rows[k][s]["auc"] for s in SITES]))
        gain = np.array([rows[cand][s]["auc"] - base[s]["auc"] for s in SITES])
        ddice = np.mean([rows[cand][s]["dice"] for s in SITES]) - np.mean([base[s]["dice"] for s in SITES])
        wins = gain.mean() > 0 and gain.mean() > gain.std(ddof=1) and ddice >= -DICE_TOLERANCE
        print(f"\n{run}: candidate {cand}; mean AUC gain {gain.mean():+.4f}, per-fold std {gain.std(ddof=1):.4f}; "
              f"mean Dice change {ddice:+.4f} -> {'replaces the shipped keys' if wins else 'does not replace the shipped keys'}\n")
    print("| model | held-out source site | validator's threshold | profile: mixture (drop) | ceiling at <= 20% | both targets (mixture) |")
    print("|---|---|---|---|---|---|")
    for name, folds in rows.items():
        for s in SITES:
            u, m, c = (folds[s]["rows"][k] for k in ("uncalibrated", "profile: mixture", "reference (labels)"))
            ok = m["false_alarm_rate"] <= TARGET_FA and m["sensitivity_drop"] <= TARGET_DROP
            print(f"| {name} | {s} | {100 * u['false_alarm_rate']:.0f} / {100 * u['sensitivity']:.0f} | "
                  f"{100 * m['false_alarm_rate']:.0f} / {100 * m['sensitivity']:.0f} ({100 * m['sensitivity_drop']:+.0f}) | "
                  f"{100 * c['false_alarm_rate']:.0f} / {100 * c['sensitivity']:.0f} | {'met' if ok else 'missed'} |")
    print("\n| model | mean false alarms / sensitivity, validator's threshold (300 frames) | 600 frames: false alarms / sensitivity / small-lesion sensitivity | sites where the mixture meets both targets |")
    print("|---|---|---|---|")
    for name, folds in rows.items():
        fa = np.mean([folds[s]["rows"]["uncalibrated"]["false_alarm_rate"] for s in SITES])
        se = np.mean([folds[s]["rows"]["uncalibrated"]["sensitivity"] for s in SITES])
        h = {k: np.mean([folds[s]["held_out_source_site"][k] for s in SITES]) for k in ("false_alarm_rate", "sensitivity", "sensitivity_small")}
        met = [s for s in SITES if folds[s]["rows"]["profile: mixture"]["false_alarm_rate"] <= TARGET_FA
               and folds[s]["rows"]["profile: mixture"]["sensitivity_drop"] <= TARGET_DROP]
        print(f"| {name} | {100 * fa:.0f}% / {100 * se:.0f}% | {100 * h['false_alarm_rate']:.0f}% / {100 * h['sensitivity']:.0f}% / "
              f"{100 * h['sensitivity_small']:.0f}% | {len(met)} of 5" + (f" ({', '.join(met)})" if met else "") + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
