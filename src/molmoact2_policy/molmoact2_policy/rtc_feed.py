"""What the policy node feeds real-time chunking: the chunk being executed, aligned (no ROS).

For an observation captured at ``t_obs`` the new chunk's row ``i`` applies at
``t_obs + start_offset + i * step_dt``. ``RtcFeed.request_for`` gives the policy:

- ``previous``: the chunk published last, sampled at those times (linear in time, as the
  driver's trajectory passes through its knots) up to its last row;
- ``delay_steps``: rows of the new chunk already in the past when it reaches the driver,
  ``ceil((latency - start_offset) / step_dt)`` with the latency estimated as the largest of
  the recent capture-to-publish latencies (an overestimate only freezes rows the robot runs
  from the previous chunk anyway; an underestimate would let unguided rows run);
- the guidance region runs over all remaining rows of the previous chunk (the paper's
  ``H - s``, ``s`` being the steps executed since that chunk began).

The driver's commanded joint states (``~/commanded_joint_states``) say whether the previous
chunk is really what runs: when the latest command (at the driver's executed step) is further
than ``max_deviation`` outside the span between the previous chunk and the one before it at that
time (right after a splice the driver blends from the older plan into the newer), the driver is
holding, stopped, clamping or rejected the chunk, and RTC is skipped for that request rather than
steering the model towards a plan the robot is not following.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from molmoact2_policy.policy_api import RtcRequest

NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class _Published:
    stamp_ns: int
    start_offset: float
    positions: np.ndarray  # (rows, joints)

    def times(self, step_dt: float) -> np.ndarray:
        return self.stamp_ns / NS_PER_S + self.start_offset + step_dt * np.arange(
            self.positions.shape[0]
        )

    def at(self, times: np.ndarray, step_dt: float) -> np.ndarray:
        knots = self.times(step_dt)
        return np.stack(
            [np.interp(times, knots, self.positions[:, j]) for j in range(self.positions.shape[1])],
            axis=-1,
        )


class RtcFeed:
    """Remembers the last published chunk, recent latencies and the driver's command."""

    def __init__(
        self,
        joint_names: Sequence[str],
        step_dt: float,
        horizon: int,
        *,
        latency_window: int = 10,
        max_deviation: float = 0.2,
        max_command_age: float = 0.5,
    ) -> None:
        if step_dt <= 0 or horizon <= 0:
            raise ValueError("step_dt and horizon must be > 0")
        self.joint_names = tuple(joint_names)
        self._index = {name: i for i, name in enumerate(self.joint_names)}
        self.step_dt = float(step_dt)
        self.horizon = int(horizon)
        self.max_deviation = float(max_deviation)
        self.max_command_age = float(max_command_age)
        self._latencies: deque[float] = deque(maxlen=latency_window)
        self._chunk: _Published | None = None
        self._older: _Published | None = None  # the chunk the driver may still blend out of
        self._command: tuple[int, np.ndarray] | None = None
        self._lock = threading.Lock()
        self.requests = 0
        self.skipped: dict[str, int] = {}
        self.last_delay_steps = -1

    def clear(self) -> None:
        """Forget the previous chunk (reset, new instruction): the next chunk is sampled free."""
        with self._lock:
            self._chunk = None
            self._older = None
            self._command = None

    def record_chunk(
        self, stamp_ns: int, start_offset: float, positions: np.ndarray, latency: float
    ) -> None:
        positions = np.asarray(positions, dtype=np.float64)
        with self._lock:
            self._older = self._chunk
            self._chunk = _Published(int(stamp_ns), float(start_offset), positions.copy())
            if math.isfinite(latency) and latency >= 0:
                self._latencies.append(float(latency))

    def record_commanded(
        self, stamp_ns: int, names: Sequence[str], positions: Sequence[float]
    ) -> None:
        """The driver's latest command; joints it does not name keep NaN (never compared)."""
        command = np.full(len(self.joint_names), np.nan)
        for name, value in zip(names, positions, strict=False):
            index = self._index.get(name)
            if index is not None:
                command[index] = float(value)
        with self._lock:
            self._command = (int(stamp_ns), command)

    def delay_steps(self, start_offset: float = 0.0) -> int:
        with self._lock:
            latency = max(self._latencies, default=0.0)
        return max(0, math.ceil((latency - start_offset) / self.step_dt - 1e-9))

    def diagnostics(self) -> dict[str, str]:
        """Key/values for the node's /diagnostics entry."""
        with self._lock:
            values = {
                "rtc_requests": str(self.requests),
                "rtc_delay_steps": str(self.last_delay_steps),
            }
            values.update({f"rtc_skipped/{k}": str(v) for k, v in sorted(self.skipped.items())})
        return values

    def _skip(self, reason: str) -> None:
        with self._lock:
            self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def request_for(self, obs_stamp_ns: int) -> RtcRequest | None:
        """The RTC request for an observation, or None to sample the chunk free."""
        with self._lock:
            chunk, older, command = self._chunk, self._older, self._command
        if chunk is None:
            self._skip("no_previous_chunk")
            return None
        if obs_stamp_ns <= chunk.stamp_ns:
            self._skip("observation_not_newer")
            return None
        dt = self.step_dt
        knots = chunk.times(dt)
        start = obs_stamp_ns / NS_PER_S + chunk.start_offset
        # Stamps are whole nanoseconds: allow that much rounding when counting rows.
        rows = min(self.horizon, math.floor((knots[-1] - start) / dt + 1e-6) + 1)
        if rows <= 0:
            self._skip("previous_chunk_over")
            return None
        if command is not None:
            command_time = command[0] / NS_PER_S
            fresh = abs(command_time - obs_stamp_ns / NS_PER_S) <= self.max_command_age
            if fresh and knots[0] <= command_time <= knots[-1]:
                planned = chunk.at(np.array([command_time]), dt)[0]
                low = high = planned
                if older is not None and older.times(dt)[-1] >= command_time:
                    before = older.at(np.array([command_time]), dt)[0]
                    low, high = np.minimum(planned, before), np.maximum(planned, before)
                known = np.isfinite(command[1])
                outside = np.maximum(low - command[1], command[1] - high)
                deviation = np.maximum(outside[known], 0.0)
                if deviation.size and float(deviation.max()) > self.max_deviation:
                    self._skip("driver_not_following")
                    return None
        previous = chunk.at(start + dt * np.arange(rows), dt)
        delay = min(self.delay_steps(chunk.start_offset), rows)
        with self._lock:
            self.requests += 1
            self.last_delay_steps = delay
        return RtcRequest(previous=previous, delay_steps=delay)
