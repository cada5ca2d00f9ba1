"""A stand-in node for supervisor tests: runs until SIGINT or SIGTERM, then exits 0."""

from __future__ import annotations

import signal
import sys
import threading

stop = threading.Event()
for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, lambda *_: stop.set())
while not stop.wait(1.0):
    pass
sys.exit(0)
