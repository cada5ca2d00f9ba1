"""joint_trajectory_controller's acceptance rules and reference, as ``hw_drivers.jtc_model``
mirrors them from ros2_controllers' source, and the bridge's stop without a measured pose.

Golden values are worked by hand from the cubic Hermite basis (h00 = 2s^3 - 3s^2 + 1,
h10 = s^3 - 2s^2 + s, h01 = -2s^3 + 3s^2, h11 = s^3 - s^2 with s = t / T), not from the module.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hw_drivers.bridge_control import MIN_STOP_TIME, SentTrajectory, stop_from_reference
from hw_drivers.jtc_model import bounds, check_trajectory, sample
from hw_drivers.trajectory import JointTrajectoryData, TrajectoryPoint

J = ("j1", "j2")


def traj(*points, names=J):
    return JointTrajectoryData(
        tuple(names),
        tuple(
            TrajectoryPoint(np.asarray(p, float), None if v is None else np.asarray(v, float), t)
            for p, v, t in points
        ),
    )


def test_a_well_formed_trajectory_is_accepted():
    assert check_trajectory(traj(([0, 0], [1, 1], 0.1), ([1, 1], [0, 0], 0.2)), J) is None
    assert check_trajectory(traj(([0, 0], None, 0.1)), J) is None  # positions only


@pytest.mark.parametrize(
    ("trajectory", "reason"),
    [
        (traj(), "empty trajectory received"),  # what the bridge used to send as its stop
        (traj(([0], None, 0.1), names=("j1",)), "don't match the controller joints"),
        (traj(([0, 0], None, 0.1), names=("j1", "x")), "incoming joint x"),
        (traj(([0, 0], [0, 0.5], 0.1)), "last trajectory point of joint j2 is not zero"),
        (traj(([0, 0], None, 0.2), ([1, 1], None, 0.2)), "not strictly increasing"),
        (traj(([0, 0], None, 0.2), ([1, 1], None, 0.1)), "not strictly increasing"),
        (traj(([0, 0, 0], None, 0.1)), "positions at point #0"),
        (traj(([0, 0], [1, 1, 1], 0.1), ([0, 0], None, 0.2)), "velocities at point #0"),
    ],
)
def test_what_the_controller_refuses(trajectory, reason):
    found = check_trajectory(trajectory, J)
    assert found is not None and reason in found, found


def test_partial_goals_and_moving_ends_when_the_controller_allows_them():
    partial = traj(([0], None, 0.1), names=("j1",))
    assert check_trajectory(partial, J, allow_partial_joints_goal=True) is None
    moving = traj(([0, 0], [0.0, 0.5], 0.1))
    assert check_trajectory(moving, J, allow_nonzero_velocity_at_trajectory_end=True) is None
    # float epsilon counts as at rest
    assert check_trajectory(traj(([0, 0], [1e-8, 0], 0.1)), J) is None


def test_linear_between_points_without_velocities():
    t = traj(([0, 2], None, 1.0), ([1, 0], None, 3.0))
    p, v = sample(t, np.array([5.0, 5.0]), None, 2.0)  # halfway through the segment
    assert p == pytest.approx([0.5, 1.0]) and v == pytest.approx([0.5, -1.0])


def test_cubic_between_points_with_velocities():
    # rest to rest over T = 1 from 0 to 1: s = 0.5 -> h01 = 0.5, velocity 6s(1-s)/T = 1.5
    t = traj(([0, 0], [0, 0], 1.0), ([1, -2], [0, 0], 2.0))
    p, v = sample(t, np.zeros(2), None, 1.5)
    assert p == pytest.approx([0.5, -1.0]) and v == pytest.approx([1.5, -3.0])
    # p0 = p1 = 0, v0 = v1 = 1, T = 2, s = 0.5: h10 T v0 + h11 T v1 = 0.25 - 0.25 = 0;
    # velocity (3s^2 - 4s + 1) v0 + (3s^2 - 2s) v1 = -0.25 - 0.25
    t = traj(([0, 0], [1, 1], 1.0), ([0, 0], [1, 1], 3.0), ([0, 0], [0, 0], 4.0))
    p, v = sample(t, np.zeros(2), None, 2.0)
    assert p == pytest.approx([0.0, 0.0]) and v == pytest.approx([-0.5, -0.5])


def test_before_the_first_point_from_the_state_it_started_at():
    t = traj(([1, 1], [0, 0], 0.5))
    # with velocities: the cubic from (start, 0) to (first, 0)
    p, v = sample(t, np.array([0.0, 2.0]), np.zeros(2), 0.25)
    assert p == pytest.approx([0.5, 1.5]) and v == pytest.approx([3.0, -3.0])
    # jazzy, a start state without velocities (no velocity state interface): linear
    p, v = sample(t, np.array([0.0, 2.0]), None, 0.25, zero_start_velocity=False)
    assert p == pytest.approx([0.5, 1.5]) and v == pytest.approx([2.0, -2.0])


def test_a_start_state_without_velocities_is_filled_with_zeros_as_current_releases_do():
    """ros-controls/ros2_controllers ``joint_trajectory_controller/src/trajectory.cpp``,
    ``Trajectory::set_point_before_trajectory_msg``: "If the current state doesn't contain
    velocities / accelerations, but the first trajectory point does, initialize them to zero"
    (#2043, in rolling and the kilted release notes). The model ran that segment linearly, as
    jazzy's controller does. s = 0.25 of T = 0.5: h01 = 3s^2 - 2s^3 = 0.15625, velocity
    6 s (1 - s) d / T = 2.25 d (linear: 0.25 d and 2 d)."""
    t = traj(([1, 1], [0, 0], 0.5))
    p, v = sample(t, np.array([0.0, 2.0]), None, 0.125)
    assert p == pytest.approx([0.15625, 1.84375]) and v == pytest.approx([2.25, -2.25])
    # A first point without velocities: linear either way (nothing to fill for).
    p, v = sample(traj(([1, 1], None, 0.5)), np.array([0.0, 2.0]), None, 0.125)
    assert p == pytest.approx([0.25, 1.75]) and v == pytest.approx([2.0, -2.0])
    # The bounds of that segment: the cubic from rest peaks at 1.5 d / T = 3.
    _, _, fastest = bounds(t, np.array([0.0, 2.0]), None)
    assert fastest[0] == pytest.approx([3.0, 3.0])
    _, _, linear = bounds(t, np.array([0.0, 2.0]), None, zero_start_velocity=False)
    assert linear[0] == pytest.approx([2.0, 2.0])


def test_after_the_last_point_it_holds_the_last_point():
    t = traj(([0, 0], None, 0.5), ([1, 2], None, 1.0))
    p, v = sample(t, np.zeros(2), None, 7.0)
    assert p == pytest.approx([1.0, 2.0]) and v == pytest.approx([0.0, 0.0])


# -- the bridge's stop without a measured pose ------------------------------------------------
LOWER = np.array([-1.0, -2.0])
UPPER = np.array([1.0, 2.0])
AMAX = np.array([5.0, 8.0])


@st.composite
def sent_trajectories(draw):
    n = draw(st.integers(1, 12))
    gaps = draw(st.lists(st.floats(0.01, 0.5), min_size=n, max_size=n))
    times = np.cumsum(gaps)
    pos = st.floats(-1.0, 1.0)
    rows = [np.array([draw(pos), 2.0 * draw(pos)]) for _ in range(n)]
    with_velocities = draw(st.booleans())
    points = []
    for k in range(n):
        v = None
        if with_velocities:
            v = np.zeros(2) if k == n - 1 else np.array([draw(st.floats(-3, 3)) for _ in J])
        points.append(TrajectoryPoint(rows[k], v, float(times[k])))
    start = np.array([draw(pos), 2.0 * draw(pos)])
    start_v = draw(st.none() | st.just(np.array([draw(st.floats(-3, 3)) for _ in J])))
    sent_at = draw(st.floats(0.0, 100.0))
    return SentTrajectory(JointTrajectoryData(J, tuple(points)), sent_at, start, start_v)


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(sent=sent_trajectories(), when=st.floats(-0.1, 1.2), min_time=st.floats(0.0, 0.3))
def test_the_stop_without_a_measured_pose_is_one_the_controller_takes(sent, when, min_time):
    now = sent.sent_at + when * (sent.ends_at - sent.sent_at)
    stop, positions, velocities = stop_from_reference(sent, now, AMAX, LOWER, UPPER, min_time)
    if now >= sent.ends_at:
        assert stop is None  # the controller already holds its last point
        return
    assert stop is not None
    assert check_trajectory(stop, J) is None
    [point] = stop.points
    assert np.all(point.positions >= LOWER) and np.all(point.positions <= UPPER)
    assert np.all(point.velocities == 0.0)
    assert point.time_from_start >= max(MIN_STOP_TIME, min_time)
    # from the reference at its velocity, the deceleration stays within the limits
    assert np.all(np.abs(velocities) / point.time_from_start <= AMAX * (1 + 1e-9) + 1e-12)
    # and the reference is the controller's, not the stale start pose
    expected, _ = sample(
        sent.trajectory, sent.start_positions, sent.start_velocities, now - sent.sent_at
    )
    assert positions == pytest.approx(expected)


def test_nothing_to_stop_when_nothing_was_sent():
    assert stop_from_reference(None, 3.0, AMAX, LOWER, UPPER, 0.0) == (None, None, None)


def test_each_column_goes_to_the_joint_of_its_name_a_repeated_name_leaves_one_stale():
    """ros-controls/ros2_controllers, ``joint_trajectory_controller/src/
    joint_trajectory_controller.cpp`` (``validate_trajectory_msg``: the count and that each name
    is known, nothing about repeats; ``sort_to_local_joint_order``: ``output[mapping[i]] =
    values[i]`` into one static vector) and ``include/joint_trajectory_controller/
    trajectory.hpp`` (``mapping``: the first controller joint of each name; more names than
    joints: an empty mapping, and the values stay as sent)."""
    from hw_drivers.jtc_model import local_order

    assert local_order(["b", "a"], ["a", "b"]) == [1, 0]
    assert local_order(["a", "b"], ["a", "b"]) == [0, 1]
    # a repeated: its later column wins, c is written by no column (a stale value).
    assert local_order(["a", "a", "b"], ["a", "b", "c"]) == [1, 2, None]
    assert check_trajectory(traj(([0, 0], None, 0.1), names=("j1", "j1")), J) is None
    assert local_order(["a", "a", "b"], ["a", "b"]) == [0, 1]
