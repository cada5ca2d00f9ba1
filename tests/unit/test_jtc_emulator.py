"""The joint_trajectory_controller emulator: refusals, replacement, hold and the lagging arm.

Golden values are worked by hand: linear segments ``p0 + (p1 - p0) t / T``; the cubic from rest
to rest over distance d in T is ``d (3s^2 - 2s^3)`` with velocity ``6 d s (1 - s) / T``
(``s = t / T``); the arm's first-order step is ``c + (p - c) e^(-dt / lag)``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from hw_drivers.emulators.jtc_emulator import NONZERO_STAMP, JtcConfig, JtcEmulator
from hw_drivers.trajectory import JointTrajectoryData, TrajectoryPoint

J = ("a", "b")


def traj(*points, names=J, stamp=0.0):
    return JointTrajectoryData(
        tuple(names),
        tuple(
            TrajectoryPoint(np.asarray(p, float), None if v is None else np.asarray(v, float), t)
            for p, v, t in points
        ),
        stamp,
    )


def emulator(home=(0.0, 0.0), names=J, **config):
    return JtcEmulator(JtcConfig(tuple(names), **config), list(home))


def test_holds_the_pose_at_activation_until_a_trajectory_comes():
    jtc = emulator(home=(0.3, -0.2), lag=0.05)
    for t in (0.0, 0.01, 0.5):
        s = jtc.update(t)
        assert list(s.positions) == [0.3, -0.2] and list(s.velocities) == [0.0, 0.0]
        assert list(s.measured_positions) == [0.3, -0.2]
    assert jtc.taken == [] and jtc.refusals == []


def test_a_refused_message_leaves_the_running_trajectory_playing_on():
    jtc = emulator(lag=0.0)
    assert jtc.receive(0.0, traj(([1.0, 2.0], None, 1.0))) is None
    jtc.update(0.0)  # taken here, from the measured (0, 0)
    s = jtc.update(0.5)
    assert list(s.positions) == pytest.approx([0.5, 1.0])
    assert list(s.velocities) == pytest.approx([1.0, 2.0])
    # The old "hold" (an empty trajectory) and a trajectory ending in motion: refused, counted.
    assert jtc.receive(0.5, traj()) == "empty trajectory received"
    moving = traj(([0.0, 0.0], [0.1, 0.0], 0.2))
    assert jtc.receive(0.6, moving).startswith("velocity of last trajectory point of joint a")
    assert [t for t, _ in jtc.refusals] == [0.5, 0.6]
    assert list(jtc.update(0.75).positions) == pytest.approx([0.75, 1.5])
    # After its last point the controller holds it, at rest.
    s = jtc.update(2.0)
    assert list(s.positions) == [1.0, 2.0] and list(s.velocities) == [0.0, 0.0]
    assert len(jtc.taken) == 1 and jtc.running_until == pytest.approx(1.0)


def test_nonzero_stamp_and_foreign_joints_are_refused():
    jtc = emulator()
    assert jtc.receive(0.0, traj(([1.0, 2.0], None, 1.0), stamp=3.0)) == NONZERO_STAMP
    reason = jtc.receive(0.0, traj(([1.0, 2.0], None, 1.0), names=("a", "x")))
    assert reason == "incoming joint x doesn't match the controller's joints"
    assert len(jtc.refusals) == 2


def test_cubic_from_rest_with_point_velocities():
    jtc = emulator(lag=0.0)
    jtc.receive(0.0, traj(([1.0, -1.0], [0.0, 0.0], 1.0)))
    jtc.update(0.0)
    s = jtc.update(0.25)  # s = 0.25: 3/16 - 2/64 = 0.15625, velocity 6 * 0.25 * 0.75 = 1.125
    assert list(s.positions) == pytest.approx([0.15625, -0.15625])
    assert list(s.velocities) == pytest.approx([1.125, -1.125])
    s = jtc.update(0.5)
    assert list(s.positions) == pytest.approx([0.5, -0.5])
    assert list(s.velocities) == pytest.approx([1.5, -1.5])


def test_a_new_trajectory_starts_from_the_measured_state_by_default():
    jtc = emulator(home=(0.0,), names=("a",), lag=0.1)
    jtc.receive(0.0, traj(([1.0], None, 1.0), names=("a",)))
    jtc.update(0.0)
    s = jtc.update(0.1)  # the arm held 0 over the step; the command moves on
    assert s.measured_positions[0] == 0.0 and s.positions[0] == pytest.approx(0.1)
    s = jtc.update(0.2)  # the arm followed 0.1 for one time constant
    assert s.measured_positions[0] == pytest.approx(0.1 * (1 - math.exp(-1)))
    assert s.measured_velocities[0] == pytest.approx(1 - math.exp(-1))
    jtc.receive(0.2, traj(([0.0], None, 0.5), names=("a",)))
    s = jtc.update(0.3)
    arm = 0.2 + (0.1 * (1 - math.exp(-1)) - 0.2) * math.exp(-1)  # 0.1496785
    assert s.measured_positions[0] == pytest.approx(arm)
    # Taken at 0.3 from where the arm is, not from the command (0.2): linear to 0 over 0.5 s.
    assert s.positions[0] == pytest.approx(arm) and arm == pytest.approx(0.1496785, abs=1e-7)
    assert s.velocities[0] == pytest.approx(-arm / 0.5)
    assert jtc.update(0.55).positions[0] == pytest.approx(arm / 2)


def test_interpolate_from_desired_state_starts_from_the_last_command_and_its_time():
    jtc = emulator(home=(0.0,), names=("a",), lag=0.1, interpolate_from_desired_state=True)
    jtc.receive(0.0, traj(([1.0], None, 1.0), names=("a",)))
    jtc.update(0.0)
    jtc.update(0.1)
    jtc.update(0.2)  # command 0.2, written at 0.2
    jtc.receive(0.2, traj(([0.0], None, 0.5), names=("a",)))
    s = jtc.update(0.3)
    # From (0.2 at t = 0.2) to (0 at 0.3 + 0.5): 0.2 - 0.2 * 0.1 / 0.6.
    assert s.positions[0] == pytest.approx(0.2 - 0.2 / 6)
    assert s.velocities[0] == pytest.approx(-0.2 / 0.6)
    assert jtc.update(0.55).positions[0] == pytest.approx(0.2 - 0.2 * 0.35 / 0.6)


def test_the_newest_message_wins_between_two_updates_and_joints_are_sorted():
    jtc = emulator(lag=0.0)
    jtc.update(0.0)
    jtc.receive(0.01, traj(([5.0, 5.0], None, 1.0)))
    jtc.receive(0.02, traj(([2.0, 1.0], None, 1.0), names=("b", "a")))
    jtc.update(0.05)
    [(at, taken)] = jtc.taken
    assert at == 0.05 and taken.joint_names == J
    assert [list(p.positions) for p in taken.points] == [[1.0, 2.0]]
    assert list(jtc.update(0.55).positions) == pytest.approx([0.5, 1.0])


def test_an_ideal_arm_is_one_control_period_behind_the_command():
    jtc = emulator(home=(0.0,), names=("a",), lag=0.0)
    jtc.receive(0.0, traj(([1.0], None, 1.0), names=("a",)))
    jtc.update(0.0)
    commands = [jtc.update(t).positions[0] for t in (0.01, 0.02)]
    assert jtc.update(0.03).measured_positions[0] == pytest.approx(commands[-1])
    assert jtc.arm.velocities[0] == pytest.approx(1.0)


def test_initial_pose_must_match_the_joints():
    with pytest.raises(ValueError, match="1 initial positions for 2 joints"):
        emulator(home=(0.0,))


def test_a_repeated_joint_name_is_taken_and_commands_the_left_out_joint_a_stale_value():
    """As joint_trajectory_controller (ros-controls/ros2_controllers,
    ``joint_trajectory_controller/src/joint_trajectory_controller.cpp``,
    ``sort_to_local_joint_order``): the message [a, a] passes validation (two names for two
    joints, both known); a gets the later column, b what the static buffer holds: 0.0 before
    any message, else the value the last remap wrote there. The emulator used to fill b from
    its command (as a partial goal), safer than the real controller."""
    jtc = emulator(home=(0.3, -0.2), lag=0.0)
    assert jtc.receive(0.0, traj(([0.5, 0.7], None, 1.0), names=("a", "a"))) is None
    jtc.update(0.0)
    s = jtc.update(1.0)
    assert list(s.positions) == pytest.approx([0.7, 0.0])
    # After a well-formed message wrote b = 0.4, a repeated name leaves b at 0.4.
    assert jtc.receive(1.0, traj(([0.1, 0.4], None, 0.5))) is None
    jtc.update(1.0)
    assert jtc.receive(2.0, traj(([0.2, 0.9], None, 0.5), names=("a", "a"))) is None
    jtc.update(2.0)
    assert list(jtc.update(2.5).positions) == pytest.approx([0.9, 0.4])
