"""The README's tables and the rule's decision, from ``runs.json``, the baseline's rows in
``../presence_in_training/runs.json`` (``contrast_1_tau_0.07``) and ``speed.py``'s outputs (if it ran):
Dice on the 600 frames of each held-out source site, Dice on its lesion frames, the lesion score's AUC, and the
small-lesion sensitivity, false alarms and training time per fold.

    python bundle/docs/results/experiments/pixel_pathway/table.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SITES = ("A", "B", "C", "D", "E")
BASELINE = "contrast_1_tau_0.07"
AUC_TOLERANCE, SPEED_BOUND, COST_BOUND = 0.01, 1.2, 1.3


def _folds(path: Path, keep) -> dict:
    """{variant: {site: record}} of the runs in ``path`` whose variant ``keep`` accepts."""
    out: dict = {}
    for r in json.loads(path.read_text()) if path.exists() else []:
        if keep(r["variant"]):
            out.setdefault(r["variant"], {})[r["held_out"]] = r
    return out


def _figures(rec: dict) -> dict:
    h = rec["held_out_source_site"]
    return {"dice": h["dice"], "lesion_dice": h["dice_lesion_images"], "auc": rec["presence"]["lesion_score_auc"],
            "small": h["sensitivity_small"], "fa": h["false_alarm_rate"], "sens": h["sensitivity"], "train_s": rec["train_s"]}


def _speed() -> tuple[dict, dict]:
    """({variant: worst ViT-B/16 eval-forward ratio over the bare CLIP at batch 1 and 8}, {variant: training-step FLOPs
    with the demo CLIP / the shipped head's}), from ``speed.py``'s ``speed_vitb16.json`` and ``speed_demo.json``
    (empty where it has not run)."""
    ratio, cost = {}, {}
    path = HERE / "speed_vitb16.json"
    if path.exists():
        rows = [r for r in json.loads(path.read_text()) if "batch" in r]
        names = {k[: -len("_over_visual")] for r in rows for k in r if k.endswith("_over_visual")}
        ratio = {n: max(r[f"{n}_over_visual"] for r in rows) for n in names}
    path = HERE / "speed_demo.json" if (HERE / "speed_demo.json").exists() else HERE / "flops_demo.json"
    if path.exists():
        flops = json.loads(path.read_text())[0]["train_step_gflops_batch8_224"]
        cost = {n: v / flops["shipped"] for n, v in flops.items()}
    return ratio, cost


def main() -> int:
    base = _folds(HERE.parent / "presence_in_training/runs.json", lambda v: v == BASELINE)[BASELINE]
    variants = _folds(HERE / "runs.json", lambda v: True)
    rows = {"baseline (run 2's keys, shipped head)": {s: _figures(base[s]) for s in SITES}}
    for name, folds in variants.items():
        if set(folds) != set(SITES):
            print(f"{name}: {len(folds)} of 5 folds so far ({', '.join(sorted(folds))}); not in the rule yet")
        else:
            rows[name] = {s: _figures(folds[s]) for s in SITES}
    b = rows["baseline (run 2's keys, shipped head)"]
    print("| model | Dice " + " / ".join(SITES) + " | mean Dice | gain (per-fold std) | Dice on lesion frames, mean (gain) | mean AUC (change) | small-lesion sensitivity | false alarms | training s per fold |")
    print("|---|---|---|---|---|---|---|---|---|")
    summary = {}
    for name, f in rows.items():
        arr = {k: np.array([f[s][k] for s in SITES]) for k in f["A"]}
        gain = arr["dice"] - np.array([b[s]["dice"] for s in SITES])
        lesion_gain = arr["lesion_dice"].mean() - np.mean([b[s]["lesion_dice"] for s in SITES])
        auc_change = arr["auc"].mean() - np.mean([b[s]["auc"] for s in SITES])
        summary[name] = (gain, lesion_gain, auc_change)
        first = name.startswith("baseline")
        print(f"| {name} | " + " / ".join(f"{v:.3f}" for v in arr["dice"]) + f" | {arr['dice'].mean():.3f} | "
              + ("-" if first else f"{gain.mean():+.3f} ({gain.std(ddof=1):.3f})") + f" | {arr['lesion_dice'].mean():.3f}"
              + ("" if first else f" ({lesion_gain:+.3f})") + f" | {arr['auc'].mean():.3f}" + ("" if first else f" ({auc_change:+.3f})")
              + f" | {100 * arr['small'].mean():.0f}% | {100 * arr['fa'].mean():.0f}% | "
              + " / ".join(f"{v:.0f}" for v in arr["train_s"]) + " |")
    candidates = [k for k in rows if not k.startswith("baseline")]
    if not candidates:
        return 0
    cand = max(candidates, key=lambda k: summary[k][0].mean())
    gain, lesion_gain, auc_change = summary[cand]
    ratios, costs = _speed()
    speed, cost = ratios.get(cand), costs.get(cand)
    # plain bools (numpy's are not ``False`` to ``is``); None where speed.py has not run
    checks = {"Dice gain > per-fold std": bool(gain.mean() > 0 and gain.mean() > gain.std(ddof=1)),
              "lesion-frame Dice gains": bool(lesion_gain > 0),
              f"AUC within {AUC_TOLERANCE}": bool(auc_change >= -AUC_TOLERANCE),
              f"training step <= {COST_BOUND} x the shipped (FLOPs, demo CLIP)": None if cost is None else bool(cost <= COST_BOUND),
              f"ViT-B/16 eval forward <= {SPEED_BOUND} x CLIP": None if speed is None else bool(speed <= SPEED_BOUND)}
    verdict = ("replaces the shipped head" if all(checks.values()) else
               "does not replace the shipped head" if any(v is False for v in checks.values()) else "waits for speed.py")
    print(f"\ncandidate {cand}: mean Dice gain {gain.mean():+.4f} (per-fold std {gain.std(ddof=1):.4f}), lesion-frame Dice "
          f"{lesion_gain:+.4f}, AUC {auc_change:+.4f}, cost {'?' if cost is None else f'{cost:.2f}'}, speed {'?' if speed is None else speed}; "
          + "; ".join(f"{k}: {'yes' if v else 'no' if v is False else '?'}" for k, v in checks.items()) + f" -> {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
