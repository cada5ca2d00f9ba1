"""``~/run_task`` and live parameters of the policy node, against a driver's hold/diagnostics.

One policy-node process (the deterministic fake policy: chunks at its own pace) serves the
module. The driver is played by the test: it answers ``/yam_driver/hold`` and records each call
with the time it arrived, and it publishes the driver's ``/diagnostics`` entry, so a test can
latch an e-stop or check that the arm was told to hold before the client got its result.
"""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

from tests.ros.policy_node_harness import (
    NODE,
    chunk_stamp_ns,
    running_robot,
    wait_chunks,
    yam_params,
)

pytestmark = pytest.mark.ros

FAKE_ENV = {"MOLMOACT2_TEST_POLICY_FACTORY": "tests.fake_policy:make_fake_policy"}
DRIVER = "yam_driver"


class FakeDriver:
    """``/yam_driver/hold`` and the driver's diagnostics entry, on the test's node."""

    def __init__(self, node: Any) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from std_srvs.srv import SetBool

        self.node = node
        self.holds: list[tuple[bool, float]] = []  # (data, monotonic time of arrival)
        self.refuse_resume = ""  # non-empty: hold(false) answers success=False with this
        node.create_service(SetBool, f"/{DRIVER}/hold", self._on_hold)
        self._diag_pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)

    def _on_hold(self, request: Any, response: Any) -> Any:
        self.holds.append((bool(request.data), time.monotonic()))
        if not request.data and self.refuse_resume:
            response.success, response.message = False, self.refuse_resume
        else:
            response.success, response.message = True, "holding" if request.data else "following"
        return response

    def publish_state(self, error: str = "") -> None:
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

        status = DiagnosticStatus(
            name=f"/{DRIVER}: driver",
            level=DiagnosticStatus.ERROR if error else DiagnosticStatus.OK,
            message=error or "tracking",
        )
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.node.get_clock().now().to_msg()
        self._diag_pub.publish(array)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    params = yam_params(instruction="warm up", driver_node=DRIVER, task_input_grace=1.0)
    with running_robot(params, tmp_path_factory.mktemp("run_task"), env=FAKE_ENV) as robot:
        from rclpy.action import ActionClient

        from molmoact2_msgs.action import RunTask

        driver = FakeDriver(robot.node)
        client = ActionClient(robot.node, RunTask, f"/{NODE}/run_task")
        assert client.wait_for_server(timeout_sec=10.0)
        yield robot, driver, client


def send(robot, client, instruction: str, max_duration: float = 0.0, success_topic: str = ""):
    from molmoact2_msgs.action import RunTask

    feedback: list[Any] = []
    future = client.send_goal_async(
        RunTask.Goal(
            instruction=instruction, max_duration=max_duration, success_topic=success_topic
        ),
        feedback_callback=lambda msg: feedback.append(msg.feedback),
    )
    assert robot.run(10.0, until=future.done), "goal not answered"
    handle = future.result()
    assert handle.accepted
    return handle, handle.get_result_async(), feedback


def result_of(robot, result_future, seconds: float = 15.0) -> tuple[Any, float]:
    """The goal's result and the monotonic time it arrived."""
    assert robot.run(seconds, until=result_future.done), "no result"
    return result_future.result().result, time.monotonic()


def test_a_goal_runs_and_ends_on_time_out_with_the_arm_held(setup):
    from molmoact2_msgs.action import RunTask

    robot, driver, client = setup
    driver.publish_state()
    driver.holds.clear()
    start_ns = robot.now_ns()
    _handle, result_future, feedback = send(robot, client, "stack the blocks", max_duration=2.0)
    result, arrived = result_of(robot, result_future)
    assert result.outcome == RunTask.Result.OUTCOME_TIMED_OUT, result
    assert result.outcome_name == "timed_out"
    assert 2.0 <= result.elapsed < 4.0
    assert result.chunks_executed > 0
    goal_chunks = [
        c
        for c in robot.chunks
        if chunk_stamp_ns(c) >= start_ns and c.instruction == "stack the blocks"
    ]
    assert goal_chunks, "no chunk carried the goal's instruction"
    assert feedback and feedback[-1].chunks_executed > 0 and feedback[-1].state
    # The driver was released at the start and told to hold before the result was sent.
    assert [data for data, _ in driver.holds] == [False, True]
    assert driver.holds[-1][1] <= arrived
    # Inference stops with the goal: no chunk computed from frames after the result.
    after_ns = robot.now_ns()
    robot.run(1.0)
    assert not [c for c in robot.chunks if chunk_stamp_ns(c) > after_ns]


def test_cancel_mid_run_holds_before_the_result(setup):
    from molmoact2_msgs.action import RunTask

    robot, driver, client = setup
    driver.publish_state()
    driver.holds.clear()
    handle, result_future, _ = send(robot, client, "wipe the table", max_duration=60.0)
    wait_chunks(robot, 2, robot.now_ns())
    cancel = handle.cancel_goal_async()
    result, arrived = result_of(robot, result_future)
    assert cancel.done()
    assert result.outcome == RunTask.Result.OUTCOME_CANCELLED, result
    assert result.elapsed < 30.0
    assert [data for data, _ in driver.holds] == [False, True]
    assert driver.holds[-1][1] <= arrived


def test_a_new_goal_preempts_the_running_one_without_holding_in_between(setup):
    from molmoact2_msgs.action import RunTask

    robot, driver, client = setup
    driver.publish_state()
    driver.holds.clear()
    _first, first_result, _ = send(robot, client, "open the drawer", max_duration=60.0)
    wait_chunks(robot, 1, robot.now_ns())
    second, second_result, _ = send(robot, client, "close the drawer", max_duration=60.0)
    result, _ = result_of(robot, first_result)
    assert result.outcome == RunTask.Result.OUTCOME_PREEMPTED, result
    start_ns = robot.now_ns()
    chunks = wait_chunks(robot, 2, start_ns)
    assert chunks[-1].instruction == "close the drawer"
    assert True not in [data for data, _ in driver.holds]  # never held between the two goals
    second.cancel_goal_async()
    result, _ = result_of(robot, second_result)
    assert result.outcome == RunTask.Result.OUTCOME_CANCELLED


def test_success_topic_ends_the_goal_as_succeeded(setup):
    from std_msgs.msg import Bool

    from molmoact2_msgs.action import RunTask

    robot, driver, client = setup
    driver.publish_state()
    detector = robot.node.create_publisher(Bool, "/task_detector/success", 10)
    _handle, result_future, _ = send(
        robot, client, "put the cup away", max_duration=60.0, success_topic="/task_detector/success"
    )
    wait_chunks(robot, 1, robot.now_ns())
    detector.publish(Bool(data=False))
    robot.run(0.5)
    assert not result_future.done()
    detector.publish(Bool(data=True))
    result, _ = result_of(robot, result_future)
    assert result.outcome == RunTask.Result.OUTCOME_SUCCEEDED, result
    assert result_future.result().status == 4  # GoalStatus.STATUS_SUCCEEDED


def test_a_goal_during_an_e_stop_is_rejected_with_the_reason(setup):
    from molmoact2_msgs.action import RunTask

    robot, driver, client = setup
    driver.publish_state(error="e-stop latched")
    robot.run(0.5)
    driver.holds.clear()
    _handle, result_future, _ = send(robot, client, "pick up the cup", max_duration=5.0)
    result, _ = result_of(robot, result_future)
    assert result.outcome == RunTask.Result.OUTCOME_REJECTED, result
    assert "e-stop latched" in result.message
    assert not any(data is False for data, _ in driver.holds)  # never asked to resume

    # A driver that refuses to resume (its own word on the e-stop) rejects the goal too.
    driver.publish_state()
    driver.refuse_resume = "e-stop latched; call ~/reset"
    robot.run(0.5)
    try:
        _handle, result_future, _ = send(robot, client, "pick up the cup", max_duration=5.0)
        result, _ = result_of(robot, result_future)
    finally:
        driver.refuse_resume = ""
    assert result.outcome == RunTask.Result.OUTCOME_REJECTED, result
    assert "call ~/reset" in result.message


def test_a_safety_stop_during_a_goal_ends_it(setup):
    from molmoact2_msgs.action import RunTask

    robot, driver, client = setup
    driver.publish_state()
    robot.run(0.3)
    _handle, result_future, _ = send(robot, client, "fold the towel", max_duration=60.0)
    wait_chunks(robot, 1, robot.now_ns())
    driver.publish_state(error="backend fault")
    result, _ = result_of(robot, result_future)
    driver.publish_state()
    assert result.outcome == RunTask.Result.OUTCOME_SAFETY_STOP, result
    assert "backend fault" in result.message


def set_param(robot, name: str, value: Any) -> Any:
    """Set one parameter of the policy node through its parameter service; the result."""
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    client = robot.node.create_client(SetParameters, f"/{NODE}/set_parameters")
    try:
        assert client.wait_for_service(timeout_sec=10.0)
        future = client.call_async(
            SetParameters.Request(parameters=[Parameter(name, value=value).to_parameter_msg()])
        )
        assert robot.run(10.0, until=future.done)
        return future.result().results[0]
    finally:
        robot.node.destroy_client(client)


def test_live_instruction_takes_effect_on_the_next_chunk(setup):
    robot, _driver, _client = setup
    result = set_param(robot, "instruction", "water the plants")
    assert result.successful, result.reason
    after_ns = robot.now_ns()
    chunks = wait_chunks(robot, 2, after_ns)
    assert all(c.instruction == "water the plants" for c in chunks)
    assert set_param(robot, "instruction", "").successful


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("max_inference_rate", math.nan, "finite"),
        ("instruction", "x" * 2001, "at most 2000"),
        ("checkpoint", "/somewhere/else", "cannot change while the node runs"),
        ("joint_names", ["a", "b"], "cannot change while the node runs"),
    ],
)
def test_live_parameter_changes_are_validated(setup, name, value, reason):
    robot, _driver, _client = setup
    result = set_param(robot, name, value)
    assert not result.successful and reason in result.reason, result


def test_live_inference_rate_caps_the_chunk_rate(setup):
    robot, _driver, _client = setup
    assert set_param(robot, "instruction", "sort the parts").successful
    try:
        assert set_param(robot, "max_inference_rate", 2.0).successful
        robot.run(1.0)  # let the new cap take over
        start_ns = robot.now_ns()
        robot.run(3.0)
        fresh = [c for c in robot.chunks if chunk_stamp_ns(c) >= start_ns]
        assert 1 <= len(fresh) <= 8, len(fresh)  # ~6 at 2 Hz; uncapped the fake runs ~30/s
    finally:
        assert set_param(robot, "max_inference_rate", 10.0).successful
        assert set_param(robot, "instruction", "").successful
