"""In sim, for each robot: every frame stamped on any image or marker the graph publishes
resolves, through what arrives on /tf and /tf_static, to RViz's fixed frame (issue 20).

The graph runs as users start it (``molmoact2 launch <robot> --think``); a probe subscribes to
every Image, CompressedImage and MarkerArray topic that appears, whoever publishes it, and to
TF with tf2's listener QoS. The TF side is ``tests.tf_listener`` (tf2's semantics, not our
publisher's code); the fixed frame is read from config/molmoact2.rviz.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml

from tests.rostest_util import REPO_ROOT
from tests.tf_listener import TfBuffer

pytestmark = pytest.mark.ros

VISUAL_TYPES = (
    "sensor_msgs/msg/Image",
    "sensor_msgs/msg/CompressedImage",
    "visualization_msgs/msg/MarkerArray",
)
# The supervisor's line for a node that died, and the prefix of each node's output lines.
DEATH = re.compile(r"\[molmoact2\] node (\S+) exited unexpectedly")
PREFIX = re.compile(r"\[(\S+?) *\] ")
STARTUP_TIMEOUT_S = 240.0  # model load and first Think result on a loaded 2-core machine


def rviz_fixed_frame() -> str:
    rviz = yaml.safe_load((REPO_ROOT / "config" / "molmoact2.rviz").read_text())
    return rviz["Visualization Manager"]["Global Options"]["Fixed Frame"]


def graph_log(lines: list[str], tail: int = 60) -> str:
    """The graph's last ``tail`` lines, after every earlier line of a node that died: its own
    last words (a crash's stacks) are usually further up, under the other nodes' stop lines."""
    dead = {m.group(1) for line in lines if (m := DEATH.match(line))}
    own = [line for line in lines[:-tail] if (m := PREFIX.match(line)) and m.group(1) in dead]
    return "".join(own + (["...\n"] if own else []) + lines[-tail:])


class VisualProbe:
    """Subscribes to every visual topic as it appears; remembers frame ids per topic."""

    def __init__(self, node) -> None:
        self.node = node
        self.frames: dict[str, set[str]] = {}
        self.lock = threading.Lock()
        self.tf = TfBuffer()
        self.tf.subscribe(node)
        self._subs: dict[str, object] = {}

    def discover(self) -> None:
        import importlib

        from rclpy.qos import qos_profile_sensor_data

        for topic, types in self.node.get_topic_names_and_types():
            if topic in self._subs or not types or types[0] not in VISUAL_TYPES:
                continue
            package, kind, name = types[0].split("/")
            msg_type = getattr(importlib.import_module(f"{package}.{kind}"), name)
            # Best effort matches reliable and best-effort publishers alike.
            self._subs[topic] = self.node.create_subscription(
                msg_type, topic, self._callback(topic), qos_profile_sensor_data
            )

    def _callback(self, topic: str):
        def on_msg(msg) -> None:
            headers = [m.header for m in msg.markers] if hasattr(msg, "markers") else [msg.header]
            with self.lock:
                self.frames.setdefault(topic, set()).update(h.frame_id for h in headers)

        return on_msg


@pytest.mark.parametrize("robot", ["yam", "droid", "so101"])
def test_every_stamped_frame_resolves_to_the_fixed_frame_in_sim(robot):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    config = yaml.safe_load((REPO_ROOT / "config" / f"{robot}.yaml").read_text())
    expected_topics = {"/" + t for t in config["/**"]["ros__parameters"]["camera_topics"]}
    expected_topics |= {
        "/molmoact2_policy/predicted_chunk_markers",
        "/molmoact2_depth_cache/depth_image",
        "/molmoact2_depth_cache/depth_markers",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "molmoact2.cli", "launch", robot, "--think"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("tf_sim_probe", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    probe = VisualProbe(node)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        next_discovery = 0.0
        while time.monotonic() < deadline and proc.poll() is None:
            if time.monotonic() >= next_discovery:
                probe.discover()
                next_discovery = time.monotonic() + 0.5
            executor.spin_once(timeout_sec=0.05)
            with probe.lock:
                seen = {t for t, frames in probe.frames.items() if frames}
            if expected_topics <= seen and probe.tf.messages["/tf_static"] > 0:
                break
        if proc.poll() is not None:
            reader.join(timeout=10)  # all the graph said before it ended
        log = graph_log(lines)
        assert proc.poll() is None, f"the graph died:\n{log}"
        with probe.lock:
            frames = {t: set(f) for t, f in probe.frames.items()}
        assert expected_topics <= set(frames), (sorted(frames), log)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        reader.join(timeout=5)

    fixed = rviz_fixed_frame()
    unresolved = {
        (topic, frame)
        for topic, ids in frames.items()
        for frame in ids
        if probe.tf.lookup(fixed, frame) is None
    }
    assert not unresolved, f"{robot}: no transform to {fixed!r} for {sorted(unresolved)}"
    assert all(frame for ids in frames.values() for frame in ids), frames  # no empty frame_id
