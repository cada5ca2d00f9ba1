"""Camera encodings (Bayer, YUV 4:2:2, 16-bit) -> RGB as cv_bridge converts them to rgb8.

The expectations come from cv_bridge's source (ros-perception/vision_opencv,
cv_bridge/src/cv_bridge.cpp: getConversionCodes, toCvCopyImpl, matFromImage) and
sensor_msgs/image_encodings.hpp (ros2/common_interfaces), computed here independently of
``image_conversion``: hand-built mosaics and YUV frames, OpenCV called with the code cv_bridge's
table names, 16-bit scaling by integer arithmetic.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from molmoact2_policy.image_conversion import (
    SUPPORTED_ENCODINGS,
    ImageConversionError,
    ImageTooLargeError,
    image_to_rgb,
    rgb_to_image_fields,
)

# cv_bridge getConversionCodes: (BAYER_x, RGB) -> cv::COLOR_Bayer..2RGB (OpenCV names the
# pattern one pixel down and right of ROS's).
CV_BRIDGE_BAYER = {
    "rggb": "COLOR_BayerBG2RGB",
    "bggr": "COLOR_BayerRG2RGB",
    "gbrg": "COLOR_BayerGR2RGB",
    "grbg": "COLOR_BayerGB2RGB",
}


def _mosaic(pattern: str, colour: tuple[int, int, int], height: int, width: int) -> np.ndarray:
    """A Bayer mosaic of one uniform colour, laid out as ROS names it: pattern[0:2] is row 0,
    pattern[2:4] row 1, repeating."""
    tile = np.array(
        [
            [colour["rgb".index(c)] for c in pattern[:2]],
            [colour["rgb".index(c)] for c in pattern[2:]],
        ]
    )
    return np.tile(tile, (height // 2, width // 2))


def _scale16(values: np.ndarray) -> np.ndarray:
    """cv_bridge's convertTo(..., 255/65535) for uint16, in exact integer arithmetic: v/257 to the
    nearest integer (v/257 is never k + 1/2 for an integer v)."""
    return ((values.astype(np.int64) + 128) // 257).astype(np.uint8)


def _fields(encoding: str, samples: np.ndarray, width: int, big_endian: bool = False) -> dict:
    """Image fields holding ``samples`` (uint8, or uint16 written in the given byte order)."""
    if samples.dtype == np.uint16:
        samples = samples.astype(">u2" if big_endian else "<u2")
    data = np.ascontiguousarray(samples).tobytes()
    return {
        "encoding": encoding,
        "height": samples.shape[0],
        "width": width,
        "step": len(data) // samples.shape[0],
        "data": data,
        "is_bigendian": int(big_endian),
    }


# ---- Bayer --------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", sorted(CV_BRIDGE_BAYER))
def test_bayer8_is_demosaiced_with_cv_bridges_opencv_code(pattern):
    mosaic = np.random.default_rng(1).integers(0, 256, (4, 6), dtype=np.uint8)
    want = cv2.cvtColor(mosaic, getattr(cv2, CV_BRIDGE_BAYER[pattern]))
    out = image_to_rgb(**_fields(f"bayer_{pattern}8", mosaic, 6))
    np.testing.assert_array_equal(out, want)


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("pattern", sorted(CV_BRIDGE_BAYER))
def test_bayer_of_one_colour_comes_out_as_that_colour(pattern, bits):
    """The mapping means what its name says: a mosaic laid out as ROS's ``bayer_<pattern>``
    of one colour demosaics to that colour everywhere (a shifted code swaps red and blue or
    mixes green in)."""
    colour = (200, 90, 30)
    mosaic = _mosaic(pattern, colour, 4, 4)
    if bits == 16:
        mosaic = mosaic.astype(np.uint16) * 257
    else:
        mosaic = mosaic.astype(np.uint8)
    out = image_to_rgb(**_fields(f"bayer_{pattern}{bits}", mosaic, 4))
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.broadcast_to(colour, (4, 4, 3)))


def test_cv_bridges_bayer_codes_are_opencvs_sensor_order_aliases():
    # OpenCV >= 4.5 also spells the codes in sensor order; cv_bridge's table agrees with it.
    for pattern, name in CV_BRIDGE_BAYER.items():
        alias = f"COLOR_Bayer{pattern.upper()}2RGB"
        if hasattr(cv2, alias):
            assert getattr(cv2, alias) == getattr(cv2, name)


def test_bayer16_is_demosaiced_in_16_bits_then_scaled():
    """cv_bridge converts colour first, then depth: demosaicing the scaled 8-bit mosaic rounds
    differently, and this mosaic tells the two orders apart."""
    mosaic = np.random.default_rng(7).integers(0, 65536, (6, 8), dtype=np.uint16)
    want = _scale16(cv2.cvtColor(mosaic, cv2.COLOR_BayerBG2RGB))
    other_order = cv2.cvtColor(_scale16(mosaic), cv2.COLOR_BayerBG2RGB)
    assert not np.array_equal(want, other_order)
    for big_endian in (False, True):
        out = image_to_rgb(**_fields("bayer_rggb16", mosaic, 8, big_endian))
        np.testing.assert_array_equal(out, want)


# ---- 16-bit colour and mono ---------------------------------------------------------------


def test_mono16_scales_by_255_over_65535_rounded():
    values = np.array([[0, 128, 129, 257, 385, 386, 65279, 65535]], np.uint16)
    out = image_to_rgb(**_fields("mono16", values, 8))
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 1, 1, 1, 2, 254, 255])
    np.testing.assert_array_equal(out[:, :, 0], out[:, :, 1])
    np.testing.assert_array_equal(out[:, :, 0], out[:, :, 2])


def test_every_16_bit_value_scales_as_cv_bridge():
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    out = image_to_rgb(**_fields("mono16", values, 256))
    np.testing.assert_array_equal(out[:, :, 0], _scale16(values))


@pytest.mark.parametrize(
    "encoding", ["mono16", "rgb16", "bgr16", "rgba16", "bgra16", "bayer_grbg16"]
)
def test_big_and_little_endian_give_the_same_picture(encoding):
    channels = {"mono16": 1, "rgb16": 3, "bgr16": 3, "rgba16": 4, "bgra16": 4}.get(encoding, 1)
    samples = np.random.default_rng(3).integers(0, 65536, (4, 6 * channels), dtype=np.uint16)
    little = image_to_rgb(**_fields(encoding, samples, 6, big_endian=False))
    big = image_to_rgb(**_fields(encoding, samples, 6, big_endian=True))
    np.testing.assert_array_equal(little, big)


def test_is_bigendian_decides_which_byte_is_high():
    data = bytes([0xFF, 0x00])  # 0x00FF little-endian, 0xFF00 big-endian
    little = image_to_rgb("mono16", 1, 1, 2, data, is_bigendian=0)
    big = image_to_rgb("mono16", 1, 1, 2, data, is_bigendian=1)
    assert little[0, 0, 0] == 1  # 255 / 257
    assert big[0, 0, 0] == 254  # 65280 / 257


def test_bgr16_and_bgra16_swap_channels_of_known_pixel():
    blue = np.array([[65535, 0, 0]], np.uint16)  # B, G, R
    np.testing.assert_array_equal(image_to_rgb(**_fields("bgr16", blue, 1))[0, 0], [0, 0, 255])
    blue_a = np.array([[65535, 257, 0, 65535]], np.uint16)  # B, G, R, A
    np.testing.assert_array_equal(image_to_rgb(**_fields("bgra16", blue_a, 1))[0, 0], [0, 1, 255])
    red_a = np.array([[65535, 257, 0, 0]], np.uint16)  # R, G, B, A: alpha dropped
    np.testing.assert_array_equal(image_to_rgb(**_fields("rgba16", red_a, 1))[0, 0], [255, 1, 0])


@pytest.mark.parametrize("encoding", ["rgb16", "bgr16", "rgba16", "bgra16"])
@pytest.mark.parametrize("big_endian", [False, True])
def test_16_bit_colour_written_as_value_times_257_round_trips(encoding, big_endian):
    rgb = np.random.default_rng(5).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    fields = rgb_to_image_fields(rgb, encoding, row_padding=3, is_bigendian=big_endian)
    assert fields["is_bigendian"] == int(big_endian)
    np.testing.assert_array_equal(image_to_rgb(**fields), rgb)


# ---- YUV 4:2:2 ----------------------------------------------------------------------------


def _bt601_yuv(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    """Studio-range BT.601 Y, U, V of an RGB colour (the matrix OpenCV's YUV 4:2:2 decoder
    inverts)."""
    r, g, b = colour
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    u = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    v = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    return round(y), round(u), round(v)


YUV422 = ("yuv422", "uyvy", "yuv422_yuy2", "yuyv")
COLOURS = [(200, 90, 30), (20, 160, 220), (128, 128, 128), (250, 250, 10)]


def _yuv_frame(order: str) -> tuple[np.ndarray, np.ndarray]:
    """(packed 2x8 frame, its RGB): each colour fills one 2-pixel macropixel, so the 4:2:2
    chroma sharing loses nothing. ``order`` is the byte order of a macropixel, e.g. "UYVY"."""
    packed, rgb = [], []
    for colour in COLOURS:
        y, u, v = _bt601_yuv(colour)
        packed += [{"Y": y, "U": u, "V": v}[c] for c in order]
        rgb += [colour, colour]
    row = np.array(packed, np.uint8).reshape(1, 8, 2)
    return np.repeat(row, 2, axis=0), np.repeat(np.array([rgb], np.uint8), 2, axis=0)


@pytest.mark.parametrize(
    ("encoding", "order"),
    [("yuv422", "UYVY"), ("uyvy", "UYVY"), ("yuv422_yuy2", "YUYV"), ("yuyv", "YUYV")],
)
def test_yuv422_frame_from_known_colours_converts_back(encoding, order):
    frame, rgb = _yuv_frame(order)
    out = image_to_rgb(**_fields(encoding, frame, 8))
    assert out.shape == (2, 8, 3) and out.dtype == np.uint8
    np.testing.assert_allclose(out.astype(int), rgb.astype(int), atol=2)


def test_yuv422_is_uyvy_and_yuv422_yuy2_is_yuyv_as_cv_bridge_decodes_them():
    frame = np.random.default_rng(9).integers(0, 256, (3, 6, 2), dtype=np.uint8)
    np.testing.assert_array_equal(
        image_to_rgb(**_fields("yuv422", frame, 6)), cv2.cvtColor(frame, cv2.COLOR_YUV2RGB_UYVY)
    )
    np.testing.assert_array_equal(
        image_to_rgb(**_fields("yuv422_yuy2", frame, 6)),
        cv2.cvtColor(frame, cv2.COLOR_YUV2RGB_YUY2),
    )
    # The same bytes under the other name are another picture: the names are not swapped.
    uyvy, rgb = _yuv_frame("UYVY")
    wrong = image_to_rgb(**_fields("yuv422_yuy2", uyvy, 8))
    assert np.abs(wrong.astype(int) - rgb.astype(int)).max() > 40


@pytest.mark.parametrize("encoding", ["yuv422", "uyvy", "yuv422_yuy2", "yuyv"])
def test_yuv422_odd_width_is_refused_by_name(encoding):
    with pytest.raises(ImageConversionError, match="YUV 4:2:2 needs an even width"):
        image_to_rgb(encoding, 2, 3, 6, bytes(12))


# ---- sizes, padding, refusals -------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "row_bytes"),
    [("mono16", 10), ("rgb16", 30), ("rgba16", 40), ("bayer_rggb8", 5), ("bayer_gbrg16", 10)],
)
def test_step_below_width_times_pixel_bytes_is_refused(encoding, row_bytes):
    with pytest.raises(ImageConversionError, match=f"= {row_bytes} bytes for {encoding}"):
        image_to_rgb(encoding, 2, 5, row_bytes - 1, bytes(2 * (row_bytes - 1)))


def test_yuv422_step_counts_two_bytes_a_pixel():
    with pytest.raises(ImageConversionError, match="= 8 bytes for yuyv"):
        image_to_rgb("yuyv", 2, 4, 7, bytes(14))


@pytest.mark.parametrize("encoding", ["mono16", "bayer_bggr8", "yuv422", "bgra16"])
def test_truncated_and_oversized_data_are_refused(encoding):
    fields = rgb_to_image_fields(np.zeros((3, 4, 3), np.uint8), encoding)
    short = {**fields, "data": fields["data"][:-1]}
    with pytest.raises(ImageConversionError, match="truncated"):
        image_to_rgb(**short)
    long = {**fields, "data": fields["data"] + b"\0"}
    with pytest.raises(ImageConversionError, match="size mismatch"):
        image_to_rgb(**long)


@pytest.mark.parametrize("encoding", ["bayer_rggb16", "yuv422", "rgb16"])
def test_frames_over_the_side_limit_are_refused_before_reading(encoding):
    with pytest.raises(ImageTooLargeError, match=f"{encoding} image is 2x5000"):
        image_to_rgb(encoding, 5000, 2, 8, b"")


@pytest.mark.parametrize(
    "encoding", ["8UC1", "8UC3", "8UC4", "16UC1", "16SC1", "32FC1", "64FC1", "nv12", "nv21", "nv24"]
)
def test_encodings_cv_bridge_will_not_make_rgb8_are_refused_with_the_list(encoding):
    with pytest.raises(ImageConversionError, match="unsupported image encoding") as info:
        image_to_rgb(encoding, 2, 2, 8, bytes(16))
    assert "bayer_rggb8" in str(info.value) and "yuv422_yuy2" in str(info.value)


# ---- any supported encoding ---------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    encoding=st.sampled_from(SUPPORTED_ENCODINGS),
    height=st.integers(1, 7),
    half_width=st.integers(1, 6),
    odd=st.booleans(),
    padding=st.integers(0, 9),
    pad_bytes=st.tuples(st.integers(0, 255), st.integers(0, 255)),
    big_endian=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_any_encoding_size_and_padding_gives_hxwx3_uint8_without_reading_padding(
    encoding, height, half_width, odd, padding, pad_bytes, big_endian, seed
):
    width = 2 * half_width - (odd and encoding not in YUV422)
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    fields = rgb_to_image_fields(rgb, encoding, padding, is_bigendian=big_endian)
    row_bytes = fields["step"] - padding
    # The payload is any bytes, not only what an encoder writes.
    payload = np.random.default_rng(seed + 1).integers(0, 256, (height, row_bytes), np.uint8)
    outs = []
    for pad_byte in pad_bytes:
        rows = np.concatenate([payload, np.full((height, padding), pad_byte, np.uint8)], axis=1)
        outs.append(image_to_rgb(**{**fields, "data": rows.tobytes()}))
    unpadded = image_to_rgb(**{**fields, "step": row_bytes, "data": payload.tobytes()})
    for out in outs:
        assert out.shape == (height, width, 3) and out.dtype == np.uint8
        np.testing.assert_array_equal(out, unpadded)
