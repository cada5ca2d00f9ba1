"""What ``ros2 param set`` and a params file with wrong types get from the nodes that read their
parameters once: a refusal that says so, or a configure failure that names the parameter.

Found by the outside-in probe: the trajectory bridge, depth cache, recorder, sim camera, tf and
foxglove nodes had no parameter callback, so ``ros2 param set <bridge> max_velocity [...]``
answered "successful" while the bridge kept enforcing the old limits; a list of strings for the
bridge's ``position_upper`` crashed it at start; rclpy's LifecycleNode swallowed exceptions from
transitions without a word in the log.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

pytestmark = pytest.mark.ros

NAMES = [f"j{i}" for i in range(3)]


def _bridge_overrides(**changes):
    from rclpy.parameter import Parameter

    values = {
        "joint_names": NAMES,
        "position_lower": [-1.0] * 3,
        "position_upper": [1.0] * 3,
        "max_velocity": [2.0] * 3,
        "max_acceleration": [10.0] * 3,
        "trajectory_topic": "t/joint_trajectory",
        **changes,
    }
    return [Parameter(k, value=v) for k, v in values.items()]


@pytest.fixture
def context():
    import rclpy

    context = rclpy.Context()
    rclpy.init(context=context)
    yield context
    rclpy.shutdown(context=context)


def test_read_once_parameters_are_refused_with_the_reason(context):
    from rclpy.parameter import Parameter

    from hw_drivers.trajectory_bridge_node import TrajectoryBridgeNode

    bridge = TrajectoryBridgeNode(context=context, parameter_overrides=_bridge_overrides())
    try:
        for name, value in [
            ("max_velocity", [100.0] * 3),
            ("position_upper", [5.0] * 3),
            ("max_start_deviation", float("nan")),
            ("trajectory_topic", "elsewhere"),
        ]:
            [result] = bridge.set_parameters([Parameter(name, value=value)])
            assert not result.successful, name
            assert f"{name}: read at start" in result.reason
        assert list(bridge.get_parameter("max_velocity").value) == [2.0] * 3
        # rclpy's own parameters stay settable.
        [result] = bridge.set_parameters([Parameter("use_sim_time", value=False)])
        assert result.successful
    finally:
        bridge.destroy_node()


@pytest.mark.parametrize(
    ("name", "value", "word"),
    [
        ("position_upper", ["a", "b", "c"], "position_upper"),
        ("max_velocity", [2, 2, 2], None),  # YAML integers for a float list: fine
        ("max_start_deviation", float("nan"), "max_start_deviation must be finite"),
        ("joint_names", 5, "joint_names"),
    ],
)
def test_wrong_types_in_the_params_file_fail_configure_naming_the_parameter(
    context, capfd, name, value, word
):
    from rclpy.lifecycle import TransitionCallbackReturn

    from hw_drivers.trajectory_bridge_node import TrajectoryBridgeNode

    bridge = TrajectoryBridgeNode(
        context=context, parameter_overrides=_bridge_overrides(**{name: value})
    )
    try:
        outcome = bridge.trigger_configure()
        if word is None:
            assert outcome == TransitionCallbackReturn.SUCCESS
            assert bridge.params.max_velocity == (2.0, 2.0, 2.0)
        else:
            assert outcome == TransitionCallbackReturn.FAILURE
            assert word in capfd.readouterr().err
    finally:
        bridge.destroy_node()


def test_an_exception_in_a_transition_is_logged_with_its_message(context, capfd):
    from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn

    from molmoact2_common.lifecycle_errors import log_transition_errors

    @log_transition_errors
    class Broken(LifecycleNode):
        def on_configure(self, state):
            raise RuntimeError("the topic name 'bad topic!' is not valid")

    node = Broken("broken_node", context=context)
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.ERROR
        err = capfd.readouterr().err
        assert "configure failed: RuntimeError: the topic name 'bad topic!'" in err
    finally:
        node.destroy_node()


def test_refuse_param_changes_leaves_live_parameters_settable(context):
    import rclpy
    from rclpy.parameter import Parameter

    from molmoact2_common.ros_params import declare_dataclass_params, refuse_param_changes

    @dataclass(frozen=True)
    class Example:
        rate: float = 10.0
        label: str = "a"

    node = rclpy.create_node("refusal_example", context=context)
    try:
        declare_dataclass_params(node, Example)
        refuse_param_changes(node, Example, live=("label",))
        [fixed] = node.set_parameters([Parameter("rate", value=5.0)])
        [live] = node.set_parameters([Parameter("label", value="b")])
        assert not fixed.successful and live.successful
    finally:
        node.destroy_node()


def test_a_policy_node_with_an_infinite_status_rate_keeps_running(context, capfd):
    """status_rate: .inf made the status period 0: the configure failure's own status message
    divided by it and the node died (ZeroDivisionError in its timer)."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from molmoact2_policy.policy_node import PolicyNode

    node = PolicyNode(
        context=context,
        parameter_overrides=[
            Parameter("status_rate", value=float("inf")),
            Parameter("instruction", value="x" * 2001),
        ],
    )
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        for _ in range(20):
            executor.spin_once(timeout_sec=0.01)  # the status timer runs without raising
        err = capfd.readouterr().err
        assert "status_rate must be finite" in err and "at most 2000" in err
        assert "ZeroDivisionError" not in err
    finally:
        executor.shutdown()
        node.destroy_node()


def test_topic_name_rule_agrees_with_rcl():
    """``topic_name_problem`` (pure, used by every params validate() and run_task goals) says
    what rcl's own validation says, over arbitrary short names. Two deliberate differences, both
    stricter: repeated '/' (rcl's validate accepts it but its name resolution then refuses it,
    as a subscription to 'a//b' showed) and '~' not followed by '/' ('~a')."""
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from rclpy.exceptions import InvalidTopicNameException
    from rclpy.validate_topic_name import validate_topic_name

    from molmoact2_common.ros_params import topic_name_problem

    @settings(max_examples=500, derandomize=True, database=None, deadline=None)
    @given(st.text(alphabet="ab_Z09/~! .-", max_size=8))
    def agree(name: str) -> None:
        try:
            validate_topic_name(name)
            rcl_ok = True
        except InvalidTopicNameException:
            rcl_ok = False
        ours_ok = topic_name_problem(name) == ""
        stricter = "//" in name or (name.startswith("~") and name[1:2] not in ("", "/"))
        assert ours_ok == (rcl_ok and not stricter), name

    agree()
    for name in ("{node}/x", "/a/{ns}"):
        assert topic_name_problem(name) == ""
        validate_topic_name(name)


def test_a_policy_node_with_an_invalid_driver_node_name_starts_and_says_why(context, capfd):
    """driver_node: 'bad name!' raised from the constructor (the run_task server makes its
    ~/hold client there): the process died at start with an rclpy traceback."""
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from molmoact2_policy.policy_node import PolicyNode

    node = PolicyNode(
        context=context, parameter_overrides=[Parameter("driver_node", value="bad name!")]
    )
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert "driver_node: 'bad name!' is not a ROS" in capfd.readouterr().err
    finally:
        node.destroy_node()


def test_plain_nodes_with_unusable_parameters_exit_with_one_clear_line(tmp_path):
    """Recorder with a bad topic name or an unwritable directory, Foxglove with a host that does
    not resolve: each ended in a Python traceback (RCLError, FileNotFoundError, FoxgloveError)."""
    import yaml

    from tests.rostest_util import start_python, stop_process

    cases = [
        ("molmoact2.recorder_node", "recorder", {"topics": ["a//b"]}, "topics: 'a//b'"),
        (
            "molmoact2.recorder_node",
            "recorder",
            {"topics": ["ok"], "output_dir": "/proc/no/such/dir"},
            "cannot write the recording",
        ),
        ("molmoact2.foxglove_node", "foxglove", {"topics": ["a"], "host": "not a host"},
         "cannot serve on not a host"),
    ]  # fmt: skip
    procs = []
    for i, (module, node, params, _) in enumerate(cases):
        path = tmp_path / f"p{i}.yaml"
        path.write_text(yaml.safe_dump({f"/**/{node}": {"ros__parameters": params}}))
        procs.append(start_python(["-m", module, "--ros-args", "--params-file", str(path)]))
    for proc, (_, _, _, words) in zip(procs, cases, strict=True):
        proc.wait(timeout=60)
        output = stop_process(proc)
        assert proc.returncode == 1, output
        assert words in output and "Traceback" not in output, output
