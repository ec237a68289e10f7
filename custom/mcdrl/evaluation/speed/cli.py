"""The command line of ``python -m mcdrl.evaluation.speed``: time what MCDRL adds on top of its CLIP backbone, and write
bench.json / bench.md.

Examples:
    python -m mcdrl.evaluation.speed                      # full CPU run (several minutes on 2 cores)
    python -m mcdrl.evaluation.speed --quick --output /tmp/b.json --markdown /tmp/b.md   # smoke run, tiny CLIP, seconds
    python -m mcdrl.evaluation.speed --device cuda        # the same on a GPU, under bf16 autocast

Thread setting: the bench leaves OpenMP's settings as the environment has them, which is what ``monai.bundle run``
inference and MONAI Label get (by default OpenMP threads spin while they wait, which suits small operators such as
the intervention's). On a 2-core machine shared with other jobs spinning threads fight the other jobs and times get
slow and noisy; export ``OMP_WAIT_POLICY=PASSIVE`` there. The JSON records the policy of the first run and of every
update, and its ``thread_settings`` section measures the settings side by side in fresh processes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys
import threading
from pathlib import Path

import torch

from mcdrl.paths import default_bundle_root

from . import report, runner
from .models import QUICK_MODEL
from .probe import measure_peak_rss, time_in_fresh_process
from .timing import load_average, machine_info

#: the synthetic demo frames' side (python -m mcdrl.synthetic --size default)
NATIVE_SIZE = 224
#: the parts of the JSON that --update can re-measure
SECTIONS = ("forward", "train_step", "profile", "rss", "bf16", "threads", "thread_settings", "compile", "folder_inference")


class _LoadSampler:
    """Samples ``os.getloadavg()`` every few seconds in a daemon thread, to record how busy the machine was."""

    def __init__(self, every_s: float = 5.0):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(every_s,), daemon=True)

    def _loop(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=1)


def thread_settings(model: str, repeats: int) -> list[dict]:
    """MCDRL eval forward (batch 1) in fresh processes: OpenMP default wait policy, PASSIVE, and 1 thread."""
    variants = [
        ("torch default threads, OMP_WAIT_POLICY unset (OpenMP default: spin)", {"OMP_WAIT_POLICY": None, "OMP_NUM_THREADS": None}),
        ("torch default threads, OMP_WAIT_POLICY=PASSIVE", {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": None}),
        ("OMP_NUM_THREADS=1", {"OMP_WAIT_POLICY": None, "OMP_NUM_THREADS": "1"}),
    ]
    out = []
    for label, env in variants:
        r = time_in_fresh_process(model, env, time_repeats=repeats)
        out.append({"setting": label, "threads": r["threads"], "mcdrl_median_ms": r["mcdrl_median_ms"], "load_1min": load_average()[0]})
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    results = Path(default_bundle_root()) / "docs" / "results"
    p = argparse.ArgumentParser(prog="python -m mcdrl.evaluation.speed", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda times under bf16 autocast")
    p.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_MODEL}, few repeats (checks the JSON, not speed)")
    p.add_argument("--output", default=str(results / "bench.json"), help="JSON path (default: bundle/docs/results/bench.json)")
    p.add_argument("--markdown", default=str(results / "bench.md"), help="markdown path ('' to skip)")
    p.add_argument("--models", nargs="+", default=None, help="open_clip configs to time (default: mcdrl-demo-vit ViT-B-16)")
    p.add_argument("--main-model", default=None, help="config of the headline ratios (default: ViT-B-16)")
    p.add_argument("--large-size", type=int, default=None, help="the larger native input side, resized inside the network (default 512)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per forward comparison (default 7)")
    p.add_argument("--train-repeats", type=int, default=None, help="timed rounds per training comparison (default 3)")
    p.add_argument("--train-batch", type=int, default=None, help="training batch (default 8, as bundle/configs/train.json)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads before measuring (default: torch's choice)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (compiles for minutes on CPU)")
    p.add_argument("--no-options", action="store_true", help="skip the bf16 and thread checks")
    p.add_argument("--update", nargs="*", choices=SECTIONS, default=None,
                   help="re-measure only these sections and merge them into the existing --output JSON (forward rows by "
                        "model/batch/size; combine with --models to limit them); the JSON records each update. "
                        "No section: only re-render the JSON and markdown")
    p.add_argument("--note", default="", help="with --update: why this update was made, recorded with it")
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    quick = a.quick
    a.models = a.models or ([QUICK_MODEL] if quick else ["mcdrl-demo-vit", "ViT-B-16"])
    a.main_model = a.main_model or (QUICK_MODEL if quick else "ViT-B-16")
    if a.main_model not in a.models and a.update is None:
        a.models.append(a.main_model)
    a.large_size = a.large_size or (128 if quick else 512)
    a.repeats = a.repeats or (2 if quick else 7)
    a.train_repeats = a.train_repeats or (1 if quick else 3)
    a.train_batch = a.train_batch or (2 if quick else 8)
    a.batches = [1, 2] if quick else [1, 8]
    a.sizes = [None, a.large_size] if quick else [None, NATIVE_SIZE, a.large_size]
    return a


def _wanted(a: argparse.Namespace) -> set[str]:
    if a.update is not None:
        return set(a.update)
    wanted = set(SECTIONS)
    if not a.compile:
        wanted.discard("compile")
    if a.no_options:
        wanted -= {"bf16", "threads", "thread_settings"}
    if a.device != "cpu":
        wanted -= {"threads", "thread_settings"}
    if a.quick:
        wanted.discard("thread_settings")
    return wanted


def _measure(a: argparse.Namespace, wanted: set[str]) -> dict:
    """Run the ``wanted`` sections; returns ``{section: result}``."""
    log = lambda msg: print(f"[mcdrl.evaluation.speed] {msg}", flush=True)  # noqa: E731
    small = max(2, a.repeats // 2)
    out: dict = {}
    if "forward" in wanted:
        out["forward"] = []
        for model in a.models:
            log(f"forward: {model}, batches {a.batches}, inputs: CLIP size, {sorted({NATIVE_SIZE, a.large_size})}")
            out["forward"] += runner.forward_rows(model, a.batches, a.sizes, a.repeats, a.device)
    if "train_step" in wanted:
        out["train_step"] = []
        for model in a.models:
            log(f"training step: {model}, batch {a.train_batch}")
            out["train_step"].append(runner.train_rows(model, a.train_batch, a.train_repeats, a.device))
    if "profile" in wanted:
        log(f"profile: {a.main_model}")
        out["profile"] = {"model": a.main_model, "batch": 1, "top": runner.profile_top(a.main_model, 1, device=a.device)}
    if "rss" in wanted:
        log(f"peak RSS (fresh process): {a.main_model}, batch 1")
        out["rss"] = measure_peak_rss(a.main_model, 1, threads=a.threads)
    if "bf16" in wanted:
        log("option: bf16 autocast")
        out["bf16"] = runner.bf16_check(a.main_model, 1, small, a.device)
    if "threads" in wanted:
        log("option: thread counts (in process)")
        out["threads"] = runner.thread_check(a.main_model, 1, small, sorted({1, torch.get_num_threads()}))
    if "thread_settings" in wanted:
        log("option: thread settings in fresh processes")
        out["thread_settings"] = thread_settings(a.main_model, max(3, small))
    if "compile" in wanted:
        log("option: torch.compile")
        out["compile"] = runner.compile_check(a.main_model, 1, small, a.device)
    if "folder_inference" in wanted:
        folder_model = QUICK_MODEL if a.quick else "mcdrl-demo-vit"
        log(f"folder inference throughput: {folder_model}")
        out["folder_inference"] = runner.folder_throughput(folder_model, n_images=4 if a.quick else 16, size=None if a.quick else NATIVE_SIZE,
                                                           batch=2 if a.quick else 8, rounds=1 if a.quick else 2, device=a.device)
    return out


def _merge_rows(old: list[dict], new: list[dict], key) -> list[dict]:
    """Rows of ``old`` with those of ``new`` replacing equal keys, sorted by model (first seen), then the rest of the key."""
    merged = {key(r): r for r in old}
    merged.update({key(r): r for r in new})
    order = list(dict.fromkeys(r["model"] for r in old + new))
    return sorted(merged.values(), key=lambda r: (order.index(r["model"]), *key(r)[1:]))


def run(a: argparse.Namespace, argv: list[str]) -> dict:
    """Measure (all sections, or only ``a.update`` merged into the existing JSON) and assemble the result dict."""
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    previous = None
    if a.update is not None:
        if not Path(a.output).is_file():
            raise SystemExit(f"--update needs an existing benchmark JSON at {a.output}; run without --update first")
        previous = json.loads(Path(a.output).read_text())
    load_before = load_average()
    with _LoadSampler() as sampler:
        measured = _measure(a, _wanted(a))
    cores = machine_info(a.device)["usable_cores"] or 1
    load_after = load_average()
    peak = max([load_before[0], load_after[0], *sampler.samples])
    load = {
        "before": load_before,
        "after": load_after,
        "max_1min": round(peak, 2),
        # our own run adds about `threads` to the load; more than that before we started means other jobs ran
        "shared": bool(load_before[0] > 0.5 or peak > cores + 0.5),
    }
    shown = [x for i, x in enumerate(argv) if not (x == "--note" or x.startswith("--note=") or (i and argv[i - 1] == "--note"))]
    command = "python -m mcdrl.evaluation.speed " + shlex.join(shown)  # the note is recorded on its own
    date = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    if previous is not None:
        sections = {k: previous.get(k) for k in SECTIONS}
        for k, v in measured.items():
            if k == "forward":
                v = _merge_rows(previous.get("forward") or [], v, lambda r: (r["model"], r["batch"], r["input_size"]))
            elif k == "train_step":
                v = _merge_rows(previous.get("train_step") or [], v, lambda r: (r["model"], r["batch"]))
            sections[k] = v
        base = {k: v for k, v in previous.items() if k not in SECTIONS}
        if measured:
            update = {"sections": sorted(measured), "command": command, "date": date, "load": load, "OMP_WAIT_POLICY": _wait_policy()}
            if a.note:
                update["note"] = a.note
            base["updates"] = list(previous.get("updates") or []) + [update]
    else:
        sections = {k: measured.get(k) for k in SECTIONS}
        base = {
            "main_model": a.main_model,
            "quick": bool(a.quick),
            "batches": a.batches,
            "device": a.device + (" (bf16 autocast)" if a.device == "cuda" else " (fp32)"),
            "command": command,
            "date": date,
            "machine": {**machine_info(a.device), "OMP_WAIT_POLICY": _wait_policy()},
            "load": load,
            "updates": [],
            "definitions": {
                "bare_visual": "open_clip `model.visual(x)` on a CLIP-normalised S x S tensor: patch embed, all blocks, ln_post, proj; returns the pooled (B, d) embedding",
                "mcdrl_eval": "MCDRLNet.eval()(x), x (B, 3, H, W) in [0, 1] -> logits (B, 2, H, W): resize to S, normalise, blocks 1..L-1, MaskCLIP value path instead of block L, dense ln_post+proj, MTRS top-k, gather, 3-layer intervention, scatter, conv decoder, resize back",
                "baseline_eval": "the same network with use_intervention=False",
                "intervention_fraction": "median over MCDRL eval forwards of (time inside net.intervention, forward hooks, all layers) / (time of that whole forward); the forward, selector and head ms of the parts are medians too",
                "input_sizes": f"the CLIP size S (no resize), {NATIVE_SIZE} (the synthetic demo frames' native size) and {a.large_size} (a larger native size); inputs other than S x S are resized to S inside the network and the logits back; the bare visual always runs at S",
            },
        }
        base["cuda_max_memory_allocated_mb"] = (torch.cuda.max_memory_allocated() / 2**20) if a.device == "cuda" else None
    sections["forward"] = _merge_rows(sections["forward"] or [], [], lambda r: (r["model"], r["batch"], r["input_size"]))
    forward, train = sections["forward"], sections["train_step"] or []
    main_rows = [r for r in forward if r["model"] == base["main_model"]]
    clip_size = main_rows[0]["clip_size"] if main_rows else None
    headline = report.headline(forward, train, sections["rss"], base["main_model"], clip_size, base["batches"])
    if previous is not None and measured:  # keep the values this update replaced, for the record
        base["updates"][-1]["superseded"] = {k: previous.get(k) for k in report.TARGETS if previous.get(k) != headline.get(k)}
    return {**headline, **{k: v for k, v in base.items() if k not in headline}, **sections}


def _wait_policy() -> str:
    return os.environ.get("OMP_WAIT_POLICY") or "unset (OpenMP default: threads spin while waiting)"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    result = run(a, argv)
    report.write_outputs(result, a.output, a.markdown or None)
    for key, c in result["targets"].items():
        value = "n/a" if c["value"] is None else f"{c['value']:.3f}"
        print(f"{key:24s} {value:>10s}   target {c['target']:10s} {'met' if c['met'] else ('n/a' if c['met'] is None else 'NOT met')}")
    for r in result["forward"]:
        print(f"forward {r['model']:15s} B={r['batch']} {r['input_size']:4d}px  visual {r['visual_ms']:8.1f} ms  MCDRL {r['mcdrl_ms']:8.1f} ms  "
              f"Baseline {r['baseline_ms']:8.1f} ms  MCDRL/visual {r['mcdrl_over_visual']:.3f}")
    for t in result["train_step"]:
        print(f"train   {t['model']:15s} B={t['batch']}  MCDRL {t['mcdrl_ms']:8.1f} ms  Baseline {t['baseline_ms']:8.1f} ms  ratio {t['ratio']:.3f}")
    print(f"load average before/max/after: {result['load']['before']} / {result['load']['max_1min']} / {result['load']['after']}"
          + ("  (machine shared)" if result["load"]["shared"] else ""))
    print(f"wrote {a.output}" + (f" and {a.markdown}" if a.markdown else ""))
    return 0

