"""ros2_control's joint_trajectory_controller (JTC) driving a position-commanded arm (no ROS).

The trajectory bridge's tests used to check what it sends one message at a time; this runs it
in a closed loop against a controller that refuses what the real one refuses and moves its
reference as the real one does. What the controller does is ``hw_drivers.jtc_model``'s
(one source of truth, mirrored from ros2_controllers' source); this module adds the state
machine around it, as ``JointTrajectoryController::update`` (ros-controls/ros2_controllers,
``joint_trajectory_controller/src/joint_trajectory_controller.cpp``):

* a message is validated on receipt (``topic_callback`` -> ``validate_trajectory_msg``): a
  refused one is logged and the running trajectory plays on (here: counted, its reason kept);
* an accepted one waits in the realtime buffer and replaces the running trajectory at the next
  ``update`` (the newest wins when several arrive between two updates);
* at its first sample the controller sets the "point before the trajectory" and samples from
  it to the first point: the *measured* state at that update by default, or, with
  ``interpolate_from_desired_state`` (``open_loop_control`` in older releases), the last
  command and the time it was written;
* before any trajectory, and after the last point, the command holds (the pose at activation,
  then the last point at rest).

The arm follows the position command as a first-order lag (time constant ``lag``), so the
measured joint states trail the reference as on a real arm, and report the velocity of that
motion (a position + velocity state interface).

Not modelled: header stamps other than zero (the bridge sends zero; others are refused here
with a reason), tolerances and goal aborts, the command one period ahead of newer releases
(``command_next_``), actions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from hw_drivers.jtc_model import check_trajectory, local_order, sample
from hw_drivers.trajectory import JointTrajectoryData, TrajectoryPoint

#: The reason given for a trajectory stamped other than zero (not modelled).
NONZERO_STAMP = "header stamp other than zero: not modelled by the emulator"


@dataclass(frozen=True)
class JtcConfig:
    joint_names: tuple[str, ...]
    allow_partial_joints_goal: bool = False
    allow_nonzero_velocity_at_trajectory_end: bool = False
    # False (the controller's default): a new trajectory starts from the measured state.
    interpolate_from_desired_state: bool = False
    lag: float = 0.02  # [s] the arm's first-order time constant behind the command (0: ideal)


@dataclass(frozen=True)
class JtcSample:
    """One control update: the command written (the reference) and the arm's state read."""

    time: float
    positions: np.ndarray  # commanded
    velocities: np.ndarray  # commanded
    measured_positions: np.ndarray
    measured_velocities: np.ndarray


@dataclass
class _Running:
    trajectory: JointTrajectoryData  # in the controller's joint order, times shifted by ``lead``
    start_time: float  # when it was first sampled
    start_positions: np.ndarray
    start_velocities: np.ndarray | None
    lead: float  # [s] how long before ``start_time`` the point before the trajectory lies


class FirstOrderArm:
    """A position-commanded joint group: ``p' = (command - p) / lag``, exact per step."""

    def __init__(self, initial: Sequence[float], lag: float) -> None:
        self.positions = np.asarray(initial, dtype=float).copy()
        self.velocities = np.zeros_like(self.positions)
        self.lag = float(lag)

    def advance(self, command: np.ndarray, dt: float) -> None:
        """Follow ``command`` (held over the step) for ``dt`` seconds."""
        if dt <= 0.0:
            return
        alpha = 1.0 if self.lag <= 0.0 else 1.0 - math.exp(-dt / self.lag)
        before = self.positions
        self.positions = before + alpha * (np.asarray(command, dtype=float) - before)
        self.velocities = (self.positions - before) / dt


@dataclass
class JtcEmulator:
    """The controller and its arm. Feed ``receive(time, trajectory)``; call ``update(time)`` at
    the control rate with non-decreasing times."""

    config: JtcConfig
    initial_positions: Sequence[float]
    refusals: list[tuple[float, str]] = field(default_factory=list)
    taken: list[tuple[float, JointTrajectoryData]] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.config.joint_names)
        home = np.asarray(self.initial_positions, dtype=float)
        if home.shape != (n,):
            raise ValueError(f"{home.shape[0]} initial positions for {n} joints")
        self.arm = FirstOrderArm(home, self.config.lag)
        # On activation the controller holds the pose it reads.
        self.command = home.copy()
        self.command_velocity = np.zeros(n)
        self._commanded_at: float | None = None
        self._pending: JointTrajectoryData | None = None
        self._running: _Running | None = None
        self._last_update: float | None = None
        # sort_to_local_joint_order's static output vector, shared by every remap.
        self._remap_buffer = np.zeros(n)

    # -- the subscriber ----------------------------------------------------------------------
    def receive(self, time: float, trajectory: JointTrajectoryData) -> str | None:
        """A message on the controller's topic at ``time``: why it is refused, or None (taken
        at the next update)."""
        reason = check_trajectory(
            trajectory,
            self.config.joint_names,
            allow_partial_joints_goal=self.config.allow_partial_joints_goal,
            allow_nonzero_velocity_at_trajectory_end=(
                self.config.allow_nonzero_velocity_at_trajectory_end
            ),
        )
        if reason is None and trajectory.stamp != 0.0:
            reason = NONZERO_STAMP
        if reason is not None:
            self.refusals.append((time, reason))
            return reason
        self._pending = self._to_controller_order(trajectory)
        return None

    def _to_controller_order(self, trajectory: JointTrajectoryData) -> JointTrajectoryData:
        """As ``fill_partial_goal`` then ``sort_to_local_joint_order``: a partial goal gets the
        joints it omits appended at their current command (velocity 0); then each column goes
        to the joint of its name (``jtc_model.local_order``). A joint no column lands on (a
        name repeated) gets what the controller's one static buffer holds at that index: the
        value the last remapped field wrote there (positions, then velocities, point by point,
        message after message; 0.0 at first)."""
        joints = list(self.config.joint_names)
        names = list(trajectory.joint_names)
        missing = [] if len(names) == len(joints) else [j for j in joints if j not in names]
        order = local_order(names + missing, joints)
        buffer = self._remap_buffer

        def arrange(values, fill) -> np.ndarray:
            v = np.concatenate([np.asarray(values, dtype=float), fill])
            if len(names) + len(missing) > len(joints):
                return v  # the controller's mapping gave up: the message's order, as it was
            for i, k in enumerate(order):
                if k is not None:
                    buffer[i] = v[k]
            return buffer.copy()

        points = []
        for p in trajectory.points:
            fill = [self.command[joints.index(j)] for j in missing]
            positions = arrange(p.positions, fill)
            velocities = None
            if p.velocities is not None and len(p.velocities) > 0:
                velocities = arrange(p.velocities, [0.0] * len(missing))
            points.append(TrajectoryPoint(positions, velocities, p.time_from_start))
        return JointTrajectoryData(tuple(joints), tuple(points), 0.0)

    # -- the control loop --------------------------------------------------------------------
    def update(self, time: float) -> JtcSample:
        """One control cycle at ``time``: the arm has followed the last command since the last
        cycle; a pending trajectory replaces the running one; the new command is written."""
        if self._last_update is not None:
            self.arm.advance(self.command, time - self._last_update)
        self._last_update = time
        if self._pending is not None:
            self._start(time, self._pending)
            self._pending = None
        if self._running is not None:
            r = self._running
            self.command, self.command_velocity = sample(
                r.trajectory, r.start_positions, r.start_velocities, time - r.start_time + r.lead
            )
        self._commanded_at = time
        return JtcSample(
            time,
            self.command.copy(),
            self.command_velocity.copy(),
            self.arm.positions.copy(),
            self.arm.velocities.copy(),
        )

    def _start(self, time: float, trajectory: JointTrajectoryData) -> None:
        self.taken.append((time, trajectory))
        if self.config.interpolate_from_desired_state:
            # From the last command, at the time it was written (``last_commanded_time_``).
            lead = 0.0 if self._commanded_at is None else time - self._commanded_at
            start, velocity = self.command.copy(), self.command_velocity.copy()
        else:
            lead, start, velocity = 0.0, self.arm.positions.copy(), self.arm.velocities.copy()
        if lead > 0.0:
            # The segment to the first point starts ``lead`` earlier: shift every point by it.
            trajectory = JointTrajectoryData(
                trajectory.joint_names,
                tuple(
                    TrajectoryPoint(p.positions, p.velocities, p.time_from_start + lead)
                    for p in trajectory.points
                ),
                trajectory.stamp,
            )
        self._running = _Running(trajectory, time, start, velocity, lead)

    @property
    def running_until(self) -> float | None:
        """When the running trajectory's last point is due (None: none taken yet)."""
        if self._running is None:
            return None
        r = self._running
        return r.start_time - r.lead + r.trajectory.points[-1].time_from_start
