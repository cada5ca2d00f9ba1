"""A ``Chunk`` as a JointTrajectory for ros2_control's joint_trajectory_controller (no ROS).

Timing, per the controller's semantics: a trajectory whose ``header.stamp`` is zero starts when
the controller receives it, and each point is reached ``time_from_start`` after that. We send
a zero stamp and compute ``time_from_start = chunk.time_of(k) - now`` ourselves, so

* points that are already due (``time_from_start <= min_lead_time``) are dropped: the
  latency skip; the controller never chases targets from the past;
* the remaining points keep their spacing ``step_dt`` exactly, at the phase the policy meant;
* the bridge's and the controller's clocks need not agree (the controller often runs on a
  real-time machine, or under a different ``use_sim_time``): only the transport delay between
  them (sub-millisecond on one host) shifts the schedule.

Grippers are not arm joints of the controller: their targets leave the trajectory and come
back as a separate ``GripperCommand`` (value at the first kept point; ``forward_command_data``
for a forward_command_controller). Velocities, when wanted, are finite differences of the
positions (zero at the last point, so the arm comes to rest there if no new chunk follows),
which makes the controller interpolate with cubic splines instead of linear segments.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hw_drivers.chunk import Chunk


@dataclass(frozen=True)
class TrajectoryPoint:
    positions: np.ndarray
    velocities: np.ndarray | None
    time_from_start: float  # seconds after the controller receives the trajectory


@dataclass(frozen=True)
class JointTrajectoryData:
    """Field-for-field a ``trajectory_msgs/JointTrajectory`` (header stamp zero: start now)."""

    joint_names: tuple[str, ...]
    points: tuple[TrajectoryPoint, ...]
    stamp: float = 0.0


@dataclass(frozen=True)
class GripperCommand:
    joint_names: tuple[str, ...]
    positions: np.ndarray
    time_from_start: float


@dataclass(frozen=True)
class BridgeOutput:
    """What one chunk becomes; ``trajectory`` is None when every point is already due."""

    trajectory: JointTrajectoryData | None
    gripper: GripperCommand | None
    skipped: int  # actions dropped because they were due already


def finite_difference_velocities(positions: np.ndarray, step_dt: float) -> np.ndarray:
    """Central differences inside, one-sided at the start, zero at the end (rest there)."""
    positions = np.asarray(positions, dtype=float)
    velocities = np.zeros_like(positions)
    if positions.shape[0] >= 3:
        velocities[1:-1] = (positions[2:] - positions[:-2]) / (2.0 * step_dt)
    if positions.shape[0] >= 2:
        velocities[0] = (positions[1] - positions[0]) / step_dt
    return velocities


def default_gripper_joints(joint_names: Sequence[str]) -> tuple[str, ...]:
    """Joints whose name ends in ``gripper`` (the configs' convention)."""
    return tuple(n for n in joint_names if n.endswith("gripper"))


def forward_command_data(gripper: GripperCommand) -> list[float]:
    """``data`` of the std_msgs/Float64MultiArray for a forward_command_controller whose
    ``joints`` are ``gripper.joint_names``, in that order: the targets as they are, in the robot
    config's units (no conversion).

    The controller matches values to its joints by position only (the message carries no
    names), writes them to the joints' command interfaces on its next update, and never applies
    a message of another length than its joints; the message has no time, so a target is
    applied on receipt. Finite values are
    ``safety.validate_chunk``'s to ensure: releases before the controller's own check write NaN
    to the hardware.
    """
    return [float(v) for v in gripper.positions]


def seconds_to_duration(seconds: float) -> tuple[int, int]:
    """(sec, nanosec) of a non-negative duration, as builtin_interfaces/Duration wants."""
    total = round(float(seconds) * 1e9)
    if total < 0:
        raise ValueError(f"negative duration {seconds}")
    return total // 1_000_000_000, total % 1_000_000_000


def chunk_to_trajectory(
    chunk: Chunk,
    now: float,
    *,
    joint_names: Sequence[str] | None = None,
    gripper_joints: Sequence[str] = (),
    controller_joint_names: Sequence[str] = (),
    min_lead_time: float = 0.0,
    compute_velocities: bool = True,
) -> BridgeOutput:
    """Convert ``chunk`` (already validated) for a controller, at time ``now`` (same clock as
    ``chunk.stamp``).

    ``joint_names`` orders the columns (default: the chunk's order); ``gripper_joints`` are
    split off; ``controller_joint_names`` renames the remaining arm joints, in order, to what
    the controller calls them (e.g. ``fr3_joint1``).
    """
    names = tuple(joint_names) if joint_names is not None else chunk.joint_names
    ordered = chunk.reordered(names)
    gripper = tuple(gripper_joints)
    unknown = [g for g in gripper if g not in names]
    if unknown:
        raise ValueError(f"gripper joints {unknown} are not among the joints {list(names)}")
    arm_index = [j for j, n in enumerate(names) if n not in gripper]
    grip_index = [names.index(g) for g in gripper]
    arm_names = tuple(names[j] for j in arm_index)
    if controller_joint_names:
        if len(controller_joint_names) != len(arm_names):
            raise ValueError(
                f"{len(controller_joint_names)} controller joint names for {len(arm_names)} arm "
                f"joints {list(arm_names)}"
            )
        arm_names = tuple(controller_joint_names)

    positions = ordered.positions
    times = ordered.times() - float(now)
    keep = np.flatnonzero(times > min_lead_time)
    skipped = int(positions.shape[0] - keep.size)
    if keep.size == 0:
        return BridgeOutput(None, None, skipped)
    velocities = (
        finite_difference_velocities(positions, ordered.step_dt) if compute_velocities else None
    )
    points = tuple(
        TrajectoryPoint(
            positions=positions[k, arm_index].copy(),
            velocities=velocities[k, arm_index].copy() if velocities is not None else None,
            time_from_start=float(times[k]),
        )
        for k in keep
    )
    trajectory = JointTrajectoryData(arm_names, points) if arm_index else None
    gripper_cmd = (
        GripperCommand(gripper, positions[keep[0], grip_index].copy(), float(times[keep[0]]))
        if grip_index
        else None
    )
    return BridgeOutput(trajectory, gripper_cmd, skipped)
