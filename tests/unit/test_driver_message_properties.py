"""Property-based tests of the driver's message path: ActionChunk messages -> ControlLoop.

The driver node only forwards: chunk messages to ``ControlLoop.submit_msg``, its timer to
``ControlLoop.step``, its services to ``estop`` / ``reset`` / ``hold``. Hypothesis builds real
``molmoact2_msgs/ActionChunk`` messages with arbitrary fields (stamps anywhere, any step_dt,
horizons that do or do not match the positions, any joint names, any values), interleaves them
with control ticks, service calls and backend faults, and checks on every tick that nothing
raises and that every command the sim backend was sent obeys the invariants
(``tests.command_invariants``).

CI: ``CI_EXAMPLES`` derandomized examples; ``-m soak`` runs ``SOAK_EXAMPLES`` random ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hw_drivers.backends.sim import SimBackend
from hw_drivers.control_loop import ControlLoop
from hw_drivers.conversions import seconds_to_time_msg
from hw_drivers.executor import ChunkExecutor, ExecutorConfig
from tests.command_invariants import CommandChecker
from tests.unit.test_executor_properties import (
    AMAX,
    BAD_FLOATS,
    CI,
    LOWER,
    MAX_STEP,
    NAMES,
    SOAK,
    STEP,
    T0,
    UPPER,
    VMAX,
    limits,
    safety,
)

TICK = 0.01  # a 100 Hz driver, like the SO-101 config


@dataclass(frozen=True)
class Msg:
    stamp_delta: float
    offset: float
    step_dt: float
    names: tuple[str, ...]
    horizon: int
    shift: tuple[float, ...]
    broken: str  # "" or the one field that is broken
    odd: float  # the broken value
    at: int  # where / how it is broken


@dataclass(frozen=True)
class Ticks:
    count: int


@dataclass(frozen=True)
class Service:
    name: str  # estop | reset | hold_on | hold_off


@dataclass(frozen=True)
class Fault:
    count: int  # backend reads/writes that fail next


def _time(seconds: float):
    """A builtin_interfaces/Time for ``seconds``, saturated to what the message can carry."""
    if not math.isfinite(seconds):
        seconds = 0.0
    return seconds_to_time_msg(min(max(seconds, -2.0**31 + 1), 2.0**31 - 2))


BROKEN = ("stamp", "offset", "step_dt", "names", "horizon", "rows", "value", "jump")
ODD_NAMES = ((), ("j0", "j1"), ("j0", "j1", "j2", "x"), ("j0", "j0", "j2"), ("j0", "", "j2"))

msgs = st.builds(
    Msg,
    stamp_delta=st.floats(-0.2, 0.01),
    offset=st.sampled_from([0.0, STEP]),
    step_dt=st.sampled_from([STEP, STEP, 0.01, 0.1]),
    names=st.just(NAMES) | st.permutations(NAMES).map(tuple),
    horizon=st.sampled_from([30, 30, 1, 2, 5]),
    shift=st.tuples(*[st.floats(-0.2, 0.2)] * 3),
    broken=st.sampled_from(("",) * 8 + BROKEN),
    odd=st.sampled_from(BAD_FLOATS) | st.floats(-1e6, 1e6) | st.sampled_from([-3.0, 0.3, 10.0]),
    at=st.integers(0, 100_000),
)
events = st.lists(
    st.one_of(
        st.builds(Ticks, st.integers(1, 60)),
        st.builds(Ticks, st.integers(1, 60)),
        msgs,
        msgs,
        st.builds(Service, st.sampled_from(["estop", "reset", "hold_on", "hold_off"])),
        st.builds(Fault, st.integers(1, 3)),
    ),
    min_size=1,
    max_size=60,
)


def build_msg(spec: Msg, now: float, command: np.ndarray):
    from molmoact2_msgs.msg import ActionChunk

    broken, odd, at = spec.broken, spec.odd, spec.at
    msg = ActionChunk()
    msg.header.stamp = _time(now + (odd if broken == "stamp" else spec.stamp_delta))
    offset = _time(odd if broken == "offset" else spec.offset)
    msg.start_offset.sec, msg.start_offset.nanosec = offset.sec, offset.nanosec
    msg.step_dt = float(odd if broken == "step_dt" else spec.step_dt)
    names = ODD_NAMES[at % len(ODD_NAMES)] if broken == "names" else spec.names
    msg.joint_names = list(names)
    horizon = at % 5000 if broken == "horizon" else spec.horizon
    msg.horizon = horizon
    rows = at % 50 if broken in ("rows", "horizon") else horizon
    index = {n: j for j, n in enumerate(NAMES)}
    columns = [index.get(n, 0) for n in names]
    k = np.arange(rows)[:, None]
    pose = np.clip(command + np.asarray(spec.shift), LOWER, UPPER)
    positions = (pose + 0.05 * np.sin(2.0 * k * STEP))[:, columns]
    if broken == "jump" and rows > 1:
        positions[at % rows :] += odd if math.isfinite(odd) else 1.0
    flat = positions.reshape(-1)
    if broken == "value" and flat.size:
        flat[at % flat.size] = odd
    msg.positions = flat.astype(float).tolist()
    msg.sequence = at
    return msg


def run_loop(event_list, dry_run: bool) -> None:
    clock = [T0]
    sim = SimBackend(NAMES, 0.5 * (LOWER + UPPER), LOWER, UPPER, clock=lambda: clock[0])
    executor = ChunkExecutor(NAMES, limits(), safety(0.3), ExecutorConfig(dry_run=dry_run))
    loop = ControlLoop(sim, executor, reconnect_period=0.05)
    loop.start()
    check = CommandChecker(LOWER, UPPER, VMAX, AMAX, MAX_STEP)
    reconnects = 0
    for event in event_list:
        if isinstance(event, Ticks):
            for _ in range(event.count):
                clock[0] += TICK
                result = loop.step(clock[0])
                if loop.stats.reconnects != reconnects:
                    reconnects = loop.stats.reconnects
                    check.restart()  # the link came back: a new command stream
                if result.command is not None:
                    problems = check.check(clock[0], result.command.positions)
                    assert not problems, problems
                    assert result.wrote is not dry_run
        elif isinstance(event, Msg):
            command = executor.last_command
            msg = build_msg(event, clock[0], command)
            outcome = loop.submit_msg(msg, clock[0])
            if not outcome.accepted:
                assert ":" in outcome.reason
        elif isinstance(event, Service):
            if event.name == "estop":
                assert "latched" in loop.estop()
            elif event.name == "reset":
                faulted = loop.faulted
                ok, message = loop.reset()
                assert not (ok and faulted), message  # never "reset" on a faulted backend
                if ok:
                    assert executor.state == "idle" and not executor.estopped
            else:
                ok, message = loop.hold(event.name == "hold_on")
                if event.name == "hold_off" and executor.estopped:
                    assert not ok and "e-stop" in message
        elif isinstance(event, Fault):
            sim.inject_faults(event.count)
    # What reached the robot obeys the same rules (the log is stamped with sim time).
    if not dry_run and reconnects == 0:
        robot = CommandChecker(LOWER, UPPER, VMAX, AMAX, MAX_STEP)
        for stamp, positions in sim.command_log:
            problems = robot.check(stamp, positions)
            assert not problems, problems
    if dry_run:
        assert len(sim.command_log) == 0


@CI
@given(event_list=events, dry_run=st.booleans())
def test_message_path_keeps_the_invariants(event_list, dry_run):
    run_loop(event_list, dry_run)


@pytest.mark.soak
@SOAK
@given(event_list=events, dry_run=st.booleans())
def test_message_path_keeps_the_invariants_soak(event_list, dry_run):
    run_loop(event_list, dry_run)
