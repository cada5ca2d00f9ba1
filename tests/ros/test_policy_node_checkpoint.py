"""A checkpoint that cannot be loaded fails configure; the node stays up and says why (issue 6),
a checkpoint for another embodiment says which parameter to change, and a damaged one names the
file and tensor at fault.

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


def _failed_configure_error(tmp_path, checkpoint: str) -> str:
    """The node's last_error after configure fails on ``checkpoint``; checks it stays up."""
    params = yam_params()
    import rclpy

    broken = dict(params, checkpoint=checkpoint)
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
        assert not robot.chunks
        assert proc.poll() is None, "the node exited after a failed configure"
    finally:
        robot.node.destroy_node()
        rclpy.shutdown()
        output = stop_node(proc)
    assert "configure failed" in output
    assert proc.returncode == 0, f"node did not exit cleanly on SIGTERM ({proc.returncode})"
    return status.last_error


def test_broken_checkpoint_fails_configure_and_the_node_stays_alive(tmp_path):
    error = _failed_configure_error(tmp_path, str(tmp_path / "no-such-checkpoint"))
    assert "could not load checkpoint" in error
    assert "no-such-checkpoint" in error


def test_checkpoint_for_another_embodiment_names_the_parameter_to_change(tmp_path):
    from molmoact2_policy.model.checkpoint import write_tiny_checkpoint

    # A valid checkpoint, trained (tagged) for droid only; the node is configured for YAM.
    checkpoint = write_tiny_checkpoint(tmp_path / "droid_only", embodiments=["droid"])
    error = _failed_configure_error(tmp_path, str(checkpoint))
    assert "EmbodimentMismatchError" in error
    assert "embodiment 'yam_bimanual' (parameter 'embodiment') needs norm-stats tag" in error
    assert "has tags droid" in error
    assert "Set 'embodiment' to one it serves (droid)" in error


def test_damaged_weights_name_the_file_and_tensor_on_the_node_status(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from molmoact2_policy.model.checkpoint import write_tiny_checkpoint

    # The probe's case that used to load and configure: one NaN weight, which would have made
    # every action NaN at the first act.
    checkpoint = write_tiny_checkpoint(tmp_path / "nan", embodiments=["yam_bimanual"])
    weights = checkpoint / "model.safetensors"
    tensors = {key: value.clone() for key, value in load_file(str(weights)).items()}
    key = "model.action_expert.final_layer.linear.weight"
    tensors[key][0, 0] = torch.nan
    save_file(tensors, str(weights))
    error = _failed_configure_error(tmp_path, str(checkpoint))
    assert "could not load checkpoint" in error
    assert f"{weights}: tensor {key!r} holds non-finite values (1 NaN" in error
