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
