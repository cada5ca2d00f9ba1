"""Control-loop health: lateness against the loop's own schedule, achieved rate, missed
deadlines (issue 21), without ROS."""

from __future__ import annotations

import math

import pytest

from hw_drivers.tick_timing import TickTiming

PERIOD = 0.004  # 250 Hz


def test_on_time_ticks_report_the_rate_and_no_lateness():
    timing = TickTiming(PERIOD, window=100)
    for k in range(100):
        timing.record(k * PERIOD, k * PERIOD + 0.0001)
    summary = timing.summary()
    assert summary.rate == pytest.approx(250.0)
    assert summary.lateness_p50 == pytest.approx(0.0001)
    assert summary.lateness_max == pytest.approx(0.0001)
    assert summary.missed == 0 and summary.ticks == summary.window_ticks == 100


def test_late_ticks_show_in_p99_and_skipped_deadlines_count_as_missed():
    timing = TickTiming(PERIOD, window=1000)
    expected = 0.0
    for k in range(500):
        late = 0.003 if k % 100 == 50 else 0.0002  # 1 % of ticks 3 ms late
        timing.record(expected, expected + late)
        # A stall: the timer skips the three deadlines it missed and keeps its phase.
        expected += PERIOD * (4 if k == 300 else 1)
    summary = timing.summary()
    assert summary.lateness_p50 == pytest.approx(0.0002)
    assert summary.lateness_max == pytest.approx(0.003)
    assert 0.0002 < summary.lateness_p99 <= 0.003
    assert summary.missed == 3
    # 500 ticks over 503 periods of schedule.
    assert summary.rate == pytest.approx(499 / (502 * PERIOD), rel=1e-3)


def test_window_keeps_only_the_latest_ticks_but_counts_all():
    timing = TickTiming(PERIOD, window=10)
    for k in range(50):
        timing.record(k * PERIOD, k * PERIOD + (0.002 if k < 40 else 0.0))
    summary = timing.summary()
    assert summary.window_ticks == 10 and summary.ticks == 50
    assert summary.lateness_max == 0.0  # the late ticks left the window
    values = summary.diagnostic_values()
    assert values["tick_rate"] == "250.0" and values["missed_ticks"] == "0"
    assert float(values["tick_late_p99_ms"]) == 0.0


def test_before_two_ticks_nothing_is_claimed():
    timing = TickTiming(PERIOD)
    timing.record(0.0, 0.0)
    summary = timing.summary()
    assert math.isnan(summary.rate) and math.isnan(summary.lateness_p50)


@pytest.mark.parametrize("period,window", [(0.0, 10), (-1.0, 10), (0.004, 1)])
def test_bad_settings_are_refused(period, window):
    with pytest.raises(ValueError):
        TickTiming(period, window)

