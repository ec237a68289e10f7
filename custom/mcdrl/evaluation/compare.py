"""``python -m mcdrl.evaluation.compare``: the shipped model side by side with the model a user would pick instead.

It trains a MONAI UNet from scratch through the bundle's own trainer (``train.json`` + ``unet.json``: the same data,
augmentation, schedule shape and model selection on source-site validation) for the wall time the shipped model's
training took (as many epochs as fit it, timed by a 1-epoch run, so that the UNet's cosine schedule ends within the
budget), then scores both, with the same post-processing, on the same source-site validation images and on
the held-out site::

    python -m mcdrl.evaluation.compare                      # budget from bundle/docs/results/demo_model.json
    python -m mcdrl.evaluation.compare --budget_s 1500 --heldout data/heldout_F/datalist.json
    python -m mcdrl.evaluation.compare --skip_training             # re-score the UNet of an earlier run
    python -m mcdrl.evaluation.compare --oracle data/oracle_F/datalist.json   # and the ceiling (below)
    python -m mcdrl.evaluation.compare --time_shipped_epoch           # budget re-timed on this machine (below)

**The budget.** By default the UNet gets the shipped model's logged training time (``demo_model.json``). That time
is only fair if it was measured on this machine with nothing else running. ``--time_shipped_epoch`` measures it
again, now: one epoch of ``train.json`` on the same data, times the shipped run's epochs. Each epoch's time then
includes set-up, which favours the UNet slightly. The report states which budget it used, and how much of it the UNet
used. The UNet's epochs are as many as fit the budget at the timed epoch's pace, and its training is stopped only
past the budget x ``BUDGET_TOLERANCE`` (1.1): the epochs of a long run take a few percent longer than a timed one, and
a stop at the budget itself would cut the cosine schedule before its end (the UNet then ends unannealed, a weaker
baseline than the budget gives). A UNet stopped before its schedule's last epoch anyway is not a fair row: the report
says so at its top (``unet_not_fair`` in the JSON), and the published report is tested to have none.

Both models are also scored on a **new site G** (``--new_site_frames``, default 160): the frames of the robustness
report's site, which no training set has. It has no oracle row, since no file of the world has training frames of G.

Any other ``--key value`` goes to the UNet's training run (``--batch_size 16``); its epochs are ``--unet_epochs``.

With ``--oracle DATALIST`` (the held-out site's own frames, disjoint from the scored ones: its training split trains,
its validation split selects) two more rows are the ceiling: the shipped configuration and the UNet, each trained on
the held-out site itself and scored on the same held-out images. Each oracle takes as many optimisation steps as the
model it bounds: that model's epochs x (its training frames / the oracle's), e.g. 5 x 2840 / 480 = 30 epochs. (With
the model's own epochs, an oracle on 480 frames took a sixth of the steps and scored below the model it should
bound.) The report
gives the DG efficiency of each model: Dice at the held-out site never trained on / Dice of its oracle.

Writes ``compare.json`` and ``compare.md`` (into ``bundle/docs/results/`` by default); the UNet's run (log, weights)
stays in ``--work_dir`` (git-ignored ``bundle/runs/compare``). Nothing here reads a held-out image while training.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from mcdrl.evaluation.scoring import build_bundle_network, load_labelled_images, parse_sets, score_images, summarise, write_json, write_report
from mcdrl.paths import default_bundle_root, portable_command, repo_relative

__all__ = ["dg_efficiency", "main", "unet_cut_short"]


#: the UNet's training stops only past budget x this: its epochs are chosen to fit the budget by one timed epoch, and
#: the epochs of a longer run take a few percent longer than that one (160-177 s against a timed 152 s, on
#: 2026-12-07), so a stop at the budget itself cut the schedule before its end and left the UNet unannealed
BUDGET_TOLERANCE = 1.1

ORACLE = {"shipped MCDRL": "oracle MCDRL (trained on the held-out site)", "MONAI UNet (same wall time)": "oracle UNet (trained on the held-out site)"}


def _train_unet(configs: Path, bundle: Path, work: Path, budget_s: float | None, extra: list[str],
                variants: tuple[str, ...] = ("unet.json",)) -> dict:
    """One training run of ``train.json`` + ``variants`` through the bundle CLI into ``work`` (weights in
    ``work/models``); returns its ``training_time.json`` record."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
           str([str(configs / "train.json"), *[str(configs / v) for v in variants]]),
           "--meta_file", str(configs / "metadata.json"), "--logging_file", str(configs / "logging.conf"),
           "--bundle_root", str(bundle), "--ckpt_dir", str(work / "models"), "--output_dir", str(work / "run"),
           "--resume", "false", *(["--time_budget_s", str(budget_s)] if budget_s else []), *extra]
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(work / "train.log", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"training {' + '.join(['train.json', *variants])} failed (exit {proc.returncode}); see {work / 'train.log'}")
    record = json.loads((work / "run" / "training_time.json").read_text())
    record["process_s"] = round(time.perf_counter() - t0, 1)
    return record


def _reused_unet_record(work: Path, previous_report: Path, budget_s: float) -> dict:
    """``--skip_training``: the UNet run already in ``work``, with the epochs and epoch timing its own report recorded,
    and a sentence for the report saying it was reused and whether its epochs are the ones ``budget_s`` gives."""
    record = json.loads((work / "run" / "training_time.json").read_text())
    previous = json.loads(previous_report.read_text()).get("unet_training") or {} if previous_report.is_file() else {}
    if previous.get("seconds") == record.get("seconds"):  # the report of the same run: keep what it measured
        record.update({k: previous[k] for k in ("max_epochs", "timed_epoch_s") if previous.get(k) is not None})
    record.setdefault("max_epochs", record.get("epochs"))
    trained_for = record.get("budget_s")
    sentence = f"The UNet run was reused (--skip_training), trained with a time limit of {trained_for:.0f} s" if trained_for else \
        "The UNet run was reused (--skip_training)"
    if record.get("timed_epoch_s"):
        fits = unet_epochs_for(budget_s, record["timed_epoch_s"])
        sentence += (f"; {fits} epoch(s) of {record['timed_epoch_s']:.0f} s fit this budget too, so it is the run this budget gives."
                     if fits == record["max_epochs"] else f"; this budget would give {fits} epoch(s), not {record['max_epochs']}: retrain it.")
    else:
        sentence += "."
    record["reused"] = sentence
    return record


def unet_epochs_for(budget_s: float, epoch_s: float) -> int:
    """How many epochs of ``epoch_s`` seconds (one measured epoch, validation included) fit in ``budget_s``: at least 1."""
    return max(1, int(budget_s // max(epoch_s, 1e-9)))


def main(argv: list[str] | None = None) -> int:
    configs = Path(default_bundle_root()) / "configs"
    p = argparse.ArgumentParser(prog="python -m mcdrl.evaluation.compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle_root", default=str(configs.parent), help="the bundle whose models/model.pt is scored (default: this checkout's)")
    p.add_argument("--budget_s", type=float, default=None, help="the UNet's wall-time budget (default: the shipped model's logged training time)")
    p.add_argument("--datalist", default=None, help="training datalist (its validation split is scored); default data/synthetic")
    p.add_argument("--heldout", default=None, help="held-out datalist (its --heldout_split is scored); default data/heldout_F")
    p.add_argument("--heldout_split", default="training")
    p.add_argument("--work_dir", default=None, help="the UNet's run (default: <bundle_root>/runs/compare)")
    p.add_argument("--out", default=None, help="where compare.json/md go (default: <bundle_root>/docs/results)")
    p.add_argument("--skip_training", action="store_true", help="score the UNet already in --work_dir")
    p.add_argument("--unet_epochs", type=int, default=None,
                   help="the UNet's max_epochs (its cosine schedule's length); default: as many as fit the budget, from a timed 1-epoch run")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="a config value for both models (repeatable)")
    p.add_argument("--oracle", default=None, help="the held-out site's own training frames (a datalist): adds the oracle rows")
    p.add_argument("--time_shipped_epoch", action="store_true",
                   help="budget = one epoch of train.json timed now, on this machine, x the shipped run's epochs (instead of its logged time)")
    p.add_argument("--new_site_frames", type=int, default=160, help="frames of the robustness report's new site G to score (0: none)")
    a, unet_overrides = p.parse_known_args(argv)  # anything else is passed to the UNet's training run (--key value)
    if "--max_epochs" in unet_overrides:
        p.error("the UNet's epochs are --unet_epochs (default: as many as fit the budget)")
    bundle = Path(a.bundle_root)
    repo = configs.parent.parent
    datalist = Path(a.datalist or repo / "data" / "synthetic" / "datalist.json")
    heldout = Path(a.heldout or repo / "data" / "heldout_F" / "datalist.json")
    work = Path(a.work_dir or bundle / "runs" / "compare")
    out = Path(a.out or bundle / "docs" / "results")
    sets = {"bundle_root": str(bundle), **parse_sets(a.set)}
    record_file = bundle / "docs" / "results" / "demo_model.json"
    shipped_record = json.loads(record_file.read_text()) if record_file.is_file() else {}
    budget = a.budget_s or shipped_record.get("training", {}).get("seconds")
    if not budget:
        raise SystemExit(f"no --budget_s given and {record_file} has no training.seconds")
    budget_source = "--budget_s" if a.budget_s else f"the shipped model's logged training time ({repo_relative(record_file, repo)})"
    oracle = Path(a.oracle) if a.oracle else None
    if oracle is not None:  # checked before any training
        if not oracle.is_file():
            raise SystemExit(f"--oracle {oracle}: no such datalist")
        if _image_paths(oracle, "training") & _image_paths(heldout, a.heldout_split):
            raise SystemExit(f"--oracle {oracle} shares images with the scored held-out split of {heldout}: an oracle must not train on them")
    shipped_timing = None
    if a.time_shipped_epoch and not a.skip_training:
        shipped_epochs = int(shipped_record.get("training", {}).get("epochs") or 0)
        if shipped_epochs < 1:
            raise SystemExit(f"--time_shipped_epoch: {record_file} has no training.epochs")
        timing_extra = ["--dataset_dir", str(datalist.parent), "--max_epochs", "1",
                        *[x for k, v in sets.items() if k != "bundle_root" for x in (f"--{k}", v if isinstance(v, str) else json.dumps(v))]]
        shipped_timing = _train_unet(configs, bundle, work / "shipped_timing", None, timing_extra, variants=())
        budget = round(shipped_timing["seconds"] * shipped_epochs, 1)
        budget_source = (f"one epoch of the shipped recipe timed now on this machine ({shipped_timing['seconds']:.0f} s) x its "
                         f"{shipped_epochs} epochs; the logged time was {shipped_record['training'].get('seconds'):.0f} s")
        print(f"shipped recipe: one epoch took {shipped_timing['seconds']:.0f} s here; the UNet's budget is {budget:.0f} s", flush=True)
    elif a.skip_training and (out / "compare.json").is_file():  # re-scoring: keep the budget the UNet was trained for
        previous = json.loads((out / "compare.json").read_text())
        if previous.get("budget_source") and not a.budget_s:
            budget, budget_source = previous["budget_s"], previous["budget_source"]
    unet_record = None
    if not a.skip_training:
        extra = ["--dataset_dir", str(datalist.parent),
                 *[x for k, v in sets.items() if k != "bundle_root" for x in (f"--{k}", v if isinstance(v, str) else json.dumps(v))]]
        epochs, epoch_s = a.unet_epochs, None
        if epochs is None:  # the schedule must fit the budget: a cosine cut short by the budget never anneals
            timing = _train_unet(configs, bundle, work / "timing", None, [*extra, *unet_overrides, "--max_epochs", "1"])
            epoch_s = timing["seconds"]
            epochs = unet_epochs_for(float(budget), epoch_s)
            print(f"UNet: one epoch took {epoch_s:.0f} s; {epochs} epoch(s) fit the {float(budget):.0f} s budget", flush=True)
        unet_record = _train_unet(configs, bundle, work, float(budget) * BUDGET_TOLERANCE,
                                  [*extra, *unet_overrides, "--max_epochs", str(epochs)])
        unet_record.update({"max_epochs": epochs, "timed_epoch_s": epoch_s})
    elif (work / "run" / "training_time.json").is_file():
        unet_record = _reused_unet_record(work, out / "compare.json", float(budget))
    cut_short = unet_cut_short(unet_record)
    if cut_short:
        print(f"WARNING: {cut_short}", file=sys.stderr, flush=True)
    oracle_records = {}
    if a.oracle:
        extra = ["--dataset_dir", str(oracle.parent), *[x for k, v in sets.items() if k != "bundle_root" for x in (f"--{k}", v if isinstance(v, str) else json.dumps(v))]]
        unet_epochs = (unet_record or {}).get("max_epochs") or a.unet_epochs
        shipped_epochs = (shipped_record.get("training") or {}).get("epochs")
        ratio = len(_image_paths(datalist, "training")) / max(1, len(_image_paths(oracle, "training")))
        for name, variants, epochs in (("shipped MCDRL", (), shipped_epochs), ("MONAI UNet (same wall time)", ("unet.json",), unet_epochs)):
            run = work / ("oracle_mcdrl" if not variants else "oracle_unet")
            # as many optimisation steps as the model it bounds: its epochs x (its training frames / the oracle's)
            epochs = max(1, round(epochs * ratio)) if epochs else None
            if not (a.skip_training and (run / "models" / "model.pt").is_file()):
                oracle_records[name] = _train_unet(configs, bundle, run, None, [*extra, *(["--max_epochs", str(epochs)] if epochs else [])], variants)
            else:  # re-scoring: the oracle's own run says how long it trained
                timing = run / "run" / "training_time.json"
                oracle_records[name] = {**(json.loads(timing.read_text()) if timing.is_file() else {}), "reused": "--skip_training"}
            oracle_records[name]["steps_matched_epochs"] = epochs
            oracle_records[name]["files"] = [str(configs / "train.json"), *[str(configs / v) for v in variants]]
            mismatch = oracle_not_steps_matched(ORACLE[name], oracle_records[name])
            if mismatch:
                oracle_records[name]["not_steps_matched"] = mismatch
                print(f"WARNING: {mismatch}", file=sys.stderr, flush=True)
    images = {"validation (source sites)": load_labelled_images(datalist, "validation"),
              "held-out site": load_labelled_images(heldout, a.heldout_split)}
    if a.new_site_frames > 0:
        from mcdrl.evaluation.robustness import new_site_images

        images["new site G"] = new_site_images(a.new_site_frames, size=images["held-out site"][0]["image"].shape[0])
    models = {
        "shipped MCDRL": build_bundle_network(str(configs / "inference.json"), bundle / "models" / "model.pt", sets),
        "MONAI UNet (same wall time)": build_bundle_network([str(configs / "train.json"), str(configs / "unet.json")], work / "models" / "model.pt", sets),
    }
    results = {}
    for name, (net, post) in models.items():
        results[name] = {s: summarise(score_images(net, imgs, post)) for s, imgs in images.items()}
        print(name, {s: (r["dice"], r["false_alarm_rate"], r["sensitivity"]) for s, r in results[name].items()}, flush=True)
    efficiency = {}
    for name, rec in oracle_records.items():
        run = work / ("oracle_unet" if "unet.json" in " ".join(rec["files"]) else "oracle_mcdrl")
        net, post = build_bundle_network(rec["files"], run / "models" / "model.pt", sets)
        results[ORACLE[name]] = {"held-out site": summarise(score_images(net, images["held-out site"], post))}
        ceiling = results[ORACLE[name]]["held-out site"]["dice"]
        efficiency[name] = dg_efficiency(results[name]["held-out site"]["dice"], ceiling)
        print(ORACLE[name], results[ORACLE[name]]["held-out site"]["dice"], "DG efficiency", efficiency[name], flush=True)
    doc = {
        "command": portable_command("python -m mcdrl.evaluation.compare", list(argv if argv is not None else sys.argv[1:]), repo),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "datalist": repo_relative(datalist, repo), "heldout": repo_relative(heldout, repo),
        "budget_s": float(budget), "budget_source": budget_source, "shipped_timing": shipped_timing,
        "shipped_training": shipped_record.get("training"), "unet_training": unet_record,
        "oracle": repo_relative(Path(a.oracle), repo) if a.oracle else None, "oracle_training": {name: {**rec, "files": [repo_relative(Path(f), repo) for f in rec.get("files", [])]}
                            for name, rec in oracle_records.items()} or None,
        "dg_efficiency": efficiency or None, "unet_not_fair": cut_short,
        "detection_rule": "a lesion is detected when the mask covers >= 10% of its pixels; a false alarm is any lesion pixel on a lesion-free frame",
        "results": results,
    }
    write_json(out / "compare.json", doc)
    lines = ["# Shipped MCDRL against a MONAI UNet trained for the same wall time", "",
             f"Generated by `{doc['command'].strip()}`; do not edit by hand. UNet budget {budget:.0f} s "
             f"({budget_source}); the UNet ran {unet_record['epochs'] if unet_record else '?'} of "
             f"{unet_record.get('max_epochs', '?') if unet_record else '?'} epochs in {unet_record['seconds'] if unet_record else '?'} s"
             + (f", {unet_record['seconds'] / budget:.0%} of the budget (it is stopped only past {BUDGET_TOLERANCE:.0%})" if unet_record and budget else "")
             + (f"; one epoch was timed at {unet_record['timed_epoch_s']:.0f} s." if unet_record and unet_record.get("timed_epoch_s") else ".")
             + (f" {unet_record['reused']}" if unet_record and unet_record.get("reused") else ""), "",
             *([f"**Not a fair row:** {cut_short}", ""] if cut_short else []),
             "Lesion sensitivity: a lesion counts as found when the mask covers >= 10% of it; small lesions cover < 1% of the frame.", "",
             "| model | set | images | Dice | IoU | Dice on lesion images | false alarms (lesion-free) | lesion sensitivity | small-lesion sensitivity |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, per_set in results.items():
        for s, r in per_set.items():
            fa = "-" if r["false_alarm_rate"] is None else f"{100 * r['false_alarm_rate']:.0f}% of {r['lesion_free_images']}"
            se = "-" if r["sensitivity"] is None else f"{100 * r['sensitivity']:.0f}% of {r['lesion_images']}"
            small = "-" if r.get("sensitivity_small") is None else f"{100 * r['sensitivity_small']:.0f}% of {r['small_lesion_images']}"
            lines.append(f"| {name} | {s} | {r['n']} | {r['dice']:.3f} | {r['iou']:.3f} | {r['dice_lesion_images']:.3f} | {fa} | {se} | {small} |")
    if efficiency:
        lines += ["", "DG efficiency (Dice at the held-out site never trained on / Dice of the same model trained on that site's own "
                  "frames, the ceiling): " + "; ".join(f"{name} {e:.2f}" for name, e in efficiency.items() if e is not None) + ". "
                  "Each oracle trained for as many optimisation steps as the model it bounds: "
                  + "; ".join(f"{ORACLE[name].split(' (')[0]} {rec.get('epochs', '?')} epochs" for name, rec in oracle_records.items()
                              if rec.get("epochs")) + "."]
        lines += [f"**Not a steps-matched ceiling:** {rec['not_steps_matched']}" for rec in oracle_records.values() if rec.get("not_steps_matched")]
    write_report(out / "compare.md", lines)
    return 0


def unet_cut_short(record: dict | None) -> str | None:
    """Why the UNet row is not a fair equal-wall-time row, or None when it is. A run that the budget stopped before its
    schedule's last epoch was never annealed by its cosine schedule (its epochs ran slower than the timed one, or the
    budget came from another day's machine), so it scores below what the same budget gives."""
    if not record or not record.get("stopped_by_budget") or not record.get("max_epochs"):
        return None
    if record.get("epochs", 0) >= record["max_epochs"]:
        return None
    return (f"the time budget stopped the UNet after {record['epochs']} of its {record['max_epochs']} epochs, so its cosine "
            f"schedule never annealed; run compare again with --time_shipped_epoch on an idle machine")


def oracle_not_steps_matched(name: str, record: dict) -> str | None:
    """Why an oracle's run is not the steps-matched ceiling, or None when it is: a run reused with ``--skip_training``
    trained ``epochs``, and the model it bounds now needs ``steps_matched_epochs`` (its own epochs changed since)."""
    trained, needed = record.get("epochs"), record.get("steps_matched_epochs")
    if not trained or not needed or trained == needed:
        return None
    return (f"the {name} trained {trained} epoch(s), but the model it bounds now takes as many steps as "
            f"{needed} epoch(s) on its frames: retrain it (compare --oracle without --skip_training)")


def dg_efficiency(heldout_dice: float, oracle_dice: float) -> float | None:
    """Dice(held-out site, never trained on) / Dice(oracle trained on it); None when the oracle scores 0."""
    return round(heldout_dice / oracle_dice, 4) if oracle_dice > 0 else None


def _image_paths(datalist: Path, split: str) -> set[str]:
    """The resolved image paths of one split of a datalist (to check that an oracle never trains on scored images)."""
    items = json.loads(datalist.read_text()).get(split, [])
    return {str((datalist.parent / d["image"]).resolve()) for d in items}


if __name__ == "__main__":
    from mcdrl.errors import install_cli_hook

    install_cli_hook()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
