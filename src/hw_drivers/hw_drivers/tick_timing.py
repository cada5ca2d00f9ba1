"""How well a periodic control loop keeps time: tick lateness and achieved rate.

``TickTiming`` is pure (times passed in): each tick reports the deadline it ran for and when
it actually started, both on one clock in seconds. The driver's ``ControlThread`` keeps its
phase (a late tick does not shift the next deadline) and skips deadlines it has missed
entirely, as a ROS timer does, so the schedule comes from the loop itself and skipped
deadlines show here as missed ticks. Recording (the control thread) and summarising (the
diagnostics callback on the executor thread) may run on different threads.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TickSummary:
    """Timer health over the recent window (lateness in seconds, NaN before two ticks)."""

    rate: float  # achieved ticks per second over the window
    lateness_p50: float
    lateness_p99: float
    lateness_max: float
    window_ticks: int  # ticks in the window the figures above cover
    ticks: int  # since the recorder was created or reset
    missed: int  # scheduled deadlines the timer skipped since then

    def diagnostic_values(self) -> dict[str, str]:
        return {
            "tick_rate": f"{self.rate:.1f}",
            "tick_late_p50_ms": f"{self.lateness_p50 * 1e3:.3f}",
            "tick_late_p99_ms": f"{self.lateness_p99 * 1e3:.3f}",
            "tick_late_max_ms": f"{self.lateness_max * 1e3:.3f}",
            "tick_window": str(self.window_ticks),
            "missed_ticks": str(self.missed),
        }


class TickTiming:
    """Ring buffer of the last ``window`` ticks' lateness and start times."""

    def __init__(self, period: float, window: int = 2500) -> None:
        if not period > 0.0:
            raise ValueError(f"period must be > 0, got {period}")
        if window < 2:
            raise ValueError(f"window must hold at least 2 ticks, got {window}")
        self.period = float(period)
        self._lateness = np.zeros(window)
        self._started = np.zeros(window)
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget every tick (loop restarted)."""
        with self._lock:
            self._count = 0
            self.ticks = 0
            self.missed = 0
            self._last_expected: float | None = None

    def record(self, expected: float, started: float) -> None:
        """One tick scheduled at ``expected`` that started at ``started`` [s]."""
        with self._lock:
            if self._last_expected is not None:
                skipped = round((expected - self._last_expected) / self.period) - 1
                self.missed += max(skipped, 0)
            self._last_expected = expected
            slot = self._count % self._lateness.size
            self._lateness[slot] = started - expected
            self._started[slot] = started
            self._count += 1
            self.ticks += 1

    def summary(self) -> TickSummary:
        with self._lock:  # a consistent window: copies, taken while no tick is recorded
            n = min(self._count, self._lateness.size)
            lateness = self._lateness[:n].copy()
            started = self._started[:n].copy()
            ticks, missed = self.ticks, self.missed
        if n < 2:
            nan = math.nan
            return TickSummary(nan, nan, nan, nan, n, ticks, missed)
        span = float(started.max() - started.min())
        p50, p99 = np.percentile(lateness, [50, 99])
        return TickSummary(
            rate=(n - 1) / span if span > 0 else math.nan,
            lateness_p50=float(p50),
            lateness_p99=float(p99),
            lateness_max=float(lateness.max()),
            window_ticks=n,
            ticks=ticks,
            missed=missed,
        )

