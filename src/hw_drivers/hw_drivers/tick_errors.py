"""When a control tick that keeps raising becomes an e-stop (pure: no ROS, time passed in).

A tick that raises (a bug, not a backend error: ``ControlLoop.step`` handles those) is handled
as a backend fault: the arm holds and the link reconnects after ``reconnect_period``. A bug
that raises on every tick would then fault, reconnect and fault again forever, the arm
twitching between holds and ramp-ins while only throttled log lines tell anyone.

What counts: tick errors with no successful tick between them. A successful tick is one that
ran the executor and finished (the command sent or, in dry run, computed); the ticks spent
waiting for the reconnect neither count nor reset, so a bug that raises on every tick that
does real work is caught whatever ``reconnect_period`` and the control rate are. (Counting
consecutive *ticks* literally would never pass one: between two errors lie a reconnect
period of waiting ticks. A count within a time window would tie the threshold to
``reconnect_period``: a window shorter than ``limit * reconnect_period`` never trips.)

At ``limit`` such errors the driver latches its e-stop (the ``~/estop`` latch: only
``~/reset`` clears it, and ``reset`` here too), so the arm stays held until an operator has
looked. An error that recurs only now and then, with successful ticks between, is left to the
fault path (hold, reconnect), counted on ``/diagnostics`` as ``tick_errors``.
"""

from __future__ import annotations

import math


class TickErrorEscalation:
    """Counts tick errors since the last successful tick; says when they reach ``limit``."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the tick error limit must be >= 1, got {limit}")
        self.limit = int(limit)
        self.count = 0  # tick errors since the last successful tick
        self.reason = ""  # why the e-stop was latched ("" when it was not, or after reset)
        self._first = math.nan  # time of the first of the ``count`` errors

    @property
    def escalated(self) -> bool:
        return bool(self.reason)

    def failed(self, now: float, error: str) -> str | None:
        """A tick raised ``error`` at ``now``: the e-stop reason when this error is the one
        that reaches the limit (once per escalation), else None."""
        if self.count == 0:
            self._first = now
        self.count += 1
        if self.count != self.limit or self.reason:
            return None
        span = now - self._first
        during = f" over {span:.1f} s" if math.isfinite(span) and span > 0 else ""
        self.reason = (
            f"{self.count} control tick errors without a successful tick between them{during}"
            f" (last: {error}): a bug in the driver, not a backend fault"
        )
        return self.reason

    def succeeded(self) -> None:
        """A tick ran the executor and finished: the errors before it were not a run."""
        self.count = 0

    def reset(self) -> None:
        """The operator's reset: the e-stop it latched is cleared, counting starts afresh."""
        self.count = 0
        self.reason = ""
