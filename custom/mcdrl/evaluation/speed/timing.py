"""Timing utilities: interleaved rounds, per-round ratios, time inside the network's parts, peak RSS, machine facts.

Several engineers share the benchmark machine, so the candidates of one comparison are timed *interleaved*: every
round runs each once, in a rotating order, and a ratio is the median of the per-round ratios. A burst of load then
hits neighbours alike and the ratios stay meaningful while absolute times drift. Every function takes a ``clock``
(default ``time.perf_counter``), so tests check what is computed with a fake clock, never how fast a machine is.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager

import torch

__all__ = ["PartTimer", "interleaved", "machine_info", "paired_ratio", "peak_rss_mb"]


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, warmup: int = 1, clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Run each callable once per round, in an order rotated by one each round, after ``warmup`` untimed rounds.

    Returns:
        ``{name: [ms of round 0, ms of round 1, ...]}``: entry ``i`` of two names ran in the same round.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = clock()
            fns[name]()
            times[name].append((clock() - start) * 1e3)
    return times


def paired_ratio(times: dict[str, list[float]], num: str, den: str) -> float:
    """Median over rounds of ``num``'s time / ``den``'s time in the same round (load drift cancels)."""
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


class PartTimer:
    """Wall-clock ms spent in named methods during real forwards, by wrapping them on the instances while active.

    Args:
        parts: ``{part: [(object, method name), ...]}``; a part's time counts only its outermost call, so a method
            of a part that calls another of the same part is not counted twice.
        clock: a callable returning seconds.

    Example:
        >>> timer = PartTimer({"head": [(net.head, "forward")], "presence": [(net, "lesion_score"), (net, "gate")]})
        >>> with timer.active():
        ...     net(x)
        >>> timer.ms["head"]
    """

    def __init__(self, parts: dict[str, list[tuple[object, str]]], clock: Callable[[], float] = time.perf_counter):
        self.parts, self.clock = parts, clock
        self.ms = {p: 0.0 for p in parts}
        self._depth = {p: 0 for p in parts}

    def reset(self) -> None:
        self.ms = {p: 0.0 for p in self.parts}

    def _wrap(self, part: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            self._depth[part] += 1
            start = self.clock()
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth[part] -= 1
                if self._depth[part] == 0:
                    self.ms[part] += (self.clock() - start) * 1e3

        return timed

    @contextmanager
    def active(self):
        patched = []
        try:
            for part, methods in self.parts.items():
                for obj, name in methods:
                    had = name in vars(obj)
                    patched.append((obj, name, had, vars(obj).get(name)))
                    setattr(obj, name, self._wrap(part, getattr(obj, name)))
            yield self
        finally:
            for obj, name, had, old in reversed(patched):
                if had:
                    setattr(obj, name, old)
                else:
                    delattr(obj, name)


#: run in a fresh process by :func:`peak_rss_mb`: build the network, run eval forwards, print VmHWM (MiB)
_RSS_CHILD = """
import sys, torch
from mcdrl.evaluation.speed.runner import random_network
net = random_network(sys.argv[1])
with torch.inference_mode():
    for _ in range(2):
        net(torch.rand(int(sys.argv[2]), 3, net.image_size, net.image_size))
print([int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')][0] / 1024.0)
"""


def peak_rss_mb(model_name: str, batch: int = 1, timeout: int = 900) -> float:
    """Peak resident memory (MiB, the kernel's ``VmHWM``) of a fresh process that builds the network (random
    weights) and runs two eval forwards: nothing this process allocated counts. Linux only."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", _RSS_CHILD, model_name, str(batch)], capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"peak RSS probe failed (exit {proc.returncode}): {proc.stderr[-1500:]}")
    return float(proc.stdout.strip().splitlines()[-1])


def machine_info() -> dict:
    """CPU model, cores, load average, torch version and threads, OpenMP settings."""
    cpu = platform.processor() or "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "python": platform.python_version(),
    }
