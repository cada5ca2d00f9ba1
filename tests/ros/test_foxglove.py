"""The Foxglove bridge node, seen by a client that speaks the Foxglove WebSocket protocol.

The client is written from the protocol's specification (foxglove/ws-protocol, docs/spec.md:
JSON ``serverInfo``/``advertise``/``subscribe``, binary Message Data = opcode 0x01, uint32 LE
subscription id, uint64 LE receive time, payload), not from the SDK that serves it: what
Foxglove itself will see. It offers both subprotocol names as the Foxglove app does: the spec's
``foxglove.websocket.v1`` and ``foxglove.sdk.v1``, the name the SDK (and foxglove_bridge since
3.2) requires for the same messages.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from typing import Any

import numpy as np
import pytest
import yaml

from tests.rostest_util import spin_until, start_python, stop_process

pytestmark = pytest.mark.ros

CAMERA_TOPIC = "/cameras/top/image_raw"
DEPTH_TOPIC = "/molmoact2_depth_cache/depth_image"
SUBPROTOCOLS = ["foxglove.sdk.v1", "foxglove.websocket.v1"]
MESSAGE_DATA = 0x01


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FoxgloveClient:
    """Just enough of the protocol's client side: channels, subscriptions, message data."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        assert self.ws.subprotocol in SUBPROTOCOLS
        self.server_info: dict[str, Any] = {}
        self.channels: dict[str, dict[str, Any]] = {}  # topic -> advertised channel
        self.subscriptions: dict[int, str] = {}  # our id -> topic
        self.messages: dict[str, list[tuple[int, bytes]]] = {}
        self.statuses: list[dict[str, Any]] = []

    def pump(self, seconds: float, until) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if until():
                return True
            try:
                frame = self.ws.recv(timeout=0.2)
            except TimeoutError:
                continue
            if isinstance(frame, str):
                self._on_json(json.loads(frame))
            else:
                self._on_binary(frame)
        return until()

    def _on_json(self, msg: dict[str, Any]) -> None:
        if msg["op"] == "serverInfo":
            self.server_info = msg
        elif msg["op"] == "status":
            self.statuses.append(msg)
        elif msg["op"] == "advertise":
            for channel in msg["channels"]:
                self.channels[channel["topic"]] = channel

    def _on_binary(self, frame: bytes) -> None:
        if frame[0] != MESSAGE_DATA:
            return
        subscription, receive_ns = struct.unpack_from("<IQ", frame, 1)
        topic = self.subscriptions[subscription]
        self.messages.setdefault(topic, []).append((receive_ns, bytes(frame[13:])))

    def subscribe(self, topics: list[str]) -> None:
        subs = []
        for topic in topics:
            for old in [i for i, t in self.subscriptions.items() if t == topic]:
                self.ws.send(json.dumps({"op": "unsubscribe", "subscriptionIds": [old]}))
            sub_id = max(self.subscriptions, default=0) + 1
            self.subscriptions[sub_id] = topic
            subs.append({"id": sub_id, "channelId": self.channels[topic]["id"]})
        self.ws.send(json.dumps({"op": "subscribe", "subscriptions": subs}))


# use_sim_time with no /clock (a simulator not started yet, or paused): topics are still
# discovered and served; the server's discovery ran on that clock and never fired.
@pytest.mark.parametrize("use_sim_time", [False, True], ids=["wall_time", "sim_time_no_clock"])
def test_a_foxglove_client_receives_camera_and_depth_images(tmp_path, use_sim_time):
    import contextlib

    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image
    from websockets.sync.client import connect

    from molmoact2_policy.image_conversion import make_image_msg

    port = free_port()
    params = tmp_path / "foxglove.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "foxglove": {
                    "ros__parameters": {
                        "port": port,
                        "topics": [CAMERA_TOPIC, DEPTH_TOPIC],
                        "discovery_period": 0.2,
                        "use_sim_time": use_sim_time,
                    }
                }
            }
        )
    )
    proc = start_python(
        ["-m", "molmoact2.foxglove_node", "--ros-args", "--params-file", str(params)]
    )
    rclpy.init()
    node = rclpy.create_node("foxglove_test_sources")
    client = None
    connection = contextlib.ExitStack()
    try:
        camera_pub = node.create_publisher(Image, CAMERA_TOPIC, qos_profile_sensor_data)
        depth_pub = node.create_publisher(Image, DEPTH_TOPIC, 10)
        rng = np.random.default_rng(0)
        camera = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        depth = rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)

        def publish() -> None:
            stamp = node.get_clock().now().to_msg()
            camera_pub.publish(make_image_msg(camera, stamp=stamp, frame_id="top_optical_frame"))
            depth_pub.publish(make_image_msg(depth, stamp=stamp, frame_id="top_optical_frame"))

        node.create_timer(0.05, publish)

        deadline = time.monotonic() + 30.0
        while client is None and time.monotonic() < deadline:
            spin_until(node, lambda: False, 0.2)
            try:
                ws = connect(
                    f"ws://127.0.0.1:{port}", subprotocols=SUBPROTOCOLS, max_size=None
                )
                client = FoxgloveClient(connection.enter_context(ws))
            except OSError:
                assert proc.poll() is None, stop_process(proc)
        assert client is not None, "the Foxglove server never accepted a connection"

        def advertised() -> bool:
            rclpy.spin_once(node, timeout_sec=0.0)
            return {CAMERA_TOPIC, DEPTH_TOPIC} <= set(client.channels)

        assert client.pump(30.0, advertised), f"advertised: {list(client.channels)}"
        assert client.server_info.get("op") == "serverInfo"
        for topic in (CAMERA_TOPIC, DEPTH_TOPIC):
            channel = client.channels[topic]
            assert channel["encoding"] == "cdr"
            assert channel["schemaName"] == "sensor_msgs/msg/Image"
            assert channel.get("schemaEncoding") == "ros2msg"
            assert channel["schema"].startswith("# This message contains an uncompressed image")

        client.subscribe([CAMERA_TOPIC, DEPTH_TOPIC])

        def received() -> bool:
            rclpy.spin_once(node, timeout_sec=0.0)
            return all(len(client.messages.get(t, [])) >= 3 for t in (CAMERA_TOPIC, DEPTH_TOPIC))

        # A subscribe that races the server's own registration of a just-advertised channel is
        # answered "unknown channel" (the SDK advertises first): subscribe again what is silent.
        deadline = time.monotonic() + 30.0
        while not client.pump(2.0, received) and time.monotonic() < deadline:
            client.subscribe([t for t in (CAMERA_TOPIC, DEPTH_TOPIC) if t not in client.messages])
        assert received(), ({t: len(m) for t, m in client.messages.items()}, client.statuses)
        for topic, expected in ((CAMERA_TOPIC, camera), (DEPTH_TOPIC, depth)):
            receive_ns, payload = client.messages[topic][-1]
            assert receive_ns > 0 or use_sim_time  # the node's clock: 0 until /clock
            msg = deserialize_message(payload, Image)
            assert (msg.height, msg.width, msg.encoding) == (*expected.shape[:2], "rgb8")
            got = np.frombuffer(bytes(msg.data), np.uint8).reshape(expected.shape)
            np.testing.assert_array_equal(got, expected)
    finally:
        connection.close()
        node.destroy_node()
        rclpy.shutdown()
        output = stop_process(proc)
    assert "Traceback" not in output, output
    assert proc.returncode == 0, output
