"""The policy node's log under a camera whose JPEGs arrive damaged in different places.

libjpeg names the marker a damaged stream tripped on in hex ("3 extraneous bytes before marker
0xd9"); the log throttle did not mask hex, so every marker was a complaint of its own and a
randomly damaged stream logged far more than one line per complaint and period.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.ros.policy_node_harness import NODE, start_node, stop_node, write_params, yam_params

pytestmark = pytest.mark.ros

DEADLINE_S = 30.0
MARKERS = (0xC4, 0xDA, 0xD9)  # DHT, SOS, EOI: libjpeg names each in hex


def _damaged_jpegs() -> list[bytes]:
    """One JPEG per marker in MARKERS, with three stray bytes right before that marker."""
    import cv2

    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), (5, 5), 0)
    jpeg = cv2.imencode(".jpg", image)[1].tobytes()
    frames = []
    for marker in MARKERS:
        at = len(jpeg) - 2 if marker == 0xD9 else jpeg.index(bytes([0xFF, marker]))
        frames.append(jpeg[:at] + b"\x01\x02\x03" + jpeg[at:])
    return frames


def test_damage_before_different_markers_is_logged_once(tmp_path):
    import rclpy
    from rcl_interfaces.msg import Log
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage

    from molmoact2_msgs.msg import PolicyStatus

    topic = "cameras/top/image_raw/compressed"
    params = yam_params(instruction="probe")
    params["camera_transports"] = ["compressed", *params["camera_transports"][1:]]
    params["camera_topics"] = [topic, *params["camera_topics"][1:]]
    env = {"MOLMOACT2_TEST_POLICY_FACTORY": "tests.fake_policy:make_fake_policy"}
    proc = start_node(write_params(tmp_path / "params.yaml", params), env=env)
    rclpy.init()
    node = rclpy.create_node("damaged_camera")
    try:
        logs: list[str] = []
        statuses: list[Any] = []
        rosout_qos = QoSProfile(
            depth=1000,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        node.create_subscription(
            Log, "/rosout", lambda m: logs.append(m.msg) if m.name == NODE else None, rosout_qos
        )
        node.create_subscription(PolicyStatus, f"{NODE}/status", statuses.append, 10)
        camera = node.create_publisher(CompressedImage, topic, qos_profile_sensor_data)

        def send_until(data: bytes, fmt: str, done) -> None:
            msg = CompressedImage(format=fmt, data=data)
            deadline = node.get_clock().now().nanoseconds + int(DEADLINE_S * 1e9)
            while not done():
                assert node.get_clock().now().nanoseconds < deadline, (logs[-3:], statuses[-1:])
                msg.header.stamp = node.get_clock().now().to_msg()
                camera.publish(msg)
                rclpy.spin_once(node, timeout_sec=0.05)

        # Each damaged frame until the node's status names its marker: all three were judged.
        for marker, frame in zip(MARKERS, _damaged_jpegs(), strict=True):
            named = f"before marker {marker:#04x}"
            send_until(frame, "jpeg", lambda n=named: any(n in s.last_error for s in statuses))
        # Another complaint: once its log line is here, so are the earlier ones (/rosout keeps
        # one publisher's order).
        send_until(b"\x00" * 8, "zzz", lambda: any("format 'zzz'" in m for m in logs))
        damaged = [m for m in logs if "extraneous bytes before marker" in m]
        assert len(damaged) == 1, damaged
    finally:
        node.destroy_node()
        rclpy.shutdown()
        output = stop_node(proc)
    assert "Traceback" not in output, output
