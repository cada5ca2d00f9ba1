"""``~/run_task`` goals with hostile fields, and many goals at once, as a buggy client sends
them: each ends with a reason, the node keeps running and the driver is left holding.

Found by the outside-in probe: a ``success_topic`` that is not a valid ROS name was accepted,
the driver released and the instruction set, then creating the subscription raised inside the
action's execute callback: rclpy aborted the goal, but the policy kept publishing chunks and the
driver was never told to hold again (the arm kept moving with no goal).
"""

from __future__ import annotations

import math

import pytest

from tests.ros.test_run_task import result_of, send, setup  # noqa: F401  (module fixture)

pytestmark = pytest.mark.ros


def _policy_transitions(robot):
    """(transition(id) -> success, the client): the policy node's lifecycle ChangeState."""
    from lifecycle_msgs.srv import ChangeState

    from tests.ros.policy_node_harness import NODE

    change = robot.node.create_client(ChangeState, f"/{NODE}/change_state")

    def transition(transition_id: int) -> bool:
        assert change.wait_for_service(timeout_sec=10.0)
        request = ChangeState.Request()
        request.transition.id = transition_id
        future = change.call_async(request)
        assert robot.run(20.0, until=future.done)
        return future.result().success

    return transition, change


@pytest.mark.parametrize(
    ("instruction", "max_duration", "success_topic", "reason"),
    [
        ("pick", 1.0, "bad topic!", "success_topic"),
        ("pick", 1.0, "//", "success_topic"),
        ("pick", 1.0, "1abc", "success_topic"),
        ("pick", 1.0, "a/", "success_topic"),
        ("pick", 1.0, "~x", "success_topic"),
        ("pick", math.nan, "", "max_duration"),
        ("pick", -1.0, "", "max_duration"),
        ("pick", math.inf, "", "max_duration"),
        ("   ", 1.0, "", "instruction is empty"),
        ("x" * 5000, 1.0, "", "characters"),
    ],
)
def test_a_hostile_goal_is_rejected_with_the_reason_and_the_arm_held(
    setup,  # noqa: F811
    instruction,
    max_duration,
    success_topic,
    reason,
):
    from molmoact2_msgs.action import RunTask

    robot, driver, client = setup
    driver.publish_state()
    driver.holds.clear()
    _handle, result_future, _ = send(robot, client, instruction, max_duration, success_topic)
    result, _ = result_of(robot, result_future)
    assert result.outcome == RunTask.Result.OUTCOME_REJECTED, result
    assert reason in result.message, result.message
    # Never released: the driver was not asked to follow.
    assert False not in [data for data, _ in driver.holds]
    count = len(robot.statuses)  # still answering (its exit is checked by the fixture)
    assert robot.run(5.0, until=lambda: len(robot.statuses) > count)


def test_valid_success_topic_names_are_accepted(setup):  # noqa: F811
    from molmoact2_msgs.action import RunTask

    robot, driver, client = setup
    driver.publish_state()
    for topic in ("/task_detector/success", "done", "~/done", "a_1/b_2"):
        _handle, result_future, _ = send(robot, client, "wipe", 0.5, topic)
        result, _ = result_of(robot, result_future)
        assert result.outcome == RunTask.Result.OUTCOME_TIMED_OUT, (topic, result)


def test_a_burst_of_goals_leaves_one_running_and_the_rest_preempted(setup):  # noqa: F811
    from molmoact2_msgs.action import RunTask

    robot, driver, client = setup
    driver.publish_state()
    futures = [
        client.send_goal_async(RunTask.Goal(instruction=f"task {i}", max_duration=1.0))
        for i in range(6)
    ]
    assert robot.run(15.0, until=lambda: all(f.done() for f in futures))
    results = [f.result().get_result_async() for f in futures]
    assert robot.run(20.0, until=lambda: all(r.done() for r in results))
    outcomes = [r.result().result.outcome_name for r in results]
    assert outcomes.count("timed_out") == 1, outcomes
    assert set(outcomes) <= {"timed_out", "preempted"}, outcomes
    assert driver.holds[-1][0] is True  # left holding
    count = len(robot.statuses)  # still answering (its exit is checked by the fixture)
    assert robot.run(5.0, until=lambda: len(robot.statuses) > count)


def test_a_goal_while_the_policy_is_inactive_is_rejected_without_releasing_the_driver(
    setup,  # noqa: F811
):
    from lifecycle_msgs.msg import Transition

    from molmoact2_msgs.action import RunTask

    robot, driver, client = setup
    transition, change = _policy_transitions(robot)

    driver.publish_state()
    assert transition(Transition.TRANSITION_DEACTIVATE)
    try:
        driver.holds.clear()
        _handle, result_future, _ = send(robot, client, "pick", 1.0)
        result, _ = result_of(robot, result_future)
        assert result.outcome == RunTask.Result.OUTCOME_REJECTED, result
        assert "inactive, not active" in result.message
        assert False not in [data for data, _ in driver.holds]
    finally:
        assert transition(Transition.TRANSITION_ACTIVATE)
    robot.node.destroy_client(change)


def test_a_storm_of_service_calls_and_parameter_sets_leaves_the_policy_running(setup):  # noqa: F811
    """reset, set_instruction (odd characters, too long, empty), ``~/instruction`` messages and
    parameter sets, interleaved at random while inputs stream: every call is answered, and
    afterwards the node publishes chunks for the last instruction."""
    import random

    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter
    from std_srvs.srv import Trigger

    from molmoact2_msgs.srv import SetInstruction
    from tests.ros.policy_node_harness import NODE, wait_chunks

    robot, _driver, _client = setup
    reset = robot.node.create_client(Trigger, f"/{NODE}/reset")
    instruct = robot.node.create_client(SetInstruction, f"/{NODE}/set_instruction")
    params = robot.node.create_client(SetParameters, f"/{NODE}/set_parameters")
    for client in (reset, instruct, params):
        assert client.wait_for_service(timeout_sec=10.0)
    texts = ["stack", "fold \u202e\x1b[31m the towel", "", "x" * 2001, " \t\n", "ok"]
    rng = random.Random(7)
    futures = []
    for _ in range(120):
        kind = rng.randrange(4)
        if kind == 0:
            futures.append(reset.call_async(Trigger.Request()))
        elif kind == 1:
            request = SetInstruction.Request(instruction=rng.choice(texts))
            futures.append(instruct.call_async(request))
        elif kind == 2:
            value = rng.choice([float("nan"), -1.0, 0.0, 1e9, "abc", 5.0])
            message = Parameter("max_inference_rate", value=value).to_parameter_msg()
            futures.append(params.call_async(SetParameters.Request(parameters=[message])))
        else:
            robot.set_instruction(rng.choice(texts))
        robot.run(rng.uniform(0.0, 0.02))
    assert robot.run(20.0, until=lambda: all(f.done() for f in futures))
    message = Parameter("max_inference_rate", value=10.0).to_parameter_msg()
    futures = [params.call_async(SetParameters.Request(parameters=[message]))]
    futures.append(instruct.call_async(SetInstruction.Request(instruction="tidy the desk")))
    assert robot.run(10.0, until=lambda: all(f.done() for f in futures))
    assert futures[1].result().accepted
    chunks = wait_chunks(robot, 2, robot.now_ns())
    assert all(c.instruction == "tidy the desk" for c in chunks)
    futures = [instruct.call_async(SetInstruction.Request(instruction=""))]
    assert robot.run(10.0, until=lambda: all(f.done() for f in futures))
    for client in (reset, instruct, params):
        robot.node.destroy_client(client)


def test_deactivating_the_policy_mid_goal_ends_it_and_holds_the_driver(setup):  # noqa: F811
    from lifecycle_msgs.msg import Transition

    from molmoact2_msgs.action import RunTask

    robot, driver, client = setup
    transition, change = _policy_transitions(robot)

    driver.publish_state()
    driver.holds.clear()
    _handle, result_future, _ = send(robot, client, "sweep the floor", 0.0)  # no time limit
    assert robot.run(10.0, until=lambda: [data for data, _ in driver.holds] == [False])
    assert transition(Transition.TRANSITION_DEACTIVATE)
    try:
        result, _ = result_of(robot, result_future)
        assert result.outcome == RunTask.Result.OUTCOME_CANCELLED, result
        assert "deactivated" in result.message
        assert [data for data, _ in driver.holds] == [False, True]
    finally:
        assert transition(Transition.TRANSITION_ACTIVATE)
    robot.node.destroy_client(change)
