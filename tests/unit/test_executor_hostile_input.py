"""The six unsafe cases of issue 14 at the executor level (the ROS-level versions run a driver).

Each drives the pure executor tick by tick and checks every command with the independent
invariant checker, plus what the case is about: no lurch toward a future chunk, no NaN, no
crash, no dead reckoning under a flood, no jump at reset, reports that describe the present.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from hw_drivers.chunk import Chunk
from hw_drivers.executor import REJECTION_WINDOW, ChunkExecutor, ExecutorConfig
from hw_drivers.safety import JointLimits, SafetyConfig, step_dt_bounds
from tests.command_invariants import CommandChecker

NAMES = ("a", "b", "c")
LOWER, UPPER = np.full(3, -1.6), np.full(3, 1.6)
VMAX, AMAX = np.full(3, 3.0), np.full(3, 30.0)
MAX_STEP = 0.03
RATE = 250.0
TICK = 1.0 / RATE
STEP = 1.0 / 30.0
T0 = 1.7e9


def _executor(ramp_in_time=0.3, **config) -> ChunkExecutor:
    low, high = step_dt_bounds(RATE, 30.0)
    safety = SafetyConfig(
        max_step_per_tick=MAX_STEP, ramp_in_time=ramp_in_time, watchdog_timeout=0.5,
        min_step_dt=low, max_step_dt=high,
    )
    return ChunkExecutor(NAMES, JointLimits(LOWER, UPPER, VMAX, AMAX), safety,
                         ExecutorConfig(**config))


def _checker() -> CommandChecker:
    return CommandChecker(LOWER, UPPER, VMAX, AMAX, MAX_STEP)


def _wave(t: np.ndarray, start: np.ndarray) -> np.ndarray:
    """One smooth trajectory: 0.4 rad swings at 1.5 rad/s (peak speed 0.6 rad/s)."""
    t = np.asarray(t, dtype=float)[..., None]
    return start + 0.4 * np.sin(1.5 * (t - T0) + np.array([0.0, 1.0, 2.0])) - 0.4 * np.sin(
        np.array([0.0, 1.0, 2.0])
    )


def _chunk_of(stamp: float, start: np.ndarray, step_dt=STEP, offset=STEP, horizon=30) -> Chunk:
    times = stamp + offset + STEP * np.arange(horizon)  # the values stay sane whatever step_dt
    return Chunk(stamp, offset, step_dt, NAMES, _wave(times, start))


class Run:
    def __init__(self, executor: ChunkExecutor, start: np.ndarray) -> None:
        self.executor, self.now, self.check = executor, T0, _checker()
        executor.start(start)
        self.commands: list[tuple[float, np.ndarray]] = []

    def ticks(self, seconds: float, between=None) -> None:
        end = self.now + seconds
        while self.now < end - 1e-12:
            self.now += TICK
            if between is not None:
                between(self.now)
            out = self.executor.tick(self.now, self.executor.last_command)
            assert not self.check.check(self.now, out.positions)
            self.commands.append((self.now, out.positions))


START = np.array([0.1, -0.2, 0.3])


def test_case1_chunk_stamped_10s_ahead_is_refused_and_nothing_moves():
    run = Run(_executor(), START)
    run.ticks(0.1)
    result = run.executor.submit(_chunk_of(run.now + 10.0, START + 0.1), run.now, START)
    assert not result.accepted and result.reason.startswith("future:"), result.reason
    run.ticks(0.5)
    assert np.ptp(np.array([c for _, c in run.commands]), axis=0).max() == 0.0


def test_case1_chunk_starting_ahead_is_joined_without_extrapolation():
    """First action 0.2 s ahead (allowed): the command glides into it and never passes the
    range spanned by where it was and the chunk's knots (a line drawn back would)."""
    run = Run(_executor(ramp_in_time=0.0), START)
    run.ticks(0.05)
    # Steep first segment: extrapolating 0.2 s back from it would land 0.6 rad below.
    positions = START + np.linspace(0.0, 0.3, 30)[:, None] * np.array([1.0, 0.0, 0.0])
    positions[0] = START
    positions[1:, 0] += 0.08  # 2.7 rad/s, inside the limit
    chunk = Chunk(run.now, 0.2, STEP, NAMES, positions)
    assert run.executor.submit(chunk, run.now, START).accepted
    run.ticks(0.3)
    joint0 = np.array([c[0] for _, c in run.commands])
    assert joint0.min() >= START[0] - 1e-9
    assert joint0.max() <= positions[:, 0].max() + 1e-9


@pytest.mark.parametrize("step_dt", [1e308, 1e-9, 0.0, -STEP, math.nan, math.inf, 5e-324])
def test_cases2_3_absurd_step_dt_is_refused_without_a_crash_or_nan(step_dt):
    run = Run(_executor(), START)
    assert run.executor.submit(_chunk_of(T0, START), T0, START).accepted
    run.ticks(0.2)
    result = run.executor.submit(_chunk_of(run.now, START, step_dt=step_dt), run.now, START)
    assert not result.accepted and result.reason.split(":")[0] in ("timing", "non_finite")
    run.ticks(0.2)
    assert run.executor.state in ("ramp_in", "tracking")


def test_case3_knots_float_resolution_cannot_separate_are_refused_not_raised():
    low = SafetyConfig(min_step_dt=0.0)
    executor = ChunkExecutor(NAMES, JointLimits(LOWER, UPPER, VMAX, AMAX), low,
                             ExecutorConfig())
    executor.start(START)
    chunk = Chunk(T0, 0.0, 1e-9, NAMES, np.tile(START, (30, 1)))
    result = executor.submit(chunk, T0, START)
    assert not result.accepted and result.reason.startswith("timing:"), result.reason


def test_case2_non_finite_plan_is_a_fault_that_holds_and_reset_clears(monkeypatch):
    from hw_drivers import executor as executor_module

    run = Run(_executor(), START)
    assert run.executor.submit(_chunk_of(T0, START), T0, START).accepted
    run.ticks(0.1)
    held = run.commands[-1][1]
    # A numerical bug anywhere in planning, simulated: the plan turns NaN.
    original = executor_module._Plan.sample
    monkeypatch.setattr(executor_module._Plan, "sample",
                        lambda self, t: (np.full(3, np.nan), np.zeros(3)))
    run.ticks(0.1)
    assert run.executor.state == "fault" and run.executor.fault.startswith("non_finite:")
    np.testing.assert_array_equal(run.commands[-1][1], held)
    monkeypatch.setattr(executor_module._Plan, "sample", original)
    refused = run.executor.submit(_chunk_of(run.now, START), run.now, held)
    assert not refused.accepted and refused.reason.startswith("fault:")
    run.ticks(0.1)
    np.testing.assert_array_equal(run.commands[-1][1], held)  # still held
    message = run.executor.reset(held)
    assert "fault" in message and not run.executor.fault
    assert run.executor.submit(_chunk_of(run.now, held), run.now, held).accepted
    run.ticks(0.4)
    assert run.executor.state == "tracking"
    assert np.abs(run.commands[-1][1] - held).max() > 0.01  # moving again, finite


@pytest.mark.parametrize("chunk_rate", [300.0, 1000.0])
def test_case4_flood_of_one_trajectory_is_followed_by_content(chunk_rate):
    run = Run(_executor(), START)
    period, next_at = 1.0 / chunk_rate, [T0]

    def publish(now: float) -> None:
        while next_at[0] <= now:
            stamp = next_at[0] - 0.03  # each chunk from a capture 30 ms before it is sent
            assert run.executor.submit(_chunk_of(stamp, START), now, None).accepted
            next_at[0] += period

    run.ticks(2.0, between=publish)
    errors = [np.abs(c - _wave(t, START)).max() for t, c in run.commands if t > T0 + 0.5]
    assert max(errors) < 0.005, max(errors)  # dead reckoning drifted 0.5 rad in 2 s
    run.ticks(1.0)  # the flood ends: hold, no snap (the checker sees every step)
    assert run.executor.state == "holding"


def test_case5_reset_right_after_estop_while_moving_never_jumps():
    run = Run(_executor(ramp_in_time=0.0), START)
    fast = Chunk(T0, 0.0, STEP, NAMES, START + np.linspace(0, 1.0, 30)[:, None] * [1, 0, 0])
    assert run.executor.submit(fast, T0, START).accepted
    run.ticks(0.4)
    run.executor.estop()
    run.ticks(0.01)
    # The arm lags the command; reset from where it actually is (0.12 rad behind).
    measured = run.commands[-1][1] - np.array([0.123, 0.0, 0.0])
    assert "cleared e-stop" in run.executor.reset(measured)
    run.ticks(0.5)  # the checker bounds every step: the command slews, it does not jump
    np.testing.assert_allclose(run.commands[-1][1], measured, atol=1e-9)
    assert run.check.worst_step <= MAX_STEP + 1e-9


def test_case6_reports_describe_the_present():
    run = Run(_executor(), START)
    bad = _chunk_of(T0 + 10.0, START)
    assert not run.executor.submit(bad, T0, START).accepted
    assert run.executor.stats.rejected_recently(T0) == 1
    assert run.executor.stats.rejected_recently(T0 + REJECTION_WINDOW + 1.0) == 0
    assert run.executor.stats.rejected_total == 1  # the cumulative count stays for the record
    run.executor.estop()
    ok, message = run.executor.hold(False)
    assert not ok and "e-stop" in message and "following" not in message
    run.executor.reset(START)
    ok, message = run.executor.hold(False)
    assert ok and "following" in message


def test_clock_stepping_back_holds_and_the_new_timeline_is_followed():
    """A sim-time reset: chunks stamped on the old timeline must not lock out the new one."""
    run = Run(_executor(), START)
    assert run.executor.submit(_chunk_of(T0, START), T0, START).accepted
    run.ticks(0.3)
    held = run.commands[-1][1]
    run.now = T0 - 100.0  # the clock jumps back 100 s
    run.ticks(0.1)
    np.testing.assert_array_equal(run.commands[-1][1], held)
    result = run.executor.submit(_chunk_of(run.now, held), run.now, held)
    assert result.accepted, result.reason
    run.ticks(0.4)
    assert run.executor.state in ("ramp_in", "tracking")


def test_estop_stays_latched_across_a_backend_reconnect():
    from hw_drivers.backends.sim import SimBackend
    from hw_drivers.control_loop import ControlLoop

    clock = [T0]
    sim = SimBackend(NAMES, START, LOWER, UPPER, clock=lambda: clock[0])
    loop = ControlLoop(sim, _executor(), reconnect_period=0.05)
    loop.start()
    loop.estop()
    sim.inject_faults(1)
    states = []
    for _ in range(50):
        clock[0] += TICK
        result = loop.step(clock[0])
        if result.command is not None:
            states.append(result.command.state)
    assert loop.stats.reconnects == 1 and not loop.faulted
    assert states and all(state == "estop" for state in states), states
    assert not loop.submit_msg(_msg_of(_chunk_of(clock[0], START)), clock[0]).accepted


def _msg_of(chunk: Chunk):
    from hw_drivers.conversions import chunk_to_msg

    return chunk_to_msg(chunk)
