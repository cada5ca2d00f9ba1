"""The driver's control loop does not share the rclpy executor's thread.

The real driver node (sim backend) spins on a single-threaded executor, as in its process
(``ros_runtime``). A callback that holds that executor for 0.5 s (as a 1M-entry parameter
request did) must not hold the control loop: it keeps ticking and commanding the arm. A tick
that raises is a backend fault (the arm holds), counted on /diagnostics.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from tests.ros.driver_harness import latest, wait_for
from tests.rostest_util import REPO_ROOT

pytestmark = pytest.mark.ros

BLOCK = 0.5  # [s] the executor is held this long
RATE = 100.0  # so101.yaml's control_rate: about 50 ticks in the block


@contextlib.contextmanager
def driver_on_one_executor_thread(*args: str, ticking: bool = True) -> Iterator[tuple]:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.lifecycle import TransitionCallbackReturn

    from hw_drivers.driver_node import DriverNode

    namespace = f"/t_{uuid.uuid4().hex[:8]}"
    context = rclpy.Context()
    rclpy.init(context=context)
    node = DriverNode(
        "so101_driver",
        namespace=namespace,
        context=context,
        cli_args=[
            "--ros-args",
            "--params-file",
            str(REPO_ROOT / "config" / "so101.yaml"),
            "-p",
            f"control_rate:={RATE}",
            *args,
        ],
    )
    diagnostics: list = []
    probe = rclpy.create_node("probe", namespace=namespace, context=context)
    probe.diagnostics = diagnostics
    probe.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 50)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    executor.add_node(probe)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        if ticking:
            assert wait_for(lambda: node._loop.stats.writes > 10, 30.0), "the driver never ticked"
        yield node, probe
    finally:
        executor.shutdown()
        # The spin thread must be out of its wait before the context goes: a wait on a shut
        # down context raises in that thread ("context is not valid").
        spinner.join(timeout=5.0)
        node._teardown()
        node.destroy_node()
        probe.destroy_node()
        rclpy.shutdown(context=context)


def test_control_loop_keeps_ticking_while_the_executor_thread_is_blocked():
    with driver_on_one_executor_thread() as (node, _):
        loop = node._loop
        during: list[tuple[int, int]] = []
        done = threading.Event()

        def hold_the_executor() -> None:
            timer.cancel()
            steps, writes = loop.stats.steps, loop.stats.writes
            time.sleep(BLOCK)  # any long callback: a huge parameter request, a slow service
            during.append((loop.stats.steps - steps, loop.stats.writes - writes))
            done.set()

        # A callback of the driver node itself, on the executor that runs all of its callbacks.
        timer = node.create_timer(0.01, hold_the_executor)
        assert done.wait(30.0)
        ticks, writes = during[0]
        # About BLOCK * RATE = 50; a timer on the executor's thread got 0.
        assert ticks >= 20, f"only {ticks} control ticks while the executor was blocked"
        assert writes >= 20  # and each of them commanded the arm


def test_a_tick_that_raises_is_a_backend_fault_reported_on_diagnostics():
    with driver_on_one_executor_thread() as (node, probe):
        diagnostics = probe.diagnostics
        loop = node._loop
        tick = loop.executor.tick
        calls = []

        def broken_once(now, measured):
            calls.append(now)
            if len(calls) == 1:
                raise ZeroDivisionError("a bug in the executor")
            return tick(now, measured)

        loop.executor.tick = broken_once
        assert wait_for(lambda: loop.stats.backend_errors >= 1, 30.0)
        assert "ZeroDivisionError: a bug in the executor" in loop.stats.last_error

        def reported():
            status = latest(diagnostics, ": driver")
            values = {kv.key: kv.value for kv in status.values} if status else {}
            return values if values.get("tick_errors") == "1" else None

        assert wait_for(reported, 30.0)
        values = reported()
        assert "ZeroDivisionError: a bug in the executor" in values["last_tick_error"]
        assert values["control_thread"] == "running"
        # The fault path reconnects (reconnect_period) and the loop commands the arm again.
        writes = loop.stats.writes
        assert wait_for(lambda: loop.stats.writes > writes + 10, 30.0)
        assert loop.stats.reconnects >= 1 and not loop.faulted


def test_under_sim_time_the_clock_publisher_paces_the_ticks():
    from rosgraph_msgs.msg import Clock

    with driver_on_one_executor_thread("-p", "use_sim_time:=true", ticking=False) as (node, probe):
        loop = node._loop
        clock_pub = probe.create_publisher(Clock, "/clock", 10)
        assert wait_for(lambda: clock_pub.get_subscription_count() > 0, 30.0)
        time.sleep(0.3)  # no /clock yet: sim time stands still, and so does the loop
        paused = loop.stats.steps
        assert paused <= 1
        # One second of sim time in 10 ms steps (one control period each).
        for k in range(1, 101):
            msg = Clock()
            msg.clock.sec, msg.clock.nanosec = 10 + k // 100, (k % 100) * 10_000_000
            clock_pub.publish(msg)
            time.sleep(0.005)
        assert wait_for(lambda: loop.stats.steps >= paused + 20, 30.0)
        time.sleep(0.3)  # the clock stopped again
        assert loop.stats.steps <= paused + 101  # never more than one tick per period


def test_a_dead_control_thread_is_an_error_on_diagnostics():
    from diagnostic_msgs.msg import DiagnosticStatus

    with driver_on_one_executor_thread() as (node, probe):
        loop = node._loop

        def broken(now, measured):
            raise ZeroDivisionError("a bug in the executor")

        def fault_handling_fails(now, error):
            raise RuntimeError("the fault path failed too")

        loop.fault = fault_handling_fails  # so the tick's error handler raises: the loop ends
        loop.executor.tick = broken

        def dead():
            status = latest(probe.diagnostics, ": driver")
            return status is not None and status.message.startswith("control loop stopped")

        assert wait_for(dead, 30.0)
        status = latest(probe.diagnostics, ": driver")
        values = {kv.key: kv.value for kv in status.values}
        assert status.level == DiagnosticStatus.ERROR
        assert "the fault path failed too" in status.message
        assert values["control_thread"].startswith("dead: RuntimeError")
        assert values["tick_errors"] == "1"


def test_a_tick_that_raises_every_time_latches_the_estop_named_on_diagnostics():
    # Before: fault -> reconnect -> fault forever, told only by throttled log lines.
    from diagnostic_msgs.msg import DiagnosticStatus

    args = ("-p", "reconnect_period:=0.1", "-p", "max_tick_errors:=3")
    with driver_on_one_executor_thread(*args) as (node, probe):
        loop = node._loop
        tick = loop.executor.tick

        def broken(now, measured):
            raise ZeroDivisionError("a bug in the executor")

        loop.executor.tick = broken

        def latched():
            status = latest(probe.diagnostics, ": driver")
            return status is not None and status.message.startswith("e-stop latched: 3 control")

        assert wait_for(latched, 30.0)
        status = latest(probe.diagnostics, ": driver")
        assert status.level == DiagnosticStatus.ERROR
        assert "ZeroDivisionError: a bug in the executor" in status.message
        assert loop.executor.estopped and loop.stats.reconnects >= 2
        # The bug gone, the arm stays held (e-stop) until the operator's ~/reset.
        loop.executor.tick = tick
        writes = loop.stats.writes
        assert wait_for(lambda: loop.stats.writes > writes + 10, 30.0)
        assert loop.executor.estopped
        from std_srvs.srv import Trigger

        response = node._on_reset(Trigger.Request(), Trigger.Response())
        assert response.success, response.message
        assert not loop.executor.estopped and not loop.estop_reason


class _RecordingLogger:
    """Stands in for the node's logger and keeps what it is asked to log. Not forwarded:
    rclpy ties a throttle to its call site, and all calls would come from here."""

    def __init__(self, logger) -> None:
        self._logger = logger
        self.lines: list[tuple[str, str]] = []

    def __getattr__(self, name):
        if name not in ("debug", "info", "warning", "warn", "error", "fatal"):
            return getattr(self._logger, name)

        def record(message, **kwargs):
            self.lines.append((name, message))

        return record


def _driver_status_values(probe):
    status = latest(probe.diagnostics, ": driver")
    return status, ({kv.key: kv.value for kv in status.values} if status else {})


@pytest.mark.parametrize("cause", ["operator", "tick_errors"])
def test_the_estop_reason_outlives_lifecycle_cycles_until_reset(cause):
    # Before: after cleanup -> configure the latch came back but not why (diagnostics said
    # "e-stop latched", the log "the e-stop latched before cleanup is still latched"), and an
    # operator's e-stop never had a reason on /diagnostics at all.
    from lifecycle_msgs.msg import State
    from rclpy.lifecycle import TransitionCallbackReturn
    from std_srvs.srv import Trigger

    args = ("-p", "reconnect_period:=0.1", "-p", "max_tick_errors:=3")
    with driver_on_one_executor_thread(*args) as (node, probe):
        logger = _RecordingLogger(node.get_logger())
        node.get_logger = lambda: logger
        loop = node._loop
        if cause == "operator":
            assert node._on_estop(Trigger.Request(), Trigger.Response()).success
            expected = "operator ~/estop"
        else:

            def broken(now, measured):
                raise ZeroDivisionError("a bug in the executor")

            loop.executor.tick = broken
            assert wait_for(lambda: loop.executor.estopped, 30.0)
            expected = loop.estop_reason
            assert expected.startswith("3 control tick errors"), expected
            assert any(expected in line for _, line in logger.lines)  # said when it latched
        ok = TransitionCallbackReturn.SUCCESS
        cycles = {
            "deactivate/activate": ("deactivate", "activate"),
            "cleanup/configure": ("deactivate", "cleanup", "configure", "activate"),
        }
        for name, steps in cycles.items():
            logger.lines.clear()
            for step in steps:
                assert getattr(node, f"trigger_{step}")() == ok, (name, step)
            assert node._state_machine.current_state[0] == State.PRIMARY_STATE_ACTIVE
            assert node._loop.executor.estopped and node._loop.estop_reason == expected, name
            probe.diagnostics.clear()

            def named():
                status, values = _driver_status_values(probe)
                return status is not None and values.get("estop_reason") == expected

            assert wait_for(named, 30.0), (name, _driver_status_values(probe))
            status, _ = _driver_status_values(probe)
            assert status.message.startswith(f"e-stop latched: {expected}; call ~/reset"), name
            if "configure" in steps:
                warnings = [line for level, line in logger.lines if level == "warning"]
                assert any("still latched" in w and expected in w for w in warnings), warnings
        response = node._on_reset(Trigger.Request(), Trigger.Response())
        assert response.success, response.message
        assert not node._loop.executor.estopped and node._loop.estop_reason == ""
        probe.diagnostics.clear()

        def cleared():
            status, values = _driver_status_values(probe)
            return status is not None and values.get("estop_reason") == ""

        assert wait_for(cleared, 30.0)
        assert not _driver_status_values(probe)[0].message.startswith("e-stop")


def test_with_on_fault_disable_recurring_faults_keep_the_torque_off_through_a_cleanup():
    # Before: each fault turned the torque off and its reconnect on again, for ever.
    from rclpy.lifecycle import TransitionCallbackReturn
    from std_srvs.srv import Trigger

    args = (
        "-p", "on_fault:=disable", "-p", "reconnect_period:=0.1", "-p", "max_backend_faults:=1"
    )
    with driver_on_one_executor_thread(*args) as (node, probe):
        logger = _RecordingLogger(node.get_logger())
        node.get_logger = lambda: logger
        node._loop.backend.inject_faults(1)
        assert wait_for(lambda: node._loop.torque_off_latched, 30.0)
        reason = node._loop.estop_reason
        assert "1 backend faults within 60 s with on_fault: disable" in reason, reason
        assert any(level == "error" and reason in line for level, line in logger.lines)
        # The link reconnects; the torque stays off, also after a lifecycle cleanup cycle.
        assert wait_for(lambda: node._loop.stats.reconnects >= 1, 30.0)
        ok = TransitionCallbackReturn.SUCCESS
        for step in ("deactivate", "cleanup", "configure", "activate"):
            assert getattr(node, f"trigger_{step}")() == ok, step
        loop = node._loop
        assert loop.torque_off_latched and loop.estop_reason == reason
        steps = loop.stats.steps
        assert wait_for(lambda: loop.stats.steps > steps + 20, 30.0)
        assert not loop.backend.is_enabled and loop.stats.writes == 0
        probe.diagnostics.clear()

        def named():
            status, values = _driver_status_values(probe)
            return status is not None and values.get("torque_off_latched") == "true"

        assert wait_for(named, 30.0)
        assert _driver_status_values(probe)[0].message.startswith(f"e-stop latched: {reason}")
        response = node._on_reset(Trigger.Request(), Trigger.Response())
        assert response.success, response.message
        assert loop.backend.is_enabled and not loop.torque_off_latched
        assert wait_for(lambda: loop.stats.writes > 10, 30.0)


def test_with_on_fault_hold_recurring_faults_latch_the_estop_with_the_torque_on():
    # Before: under hold every fault held, reconnected and took chunks again, for ever. Set by
    # its old name, max_torque_offs, which is read as max_backend_faults.
    from std_srvs.srv import Trigger

    args = ("-p", "reconnect_period:=0.1", "-p", "max_torque_offs:=1")
    with driver_on_one_executor_thread(*args) as (node, probe):
        assert node.params.on_fault == "hold" and node.params.max_backend_faults == 1
        assert node.get_parameter("max_backend_faults").value == 1
        node._loop.backend.inject_faults(1)
        assert wait_for(lambda: node._loop.executor.estopped, 30.0)
        loop = node._loop
        reason = loop.estop_reason
        assert "1 backend faults within 60 s with on_fault: hold" in reason, reason
        assert wait_for(lambda: loop.stats.reconnects >= 1, 30.0)
        writes = loop.stats.writes
        assert wait_for(lambda: loop.stats.writes > writes + 20, 30.0)  # holding, torque on
        assert loop.backend.is_enabled and not loop.torque_off_latched
        probe.diagnostics.clear()

        def named():
            status, values = _driver_status_values(probe)
            return status is not None and values.get("estop_reason") == reason

        assert wait_for(named, 30.0)
        status, values = _driver_status_values(probe)
        assert status.message.startswith(f"e-stop latched: {reason}")
        assert reason in values["state_message"]
        response = node._on_reset(Trigger.Request(), Trigger.Response())
        assert response.success, response.message
        assert not loop.executor.estopped and loop.backend.is_enabled


class _OwnedLock:
    """``threading.Lock`` that knows which thread holds it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.owner: int | None = None

    def __enter__(self) -> _OwnedLock:
        self._lock.acquire()
        self.owner = threading.get_ident()
        return self

    def __exit__(self, *exc) -> None:
        self.owner = None
        self._lock.release()


def test_a_chunk_message_is_converted_and_checked_outside_the_lock_the_tick_takes(monkeypatch):
    # Before: the whole conversion ran under the driver's lock (2.9 ms for a 100k-step message,
    # most of a 4 ms tick the control thread then waited out).
    import hw_drivers.control_loop as control_loop
    from hw_drivers.chunk import Chunk
    from hw_drivers.conversions import chunk_to_msg

    with driver_on_one_executor_thread() as (node, _):
        lock = _OwnedLock()
        node._lock = lock  # (the control thread takes it from its next tick on)
        under_lock = []
        convert = control_loop.chunk_from_msg

        def recording(msg):
            under_lock.append(lock.owner == threading.get_ident())
            return convert(msg)

        monkeypatch.setattr(control_loop, "chunk_from_msg", recording)
        loop = node._loop
        pose = loop.last_reading.positions
        positions = np.tile(pose, (10, 1)) + 0.001 * np.arange(10)[:, None]
        names = node.params.joint_names
        msg = chunk_to_msg(Chunk(node._now(), 0.0, 1.0 / 30.0, names, positions))
        accepted = loop.executor.stats.accepted
        node._on_chunk(msg)
        assert under_lock == [False]
        assert loop.executor.stats.accepted == accepted + 1  # and it was still taken
