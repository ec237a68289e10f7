"""Probes that need a fresh process: peak resident memory of inference, and timings under thread settings.

``python -m mcdrl.evaluation.speed.probe --model ViT-B-16 --batch 1 [--time 5]`` prints one JSON line. The parent benchmark
runs it with :func:`measure_peak_rss` / :func:`time_in_fresh_process`, so that nothing the parent has allocated
counts, and so that OpenMP settings (``OMP_NUM_THREADS``, ``OMP_WAIT_POLICY``), which are read once when the
OpenMP runtime loads, can differ between runs.

Reported (MiB): ``rss_after_import`` (python + torch + open_clip), ``rss_after_build`` (the network built; the
CLIP text tower is built by open_clip and dropped), ``peak_rss_build_mb`` (high-water mark up to the end of the
build), ``peak_rss_inference_mb`` (high-water mark of the inference phase alone: the kernel's counter is reset
with ``/proc/self/clear_refs`` after the build, where Linux allows it) and ``peak_rss_mb``, the larger of the two.

The high-water marks are read from ``/proc/self/status`` (``VmHWM``), not from ``getrusage``: Linux carries the
parent's RSS at fork into the child's ``ru_maxrss`` across exec, so a child of a large benchmark process would
report the parent's memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

__all__ = ["measure_peak_rss", "time_in_fresh_process"]


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _child(model: str, batch: int, size: int, threads: int | None, repeats: int, time_repeats: int = 0) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if threads:
        torch.set_num_threads(threads)
    from .models import build_network

    out = {"model": model, "batch": batch, "input_size": size, "threads": torch.get_num_threads()}
    out["rss_after_import_mb"] = _status_mb("VmRSS")
    net = build_network(model)
    x = torch.rand(batch, 3, size, size)
    out["rss_after_build_mb"] = _status_mb("VmRSS")
    out["peak_rss_build_mb"] = _status_mb("VmHWM")
    reset = _reset_peak()
    with torch.inference_mode():
        for _ in range(repeats):
            logits = net(x)
    out["output_shape"] = list(logits.shape)
    out["peak_rss_inference_mb"] = _status_mb("VmHWM") if reset else None
    peaks = [v for v in (out["peak_rss_build_mb"], out["peak_rss_inference_mb"]) if v is not None]
    if not reset:  # no reset: VmHWM is the whole process's peak
        peaks.append(_status_mb("VmHWM"))
    out["peak_rss_mb"] = max(peaks) if peaks else round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)
    if time_repeats:
        times = []
        with torch.inference_mode():
            for _ in range(time_repeats):
                start = time.perf_counter()
                net(x)
                times.append((time.perf_counter() - start) * 1e3)
        out["mcdrl_median_ms"] = statistics.median(times)
        out["OMP_WAIT_POLICY"] = os.environ.get("OMP_WAIT_POLICY")
    return out


def _run_probe(args: list[str], env: dict, timeout: int) -> dict:
    cmd = [sys.executable, "-m", "mcdrl.evaluation.speed.probe", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"probe {' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_peak_rss(model: str, batch: int = 1, size: int = 224, threads: int | None = None, repeats: int = 2, timeout: int = 600) -> dict:
    """Peak RSS of building the network and running ``repeats`` eval forwards, in a fresh process (JSON dict above).

    Raises:
        RuntimeError: the child failed; its stderr is included.
    """
    args = ["--model", model, "--batch", str(batch), "--size", str(size), "--repeats", str(repeats)]
    if threads:
        args += ["--threads", str(threads)]
    return _run_probe(args, {**os.environ, "HF_HUB_OFFLINE": "1"}, timeout)


def time_in_fresh_process(model: str, env_changes: dict[str, str | None], batch: int = 1, size: int = 224, time_repeats: int = 5, timeout: int = 600) -> dict:
    """Median MCDRL eval forward in a fresh process whose environment is changed by ``env_changes`` (None removes
    a variable); for thread settings that only take effect at start-up. Sequential runs: noisier than in-process
    interleaving on a shared machine."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    args = ["--model", model, "--batch", str(batch), "--size", str(size), "--repeats", "1", "--time", str(time_repeats)]
    return _run_probe(args, env, timeout)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mcdrl.evaluation.speed.probe", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ViT-B-16")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=2, help="eval forwards inside the peak-RSS window")
    p.add_argument("--time", type=int, default=0, help="then time this many eval forwards (median reported)")
    a = p.parse_args(argv)
    print(json.dumps(_child(a.model, a.batch, a.size, a.threads, a.repeats, a.time)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
