"""Node processes stop cleanly however they are stopped (``molmoact2_common.ros_runtime``).

A probe node (tests/ros/stop_probe_node.py) runs through the same runtime helper as every node
of the suite. Signals are sent as a terminal and launch send them: SIGINT to the process group
and at once SIGINT again to the node; SIGTERM; SIGHUP; and the launcher killed with SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from molmoact2_common import fastdds_shm
from molmoact2_common.ros_runtime import (
    make_executor,
    spin_until_shutdown,
)

pytestmark = pytest.mark.ros

REPO = Path(__file__).resolve().parents[2]
PROBE = str(REPO / "tests" / "ros" / "stop_probe_node.py")
STOP_BOUND = 15.0  # generous for a loaded 2-core box; the node's own deadline is 3 s


class Output:
    """Collects a process's output lines; ``wait_for`` blocks until a line contains a text."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream) -> None:
        for line in stream:
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self.lines.append("")  # EOF marker
            self._cond.notify_all()

    def wait_for(self, text: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (self.lines and self.lines[-1] == ""):
                    raise AssertionError(f"no {text!r} in output:\n{self.text}")
                self._cond.wait(left)

    def close(self) -> str:
        self._thread.join(timeout=10)
        return self.text

    @property
    def text(self) -> str:
        return "".join(self.lines)


def start_probe(mode: str, executor: str = "single", **popen) -> tuple[subprocess.Popen, Output]:
    proc = subprocess.Popen(
        [sys.executable, "-u", PROBE, mode, executor],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal gives a launch
        **popen,
    )
    output = Output(proc.stdout)
    output.wait_for("ready pid=")
    return proc, output


def stop_and_wait(proc: subprocess.Popen, signals: list[int], group_first: bool) -> int:
    try:
        for index, sig in enumerate(signals):
            if index == 0 and group_first:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        return proc.wait(timeout=STOP_BOUND)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    ("signals", "group_first"),
    [
        ([signal.SIGINT, signal.SIGINT], True),  # terminal Ctrl-C, then launch's SIGINT
        ([signal.SIGTERM], False),
        ([signal.SIGHUP], True),  # terminal closed
        ([signal.SIGINT, signal.SIGTERM, signal.SIGINT], True),  # an impatient user
    ],
    ids=["sigint-twice", "sigterm", "sighup", "int-term-int"],
)
@pytest.mark.parametrize("executor", ["single", "events"])
def test_every_stop_signal_ends_the_node_cleanly_once(signals, group_first, executor):
    proc, output = start_probe("quick", executor)
    code = stop_and_wait(proc, signals, group_first)
    log = output.close()
    assert code == 0, log
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, log
    assert log.count("on_exit ran (stop_requested=True)") == 1, log
    # Signals sent back to back may be taken in either order; the first one starts the stop.
    assert log.count("stopping: ") == 1, log
    assert any(f"stopping: {signal.Signals(s).name}" in log for s in signals), log
    # Python logging of the suite's modules went out through the node's ROS logger.
    assert "[stop_probe]: molmoact2_common.stop_probe: python logging bridged" in log, log


@pytest.mark.parametrize("executor", ["single", "events"])
def test_a_call_in_flight_does_not_hold_up_the_stop(executor):
    # A worker thread stuck in a long call (an inference): the node waits for it briefly,
    # then exits 0 without the interpreter waiting on that thread.
    proc, output = start_probe("busy", executor)
    code = stop_and_wait(proc, [signal.SIGINT, signal.SIGINT], group_first=True)
    log = output.close()
    assert code == 0, log
    assert "Traceback" not in log and "terminate called" not in log, log


def test_a_cleanup_that_hangs_is_ended_by_the_deadline_with_an_error():
    proc, output = start_probe("hang")
    code = stop_and_wait(proc, [signal.SIGTERM], group_first=False)
    log = output.close()
    assert code == 1, log
    # The phase it names is where the main thread was (cleanup here, unless a loaded machine
    # kept it from even leaving its spin loop in 3 s); either way the exit is an error.
    assert "did not stop within 3 s of SIGTERM (stuck in: " in log, log
    # Where it hung: every thread's stack, the probe's hanging on_exit among them.
    assert "where each thread was:" in log and "in on_exit" in log, log


def test_a_stopped_node_leaves_no_shared_memory_behind():
    # The process skips the DDS teardown (os._exit); the files it would have removed must go
    # all the same, or /dev/shm fills up run after run.
    proc, output = start_probe("quick")
    owned = fastdds_shm.locked_files(proc.pid)
    assert any(Path(f).name.startswith("fastdds_port") for f in owned), owned
    assert all(os.path.exists(f) for f in owned), owned
    assert stop_and_wait(proc, [signal.SIGTERM], group_first=False) == 0, output.close()
    assert [f for f in owned if os.path.exists(f)] == [], output.close()


def test_a_native_crash_prints_every_threads_python_stack():
    # A node that dies of SIGSEGV while it is being built: in CI the tf node did, with status
    # -11 and no line at all to say where.
    result = subprocess.run(
        [sys.executable, "-u", PROBE, "segv"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == -signal.SIGSEGV, result
    assert "Fatal Python error: Segmentation fault" in result.stderr, result.stderr
    # The main thread's stack down to the faulting call, and the other threads (the stop
    # watcher) too.
    current = result.stderr.split("Current thread", 1)[1]
    assert "stop_probe_node.py" in current and "__init__" in current, result.stderr
    assert "_watch" in result.stderr, result.stderr


def _gone(pid: int) -> bool:
    """The process exited (reaped, or a zombie nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _kill_launcher_and_wait_for_the_node(
    launcher: subprocess.Popen, check_node: Callable[[int], None] = lambda pid: None
) -> str:
    """SIGKILL ``launcher`` once its node is up; the node's log after it stopped by itself.
    ``check_node(pid)`` runs on the live node first. A node left running is killed."""
    output = Output(launcher.stdout)
    try:
        pid = int(output.wait_for("ready pid=").rsplit("pid=", 1)[1])
        check_node(pid)
        launcher.kill()
        launcher.wait()
        output.wait_for("on_exit ran", timeout=STOP_BOUND)
        deadline = time.monotonic() + STOP_BOUND
        while not _gone(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(pid), output.text
    finally:
        for line in [line for line in output.lines if "ready pid=" in line][:1]:
            stray = int(line.rsplit("pid=", 1)[1])
            if not _gone(stray):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(stray, signal.SIGKILL)
    log = output.close()
    assert "Traceback" not in log, log
    return log


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_nodes_stop_when_their_launcher_is_killed():
    # The launcher starts the probe and waits; the probe shares our pipe, so its output is
    # still readable after the launcher is gone.
    launcher = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys; subprocess.Popen([sys.executable, '-u', sys.argv[1], "
         "'quick']).wait()", PROBE],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    log = _kill_launcher_and_wait_for_the_node(launcher)
    assert "stopping: parent process exited" in log, log


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")
def test_nodes_stop_when_their_launcher_is_killed_behind_a_wrapper():
    """A wrapper between launcher and node (``ros2 launch --launch-prefix``, ``bash -c``)
    outlives the launcher, so the node's parent never dies: MOLMOACT2_LAUNCHER_PID names the
    launcher, and the node stops as on SIGTERM when it is gone."""
    launcher = subprocess.Popen(
        [sys.executable, "-c",
         "import os, subprocess, sys\n"
         "env = dict(os.environ, MOLMOACT2_LAUNCHER_PID=str(os.getpid()))\n"
         "subprocess.Popen(['bash', '-c', '\"$@\"; exit $?', 'wrap', sys.executable, '-u',"
         " sys.argv[1], 'quick'], env=env).wait()", PROBE],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )

    def the_wrapper_is_its_parent(pid: int) -> None:
        assert _parent_of(pid) != launcher.pid

    log = _kill_launcher_and_wait_for_the_node(launcher, the_wrapper_is_its_parent)
    assert f"stopping: launcher (pid {launcher.pid}) exited" in log, log


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def test_launcher_from_env_ignores_unset_malformed_and_self():
    from molmoact2_common.ros_runtime import ENV_LAUNCHER_PID, launcher_from_env

    assert launcher_from_env({}) is None
    assert launcher_from_env({ENV_LAUNCHER_PID: "x"}) is None
    assert launcher_from_env({ENV_LAUNCHER_PID: str(os.getpid())}) is None
    pid, start = launcher_from_env({ENV_LAUNCHER_PID: str(os.getppid())})
    assert pid == os.getppid() and start != "gone"


def test_under_nohup_sighup_does_not_stop_the_node():
    proc, output = start_probe(
        "quick", preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN)
    )
    os.killpg(proc.pid, signal.SIGHUP)
    # Still publishing after the hangup: wait for it to say so through a second stop signal.
    code = stop_and_wait(proc, [signal.SIGTERM], group_first=False)
    log = output.close()
    assert code == 0, log
    assert "stopping: SIGTERM" in log and "SIGHUP" not in log, log


class RaisingExecutor:
    def __init__(self, context, shutdown_first: bool) -> None:
        self.context = context
        self.shutdown_first = shutdown_first

    def spin_once(self, timeout_sec=None) -> None:
        import rclpy

        if self.shutdown_first:
            rclpy.shutdown(context=self.context)
        raise RuntimeError("Unable to convert call argument '0' to Python object")


def test_runtime_error_after_shutdown_is_a_clean_stop():
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context)
    spin_until_shutdown(RaisingExecutor(context, shutdown_first=True))
    assert not rclpy.ok(context=context)


def test_runtime_error_while_running_propagates():
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context)
    try:
        with pytest.raises(RuntimeError, match="Unable to convert"):
            spin_until_shutdown(RaisingExecutor(context, shutdown_first=False))
    finally:
        rclpy.shutdown(context=context)


def test_make_executor_kinds(monkeypatch):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    rclpy.init()
    try:
        assert isinstance(make_executor("single"), SingleThreadedExecutor)
        events = make_executor("events")
        assert not isinstance(events, SingleThreadedExecutor)
        assert type(events).__name__ == "EventsExecutor"
        with pytest.raises(ValueError, match="'threads'"):
            make_executor("threads")
        # An rclpy without the EventsExecutor (older distributions): the single-threaded one.
        monkeypatch.setitem(sys.modules, "rclpy.experimental", None)
        assert isinstance(make_executor("events"), SingleThreadedExecutor)
    finally:
        rclpy.shutdown()


@pytest.mark.parametrize("clock", ["none", "published", "wall"])
def test_a_node_on_sim_time_without_clock_says_so(clock):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from rosgraph_msgs.msg import Clock

    from molmoact2_common.ros_runtime import warn_without_clock

    class Stop:
        requested = threading.Event()

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node(
            "clock_check",
            context=context,
            parameter_overrides=[Parameter("use_sim_time", value=clock != "wall")],
        )
        warnings: list[str] = []
        node.get_logger().warning = warnings.append  # what the check says, nothing else
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        if clock == "published":
            peer = rclpy.create_node("clock_source", context=context)
            executor.add_node(peer)
            pub = peer.create_publisher(Clock, "/clock", 10)
            msg = Clock()
            msg.clock.sec = 42
            deadline = time.monotonic() + 10.0
            while node.get_clock().now().nanoseconds == 0 and time.monotonic() < deadline:
                pub.publish(msg)
                executor.spin_once(timeout_sec=0.05)
            assert node.get_clock().now().nanoseconds > 0
        thread = warn_without_clock(node, Stop(), grace=0.2)
        assert (thread is None) == (clock == "wall")
        if thread is not None:
            thread.join(timeout=10.0)
        said = [w for w in warnings if "no /clock arrived" in w]
        assert len(said) == (1 if clock == "none" else 0), warnings
        executor.shutdown()
    finally:
        rclpy.shutdown(context=context)
