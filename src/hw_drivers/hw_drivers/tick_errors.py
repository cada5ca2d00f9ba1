"""When errors that keep coming back become an e-stop (pure: no ROS, time passed in).

A tick that raises (a bug, not a backend error: ``ControlLoop.step`` handles those) is handled
as a backend fault: the arm holds and the link reconnects after ``reconnect_period``. A bug
that raises on every tick would then fault, reconnect and fault again forever, the arm
twitching between holds and ramp-ins while only throttled log lines tell anyone.

Two counts latch the driver's e-stop (the ``~/estop`` latch: only ``~/reset`` clears it, and
``reset`` here too), so the arm stays held until an operator has looked:

- ``limit`` tick errors with no successful tick between them. A successful tick is one that
  ran the executor and finished (the command sent or, in dry run, computed); the ticks spent
  waiting for the reconnect neither count nor reset, so a bug that raises on every tick that
  does real work is caught whatever ``reconnect_period`` and the control rate are (counting
  consecutive *ticks* literally would never pass one: a reconnect period of waiting ticks lies
  between two errors).
- ``limit`` tick errors within ``window`` seconds, successful ticks between them or not: a bug
  that raises on every 20th tick resets the first count each time and would otherwise hold and
  ramp in again and again. ros2_control takes a hardware component whose read or write fails
  out of service until someone activates it again; here an error that recurs is given the
  same end, one that comes once in a long while still only holds and reconnects. Each error
  costs a reconnect period, so ``limit`` errors span at least ``(limit - 1) *
  (reconnect_period + one control period)``: a shorter window could never trip, which
  ``DriverParams.validate`` refuses (``min_fault_window``) rather than let it never trip.

``FaultWindow`` is the second count on its own: ``ControlLoop`` also uses it for backend
faults (``max_backend_faults``), which would otherwise hold and reconnect for ever (under
``on_fault: disable`` turning the torque off and on again each time).

The reason of the e-stop is kept where the latch is (``ChunkExecutor.estop_reason``), not here:
this only says when and why to latch.
"""

from __future__ import annotations

import math
from collections import deque


def min_fault_window(limit: int, reconnect_period: float, control_rate: float) -> float:
    """The shortest window [s] in which ``limit`` faults can fall: between two of them the loop
    waits ``reconnect_period``, spends a tick reconnecting and one more before the next error
    can come. One interval of margin on top, so a window at this bound trips for sure."""
    return max(0, int(limit)) * (reconnect_period + 2.0 / control_rate)


class FaultWindow:
    """Whether ``limit`` events fell within ``window`` seconds (pure; time passed in)."""

    def __init__(self, limit: int, window: float) -> None:
        if limit < 1:
            raise ValueError(f"the fault limit must be >= 1, got {limit}")
        if not (window > 0 and math.isfinite(window)):
            raise ValueError(f"the fault window must be a positive number of seconds, got {window}")
        self.limit = int(limit)
        self.window = float(window)
        self._times: deque[float] = deque()

    def add(self, now: float) -> bool:
        """An event at ``now``: whether ``limit`` events now lie within the last ``window``."""
        # A clock that stepped back (sim time reset): a new timeline; the events on the old
        # one are dropped (left, those "after" now would be counted for ever).
        if self._times and self._times[-1] > now:
            self._times.clear()
        self._times.append(now)
        while self._times and now - self._times[0] > self.window:
            self._times.popleft()
        return len(self._times) >= self.limit

    def count(self, now: float) -> int:
        """Events within the last ``window`` seconds before ``now``."""
        return sum(1 for t in self._times if 0.0 <= now - t <= self.window)

    def clear(self) -> None:
        self._times.clear()


class TickErrorEscalation:
    """Says when tick errors reach ``limit`` in a row, or ``limit`` within ``window`` s."""

    def __init__(self, limit: int, window: float = math.inf) -> None:
        if limit < 1:
            raise ValueError(f"the tick error limit must be >= 1, got {limit}")
        self.limit = int(limit)
        self.count = 0  # tick errors since the last successful tick
        self.escalated = False  # latched the e-stop (until reset): said once per escalation
        self._first = math.nan  # time of the first of the ``count`` errors
        self.recent = FaultWindow(limit, window) if math.isfinite(window) else None

    def failed(self, now: float, error: str) -> str | None:
        """A tick raised ``error`` at ``now``: the e-stop reason when this error is the one
        that reaches a limit (once per escalation), else None."""
        if self.count == 0:
            self._first = now
        self.count += 1
        in_window = self.recent is not None and self.recent.add(now)
        if self.escalated or not (self.count >= self.limit or in_window):
            return None
        self.escalated = True
        if self.count >= self.limit:
            span = now - self._first
            during = f" over {span:.1f} s" if math.isfinite(span) and span > 0 else ""
            what = f"{self.count} control tick errors without a successful tick between them"
        else:
            # Only the window can have reached its limit here, so it exists (inf otherwise).
            window = self.recent.window if self.recent is not None else math.inf
            during = ""
            what = (
                f"{self.limit} control tick errors within {window:g} s"
                " (successful ticks between them)"
            )
        return f"{what}{during} (last: {error}): a bug in the driver, not a backend fault"

    def recent_count(self, now: float) -> int:
        """Tick errors within the window before ``now`` (0 without a window)."""
        return 0 if self.recent is None else self.recent.count(now)

    def succeeded(self) -> None:
        """A tick ran the executor and finished: the errors before it were not a run."""
        self.count = 0

    def reset(self) -> None:
        """The operator's reset: the e-stop it latched is cleared, counting starts afresh."""
        self.count = 0
        self.escalated = False
        if self.recent is not None:
            self.recent.clear()
