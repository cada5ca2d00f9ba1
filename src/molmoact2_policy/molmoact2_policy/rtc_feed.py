"""What the policy node feeds real-time chunking: the chunk being executed, aligned (no ROS).

For an observation captured at ``t_obs`` the new chunk's row ``i`` applies at
``t_obs + start_offset + i * step_dt``. ``RtcFeed.request_for`` gives the policy:

- ``previous``: the chunk the driver follows (see below; the chunk published last with a
  driver that does not say), sampled at those times (linear in time, as the
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

Which chunk is "the previous one". A driver of this suite reports the chunk it follows on
``~/chunk_execution`` (``molmoact2_common.chunk_execution``): the one running, the accepted one
waiting for its first action, and its verdict on the newest chunk it received. A driver may
reject a chunk (start deviation, limits, stale, ...) and go on running an older one; the chunk
published last is then not what the robot does, and conditioning on it steers the model to
continue a plan the robot is not following (the next chunk's boundary jumps). So once the
driver has reported anything, the feed keeps the last ``HISTORY`` published chunks and uses as
``previous`` the one the driver follows (pending, else running), found by sequence and stamp.
It first waits (at most ``verdict_timeout``) for the driver's verdict on the chunk published
last: the next request starts right after a publish, before the driver has said whether it
takes that chunk. RTC is skipped for the request, with the reason counted in the diagnostics,
when no verdict comes in time, when the driver runs no chunk (idle, holding, e-stop, fault),
when it runs one this feed did not publish (from before a reset or a new instruction, or from
another publisher), or when its last report is older than ``max_report_age``.

A driver that never reports (an older driver, a user's own ros2_control stack) leaves the feed
as it was before: ``previous`` is the chunk published last, checked against the driver's
commanded joint states (``~/commanded_joint_states``) as follows. A driver that is not running
the chunks (hold requested, e-stop, fault, watchdog, every chunk rejected) commands one
unchanging pose; RTC is skipped for a request when the driver's command has stood still for
``still_time`` although a chunk had been published ``still_time`` before, and lies more than
``max_deviation`` off the last chunk, rather than steering the model towards a plan the robot is
not following. Distance alone says nothing: the executor deliberately commands off the plan
while it ramps in from wherever the arm was (by any amount, for ``ramp_in_time``, 1 s by
default) and while it blends a splice, and it moves along the plan towards it all the while; the
new chunk continuing that plan is exactly what the executor converges to. (Judged by distance,
every ramp-in turned RTC off for its second: 3 of 24 requests in ``bench/rtc.py`` at 200 ms, and
the free chunks they produced were its largest boundary jumps.) A driver clamping its speed is
still running the chunk, so it is not a reason to skip either.

A command that cannot be compared says nothing, and RTC then goes on as without the topic; but
the feed says so (``rtc_commanded_check`` in the diagnostics, ``commanded_problem`` for the
node's log): a message that names none of the policy's joints, has another count of positions
than names or non-finite positions, or is stamped further than ``max_command_age`` from the
observation (a user's stack that stamps zero, another clock). Before, any of them turned the
check off without a word for as long as it lasted, while the status looked healthy.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from molmoact2_common.chunk_execution import ChunkExecution
from molmoact2_policy.policy_api import RtcRequest

NS_PER_S = 1_000_000_000


# New rows within this of the previous chunk's time grid are on it (stamps are whole ns).
GRID_TOLERANCE_NS = 1
#: Published chunks kept to find the one the driver reports running. A driver may go on running
#: a chunk while it rejects the ones after it; a chunk lasts a second or two, so this many
#: covers every chunk that can still be running at any publish rate up to 30 Hz.
HISTORY = 64
#: Executor states a driver reports (molmoact2_common.chunk_execution); others count as "other".
DRIVER_STATES = ("idle", "ramp_in", "tracking", "holding", "estop", "fault")


def commanded_problem(
    joint_names: Sequence[str], names: Sequence[str], positions: Sequence[float]
) -> str:
    """Why a commanded JointState cannot be compared with the policy's chunks ('' when it can).

    Naming only some of the joints is fine (an arm and its gripper may publish apart).
    """
    names, values = list(names), list(positions)
    if len(values) != len(names):
        return f"{len(values)} positions for {len(names)} joint names"
    wanted = set(joint_names)
    known = [(name, value) for name, value in zip(names, values, strict=True) if name in wanted]
    if not known:
        shown = ", ".join(repr(n) for n in names[:6]) + (", ..." if len(names) > 6 else "")
        return f"names none of the policy's joints (got [{shown}])"
    bad = [name for name, value in known if not math.isfinite(value)]
    if bad:
        return f"non-finite position for joint(s) {', '.join(repr(n) for n in bad)}"
    return ""


@dataclass(frozen=True)
class _Published:
    stamp_ns: int
    start_offset: float
    positions: np.ndarray  # (rows, joints)
    sequence: int | None = None  # ActionChunk.sequence (None: not known to the caller)

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
    """Remembers the published chunks, recent latencies and what the driver reports."""

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
        verdict_timeout: float = 0.1,
        max_report_age: float = 2.5,
        clock=time.monotonic,
    ) -> None:
        if step_dt <= 0 or horizon <= 0:
            raise ValueError("step_dt and horizon must be > 0")
        if still_time <= 0:
            raise ValueError("still_time must be > 0")
        if verdict_timeout < 0 or not max_report_age > 0:
            raise ValueError("verdict_timeout must be >= 0 and max_report_age > 0")
        self.verdict_timeout = float(verdict_timeout)
        self.max_report_age = float(max_report_age)
        self._clock = clock  # monotonic seconds, for the verdict wait only
        self.joint_names = tuple(joint_names)
        self._index = {name: i for i, name in enumerate(self.joint_names)}
        self.step_dt = float(step_dt)
        self.horizon = int(horizon)
        self.max_deviation = float(max_deviation)
        self.max_command_age = float(max_command_age)
        self.still_time = float(still_time)
        self._latencies: deque[float] = deque(maxlen=latency_window)
        self._history: deque[_Published] = deque(maxlen=HISTORY)  # oldest first
        self._execution: ChunkExecution | None = None  # the driver's latest report
        self._first_published_ns: int | None = None  # since the last clear
        # The driver's latest command and since when it has not moved.
        self._command: tuple[int, np.ndarray] | None = None
        self._still_since_ns: int | None = None
        # Why the driver's commands could not be compared ('' : they could, or none came):
        # from the last message, and from the last request (stamp too far from the observation).
        self._command_problem = ""
        self._command_stale = ""
        self.commanded_ignored = 0  # commanded messages that could not be compared
        self._any_command = False
        self._lock = threading.Lock()
        self._reported = threading.Condition(self._lock)  # a driver report arrived
        self.requests = 0
        self.skipped: dict[str, int] = {}
        self.last_delay_steps = -1
        self.last_previous_sequence = -1  # of the chunk the last request continued (-1: none)
        self.last_skip = ""  # why the last skipped request was sampled free

    def clear(self) -> None:
        """Forget the previous chunk (reset, new instruction): the next chunk is sampled free."""
        with self._lock:
            self._history.clear()
            self._first_published_ns = None
            self._command = None
            self._still_since_ns = None

    @property
    def _chunk(self) -> _Published | None:
        """The chunk published last."""
        return self._history[-1] if self._history else None

    def record_chunk(
        self,
        stamp_ns: int,
        start_offset: float,
        positions: np.ndarray,
        latency: float,
        sequence: int | None = None,
    ) -> None:
        positions = np.asarray(positions, dtype=np.float64)
        published_ns = int(stamp_ns)
        if math.isfinite(latency) and latency >= 0:
            published_ns += round(latency * NS_PER_S)
        with self._lock:
            self._history.append(
                _Published(
                    int(stamp_ns),
                    float(start_offset),
                    positions.copy(),
                    None if sequence is None else int(sequence),
                )
            )
            if self._first_published_ns is None:
                self._first_published_ns = published_ns
            if math.isfinite(latency) and latency >= 0:
                self._latencies.append(float(latency))

    def record_execution(self, report: ChunkExecution) -> None:
        """The driver's latest ``~/chunk_execution`` report (from then on RTC follows it)."""
        with self._reported:
            self._execution = report
            self._reported.notify_all()

    @property
    def driver_reports(self) -> bool:
        """The driver has reported which chunk it runs (else: the last published is used)."""
        with self._lock:
            return self._execution is not None

    def record_commanded(
        self, stamp_ns: int, names: Sequence[str], positions: Sequence[float]
    ) -> str:
        """The driver's latest command; joints it does not name keep NaN (never compared).

        Returns why it cannot be compared (``commanded_problem``; '' when it can)."""
        problem = commanded_problem(self.joint_names, names, positions)
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
            self._command_problem = problem
            self._any_command = True
            if problem:
                self.commanded_ignored += 1
        return problem

    def delay_steps(self, start_offset: float = 0.0) -> int:
        with self._lock:
            latency = max(self._latencies, default=0.0)
        return max(0, math.ceil((latency - start_offset) / self.step_dt - 1e-9))

    def diagnostics(self) -> dict[str, str]:
        """Key/values for the node's /diagnostics entry."""
        with self._lock:
            report = self._execution
            values = {
                "rtc_requests": str(self.requests),
                "rtc_delay_steps": str(self.last_delay_steps),
                "rtc_previous_sequence": str(self.last_previous_sequence),
                "rtc_last_skip": self.last_skip,
                "rtc_driver_state": report.state if report is not None else "not reported",
                "rtc_commanded_check": "; ".join(
                    p for p in (self._command_problem, self._command_stale) if p
                )
                or ("ok" if self._any_command else "no command received"),
                "rtc_commanded_ignored": str(self.commanded_ignored),
            }
            values.update({f"rtc_skipped/{k}": str(v) for k, v in sorted(self.skipped.items())})
        return values

    def _skip(self, reason: str, detail: str = "") -> None:
        with self._lock:
            self.skipped[reason] = self.skipped.get(reason, 0) + 1
            self.last_skip = f"{reason}: {detail}" if detail else reason

    def _driver_verdict_on(self, newest: _Published) -> ChunkExecution | None:
        """The driver's latest report once it has judged ``newest`` (None: no verdict within
        ``verdict_timeout``). Lock held."""
        deadline = self._clock() + self.verdict_timeout
        while True:
            report = self._execution
            last = report.last if report is not None else None
            if last is not None and newest.sequence is not None and last.same_as(
                newest.sequence, newest.stamp_ns
            ):
                return report
            remaining = deadline - self._clock()
            if remaining <= 0:
                return None
            self._reported.wait(remaining)

    def _followed_chunk(self, obs_stamp_ns: int) -> _Published | None:
        """The published chunk the driver follows, or None (skip counted) when there is none."""
        max_age_ns = self.max_report_age * NS_PER_S
        with self._lock:
            newest = self._history[-1]
            latest = self._execution
            # A driver gone quiet (crashed, unplugged) gives no verdict: not worth waiting for.
            gone = latest is not None and obs_stamp_ns - latest.stamp_ns > max_age_ns
            report = latest if gone else self._driver_verdict_on(newest)
            history = list(self._history)
        if report is None:
            self._skip(
                "driver_verdict_pending",
                f"no verdict from the driver on chunk {newest.sequence} within "
                f"{self.verdict_timeout:g} s",
            )
            return None
        if obs_stamp_ns - report.stamp_ns > max_age_ns:
            age = (obs_stamp_ns - report.stamp_ns) / NS_PER_S
            self._skip("driver_report_stale", f"the driver's last report is {age:.3f} s old")
            return None
        followed = report.following()
        if followed is None:
            state = report.state if report.state in DRIVER_STATES else "other"
            self._skip(f"driver_{state}", f"the driver runs no chunk (state {report.state!r})")
            return None
        for chunk in reversed(history):
            if chunk.sequence is not None and followed.same_as(chunk.sequence, chunk.stamp_ns):
                return chunk
        self._skip(
            "driver_runs_unknown_chunk",
            f"the driver runs chunk {followed.sequence}, not one published since the last "
            "reset or instruction",
        )
        return None

    def _driver_ignores(
        self, chunk: _Published, command: tuple[int, np.ndarray] | None,
        still_since_ns: int | None, first_published_ns: int | None, obs_stamp_ns: int,
    ) -> bool:
        """The driver's command has stood still, off the chunk, while it had chunks to run."""
        if command is None or still_since_ns is None or first_published_ns is None:
            return False
        command_ns, positions = command
        off_s = (command_ns - obs_stamp_ns) / NS_PER_S
        stale = abs(command_ns - obs_stamp_ns) > self.max_command_age * NS_PER_S
        with self._lock:
            self._command_stale = (
                f"the last command is stamped {off_s:+.3f} s from the observation (more than "
                f"{self.max_command_age:g} s): not compared"
                if stale
                else ""
            )
        if stale:
            return False  # says nothing about now
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
            reported = self._execution is not None
        if chunk is None:
            self._skip("no_previous_chunk")
            return None
        if reported:
            chunk = self._followed_chunk(obs_stamp_ns)
            if chunk is None:
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
        if not reported and self._driver_ignores(
            chunk, command, still_since_ns, first_published_ns, obs_stamp_ns
        ):
            self._skip("driver_not_following")
            return None
        previous = chunk.rows_from(start, rows, dt)
        delay = min(self.delay_steps(chunk.start_offset), rows)
        with self._lock:
            self.requests += 1
            self.last_delay_steps = delay
            self.last_previous_sequence = -1 if chunk.sequence is None else chunk.sequence
        return RtcRequest(previous=previous, delay_steps=delay)
