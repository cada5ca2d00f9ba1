"""The chunk rate ``~/status`` shows: chunks per second over a window of several seconds (no ROS).

Counted over one status period (1 s), a policy slower than 1 Hz, which is every CPU model and
a GPU model under load, read 0.0 and 1.0 in turn while chunks flowed steadily. A window of
``window`` seconds smooths that to within one chunk per window; right after activation the
window is the time since then, so the first figures are not diluted by time before the node
ran.
"""

from __future__ import annotations

from collections import deque

DEFAULT_WINDOW_S = 10.0


class ChunkRateMeter:
    """Chunks per second over the last ``window`` seconds (monotonic seconds in and out)."""

    def __init__(self, window: float = DEFAULT_WINDOW_S, min_span: float = 1.0) -> None:
        if not window > 0 or not 0 < min_span <= window:
            raise ValueError(f"need 0 < min_span <= window, got {min_span=} {window=}")
        self.window = float(window)
        # A span shorter than this (just after activation) would turn one chunk into a burst.
        self.min_span = float(min_span)
        self._times: deque[float] = deque()
        self._since: float | None = None

    def start(self, now: float) -> None:
        """Forget every chunk: counting starts at ``now`` (activation)."""
        self._times.clear()
        self._since = float(now)

    def record(self, now: float) -> None:
        """A chunk was published at ``now``."""
        if self._since is None:
            self._since = float(now)
        self._times.append(float(now))
        self._forget_before(now - self.window)

    def rate(self, now: float) -> float:
        """Chunks per second over the window ending at ``now`` [Hz]."""
        if self._since is None:
            return 0.0
        self._forget_before(now - self.window)
        span = min(self.window, max(self.min_span, now - self._since))
        return sum(1 for t in self._times if t > now - span) / span

    def _forget_before(self, horizon: float) -> None:
        while self._times and self._times[0] <= horizon:
            self._times.popleft()
