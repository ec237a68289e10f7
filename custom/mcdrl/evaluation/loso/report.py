"""Aggregate run records into loso.json / loso.md / loso.png and the per-image CSVs.

Every figure is computed twice, on the held-out site's frames as sampled (``rows``) and with its protocol reversed
(``rows_reversed``: the same scenes); the reversed figures carry the suffix ``_reversed``.

* **Dice**: for each (method, held-out site, seed) the per-frame Dice is averaged over the site's frames; a method's
  LOSO Dice for one seed is the mean over held-out sites of those site means (every site weighs the same, as in the
  paper's LOSO mean); ``mean ± std`` is over seeds (sample std). Per-site figures are means over seeds.
* **False alarms**: the share of a held-out site's lesion-free frames with any lesion pixel after post-processing,
  averaged like the Dice (over the sites that have lesion-free frames, then over seeds).
* **Worst-group Dice**: the frames of one seed (every held-out site pooled) fall into four groups, (lesion / no
  lesion) x (protocol confounder present / absent), where "present" means any of the held-out site's own protocol
  confounders (:attr:`SiteSpec.protocol_confounders`) is in the frame. A group's Dice is its frames' mean; the
  worst-group Dice is the smallest over the non-empty groups; ``mean ± std`` over seeds. A lesion-free frame scores
  1 when nothing is predicted and 0 otherwise, so a no-lesion group's Dice is 1 - its false-alarm rate.
* **Validation**: per run, the mean per-frame Dice of the selected weights on the interventional split (which
  selected them) and on the plain source-site validation split; means over runs.
* **DG efficiency**: Dice(row) / Dice(oracle), as sampled and reversed (the oracle is scored on the same frames).

Every path in the reports is relative to the repository.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from mcdrl.utils import atomic_path

__all__ = ["GROUPS", "PROTOCOLS", "group_of", "shortcut_check", "summarise", "target_check", "worst_group", "write_report"]

#: the held-out frames' two versions: record key -> suffix of the figures
PROTOCOLS = {"rows": "", "rows_reversed": "_reversed"}
#: (lesion / no lesion) x (protocol confounder present / absent)
GROUPS = ("lesion, confounder", "lesion, no confounder", "no lesion, confounder", "no lesion, no confounder")


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def _mean(xs) -> float:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.mean(xs)) if xs else float("nan")


def _std(xs) -> float:
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0


def group_of(row: dict) -> str:
    """The row's group of :data:`GROUPS`, from its ``lesion`` and ``protocol_confounder`` flags."""
    return f"{'lesion' if row['lesion'] else 'no lesion'}, {'confounder' if row['protocol_confounder'] else 'no confounder'}"


def worst_group(rows: list[dict]) -> tuple[float, dict[str, float], dict[str, int]]:
    """``(worst-group Dice, {group: mean Dice}, {group: frames})`` of ``rows``; groups without frames are left out."""
    by = {g: [r["dice"] for r in rows if group_of(r) == g] for g in GROUPS}
    dice = {g: float(np.mean(v)) for g, v in by.items() if v}
    return (min(dice.values()) if dice else float("nan")), dice, {g: len(v) for g, v in by.items()}


def false_alarm_rate(rows: list[dict]) -> float | None:
    """The share of lesion-free rows with a predicted lesion (None without lesion-free rows)."""
    free = [r for r in rows if not r["lesion"]]
    return float(np.mean([bool(r["false_alarm"]) for r in free])) if free else None


def _test_figures(records: list[dict], sites, seeds, key: str) -> dict:
    """The figures of one protocol (``key`` = ``rows`` or ``rows_reversed``), without the suffix."""
    cells = {(r["held_out"], r["seed"]): r[key] for r in records}
    out: dict = {}
    site_seed = {(s, k): {"dice": _mean([x["dice"] for x in cells[(s, k)]]), "iou": _mean([x["iou"] for x in cells[(s, k)]]),
                          "false_alarms": false_alarm_rate(cells[(s, k)]), "worst_group_dice": worst_group(cells[(s, k)])[0]}
                 for s in sites for k in seeds if (s, k) in cells}
    for m in ("dice", "iou", "false_alarms"):
        per_seed = [_mean([site_seed[(s, k)][m] for s in sites if (s, k) in site_seed]) for k in seeds]
        out[f"{m}_mean" if m != "false_alarms" else m], out[f"{m}_std"], out[f"per_seed_{m}"] = _mean(per_seed), _std(per_seed), per_seed
        out[f"per_site_{m}"] = {s: _mean([site_seed[(s, k)][m] for k in seeds if (s, k) in site_seed]) for s in sites}
    out["per_site_worst_group_dice"] = {s: _mean([site_seed[(s, k)]["worst_group_dice"] for k in seeds if (s, k) in site_seed]) for s in sites}
    pooled = [worst_group([x for (s, k), rows in cells.items() if k == seed for x in rows]) for seed in seeds]
    out["per_seed_worst_group_dice"] = [p[0] for p in pooled]
    out["worst_group_dice"], out["worst_group_dice_std"] = _mean(out["per_seed_worst_group_dice"]), _std(out["per_seed_worst_group_dice"])
    out["group_dice"] = {g: _mean([p[1].get(g) for p in pooled]) for g in GROUPS}
    out["group_frames"] = {g: int(sum(p[2][g] for p in pooled)) for g in GROUPS}
    rows = [x for r in cells.values() for x in r]
    lesion = [x for x in rows if x["lesion"]]
    out["sensitivity"] = _mean([float(x["detected"]) for x in lesion]) if lesion else None
    out["per_class_dice"] = {c: _mean([x["dice"] for x in lesion if x["lesion_class"] == c]) for c in sorted({x["lesion_class"] for x in lesion})}
    return out


def summarise(records: list[dict], sites) -> dict:
    """One method's LOSO figures (see the module doc): as sampled and ``*_reversed``, worst-group Dice, false alarms,
    both validation scores, and per-site, per-seed and per-run detail."""
    seeds = sorted({r["seed"] for r in records})
    out: dict = {"seeds": seeds, "n_runs": len(records), "n_test_images": sum(len(r["rows"]) for r in records)}
    if out["n_test_images"]:
        for key, suffix in PROTOCOLS.items():
            out.update({f"{k}{suffix}": v for k, v in _test_figures(records, sites, seeds, key).items()})
    for v in ("validation_dice_interventional", "validation_dice_plain"):
        per_seed = [_mean([r[v] for r in records if r["seed"] == k]) for k in seeds]
        out[v], out[f"{v}_std"] = _mean(per_seed), _std(per_seed)
    out["train_minutes_mean"] = _mean([r["train_seconds"] / 60 for r in records])
    out["run_minutes_mean"] = _mean([r["wall_s"] / 60 for r in records])

    def run_summary(r: dict) -> dict:
        d = {"held_out": r["held_out"], "seed": r["seed"], "selected_epoch": r["selected_epoch"],
             "validation_dice_interventional": r["validation_dice_interventional"], "validation_dice_plain": r["validation_dice_plain"]}
        if r["rows"]:
            d.update(dice=_mean([x["dice"] for x in r["rows"]]), dice_reversed=_mean([x["dice"] for x in r["rows_reversed"]]))
        return d

    out["runs"] = [run_summary(r) for r in sorted(records, key=lambda r: (r["held_out"], r["seed"]))]
    return out


def _paired(a: dict, b: dict, key: str) -> list[float]:
    """Per-seed differences ``a - b`` of ``per_seed_<key>`` over the seeds both rows have."""
    return [a[f"per_seed_{key}"][a["seeds"].index(k)] - b[f"per_seed_{key}"][b["seeds"].index(k)] for k in a["seeds"] if k in b["seeds"]]


#: a shortcut worth testing a causal method on costs ERM at least this much reversed Dice (issue 22: "while it costs
#: ERM >= 3")
SHORTCUT_MARGIN_POINTS = 3.0


def shortcut_check(erm: dict, unconfounded: dict | None) -> dict:
    """Did ERM learn the shortcut? Its reversed Dice against its as-sampled Dice and against ERM trained with the
    protocols off; "learnt" when the reversed Dice is below both by more than :data:`SHORTCUT_MARGIN_POINTS` and by
    more than twice the seed std (the larger of the rows' reversed Dice std; with one seed there is none, and the
    report says so)."""
    drop = erm["dice_mean"] - erm["dice_mean_reversed"]
    out = {"erm_dice": erm["dice_mean"], "erm_dice_reversed": erm["dice_mean_reversed"], "drop_points": 100 * drop,
           "erm_false_alarms": erm["false_alarms"], "erm_false_alarms_reversed": erm["false_alarms_reversed"]}
    std = erm["dice_std_reversed"]
    cost = None
    if unconfounded is not None:
        cost = unconfounded["dice_mean_reversed"] - erm["dice_mean_reversed"]
        std = max(std, unconfounded["dice_std_reversed"])
        out.update(erm_unconfounded_dice_reversed=unconfounded["dice_mean_reversed"], confounding_cost_points=100 * cost)
    out["seed_std_points"] = 100 * std
    out["seeds"] = len(erm.get("seeds", ()))
    margin = max(2 * std, SHORTCUT_MARGIN_POINTS / 100)
    out["learnt"] = bool(drop > margin and (cost is None or cost > margin))
    return out


def target_check(s: dict) -> list[dict]:
    """The issue's targets, each where its rows were run: ``[{"target", "value_points", "met", ...}, ...]`` (``s``:
    the summaries by row)."""
    out = []

    def gain(a: str, b: str, key: str = "dice_mean_reversed") -> float:
        return 100 * (s[a][key] - s[b][key])

    def add(target: str, rows: tuple[str, ...], value: float, met: bool, **extra) -> None:
        if all(r in s for r in rows):
            out.append({"target": target, "rows": list(rows), "value_points": value, "met": bool(met), **extra})

    if {"mcdrl", "erm"} <= set(s):
        add("reversed LOSO: mcdrl >= erm + 5", ("mcdrl", "erm"), gain("mcdrl", "erm"), gain("mcdrl", "erm") >= 5)
        add("as sampled: mcdrl >= erm", ("mcdrl", "erm"), gain("mcdrl", "erm", "dice_mean"), gain("mcdrl", "erm", "dice_mean") >= 0)
        fa = s["mcdrl"]["false_alarms_reversed"]
        add("false alarms of mcdrl on reversed lesion-free frames <= 25%", ("mcdrl",), 100 * fa, fa is not None and fa <= 0.25)
    if {"mcdrl", "mcdrl_unconfounded"} <= set(s):
        d = gain("mcdrl_unconfounded", "mcdrl")
        add("reversed: mcdrl within 1 point of mcdrl_unconfounded", ("mcdrl", "mcdrl_unconfounded"), d, d <= 1.0)
    if {"erm", "erm_unconfounded"} <= set(s):
        d = gain("erm_unconfounded", "erm")
        add("reversed: the confounding costs erm >= 3 (erm_unconfounded - erm)", ("erm", "erm_unconfounded"), d, d >= 3.0)
    for with_, without in (("erm_cdrl", "erm"), ("mcdrl_cdrl", "mcdrl")):
        if {with_, without} <= set(s):
            d = gain(with_, without)
            std = 100 * max(s[with_]["dice_std_reversed"], s[without]["dice_std_reversed"])
            add(f"the paper's claim, reversed: {with_} >= {without} + 2, above twice the seed std", (with_, without), d,
                d >= 2.0 and d > 2 * std and len(set(s[with_]["seeds"]) & set(s[without]["seeds"])) > 1, seed_std_points=std,
                paired_std_points=100 * _std(_paired(s[with_], s[without], "dice_reversed")))
    if {"mcdrl", "unet_doz"} <= set(s):
        add("reversed: mcdrl >= unet_doz + 3", ("mcdrl", "unet_doz"), gain("mcdrl", "unet_doz"), gain("mcdrl", "unet_doz") >= 3)
    return out


def _fmt(mean, std=None, scale: float = 100.0) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    return f"{mean * scale:.1f}" + (f" ± {std * scale:.1f}" if std else "")


CSV_COLUMNS = ["id", "site", "lesion_class", "dice", "iou", "lesion", "protocol_confounder", "protocol_confounders", "false_alarm",
               "detected", "lesion_score"]


def _csv_text(records: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "held_out", "seed", "protocol", *CSV_COLUMNS])
    for key, name in (("rows", "sampled"), ("rows_reversed", "reversed")):
        for r in records:
            for row in r[key]:
                vals = {**row, "protocol_confounders": ";".join(row.get("protocol_confounders", []))}
                w.writerow([r["method"], r["held_out"], r["seed"], name, *["" if vals.get(c) is None else vals.get(c) for c in CSV_COLUMNS]])
    return buf.getvalue()


def _bar_plot(path: Path, summaries: dict, sites, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(sites) + ["mean"]
    names = list(summaries)
    width = 0.8 / max(1, len(names))
    fig, axes = plt.subplots(2, 1, figsize=(max(8, 1.4 * len(groups) + 3), 7.6), dpi=110, sharex=True)
    for ax, suffix, what in zip(axes, ("", "_reversed"), ("as sampled", "protocol reversed")):
        for j, name in enumerate(names):
            s = summaries[name]
            ys = [s[f"per_site_dice{suffix}"][g] for g in sites] + [s[f"dice_mean{suffix}"]]
            es = [0.0] * len(sites) + [s[f"dice_std{suffix}"]]
            xs = np.arange(len(groups)) + (j - (len(names) - 1) / 2) * width
            ax.bar(xs, np.array(ys) * 100, width, yerr=np.array(es) * 100, capsize=2, label=name)
        ax.set_ylabel(f"Dice (%), {what}")
        ax.grid(axis="y", alpha=0.3)
    axes[1].set_xticks(np.arange(len(groups)), [f"held-out {g}" if g != "mean" else "LOSO mean" for g in groups], fontsize=8)
    axes[0].set_title(title, fontsize=10)
    axes[0].legend(fontsize=7, ncol=min(6, len(names)), loc="lower center", bbox_to_anchor=(0.5, 1.1))
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
    oracle = summaries.get("oracle") if not validation_only else None
    for name in by:
        m = methods[name]
        entry = {"description": m.description, "kind": m.kind, "trains_on": m.world, "files": ["train.json", *m.files],
                 "overrides": m.overrides, "same_runs_as": by[name][0].get("same_runs_as"), "same_results_as": identical.get(name)}
        if oracle is not None:
            entry["dg_efficiency"] = summaries[name]["dice_mean"] / oracle["dice_mean"] if oracle["dice_mean"] else None
            entry["dg_efficiency_reversed"] = (summaries[name]["dice_mean_reversed"] / oracle["dice_mean_reversed"]
                                               if oracle["dice_mean_reversed"] else None)
        doc["methods"][name] = {**entry, **summaries[name]}
    if not validation_only:
        if "erm" in summaries:
            doc["shortcut"] = shortcut_check(summaries["erm"], summaries.get("erm_unconfounded"))
        doc["targets"] = target_check(summaries)
        raw = out_dir / f"{stem}_raw"
        raw.mkdir(parents=True, exist_ok=True)
        for name, recs in by.items():
            _write_text(raw / f"{name}.csv", _csv_text(recs))
        _bar_plot(out_dir / f"{stem}.png", summaries, sites, f"LOSO held-out Dice, {meta.get('clip_model', '')} (mean over seeds)")
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
    scored the same, as sampled and reversed, with the same validation Dice: row -> that earlier row."""
    def key(recs):
        return [(r["held_out"], r["seed"], r["validation_dice_interventional"], r["validation_dice_plain"], r["rows"], r.get("rows_reversed"))
                for r in sorted(recs, key=lambda r: (r["held_out"], r["seed"]))]

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


def _header(meta: dict, sites) -> list[str]:
    seeds = meta.get("row_seeds") or {}
    return ["# Leave-one-site-out benchmark (synthetic world with protocol confounding)", "",
            f"Generated by `{meta.get('command')}`; do not edit by hand.", "",
            f"CLIP `{meta.get('clip_model')}` (weights sha256 `{str(meta.get('clip_weights_sha256'))[:12]}`), dictionary `{meta.get('dictionary')}`; "
            f"profile `{meta.get('profile')}`: held-out sites {', '.join(sites)}; seeds {meta.get('seeds')}"
            + (f" (other rows: {seeds})" if seeds else "") + f". Wall time {meta.get('wall_time_min', float('nan')):.1f} min on "
            f"{meta.get('cpu_count')} CPU cores ({meta.get('workers')} worker processes, {meta.get('threads')} thread each)"
            + _reuse_note(meta.get("runs")) + ".", ""]


def _markdown(doc: dict, summaries: dict, methods: dict, sites, meta: dict, validation_only: bool) -> str:
    lines = _header(meta, sites)
    if validation_only:
        lines += ["**Validation only** (for choosing settings): no held-out frame was scored. Choose by the interventional split "
                  "(the source sites' validation frames with their protocol off: the confounders independent of the label); the "
                  "plain split (as sampled) rewards a shortcut.", "",
                  "| method | validation Dice, interventional | validation Dice, plain | train min/run |", "|---|---|---|---|"]
        for name, s in summaries.items():
            lines.append(f"| {name} | {_fmt(s['validation_dice_interventional'], s['validation_dice_interventional_std'])} | "
                         f"{_fmt(s['validation_dice_plain'], s['validation_dice_plain_std'])} | {s['train_minutes_mean']:.1f} |")
        return "\n".join(lines + ["", "## Budget and protocol notes", ""] + [f"- {n}" for n in meta.get("budget_notes", [])]) + "\n"
    lines += ["Dice in %: per-frame foreground Dice at the original resolution (an empty label with an empty mask scores 1), mean "
              "over a held-out site's frames, then over the sites (the LOSO mean), then mean ± std over seeds. *reversed*: the same "
              "frames' scenes with the held-out site's protocol reversed (P(z | lesion) and P(z | no lesion) swapped). Worst group: "
              "the smallest mean Dice over (lesion / no lesion) x (a protocol confounder of the held-out site present / absent), "
              "frames of all held-out sites pooled per seed. False alarms: lesion-free frames with any lesion pixel. Validation: "
              "the selected weights' Dice on the interventional split (which selects the epoch and the presence threshold) and on "
              "the plain source-site validation split. DG efficiency: Dice / the oracle's Dice on the same frames.", "",
              "| row | Dice | Dice reversed | worst group | worst group reversed | false alarms | false alarms reversed | "
              "val. interventional | val. plain | DG efficiency (sampled / reversed) | min/run |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for kind in ("method", "reference"):
        if kind == "reference":
            lines.append("| *references* |" + " |" * 10)
        for name, s in summaries.items():
            if methods[name].kind != kind:
                continue
            d = doc["methods"][name]
            eff = (f"{_fmt(d.get('dg_efficiency'))}% / {_fmt(d.get('dg_efficiency_reversed'))}%" if "dg_efficiency" in d else "n/a")
            lines.append(f"| {name} | {_fmt(s['dice_mean'], s['dice_std'])} | {_fmt(s['dice_mean_reversed'], s['dice_std_reversed'])} | "
                         f"{_fmt(s['worst_group_dice'], s['worst_group_dice_std'])} | "
                         f"{_fmt(s['worst_group_dice_reversed'], s['worst_group_dice_std_reversed'])} | {_fmt(s['false_alarms'])}% | "
                         f"{_fmt(s['false_alarms_reversed'])}% | {_fmt(s['validation_dice_interventional'])} | {_fmt(s['validation_dice_plain'])} | "
                         f"{eff} | {s['run_minutes_mean']:.1f} |")
    sc = doc.get("shortcut")
    if sc:
        lines += ["", "## Did ERM learn the shortcut?", "",
                  f"- **{'Yes' if sc['learnt'] else 'No'}**: ERM's reversed Dice {_fmt(sc['erm_dice_reversed'])} against "
                  f"{_fmt(sc['erm_dice'])} as sampled ({-sc['drop_points']:+.1f} points)"
                  + (f" and against {_fmt(sc['erm_unconfounded_dice_reversed'])} for ERM trained with every protocol off "
                     f"({-sc['confounding_cost_points']:+.1f})" if "confounding_cost_points" in sc else " (erm_unconfounded not run)")
                  + (f"; seed std {sc['seed_std_points']:.1f}" if sc.get("seeds", 0) > 1 else "; one seed, so no seed std")
                  + f" (learnt: below both by more than {SHORTCUT_MARGIN_POINTS:g} points and more than twice the seed std). False alarms "
                  f"{_fmt(sc['erm_false_alarms'])}% as sampled, {_fmt(sc['erm_false_alarms_reversed'])}% reversed."]
    if doc.get("targets"):
        lines += ["", "## Target check (issue 22)", ""]
        for t in doc["targets"]:
            extra = f"; seed std {t['seed_std_points']:.1f}, paired std {t['paired_std_points']:.1f}" if "seed_std_points" in t else ""
            lines.append(f"- {t['target']}: {t['value_points']:+.1f}{extra}: {'met' if t['met'] else 'NOT met'}.")
    for suffix, what in (("", "as sampled"), ("_reversed", "reversed")):
        lines += ["", f"## Per held-out site, {what}: Dice / worst group / false alarms (mean over seeds)", "",
                  "| row | " + " | ".join(sites) + " |", "|---|" + "---|" * len(sites)]
        for name, s in summaries.items():
            lines.append(f"| {name} | " + " | ".join(f"{_fmt(s[f'per_site_dice{suffix}'][x])} / {_fmt(s[f'per_site_worst_group_dice{suffix}'][x])} / "
                                                     f"{_fmt(s[f'per_site_false_alarms{suffix}'][x])}%" for x in sites) + " |")
    lines += ["", "## Groups: Dice per (lesion, protocol confounder) group, sampled / reversed (frames per seed pooled over the sites)", "",
              "| row | " + " | ".join(GROUPS) + " |", "|---|" + "---|" * len(GROUPS)]
    for name, s in summaries.items():
        lines.append(f"| {name} | " + " | ".join(f"{_fmt(s['group_dice'][g])} / {_fmt(s['group_dice_reversed'][g])}" for g in GROUPS) + " |")
    first = next(iter(summaries.values()))
    lines.append("| frames (all seeds) | " + " | ".join(f"{first['group_frames'][g]} / {first['group_frames_reversed'][g]}" for g in GROUPS) + " |")
    lines += ["", "Rows:", ""] + [_row_line(n, doc["methods"][n], summaries[n]) for n in summaries]
    lines += ["", "## Budget and protocol notes", ""] + [f"- {n}" for n in meta.get("budget_notes", [])] + [""]
    return "\n".join(lines)


def _row_line(name: str, d: dict, s: dict) -> str:
    line = f"- `{name}`: {d['description']} (configs {' + '.join(d['files'])}" + (f"; {d['overrides']}" if d["overrides"] else "")
    line += f"; trains on {d['trains_on']}; seeds {s['seeds']})"
    if d["same_runs_as"]:
        return line + f"; the same configuration as `{d['same_runs_as']}`, so the same runs."
    if d["same_results_as"]:
        return line + (f"; another configuration than `{d['same_results_as']}`'s, but the same results, frame for frame and seed for seed "
                       "(what it changes is not read by this configuration).")
    return line + "."
