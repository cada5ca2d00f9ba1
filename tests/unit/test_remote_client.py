"""RemotePolicy against a real server on localhost: same chunks as local, failures, recovery."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from molmoact2_common.embodiments import get_embodiment
from molmoact2_policy.policy_api import Policy, PolicyInputError, PolicyUnavailableError
from molmoact2_policy.remote.client import RemotePolicy
from molmoact2_policy.remote.protocol import RequestLimits, decode_image, encode_image
from molmoact2_policy.remote.server import create_app
from tests.remote_fakes import FakePolicy, ServerThread, free_port

SPEC = get_embodiment("yam_bimanual")
JOINTS = tuple(f"yam_{side}_{i}" for side in ("left", "right") for i in range(7))
TRANSPORTS = ("http", "ws")


def _observation(seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    h, w = 60, 80
    yy, xx = np.mgrid[0:h, 0:w]
    images = {}
    for i, name in enumerate(SPEC.camera_names):
        base = np.stack([xx * 3 + i * 20, yy * 4, xx + yy], axis=-1)
        images[name] = np.clip(base + rng.normal(0, 5, (h, w, 3)), 0, 255).astype(np.uint8)
    return images, rng.normal(size=SPEC.state_dim)


def _sent(positions: np.ndarray) -> np.ndarray:
    """A chunk as it arrives: the released wire carries float32."""
    return positions.astype(np.float32).astype(np.float64)


def _client(url: str, **kwargs) -> RemotePolicy:
    kwargs.setdefault("timeout", 5.0)
    return RemotePolicy(url, SPEC, JOINTS, **kwargs)


@pytest.fixture(scope="module")
def served():
    fake = FakePolicy(SPEC)
    with ServerThread(create_app(fake, token="tok", warmup=False)) as server:
        yield fake, server


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("encoding", ["raw", "png"])
def test_lossless_remote_chunk_equals_local_chunk(served, transport, encoding):
    fake, server = served
    images, state = _observation(1)
    with _client(server.url, token="tok", transport=transport, image_encoding=encoding) as remote:
        assert isinstance(remote, Policy)
        result = remote.act(images, state, "fold the shirt", seed=42)
    local = fake.act(images, state, "fold the shirt", seed=42)
    assert np.array_equal(result.positions, _sent(local.positions))
    assert result.joint_names == JOINTS and result.step_dt == pytest.approx(SPEC.step_dt)
    assert result.mode == "flow"
    timings = result.timings
    assert {"network", "server_total", "server_infer", "client_encode", "total"} <= set(timings)
    assert timings["model_vlm"] == pytest.approx(0.001)
    assert timings["total"] >= timings["server_total"] + timings["network"]
    assert timings["network"] >= 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_jpeg_remote_chunk_equals_local_chunk_on_decoded_images(served, transport):
    fake, server = served
    images, state = _observation(2)
    with _client(server.url, token="tok", transport=transport, jpeg_quality=80) as remote:
        result = remote.act(images, state, "wipe", seed=3)
    round_tripped = {
        name: decode_image(encode_image(image, "jpeg", jpeg_quality=80), name, RequestLimits())
        for name, image in images.items()
    }
    assert not all(np.array_equal(round_tripped[n], images[n]) for n in images)  # really lossy
    assert np.array_equal(
        result.positions, _sent(fake.act(round_tripped, state, "wipe", seed=3).positions)
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("encoding", ["raw", "jpeg"])
def test_frames_travel_at_camera_resolution_by_default(transport, encoding):
    seen = []
    fake = FakePolicy(SPEC)
    original = fake.act

    def recording_act(images, state, instruction, **options):
        seen.append({name: image.shape for name, image in images.items()})
        return original(images, state, instruction, **options)

    fake.act = recording_act
    frames = {name: np.full((360, 640, 3), 90, np.uint8) for name in SPEC.camera_names}
    with ServerThread(create_app(fake, warmup=False)) as server:
        with _client(server.url, transport=transport, image_encoding=encoding) as remote:
            assert remote.image_size == 0
            remote.act(frames, np.zeros(SPEC.state_dim), "go")
    assert seen == [{name: (360, 640, 3) for name in SPEC.camera_names}]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_num_steps_travels_to_the_server(served, transport):
    fake, server = served
    images, state = _observation(6)
    with _client(
        server.url, token="tok", transport=transport, num_steps=4, image_encoding="raw"
    ) as remote:
        four = remote.act(images, state, "go", seed=2)
        six = remote.act(images, state, "go", seed=2, num_steps=6)
    assert np.array_equal(
        four.positions, _sent(fake.act(images, state, "go", seed=2, num_steps=4).positions)
    )
    assert np.array_equal(
        six.positions, _sent(fake.act(images, state, "go", seed=2, num_steps=6).positions)
    )


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_server_down_then_recovery_after_restart(transport):
    port = free_port()
    fake = FakePolicy(SPEC)
    images, state = _observation()
    remote = _client(f"http://127.0.0.1:{port}", transport=transport, timeout=2.0)
    with pytest.raises(PolicyUnavailableError, match=f"127.0.0.1:{port}"):
        remote.act(images, state, "go", seed=1)  # never started
    with ServerThread(create_app(fake, warmup=False), port=port):
        first = remote.act(images, state, "go", seed=1)
    with pytest.raises(PolicyUnavailableError, match="policy server"):
        remote.act(images, state, "go", seed=1)
    with ServerThread(create_app(fake, warmup=False), port=port):
        again = remote.act(images, state, "go", seed=1)
    assert np.array_equal(first.positions, again.positions)
    remote.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_timeout_is_unavailable_and_next_call_gets_its_own_answer(transport):
    gate = threading.Event()
    fake = FakePolicy(SPEC, gate=gate)
    images, state = _observation()
    with ServerThread(create_app(fake, warmup=False)) as server:
        remote = _client(server.url, transport=transport, timeout=0.3, image_encoding="raw")
        with pytest.raises(PolicyUnavailableError, match=r"no answer within 0\.300 s"):
            remote.act(images, state, "slow", seed=1)
        gate.set()
        # The late answer to "slow" must not be taken as the answer to "fast".
        result = remote.act(images, state, "fast", seed=1)
        assert np.array_equal(
            result.positions, _sent(fake.act(images, state, "fast", seed=1).positions)
        )
        remote.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_wrong_token_is_unavailable_with_a_hint(served, transport):
    _, server = served
    images, state = _observation()
    with _client(server.url, token="wrong", transport=transport) as remote:
        with pytest.raises(PolicyUnavailableError, match=r"401.*check the token"):
            remote.act(images, state, "go")
        assert "401" in remote.metadata()["server_error"]


def test_busy_server_is_unavailable():
    gate = threading.Event()
    fake = FakePolicy(SPEC, gate=gate)
    images, state = _observation()
    with ServerThread(create_app(fake, max_queue=0, warmup=False)) as server:
        holder = _client(server.url)
        worker = threading.Thread(target=holder.act, args=(images, state, "hold"))
        worker.start()
        try:
            deadline = time.monotonic() + 10
            while fake.running == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            with _client(server.url) as other, pytest.raises(PolicyUnavailableError, match="503"):
                other.act(images, state, "go")
        finally:
            gate.set()
            worker.join(timeout=10)


def test_bad_observation_is_refused_locally(served):
    fake, server = served
    images, state = _observation()
    calls = fake.calls
    with _client(server.url, token="tok") as remote:
        with pytest.raises(PolicyInputError, match="state"):
            remote.act(images, state[:5], "go")
        with pytest.raises(PolicyInputError, match="missing camera"):
            remote.act({"top": images["top"]}, state, "go")
    assert fake.calls == calls


def test_server_side_input_rejection_is_input_error():
    fake = FakePolicy(SPEC, fail_with=PolicyInputError("camera 'top' is frozen"))
    images, state = _observation()
    with ServerThread(create_app(fake, warmup=False)) as server, _client(server.url) as remote:
        with pytest.raises(PolicyInputError, match="frozen"):
            remote.act(images, state, "go")


def test_reset_is_applied_before_the_next_inference(served):
    fake, server = served
    images, state = _observation()
    with _client(server.url, token="tok", transport="ws") as remote:
        remote.act(images, state, "go")
        before = fake.resets
        remote.reset()
        remote.act(images, state, "go")
        assert fake.resets == before + 1
        remote.act(images, state, "go")
        assert fake.resets == before + 1


def test_metadata_includes_server_health(served):
    _, server = served
    with _client(server.url, token="tok") as remote:
        info = remote.metadata()
    assert info["backend"] == "remote" and info["server"]["embodiment"] == "yam_bimanual"


def test_mismatched_embodiment_is_reported():
    droid = get_embodiment("droid")
    with ServerThread(create_app(FakePolicy(droid), warmup=False)) as server:
        images, state = _observation()
        with _client(server.url) as remote, pytest.raises(PolicyInputError, match="droid"):
            remote.act(images, state, "go")


def test_constructor_checks_its_arguments():
    with pytest.raises(ValueError, match="joint names"):
        RemotePolicy("http://127.0.0.1:1", SPEC, JOINTS[:7])
    with pytest.raises(ValueError, match="transport"):
        RemotePolicy("http://127.0.0.1:1", SPEC, JOINTS, transport="grpc")
    with pytest.raises(ValueError, match="image_encoding"):
        RemotePolicy("http://127.0.0.1:1", SPEC, JOINTS, image_encoding="bmp")
    with pytest.raises(ValueError, match="server_url"):
        RemotePolicy("127.0.0.1:8202", SPEC, JOINTS)
    with pytest.raises(ValueError, match="num_steps"):
        RemotePolicy("http://127.0.0.1:1", SPEC, JOINTS, num_steps=0)
    remote = RemotePolicy("https://gpu.lab:8202/", SPEC, JOINTS)
    assert remote.ws_url == "wss://gpu.lab:8202/ws" and remote.server_url == "https://gpu.lab:8202"


# ---------------------------------------------------------------- the tiny MolmoAct2 model


@pytest.fixture(scope="module")
def tiny_pair():
    """Two independently built tiny models: one behind the server, one called locally."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from molmoact2_policy.model.loader import load_policy

    def build():
        return load_policy("tiny", SPEC.name, joint_names=JOINTS, seed=0)

    return build(), build()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_tiny_model_remote_equals_local(tiny_pair, transport):
    served_model, local_model = tiny_pair
    images, state = _observation(4)
    state = state * 0.1
    with ServerThread(create_app(served_model)) as server:
        raw = _client(server.url, transport=transport, image_encoding="raw", timeout=60.0)
        remote = raw.act(images, state, "open the drawer", seed=9)
        local = local_model.act(images, state, "open the drawer", seed=9)
        assert np.array_equal(remote.positions, _sent(local.positions))
        assert remote.mode == local.mode and remote.joint_names == JOINTS
        assert {"model_prefix", "model_flow", "server_infer", "network"} <= set(remote.timings)
        assert raw.metadata()["server"]["warmup"]["state"] == "ready"
        raw.close()

        jpeg = _client(server.url, transport=transport, jpeg_quality=75, timeout=60.0)
        remote_jpeg = jpeg.act(images, state, "open the drawer", seed=9)
        jpeg.close()
    decoded = {
        name: decode_image(encode_image(image, "jpeg", jpeg_quality=75), name, RequestLimits())
        for name, image in images.items()
    }
    local_jpeg = local_model.act(decoded, state, "open the drawer", seed=9)
    assert np.array_equal(remote_jpeg.positions, _sent(local_jpeg.positions))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_opt_in_resize_uses_the_released_processors_kernel(tiny_pair, transport):
    """image_size > 0 resizes with the processor's own kernel: raw frames give the local chunk."""
    from molmoact2_policy.model.preprocess import IMAGE_SIZE, resize_image

    served_model, local_model = tiny_pair
    images, state = _observation(5)
    state = state * 0.1
    with ServerThread(create_app(served_model)) as server:
        raw = _client(
            server.url, transport=transport, image_encoding="raw", timeout=60.0,
            image_size=IMAGE_SIZE,
        )  # fmt: skip
        remote = raw.act(images, state, "open the drawer", seed=3)
        raw.close()
        jpeg = _client(
            server.url, transport=transport, jpeg_quality=80, timeout=60.0, image_size=IMAGE_SIZE
        )
        remote_jpeg = jpeg.act(images, state, "open the drawer", seed=3)
        assert jpeg.metadata()["image_size"] == IMAGE_SIZE
        jpeg.close()
    local = local_model.act(images, state, "open the drawer", seed=3)
    assert np.array_equal(remote.positions, _sent(local.positions))
    # JPEG of the smaller frame is what the server saw (the release measured that this
    # shifts behaviour, hence opt-in): the chunk is the model's answer to exactly that.
    decoded = {
        name: decode_image(
            encode_image(resize_image(image, IMAGE_SIZE, exact=True), "jpeg", jpeg_quality=80),
            name,
            RequestLimits(),
        )
        for name, image in images.items()
    }
    expected = local_model.act(decoded, state, "open the drawer", seed=3)
    assert np.array_equal(remote_jpeg.positions, _sent(expected.positions))


def test_serve_cli_in_a_subprocess(tiny_pair):
    import signal
    import subprocess
    import sys

    import httpx

    _, local_model = tiny_pair
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "molmoact2_policy.remote.server", "--checkpoint", "tiny",
         "--embodiment", SPEC.name, "--port", str(port), "--device", "cpu", "--token", "t0k",
         "--joint-names", ",".join(JOINTS), "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, server.stdout.read()
            assert time.monotonic() < deadline, "server did not become ready"
            try:
                info = httpx.get(f"{url}/healthz", headers={"X-Molmoact2-Token": "t0k"}).json()
                if info["warmup"]["state"] == "ready":
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert info["model"]["checkpoint"] == "tiny" and info["device"] == "cpu"
        images, state = _observation(5)
        with _client(url, token="t0k", image_encoding="png", timeout=60.0) as remote:
            result = remote.act(images, state * 0.1, "close the lid", seed=2)
        expected = local_model.act(images, state * 0.1, "close the lid", seed=2)
        assert np.array_equal(result.positions, _sent(expected.positions))
        # Ctrl-C is how a user stops it: 130, no traceback (uvicorn re-raises the SIGINT it
        # handled; that printed CancelledError and KeyboardInterrupt tracebacks).
        server.send_signal(signal.SIGINT)
        output, _ = server.communicate(timeout=20)
        assert server.returncode == 130 and "Traceback" not in output, output
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=20)
