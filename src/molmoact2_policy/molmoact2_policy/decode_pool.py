"""Compressed camera frames decoded on a small thread pool, in parallel across cameras (no ROS).

The cameras of one observation arrive within a fraction of a millisecond of each other, and a
640x480 JPEG takes about a millisecond to decode. Decoded one after another on the executor
thread, three cameras put three decode times on every chunk's latency; OpenCV's decoder
releases the GIL, so on a pool they overlap. Per camera, a frame is delivered only if it arrived
after the last delivered one: a slow decode never overwrites a newer frame.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from molmoact2_policy.image_conversion import ImageConversionError, compressed_to_rgb

# deliver(camera, stamp_ns, image or None, error message or "", decode seconds)
Deliver = Callable[[str, int, "np.ndarray | None", str, float], None]


class DecodePool:
    """Decodes ``CompressedImage`` payloads on ``workers`` threads and hands them to ``deliver``.

    ``deliver`` runs on a pool thread; exceptions it raises are passed to ``on_error``.
    """

    def __init__(
        self, workers: int, deliver: Deliver, on_error: Callable[[BaseException], None]
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self._deliver = deliver
        self._on_error = on_error
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="molmoact2-decode")
        self._lock = threading.Lock()
        self._submitted: dict[str, int] = {}
        self._delivered: dict[str, int] = {}
        self._closed = False

    def submit(self, camera: str, stamp_ns: int, fmt: str, data: Any) -> None:
        """Queue one frame of ``camera`` (the message's ``format`` and ``data``)."""
        with self._lock:
            if self._closed:
                return
            sequence = self._submitted.get(camera, 0) + 1
            self._submitted[camera] = sequence
            self._pool.submit(self._decode, camera, sequence, stamp_ns, fmt, data)

    def _decode(self, camera: str, sequence: int, stamp_ns: int, fmt: str, data: Any) -> None:
        started = time.perf_counter()
        image, error = None, ""
        try:
            image = compressed_to_rgb(fmt, data)
        except ImageConversionError as exc:
            error = str(exc)
        except Exception as exc:  # a hostile payload must become an error, not a lost frame
            error = f"compressed image could not be decoded ({type(exc).__name__}: {exc})"
        seconds = time.perf_counter() - started
        # Delivered under the lock: two frames of one camera decoded at once must reach the
        # caller in arrival order (deliveries are short: store the frame, maybe submit).
        with self._lock:
            if self._closed or sequence <= self._delivered.get(camera, 0):
                return  # a newer frame of this camera was delivered already
            self._delivered[camera] = sequence
            try:
                self._deliver(camera, stamp_ns, image, error, seconds)
            except Exception as exc:  # the pool must keep decoding
                self._on_error(exc)

    def close(self) -> None:
        """Stop delivering; frames still queued are dropped (deactivation)."""
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)
