"""The README's result table and the rule's decision, from ``runs.json`` and the baseline's rows in
``../presence_in_training/runs.json`` (``contrast_1_tau_0.07``): Dice on the 600 frames of each held-out source site,
Dice on its lesion frames, the lesion score's AUC, the small-lesion sensitivity (pooled over the folds), and the
false alarms and training time per fold.

    python bundle/docs/results/experiments/cheap_classifier/table.py
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SITES = ("A", "B", "C", "D", "E")
BASELINE = "contrast_1_tau_0.07"
DECIDES = "hidden4_stride2_equal_time"
AUC_TOLERANCE, SMALL_TOLERANCE = 0.01, 0.05


def _folds(path: Path, keep) -> dict:
    """{variant: {site: record}} of the runs in ``path`` whose variant ``keep`` accepts (``../pixel_pathway/table.py``'s)."""
    spec = importlib.util.spec_from_file_location("pixel_pathway_table", HERE.parent / "pixel_pathway/table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod._folds(path, keep)


def _figures(rec: dict) -> dict:
    h = rec["held_out_source_site"]
    return {"dice": h["dice"], "lesion_dice": h["dice_lesion_images"], "auc": rec["presence"]["lesion_score_auc"],
            "small": h["sensitivity_small"], "n_small": h["small_lesion_images"], "fa": h["false_alarm_rate"],
            "train_s": rec["train_s"], "epochs": rec["epochs"]}


def main() -> int:
    base = _folds(HERE.parent / "presence_in_training/runs.json", lambda v: v == BASELINE)[BASELINE]
    rows = {"baseline (run 2's keys, shipped classifier, 2 epochs)": {s: _figures(base[s]) for s in SITES}}
    for name, folds in _folds(HERE / "runs.json", lambda v: True).items():
        if set(folds) != set(SITES):
            print(f"{name}: {len(folds)} of 5 folds so far, not in the table; Dice (lesion-frame Dice) per fold: "
                  + ", ".join(f"{s} {folds[s]['held_out_source_site']['dice']:.3f} ({folds[s]['held_out_source_site']['dice_lesion_images']:.3f})"
                              for s in sorted(folds)))
        else:
            rows[name] = {s: _figures(folds[s]) for s in SITES}
    b = next(iter(rows.values()))
    print("| model | epochs | Dice " + " / ".join(SITES) + " | mean Dice | gain (per-fold std) | Dice on lesion frames, mean (gain) "
          "| mean AUC (change) | small-lesion sensitivity, pooled (change) | false alarms | training s per fold |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    summary, timing = {}, []
    for name, f in rows.items():
        arr = {k: np.array([f[s][k] for s in SITES]) for k in f["A"]}
        gain = arr["dice"] - np.array([b[s]["dice"] for s in SITES])
        lesion_gain = arr["lesion_dice"].mean() - np.mean([b[s]["lesion_dice"] for s in SITES])
        auc_change = arr["auc"].mean() - np.mean([b[s]["auc"] for s in SITES])
        small = float((arr["small"] * arr["n_small"]).sum() / arr["n_small"].sum())
        small_b = sum(b[s]["small"] * b[s]["n_small"] for s in SITES) / sum(b[s]["n_small"] for s in SITES)
        summary[name] = (gain, lesion_gain, auc_change, small - small_b)
        if not name.startswith("baseline"):
            ratio = arr["train_s"] / np.array([b[s]["train_s"] for s in SITES])
            timing.append(f"{name}: training time / the baseline's, per fold " + " / ".join(f"{r:.2f}" for r in ratio)
                          + f", mean {ratio.mean():.2f} (shared cores: an indication)")
        first = name.startswith("baseline")
        print(f"| {name} | {int(arr['epochs'][0])} | " + " / ".join(f"{v:.3f}" for v in arr["dice"]) + f" | {arr['dice'].mean():.3f} | "
              + ("-" if first else f"{gain.mean():+.3f} ({gain.std(ddof=1):.3f})") + f" | {arr['lesion_dice'].mean():.3f}"
              + ("" if first else f" ({lesion_gain:+.3f})") + f" | {arr['auc'].mean():.3f}" + ("" if first else f" ({auc_change:+.3f})")
              + f" | {100 * small:.0f}% of {int(arr['n_small'].sum())}" + ("" if first else f" ({100 * (small - small_b):+.0f})")
              + f" | {100 * arr['fa'].mean():.0f}% | " + " / ".join(f"{v:.0f}" for v in arr["train_s"]) + " |")
    if timing:
        print("\n" + "\n".join(timing))
    if DECIDES not in summary:
        print(f"\n{DECIDES} has not run all five folds: nothing is decided")
        return 0
    gain, lesion_gain, auc_change, small_change = summary[DECIDES]
    # plain bools (numpy's are not ``False`` to ``is``)
    checks = {"Dice gain > per-fold std": bool(gain.mean() > 0 and gain.mean() > gain.std(ddof=1)),
              "lesion-frame Dice does not fall": bool(lesion_gain >= 0),
              f"AUC within {AUC_TOLERANCE}": bool(auc_change >= -AUC_TOLERANCE),
              f"small-lesion sensitivity within {100 * SMALL_TOLERANCE:.0f} points": bool(small_change >= -SMALL_TOLERANCE)}
    verdict = "replaces the shipped classifier" if all(checks.values()) else "does not replace the shipped classifier"
    print(f"\n{DECIDES}: mean Dice gain {gain.mean():+.4f} (per-fold std {gain.std(ddof=1):.4f}), lesion-frame Dice "
          f"{lesion_gain:+.4f}, AUC {auc_change:+.4f}, small-lesion sensitivity {100 * small_change:+.1f} points; "
          + "; ".join(f"{k}: {'yes' if v else 'no'}" for k, v in checks.items()) + f" -> {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
