"""With a URDF, ~/predicted_chunk_markers traces each arm's end effector through the chunk:
one point per chunk row, the forward kinematics of that row, in the URDF's root frame
(issue 20). The node runs as its console entry point with config/yam.yaml values."""

from __future__ import annotations

import numpy as np
import pytest

from tests.ros.policy_node_harness import running_robot, yam_params

pytestmark = pytest.mark.ros


def two_arm_urdf() -> str:
    """A YAM-named bimanual chain (joints 1-6 per arm, grippers absent) rooted at world."""
    parts = ['<robot name="two_arms">', '<link name="world"/>']
    for side, y in (("left", 0.3), ("right", -0.3)):
        parts.append(f'<link name="{side}_base_link"/>')
        parts.append(
            f'<joint name="{side}_mount" type="fixed"><parent link="world"/>'
            f'<child link="{side}_base_link"/><origin xyz="0 {y} 0" rpy="0 0 0"/></joint>'
        )
        parent = f"{side}_base_link"
        for k in range(1, 7):
            axis = "0 0 1" if k in (1, 4, 6) else "0 1 0"
            parts.append(f'<link name="{side}_link{k}"/>')
            parts.append(
                f'<joint name="{side}_joint{k}" type="revolute"><parent link="{parent}"/>'
                f'<child link="{side}_link{k}"/><origin xyz="0.1 0 0.05" rpy="0 0 0"/>'
                f'<axis xyz="{axis}"/><limit lower="-3" upper="3" effort="1" velocity="1"/>'
                "</joint>"
            )
            parent = f"{side}_link{k}"
    parts.append("</robot>")
    return "".join(parts)


def test_chunk_markers_trace_the_end_effectors_by_fk(tmp_path):
    from molmoact2_common.rigid_body import RigidBodyModel

    urdf = tmp_path / "two_arms.urdf"
    urdf.write_text(two_arm_urdf())
    links = ["left_link6", "right_link6"]
    params = yam_params(urdf=str(urdf), end_effector_links=links)
    def stamp_ns(msg) -> int:
        return msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec

    def paired() -> list:
        """Marker arrays whose chunk (same observation stamp) has arrived too."""
        chunk_stamps = {stamp_ns(c) for c in robot.chunks}
        return [a for a in robot.markers if a.markers and stamp_ns(a.markers[0]) in chunk_stamps]

    with running_robot(params, tmp_path) as robot:
        assert robot.run(20.0, until=lambda: bool(paired()))
        markers = paired()[-1].markers
        chunk = next(c for c in robot.chunks if stamp_ns(c) == stamp_ns(markers[0]))
    strips = [m for m in markers if m.type == m.LINE_STRIP]
    assert [m.ns for m in strips] == ["left_link6_path", "right_link6_path"]
    assert {m.header.frame_id for m in markers} == {"world"}
    names = list(chunk.joint_names)
    rows = np.asarray(chunk.positions).reshape(chunk.horizon, len(names))
    model = RigidBodyModel.from_urdf(str(urdf), names, allow_missing=True)
    for strip, link in zip(strips, links, strict=True):
        assert len(strip.points) == chunk.horizon
        expected = np.array([model.link_poses(q)[link][:3, 3] for q in rows])
        got = np.array([(p.x, p.y, p.z) for p in strip.points])
        np.testing.assert_allclose(got, expected, atol=1e-9)
    # Left and right arms trace different paths (the left one starts at +y).
    assert strips[0].points[0].y > strips[1].points[0].y
