"""The trajectory bridge's gripper command for a forward_command_controller (no ROS).

forward_command_controller (ros-controls/ros2_controllers) matches ``data[i]`` to its i-th
joint by position only and fails its update on a message of another length, so what counts is
the values, their order and their count.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hw_drivers.bridge_guard import GuardConfig, guard
from hw_drivers.chunk import Chunk
from hw_drivers.trajectory import chunk_to_trajectory, forward_command_data
from hw_drivers.trajectory_bridge_params import (
    FORWARD_COMMAND,
    JOINT_STATE,
    TrajectoryBridgeParams,
)

# Two arms as yam.yaml orders them (model order), one joint each here for brevity.
NAMES = ("left_joint1", "left_gripper", "right_joint1", "right_gripper")


def bimanual_chunk(stamp: float = 100.0) -> Chunk:
    k = np.arange(4, dtype=float)[:, None]
    # Distinct values per joint and step: a swapped or shifted column shows.
    positions = np.hstack([0.1 * k, 0.2 + 0.01 * k, -0.1 * k, 0.7 - 0.01 * k])
    return Chunk(stamp, 0.1, 0.1, NAMES, positions)


def params(**overrides) -> TrajectoryBridgeParams:
    values = dict(
        joint_names=NAMES,
        position_lower=(-1.0, 0.0, -1.0, 0.0),
        position_upper=(1.0, 1.0, 1.0, 1.0),
        max_velocity=(2.0,) * 4,
        max_acceleration=(10.0,) * 4,
    )
    return TrajectoryBridgeParams(**{**values, **overrides})


def test_forward_command_data_is_the_first_kept_targets_in_gripper_joints_order():
    # 0.15 s after capture: actions due at 100.1 is past, 100.2 is the first kept one.
    out = chunk_to_trajectory(
        bimanual_chunk(), 100.15, gripper_joints=("right_gripper", "left_gripper")
    )
    data = forward_command_data(out.gripper)
    # The controller's joints: [right_gripper, left_gripper]; values unchanged (config units).
    assert data == pytest.approx([0.69, 0.21])
    assert all(type(v) is float for v in data)  # Float64MultiArray.data takes plain floats
    auto = params().resolved_gripper_joints()
    assert auto == ("left_gripper", "right_gripper")  # [auto]: joint_names order
    out = chunk_to_trajectory(bimanual_chunk(), 100.15, joint_names=NAMES, gripper_joints=auto)
    assert forward_command_data(out.gripper) == pytest.approx([0.21, 0.69])
    assert len(forward_command_data(out.gripper)) == len(auto)  # the controller's joint count


def test_forward_command_data_after_a_ramp_in_is_still_the_chunk_target():
    # The guard blends a ramped-in arm onto the chunk on the chunk's own schedule: the gripper
    # keeps its time and value (a Float64MultiArray has no time: applied on receipt).
    out = chunk_to_trajectory(
        bimanual_chunk(), 100.15, gripper_joints=("left_gripper", "right_gripper")
    )
    checked = guard(
        out,
        ("left_joint1", "right_joint1"),
        np.array([0.3, -0.3]),  # 0.2 rad from the first kept point of each arm joint
        np.array([2.0, 2.0]),
        np.array([10.0, 10.0]),
        GuardConfig(max_start_deviation=0.5, ramp_threshold=0.02, ramp_in_time=1.0),
        lower=np.array([-3.0, -3.0]),
        upper=np.array([3.0, 3.0]),
        idle=True,
    )
    assert checked.ramp > 0, checked.reason
    assert checked.output.gripper.time_from_start == pytest.approx(0.05)
    assert forward_command_data(checked.output.gripper) == pytest.approx([0.21, 0.69])


def test_gripper_command_type_defaults_to_joint_state_and_accepts_forward_command():
    assert TrajectoryBridgeParams().gripper_command_type == JOINT_STATE
    assert params().validate() == []
    assert params(gripper_command_type=FORWARD_COMMAND).validate() == []


@pytest.mark.parametrize("value", ["", "JointState", "forward_commands", "float64_multi_array"])
def test_unknown_gripper_command_type_is_a_problem(value):
    problems = params(gripper_command_type=value).validate()
    assert problems == [
        f"gripper_command_type must be one of ['joint_state', 'forward_command'], got {value!r}"
    ]


@pytest.mark.parametrize(
    "overrides",
    [
        {"gripper_joints": ("none",)},
        # [auto] with no joint named *gripper: nothing would ever reach the controller.
        {"joint_names": ("j1", "j2", "j3", "j4")},
    ],
)
def test_forward_command_without_a_gripper_joint_is_a_problem(overrides):
    p = params(gripper_command_type=FORWARD_COMMAND, **overrides)
    assert any("forward_command needs a gripper joint" in s for s in p.validate())
    # The JointState default keeps working without grippers, as before.
    assert dataclasses.replace(p, gripper_command_type=JOINT_STATE).validate() == []


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"controller_joint_names": ("c1", "c1")}, "controller_joint_names"),
        ({"gripper_joints": ("left_gripper", "left_gripper")}, "gripper_joints"),
        ({"joint_names": ("left_joint1", "left_joint1", "right_joint1", "x")}, "joint_names"),
    ],
)
def test_a_repeated_joint_name_is_a_problem(overrides, named):
    """joint_trajectory_controller takes a message with a name repeated and commands the joint
    left out a stale value (tests/unit/test_jtc_model.py, ros-controls/ros2_controllers
    ``joint_trajectory_controller.cpp``, ``sort_to_local_joint_order``): refused at configure."""
    problems = params(**overrides).validate()
    assert any(p.startswith(f"{named} repeats") for p in problems), problems
    assert not [p for p in params().validate() if "repeats" in p]
