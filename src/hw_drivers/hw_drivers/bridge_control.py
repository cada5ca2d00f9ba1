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
  measured pose (``bridge_guard``, from idle).

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

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

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

# The shortest stop sent [s]: a point due within a few controller periods (or at once: the
# bridge's min_lead_time may be 0) is reached only with a jump.
MIN_STOP_TIME = 0.1


class BridgeControl:
    """The operator's latches over the bridge's forwarding."""

    def __init__(self) -> None:
        self.estopped = False
        self.hold_requested = False

    def estop(self) -> str:
        self.estopped = True
        return ESTOP_LATCHED

    def hold(self, on: bool) -> tuple[bool, str]:
        """(whether chunks are now forwarded as asked, what the bridge does now)."""
        self.hold_requested = bool(on)
        if on:
            return True, HOLDING
        if self.estopped:
            return False, HOLD_RELEASED_IN_ESTOP
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
        done = f"cleared {', '.join(cleared)}; " if cleared else ""
        return True, f"reset: {done}the next chunk ramps in from the measured pose"

    def refusal(self) -> str:
        """Why a chunk may not be forwarded now ("" when it may)."""
        if self.estopped:
            return REJECT_ESTOP
        if self.hold_requested:
            return REJECT_HOLD
        return ""

    def state(self, otherwise: str) -> str:
        """The ``~/chunk_execution`` state: ``estop``, ``holding``, else ``otherwise``."""
        if self.estopped:
            return "estop"
        if self.hold_requested:
            return "holding"
        return otherwise


def stop_trajectory(
    names: Sequence[str],
    measured: np.ndarray,
    velocity: np.ndarray | None,
    max_acceleration: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    min_time: float,
) -> JointTrajectoryData:
    """One point that stops the arm: from the measured pose ``p`` moving at ``v``, the point
    ``p + v T / 2`` with zero velocity at ``T`` = the longest ``|v| / max_acceleration`` (at
    least ``min_time`` and ``MIN_STOP_TIME``). The controller's cubic from (p, v) to it is then
    exactly a constant deceleration ``v / T``, never past the stop and back; unknown velocity
    counts as zero."""
    p = np.asarray(measured, dtype=float)
    v = np.zeros_like(p) if velocity is None else np.asarray(velocity, dtype=float)
    v = np.where(np.isfinite(v), v, 0.0)
    amax = np.asarray(max_acceleration, dtype=float)
    duration = max(MIN_STOP_TIME, float(min_time), float(np.max(np.abs(v) / amax, initial=0.0)))
    target = np.clip(p + v * duration / 2.0, lower, upper)
    point = TrajectoryPoint(target, np.zeros_like(p), duration)
    return JointTrajectoryData(tuple(names), (point,))


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


def stop_from_reference(
    sent: SentTrajectory | None,
    now: float,
    max_acceleration: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    min_time: float,
) -> tuple[JointTrajectoryData | None, np.ndarray | None, np.ndarray | None]:
    """The stop when no joint state is recent: ``stop_trajectory`` from where the controller's
    reference is at ``now`` on the trajectory ``sent`` last. Returns (stop, the reference's
    positions, velocities); (None, None, None) when nothing of ours is running (never sent, or
    ended: the controller holds its last point)."""
    if sent is None or not sent.trajectory.points or now >= sent.ends_at:
        return None, None, None
    positions, velocities = sample(
        sent.trajectory, sent.start_positions, sent.start_velocities, now - sent.sent_at
    )
    stop = stop_trajectory(
        sent.trajectory.joint_names, positions, velocities, max_acceleration, lower, upper, min_time
    )
    return stop, positions, velocities
