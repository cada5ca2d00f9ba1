"""Wire format of the policy server: array codecs, image codecs, request/response validation."""

from __future__ import annotations

import json

import json_numpy
import msgpack
import msgpack_numpy
import numpy as np
import pytest

from molmoact2_common.embodiments import get_embodiment
from molmoact2_policy.image_conversion import compressed_image_size
from molmoact2_policy.policy_api import ActionChunkResult
from molmoact2_policy.remote import protocol as p

SPEC = get_embodiment("yam_bimanual")
CAM_KEYS = ("top_cam", "left_cam", "right_cam")


def _smooth_image(seed: int, shape: tuple[int, int] = (96, 128)) -> np.ndarray:
    """Camera-like content (gradients + mild noise): JPEG of pure noise says little."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (h + w)], axis=-1)
    return np.clip(base + rng.normal(0, 4, (h, w, 3)), 0, 255).astype(np.uint8)


def _observation(seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    images = {name: _smooth_image(seed + i) for i, name in enumerate(SPEC.camera_names)}
    return images, np.linspace(-1, 1, SPEC.state_dim)


# ---------------------------------------------------------------- array codecs


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.float32, np.float64, np.bool_])
def test_json_arrays_interoperate_with_json_numpy_both_ways(dtype):
    array = np.arange(24).reshape(2, 3, 4).astype(dtype)
    ours = p.decode_json(json_numpy.dumps({"a": array}).encode())["a"]
    theirs = json_numpy.loads(p.encode_json({"a": array}).decode())["a"]
    for decoded in (ours, theirs):
        assert decoded.dtype == array.dtype and np.array_equal(decoded, array)


def test_json_bytes_travel_as_uint8_arrays():
    decoded = p.decode_json(p.encode_json({"jpeg": b"\xff\xd8abc"}))["jpeg"]
    assert decoded.dtype == np.uint8 and decoded.tobytes() == b"\xff\xd8abc"


def test_msgpack_arrays_interoperate_with_msgpack_numpy():
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    ours = p.decode_msgpack(msgpack_numpy.packb({"a": array}))["a"]
    theirs = msgpack_numpy.unpackb(p.encode_msgpack({"a": array}))["a"]
    assert np.array_equal(ours, array) and np.array_equal(theirs, array)
    assert p.decode_msgpack(p.encode_msgpack({"b": b"\x00\x01"}))["b"] == b"\x00\x01"


def test_msgpack_object_arrays_are_refused_not_unpickled():
    # msgpack-numpy packs object arrays with pickle; decoding them would run client code.
    packed = msgpack_numpy.packb({"a": np.array([{"x": 1}], dtype=object)})
    with pytest.raises(p.ProtocolError, match="not allowed"):
        p.decode_msgpack(packed)


def test_openpi_ndarray_layout_is_accepted():
    array = np.arange(6, dtype=np.int32).reshape(2, 3)
    message = {
        b"__ndarray__": True,
        b"data": array.tobytes(),
        b"dtype": array.dtype.str,
        b"shape": [2, 3],
    }
    decoded = p.decode_msgpack(msgpack.packb({"a": message}, use_bin_type=True))["a"]
    assert np.array_equal(decoded, array)


@pytest.mark.parametrize(
    ("array_json", "message"),
    [
        ({"__numpy__": "AAAA", "dtype": "|O", "shape": [1]}, "not allowed"),
        ({"__numpy__": "AAAA", "dtype": "<f8", "shape": [2]}, "needs 16 bytes, got 3"),
        ({"__numpy__": "!!!", "dtype": "<f8", "shape": [1]}, "invalid base64"),
        ({"__numpy__": "AAAA", "dtype": "nonsense", "shape": [1]}, "unknown array dtype"),
        ({"__numpy__": "AAAA", "dtype": "|u1", "shape": 3}, "shape"),
    ],
)
def test_bad_json_arrays_get_clear_errors(array_json, message):
    with pytest.raises(p.ProtocolError, match=message):
        p.decode_json(json.dumps({"a": array_json}).encode())


def test_malformed_bodies_and_size_limit():
    with pytest.raises(p.ProtocolError, match="malformed JSON"):
        p.decode_json(b'{"instruction": ')
    with pytest.raises(p.ProtocolError, match="malformed msgpack"):
        p.decode_msgpack(b"\xc1")
    with pytest.raises(p.RequestTooLargeError, match="exceeds the limit of 10"):
        p.decode_json(b"[" + b"1," * 10 + b"1]", max_bytes=10)
    assert p.RequestTooLargeError.status == 413


# ---------------------------------------------------------------- images


def test_jpeg_round_trip_keeps_size_and_colour_order():
    image = np.zeros((48, 64, 3), np.uint8)
    image[..., 0] = 200  # pure red in RGB
    data = p.encode_image(image, "jpeg", jpeg_quality=95)
    assert isinstance(data, bytes) and data[:2] == b"\xff\xd8"
    assert compressed_image_size(data) == (48, 64)
    decoded = p.decode_image(data, "top", p.RequestLimits())
    assert decoded.shape == image.shape and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - image).max() <= 3
    assert decoded[..., 0].mean() > 190 and decoded[..., 2].mean() < 10


def test_png_is_lossless_and_raw_is_passthrough():
    image = _smooth_image(3)
    png = p.encode_image(image, "png")
    assert compressed_image_size(png) == image.shape[:2]
    assert np.array_equal(p.decode_image(png, "top", p.RequestLimits()), image)
    assert np.array_equal(
        p.decode_image(np.frombuffer(png, np.uint8), "top", p.RequestLimits()), image
    )
    assert p.encode_image(image, "raw") is image or np.array_equal(
        p.encode_image(image, "raw"), image
    )


def test_image_limits_are_checked_from_the_header_before_decoding():
    limits = p.RequestLimits(max_image_side=100)
    wide = p.encode_image(np.zeros((20, 150, 3), np.uint8), "jpeg")
    with pytest.raises(p.RequestTooLargeError, match=r"150x20, larger than 100 pixels per side"):
        p.decode_image(wide, "top", limits)
    with pytest.raises(p.RequestTooLargeError):
        p.decode_image(np.zeros((101, 10, 3), np.uint8), "top", limits)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"GIF89a....", "no JPEG or PNG header"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 20, "could not be decoded"),
        (np.zeros((8, 8, 3), np.float32), "dtype uint8"),
        (np.zeros((8, 8), np.uint8).reshape(8, 8, 1), "HxWx3"),
        ("not an image", "got str"),
    ],
)
def test_bad_images_get_clear_errors(value, message):
    with pytest.raises(p.ProtocolError, match=message):
        p.decode_image(value, "left_wrist", p.RequestLimits())


def test_unknown_encoding_and_quality_are_refused():
    with pytest.raises(ValueError, match="unknown image encoding"):
        p.encode_image(_smooth_image(0), "webp")
    with pytest.raises(ValueError, match="jpeg_quality"):
        p.encode_image(_smooth_image(0), "jpeg", jpeg_quality=0)


# ---------------------------------------------------------------- requests


def _cams(request):
    """Take the released per-camera keys out of a request, in camera order."""
    return [request.pop(key) for key in CAM_KEYS]


def _wire(payload):
    return p.decode_json(p.encode_json(payload))


def test_built_request_parses_back_to_the_same_observation():
    images, state = _observation()
    request = p.build_act_request(
        SPEC, images, state, "fold the towel", seed=7, image_encoding="raw"
    )
    parsed = p.parse_act_request(_wire(request), SPEC)
    assert parsed.instruction == "fold the towel" and parsed.seed == 7 and not parsed.reset
    assert list(parsed.images) == list(SPEC.camera_names)
    for name in SPEC.camera_names:
        assert np.array_equal(parsed.images[name], images[name])
    assert parsed.state.dtype == np.float64 and np.array_equal(parsed.state, state)
    via_msgpack = p.parse_act_request(p.decode_msgpack(p.encode_msgpack(request)), SPEC)
    assert np.array_equal(via_msgpack.images["top"], images["top"])
    # The released layout: one key per camera under the released camera names.
    assert {"top_cam", "left_cam", "right_cam"} <= set(request)
    assert request["normalization_tag"] == "yam_dual_molmoact2"
    assert "num_steps" not in request  # the server's own number unless asked


@pytest.mark.parametrize("binary", [False, True])
def test_compressed_request_uses_images_jpeg(binary):
    images, state = _observation()
    request = p.build_act_request(
        SPEC, images, state, "go", image_encoding="jpeg", num_steps=4, binary=binary
    )
    assert set(request["images_jpeg"]) == {"top", "left", "right"}
    kind = bytes if binary else str  # base64 text in JSON as released, plain bytes in msgpack
    assert all(isinstance(v, kind) for v in request["images_jpeg"].values())
    wire = p.decode_msgpack(p.encode_msgpack(request)) if binary else _wire(request)
    parsed = p.parse_act_request(wire, SPEC)
    assert parsed.num_steps == 4
    for name in SPEC.camera_names:
        jpeg = p.decode_image(p.encode_image(images[name], "jpeg"), name, p.RequestLimits())
        assert np.array_equal(parsed.images[name], jpeg)


def test_released_style_image_layouts_are_equivalent():
    images, state = _observation()
    ordered = [images[name] for name in SPEC.camera_names]
    forms = [
        {"images": ordered, "proprio": state},
        {"images": np.stack(ordered), "state": state},
    ]
    released_names = dict(zip(("top", "left", "right"), ordered, strict=True))
    forms.append({"images": released_names, "state": state})
    payloads = [{"instruction": "go", "unnorm_key": SPEC.norm_tag, **form} for form in forms]
    # Double-encoded, as released clients without json_numpy on the wire send it.
    payloads.append({"encoded": json_numpy.dumps(payloads[0])})
    for payload in payloads:
        parsed = p.parse_act_request(_wire(payload), SPEC)
        assert all(np.array_equal(parsed.images[n], images[n]) for n in SPEC.camera_names)
        assert np.array_equal(parsed.state, state)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.pop("left_cam"), r"missing camera key\(s\) \['left_cam'\]"),
        (lambda r: r.update(images=[r.pop(k) for k in CAM_KEYS]), None),  # our list form: fine
        (lambda r: r.update(images=[r.pop(k) for k in CAM_KEYS][:2]), "has 2 image"),
        (lambda r: r.update(images=dict(zip("txy", _cams(r), strict=True))), "unknown"),
        (lambda r: r.update(images=[r[k] for k in CAM_KEYS]), "more than one form"),
        (lambda r: [r.pop(k) for k in CAM_KEYS], "missing images: send top_cam"),
        (lambda r: r.update(image=_cams(r)[0]), "'image' carries one"),
        (lambda r: r.update(images_jpeg={"top": "not base64!"}), "more than one form"),
        (
            lambda r: (
                [r.pop(k) for k in CAM_KEYS],
                r.update(images_jpeg={"top": "@@", "left": "", "right": ""}),
            ),
            "camera 'top': invalid base64",
        ),
        (lambda r: r.update(num_steps=0), r"'num_steps' must be an integer in 1\.\.100"),
        (lambda r: r.update(num_steps=101), "'num_steps'"),
        (lambda r: r.update(num_steps=2.5), "'num_steps'"),
        (lambda r: r.update(num_steps=True), "'num_steps'"),
        (lambda r: r.update(normalization_tag="franka_droid"), "normalization_tag 'franka_droid'"),
        (lambda r: r.update(state=np.zeros(13)), r"expected shape \(14,\)"),
        (lambda r: r.update(state=np.full(14, np.nan)), "non-finite"),
        (lambda r: r.pop("state"), "missing 'state'"),
        (lambda r: r.update(state="0,0"), "numeric array"),
        (lambda r: r.update(instruction=5), "'instruction' must be a string"),
        (lambda r: r.update(instruction="  "), "empty instruction"),
        (lambda r: r.update(unnorm_key="bridge_orig"), "unnorm_key 'bridge_orig'"),
        (lambda r: r.update(embodiment="droid"), "serves embodiment 'yam_bimanual'"),
        (lambda r: r.update(seed="1"), "'seed' must be an integer"),
        (lambda r: r.update(seed=-1), r"'seed' must be in \[0"),
        (lambda r: r.update(reset="yes"), "'reset' must be true or false"),
        (lambda r: r.update(response_format="csv"), "'response_format'"),
    ],
)
def test_bad_requests_name_the_problem(change, message):
    images, state = _observation()
    request = p.build_act_request(SPEC, images, state, "go", image_encoding="raw")
    request = _wire(request)
    change(request)
    if message is None:
        p.parse_act_request(request, SPEC)
        return
    with pytest.raises(p.ProtocolError, match=message):
        p.parse_act_request(request, SPEC)


@pytest.mark.parametrize("key", ["normalization_tag", "unnorm_key", "norm_tag"])
@pytest.mark.parametrize("tag", ["yam_dual_molmoact2", SPEC.norm_tag])
def test_released_and_our_norm_tag_names_are_accepted(key, tag):
    images, state = _observation()
    request = _wire(p.build_act_request(SPEC, images, state, "go", image_encoding="raw"))
    request.pop("normalization_tag")
    request[key] = tag
    assert p.parse_act_request(request, SPEC).instruction == "go"


def test_long_instruction_is_too_large():
    images, state = _observation()
    request = _wire(p.build_act_request(SPEC, images, state, "x" * 50, image_encoding="raw"))
    with pytest.raises(p.RequestTooLargeError, match="50 characters exceeds 10"):
        p.parse_act_request(request, SPEC, p.RequestLimits(max_instruction_chars=10))


def test_state_as_plain_list_is_accepted():
    images, state = _observation()
    request = _wire(p.build_act_request(SPEC, images, state, "go", image_encoding="jpeg"))
    request["state"] = state.tolist()
    assert np.array_equal(p.parse_act_request(request, SPEC).state, state)


# ---------------------------------------------------------------- responses


def _result(rows: int = SPEC.horizon, cols: int = SPEC.action_dim) -> ActionChunkResult:
    return ActionChunkResult(
        positions=np.arange(rows * cols, dtype=np.float64).reshape(rows, cols) / 100,
        step_dt=SPEC.step_dt,
        joint_names=tuple(f"j{i}" for i in range(cols)),
        mode="think",
        timings={"vlm": 0.01, "total": 0.02},
        depth_codes=np.arange(100),
        depth_changed=np.arange(100) % 2 == 0,
    )


def test_response_round_trips_through_both_encodings():
    response = p.build_act_response(_result(), SPEC.name, {"infer": 0.02, "total": 0.03})
    assert response["actions"].dtype == np.float32 and response["dt_ms"] == pytest.approx(20.0)
    assert "action" not in response
    for wire in (_wire(response), p.decode_msgpack(p.encode_msgpack(response))):
        parsed = p.parse_act_response(wire, SPEC, SPEC.action_dim)
        assert np.array_equal(parsed.positions, _result().positions.astype(np.float32))
        assert parsed.step_dt == SPEC.step_dt and parsed.mode == "think"
        assert parsed.server_timing == {"infer": 0.02, "total": 0.03}
        assert parsed.model_timings["vlm"] == 0.01
        assert parsed.depth_codes.dtype == np.int64 and parsed.depth_codes[99] == 99
        assert parsed.depth_changed.dtype == np.bool_ and parsed.depth_changed[0]


def test_bad_responses_are_refused():
    wrong_shape = _wire(p.build_act_response(_result(cols=7), SPEC.name, {}))
    with pytest.raises(p.ProtocolError, match="7 columns, the robot has 14"):
        p.parse_act_response(wrong_shape, SPEC, SPEC.action_dim)
    too_long = _wire(p.build_act_response(_result(rows=31), SPEC.name, {}))
    with pytest.raises(p.ProtocolError, match=r"shape \(31, 14\), expected \(1\.\.30, 14\)"):
        p.parse_act_response(too_long, SPEC, SPEC.action_dim)
    nan = p.build_act_response(_result(), SPEC.name, {})
    nan["actions"][3, 2] = np.nan
    with pytest.raises(p.ProtocolError, match="NaN"):
        p.parse_act_response(_wire(nan), SPEC, SPEC.action_dim)
    with pytest.raises(p.ProtocolError, match="server error: busy now"):
        p.parse_act_response(p.error_payload("busy", "busy now"), SPEC, SPEC.action_dim)


def test_released_server_response_is_read():
    """A released host_server_yam.py answers ``actions`` and ``dt_ms`` only."""
    actions = np.full((25, SPEC.action_dim), 0.5, np.float32)  # n_action_steps < horizon
    parsed = p.parse_act_response(_wire({"actions": actions, "dt_ms": 41.5}), SPEC, SPEC.action_dim)
    assert parsed.positions.shape == (25, 14) and parsed.positions.dtype == np.float64
    assert parsed.step_dt == SPEC.step_dt and parsed.mode == "flow"
    assert parsed.dt_ms == 41.5 and parsed.server_timing["total"] == pytest.approx(0.0415)


def test_images_jpeg_tolerates_data_uris_and_line_breaks():
    images, state = _observation()
    request = p.build_act_request(SPEC, images, state, "go", image_encoding="png")
    jpeg = request["images_jpeg"]
    jpeg["top"] = "data:image/png;base64," + jpeg["top"]
    jpeg["left"] = "\n".join(jpeg["left"][i : i + 76] for i in range(0, len(jpeg["left"]), 76))
    parsed = p.parse_act_request(_wire(request), SPEC)
    assert all(np.array_equal(parsed.images[n], images[n]) for n in SPEC.camera_names)


def test_any_malformed_request_is_a_protocol_error():
    """Random mixes of the released and our keys with wrong-typed values: the parser answers
    ProtocolError (a 4xx) or a valid request, never another exception (a 500 or a crash)."""
    images, state = _observation()
    good = _wire(p.build_act_request(SPEC, images, state, "go", image_encoding="raw"))
    jpeg = _wire(p.build_act_request(SPEC, images, state, "go", image_encoding="jpeg"))
    values = [
        None, True, 0, -1, 2**70, 1.5, float("nan"), "", "x", "@@@", [], [1, "a"], {}, {"top": 1},
        np.zeros(3), np.zeros((2, 2, 3), np.uint8), np.zeros((9, 9, 3), np.float32),
        np.zeros(14, np.int8), np.zeros(5, np.uint8), b"\xff\xd8\xff", jpeg["images_jpeg"],
        {"top": "", "left": "", "right": ""}, [good["top_cam"]] * 3, good["top_cam"],
    ]  # fmt: skip
    keys = [
        "top_cam", "left_cam", "right_cam", "images_jpeg", "images", "image", "state",
        "proprio", "instruction", "num_steps", "seed", "reset", "normalization_tag",
        "unnorm_key", "embodiment", "response_format", "encoded", "timestamp",
    ]  # fmt: skip
    rng = np.random.default_rng(1234)
    accepted = 0
    for _ in range(400):
        request = dict(good) if rng.random() < 0.7 else {}
        for _ in range(rng.integers(1, 4)):
            key = keys[rng.integers(len(keys))]
            if rng.random() < 0.2:
                request.pop(key, None)
            else:
                request[key] = values[rng.integers(len(values))]
        try:
            parsed = p.parse_act_request(request, SPEC)
        except p.ProtocolError:
            continue
        accepted += 1
        assert set(parsed.images) == set(SPEC.camera_names)
        assert parsed.state.shape == (SPEC.state_dim,) and np.all(np.isfinite(parsed.state))
    assert accepted > 0  # the mix also produced valid requests
