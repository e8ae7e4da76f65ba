"""Timing shared by the benchmarks: interleaved rounds, medians, ratios against a baseline in the same round."""

from __future__ import annotations

import statistics
import time
import timeit
from typing import Callable, Dict

from torch.utils.benchmark import Timer

CLOCKS: Dict[str, Callable[[], float]] = {"wall": timeit.default_timer, "cpu": time.thread_time}
"""``wall`` counts waiting too (a GPU run); ``cpu`` counts only this thread's CPU time, which other work on a shared
machine disturbs far less (a CPU run)."""


def interleaved_medians(fns: Dict[str, Callable[[], object]], baseline: str, rounds: int = 15,
                        calls: int = 500, clock: str = "wall") -> Dict[str, tuple]:
    """``{name: (median seconds per call, median ratio to baseline)}``; rounds interleave, so drift hits all alike."""
    timer = CLOCKS[clock]
    for fn in fns.values():
        fn()  # warm up (and compile once)
    timings = [{name: Timer("fn()", globals={"fn": fn}, timer=timer).timeit(calls).mean for name, fn in fns.items()}
               for _ in range(rounds)]
    return {name: (statistics.median(r[name] for r in timings),
                   statistics.median(r[name] / r[baseline] for r in timings)) for name in fns}
