"""Errors and faults that keep coming back latch the e-stop, and the e-stop says why.

Before: a tick error with successful ticks between them was never escalated (each one held and
reconnected, for ever); with ``on_fault: disable`` each fault and its reconnect turned the
torque off and on again, for ever; and only a tick-error e-stop had a reason, kept beside the
latch instead of with it. Pure: ``ControlLoop`` on the sim backend with a fake clock, replaying
the node's tick as tests/unit/test_tick_error_escalation.py does.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hw_drivers.backends.sim import SimBackend
from hw_drivers.chunk import Chunk
from hw_drivers.control_loop import ControlLoop
from hw_drivers.driver_params import DriverParams
from hw_drivers.executor import OPERATOR_ESTOP, ChunkExecutor, ExecutorConfig
from hw_drivers.health import ERROR, driver_summary
from hw_drivers.tick_errors import FaultWindow, TickErrorEscalation, min_fault_window
from tests.unit.test_executor_properties import (
    CI,
    LOWER,
    NAMES,
    STEP,
    T0,
    UPPER,
    limits,
    safety,
)
from tests.unit.test_tick_error_escalation import RECONNECT, TICK, make_loop, run_ticks

# -- 1. the reason lives with the latch -------------------------------------------------------


def test_the_estop_keeps_its_first_reason_until_reset():
    executor = ChunkExecutor(NAMES, limits(), safety(0.3), ExecutorConfig())
    executor.start(0.5 * (LOWER + UPPER))
    assert executor.estop_reason == "" and not executor.estopped
    executor.estop()
    assert executor.estop_reason == OPERATOR_ESTOP
    executor.estop("3 control tick errors")  # a later cause does not replace the first
    assert executor.estop_reason == OPERATOR_ESTOP
    executor.start(0.5 * (LOWER + UPPER))  # a reconnect keeps latch and reason
    assert executor.estopped and executor.estop_reason == OPERATOR_ESTOP
    executor.reset(0.5 * (LOWER + UPPER))
    assert not executor.estopped and executor.estop_reason == ""


def test_a_tick_error_estop_after_an_operator_estop_keeps_the_operators_reason():
    loop, clock = make_loop(max_tick_errors=2)
    loop.estop()
    assert run_ticks(loop, clock, 100, broken=lambda now: True) == []  # nothing newly latched
    assert loop.estop_reason == OPERATOR_ESTOP


def test_diagnostics_name_any_estop_reason_before_a_backend_fault():
    base = dict(
        command_fault="",
        tick_rate=250.0,
        target_rate=250.0,
        rejected_recently=0,
        rejection_window=10.0,
        last_reject_reason="",
    )
    level, message = driver_summary(
        "estop", estop_reason=OPERATOR_ESTOP, backend_fault="read failed: bus off", **base
    )
    assert level == ERROR
    assert message == (
        "e-stop latched: operator ~/estop; call ~/reset; backend fault: read failed: bus off"
    )


# -- 2. tick errors that recur with successful ticks between them -----------------------------


def test_a_bug_raising_on_every_20th_tick_latches_the_estop_within_the_window():
    loop, clock = make_loop(max_tick_errors=3, fault_window=60.0)
    work = [0]

    def every_20th(now: float) -> bool:
        work[0] += 1
        return work[0] % 20 == 0

    latched = run_ticks(loop, clock, 2000, every_20th)
    assert len(latched) == 1  # said once
    assert "3 control tick errors within 60 s" in latched[0]
    assert loop.executor.estopped and loop.estop_reason == latched[0]
    # Each error was followed by successful ticks: the count in a row never passed 1.
    assert loop.tick_errors.count <= 1
    assert loop.tick_errors.recent_count(clock[0]) >= 3  # what /diagnostics shows
    assert TickErrorEscalation(3).recent_count(clock[0]) == 0  # no window, none


def test_errors_further_apart_than_the_window_allows_only_hold_and_reconnect():
    loop, clock = make_loop(max_tick_errors=3, fault_window=1.0)
    work = [0]

    def every_60th(now: float) -> bool:  # an error every 0.6 s or so: 2 per window at most
        work[0] += 1
        return work[0] % 60 == 0

    assert run_ticks(loop, clock, 3000, every_60th) == []
    assert loop.stats.backend_errors >= 30 and not loop.executor.estopped


def test_the_window_count_starts_afresh_after_reset():
    loop, clock = make_loop(max_tick_errors=3, fault_window=60.0)
    flips = iter([True, False, False] * 3)
    assert len(run_ticks(loop, clock, 200, broken=lambda now: next(flips, False))) == 1
    ok, _ = loop.reset()
    assert ok and not loop.executor.estopped
    flips = iter([True, False, False] * 2)  # two more: fewer than the limit since the reset
    assert run_ticks(loop, clock, 200, broken=lambda now: next(flips, False)) == []
    assert not loop.executor.estopped


def _oracle(events: list[tuple[float, bool]], limit: int, window: float) -> int | None:
    """Index of the event at which the e-stop must latch (None: never), by brute force."""
    run = 0
    errors: list[float] = []
    for i, (t, failed) in enumerate(events):
        if not failed:
            run = 0
            continue
        run += 1
        errors.append(t)
        if run >= limit or sum(1 for e in errors if t - e <= window) >= limit:
            return i
    return None


@CI
@given(
    gaps=st.lists(
        st.tuples(st.floats(0.0, 5.0, allow_nan=False), st.booleans()), min_size=1, max_size=60
    ),
    limit=st.integers(1, 5),
    window=st.floats(0.01, 20.0),
)
def test_escalation_latches_exactly_when_the_oracle_says(gaps, limit, window):
    events, t = [], 100.0
    for gap, failed in gaps:
        t += gap
        events.append((t, failed))
    escalation = TickErrorEscalation(limit, window)
    said = []
    for i, (now, failed) in enumerate(events):
        if failed:
            if escalation.failed(now, "boom") is not None:
                said.append(i)
        else:
            escalation.succeeded()
    expected = _oracle(events, limit, window)
    assert said == ([] if expected is None else [expected])


@CI
@given(
    times=st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=1, max_size=40),
    limit=st.integers(1, 6),
    window=st.floats(0.01, 100.0),
)
def test_fault_window_never_counts_more_than_lies_in_the_window(times, limit, window):
    # Any clock, including one that steps back: what it counts is what lies in the window
    # on the timeline since the last step back (a sim time reset starts a new one).
    fw = FaultWindow(limit, window)
    kept: list[float] = []
    for now in times:
        if any(t > now for t in kept):
            kept = []
        kept.append(now)
        expected = sum(1 for t in kept if now - t <= window)
        assert fw.add(now) == (expected >= limit)
        assert fw.count(now) == expected


def test_fault_window_rejects_what_could_never_work():
    with pytest.raises(ValueError):
        FaultWindow(0, 1.0)
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError):
            FaultWindow(3, bad)


def window_problems(**kwargs) -> list[str]:
    return [p for p in DriverParams(**kwargs).validate() if "fault_window" in p]


def test_a_window_too_short_to_ever_trip_is_refused_not_left_silent():
    # Each error costs a reconnect period: 3 of them never fit in 1 s at reconnect_period 1 s.
    problems = window_problems(max_tick_errors=3, reconnect_period=1.0, fault_window=1.0)
    assert any("fault_window 1 s is too short" in p for p in problems), problems
    assert not window_problems(max_tick_errors=3, reconnect_period=1.0, fault_window=3.1)
    # max_backend_faults counts under either on_fault (before: only with disable).
    params = dict(max_tick_errors=1, max_backend_faults=10, reconnect_period=1.0, fault_window=5.0)
    assert window_problems(**params)
    assert window_problems(**params, on_fault="disable")
    assert not window_problems(**{**params, "fault_window": 10 * 1.1})
    for bad in (0.0, -1.0, math.nan, math.inf):
        assert any("fault_window must be > 0" in p for p in window_problems(fault_window=bad))
    assert any("max_backend_faults" in p for p in DriverParams(max_backend_faults=0).validate())
    assert DriverParams().fault_window == 60.0 and DriverParams().max_backend_faults == 3


@pytest.mark.parametrize("limit", [1, 2, 3, 5])
@pytest.mark.parametrize("reconnect", [0.01, 0.05, 0.3])
def test_a_window_at_the_validated_bound_trips_on_a_bug_raising_every_tick(limit, reconnect):
    window = min_fault_window(limit, reconnect, 1.0 / TICK)
    clock = [T0]
    sim = SimBackend(NAMES, 0.5 * (LOWER + UPPER), LOWER, UPPER, clock=lambda: clock[0])
    executor = ChunkExecutor(NAMES, limits(), safety(0.3), ExecutorConfig())
    loop = ControlLoop(
        sim, executor, reconnect_period=reconnect, max_tick_errors=10**6, fault_window=window
    )
    loop.tick_errors.limit = 10**6  # only the window can trip
    loop.tick_errors.recent.limit = limit
    loop.start()
    latched = run_ticks(loop, clock, 10 * limit * round(reconnect / TICK + 3), lambda now: True)
    assert len(latched) == 1 and "within" in latched[0]


# -- 3. on_fault: disable and faults that recur ----------------------------------------------


def disable_loop(
    max_backend_faults: int = 3, window: float = 60.0, on_fault: str = "disable"
) -> tuple:
    clock = [T0]
    sim = SimBackend(NAMES, 0.5 * (LOWER + UPPER), LOWER, UPPER, clock=lambda: clock[0])
    executor = ChunkExecutor(NAMES, limits(), safety(0.3), ExecutorConfig())
    loop = ControlLoop(
        sim,
        executor,
        on_fault=on_fault,
        reconnect_period=RECONNECT,
        fault_window=window,
        max_backend_faults=max_backend_faults,
    )
    loop.start()
    return loop, sim, clock


def run_with_faults(loop, sim, clock, ticks: int, fault_every: int) -> list[bool]:
    """Tick ``ticks`` times, the backend faulting on every ``fault_every``-th tick; returns
    whether the torque was on after each tick."""
    torque = []
    for k in range(1, ticks + 1):
        clock[0] += TICK
        if k % fault_every == 0:
            sim.inject_faults(1)
        loop.step(clock[0])
        torque.append(sim.is_enabled)
    return torque


def torque_ons(torque: list[bool]) -> int:
    return sum(1 for before, after in itertools.pairwise(torque) if after and not before)


def test_recurring_faults_with_disable_stop_cycling_the_torque_and_latch_the_estop():
    loop, sim, clock = disable_loop(max_backend_faults=3)
    torque = run_with_faults(loop, sim, clock, 2000, fault_every=25)
    assert loop.stats.backend_errors >= 50  # the fault kept recurring throughout
    assert torque_ons(torque) == 2  # two reconnects turned it on again; the third fault latched
    assert not any(torque[-1500:]) and not sim.is_enabled
    assert loop.torque_off_latched and loop.executor.estopped
    assert "3 backend faults within 60 s with on_fault: disable" in loop.estop_reason
    assert "torque kept off" in loop.estop_reason
    assert loop.stats.reconnects > 3  # the link still reconnects: state keeps coming


def test_with_the_torque_kept_off_nothing_is_written_and_reset_energises_where_the_arm_is():
    loop, sim, clock = disable_loop(max_backend_faults=1)
    clock[0] += TICK
    assert loop.step(clock[0]).wrote
    sim.inject_faults(1)
    clock[0] += TICK
    loop.step(clock[0])  # the first fault latches with max_backend_faults 1
    assert loop.torque_off_latched and not sim.is_enabled
    writes = loop.stats.writes
    for _ in range(50):  # the reconnect comes, torque stays off, nothing is sent
        clock[0] += TICK
        result = loop.step(clock[0])
    assert not loop.faulted and loop.stats.reconnects == 1
    assert not sim.is_enabled and loop.stats.writes == writes and not result.wrote
    assert result.command is not None  # the executor runs (e-stop hold): a successful tick
    ok, message = loop.reset()
    assert ok, message
    assert sim.is_enabled and not loop.torque_off_latched and not loop.executor.estopped
    clock[0] += TICK
    result = loop.step(clock[0])
    assert result.wrote
    np.testing.assert_allclose(result.sent, result.reading.positions, atol=1e-6)


def test_reset_while_the_torque_cannot_come_on_keeps_it_latched():
    loop, sim, clock = disable_loop(max_backend_faults=1)
    sim.inject_faults(1)
    clock[0] += TICK
    loop.step(clock[0])
    for _ in range(10):
        clock[0] += TICK
        loop.step(clock[0])
    assert not loop.faulted and loop.torque_off_latched

    def enable_fails() -> None:
        from hw_drivers.backends.base import BackendError

        raise BackendError("motor 3 does not answer")

    sim.enable = enable_fails
    ok, message = loop.reset()
    assert not ok and "motor 3 does not answer" in message
    assert loop.torque_off_latched and loop.executor.estopped


def test_faults_further_apart_than_the_window_still_reconnect_with_torque():
    loop, sim, clock = disable_loop(max_backend_faults=3, window=1.0)
    torque = run_with_faults(loop, sim, clock, 2000, fault_every=60)  # every 0.6 s
    assert torque_ons(torque) >= 30 and not loop.executor.estopped and sim.is_enabled




# -- 4. on_fault: hold and backend faults that recur ------------------------------------------
# Before: under hold (the default) every fault held, reconnected and took chunks again (ramp-in
# from the measured pose), for ever: a flaky cable made the arm lurch between motion and hold.


def chunk_at(pose: np.ndarray, now: float, horizon: int = 15) -> Chunk:
    """A slow move away from ``pose`` (well inside the limits), stamped ``now``."""
    k = np.arange(horizon)[:, None] * STEP
    return Chunk(now, 0.0, STEP, NAMES, pose + 0.05 * k)


def run_hold_with_faults(loop, sim, clock, ticks: int, fault_every: int) -> list[tuple]:
    """Tick ``ticks`` times with a fresh chunk from the measured pose every tick (a policy
    that keeps sending), the backend faulting on every ``fault_every``-th tick; returns per
    tick (torque on, chunk accepted, executor state, command positions or None, e-stop
    reason)."""
    out = []
    for k in range(1, ticks + 1):
        clock[0] += TICK
        accepted = False
        if loop.last_reading is not None and not loop.faulted:
            chunk = chunk_at(loop.last_reading.positions, clock[0])
            accepted = loop.submit_prepared(loop.executor.prepare(chunk), clock[0]).accepted
        if k % fault_every == 0:
            sim.inject_faults(1)
        result = loop.step(clock[0])
        positions = None if result.command is None else result.command.positions
        out.append((sim.is_enabled, accepted, loop.executor.state, positions, loop.estop_reason))
    return out


def test_recurring_faults_with_hold_latch_the_estop_holding_with_the_torque_on():
    loop, sim, clock = disable_loop(max_backend_faults=3, on_fault="hold")
    ticks = run_hold_with_faults(loop, sim, clock, 2000, fault_every=25)  # a fault per 0.25 s
    assert loop.stats.backend_errors >= 50  # the fault kept recurring throughout
    reason = loop.estop_reason
    assert "3 backend faults within 60 s with on_fault: hold" in reason, reason
    assert "holding the measured pose, torque on" in reason
    # The arm tracked chunks between the faults (successful ticks), and those still counted:
    # the third fault latched, 50 ticks after the first.
    latched_at = next(i for i, t in enumerate(ticks) if t[4])
    assert latched_at == 3 * 25 - 1
    assert any(t[2] in ("ramp_in", "tracking") for t in ticks[25:49])
    # Torque on throughout; after the latch every chunk is refused and the command stands still
    # through every later fault and reconnect.
    assert all(t[0] for t in ticks) and sim.is_enabled and not loop.torque_off_latched
    after = ticks[latched_at + 1 :]
    assert not any(t[1] for t in after)
    held = [t[3] for t in after if t[3] is not None]
    assert len(held) > 1000 and all(t[2] == "estop" for t in after if t[3] is not None)
    for positions in held[1:]:
        np.testing.assert_allclose(positions, held[0], atol=1e-9)
    assert loop.stats.reconnects > 10  # the link still reconnects: state keeps coming
    while loop.faulted:  # the run ended on a fault: refused for the latch, not the fault
        clock[0] += TICK
        loop.step(clock[0])
    refused = loop.submit_prepared(
        loop.executor.prepare(chunk_at(loop.last_reading.positions, clock[0])), clock[0]
    )
    assert not refused.accepted and refused.reason.startswith("estop:")


def test_reset_after_a_hold_latch_takes_chunks_again_from_the_measured_pose():
    loop, sim, clock = disable_loop(max_backend_faults=1, on_fault="hold")
    run_hold_with_faults(loop, sim, clock, 30, fault_every=10)  # latched at the first fault
    assert loop.executor.estopped and "1 backend faults" in loop.estop_reason
    for _ in range(20):  # the reconnect comes; still latched
        clock[0] += TICK
        loop.step(clock[0])
    assert not loop.faulted and loop.executor.estopped
    ok, message = loop.reset()
    assert ok, message
    assert not loop.executor.estopped and loop.estop_reason == "" and sim.is_enabled
    ticks = run_hold_with_faults(loop, sim, clock, 20, fault_every=10**6)
    assert all(t[1] for t in ticks) and ticks[-1][2] == "ramp_in"
    # Counting starts afresh: the next fault latches again, as the first did.
    run_hold_with_faults(loop, sim, clock, 1, fault_every=1)
    assert loop.executor.estopped


def test_hold_faults_further_apart_than_the_window_keep_reconnecting():
    loop, sim, clock = disable_loop(max_backend_faults=3, window=1.0, on_fault="hold")
    ticks = run_hold_with_faults(loop, sim, clock, 2000, fault_every=60)  # every 0.6 s
    assert loop.stats.backend_errors >= 30 and loop.stats.reconnects >= 30
    assert not loop.executor.estopped and all(t[0] for t in ticks)
    assert sum(1 for t in ticks[-100:] if t[1]) > 50  # chunks still followed at the end


def test_hold_tick_errors_do_not_count_as_backend_faults():
    # A tick error (a bug) has its own count, whose reason names a bug, not the backend.
    loop, _sim, clock = disable_loop(max_backend_faults=1, on_fault="hold")
    loop.tick_errors.limit = 10
    clock[0] += TICK
    assert loop.tick_error(clock[0], "tick error: KeyError: 'x'") is None
    assert not loop.executor.estopped and loop.backend_faults.count(clock[0]) == 0
