"""Wire format of the MolmoAct2 policy server (pure: numpy + cv2 + msgpack, no web framework).

The ``/act`` request and response are the released ones (``allenai/molmoact2``:
``examples/yam/host_server_yam.py`` and ``examples/yam/molmoact_client.py``; schema in
docs/remote_inference.md): one key per camera (``top_cam``, ``left_cam``, ``right_cam`` for the
bimanual YAM) or base64 JPEGs under ``images_jpeg``, ``instruction``, ``state``, optional
``num_steps`` and ``normalization_tag``; the answer is ``actions`` (float32, rows x dims) and
``dt_ms``. Everything else (seed, reset, timings, depth tokens, the ``images`` mapping) is our
extension, which a released client never has to send or read.

Two encodings carry the same dictionaries:

* JSON (``POST /act``): numpy arrays in json_numpy's layout
  ``{"__numpy__": base64, "dtype": descr, "shape": [...]}``, so the released clients
  (``requests.post(url, data=json_numpy.dumps(payload))``) work unchanged.
* msgpack (``/ws`` websocket): arrays in msgpack-numpy's layout (``{b"nd": True, b"type", b"shape",
  b"data"}``); openpi's ``__ndarray__`` layout is accepted too.

Both decoders are our own: they accept only plain numeric dtypes (msgpack-numpy's own decoder
unpickles object arrays, which would let any client run code on the GPU host) and check that
each array's byte count matches its shape before numpy sees it.

Images travel raw (HxWx3 uint8 RGB) or compressed (JPEG/PNG bytes: a 1-D uint8 array in JSON,
a binary string in msgpack). Compressed images are standard RGB JPEG/PNG files; their size is
read from the file header and checked before anything is decoded.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import numbers
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import cv2
import msgpack
import numpy as np

from molmoact2_common.embodiments import EmbodimentSpec
from molmoact2_policy.image_conversion import (
    MAX_IMAGE_SIDE,
    ImageConversionError,
    ImageTooLargeError,
    check_image_side,
    decode_compressed,
)
from molmoact2_policy.policy_api import (
    ActionChunkResult,
    PolicyInputError,
    RtcRequest,
    instruction_characters_problem,
    validate_observation,
    validate_rtc,
)

# 2: the released response (``actions`` float32 + ``dt_ms``) replaced version 1's ``action``.
PROTOCOL_VERSION = 2
# /healthz (and the websocket hello): the tokens the server's policy refuses in an instruction
# (its tokenizer's control tokens), so a client refuses them where the instruction enters. An
# optional key: a server without it (the released one has no /healthz) leaves clients accepting.
HEALTH_CONTROL_TOKENS = "instruction_control_tokens"
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024  # 3 raw 1080p cameras as base64 JSON fit in ~25 MiB
IMAGE_ENCODINGS = ("raw", "jpeg", "png")
RESPONSE_FORMATS = ("full", "action")
# The released servers' default number of Euler steps; more than MAX_NUM_STEPS would let one
# request hold the device for as long as a hundred normal ones.
RELEASED_DEFAULT_NUM_STEPS = 10
MAX_NUM_STEPS = 100
# Values one JSON or msgpack message may hold (containers and their items). A request is a few
# dozen values, its arrays being base64 text or binary strings; the largest plain list a client
# may send is the RTC chunk (rows x joints, ~1000). Uncapped, a body of empty lists within the
# size limit became ~40 times its size in Python objects, built in C holding the GIL: the event
# loop stopped for every client (probe: one 32 MB ``[[[[]]]],...`` body, 1.4 GB and /healthz
# waiting 15.5 s; msgpack empty arrays 2.3 GB in 27 s).
MAX_MESSAGE_ITEMS = 100_000

# Camera names on the released wire, in our embodiment's camera order: the released servers read
# ``<name>_cam`` (raw arrays) or ``images_jpeg[<name>]`` (base64 JPEG). Sources: allenai/molmoact2
# README.md ("Inference Servers": YAM ``top_cam, left_cam, right_cam``; DROID ``external_cam,
# wrist_cam``) and examples/yam/molmoact_client.py (``images_jpeg: {left, top, right}``).
# Embodiments without a released server use our camera names.
RELEASED_CAMERAS: dict[str, tuple[str, ...]] = {
    "yam_bimanual": ("top", "left", "right"),
    "droid": ("external", "wrist"),
}
# The norm-stats tags the released checkpoints and clients use (``normalization_tag``): the
# BimanualYAM client sends "yam_dual_molmoact2", the DROID server uses "franka_droid".
RELEASED_NORM_TAGS: dict[str, str] = {
    "yam_bimanual": "yam_dual_molmoact2",
    "droid": "franka_droid",
}
# Request keys that name the norm tag: the released client's, OpenVLA-style, and a short form.
_NORM_TAG_KEYS = ("normalization_tag", "unnorm_key", "norm_tag")

# Array kinds a client may send: bool, signed/unsigned int, float. Never object/void/str.
_ALLOWED_DTYPE_KINDS = frozenset("biuf")


class ProtocolError(ValueError):
    """A request or response that breaks the wire format; ``status`` is the HTTP code to send."""

    status: int = 400
    code: str = "bad_request"


class RequestTooLargeError(ProtocolError):
    """A body, array or image beyond the configured limits."""

    status = 413
    code = "too_large"


@dataclass(frozen=True)
class RequestLimits:
    """What a server accepts before any byte reaches the model."""

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_image_side: int = MAX_IMAGE_SIDE  # pixels, height and width, raw or compressed
    max_instruction_chars: int = 2000


@dataclass(frozen=True)
class ActRequest:
    """A decoded, validated ``/act`` request: exactly what ``Policy.act`` takes, plus options."""

    images: dict[str, np.ndarray]  # camera -> HxWx3 uint8 RGB, in the embodiment's camera order
    state: np.ndarray  # (state_dim,) float64
    instruction: str
    seed: int | None = None
    reset: bool = False  # forget per-episode state (Think depth cache) before this inference
    response_format: str = "full"  # "full": schema object; "action": the bare action array
    rtc: RtcRequest | None = None  # real-time chunking extension (``RTC_FIELD``)
    num_steps: int | None = None  # Euler steps of the flow sampler; None: the server's own


@dataclass(frozen=True)
class ActResponse:
    """A decoded ``/act`` response, as the client sees it."""

    positions: np.ndarray
    step_dt: float
    joint_names: tuple[str, ...]
    mode: str
    model_timings: dict[str, float]
    server_timing: dict[str, float]
    depth_codes: np.ndarray | None
    depth_changed: np.ndarray | None
    dt_ms: float | None  # the server's inference time as the release reports it


def wire_cameras(spec: EmbodimentSpec) -> tuple[str, ...]:
    """The camera names a released client uses for ``spec``, in ``spec.camera_names`` order."""
    return RELEASED_CAMERAS.get(spec.name, spec.camera_names)


def accepted_norm_tags(spec: EmbodimentSpec) -> tuple[str, ...]:
    """Norm-tag names a request may carry for ``spec``: the released name and ours."""
    released = RELEASED_NORM_TAGS.get(spec.name)
    return tuple(dict.fromkeys(tag for tag in (released, spec.norm_tag) if tag))


def released_norm_tag(spec: EmbodimentSpec) -> str:
    """The tag a released client sends for ``spec`` (ours where there is no released one)."""
    return RELEASED_NORM_TAGS.get(spec.name, spec.norm_tag)


# --------------------------------------------------------------------------------------------
# Images


def encode_image(image: np.ndarray, encoding: str, *, jpeg_quality: int = 90) -> np.ndarray | bytes:
    """Prepare one HxWx3 uint8 RGB image for the wire: the array itself, or JPEG/PNG bytes."""
    if encoding == "raw":
        return np.ascontiguousarray(image)
    if encoding not in IMAGE_ENCODINGS:
        raise ValueError(f"unknown image encoding {encoding!r}; expected one of {IMAGE_ENCODINGS}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    # cv2 writes BGR input into a standard (RGB) file, so any decoder reads back RGB.
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if encoding == "jpeg":
        ok, buffer = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    else:
        # Level 1: PNG here is for bandwidth-limited lossless links, speed matters more than size.
        ok, buffer = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError(f"cv2 could not encode a {image.shape} image as {encoding}")
    return buffer.tobytes()


def decode_image(value: Any, camera: str, limits: RequestLimits) -> np.ndarray:
    """One camera's wire value -> HxWx3 uint8 RGB, or ``ProtocolError`` naming the problem."""
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype == np.uint8:
        value = value.tobytes()  # JSON carries compressed images as 1-D uint8 arrays
    if isinstance(value, (bytes, bytearray, memoryview)):
        what = f"camera {camera!r}: compressed image"
        try:
            return decode_compressed(bytes(value), limits.max_image_side, what=what)
        except ImageConversionError as exc:
            raise _protocol_error(exc) from None
    if not isinstance(value, np.ndarray):
        raise ProtocolError(
            f"camera {camera!r}: expected an HxWx3 uint8 array or JPEG/PNG bytes, "
            f"got {type(value).__name__}"
        )
    if value.dtype != np.uint8:
        raise ProtocolError(f"camera {camera!r}: expected dtype uint8, got {value.dtype}")
    if value.ndim != 3 or value.shape[2] != 3:
        raise ProtocolError(f"camera {camera!r}: expected shape HxWx3 (RGB), got {value.shape}")
    height, width = value.shape[:2]
    try:
        check_image_side(height, width, limits.max_image_side, f"camera {camera!r}: image")
    except ImageTooLargeError as exc:
        raise _protocol_error(exc) from None
    return value


def _protocol_error(exc: ImageConversionError) -> ProtocolError:
    """An image the server refuses: 413 when it is too large, 400 otherwise."""
    if isinstance(exc, ImageTooLargeError):
        return RequestTooLargeError(f"{exc} (the server's limit)")
    return ProtocolError(str(exc))


# --------------------------------------------------------------------------------------------
# Array codecs


def _check_array_header(dtype: np.dtype, shape: Sequence[int], nbytes: int) -> None:
    if dtype.kind not in _ALLOWED_DTYPE_KINDS:
        raise ProtocolError(f"array dtype {dtype.str!r} not allowed (bool, int, uint, float only)")
    if not all(isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in shape):
        raise ProtocolError(f"array shape {list(shape)!r} is not a list of non-negative ints")
    expected = math.prod(shape) * dtype.itemsize
    if expected != nbytes:
        raise ProtocolError(
            f"array of shape {list(shape)} and dtype {dtype.str} needs {expected} bytes, "
            f"got {nbytes}"
        )


def _parse_dtype(descr: Any) -> np.dtype:
    if isinstance(descr, bytes):
        descr = descr.decode("ascii", "replace")
    if not isinstance(descr, str):
        raise ProtocolError(f"array dtype must be a string, got {type(descr).__name__}")
    try:
        return np.dtype(descr)
    except TypeError as exc:
        raise ProtocolError(f"unknown array dtype {descr!r}") from exc


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (bytes, bytearray, memoryview)):
        obj = np.frombuffer(bytes(obj), np.uint8)
    if isinstance(obj, (np.ndarray, np.generic)):
        array = np.ascontiguousarray(obj)
        return {
            "__numpy__": base64.b64encode(array.data).decode("ascii"),
            "dtype": np.lib.format.dtype_to_descr(array.dtype),
            "shape": list(array.shape),
        }
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def _json_object_hook(obj: dict[str, Any]) -> Any:
    if "__numpy__" not in obj:
        return obj
    dtype = _parse_dtype(obj.get("dtype"))
    shape = obj.get("shape")
    if not isinstance(shape, list):
        raise ProtocolError("json_numpy array without a 'shape' list")
    try:
        data = base64.b64decode(obj["__numpy__"], validate=True)
    except (binascii.Error, TypeError, ValueError) as exc:
        raise ProtocolError(f"json_numpy array with invalid base64 data: {exc}") from exc
    _check_array_header(dtype, shape, len(data))
    array = np.frombuffer(data, dtype)
    # json_numpy sends numpy scalars with shape [] and reads them back as numpy scalars.
    return array.reshape(shape) if shape else array[0]


def encode_json(payload: Any) -> bytes:
    """JSON bytes with numpy arrays (and bytes, as uint8 arrays) in json_numpy's layout."""
    return json.dumps(payload, default=_json_default, separators=(",", ":")).encode("utf-8")


def _too_many_values(max_items: int) -> RequestTooLargeError:
    return RequestTooLargeError(
        f"message holds more than {max_items} values; a request needs a few dozen: send arrays "
        "as json_numpy/msgpack-numpy arrays, not as lists of numbers"
    )


def decode_json(
    body: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_items: int = MAX_MESSAGE_ITEMS,
) -> Any:
    """Parse JSON bytes with json_numpy arrays; ``ProtocolError`` on anything malformed."""
    if len(body) > max_bytes:
        raise RequestTooLargeError(f"body of {len(body)} bytes exceeds the limit of {max_bytes}")
    # Every value but a container's first follows a comma, so commas and openings bound the
    # number of values from above (those inside strings count too: strings are short, base64
    # has none). Counted before parsing: json builds the values in C without letting go of the
    # GIL.
    separators = body.count(b",") + body.count(b"[") + body.count(b"{")
    if separators > max_items:
        raise _too_many_values(max_items)
    try:
        return json.loads(body, object_hook=_json_object_hook)
    except ProtocolError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"malformed JSON: {exc}") from exc


def _msgpack_default(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)):
        array = np.ascontiguousarray(obj)
        return {
            b"nd": True,
            b"type": array.dtype.str,
            b"kind": b"",
            b"shape": list(array.shape),
            b"data": array.tobytes(),
        }
    raise TypeError(f"{type(obj).__name__} is not msgpack serialisable")


def _msgpack_object_hook(obj: dict[Any, Any]) -> Any:
    if obj.get(b"nd") is True:  # msgpack-numpy layout
        if obj.get(b"kind", b"") not in (b"", ""):
            # Object/void arrays: msgpack-numpy would unpickle them.
            raise ProtocolError("msgpack array of kind 'O'/'V' not allowed (numeric dtypes only)")
        dtype, shape, data = _parse_dtype(obj.get(b"type")), obj.get(b"shape"), obj.get(b"data")
    elif obj.get(b"__ndarray__") is True or obj.get("__ndarray__") is True:  # openpi layout
        get = obj.get
        dtype = _parse_dtype(get(b"dtype", get("dtype")))
        shape, data = get(b"shape", get("shape")), get(b"data", get("data"))
    else:
        return obj
    if not isinstance(data, bytes) or not isinstance(shape, (list, tuple)):
        raise ProtocolError("msgpack array without bytes 'data' and a 'shape' list")
    _check_array_header(dtype, list(shape), len(data))
    array = np.frombuffer(data, dtype)
    return array.reshape(shape) if len(shape) else array[0]


def encode_msgpack(payload: Any) -> bytes:
    """msgpack bytes with numpy arrays in msgpack-numpy's layout and bytes as binary strings."""
    return msgpack.packb(payload, default=_msgpack_default, use_bin_type=True)


def decode_msgpack(
    body: bytes,
    *,
    max_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_items: int = MAX_MESSAGE_ITEMS,
) -> Any:
    """Parse msgpack bytes with numeric arrays only; ``ProtocolError`` on anything malformed."""
    if len(body) > max_bytes:
        raise RequestTooLargeError(f"message of {len(body)} bytes exceeds the limit of {max_bytes}")
    # Binary: values cannot be counted before parsing. One array or map may not declare more
    # than max_items (refused at its header); the hooks count each finished container's items
    # and stop the parse once the total passes max_items.
    count = 0

    def counted(container: Any) -> None:
        nonlocal count
        count += len(container) + 1
        if count > max_items:
            raise _too_many_values(max_items)

    def list_hook(items: list[Any]) -> list[Any]:
        counted(items)
        return items

    def object_hook(obj: dict[Any, Any]) -> Any:
        counted(obj)
        return _msgpack_object_hook(obj)

    try:
        return msgpack.unpackb(
            body,
            object_hook=object_hook,
            list_hook=list_hook,
            raw=False,
            strict_map_key=False,
            max_array_len=max_items,
            max_map_len=max_items,
        )
    except ProtocolError:
        raise
    except ValueError as exc:
        if "exceeds max_array_len" in str(exc) or "exceeds max_map_len" in str(exc):
            raise _too_many_values(max_items) from None
        raise ProtocolError(f"malformed msgpack: {type(exc).__name__}: {exc}") from exc
    except (TypeError, msgpack.UnpackException, RecursionError) as exc:
        # Some msgpack errors carry no text (a reserved byte, nesting too deep): name the type.
        raise ProtocolError(f"malformed msgpack: {type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------------------------------
# Requests


def build_act_request(
    spec: EmbodimentSpec,
    images: Mapping[str, np.ndarray],
    state: np.ndarray,
    instruction: str,
    *,
    seed: int | None = None,
    image_encoding: str = "jpeg",
    jpeg_quality: int = 90,
    reset: bool = False,
    num_steps: int | None = None,
    binary: bool = False,
    executor: Executor | None = None,
    rtc: RtcRequest | None = None,
) -> dict[str, Any]:
    """The request dictionary (before JSON/msgpack encoding) for one observation, released form.

    Raw images go under ``<camera>_cam``; compressed ones under ``images_jpeg`` as base64 text
    (JSON, as the released client sends them) or, with ``binary`` (msgpack), as plain bytes.
    ``seed``, ``reset`` and ``embodiment`` are our extensions; a released server ignores them.
    With an ``executor``, cameras are compressed in parallel (cv2 releases the GIL).
    """

    def encode(name: str) -> np.ndarray | bytes:
        return encode_image(images[name], image_encoding, jpeg_quality=jpeg_quality)

    names = spec.camera_names
    parallel = executor is not None and image_encoding != "raw" and len(names) > 1
    encoded = list(executor.map(encode, names)) if parallel else [encode(n) for n in names]
    request: dict[str, Any] = {
        "instruction": instruction,
        "state": np.asarray(state, dtype=np.float64),
        "normalization_tag": released_norm_tag(spec),
        "embodiment": spec.name,
        "seed": seed,
        "reset": reset,
        **({RTC_FIELD: rtc_to_wire(rtc)} if rtc is not None else {}),
    }
    cameras = wire_cameras(spec)
    if image_encoding == "raw":
        pairs = zip(cameras, encoded, strict=True)
        request.update({f"{camera}_cam": image for camera, image in pairs})
    else:
        request["images_jpeg"] = {
            camera: data if binary else base64.b64encode(data).decode("ascii")
            for camera, data in zip(cameras, encoded, strict=True)
        }
    if num_steps is not None:
        request["num_steps"] = int(num_steps)
    return request


def parse_act_request(
    payload: Any,
    spec: EmbodimentSpec,
    limits: RequestLimits | None = None,
    *,
    executor: Executor | None = None,
) -> ActRequest:
    """Validate a decoded request against the served embodiment; ``ProtocolError`` if bad.

    This is the one place a request's fields are read. Images come in the released forms
    (``<camera>_cam`` keys, ``images_jpeg`` base64 mapping) or ours (``images`` as a mapping,
    list or (N, H, W, 3) stack; ``image`` for one camera); ``state`` or ``proprio``;
    ``instruction``; ``num_steps``; the norm tag under ``normalization_tag``, ``unnorm_key`` or
    ``norm_tag`` (released or our name); a double-encoded ``{"encoded": "<json>"}`` body.
    ``timestamp`` and ``enable_cuda_graph`` (released debugging/speed knobs that change no
    result) are accepted and not used. With an ``executor``, compressed cameras are decoded in
    parallel.
    """
    limits = limits or RequestLimits()
    if isinstance(payload, dict) and set(payload) == {"encoded"}:
        if not isinstance(payload["encoded"], str):
            raise ProtocolError("'encoded' must be a JSON string")
        payload = decode_json(payload["encoded"].encode("utf-8"), max_bytes=limits.max_body_bytes)
    if not isinstance(payload, dict):
        raise ProtocolError(f"request must be a JSON/msgpack object, got {type(payload).__name__}")

    embodiment = payload.get("embodiment")
    if embodiment is not None and (not isinstance(embodiment, str) or embodiment != spec.name):
        raise ProtocolError(
            f"this server serves embodiment {spec.name!r}, request asks for {embodiment!r}"
        )
    _check_norm_tag(payload, spec)

    instruction = payload.get("instruction")
    if not isinstance(instruction, str):
        raise ProtocolError("'instruction' must be a string")
    try:
        instruction.encode("utf-8")  # a JSON "\ud800" escape decodes to a lone surrogate
    except UnicodeEncodeError as exc:
        raise ProtocolError(f"'instruction' is not valid Unicode text: {exc.reason}") from None
    if len(instruction) > limits.max_instruction_chars:
        raise RequestTooLargeError(
            f"instruction of {len(instruction)} characters exceeds {limits.max_instruction_chars}"
        )
    if problem := instruction_characters_problem(instruction):
        raise ProtocolError(problem)

    images = _parse_images(payload, spec, limits, executor)
    state = _parse_state(payload, spec)

    seed = payload.get("seed")
    if seed is not None and not _is_int(seed):
        raise ProtocolError(f"'seed' must be an integer or null, got {seed!r}")
    if seed is not None and not 0 <= int(seed) < 2**63:
        raise ProtocolError(f"'seed' must be in [0, 2**63), got {seed}")
    num_steps = payload.get("num_steps")
    if num_steps is not None and not (_is_int(num_steps) and 1 <= num_steps <= MAX_NUM_STEPS):
        raise ProtocolError(
            f"'num_steps' must be an integer in 1..{MAX_NUM_STEPS}, got {num_steps!r}"
        )
    reset = payload.get("reset", False)
    if not isinstance(reset, bool):
        raise ProtocolError(f"'reset' must be true or false, got {reset!r}")
    response_format = payload.get("response_format", "full")
    if not isinstance(response_format, str) or response_format not in RESPONSE_FORMATS:
        raise ProtocolError(
            f"'response_format' must be one of {RESPONSE_FORMATS}, got {response_format!r}"
        )

    try:
        validate_observation(spec, images, state, instruction)
    except PolicyInputError as exc:
        raise ProtocolError(str(exc)) from exc
    return ActRequest(
        images=images,
        state=state,
        instruction=instruction,
        seed=None if seed is None else int(seed),
        reset=reset,
        response_format=response_format,
        rtc=parse_rtc(payload.get(RTC_FIELD), spec),
        num_steps=None if num_steps is None else int(num_steps),
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_norm_tag(payload: Mapping[str, Any], spec: EmbodimentSpec) -> None:
    accepted = accepted_norm_tags(spec)
    for key in _NORM_TAG_KEYS:
        tag = payload.get(key)
        if tag is not None and (not isinstance(tag, str) or tag not in accepted):
            raise ProtocolError(
                f"this server serves norm tag {' / '.join(map(repr, accepted))}, "
                f"request asks for {key} {tag!r}"
            )


def _parse_images(
    payload: Mapping[str, Any],
    spec: EmbodimentSpec,
    limits: RequestLimits,
    executor: Executor | None,
) -> dict[str, np.ndarray]:
    cameras = spec.camera_names
    wire = wire_cameras(spec)
    camera_keys = [f"{name}_cam" for name in wire]
    forms = [
        form
        for form, present in (
            ("images_jpeg", "images_jpeg" in payload),
            ("<camera>_cam", any(key in payload for key in camera_keys)),
            ("images", "images" in payload),
            ("image", "image" in payload),
        )
        if present
    ]
    if not forms:
        raise ProtocolError(
            f"missing images: send {', '.join(camera_keys)} (HxWx3 uint8 RGB) or 'images_jpeg' "
            f"{{{', '.join(wire)}: base64 JPEG}}"
        )
    if len(forms) > 1:
        raise ProtocolError(f"images sent in more than one form ({', '.join(forms)}): pick one")
    form = forms[0]
    if form == "images_jpeg":
        values = _named_images(payload["images_jpeg"], "images_jpeg", spec, wire)
        pairs = zip(values, cameras, strict=True)
        values = [_from_base64(value, camera) for value, camera in pairs]
    elif form == "<camera>_cam":
        missing = [key for key in camera_keys if key not in payload]
        if missing:
            raise ProtocolError(f"missing camera key(s) {missing}; {spec.name} needs {camera_keys}")
        values = [payload[key] for key in camera_keys]
    elif form == "image":
        if len(cameras) != 1:
            raise ProtocolError(
                f"'image' carries one camera but {spec.name} needs {len(cameras)} "
                f"({', '.join(camera_keys)})"
            )
        values = [payload["image"]]
    else:
        values = _named_images(payload["images"], "images", spec, wire)

    def decode(pair: tuple[str, Any]) -> np.ndarray:
        return decode_image(pair[1], pair[0], limits)

    pairs = list(zip(cameras, values, strict=True))
    compressed = sum(not isinstance(value, np.ndarray) or value.ndim == 1 for value in values)
    if executor is not None and compressed > 1:
        decoded = list(executor.map(decode, pairs))  # first camera's error is raised first
    else:
        decoded = [decode(pair) for pair in pairs]
    return dict(zip(cameras, decoded, strict=True))


def _named_images(raw: Any, key: str, spec: EmbodimentSpec, wire: Sequence[str]) -> list[Any]:
    """A camera mapping (released or our names), a list in camera order, or an image stack."""
    cameras = spec.camera_names
    if isinstance(raw, dict):
        names = wire if all(name in raw for name in wire) else cameras
        missing = [name for name in names if name not in raw]
        unknown = sorted(str(name) for name in raw if name not in names)
        if missing or unknown:
            expected = " or ".join(str(list(n)) for n in dict.fromkeys((tuple(wire), cameras)))
            raise ProtocolError(
                f"{key!r} cameras do not match {spec.name}: missing {missing}, unknown {unknown}; "
                f"expected {expected}"
            )
        return [raw[name] for name in names]
    if isinstance(raw, np.ndarray) and raw.ndim == 4:
        values = list(raw)
    elif isinstance(raw, (list, tuple)):
        values = list(raw)
    else:
        raise ProtocolError(
            f"{key!r} must be a camera->image mapping, a list in camera order or an "
            f"(N, H, W, 3) uint8 array, got {type(raw).__name__}"
        )
    if len(values) != len(cameras):
        raise ProtocolError(
            f"{key!r} has {len(values)} image(s), {spec.name} needs {len(cameras)} "
            f"({', '.join(wire)})"
        )
    return values


def _from_base64(value: Any, camera: str) -> Any:
    """``images_jpeg`` values: base64 text as the released client sends, or bytes (msgpack)."""
    if not isinstance(value, str):
        return value
    # Tolerate what other encoders add: a data-URI prefix, MIME line breaks.
    if value.startswith("data:") and "," in value:
        value = value.split(",", 1)[1]
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(f"camera {camera!r}: invalid base64 image: {exc}") from exc


def _parse_state(payload: Mapping[str, Any], spec: EmbodimentSpec) -> np.ndarray:
    """``state`` (or ``proprio``) as ``(state_dim,)`` float64.

    As the released servers read it (``np.asarray(state, float32).reshape(-1)`` must have
    ``state_dim`` values; allenai/molmoact2 ``examples/yam/host_server_yam.py`` ``predict``),
    any array or nested list of ``state_dim`` numbers is accepted and flattened in row-major
    order, so a ``(1, 14)`` or ``(2, 7)`` state a released server takes is not refused here.
    Booleans, nulls, strings and integers too large for a float are refused by name.
    """
    key = "state" if "state" in payload else "proprio"
    raw = payload.get(key)
    if raw is None:
        raise ProtocolError(f"missing 'state' ({spec.state_dim} values for {spec.name})")
    if isinstance(raw, (list, tuple)):
        try:
            # No dtype: bools stay bool, nulls/strings/huge ints become object, all refused below.
            raw = np.asarray(raw)
        except (TypeError, ValueError):
            raise ProtocolError(f"'{key}' must be a list of numbers (not ragged)") from None
    if not isinstance(raw, np.ndarray) or raw.dtype.kind not in "iuf":
        what = type(raw).__name__ if not isinstance(raw, np.ndarray) else f"{raw.dtype} array"
        raise ProtocolError(f"'{key}' must be a numeric array, got {what}")
    if raw.size != spec.state_dim:
        raise ProtocolError(
            f"'{key}': expected shape ({spec.state_dim},) for {spec.name}, got {raw.shape}"
        )
    return raw.reshape(-1).astype(np.float64)


# --------------------------------------------------------------------------------------------
# Real-time chunking extension

# Optional request field, ignored by servers that do not know it (the released server reads
# only its own keys): {"previous": (rows, action_dim) float array in robot units aligned to the
# new chunk's rows, "delay_steps": int, "execution_horizon": int or null}.
RTC_FIELD = "rtc"


def rtc_to_wire(rtc: RtcRequest) -> dict[str, Any]:
    return {
        "previous": np.asarray(rtc.previous, dtype=np.float64),
        "delay_steps": int(rtc.delay_steps),
        "execution_horizon": (
            None if rtc.execution_horizon is None else int(rtc.execution_horizon)
        ),
    }


def parse_rtc(value: Any, spec: EmbodimentSpec) -> RtcRequest | None:
    """The ``rtc`` field of a request, checked against the embodiment; None when absent."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ProtocolError(f"'{RTC_FIELD}' must be an object, got {type(value).__name__}")
    previous = value.get("previous")
    if isinstance(previous, list):
        try:
            previous = np.asarray(previous, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ProtocolError(f"'{RTC_FIELD}.previous' is not a numeric table") from exc
    if not isinstance(previous, np.ndarray) or previous.dtype.kind not in "iuf":
        raise ProtocolError(f"'{RTC_FIELD}.previous' must be a numeric array")
    rtc = RtcRequest(
        previous=previous.astype(np.float64),
        delay_steps=value.get("delay_steps"),
        execution_horizon=value.get("execution_horizon"),
    )
    try:
        validate_rtc(spec, rtc)
    except PolicyInputError as exc:
        raise ProtocolError(str(exc)) from exc
    return rtc


# --------------------------------------------------------------------------------------------
# Responses


def released_actions(result: ActionChunkResult) -> np.ndarray:
    """The chunk as the release sends it: (rows, action_dim) float32."""
    return np.asarray(result.positions, dtype=np.float32)


def build_act_response(
    result: ActionChunkResult, embodiment: str, server_timing: Mapping[str, float]
) -> dict[str, Any]:
    """The full response: the released ``actions`` and ``dt_ms``, then our extensions."""
    return {
        "actions": released_actions(result),
        "dt_ms": 1000.0 * float(server_timing.get("infer", 0.0)),
        "step_dt": float(result.step_dt),
        "joint_names": list(result.joint_names),
        "mode": result.mode,
        "embodiment": embodiment,
        "timings": {str(k): float(v) for k, v in result.timings.items()},
        "server_timing": {str(k): float(v) for k, v in server_timing.items()},
        "depth_codes": None if result.depth_codes is None else np.asarray(result.depth_codes),
        "depth_changed": None if result.depth_changed is None else np.asarray(result.depth_changed),
        "protocol_version": PROTOCOL_VERSION,
    }


# Error messages quote what the client sent (a camera name, a tag, a value); a client sending
# a megabyte there got it back twice and wrote it into the server log (probe: 2 MB answers).
MAX_MESSAGE_CHARS = 1000


def bounded_message(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``message`` cut to ``limit`` characters, saying how long it was."""
    if len(message) <= limit:
        return message
    return f"{message[:limit]}... ({len(message)} characters in all)"


def error_payload(code: str, message: str) -> dict[str, Any]:
    """Error body; ``detail`` repeats the message for FastAPI-style clients."""
    message = bounded_message(message)
    return {"error": {"code": code, "message": message}, "detail": message}


def parse_act_response(payload: Any, spec: EmbodimentSpec, joint_count: int) -> ActResponse:
    """Check a response against what the robot expects; ``ProtocolError`` if it differs.

    Reads ours and the released servers' (``actions`` and ``dt_ms`` only: the step time is then
    the embodiment's, and the server time is ``dt_ms``).
    """
    if not isinstance(payload, dict):
        raise ProtocolError(f"response must be an object, got {type(payload).__name__}")
    if "error" in payload:
        error = payload["error"]
        message = error.get("message") if isinstance(error, dict) else error
        raise ProtocolError(f"server error: {bounded_message(str(message))}")
    positions = payload.get("actions")
    if not isinstance(positions, np.ndarray) or positions.dtype.kind != "f":
        raise ProtocolError("response 'actions' is not a float array")
    # The release returns the tag's n_action_steps rows, which may be fewer than the horizon.
    if positions.ndim != 2 or not 1 <= positions.shape[0] <= spec.horizon:
        raise ProtocolError(
            f"response 'actions' has shape {positions.shape}, expected (1..{spec.horizon}, "
            f"{joint_count}) for {spec.name}"
        )
    if positions.shape[1] != joint_count:
        raise ProtocolError(
            f"response 'actions' has {positions.shape[1]} columns, the robot has {joint_count} "
            f"joints for {spec.name}"
        )
    # Checked after the cast: a finite long double (1e4000) is inf as float64.
    with np.errstate(over="ignore"):
        positions = positions.astype(np.float64)
    if not np.all(np.isfinite(positions)):
        raise ProtocolError("response 'actions' contains NaN or inf (as float64)")
    step_dt = payload.get("step_dt", spec.step_dt)
    if not isinstance(step_dt, (int, float)) or not step_dt > 0:
        raise ProtocolError(f"response 'step_dt' must be a positive number, got {step_dt!r}")
    dt_ms = payload.get("dt_ms")
    if dt_ms is not None and not (isinstance(dt_ms, (int, float)) and math.isfinite(dt_ms)):
        raise ProtocolError(f"response 'dt_ms' must be a number, got {dt_ms!r}")
    # ``x or {}`` on an array raised ValueError (truth value ambiguous) from inside the parser.
    timings = payload.get("timings")
    server_timing = payload.get("server_timing")
    timings = {} if timings is None else timings
    server_timing = {} if server_timing is None else server_timing
    if not isinstance(timings, dict) or not isinstance(server_timing, dict):
        raise ProtocolError("response 'timings'/'server_timing' must be objects")
    joint_names = payload.get("joint_names")
    if joint_names is None:
        joint_names = ()
    # A number raised TypeError, an array ValueError; a string became one name per letter.
    if not isinstance(joint_names, (list, tuple)):
        raise ProtocolError(
            f"response 'joint_names' must be a list, got {type(joint_names).__name__}"
        )
    if not server_timing and dt_ms is not None:
        server_timing = {"infer": dt_ms / 1000.0, "total": dt_ms / 1000.0}
    return ActResponse(
        positions=positions,
        step_dt=float(step_dt),
        joint_names=tuple(bounded_message(str(name)) for name in joint_names),
        mode=bounded_message(str(payload.get("mode") or "flow")),
        model_timings=_timing_map(timings, "timings"),
        server_timing=_timing_map(server_timing, "server_timing"),
        depth_codes=_optional_array(payload.get("depth_codes"), np.int64, "depth_codes"),
        depth_changed=_optional_array(payload.get("depth_changed"), np.bool_, "depth_changed"),
        dt_ms=None if dt_ms is None else float(dt_ms),
    )


def _optional_array(value: Any, dtype: type, name: str = "array") -> np.ndarray | None:
    """``value`` as a ``dtype`` (int64 or bool) array, or ``ProtocolError``.

    A plain ``astype`` made a server's wrong types look right: depth codes 1.7 went out on
    ~/depth_tokens as 1, NaN or 1e30 as -2**63, changed flags 0.5, -1 or "no" as true, and a
    string raised ValueError from inside the parser.
    """
    if value is None:
        return None
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as exc:  # ragged nesting
        raise ProtocolError(f"response {name!r} is not an array: {exc}") from exc
    if array.size == 0:
        return array.astype(dtype)
    kind = array.dtype.kind
    if dtype is np.bool_:
        ok = kind == "b" or (kind in "iu" and bool(np.isin(array, (0, 1)).all()))
        what = "booleans"
    else:
        info = np.iinfo(np.int64)
        ok = kind in "biu" and info.min <= int(array.min()) and int(array.max()) <= info.max
        what = "64-bit integers"
    if not ok:
        raise ProtocolError(
            f"response {name!r} must be an array of {what}, got dtype {array.dtype}"
        )
    return array.astype(dtype)


def _timing_map(value: dict, name: str) -> dict[str, float]:
    """Stage -> seconds; ``ProtocolError`` for a value that is not a number (a string or null
    raised ValueError/TypeError from inside the parser)."""
    out = {}
    for key, seconds in value.items():
        # json_numpy hands a numpy scalar back as a one-element array.
        if isinstance(seconds, np.ndarray) and seconds.size == 1 and seconds.dtype.kind in "iuf":
            seconds = seconds.item()
        if isinstance(seconds, bool | np.bool_) or not isinstance(seconds, numbers.Real):
            raise ProtocolError(
                f"response {name!r} entry {key!r} must be a number, got {seconds!r}"
            )
        out[str(key)] = float(seconds)
    return out
