"""Shared pieces of the policy-node ROS tests: params file, node process, a synthetic robot.

The synthetic robot publishes three YAM cameras and joint states at 30 Hz with current stamps,
remembers exactly what it published for each stamp, and collects what the policy node sends
back (chunks, status, predicted joint states, markers).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tests.rostest_util import REPO_ROOT, start_python, stop_process

NODE = "molmoact2_policy"
FRAME_RATE = 30.0
IMAGE_SHAPE = (48, 64, 3)
EXTRA_JOINT = "torso_lift"  # published by the robot, not used by the model


def yam_params(**overrides: Any) -> dict[str, Any]:
    """The policy node's parameters as config/yam.yaml sets them, plus ``overrides``."""
    config = yaml.safe_load((REPO_ROOT / "config" / "yam.yaml").read_text())
    params = dict(config["/**"]["ros__parameters"])
    # The lead's configs name node sections "/**/<node>" (any namespace); accept both forms.
    section = config.get(f"/**/{NODE}") or config[NODE]
    params.update(section["ros__parameters"])
    # Tests: a fixed seed so chunks are reproducible, fast status, no rate cap surprises.
    params.update({"seed": 0, "status_rate": 5.0, "checkpoint": "tiny"})
    params.update(overrides)
    return params


def write_params(path: Path, params: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({NODE: {"ros__parameters": params}}))
    return path


def start_node(params_file: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """The policy node's console entry point in a subprocess."""
    return start_python(
        ["-m", "molmoact2_policy.policy_node", "--ros-args", "--params-file", str(params_file)],
        env=env or {},
    )


def frame_images(index: int, cameras: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Deterministic images of frame ``index`` (different per frame and camera)."""
    rng = np.random.default_rng(1000 + index)
    return {c: rng.integers(0, 256, IMAGE_SHAPE, dtype=np.uint8) for c in cameras}


def frame_state(index: int, joint_count: int) -> np.ndarray:
    """Deterministic joint positions of frame ``index`` (in model order)."""
    return 0.3 + 0.2 * np.sin(0.1 * index + np.arange(joint_count))


@dataclass
class Published:
    index: int
    images: dict[str, np.ndarray]
    state: np.ndarray


@dataclass
class SyntheticRobot:
    """Test-side ROS node: publishes a robot's sensors and records the policy's outputs."""

    params: dict[str, Any]
    node: Any = None
    frames: dict[int, Published] = field(default_factory=dict)  # camera stamp ns -> frame
    states: dict[int, np.ndarray] = field(default_factory=dict)  # frame index -> state
    chunks: list[Any] = field(default_factory=list)
    statuses: list[Any] = field(default_factory=list)
    predicted: list[Any] = field(default_factory=list)
    markers: list[Any] = field(default_factory=list)
    index: int = 0
    # Fault knobs, applied to the next published frames.
    camera_fault: str = ""  # "", "encoding", "size", "truncated"
    joint_fault: str = ""  # "", "nan", "missing"
    camera_delay: dict[str, float] = field(default_factory=dict)  # camera -> stamp age [s]

    def __post_init__(self) -> None:
        import rclpy
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import String
        from visualization_msgs.msg import MarkerArray

        from molmoact2_msgs.msg import ActionChunk, PolicyStatus

        self.node = rclpy.create_node("synthetic_robot")
        self.cameras = tuple(self.params["camera_names"])
        self.joints = tuple(self.params["joint_names"])
        self.camera_pubs = {
            name: self.node.create_publisher(Image, topic, qos_profile_sensor_data)
            for name, topic in zip(self.cameras, self.params["camera_topics"], strict=True)
        }
        self.joint_pub = self.node.create_publisher(
            JointState, self.params["joint_state_topics"][0], qos_profile_sensor_data
        )
        self.instruction_pub = self.node.create_publisher(String, f"{NODE}/instruction", 10)
        self.node.create_subscription(ActionChunk, f"{NODE}/action_chunk", self.chunks.append, 10)
        self.node.create_subscription(PolicyStatus, f"{NODE}/status", self.statuses.append, 10)
        self.node.create_subscription(
            JointState, f"{NODE}/predicted_joint_states", self.predicted.append, 10
        )
        self.node.create_subscription(
            MarkerArray, f"{NODE}/predicted_chunk_markers", self.markers.append, 10
        )
        self._next_publish = time.monotonic()

    def now_ns(self) -> int:
        return self.node.get_clock().now().nanoseconds

    def publish_frame(self) -> int:
        """Publish joint states then all cameras of the next frame; returns the camera stamp."""
        from builtin_interfaces.msg import Time
        from sensor_msgs.msg import JointState

        from molmoact2_policy.image_conversion import make_image_msg

        index = self.index
        self.index += 1
        now_ns = self.now_ns()
        state = frame_state(index, len(self.joints))
        self.states[index] = state
        joint_msg = JointState()
        joint_msg.header.stamp = Time(sec=now_ns // 10**9, nanosec=now_ns % 10**9)
        # Reversed order plus an unused joint: the node must match by name.
        names = [*reversed(self.joints), EXTRA_JOINT]
        positions = [*reversed(state.tolist()), 9.0]
        if self.joint_fault == "nan":
            positions[0] = float("nan")
        elif self.joint_fault == "missing":
            names, positions = names[1:], positions[1:]
        joint_msg.name, joint_msg.position = names, positions
        self.joint_pub.publish(joint_msg)

        images = frame_images(index, self.cameras)
        oldest = None
        for camera in self.cameras:
            stamp_ns = now_ns - int(self.camera_delay.get(camera, 0.0) * 1e9)
            oldest = stamp_ns if oldest is None else min(oldest, stamp_ns)
            stamp = Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)
            msg = make_image_msg(images[camera], stamp=stamp, frame_id=f"{camera}_optical_frame")
            if camera == self.cameras[-1]:
                self._apply_camera_fault(msg)
            self.camera_pubs[camera].publish(msg)
        self.frames[oldest] = Published(index, images, state)
        return oldest

    def _apply_camera_fault(self, msg: Any) -> None:
        if self.camera_fault == "encoding":
            msg.encoding = "16UC1"
        elif self.camera_fault == "size":
            msg.data.extend(bytes(100))
        elif self.camera_fault == "truncated":
            msg.data = msg.data[: len(msg.data) // 2]

    def run(self, seconds: float, until: Callable[[], bool] | None = None) -> bool:
        """Publish at FRAME_RATE and spin for ``seconds`` or until ``until()`` holds."""
        import rclpy

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if time.monotonic() >= self._next_publish:
                self._next_publish += 1.0 / FRAME_RATE
                if self._next_publish < time.monotonic():  # fell behind: do not burst
                    self._next_publish = time.monotonic() + 1.0 / FRAME_RATE
                self.publish_frame()
            rclpy.spin_once(self.node, timeout_sec=0.005)
            if until is not None and until():
                return True
        return until() if until is not None else True

    def latest_status(self, after_ns: int = 0) -> Any:
        for status in reversed(self.statuses):
            stamp = status.header.stamp.sec * 10**9 + status.header.stamp.nanosec
            if stamp >= after_ns:
                return status
        return None

    def status_where(self, predicate: Callable[[Any], bool], after_ns: int) -> Callable[[], bool]:
        def check() -> bool:
            status = self.latest_status(after_ns)
            return status is not None and predicate(status)

        return check

    def set_instruction(self, text: str) -> None:
        from std_msgs.msg import String

        self.instruction_pub.publish(String(data=text))


def assert_blocked(robot: SyntheticRobot, expected_text: str, state: str) -> None:
    """Status reaches ``state`` with ``expected_text``; no chunk comes from this phase's frames."""
    phase_start = robot.now_ns()
    first_bad_index = robot.index
    reached = robot.run(
        10.0,
        until=robot.status_where(
            lambda s: s.state == state and expected_text in s.last_error, phase_start
        ),
    )
    assert reached, f"status never said {state}/{expected_text!r}: {robot.latest_status()}"
    robot.run(1.0)  # keep the bad input coming: still nothing may be published
    # Topics race: the first bad frame's images may still meet the previous good joint state
    # (a valid observation), so judge from the frame after next.
    bad = {stamp for stamp, frame in robot.frames.items() if frame.index >= first_bad_index + 2}
    leaked = [c.sequence for c in robot.chunks if chunk_stamp_ns(c) in bad]
    assert not leaked, f"chunks {leaked} were computed from bad-phase frames"


def wait_chunks(robot: SyntheticRobot, count: int, after_ns: int, seconds: float = 20.0) -> list:
    """At least ``count`` chunks stamped at or after ``after_ns`` (publishing meanwhile)."""

    def fresh() -> list:
        return [c for c in robot.chunks if chunk_stamp_ns(c) >= after_ns]

    assert robot.run(seconds, until=lambda: len(fresh()) >= count), "no fresh chunks"
    return fresh()


def chunk_stamp_ns(chunk: Any) -> int:
    return chunk.header.stamp.sec * 10**9 + chunk.header.stamp.nanosec


def stop_node(proc: subprocess.Popen) -> str:
    return stop_process(proc, timeout=10.0)


@contextmanager
def running_robot(
    params: dict[str, Any],
    workdir: Path,
    *,
    env: dict[str, str] | None = None,
    first_chunk_s: float = 60.0,
) -> Iterator[SyntheticRobot]:
    """A policy node process on ``params`` and a synthetic robot that has seen its first chunk.

    On exit the node gets SIGTERM and must stop cleanly: exit 0 and no traceback in its output.
    ``first_chunk_s`` covers the cold start (process, model build, discovery, first inference).
    """
    import rclpy

    proc = start_node(write_params(workdir / "params.yaml", params), env=env)
    try:
        rclpy.init()
        robot = SyntheticRobot(params)
    except BaseException:
        stop_node(proc)
        raise
    try:
        assert robot.run(first_chunk_s, until=lambda: len(robot.chunks) >= 1), stop_node(proc)
        yield robot
    finally:
        robot.node.destroy_node()
        rclpy.shutdown()
        output = stop_node(proc)
        assert "Traceback" not in output, output
        assert proc.returncode == 0, f"node did not exit cleanly on SIGTERM ({proc.returncode})"
