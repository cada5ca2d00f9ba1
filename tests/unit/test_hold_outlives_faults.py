"""An operator's ``~/hold(true)`` outlives a backend fault and reconnect (outside-in probe
finding: the reconnect started a new command stream that dropped the hold, and the arm followed
the next chunk again). The lifecycle half is in tests/ros/test_driver_lifecycle_probe.py."""

from __future__ import annotations

import numpy as np

from hw_drivers.backends.sim import SimBackend
from hw_drivers.chunk import Chunk
from hw_drivers.control_loop import ControlLoop
from hw_drivers.executor import ChunkExecutor, ExecutorConfig
from tests.unit.test_executor_properties import LOWER, NAMES, STEP, T0, UPPER, limits, safety


def test_a_requested_hold_survives_a_reconnect_and_a_chunk_is_still_refused():
    clock = [T0]
    sim = SimBackend(NAMES, 0.5 * (LOWER + UPPER), LOWER, UPPER, clock=lambda: clock[0])
    executor = ChunkExecutor(NAMES, limits(), safety(0.3), ExecutorConfig())
    loop = ControlLoop(sim, executor, reconnect_period=0.05)
    loop.start()
    assert loop.hold(True)[0]
    sim.inject_faults(2)
    for _ in range(50):  # fault, then reconnect after reconnect_period
        clock[0] += 0.01
        loop.step(clock[0])
    assert loop.stats.reconnects == 1 and not loop.faulted
    assert executor.hold_requested
    pose = executor.last_command
    positions = np.tile(pose, (10, 1)) + 0.01 * np.arange(10)[:, None]
    chunk = Chunk(clock[0], 0.0, STEP, NAMES, positions)
    result = executor.submit(chunk, clock[0], pose)
    assert not result.accepted and result.reason.startswith("hold")


def test_without_an_operator_hold_the_reconnected_loop_follows_chunks_again():
    # The fault's own hold is not the operator's: after the reconnect a chunk is accepted.
    clock = [T0]
    sim = SimBackend(NAMES, 0.5 * (LOWER + UPPER), LOWER, UPPER, clock=lambda: clock[0])
    executor = ChunkExecutor(NAMES, limits(), safety(0.3), ExecutorConfig())
    loop = ControlLoop(sim, executor, reconnect_period=0.05)
    loop.start()
    loop.hold(True)
    loop.hold(False)  # released before the fault
    sim.inject_faults(2)
    for _ in range(50):
        clock[0] += 0.01
        loop.step(clock[0])
    assert loop.stats.reconnects == 1 and not executor.hold_requested
    pose = executor.last_command
    positions = np.tile(pose, (10, 1)) + 0.001 * np.arange(10)[:, None]
    result = executor.submit(Chunk(clock[0], 0.0, STEP, NAMES, positions), clock[0], pose)
    assert result.accepted, result.reason


def _stopped_loop():
    clock = [T0]
    sim = SimBackend(NAMES, 0.5 * (LOWER + UPPER), LOWER, UPPER, clock=lambda: clock[0])
    executor = ChunkExecutor(NAMES, limits(), safety(0.3), ExecutorConfig())
    loop = ControlLoop(sim, executor, reconnect_period=0.05)
    loop.start()
    for _ in range(5):
        clock[0] += 0.01
        loop.step(clock[0])
    loop.stop()  # the driver deactivated
    return loop, executor, clock


def _small_chunk(executor, now):
    pose = executor.last_command
    positions = np.tile(pose, (10, 1)) + 0.001 * np.arange(10)[:, None]
    return Chunk(now, 0.0, STEP, NAMES, positions), pose


def test_a_hold_requested_while_stopped_is_in_force_after_start():
    """Outside-in probe finding: ~/hold(true) on an inactive driver answered "holding", and
    the activation's new command stream dropped it: the arm followed the next chunk."""
    loop, executor, clock = _stopped_loop()
    ok, message = loop.hold(True)
    assert ok and message == "holding"
    loop.start()  # activate
    assert executor.hold_requested
    chunk, pose = _small_chunk(executor, clock[0])
    result = executor.submit(chunk, clock[0], pose)
    assert not result.accepted and result.reason.startswith("hold"), result.reason


def test_a_hold_released_or_reset_while_stopped_stays_released_after_start():
    """The other way round: hold(false) or ~/reset on an inactive driver answered "following
    chunks", and activation put the hold from before the deactivation back."""
    for release in ("hold", "reset"):
        loop, executor, clock = _stopped_loop()
        loop.hold(True)
        ok, message = loop.hold(False) if release == "hold" else loop.reset()
        assert ok and "inactive" in message, message
        assert "following" not in message, message
        loop.start()
        assert not executor.hold_requested and not loop.operator_hold, release
        chunk, pose = _small_chunk(executor, clock[0])
        assert executor.submit(chunk, clock[0], pose).accepted, release


def test_chunks_are_refused_as_inactive_while_stopped_whatever_the_services_said():
    """While stopped nothing ticks: a chunk must be refused with that reason, not accepted
    (after a hold(false) or reset released the stop's hold) nor refused as a "hold requested"
    nobody requested."""
    loop, executor, clock = _stopped_loop()
    chunk, _ = _small_chunk(executor, clock[0])
    for action in (lambda: None, lambda: loop.hold(False), loop.reset):
        action()
        result = loop.submit_prepared(executor.prepare(chunk), clock[0])
        assert not result.accepted and result.reason.startswith("inactive:"), result.reason
    loop.start()
    assert loop.submit_prepared(executor.prepare(chunk), clock[0]).accepted
