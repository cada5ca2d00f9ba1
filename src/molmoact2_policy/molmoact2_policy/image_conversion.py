"""sensor_msgs Image / CompressedImage <-> HxWx3 uint8 RGB numpy arrays (no cv_bridge, no ROS).

The functions take the message *fields* (or any object carrying them), so they are testable and
usable without rclpy. Raw images are wrapped with ``np.frombuffer`` and a strided view that
skips row padding, so rgb8 and rgba8 cost no copy at all; encodings that need a different
channel order (bgr8, bgra8) or channel count (mono8) cost exactly one copy.

Camera encodings (Bayer, YUV 4:2:2, 16-bit colour and mono) come out as cv_bridge gives them
for ``rgb8`` (``toCvCopy(msg, "rgb8")``): the same OpenCV conversion codes (cv_bridge's
``getConversionCodes`` table), 16-bit samples scaled by 255/65535 as its ``convertTo``, after
the colour conversion as cv_bridge orders them, and 16-bit data byte-swapped when the
message's ``is_bigendian`` differs from this host. Encodings cv_bridge will not turn into
rgb8 (the generic ``8UC3``/``16UC1``/``32FC1``... types, which carry no colour meaning, and the
planar nv12/nv21/nv24) are refused with the supported list; ``SUPPORTED_ENCODINGS`` is that
list.

A compressed frame's size is read from its JPEG/PNG header before anything is decoded: a few
hundred bytes can declare a 20000x20000 frame, which OpenCV would allocate (1.2 GB) and fill
(seconds of CPU) for any publisher on the topic. Bytes that are not JPEG or PNG are refused
too, whatever the message's ``format`` says, because ``cv2.imdecode`` would otherwise sniff and
run any decoder it was built with (TIFF, EXR, WebP, ...) on them.

JPEGs are decoded by libjpeg-turbo through ``simplejpeg`` in strict mode, which turns libjpeg's
"corrupt data" warnings into errors: ``cv2.imdecode`` and PIL only print them and return the
frame, so a JPEG cut mid-scan and closed with an end marker came out with its lower part grey
(400 of 400 such 640x480 frames accepted, mean error up to 59 grey levels) and a corrupted scan
came out garbled. The pixels of an intact JPEG are the same as OpenCV's (same library, same IDCT and
upsampling), and it costs no more (bench/jpeg_integrity.py). JPEG has no checksum: corruption
that leaves the scan's length consistent is not noticed by any decoder. PNG needs nothing extra:
libpng checks every chunk's CRC and the stream's end, and OpenCV refuses what fails.

Neither path applies an EXIF orientation (JPEG APP1, PNG eXIf), as image_transport's decoder
does not: a frame comes out at the size its header declares, pixels as the sensor wrote them.
"""

from __future__ import annotations

import struct
import sys
from typing import Any

import cv2
import numpy as np
import simplejpeg

# encoding -> (channels, order of R, G, B in the source channels): the 8-bit colour encodings
# that are R, G, B channels already, converted without OpenCV (rgb8 and rgba8 without a copy).
_COLOUR_ENCODINGS: dict[str, tuple[int, tuple[int, int, int]]] = {
    "rgb8": (3, (0, 1, 2)),
    "bgr8": (3, (2, 1, 0)),
    "rgba8": (4, (0, 1, 2)),
    "bgra8": (4, (2, 1, 0)),
    "mono8": (1, (0, 0, 0)),
}
# 16-bit colour and mono: the 8-bit encoding their samples become after scaling.
_WIDE_ENCODINGS: dict[str, str] = {
    "rgb16": "rgb8",
    "bgr16": "bgr8",
    "rgba16": "rgba8",
    "bgra16": "bgra8",
    "mono16": "mono8",
}
# Camera encodings -> (channels, bytes per sample, cv2 code to RGB), the codes cv_bridge's
# getConversionCodes maps them to for rgb8. OpenCV names a Bayer pattern after the pixels at
# (1,1) and (1,2), ROS after (0,0) and (0,1), so ROS rggb is OpenCV's BayerBG, and so on.
_CAMERA_ENCODINGS: dict[str, tuple[int, int, int]] = {
    "bayer_rggb8": (1, 1, cv2.COLOR_BayerBG2RGB),
    "bayer_bggr8": (1, 1, cv2.COLOR_BayerRG2RGB),
    "bayer_gbrg8": (1, 1, cv2.COLOR_BayerGR2RGB),
    "bayer_grbg8": (1, 1, cv2.COLOR_BayerGB2RGB),
    "bayer_rggb16": (1, 2, cv2.COLOR_BayerBG2RGB),
    "bayer_bggr16": (1, 2, cv2.COLOR_BayerRG2RGB),
    "bayer_gbrg16": (1, 2, cv2.COLOR_BayerGR2RGB),
    "bayer_grbg16": (1, 2, cv2.COLOR_BayerGB2RGB),
    # sensor_msgs image_encodings.hpp: yuv422 is fourcc UYVY (uyvy its newer name),
    # yuv422_yuy2 is fourcc YUYV (yuyv its newer name).
    "yuv422": (2, 1, cv2.COLOR_YUV2RGB_UYVY),
    "uyvy": (2, 1, cv2.COLOR_YUV2RGB_UYVY),
    "yuv422_yuy2": (2, 1, cv2.COLOR_YUV2RGB_YUY2),
    "yuyv": (2, 1, cv2.COLOR_YUV2RGB_YUY2),
}
_YUV422_ENCODINGS = frozenset(("yuv422", "uyvy", "yuv422_yuy2", "yuyv"))
SUPPORTED_ENCODINGS: tuple[str, ...] = (
    *_COLOUR_ENCODINGS,
    *_WIDE_ENCODINGS,
    *_CAMERA_ENCODINGS,
)
# cv_bridge's convertTo alpha for 16 -> 8 bits: v * 255/65535 = v/257, rounded to nearest.
_SCALE_16_TO_8 = 255.0 / 65535.0
_HOST_IS_BIG_ENDIAN = sys.byteorder == "big"
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


def _unsupported(encoding: str) -> ImageConversionError:
    return ImageConversionError(
        f"unsupported image encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}"
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
    (``step`` > width * bytes per pixel) is honoured and never read. ``is_bigendian`` gives the
    byte order of 16-bit samples (irrelevant for 8-bit encodings). Encodings other than the
    8-bit RGB ones come out as cv_bridge converts them to rgb8 (see the module docstring).
    Frames wider or taller than ``max_side`` raise ``ImageTooLargeError``.
    """
    layout = _COLOUR_ENCODINGS.get(encoding)
    if layout is not None:
        channels, sample_bytes, code = layout[0], 1, None
    elif encoding in _WIDE_ENCODINGS:
        channels, sample_bytes, code = _COLOUR_ENCODINGS[_WIDE_ENCODINGS[encoding]][0], 2, None
    elif encoding in _CAMERA_ENCODINGS:
        channels, sample_bytes, code = _CAMERA_ENCODINGS[encoding]
    else:
        raise _unsupported(encoding)
    height, width, step = int(height), int(width), int(step)
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"image has no pixels: {width}x{height}")
    check_image_side(height, width, max_side, f"{encoding} image")
    if encoding in _YUV422_ENCODINGS and width % 2:
        # Two pixels share one U and one V sample: an odd width has half a macropixel.
        raise ImageConversionError(
            f"{encoding} image is {width}x{height}: YUV 4:2:2 needs an even width"
        )
    row_bytes = width * channels * sample_bytes
    if step < row_bytes:
        per_sample = f" x {sample_bytes} bytes" if sample_bytes > 1 else ""
        raise ImageConversionError(
            f"step {step} is smaller than width {width} x {channels} channel(s){per_sample} = "
            f"{row_bytes} bytes for {encoding}"
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
    if sample_bytes == 1 and code is None:
        # Strided view over the payload: rows `step` bytes apart, padding never read.
        pixels = np.lib.stride_tricks.as_strided(
            flat, shape=(height, width, channels), strides=(step, channels, 1), writeable=False
        )
        return _colour_to_rgb(pixels, layout[1])
    rows = np.lib.stride_tricks.as_strided(
        flat, shape=(height, row_bytes), strides=(step, 1), writeable=False
    )
    try:
        return _camera_to_rgb(encoding, rows, width, channels, sample_bytes, code, is_bigendian)
    except cv2.error as exc:
        message = str(exc).strip().splitlines()[-1]
        raise ImageConversionError(
            f"{width}x{height} {encoding} image could not be converted: {message}"
        ) from None


def _colour_to_rgb(pixels: np.ndarray, rgb_order: tuple[int, int, int]) -> np.ndarray:
    """HxWxC uint8 rgb8/bgr8/rgba8/bgra8/mono8 pixels -> RGB (a view for rgb8 and rgba8)."""
    if pixels.shape[2] == 1:
        return cv2.cvtColor(np.ascontiguousarray(pixels[:, :, 0]), cv2.COLOR_GRAY2RGB)
    if rgb_order == (0, 1, 2):
        return pixels[:, :, :3]
    # OpenCV reads the strided rows directly; numpy's reversed-channel copy was 60-100x slower
    # (10 ms vs 0.15 ms for a 1920x1080 bgr8 frame).
    code = cv2.COLOR_BGR2RGB if pixels.shape[2] == 3 else cv2.COLOR_BGRA2RGB
    return cv2.cvtColor(pixels, code)


def _camera_to_rgb(
    encoding: str,
    rows: np.ndarray,
    width: int,
    channels: int,
    sample_bytes: int,
    code: int | None,
    is_bigendian: int | bool,
) -> np.ndarray:
    """16-bit, Bayer or YUV rows (HxB uint8, padding cut off) -> RGB as cv_bridge makes rgb8."""
    height = rows.shape[0]
    samples = np.ascontiguousarray(rows)  # one copy when rows are padded; OpenCV wants rows whole
    if sample_bytes == 2:
        wire = np.dtype(">u2" if is_bigendian else "<u2")
        samples = samples.view(wire)
        if bool(is_bigendian) != _HOST_IS_BIG_ENDIAN:
            samples = samples.astype(np.uint16)  # byte-swapped into host order
    shape = (height, width) if channels == 1 else (height, width, channels)
    samples = samples.reshape(shape)
    if code is None:
        # rgb16/bgr16/rgba16/bgra16/mono16: cv_bridge converts the channels, then scales; the
        # channel steps only move samples, so scaling first gives the same bytes and scales no
        # more samples (a third of them for mono16).
        scaled = cv2.convertScaleAbs(samples, alpha=_SCALE_16_TO_8)
        if channels == 1:
            scaled = scaled[:, :, None]
        return _colour_to_rgb(scaled, _COLOUR_ENCODINGS[_WIDE_ENCODINGS[encoding]][1])
    rgb = cv2.cvtColor(samples, code)
    if sample_bytes == 2:
        # Bayer 16: demosaiced in 16 bits first, as cv_bridge does (its interpolation rounds
        # differently from demosaicing the scaled 8-bit mosaic).
        rgb = cv2.convertScaleAbs(rgb, alpha=_SCALE_16_TO_8)
    return rgb


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
    is_jpeg = buffer[:2].tobytes() == b"\xff\xd8"
    rgb = _decode_jpeg(buffer, what) if is_jpeg else _decode_png(buffer)
    if rgb is None:
        raise ImageConversionError(f"{what}, {buffer.size} bytes, could not be decoded")
    if rgb.shape[:2] != size:
        # The header was judged (side limit) and names the frame: pixels of another size are
        # not the frame it declares.
        raise ImageConversionError(
            f"{what} decoded to {rgb.shape[1]}x{rgb.shape[0]}, but its header declares "
            f"{size[1]}x{size[0]}"
        )
    return rgb


def _decode_png(buffer: np.ndarray) -> np.ndarray | None:
    """PNG bytes -> HxWx3 RGB, None when OpenCV refuses them."""
    # IMREAD_COLOR alone applies an EXIF orientation (a PNG eXIf chunk): a 640x480 frame came
    # out 480x640 and turned, where image_transport's decoder (IMREAD_UNCHANGED) and our JPEG
    # path give the sensor's pixels as they are.
    if _IMREAD_COLOR_RGB is not None:
        # Decoded straight into RGB order: no second pass over the frame (the policy node
        # decodes every camera frame on its input path).
        rgb = cv2.imdecode(buffer, _IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
    else:
        bgr = cv2.imdecode(buffer, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        rgb = None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return rgb


def _decode_jpeg(buffer: np.ndarray, what: str) -> np.ndarray:
    """JPEG bytes -> HxWx3 RGB, refusing what libjpeg only warns about (see the module
    docstring): a frame truncated or corrupted on its way must not reach the model."""
    try:
        # strict: libjpeg-turbo's warnings (premature end of data, extraneous bytes before a
        # marker, bad Huffman code, lost restart marker) raise instead of returning the frame
        # with the missing part filled in. Releases the GIL like cv2.imdecode (decode pool).
        return simplejpeg.decode_jpeg(buffer, "rgb", strict=True)
    except ValueError as exc:
        raise ImageConversionError(
            f"{what}, {buffer.size} bytes, could not be decoded: damaged JPEG data "
            f"(libjpeg: {str(exc).strip()}); truncated or corrupted on its way"
        ) from None


def compressed_msg_to_rgb(msg: Any) -> np.ndarray:
    """``compressed_to_rgb`` for a sensor_msgs/CompressedImage (or any object with its fields)."""
    return compressed_to_rgb(msg.format, msg.data)


def rgb_to_image_fields(
    rgb: np.ndarray, encoding: str = "rgb8", row_padding: int = 0, is_bigendian: bool = False
) -> dict[str, Any]:
    """Raw Image fields for an HxWx3 uint8 RGB array in ``encoding``, rows padded by N bytes.

    16-bit encodings hold each value times 257 (so they convert back exactly), in the byte order
    ``is_bigendian`` names; Bayer encodings keep each pixel's one colour of the mosaic; YUV 4:2:2
    is OpenCV's RGB -> UYVY/YUYV (lossy, even widths only).
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageConversionError(
            f"expected an HxWx3 uint8 RGB array, got {rgb.dtype} {rgb.shape}"
        )
    wide = encoding in _WIDE_ENCODINGS or _CAMERA_ENCODINGS.get(encoding, (0, 1))[1] == 2
    base = _WIDE_ENCODINGS.get(encoding, encoding)
    if base == "rgb8":
        pixels = rgb
    elif base == "bgr8":
        pixels = rgb[:, :, ::-1]
    elif base == "rgba8":
        pixels = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 255, np.uint8)], axis=2)
    elif base == "bgra8":
        pixels = np.concatenate(
            [rgb[:, :, ::-1], np.full((*rgb.shape[:2], 1), 255, np.uint8)], axis=2
        )
    elif base == "mono8":
        pixels = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)[:, :, None]
    elif encoding in _YUV422_ENCODINGS:
        if rgb.shape[1] % 2:
            raise ImageConversionError(f"{encoding} needs an even width, got {rgb.shape[1]}")
        uyvy = encoding in ("yuv422", "uyvy")
        code = cv2.COLOR_RGB2YUV_UYVY if uyvy else cv2.COLOR_RGB2YUV_YUY2
        pixels = cv2.cvtColor(np.ascontiguousarray(rgb), code)
    elif encoding.startswith("bayer_") and encoding in _CAMERA_ENCODINGS:
        pattern = encoding[len("bayer_") : len("bayer_") + 4]  # e.g. "rggb": row 0 "rg", row 1 "gb"
        pixels = np.empty((*rgb.shape[:2], 1), np.uint8)
        for index, colour in enumerate(pattern):
            dy, dx = divmod(index, 2)
            pixels[dy::2, dx::2, 0] = rgb[dy::2, dx::2, "rgb".index(colour)]
    else:
        raise _unsupported(encoding)
    if wide:
        order = ">u2" if is_bigendian else "<u2"
        pixels = (pixels.astype(np.uint16) * 257).astype(order).view(np.uint8)
    height, width = pixels.shape[:2]
    row_bytes = pixels.shape[1] * pixels.shape[2]
    if row_padding:
        pixels = np.concatenate(
            [pixels.reshape(height, row_bytes), np.zeros((height, row_padding), np.uint8)],
            axis=1,
        )
    data = np.ascontiguousarray(pixels).tobytes()
    return {
        "encoding": encoding,
        "height": height,
        "width": width,
        "step": row_bytes + row_padding,
        "data": data,
        "is_bigendian": int(bool(is_bigendian)) if wide else 0,
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
