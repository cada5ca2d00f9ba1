"""Image / CompressedImage fields -> RGB arrays (issue 6), without ROS."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from molmoact2_policy import image_conversion
from molmoact2_policy.image_conversion import (
    ImageConversionError,
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


@pytest.mark.parametrize("encoding", ["16UC1", "32FC1", "yuv422", "bayer_rggb8", ""])
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


def test_builder_rejects_non_rgb_arrays():
    with pytest.raises(ImageConversionError, match="HxWx3 uint8"):
        rgb_to_image_fields(np.zeros((4, 4), np.uint8))
