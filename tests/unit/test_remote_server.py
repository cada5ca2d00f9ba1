"""Policy server over real sockets (uvicorn in a thread): schema, errors, token, bounded queue."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import json_numpy
import numpy as np
import pytest
from websockets.sync.client import connect

from molmoact2_common.embodiments import get_embodiment
from molmoact2_policy.policy_api import PolicyInputError
from molmoact2_policy.remote import protocol as p
from molmoact2_policy.remote.server import create_app
from tests.remote_fakes import FakePolicy, ServerThread

SPEC = get_embodiment("yam_bimanual")
TOKEN = "correct horse"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _observation(seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    images = {name: rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for name in SPEC.camera_names}
    return images, rng.normal(size=SPEC.state_dim)


def _released_body(seed: int = 0, **extra) -> str:
    """A request in an OpenVLA-style json_numpy client's layout (not via our client); the
    released MolmoAct2 client's own layout is tested in test_remote_released.py."""
    images, state = _observation(seed)
    payload = {
        "images": [images[name] for name in SPEC.camera_names],
        "instruction": "put the cup in the sink",
        "state": state,
        "unnorm_key": "yam_bimanual",
        "seed": 11,
        **extra,
    }
    return json_numpy.dumps(payload)


def _wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


@pytest.fixture
def served():
    fake = FakePolicy(SPEC)
    with ServerThread(create_app(fake, token=TOKEN, max_body_bytes=400_000)) as server:
        yield fake, server


def _ok(server: ServerThread) -> None:
    """The server still answers a valid request after whatever the test threw at it."""
    response = httpx.post(f"{server.url}/act", content=_released_body(), headers=AUTH)
    assert response.status_code == 200, response.text


def test_released_json_schema_by_hand(served):
    fake, server = served
    response = httpx.post(
        f"{server.url}/act",
        content=_released_body(),
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    body = json_numpy.loads(response.text)
    action = body["actions"]
    assert action.shape == (SPEC.horizon, SPEC.action_dim) and action.dtype == np.float32
    images, state = _observation()
    expected = fake.act(images, state, "put the cup in the sink", seed=11)
    assert np.array_equal(action, expected.positions.astype(np.float32))
    assert body["dt_ms"] == pytest.approx(1000 * body["server_timing"]["infer"])
    assert body["protocol_version"] == 2
    assert body["step_dt"] == pytest.approx(1 / 30)
    assert body["embodiment"] == "yam_bimanual" and body["mode"] == "flow"
    assert len(body["joint_names"]) == SPEC.action_dim
    assert {"decode", "queue", "infer", "total"} <= set(body["server_timing"])
    assert body["server_timing"]["total"] >= body["server_timing"]["infer"] > 0

    bare = httpx.post(
        f"{server.url}/act", content=_released_body(response_format="action"), headers=AUTH
    )
    assert np.array_equal(json_numpy.loads(bare.text), expected.positions.astype(np.float32))


def test_healthz_reports_model_and_warmup(served):
    fake, server = served

    def health():
        return httpx.get(f"{server.url}/healthz", headers=AUTH).json()

    _wait_until(lambda: health()["warmup"]["state"] == "ready")
    info = health()
    assert info["embodiment"] == "yam_bimanual" and info["device"] == "cpu"
    assert info["model"]["checkpoint"] == "fake"
    assert info["camera_names"] == list(SPEC.camera_names)
    assert fake.resets == 1  # warm-up leaves no per-episode state behind


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b'{"instruction": "go", "images": [', 400, "malformed JSON"),
        (b"[1, 2, 3]", 400, "must be a JSON/msgpack object"),
        (_released_body(state=np.zeros(3)).encode(), 400, r"expected shape \(14,\)"),
        (
            json_numpy.dumps(
                {
                    "images": [np.zeros((48, 64), np.uint8)] * 3,
                    "state": np.zeros(14),
                    "instruction": "go",
                }
            ).encode(),
            400,
            "HxWx3",
        ),
        (_released_body(unnorm_key="droid").encode(), 400, "unnorm_key 'droid'"),
        (_released_body(num_steps=1000).encode(), 400, "'num_steps' must be an integer"),
        (b"x" * 400_001, 413, "exceeds the limit of 400000"),
    ],
)
def test_bad_requests_get_clear_4xx_and_server_keeps_serving(served, body, status, message):
    _, server = served
    response = httpx.post(f"{server.url}/act", content=body, headers=AUTH)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] in ("bad_request", "too_large")
    assert re.search(message, error["message"]), error["message"]
    _ok(server)


def test_oversize_chunked_body_without_content_length_is_refused(served):
    _, server = served

    def chunks():
        for _ in range(50):
            yield b"x" * 10_000

    response = httpx.post(f"{server.url}/act", content=chunks(), headers=AUTH)
    assert response.status_code == 413
    _ok(server)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"X-Molmoact2-Token": "wrong"},
        {"Authorization": TOKEN},
    ],
)
def test_wrong_or_missing_token_is_401(served, headers):
    fake, server = served
    _wait_until(lambda: httpx.get(f"{server.url}/healthz").json()["warmup"] == "ready")
    calls = fake.calls  # after the warm-up inference
    for method, path in (("POST", "/act"), ("GET", "/act"), ("POST", "/reset")):
        response = httpx.request(
            method, f"{server.url}{path}", content=_released_body(), headers=headers
        )
        assert response.status_code == 401
        assert "token" in response.json()["error"]["message"]
    assert fake.calls == calls  # nothing reached the model
    ok = httpx.post(
        f"{server.url}/act", content=_released_body(), headers={"X-Molmoact2-Token": TOKEN}
    )
    assert ok.status_code == 200


def test_bounded_queue_returns_503_for_excess_requests():
    gate = threading.Event()
    fake = FakePolicy(SPEC, gate=gate)
    max_queue = 2
    with ServerThread(create_app(fake, max_queue=max_queue, warmup=False)) as server:
        with ThreadPoolExecutor(max_workers=max_queue + 1) as pool:
            held = [
                pool.submit(httpx.post, f"{server.url}/act", content=_released_body(i), timeout=30)
                for i in range(max_queue + 1)
            ]

            def queue():
                return httpx.get(f"{server.url}/healthz").json()["queue"]

            _wait_until(lambda: queue()["admitted"] == max_queue + 1 and queue()["running"] == 1)
            excess = httpx.post(f"{server.url}/act", content=_released_body(9), timeout=5)
            assert excess.status_code == 503
            assert excess.json()["error"]["code"] == "busy"
            assert "max_queue" in excess.json()["error"]["message"]
            gate.set()
            statuses = [future.result().status_code for future in held]
        assert statuses == [200] * (max_queue + 1)
        assert fake.max_running == 1  # one inference at a time on the device
        _wait_until(lambda: httpx.get(f"{server.url}/healthz").json()["queue"]["admitted"] == 0)
        assert httpx.post(f"{server.url}/act", content=_released_body()).status_code == 200


def test_policy_errors_become_http_errors_and_server_survives():
    fake = FakePolicy(SPEC, fail_with=RuntimeError("CUDA out of memory"))
    with ServerThread(create_app(fake, warmup=False)) as server:
        response = httpx.post(f"{server.url}/act", content=_released_body())
        assert response.status_code == 500
        assert "RuntimeError: CUDA out of memory" in response.json()["error"]["message"]
        fake.fail_with = PolicyInputError("camera 'top': all black")
        response = httpx.post(f"{server.url}/act", content=_released_body())
        assert response.status_code == 400 and "all black" in response.json()["error"]["message"]
        fake.fail_with = None
        assert httpx.post(f"{server.url}/act", content=_released_body()).status_code == 200
        assert httpx.get(f"{server.url}/healthz").json()["failed"] == 1


def test_reset_flag_and_endpoint_reach_the_policy():
    fake = FakePolicy(SPEC)
    with ServerThread(create_app(fake, warmup=False)) as server:
        httpx.post(f"{server.url}/act", content=_released_body(reset=True))
        assert fake.resets == 1
        assert httpx.post(f"{server.url}/reset").json() == {"reset": True}
        assert fake.resets == 2


def test_websocket_binary_transport(served):
    fake, server = served
    ws_url = server.url.replace("http", "ws") + "/ws"
    images, state = _observation(3)
    request = p.build_act_request(SPEC, images, state, "stack", seed=5, image_encoding="raw")
    with connect(ws_url, additional_headers=AUTH) as ws:
        hello = p.decode_msgpack(ws.recv(timeout=5))
        assert hello["metadata"]["embodiment"] == "yam_bimanual"
        ws.send("a text frame")
        error = p.decode_msgpack(ws.recv(timeout=5))
        assert error["status"] == 400 and "binary msgpack" in error["error"]["message"]
        ws.send(b"\xc1 not msgpack")
        assert "malformed msgpack" in p.decode_msgpack(ws.recv(timeout=5))["error"]["message"]
        ws.send(p.encode_msgpack(request))
        response = p.decode_msgpack(ws.recv(timeout=5))
        expected = fake.act(images, state, "stack", seed=5)
        assert np.array_equal(response["actions"], expected.positions.astype(np.float32))
        assert response["server_timing"]["infer"] > 0


def test_websocket_wrong_token_explains_then_closes(served):
    _, server = served
    ws_url = server.url.replace("http", "ws") + "/ws"
    with connect(ws_url, additional_headers={"Authorization": "Bearer nope"}) as ws:
        message = p.decode_msgpack(ws.recv(timeout=5))
        assert message["status"] == 401 and "token" in message["error"]["message"]
        with pytest.raises(Exception):  # noqa: B017 - any close exception will do
            ws.recv(timeout=5)
        assert ws.close_code == 1008


def test_warm_up_runs_the_configured_instructions_before_serving():
    fake = FakePolicy(SPEC)
    seen = []
    original = fake.act

    def recording_act(images, state, instruction, **options):
        seen.append((instruction, {name: image.shape for name, image in images.items()}))
        return original(images, state, instruction, **options)

    fake.act = recording_act
    texts = ("fold the towel", "put the towel in the basket")
    with ServerThread(create_app(fake, warmup_instructions=texts)) as server:
        _wait_until(lambda: httpx.get(f"{server.url}/healthz").json()["warmup"]["state"] == "ready")
    assert [text for text, _ in seen] == list(texts)
    assert all(shape == (360, 640, 3) for _, shapes in seen for shape in shapes.values())
    assert fake.resets == 1
    with pytest.raises(ValueError, match="instruction"):
        create_app(fake, warmup_instructions=("  ",))
    # One the policy would refuse: the warm-up would fail and leave the server degraded.
    with pytest.raises(ValueError, match="<im_patch>"):
        create_app(fake, warmup_instructions=("fold <im_patch> towel",))


def test_warm_up_prefers_the_policys_own_warm_up():
    class SelfWarming(FakePolicy):
        def __init__(self, spec):
            super().__init__(spec)
            self.warmed: list[str] = []

        def warm_up(self, instruction: str) -> dict[str, float]:
            self.warmed.append(instruction)
            return {}

    fake = SelfWarming(SPEC)
    with ServerThread(create_app(fake, warmup_instructions=("wipe the table",))) as server:
        _wait_until(lambda: httpx.get(f"{server.url}/healthz").json()["warmup"]["state"] == "ready")
    assert fake.warmed == ["wipe the table"] and fake.calls == 0
