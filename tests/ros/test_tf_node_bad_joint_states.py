"""molmoact2_tf with a URDF: joint states whose link frames tf2 listeners would drop or choke
on (NaN from finite positions that overflow, stamps an hour ahead, negative stamps) are
refused with an error and counted; nothing goes out on /tf for them, the node goes on.

The callback is called directly with a recording publisher: what is (not) published is then a
fact of the call, not of DDS timing.
"""

from __future__ import annotations

import pytest

from tests.rostest_util import REPO_ROOT, RecordingPublisher

pytestmark = pytest.mark.ros

pytest.importorskip("pinocchio")

URDF = REPO_ROOT / "tests" / "fixtures" / "pan_slide_tilt.urdf"
TWO_SLIDES = """<?xml version="1.0"?>
<robot name="two_slides">
  <link name="base_link"/><link name="a"/><link name="b"/>
  <joint name="s1" type="prismatic"><parent link="base_link"/><child link="a"/>
    <axis xyz="1 0 0"/><limit lower="-1" upper="1" effort="1" velocity="1"/></joint>
  <joint name="s2" type="prismatic"><parent link="a"/><child link="b"/>
    <axis xyz="1 0 0"/><limit lower="-1" upper="1" effort="1" velocity="1"/></joint>
</robot>
"""


@pytest.fixture
def make(tmp_path):
    import rclpy
    from rclpy.parameter import Parameter

    from molmoact2.tf_node import make_node

    context = rclpy.Context()
    rclpy.init(context=context)
    nodes = []

    def build(urdf_text: str | None = None):
        path = URDF
        if urdf_text is not None:
            path = tmp_path / "robot.urdf"
            path.write_text(urdf_text)
        node = make_node(
            context=context,
            cli_args=["--ros-args"],
            use_global_arguments=False,
            parameter_overrides=[
                Parameter("urdf", Parameter.Type.STRING, str(path)),
                Parameter("frame_ids", Parameter.Type.STRING_ARRAY, ["base_link"]),
                Parameter("frame_parents", Parameter.Type.STRING_ARRAY, ["world"]),
                Parameter("frame_xyz", Parameter.Type.DOUBLE_ARRAY, [0.0, 0.0, 0.0]),
                Parameter("frame_rpy", Parameter.Type.DOUBLE_ARRAY, [0.0, 0.0, 0.0]),
            ],
        )
        nodes.append(node)
        node.tf_pub = RecordingPublisher()
        return node

    try:
        yield build
    finally:
        for node in nodes:
            node.destroy_node()
        rclpy.shutdown(context=context)


def joint_state(names, positions, sec=0, nanosec=0):
    from sensor_msgs.msg import JointState

    msg = JointState(name=list(names), position=[float(p) for p in positions])
    msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nanosec
    return msg


def test_overflowing_positions_publish_nothing(make):
    node = make(TWO_SLIDES)
    node._on_joint_state(joint_state(["s1", "s2"], [1e308, 1e308], sec=42))
    assert node.tf_pub.messages == [] and node.fk_errors == 1
    node._on_joint_state(joint_state(["s1", "s2"], [0.1, 0.2], sec=42))
    assert len(node.tf_pub.messages) == 1  # the node went on


def test_stamps_far_ahead_or_negative_publish_nothing(make):
    node = make()
    now = node.get_clock().now().nanoseconds
    names, q = ["pan", "slide", "tilt"], [0.1, 0.2, 0.3]
    hour_ahead = (now + 3600 * 10**9) // 10**9
    node._on_joint_state(joint_state(names, q, sec=hour_ahead))
    node._on_joint_state(joint_state(names, q, sec=-5))
    assert node.tf_pub.messages == [] and node.fk_errors == 2
    node._on_joint_state(joint_state(names, q, sec=now // 10**9))
    (msg,) = node.tf_pub.messages
    assert {t.header.stamp.sec for t in msg.transforms} == {now // 10**9}
