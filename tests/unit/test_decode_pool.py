"""Compressed frames decoded in parallel across cameras, delivered in arrival order (issue 21)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from molmoact2_policy import decode_pool
from molmoact2_policy.decode_pool import DecodePool
from molmoact2_policy.image_conversion import encode_compressed


def _png(value: int) -> bytes:
    return encode_compressed(np.full((8, 8, 3), value, np.uint8), "png")


class _Sink:
    def __init__(self, expected: int) -> None:
        self.items: list[tuple] = []
        self.errors: list[BaseException] = []
        self._expected = expected
        self.done = threading.Event()

    def deliver(self, camera, stamp_ns, image, error, seconds) -> None:
        value = None if image is None else int(image[0, 0, 0])
        self.items.append((camera, stamp_ns, value, error))
        assert seconds >= 0.0
        if len(self.items) >= self._expected:
            self.done.set()


def test_frames_of_every_camera_arrive_decoded_and_bad_ones_as_errors():
    sink = _Sink(expected=3)
    pool = DecodePool(2, sink.deliver, sink.errors.append)
    try:
        pool.submit("top", 1, "png", _png(10))
        pool.submit("left", 1, "png", _png(20))
        pool.submit("right", 1, "jpeg", b"not a jpeg")
        assert sink.done.wait(10.0)
    finally:
        pool.close()
    got = {camera: (value, error) for camera, _, value, error in sink.items}
    assert got["top"] == (10, "") and got["left"] == (20, "")
    assert got["right"][0] is None and "could not be decoded" in got["right"][1]
    assert not sink.errors


def test_a_starved_camera_decodes_only_its_newest_frame_in_arrival_order(monkeypatch):
    decoding = threading.Event()
    release = threading.Event()
    real = decode_pool.compressed_to_rgb

    def decode(fmt, data):
        if data == b"first":
            decoding.set()
            release.wait(10.0)  # frame 1 is still decoding while frames 2 and 3 arrive
            return np.full((8, 8, 3), 1, np.uint8)
        return real(fmt, data)

    monkeypatch.setattr(decode_pool, "compressed_to_rgb", decode)
    sink = _Sink(expected=2)
    pool = DecodePool(2, sink.deliver, sink.errors.append)
    try:
        pool.submit("top", 100, "png", b"first")
        assert decoding.wait(10.0)
        pool.submit("top", 200, "png", _png(2))
        pool.submit("top", 300, "png", _png(3))  # replaces 200, which is never decoded
        release.set()
        assert sink.done.wait(10.0)
    finally:
        release.set()
        pool.close()
    assert [(stamp, value) for _, stamp, value, _ in sink.items] == [(100, 1), (300, 3)]
    assert pool.replaced == 1 and not sink.errors


def test_deliver_failures_are_reported_and_closing_stops_delivery():
    errors: list[BaseException] = []
    failed = threading.Event()

    def deliver(*args) -> None:
        raise RuntimeError("store failed")

    def on_error(exc: BaseException) -> None:
        errors.append(exc)
        failed.set()

    pool = DecodePool(1, deliver, on_error)
    pool.submit("top", 1, "png", _png(5))
    assert failed.wait(10.0)
    assert "store failed" in str(errors[0])
    pool.close()
    pool.submit("top", 2, "png", _png(6))  # ignored after close
    assert len(errors) == 1


def test_needs_a_worker():
    with pytest.raises(ValueError):
        DecodePool(0, lambda *a: None, lambda e: None)
