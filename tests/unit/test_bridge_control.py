"""The trajectory bridge's e-stop, hold and reset answer as the driver's executor does."""

from __future__ import annotations

import numpy as np
import pytest

from hw_drivers.bridge_control import MIN_STOP_TIME, BridgeControl, stop_trajectory
from hw_drivers.executor import ChunkExecutor, ExecutorConfig
from hw_drivers.safety import JointLimits, SafetyConfig

NAMES = ("a", "b")


def _executor() -> ChunkExecutor:
    limits = JointLimits(
        lower=(-1.0, -1.0), upper=(1.0, 1.0), max_velocity=(1.0, 1.0), max_acceleration=(5.0, 5.0)
    )
    executor = ChunkExecutor(NAMES, limits, SafetyConfig(), ExecutorConfig())
    executor.start(np.zeros(2), 0.0)
    return executor


def test_estop_and_hold_answer_with_the_executors_words():
    bridge, executor = BridgeControl(), _executor()
    assert bridge.hold(True) == executor.hold(True)
    assert bridge.state("idle") == "holding"
    assert bridge.hold(False) == executor.hold(False)
    assert bridge.refusal() == ""
    assert bridge.estop() == executor.estop()
    assert bridge.state("idle") == "estop"
    assert bridge.hold(False) == executor.hold(False)  # refused: the e-stop stays
    assert not bridge.hold(False)[0]
    assert bridge.refusal().startswith("estop:")
    bridge.hold(True)
    assert bridge.refusal().startswith("estop:")  # the e-stop wins over a hold


def test_reset_clears_only_with_a_measured_pose():
    bridge = BridgeControl()
    bridge.estop()
    bridge.hold(True)
    ok, message = bridge.reset(measured=False)
    assert not ok and bridge.estopped and bridge.hold_requested
    ok, message = bridge.reset(measured=True)
    assert ok and "cleared e-stop, hold" in message
    assert bridge.refusal() == "" and bridge.state("idle") == "idle"


def test_stop_decelerates_at_the_acceleration_limit_and_never_comes_back():
    amax = np.array([2.0, 4.0])
    p, v = np.array([0.1, -0.2]), np.array([1.0, -0.4])
    stop = stop_trajectory(NAMES, p, v, amax, np.array([-1, -1]), np.array([1, 1]), 0.0)
    [point] = stop.points
    duration = point.time_from_start
    assert duration == pytest.approx(0.5)  # the slowest joint: 1.0 / 2.0
    assert point.velocities.tolist() == [0.0, 0.0]
    # The controller's cubic from (p, v) to (target, 0) over T: constant deceleration v / T,
    # within the limit, moving one way only.
    t = np.linspace(0.0, duration, 51)[:, None]
    target = point.positions
    a = (3 * (target - p) - 2 * v * duration) / duration**2
    b = (-2 * (target - p) + v * duration) / duration**3
    velocity = v + 2 * a * t + 3 * b * t**2
    assert np.all(velocity * np.sign(v) >= -1e-12)
    assert np.all(np.abs(2 * a + 6 * b * t) <= amax + 1e-9)


def test_stop_of_an_arm_at_rest_or_of_unknown_speed_holds_the_measured_pose():
    p = np.array([0.3, 0.9])
    for velocity in (None, np.array([np.nan, 0.0]), np.zeros(2)):
        stop = stop_trajectory(NAMES, p, velocity, np.ones(2), -np.ones(2), np.ones(2), 0.05)
        assert stop.points[0].positions.tolist() == p.tolist()
        assert stop.points[0].time_from_start == MIN_STOP_TIME
    # Never past a position limit.
    stop = stop_trajectory(NAMES, p, np.array([0.0, 2.0]), np.ones(2), -np.ones(2), np.ones(2), 0)
    assert stop.points[0].positions[1] == 1.0
