"""The trajectory bridge's last checks before a JointTrajectory reaches a ros2_control arm.

The driver node's executor clamps every command it sends; a joint_trajectory_controller gets a
whole trajectory at once and interpolates it itself, so the bridge checks the trajectory as the
controller will run it (``hw_drivers.jtc_model``: its splines from ros2_controllers' source;
no ROS here):

* start pose: the first point against the arm's *measured* joint states (a recent message on
  the joint-state topic; without one nothing is sent). Further than ``max_start_deviation``:
  refused. Further than ``ramp_threshold`` while the arm is idle (nothing sent yet, or the last
  trajectory has ended), or so far that reaching the first point in time would break a
  velocity limit: ramped in. A chunk that continues a running trajectory is not ramped: its
  first point is ahead of the measured pose by the tracking lag;
* the ramp-in is the driver executor's: over the ramp the points become the convex blend
  ``measured + a(s) (point - measured)`` with the smoothstep ``a = 3s^2 - 2s^3``, so the arm
  leaves its pose at rest and meets the chunk at the chunk's own schedule with matching
  velocity, never outside the span between where it was and the chunk; a chunk shorter than
  the ramp is followed by points that finish the blend onto its last point. (Delaying the whole
  trajectory instead left the chunk's first-point velocity at the end of a long spline from
  rest, which the controller ran as a swing the wrong way first: 0.08 rad past a joint limit in
  a probe of 1,200 chunks.) The ramp lasts the longest of ``ramp_in_time`` (from idle) and the
  rest-to-rest bound below. A chunk that comes while a ramp-in is under way is blended the same
  way (same start pose, same schedule: ``RampInProgress``), as the driver's ramp goes on
  around every chunk spliced meanwhile; ramped on its own it is ahead of the arm by what the
  ramp has still to cover and got a ramp at the rest-to-rest bound, which with the chunk's own
  motion broke the acceleration limit (the closed-loop test refused every chunk during a
  ramp-in);
* as the controller interpolates, from the measured pose at time 0 through every point: every
  position within the joint limits and every speed within ``max_velocity`` (exact extremes of
  its linear or cubic segments); the change of mean velocity between the chunk's segments
  within ``max_acceleration``.

A cubic from rest to rest over distance d in time T peaks at 1.5 d / T in velocity and 6 d / T^2
in acceleration; the smoothstep blend of a standing offset d has the same peaks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hw_drivers.jtc_model import bounds, check_trajectory
from hw_drivers.trajectory import (
    BridgeOutput,
    JointTrajectoryData,
    TrajectoryPoint,
    monotone_velocities,
)

_SLACK = 1e-6


@dataclass(frozen=True)
class GuardConfig:
    max_start_deviation: float = 0.5  # [rad] refuse beyond
    ramp_threshold: float = 0.02  # [rad] ramp in beyond
    ramp_in_time: float = 1.0  # [s] shortest ramp
    max_state_age: float = 0.5  # [s] measured joint states older than this do not count


@dataclass(frozen=True)
class RampInProgress:
    """A ramp-in the controller is running: from ``home``, over ``duration``, ``elapsed`` of it
    gone when the chunk at hand is sent."""

    home: np.ndarray
    elapsed: float
    duration: float


@dataclass(frozen=True)
class GuardResult:
    output: BridgeOutput | None  # None: refused, nothing may be sent
    reason: str  # why refused ("" when sent)
    ramp: float  # [s] how long the ramp-in blend lasts from now (0 when none)


def ramp_duration(
    distance: np.ndarray, max_velocity: np.ndarray, max_acceleration: np.ndarray
) -> float:
    """Shortest rest-to-rest cubic duration covering ``distance`` per joint within limits."""
    d = np.abs(np.asarray(distance, dtype=float))
    by_velocity = 1.5 * d / np.asarray(max_velocity, dtype=float)
    by_acceleration = np.sqrt(6.0 * d / np.asarray(max_acceleration, dtype=float))
    return float(np.max(np.maximum(by_velocity, by_acceleration), initial=0.0))


def blend_in(
    trajectory: JointTrajectoryData,
    measured: np.ndarray,
    duration: float,
    *,
    elapsed: float = 0.0,
    origin: np.ndarray | None = None,
) -> JointTrajectoryData:
    """``trajectory`` ramped in from ``measured`` (at rest) over ``duration``: each point due
    before ``duration`` becomes ``measured + a(s) (point - measured)``, ``s = t / duration``,
    ``a`` the smoothstep, its velocity ``a v + a' (point - measured)``; points that finish the
    blend onto the last point follow a trajectory shorter than the ramp. ``elapsed``: the ramp
    began that long ago (``s = (t + elapsed) / duration``); ``origin``: where the arm is now
    (default ``measured``)."""
    points = list(trajectory.points)
    remaining = duration - elapsed
    if remaining <= 0.0 or not points:
        return trajectory
    home = np.asarray(measured, dtype=float)
    with_velocities = points[-1].velocities is not None
    last = points[-1]
    if last.time_from_start < remaining:
        # Hold the last point while the blend finishes, at the chunk's spacing.
        step = (
            last.time_from_start - points[-2].time_from_start if len(points) > 1 else 0.05
        )
        count = max(1, int(np.ceil((remaining - last.time_from_start) / step - 1e-9)))
        rest = np.zeros_like(home) if with_velocities else None
        for k in range(1, count + 1):
            t = min(last.time_from_start + k * step, remaining)
            points.append(TrajectoryPoint(np.asarray(last.positions, dtype=float), rest, t))
    times = np.array([p.time_from_start for p in points])
    s = np.clip((times + elapsed) / duration, 0.0, 1.0)[:, None]
    a = s * s * (3.0 - 2.0 * s)
    da = 6.0 * s * (1.0 - s) / duration
    offset = np.array([p.positions for p in points], dtype=float) - home
    positions = home + a * offset
    velocities = None
    if with_velocities:
        exact = a * np.array([p.velocities for p in points], dtype=float) + da * offset
        # Limited as the chunk's own (from the measured pose at time 0): sampled blend
        # velocities alone let the spline pass a limit the blend touches by a few microradians.
        start = home if origin is None else np.asarray(origin, dtype=float)
        velocities = monotone_velocities(
            np.concatenate([[0.0], times]), np.vstack([start, positions]),
            np.vstack([np.zeros_like(home), exact]),
        )[1:]
    blended = tuple(
        TrajectoryPoint(
            positions[k], None if velocities is None else velocities[k], p.time_from_start
        )
        for k, p in enumerate(points)
    )
    return JointTrajectoryData(trajectory.joint_names, blended, trajectory.stamp)


def guard(
    out: BridgeOutput,
    names: Sequence[str],
    measured: np.ndarray | None,
    max_velocity: np.ndarray,
    max_acceleration: np.ndarray,
    config: GuardConfig,
    *,
    lower: np.ndarray,
    upper: np.ndarray,
    idle: bool = True,
    measured_velocity: np.ndarray | None = None,
    ramp_in_progress: RampInProgress | None = None,
) -> GuardResult:
    """Check (and ramp in) the arm trajectory of ``out``; ``names``, ``measured``, the limits
    and ``measured_velocity`` (None: unknown, taken as at rest) are in the trajectory's joint
    order (the arm joints, grippers split off); ``idle``: no trajectory of ours is running on
    the controller."""
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
    # The controller starts from the measured state: its velocity, when the joint states have
    # none, taken as at rest (as a state interface reports a standing arm).
    start_velocity = (
        np.zeros_like(measured)
        if measured_velocity is None
        else np.asarray(measured_velocity, dtype=float)
    )
    # Too fast: the controller's first segment, from the measured state to the first point.
    head = JointTrajectoryData(traj.joint_names, traj.points[:1], traj.stamp)
    too_fast = bool(np.any(bounds(head, measured, start_velocity)[2][0] > vmax * (1 + _SLACK)))
    ramp = 0.0
    ongoing = ramp_in_progress
    if ongoing is not None and ongoing.elapsed < ongoing.duration:
        # The ramp the controller runs goes on around this chunk (see the module's doc).
        traj = blend_in(
            traj, ongoing.home, ongoing.duration, elapsed=ongoing.elapsed, origin=measured
        )
        ramp = ongoing.duration - ongoing.elapsed
    elif deviation[j] > config.ramp_threshold and (idle or too_fast):
        ramp = ramp_duration(first - measured, vmax, amax)
        if idle:
            ramp = max(config.ramp_in_time, ramp)
        traj = blend_in(traj, measured, ramp)
    reason = _limit_violation(
        traj, names, measured, start_velocity, vmax, amax, np.asarray(lower), np.asarray(upper)
    )
    if reason:
        return GuardResult(None, reason, 0.0)
    return GuardResult(BridgeOutput(traj, out.gripper, out.skipped), "", ramp)


def _limit_violation(
    trajectory: JointTrajectoryData,
    names: Sequence[str],
    measured: np.ndarray,
    measured_velocity: np.ndarray,
    vmax: np.ndarray,
    amax: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
) -> str:
    points = trajectory.points
    times = np.array([0.0] + [p.time_from_start for p in points])
    positions = np.vstack([measured] + [p.positions for p in points])
    dt = np.diff(times)
    if np.any(dt <= 0):
        k = int(np.argmax(dt <= 0))
        return f"timing: point {k} is not after the one before it"

    def where(k: int) -> str:
        return "from the measured pose to point 0" if k == 0 else f"point {k - 1} to {k}"

    # As the controller runs it: from the measured state through every point.
    lowest, highest, fastest = bounds(trajectory, measured, measured_velocity)
    too_fast = fastest > vmax * (1 + _SLACK)
    if too_fast.any():
        k, j = (int(v) for v in np.argwhere(too_fast)[0])
        return (
            f"velocity_limit: joint {names[j]} {where(k)} needs {fastest[k, j]:.3f}/s > max "
            f"{vmax[j]:.3f}/s as the controller interpolates"
        )
    # The first segment starts wherever the arm is (possibly past a limit already); the
    # trajectory may only lead back towards the range, never further out.
    below = lowest < np.minimum(lower, measured) - _SLACK
    above = highest > np.maximum(upper, measured) + _SLACK
    outside = below | above
    if outside.any():
        k, j = (int(v) for v in np.argwhere(outside)[0])
        value, bound = (lowest[k, j], lower[j]) if below[k, j] else (highest[k, j], upper[j])
        return (
            f"position_limit: joint {names[j]} {where(k)} reaches {value:.4f} beyond its limit "
            f"{bound:.4f} as the controller interpolates"
        )
    if len(points) > 1:
        # Change of mean velocity between consecutive chunk segments over their mean spacing.
        # The last point comes up to twice the spacing late (``trajectory.settling_time``: the
        # controller's stop into it); its step is the chunk's and is judged at the spacing.
        dt = dt.copy()
        if dt.size >= 3:
            dt[-1] = min(dt[-1], dt[-2])
        segment_velocity = np.diff(positions, axis=0) / dt[:, None]
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


@dataclass(frozen=True)
class OutgoingLimits:
    """What every message the bridge sends must keep: the controller's joints (in the order
    the arm's limits are given), the arm's limits, and the grippers' position limits."""

    controller_joints: tuple[str, ...]
    lower: np.ndarray
    upper: np.ndarray
    max_velocity: np.ndarray
    gripper_joints: tuple[str, ...] = ()
    gripper_lower: np.ndarray | None = None
    gripper_upper: np.ndarray | None = None


def outgoing_problem(
    out: BridgeOutput, limits: OutgoingLimits, measured: np.ndarray | None = None
) -> str:
    """Why ``out`` must not leave the bridge ("" when it may). The last check before a message
    reaches the controller or the gripper, whatever produced it (a chunk through ``guard``, a
    stop): the controller would take it (``jtc_model.check_trajectory``), every value is
    finite, every point within the position limits (or, where the arm is outside them,
    ``measured``, between it and the range: a ramp-in leads back) and its velocity within
    ``max_velocity``; every gripper target finite and within its limits. ``guard`` and
    ``stop_trajectory`` keep these; this holds them if either ever does not."""
    trajectory = out.trajectory
    if trajectory is not None:
        if tuple(trajectory.joint_names) != tuple(limits.controller_joints):
            return (
                f"joints {list(trajectory.joint_names)} are not the controller's "
                f"{list(limits.controller_joints)} in order"
            )
        refused = check_trajectory(trajectory, limits.controller_joints)
        if refused:
            return f"the controller would refuse it: {refused}"
        lower = np.asarray(limits.lower, dtype=float)
        upper = np.asarray(limits.upper, dtype=float)
        if measured is not None:
            here = np.asarray(measured, dtype=float)
            lower, upper = np.minimum(lower, here), np.maximum(upper, here)
        vmax = np.asarray(limits.max_velocity, dtype=float)
        for k, point in enumerate(trajectory.points):
            positions = np.asarray(point.positions, dtype=float)
            if not (math.isfinite(point.time_from_start) and point.time_from_start > 0.0):
                return f"point {k} time_from_start {point.time_from_start!r} is not > 0"
            if not np.all(np.isfinite(positions)):
                return f"point {k} has a non-finite position"
            outside = (positions < lower - _SLACK) | (positions > upper + _SLACK)
            if outside.any():
                j = int(np.argmax(outside))
                return (
                    f"point {k} {trajectory.joint_names[j]} {positions[j]:.4f} outside "
                    f"[{lower[j]:.4f}, {upper[j]:.4f}]"
                )
            if point.velocities is not None:
                velocities = np.asarray(point.velocities, dtype=float)
                if not np.all(np.isfinite(velocities)):
                    return f"point {k} has a non-finite velocity"
                fast = np.abs(velocities) > vmax * (1 + _SLACK)
                if fast.any():
                    j = int(np.argmax(fast))
                    return (
                        f"point {k} {trajectory.joint_names[j]} velocity {velocities[j]:.4f} "
                        f"beyond {vmax[j]:.4f}"
                    )
    gripper = out.gripper
    if gripper is not None:
        targets = np.asarray(gripper.positions, dtype=float)
        if tuple(gripper.joint_names) != tuple(limits.gripper_joints):
            wanted = list(limits.gripper_joints)
            return f"gripper joints {list(gripper.joint_names)} are not {wanted}"
        if not np.all(np.isfinite(targets)) or not math.isfinite(gripper.time_from_start):
            return "a gripper target is not finite"
        lo = np.asarray(limits.gripper_lower, dtype=float)
        hi = np.asarray(limits.gripper_upper, dtype=float)
        outside = (targets < lo - _SLACK) | (targets > hi + _SLACK)
        if outside.any():
            j = int(np.argmax(outside))
            return f"gripper {gripper.joint_names[j]} target {targets[j]:.4f} outside its limits"
    return ""
