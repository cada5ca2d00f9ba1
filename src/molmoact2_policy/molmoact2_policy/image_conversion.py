"""sensor_msgs Image / CompressedImage <-> HxWx3 uint8 RGB numpy arrays (no cv_bridge, no ROS).

The functions take the message *fields* (or any object carrying them), so they are testable and
usable without rclpy. Raw images are wrapped with ``np.frombuffer`` and a strided view that
skips row padding, so rgb8 and rgba8 cost no copy at all; encodings that need a different
channel order (bgr8, bgra8) or channel count (mono8) cost exactly one copy.

A compressed frame's size is read from its JPEG/PNG header before anything is decoded: a few
hundred bytes can declare a 20000x20000 frame, which OpenCV would allocate (1.2 GB) and fill
(seconds of CPU) for any publisher on the topic. Bytes that are not JPEG or PNG are refused
too, whatever the message's ``format`` says, because ``cv2.imdecode`` would otherwise sniff and
run any decoder it was built with (TIFF, EXR, WebP, ...) on them.
"""

from __future__ import annotations

import struct
from typing import Any

import cv2
import numpy as np

# encoding -> (channels, order of R, G, B in the source channels)
_COLOUR_ENCODINGS: dict[str, tuple[int, tuple[int, int, int]]] = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, (0, 0, 0)),
}
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_COLOUR_ENCODINGS)
SUPPORTED_COMPRESSED_FORMATS: tuple[str, ...] = ("jpeg", "png")
# OpenCV >= 4.10 decodes to RGB directly; older builds decode to BGR and convert.
_IMREAD_COLOR_RGB: int | None = getattr(cv2, "IMREAD_COLOR_RGB", None)
# The largest frame side accepted by default, raw or compressed: a 12 MP camera (4000x3000)
# fits; the model resizes every frame to a few hundred pixels anyway.
MAX_IMAGE_SIDE = 4096
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers carry the image size; C4 (DHT), C8 (JPG), CC (DAC) are not frames.
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Huffman-coded frames: baseline, extended, progressive, lossless (C5..C7, hierarchical, are
# not decoded by libjpeg at all).
_JPEG_HUFFMAN_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3})


class ImageConversionError(ValueError):
    """An image message that cannot be turned into an RGB array (the message says why)."""


class ImageTooLargeError(ImageConversionError):
    """A frame whose declared size exceeds the accepted side length (refused undecoded)."""


def check_image_side(height: int, width: int, max_side: int, what: str) -> None:
    """``ImageTooLargeError`` naming ``what`` when either side exceeds ``max_side``."""
    if max(height, width) > max_side:
        raise ImageTooLargeError(
            f"{what} is {width}x{height}, larger than {max_side} pixels per side"
        )


def image_to_rgb(
    encoding: str,
    height: int,
    width: int,
    step: int,
    data: Any,
    is_bigendian: int | bool = False,
    max_side: int = MAX_IMAGE_SIDE,
) -> np.ndarray:
    """Return an HxWx3 uint8 RGB array for raw image fields; a read-only view where possible.

    ``data`` is anything exposing the buffer protocol (bytes, array.array, numpy). Row padding
    (``step`` > width * channels) is honoured. ``is_bigendian`` is irrelevant for 8-bit
    encodings and accepted for completeness. Frames wider or taller than ``max_side`` raise
    ``ImageTooLargeError``.
    """
    del is_bigendian  # every supported encoding has 1-byte channels
    layout = _COLOUR_ENCODINGS.get(encoding)
    if layout is None:
        raise ImageConversionError(
            f"unsupported image encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}"
        )
    channels, rgb_order = layout
    height, width, step = int(height), int(width), int(step)
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"image has no pixels: {width}x{height}")
    check_image_side(height, width, max_side, f"{encoding} image")
    row_bytes = width * channels
    if step < row_bytes:
        raise ImageConversionError(
            f"step {step} is smaller than width {width} x {channels} channel(s) = {row_bytes} "
            f"bytes for {encoding}"
        )
    try:
        flat = np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError) as exc:
        raise ImageConversionError(f"image data is not a byte buffer: {exc}") from None
    expected = step * height
    if flat.size < expected:
        raise ImageConversionError(
            f"image data truncated: {flat.size} bytes, expected step {step} x height {height} "
            f"= {expected} for {width}x{height} {encoding}"
        )
    if flat.size > expected:
        raise ImageConversionError(
            f"image data size mismatch: {flat.size} bytes, expected step {step} x height "
            f"{height} = {expected} for {width}x{height} {encoding}"
        )
    # Strided view over the payload: rows `step` bytes apart, padding never read.
    pixels = np.lib.stride_tricks.as_strided(
        flat, shape=(height, width, channels), strides=(step, channels, 1), writeable=False
    )
    if channels == 1:
        return cv2.cvtColor(np.ascontiguousarray(pixels[:, :, 0]), cv2.COLOR_GRAY2RGB)
    if rgb_order == (0, 1, 2):
        return pixels[:, :, :3]
    return np.ascontiguousarray(pixels[:, :, 2::-1])


def image_msg_to_rgb(msg: Any) -> np.ndarray:
    """``image_to_rgb`` for a sensor_msgs/Image (or any object with its fields)."""
    return image_to_rgb(
        msg.encoding, msg.height, msg.width, msg.step, msg.data, getattr(msg, "is_bigendian", 0)
    )


def _compressed_kind(fmt: str) -> str | None:
    # ROS image_transport writes e.g. "rgb8; jpeg compressed bgr8"; bare "jpeg"/"png" also occur.
    lowered = fmt.lower()
    if "jpeg" in lowered or "jpg" in lowered:
        return "jpeg"
    if "png" in lowered:
        return "png"
    return None


def compressed_image_size(data: Any) -> tuple[int, int] | None:
    """(height, width) from a JPEG or PNG header, or None when the bytes are neither.

    Reads only the header (PNG's IHDR; the first JPEG start-of-frame before the scan), the same
    one the decoder uses: libjpeg refuses a second frame header and PNG's IHDR must come first.
    """
    data = memoryview(data).cast("B")
    if data[:8] == _PNG_SIGNATURE and len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return int(height), int(width)
    frame = _jpeg_frame(data)
    return None if frame is None else frame[1:]


def _jpeg_frame(data: memoryview) -> tuple[int, int, int] | None:
    """(start-of-frame marker, height, width) of a JPEG, or None when the bytes are not one."""
    if data[:2] != b"\xff\xd8":
        return None
    index = 2
    while index + 4 <= len(data):
        if data[index] != 0xFF:
            return None
        marker = data[index + 1]
        if marker == 0xFF:  # fill byte before a marker
            index += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length field
            index += 2
            continue
        if marker == 0xDA:  # start of scan: no frame header before it
            return None
        (segment_length,) = struct.unpack(">H", data[index + 2 : index + 4])
        if marker in _JPEG_SOF_MARKERS:
            if index + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[index + 5 : index + 9])
            return int(marker), int(height), int(width)
        index += 2 + segment_length
    return None


def _jpeg_too_short(data: memoryview) -> str:
    """Why a Huffman-coded JPEG's bytes cannot hold the frame its header declares ('' if they
    can). Every 8x8 block of its full-resolution component costs at least one bit (its DC
    code), so fewer bytes than blocks / 8 is a truncated or forged frame, which libjpeg would
    otherwise "decode" into a mid-grey picture (premature end of data, a warning only): 631
    bytes declaring 4000x4000 came out as a 48 MB grey frame in 0.17 s. Arithmetic-coded
    JPEGs (SOF9..SOF15) can code a flat block in less than a bit and are not judged."""
    frame = _jpeg_frame(data)
    if frame is None or frame[0] not in _JPEG_HUFFMAN_SOF_MARKERS:
        return ""
    _, height, width = frame
    blocks = -(-height // 8) * -(-width // 8)
    needed = -(-blocks // 8)
    if len(data) < needed:
        return (
            f"{len(data)} bytes cannot hold the {width}x{height} JPEG its header declares "
            f"(at least {needed}: one bit per 8x8 block); truncated or forged"
        )
    return ""


def compressed_to_rgb(fmt: str, data: Any, max_side: int = MAX_IMAGE_SIDE) -> np.ndarray:
    """Decode CompressedImage fields (``format`` jpeg or png) into an HxWx3 uint8 RGB array.

    See ``decode_compressed`` for what the bytes must be.
    """
    if "compresseddepth" in fmt.lower():
        # compressed_depth_image_transport: "<encoding>; compressedDepth png|rvl", its payload
        # behind a 12-byte header (ConfigHeader). A depth topic wired to a colour camera input
        # would otherwise read "no JPEG or PNG header", which hides the wiring mistake.
        raise ImageConversionError(
            f"compressed image format {fmt!r} is a depth stream (compressedDepth transport), "
            "not a colour camera; check the camera topic"
        )
    if _compressed_kind(fmt) is None:
        raise ImageConversionError(
            f"unsupported compressed image format {fmt!r}; supported: "
            f"{', '.join(SUPPORTED_COMPRESSED_FORMATS)}"
        )
    return decode_compressed(data, max_side, what=f"compressed image ({fmt})")


def decode_compressed(
    data: Any, max_side: int = MAX_IMAGE_SIDE, what: str = "compressed image"
) -> np.ndarray:
    """JPEG or PNG bytes -> HxWx3 uint8 RGB; ``what`` names the frame in errors.

    The header must declare at most ``max_side`` pixels per side (``ImageTooLargeError``
    otherwise, raised before any decoding); anything else that is not a decodable JPEG or PNG
    raises ``ImageConversionError``.
    """
    try:
        buffer = np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError) as exc:
        raise ImageConversionError(f"{what}: data is not a byte buffer: {exc}") from None
    if buffer.size == 0:
        raise ImageConversionError(f"{what} has no data")
    size = compressed_image_size(buffer)
    if size is None:
        raise ImageConversionError(
            f"{what} could not be decoded: {buffer.size} bytes starting "
            f"{buffer[:4].tobytes().hex()} have no JPEG or PNG header"
        )
    check_image_side(*size, max_side, what)
    too_short = _jpeg_too_short(memoryview(buffer))
    if too_short:
        raise ImageConversionError(f"{what}: {too_short}")
    if _IMREAD_COLOR_RGB is not None:
        # Decoded straight into RGB order: no second pass over the frame (the policy node
        # decodes every camera frame on its input path).
        rgb = cv2.imdecode(buffer, _IMREAD_COLOR_RGB)
    else:
        bgr = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
        rgb = None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if rgb is None:
        raise ImageConversionError(f"{what}, {buffer.size} bytes, could not be decoded")
    return rgb


def compressed_msg_to_rgb(msg: Any) -> np.ndarray:
    """``compressed_to_rgb`` for a sensor_msgs/CompressedImage (or any object with its fields)."""
    return compressed_to_rgb(msg.format, msg.data)


def rgb_to_image_fields(
    rgb: np.ndarray, encoding: str = "rgb8", row_padding: int = 0
) -> dict[str, Any]:
    """Raw Image fields for an HxWx3 uint8 RGB array in ``encoding``, rows padded by N bytes."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageConversionError(
            f"expected an HxWx3 uint8 RGB array, got {rgb.dtype} {rgb.shape}"
        )
    if encoding == "rgb8":
        pixels = rgb
    elif encoding == "bgr8":
        pixels = rgb[:, :, ::-1]
    elif encoding == "rgba8":
        pixels = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 255, np.uint8)], axis=2)
    elif encoding == "bgra8":
        pixels = np.concatenate(
            [rgb[:, :, ::-1], np.full((*rgb.shape[:2], 1), 255, np.uint8)], axis=2
        )
    elif encoding == "mono8":
        pixels = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)[:, :, None]
    else:
        raise ImageConversionError(
            f"unsupported image encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}"
        )
    height, width, channels = pixels.shape
    if row_padding:
        pixels = np.concatenate(
            [pixels.reshape(height, width * channels), np.zeros((height, row_padding), np.uint8)],
            axis=1,
        )
    data = np.ascontiguousarray(pixels).tobytes()
    return {
        "encoding": encoding,
        "height": height,
        "width": width,
        "step": width * channels + row_padding,
        "data": data,
        "is_bigendian": 0,
    }


def encode_compressed(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90) -> bytes:
    """Encode an HxWx3 uint8 RGB array as jpeg or png bytes (for tests, sim and remote)."""
    kind = _compressed_kind(fmt)
    if kind is None:
        raise ImageConversionError(f"unsupported compressed image format {fmt!r}")
    bgr = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if kind == "jpeg" else []
    ok, encoded = cv2.imencode(".jpg" if kind == "jpeg" else ".png", bgr, params)
    if not ok:
        raise ImageConversionError(f"could not encode image as {kind}")
    return encoded.tobytes()


def make_image_msg(
    rgb: np.ndarray,
    *,
    stamp: Any = None,
    frame_id: str = "",
    encoding: str = "rgb8",
    row_padding: int = 0,
) -> Any:
    """A sensor_msgs/Image holding ``rgb`` (imports the message type only when called)."""
    from sensor_msgs.msg import Image

    msg = Image()
    for key, value in rgb_to_image_fields(rgb, encoding, row_padding).items():
        setattr(msg, key, value)
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    return msg


def make_compressed_msg(
    rgb: np.ndarray, *, stamp: Any = None, frame_id: str = "", fmt: str = "jpeg", quality: int = 90
) -> Any:
    """A sensor_msgs/CompressedImage holding ``rgb`` encoded as ``fmt``."""
    from sensor_msgs.msg import CompressedImage

    msg = CompressedImage()
    msg.format = fmt
    msg.data = encode_compressed(rgb, fmt, quality)
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    return msg
