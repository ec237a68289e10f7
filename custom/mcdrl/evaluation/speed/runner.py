"""The measurements behind ``python -m mcdrl.evaluation.speed``; each function returns plain JSON-ready dicts.

Definitions (also written into the JSON):

* **bare CLIP visual forward**: open_clip's ``model.visual(x)`` on an already CLIP-normalised (B, 3, S, S) tensor,
  S = the CLIP input size: patch embedding, all transformer blocks, ``ln_post`` of the pooled token and ``proj``;
  it returns the pooled embedding (B, d). No resize, no normalisation, no dense read-out.
* **MCDRL eval forward**: ``MCDRLNet.eval()(x)`` on (B, 3, H, W) in [0, 1]: resize to S (skipped in cost when
  H = W = S), normalisation, all blocks but the last, the MaskCLIP value path in place of the last block, dense
  ``ln_post`` + ``proj`` for every patch, MTRS scoring and top-k, gather, the 3-layer intervention, scatter, the
  conv decoder to S x S and the resize back to H x W.
* **Baseline forward**: the same network with ``use_intervention=False`` (no intervention; everything else equal).
"""

from __future__ import annotations

import contextlib
import statistics
import time

import torch

from mcdrl.engines.training import param_groups
from mcdrl.networks.losses import MCDRLLoss

from .fast import AutocastInferer, compile_network, mask_dice
from .models import build_network, random_batch
from .timing import ModuleTimer, interleaved, paired_ratio, sync

__all__ = ["bf16_check", "compile_check", "folder_throughput", "forward_rows", "profile_top", "thread_check", "train_rows"]


def autocast_ctx(device: str):
    """bf16 autocast on CUDA (the GPU benchmark's setting); nothing on CPU (fp32)."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _run(net, x, use_intervention: bool):
    net.use_intervention = use_intervention
    return net(x)


def _parts(net, x, repeats: int, device: str) -> dict:
    """Time spent in the selector, the intervention and the head *inside* real MCDRL eval forwards.

    Each value is the median over ``repeats`` forwards (per forward: the part's time, and its share of that forward),
    so that one forward slowed by the machine does not move the figure.
    """
    names = {"selector": net.selector, "intervention": net.intervention, "head": net.head}
    timer = ModuleTimer(names, device)
    net.use_intervention = True
    per = {k: [] for k in [*names, "forward"]}
    with timer.active():
        for _ in range(repeats):
            timer.reset()
            sync(device)
            start = time.perf_counter()
            net(x)
            sync(device)
            per["forward"].append((time.perf_counter() - start) * 1e3)
            for k in names:
                per[k].append(timer.total_ms[k])
    out = {f"{k}_ms": statistics.median(v) for k, v in per.items()}
    out["other_ms"] = statistics.median(f - sum(per[k][i] for k in names) for i, f in enumerate(per["forward"]))
    out["intervention_fraction"] = statistics.median(t / f for t, f in zip(per["intervention"], per["forward"]))
    out["head_fraction"] = statistics.median(t / f for t, f in zip(per["head"], per["forward"]))
    return out


def forward_rows(model_name: str, batches: list[int], sizes: list[int | None], repeats: int, device: str = "cpu") -> list[dict]:
    """Bare visual vs MCDRL eval vs Baseline eval, interleaved, for each batch and input size.

    ``sizes``: input sides; ``None`` means the CLIP input size S. The bare visual always runs at S (it cannot take
    another size); MCDRL and Baseline get the H x W input and resize internally.
    """
    net = build_network(model_name).to(device)
    s = net.image_size
    rows = []
    with torch.inference_mode(), autocast_ctx(device):
        for b in batches:
            x_clip = torch.rand(b, 3, s, s, device=device)
            xn = net.backbone.normalize(x_clip)
            for side in dict.fromkeys(s if size is None else int(size) for size in sizes):
                x = x_clip if side == s else torch.rand(b, 3, side, side, device=device)
                fns = {
                    "visual": lambda: net.backbone.visual(xn),
                    "mcdrl": lambda: _run(net, x, True),
                    "baseline": lambda: _run(net, x, False),
                }
                t = interleaved(fns, repeats=repeats, warmup=1, device=device)
                parts = _parts(net, x, max(3, repeats), device)
                rows.append(
                    {
                        "model": model_name,
                        "batch": b,
                        "input_size": side,
                        "clip_size": s,
                        "visual_ms": t["visual"]["median_ms"],
                        "mcdrl_ms": t["mcdrl"]["median_ms"],
                        "baseline_ms": t["baseline"]["median_ms"],
                        "mcdrl_over_visual": paired_ratio(t, "mcdrl", "visual"),
                        "baseline_over_visual": paired_ratio(t, "baseline", "visual"),
                        "mcdrl_over_baseline": paired_ratio(t, "mcdrl", "baseline"),
                        "mcdrl_over_visual_of_medians": t["mcdrl"]["median_ms"] / t["visual"]["median_ms"],
                        "parts": parts,
                        "rounds_ms": {k: v["times_ms"] for k, v in t.items()},
                        "repeats": repeats,
                    }
                )
    net.use_intervention = True
    return rows


def profile_top(model_name: str, batch: int = 1, top: int = 12, runs: int = 2, device: str = "cpu") -> list[dict]:
    """torch.profiler over ``runs`` MCDRL eval forwards; the ``top`` operators by self time, per forward."""
    from torch.profiler import ProfilerActivity, profile

    net = build_network(model_name).to(device)
    x = torch.rand(batch, 3, net.image_size, net.image_size, device=device)
    cuda = torch.device(device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch.inference_mode(), autocast_ctx(device):
        net(x)
        with profile(activities=activities) as prof:
            for _ in range(runs):
                net(x)
            sync(device)
    events = list(prof.key_averages())
    key = (lambda e: getattr(e, "self_device_time_total", 0.0)) if cuda else (lambda e: e.self_cpu_time_total)
    total = sum(key(e) for e in events) or 1.0
    events.sort(key=key, reverse=True)
    return [
        {"op": e.key, "self_ms_per_forward": key(e) / 1e3 / runs, "self_pct": 100.0 * key(e) / total, "calls_per_forward": e.count / runs}
        for e in events[:top]
    ]


def train_rows(model_name: str, batch: int, repeats: int, device: str = "cpu") -> dict:
    """One training step (forward + loss + backward + AdamW) of MCDRL vs Baseline on the same batch, interleaved.

    MCDRL: intervention on, the bundle's loss (L_seg + 0.5 L_causal + 0.1 L_contrast). Baseline: the same network
    and loss with ``use_intervention=False`` (L_causal switches itself off). ``baseline_seg_only``: the paper's
    Baseline objective, L_seg only. Optimiser: AdamW with the bundle's parameter groups (lr 0.005, CLIP x0.01).
    """
    net = build_network(model_name, use_intervention=True).train().to(device)  # one network: half the memory
    data = random_batch(batch, net.image_size)
    x = data["image"].to(device)
    target = {"label": data["label"].to(device), "lesion_class": data["lesion_class"].to(device)}
    # one optimiser: in Baseline steps the intervention has no gradients and AdamW skips it, as for a Baseline network
    opt = torch.optim.AdamW(param_groups(net, 0.005, 0.01, 1e-4), lr=0.005)

    def make_step(use_intervention: bool, loss_fn):
        def step():
            net.use_intervention = use_intervention
            opt.zero_grad(set_to_none=True)
            with autocast_ctx(device):
                loss = loss_fn(net(x), target)
            loss.backward()
            opt.step()

        return step

    fns = {
        "mcdrl": make_step(True, MCDRLLoss(net.dictionary).to(device)),
        "baseline": make_step(False, MCDRLLoss(net.dictionary).to(device)),
        "baseline_seg_only": make_step(False, MCDRLLoss(net.dictionary, lambda_causal=0.0, lambda_contrast=0.0).to(device)),
    }
    t = interleaved(fns, repeats=repeats, warmup=1, device=device)
    net.use_intervention = True
    return {
        "model": model_name,
        "batch": batch,
        "input_size": net.image_size,
        "mcdrl_ms": t["mcdrl"]["median_ms"],
        "baseline_ms": t["baseline"]["median_ms"],
        "baseline_seg_only_ms": t["baseline_seg_only"]["median_ms"],
        "ratio": paired_ratio(t, "mcdrl", "baseline"),
        "ratio_vs_seg_only": paired_ratio(t, "mcdrl", "baseline_seg_only"),
        "ratio_of_medians": t["mcdrl"]["median_ms"] / t["baseline"]["median_ms"],
        "rounds_ms": {k: v["times_ms"] for k, v in t.items()},
        "repeats": repeats,
    }


def bf16_check(model_name: str, batch: int, repeats: int, device: str = "cpu") -> dict:
    """fp32 vs :class:`AutocastInferer` (bf16) MCDRL eval forward: time, and Dice between the argmax masks.

    Random weights: the Dice figure shows the numeric drift of the bf16 path, not segmentation quality.
    """
    net = build_network(model_name).to(device)
    x = torch.rand(batch, 3, net.image_size, net.image_size, device=device)
    inferer = AutocastInferer("bfloat16")
    with torch.inference_mode():
        ref = net(x)
        low = inferer(x, net)
        t = interleaved({"fp32": lambda: net(x), "bf16": lambda: inferer(x, net)}, repeats=repeats, warmup=1, device=device)
    dice = mask_dice(ref, low)
    return {
        "model": model_name,
        "batch": batch,
        "fp32_ms": t["fp32"]["median_ms"],
        "bf16_ms": t["bf16"]["median_ms"],
        "speedup": paired_ratio(t, "fp32", "bf16"),
        "mask_dice_min": float(dice.min()),
        "mask_dice_mean": float(dice.mean()),
        "max_abs_logit_diff": float((ref - low).abs().max()),
    }


def thread_check(model_name: str, batch: int, repeats: int, thread_counts: list[int]) -> dict:
    """MCDRL eval forward (CPU) with different ``torch.set_num_threads`` values, interleaved; restores the setting."""
    net = build_network(model_name)
    x = torch.rand(batch, 3, net.image_size, net.image_size)
    before = torch.get_num_threads()

    def with_threads(n):
        def fn():
            torch.set_num_threads(n)
            return net(x)

        return fn

    try:
        with torch.inference_mode():
            t = interleaved({str(n): with_threads(n) for n in thread_counts}, repeats=repeats, warmup=1)
    finally:
        torch.set_num_threads(before)
    return {"model": model_name, "batch": batch, "median_ms_by_threads": {k: v["median_ms"] for k, v in t.items()}}


def compile_check(model_name: str, batch: int, repeats: int, device: str = "cpu") -> dict:
    """Eager vs ``torch.compile`` MCDRL eval forward: compile time, medians and the largest output difference."""
    net = build_network(model_name).to(device)
    x = torch.rand(batch, 3, net.image_size, net.image_size, device=device)
    compiled = compile_network(net)
    with torch.inference_mode(), autocast_ctx(device):
        ref = net(x)
        start = time.perf_counter()
        out = compiled(x)
        sync(device)
        compile_s = time.perf_counter() - start
        t = interleaved({"eager": lambda: net(x), "compiled": lambda: compiled(x)}, repeats=repeats, warmup=1, device=device)
    return {
        "model": model_name,
        "batch": batch,
        "compile_s": compile_s,
        "eager_ms": t["eager"]["median_ms"],
        "compiled_ms": t["compiled"]["median_ms"],
        "speedup": paired_ratio(t, "eager", "compiled"),
        "max_abs_diff": float((ref.float() - out.float()).abs().max()),
    }


def _write_frames(folder, n: int, size: int) -> None:
    """``n`` PNG frames of ``size`` px: synthetic endoscopy frames when :mod:`mcdrl.synthetic` is there, else noise."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    try:
        from mcdrl.synthetic import SITES, sample_case

        frames = [sample_case(SITES["A"], seed, size).image for seed in range(n)]
    except ImportError:
        frames = list(np.random.default_rng(0).integers(0, 255, (n, size, size, 3), dtype=np.uint8))
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"frame{i:03d}.png")


def folder_throughput(model_name: str, n_images: int = 16, size: int | None = None, batch: int = 8, rounds: int = 2, device: str = "cpu") -> dict:
    """Folder inference throughput with :class:`mcdrl.io.FolderInferenceRunner` (the bundle's inference ``run``),
    end to end (discovery, PNG decoding, batching, masks, summary), next to bare ``net(x)`` calls on the same
    frames and batch size. Null, with a note saying why, when ``mcdrl.io`` is not available."""
    import tempfile
    from pathlib import Path

    try:
        from mcdrl.io import FolderInferenceRunner
    except ImportError as e:
        return {"images_per_s": None, "note": f"NOT MEASURED: mcdrl.io.FolderInferenceRunner is not available ({e})"}
    net = build_network(model_name).to(device)
    side = int(size or net.image_size)
    with tempfile.TemporaryDirectory(prefix="mcdrl-bench-") as tmp:
        folder = Path(tmp) / "in"
        _write_frames(folder, n_images, side)
        x = torch.rand(batch, 3, side, side, device=device)
        per_batch = -(-n_images // batch)

        def folder_run(i=[0]):  # noqa: B006 - a fresh output folder per run
            i[0] += 1
            runner = FolderInferenceRunner(net, device, Path(tmp) / f"out{i[0]}", strict=False, batch_size=batch, progress=False)
            results = runner.run(folder)
            bad = [r for r in results if r.status != "ok"]
            if bad:
                raise RuntimeError(f"folder inference failed on {len(bad)} of {len(results)} frames: {bad[0]}")

        def bare_run():
            with torch.inference_mode():
                for _ in range(per_batch):
                    net(x)

        try:
            t = interleaved({"folder": folder_run, "bare": bare_run}, repeats=rounds, warmup=1, device=device)
        except Exception as e:  # noqa: BLE001 - another engineer's API may change; say so instead of failing the run
            return {"images_per_s": None, "note": f"NOT MEASURED: FolderInferenceRunner failed: {type(e).__name__}: {e}"}
    folder_ips = n_images / (t["folder"]["median_ms"] / 1e3)
    bare_ips = per_batch * batch / (t["bare"]["median_ms"] / 1e3)
    return {
        "images_per_s": folder_ips,
        "bare_forward_images_per_s": bare_ips,
        "folder_over_bare": paired_ratio(t, "bare", "folder") * n_images / (per_batch * batch),
        "model": model_name,
        "n_images": n_images,
        "image_size": side,
        "batch": batch,
        "note": f"mcdrl.io.FolderInferenceRunner on {n_images} synthetic {side}x{side} PNG frames, batch {batch}, median of {rounds} runs",
    }


def median(values: list[float]) -> float:
    return statistics.median(values)
