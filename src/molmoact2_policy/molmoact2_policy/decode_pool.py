"""Compressed camera frames decoded on a small thread pool, in parallel across cameras (no ROS).

The cameras of one observation arrive within a fraction of a millisecond of each other, and a
640x480 JPEG takes about a millisecond to decode. Decoded one after another on the executor
thread, three cameras put three decode times on every chunk's latency; OpenCV's decoder
releases the GIL, so on a pool they overlap. Per camera at most one frame is being decoded and
one waits (the newest: a frame that arrives while another waits replaces it), so a starved CPU
drops old frames, as the subscription queue would, instead of building a backlog; frames of
one camera are delivered in arrival order.
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
        self._waiting: dict[str, tuple[int, str, Any]] = {}  # camera -> newest undecoded frame
        self._draining: set[str] = set()  # cameras with a decode task on the pool
        self._closed = False
        self.replaced = 0  # frames dropped undecoded because a newer one of the camera came

    def submit(self, camera: str, stamp_ns: int, fmt: str, data: Any) -> None:
        """Queue one frame of ``camera`` (the message's ``format`` and ``data``)."""
        with self._lock:
            if self._closed:
                return
            if camera in self._waiting:
                self.replaced += 1
            self._waiting[camera] = (stamp_ns, fmt, data)
            if camera in self._draining:
                return  # the camera's running task takes it next
            self._draining.add(camera)
            self._pool.submit(self._drain, camera)

    def _drain(self, camera: str) -> None:
        """Decode and deliver the camera's newest waiting frame until none is left."""
        while True:
            with self._lock:
                frame = self._waiting.pop(camera, None)
                if frame is None or self._closed:
                    self._draining.discard(camera)
                    return
            stamp_ns, fmt, data = frame
            started = time.perf_counter()
            image, error = None, ""
            try:
                image = compressed_to_rgb(fmt, data)
            except ImageConversionError as exc:
                error = str(exc)
            except Exception as exc:  # a hostile payload must become an error, not a lost frame
                error = f"compressed image could not be decoded ({type(exc).__name__}: {exc})"
            seconds = time.perf_counter() - started
            with self._lock:
                if self._closed:
                    self._draining.discard(camera)
                    return
            try:
                self._deliver(camera, stamp_ns, image, error, seconds)
            except Exception as exc:  # the pool must keep decoding
                self._on_error(exc)

    def close(self) -> None:
        """Stop delivering; frames still waiting are dropped (deactivation)."""
        with self._lock:
            self._closed = True
            self._waiting.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
