"""The franky backend against a fake ``franky`` module mirroring the real API surface."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from hw_drivers import health as hl
from hw_drivers.backends.base import BackendError
from hw_drivers.backends.franky_backend import FrankyBackend
from tests import fake_franky

NAMES = [f"panda_joint{i}" for i in range(1, 8)] + ["gripper"]
LOWER = [-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973, 0.0]
UPPER = [2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973, 1.0]


HOME = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785, 0.0])


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def rig(monkeypatch):
    franky = fake_franky.module()
    monkeypatch.setitem(sys.modules, "franky", franky)
    clock = Clock()
    backend = FrankyBackend(
        NAMES, "10.0.0.2", motion_rate=50.0, lower=LOWER, upper=UPPER, clock=clock
    )
    backend.connect()
    backend.enable()
    yield backend, franky.Robot.instances[0], franky.Gripper.instances[0], clock
    backend.disconnect()


def test_state_comes_from_the_joint_state_and_the_cached_gripper_width(rig):
    backend, robot, _, _ = rig
    reading = backend.read_state()
    np.testing.assert_allclose(reading.positions[:7], robot.q)
    assert reading.positions[7] == pytest.approx(0.0)  # 8 cm open = closure 0
    assert robot.calls.recovers == 1 and robot.relative_dynamics_factor == 0.2


def test_the_arm_follows_a_waypoint_motion_that_keeps_the_executor_velocity(rig):
    backend, robot, _, _ = rig
    q = np.array([0.1, -0.7, 0.05, -2.3, 0.0, 1.6, 0.8, 0.4])
    v = np.array([0.2, -0.1, 0.0, 0.3, 0.0, 0.0, -0.2, 0.0])
    backend.write_command(q, v)
    [(motion, asynchronous)] = robot.calls.moves
    assert asynchronous is True
    assert isinstance(motion, fake_franky.JointWaypointMotion)
    first, rest = motion.waypoints
    np.testing.assert_allclose(first.target.position, q[:7])
    np.testing.assert_allclose(first.target.velocity, v[:7])  # not dropped
    np.testing.assert_allclose(rest.target.position, q[:7] + v[:7] * 0.02)
    np.testing.assert_allclose(rest.target.velocity, 0.0)


def test_the_rest_point_stays_inside_the_joint_limits(rig):
    backend, robot, _, _ = rig
    q = np.array([2.89, -0.7, 0.0, -0.08, 0.0, 1.6, 0.8, 0.0])
    backend.write_command(q, np.array([2.0, 0, 0, 2.0, 0, 0, 0, 0]))
    rest = robot.calls.moves[0][0].waypoints[1].target.position
    assert rest[0] == pytest.approx(2.8973) and rest[3] == pytest.approx(-0.0698)


def test_motions_are_retargeted_at_the_motion_rate_not_every_tick(rig):
    backend, robot, _, clock = rig
    for k in range(250):  # one second at 250 Hz
        clock.now = k / 250.0
        backend.write_command(np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785, 0.0]))
    assert len(robot.calls.moves) == 50
    assert len(backend.command_log) == 250


def test_the_gripper_is_not_touched_on_the_control_path(rig):
    backend, _, gripper, clock = rig
    reads, moves = gripper.width_reads, len(gripper.moves)
    for k in range(20):
        clock.now = k / 250.0
        backend.read_state()
        backend.write_command(np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785, 0.8]))
    assert gripper.width_reads == reads and len(gripper.moves) == moves
    backend.service_gripper()  # the gripper thread's round
    assert gripper.moves == [(pytest.approx(0.2 * 0.08), 0.1)]
    backend.service_gripper()  # the next round reads the new width
    assert backend.read_state().positions[7] == pytest.approx(0.8)


def test_gripper_targets_wait_for_the_previous_move_and_ignore_jitter(rig):
    backend, _, gripper, _ = rig
    gripper.finish_moves = False
    command = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785, 1.0])
    backend.write_command(command)
    backend.service_gripper()
    command[7] = 0.0
    backend.write_command(command)
    backend.service_gripper()  # previous move still running: nothing new sent
    assert len(gripper.moves) == 1
    gripper.futures[-1].done = True
    backend.service_gripper()
    assert [w for w, _ in gripper.moves] == [pytest.approx(0.0), pytest.approx(0.08)]
    command[7] = 0.01  # within the deadband
    backend.write_command(command)
    backend.service_gripper()
    assert len(gripper.moves) == 2


def test_an_asynchronous_motion_error_fails_the_next_command(rig):
    backend, robot, _, clock = rig
    backend.write_command(HOME)
    robot.fail_motion(fake_franky.ControlException("joint_velocity_violation"))
    clock.now = 1.0
    with pytest.raises(BackendError, match="ControlException: joint_velocity_violation"):
        backend.write_command(HOME)


def test_disable_reports_every_error(rig):
    backend, robot, gripper, _ = rig
    robot.stop_error = fake_franky.NetworkException("connection lost")
    gripper.stop_error = fake_franky.GripperException("gripper not homed")
    with pytest.raises(BackendError) as info:
        backend.disable()
    assert "arm stop failed: NetworkException: connection lost" in str(info.value)
    assert "gripper stop failed: GripperException: gripper not homed" in str(info.value)
    assert robot.calls.stops == 1


def test_gripper_read_errors_show_in_health(rig):
    backend, _, gripper, _ = rig

    def broken(self):
        raise fake_franky.GripperException("timeout")

    type(gripper).width = property(broken)
    try:
        backend.service_gripper()
        [entry] = backend.health()
        assert entry.level == hl.ERROR and "GripperException: timeout" in entry.message
    finally:
        type(gripper).width = fake_franky.Gripper.__dict__["width"]
