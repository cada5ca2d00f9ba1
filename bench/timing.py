"""Timing shared by the benchmark scripts (imported as ``timing``: bench/ is on sys.path[0])."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def best_seconds(
    fns: dict[str, Callable[[], object]], repeats: int, *, sync: bool = False
) -> dict[str, float]:
    """Fastest of ``repeats`` round-robin runs of each function (after one warm-up each).

    Round-robin and best-of-N because the machine may be shared: a burst of load then slows
    every candidate alike instead of one of them, and the minimum is the undisturbed cost.
    ``sync`` waits for queued CUDA work before each clock read.
    """

    def timed(fn: Callable[[], object]) -> float:
        start = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for fn in fns.values():
        timed(fn)  # warm-up: allocations, static caches, lazy inits, graph capture
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            best[name] = min(best[name], timed(fn))
    return best
