"""Shared pieces of the reliability suite: a smooth test policy, graph processes, a probe node.

The suite runs the real nodes of the graph: the policy node as its own process (so it can be
killed with SIGKILL), the driver node in the test process (so every command the backend was sent
can be read back from ``backend.command_log``), cameras published by the test (so they can stop,
go stale or jump back in time on cue). The policy node runs a *smooth* test policy through the
policy factory's test hook: the tiny random model's chunks are rejected by the driver's limits,
and these tests are about the graph's behaviour under faults, not about the model.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tests.rostest_util import REPO_ROOT

SMOOTH_POLICY_FACTORY = "tests.system.reliability_util:make_smooth_policy"
SMOOTH_AMPLITUDE = 0.12  # [rad] of the test policy's swing around the start pose
SMOOTH_FREQUENCY = 0.4  # [Hz]
TEST_IMAGE_SHAPE = (48, 64, 3)


# -- pure checks (no ROS) --------------------------------------------------------------------


def command_violations(
    commands: Sequence[np.ndarray],
    lower: Sequence[float],
    upper: Sequence[float],
    max_step: float,
    tolerance: float = 1e-9,
) -> list[str]:
    """Every command that leaves the joint limits or moves more than ``max_step`` in one tick.

    ``commands`` are consecutive commands as the backend received them (one per tick).
    """
    low, high = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
    problems: list[str] = []
    previous: np.ndarray | None = None
    for index, command in enumerate(commands):
        command = np.asarray(command, dtype=float)
        if command.shape != low.shape:
            problems.append(f"command {index}: shape {command.shape}, expected {low.shape}")
            previous = None
            continue
        if not np.all(np.isfinite(command)):
            problems.append(f"command {index}: non-finite values {command.tolist()}")
        elif np.any(command < low - tolerance) or np.any(command > high + tolerance):
            joint = int(np.argmax(np.maximum(low - command, command - high)))
            problems.append(f"command {index}: joint {joint} at {command[joint]:.4f} off limits")
        if previous is not None:
            step = float(np.max(np.abs(command - previous)))
            if step > max_step + tolerance:
                problems.append(f"command {index}: step {step:.4f} > max_step_per_tick {max_step}")
        previous = command
    return problems


def max_step(commands: Sequence[np.ndarray]) -> float:
    """The largest per-tick change of any joint over consecutive commands (0 for < 2)."""
    if len(commands) < 2:
        return 0.0
    array = np.asarray(commands, dtype=float)
    return float(np.max(np.abs(np.diff(array, axis=0))))


def growth(first: float, last: float) -> float:
    """Relative growth from ``first`` to ``last`` (0.02 means 2 %)."""
    return (last - first) / first if first > 0 else math.inf


def wait_until(condition: Callable[[], bool], timeout: float, period: float = 0.02) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass (nodes spin elsewhere)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(period)
    return condition()


def observe(seconds: float) -> None:
    """An observation window: let the nodes run (and the probe record) for ``seconds``.

    For waiting on something, use ``wait_until``; this is for "nothing may change meanwhile".
    """
    time.sleep(seconds)


# -- robot facts from the shipped configs ------------------------------------------------------


def robot_section(robot: str, node: str) -> dict[str, Any]:
    """``/**`` merged with one node's section of ``config/<robot>.yaml``."""
    from molmoact2 import graph

    return graph.load_robot_config(robot).params_for(node)


def driver_name(robot: str) -> str:
    from molmoact2 import graph

    return graph.load_robot_config(robot).driver_name


# -- the smooth test policy ------------------------------------------------------------------


class SmoothPolicy:
    """A ``Policy`` whose chunks sample one slow sine per joint around the robot's start pose.

    The phase comes from the wall clock (the ROS clock of every node here), so chunks computed
    at different times, and by a restarted node, lie on the same trajectory; amplitude and
    frequency keep every chunk well inside the driver's position and velocity limits.
    """

    def __init__(self, params: Any) -> None:
        from molmoact2_common.embodiments import get_embodiment

        self.spec = get_embodiment(params.embodiment)
        self.joint_names = tuple(params.joint_names)
        driver = robot_section(params.robot, driver_name(params.robot))
        lower = np.array(driver["position_lower"], dtype=float)
        upper = np.array(driver["position_upper"], dtype=float)
        start = np.array(driver.get("initial_positions") or (lower + upper) / 2, dtype=float)
        self.center = np.clip(start, lower + SMOOTH_AMPLITUDE, upper - SMOOTH_AMPLITUDE)
        self.phase = np.arange(len(self.joint_names)) * 0.7
        self.calls = 0

    def positions_at(self, times: np.ndarray) -> np.ndarray:
        angle = 2 * math.pi * SMOOTH_FREQUENCY * times[:, None] + self.phase[None, :]
        return self.center[None, :] + SMOOTH_AMPLITUDE * np.sin(angle)

    def act(self, images, state, instruction, *, seed=None):
        from molmoact2_policy.policy_api import ActionChunkResult, validate_observation

        validate_observation(self.spec, images, state, instruction)
        self.calls += 1
        # Row 0 applies at the observation stamp, which is at most max_observation_age ago.
        times = time.time() + self.spec.step_dt * np.arange(self.spec.horizon)
        return ActionChunkResult(
            positions=self.positions_at(times),
            step_dt=self.spec.step_dt,
            joint_names=self.joint_names,
            mode="flow",
            timings={"total": 0.0},
        )

    def check_instruction(self, instruction: str) -> None:
        pass  # any words: its chunk never depends on them

    def reset(self) -> None:
        pass

    def metadata(self) -> dict[str, Any]:
        return {"checkpoint": "smooth-test", "embodiment": self.spec.name, "device": "cpu"}


def make_smooth_policy(params: Any) -> SmoothPolicy:
    """Factory for ``MOLMOACT2_TEST_POLICY_FACTORY`` (see policy_factory.TEST_POLICY_ENV)."""
    return SmoothPolicy(params)


# -- node processes ---------------------------------------------------------------------------


def unique_namespace(prefix: str = "rel") -> str:
    return f"/{prefix}_{uuid.uuid4().hex[:8]}"


@dataclass
class NodeProcess:
    """One node of a robot's graph as its own process, started like ``molmoact2 launch`` does."""

    robot: str
    node: str  # graph node name (e.g. molmoact2_policy, so101_driver, sim_cameras)
    namespace: str
    overrides: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    prefix: Sequence[str] = ()  # e.g. ("ip", "netns", "exec", "a")
    workdir: Path | None = None
    process: subprocess.Popen | None = None
    output: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    def command(self) -> list[str]:
        import tempfile

        from molmoact2 import graph
        from molmoact2.supervisor import node_command, write_overrides

        spec = next(n for n in graph.build_graph(self.robot) if n.name == self.node)
        spec = dataclasses.replace(spec, overrides={**spec.overrides, **self.overrides})
        directory = self.workdir or Path(tempfile.mkdtemp(prefix="reliability-"))
        return [*self.prefix, *node_command(spec, self.namespace, write_overrides(spec, directory))]

    def start(self) -> NodeProcess:
        env = dict(os.environ)
        env.update(self.env)
        self.output = []
        self.process = subprocess.Popen(
            self.command(),
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in iter(self.process.stdout.readline, ""):
            self.output.append(line)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def text(self) -> str:
        return "".join(self.output)

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGINT (clean rclpy shutdown), then SIGKILL; returns the exit status."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._reader is not None:
            self._reader.join(timeout=2.0)
        return self.process.returncode


def smooth_policy_process(robot: str, namespace: str, **overrides: Any) -> NodeProcess:
    """The policy node running the smooth test policy, fast status for tests."""
    from molmoact2_policy.policy_factory import TEST_POLICY_ENV

    return NodeProcess(
        robot,
        "molmoact2_policy",
        namespace,
        overrides={"status_rate": 5.0, **overrides},
        env={TEST_POLICY_ENV: SMOOTH_POLICY_FACTORY},
    )


# -- in-process ROS: the driver, a probe, camera and joint-state feeds ------------------------


@dataclass
class Received:
    """What the probe saw, appended from the executor thread (list appends are atomic)."""

    commanded: list[tuple[float, np.ndarray, np.ndarray]] = field(default_factory=list)
    chunks: list[Any] = field(default_factory=list)
    statuses: list[Any] = field(default_factory=list)
    diagnostics: list[Any] = field(default_factory=list)  # DiagnosticStatus

    def latest_status(self) -> Any:
        return self.statuses[-1] if self.statuses else None

    def driver_diag(self, driver: str) -> dict[str, str] | None:
        for status in reversed(self.diagnostics):
            if status.name.endswith(f"{driver}: driver"):
                return {kv.key: kv.value for kv in status.values} | {
                    "_level": str(int.from_bytes(status.level, "little")
                                  if isinstance(status.level, bytes) else status.level),
                    "_message": status.message,
                }
        return None


class RosHarness:
    """One rclpy context in the test process: optional driver node, probe node, feeds.

    A ``SingleThreadedExecutor`` spins everything in a background thread; the test thread
    waits on conditions with ``wait_until``.
    """

    def __init__(self, robot: str, namespace: str) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self.robot = robot
        self.namespace = namespace
        self.driver_node_name = driver_name(robot)
        self.shared = robot_section(robot, "molmoact2_policy")
        self.context = Context()
        rclpy.init(context=self.context)
        # One thread: rclpy's MultiThreadedExecutor let the 250 Hz commanded-state
        # subscription starve the in-process driver's control timer (250 Hz -> ~5 Hz).
        self.executor = SingleThreadedExecutor(context=self.context)
        self.received = Received()
        self.driver: Any = None
        self.stream_starts: list[int] = []  # command log lengths at each (re)start
        self.probe: Any = None
        self._thread: threading.Thread | None = None
        self._timers: list[Any] = []
        self._make_probe()

    # -- nodes --
    def _make_probe(self) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import JointState

        from molmoact2_msgs.msg import ActionChunk, PolicyStatus

        node = rclpy.create_node(
            "reliability_probe", namespace=self.namespace, context=self.context
        )
        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)

        def on_command(msg: Any) -> None:
            stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            self.received.commanded.append(
                (stamp, np.array(msg.position), np.array(msg.velocity))
            )

        node.create_subscription(
            JointState,
            f"{self.driver_node_name}/commanded_joint_states",
            on_command,
            qos_profile_sensor_data,
        )
        node.create_subscription(
            ActionChunk, "molmoact2_policy/action_chunk", self.received.chunks.append, reliable
        )
        node.create_subscription(
            PolicyStatus, "molmoact2_policy/status", self.received.statuses.append, reliable
        )
        node.create_subscription(
            DiagnosticArray,
            "/diagnostics",
            lambda msg: self.received.diagnostics.extend(msg.status),
            reliable,
        )
        self.probe = node
        self.executor.add_node(node)

    def add_driver(self, overrides: dict[str, Any] | None = None) -> Any:
        """The robot's driver node, configured from its config plus ``overrides``, active."""
        import tempfile

        from hw_drivers.driver_node import DriverNode
        from molmoact2 import graph

        config = graph.load_robot_config(self.robot)
        body = {f"/**/{self.driver_node_name}": {"ros__parameters": {
            "backend": "sim", "autostart": False, **(overrides or {})}}}
        path = Path(tempfile.mkdtemp(prefix="reliability-driver-")) / "overrides.yaml"
        path.write_text(yaml.safe_dump(body))
        node = DriverNode(
            self.driver_node_name,
            namespace=self.namespace,
            context=self.context,
            cli_args=["--ros-args", "--params-file", str(config.path), "--params-file", str(path)],
        )
        self.executor.add_node(node)
        from rclpy.lifecycle import TransitionCallbackReturn

        result = node.trigger_configure()
        if result != TransitionCallbackReturn.SUCCESS:
            raise RuntimeError(f"driver configure failed: {result}")
        self._mark_command_streams(node._loop)
        node.trigger_activate()
        self.driver = node
        return node

    def _mark_command_streams(self, loop: Any) -> None:
        """Note where each command stream starts in the backend's command log.

        Every (re)start energises at the measured pose and starts a new stream: a reconnect
        the test did not plan (a freeze on a loaded machine) is one too, and its first command
        may differ from the last before the fault (a DaMiao re-enable moves the grippers).
        """
        original_start = loop.start

        def start(*args: Any, **kwargs: Any) -> Any:
            self.stream_starts.append(len(loop.backend.command_log))
            return original_start(*args, **kwargs)

        loop.start = start

    def command_streams(self) -> list[list[np.ndarray]]:
        """The command log cut where each (re)start began a new stream, oldest first."""
        with self.driver._lock:
            log = [command for _, command in self.driver._loop.backend.command_log]
            cuts = sorted({0, *self.stream_starts, len(log)})
        if len(log) == self.driver._loop.backend.COMMAND_LOG_LENGTH:
            raise RuntimeError("the command log is full: its indices no longer match the starts")
        return [log[a:b] for a, b in itertools.pairwise(cuts) if b > a]

    # -- spinning --
    def start(self) -> RosHarness:
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()
        return self

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass

    def close(self) -> None:
        import rclpy

        # Stop spinning before the driver destroys its entities, then shut the context down.
        self.executor.shutdown(timeout_sec=5.0)
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        try:
            if self.driver is not None:
                self.driver._teardown()
        finally:
            rclpy.try_shutdown(context=self.context)

    # -- driver access --
    @property
    def backend(self) -> Any:
        return self.driver._loop.backend

    def command_log(self) -> list[tuple[float, np.ndarray]]:
        """Every command the backend was sent so far (copied under the driver's lock)."""
        with self.driver._lock:
            return list(self.driver._loop.backend.command_log)

    def executor_stats(self) -> Any:
        with self.driver._lock:
            return dataclasses.replace(self.driver._loop.executor.stats)

    def driver_state(self) -> str:
        with self.driver._lock:
            loop = self.driver._loop
            return "fault" if loop.faulted else loop.executor.state

    def call(self, srv_type: Any, name: str, request: Any, timeout: float = 10.0) -> Any:
        client = self.probe.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise TimeoutError(f"service {name} not available")
            future = client.call_async(request)
            if not wait_until(future.done, timeout):
                raise TimeoutError(f"service {name} did not answer")
            return future.result()
        finally:
            self.probe.destroy_client(client)

    def now(self) -> float:
        return self.probe.get_clock().now().nanoseconds * 1e-9

    # -- feeds --
    def add_camera_feed(
        self,
        rate: float = 30.0,
        shape: tuple[int, int, int] = TEST_IMAGE_SHAPE,
        transports: Sequence[str] | None = None,
    ) -> CameraFeed:
        feed = CameraFeed(self, rate, shape, transports)
        self._timers.append(feed)
        return feed

    def add_chunk_feed(
        self, rate: float = 10.0, amplitude: float = 0.05, step_dt: float = 1 / 30
    ) -> ChunkFeed:
        feed = ChunkFeed(self, rate, amplitude, step_dt)
        self._timers.append(feed)
        return feed


class ChunkFeed:
    """Chunks published by the test at ``rate``: a small sine around the pose measured at start.

    Stands in for the policy node where only the driver is under test; ``paused`` stops it.
    """

    def __init__(self, harness: RosHarness, rate: float, amplitude: float, step_dt: float) -> None:
        from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        from molmoact2_msgs.msg import ActionChunk

        self.harness = harness
        self.amplitude = amplitude
        self.step_dt = step_dt
        self.horizon = 30
        self.paused = False
        self.published = 0
        self.center: np.ndarray | None = None
        self.joint_names = tuple(harness.shared["joint_names"])
        self._pub = harness.probe.create_publisher(
            ActionChunk,
            "molmoact2_policy/action_chunk",
            QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE),
        )
        self._timer = harness.probe.create_timer(
            1.0 / rate, self._publish, callback_group=MutuallyExclusiveCallbackGroup()
        )

    def _publish(self) -> None:
        from hw_drivers.chunk import Chunk
        from hw_drivers.conversions import chunk_to_msg

        if self.paused:
            return
        if self.center is None:
            with self.harness.driver._lock:
                reading = self.harness.driver._loop.last_reading
            if reading is None:
                return
            # Inside the limits by the amplitude: a YAM gripper calibrated at torque enable
            # rests on its open end stop (opening 1.0), a sine around it would leave [0, 1].
            params = self.harness.driver.params
            self.center = np.clip(
                np.array(reading.positions, dtype=float),
                np.asarray(params.position_lower, dtype=float) + self.amplitude,
                np.asarray(params.position_upper, dtype=float) - self.amplitude,
            )
        now = self.harness.now()
        times = now + self.step_dt * np.arange(self.horizon)
        phase = np.arange(len(self.joint_names)) * 0.7
        positions = self.center + self.amplitude * np.sin(
            2 * math.pi * SMOOTH_FREQUENCY * times[:, None] + phase
        )
        chunk = Chunk(now, 0.0, self.step_dt, self.joint_names, positions, self.published)
        self._pub.publish(chunk_to_msg(chunk))
        self.published += 1


class CameraFeed:
    """The robot's cameras, published by the test with faults on cue.

    ``paused``: cameras that publish nothing; ``stamp_offset``: seconds added to a camera's
    stamps (negative: old frames, or a clock that jumped backwards).
    """

    def __init__(
        self,
        harness: RosHarness,
        rate: float,
        shape: tuple[int, int, int],
        transports: Sequence[str] | None = None,
    ) -> None:
        from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image

        self.harness = harness
        self.names = tuple(harness.shared["camera_names"])
        self.paused: set[str] = set()
        self.stamp_offset: dict[str, float] = {}
        self.published = 0
        self._rng = np.random.default_rng(0)
        self._images = {n: self._rng.integers(0, 255, shape, dtype=np.uint8) for n in self.names}
        node = harness.probe
        from sensor_msgs.msg import CompressedImage

        self.transports = dict(zip(self.names, transports or ("raw",) * len(self.names),
                                   strict=True))
        self._pubs = {
            name: node.create_publisher(
                CompressedImage if self.transports[name] == "compressed" else Image,
                topic,
                qos_profile_sensor_data,
            )
            for name, topic in zip(self.names, harness.shared["camera_topics"], strict=True)
        }
        self._timer = node.create_timer(
            1.0 / rate, self._publish, callback_group=MutuallyExclusiveCallbackGroup()
        )

    def _publish(self) -> None:
        from hw_drivers.conversions import seconds_to_time_msg
        from molmoact2_policy.image_conversion import make_image_msg

        now = self.harness.now()
        for name in self.names:
            if name in self.paused:
                continue
            stamp = seconds_to_time_msg(now + self.stamp_offset.get(name, 0.0))
            frame = f"{name}_optical_frame"
            if self.transports[name] == "compressed":
                msg = jpeg_msg(self._images[name], stamp, frame)
            else:
                msg = make_image_msg(self._images[name], stamp=stamp, frame_id=frame)
            self._pubs[name].publish(msg)
            self.published += 1


def jpeg_msg(rgb: np.ndarray, stamp: Any, frame_id: str) -> Any:
    """sensor_msgs/CompressedImage (jpeg) of an RGB image."""
    import cv2
    from sensor_msgs.msg import CompressedImage

    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    msg = CompressedImage()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.format = "jpeg"
    msg.data = data.tobytes()
    return msg


# -- process memory -----------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    import psutil

    return int(psutil.Process(pid).memory_info().rss)


# -- a probe process (for tests that cannot host the probe in the test process) ------------------


def probe_main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.system.reliability_util ROBOT NAMESPACE SECONDS``: print one JSON line
    with the chunks seen and the driver's latest diagnostics after SECONDS (or at the first
    accepted chunk + 3 s)."""
    import json
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    robot, namespace, seconds = args[0], args[1], float(args[2])
    h = RosHarness(robot, namespace).start()
    try:
        def accepted() -> int:
            diag = h.received.driver_diag(h.driver_node_name) or {}
            return int(diag.get("accepted_chunks", "0"))

        wait_until(lambda: accepted() >= 5, seconds)
        diag = h.received.driver_diag(h.driver_node_name) or {}
        status = h.received.latest_status()
        print(json.dumps({
            "chunks_seen": len(h.received.chunks),
            "driver": diag,
            "policy_state": status.state if status is not None else "",
            "policy_error": status.last_error if status is not None else "",
            "commanded": len(h.received.commanded),
        }), flush=True)
    finally:
        h.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(probe_main())
