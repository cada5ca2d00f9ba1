"""One background inference thread with a single pending slot and a rate cap (no ROS).

The policy node's subscription callbacks must never wait for the model, and a slow model must
never build a backlog of old observations: ``submit`` overwrites the one pending request, so the
thread always works on the newest observation available when it becomes free. Every exception
from the policy is caught and delivered as an error outcome; the thread only ends on ``stop``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from molmoact2_policy.observation import Observation
from molmoact2_policy.policy_api import (
    ActionChunkResult,
    Policy,
    PolicyInputError,
    PolicyUnavailableError,
    RtcRequest,
)
from molmoact2_policy.stage_times import StageTimes

# Error kinds of an outcome.
INPUT_ERROR = "input"
UNAVAILABLE = "unavailable"
INTERNAL = "internal"


@dataclass(frozen=True)
class InferenceRequest:
    """What to infer: one observation under one instruction."""

    observation: Observation
    instruction: str
    seed: int | None = None
    epoch: int = 0  # caller's generation counter: lets it drop outcomes of superseded requests
    # What building the observation cost (convert, assemble); frozen, so one default is safe.
    stages: StageTimes = field(default_factory=StageTimes)


@dataclass(frozen=True)
class InferenceOutcome:
    """A finished request: ``result`` on success, else ``error`` (and ``error_kind``)."""

    request: InferenceRequest
    result: ActionChunkResult | None
    error: str
    error_kind: str  # "" on success, else INPUT_ERROR, UNAVAILABLE or INTERNAL
    started: float  # monotonic seconds when act() was called
    finished: float  # monotonic seconds when act() returned
    submitted: float = math.nan  # monotonic seconds when the request was submitted
    start_token: object = None  # what the worker's ``on_start`` returned right before act()

    @property
    def ok(self) -> bool:
        return self.result is not None

    @property
    def model_time(self) -> float:
        return self.finished - self.started

    @property
    def queue_wait(self) -> float:
        """Seconds the request waited for the thread (and the rate cap) before act()."""
        return self.started - self.submitted


def describe_error(exc: BaseException) -> tuple[str, str]:
    """(kind, message) for an exception raised by ``Policy.act``."""
    if isinstance(exc, PolicyInputError):
        return INPUT_ERROR, f"policy rejected the observation: {exc}"
    if isinstance(exc, PolicyUnavailableError):
        return UNAVAILABLE, f"policy unavailable: {exc}"
    return INTERNAL, f"inference failed: {type(exc).__name__}: {exc}"


class InferenceWorker:
    """Runs ``policy.act`` on the newest submitted request, one at a time, at most ``max_rate``."""

    def __init__(
        self,
        policy: Policy,
        on_outcome: Callable[[InferenceOutcome], None],
        *,
        max_rate: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        on_callback_error: Callable[[BaseException], None] | None = None,
        rtc_source: Callable[[InferenceRequest], RtcRequest | None] | None = None,
        on_start: Callable[[InferenceRequest], object] | None = None,
    ) -> None:
        self._policy = policy
        # Called with the request right before its act(): the caller can still act on what the
        # observation says (a camera-stamp jump drops the depth cache before the model reads
        # it). Its value travels in the outcome (``start_token``), so the caller can tell what
        # happened while the model ran (a depth-cache reset).
        self._on_start = on_start
        # Real-time chunking: asked right before act(), so it sees the chunk published last.
        self._rtc_source = rtc_source
        self._on_outcome = on_outcome
        self._min_interval = 1.0 / max_rate if max_rate > 0.0 else 0.0
        self._clock = clock
        self._on_callback_error = on_callback_error
        self._cond = threading.Condition()
        self._pending: InferenceRequest | None = None
        self._pending_since = math.nan
        self._busy = False
        self._running = False
        self._last_start: float | None = None
        self._thread: threading.Thread | None = None
        self.submitted = 0
        self.replaced = 0  # pending requests overwritten before they ran
        self.completed = 0
        self.failed = 0

    # ---- control ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread (idempotent)."""
        with self._cond:
            if self._running:
                return
            self._running = True
        self._thread = threading.Thread(target=self._loop, name="molmoact2-inference", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Drop the pending request and end the thread after the current inference.

        Returns False if the thread is still inside ``act`` after ``timeout`` seconds (it will
        exit once ``act`` returns; its outcome is still delivered).
        """
        with self._cond:
            self._running = False
            self._pending = None
            self._cond.notify_all()
        thread, self._thread = self._thread, None
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()

    def submit(self, request: InferenceRequest) -> bool:
        """Make ``request`` the pending one; True when it replaced an older pending request."""
        with self._cond:
            replaced = self._pending is not None
            self._pending = request
            self._pending_since = self._clock()
            self.submitted += 1
            if replaced:
                self.replaced += 1
            self._cond.notify_all()
            return replaced

    def set_max_rate(self, max_rate: float) -> None:
        """Change the rate cap while running (a live parameter); <= 0 removes it."""
        with self._cond:
            self._min_interval = 1.0 / max_rate if max_rate > 0.0 else 0.0
            self._cond.notify_all()

    def clear_pending(self) -> None:
        """Forget the pending request (after a reset or an instruction change)."""
        with self._cond:
            self._pending = None

    @property
    def busy(self) -> bool:
        """True while ``act`` is running."""
        with self._cond:
            return self._busy

    @property
    def has_pending(self) -> bool:
        with self._cond:
            return self._pending is not None

    @property
    def idle(self) -> bool:
        """Nothing running and nothing waiting: a new submit would start (subject to the cap)."""
        with self._cond:
            return not self._busy and self._pending is None

    # ---- thread -------------------------------------------------------------------------

    def _take_next(self) -> tuple[InferenceRequest, float] | None:
        with self._cond:
            while self._running:
                if self._pending is not None:
                    wait = 0.0
                    if self._last_start is not None and self._min_interval > 0.0:
                        wait = self._last_start + self._min_interval - self._clock()
                    if wait <= 0.0:
                        request, self._pending = self._pending, None
                        self._busy = True
                        self._last_start = self._clock()
                        return request, self._pending_since
                    self._cond.wait(wait)
                else:
                    self._cond.wait()
            return None

    def _loop(self) -> None:
        while True:
            taken = self._take_next()
            if taken is None:
                return
            request, submitted = taken
            started = self._clock()
            token = None
            try:
                if self._on_start is not None:
                    token = self._on_start(request)
                obs = request.observation
                rtc = self._rtc_source(request) if self._rtc_source is not None else None
                # Only RTC-capable policies take ``rtc``: pass it only when there is one.
                extra = {"rtc": rtc} if rtc is not None else {}
                result = self._policy.act(
                    obs.images, obs.state, request.instruction, seed=request.seed, **extra
                )
                outcome = InferenceOutcome(
                    request, result, "", "", started, self._clock(), submitted, token
                )
                self.completed += 1
            except Exception as exc:  # the thread must outlive any policy failure
                kind, message = describe_error(exc)
                outcome = InferenceOutcome(
                    request, None, message, kind, started, self._clock(), submitted, token
                )
                self.failed += 1
            with self._cond:
                self._busy = False
            try:
                self._on_outcome(outcome)
            except Exception as exc:
                if self._on_callback_error is not None:
                    self._on_callback_error(exc)
