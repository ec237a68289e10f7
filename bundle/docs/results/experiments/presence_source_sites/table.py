"""The README's tables from ``runs.json``: AUC per held-out source site and score, the rule's figures, and the
presence targets (false alarms / lesion-level sensitivity in %) with each score.

    python bundle/docs/results/experiments/presence_source_sites/table.py [runs_l2_wide.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SCORES = ("clip", "probe", "probe_doz_neg", "probe_doz_all")
TARGET_FA, TARGET_DROP = 0.20, 0.05


def main(argv: list[str] | None = None) -> int:
    name = (argv if argv is not None else sys.argv[1:]) or ["runs.json"]
    runs = sorted(json.loads((HERE / name[0]).read_text()), key=lambda r: r["held_out"])
    sites = [r["held_out"] for r in runs]
    auc = {s: np.array([r["scores"][s]["auc"] for r in runs]) for s in SCORES}
    print("| score | " + " | ".join(sites) + " | mean | gain over clip (std) |")
    print("|---|" + "---|" * (len(sites) + 2))
    for s in SCORES:
        gain = auc[s] - auc["clip"]
        tail = "-" if s == "clip" else f"{gain.mean():+.3f} ({gain.std(ddof=1):.3f})"
        print(f"| {s} | " + " | ".join(f"{v:.3f}" for v in auc[s]) + f" | {auc[s].mean():.3f} | {tail} |")
    cand = max(SCORES[1:], key=lambda s: auc[s].mean())
    gain = auc[cand] - auc["clip"]
    wins = gain.mean() > 0 and gain.mean() > gain.std(ddof=1)
    print(f"\ncandidate: {cand}; mean gain {gain.mean():+.4f}, per-fold std {gain.std(ddof=1):.4f} -> "
          f"{'replaces the shipped score' if wins else 'does not replace the shipped score'}\n")
    print("| held-out source site | score | validator's threshold | profile: mixture (drop) | ceiling at <= 20% | both targets (mixture) |")
    print("|---|---|---|---|---|---|")
    for r in runs:
        for s in SCORES:
            row = r["scores"][s]
            u, m, c = row["uncalibrated"], row["profile: mixture"], row["reference (labels)"]
            ok = m["false_alarm_rate"] <= TARGET_FA and m["sensitivity_drop"] <= TARGET_DROP
            print(f"| {r['held_out']} | {s} | {100 * u['false_alarm_rate']:.0f} / {100 * u['sensitivity']:.0f} | "
                  f"{100 * m['false_alarm_rate']:.0f} / {100 * m['sensitivity']:.0f} ({100 * m['sensitivity_drop']:+.0f}) | "
                  f"{100 * c['false_alarm_rate']:.0f} / {100 * c['sensitivity']:.0f} | {'met' if ok else 'missed'} |")
    print("\n| score | mean Dice, validator's threshold | mean false alarms | mean sensitivity | sites where the mixture meets both targets |")
    print("|---|---|---|---|---|")
    for s in SCORES:
        fa = np.mean([r["scores"][s]["uncalibrated"]["false_alarm_rate"] for r in runs])
        se = np.mean([r["scores"][s]["uncalibrated"]["sensitivity"] for r in runs])
        met = sum(r["scores"][s]["profile: mixture"]["false_alarm_rate"] <= TARGET_FA
                  and r["scores"][s]["profile: mixture"]["sensitivity_drop"] <= TARGET_DROP for r in runs)
        dice = np.mean([r["scores"][s]["dice"] for r in runs])
        print(f"| {s} | {dice:.3f} | {100 * fa:.0f}% | {100 * se:.0f}% | {met} of {len(runs)} |")
    print("\n| score | lesion-free median, validation -> held-out source site: " + ", ".join(sites) + " | mean shift size |")
    print("|---|---|---|")
    for s in SCORES:
        shifts = [r["scores"][s]["lesion_free_score"]["held_out_median"] - r["scores"][s]["lesion_free_score"]["validation_median"] for r in runs]
        cells = ", ".join(f"{r['scores'][s]['lesion_free_score']['validation_median']:.2f} -> {r['scores'][s]['lesion_free_score']['held_out_median']:.2f}" for r in runs)
        print(f"| {s} | {cells} | {np.mean(np.abs(shifts)):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
