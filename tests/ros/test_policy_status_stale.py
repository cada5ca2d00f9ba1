"""The policy node's ~/status describes the present when every input stops (issue 14, case 6).

Before, with no callback left to notice, the status stayed ``running`` with every input ``ok``
for as long as anyone watched. Now it goes ``stale_input`` within ``max_observation_age`` plus
a status period, every input reads not ok, and it runs again when the inputs return.
"""

from __future__ import annotations

import time

import pytest

from tests.ros.policy_node_harness import running_robot, wait_chunks, yam_params

pytestmark = pytest.mark.ros


def test_status_goes_stale_when_every_input_stops_and_recovers(tmp_path):
    import rclpy

    params = yam_params()
    with running_robot(params, tmp_path) as robot:
        start = robot.now_ns()
        wait_chunks(robot, 1, start)
        assert robot.run(10.0, until=robot.status_where(lambda s: s.state == "running", start))

        stopped = robot.now_ns()
        max_age_ns = int(params["max_observation_age"] * 1e9)

        def stale() -> bool:
            status = robot.latest_status(stopped + max_age_ns)
            return (
                status is not None
                and status.state == "stale_input"
                and "stale" in status.last_error
                and len(status.inputs) > 0
                and not any(i.ok for i in status.inputs)
            )

        # Spin without publishing anything: the robot's cameras and joints went silent.
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and not stale():
            rclpy.spin_once(robot.node, timeout_sec=0.05)
        assert stale(), robot.latest_status()

        back = robot.now_ns()
        assert robot.run(
            20.0,
            until=robot.status_where(
                lambda s: s.state == "running" and all(i.ok for i in s.inputs), back
            ),
        ), robot.latest_status()
