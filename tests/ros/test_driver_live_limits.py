"""Safety limits set with the parameter service (``ros2 param set``) on a running driver."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
import yaml

from tests.rostest_util import REPO_ROOT, start_python, stop_process

pytestmark = pytest.mark.ros

STEP = 1.0 / 30.0
RATE = 100.0


def test_tighter_limits_apply_to_the_next_commands_and_looser_ones_are_refused():
    import rclpy
    from rcl_interfaces.srv import SetParameters
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import JointState

    from hw_drivers.chunk import Chunk
    from hw_drivers.conversions import chunk_to_msg
    from molmoact2_msgs.msg import ActionChunk

    config = yaml.safe_load((REPO_ROOT / "config" / "so101.yaml").read_text())
    driver = config["/**/so101_driver"]["ros__parameters"]
    names = tuple(config["/**"]["ros__parameters"]["joint_names"])
    hard_velocity = np.asarray(driver["max_velocity"], dtype=float)
    namespace = f"/t_{uuid.uuid4().hex[:8]}"
    proc = start_python(
        [
            "-m", "hw_drivers.driver_node", "--ros-args",
            "--params-file", str(REPO_ROOT / "config" / "so101.yaml"),
            "-r", "__node:=so101_driver", "-r", f"__ns:={namespace}",
            "-p", f"control_rate:={RATE}", "-p", "ramp_in_time:=0.2",
        ]
    )  # fmt: skip
    rclpy.init()
    try:
        node = rclpy.create_node("live_limits_test", namespace=namespace)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        commanded: list[tuple[float, np.ndarray, float]] = []  # (arrival, command, stamp)
        node.create_subscription(
            JointState,
            "so101_driver/commanded_joint_states",
            lambda m: commanded.append(
                (
                    time.monotonic(),
                    np.array(m.position),
                    m.header.stamp.sec + 1e-9 * m.header.stamp.nanosec,
                )
            ),
            qos_profile_sensor_data,
        )
        chunk_pub = node.create_publisher(
            ActionChunk,
            "molmoact2_policy/action_chunk",
            QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE),
        )
        set_params = node.create_client(SetParameters, "so101_driver/set_parameters")

        origin: list[float] = []
        home: list[np.ndarray] = []

        def spin(seconds: float, publish: bool) -> None:
            end = time.monotonic() + seconds
            next_publish = time.monotonic()
            while time.monotonic() < end:
                if publish and time.monotonic() >= next_publish and commanded:
                    next_publish += 0.1
                    stamp = node.get_clock().now().nanoseconds * 1e-9
                    if not origin:
                        origin.append(stamp)
                        home.append(commanded[-1][1].copy())
                    # Shoulder pan swings on one smooth trajectory: up to 2 rad/s, 10 rad/s^2
                    # (inside the configured 3 rad/s, 20 rad/s^2).
                    t = stamp - origin[0] + STEP * np.arange(30)
                    positions = np.tile(home[0], (30, 1))
                    positions[:, 0] += 0.4 * np.sin(5.0 * t)
                    chunk_pub.publish(chunk_to_msg(Chunk(stamp, 0.0, STEP, names, positions)))
                executor.spin_once(timeout_sec=0.005)

        def set_param(name: str, value) -> tuple[bool, str]:
            msg = Parameter(name, value=value).to_parameter_msg()
            future = set_params.call_async(SetParameters.Request(parameters=[msg]))
            executor.spin_until_future_complete(future, timeout_sec=10.0)
            result = future.result().results[0]
            return result.successful, result.reason

        deadline = time.monotonic() + 30.0
        while (not commanded or chunk_pub.get_subscription_count() == 0) and (
            time.monotonic() < deadline
        ):
            executor.spin_once(timeout_sec=0.05)
            assert proc.poll() is None, stop_process(proc)
        assert set_params.wait_for_service(timeout_sec=10.0)
        spin(1.5, publish=True)

        def speeds(since: float) -> np.ndarray:
            """Shoulder-pan speed between received commands, by their stamps (tick times):
            a sample lost on the way (best effort) must not read as a double step."""
            samples = [(c[0], s) for t, c, s in commanded if t > since]
            pan, stamps = np.asarray(samples).T
            return np.abs(np.diff(pan)) / np.maximum(np.diff(stamps), 1e-9)

        fast = speeds(time.monotonic() - 1.0)
        assert fast.max() > 0.5 * hard_velocity[0], fast.max()  # it was moving fast

        slow = hard_velocity.copy()
        slow[0] = 0.2
        ok, reason = set_param("max_velocity", slow.tolist())
        assert ok, reason
        changed_at = time.monotonic()
        spin(1.5, publish=True)
        after = speeds(changed_at + 0.1)  # the sample in flight when the reply came excepted
        assert len(after) > 50
        assert after.max() <= 0.2 * 1.05, after.max()

        looser = hard_velocity.copy()
        looser[0] *= 2
        ok, reason = set_param("max_velocity", looser.tolist())
        assert not ok and "above the configured hard limit for shoulder_pan" in reason
        ok, reason = set_param("max_step_per_tick", 1.0)
        assert not ok and "max_step_per_tick must be in" in reason
        node.destroy_node()
    finally:
        rclpy.shutdown()
        output = stop_process(proc)
    assert "Traceback" not in output, output
