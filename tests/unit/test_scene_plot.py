"""The recording's 3D picture: frames composed into the fixed frame, cubes placed through
their own frame, frames that do not connect reported (issue 20)."""

from __future__ import annotations

import numpy as np

from molmoact2.frames import FrameTree, StaticFrame
from molmoact2.scene_plot import cube_corners, render


def cube(frame: str, x: float, y: float, z: float, side: float = 0.1):
    from visualization_msgs.msg import Marker

    marker = Marker(type=Marker.CUBE)
    marker.header.frame_id = frame
    marker.pose.position.x, marker.pose.position.y, marker.pose.position.z = x, y, z
    marker.pose.orientation.w = 1.0
    marker.scale.x = marker.scale.y = marker.scale.z = side
    marker.color.b = marker.color.a = 1.0
    return marker


def test_frames_and_cubes_are_drawn_in_the_fixed_frame(tmp_path):
    camera = StaticFrame("world", "cam_link", (0.0, 0.0, 1.0), (0.0, np.pi / 2, 0.0))
    optical = StaticFrame("cam_link", "cam_optical_frame", (0, 0, 0), (-np.pi / 2, 0, -np.pi / 2))
    tree = FrameTree.from_frames([camera, optical])
    tree.set("elsewhere", "orphan", np.eye(4))  # a second tree: not reachable from world
    markers = [cube("cam_optical_frame", 0.0, 0.0, 0.8), cube("orphan", 0, 0, 0)]
    out = tmp_path / "scene.png"
    drawn = render(tree, markers, out)
    assert out.stat().st_size > 10_000
    assert drawn["cubes"] == 1 and sorted(drawn["unreachable"]) == ["elsewhere", "orphan"]
    np.testing.assert_allclose(drawn["frames"]["cam_optical_frame"], [0, 0, 1.0], atol=1e-12)
    # The camera looks straight down: 0.8 m along its optical z is 0.2 m above the floor.
    centre = tree.lookup("world", "cam_optical_frame") @ np.r_[cube_corners(markers[0]).mean(0), 1]
    np.testing.assert_allclose(centre[:3], [0, 0, 0.2], atol=1e-12)
