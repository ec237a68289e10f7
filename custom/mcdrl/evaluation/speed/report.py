"""bench.json and bench.md: the targets checked, the figures, the command that made them and the machine.

``finish`` adds the headline values and the target checks to the runner's measurements; ``to_markdown`` renders
them; ``pending`` is the page for a network whose figures have not been measured yet (nothing invented).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from mcdrl.utils import atomic_path

__all__ = ["TARGETS", "engine_dice", "finish", "fmt", "pending", "to_markdown", "write"]

#: key -> (op, bound, meaning); ">=" bounds are speed-ups, "<=" costs
TARGETS = {
    "forward_ratio_bs1": ("<=", 1.20, "shipped eval forward / bare CLIP visual forward, main model, batch 1"),
    "forward_ratio_bs8": ("<=", 1.20, "the same, batch 8"),
    "train_step_ratio": ("<=", 1.30, "shipped training step / Baseline training step, main model"),
    "peak_rss_mb": ("<=", 2048.0, "peak RSS of inference, fresh process, main model, batch 1 (MiB)"),
    "onnxruntime_speedup": (">=", 1.5, "folder inference, onnxruntime / torch images/s (lowest over the models)"),
    "int8_speedup": (">=", 2.0, "folder inference, onnxruntime-int8 / torch images/s (lowest over the models)"),
    "int8_dice_cost_points": ("<=", 0.5, "Dice points int8 loses against torch, worst of validation and held-out F (ships as default only if met)"),
}
DICE_SETS = {"train_sites": "validation (training sites)", "heldout_F": "held-out site F"}


def fmt(v, nd: int = 1) -> str:
    return "n/a" if v is None else f"{v:.{nd}f}"


def engine_dice(root: str | os.PathLike) -> dict:
    """``{engine: {set: mean Dice}}`` from ``<root>/engine_<engine>/<set>/metrics.csv`` (written by ``make engine-dice``); {} if none."""
    out: dict = {}
    for engine_dir in sorted(Path(root).glob("engine_*")):
        for name in DICE_SETS:
            path = engine_dir / name / "metrics.csv"
            if path.is_file():
                rows = dict(r[:2] for r in csv.reader(path.open(), delimiter="\t" if "\t" in path.read_text() else ",") if len(r) >= 2)
                out.setdefault(engine_dir.name.removeprefix("engine_"), {})[name] = float(rows["val_mean_dice"])
    return out


def _row(rows: list[dict], model: str, batch: int) -> dict | None:
    return next((r for r in rows if r["model"] == model and r["batch"] == batch), None)


def finish(result: dict) -> dict:
    """Add the headline values (``headline``) and their target checks (``targets``) to the runner's result."""
    main = result["main_model"]
    fwd = [_row(result["forward"], main, b) for b in sorted({r["batch"] for r in result["forward"] if r["model"] == main})]
    train = next((t for t in result["train_step"] if t["model"] == main), None)
    folder = result.get("folder") or []
    dice = result.get("dice") or {}
    costs = [100 * (dice["torch"][s] - dice["onnxruntime-int8"][s]) for s in DICE_SETS if s in dice.get("torch", {}) and s in dice.get("onnxruntime-int8", {})]
    head = {
        "forward_ratio_bs1": fwd[0]["shipped_over_visual"] if fwd else None,
        "forward_ratio_bs8": fwd[-1]["shipped_over_visual"] if fwd else None,
        "train_step_ratio": train["shipped_over_baseline"] if train else None,
        "peak_rss_mb": (result.get("rss") or {}).get(main),
        "onnxruntime_speedup": min((f["onnxruntime_over_torch"] for f in folder), default=None),
        "int8_speedup": min((f["onnxruntime-int8_over_torch"] for f in folder), default=None),
        "int8_dice_cost_points": max(costs) if len(costs) == len(DICE_SETS) else None,
    }
    targets = {}
    for key, (op, bound, meaning) in TARGETS.items():
        v = head[key]
        met = None if v is None else (v <= bound if op == "<=" else v >= bound)
        targets[key] = {"value": v, "target": f"{op} {bound:g}", "met": "n/a" if met is None else ("met" if met else "NOT met"), "meaning": meaning}
    return {**result, "headline": head, "targets": targets}


def pending(note: str, command: str) -> dict:
    """A result with no figures: the page says they are pending, why, and the command that will produce them."""
    return finish({"pending": note, "command": command, "date": None, "machine": None, "main_model": "ViT-B-16",
                   "forward": [], "train_step": [], "folder": [], "rss": {}, "dice": {}})


def _parts(p: dict) -> str:
    return ", ".join(f"{k} {100 * v:.0f}%" for k, v in p.items())


def to_markdown(r: dict) -> str:
    """The page: status, targets, forward, parts, training step, memory, folder inference per engine, engine Dice, machine."""
    lines = ["# Speed of the network that ships", ""]
    if r.get("pending"):
        lines += [f"**Figures pending re-measurement on the final network.** {r['pending']}", ""]
    else:
        m = r["machine"]
        lines += [f"Main model {r['main_model']}. Measured by `{r['command']}` on {r['date']}: {m['cpu']}, {m['usable_cores']} usable cores, torch {m['torch']} "
                  f"({m['torch_threads']} threads), load average before {m['load_average']} and after {m['load_average_after']}.", ""]
        if r.get("dice_read"):
            lines += [f"The engines' Dice (the last table and the int8 Dice cost) are the shipped weights' of {r['dice_read']['date']}, read by "
                      f"`{r['dice_read']['command']}` after `make engine-dice`; the timings are still those of {r['date']}, which use random "
                      "CLIP and head weights, so a retrain does not change them.", ""]
    lines += ["The command that produces every figure on this page (the engines' Dice first, then the timings; random CLIP weights "
              "time the same as trained ones):", "", "    make bench", "",
              "Ratios are medians of per-round ratios: each round runs every candidate once, in a rotating order, so load from "
              "other jobs hits neighbours alike. Absolute times depend on the machine and its load; ratios much less.", "",
              "History (release 0.3's network and its re-measurements): [experiments/bench_0.3/bench.md](experiments/bench_0.3/bench.md).", "",
              "## Targets", "", "| figure | value | target | |", "|---|---|---|---|"]
    for c in r["targets"].values():
        lines.append(f"| {c['meaning']} | {fmt(c['value'], 3)} | {c['target']} | {c['met']} |")
    lines += ["", "## Eval forward against the bare CLIP visual forward", "",
              "The network reads the frames it deploys at (`train_size`); the bare CLIP reads its own input size.", "",
              "| model | batch | frame / CLIP px | visual ms | shipped ms | shipped / visual | with intervention ms | with intervention / visual |",
              "|---|---|---|---|---|---|---|---|"]
    for f in r["forward"]:
        sizes = f"{f['input_size']} / {f.get('clip_size', f['input_size'])}"
        lines.append(f"| {f['model']} | {f['batch']} | {sizes} | {fmt(f['visual_ms'])} | {fmt(f['shipped_ms'])} | {fmt(f['shipped_over_visual'], 3)} | "
                     f"{fmt(f['intervention_ms'])} | {fmt(f['intervention_over_visual'], 3)} |")
    lines += ["", "Share of each part of the eval forward (median over forwards):", ""]
    for f in r["forward"]:
        lines.append(f"- {f['model']}, batch {f['batch']}: shipped: {_parts(f['parts_shipped'])}; with intervention: {_parts(f['parts_intervention'])}.")
    lines += ["", "## Training step (forward, train.json's loss, backward, AdamW)", "",
              "| model | batch | shipped ms | with intervention ms | Baseline (L_seg only) ms | shipped / Baseline | with intervention / Baseline |",
              "|---|---|---|---|---|---|---|"]
    for t in r["train_step"]:
        lines.append(f"| {t['model']} | {t['batch']} | {fmt(t['shipped_ms'])} | {fmt(t['intervention_ms'])} | {fmt(t['baseline_ms'])} | "
                     f"{fmt(t['shipped_over_baseline'], 3)} | {fmt(t['intervention_over_baseline'], 3)} |")
    lines += ["", "## Memory", ""] + [f"- {k}: peak RSS {fmt(v)} MiB (fresh process, build + batch-1 inference)." for k, v in (r["rss"] or {}).items()]
    lines += ["", "## Folder inference by engine (`engine` in inference.json)", "",
              "| model | frames | bare net(x) img/s | torch img/s | onnxruntime img/s | int8 img/s | folder / bare | onnxruntime / torch | int8 / torch |",
              "|---|---|---|---|---|---|---|---|---|"]
    for f in r["folder"]:
        ips = f["images_per_s"]
        lines.append(f"| {f['model']} | {f['images']} x {f['size']}² (batch {f['batch']}) | {fmt(ips['bare'])} | {fmt(ips['torch'])} | "
                     f"{fmt(ips.get('onnxruntime'))} | {fmt(ips.get('onnxruntime-int8'))} | {fmt(f['folder_over_bare'], 2)} | "
                     f"{fmt(f.get('onnxruntime_over_torch'), 2)} | {fmt(f.get('onnxruntime-int8_over_torch'), 2)} |")
    dice = r.get("dice") or {}
    lines += ["", "Mean Dice of the shipped model by engine (`make engine-dice`"
              + (f", read on {r['dice_read']['date']}" if r.get("dice_read") else "") + "):", ""]
    if dice:
        lines += ["| engine | " + " | ".join(DICE_SETS.values()) + " |", "|---|" + "---|" * len(DICE_SETS)]
        lines += [f"| {e} | " + " | ".join(fmt(v.get(s), 4) for s in DICE_SETS) + " |" for e, v in dice.items()]
    else:
        lines.append("- not measured in this run.")
    if r.get("machine"):
        lines += ["", "## Machine", "", "```", json.dumps(r["machine"], indent=1), "```"]
    return "\n".join(lines) + "\n"


def with_new_dice(previous: dict, dice: dict, command: str, date: str) -> dict:
    """``previous`` (a finished report with timings) with the engines' Dice replaced by ``dice`` and its headline and
    targets recomputed; ``dice_read`` says when and by what the Dice were read. The timings run on random weights, so
    they stay valid for retrained weights of the same network; the Dice do not."""
    if previous.get("pending") or not previous.get("forward"):
        raise ValueError("no timings to keep: the report is pending or empty; run the full `make bench`")
    if not dice:
        raise ValueError("no engine Dice found: run `make engine-dice` first")
    kept = {k: v for k, v in previous.items() if k not in ("headline", "targets", "dice", "dice_read")}
    return finish({**kept, "dice": dice, "dice_read": {"command": command, "date": date}})


def write(result: dict, json_path: str | os.PathLike, md_path: str | os.PathLike | None) -> None:
    """bench.json (and bench.md), each written atomically."""
    with atomic_path(json_path) as tmp:
        Path(tmp).write_text(json.dumps(result, indent=1) + "\n")
    if md_path:
        with atomic_path(md_path) as tmp:
            Path(tmp).write_text(to_markdown(result))
