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
positions (zero at the last point, so the arm comes to rest there if no new chunk follows, and
because the controller refuses a trajectory that ends moving), which makes the controller
interpolate with cubic splines instead of linear segments. The cubic into that last point at
rest would, over the chunk's own spacing, run a third faster than the chunk (4/3 of the speed
it arrives with, then a hard stop): the last point comes ``settling_time`` after the one before
instead, up to twice the spacing, over which the cubic slows down steadily to rest.
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


def monotone_velocities(
    times: np.ndarray, positions: np.ndarray, velocities: np.ndarray
) -> np.ndarray:
    """``velocities`` at the knots ``(times, positions)`` limited as Fritsch and Carlson's
    monotone cubic: zero where the positions turn (or stand), the sign of the neighbouring
    steps, at most three times the slower one. The controller's cubic through them then never
    passes beyond either end of a segment, so never beyond a joint limit the knots keep (plain
    central differences overshoot wherever a chunk stops or turns at a limit)."""
    t = np.asarray(times, dtype=float)
    p = np.asarray(positions, dtype=float)
    v = np.asarray(velocities, dtype=float)
    if p.shape[0] < 2:
        return v.copy()
    slopes = np.diff(p, axis=0) / np.diff(t)[:, None]
    nan = np.full((1, p.shape[1]), np.nan)
    left = np.vstack([nan, slopes])  # no step before the first knot
    right = np.vstack([slopes, nan])  # nor after the last
    sides = np.stack([left, right])
    defined = ~np.isnan(sides)
    agrees = np.all(~defined | (np.nan_to_num(sides) * v > 0.0), axis=0)
    cap = 3.0 * np.min(np.where(defined, np.abs(sides), np.inf), axis=0)
    return np.where(agrees, np.sign(v) * np.minimum(np.abs(v), cap), 0.0)


def finite_difference_velocities(positions: np.ndarray, step_dt: float) -> np.ndarray:
    """Central differences inside, one-sided at the start, zero at the end (rest there),
    limited by ``monotone_velocities``."""
    positions = np.asarray(positions, dtype=float)
    velocities = np.zeros_like(positions)
    if positions.shape[0] >= 3:
        velocities[1:-1] = (positions[2:] - positions[:-2]) / (2.0 * step_dt)
    if positions.shape[0] >= 2:
        velocities[0] = (positions[1] - positions[0]) / step_dt
    times = step_dt * np.arange(positions.shape[0])
    return monotone_velocities(times, positions, velocities)


def settling_time(
    before: np.ndarray, velocity: np.ndarray, last: np.ndarray, step_dt: float
) -> float:
    """How long the controller's cubic from ``before`` (moving at ``velocity``) to ``last`` at
    rest should last: per joint moving towards ``last``, at least ``1.5 d / v``, where its
    velocity falls steadily from ``v`` and never exceeds it (shorter, it overshoots up to 4/3
    ``v`` at the chunk's spacing), and at most ``3 d / v``, beyond which it passes ``last`` and
    comes back; the longest joint's need within every joint's bound, between ``step_dt`` and
    twice it."""
    d = np.asarray(last, dtype=float) - np.asarray(before, dtype=float)
    v = np.asarray(velocity, dtype=float)
    toward = d * v > 0.0
    if not toward.any():
        return step_dt
    ratio = d[toward] / v[toward]
    # Beyond 3 d / v a joint's cubic would pass the last point and come back.
    longest = min(2.0 * step_dt, 3.0 * float(np.min(ratio)))
    return max(step_dt, min(1.5 * float(np.max(ratio)), longest))


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
    if velocities is not None and keep.size >= 2:
        last = int(keep[-1])
        times = times.copy()
        times[last] = times[last - 1] + settling_time(
            positions[last - 1, arm_index],
            velocities[last - 1, arm_index],
            positions[last, arm_index],
            ordered.step_dt,
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
