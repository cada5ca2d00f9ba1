"""Throttling of repeated log messages (no ROS): bad input arrives at camera rate."""

from __future__ import annotations

import re
import threading
import time

# Seconds between repeats of the same complaint.
LOG_REPEAT_PERIOD_S = 5.0
# Numbers, frame sizes (640x480) and 4-byte hex dumps in a message: byte counts, ages, stamps,
# the first bytes of a frame.
# Masked in the key, so a stream of bad frames whose messages differ only in them (a truncated
# frame of a new length every time) is one complaint, not a log line per frame; names like
# 'cam2' or 'rgb8' keep their digits (no word boundary inside them).
# libjpeg names the marker or table a damaged stream tripped on in hex ("Unsupported marker
# type 0x9d", "Quantization table 0xf0 was not defined"): a randomly damaged stream is one
# complaint, not one per byte value.
_VARYING = re.compile(
    r"\b0x[0-9a-fA-F]+\b|\b[0-9a-fA-F]{8}\b|\b\d+x\d+\b"
    r"|-?\b\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\b"
)
#: Complaints remembered at most; beyond it, those older than the period (which would be let
#: through anyway) are forgotten first.
MAX_KEYS = 256


def throttle_key(message: str) -> str:
    """``message`` with its numbers masked: the complaint, not this instance of it."""
    return _VARYING.sub("#", message)


class LogThrottle:
    """Lets a message through when its complaint (``throttle_key``) is new or ``period``
    seconds passed since it last was let through."""

    def __init__(self, period: float = LOG_REPEAT_PERIOD_S) -> None:
        self._period = period
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def allow(self, message: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        key = throttle_key(message)
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._period:
                return False
            if len(self._last) >= MAX_KEYS:  # keys of free text (names, reasons): keep it small
                # Forgetting every key (as before) let each complaint still being throttled
                # through again at once; only the expired ones are safe to forget.
                self._last = {k: t for k, t in self._last.items() if now - t < self._period}
                if len(self._last) >= MAX_KEYS:
                    self._last.clear()
            self._last[key] = now
            return True
