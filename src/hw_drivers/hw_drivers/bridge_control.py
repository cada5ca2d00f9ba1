"""The trajectory bridge's ``~/estop``, ``~/hold`` and ``~/reset``, as the driver node's (no ROS).

The driver node's executor holds the command where it is; the bridge has no command of its own
(the ros2_control controller interpolates what was sent), so it does what it can do with the
same meaning:

* e-stop: latched; no chunk is forwarded (refused with the executor's reason) until ``~/reset``,
  and the controller's running trajectory is replaced by ``stop_trajectory``: a stop at the
  joints' acceleration limits from the measured pose and velocity. The latch survives
  deactivate/activate and cleanup/configure (it lives on the node, not the configuration);
* hold(true): the same stop, and no chunk is forwarded until ``~/hold(false)`` or ``~/reset``;
  hold(false) during an e-stop answers failure with the executor's sentence;
* reset: clears e-stop and hold only with a recent measured joint state of the arm (the
  driver's reset refuses when it cannot read the robot); the next chunk ramps in from the
  measured pose (``bridge_guard``, from idle);
* inactive (lifecycle: between deactivate and the next activate, and before the first): every
  chunk is refused with the driver's ``inactive: ...`` reason, before the e-stop and the hold.
  hold and reset still set and clear the latches, which activation keeps, but never answer
  that chunks are followed (the driver's ``ControlLoop.stopped``).

Without a recent joint state there is no measured pose to stop from. The stop then starts
from the controller's own reference: the trajectory the bridge last sent, sampled now as the
controller samples it (``jtc_model.sample``), which is where a tracking arm is. An empty
trajectory is not an option: current joint_trajectory_controller releases refuse it and keep
running the trajectory they have. When the last trajectory sent has ended, the controller
already holds its last point and nothing is sent.

What it cannot do: the controller may refuse or abort the stop trajectory, a trajectory that
another client sent is not known, and the gripper keeps its last target (its command is a
separate topic with no stop).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hw_drivers.control_loop import REJECT_STOPPED, STOPPED
from hw_drivers.executor import (
    ESTOP_LATCHED,
    HOLD_RELEASED,
    HOLD_RELEASED_IN_ESTOP,
    HOLDING,
    REJECT_ESTOP,
    REJECT_HOLD,
)
from hw_drivers.jtc_model import sample
from hw_drivers.trajectory import JointTrajectoryData, TrajectoryPoint

# Why the e-stop latched when the operator's ~/estop latched it (the bridge latches for
# nothing else: it refuses a chunk that breaks a limit, the running trajectory plays on).
OPERATOR_ESTOP = "operator e-stop via ~/estop"

# The shortest stop sent [s]: a point due within a few controller periods (or at once: the
# bridge's min_lead_time may be 0) is reached only with a jump.
MIN_STOP_TIME = 0.1


class BridgeControl:
    """The operator's latches over the bridge's forwarding."""

    def __init__(self, *, stopped: bool = False) -> None:
        self.estopped = False
        self.hold_requested = False
        self.estop_reason = ""  # why the e-stop latched; "" when it is not
        # The node is not active (lifecycle): nothing is forwarded, whatever the latches say.
        # A flag of its own, not a hold: the operator's hold(false) or reset while inactive
        # must not be answered "following chunks", and activation must keep their latches.
        self.stopped = stopped

    def start(self) -> None:
        """The node was activated: chunks pass again unless a latch holds them."""
        self.stopped = False

    def stop(self) -> None:
        """The node was deactivated (or is not yet active): every chunk is refused as such."""
        self.stopped = True

    def estop(self, reason: str = OPERATOR_ESTOP) -> str:
        """Latch the e-stop; while latched the first reason stays (what stopped the arm), as
        the driver's executor keeps it."""
        self.estopped = True
        if not self.estop_reason:
            self.estop_reason = reason or OPERATOR_ESTOP
        return ESTOP_LATCHED

    def hold(self, on: bool) -> tuple[bool, str]:
        """(whether chunks are now forwarded as asked, what the bridge does now)."""
        self.hold_requested = bool(on)
        if on:
            return True, HOLDING
        if self.estopped:
            return False, HOLD_RELEASED_IN_ESTOP
        if self.stopped:
            return True, f"hold released; {STOPPED}"
        return True, HOLD_RELEASED

    def reset(self, measured: bool) -> tuple[bool, str]:
        """Clear e-stop and hold when the arm's pose is known (``measured``)."""
        if not measured:
            return False, "cannot read the robot: no recent joint state of the arm; nothing cleared"
        cleared = [
            name for name, on in (("e-stop", self.estopped), ("hold", self.hold_requested)) if on
        ]
        self.estopped = False
        self.hold_requested = False
        self.estop_reason = ""
        done = f"cleared {', '.join(cleared)}; " if cleared else ""
        if self.stopped:
            return True, f"reset: {done}{STOPPED}"
        return True, f"reset: {done}the next chunk ramps in from the measured pose"

    def refusal(self) -> str:
        """Why a chunk may not be forwarded now ("" when it may): inactive, then e-stop, then
        hold, as the driver orders them."""
        if self.stopped:
            return REJECT_STOPPED
        if self.estopped:
            return REJECT_ESTOP
        if self.hold_requested:
            return REJECT_HOLD
        return ""

    def state(self, otherwise: str) -> str:
        """The state: ``estop``, ``holding`` (a hold requested), else ``otherwise`` (the caller
        says ``inactive`` or ``holding`` while the node is)."""
        if self.estopped:
            return "estop"
        if self.hold_requested:
            return "holding"
        return otherwise


@dataclass(frozen=True)
class StopBudget:
    """How far the state joint_trajectory_controller starts a stop from may be from the state
    the bridge plans it from (``start_error``).

    The controller (default, not ``interpolate_from_desired_state``) starts a new trajectory
    from the state it *measures* at the update where it takes the message: a moment the bridge
    does not know, after a joint state the bridge read ``state_age`` ago. The controller's
    cubic Hermite from (p + e, v + w) to the stop (p + v T / 2, 0) over T has the acceleration
    ``-v/T - 6 e/T^2 - 4 w/T`` at its start and ``-v/T + 6 e/T^2 + 2 w/T`` at its end (linear
    in between): only with e = w = 0 is it the planned constant ``v / T``.
    """

    # [s] how old the joint state the stop is planned from is (now - its receipt).
    state_age: float = 0.0
    # [s] the longest time from the bridge sending the stop until the controller takes it:
    # the transport plus up to one controller period (the message waits for the next update).
    start_delay: float = 0.0
    # Per joint [rad/s]: how far the joint states' velocities of the last moments were from
    # the velocity planned with (``recent_velocity``). Not the acceleration limit's doing: the
    # controller's own jump when it replaces a trajectory (it restarts from the measured state,
    # so a lagging position-commanded arm's command steps back and its velocity dips for a few
    # updates) makes the velocity the controller will start from anything in that range.
    velocity_spread: np.ndarray | float = 0.0
    # Per joint [rad]: how far the arm was from the pose planned from, when that pose is the
    # controller's reference (no recent joint state) rather than the arm's: the tracking
    # error at the last joint state the bridge had.
    tracking_error: np.ndarray | float = 0.0

    def planning_lead(self) -> float:
        """How far ahead of the joint state [s] the start is planned: to the middle of the
        interval in which the controller takes the stop, so that it may come either way."""
        return self.state_age + self.start_delay / 2.0

    def start_error(
        self, velocity: np.ndarray, max_acceleration: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per joint, the largest |position error| and |velocity error| of the controller's
        start against the planned one (``velocity``: the planned velocity), for an arm whose
        acceleration stays within ``max_acceleration`` (the trajectories the bridge sends keep
        it) apart from the spread its recent velocities showed:

        * velocity: ``amax tau + spread`` (``tau = state_age + start_delay``: the velocity
          changed since the reading);
        * position: ``|v| start_delay / 2`` (taken up to half the delay before or after the
          planned moment) plus ``amax tau^2 / 2 + spread tau`` (that velocity error,
          integrated) plus ``tracking_error``.

        Not in it: an error of the measurement itself, a joint state whose receipt lagged its
        reading (its header stamp is not used), a controller that starts from its last command
        (``interpolate_from_desired_state``: its command leads the measured arm by the
        tracking error, which then adds ``6 e / T^2``, docs/ros2_control_bridge.md), a change
        of the tracking error since it was measured.
        """
        amax = np.asarray(max_acceleration, dtype=float)
        spread = np.abs(np.asarray(self.velocity_spread, dtype=float))
        tau = max(0.0, self.state_age) + max(0.0, self.start_delay)
        position = (
            np.abs(velocity) * max(0.0, self.start_delay) / 2.0
            + amax * tau**2 / 2.0
            + spread * tau
            + np.abs(np.asarray(self.tracking_error, dtype=float))
        )
        return position, amax * tau + spread


def recent_velocity(
    velocities: Sequence[np.ndarray],
) -> tuple[np.ndarray | None, np.ndarray]:
    """The velocity to plan a stop with from the joint states' velocities of the last moments
    (oldest first): their mean (a replacement's dip in them averages out; the mean of true
    derivatives is the displacement over the window), and how far any of them was from it
    (``StopBudget.velocity_spread``). (None, 0) when there are none."""
    if not velocities:
        return None, np.zeros(0)
    stacked = np.asarray(velocities, dtype=float)
    mean = stacked.mean(axis=0)
    return mean, np.abs(stacked - mean).max(axis=0)


def stop_duration(
    velocity: np.ndarray,
    max_acceleration: np.ndarray,
    position_error: np.ndarray,
    velocity_error: np.ndarray,
    min_time: float,
) -> float:
    """The shortest T whose stop keeps the controller's cubic within ``max_acceleration`` for
    every start within the errors: the peak ``|v|/T + 6 E/T^2 + 4 W/T`` (see ``StopBudget``)
    is at most ``amax`` when ``amax T^2 - (|v| + 4 W) T - 6 E >= 0``, i.e. T at least the
    positive root, the longest over the joints (one T for all). At least ``min_time`` and
    ``MIN_STOP_TIME``. With no error it is ``|v| / amax``, the constant deceleration at the limit.

    The trade-off: the budget lengthens the stop, and its distance ``v T / 2`` with it (at
    0.3 rad/s and 2 rad/s^2, a 10 ms old joint state and 20 ms until the controller takes the
    stop: T 0.31 s instead of 0.15 s, 0.046 rad on instead of 0.023; each 0.1 rad/s of
    velocity spread adds about 0.2 s); a shorter stop exceeds the limit when the start is off.
    """
    amax = np.asarray(max_acceleration, dtype=float)
    b = np.abs(velocity) + 4.0 * np.asarray(velocity_error, dtype=float)
    root = (b + np.sqrt(b * b + 24.0 * amax * np.asarray(position_error, dtype=float))) / (
        2.0 * amax
    )
    return max(MIN_STOP_TIME, float(min_time), float(np.max(root, initial=0.0)))


def stop_trajectory(
    names: Sequence[str],
    start: np.ndarray,
    velocity: np.ndarray | None,
    max_acceleration: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    min_time: float,
    budget: StopBudget = StopBudget(),
    max_extension: float = math.inf,
) -> JointTrajectoryData:
    """One point that stops the arm: planned from the pose ``p`` (``start``: where the arm is
    when the controller takes the stop, see ``StopBudget.planning_lead``) moving at ``v``, the
    point ``p + v T / 2`` with zero velocity at ``T = stop_duration(...)`` over the budget's
    start error. From the planned start the controller's cubic is the constant deceleration
    ``v / T``, never past the stop and back; from any start within the budget its acceleration
    stays within ``max_acceleration``. The budget lengthens the stop by at most
    ``max_extension`` seconds over the constant deceleration at the limit
    (``max_stop_extension``): an e-stop must stop the arm soon, and the budget's worst case
    grows fast with an old joint state (0.5 s old at 1 rad/s: 2.9 s, 1.4 rad on); a start at
    the edge of a budget cut short may then need more (``budget_acceleration``). Unknown
    velocity counts as zero. The target is clipped to the joint limits."""
    p = np.asarray(start, dtype=float)
    v = np.zeros_like(p) if velocity is None else np.asarray(velocity, dtype=float)
    v = np.where(np.isfinite(v), v, 0.0)
    amax = np.asarray(max_acceleration, dtype=float)
    position_error, velocity_error = budget.start_error(v, amax)
    at_the_limit = stop_duration(v, amax, np.zeros_like(p), np.zeros_like(p), min_time)
    duration = min(
        stop_duration(v, amax, position_error, velocity_error, min_time),
        at_the_limit + max(0.0, max_extension),
    )
    target = np.clip(p + v * duration / 2.0, lower, upper)
    point = TrajectoryPoint(target, np.zeros_like(p), duration)
    return JointTrajectoryData(tuple(names), (point,))


def budget_acceleration(
    velocity: np.ndarray | None,
    max_acceleration: np.ndarray,
    budget: StopBudget,
    duration: float,
) -> np.ndarray:
    """Per joint, the largest acceleration [rad/s^2] a stop of ``duration`` planned with
    ``velocity`` needs from a controller start at the edge of ``budget`` (``|v|/T + 6 E/T^2 +
    4 W/T``): at most the limit unless ``max_extension`` cut the stop short."""
    amax = np.asarray(max_acceleration, dtype=float)
    v = np.zeros_like(amax) if velocity is None else np.asarray(velocity, dtype=float)
    v = np.where(np.isfinite(v), v, 0.0)
    position_error, velocity_error = budget.start_error(v, amax)
    t = max(float(duration), 1e-9)
    return np.abs(v) / t + 6.0 * position_error / t**2 + 4.0 * velocity_error / t


@dataclass(frozen=True)
class SentTrajectory:
    """A trajectory the controller took (stamped zero: it starts on receipt), and the arm's
    measured state then, which the controller interpolates from to the first point."""

    trajectory: JointTrajectoryData
    sent_at: float  # [s] bridge clock
    start_positions: np.ndarray
    start_velocities: np.ndarray | None

    @property
    def ends_at(self) -> float:
        return self.sent_at + self.trajectory.points[-1].time_from_start

    def reference(self, at: float) -> tuple[np.ndarray, np.ndarray]:
        """The controller's reference (positions, velocities) at ``at`` [bridge clock]."""
        elapsed = at - self.sent_at
        return sample(self.trajectory, self.start_positions, self.start_velocities, elapsed)


def reference_budget(start_delay: float, tracking_error: np.ndarray | float) -> StopBudget:
    """The error budget of a stop planned from the controller's reference (no recent joint
    state): no age, and the arm's tracking lag behind the reference instead of a velocity
    spread (the controller starts from the arm)."""
    return StopBudget(0.0, start_delay, tracking_error=tracking_error)


def stop_from_reference(
    sent: SentTrajectory | None,
    now: float,
    max_acceleration: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    min_time: float,
    start_delay: float = 0.0,
    tracking_error: np.ndarray | float = 0.0,
    max_extension: float = math.inf,
) -> tuple[JointTrajectoryData | None, np.ndarray | None, np.ndarray | None]:
    """The stop when no joint state is recent: ``stop_trajectory`` from where the controller's
    reference is when it takes the stop (sampled half ``start_delay`` on, the budget over the
    rest) on the trajectory ``sent`` last. The controller starts from the arm, which trails
    the reference by the ``tracking_error`` last measured (``tracking_error``): in the budget.
    Returns (stop, the reference's positions, velocities); (None, None, None) when nothing of
    ours is running (never sent, or ended: the controller holds its last point)."""
    if sent is None or not sent.trajectory.points or now >= sent.ends_at:
        return None, None, None
    budget = reference_budget(start_delay, tracking_error)
    positions, velocities = sent.reference(now + budget.planning_lead())
    stop = stop_trajectory(
        sent.trajectory.joint_names,
        positions,
        velocities,
        max_acceleration,
        lower,
        upper,
        min_time,
        budget,
        max_extension,
    )
    return stop, positions, velocities
