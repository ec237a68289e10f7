"""The README's table and the rule's reading, from ``runs.json`` (the UNet's folds) and the baseline's rows in
``../presence_in_training/runs.json`` (``contrast_1_tau_0.07``): Dice on the 600 frames of each held-out source site,
the gap (UNet minus baseline) per fold, Dice on lesion frames, false alarms on lesion-free frames, lesion and
small-lesion sensitivity (pooled over the folds), and the epochs and training time; then the same for the second run
(``release_budget_*.json``), and ``decompose.py``'s reads of each run (``decompose*.json``) per fold.

    python bundle/docs/results/experiments/unet_source_sites/table.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SITES = ("A", "B", "C", "D", "E")
BASELINE = "contrast_1_tau_0.07"


def _figures(rec: dict, epochs: int, seconds: float) -> dict:
    h = rec["held_out_source_site"]
    return {"dice": h["dice"], "lesion_dice": h["dice_lesion_images"], "fa": h["false_alarm_rate"],
            "n_free": h["lesion_free_images"], "sens": h["sensitivity"], "n_lesion": h["lesion_images"],
            "small": h["sensitivity_small"], "n_small": h["small_lesion_images"], "epochs": epochs, "train_s": seconds}


def _pooled(f: dict, rate: str, n: str) -> str:
    """``rate`` pooled over the folds of ``f`` ({site: figures}), weighted by each fold's count ``n``."""
    hits = sum(x[rate] * x[n] for x in f.values())
    total = sum(x[n] for x in f.values())
    return f"{100 * hits / total:.0f}% of {total}"


def _table(base: dict, unet: dict, names: tuple[str, str]) -> None:
    """The rows and the rule's reading for one run: ``base`` and ``unet`` are {site: _figures}."""
    if set(unet) != set(SITES) or set(base) != set(SITES):
        print(f"{len(base)} and {len(unet)} of 5 folds so far; nothing is read by the rule. Per fold Dice UNet (shipped recipe): "
              + ", ".join(f"{s} {unet[s]['dice'] if s in unet else float('nan'):.3f} ({base[s]['dice'] if s in base else float('nan'):.3f})"
                          for s in SITES if s in unet or s in base))
        return
    rows = dict(zip(names, (base, unet)))
    print("| model | epochs | Dice " + " / ".join(SITES) + " | mean Dice | Dice on lesion frames | false alarms (lesion-free), "
          "pooled | lesion sensitivity, pooled | small-lesion sensitivity, pooled | training s per fold (process) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, f in rows.items():
        dice = np.array([f[s]["dice"] for s in SITES])
        print(f"| {name} | {f['A']['epochs']} | " + " / ".join(f"{v:.3f}" for v in dice) + f" | {dice.mean():.3f} | "
              f"{np.mean([f[s]['lesion_dice'] for s in SITES]):.3f} | {_pooled(f, 'fa', 'n_free')} | {_pooled(f, 'sens', 'n_lesion')} | "
              f"{_pooled(f, 'small', 'n_small')} | " + " / ".join(f"{f[s]['train_s']:.0f}" for s in SITES) + " |")
    gap = np.array([unet[s]["dice"] - base[s]["dice"] for s in SITES])
    lesion_gap = np.array([unet[s]["lesion_dice"] - base[s]["lesion_dice"] for s in SITES])
    ahead = int((gap > 0).sum())
    print(f"\ngap (UNet - shipped recipe) per fold: " + " / ".join(f"{g:+.3f}" for g in gap)
          + f"; mean {gap.mean():+.3f}, per-fold std {gap.std(ddof=1):.3f}; the UNet ahead at {ahead} of 5")
    print("gap on lesion frames per fold: " + " / ".join(f"{g:+.3f}" for g in lesion_gap) + f"; mean {lesion_gap.mean():+.3f}")
    shows = bool(gap.mean() > 0 and ahead >= 4)
    print("rule: the split " + ("SHOWS" if shows else "does NOT show") + " the equal-time target's gap "
          f"(mean gap {gap.mean():+.3f} {'>' if gap.mean() > 0 else '<='} 0, UNet ahead at {ahead} of 5; needs > 0 and >= 4)")


def _decompose(path: Path) -> None:
    """``decompose.py``'s four reads per fold: Dice (Dice on lesion frames, false alarms, sensitivity), the mean Dice,
    the mean lesion-frame Dice, and false alarms and sensitivity pooled over the folds read."""
    folds = json.loads(path.read_text())["folds"]
    sites = sorted(folds)
    print(f"\n{path.name}, folds {', '.join(sites)}:")
    print("| read | " + " | ".join(sites) + " | mean Dice | Dice on lesion frames | false alarms, pooled | sensitivity, pooled |")
    print("|---|" + "---|" * (len(sites) + 4))
    for read in folds[sites[0]]["reads"]:
        xs = [folds[s]["reads"][read] for s in sites]
        cells = [f"{x['dice']:.3f} ({x['dice_lesion_images']:.3f}, {100 * x['false_alarm_rate']:.0f}%, {100 * x['sensitivity']:.0f}%)"
                 for x in xs]
        f = dict(enumerate(xs))
        print(f"| {read} | " + " | ".join(cells) + f" | {np.mean([x['dice'] for x in xs]):.3f} | "
              f"{np.mean([x['dice_lesion_images'] for x in xs]):.3f} | {_pooled(f, 'false_alarm_rate', 'lesion_free_images')} | "
              f"{_pooled(f, 'sensitivity', 'lesion_images')} |")


def main() -> int:
    doc = json.loads((HERE / "runs.json").read_text())
    base_runs = json.loads((HERE.parent / "presence_in_training/runs.json").read_text())
    base = {r["held_out"]: _figures(r, r["epochs"], r["train_s"]) for r in base_runs if r["variant"] == BASELINE}
    unet = {r["held_out"]: _figures(r, r["epochs"], r["process_s"]) for r in doc["folds"]}
    print(f"budget {doc['budget_s']:.0f} s (the median of the baseline's {', '.join(f'{t:.0f}' for t in doc['baseline_train_s'])} s); "
          f"one UNet epoch timed at {doc['timed_epoch_s']:.0f} s, so {doc['folds'][0]['max_epochs'] if doc['folds'] else '?'} epochs")
    for r in doc["folds"]:
        if r.get("stopped_by_budget") or r["epochs"] != r["max_epochs"]:
            print(f"WARNING: fold {r['held_out']}: the budget stopped the UNet after {r['epochs']} of {r['max_epochs']} epochs: not a fair row")
    _table(base, unet, ("baseline: shipped recipe (run 2's keys), 2 epochs", "MONAI UNet, the baseline's wall time"))
    shipped_file, unet_file = HERE / "release_budget_shipped.json", HERE / "release_budget_unet.json"
    if shipped_file.exists() or unet_file.exists():
        print("\nThe second run, at the release's budget (release_budget.py):")
        base2 = {r["held_out"]: _figures(r, r["epochs"], r["train_s"])
                 for r in (json.loads(shipped_file.read_text()) if shipped_file.exists() else [])}
        unet2 = {r["held_out"]: _figures(r, r["epochs"], r["process_s"])
                 for r in (json.loads(unet_file.read_text())["folds"] if unet_file.exists() else [])}
        _table(base2, unet2, ("shipped recipe (run 2's keys), 5 epochs", "MONAI UNet, the same wall time"))
    for name in ("decompose.json", "decompose_release_budget.json"):
        if (HERE / name).exists():
            _decompose(HERE / name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
