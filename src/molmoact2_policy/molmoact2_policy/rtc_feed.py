"""What the policy node feeds real-time chunking: the chunk being executed, aligned (no ROS).

For an observation captured at ``t_obs`` the new chunk's row ``i`` applies at
``t_obs + start_offset + i * step_dt``. ``RtcFeed.request_for`` gives the policy:

- ``previous``: the chunk published last, sampled at those times (linear in time, as the
  driver's trajectory passes through its knots) up to its last row. Times are taken relative
  to that chunk's stamp in integer nanoseconds: absolute stamps as float seconds are only good
  to 0.24 us (one ulp at 1.7e9 s), which moved an interpolated row by ~1e-5 of a step. When the
  new rows fall on the old chunk's time grid (within a nanosecond, the stamps' resolution) its
  rows are copied, bit for bit;
- ``delay_steps``: rows of the new chunk already in the past when it reaches the driver,
  ``ceil((latency - start_offset) / step_dt)`` with the latency estimated as the largest of
  the recent capture-to-publish latencies (an overestimate only freezes rows the robot runs
  from the previous chunk anyway; an underestimate would let unguided rows run);
- the guidance region runs over all remaining rows of the previous chunk (the paper's
  ``H - s``, ``s`` being the steps executed since that chunk began).

The driver's commanded joint states (``~/commanded_joint_states``) say whether the previous
chunk is really what runs. A driver that is not running the chunks (hold requested, e-stop,
fault, watchdog, every chunk rejected) commands one unchanging pose; RTC is skipped for a request
when the driver's command has stood still for ``still_time`` although a chunk had been published
``still_time`` before, and lies more than ``max_deviation`` off the last chunk, rather than
steering the model towards a plan the robot is not following. Distance alone says nothing: the
executor deliberately commands off the plan while it ramps in from wherever the arm was (by
any amount, for ``ramp_in_time``, 1 s by default) and while it blends a splice, and it moves
along the plan towards it all the while; the new chunk continuing that plan is exactly what the
executor converges to. (Judged by distance, every ramp-in turned RTC off for its second: 3 of
24 requests in ``bench/rtc.py`` at 200 ms, and the free chunks they produced were its largest
boundary jumps.) A driver clamping its speed is still running the chunk, so it is not a reason
to skip either.
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


# New rows within this of the previous chunk's time grid are on it (stamps are whole ns).
GRID_TOLERANCE_NS = 1


@dataclass(frozen=True)
class _Published:
    stamp_ns: int
    start_offset: float
    positions: np.ndarray  # (rows, joints)

    @property
    def rows(self) -> int:
        return int(self.positions.shape[0])

    def row_of(self, stamp_ns: int, start_offset: float, step_dt: float) -> float:
        """The (fractional) row of this chunk that applies at ``stamp_ns + start_offset``.

        From the integer difference of the stamps, so the result has the precision of the
        offset (~1e-16 of a step), not of the absolute time (~1e-5 of a step as float seconds).
        """
        offset = (stamp_ns - self.stamp_ns) / NS_PER_S + (start_offset - self.start_offset)
        return offset / step_dt

    def rows_from(self, row: float, count: int, step_dt: float) -> np.ndarray:
        """``count`` rows at ``row, row + 1, ...`` (each <= the last row): linear in time, and
        this chunk's own rows, exactly, when ``row`` is on its grid."""
        nearest = round(row)
        if abs(row - nearest) * step_dt * NS_PER_S <= GRID_TOLERANCE_NS and nearest >= 0:
            return self.positions[nearest : nearest + count].copy()
        wanted = row + np.arange(count)
        grid = np.arange(self.rows)
        return np.stack(
            [np.interp(wanted, grid, self.positions[:, j]) for j in range(self.positions.shape[1])],
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
        still_time: float = 0.1,
    ) -> None:
        if step_dt <= 0 or horizon <= 0:
            raise ValueError("step_dt and horizon must be > 0")
        if still_time <= 0:
            raise ValueError("still_time must be > 0")
        self.joint_names = tuple(joint_names)
        self._index = {name: i for i, name in enumerate(self.joint_names)}
        self.step_dt = float(step_dt)
        self.horizon = int(horizon)
        self.max_deviation = float(max_deviation)
        self.max_command_age = float(max_command_age)
        self.still_time = float(still_time)
        self._latencies: deque[float] = deque(maxlen=latency_window)
        self._chunk: _Published | None = None
        self._first_published_ns: int | None = None  # since the last clear
        # The driver's latest command and since when it has not moved.
        self._command: tuple[int, np.ndarray] | None = None
        self._still_since_ns: int | None = None
        self._lock = threading.Lock()
        self.requests = 0
        self.skipped: dict[str, int] = {}
        self.last_delay_steps = -1

    def clear(self) -> None:
        """Forget the previous chunk (reset, new instruction): the next chunk is sampled free."""
        with self._lock:
            self._chunk = None
            self._first_published_ns = None
            self._command = None
            self._still_since_ns = None

    def record_chunk(
        self, stamp_ns: int, start_offset: float, positions: np.ndarray, latency: float
    ) -> None:
        positions = np.asarray(positions, dtype=np.float64)
        published_ns = int(stamp_ns)
        if math.isfinite(latency) and latency >= 0:
            published_ns += round(latency * NS_PER_S)
        with self._lock:
            self._chunk = _Published(int(stamp_ns), float(start_offset), positions.copy())
            if self._first_published_ns is None:
                self._first_published_ns = published_ns
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
        stamp_ns = int(stamp_ns)
        with self._lock:
            last = self._command
            # A held command repeats exactly; a moving one never does (NaN joints never move).
            still = (
                last is not None
                and stamp_ns >= last[0]
                and np.array_equal(last[1], command, equal_nan=True)
            )
            if not still or self._still_since_ns is None:
                self._still_since_ns = stamp_ns
            self._command = (stamp_ns, command)

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

    def _driver_ignores(
        self, chunk: _Published, command: tuple[int, np.ndarray] | None,
        still_since_ns: int | None, first_published_ns: int | None, obs_stamp_ns: int,
    ) -> bool:
        """The driver's command has stood still, off the chunk, while it had chunks to run."""
        if command is None or still_since_ns is None or first_published_ns is None:
            return False
        command_ns, positions = command
        if abs(command_ns - obs_stamp_ns) > self.max_command_age * NS_PER_S:
            return False  # stale: says nothing about now
        still_ns = round(self.still_time * NS_PER_S)
        # Still for still_time, and over a span in which the driver had a chunk to run: a
        # driver ramping in starts moving within a tick of receiving its first chunk.
        if command_ns - still_since_ns < still_ns:
            return False
        if max(still_since_ns, first_published_ns) + still_ns > command_ns:
            return False
        row = chunk.row_of(command_ns, chunk.start_offset, self.step_dt)
        row = min(max(row, 0.0), chunk.rows - 1.0)  # held before or after it: its ends
        planned = chunk.rows_from(row, 1, self.step_dt)[0]
        known = np.isfinite(positions)
        deviation = np.abs(positions[known] - planned[known])
        return bool(deviation.size) and float(deviation.max()) > self.max_deviation

    def request_for(self, obs_stamp_ns: int) -> RtcRequest | None:
        """The RTC request for an observation, or None to sample the chunk free."""
        with self._lock:
            chunk, command = self._chunk, self._command
            still_since_ns, first_published_ns = self._still_since_ns, self._first_published_ns
        if chunk is None:
            self._skip("no_previous_chunk")
            return None
        if obs_stamp_ns <= chunk.stamp_ns:
            self._skip("observation_not_newer")
            return None
        dt = self.step_dt
        # The new chunk has the same start offset: its row 0 is at this row of the old one.
        start = chunk.row_of(obs_stamp_ns, chunk.start_offset, dt)
        # Stamps are whole nanoseconds: allow that much rounding when counting rows.
        rows = min(self.horizon, math.floor(chunk.rows - 1 - start + 1e-6) + 1)
        if rows <= 0:
            self._skip("previous_chunk_over")
            return None
        if self._driver_ignores(chunk, command, still_since_ns, first_published_ns, obs_stamp_ns):
            self._skip("driver_not_following")
            return None
        previous = chunk.rows_from(start, rows, dt)
        delay = min(self.delay_steps(chunk.start_offset), rows)
        with self._lock:
            self.requests += 1
            self.last_delay_steps = delay
        return RtcRequest(previous=previous, delay_steps=delay)
