"""The trajectory bridge's last checks before a JointTrajectory reaches a ros2_control arm.

The driver node's executor clamps every command it sends; a joint_trajectory_controller gets a
whole trajectory at once and interpolates it itself, so the bridge must check the trajectory as
the controller will run it (no ROS here):

* start pose: the first point against the arm's *measured* joint states (a recent message on
  the joint-state topic; without one nothing is sent). Further than ``max_start_deviation``:
  refused. Further than ``ramp_threshold`` while the arm is idle (nothing sent yet, or the last
  trajectory has ended), or so far that reaching the first point in time would break a
  velocity limit: ramped in, i.e. the whole trajectory is delayed so the controller's spline
  from where the arm is to the first point stays within the joint's velocity and acceleration
  limits (and, from idle, takes at least ``ramp_in_time``). A chunk that continues a running
  trajectory is not delayed: its first point is ahead of the measured pose by the tracking lag;
* per point: the velocity of every segment (measured pose at time 0 to the first point
  included) and every point's own velocity within ``max_velocity``, the change of segment
  velocity within ``max_acceleration``.

A cubic from rest to rest over distance d in time T peaks at 1.5 d / T in velocity and 6 d / T^2
in acceleration; the ramp duration is the smallest T that keeps both within the limits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from hw_drivers.trajectory import BridgeOutput, JointTrajectoryData, TrajectoryPoint

_SLACK = 1e-6


@dataclass(frozen=True)
class GuardConfig:
    max_start_deviation: float = 0.5  # [rad] refuse beyond
    ramp_threshold: float = 0.02  # [rad] ramp in beyond
    ramp_in_time: float = 1.0  # [s] shortest ramp
    max_state_age: float = 0.5  # [s] measured joint states older than this do not count


@dataclass(frozen=True)
class GuardResult:
    output: BridgeOutput | None  # None: refused, nothing may be sent
    reason: str  # why refused ("" when sent)
    ramp: float  # [s] delay added to ramp in (0 when none)


def ramp_duration(
    distance: np.ndarray, max_velocity: np.ndarray, max_acceleration: np.ndarray
) -> float:
    """Shortest rest-to-rest cubic duration covering ``distance`` per joint within limits."""
    d = np.abs(np.asarray(distance, dtype=float))
    by_velocity = 1.5 * d / np.asarray(max_velocity, dtype=float)
    by_acceleration = np.sqrt(6.0 * d / np.asarray(max_acceleration, dtype=float))
    return float(np.max(np.maximum(by_velocity, by_acceleration), initial=0.0))


def guard(
    out: BridgeOutput,
    names: Sequence[str],
    measured: np.ndarray | None,
    max_velocity: np.ndarray,
    max_acceleration: np.ndarray,
    config: GuardConfig,
    *,
    idle: bool = True,
) -> GuardResult:
    """Check (and ramp in) the arm trajectory of ``out``; ``names``, ``measured`` and the
    limits are in the trajectory's joint order (the arm joints, grippers split off); ``idle``:
    no trajectory of ours is running on the controller."""
    traj = out.trajectory
    if traj is None or not traj.points:
        return GuardResult(out, "", 0.0)
    if measured is None:
        return GuardResult(
            None, "start_pose: no recent measured joint state of the arm; nothing sent", 0.0
        )
    measured = np.asarray(measured, dtype=float)
    vmax = np.asarray(max_velocity, dtype=float)
    amax = np.asarray(max_acceleration, dtype=float)
    first = traj.points[0].positions
    deviation = np.abs(first - measured)
    j = int(np.argmax(deviation))
    if deviation[j] > config.max_start_deviation:
        return GuardResult(
            None,
            f"start_deviation: joint {names[j]} first point {first[j]:.4f} is "
            f"{deviation[j]:.4f} from measured {measured[j]:.4f} (max "
            f"{config.max_start_deviation})",
            0.0,
        )
    shift = 0.0
    t0 = traj.points[0].time_from_start
    too_fast = bool(np.any(deviation > vmax * max(t0, 0.0)))
    if deviation[j] > config.ramp_threshold and (idle or too_fast):
        needed = ramp_duration(first - measured, vmax, amax)
        if idle:
            needed = max(config.ramp_in_time, needed)
        shift = max(0.0, needed - t0)
        if shift > 0:
            traj = JointTrajectoryData(
                traj.joint_names,
                tuple(replace(p, time_from_start=p.time_from_start + shift) for p in traj.points),
                traj.stamp,
            )
    reason = _limit_violation(traj.points, names, measured, vmax, amax, ramped=shift > 0)
    if reason:
        return GuardResult(None, reason, 0.0)
    gripper = out.gripper
    if gripper is not None and shift > 0:
        gripper = replace(gripper, time_from_start=gripper.time_from_start + shift)
    return GuardResult(BridgeOutput(traj, gripper, out.skipped), "", shift)


def _limit_violation(
    points: Sequence[TrajectoryPoint],
    names: Sequence[str],
    measured: np.ndarray,
    vmax: np.ndarray,
    amax: np.ndarray,
    ramped: bool,
) -> str:
    times = np.array([0.0] + [p.time_from_start for p in points])
    positions = np.vstack([measured] + [p.positions for p in points])
    dt = np.diff(times)
    if np.any(dt <= 0):
        k = int(np.argmax(dt <= 0))
        return f"timing: point {k} is not after the one before it"
    segment_velocity = np.diff(positions, axis=0) / dt[:, None]
    # The ramp-in segment is a rest-to-rest spline whose peak is 1.5x its mean velocity; the
    # others are checked at their mean (the chunk's own sampling).
    peak = segment_velocity.copy()
    if ramped:
        peak[0] *= 1.5
    too_fast = np.abs(peak) > vmax * (1 + _SLACK)
    if too_fast.any():
        k, j = (int(v) for v in np.argwhere(too_fast)[0])
        where = "ramp-in from the measured pose" if k == 0 else f"point {k - 1} to {k}"
        return (
            f"velocity_limit: joint {names[j]} {where} needs {abs(peak[k, j]):.3f}/s > max "
            f"{vmax[j]:.3f}/s"
        )
    for k, p in enumerate(points):
        if p.velocities is not None:
            over = np.abs(p.velocities) > vmax * (1 + _SLACK)
            if over.any():
                j = int(np.argmax(over))
                return (
                    f"velocity_limit: joint {names[j]} point {k} velocity "
                    f"{p.velocities[j]:.3f}/s > max {vmax[j]:.3f}/s"
                )
    if len(points) > 1:
        # Change of mean velocity between consecutive chunk segments over their mean spacing.
        inner = segment_velocity[1:]
        mid_dt = (dt[1:-1] + dt[2:]) / 2.0
        if inner.shape[0] > 1:
            accel = np.diff(inner, axis=0) / mid_dt[:, None]
            over = np.abs(accel) > amax * (1 + _SLACK)
            if over.any():
                k, j = (int(v) for v in np.argwhere(over)[0])
                return (
                    f"acceleration_limit: joint {names[j]} around point {k + 1} needs "
                    f"{abs(accel[k, j]):.3f}/s^2 > max {amax[j]:.3f}/s^2"
                )
    return ""
