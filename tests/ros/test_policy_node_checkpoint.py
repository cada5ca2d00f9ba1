"""A checkpoint that cannot be loaded fails configure; the node stays up and says why (issue 6).

Its own module (and node process) because the fault tests' module fixture holds rclpy's default
context for the whole module.
"""

from __future__ import annotations

import pytest

from tests.ros.policy_node_harness import (
    SyntheticRobot,
    start_node,
    stop_node,
    write_params,
    yam_params,
)

pytestmark = pytest.mark.ros


def test_broken_checkpoint_fails_configure_and_the_node_stays_alive(tmp_path):
    params = yam_params()
    import rclpy

    broken = dict(params, checkpoint=str(tmp_path / "no-such-checkpoint"))
    proc = start_node(write_params(tmp_path / "params.yaml", broken))
    try:
        rclpy.init()
        robot = SyntheticRobot(broken)
    except BaseException:
        stop_node(proc)
        raise
    try:
        assert robot.run(60.0, until=lambda: len(robot.statuses) >= 3), stop_node(proc)
        status = robot.statuses[-1]
        assert status.lifecycle_state == "unconfigured" and status.state == "error"
        assert "could not load checkpoint" in status.last_error
        assert "no-such-checkpoint" in status.last_error
        assert not robot.chunks
        assert proc.poll() is None, "the node exited after a failed configure"
    finally:
        robot.node.destroy_node()
        rclpy.shutdown()
        output = stop_node(proc)
    assert "configure failed" in output
    assert proc.returncode == 0, f"node did not exit cleanly on SIGTERM ({proc.returncode})"
