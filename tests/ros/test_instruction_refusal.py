"""An instruction spelling the model's control tokens is refused where it enters the policy
node, with the reason, and the node keeps working with a good instruction after it.

Before, the node accepted such an instruction and every inference after it failed
(``act`` refused it each time): the robot got no chunk and the operator a stream of errors.
Entry points: the config (checked at configure: no policy before), ``~/set_instruction``,
``~/instruction``, the live ``instruction`` parameter and a ``~/run_task`` goal.

One policy-node process with the deterministic fake policy, which refuses what the tiny model
refuses (``tests.fake_policy.tiny_check_instruction``).
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from tests.ros.policy_node_harness import (
    NODE,
    SyntheticRobot,
    start_node,
    stop_node,
    wait_chunks,
    write_params,
    yam_params,
)
from tests.ros.test_run_task import DRIVER, FAKE_ENV, FakeDriver, result_of, send, set_param

pytestmark = pytest.mark.ros

BAD = "stack the cups <|im_end|>"
TOKEN = "<|im_end|>"


class _Node:
    """The node process, the synthetic robot and what the node logged on /rosout."""

    def __init__(self, proc: subprocess.Popen, robot: SyntheticRobot) -> None:
        from rcl_interfaces.msg import Log
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

        self.proc = proc
        self.robot = robot
        self.logs: list[Any] = []
        # /rosout is latched (transient local): a late subscriber still gets the start-up lines.
        qos = QoSProfile(
            depth=1000,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        robot.node.create_subscription(Log, "/rosout", self._on_log, qos)

    def _on_log(self, msg: Any) -> None:
        if msg.name == NODE:
            self.logs.append(msg)

    def logged(self, text: str, level: int) -> bool:
        return any(text in m.msg and m.level == level for m in self.logs)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    import rclpy

    params = yam_params(instruction=BAD, driver_node=DRIVER, task_input_grace=1.0)
    params_file = write_params(tmp_path_factory.mktemp("refusal") / "params.yaml", params)
    proc = start_node(params_file, env=FAKE_ENV)
    rclpy.init()
    robot = SyntheticRobot(params)
    try:
        yield _Node(proc, robot)
    finally:
        robot.node.destroy_node()
        rclpy.shutdown()
        output = stop_node(proc)
        assert "Traceback" not in output, output
        assert proc.returncode == 0, f"node did not exit cleanly ({proc.returncode}): {output}"


def _status(robot: SyntheticRobot, predicate, seconds: float = 30.0) -> Any:
    after = robot.now_ns()
    assert robot.run(seconds, until=robot.status_where(predicate, after)), robot.latest_status()
    return robot.latest_status(after)


def _set_instruction_service(robot: SyntheticRobot, text: str) -> Any:
    from molmoact2_msgs.srv import SetInstruction

    client = robot.node.create_client(SetInstruction, f"{NODE}/set_instruction")
    try:
        assert client.wait_for_service(timeout_sec=10.0)
        future = client.call_async(SetInstruction.Request(instruction=text))
        assert robot.run(10.0, until=future.done)
        return future.result()
    finally:
        robot.node.destroy_client(client)


def _instruction_param(robot: SyntheticRobot) -> str:
    """The node's `instruction` parameter, as `ros2 param get` reads it."""
    from rcl_interfaces.srv import GetParameters

    client = robot.node.create_client(GetParameters, f"/{NODE}/get_parameters")
    try:
        assert client.wait_for_service(timeout_sec=10.0)
        future = client.call_async(GetParameters.Request(names=["instruction"]))
        assert robot.run(10.0, until=future.done)
        return future.result().values[0].string_value
    finally:
        robot.node.destroy_client(client)


def _chunks_say(robot: SyntheticRobot, text: str) -> None:
    chunks = wait_chunks(robot, 2, robot.now_ns())
    assert chunks[-1].instruction == text, chunks[-1].instruction


def test_a_bad_configured_instruction_is_dropped_at_configure(node):
    """No policy judged the config's instruction before configure: configure drops it with an
    error, the node runs on without an instruction (no chunk, no failing inference)."""
    from rcl_interfaces.msg import Log

    robot = node.robot
    status = _status(robot, lambda s: s.state == "no_instruction", 60.0)
    assert status.instruction == ""
    assert robot.run(10.0, until=lambda: node.logged(TOKEN, Log.ERROR)), node.logs
    assert not robot.chunks
    assert _instruction_param(robot) == ""  # not the dropped one
    _set_instruction_service(robot, "first good instruction")
    _chunks_say(robot, "first good instruction")
    assert _instruction_param(robot) == "first good instruction"


def test_set_instruction_service_refuses_with_the_reason(node):
    robot = node.robot
    answer = _set_instruction_service(robot, BAD)
    assert not answer.accepted and TOKEN in answer.message, answer
    _chunks_say(robot, "first good instruction")  # the previous one still runs
    answer = _set_instruction_service(robot, "pour the water")
    assert answer.accepted, answer
    _chunks_say(robot, "pour the water")


def test_instruction_topic_keeps_the_previous_instruction_and_warns(node):
    from rcl_interfaces.msg import Log

    robot = node.robot
    _set_instruction_service(robot, "wipe the table")
    _chunks_say(robot, "wipe the table")
    robot.set_instruction("wipe <im_patch> table")
    assert robot.run(10.0, until=lambda: node.logged("<im_patch>", Log.WARN)), node.logs
    _chunks_say(robot, "wipe the table")
    assert robot.latest_status().instruction == "wipe the table"
    assert _instruction_param(robot) == "wipe the table"
    robot.set_instruction("fold the towel")
    _chunks_say(robot, "fold the towel")
    assert _instruction_param(robot) == "fold the towel"


def test_live_instruction_parameter_is_refused_with_the_reason(node):
    robot = node.robot
    result = set_param(robot, "instruction", "go <depth_3>")
    assert not result.successful and "<depth_3>" in result.reason, result
    _chunks_say(robot, "fold the towel")
    assert _instruction_param(robot) == "fold the towel"
    result = set_param(robot, "instruction", "open the drawer")
    assert result.successful, result.reason
    _chunks_say(robot, "open the drawer")
    assert _instruction_param(robot) == "open the drawer"


def test_run_task_goal_is_rejected_before_the_driver_is_released(node):
    from rclpy.action import ActionClient

    from molmoact2_msgs.action import RunTask

    robot = node.robot
    driver = FakeDriver(robot.node)
    client = ActionClient(robot.node, RunTask, f"/{NODE}/run_task")
    assert client.wait_for_server(timeout_sec=10.0)
    driver.publish_state()
    _handle, result_future, _ = send(robot, client, BAD, max_duration=1.0)
    result, _ = result_of(robot, result_future)
    assert result.outcome == RunTask.Result.OUTCOME_REJECTED, result
    assert TOKEN in result.message, result.message
    assert driver.holds == [], "the driver was released for a goal that could not run"
    _handle, result_future, _ = send(robot, client, "sort the parts", max_duration=1.0)
    result, _ = result_of(robot, result_future)
    assert result.outcome == RunTask.Result.OUTCOME_TIMED_OUT, result
    assert result.chunks_executed > 0
    assert [data for data, _ in driver.holds] == [False, True]


def test_an_instruction_that_was_not_utf8_or_holds_control_characters_is_refused(node):
    """rclpy decodes a String's bytes that are not UTF-8 to U+FFFD: a Latin-1 "café" used to
    run as "caf\ufffd" (and "\\x01\\x02" ran as an instruction)."""
    from rcl_interfaces.msg import Log

    robot = node.robot
    _set_instruction_service(robot, "stack the blocks")
    _chunks_say(robot, "stack the blocks")
    answer = _set_instruction_service(robot, "\x01\x02")
    assert not answer.accepted and "control character U+0001" in answer.message, answer
    # The topic, as a publisher that writes Latin-1 sends it: a serialized std_msgs/String.
    latin1 = "put the café cup away".encode("latin-1") + b"\x00"
    robot.instruction_pub.publish(b"\x00\x01\x00\x00" + len(latin1).to_bytes(4, "little") + latin1)
    assert robot.run(10.0, until=lambda: node.logged("U+FFFD", Log.WARN)), node.logs
    _chunks_say(robot, "stack the blocks")
    assert robot.latest_status().instruction == "stack the blocks"
