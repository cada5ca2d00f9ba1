"""The released `/act` client against our server, request and response as the release writes them.

Requests are built the way ``allenai/molmoact2`` ``examples/yam/molmoact_client.py``
(``MolmoActHTTP.send_request``) builds them, from the contract in
tests/fixtures/released_act_protocol.json (sources listed there), never with our client code.
"""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path

import httpx
import json_numpy
import numpy as np
import pytest

from molmoact2_common.embodiments import get_embodiment
from molmoact2_policy.remote.protocol import RequestLimits, decode_image
from molmoact2_policy.remote.server import create_app
from tests.remote_fakes import FakePolicy, ServerThread

CONTRACT = json.loads(
    (Path(__file__).parents[1] / "fixtures" / "released_act_protocol.json").read_text()
)
YAM = CONTRACT["yam_bimanual"]
SPEC = get_embodiment("yam_bimanual")
INSTRUCTION = "put the red block in the bowl"


def _camera_frames(seed: int) -> dict[str, np.ndarray]:
    """Native-resolution frames under the released request's raw keys (textured, so JPEG-lossy)."""
    rng = np.random.default_rng(seed)
    frames = {}
    for key, field in YAM["raw_request"].items():
        if key.endswith("_cam"):
            h, w, _ = field["shape"]
            yy, xx = np.mgrid[0:h, 0:w]
            base = np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=-1)
            noise = rng.integers(0, 40, (h, w, 3))
            frames[key] = np.clip(base + noise, 0, 255).astype(np.dtype(field["dtype"]))
    return frames


def _released_state(seed: int) -> np.ndarray:
    # require_bimanual_state: float32, (14,)
    field = YAM["raw_request"]["state"]
    state = np.random.default_rng(seed).normal(scale=0.3, size=field["shape"])
    return np.asarray(state, dtype=np.dtype(field["dtype"])).reshape(-1)


def _jpeg_b64(frame: np.ndarray) -> str:
    """MolmoActHTTP's ``_jpg``: PIL JPEG at quality 85, base64 as ASCII text."""
    image = pytest.importorskip("PIL.Image")
    buffer = io.BytesIO()
    image.fromarray(frame).save(buffer, format="JPEG", quality=85)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _post_like_the_release(url: str, payload: dict) -> dict:
    """send_request: json_numpy body, Content-Type JSON, json_numpy.loads(response.text)."""
    response = httpx.post(
        url, content=json_numpy.dumps(payload), headers={"Content-Type": YAM["content_type"]}
    )
    if response.status_code != 200:
        raise AssertionError(f"Server error: {response.text}")
    return json_numpy.loads(response.text)


def _check_released_response(data: dict) -> np.ndarray:
    """What the released client reads: ``actions`` float32 (30, 14), finite, and ``dt_ms``."""
    spec = YAM["response"]["actions"]
    actions = data["actions"]
    assert isinstance(actions, np.ndarray) and actions.dtype == np.dtype(spec["dtype"])
    assert len(data["actions"]) == spec["shape"][0]  # the client logs len(response['actions'])
    checked = np.asarray(data["actions"], dtype=np.float32)  # MolmoActServo.inference
    assert checked.shape == tuple(spec["shape"]) and np.isfinite(checked).all()
    assert isinstance(data["dt_ms"], float) and data["dt_ms"] >= 0
    return actions


@pytest.fixture(scope="module")
def served():
    fake = FakePolicy(SPEC)
    with ServerThread(create_app(fake, warmup=False)) as server:
        yield fake, server


def _our_images(frames: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # Released camera order [top, left, right] is our camera order.
    return dict(
        zip(
            SPEC.camera_names,
            (frames[k] for k in ("top_cam", "left_cam", "right_cam")),
            strict=True,
        )
    )


def test_released_raw_request_gets_a_valid_chunk(served):
    fake, server = served
    frames, state = _camera_frames(1), _released_state(1)
    payload = {
        "left_cam": frames["left_cam"],
        "top_cam": frames["top_cam"],
        "right_cam": frames["right_cam"],
        "timestamp": time.time(),
        "instruction": INSTRUCTION,
        "state": state,
        "normalization_tag": YAM["raw_request"]["normalization_tag"]["value"],
    }
    assert set(payload) == set(YAM["raw_request"])
    _check_released_response(_post_like_the_release(f"{server.url}/act", payload))
    # The chunk is the policy's answer to exactly these pixels and this state.
    seeded = _post_like_the_release(f"{server.url}/act", {**payload, "seed": 5})
    local = fake.act(_our_images(frames), state.astype(np.float64), INSTRUCTION, seed=5)
    assert np.array_equal(seeded["actions"], local.positions.astype(np.float32))


def test_released_jpeg_request_gets_a_valid_chunk(served):
    fake, server = served
    frames, state = _camera_frames(2), _released_state(2)
    jpegs = {
        "left": _jpeg_b64(frames["left_cam"]),
        "top": _jpeg_b64(frames["top_cam"]),
        "right": _jpeg_b64(frames["right_cam"]),
    }
    payload = {
        "images_jpeg": jpegs,
        "timestamp": time.time(),
        "instruction": INSTRUCTION,
        "state": state,
        "normalization_tag": "yam_dual_molmoact2",
        "seed": 8,  # our extension, only so the chunk can be compared
    }
    assert set(payload) - {"seed"} == set(YAM["jpeg_request"])
    assert set(jpegs) == set(YAM["jpeg_request"]["images_jpeg"]["keys"])
    actions = _check_released_response(_post_like_the_release(f"{server.url}/act", payload))
    # The server decoded exactly the JPEGs sent, at native resolution, in camera order.
    decoded = {
        name: decode_image(base64.b64decode(jpegs[key]), name, RequestLimits())
        for name, key in zip(SPEC.camera_names, ("top", "left", "right"), strict=True)
    }
    assert decoded["top"].shape == frames["top_cam"].shape
    local = fake.act(decoded, state.astype(np.float64), INSTRUCTION, seed=8)
    assert np.array_equal(actions, local.positions.astype(np.float32))


def test_num_steps_is_honoured(served):
    fake, server = served
    frames, state = _camera_frames(3), _released_state(3)
    payload = {**frames, "instruction": INSTRUCTION, "state": state, "seed": 1}
    default = _post_like_the_release(f"{server.url}/act", payload)["actions"]
    ten = _post_like_the_release(f"{server.url}/act", {**payload, "num_steps": 10})["actions"]
    four = _post_like_the_release(f"{server.url}/act", {**payload, "num_steps": 4})["actions"]
    assert np.array_equal(default, ten)  # the release's default is 10 steps
    local = fake.act(
        _our_images(frames), state.astype(np.float64), INSTRUCTION, seed=1, num_steps=4
    )
    assert np.array_equal(four, local.positions.astype(np.float32))
    assert not np.array_equal(four, ten)


class _FixedStepsPolicy(FakePolicy):
    """A backend whose act() cannot take num_steps (runs the 10 of its metadata)."""

    def act(self, images, state, instruction, *, seed=None):  # type: ignore[override]
        return super().act(images, state, instruction, seed=seed)


def test_num_steps_a_backend_cannot_run_is_refused_by_name():
    fake = _FixedStepsPolicy(SPEC)
    frames, state = _camera_frames(4), _released_state(4)
    payload = {**frames, "instruction": INSTRUCTION, "state": state}
    with ServerThread(create_app(fake, warmup=False)) as server:
        assert _post_like_the_release(f"{server.url}/act", {**payload, "num_steps": 10})
        response = httpx.post(
            f"{server.url}/act", content=json_numpy.dumps({**payload, "num_steps": 4})
        )
    assert response.status_code == 400
    message = json_numpy.loads(response.text)["error"]["message"]
    assert "num_steps 4" in message and "runs 10 flow steps" in message


class _NoFlowLoopPolicy(_FixedStepsPolicy):
    """Like the FAST policy: no flow loop, so no flow_steps in its metadata."""

    def metadata(self):
        meta = super().metadata()
        meta.pop("flow_steps")
        return meta


def test_backend_without_flow_loop_accepts_only_the_released_default():
    frames, state = _camera_frames(4), _released_state(4)
    payload = {**frames, "instruction": INSTRUCTION, "state": state}
    with ServerThread(create_app(_NoFlowLoopPolicy(SPEC), warmup=False)) as server:
        assert _post_like_the_release(f"{server.url}/act", {**payload, "num_steps": 10})
        refused = httpx.post(
            f"{server.url}/act", content=json_numpy.dumps({**payload, "num_steps": 3})
        )
    assert refused.status_code == 400 and "num_steps 3" in refused.text


def test_get_act_is_the_released_health_call(served):
    _, server = served
    response = httpx.get(f"{server.url}/act")  # curl http://<lan-ip>:8202/act
    assert response.status_code == 200
    info = response.json()
    health = YAM["health_get_act"]
    assert set(health["keys"]) <= set(info)
    for key, value in health["values"].items():
        assert info[key] == value, key
    assert info["repo_id"] == "fake" and info["device"] == "cpu"
    assert info["action_horizon"] == SPEC.horizon


def test_released_droid_request():
    droid = get_embodiment("droid")
    contract = CONTRACT["droid"]
    fake = FakePolicy(droid)
    rng = np.random.default_rng(5)
    payload = {
        key: rng.integers(0, 256, field["shape"], dtype=np.uint8)
        for key, field in contract["raw_request"].items()
        if key.endswith("_cam")
    }
    state = rng.normal(size=contract["raw_request"]["state"]["shape"]).astype(np.float32)
    payload.update(
        instruction="wipe the table", state=state, normalization_tag=contract["norm_tag"]
    )
    with ServerThread(create_app(fake, warmup=False)) as server:
        data = _post_like_the_release(f"{server.url}/act", {**payload, "seed": 2})
        info = httpx.get(f"{server.url}/act").json()
    assert data["actions"].dtype == np.float32
    assert data["actions"].shape == tuple(contract["response"]["actions"]["shape"])
    images = dict(
        zip(droid.camera_names, (payload["external_cam"], payload["wrist_cam"]), strict=True)
    )
    local = fake.act(images, state.astype(np.float64), "wipe the table", seed=2)
    assert np.array_equal(data["actions"], local.positions.astype(np.float32))
    assert info["norm_tag"] == "franka_droid" and info["num_cameras"] == 2


def _released_style_server(seen: list) -> object:
    """A stand-in for the released host_server_yam.py, written from its build_app: reads the
    released keys only (raw ``*_cam`` arrays or base64 ``images_jpeg``), ignores anything else,
    answers ``{"actions": float32, "dt_ms": float}`` and ``{"error": str}``."""
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    async def act(request):
        payload = json_numpy.loads((await request.body()).decode("utf-8"))
        try:
            if "images_jpeg" in payload:
                frames = [
                    base64.b64decode(payload["images_jpeg"][k]) for k in ("top", "left", "right")
                ]
            else:
                frames = [payload[k] for k in ("top_cam", "left_cam", "right_cam")]
            state = np.asarray(payload["state"], dtype=np.float32).reshape(-1)
            instruction = str(payload["instruction"])
        except KeyError as exc:
            return Response(json_numpy.dumps({"error": f"missing required field: {exc}"}), 400)
        seen.append((frames, state, instruction, int(payload.get("num_steps", 10))))
        actions = np.full((SPEC.horizon, SPEC.action_dim), state[0], np.float32)
        body = json_numpy.dumps({"actions": actions, "dt_ms": 12.5})
        return Response(body, media_type="application/json")

    async def info(request):
        return Response(json_numpy.dumps({"status": "ok", "norm_tag": "yam_dual_molmoact2"}))

    return Starlette(
        routes=[Route("/act", act, methods=["POST"]), Route("/act", info, methods=["GET"])]
    )


@pytest.mark.parametrize("encoding", ["raw", "jpeg"])
def test_our_remote_backend_talks_to_a_released_style_server(encoding):
    from molmoact2_policy.remote.client import RemotePolicy

    seen: list = []
    joints = tuple(f"j{i}" for i in range(SPEC.action_dim))
    frames = _our_images(_camera_frames(6))
    state = np.full(SPEC.state_dim, 0.25)
    with ServerThread(_released_style_server(seen)) as server:
        with RemotePolicy(
            server.url, SPEC, joints, timeout=10.0, image_encoding=encoding, num_steps=7
        ) as remote:
            result = remote.act(frames, state, INSTRUCTION)
            assert remote.metadata()["server"]["norm_tag"] == "yam_dual_molmoact2"
    (sent, sent_state, instruction, num_steps) = seen[0]
    if encoding == "raw":  # native resolution, camera order [top, left, right], bit for bit
        assert all(
            np.array_equal(a, frames[n]) for a, n in zip(sent, SPEC.camera_names, strict=True)
        )
    else:
        assert all(data[:2] == b"\xff\xd8" for data in sent)  # JPEG files
    assert instruction == INSTRUCTION and num_steps == 7 and sent_state[0] == np.float32(0.25)
    assert result.positions.shape == (SPEC.horizon, SPEC.action_dim)
    assert np.all(result.positions == 0.25) and result.step_dt == SPEC.step_dt
    assert result.timings["server_infer"] == pytest.approx(0.0125)
