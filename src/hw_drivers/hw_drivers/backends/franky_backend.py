"""Franka FR3/Panda through franky (libfranka's 1 kHz loop runs inside franky).

Each command becomes an asynchronous ``JointMotion`` that replaces the running one, so franky's
Ruckig planner keeps the motion smooth and within the robot's limits between our ticks; the
gripper column (DROID: normalised closure 0 open..1 closed) becomes a ``Gripper.move_async`` to
the matching finger width, sent only when the target changes noticeably (a gripper move takes
hundreds of milliseconds and cannot be re-targeted every tick).

``franky`` (pip ``franky-control``) is imported on ``connect()``; without it the backend says
how to install it. It needs a real-time kernel and the robot's FCI reachable at ``robot_ip``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from hw_drivers.backends.base import Backend, BackendError, JointReading

INSTALL_HINT = (
    "franky-control is not installed: pip install franky-control (needs libfranka matching the "
    "robot's firmware and a real-time kernel; see https://github.com/TimSchneider42/franky)"
)
GRIPPER_SPEED = 0.1  # finger speed [m/s]
GRIPPER_DEADBAND = 0.02  # ignore gripper target changes smaller than this (normalised)


class FrankyBackend(Backend):
    """Joint position control of one Franka arm (+ optional gripper as the last joint)."""

    def __init__(
        self,
        joint_names: Sequence[str],
        robot_ip: str,
        relative_dynamics_factor: float = 0.2,
        gripper_joint: str | None = None,
    ) -> None:
        super().__init__(joint_names)
        if not robot_ip:
            raise BackendError("franky backend needs robot_ip (the robot's FCI address)")
        self.robot_ip = robot_ip
        self.relative_dynamics_factor = float(relative_dynamics_factor)
        if gripper_joint is None:
            gripper_joint = next((n for n in self.joint_names if n.endswith("gripper")), None)
        self.gripper_index = self.joint_names.index(gripper_joint) if gripper_joint else None
        self.arm_index = [j for j in range(self.num_joints) if j != self.gripper_index]
        self._franky: Any = None
        self._robot: Any = None
        self._gripper: Any = None
        self._max_width = 0.08
        self._last_gripper_target: float | None = None

    @classmethod
    def from_params(cls, params: Any) -> FrankyBackend:
        return cls(params.joint_names, params.robot_ip)

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
        except Exception as exc:  # franky raises its own exception types from C++
            self._robot = self._gripper = None
            raise BackendError(f"cannot connect to Franka at {self.robot_ip}: {exc}") from exc

    def disconnect(self) -> None:
        self._robot = None
        self._gripper = None

    def enable(self) -> None:
        self._require_connected()
        try:
            self._robot.recover_from_errors()
        except Exception as exc:
            raise BackendError(f"Franka did not recover from errors: {exc}") from exc

    def disable(self) -> None:
        # The brakes are the robot's own business; stopping the motion is what we can do.
        if self._robot is None:
            return
        try:
            self._robot.stop()
        except Exception:
            pass

    def read_state(self) -> JointReading:
        self._require_connected()
        try:
            state = self._robot.state
            q, dq, tau = np.array(state.q), np.array(state.dq), np.array(state.tau_J)
            width = float(self._gripper.width) if self._gripper is not None else None
        except Exception as exc:
            raise BackendError(f"Franka state read failed: {exc}") from exc
        positions = np.zeros(self.num_joints)
        velocities = np.zeros(self.num_joints)
        efforts = np.zeros(self.num_joints)
        positions[self.arm_index], velocities[self.arm_index] = q, dq
        efforts[self.arm_index] = tau
        if self.gripper_index is not None and width is not None:
            positions[self.gripper_index] = 1.0 - width / self._max_width  # closure
        return JointReading(positions, velocities, efforts, time.monotonic())

    def write_command(self, positions: np.ndarray, velocities: np.ndarray | None = None) -> None:
        self._require_connected()
        positions = np.asarray(positions, dtype=float)
        if positions.shape != (self.num_joints,) or not np.all(np.isfinite(positions)):
            raise BackendError(f"franky backend: command must be {self.num_joints} finite values")
        franky = self._franky
        try:
            motion = franky.JointMotion(positions[self.arm_index].tolist())
            self._robot.move(motion, asynchronous=True)
            if self.gripper_index is not None:
                target = float(np.clip(positions[self.gripper_index], 0.0, 1.0))
                last = self._last_gripper_target
                if last is None or abs(target - last) > GRIPPER_DEADBAND:
                    self._gripper.move_async((1.0 - target) * self._max_width, GRIPPER_SPEED)
                    self._last_gripper_target = target
        except Exception as exc:
            raise BackendError(f"Franka motion command failed: {exc}") from exc
        self._log_command(time.monotonic(), positions)

    def _require_connected(self) -> None:
        if self._robot is None:
            raise BackendError("franky backend is not connected")
