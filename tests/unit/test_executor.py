"""ChunkExecutor: latency skip, splicing, watchdog, e-stop, ramp-in, reordering, dry-run."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hw_drivers.backends.sim import SimBackend
from hw_drivers.chunk import Chunk
from hw_drivers.control_loop import ControlLoop
from hw_drivers.executor import ChunkExecutor, ExecutorConfig
from hw_drivers.safety import JointLimits, SafetyConfig

NAMES = ("a", "b", "c")
TICK = 1.0 / 250.0
STEP = 1.0 / 30.0


def _limits(vmax=5.0, amax=1e4, span=10.0) -> JointLimits:
    n = len(NAMES)
    return JointLimits(
        lower=np.full(n, -span),
        upper=np.full(n, span),
        max_velocity=np.full(n, vmax),
        max_acceleration=np.full(n, amax),
    )


def _executor(limits=None, safety=None, **config) -> ChunkExecutor:
    safety = safety or SafetyConfig(max_step_per_tick=1.0, ramp_in_time=0.0, watchdog_timeout=10.0)
    return ChunkExecutor(NAMES, limits or _limits(), safety, ExecutorConfig(**config))


def _ramp_chunk(stamp, horizon=30, step_dt=STEP, slope=0.3, start=0.0, offset=0.0) -> Chunk:
    """Each joint moves linearly: joint j at action k is start + slope * (k*step_dt) * (j+1)."""
    k = np.arange(horizon)[:, None]
    positions = start + slope * (k * step_dt) * (np.arange(len(NAMES)) + 1)
    return Chunk(stamp, offset, step_dt, NAMES, positions)


def _run(executor, t0, t1, measured):
    out = []
    t = t0
    while t <= t1 + 1e-12:
        out.append((t, executor.tick(t, measured)))
        t += TICK
    return out


# -- latency compensation ---------------------------------------------------------------------


@pytest.mark.parametrize("latency", [0.0, 0.02, STEP, STEP + 1e-6, 0.08, 0.25, 0.9])
def test_latency_skip_is_exactly_ceil_latency_over_dt(latency):
    executor = _executor(interpolation="linear")
    zero = np.zeros(3)
    executor.reset(zero)
    stamp = 100.0
    now = stamp + latency
    # The chunk passes through zero at `now`: executing it from action 0 would start at
    # -0.3 * latency instead.
    chunk = _ramp_chunk(stamp, start=0.0)
    chunk = Chunk(stamp, 0.0, STEP, NAMES, chunk.positions - 0.3 * latency * np.arange(1, 4))
    result = executor.submit(chunk, now, zero)
    assert result.accepted, result.reason
    assert result.skipped_steps == math.ceil(latency / STEP - 1e-9)
    assert executor.stats.skipped_steps == result.skipped_steps
    np.testing.assert_allclose(executor.tick(now, zero).positions, 0.0, atol=1e-9)
    command = executor.tick(now + TICK, zero)
    np.testing.assert_allclose(command.positions, 0.3 * TICK * np.arange(1, 4), atol=1e-9)


def test_chunk_entirely_in_the_past_is_rejected_as_stale():
    executor = _executor()
    executor.reset(np.zeros(3))
    chunk = _ramp_chunk(0.0, horizon=10)
    result = executor.submit(chunk, chunk.end_time + 0.01, np.zeros(3))
    assert not result.accepted and result.reason.startswith("stale:")
    assert executor.stats.rejected["stale"] == 1
    # The last action exactly at `now` is still applicable.
    assert executor.submit(chunk, chunk.end_time, np.zeros(3)).accepted


def test_older_chunk_than_the_active_one_is_rejected():
    executor = _executor()
    executor.reset(np.zeros(3))
    assert executor.submit(_ramp_chunk(1.0), 1.05, np.zeros(3)).accepted
    result = executor.submit(_ramp_chunk(0.99), 1.06, np.zeros(3))
    assert not result.accepted and result.reason.startswith("out_of_order:")


# -- splicing ---------------------------------------------------------------------------------


def _reference(t, amp, omega, phase):
    return amp * np.sin(omega * t + phase)


def _splice_run(policy: str, seed: int):
    """Random chunk periods and latencies around a sinusoid, each chunk offset by up to GAP/2."""
    rng = np.random.default_rng(seed)
    amp, omega, phase = rng.uniform(0.2, 0.5, 3), rng.uniform(1.0, 3.0, 3), rng.uniform(0, 6, 3)
    half_gap = 0.05
    window = 0.1
    safety = SafetyConfig(max_step_per_tick=1.0, ramp_in_time=0.5, watchdog_timeout=10.0)
    executor = _executor(safety=safety, splice_policy=policy, blend_window=window)
    start = _reference(0.0, amp, omega, phase)
    executor.reset(start)
    commands, splice_ticks = [], []
    t, next_chunk, stamp = 0.0, 0.0, -1.0
    while t < 6.0:
        if t >= next_chunk:
            # Observations are captured in order; their latencies vary.
            stamp = max(t - rng.uniform(0.0, 0.2), stamp + 0.01)
            times = stamp + STEP + STEP * np.arange(30)
            positions = _reference(times[:, None], amp, omega, phase) + rng.uniform(
                -half_gap, half_gap, 3
            )
            chunk = Chunk(stamp, STEP, STEP, NAMES, positions)
            assert executor.submit(chunk, t, commands[-1] if commands else positions[0]).accepted
            splice_ticks.append(len(commands))
            next_chunk = t + rng.uniform(window, 0.3)
        commands.append(executor.tick(t, commands[-1] if commands else start).positions)
        t += TICK
    commands = np.array(commands)
    bounds = {
        "max_speed": amp * omega,
        "max_accel": amp * omega**2,
        "gap": 2 * half_gap,
        "window": window,
    }
    return commands, splice_ticks[1:], bounds, executor


def _velocity_jump_bound(b):
    # Cubic Hermite of a smooth chunk: up to ~1.5x its true acceleration between knots. A splice
    # adds the correction's acceleration, at most 6*gap/T^2 + 4*dv/T, where the chunks'
    # velocities differ by at most 2 * max_speed.
    accel = 1.5 * b["max_accel"] + 6 * b["gap"] / b["window"] ** 2 + 8 * b["max_speed"] / b[
        "window"
    ]
    return accel * TICK


@pytest.mark.parametrize("policy", ["blend", "average"])
@pytest.mark.parametrize("seed", range(4))
def test_splices_are_continuous_in_position_and_velocity(policy, seed):
    commands, splices, bounds, executor = _splice_run(policy, seed)
    assert executor.stats.splices == len(splices)
    assert executor.stats.clamped_ticks == 0  # the blend itself, not the clamp, is under test
    velocity = np.diff(commands, axis=0) / TICK
    jump = np.abs(np.diff(velocity, axis=0))
    bound = _velocity_jump_bound(bounds)
    max_speed = bounds["max_speed"] * 3 + 1.5 * bounds["gap"] / bounds["window"]
    for i in splices:
        around = slice(max(i - 2, 0), i + 3)
        assert np.all(jump[around] <= bound + 1e-9), (i, jump[around].max(), bound)
        step = np.abs(commands[i] - commands[i - 1])
        assert np.all(step <= max_speed * TICK + 1e-12)


def test_replace_policy_violates_the_same_bound():
    commands, splices, bounds, _ = _splice_run("replace", 0)
    jump = np.abs(np.diff(np.diff(commands, axis=0) / TICK, axis=0))
    worst = np.max([jump[max(i - 2, 0) : i + 3].max(axis=0) for i in splices], axis=0)
    assert np.all(worst > 2 * _velocity_jump_bound(bounds))


# -- watchdog and holds -----------------------------------------------------------------------


def test_no_extrapolation_past_the_last_point():
    executor = _executor(interpolation="linear")
    executor.reset(np.zeros(3))
    chunk = _ramp_chunk(0.0, horizon=5)
    executor.submit(chunk, 0.0, np.zeros(3))
    ticks = _run(executor, 0.0, chunk.end_time + 0.3, np.zeros(3))
    after = [c for t, c in ticks if t > chunk.end_time + 1e-9]
    assert after, "no ticks after the chunk"
    for command in after:
        np.testing.assert_allclose(command.positions, chunk.positions[-1], atol=1e-9)
        assert np.all(command.velocities == 0.0)
        assert command.state == "holding"


def test_watchdog_holds_after_timeout_without_a_new_chunk():
    safety = SafetyConfig(max_step_per_tick=1.0, ramp_in_time=0.0, watchdog_timeout=0.5)
    executor = _executor(safety=safety)
    executor.reset(np.zeros(3))
    chunk = _ramp_chunk(0.0, horizon=30)  # covers ~1 s, longer than the watchdog
    executor.submit(chunk, 0.0, np.zeros(3))
    ticks = _run(executor, 0.0, 0.9, np.zeros(3))
    moving = [c for t, c in ticks if t < 0.5 - 1e-9]
    held = [c for t, c in ticks if t > 0.5 + 1e-9]
    assert not np.allclose(moving[0].positions, moving[-1].positions)
    assert all(c.state == "tracking" for c in moving)
    for command in held:
        np.testing.assert_array_equal(command.positions, held[0].positions)
        assert command.state == "holding" and command.reason.startswith("watchdog")
    assert executor.stats.watchdog_holds == 1
    # A fresh chunk resumes motion, splicing from the held pose.
    assert executor.submit(_ramp_chunk(0.9, start=0.0), 0.9, held[-1].positions).accepted
    assert executor.tick(1.0, np.zeros(3)).state == "tracking"


def test_hold_request_freezes_commands_and_rejects_chunks():
    executor = _executor()
    executor.reset(np.zeros(3))
    executor.submit(_ramp_chunk(0.0), 0.0, np.zeros(3))
    _run(executor, 0.0, 0.1, np.zeros(3))
    executor.hold(True)
    first = executor.tick(0.104, np.zeros(3))
    assert first.state == "holding"
    assert executor.tick(0.2, np.zeros(3)).positions.tolist() == first.positions.tolist()
    result = executor.submit(_ramp_chunk(0.2), 0.2, first.positions)
    assert not result.accepted and result.reason.startswith("hold:")
    executor.hold(False)
    assert executor.submit(_ramp_chunk(0.2, start=first.positions[0]), 0.2, first.positions)


# -- e-stop -----------------------------------------------------------------------------------


def test_estop_latches_with_zero_velocity_until_reset():
    executor = _executor()
    executor.reset(np.zeros(3))
    executor.submit(_ramp_chunk(0.0), 0.0, np.zeros(3))
    last = _run(executor, 0.0, 0.2, np.zeros(3))[-1][1]
    assert np.any(last.velocities != 0)
    executor.estop()
    stopped = executor.tick(0.204, np.zeros(3))
    assert stopped.state == "estop"
    np.testing.assert_array_equal(stopped.velocities, 0.0)
    np.testing.assert_array_equal(stopped.positions, last.positions)
    result = executor.submit(_ramp_chunk(0.204), 0.204, last.positions)
    assert not result.accepted and result.reason.startswith("estop:")
    for t in (0.3, 1.0, 5.0):
        command = executor.tick(t, np.zeros(3))
        assert command.state == "estop"
        np.testing.assert_array_equal(command.positions, last.positions)
    measured = last.positions + 0.01
    executor.reset(measured)
    command = executor.tick(5.004, measured)
    assert command.state == "idle"
    np.testing.assert_array_equal(command.positions, measured)
    assert executor.submit(_ramp_chunk(5.0, start=measured), 5.004, measured).accepted


def test_estop_state_message_names_what_latched_it():
    # ~/status and /diagnostics show the executor's state message: a generic "e-stop latched"
    # sent the operator looking for the cause in the logs.
    executor = _executor()
    executor.reset(np.zeros(3))
    executor.estop("3 backend faults within 60 s with on_fault: hold (last: read failed)")
    command = executor.tick(0.004, np.zeros(3))
    assert command.state == "estop"
    assert "3 backend faults within 60 s" in command.reason
    assert executor.state_message == command.reason
    # A new command stream (a reconnect) keeps the latch and says why, before any tick.
    executor.start(np.zeros(3))
    assert executor.state == "estop" and "3 backend faults" in executor.state_message
    executor.reset(np.zeros(3))
    assert "backend faults" not in executor.tick(0.008, np.zeros(3)).reason


# -- ramp-in ----------------------------------------------------------------------------------


def test_ramp_in_starts_at_the_command_and_converges_to_the_chunk():
    safety = SafetyConfig(max_step_per_tick=1.0, ramp_in_time=0.5, watchdog_timeout=10.0)
    executor = _executor(safety=safety)
    measured = np.array([0.3, -0.2, 0.1])
    executor.reset(measured)
    chunk = _ramp_chunk(1.0, start=0.0)
    assert executor.submit(chunk, 1.0, measured).accepted
    # The robot has drifted a little by the first tick: the ramp still starts from the command
    # (the reset pose), never with a jump to wherever the arm is.
    measured_now = measured + 0.001
    first = executor.tick(1.004, measured_now)
    assert first.state == "ramp_in"
    np.testing.assert_allclose(first.positions, measured, atol=1e-12)
    ticks = _run(executor, 1.008, 1.8, measured_now)
    distance = [
        np.abs(c.positions - (0.3 * (t - 1.0) * np.array([1, 2, 3]))).max() for t, c in ticks
    ]
    assert distance[0] > 0.1
    after = [d for (t, _), d in zip(ticks, distance, strict=True) if t >= 1.004 + 0.5]
    assert max(after) < 1e-9
    assert ticks[-1][1].state == "tracking"
    assert all(c.state == "ramp_in" for t, c in ticks if t < 1.5)


def test_a_chunk_shorter_than_the_ramp_in_ends_holding_its_last_point():
    safety = SafetyConfig(max_step_per_tick=1.0, ramp_in_time=0.5, watchdog_timeout=10.0)
    executor = _executor(safety=safety)
    measured = np.array([0.3, -0.2, 0.1])
    executor.reset(measured)
    chunk = _ramp_chunk(1.0, horizon=6)  # ends at 1.167 s, the ramp at 1.504 s
    assert executor.submit(chunk, 1.0, measured).accepted
    ticks = _run(executor, 1.004, 1.8, measured)
    last = chunk.positions[-1]
    # The ramp carries the command onto the chunk's last point, and it stays there.
    after = [c for t, c in ticks if t >= 1.504 + 1e-9]
    assert after[0].state == "holding"
    for command in after:
        np.testing.assert_allclose(command.positions, last, atol=1e-9)


def test_ramp_in_respects_velocity_and_acceleration_limits():
    limits = _limits(vmax=1.0, amax=5.0)
    safety = SafetyConfig(max_step_per_tick=0.03, ramp_in_time=0.0, watchdog_timeout=10.0)
    executor = _executor(limits=limits, safety=safety)
    measured = np.array([0.4, 0.0, 0.0])
    executor.reset(measured)
    executor.submit(_ramp_chunk(0.0, slope=0.0), 0.0, measured)
    commands = np.array([c.positions for _, c in _run(executor, 0.0, 1.0, measured)])
    velocity = np.diff(commands, axis=0) / TICK
    assert np.abs(velocity).max() <= 1.0 + 1e-9
    speed_growth = np.diff(np.abs(velocity), axis=0) / TICK
    assert speed_growth.max() <= 5.0 + 1e-6
    assert executor.stats.clamped_ticks > 0


# -- joint order and dry-run ------------------------------------------------------------------


def test_chunk_columns_are_reordered_by_name():
    base = _ramp_chunk(0.0)
    shuffled = Chunk(0.0, 0.0, STEP, ("c", "a", "b"), base.positions[:, [2, 0, 1]])
    results = []
    for chunk in (base, shuffled):
        executor = _executor()
        executor.reset(np.zeros(3))
        assert executor.submit(chunk, 0.0, np.zeros(3)).accepted
        results.append([c.positions for _, c in _run(executor, 0.0, 0.5, np.zeros(3))])
    np.testing.assert_array_equal(results[0], results[1])
    executor = _executor()
    executor.reset(np.zeros(3))
    wrong = Chunk(0.0, 0.0, STEP, ("c", "a", "x"), base.positions)
    result = executor.submit(wrong, 0.0, np.zeros(3))
    assert not result.accepted and result.reason.startswith("joint_set:") and "'x'" in result.reason
    assert executor.stats.rejected["joint_set"] == 1


def _sim(clock) -> SimBackend:
    return SimBackend(NAMES, np.zeros(3), np.full(3, -3.0), np.full(3, 3.0), clock=clock)


@pytest.mark.parametrize("dry_run", [True, False])
def test_dry_run_never_calls_write_command(dry_run):
    now = [0.0]
    backend = _sim(lambda: now[0])
    calls = []
    original = backend.write_command
    backend.write_command = lambda *a, **k: (calls.append(a), original(*a, **k))
    loop = ControlLoop(backend, _executor(dry_run=dry_run))
    loop.start()
    loop.executor.submit(_ramp_chunk(0.0), 0.0, np.zeros(3))
    for _ in range(100):
        now[0] += TICK
        result = loop.step(now[0])
        assert result.command is not None and result.wrote is not dry_run
    assert loop.executor.state == "tracking"
    if dry_run:
        assert calls == [] and len(backend.command_log) == 0
        np.testing.assert_array_equal(backend.read_state().positions, 0.0)  # never moved
    else:
        assert len(calls) == 100 and len(backend.command_log) == 100


# -- message conversion (duck-typed messages, no ROS needed) ----------------------------------


def _chunk_msg(positions, horizon, names=("a", "b")):
    from types import SimpleNamespace

    return SimpleNamespace(
        header=SimpleNamespace(stamp=SimpleNamespace(sec=12, nanosec=500_000_000)),
        start_offset=SimpleNamespace(sec=0, nanosec=33_333_333),
        step_dt=STEP,
        joint_names=list(names),
        horizon=horizon,
        positions=list(positions),
        velocities=[],
        sequence=7,
        inference_latency=0.08,
    )


def test_chunk_from_msg_reads_time_base_and_row_major_layout():
    from hw_drivers.conversions import chunk_from_msg

    chunk = chunk_from_msg(_chunk_msg([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 3))
    assert chunk.stamp == pytest.approx(12.5)
    assert chunk.time_of(1) == pytest.approx(12.5 + 0.033333333 + STEP)
    np.testing.assert_array_equal(chunk.positions, [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    assert chunk.sequence == 7 and chunk.latency == pytest.approx(0.08)
    with pytest.raises(ValueError, match="5 positions for horizon 3 x 2 joints"):
        chunk_from_msg(_chunk_msg([1.0] * 5, 3))


def test_chunk_after_a_watchdog_hold_ramps_in_from_the_measured_pose():
    """A restarted policy's first chunk ramps in (like after reset), it is not spliced."""
    names = ("a", "b")
    limits = JointLimits(
        lower=np.array([-3.0, -3.0]), upper=np.array([3.0, 3.0]),
        max_velocity=np.array([5.0, 5.0]), max_acceleration=np.array([50.0, 50.0]),
    )
    safety = SafetyConfig(max_step_per_tick=0.5, watchdog_timeout=0.2, ramp_in_time=0.3)
    ex = ChunkExecutor(names, limits, safety, ExecutorConfig())
    measured = np.zeros(2)
    ex.reset(measured)

    def chunk(stamp: float, value: float) -> Chunk:
        return Chunk(stamp, 0.0, 0.1, names, np.full((10, 2), value))

    assert ex.submit(chunk(0.0, 0.1), 0.0, measured).accepted
    now = 0.0
    while now < 0.5:  # runs into the watchdog
        command = ex.tick(now, measured)
        measured = command.positions
        now += 0.004
    assert command.state == "holding" and "watchdog" in command.reason
    held = command.positions.copy()
    assert ex.submit(chunk(now, 0.2), now, held).accepted
    first = ex.tick(now, held)
    assert first.state == "ramp_in"
    np.testing.assert_allclose(first.positions, held, atol=1e-9)


def test_chunk_arriving_mid_ramp_in_keeps_the_ramp_pace():
    names = ("a", "b")
    limits = JointLimits(
        lower=np.array([-3.0, -3.0]), upper=np.array([3.0, 3.0]),
        max_velocity=np.array([50.0, 50.0]), max_acceleration=np.array([1e4, 1e4]),
    )
    safety = SafetyConfig(max_step_per_tick=1.0, watchdog_timeout=1.0, ramp_in_time=0.5,
                          max_start_deviation=1.0)

    def run(second_chunk: bool) -> float:
        ex = ChunkExecutor(names, limits, safety, ExecutorConfig(blend_window=0.05))
        measured = np.zeros(2)
        ex.reset(measured)
        ex.submit(Chunk(0.0, 0.0, 0.1, names, np.full((20, 2), 0.4)), 0.0, measured)
        steps, now, previous = [], 0.0, measured
        while now < 0.6:
            if second_chunk and abs(now - 0.1) < 1e-9:
                assert ex.submit(Chunk(now, 0.0, 0.1, names, np.full((20, 2), 0.4)), now,
                                 previous).accepted
            command = ex.tick(now, previous)
            steps.append(np.abs(command.positions - previous).max())
            previous = command.positions
            now = round(now + 0.004, 6)
        return max(steps)

    alone, spliced = run(False), run(True)
    # Without the fix the second chunk is spliced over 0.05 s: a step several times larger.
    assert spliced <= 1.2 * alone, (alone, spliced)
