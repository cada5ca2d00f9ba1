"""The driver node in its own process follows chunks, holds on silence, and latches e-stop."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest

from tests.rostest_util import REPO_ROOT, start_python, stop_process

pytestmark = pytest.mark.ros

NAMES = ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper"]
WATCHDOG = 0.5
STEP = 1.0 / 30.0


def _target(t: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Joint 0 swings slowly; the others sit at a fixed offset from the start pose."""
    offset = np.array([0.0, 0.15, -0.15, 0.1, 0.1, 0.2])
    out = start + offset + np.zeros((len(t), 1))
    out[:, 0] = start[0] + 0.3 * np.sin(2.0 * t)
    return out


def test_driver_follows_chunks_holds_on_silence_and_latches_estop():
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import JointState
    from std_srvs.srv import Trigger

    from hw_drivers.chunk import Chunk
    from hw_drivers.conversions import chunk_to_msg
    from molmoact2_msgs.msg import ActionChunk

    namespace = f"/t_{uuid.uuid4().hex[:8]}"
    proc = start_python(
        [
            "-m",
            "hw_drivers.driver_node",
            "--ros-args",
            "--params-file",
            str(REPO_ROOT / "config" / "so101.yaml"),
            "-r",
            "__node:=so101_driver",
            "-r",
            f"__ns:={namespace}",
            "-p",
            "control_rate:=100.0",
            "-p",
            f"watchdog_timeout:={WATCHDOG}",
            "-p",
            "ramp_in_time:=0.3",
        ]
    )
    rclpy.init()
    try:
        node = rclpy.create_node("driver_test", namespace=namespace)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        measured: list[tuple[float, np.ndarray]] = []
        commanded: list[tuple[float, np.ndarray]] = []
        node.create_subscription(
            JointState,
            "joint_states",
            lambda m: measured.append((time.monotonic(), np.array(m.position))),
            qos_profile_sensor_data,
        )
        node.create_subscription(
            JointState,
            "so101_driver/commanded_joint_states",
            lambda m: commanded.append((time.monotonic(), np.array(m.position))),
            qos_profile_sensor_data,
        )
        chunk_pub = node.create_publisher(
            ActionChunk,
            "molmoact2_policy/action_chunk",
            QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE),
        )
        estop = node.create_client(Trigger, "so101_driver/estop")

        def spin_for(seconds: float, publish_every: float | None = None, t0: float = 0.0):
            end = time.monotonic() + seconds
            next_publish = time.monotonic()
            while time.monotonic() < end:
                if publish_every is not None and time.monotonic() >= next_publish:
                    next_publish += publish_every
                    stamp = node.get_clock().now().nanoseconds * 1e-9
                    times = (stamp - t0) + STEP * (1 + np.arange(30))
                    chunk = Chunk(stamp, STEP, STEP, tuple(NAMES), _target(times, start))
                    chunk_pub.publish(chunk_to_msg(chunk))
                executor.spin_once(timeout_sec=0.01)

        deadline = time.monotonic() + 30.0
        while not measured and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
            assert proc.poll() is None, stop_process(proc)
        assert measured, "driver published no joint_states"
        start = measured[-1][1]
        np.testing.assert_allclose(start, [0.0, -0.5, 0.5, 0.5, 0.0, 0.3], atol=1e-6)
        while chunk_pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)

        # Follow chunks at 10 Hz for 2.5 s.
        t0 = node.get_clock().now().nanoseconds * 1e-9
        spin_for(2.5, publish_every=0.1, t0=t0)
        stop = time.monotonic()
        now_rel = node.get_clock().now().nanoseconds * 1e-9 - t0
        goal = _target(np.array([now_rel]), start)[0]
        final = measured[-1][1]
        # The fixed-offset joints converged (first-order sim lags a few ms behind).
        assert np.abs(final[1:] - goal[1:]).max() < 0.02, (final, goal)
        assert np.abs(final[1:] - start[1:]).min() > 0.08  # and they did move
        moving = [c for t, c in commanded if stop - 1.0 < t < stop]
        assert np.ptp(np.array(moving)[:, 0]) > 0.05  # joint 0 was still swinging

        # Publisher stops: commands freeze within the watchdog time.
        spin_for(1.5)
        after = np.array([c for t, c in commanded if t > stop + WATCHDOG + 0.25])
        assert len(after) > 20
        assert np.ptp(after, axis=0).max() < 1e-9, np.ptp(after, axis=0)

        # E-stop latches: later chunks do not move the commands.
        assert estop.wait_for_service(timeout_sec=10.0)
        future = estop.call_async(Trigger.Request())
        executor.spin_until_future_complete(future, timeout_sec=10.0)
        assert future.result() is not None and future.result().success
        latched_at = time.monotonic()
        spin_for(1.0, publish_every=0.1, t0=t0)
        latched = np.array([c for t, c in commanded if t > latched_at + 0.05])
        assert len(latched) > 20
        assert np.ptp(latched, axis=0).max() < 1e-9
        node.destroy_node()
    finally:
        rclpy.shutdown()
        output = stop_process(proc)
    # Chunks sent while following were all accepted; only the ones after the e-stop were not.
    rejected = [line for line in output.splitlines() if "rejected" in line]
    assert all("estop:" in line for line in rejected), output
    assert any("estop:" in line for line in rejected), output
