"""The policy node's log throttle: one line per complaint per period, not per bad frame."""

from __future__ import annotations

from molmoact2_policy.log_throttle import LogThrottle


def _truncated(size: int, camera: str = "top") -> str:
    return (
        f"camera {camera!r}: image data truncated: {size} bytes, expected step 192 x height 48 "
        "= 9216 for 64x48 rgb8"
    )


def test_a_flood_of_frames_broken_by_different_amounts_logs_once_per_period():
    """A probe sent 600 truncated frames/s, each a byte shorter than the last: every message
    differed in its byte count and each one was logged (2968 lines in 5 s)."""
    throttle = LogThrottle(period=5.0)
    allowed = [throttle.allow(_truncated(9215 - k), now=k / 600) for k in range(3000)]
    assert allowed[0] and sum(allowed) == 1
    assert throttle.allow(_truncated(9000), now=5.01)


def test_garbage_whose_first_bytes_differ_is_one_complaint():
    throttle = LogThrottle(period=5.0)
    for k, head in enumerate(("00010203", "ffe42279", "9a9bc0d1")):
        allowed = throttle.allow(
            f"compressed image (jpeg) could not be decoded: {2000 + k} bytes starting {head} "
            "have no JPEG or PNG header",
            now=float(k),
        )
        assert allowed == (k == 0)


def test_frames_forged_with_a_different_size_each_are_one_complaint():
    """A flood of 631-byte JPEGs declaring 4000x4000, 4001x4001, ...: 96 log lines in 5 s."""
    throttle = LogThrottle(period=5.0)
    allowed = [
        throttle.allow(
            f"camera 'right_wrist': compressed image (jpeg): 631 bytes cannot hold the "
            f"{side}x{side} JPEG its header declares (at least {side * side // 512}: one bit "
            "per 8x8 block); truncated or forged",
            now=k / 500,
        )
        for k, side in enumerate(range(4000, 4096))
    ]
    assert sum(allowed) == 1


def test_different_complaints_and_cameras_are_each_logged():
    throttle = LogThrottle(period=5.0)
    assert throttle.allow(_truncated(100, "cam1"), now=0.0)
    assert throttle.allow(_truncated(100, "cam2"), now=0.0)  # digits inside a name count
    assert throttle.allow("camera 'cam1': unsupported image encoding 'rgb16'", now=0.0)
    assert throttle.allow("camera 'cam1': unsupported image encoding 'mono16'", now=0.0)
    assert not throttle.allow("camera 'cam1': unsupported image encoding 'mono16'", now=1.0)


def test_libjpeg_markers_named_in_hex_are_one_complaint():
    """A camera whose JPEGs arrive randomly damaged: libjpeg names the marker or table it
    tripped on in hex, so every byte value was a complaint of its own (48 keys, 613 lines in
    10 simulated minutes of a 30 Hz camera in /tmp/pi/throttle_sim.py)."""
    throttle = LogThrottle(period=5.0)
    head = "camera 'top': compressed image (jpeg), 71386 bytes, could not be decoded: "
    details = [
        "Corrupt JPEG data: 12 extraneous bytes before marker 0xd9",
        "Corrupt JPEG data: 3 extraneous bytes before marker 0xc4",
        "Corrupt JPEG data: 7 extraneous bytes before marker 0xDA",
        "Unsupported marker type 0x9d",
        "Unsupported marker type 0x1a",
        "Quantization table 0xf0 was not defined",
        "Quantization table 0x4c was not defined",
    ]
    allowed = [
        throttle.allow(f"{head}damaged JPEG data (libjpeg: {d}); truncated", now=k / 30)
        for k, d in enumerate(details)
    ]
    assert allowed == [True, False, False, True, False, True, False]


def _name(index: int) -> str:
    """A camera name without digits (digits would be masked): a, b, ..., z, ba, bb, ..."""
    letters = ""
    while True:
        index, rest = divmod(index, 26)
        letters = chr(ord("a") + rest) + letters
        if not index:
            return letters


def test_forgetting_old_complaints_does_not_let_a_throttled_one_through_early():
    """Past 256 remembered complaints the throttle forgot them all, also those still within
    their period, so a complaint repeated at camera rate was logged again at once. Only the
    expired ones are forgotten now."""
    throttle = LogThrottle(period=5.0)
    for index in range(250):  # a long run's worth of complaints, expired by t = 6
        assert throttle.allow(f"camera {_name(index)!r}: unsupported encoding 'x'", now=0.0)
    recurring = "camera 'top': unsupported image encoding '16UC1'"
    assert throttle.allow(recurring, now=7.0)
    for index in range(250, 270):  # new complaints push the count past 256
        assert throttle.allow(f"camera {_name(index)!r}: unsupported encoding 'x'", now=8.0)
        assert not throttle.allow(recurring, now=8.0), index
    assert not throttle.allow(recurring, now=11.9)
    assert throttle.allow(recurring, now=12.0)
