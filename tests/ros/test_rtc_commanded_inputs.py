"""RTC's commanded-joint-state check, fed by a stack whose commands cannot be compared.

A user's ros2_control stack (no ``~/chunk_execution``) that stamps its commanded joint states
zero, or sends NaN, turned the "is the driver following the chunk?" check off without a word:
the node said nothing on /diagnostics or in its log. Now ``rtc_commanded_check`` names why.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.ros.policy_node_harness import running_robot, yam_params

pytestmark = pytest.mark.ros

ENV = {"MOLMOACT2_TEST_POLICY_FACTORY": "tests.rtc_echo_policy:make_rtc_echo_policy"}
DEADLINE_S = 20.0


def test_commands_that_cannot_be_compared_are_named_on_diagnostics(tmp_path):
    from builtin_interfaces.msg import Time
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import JointState

    params = yam_params(rtc=True, rtc_execution_topic="", instruction="probe")
    with running_robot(params, tmp_path, env=ENV) as robot:
        checks: list[str] = []

        def on_diagnostics(msg: Any) -> None:
            for status in msg.status:
                checks.extend(v.value for v in status.values if v.key == "rtc_commanded_check")

        robot.node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
        commanded = robot.node.create_publisher(JointState, params["rtc_commanded_topic"], 10)

        def hold(stamp: Time, positions: list[float]) -> bool:
            msg = JointState(name=list(robot.joints), position=positions)
            msg.header.stamp = stamp
            commanded.publish(msg)
            return False

        far_off = [5.0] * len(robot.joints)
        # Stamped zero: not compared with the chunks, and the node says so.
        seen = len(checks)
        assert robot.run(
            DEADLINE_S,
            until=lambda: hold(Time(), far_off) or any("not compared" in c for c in checks[seen:]),
        ), checks[-3:]
        # NaN for a joint: named.
        nan = [*far_off[:-1], float("nan")]
        seen = len(checks)
        assert robot.run(
            DEADLINE_S,
            until=lambda: (
                hold(robot.node.get_clock().now().to_msg(), nan)
                or any("non-finite position" in c for c in checks[seen:])
            ),
        ), checks[-3:]
