"""A periodic control loop on its own thread, on an absolute grid of deadlines.

Pure (no ROS; clock and sleep injected, as the chunk executor's time is) so the driver node's
250 Hz loop does not share the rclpy executor's thread: a long parameter request or a burst
of camera messages on that thread used to hold every control tick back (the robot stopped
for as long). ros2_control's ``ros2_control_node`` runs its read/update/write loop on a thread
of its own beside the executor, as i2rt's DaMiao driver (``DMChainCanInterface``) does.

Timing: deadline ``k`` is ``start + k * period``, computed, never accumulated from sleeps, so
the schedule does not drift with sleep overshoot or tick time. A clock that steps back (sim
time reset) restarts the grid where it now is, so the loop never waits out the jump. A tick
that starts late (the previous one overran, the GIL or the OS held the thread) runs once, as
the tick of the deadline it was due for; the later deadlines that have passed meanwhile are
counted as missed and skipped, never run as a burst of catch-up ticks (a burst would send
several commands within microseconds); the next tick is on the first deadline still ahead.
This is what an rcl timer does (``rcl_timer_call``: its ``expected_call_time`` is the
deadline it was due for, then it skips the periods already past), so ``TickTiming`` reads a
timer and this loop the same way.

Errors: an exception from the tick is counted, kept (``last_error``) and handed to
``on_error``. The loop keeps running unless ``on_error`` returns ``False``: a control loop
whose owner put the robot into a safe state (the driver holds and treats it as a backend
fault) should go on ticking so that recovery and state reporting continue. If ``on_error``
returns ``False`` or raises, or the tick raises a ``BaseException`` that is not an
``Exception``, the loop ends; ``died`` then tells its owner that nobody is ticking any more
(unlike an end asked for with ``stop()``).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

_log = logging.getLogger(__name__)


class ControlThread:
    """Calls ``tick(deadline, started)`` every ``period`` seconds on its own thread.

    ``deadline`` is the grid time the tick is for and ``started`` when it actually began, both
    on ``clock`` [s]. ``stop()`` may be called from any thread, including from inside the
    tick, and any number of times; ``start()`` only once. Never call ``stop()`` while holding a
    lock the tick takes: it waits for the tick in progress to end.
    """

    def __init__(
        self,
        tick: Callable[[float, float], None],
        period: float,
        *,
        on_error: Callable[[BaseException], bool | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
        name: str = "control",
    ) -> None:
        if not (period > 0.0 and math.isfinite(period)):
            raise ValueError(f"period must be a positive number of seconds, got {period}")
        self.period = float(period)
        self._tick = tick
        self._on_error = on_error
        self._clock = clock
        self._stop = threading.Event()
        # Waiting on the stop event wakes a sleeping loop at once when stop() is called.
        self._sleep = sleep if sleep is not None else self._stop.wait
        self._name = name
        self._thread: threading.Thread | None = None
        self._started = False
        self._start_lock = threading.Lock()
        self._exited = threading.Event()
        self._stop_asked = False  # by stop(): an end the owner wanted, not a death
        # Diagnostics: written by the loop only, read from anywhere (single int/str rebinds).
        self.ticks = 0  # ticks run, the failed ones included
        self.restarts = 0  # the clock stepped back and the grid restarted from there
        self.missed = 0
        self.errors = 0
        self.last_error = ""
        self.fatal_error = ""  # what ended the loop, when something did

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop thread; the first tick is due at once (raises if called twice)."""
        with self._start_lock:
            if self._started:
                raise RuntimeError(f"control thread {self._name!r} was already started")
            self._started = True
        self._thread = threading.Thread(target=self.run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Ask the loop to end and wait (at most ``timeout`` s) for the tick in progress.

        Returns whether the loop has ended (or never ran). From inside the tick it only asks:
        the loop ends when the tick returns (a thread cannot join itself).
        """
        self._stop_asked = True
        self._stop.set()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return thread is None
        thread.join(timeout)
        return not thread.is_alive()

    @property
    def running(self) -> bool:
        """Started and not ended (a stop was maybe asked but the last tick is still running)."""
        return self._started and not self._exited.is_set()

    @property
    def died(self) -> bool:
        """The loop ended without being asked to: nothing ticks any more."""
        return self._exited.is_set() and not self._stop_asked

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        """The loop itself (the thread's target; tests call it directly with a fake clock)."""
        try:
            self._loop()
        except BaseException as exc:  # recorded: the owner reports a dead loop
            self.fatal_error = f"{type(exc).__name__}: {exc}"
            _log.error("control loop %r ended: %s", self._name, self.fatal_error)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._exited.set()

    def _loop(self) -> None:
        clock, period = self._clock, self.period
        start = last = clock()
        k = 0  # index of the next deadline
        while not self._stop.is_set():
            deadline = start + k * period
            now = clock()
            if now < last:
                # The clock stepped back (a sim clock reset): a new grid from here, at once.
                start, k, deadline = now, 0, now
                self.restarts += 1
            elif now < deadline:
                last = now
                self._sleep(deadline - now)
                continue  # stop asked meanwhile? the clock where expected? then the tick
            last = now
            # One tick, for the deadline it was due for (its lateness shows how long the loop
            # was held); the later deadlines already passed are missed, not caught up.
            due = max(k, math.floor((now - start) / period))
            if start + (due + 1) * period <= now:  # the division rounded down at a deadline
                due += 1
            self.missed += due - k
            k = due + 1
            self.ticks += 1
            try:
                self._tick(deadline, now)
            except Exception as exc:  # counted, kept, passed to on_error
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                keep_going = True
                if self._on_error is not None:
                    keep_going = self._on_error(exc) is not False
                else:
                    _log.error("control tick failed: %s", self.last_error, exc_info=exc)
                if not keep_going:
                    self.fatal_error = self.last_error
                    return
