"""RigidBodyModel (pinocchio) against the analytic two-link arm of tests/fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from molmoact2_common.rigid_body import RigidBodyError, RigidBodyModel

ARM_URDF = Path(__file__).resolve().parents[1] / "fixtures" / "two_link_arm.urdf"
# Numbers of the fixture URDF.
M1, M2 = 2.0, 1.5
L1, L2 = 0.5, 0.3
MOUNT_Z = 0.1
G = 9.81

ANGLES = [(0.0, 0.0), (0.3, -0.7), (1.2, 0.4), (-0.9, 2.1), (np.pi / 2, 0.0), (2.5, -1.3)]


def analytic_gravity(q1: float, q2: float) -> np.ndarray:
    tau2 = M2 * G * L2 * np.cos(q1 + q2)
    tau1 = G * (M1 * L1 * np.cos(q1) + M2 * (L1 * np.cos(q1) + L2 * np.cos(q1 + q2)))
    return np.array([tau1, tau2])


def pitch(angle: float, origin: tuple[float, float, float]) -> np.ndarray:
    """Pose of a frame turned by ``angle`` about -y (x towards +z) at ``origin``."""
    c, s = np.cos(angle), np.sin(angle)
    pose = np.eye(4)
    pose[:3, :3] = [[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]]
    pose[:3, 3] = origin
    return pose


@pytest.fixture(scope="module")
def arm() -> RigidBodyModel:
    return RigidBodyModel.from_urdf(str(ARM_URDF), ["shoulder", "elbow"])


@pytest.mark.parametrize("q", ANGLES)
def test_gravity_torques_match_the_analytic_arm(arm: RigidBodyModel, q: tuple) -> None:
    np.testing.assert_allclose(arm.gravity_torques(q), analytic_gravity(*q), atol=1e-9)


def test_gravity_torques_follow_the_callers_joint_order() -> None:
    swapped = RigidBodyModel.from_urdf(str(ARM_URDF), ["elbow", "shoulder"])
    q1, q2 = 0.4, -0.2
    np.testing.assert_allclose(
        swapped.gravity_torques([q2, q1]), analytic_gravity(q1, q2)[::-1], atol=1e-9
    )


@pytest.mark.parametrize("q", ANGLES)
def test_link_poses_match_the_analytic_arm(arm: RigidBodyModel, q: tuple) -> None:
    q1, q2 = q
    elbow = (L1 * np.cos(q1), 0.0, MOUNT_Z + L1 * np.sin(q1))
    tip = (
        elbow[0] + L2 * np.cos(q1 + q2),
        0.0,
        elbow[2] + L2 * np.sin(q1 + q2),
    )
    expected = {
        "base_link": np.eye(4),
        "link1": pitch(q1, (0.0, 0.0, MOUNT_Z)),
        "link2": pitch(q1 + q2, elbow),
        "tool": pitch(q1 + q2, tip),
    }
    poses = arm.link_poses(q)
    assert set(poses) == set(expected)
    for name, pose in expected.items():
        np.testing.assert_allclose(poses[name], pose, atol=1e-12, err_msg=name)


def test_root_frame_and_links(arm: RigidBodyModel) -> None:
    assert arm.root_frame == "base_link"
    assert set(arm.link_names) == {"base_link", "link1", "link2", "tool"}


def test_missing_joint_is_refused_unless_allowed() -> None:
    with pytest.raises(RigidBodyError, match="gripper"):
        RigidBodyModel.from_urdf(str(ARM_URDF), ["shoulder", "elbow", "gripper"])
    arm = RigidBodyModel.from_urdf(
        str(ARM_URDF), ["shoulder", "elbow", "gripper"], allow_missing=True
    )
    torques = arm.gravity_torques([0.3, 0.2, 0.9])
    np.testing.assert_allclose(torques[:2], analytic_gravity(0.3, 0.2), atol=1e-9)
    assert torques[2] == 0.0


def test_bad_input_gets_a_clear_error(arm: RigidBodyModel, tmp_path: Path) -> None:
    with pytest.raises(RigidBodyError, match="expected 2 joint values"):
        arm.gravity_torques([0.1])
    with pytest.raises(RigidBodyError, match="finite"):
        arm.link_poses([np.nan, 0.0])
    with pytest.raises(RigidBodyError, match="does not exist"):
        RigidBodyModel.from_urdf(str(tmp_path / "nope.urdf"), ["shoulder"])
    broken = tmp_path / "broken.urdf"
    broken.write_text("<robot name='x'><link name='a'/><joint name='j'")
    with pytest.raises(RigidBodyError, match="cannot load URDF"):
        RigidBodyModel.from_urdf(str(broken), ["j"])


def test_without_pinocchio_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pinocchio", None)
    with pytest.raises(RigidBodyError, match="pip install pin"):
        RigidBodyModel.from_urdf(str(ARM_URDF), ["shoulder", "elbow"])


def test_gravity_bounds_are_the_analytic_maximum_of_the_two_link_arm(arm: RigidBodyModel) -> None:
    # Both links horizontal and straight is where gravity loads each joint most.
    expected = G * np.array([M1 * L1 + M2 * (L1 + L2), M2 * L2])
    np.testing.assert_allclose(arm.gravity_torque_bounds(), expected, rtol=1e-12)
    np.testing.assert_allclose(np.abs(arm.gravity_torques([0.0, 0.0])), expected, rtol=1e-12)
    grid = np.linspace(-np.pi, np.pi, 25)
    worst = np.max([np.abs(arm.gravity_torques([a, b])) for a in grid for b in grid], axis=0)
    assert np.all(worst <= expected + 1e-9)


def test_a_prismatic_joint_is_bounded_by_the_weight_it_carries(tmp_path: Path) -> None:
    urdf = tmp_path / "lift.urdf"
    urdf.write_text(
        """<robot name="lift">
  <link name="base"/>
  <link name="carriage">
    <inertial><origin xyz="0.2 0 0"/><mass value="2.0"/>
      <inertia ixx="0.01" iyy="0.01" izz="0.01" ixy="0" ixz="0" iyz="0"/></inertial>
  </link>
  <joint name="lift" type="prismatic">
    <parent link="base"/><child link="carriage"/><axis xyz="0 0 1"/>
    <limit lower="0" upper="0.5" effort="100" velocity="1"/>
  </joint>
</robot>"""
    )
    lift = RigidBodyModel.from_urdf(str(urdf), ["lift"])
    np.testing.assert_allclose(lift.gravity_torque_bounds(), [2.0 * G])
    np.testing.assert_allclose(lift.gravity_torques([0.3]), [2.0 * G])
    lower, upper = lift.position_limits()
    assert (lower[0], upper[0]) == (0.0, 0.5)
