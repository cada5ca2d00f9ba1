"""tests.rostest_util.SpinThread: a test's spin thread is out of its callbacks before teardown.

The first test pins the rclpy behaviour the helper exists for (kilted's ``Executor.shutdown``
returns while a callback is still running); the others check the helper against it.
"""

from __future__ import annotations

import threading
import time

import pytest

from tests.rostest_util import SpinThread


@pytest.fixture
def blocked_callback():
    """An executor whose one timer callback blocks until ``release`` is set."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("spin_thread_probe", context=context)
    entered, release = threading.Event(), threading.Event()
    events: list[str] = []

    def callback() -> None:
        timer.cancel()
        entered.set()
        release.wait(10.0)
        time.sleep(0.05)  # still inside the callback a moment after the release
        events.append("callback returned")

    class RecordingExecutor(SingleThreadedExecutor):
        def shutdown(self, timeout_sec=None):
            events.append("executor shut down")
            return super().shutdown(timeout_sec)

    timer = node.create_timer(0.01, callback)
    executor = RecordingExecutor(context=context)
    executor.add_node(node)
    try:
        yield executor, entered, release, events
    finally:
        release.set()
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def test_rclpy_shutdown_returns_while_a_callback_still_runs(blocked_callback):
    executor, entered, release, events = blocked_callback
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    assert entered.wait(10.0)
    release.set()
    executor.shutdown(timeout_sec=5.0)  # documented to wait for callbacks in progress
    still_running = "callback returned" not in events
    spinner.join(5.0)
    assert still_running, (
        "rclpy's Executor.shutdown now waits for the callback in progress; SpinThread's "
        "reason to exist (tests/rostest_util.py) may be gone"
    )


def test_stop_returns_after_the_callback_in_progress(blocked_callback):
    executor, entered, release, events = blocked_callback
    spinner = SpinThread(executor).start()
    assert entered.wait(10.0)
    stopper = threading.Thread(target=lambda: (spinner.stop(), events.append("stop returned")))
    stopper.start()
    time.sleep(0.2)
    assert stopper.is_alive(), "stop returned while the callback was still blocked"
    release.set()
    stopper.join(10.0)
    assert events == ["callback returned", "executor shut down", "stop returned"]
    assert not spinner.alive


def test_stop_refuses_to_shut_down_under_a_stuck_callback(blocked_callback):
    executor, entered, release, events = blocked_callback
    spinner = SpinThread(executor).start()
    assert entered.wait(10.0)
    with pytest.raises(RuntimeError, match="still in a callback"):
        spinner.stop(timeout=0.2)
    assert spinner.alive and not events  # neither returned nor shut down
    release.set()
    spinner.stop()
    assert events == ["callback returned", "executor shut down"] and not spinner.alive


def test_the_thread_ends_when_the_context_shuts_down_first():
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("spin_thread_context", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    spinner = SpinThread(executor).start()
    try:
        time.sleep(0.1)
        assert spinner.alive
        node.destroy_node()
        rclpy.shutdown(context=context)
        deadline = time.monotonic() + 5.0
        while spinner.alive and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not spinner.alive
    finally:
        rclpy.try_shutdown(context=context)
