"""Image / CompressedImage fields -> RGB arrays (issue 6), without ROS."""

from __future__ import annotations

import struct
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from molmoact2_policy import image_conversion
from molmoact2_policy.image_conversion import (
    MAX_IMAGE_SIDE,
    ImageConversionError,
    ImageTooLargeError,
    compressed_image_size,
    compressed_msg_to_rgb,
    compressed_to_rgb,
    encode_compressed,
    image_msg_to_rgb,
    image_to_rgb,
    rgb_to_image_fields,
)


def _rgb(height: int = 12, width: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
@pytest.mark.parametrize("row_padding", [0, 5])
def test_colour_encodings_round_trip_with_and_without_row_padding(encoding, row_padding):
    rgb = _rgb()
    fields = rgb_to_image_fields(rgb, encoding, row_padding)
    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4}[encoding]
    assert fields["step"] == rgb.shape[1] * channels + row_padding
    out = image_to_rgb(**fields)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, rgb)


@settings(max_examples=200, deadline=None)
@given(
    encoding=st.sampled_from(["rgb8", "bgr8", "rgba8", "bgra8", "mono8"]),
    height=st.integers(1, 9),
    width=st.integers(1, 13),
    padding=st.integers(0, 11),
    pad_byte=st.integers(0, 255),
    seed=st.integers(0, 2**16),
)
def test_any_row_padding_is_skipped_whatever_it_holds(
    encoding, height, width, padding, pad_byte, seed
):
    """For any supported encoding, size and padding (odd widths, padding not a multiple of the
    pixel size, any pad content), the result is the picture without the padding."""
    rgb = _rgb(height, width, seed)
    fields = rgb_to_image_fields(rgb, encoding, padding)
    rows = np.frombuffer(fields["data"], np.uint8).reshape(height, fields["step"]).copy()
    rows[:, fields["step"] - padding :] = pad_byte
    fields["data"] = rows.tobytes()
    want = image_to_rgb(**rgb_to_image_fields(rgb, encoding))  # the same picture, unpadded
    np.testing.assert_array_equal(image_to_rgb(**fields), want)
    if encoding != "mono8":
        np.testing.assert_array_equal(want, rgb)


def test_bgr8_swaps_channels_of_known_pixel():
    # One blue pixel in BGR order must come out as blue in RGB order.
    data = bytes([255, 0, 0] * 4)
    out = image_to_rgb("bgr8", 2, 2, 6, data)
    np.testing.assert_array_equal(out[0, 0], [0, 0, 255])


def test_mono8_becomes_three_equal_channels_and_honours_padding():
    grey = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    padded = np.concatenate([grey, np.full((12, 3), 77, np.uint8)], axis=1)
    out = image_to_rgb("mono8", 12, 10, 13, padded.tobytes())
    assert out.shape == (12, 10, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[:, :, channel], grey)


def test_rgb8_is_a_zero_copy_view_even_with_padding():
    rgb = _rgb()
    fields = rgb_to_image_fields(rgb, "rgb8", row_padding=4)
    buffer = bytearray(fields["data"])
    fields["data"] = buffer
    out = image_to_rgb(**fields)
    assert np.shares_memory(out, np.frombuffer(buffer, np.uint8))
    assert not out.flags.writeable


def test_accepts_array_array_data_like_rclpy():
    import array

    rgb = _rgb()
    fields = rgb_to_image_fields(rgb, "rgb8")
    msg = SimpleNamespace(**{**fields, "data": array.array("B", fields["data"])})
    np.testing.assert_array_equal(image_msg_to_rgb(msg), rgb)


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1", "nv12", "8UC3", ""])
def test_unknown_encoding_is_rejected_by_name(encoding):
    with pytest.raises(ImageConversionError, match="unsupported image encoding"):
        image_to_rgb(encoding, 2, 2, 4, bytes(8))


def test_truncated_data_is_rejected():
    fields = rgb_to_image_fields(_rgb(), "rgb8")
    fields["data"] = fields["data"][:-7]
    with pytest.raises(ImageConversionError, match="truncated"):
        image_to_rgb(**fields)


def test_size_mismatch_is_rejected():
    fields = rgb_to_image_fields(_rgb(), "rgb8")
    fields["data"] = fields["data"] + bytes(30)
    with pytest.raises(ImageConversionError, match="size mismatch"):
        image_to_rgb(**fields)


def test_step_smaller_than_row_is_rejected():
    with pytest.raises(ImageConversionError, match="step 20 is smaller"):
        image_to_rgb("rgb8", 4, 10, 20, bytes(80))


def test_zero_sized_image_is_rejected():
    with pytest.raises(ImageConversionError, match="no pixels"):
        image_to_rgb("rgb8", 0, 10, 30, b"")


def test_png_round_trip_is_lossless():
    rgb = _rgb(16, 20)
    out = compressed_to_rgb("png", encode_compressed(rgb, "png"))
    np.testing.assert_array_equal(out, rgb)


def test_jpeg_decodes_close_to_the_source_in_rgb_order():
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[:, :, 0] = 200  # strongly red: a channel swap would be obvious
    rgb[:, :, 2] = 30
    msg = SimpleNamespace(format="rgb8; jpeg compressed bgr8", data=encode_compressed(rgb, "jpeg"))
    out = compressed_msg_to_rgb(msg)
    assert out.shape == rgb.shape
    assert np.abs(out.astype(int) - rgb.astype(int)).max() <= 8


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_direct_rgb_decoding_equals_the_bgr_decode_and_swap(fmt, monkeypatch):
    rgb = _rgb(24, 40, seed=3)
    data = encode_compressed(rgb, fmt)
    direct = compressed_to_rgb(fmt, data)
    monkeypatch.setattr(image_conversion, "_IMREAD_COLOR_RGB", None)  # OpenCV < 4.10 path
    np.testing.assert_array_equal(compressed_to_rgb(fmt, data), direct)
    with pytest.raises(ImageConversionError, match="could not be decoded"):
        compressed_to_rgb(fmt, b"\x89PNG not really")


def test_undecodable_compressed_data_is_rejected():
    with pytest.raises(ImageConversionError, match="could not be decoded"):
        compressed_to_rgb("jpeg", b"\xff\xd8 definitely not a jpeg")


def test_unknown_compressed_format_is_rejected():
    with pytest.raises(ImageConversionError, match="unsupported compressed image format"):
        compressed_to_rgb("theora", b"abc")


def test_empty_compressed_data_is_rejected():
    with pytest.raises(ImageConversionError, match="no data"):
        compressed_to_rgb("png", b"")


# Format strings as compressed_image_transport writes them: "<encoding>; <jpeg|png> compressed
# <bgr8|bgr16|>" (image_transport_plugins compressed_publisher.cpp), bare ones from other tools.
@pytest.mark.parametrize(
    "fmt",
    [
        "jpeg",
        "png",
        "rgb8; jpeg compressed bgr8",
        "bgr8; png compressed bgr8",
        "mono8; jpeg compressed ",
        "rgb16; png compressed bgr16",
    ],
)
def test_image_transport_format_strings_decode(fmt):
    rgb = np.random.default_rng(3).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    kind = "png" if "png" in fmt else "jpeg"
    decoded = compressed_to_rgb(fmt, encode_compressed(rgb, kind))
    assert decoded.shape == rgb.shape
    if kind == "png":
        assert np.array_equal(decoded, rgb)


@pytest.mark.parametrize("payload", ["transport", "bare_png"])
@pytest.mark.parametrize("fmt", ["16UC1; compressedDepth png", "32FC1; compressedDepth rvl"])
def test_a_compressed_depth_stream_is_refused_as_depth(fmt, payload):
    """compressed_depth_image_transport writes "<encoding>; compressedDepth png|rvl" and a
    12-byte header before the payload. Its PNG flavour with the payload at offset 0 used to be
    decoded as a grey camera frame; with the header it was refused as "no JPEG or PNG header"."""
    depth = (np.arange(16 * 24, dtype=np.uint16).reshape(16, 24) * 50)
    png = cv2.imencode(".png", depth)[1].tobytes()
    data = png if payload == "bare_png" else struct.pack("<iff", 0, 0.0, 0.0) + png
    with pytest.raises(ImageConversionError, match="is a depth stream"):
        compressed_to_rgb(fmt, data)


def _forged_jpeg(side: int) -> bytes:
    """A valid 8x8 JPEG whose frame header claims ``side`` x ``side`` (about 630 bytes)."""
    data = bytearray(cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", side, side)
    return bytes(data)


@pytest.mark.parametrize("side", [1000, 4000, 4096])
def test_a_jpeg_too_short_for_its_declared_size_is_refused_not_decoded_grey(side):
    """Under the side limit libjpeg "decoded" 631 bytes declaring 4000x4000 into a 48 MB
    mid-grey frame (premature end of data: a warning), which reached the model as a picture."""
    with pytest.raises(ImageConversionError, match=r"cannot hold the .* JPEG its header declares"):
        compressed_to_rgb("jpeg", _forged_jpeg(side))


@pytest.mark.parametrize("progressive", [0, 1])
@pytest.mark.parametrize("shape", [(4096, 4096), (480, 640, 3), (9, 17)])
def test_the_flattest_real_jpegs_pass_the_length_check(shape, progressive):
    """A flat frame is the smallest JPEG of its size (about 2 bits per block progressive grey,
    twice the bound)."""
    flat = np.full(shape, 77, np.uint8)
    data = cv2.imencode(".jpg", flat, [cv2.IMWRITE_JPEG_PROGRESSIVE, progressive])[1].tobytes()
    decoded = compressed_to_rgb("jpeg", data)
    assert decoded.shape[:2] == shape[:2] and abs(float(decoded.mean()) - 77) < 2


def test_builder_rejects_non_rgb_arrays():
    with pytest.raises(ImageConversionError, match="HxWx3 uint8"):
        rgb_to_image_fields(np.zeros((4, 4), np.uint8))


# ---- hostile compressed frames: sizes from the header, before any decoding -----------------


def _with_declared_size(data: bytes, height: int, width: int) -> bytes:
    """``data`` (a JPEG or PNG) with its header claiming ``height`` x ``width``."""
    out = bytearray(data)
    if out[:2] == b"\xff\xd8":
        sof = out.index(b"\xff\xc0")  # cv2 writes baseline JPEGs
        out[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    else:
        out[16:24] = struct.pack(">II", width, height)  # PNG IHDR (its CRC is not checked first)
    return bytes(out)


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_the_header_size_is_the_decoded_size(fmt):
    data = encode_compressed(_rgb(24, 40), fmt)
    assert compressed_image_size(data) == (24, 40)
    assert compressed_to_rgb(fmt, data).shape == (24, 40, 3)


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_a_frame_declaring_gigabytes_is_refused_without_decoding(fmt, monkeypatch):
    # A few hundred bytes that declare 20000x20000: cv2 would allocate 1.2 GB and spend
    # seconds filling it (measured: 11 s for the JPEG) for every such message.
    bomb = _with_declared_size(encode_compressed(_rgb(16, 16), fmt), 20000, 20000)
    assert len(bomb) < 2000

    def no_decoding(*_args):
        raise AssertionError("the decoder ran on a frame that should have been refused")

    monkeypatch.setattr(image_conversion.cv2, "imdecode", no_decoding)
    monkeypatch.setattr(image_conversion.simplejpeg, "decode_jpeg", no_decoding)
    with pytest.raises(ImageTooLargeError, match=r"20000x20000, larger than 4096 pixels"):
        compressed_to_rgb(fmt, bomb)


def test_the_side_limit_is_per_call_and_counts_both_sides():
    wide = encode_compressed(_rgb(8, 65), "png")
    with pytest.raises(ImageTooLargeError, match="65x8"):
        compressed_to_rgb("png", wide, max_side=64)
    assert compressed_to_rgb("png", wide, max_side=65).shape == (8, 65, 3)
    tall = encode_compressed(_rgb(65, 8), "jpeg")
    with pytest.raises(ImageTooLargeError, match="8x65"):
        compressed_to_rgb("jpeg", tall, max_side=64)


@pytest.mark.parametrize("extension", [".bmp", ".tiff", ".ppm"])
def test_other_image_formats_are_refused_whatever_the_format_field_says(extension):
    # cv2.imdecode sniffs the bytes and would decode these happily, as any format it has.
    _ok, data = cv2.imencode(extension, _rgb(8, 8))
    with pytest.raises(ImageConversionError, match="no JPEG or PNG header"):
        compressed_to_rgb("jpeg", data.tobytes())


@pytest.mark.parametrize("rgb_decoder", [True, False])
def test_a_valid_header_over_a_broken_body_is_an_error(rgb_decoder, monkeypatch):
    data = encode_compressed(_rgb(16, 16), "jpeg")
    header_only = data[: data.index(b"\xff\xc0") + 19]  # SOF, then nothing to decode
    if not rgb_decoder:
        monkeypatch.setattr(image_conversion, "_IMREAD_COLOR_RGB", None)  # OpenCV < 4.10
    with pytest.raises(ImageConversionError, match="could not be decoded"):
        compressed_to_rgb("jpeg", header_only)


def test_raw_frames_beyond_the_side_limit_are_refused():
    with pytest.raises(ImageTooLargeError, match="mono8 image is 1x5000"):
        image_to_rgb("mono8", 5000, 1, 1, bytes(5000))
    assert image_to_rgb("mono8", 5000, 1, 1, bytes(5000), max_side=5000).shape == (5000, 1, 3)
    assert MAX_IMAGE_SIDE >= 4000  # a 12 MP (4000x3000) camera frame is accepted


_SMALL_JPEG = encode_compressed(_rgb(16, 24, seed=5), "jpeg")
_SMALL_PNG = encode_compressed(_rgb(16, 24, seed=6), "png")


@settings(
    max_examples=300, derandomize=True, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    base=st.sampled_from([_SMALL_JPEG, _SMALL_PNG]),
    edits=st.lists(
        st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=8
    ),
    cut=st.integers(0, 2000),
    max_side=st.integers(1, 64),
)
def test_any_mutated_frame_decodes_within_the_limit_or_is_an_error(base, edits, cut, max_side):
    """Whatever the bytes, the decoder never returns a frame larger than the header check let
    through: the size read from the header is the size the decoder uses."""
    data = bytearray(base)
    for index, value in edits:
        if index < len(data):
            data[index] = value
    data = bytes(data[: max(cut, 1)])
    try:
        out = compressed_to_rgb("jpeg", data, max_side=max_side)
    except ImageConversionError:
        return
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    assert max(out.shape[:2]) <= max_side
    assert out.shape[:2] == compressed_image_size(data)


def _png_with_exif_orientation(rgb: np.ndarray, orientation: int) -> bytes:
    """A PNG of ``rgb`` with an eXIf chunk (after IHDR) stating ``orientation`` (1..8)."""
    import zlib

    png = encode_compressed(rgb, "png")
    tiff = b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHII", 0x0112, 3, 1, orientation)
    tiff += struct.pack("<I", 0)
    chunk = b"eXIf" + tiff
    chunk = struct.pack(">I", len(tiff)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    ihdr_end = 8 + 25  # signature, then IHDR (length, type, 13 bytes, CRC)
    return png[:ihdr_end] + chunk + png[ihdr_end:]


@pytest.mark.parametrize("rgb_decoder", [True, False])
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_a_png_exif_orientation_is_not_applied(orientation, rgb_decoder, monkeypatch):
    # OpenCV's IMREAD_COLOR turned such a 24x40 frame into 40x24: another picture and another
    # size than its header (and image_transport, and the JPEG path) give.
    if not rgb_decoder:
        monkeypatch.setattr(image_conversion, "_IMREAD_COLOR_RGB", None)  # OpenCV < 4.10
    rgb = _rgb(24, 40)
    data = _png_with_exif_orientation(rgb, orientation)
    assert compressed_image_size(data) == (24, 40)
    np.testing.assert_array_equal(compressed_to_rgb("png", data), rgb)


def test_pixels_of_another_size_than_the_header_declares_are_refused(monkeypatch):
    data = encode_compressed(_rgb(24, 40), "png")
    turned = np.zeros((40, 24, 3), np.uint8)
    monkeypatch.setattr(image_conversion.cv2, "imdecode", lambda *_: turned)
    with pytest.raises(ImageConversionError, match=r"decoded to 24x40, but .* declares 40x24"):
        compressed_to_rgb("png", data)
