"""Franka FR3/Panda through franky (libfranka's 1 kHz loop runs inside franky).

The arm follows the executor as a joint *waypoint* motion, started asynchronously
(``Robot.move(..., asynchronous=True)``) and re-targeted at most ``motion_rate`` times a second:
its first waypoint is the executor's command *with the executor's velocity*
(``JointWaypoint(JointState(position, velocity))``), its second the point one motion period
further on at rest (clipped to the joint limits). Franky's Ruckig planner thus passes through
each command at the commanded velocity instead of braking to a stop at every update, keeps the
motion within the robot's limits between our updates, and, should the updates stop, brings
the arm to rest just past the last command. An error of the running motion (a reflex, a limit
violation) is raised by franky on the next ``move``; it becomes a ``BackendError`` and the
driver holds.

The gripper (DROID: normalised closure 0 open..1 closed as the last joint) is read and driven
off the control path: a background thread polls ``Gripper.width`` (a blocking round trip to
the gripper server) and the control tick only reads the cached value; a new target goes out
with ``Gripper.move_async`` only when it changed noticeably and the previous move finished.
``disable`` stops both and reports every error instead of swallowing it.

``franky`` (pip ``franky-control``) is imported on ``connect()``; without it the backend says
how to install it. It needs a real-time kernel and the robot's FCI reachable at ``robot_ip``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from hw_drivers import health as hl
from hw_drivers.backends.base import Backend, BackendError, JointReading

INSTALL_HINT = (
    "franky-control is not installed: pip install franky-control (needs libfranka matching the "
    "robot's firmware and a real-time kernel; see https://github.com/TimSchneider42/franky)"
)
GRIPPER_SPEED = 0.1  # finger speed [m/s]
GRIPPER_DEADBAND = 0.02  # ignore gripper target changes smaller than this (normalised)
GRIPPER_POLL_PERIOD = 0.05  # [s] between gripper width reads in the background
GRIPPER_STALE_AFTER = 1.0  # [s] a width older than this is reported as stale


class FrankyBackend(Backend):
    """Joint position control of one Franka arm (+ optional gripper as the last joint)."""

    def __init__(
        self,
        joint_names: Sequence[str],
        robot_ip: str,
        relative_dynamics_factor: float = 0.2,
        gripper_joint: str | None = None,
        motion_rate: float = 50.0,
        lower: Sequence[float] | None = None,
        upper: Sequence[float] | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        super().__init__(joint_names)
        if not robot_ip:
            raise BackendError("franky backend needs robot_ip (the robot's FCI address)")
        if motion_rate <= 0:
            raise BackendError("franky backend: motion_rate must be > 0")
        self.robot_ip = robot_ip
        self.relative_dynamics_factor = float(relative_dynamics_factor)
        if gripper_joint is None:
            gripper_joint = next((n for n in self.joint_names if n.endswith("gripper")), None)
        self.gripper_index = self.joint_names.index(gripper_joint) if gripper_joint else None
        self.arm_index = [j for j in range(self.num_joints) if j != self.gripper_index]
        self.motion_period = 1.0 / float(motion_rate)
        n = len(self.arm_index)
        self._lower = np.full(n, -np.inf) if lower is None else np.asarray(lower)[self.arm_index]
        self._upper = np.full(n, np.inf) if upper is None else np.asarray(upper)[self.arm_index]
        self._clock = clock
        self._franky: Any = None
        self._robot: Any = None
        self._gripper: Any = None
        self._max_width = 0.08
        self._last_motion_at = float("-inf")
        self.motions_sent = 0
        # Gripper state shared with the polling thread.
        self._gripper_lock = threading.Lock()
        self._gripper_width: float | None = None
        self._gripper_width_at: float | None = None
        self._gripper_error = ""
        self._gripper_future: Any = None
        self._gripper_target: float | None = None
        self._gripper_sent: float | None = None
        self._poll_stop = threading.Event()
        self._poll_thread: threading.Thread | None = None

    @classmethod
    def from_params(cls, params: Any) -> FrankyBackend:
        rates = [
            float(r)
            for r in (getattr(params, "franky_motion_rate", 0), getattr(params, "control_rate", 0))
            if r
        ]
        return cls(
            params.joint_names,
            params.robot_ip,
            motion_rate=min(rates, default=50.0),
            lower=getattr(params, "position_lower", None) or None,
            upper=getattr(params, "position_upper", None) or None,
        )

    @property
    def is_connected(self) -> bool:
        return self._robot is not None

    def connect(self) -> None:
        if self._robot is not None:
            return
        try:
            import franky
        except ImportError as exc:
            raise BackendError(INSTALL_HINT) from exc
        self._franky = franky
        try:
            self._robot = franky.Robot(self.robot_ip)
            self._robot.relative_dynamics_factor = self.relative_dynamics_factor
            if self.gripper_index is not None:
                self._gripper = franky.Gripper(self.robot_ip)
                self._max_width = float(self._gripper.max_width)
                self._gripper_width = float(self._gripper.width)
                self._gripper_width_at = self._clock()
        except Exception as exc:  # franky raises its own exception types from C++
            self._robot = self._gripper = None
            raise BackendError(f"cannot connect to Franka at {self.robot_ip}: {exc}") from exc
        if self._gripper is not None:
            self._poll_stop.clear()
            self._poll_thread = threading.Thread(
                target=self._poll_gripper, name="franky-gripper", daemon=True
            )
            self._poll_thread.start()

    def disconnect(self) -> None:
        self._poll_stop.set()
        if self._poll_thread is not None:
            self._poll_thread.join(timeout=2.0)
        self._poll_thread = None
        self._robot = None
        self._gripper = None

    def enable(self) -> None:
        self._require_connected()
        try:
            self._robot.recover_from_errors()
        except Exception as exc:
            raise BackendError(f"Franka did not recover from errors: {exc}") from exc
        self._last_motion_at = float("-inf")

    def disable(self) -> None:
        """Stop the arm's motion and the gripper; the brakes are the robot's own business.
        Every failure is collected and raised as one ``BackendError``."""
        problems = []
        if self._robot is not None:
            try:
                self._robot.stop()
            except Exception as exc:
                problems.append(f"arm stop failed: {type(exc).__name__}: {exc}")
        if self._gripper is not None:
            try:
                self._gripper.stop()
            except Exception as exc:
                problems.append(f"gripper stop failed: {type(exc).__name__}: {exc}")
        if problems:
            raise BackendError("Franka disable: " + "; ".join(problems))

    def read_state(self) -> JointReading:
        self._require_connected()
        try:
            joint_state = self._robot.current_joint_state
            q, dq = np.array(joint_state.position), np.array(joint_state.velocity)
            tau = np.array(self._robot.state.tau_J)
        except Exception as exc:
            raise BackendError(f"Franka state read failed: {exc}") from exc
        positions = np.zeros(self.num_joints)
        velocities = np.zeros(self.num_joints)
        efforts = np.zeros(self.num_joints)
        positions[self.arm_index], velocities[self.arm_index] = q, dq
        efforts[self.arm_index] = tau
        if self.gripper_index is not None:
            with self._gripper_lock:
                width = self._gripper_width
            if width is not None:
                positions[self.gripper_index] = 1.0 - width / self._max_width  # closure
        return JointReading(positions, velocities, efforts, self._clock())

    def write_command(self, positions: np.ndarray, velocities: np.ndarray | None = None) -> None:
        self._require_connected()
        positions = np.asarray(positions, dtype=float)
        if positions.shape != (self.num_joints,) or not np.all(np.isfinite(positions)):
            raise BackendError(f"franky backend: command must be {self.num_joints} finite values")
        velocities = (
            np.zeros(self.num_joints)
            if velocities is None
            else np.nan_to_num(np.asarray(velocities, dtype=float))
        )
        now = self._clock()
        if now - self._last_motion_at >= self.motion_period - 1e-9:
            franky = self._franky
            q, v = positions[self.arm_index], velocities[self.arm_index]
            rest = np.clip(q + v * self.motion_period, self._lower, self._upper)
            motion = franky.JointWaypointMotion(
                [
                    franky.JointWaypoint(
                        franky.JointState(position=q.tolist(), velocity=v.tolist())
                    ),
                    franky.JointWaypoint(rest.tolist()),
                ]
            )
            try:
                self._robot.move(motion, asynchronous=True)
            except Exception as exc:
                # Includes the error the previous asynchronous motion stopped with.
                raise BackendError(f"Franka motion failed: {type(exc).__name__}: {exc}") from exc
            self._last_motion_at = now
            self.motions_sent += 1
        if self.gripper_index is not None:
            with self._gripper_lock:
                self._gripper_target = float(np.clip(positions[self.gripper_index], 0.0, 1.0))
        self._log_command(now, positions)

    def health(self) -> list[hl.HealthEntry]:
        if self._gripper is None:
            return []
        with self._gripper_lock:
            width, at, error = self._gripper_width, self._gripper_width_at, self._gripper_error
        age = None if at is None else self._clock() - at
        if error:
            level, message = hl.ERROR, error
        elif age is None or age > GRIPPER_STALE_AFTER:
            level, message = hl.WARN, "gripper width is stale"
        else:
            level, message = hl.OK, "ok"
        return [
            hl.HealthEntry(
                name="franka gripper",
                level=level,
                message=message,
                hardware_id=self.robot_ip,
                values={
                    "width_m": "" if width is None else f"{width:.4f}",
                    "width_age_s": "" if age is None else f"{age:.3f}",
                },
            )
        ]

    # -- gripper, off the control path ------------------------------------------------------
    def _poll_gripper(self) -> None:
        while not self._poll_stop.is_set():
            self.service_gripper()
            self._poll_stop.wait(GRIPPER_POLL_PERIOD)

    def service_gripper(self) -> None:
        """One round of the gripper thread: read the width, send a pending target when the
        previous move has finished (public so tests can run it without the thread)."""
        gripper = self._gripper
        if gripper is None:
            return
        try:
            width = float(gripper.width)
        except Exception as exc:
            with self._gripper_lock:
                self._gripper_error = f"gripper read failed: {type(exc).__name__}: {exc}"
            return
        with self._gripper_lock:
            self._gripper_width, self._gripper_width_at = width, self._clock()
            self._gripper_error = ""
            target, sent, future = self._gripper_target, self._gripper_sent, self._gripper_future
        if target is None or (sent is not None and abs(target - sent) <= GRIPPER_DEADBAND):
            return
        if future is not None and not future.wait(0):
            return  # the previous move is still running; send the newest target after it
        try:
            future = gripper.move_async((1.0 - target) * self._max_width, GRIPPER_SPEED)
        except Exception as exc:
            with self._gripper_lock:
                self._gripper_error = f"gripper move failed: {type(exc).__name__}: {exc}"
            return
        with self._gripper_lock:
            self._gripper_future, self._gripper_sent = future, target

    def _require_connected(self) -> None:
        if self._robot is None:
            raise BackendError("franky backend is not connected")
