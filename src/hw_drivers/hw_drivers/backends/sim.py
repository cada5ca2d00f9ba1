"""Simulated arm: joints follow their commands with first-order dynamics (no hardware).

Deterministic for a given seed and clock: the state advances in fixed steps of ``1 / rate``
by the time elapsed on an injectable clock between calls, so tests and benchmarks can drive it
with simulated time and get the same result every run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from hw_drivers.backends.base import Backend, BackendError, JointReading

if TYPE_CHECKING:
    from hw_drivers.driver_params import DriverParams


class SimBackend(Backend):
    """Each joint moves toward its target as ``x' = (target - x) / time_constant``."""

    def __init__(
        self,
        joint_names: Sequence[str],
        initial_positions: np.ndarray,
        lower: np.ndarray,
        upper: np.ndarray,
        *,
        time_constant: float = 0.05,
        noise_std: float = 0.0,
        seed: int = 0,
        rate: float = 1000.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(joint_names)
        if time_constant <= 0 or rate <= 0:
            raise ValueError("sim: time_constant and rate must be > 0")
        self._initial = np.array(initial_positions, dtype=float)
        self._lower = np.array(lower, dtype=float)
        self._upper = np.array(upper, dtype=float)
        for name, arr in (("initial_positions", self._initial), ("lower", self._lower)):
            if arr.shape != (self.num_joints,):
                raise ValueError(f"sim: {name} has {arr.size} values for {self.num_joints} joints")
        self.time_constant = float(time_constant)
        self.noise_std = float(noise_std)
        self.step = 1.0 / float(rate)
        self._clock = clock
        self._rng = np.random.default_rng(seed)
        self._alpha = 1.0 - math.exp(-self.step / self.time_constant)
        self._connected = False
        self._enabled = False
        self._positions = np.clip(self._initial, self._lower, self._upper)
        self._velocities = np.zeros(self.num_joints)
        self._target = self._positions.copy()
        self._sim_time: float | None = None
        self._faults_pending = 0
        self.writes = 0

    @classmethod
    def from_params(cls, params: DriverParams) -> SimBackend:
        return cls(
            params.joint_names,
            params.initial_pose(),
            np.array(params.position_lower, dtype=float),
            np.array(params.position_upper, dtype=float),
            time_constant=params.sim_time_constant,
            noise_std=params.sim_noise_std,
            seed=params.seed,
            rate=max(params.control_rate, 1000.0),
        )

    # -- fault injection for tests of the driver's fault handling --
    def inject_faults(self, count: int) -> None:
        """Make the next ``count`` reads/writes raise ``BackendError``."""
        self._faults_pending = count

    def _maybe_fault(self, what: str) -> None:
        if self._faults_pending > 0:
            self._faults_pending -= 1
            raise BackendError(f"sim: injected fault on {what}")

    # -- Backend --
    @property
    def is_connected(self) -> bool:
        return self._connected

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def connect(self) -> None:
        self._connected = True
        self._sim_time = self._clock()

    def disconnect(self) -> None:
        self._connected = False
        self._enabled = False

    def enable(self) -> None:
        self._require_connected()
        self._advance()
        # Torque on holds the present pose; it never jumps to an old target.
        self._target = self._positions.copy()
        self._enabled = True

    def disable(self) -> None:
        if self._connected:
            self._advance()
        self._enabled = False

    def read_state(self) -> JointReading:
        self._require_connected()
        self._maybe_fault("read")
        stamp = self._advance()
        noise = (
            self._rng.normal(0.0, self.noise_std, self.num_joints)
            if self.noise_std > 0
            else np.zeros(self.num_joints)
        )
        return JointReading(
            positions=self._positions + noise,
            velocities=self._velocities.copy(),
            efforts=np.zeros(self.num_joints),
            stamp=stamp,
        )

    def write_command(self, positions: np.ndarray, velocities: np.ndarray | None = None) -> None:
        self._require_connected()
        self._maybe_fault("write")
        positions = np.asarray(positions, dtype=float)
        if positions.shape != (self.num_joints,):
            raise BackendError(
                f"sim: command has {positions.size} values for {self.num_joints} joints"
            )
        sim_time = self._advance()
        if self._enabled:
            self._target = np.clip(positions, self._lower, self._upper)
        self.writes += 1
        self._log_command(sim_time, positions)

    # -- internals --
    def _require_connected(self) -> None:
        if not self._connected:
            raise BackendError("sim: not connected")

    def _advance(self) -> float:
        """Advance the sim to the clock; returns the sim time it reached."""
        now = self._clock()
        if self._sim_time is None:
            self._sim_time = now
            return now
        steps = int((now - self._sim_time) / self.step + 1e-9)
        if steps <= 0:
            return self._sim_time
        if not self._enabled:
            # Torque off: the sim arm stays where it is (no gravity model).
            self._velocities[:] = 0.0
            self._sim_time += steps * self.step
            return self._sim_time
        # Exact solution of the linear ODE over `steps` fixed steps with a constant target.
        decay = (1.0 - self._alpha) ** steps
        error = self._target - self._positions
        self._positions = np.clip(self._target - error * decay, self._lower, self._upper)
        self._velocities = (self._target - self._positions) / self.time_constant
        self._sim_time += steps * self.step
        return self._sim_time
