"""URDF link frames from joint positions (the pip path's robot_state_publisher), checked against
poses written by hand for a small arm (tests/fixtures/pan_slide_tilt.urdf)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pinocchio")

from molmoact2.urdf_frames import UrdfFrames, parse_urdf_joints

URDF = Path(__file__).resolve().parents[1] / "fixtures" / "pan_slide_tilt.urdf"


def tool_position(theta: float, d: float, phi: float) -> np.ndarray:
    """The fixture's tool origin in base_link (derived in the fixture's comment)."""
    px, py = 0.4 + d + 0.15 * math.sin(phi), -0.15 * math.cos(phi)
    return np.array(
        [math.cos(theta) * px - math.sin(theta) * py, math.sin(theta) * px + math.cos(theta) * py,
         0.2]
    )


def compose(edges: list[tuple[str, str, np.ndarray]], root: str, frame: str) -> np.ndarray:
    parent_of = {child: (parent, pose) for parent, child, pose in edges}
    pose = np.eye(4)
    while frame != root:
        parent, child_in_parent = parent_of[frame]
        pose = child_in_parent @ pose
        frame = parent
    return pose


@pytest.fixture(scope="module")
def frames() -> UrdfFrames:
    return UrdfFrames(URDF)


def test_joints_split_into_fixed_and_movable(frames):
    assert frames.movable == ["pan", "slide", "tilt"]
    assert [(p, c) for p, c, _ in frames.fixed_transforms()] == [("tilt_link", "tool")]
    assert frames.root_link == "base_link"
    np.testing.assert_allclose(frames.fixed_transforms()[0][2][:3, 3], [0, 0, 0.15], atol=1e-12)


# Joint values over each joint's range (tilt beyond one turn), drawn once from a fixed seed.
SAMPLES = np.random.default_rng(20).uniform([-3.0, 0.0, -6.0], [3.0, 0.5, 6.0], (40, 3))


@pytest.mark.parametrize(("theta", "d", "phi"), SAMPLES.tolist())
def test_published_edges_compose_to_the_analytic_tool_pose(frames, theta, d, phi):
    q = frames.positions_from(["tilt", "pan", "slide", "gripper"], [phi, theta, d, 0.7])
    edges = frames.moving_transforms(q) + frames.fixed_transforms()
    # One edge per URDF joint, parent link to child link, like robot_state_publisher.
    assert sorted(c for _, c, _ in edges) == ["pan_link", "slide_link", "tilt_link", "tool"]
    tool = compose(edges, "base_link", "tool")
    np.testing.assert_allclose(tool[:3, 3], tool_position(theta, d, phi), atol=1e-9)
    # The joint edges are the joint's origin times its motion.
    pan = {c: pose for _, c, pose in edges}["pan_link"]
    np.testing.assert_allclose(pan[:3, 3], [0, 0, 0.2], atol=1e-12)
    np.testing.assert_allclose(pan[:2, 0], [math.cos(theta), math.sin(theta)], atol=1e-12)
    slide = {c: pose for _, c, pose in edges}["slide_link"]
    expected_slide = np.eye(4)
    expected_slide[0, 3] = 0.1 + d
    np.testing.assert_allclose(slide, expected_slide, atol=1e-12)
    # Tool z axis: Rz(theta) Rx(pi/2) Ry(phi) e_z.
    expected_z = np.array([math.cos(theta) * math.sin(phi), math.sin(theta) * math.sin(phi),
                           0.0])
    expected_z += np.array([math.sin(theta) * math.cos(phi), -math.cos(theta) * math.cos(phi),
                            0.0])
    np.testing.assert_allclose(tool[:3, 2], expected_z, atol=1e-9)


def test_link_positions_match_the_composed_edges(frames):
    q = np.array([0.3, 0.2, -1.1])
    (tool,) = frames.link_positions(q, ["tool"])
    np.testing.assert_allclose(tool, tool_position(0.3, 0.2, -1.1), atol=1e-9)


@pytest.mark.parametrize(
    ("names", "positions", "message"),
    [
        (["pan", "slide"], [0.0, 0.0], "lacks tilt"),
        (["pan", "slide", "tilt"], [0.0, float("nan"), 0.0], "non-finite positions for slide"),
        (["pan", "slide", "tilt"], [0.0, 0.0], "3 names but 2 positions"),
    ],
)
def test_bad_joint_states_are_refused(frames, names, positions, message):
    with pytest.raises(ValueError, match=message):
        frames.positions_from(names, positions)


def test_unsupported_or_broken_urdfs_are_refused(tmp_path):
    floating = tmp_path / "floating.urdf"
    floating.write_text(
        '<robot name="r"><link name="a"/><link name="b"/>'
        '<joint name="j" type="floating"><parent link="a"/><child link="b"/></joint></robot>'
    )
    with pytest.raises(ValueError, match="floating"):
        parse_urdf_joints(floating)
    broken = tmp_path / "broken.urdf"
    broken.write_text("<robot")
    with pytest.raises(ValueError, match="cannot read URDF"):
        parse_urdf_joints(broken)


def test_chunk_end_effector_path_is_the_fk_of_every_row():
    """With a URDF the chunk markers trace the end effector: one point per row, by FK."""
    from molmoact2_common.rigid_body import RigidBodyModel
    from molmoact2_policy.chunk_msgs import end_effector_markers_msg, end_effector_paths

    # Chunk columns in the policy's order, including one the URDF does not have.
    names = ("slide", "gripper", "pan", "tilt")
    model = RigidBodyModel.from_urdf(str(URDF), names, allow_missing=True)
    rows = np.array([[0.1 * k, 0.5, 0.2 * k - 0.5, 0.3 * k] for k in range(6)])
    paths = end_effector_paths(model, rows, ["tool", "slide_link"])
    assert paths.shape == (6, 2, 3)
    for k, (d, _, theta, phi) in enumerate(rows):
        np.testing.assert_allclose(paths[k, 0], tool_position(theta, d, phi), atol=1e-9)
    msg = end_effector_markers_msg(paths, stamp_ns=10**9, links=["tool", "slide_link"],
                                   frame_id=model.root_frame)
    strip, end = msg.markers[0], msg.markers[1]
    assert strip.header.frame_id == "base_link" and strip.ns == "tool_path"
    assert [(p.x, p.y, p.z) for p in strip.points] == [tuple(p) for p in paths[:, 0]]
    assert end.type == end.SPHERE and end.pose.position.x == paths[-1, 0, 0]
    assert len(msg.markers) == 4


def test_the_droid_panda_urdf_puts_the_hand_where_franka_says_at_the_ready_pose():
    """config/droid_panda.urdf (from Franka's DH table) at the ready pose
    q = (0, -pi/4, 0, -3pi/4, 0, pi/2, pi/4): Franka's documented end-effector pose there is
    0.307 m ahead, 0.487 m up (flange 0.590 m), pointing straight down."""
    from molmoact2 import graph

    frames = UrdfFrames(graph.config_dir() / "droid_panda.urdf")
    assert frames.movable == [f"panda_joint{i}" for i in range(1, 8)]
    q = np.array([0, -math.pi / 4, 0, -3 * math.pi / 4, 0, math.pi / 2, math.pi / 4])
    tcp, flange = frames.link_positions(q, ["panda_hand_tcp", "panda_link8"])
    np.testing.assert_allclose(tcp, [0.307, 0.0, 0.487], atol=1.5e-3)
    np.testing.assert_allclose(flange, [0.307, 0.0, 0.590], atol=1.5e-3)
    edges = frames.moving_transforms(q) + frames.fixed_transforms()
    hand = compose(edges, "panda_link0", "panda_hand_tcp")
    np.testing.assert_allclose(hand[:3, 2], [0, 0, -1], atol=1e-9)  # approach axis down
