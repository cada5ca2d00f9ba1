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

#: Accepted chunks whose exact stamps are kept (a running chunk is at most a few chunks old).
ACCEPTED_STAMPS_KEPT = 64


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
        # Exact header stamps of recently accepted chunks by sequence: the executor keeps
        # float seconds (off by up to ~0.24 us), and a user comparing the report with the
        # ActionChunk's header should see the same stamp.
        self._accepted_stamps: dict[int, int] = {}

    def on_verdict(self, sequence: int, stamp_ns: int, accepted: bool, reason: str = "") -> None:
        """The driver's verdict on the chunk ``(sequence, stamp_ns)`` it just received."""
        self._last = ChunkRef(int(sequence), int(stamp_ns))
        self._last_accepted = bool(accepted)
        self._last_reason = "" if accepted else reason
        if accepted:
            self._accepted_stamps[int(sequence)] = int(stamp_ns)
            while len(self._accepted_stamps) > ACCEPTED_STAMPS_KEPT:
                del self._accepted_stamps[next(iter(self._accepted_stamps))]  # the oldest

    def report(
        self, now: float, state: str, running: Chunk | None, pending: Chunk | None = None
    ) -> ChunkExecution:
        """The report for time ``now`` [s, driver clock] from what runs and what waits."""
        return ChunkExecution(
            stamp_ns=round(now * NS_PER_S) if math.isfinite(now) else 0,
            state=state,
            running=self._ref(running) if running else None,
            pending=self._ref(pending) if pending else None,
            last=self._last,
            last_accepted=self._last_accepted,
            last_reject_reason=self._last_reason,
        )

    def _ref(self, chunk: Chunk) -> ChunkRef:
        """``chunk`` by sequence and stamp, the stamp exact when its verdict was seen here."""
        ref = ChunkRef.from_seconds(chunk.sequence, chunk.stamp)
        exact = self._accepted_stamps.get(ref.sequence)
        if exact is not None and ref.same_as(ref.sequence, exact):
            return ChunkRef(ref.sequence, exact)
        return ref

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
