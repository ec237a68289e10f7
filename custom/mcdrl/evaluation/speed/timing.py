"""Timing helpers: interleaved medians, per-module timing inside a real forward, and machine facts.

Several engineers share the benchmark machine, so the candidates of one comparison (bare backbone, MCDRL,
Baseline) are timed *interleaved*: every round runs each of them once, in a rotating order, and the median of the
rounds is reported. A burst of load from another process then hits all candidates alike and the ratios stay
meaningful even when the absolute times drift.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["ModuleTimer", "interleaved", "load_average", "machine_info", "paired_ratio", "sync"]


def sync(device: torch.device | str) -> None:
    """Wait for queued GPU work (no-op on CPU), so wall-clock timings are honest."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1, device: str = "cpu") -> dict[str, dict]:
    """Time each callable ``repeats`` times, interleaved round by round in a rotating order.

    Returns:
        ``{name: {"median_ms", "min_ms", "max_ms", "repeats", "times_ms"}}``; ``times_ms`` is in round order, so
        ``times_ms[i]`` of two names were measured side by side (see :func:`paired_ratio`).
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    sync(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            sync(device)
            start = time.perf_counter()
            fns[name]()
            sync(device)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {n: {"median_ms": statistics.median(t), "min_ms": min(t), "max_ms": max(t), "repeats": len(t), "times_ms": t} for n, t in times.items()}


def paired_ratio(t: dict[str, dict], num: str, den: str) -> float:
    """Median over rounds of ``num`` time / ``den`` time measured in the same round.

    Under a load that drifts during the run (other jobs starting or stopping), the ratio of two medians mixes
    rounds run under different conditions; the per-round ratio compares neighbours, so drift cancels.
    """
    return statistics.median(a / b for a, b in zip(t[num]["times_ms"], t[den]["times_ms"]))


class ModuleTimer:
    """Wall-clock time spent inside chosen submodules during real forwards (forward pre/post hooks).

    Example:
        >>> timer = ModuleTimer({"intervention": net.intervention, "head": net.head})
        >>> with timer.active():
        ...     net(x)
        >>> timer.total_ms["intervention"]
    """

    def __init__(self, modules: dict[str, nn.Module], device: str = "cpu"):
        self.modules = modules
        self.device = device
        self.total_ms = {n: 0.0 for n in modules}
        self.calls = {n: 0 for n in modules}
        self._start: dict[str, float] = {}

    def reset(self) -> None:
        self.total_ms = {n: 0.0 for n in self.modules}
        self.calls = {n: 0 for n in self.modules}

    @contextmanager
    def active(self):
        handles = []
        for name, module in self.modules.items():
            handles.append(module.register_forward_pre_hook(self._pre(name)))
            handles.append(module.register_forward_hook(self._post(name)))
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def _pre(self, name: str):
        def hook(module, args):
            sync(self.device)
            self._start[name] = time.perf_counter()

        return hook

    def _post(self, name: str):
        def hook(module, args, output):
            sync(self.device)
            self.total_ms[name] += (time.perf_counter() - self._start[name]) * 1e3
            self.calls[name] += 1

        return hook


def load_average() -> list[float]:
    """``os.getloadavg()`` (1, 5 and 15 minutes), rounded."""
    return [round(v, 2) for v in os.getloadavg()]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: str = "cpu") -> dict:
    """Cores, CPU model, torch version and threads, and the GPU when ``device`` is cuda."""
    info = {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
    }
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info
