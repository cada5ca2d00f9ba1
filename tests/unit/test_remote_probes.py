"""Regressions from outside-in probes of the policy server (real HTTP and websocket clients).

Each test is a case a hostile or buggy client found: a request the server answered with 500 or
kept in memory, a client that hung up and still cost an inference, a client that never read its
answers and kept its connection, a stop that waited forever.
Request layouts follow the released server, ``host_server_yam.py`` as published in
``jianmanlincjx/Molmoact2`` (commit e1ff63d275160fa021b8e2bc6defed45ddc0c434) and
``npow/molmoact2`` (ad0dd5ff625d9df615408af2a264316271d5e198), and the released client
``allenai/molmoact2`` ``examples/yam/molmoact_client.py``
(3aaaa12b669b9e4ec1879fb7dd69e598c5f00919).

Every wait is a loop on an observable condition with a generous deadline; nothing asserts time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import socket
import threading
import time
import weakref

import httpx
import json_numpy
import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from uvicorn.server import ServerState

from molmoact2_common.embodiments import get_embodiment
from molmoact2_policy.remote.guard import ConnectionLimits
from molmoact2_policy.remote.protocol import decode_json, encode_msgpack
from molmoact2_policy.remote.server import (
    PolicyService,
    create_app,
    exit_if_inference_stuck,
    uvicorn_config,
)
from tests.remote_fakes import FakePolicy, ServerThread
from tests.remote_fakes import released_body as _body

SPEC = get_embodiment("yam_bimanual")
DEADLINE = 15.0  # seconds any single wait may take on a loaded 2-core machine


def _wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.01)


@pytest.fixture
def served():
    fake = FakePolicy(SPEC)
    with ServerThread(create_app(fake, warmup=False)) as server:
        yield fake, server


# ---------------------------------------------------------------------------------------------
# Requests that were answered 500 (or with an empty message): each now gets a 4xx naming it


def _with_state_json(values: str) -> bytes:
    """A released request whose ``state`` is the literal JSON ``values``."""
    payload = json.loads(_body())
    payload["state"] = "STATE"
    return json.dumps(payload).replace('"STATE"', values).encode()


def _with_shape(shape: list) -> bytes:
    payload = json.loads(_body())
    payload["top_cam"]["shape"] = shape  # the json_numpy envelope's shape
    return json.dumps(payload).encode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # A JSON integer too large for a float (was OverflowError -> 500).
        (_with_state_json("[" + ",".join(["1" + "0" * 400] * 14) + "]"), "numeric"),
        # json_numpy shape with a boolean dimension whose byte count matches the 36x64x3 data
        # (True * 2304 * 3 == 6912; reshape raised TypeError -> 500).
        (_with_shape([True, 36 * 64, 3]), "non-negative ints"),
        # A lone surrogate from a JSON "\ud800" escape (UnicodeEncodeError in the tokenizer; 500).
        ((_body().decode()[:-1] + ',"instruction":"cup\\ud800"}').encode(), "Unicode"),
        # Text no operator typed as words (ran as tokens of their own; the ROS inputs refuse
        # it the same way: policy_api.instruction_characters_problem).
        ((_body().decode()[:-1] + ',"instruction":"caf\\ufffd cup"}').encode(), "U+FFFD"),
        ((_body().decode()[:-1] + ',"instruction":"wipe\\u001b[2J"}').encode(), "U+001B"),
        (_with_state_json("[0.0,0.0,null" + ",0.0" * 11 + "]"), "numeric"),
        (_with_state_json("[[0.0],[0.0,1.0]]"), "ragged"),
    ],
    ids=[
        "state-bigint", "shape-bool", "lone-surrogate", "replacement-char", "escape-char",
        "state-null", "state-ragged",
    ],
)
def test_hostile_json_gets_400_naming_the_problem(served, body, message):
    fake, server = served
    reply = httpx.post(f"{server.url}/act", content=body, timeout=DEADLINE)
    assert reply.status_code == 400, reply.text
    assert message in reply.json()["error"]["message"]
    assert httpx.post(f"{server.url}/act", content=_body(), timeout=DEADLINE).status_code == 200
    assert fake.calls == 1


def test_malformed_msgpack_frames_say_what_is_wrong(served):
    """msgpack's errors for a reserved byte or too deep nesting carry no text; the answer
    named nothing ("malformed msgpack: ")."""
    from websockets.sync.client import connect

    _, server = served
    with connect(server.url.replace("http", "ws") + "/ws") as ws:
        ws.recv(timeout=DEADLINE)  # hello
        for frame, name in ((b"\xc1", "FormatError"), (b"\x91" * 100_000 + b"\xc0", "StackError")):
            ws.send(frame)
            answer = msgpack.unpackb(ws.recv(timeout=DEADLINE))
            assert answer["status"] == 400 and name in answer["error"]["message"]


def test_rtc_to_a_policy_without_it_is_refused_by_name(served):
    """``rtc`` is our extension; a backend whose act() does not take it answered 500
    (TypeError) after queueing, now 400 naming the field before any inference."""
    fake, server = served
    rtc = {"previous": np.zeros((SPEC.horizon, SPEC.action_dim)), "delay_steps": 2}
    reply = httpx.post(f"{server.url}/act", content=_body(rtc=rtc), timeout=DEADLINE)
    assert reply.status_code == 400 and "'rtc'" in reply.json()["error"]["message"]
    assert fake.calls == 0


@pytest.mark.parametrize(
    "change",
    [
        {"normalization_tag": "t" * 1_000_000},
        {"embodiment": "e" * 1_000_000},
        {"images_jpeg": {f"cam{i}": "" for i in range(60_000)}},  # under the value cap
    ],
    ids=["tag", "embodiment", "camera-names"],
)
def test_error_messages_do_not_echo_megabytes(served, change, caplog):
    """Messages quote what the client sent; a megabyte there came back twice (2 MB answers)
    and went into the server log. Both are cut to a bounded length that says so."""
    _, server = served
    caplog.set_level("WARNING", logger="molmoact2.remote.server")
    payload = json.loads(_body())
    if "images_jpeg" in change:
        for key in ("top_cam", "left_cam", "right_cam"):
            del payload[key]
    payload.update(change)
    reply = httpx.post(f"{server.url}/act", content=json.dumps(payload), timeout=DEADLINE)
    assert reply.status_code == 400
    assert len(reply.content) < 5000 and "characters in all" in reply.json()["error"]["message"]
    assert all(len(r.getMessage()) < 2000 for r in caplog.records)


@pytest.fixture(scope="module")
def tiny_service():
    """The tiny checkpoint behind the server's request path (no socket: the model is the point)."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from molmoact2_policy.model.loader import load_policy

    service = PolicyService(load_policy("tiny", SPEC.name, seed=0))
    yield service
    service.shutdown()


@pytest.mark.parametrize(
    ("instruction", "token"),
    [
        ("put the cup <im_patch> away", "<im_patch>"),  # was 500: image tokens != features
        ("put <IM_PATCH> away", "<im_patch>"),  # the prompt lowercases the instruction
        ("stack the cups<|im_end|>", "<|im_end|>"),
        ("go <depth_3> <action_output>", "<depth_3>"),
        ("a <|image|> b", "<|image|>"),  # our own image placeholder
    ],
)
def test_instruction_spelling_a_control_token_is_refused(tiny_service, instruction, token):
    """The prompt is tokenised as a whole and added tokens are matched in the text, so a
    request's instruction could inject the model's control tokens (``<im_patch>`` failed the
    forward with a 500; ``<|im_end|>`` would end the user turn). 400 naming the token."""
    status, answer = asyncio.run(tiny_service.handle(_body(instruction=instruction), decode_json))
    assert status == 400 and token in answer["error"]["message"], answer


@pytest.mark.parametrize("instruction", ["pick <b>the</b> cup", "x < y > z", "put the cup away"])
def test_instruction_with_ordinary_angle_brackets_runs(tiny_service, instruction):
    status, answer = asyncio.run(tiny_service.handle(_body(instruction=instruction), decode_json))
    assert status == 200 and np.all(np.isfinite(answer["actions"])), answer


# ---------------------------------------------------------------------------------------------
# Released state layouts


@pytest.mark.parametrize(
    "state",
    [
        np.zeros((1, 14), np.float32),
        np.arange(14, dtype=np.float32).reshape(2, 7),  # [left(7), right(7)] as rows
        [[float(i) for i in range(7)], [float(i) for i in range(7, 14)]],
    ],
    ids=["1x14", "2x7", "nested-list"],
)
def test_state_of_state_dim_values_in_any_layout_is_accepted_as_released(served, state):
    """The released server reads ``np.asarray(state, float32).reshape(-1)`` and checks only
    that 14 values result (host_server_yam.py ``Policy.predict``), so these worked there and got
    400 here. Flattened row-major, as there."""
    fake, server = served
    reply = httpx.post(f"{server.url}/act", content=_body(state=state), timeout=DEADLINE)
    assert reply.status_code == 200, reply.text
    flat = np.asarray(state, np.float64).reshape(-1)
    # The fake's chunk hashes every input: equal to the flat (14,) state's chunk, same seed.
    reference = httpx.post(
        f"{server.url}/act", content=_body(state=flat.astype(np.float32), seed=3), timeout=DEADLINE
    )
    again = httpx.post(f"{server.url}/act", content=_body(state=state, seed=3), timeout=DEADLINE)
    assert np.array_equal(
        json_numpy.loads(reference.text)["actions"], json_numpy.loads(again.text)["actions"]
    )
    assert fake.calls == 3


def test_state_with_another_number_of_values_is_still_refused(served):
    _, server = served
    reply = httpx.post(
        f"{server.url}/act", content=_body(state=np.zeros((2, 8), np.float32)), timeout=DEADLINE
    )
    assert reply.status_code == 400 and "expected shape (14,)" in reply.text


def test_get_act_reports_dtype_as_the_released_servers_do():
    """``"dtype": str(policy.model.dtype)`` in the released ``GET /act`` (host_server_yam.py
    ``health``): ``"torch.bfloat16"``. Ours said ``"bfloat16"``."""

    class Bf16Policy(FakePolicy):
        def metadata(self):
            return {**super().metadata(), "dtype": "bfloat16"}

    with ServerThread(create_app(Bf16Policy(SPEC), warmup=False)) as server:
        info = httpx.get(f"{server.url}/act", timeout=DEADLINE).json()
    assert info["dtype"] == "torch.bfloat16"


# ---------------------------------------------------------------------------------------------
# Memory: a rejected request's payload is freed when it is answered


class _Marker:
    """Stands for a decoded payload; weakly referenceable, unlike dicts and lists."""


def test_a_rejected_request_is_freed_without_the_garbage_collector():
    """Each rejected request's decoded body stayed alive in a reference cycle (the exception
    travelling back through anyio's worker future) until the cyclic collector ran: six bad
    32 MB-class requests held 720 MB. With the collector off, the payload must be gone as soon
    as the answer is."""
    service = PolicyService(FakePolicy(SPEC))
    markers: list[weakref.ref] = []

    def decode(body: bytes, *, max_bytes: int) -> dict[str, object]:
        marker = _Marker()
        markers.append(weakref.ref(marker))
        return {**json.loads(body), "marker": marker}

    async def run() -> list[int]:
        bad = json.dumps({"instruction": 5}).encode()
        return [(await service.handle(bad, decode))[0] for _ in range(3)]

    gc.collect()
    gc.disable()
    try:
        statuses = asyncio.run(run())
        alive = [ref for ref in markers if ref() is not None]
    finally:
        gc.enable()
        service.shutdown()
    assert statuses == [400, 400, 400]
    assert len(markers) == 3 and not alive


def test_bodies_in_flight_are_bounded_across_connections():
    """Bodies were read before a queue slot was taken: 32 simultaneous 30 MB uploads were all
    in memory at once (peak 1.04 GB). The running, queued and one more body fit; the next
    upload is refused 503, and admitted again once one is done."""
    limit = 100_000
    app = create_app(FakePolicy(SPEC), warmup=False, max_queue=0, max_body_bytes=limit)
    budget = app.state.body_budget
    assert budget.limit_bytes == 2 * limit  # running + one being received (max_queue 0)
    head = b"POST /act HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % limit
    sent = limit - 10
    with ServerThread(app) as server:
        slow = []
        for _ in range(2):  # two uploads of the full size, stalled 10 bytes before the end
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE)
            sock.sendall(head + b"{" * sent)
            slow.append(sock)
        _wait_until(lambda: budget.used == 2 * sent, "both uploads hold their bytes")
        refused = httpx.post(f"{server.url}/act", content=_body(), timeout=DEADLINE)
        assert refused.status_code == 503 and "request bodies" in refused.text
        slow.pop().close()  # one client gives up: its reservation goes back
        _wait_until(lambda: budget.used == sent, "the abandoned upload is released")
        accepted = httpx.post(f"{server.url}/act", content=_body(), timeout=DEADLINE)
        assert accepted.status_code == 200, accepted.text
        slow.pop().close()
        _wait_until(lambda: budget.used == 0, "every reservation is given back")


def test_heads_that_declare_a_body_and_send_none_hold_no_budget():
    """The declared length was reserved up front: two heads declaring the largest body and
    sending nothing (under 100 bytes each) held the whole budget until the body deadline, and
    every real upload meanwhile was refused 503."""
    limit = 100_000
    app = create_app(FakePolicy(SPEC), warmup=False, max_queue=0, max_body_bytes=limit)
    budget = app.state.body_budget
    head = b"POST /act HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % limit
    limits = ConnectionLimits(body_timeout=4 * DEADLINE)  # the heads stay for the whole test
    with ServerThread(app, connection_limits=limits) as server:
        idle = []
        try:
            for _ in range(3):
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE)
                sock.sendall(head)
                idle.append(sock)
            for _ in range(3):
                reply = httpx.post(f"{server.url}/act", content=_body(), timeout=DEADLINE)
                assert reply.status_code == 200, reply.text
            assert budget.used == 0
        finally:
            for sock in idle:
                sock.close()


def _health_status(server: ServerThread) -> int | None:
    try:
        return httpx.get(f"{server.url}/healthz", timeout=DEADLINE).status_code
    except httpx.TransportError:
        return None  # a refused connection may see a reset instead of the 503


def test_a_client_that_never_reads_its_answers_is_cut():
    """Pipelining requests and never reading the answers filled the socket buffers; the server
    then waited to write for good, in no phase with a deadline (probe: still connected 20 s
    later with every other timeout at 3 s), one of ``max_connections`` gone for as long as the
    client liked. Here it holds the only connection until ``send_timeout`` cuts it."""
    # Only the send deadline may cut it within the test: not a head or body deadline.
    slow = 4 * DEADLINE
    limits = ConnectionLimits(
        max_connections=1, send_timeout=1.0, idle_timeout=slow, header_timeout=slow,
        body_timeout=slow,
    )
    # Answers of ~1 MB: a few fill the server's socket buffers (MBs on loopback). With small
    # answers (a 405 to `GET /act`, ~370 bytes) that took ~11000 requests, 8-11 s on a loaded
    # 2-core host, against the DEADLINE our blocked sendall gives up at.
    app = create_app(_BulkyPolicy(SPEC), warmup=False)
    body = _body()
    request = (
        b"POST /act HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    ) + body
    with ServerThread(app, connection_limits=limits) as server:
        hog = socket.socket()
        hog.settimeout(DEADLINE)
        # Small before connect, so the window we advertise is small from the SYN on. Shrunk
        # after connect, it broke our own sending (1 run in 5 under load): the server's answers
        # overran the window already promised, our kernel dropped them and the window updates
        # they carried (nstat RcvPruned, BeyondWindow), and our sendall sat in zero-window
        # probes backing off past DEADLINE (ss: persist backoff 6, server Recv-Q 0). The
        # server saw a client that stopped sending mid-head, not one that stopped reading.
        hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        hog.connect(("127.0.0.1", server.port))
        # ~1 MB of pipelined requests per write, written until the server cuts us. One fixed
        # payload (14 MB once) could be swallowed whole by the kernel's socket buffers and the
        # server's read-ahead on a slow host before the cut came: the flood then "ended" with no
        # error and the test failed (about 1 run in 4 under load).
        requests = request * (2**20 // len(request) + 1)
        cut: list[str] = []
        flooding_until = time.monotonic() + 2 * DEADLINE

        def flood() -> None:
            try:
                while time.monotonic() < flooding_until:
                    hog.sendall(requests)  # blocks once the server stops reading
            except OSError as exc:
                cut.append(type(exc).__name__)

        sender = threading.Thread(target=flood, daemon=True)
        sender.start()
        try:
            sender.join(timeout=3 * DEADLINE)
            assert not sender.is_alive(), "the server kept a client that never reads"
            # Reset by the server; a TimeoutError would be our socket giving up after DEADLINE.
            assert cut and cut[0] in ("ConnectionResetError", "BrokenPipeError"), cut
            _wait_until(lambda: _health_status(server) == 200, "the connection is free again")
        finally:
            with contextlib.suppress(OSError):
                hog.shutdown(socket.SHUT_RDWR)  # wakes a sendall still blocked
            hog.close()
            sender.join(timeout=DEADLINE)


def test_a_connection_closed_with_answers_still_unread_is_released():
    """``transport.close()`` (every deadline, an answer to ``Connection: close``, a 400) first
    flushes what the kernel refused. asyncio only reports a full buffer past its 64 kB
    high-water mark, so a client that never read, with a few hundred bytes of our answers
    still queued, kept the connection (and one of ``max_connections``) open for good after
    the close: no phase, no send deadline. Whatever the kernel refuses now runs the send
    deadline, closing or not."""
    limits = ConnectionLimits(header_timeout=0.5, send_timeout=1.0, idle_timeout=30.0)
    config = uvicorn_config(create_app(FakePolicy(SPEC), warmup=False), connection_limits=limits)
    config.load()

    async def scenario() -> tuple[bool, int]:
        loop = asyncio.get_running_loop()
        state = ServerState()
        lost = loop.create_future()

        class Protocol(config.http_protocol_class):  # type: ignore[misc, valid-type]
            def connection_lost(self, exc: Exception | None) -> None:
                super().connection_lost(exc)
                if not lost.done():
                    lost.set_result(None)

        with socket.create_server(("127.0.0.1", 0)) as listener, socket.socket() as reader:
            reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect
            reader.connect(listener.getsockname())
            accepted, _ = listener.accept()
            accepted.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            transport, _ = await loop.connect_accepted_socket(
                lambda: Protocol(config=config, server_state=state, app_state={}), accepted
            )
            # More of our bytes than both small socket buffers take, yet below asyncio's
            # 64 kB high-water mark: asyncio holds the rest for a client that never reads
            # (`reader` doesn't), and never reports writing paused.
            # (Measured: the kernel takes ~13 kB of it, 9 kB before refusing any.)
            while transport.get_write_buffer_size() < 48 * 1024:
                transport.write(b"x" * 1024)
            queued = transport.get_write_buffer_size()
            # No request follows: the head deadline closes the connection.
            try:
                await asyncio.wait_for(asyncio.shield(lost), DEADLINE)
            except asyncio.TimeoutError:
                transport.abort()
                return False, queued
            return not state.connections, queued

    released, queued = asyncio.run(scenario())
    assert 0 < queued < 65536
    assert released, "closed with unread answers queued, the connection was never released"


class _BulkyPolicy(FakePolicy):
    """Answers of about 1 MB (a big ``timings`` map), so a few fill the socket buffers."""

    def act(self, *args, **kwargs):
        result = super().act(*args, **kwargs)
        return dataclasses.replace(result, timings={f"t{i}": 0.0 for i in range(60_000)})


def test_a_websocket_client_that_never_reads_is_cut():
    """uvicorn's websocket keep-alive timeout closes with ``transport.close()``, which waits to
    flush a buffer the client never drains: a client that stopped reading held its connection
    60 s+ after 2373 answers (probe). The send deadline aborts it."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    limits = ConnectionLimits(send_timeout=1.0)
    app = create_app(_BulkyPolicy(SPEC), warmup=False)
    frame = encode_msgpack(json_numpy.loads(_body()))
    with ServerThread(app, connection_limits=limits) as server:
        ws_url = server.url.replace("http", "ws") + "/ws"
        with connect(ws_url, max_size=None, max_queue=1, close_timeout=1) as ws:
            ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            outcome: list[BaseException] = []

            def flood() -> None:
                try:
                    for _ in range(10_000):  # never reads an answer
                        ws.send(frame)
                except BaseException as exc:  # whatever ends the flood is the outcome
                    outcome.append(exc)

            sender = threading.Thread(target=flood, daemon=True)
            sender.start()
            sender.join(timeout=3 * DEADLINE)
            kept = sender.is_alive()
            if kept:  # unblock our own send so the test fails instead of hanging in close()
                ws.socket.shutdown(socket.SHUT_RDWR)
                sender.join(timeout=DEADLINE)
            assert not kept, "the server kept a websocket client that never reads"
            assert outcome and isinstance(outcome[0], ConnectionClosed), outcome
        assert _health_status(server) == 200


# ---------------------------------------------------------------------------------------------
# A client that hangs up while its request waits for the device


def _post_raw(server: ServerThread, body: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE)
    sock.sendall(
        b"POST /act HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )
    return sock


def test_queued_request_of_a_client_that_hung_up_is_dropped(caplog):
    """A robot whose request times out retries; the dead request used to stay queued and run,
    so with a slow device every live request waited behind dead ones (probe: 5 dead clients,
    6 inferences, the live answer 4.4 s instead of 1.4 s at 1 s per inference)."""
    gate = threading.Event()
    fake = FakePolicy(SPEC, gate=gate)
    app = create_app(fake, warmup=False)
    queue = app.state.service.queue
    caplog.set_level("INFO", logger="molmoact2.remote.server")
    with ServerThread(app) as server:
        running = _post_raw(server, _body())
        _wait_until(lambda: fake.running == 1, "the first request runs")
        waiting = _post_raw(server, _body(seed=1))
        _wait_until(lambda: queue.snapshot()["admitted"] == 2, "the second request queues")
        waiting.close()  # the client gives up
        _wait_until(lambda: queue.snapshot()["admitted"] == 1, "the dead request is dropped")
        # One that is already running keeps its slot: the device is busy until it ends.
        running.close()
        assert queue.snapshot() == {"admitted": 1, "running": 1, "max_queue": 4}
        gate.set()
        _wait_until(lambda: queue.snapshot()["admitted"] == 0, "the running request ends")
        assert httpx.post(f"{server.url}/act", content=_body(), timeout=DEADLINE).is_success
    assert fake.calls == 2  # the first and the last; never the dropped one
    assert any("dropped a queued request" in r.getMessage() for r in caplog.records)


def test_websocket_request_of_a_client_that_left_is_dropped():
    from websockets.sync.client import connect

    gate = threading.Event()
    fake = FakePolicy(SPEC, gate=gate)
    app = create_app(fake, warmup=False)
    queue = app.state.service.queue
    frame = encode_msgpack(json_numpy.loads(_body()))
    with ServerThread(app) as server:
        ws_url = server.url.replace("http", "ws") + "/ws"
        with connect(ws_url) as first:
            first.recv(timeout=DEADLINE)
            first.send(frame)
            _wait_until(lambda: fake.running == 1, "the first request runs")
            with connect(ws_url) as second:
                second.recv(timeout=DEADLINE)
                second.send(frame)
                _wait_until(lambda: queue.snapshot()["admitted"] == 2, "the second one queues")
            _wait_until(lambda: queue.snapshot()["admitted"] == 1, "the dead request is dropped")
            # A frame sent while the first waits is read ahead and answered in turn.
            first.send(encode_msgpack({"instruction": 5}))
            gate.set()
            answers = [msgpack.unpackb(first.recv(timeout=DEADLINE)) for _ in range(2)]
        assert "actions" in answers[0] and answers[1]["status"] == 400
    assert fake.calls == 1


# ---------------------------------------------------------------------------------------------
# Stopping the server while an inference is stuck


def test_stop_does_not_wait_forever_for_a_stuck_inference(caplog):
    """uvicorn waited for in-flight requests without a limit: SIGTERM during a 40 s inference
    took 40 s, and a call stuck on the device kept the server alive for good. Now the open
    requests get 503 ``stopping`` at ``shutdown_timeout`` (uvicorn's cancellation answered 500
    with a traceback), a queued one never runs, and ``main`` ends a process whose inference
    still runs (after Ctrl-C the interpreter joined the inference thread: 25.7 s)."""
    gate = threading.Event()
    fake = FakePolicy(SPEC, gate=gate)
    app = create_app(fake, warmup=False)
    queue = app.state.service.queue
    # log_config=None: uvicorn's own loggers propagate, so a traceback there would show too.
    limits = ConnectionLimits(shutdown_timeout=0.5)
    server = ServerThread(app, connection_limits=limits, log_config=None)
    outcomes: list[object] = []

    def client() -> None:
        try:
            reply = httpx.post(f"{server.url}/act", content=_body(), timeout=60)
            outcomes.append((reply.status_code, reply.json()["error"]["code"]))
        except httpx.HTTPError as exc:
            outcomes.append(type(exc).__name__)

    caplog.set_level("INFO")
    try:
        with server:
            callers = [threading.Thread(target=client, daemon=True) for _ in range(2)]
            callers[0].start()
            _wait_until(lambda: fake.running == 1, "the inference runs")
            callers[1].start()
            _wait_until(lambda: queue.snapshot()["admitted"] == 2, "a second request queues")
            server._server.should_exit = True  # what SIGTERM / Ctrl-C set
            server._thread.join(timeout=DEADLINE)
            assert not server._thread.is_alive(), "the server waited for the stuck inference"
            for caller in callers:
                caller.join(timeout=DEADLINE)
            assert outcomes == [(503, "stopping")] * 2
            exits: list[int] = []
            exit_if_inference_stuck(app.state.service, exit_process=exits.append)
            assert exits == [1]  # still running: main() ends the process
    finally:
        gate.set()
    _wait_until(lambda: fake.running == 0, "the inference ends")
    assert fake.calls == 1  # the queued request never ran
    exits = []
    exit_if_inference_stuck(app.state.service, exit_process=exits.append)
    assert exits == []
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


# ---------------------------------------------------------------------------------------------
# Any body: an answer or a clear 4xx, never a 500


_JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.sampled_from([0, 1, 14, 3072, 2**63, 10**400, -1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.sampled_from(["\ud800", "<f4", "|u1", "|O", "V3", "(3,)u1", "M8[s]", "", "AAAA", "//8="]),
)
# Values that broke the server once (each a 500 before), so every run tries them too: a
# state of huge integers, a shape with a boolean dimension whose byte count matches the data
# (36 x 64 x 3 image), a lone surrogate, nested state lists.
_KNOWN_HOSTILE = st.sampled_from(
    [
        [10**400] * 14, [1e308] * 14, [True, 36 * 64, 3], [36, 64, True, 3], "cup\ud800",
        [[0.0] * 7, [0.0] * 7], [[0.0], [0.0, 1.0]], [0.0] * 13 + [None],
    ]
)  # fmt: skip
_JSON_VALUES = st.one_of(
    _KNOWN_HOSTILE,
    st.recursive(
        _JSON_LEAVES,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=3)
        ),
        max_leaves=12,
    ),
)
# Where a mutation lands: a top-level field or a part of a json_numpy envelope.
_PATHS = st.sampled_from(
    [
        ("state",), ("instruction",), ("num_steps",), ("seed",), ("rtc",), ("images_jpeg",),
        ("normalization_tag",), ("reset",), ("response_format",), ("encoded",), ("top_cam",),
        ("top_cam", "shape"), ("top_cam", "dtype"), ("top_cam", "__numpy__"),
        ("state", "shape"), ("state", "dtype"), ("state", "__numpy__"),
    ]
)  # fmt: skip


@settings(
    max_examples=200,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(mutations=st.lists(st.tuples(_PATHS, _JSON_VALUES), min_size=1, max_size=3))
def test_any_mutated_released_request_is_answered_or_refused_with_4xx(mutations):
    """The released JSON request with one to three fields replaced by arbitrary JSON (huge
    integers, booleans in shapes, NaN, lone surrogates, wrong envelopes): the server answers
    200, 400 or 413, never 500, and the chunk it answers is finite."""
    payload = json.loads(_body())
    for path, value in mutations:
        target = payload
        for key in path[:-1]:
            if not isinstance(target.get(key), dict):
                target[key] = {}
            target = target[key]
        target[path[-1]] = value
    body = json.dumps(payload).encode()  # ensure_ascii: a lone surrogate travels as \ud800
    service = PolicyService(FakePolicy(SPEC))
    try:
        status, answer = asyncio.run(service.handle(body, decode_json))
    finally:
        service.shutdown()
    assert status in (200, 400, 413), answer
    if status == 200:
        assert np.all(np.isfinite(answer["actions"]))
