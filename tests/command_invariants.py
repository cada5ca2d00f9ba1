"""The driver's command invariants, checked from outside on a stream of (time, command) samples.

Written independently of ``hw_drivers.safety.CommandGuard`` (which enforces them) so the
tests check the rules, not the guard's own arithmetic. Used on executor ticks, on what the sim
backend was sent, and on ``~/commanded_joint_states`` of a running driver.

Per joint, for consecutive commands ``c[k-1] -> c[k]`` at times ``t[k-1] -> t[k]``:

* every value finite, and inside ``[lower, upper]``;
* ``|c[k] - c[k-1]| <= max_step_per_tick`` and ``<= max_velocity * dt``;
* speed grows by at most ``max_acceleration * dt``: with ``v = (c[k-1] - c[k-2]) / dt[k-1]``,
  ``|c[k] - c[k-1]| <= (s + max_acceleration * dt) * dt`` where ``s = |v|`` if the step goes
  the same way as ``v`` and 0 otherwise (slowing down and stopping are always allowed);
* ``dt <= 0`` (the first command, a clock step) leaves the command where it was.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Tolerance for float rounding; ``stamp_tolerance`` covers stamps rounded to nanoseconds.
#: ``nominal_tick`` (ROS subscribers only): a sample gap longer than 1.5 ticks is taken as
#: messages lost in between, and bounded per tick it may span.
ABS_TOL = 1e-9
REL_TOL = 1e-6


class CommandChecker:
    """Feed commands one by one with ``check``; it returns the violations of that command."""

    def __init__(
        self,
        lower: Sequence[float],
        upper: Sequence[float],
        max_velocity: Sequence[float],
        max_acceleration: Sequence[float],
        max_step_per_tick: float,
        *,
        stamp_tolerance: float = 0.0,
        nominal_tick: float = 0.0,
    ) -> None:
        self.lower = np.asarray(lower, dtype=float)
        self.upper = np.asarray(upper, dtype=float)
        self.vmax = np.asarray(max_velocity, dtype=float)
        self.amax = np.asarray(max_acceleration, dtype=float)
        self.max_step = float(max_step_per_tick)
        self.stamp_tolerance = stamp_tolerance
        # Samples seen over a lossy transport: a gap of several ticks may hold several steps.
        self.nominal_tick = nominal_tick
        self.gaps = 0
        self._previous: np.ndarray | None = None
        self._time: float | None = None
        self._velocity: np.ndarray | None = None
        self.count = 0
        self.worst_step = 0.0

    def restart(self) -> None:
        """A new command stream (the backend link came back up)."""
        self._previous = self._time = self._velocity = None

    def check(self, t: float, command: Sequence[float]) -> list[str]:
        command = np.asarray(command, dtype=float)
        problems: list[str] = []
        self.count += 1
        if command.shape != self.lower.shape:
            return [f"t={t:.6f}: command has shape {command.shape}"]
        if not np.all(np.isfinite(command)):
            return [f"t={t:.6f}: non-finite command {command.tolist()}"]
        slack = ABS_TOL + REL_TOL * np.maximum(np.abs(self.lower), np.abs(self.upper))
        outside = (command < self.lower - slack) | (command > self.upper + slack)
        if outside.any():
            problems.append(f"t={t:.6f}: outside the limits at joints {np.flatnonzero(outside)}")
        if self._previous is not None and self._time is not None:
            dt = t - self._time
            step = command - self._previous
            self.worst_step = max(self.worst_step, float(np.abs(step).max()))
            if dt <= self.stamp_tolerance:
                if np.any(np.abs(step) > ABS_TOL) and dt <= 0:
                    problems.append(f"t={t:.6f}: moved {np.abs(step).max():.3g} with dt={dt}")
            else:
                tol = ABS_TOL + REL_TOL * np.abs(step)
                dt_hi = dt + self.stamp_tolerance  # the most generous dt the stamps allow
                ticks = 1
                if self.nominal_tick > 0 and dt > 1.5 * self.nominal_tick:
                    ticks = int(np.ceil(dt / self.nominal_tick - 0.5))
                    self.gaps += 1
                    self._velocity = None  # the step in between is unknown
                bound = np.minimum(self.max_step * ticks, self.vmax * dt_hi)
                if self._velocity is not None:
                    same = np.sign(step) == np.sign(self._velocity)
                    speed = np.where(same, np.abs(self._velocity), 0.0)
                    bound = np.minimum(bound, (speed + self.amax * dt_hi) * dt_hi)
                over = np.abs(step) > bound + tol
                if over.any():
                    j = int(np.flatnonzero(over)[0])
                    problems.append(
                        f"t={t:.6f}: joint {j} stepped {step[j]:.6g} in {dt:.6g} s "
                        f"(allowed {bound[j]:.6g})"
                    )
                self._velocity = step / dt if ticks == 1 else None
            if dt <= 0:
                self._velocity = np.zeros_like(command)
        self._previous = command.copy()
        self._time = t
        return problems
