"""`molmoact2 launch <robot>` as a user runs it (issue: launch as a user runs it).

With no checkpoint argument the config's default (the demo checkpoint, cached per test session
through ``XDG_CACHE_HOME``) moves the simulated arm. A subscriber with default QoS (reliable,
as most user code and tools create) receives ``joint_states`` and chunks. Then the graph is
stopped the ways users stop it: a terminal's Ctrl-C (SIGINT to the whole process group, then
SIGINT again to each node, as launch forwards it), SIGTERM, SIGHUP (terminal closed), and the
launcher killed with SIGKILL. Every node exits 0 with no traceback and the MCAP recording is
complete; after SIGKILL no node keeps commanding the arm.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from molmoact2.report import load_recording, summarize

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 240.0  # process start, torch import and model load on a loaded 2-core box
MOTION_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0  # the supervisor itself gives up on a node after 5 + 5 s
MCAP_MAGIC = b"\x89MCAP0\r\n"
DEPTH_TOPIC = "/molmoact2_depth_cache/depth_tokens"


@pytest.fixture(scope="session")
def demo_checkpoint():
    """Makes (once per cache; CI keeps the cache in the clone) the robot's demo checkpoint."""
    from molmoact2.demo_checkpoint import ensure_demo_checkpoint

    def get(robot: str) -> Path:
        return ensure_demo_checkpoint(robot, log=lambda _t: None)

    return get


class Observer:
    """A ROS node in the test process subscribing with default (reliable) QoS, as user code."""

    def __init__(self, driver: str) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile
        from sensor_msgs.msg import JointState

        from molmoact2_msgs.msg import ActionChunk, DepthTokens

        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("bringup_observer", context=self.context)
        self.lock = threading.Lock()
        self.positions: list[np.ndarray] = []
        self.chunks = 0
        self.commanded_at: list[float] = []
        default_qos = QoSProfile(depth=10)  # reliable, volatile: rclpy's default
        self.node.create_subscription(JointState, "/joint_states", self._on_joints, default_qos)
        self.node.create_subscription(
            ActionChunk, "/molmoact2_policy/action_chunk", self._on_chunk, default_qos
        )
        self.node.create_subscription(
            JointState, f"/{driver}/commanded_joint_states", self._on_command, default_qos
        )
        self.depth_at: list[float] = []
        self.node.create_subscription(
            DepthTokens, DEPTH_TOPIC, lambda _m: self._stamp(self.depth_at), default_qos
        )
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        import rclpy

        while rclpy.ok(context=self.context):
            try:
                self.executor.spin_once(timeout_sec=0.1)
            except Exception:
                return

    def _on_joints(self, msg) -> None:
        with self.lock:
            self.positions.append(np.array(msg.position))

    def _on_chunk(self, _msg) -> None:
        with self.lock:
            self.chunks += 1

    def _on_command(self, _msg) -> None:
        self._stamp(self.commanded_at)

    def _stamp(self, arrivals: list[float]) -> None:
        with self.lock:
            arrivals.append(time.monotonic())

    def wait_until_depth_recorded(self, timeout: float, proc: subprocess.Popen) -> bool:
        """Think: the recorder subscribes to the depth tokens when discovery shows them (the
        depth node starts at configure, a loaded box can take seconds to discover it), so the
        graph must not be stopped before a depth message has been published to it."""
        deadline = time.monotonic() + timeout
        subscribed_at = None
        while time.monotonic() < deadline and proc.poll() is None:
            if subscribed_at is None and any(
                info.node_name == "recorder"
                for info in self.node.get_subscriptions_info_by_topic(DEPTH_TOPIC)
            ):
                subscribed_at = time.monotonic()
            with self.lock:
                if subscribed_at is not None and any(t > subscribed_at for t in self.depth_at):
                    return True
            time.sleep(0.1)
        return False

    def wait_until_moving(self, timeout: float, proc: subprocess.Popen) -> tuple[int, float]:
        """(chunks, largest joint excursion) once chunks arrived and the arm moved."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            with self.lock:
                chunks = self.chunks
                moved = (
                    float(np.max(np.ptp(np.array(self.positions), axis=0)))
                    if len(self.positions) > 1
                    else 0.0
                )
            if chunks >= 3 and moved > 0.05:
                return chunks, moved
            time.sleep(0.1)
        return chunks, moved

    def close(self) -> None:
        import rclpy

        self.executor.shutdown(timeout_sec=0.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self.thread.join(timeout=5)


class Graph:
    """``molmoact2 launch`` in its own process group, as a terminal runs it."""

    def __init__(self, robot: str, think: bool, record_dir: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "molmoact2.cli", "launch", robot, "--record",
             "--record-dir", str(record_dir), *(["--think"] if think else [])],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.active = threading.Event()
        self.reader = threading.Thread(target=self._pump, daemon=True)
        self.reader.start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if "[molmoact2_policy" in line and "active" in line:
                self.active.set()

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def node_pids(self) -> dict[str, int]:
        found = (re.search(r"started (\S+) \(pid (\d+)\)", line) for line in self.lines)
        return {m.group(1): int(m.group(2)) for m in found if m}

    def kill_all(self) -> None:
        for pid in [self.proc.pid, *self.node_pids().values()]:
            if not _gone(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.proc.wait()
        self.reader.join(timeout=5)


def _gone(pid: int) -> bool:
    """The process exited (reaped, or a zombie nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _check_recording(record_dir: Path, think: bool, log: str) -> None:
    recordings = list(record_dir.glob("*.mcap"))
    assert len(recordings) == 1, log[-3000:]
    data = recordings[0].read_bytes()
    assert data.startswith(MCAP_MAGIC) and data.endswith(MCAP_MAGIC), "truncated MCAP"
    rec = load_recording(recordings[0])
    summary = summarize(rec)
    assert summary["chunks"] > 0 and summary["commands"] > 0 and summary["measurements"] > 0
    camera_topics = [t for t in rec.counts if "/cameras/" in t]
    assert camera_topics and all(rec.counts[t] > 0 for t in camera_topics)
    # Think: the depth-cache node (in the policy's process, under its own name) published.
    assert (rec.counts.get("/molmoact2_depth_cache/depth_tokens", 0) > 0) == think, rec.counts
    if think:
        assert all(d["codes"].shape == (10, 10) for d in rec.depth)
        assert {c["mode"] for c in rec.chunks} == {"think"}


def _run_until_moving(robot: str, think: bool, tmp_path: Path) -> tuple[Graph, Observer]:
    from molmoact2 import graph as graph_mod

    driver = graph_mod.load_robot_config(robot).driver_name
    observer = Observer(driver)
    graph = Graph(robot, think, tmp_path / "rec")
    assert graph.active.wait(READY_TIMEOUT), "policy never became active:\n" + graph.log[-3000:]
    chunks, moved = observer.wait_until_moving(MOTION_TIMEOUT, graph.proc)
    assert graph.proc.poll() is None, "the graph died:\n" + graph.log[-3000:]
    # Default checkpoint, default-QoS subscriber: chunks arrive and the arm moves.
    assert chunks >= 3 and moved > 0.05, f"{chunks} chunks, moved {moved:.3f}\n{graph.log[-3000:]}"
    if think:
        assert observer.wait_until_depth_recorded(MOTION_TIMEOUT, graph.proc), (
            "no depth tokens after the recorder subscribed:\n" + graph.log[-3000:]
        )
    assert "demo checkpoint for" in graph.log  # the log says which checkpoint it used
    return graph, observer


def _stop_and_check(graph: Graph, signals: list[tuple[str, int]], think: bool, tmp_path: Path):
    pids = graph.node_pids()
    for target, sig in signals:
        if target == "group":
            os.killpg(graph.proc.pid, sig)
        else:
            for pid in pids.values():
                # A node may already have stopped and been reaped (a loaded box can pause us).
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
    code = graph.proc.wait(timeout=STOP_TIMEOUT)
    graph.reader.join(timeout=10)
    log = graph.log
    assert code == 0, log[-4000:]
    line = next((x for x in graph.lines if "node exit codes:" in x), "")
    codes = dict(re.findall(r"(\S+?)=(-?\d+)", line.split("node exit codes:", 1)[-1]))
    assert set(codes) == set(pids) and set(codes.values()) == {"0"}, line or log[-3000:]
    assert "Traceback" not in log and "terminate called" not in log, log[-4000:]
    assert "SIGTERM to" not in log and "SIGKILL to" not in log, log[-4000:]  # no escalation
    assert "stopped: holding the arm where it is" in log, log[-3000:]
    _check_recording(tmp_path / "rec", think, log)


@pytest.mark.parametrize(
    ("robot", "think"), [("yam", False), ("so101", False), ("droid", False), ("yam", True)]
)
def test_default_launch_moves_the_arm_and_ctrl_c_stops_every_node(
    robot, think, demo_checkpoint, tmp_path
):
    demo_checkpoint(robot)
    graph, observer = _run_until_moving(robot, think, tmp_path)
    try:
        # A terminal's Ctrl-C, then launch forwarding SIGINT to each node.
        _stop_and_check(graph, [("group", signal.SIGINT), ("nodes", signal.SIGINT)], think,
                        tmp_path)
    finally:
        if graph.proc.poll() is None:
            graph.kill_all()
        observer.close()


@pytest.mark.parametrize(
    ("robot", "sig"), [("droid", signal.SIGTERM), ("so101", signal.SIGHUP)], ids=["term", "hup"]
)
def test_sigterm_and_hangup_stop_every_node_cleanly(robot, sig, demo_checkpoint, tmp_path):
    demo_checkpoint(robot)
    graph, observer = _run_until_moving(robot, False, tmp_path)
    try:
        _stop_and_check(graph, [("group", sig)], False, tmp_path)
    finally:
        if graph.proc.poll() is None:
            graph.kill_all()
        observer.close()


def test_nodes_stop_commanding_when_the_launcher_is_killed(demo_checkpoint, tmp_path):
    demo_checkpoint("yam")
    graph, observer = _run_until_moving("yam", True, tmp_path)
    pids = graph.node_pids()
    try:
        graph.proc.kill()  # SIGKILL: the launcher can neither forward nor clean up
        killed_at = time.monotonic()
        graph.proc.wait()
        deadline = killed_at + STOP_TIMEOUT
        while time.monotonic() < deadline and not all(_gone(p) for p in pids.values()):
            time.sleep(0.1)
        stopped = {name: _gone(pid) for name, pid in pids.items()}
        assert all(stopped.values()), stopped
        with observer.lock:
            last_command = max(observer.commanded_at, default=killed_at)
        # The driver stopped commanding promptly (its own exit deadline is 4 s).
        assert last_command - killed_at < 6.0, last_command - killed_at
    finally:
        for pid in pids.values():
            if not _gone(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        observer.close()
    # The recorder noticed too and closed its file.
    _check_recording(tmp_path / "rec", True, graph.log)
