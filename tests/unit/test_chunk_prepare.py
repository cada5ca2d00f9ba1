"""A chunk message is prepared (converted, stateless checks) outside the driver's lock and
submitted under it (``ControlLoop.prepare_msg`` / ``submit_prepared``). What changes between
the two (an e-stop, a hold, a fault, tighter live limits, the time, a newer chunk) must decide
the verdict: those checks stay in the submit half. Preparing touches no state and counts
nothing."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hw_drivers.backends.sim import SimBackend
from hw_drivers.chunk import Chunk
from hw_drivers.control_loop import ControlLoop
from hw_drivers.conversions import chunk_to_msg
from hw_drivers.executor import ChunkExecutor, ExecutorConfig
from hw_drivers.safety import JointLimits
from tests.unit.test_executor_properties import (
    AMAX,
    CI,
    LOWER,
    MAX_STEP,
    NAMES,
    STEP,
    T0,
    UPPER,
    VMAX,
    limits,
    safety,
)

J = len(NAMES)


def started_loop() -> tuple[ControlLoop, list[float]]:
    clock = [T0]
    sim = SimBackend(NAMES, 0.5 * (LOWER + UPPER), LOWER, UPPER, clock=lambda: clock[0])
    loop = ControlLoop(
        sim, ChunkExecutor(NAMES, limits(), safety(0.3), ExecutorConfig()), reconnect_period=0.05
    )
    loop.start()
    return loop, clock


def good_msg(loop: ControlLoop, stamp: float = T0, shift: float = 0.0):
    pose = loop.last_reading.positions + shift
    positions = np.tile(pose, (10, 1)) + 0.001 * np.arange(10)[:, None]
    return chunk_to_msg(Chunk(stamp, 0.0, STEP, NAMES, positions))


def test_an_estop_hold_or_fault_after_preparing_decides_the_verdict():
    for change, code in (
        (lambda loop: loop.estop(), "estop"),
        (lambda loop: loop.hold(True), "hold"),
        (lambda loop: loop.fault(T0, "boom"), "backend"),
    ):
        loop, _ = started_loop()
        prepared = loop.prepare_msg(good_msg(loop))
        assert prepared.problem is None
        change(loop)
        result = loop.submit_prepared(prepared, T0)
        assert not result.accepted and result.reason.startswith(code + ":"), result.reason


def test_tighter_live_limits_after_preparing_refuse_the_chunk():
    loop, _ = started_loop()
    prepared = loop.prepare_msg(good_msg(loop))
    middle = 0.5 * (LOWER + UPPER)
    tight = JointLimits(middle - 1e-3, middle + 1e-3, VMAX, AMAX)
    loop.executor.set_limits(tight, MAX_STEP)
    result = loop.submit_prepared(prepared, T0)
    assert not result.accepted and result.reason.startswith("position_limit:"), result.reason


def test_the_time_of_the_submit_decides_staleness():
    loop, _ = started_loop()
    prepared = loop.prepare_msg(good_msg(loop))
    result = loop.submit_prepared(prepared, T0 + 10.0)
    assert not result.accepted and result.reason.startswith("stale:"), result.reason


def test_a_newer_chunk_accepted_meanwhile_makes_the_prepared_one_out_of_order():
    loop, _ = started_loop()
    older = loop.prepare_msg(good_msg(loop, stamp=T0))
    assert loop.submit_msg(good_msg(loop, stamp=T0 + 0.01), T0 + 0.01).accepted
    result = loop.submit_prepared(older, T0 + 0.01)
    assert not result.accepted and result.reason.startswith("out_of_order:"), result.reason


def test_a_chunk_prepared_for_another_executor_is_refused_loudly():
    loop, _ = started_loop()
    other = ChunkExecutor(NAMES[::-1], limits(), safety(0.3), ExecutorConfig())
    prepared = other.prepare(Chunk(T0, 0.0, STEP, NAMES, np.zeros((2, J))))
    with pytest.raises(ValueError):
        loop.submit_prepared(prepared, T0)


@st.composite
def messages(draw):
    loop, _ = started_loop()
    msg = good_msg(loop, shift=draw(st.sampled_from([0.0, 0.1, 5.0])))
    broken = draw(st.sampled_from(["", "nan", "names", "horizon", "velocities"]))
    if broken == "nan":
        positions = list(msg.positions)
        positions[draw(st.integers(0, len(positions) - 1))] = math.nan
        msg.positions = positions
    elif broken == "names":
        msg.joint_names = [*NAMES[:-1], "elbow_x"]
    elif broken == "horizon":
        msg.horizon = msg.horizon + draw(st.integers(1, 5))
    elif broken == "velocities":
        msg.velocities = [math.inf] * len(msg.positions)
    return msg


@CI
@given(messages(), st.booleans())
def test_preparing_counts_nothing_and_the_submit_counts_the_verdict_once(msg, estop):
    loop, _ = started_loop()
    if estop:
        loop.estop()
    stats = loop.executor.stats
    prepared = loop.prepare_msg(msg)
    prepared_twice = loop.prepare_msg(msg)
    assert stats.rejected_total == 0 and stats.accepted == 0  # nothing counted yet
    assert loop.executor.pending_chunk is None
    assert prepared.problem == prepared_twice.problem  # a function of the message alone
    result = loop.submit_prepared(prepared, T0)
    assert stats.rejected_total + stats.accepted == 1
    if estop:
        # The state checks come first, as in submit: a broken chunk in e-stop is "estop:"
        # unless the message could not even be made into a chunk.
        assert result.reason.startswith("shape:" if prepared.chunk is None else "estop:")
    elif prepared.problem is not None:
        assert result.reason == prepared.problem


def test_limits_loosened_back_after_preparing_are_the_ones_that_decide():
    loop, _ = started_loop()
    middle = 0.5 * (LOWER + UPPER)
    loop.executor.set_limits(JointLimits(middle - 1e-3, middle + 1e-3, VMAX, AMAX), MAX_STEP)
    prepared = loop.prepare_msg(good_msg(loop))
    assert prepared.limits_problem is not None  # outside the limits in force when prepared
    loop.executor.set_limits(limits(), MAX_STEP)
    result = loop.submit_prepared(prepared, T0)
    assert result.accepted, result.reason


def test_the_submit_half_does_no_per_step_work_for_a_prepared_chunk(monkeypatch):
    # What runs under the driver's lock: no conversion, no per-step check, no trajectory.
    import hw_drivers.control_loop as control_loop
    import hw_drivers.executor as executor_module

    loop, _ = started_loop()
    prepared = loop.prepare_msg(good_msg(loop))

    def per_step(*args, **kwargs):
        raise AssertionError("per-step work in the submit half")

    for module, name in (
        (control_loop, "chunk_from_msg"),
        (executor_module, "check_chunk_content"),
        (executor_module, "check_chunk_limits"),
        (executor_module, "KnotTrajectory"),
    ):
        monkeypatch.setattr(module, name, per_step)
    result = loop.submit_prepared(prepared, T0)
    assert result.accepted, result.reason
    assert loop.executor.pending_chunk is prepared.ordered


def reference_verdict(executor: ChunkExecutor, chunk: Chunk, now: float, measured) -> str:
    """What the single-pass ``submit`` decided before the split (fresh executor: no plan, so
    no out_of_order and no averaging), from the public checks; "" when accepted."""
    from hw_drivers.safety import validate_chunk, validate_timing

    if chunk.positions.ndim != 2 or chunk.positions.shape[0] == 0:
        return "shape"
    reason = validate_timing(chunk, now, executor.safety)
    if reason is not None:
        return reason
    skipped = max(0, math.ceil((now - chunk.time_of(0)) / chunk.step_dt - 1e-9))
    if skipped >= chunk.horizon:
        return "stale"
    reason = validate_chunk(
        chunk, NAMES, executor.limits, measured, executor.safety, first_index=skipped
    )
    return reason or ""


@st.composite
def chunks(draw):
    """Mostly well-formed chunks near the measured pose, each with at most one thing broken,
    so the limit, start-deviation and acceptance paths are reached often."""
    broken = draw(st.sampled_from(["", "", "", "names", "nan", "short_v", "inf_v", "step_dt"]))
    horizon = draw(st.sampled_from([1, 2, 10, 40, 400, 5000]))
    step_dt = STEP if broken != "step_dt" else draw(st.sampled_from([1e-9, 2.0, math.nan]))
    order = list(draw(st.permutations(range(J))))
    names = [NAMES[j] for j in order]
    if broken == "names":
        names[-1] = draw(st.sampled_from([names[0], "other"]))
    middle = 0.5 * (LOWER + UPPER)
    step = draw(st.sampled_from([0.0, 1e-4, 0.5]))
    shift = draw(st.sampled_from([0.0, 0.3, 5.0]))
    positions = (middle + shift + step * np.arange(horizon)[:, None])[:, order]
    if broken == "nan":
        positions[draw(st.integers(0, horizon - 1)), draw(st.integers(0, J - 1))] = math.nan
    v = {"short_v": np.zeros(J), "inf_v": np.full_like(positions, math.inf)}.get(broken)
    if v is None and draw(st.booleans()):
        v = np.zeros_like(positions)
    lag = draw(st.sampled_from([0.0, 0.05, 0.5, 3.0]))
    return Chunk(T0 - lag, 0.0, step_dt, names, positions, velocities=v), draw(st.booleans())


@CI
@given(chunks())
def test_prepare_then_submit_decides_as_the_single_pass_submit_did(case):
    chunk, tighten = case
    loop, _ = started_loop()
    executor = loop.executor
    measured = loop.last_reading.positions
    prepared = executor.prepare(chunk)
    if tighten:  # live limits change between the halves
        middle = 0.5 * (LOWER + UPPER)
        executor.set_limits(JointLimits(middle - 0.2, middle + 0.2, VMAX, AMAX), MAX_STEP)
    expected = reference_verdict(executor, chunk, T0, measured)
    result = executor.submit_prepared(prepared, T0, measured)
    assert result.accepted == (expected == ""), (result.reason, expected)
    assert result.reason.startswith(expected), (result.reason, expected)
