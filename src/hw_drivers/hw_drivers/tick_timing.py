"""How well a periodic control timer keeps time: tick lateness and achieved rate.

``TickTiming`` is pure (times passed in): each tick reports when it was scheduled and when its
callback actually started, both on one clock in seconds. ROS timers keep their phase (a late
tick does not shift the next deadline) and skip deadlines they have missed entirely, so the
schedule comes from the timer itself, never from a local loop that can catch up; skipped
deadlines are counted as missed ticks. ``timer_callback_with_info`` hands rclpy's per-call
``TimerInfo`` (the scheduled and actual call time) to such a recorder.

This module deliberately does not use ``from __future__ import annotations``: rclpy decides
whether to pass ``TimerInfo`` by comparing the callback's parameter annotation with the class
itself, and a postponed (string) annotation never matches.
"""

import math
from collections.abc import Callable
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
        self.reset()

    def reset(self) -> None:
        """Forget every tick (timer restarted)."""
        self._count = 0
        self.ticks = 0
        self.missed = 0
        self._last_expected: float | None = None

    def record(self, expected: float, started: float) -> None:
        """One tick scheduled at ``expected`` whose callback started at ``started`` [s]."""
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
        n = min(self._count, self._lateness.size)
        if n < 2:
            nan = math.nan
            return TickSummary(nan, nan, nan, nan, n, self.ticks, self.missed)
        lateness = self._lateness[:n]
        started = self._started[:n]
        span = float(started.max() - started.min())
        p50, p99 = np.percentile(lateness, [50, 99])
        return TickSummary(
            rate=(n - 1) / span if span > 0 else math.nan,
            lateness_p50=float(p50),
            lateness_p99=float(p99),
            lateness_max=float(lateness.max()),
            window_ticks=n,
            ticks=self.ticks,
            missed=self.missed,
        )


def timer_callback_with_info(
    on_tick: Callable[[int, int], None],
) -> Callable[..., None]:
    """An rclpy timer callback that calls ``on_tick(expected_ns, actual_ns)`` on every tick.

    ``expected_ns``: when the timer was due; ``actual_ns``: when rcl took it; both on the
    timer's clock (the node clock: ROS time, sim time under ``use_sim_time``).
    """
    from rclpy.timer import TimerInfo

    def callback(info: TimerInfo) -> None:
        on_tick(info.expected_call_time.nanoseconds, info.actual_call_time.nanoseconds)

    return callback
