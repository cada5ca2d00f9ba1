"""Config and checkpoint validation: bad setups are refused at start with a message naming why.

Runs the real entry points: ``molmoact2 launch`` with broken configs, the driver node process
with parameters that contradict each other, the policy node process on a checkpoint whose
tensor has the wrong shape.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.rostest_util import REPO_ROOT
from tests.system.reliability_util import (
    NodeProcess,
    RosHarness,
    observe,
    unique_namespace,
    wait_until,
)

pytestmark = pytest.mark.ros


def launch(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "molmoact2.cli", "launch", *args, "--duration", "5"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
    )


def so101_config() -> dict:
    return yaml.safe_load((REPO_ROOT / "config" / "so101.yaml").read_text())


def test_launch_refuses_malformed_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("/**:\n  ros__parameters:\n    robot: so101\n    joint_names: [a, b\n")
    result = launch(str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "malformed YAML" in result.stderr and str(path) in result.stderr, result.stderr
    assert "started" not in result.stderr + result.stdout  # nothing was started


def test_launch_refuses_unknown_robot():
    result = launch("nosuchbot")
    assert result.returncode == 2
    assert "unknown robot 'nosuchbot'" in result.stderr and "so101" in result.stderr


def test_launch_refuses_missing_joints(tmp_path):
    config = so101_config()
    config["/**"]["ros__parameters"]["joint_names"].remove("wrist_roll")
    path = tmp_path / "so101_missing.yaml"
    path.write_text(yaml.safe_dump(config))
    result = launch(str(path))
    assert result.returncode == 2
    assert "joint_names lists 5 joints" in result.stderr or "5 joints" in result.stderr, (
        result.stderr
    )


def test_launch_refuses_unknown_parameter_and_bad_values(tmp_path):
    config = so101_config()
    driver = config["/**/so101_driver"]["ros__parameters"]
    driver["max_step_per_tik"] = 0.05  # typo
    driver["on_fault"] = "explode"
    path = tmp_path / "so101_typo.yaml"
    path.write_text(yaml.safe_dump(config))
    result = launch(str(path))
    assert result.returncode == 2
    assert "unknown parameter 'max_step_per_tik'" in result.stderr, result.stderr
    assert "on_fault 'explode'" in result.stderr, result.stderr


def test_launch_refuses_hardware_without_a_usable_calibration(tmp_path):
    """A Feetech arm on hardware without its LeRobot calibration: refused before anything
    starts (before, policy and cameras ran while the driver could not configure)."""
    result = launch("so101", "--no-sim")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "needs calibration_file" in result.stderr, result.stderr
    assert "calibration_file:=" in result.stderr and "--calibration-file" in result.stderr
    assert "started" not in result.stderr + result.stdout
    broken = tmp_path / "my_arm.json"
    broken.write_text('{"shoulder_pan": {"id": 1,')
    result = launch("so101", "--no-sim", "--calibration-file", str(broken))
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"calibration file {broken} is not valid JSON" in result.stderr, result.stderr
    assert "started" not in result.stderr + result.stdout


def test_driver_node_refuses_inconsistent_limits_and_stays_up(tmp_path):
    """Configure fails with the reason in the log; the process lives on, unconfigured."""
    namespace = unique_namespace("val")
    node = NodeProcess(
        "so101", "so101_driver", namespace, workdir=tmp_path,
        overrides={"position_lower": [-1.0, -1.0, -1.0, -1.0, -1.0]},
    ).start()
    h = RosHarness("so101", namespace).start()
    try:
        said = "position_lower has 5 values for 6 joints"
        assert wait_until(lambda: said in node.text(), 30.0), node.text()
        assert "invalid driver parameters" in node.text()
        observe(1.0)
        assert node.alive(), node.text()
        assert not h.received.commanded, "an unconfigured driver published commands"
    finally:
        h.close()
        node.stop()


def test_policy_node_refuses_checkpoint_with_wrong_tensor_shape(tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    from molmoact2_policy.model.checkpoint import WEIGHTS_FILE, write_tiny_checkpoint

    torch.set_num_threads(1)
    checkpoint = write_tiny_checkpoint(tmp_path / "ckpt", embodiments=["so100_101"])
    tensors = load_file(str(checkpoint / WEIGHTS_FILE))
    key = sorted(k for k, v in tensors.items() if v.ndim == 2)[0]
    rows, cols = tensors[key].shape
    tensors[key] = torch.zeros(rows + 1, cols, dtype=tensors[key].dtype)
    save_file(tensors, str(checkpoint / WEIGHTS_FILE))

    namespace = unique_namespace("val")
    node = NodeProcess(
        "so101", "molmoact2_policy", namespace, workdir=tmp_path,
        overrides={"checkpoint": str(checkpoint), "status_rate": 5.0},
    ).start()
    h = RosHarness("so101", namespace).start()
    try:
        def refused() -> bool:
            status = h.received.latest_status()
            return status is not None and key in status.last_error

        assert wait_until(refused, 90.0), (h.received.latest_status(), node.text()[-3000:])
        status = h.received.latest_status()
        assert status.lifecycle_state == "unconfigured", status
        assert f"file ({rows + 1}, {cols})" in status.last_error, status.last_error
        # The status arrives over DDS; the log line through a pipe our reader thread drains:
        # on a loaded machine either may come first.
        assert wait_until(lambda: "configure failed" in node.text(), 30.0), node.text()[-3000:]
        assert key in node.text()
        assert node.alive(), node.text()[-3000:]
        assert not h.received.chunks
    finally:
        h.close()
        node.stop()
