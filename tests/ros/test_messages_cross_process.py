"""The built interface package works between two processes (issue: foundation)."""

from __future__ import annotations

import textwrap

import pytest

from tests.rostest_util import spin_until, start_python, stop_process

pytestmark = pytest.mark.ros

PUBLISHER = textwrap.dedent(
    """
    import time
    import rclpy
    from molmoact2_msgs.msg import ActionChunk, DepthTokens

    rclpy.init()
    node = rclpy.create_node("xproc_publisher")
    chunk_pub = node.create_publisher(ActionChunk, "xproc/action_chunk", 10)
    depth_pub = node.create_publisher(DepthTokens, "xproc/depth_tokens", 10)
    seq = 0
    end = time.monotonic() + 30.0
    while rclpy.ok() and time.monotonic() < end:
        chunk = ActionChunk()
        chunk.header.stamp.sec = 100
        chunk.header.stamp.nanosec = 5
        chunk.start_offset.nanosec = 33_333_333
        chunk.step_dt = 1.0 / 30.0
        chunk.joint_names = ["joint1", "joint2"]
        chunk.horizon = 3
        chunk.positions = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
        chunk.sequence = seq
        chunk.inference_latency = 0.08
        chunk.mode = "flow"
        chunk.instruction = "pick up the cup"
        chunk_pub.publish(chunk)
        depth = DepthTokens()
        depth.header.frame_id = "top_optical_frame"
        depth.rows, depth.cols, depth.num_codes = 10, 10, 128
        depth.codes = [(i * 7) % 128 for i in range(100)]
        depth.changed = [i % 10 == 0 for i in range(100)]
        depth.changed_fraction = 0.1
        depth_pub.publish(depth)
        seq += 1
        rclpy.spin_once(node, timeout_sec=0.05)
    """
)


def test_action_chunk_and_depth_tokens_cross_process():
    import rclpy

    from molmoact2_msgs.msg import ActionChunk, DepthTokens

    proc = start_python(["-c", PUBLISHER])
    rclpy.init()
    try:
        node = rclpy.create_node("xproc_subscriber")
        chunks: list[ActionChunk] = []
        depths: list[DepthTokens] = []
        node.create_subscription(ActionChunk, "xproc/action_chunk", chunks.append, 10)
        node.create_subscription(DepthTokens, "xproc/depth_tokens", depths.append, 10)
        assert spin_until(node, lambda: chunks and depths, timeout=25.0), stop_process(proc)
        chunk, depth = chunks[-1], depths[-1]
        assert list(chunk.joint_names) == ["joint1", "joint2"]
        assert chunk.horizon == 3
        assert list(chunk.positions) == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
        assert chunk.header.stamp.sec == 100 and chunk.header.stamp.nanosec == 5
        assert chunk.start_offset.nanosec == 33_333_333
        assert chunk.mode == "flow" and chunk.instruction == "pick up the cup"
        assert depth.rows == 10 and depth.cols == 10 and depth.num_codes == 128
        assert list(depth.codes) == [(i * 7) % 128 for i in range(100)]
        assert sum(depth.changed) == 10
        assert depth.header.frame_id == "top_optical_frame"
        node.destroy_node()
    finally:
        rclpy.shutdown()
        stop_process(proc)
    assert proc.returncode is not None


def test_interfaces_import():
    from molmoact2_msgs.msg import ActionChunk, DepthTokens, InputAge, PolicyStatus
    from molmoact2_msgs.srv import SetInstruction

    status = PolicyStatus()
    status.inputs = [InputAge(name="top", age=0.01, ok=True)]
    assert status.inputs[0].name == "top"
    req = SetInstruction.Request(instruction="fold the towel")
    assert req.instruction == "fold the towel"
    assert hasattr(SetInstruction.Response(), "accepted")
    assert ActionChunk().positions is not None and DepthTokens().codes is not None
