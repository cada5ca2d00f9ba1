"""The driver's ``~/chunk_execution`` reports: which chunk the executor runs (no ROS).

``ExecutionReporter`` turns the executor's state and the verdicts on received chunks into
``molmoact2_common.chunk_execution.ChunkExecution`` values, and says when one is worth
publishing: on every change (a verdict, a chunk taking over or ending, a state change) and as a
heartbeat every ``heartbeat`` seconds, so a subscriber can tell a quiet driver from a gone one.
Pure and clock-injected like the executor. The trajectory bridge, which has no executor (the
ros2_control controller runs the chunk), reports the chunk it last sent with ``report``.
"""

from __future__ import annotations

import math

from hw_drivers.chunk import Chunk
from hw_drivers.executor import ChunkExecutor
from molmoact2_common.chunk_execution import NS_PER_S, ChunkExecution, ChunkRef


class ExecutionReporter:
    def __init__(self, heartbeat: float = 1.0) -> None:
        if not heartbeat > 0:
            raise ValueError(f"heartbeat must be > 0, got {heartbeat}")
        self.heartbeat = float(heartbeat)
        self._last: ChunkRef | None = None
        self._last_accepted = False
        self._last_reason = ""
        self._published: ChunkExecution | None = None
        self._published_at = -math.inf

    def on_verdict(self, sequence: int, stamp_ns: int, accepted: bool, reason: str = "") -> None:
        """The driver's verdict on the chunk ``(sequence, stamp_ns)`` it just received."""
        self._last = ChunkRef(int(sequence), int(stamp_ns))
        self._last_accepted = bool(accepted)
        self._last_reason = "" if accepted else reason

    def report(
        self, now: float, state: str, running: Chunk | None, pending: Chunk | None = None
    ) -> ChunkExecution:
        """The report for time ``now`` [s, driver clock] from what runs and what waits."""
        return ChunkExecution(
            stamp_ns=round(now * NS_PER_S) if math.isfinite(now) else 0,
            state=state,
            running=ChunkRef.from_seconds(running.sequence, running.stamp) if running else None,
            pending=ChunkRef.from_seconds(pending.sequence, pending.stamp) if pending else None,
            last=self._last,
            last_accepted=self._last_accepted,
            last_reject_reason=self._last_reason,
        )

    def current(
        self, executor: ChunkExecutor, now: float, state: str | None = None
    ) -> ChunkExecution:
        """The report for time ``now`` [s, driver clock]; ``state`` overrides the executor's
        (a backend fault: the loop stops ticking the executor, whose state then stays)."""
        return self.report(
            now, state or executor.state, executor.running_chunk, executor.pending_chunk
        )

    def due(
        self, executor: ChunkExecutor, now: float, state: str | None = None
    ) -> ChunkExecution | None:
        """The report to publish now, or None (nothing changed and no heartbeat due).

        Marks it published: call it only where the result is published.
        """
        return self.publishable(self.current(executor, now, state), now)

    def publishable(self, report: ChunkExecution, now: float) -> ChunkExecution | None:
        """``report`` if it is worth publishing at ``now`` (see ``due``), else None."""
        changed = not report.same_content(self._published)
        # A clock that stepped back (sim time reset) is a change of its own.
        if not changed and self._published_at <= now < self._published_at + self.heartbeat:
            return None
        self._published, self._published_at = report, now
        return report
