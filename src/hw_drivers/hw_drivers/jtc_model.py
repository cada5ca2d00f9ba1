"""What ros2_control's joint_trajectory_controller does with a JointTrajectory we send (no ROS).

The trajectory bridge cannot see the controller; what it sends is only useful if the
controller accepts it, and stopping the arm without a measured pose needs to know where the
controller's reference is. Both are facts about the controller's source
(ros-controls/ros2_controllers, ``joint_trajectory_controller/src/``):

* ``validate_trajectory_msg`` (``joint_trajectory_controller.cpp``) refuses, logs an error and
  keeps running its current trajectory for: empty ``joint_names``; empty ``points`` ("Empty
  trajectory received." in current releases; before that an empty trajectory was the hold
  command, see ``check_trajectory``); a joint it does not control; fewer joints than it
  controls unless ``allow_partial_joints_goal``; a last point with a velocity above float
  epsilon unless ``allow_nonzero_velocity_at_trajectory_end`` (default false in current
  releases); ``time_from_start`` not strictly increasing; ``positions`` not one per joint
  (``velocities``/``accelerations``: empty or one per joint); any ``effort``.
* ``Trajectory::sample`` and ``interpolate_between_points`` (``trajectory.cpp``): a trajectory
  stamped zero starts when first sampled; before the first point it interpolates from the
  state it had then to the first point; between points linearly when either point lacks
  velocities, with the cubic Hermite through both points' positions and velocities when both
  have them (quintic with accelerations, which we never send); after the last point it holds
  the last point (velocity zero when the point has none).
* the state it starts from has no velocities when the controller has no velocity state
  interface. ``set_point_before_trajectory_msg`` then fills zeros when the first point has
  velocities (ros2_controllers #2043, "Fill point_before_trajectory with same information as
  trajectory": rolling and kilted), so the first segment is the cubic from rest; releases before
  it (jazzy) run that segment linearly (``zero_start_velocity=False``). Either lies within the
  cubic from rest's bounds (a line's extremes are its ends, and its speed is the cubic's mean).

* ``sort_to_local_joint_order`` (``joint_trajectory_controller.cpp``) with ``mapping``
  (``include/joint_trajectory_controller/trajectory.hpp``) puts each column of a message at the
  controller joint of its name, in any order (``local_order``). It does not check that the
  names are unique: with a name repeated the later column wins and the joint no column names
  keeps what a static buffer in the controller held (0.0 at first, then whatever the last
  message wrote there), and ``validate_trajectory_msg`` lets it through (it checks the count
  and that each name is known). The bridge refuses a repeated name at configure.
* ``update`` writes the sample one controller period ahead (``command_next_`` at ``time +
  update_period_``, in releases since 2024) and keeps the sample at ``time`` as the reference
  it publishes; ``sample`` here is that reference. The lead is within the stop's
  ``stop_start_delay`` (one controller period plus transport).

Sources read: ros-controls/ros2_controllers @ 01936294 ``trajectory.cpp``; the validation as in
the controller forks that track the current one (christophfroehlich/ros2_controllers @
00f55866, and the "Empty trajectory received." check of current releases) and the threads of
ros2_controllers #558/#683/#514 (an empty trajectory held only position-commanded arms before
the controller stopped accepting it).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np

from hw_drivers.trajectory import JointTrajectoryData, TrajectoryPoint

# std::numeric_limits<float>::epsilon(): the controller's "zero" for the last point's velocity.
FLOAT_EPSILON = float(np.finfo(np.float32).eps)


def check_trajectory(
    trajectory: JointTrajectoryData,
    controller_joints: Sequence[str],
    *,
    allow_partial_joints_goal: bool = False,
    allow_nonzero_velocity_at_trajectory_end: bool = False,
) -> str | None:
    """Why the controller would refuse ``trajectory`` (its log line's meaning), or None."""
    names = list(trajectory.joint_names)
    joints = list(controller_joints)
    if not allow_partial_joints_goal and len(names) != len(joints):
        return "joints on incoming trajectory don't match the controller joints"
    if not names:
        return "empty joint names on incoming trajectory"
    if not trajectory.points:
        return "empty trajectory received"
    unknown = [n for n in names if n not in joints]
    if unknown:
        return f"incoming joint {unknown[0]} doesn't match the controller's joints"
    last = trajectory.points[-1]
    if not allow_nonzero_velocity_at_trajectory_end and last.velocities is not None:
        moving = np.flatnonzero(np.abs(np.asarray(last.velocities, dtype=float)) > FLOAT_EPSILON)
        if moving.size:
            return f"velocity of last trajectory point of joint {names[moving[0]]} is not zero"
    previous = None
    for i, point in enumerate(trajectory.points):
        if previous is not None and not point.time_from_start > previous:
            return f"time between points {i - 1} and {i} is not strictly increasing"
        previous = point.time_from_start
        if len(point.positions) != len(names):
            return f"mismatch between joint_names size and positions at point #{i}"
        if point.velocities is not None and len(point.velocities) not in (0, len(names)):
            return f"mismatch between joint_names size and velocities at point #{i}"
    return None


def local_order(names: Sequence[str], controller_joints: Sequence[str]) -> list[int | None]:
    """For each controller joint, the column of a message with joint ``names`` that the
    controller puts there (``sort_to_local_joint_order``); None where no column lands, which
    keeps a stale value. ``names`` as the controller has them by then: a partial goal already
    filled (``fill_partial_goal`` appends the joints it lacks). More names than joints: the
    controller's ``mapping`` gives up and the values stay in the message's order."""
    joints = list(controller_joints)
    if len(names) > len(joints):
        return list(range(len(joints)))
    order: list[int | None] = [None] * len(joints)
    for column, name in enumerate(names):
        if name in joints:
            order[joints.index(name)] = column  # a repeated name: the later column wins
    return order


def _velocities(point: TrajectoryPoint) -> np.ndarray | None:
    """A point's velocities, None when it has none (the controller then interpolates linearly)."""
    v = point.velocities
    return None if v is None or len(v) == 0 else np.asarray(v, dtype=float)


def _cubic(
    p0: np.ndarray, v0: np.ndarray, p1: np.ndarray, v1: np.ndarray, duration: float
) -> tuple[np.ndarray, np.ndarray]:
    """The t^2 and t^3 coefficients of the Hermite cubic (p0, v0) -> (p1, v1) over duration."""
    c2 = (-3.0 * p0 + 3.0 * p1 - 2.0 * v0 * duration - v1 * duration) / duration**2
    c3 = (2.0 * p0 - 2.0 * p1 + v0 * duration + v1 * duration) / duration**3
    return c2, c3


def _segment(
    p0: np.ndarray,
    v0: np.ndarray | None,
    p1: np.ndarray,
    v1: np.ndarray | None,
    duration: float,
    t: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Position and velocity ``t`` into a segment, as ``interpolate_between_points``."""
    cubic = v0 is not None and v1 is not None
    if t < 0.0:
        t, cubic = 0.0, False
    if t > duration:
        t, cubic = duration, False
    if not cubic:
        slope = (p1 - p0) / duration if duration != 0.0 else np.zeros_like(p0)
        return p0 + slope * t, slope
    c2, c3 = _cubic(p0, v0, p1, v1, duration)
    return (
        p0 + v0 * t + c2 * t**2 + c3 * t**3,
        v0 + 2.0 * c2 * t + 3.0 * c3 * t**2,
    )


def _start_velocities(
    start_velocities: np.ndarray | None,
    first: TrajectoryPoint,
    zero_start_velocity: bool,
) -> np.ndarray | None:
    """The velocities of the state the controller interpolates from to the first point."""
    if start_velocities is not None:
        return np.asarray(start_velocities, dtype=float)
    first_velocities = _velocities(first)
    if zero_start_velocity and first_velocities is not None:
        return np.zeros_like(first_velocities)
    return None


def sample(
    trajectory: JointTrajectoryData,
    start_positions: np.ndarray,
    start_velocities: np.ndarray | None,
    elapsed: float,
    *,
    zero_start_velocity: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The controller's reference (positions, velocities) ``elapsed`` seconds after it took
    ``trajectory`` (stamped zero) while the arm was at ``start_positions`` moving at
    ``start_velocities`` (None: the start state has no velocities; filled with zeros, as
    current releases do, unless ``zero_start_velocity`` is False: jazzy, see the module)."""
    points = trajectory.points
    if not points:
        raise ValueError("an empty trajectory has no reference")

    first = points[0]
    if elapsed < first.time_from_start:
        return _segment(
            np.asarray(start_positions, dtype=float),
            _start_velocities(start_velocities, first, zero_start_velocity),
            np.asarray(first.positions, dtype=float),
            _velocities(first),
            first.time_from_start,
            elapsed,
        )
    for a, b in pairwise(points):
        if a.time_from_start <= elapsed < b.time_from_start:
            return _segment(
                np.asarray(a.positions, dtype=float),
                _velocities(a),
                np.asarray(b.positions, dtype=float),
                _velocities(b),
                b.time_from_start - a.time_from_start,
                elapsed - a.time_from_start,
            )
    last = points[-1]
    positions = np.asarray(last.positions, dtype=float)
    v = _velocities(last)
    return positions.copy(), (np.zeros_like(positions) if v is None else v.copy())


def _segment_bounds(
    p0: np.ndarray,
    v0: np.ndarray | None,
    p1: np.ndarray,
    v1: np.ndarray | None,
    duration: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lowest and highest position and fastest speed per joint over one segment, exactly as
    ``_segment`` interpolates it (a cubic's extremes lie at its ends or where its derivative
    vanishes)."""
    if v0 is None or v1 is None or duration <= 0.0:
        slope = (p1 - p0) / duration if duration > 0.0 else np.zeros_like(p0)
        return np.minimum(p0, p1), np.maximum(p0, p1), np.abs(slope)
    c2, c3 = _cubic(p0, v0, p1, v1, duration)

    def position(t: np.ndarray) -> np.ndarray:
        return p0 + v0 * t + c2 * t**2 + c3 * t**3

    def velocity(t: np.ndarray) -> np.ndarray:
        return v0 + 2.0 * c2 * t + 3.0 * c3 * t**2

    def inside(t: np.ndarray) -> np.ndarray:
        return np.isfinite(t) & (t > 0.0) & (t < duration)

    with np.errstate(divide="ignore", invalid="ignore"):
        # Speed: the velocity is a parabola; its vertex, if inside, besides both ends.
        vertex = np.where(c3 != 0.0, -c2 / (3.0 * c3), np.nan)
        fastest = np.maximum(np.abs(v0), np.abs(v1))
        fastest = np.where(inside(vertex), np.maximum(fastest, np.abs(velocity(vertex))), fastest)
        # Position: where the velocity is zero (3 c3 t^2 + 2 c2 t + v0 = 0).
        a, b = 3.0 * c3, 2.0 * c2
        root = np.sqrt(np.maximum(b * b - 4.0 * a * v0, 0.0))
        real = b * b - 4.0 * a * v0 >= 0.0
        linear = np.where(b != 0.0, -v0 / b, np.nan)
        candidates = [
            np.where(a != 0.0, np.where(real, (-b + root) / (2.0 * a), np.nan), linear),
            np.where(a != 0.0, np.where(real, (-b - root) / (2.0 * a), np.nan), np.nan),
        ]
    lowest, highest = np.minimum(p0, p1), np.maximum(p0, p1)
    for t in candidates:
        ok = inside(t)
        at = position(np.where(ok, t, 0.0))
        lowest = np.where(ok, np.minimum(lowest, at), lowest)
        highest = np.where(ok, np.maximum(highest, at), highest)
    return lowest, highest, fastest


def bounds(
    trajectory: JointTrajectoryData,
    start_positions: np.ndarray,
    start_velocities: np.ndarray | None,
    *,
    zero_start_velocity: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per segment (row 0: from the start state to the first point; row k: point k-1 to k) and
    joint, the lowest and highest position and the fastest speed the controller commands while
    it runs ``trajectory`` from the start state (see ``sample``)."""

    start_v = None
    if trajectory.points:
        start_v = _start_velocities(start_velocities, trajectory.points[0], zero_start_velocity)
    states = [
        (
            np.asarray(start_positions, dtype=float),
            start_v,
            0.0,
        )
    ] + [
        (np.asarray(p.positions, dtype=float), _velocities(p), p.time_from_start)
        for p in trajectory.points
    ]
    rows = [_segment_bounds(a[0], a[1], b[0], b[1], b[2] - a[2]) for a, b in pairwise(states)]
    lowest, highest, fastest = (np.array(column) for column in zip(*rows, strict=True))
    return lowest, highest, fastest
