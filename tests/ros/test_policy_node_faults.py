"""Bad input and failures never produce a chunk, say why on ~/status, and recover (issue 6).

One node process for the module runs the configured policy (the tiny MolmoAct2 checkpoint)
wrapped by ``tests.fake_policy.FaultInjectingPolicy``, injected through the test-only factory
hook, so a magic instruction makes ``act`` raise.
"""

from __future__ import annotations

import pytest

from tests.fake_policy import FAIL_CRASH, FAIL_UNAVAILABLE
from tests.ros.policy_node_harness import (
    SyntheticRobot,
    assert_blocked,
    running_robot,
    wait_chunks,
    yam_params,
)

pytestmark = pytest.mark.ros

FAULTY_ENV = {"MOLMOACT2_TEST_POLICY_FACTORY": "tests.fake_policy:make_faulty_policy"}


@pytest.fixture(scope="module")
def params():
    return yam_params()


@pytest.fixture(scope="module")
def robot(params, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("policy_faults")
    with running_robot(params, workdir, env=FAULTY_ENV) as robot:
        yield robot


def _recovers(robot: SyntheticRobot) -> None:
    start = robot.now_ns()
    wait_chunks(robot, 1, start)
    assert robot.run(
        10.0, until=robot.status_where(lambda s: s.state == "running" and not s.last_error, start)
    ), robot.latest_status()


@pytest.mark.parametrize(
    ("fault", "text"),
    [
        ("encoding", "camera 'right_wrist': unsupported image encoding '16UC1'"),
        ("size", "camera 'right_wrist': image data size mismatch"),
        ("truncated", "camera 'right_wrist': image data truncated"),
    ],
)
def test_bad_image_is_reported_and_blocks_until_good_frames(robot, fault, text):
    robot.camera_fault = fault
    try:
        assert_blocked(robot, text, "error")
        status = robot.latest_status()
        assert not {i.name: i for i in status.inputs}["right_wrist"].ok
    finally:
        robot.camera_fault = ""
    _recovers(robot)


def test_nan_joint_is_reported_and_blocks(robot):
    robot.joint_fault = "nan"
    try:
        assert_blocked(robot, "NaN in joint 'right_gripper' (from 'joint_states')", "error")
    finally:
        robot.joint_fault = ""
    _recovers(robot)


def test_missing_joint_goes_stale_then_is_reported_missing_after_reset(robot):
    from std_srvs.srv import Trigger

    robot.joint_fault = "missing"
    try:
        # The last value received keeps its stamp and is used while it is younger than
        # max_observation_age (0.5 s); then the joint that stopped arriving goes stale...
        robot.run(0.7)
        assert_blocked(robot, "joint 'right_gripper' is stale", "stale_input")
        # ...and after a reset (inputs forgotten) it is missing.
        client = robot.node.create_client(Trigger, "molmoact2_policy/reset")
        assert client.wait_for_service(timeout_sec=10.0)
        future = client.call_async(Trigger.Request())
        assert robot.run(10.0, until=future.done) and future.result().success
        assert_blocked(robot, "joint 'right_gripper' missing", "waiting_for_inputs")
    finally:
        robot.joint_fault = ""
    _recovers(robot)


@pytest.mark.parametrize(
    ("instruction", "text"),
    [
        (FAIL_CRASH, "inference failed: ZeroDivisionError: fake model crashed"),
        (FAIL_UNAVAILABLE, "policy unavailable: fake server is down"),
    ],
)
def test_inference_exception_is_reported_and_the_node_keeps_running(
    robot, params, instruction, text
):
    robot.set_instruction(instruction)
    try:
        assert_blocked(robot, text, "error")
    finally:
        robot.set_instruction(params["instruction"])
    _recovers(robot)
