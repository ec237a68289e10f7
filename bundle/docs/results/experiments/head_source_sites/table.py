"""Print the README's table and the rule's figures from ``runs.json`` (beside this file)."""
import json
import statistics
from pathlib import Path

runs = json.loads((Path(__file__).resolve().parent / "runs.json").read_text())
by = {(r["classifier"], r["held_out"]): r for r in runs}
sites = sorted({r["held_out"] for r in runs})
print("| held-out source site | text queries: Dice / false alarms / sensitivity / small lesions | 1x1 conv: the same | conv - text queries (Dice) |")
print("|---|---|---|---|")
diffs = []
for s in sites:
    t, c = by[("text_queries", s)]["held_out_source_site"], by[("conv", s)]["held_out_source_site"]
    f = lambda m: f"{m['dice']:.3f} / {100 * m['false_alarm_rate']:.0f}% / {100 * m['sensitivity']:.0f}% / {100 * m['sensitivity_small']:.0f}%"
    diffs.append(100 * (c["dice"] - t["dice"]))
    print(f"| {s} | {f(t)} | {f(c)} | {diffs[-1]:+.1f} |")
for k in ("text_queries", "conv"):
    ms = [by[(k, s)]["held_out_source_site"] for s in sites]
    print(f"{k}: mean Dice {statistics.mean(m['dice'] for m in ms):.4f}, false alarms {100 * statistics.mean(m['false_alarm_rate'] for m in ms):.1f}%, "
          f"sensitivity {100 * statistics.mean(m['sensitivity'] for m in ms):.1f}%, small {100 * statistics.mean(m['sensitivity_small'] for m in ms):.1f}%, "
          f"train s/run {statistics.mean(by[(k, s)]['train_s'] for s in sites):.0f}")
print(f"conv - text queries, points: mean {statistics.mean(diffs):+.2f}, std {statistics.stdev(diffs):.2f} over {len(diffs)} folds")
