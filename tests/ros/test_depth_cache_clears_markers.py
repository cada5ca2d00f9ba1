"""A depth-cache reset takes the dropped cache's cubes out of RViz.

RViz keeps a marker until it is deleted (``lifetime`` 0), so after ``~/reset`` or a stamp jump
the cubes of the scene before it stayed on screen until the next Think result, and for good
when none came (end of an episode, instruction cleared). The publishers are replaced by
recorders: what went out is a fact of the call, not of DDS timing.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.rostest_util import RecordingPublisher

pytestmark = pytest.mark.ros


@pytest.fixture
def node():
    import rclpy

    from molmoact2_policy.depth_cache_node import DepthCacheNode

    context = rclpy.Context()
    rclpy.init(context=context)
    resets = []
    made = DepthCacheNode(lambda: resets.append(1), context=context, use_global_arguments=False)
    for name in ("_tokens_pub", "_image_pub", "_markers_pub"):
        setattr(made, name, RecordingPublisher())
    try:
        yield made
    finally:
        made.destroy_node()
        rclpy.shutdown(context=context)


def result():
    from molmoact2_policy.policy_api import ActionChunkResult

    return ActionChunkResult(
        positions=np.zeros((2, 14)),
        step_dt=0.1,
        joint_names=("a",) * 14,
        mode="think",
        depth_codes=np.arange(100),
        depth_changed=np.ones(100, dtype=bool),
    )


def actions(array) -> set[int]:
    return {m.action for m in array.markers}


def test_reset_service_deletes_the_cubes(node):
    from builtin_interfaces.msg import Time
    from std_srvs.srv import Trigger
    from visualization_msgs.msg import Marker

    frame = np.zeros((480, 640, 3), np.uint8)
    assert node.on_think_result(Time(sec=10), frame, result())
    response = node._on_reset(Trigger.Request(), Trigger.Response())
    assert response.success
    first, last = node._markers_pub.messages
    assert actions(first) == {Marker.ADD} and len(first.markers) == 100
    (delete,) = last.markers
    assert delete.action == Marker.DELETEALL and delete.header.frame_id == node.marker_frame


def test_a_stamp_jump_deletes_the_old_cubes_before_the_new_ones(node):
    from builtin_interfaces.msg import Time
    from visualization_msgs.msg import Marker

    frame = np.zeros((480, 640, 3), np.uint8)
    assert node.on_think_result(Time(sec=10), frame, result())
    assert node.on_think_result(Time(sec=100), frame, result())  # 90 s gap: a reset
    assert [actions(a) for a in node._markers_pub.messages] == [
        {Marker.ADD},
        {Marker.DELETEALL},
        {Marker.ADD},
    ]
