"""Chunk -> JointTrajectory timing (latency skip, zero-stamp semantics) and gripper split."""

from __future__ import annotations

import numpy as np
import pytest

from hw_drivers.chunk import Chunk
from hw_drivers.trajectory import (
    chunk_to_trajectory,
    default_gripper_joints,
    finite_difference_velocities,
    seconds_to_duration,
    settling_time,
)

NAMES = ("j1", "j2", "gripper")


def chunk(stamp=100.0, start_offset=0.1, step_dt=0.1, horizon=5) -> Chunk:
    k = np.arange(horizon, dtype=float)[:, None]
    positions = np.hstack([0.1 * k, -0.2 * k, np.full((horizon, 1), 0.5) + 0.1 * k])
    return Chunk(stamp, start_offset, step_dt, NAMES, positions)


def test_fresh_chunk_keeps_every_point_at_its_phase():
    # Received 0.05 s after capture: action k applies at 100.1 + 0.1 k, i.e. 0.05 + 0.1 k from now.
    out = chunk_to_trajectory(chunk(), now=100.05, gripper_joints=("gripper",))
    assert out.skipped == 0
    traj = out.trajectory
    assert traj.stamp == 0.0  # start on receipt
    assert traj.joint_names == ("j1", "j2")
    # The last point settles: 1.5 x the spacing after the one before, the controller's cubic
    # from the chunk's speed to rest (see test_the_last_point_settles_without_speeding_up).
    np.testing.assert_allclose(
        [p.time_from_start for p in traj.points], [0.05, 0.15, 0.25, 0.35, 0.50], atol=1e-12
    )
    np.testing.assert_allclose(traj.points[2].positions, [0.2, -0.4])
    without = chunk_to_trajectory(chunk(), now=100.05, compute_velocities=False)
    np.testing.assert_allclose(  # linear segments: no spline to settle
        [p.time_from_start for p in without.trajectory.points],
        [0.05, 0.15, 0.25, 0.35, 0.45],
        atol=1e-12,
    )


def test_latency_skip_drops_points_already_due():
    # 0.33 s late: actions at 100.1, 100.2, 100.3 are past; 100.4 and 100.5 remain.
    out = chunk_to_trajectory(chunk(), now=100.33, gripper_joints=("gripper",))
    assert out.skipped == 3
    np.testing.assert_allclose([p.time_from_start for p in out.trajectory.points], [0.07, 0.22])
    np.testing.assert_allclose(out.trajectory.points[0].positions, [0.3, -0.6])
    # The gripper gets the target of the first kept point, at the same time.
    np.testing.assert_allclose(out.gripper.positions, [0.8])
    assert out.gripper.time_from_start == pytest.approx(0.07)
    assert out.gripper.joint_names == ("gripper",)


def test_point_due_exactly_now_and_lead_time():
    assert chunk_to_trajectory(chunk(), now=100.1).skipped == 1
    out = chunk_to_trajectory(chunk(), now=100.05, min_lead_time=0.1)
    assert out.skipped == 1 and out.trajectory.points[0].time_from_start == pytest.approx(0.15)


def test_fully_stale_chunk_gives_nothing():
    out = chunk_to_trajectory(chunk(), now=101.0, gripper_joints=("gripper",))
    assert out.trajectory is None and out.gripper is None and out.skipped == 5


def test_velocities_and_controller_names():
    out = chunk_to_trajectory(
        chunk(), now=100.0, gripper_joints=("gripper",), controller_joint_names=("fr3_j1", "fr3_j2")
    )
    assert out.trajectory.joint_names == ("fr3_j1", "fr3_j2")
    np.testing.assert_allclose(out.trajectory.points[1].velocities, [1.0, -2.0])
    np.testing.assert_allclose(out.trajectory.points[-1].velocities, [0.0, 0.0])  # rest at end
    without = chunk_to_trajectory(chunk(), now=100.0, compute_velocities=False)
    assert without.trajectory.points[0].velocities is None
    assert without.trajectory.joint_names == NAMES  # no gripper split asked for
    with pytest.raises(ValueError, match="controller joint names"):
        chunk_to_trajectory(chunk(), now=100.0, controller_joint_names=("a",))


def test_the_last_point_settles_without_speeding_up():
    from hw_drivers.jtc_model import sample

    # At the chunk's spacing the controller's cubic into the last point at rest runs at 4/3 of
    # the chunk's speed (hand-worked: v(t) = c + 2 c t / T - 3 c t^2 / T^2, peak 4c/3 at T/3).
    out = chunk_to_trajectory(chunk(), now=100.05, gripper_joints=("gripper",))
    points = out.trajectory.points
    a, b = points[-2], points[-1]
    assert b.time_from_start - a.time_from_start == pytest.approx(0.15)  # 1.5 d / v
    span = np.linspace(a.time_from_start, b.time_from_start, 301)
    speeds = np.array([sample(out.trajectory, points[0].positions, None, t)[1] for t in span])
    assert np.all(np.abs(speeds) <= np.abs(a.velocities) + 1e-9)  # steadily down to rest
    assert np.all(np.diff(np.abs(speeds), axis=0) <= 1e-9)
    # Never longer than twice the spacing; joints moving away from the last point ignored.
    assert settling_time(np.zeros(1), np.array([0.1]), np.array([1.0]), 0.1) == 0.2
    assert settling_time(np.zeros(1), np.array([-1.0]), np.array([1.0]), 0.1) == 0.1
    assert settling_time(np.zeros(2), np.array([2.0, 1.0]), np.array([0.1, 0.1]), 0.1) == (
        pytest.approx(0.15)
    )


def test_reorders_to_the_configured_joint_order():
    out = chunk_to_trajectory(
        chunk(), now=100.0, joint_names=("j2", "gripper", "j1"), gripper_joints=("gripper",)
    )
    assert out.trajectory.joint_names == ("j2", "j1")
    np.testing.assert_allclose(out.trajectory.points[1].positions, [-0.2, 0.1])
    with pytest.raises(ValueError, match="missing"):
        chunk_to_trajectory(chunk(), now=100.0, joint_names=("j1", "j9", "gripper"))


def test_helpers():
    v = finite_difference_velocities(np.array([[0.0], [1.0], [4.0]]), 0.5)
    np.testing.assert_allclose(v[:, 0], [2.0, 4.0, 0.0])
    assert seconds_to_duration(1.25) == (1, 250_000_000)
    assert seconds_to_duration(0.0) == (0, 0)
    assert default_gripper_joints(["panda_joint1", "panda_gripper"]) == ("panda_gripper",)
    with pytest.raises(ValueError):
        seconds_to_duration(-0.1)


# -- Franka through franky (the other Franka path; franky itself cannot run here) ------------
def test_franky_backend_without_franky_says_how_to_install(monkeypatch):
    import sys
    import types

    from hw_drivers.backends.base import BackendError
    from hw_drivers.backends.franky_backend import FrankyBackend

    monkeypatch.setitem(sys.modules, "franky", None)  # import franky -> ImportError
    params = types.SimpleNamespace(
        joint_names=(*(f"panda_joint{i}" for i in range(1, 8)), "panda_gripper"),
        robot_ip="172.16.0.2",
    )
    backend = FrankyBackend.from_params(params)
    assert backend.gripper_index == 7 and backend.arm_index == list(range(7))
    with pytest.raises(
        BackendError,
        match=r"franky-control is not installed: pip install "
        r"franky-control",
    ):
        backend.connect()
    assert not backend.is_connected
    with pytest.raises(BackendError, match="robot_ip"):
        FrankyBackend(params.joint_names, "")
