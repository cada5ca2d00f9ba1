"""ControlThread: an absolute deadline grid, missed deadlines skipped (no catch-up burst),
stop from anywhere (the tick included), tick errors counted and reported."""

from __future__ import annotations

import itertools
import math
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hw_drivers.control_thread import ControlThread

PERIOD = 0.004


class FakeTime:
    """A clock that only moves when the loop sleeps or a tick spends time."""

    def __init__(self, start: float = 100.0, overshoot: float = 0.0) -> None:
        self.now = start
        self.overshoot = overshoot  # every sleep wakes this much late, as real sleeps do
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds + self.overshoot


def run_ticks(n: int, fake: FakeTime, work=lambda i: 0.0, **kwargs) -> tuple[ControlThread, list]:
    """Run the loop in this thread (``run()``) until ``n`` ticks; returns (loop, ticks)."""
    ticks: list[tuple[float, float]] = []

    def tick(deadline: float, started: float) -> None:
        ticks.append((deadline, started))
        fake.now += work(len(ticks) - 1)
        if len(ticks) == n:
            loop.stop()

    loop = ControlThread(tick, PERIOD, clock=fake.clock, sleep=fake.sleep, **kwargs)
    loop.run()
    return loop, ticks


def grid_index(deadline: float, start: float) -> float:
    return (deadline - start) / PERIOD


def test_deadlines_stay_on_the_grid_despite_sleep_overshoot_and_tick_time():
    fake = FakeTime(start=100.0, overshoot=0.0003)
    loop, ticks = run_ticks(2000, fake, work=lambda i: 0.0015)
    for k, (deadline, started) in enumerate(ticks):
        # Deadline k is computed from the start, never from the previous wake-up: no drift.
        assert deadline == pytest.approx(100.0 + k * PERIOD, abs=1e-9)
        assert 0.0 <= started - deadline < PERIOD
    # Accumulated sleeps (sleep(period) after each tick) would be 2000 * 1.8 ms behind by now.
    assert ticks[-1][1] - ticks[-1][0] == pytest.approx(0.0003, abs=1e-9)
    assert loop.missed == 0 and loop.ticks == 2000 and loop.errors == 0


def test_missed_deadlines_are_skipped_and_counted_not_run_as_a_burst():
    fake = FakeTime(start=0.0)
    # Tick 3 (at 3 periods) takes 10.75 periods: deadlines 4..13 are due when it returns.
    loop, ticks = run_ticks(8, fake, work=lambda i: 10.5 * PERIOD + 0.001 if i == 3 else 0.0)
    indices = [round(grid_index(d, 0.0)) for d, _ in ticks]
    assert indices == [0, 1, 2, 3, 4, 14, 15, 16]
    # The late tick runs once, at once, as deadline 4's (9.75 periods late); the next one
    # waits for the first deadline still ahead (14) instead of catching up 5..13.
    assert ticks[4][1] - ticks[4][0] == pytest.approx(9.75 * PERIOD)
    assert ticks[5][1] == pytest.approx(ticks[5][0])
    assert loop.missed == 9  # deadlines 5..13


@settings(max_examples=200, deadline=None)
@given(
    work=st.lists(st.floats(0.0, 5.0), min_size=1, max_size=60),
    overshoot=st.floats(0.0, 2.0),
)
def test_property_one_tick_per_due_deadline_never_a_burst(work, overshoot):
    """Whatever the ticks cost and however late sleeps wake (in periods), every tick is for a
    grid deadline, deadlines only increase, no two ticks are for deadlines that had both
    passed when the first of them started (no catch-up burst), and ticks + missed account
    for every deadline up to the last tick's start."""
    fake = FakeTime(start=7.0, overshoot=overshoot * PERIOD)
    loop, ticks = run_ticks(len(work), fake, work=lambda i: work[i] * PERIOD)
    indices = [grid_index(d, 7.0) for d, _ in ticks]
    for k in indices:
        assert k == pytest.approx(round(k), abs=1e-6)
    ks = [round(k) for k in indices]
    assert all(b > a for a, b in itertools.pairwise(ks))
    for deadline, started in ticks:
        assert started >= deadline - 1e-9
    for (_, started), (next_deadline, _) in itertools.pairwise(ticks):
        assert next_deadline > started - 1e-9
    # Every deadline up to the last tick's start was either ticked or missed.
    due = sum(1 for d in range(len(work) * 8 + 8) if 7.0 + d * PERIOD <= ticks[-1][1])
    assert loop.ticks + loop.missed == due
    assert loop.ticks == len(work)


def test_stop_from_inside_the_tick_on_the_real_thread_does_not_deadlock():
    ticks = []
    ended = threading.Event()

    def tick(deadline: float, started: float) -> None:
        ticks.append(deadline)
        if len(ticks) == 3:
            assert loop.stop() is False  # only asked: this thread cannot join itself
            ended.set()

    loop = ControlThread(tick, 0.001, name="test-control")
    loop.start()
    assert ended.wait(30.0)
    assert loop.stop(timeout=30.0)  # from outside: joins
    assert len(ticks) == 3 and not loop.running and not loop.died


def test_stop_is_idempotent_before_during_and_after_running():
    assert ControlThread(lambda d, s: None, PERIOD).stop() is True  # never started
    loop = ControlThread(lambda d, s: None, PERIOD)
    loop.start()
    assert loop.stop(timeout=30.0)
    assert loop.stop(timeout=30.0)
    assert not loop.running and not loop.died
    with pytest.raises(RuntimeError, match="already started"):
        loop.start()


def test_stop_from_another_thread_while_a_tick_runs_waits_for_it():
    inside, release = threading.Event(), threading.Event()
    done = []

    def tick(deadline: float, started: float) -> None:
        inside.set()
        release.wait(30.0)
        done.append(deadline)

    loop = ControlThread(tick, PERIOD)
    loop.start()
    assert inside.wait(30.0)
    assert loop.stop(timeout=0.05) is False  # the tick is still in progress
    release.set()
    assert loop.stop(timeout=30.0) is True
    assert len(done) == 1  # no tick after the stop


def test_tick_errors_are_counted_kept_and_passed_on_the_loop_keeps_running():
    fake = FakeTime()
    seen: list[BaseException] = []

    def on_error(exc: BaseException) -> None:
        seen.append(exc)

    calls = []

    def tick(deadline: float, started: float) -> None:
        calls.append(deadline)
        if len(calls) == 6:
            loop.stop()
        if len(calls) in (2, 4):
            raise ValueError(f"bad tick {len(calls)}")

    loop = ControlThread(tick, PERIOD, clock=fake.clock, sleep=fake.sleep, on_error=on_error)
    loop.run()
    assert len(calls) == 6 and loop.ticks == 6
    assert loop.errors == 2 and loop.last_error == "ValueError: bad tick 4"
    assert [str(e) for e in seen] == ["bad tick 2", "bad tick 4"]
    assert not loop.died


def test_on_error_returning_false_ends_the_loop_and_reports_it_died():
    fake = FakeTime()

    def tick(deadline: float, started: float) -> None:
        raise RuntimeError("link gone")

    loop = ControlThread(
        tick, PERIOD, clock=fake.clock, sleep=fake.sleep, on_error=lambda exc: False
    )
    loop.run()
    assert loop.ticks == 1 and loop.errors == 1
    assert loop.died and loop.fatal_error == "RuntimeError: link gone"


def test_on_error_that_raises_kills_the_loop_on_the_real_thread():
    def tick(deadline: float, started: float) -> None:
        raise RuntimeError("tick")

    def on_error(exc: BaseException) -> bool:
        raise KeyError("handler bug")

    loop = ControlThread(tick, 0.001, on_error=on_error)
    loop.start()
    loop._thread.join(30.0)  # ends by itself
    assert loop.died and not loop.running
    assert "handler bug" in loop.fatal_error and loop.last_error == "RuntimeError: tick"


@pytest.mark.parametrize("period", [0.0, -1.0, math.nan, math.inf])
def test_period_must_be_positive_and_finite(period):
    with pytest.raises(ValueError, match="period"):
        ControlThread(lambda d, s: None, period)


def test_a_clock_that_steps_back_restarts_the_grid_instead_of_waiting_out_the_jump():
    fake = FakeTime(start=1000.0)

    def work(i: int) -> float:
        # A sim clock reset while tick 4 ran: it ends at 4.999 s.
        return 4.999 - fake.now if i == 4 else 0.0

    loop, ticks = run_ticks(8, fake, work=work)
    deadlines = [d for d, _ in ticks]
    assert deadlines[:5] == pytest.approx([1000.0 + k * PERIOD for k in range(5)])
    # At once from where the clock now is, then on the new grid.
    assert deadlines[5:] == pytest.approx([4.999, 4.999 + PERIOD, 4.999 + 2 * PERIOD])
    assert loop.restarts == 1 and loop.missed == 0
