"""RemotePolicy against hostile, broken and slow servers (raw sockets, no real server).

Whatever the server does, ``act`` ends by its timeout (the whole request, not each socket read),
reads at most the response limit, and raises ``PolicyUnavailableError`` with a short message;
the next call against a good server gets its chunk. Thread joins below only bound a failure
(a hung ``act``); no test waits on wall time for success.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import socket
import struct
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from molmoact2_common.embodiments import get_embodiment
from molmoact2_policy.chunk_msgs import check_result
from molmoact2_policy.policy_api import ActionChunkResult, PolicyUnavailableError
from molmoact2_policy.remote.client import RemotePolicy
from molmoact2_policy.remote.protocol import (
    ProtocolError,
    encode_json,
    encode_msgpack,
    parse_act_response,
)

SPEC = get_embodiment("yam_bimanual")
JOINTS = tuple(f"j{i}" for i in range(SPEC.action_dim))
IMAGES = {name: np.zeros((48, 64, 3), np.uint8) for name in SPEC.camera_names}
STATE = np.zeros(SPEC.state_dim)
GOOD = {"actions": np.zeros((SPEC.horizon, SPEC.action_dim), np.float32), "dt_ms": 5.0}
GOOD_JSON = encode_json(GOOD)
GOOD_MSGPACK = encode_msgpack(GOOD)
BOUND_S = 20.0  # only bounds a hung act(): success never waits for it
TIMEOUT_S = 1.0

Handler = Callable[[socket.socket, threading.Event], None]


# ------------------------------------------------------------------------------ fake servers


class RawServer:
    """Accepts connections and hands each to ``handler`` (swappable) on its own thread."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.stop = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                self.handler(conn, self.stop)
            except OSError:  # the client cut us: what several tests want
                pass

    def close(self) -> None:
        self.stop.set()
        self._accepting.join(BOUND_S)
        self._sock.close()
        for thread in self._threads:
            thread.join(BOUND_S)


@contextmanager
def raw_server(handler: Handler) -> Iterator[RawServer]:
    server = RawServer(handler)
    try:
        yield server
    finally:
        server.close()


def read_request(conn: socket.socket) -> bool:
    """Reads one HTTP request (head and Content-Length body); False at EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return False
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = conn.recv(1 << 20)
        if not chunk:
            return False
        body += chunk
    return True


def http_answer(body: bytes, status: bytes = b"200 OK", headers: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\n" % len(body) + headers + b"\r\n" + body
    )


def answering(body: bytes, status: bytes = b"200 OK", headers: bytes = b"") -> Handler:
    def handler(conn: socket.socket, stop: threading.Event) -> None:
        while read_request(conn):
            conn.sendall(http_answer(body, status, headers))

    return handler


def ws_frame(payload: bytes, opcode: int = 2) -> bytes:
    size = len(payload)
    if size < 126:
        return struct.pack("!BB", 0x80 | opcode, size) + payload
    if size < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, size) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, size) + payload


def ws_accept(conn: socket.socket, hello: bytes = encode_msgpack({"metadata": {}})) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            raise OSError("closed during the handshake")
        data += chunk
    key = next(
        line.split(b":", 1)[1].strip()
        for line in data.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    conn.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n" + ws_frame(hello)
    )


def read_until_eof(conn: socket.socket, stop: threading.Event) -> None:
    conn.settimeout(0.1)
    while not stop.is_set():
        try:
            if not conn.recv(1 << 20):
                return
        except TimeoutError:
            pass


def act_bounded(
    policy: RemotePolicy, server: RawServer, images: dict[str, np.ndarray] = IMAGES
) -> BaseException:
    """The exception ``act`` raised; fails the test if it returned a chunk or hung."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(policy.act(images, STATE, "go"))
        except BaseException as exc:  # the test inspects whatever it was
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(BOUND_S)
    if thread.is_alive():
        server.stop.set()  # so the hung act() and the fixtures end soon after the failure
        pytest.fail(f"act() still running after {BOUND_S} s")
    (result,) = outcome
    assert isinstance(result, BaseException), "a chunk came from a bad answer"
    return result


def client(url: str, **kwargs: Any) -> RemotePolicy:
    kwargs.setdefault("timeout", TIMEOUT_S)
    return RemotePolicy(url, SPEC, JOINTS, **kwargs)


# ------------------------------------------------------------------------------ HTTP


def _dripping(message: bytes) -> Handler:
    """A server that answers one byte at a time, each well within the timeout."""

    def handler(conn: socket.socket, stop: threading.Event) -> None:
        read_request(conn)
        for i in range(len(message)):
            if stop.wait(0.2):
                return
            conn.sendall(message[i : i + 1])

    return handler


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(http_answer(GOOD_JSON), id="body"),
        pytest.param(b"HTTP/1.1 200 OK\r\n" + b"X-Drip: y\r\n" * 2000, id="head"),
    ],
)
def test_an_answer_dripped_byte_by_byte_times_out_at_the_request_timeout(message):
    # Before: httpx's timeout bounded each read, so a 1 s act() lasted minutes (235 s).
    with raw_server(_dripping(message)) as server, client(server.url) as policy:
        exc = act_bounded(policy, server)
    assert isinstance(exc, PolicyUnavailableError)
    assert "no answer within 1.000 s" in str(exc)


def test_an_endless_chunked_answer_is_cut_at_the_response_limit():
    sent = []

    def endless(conn: socket.socket, stop: threading.Event) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"100000\r\n" + b" " * 0x100000 + b"\r\n"
        total = 0
        # 64 MiB, then the end: the old client read all of it (and would read any amount).
        for _ in range(64):
            if stop.is_set():
                break
            conn.sendall(chunk)
            total += len(chunk)
            sent.append(total)
        conn.sendall(b"0\r\n\r\n")

    with raw_server(endless) as server, client(server.url) as policy:
        exc = act_bounded(policy, server)
    assert isinstance(exc, PolicyUnavailableError)
    assert "cut at the limit of 8388608 bytes" in str(exc)
    # The client hung up after the limit (plus what socket buffers hold), not after 64 MiB.
    assert sent and sent[-1] < 40 * 0x100000


def test_a_huge_content_length_is_refused_before_its_body_is_read():
    def huge(conn: socket.socket, stop: threading.Event) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000000\r\n\r\n")
        while not stop.is_set():
            conn.sendall(b" " * 0x10000)

    with raw_server(huge) as server, client(server.url) as policy:
        exc = act_bounded(policy, server)
    assert isinstance(exc, PolicyUnavailableError)
    assert "10000000000 bytes (Content-Length) is over the limit" in str(exc)


def test_a_gzip_bomb_is_cut_while_it_inflates():
    bomb = gzip.compress(b" " * (200 * 1024 * 1024), compresslevel=9)  # ~200 KB on the wire
    with raw_server(answering(bomb, headers=b"Content-Encoding: gzip\r\n")) as server:
        with client(server.url) as policy:
            tracemalloc.start()
            try:
                exc = act_bounded(policy, server)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
    assert isinstance(exc, PolicyUnavailableError)
    assert "inflates to more than" in str(exc)
    assert peak < 64 * 1024 * 1024  # before: the 200 MB answer was built


def test_a_gzip_answer_within_the_limit_is_read():
    body = gzip.compress(GOOD_JSON)
    with raw_server(answering(body, headers=b"Content-Encoding: gzip\r\n")) as server:
        with client(server.url) as policy:
            result = policy.act(IMAGES, STATE, "go")
    assert result.positions.shape == (SPEC.horizon, SPEC.action_dim)


@pytest.mark.parametrize("status", [b"200 OK", b"500 Internal Server Error", b"503 Busy"])
def test_a_megabyte_error_message_is_cut_in_the_exception(status):
    # The message goes into the node's status and log: it was copied whole (7 MB).
    body = json.dumps({"error": {"code": "x", "message": "A" * 3_000_000}}).encode()
    with raw_server(answering(body, status)) as server, client(server.url) as policy:
        exc = act_bounded(policy, server)
    assert isinstance(exc, PolicyUnavailableError)
    assert "AAAA" in str(exc) and len(str(exc)) < 2000


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(
            http_answer(b"", b"307 Temporary Redirect", b"Location: http://10.255.255.1:9/act\r\n"),
            id="redirect",
        ),
        pytest.param(http_answer(b"<html>nope</html>", b"404 Not Found"), id="404-html"),
        pytest.param(http_answer(b"{", b"200 OK"), id="non-json"),
        pytest.param(http_answer(GOOD_JSON, b"200 OK", b"Content-Encoding: br\r\n"), id="br"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n" + GOOD_JSON, id="long"),
    ],
)
def test_wrong_answers_are_unavailable_and_the_next_call_recovers(answer):
    state = {"bad": True}

    def handler(conn: socket.socket, stop: threading.Event) -> None:
        while read_request(conn):
            conn.sendall(answer if state["bad"] else http_answer(GOOD_JSON))
            if state["bad"]:
                return  # answers that leave the connection unusable: hang up

    with raw_server(handler) as server, client(server.url) as policy:
        exc = act_bounded(policy, server)
        assert isinstance(exc, PolicyUnavailableError), repr(exc)
        state["bad"] = False
        assert policy.act(IMAGES, STATE, "go").positions.shape[0] == SPEC.horizon


def test_an_answer_longer_than_it_declares_is_not_read_as_the_next_answer():
    """A server (or proxy) whose Content-Length is shorter than what it sends, and which keeps
    the connection open: the rest stays in the client's read buffer. The connection was kept
    for the next call, which then read that rest as its own status line and failed too (on
    the hang-up variant above, this happened whenever the server's close came late, as on a
    loaded machine). After an unreadable answer the connection is dropped."""
    answers = [b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n" + GOOD_JSON]

    def handler(conn: socket.socket, stop: threading.Event) -> None:
        while read_request(conn):
            conn.sendall(answers.pop(0) if answers else http_answer(GOOD_JSON))

    with raw_server(handler) as server, client(server.url) as policy:
        exc = act_bounded(policy, server)
        assert isinstance(exc, PolicyUnavailableError) and "unreadable" in str(exc), repr(exc)
        for _ in range(2):
            assert policy.act(IMAGES, STATE, "go").positions.shape[0] == SPEC.horizon


def test_health_reads_are_bounded_too():
    with (
        raw_server(_dripping(http_answer(b'{"model": {}}'))) as server,
        client(server.url) as policy,
    ):
        outcome: list[Any] = []
        thread = threading.Thread(target=lambda: outcome.append(policy.metadata()), daemon=True)
        thread.start()
        thread.join(BOUND_S)
        assert not thread.is_alive()
    assert "no answer within" in outcome[0]["server_error"]


# ------------------------------------------------------------------------------ websocket


def test_ws_send_to_a_server_that_never_reads_ends_at_the_timeout():
    # Before: websockets' send has no timeout; act() blocked until the server went away.
    def never_reads(conn: socket.socket, stop: threading.Event) -> None:
        ws_accept(conn)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stop.wait(BOUND_S + 10)

    rng = np.random.default_rng(0)
    big = {n: rng.integers(0, 256, (720, 1280, 3), dtype=np.uint8) for n in SPEC.camera_names}
    with raw_server(never_reads) as server:
        with client(server.url, transport="ws", image_encoding="raw") as policy:
            exc = act_bounded(policy, server, big)
    assert isinstance(exc, PolicyUnavailableError)
    assert "no answer within 1.000 s" in str(exc)


def test_ws_timeout_cuts_the_connection_instead_of_a_close_handshake():
    # Before: after the timeout the client waited close_timeout (10 s) for the server's close
    # frame. Now the socket is shut: the server sees EOF, and the client never sent a close
    # frame it would wait on.
    frames = []

    def never_answers(conn: socket.socket, stop: threading.Event) -> None:
        ws_accept(conn)
        conn.settimeout(0.1)
        while not stop.is_set():
            try:
                data = conn.recv(1 << 20)
            except TimeoutError:
                continue
            if not data:
                frames.append("eof")
                return
            frames.append(data[0] & 0x0F)

    with raw_server(never_answers) as server:
        with client(server.url, transport="ws", timeout=0.5) as policy:
            exc = act_bounded(policy, server)
            assert isinstance(exc, PolicyUnavailableError)
            assert "no answer within 0.500 s" in str(exc)
            assert policy._ws is None
    assert frames and frames[-1] == "eof"
    assert 8 not in frames[1:]  # no close frame (opcode 8) after the request


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(ws_frame(b'{"actions": 1}', opcode=1), id="text"),
        pytest.param(ws_frame(b"\xc1\xc1"), id="garbage"),
        pytest.param(
            ws_frame(encode_msgpack({"error": {"message": "B" * 2_000_000}, "status": "x"})),
            id="error-status-string",
        ),
        pytest.param(ws_frame(encode_msgpack({"error": "e", "status": [1]})), id="status-list"),
        pytest.param(ws_frame(encode_msgpack({"error": "e", "status": 1.5})), id="status-float"),
        pytest.param(ws_frame(encode_msgpack({**GOOD, "joint_names": 5})), id="joint-names-int"),
        pytest.param(ws_frame(encode_msgpack({**GOOD, "timings": np.zeros(2)})), id="timings-arr"),
        pytest.param(ws_frame(GOOD_MSGPACK)[:20], id="closed-mid-frame"),
    ],
)
def test_ws_wrong_answers_are_unavailable_and_short(answer):
    def handler(conn: socket.socket, stop: threading.Event) -> None:
        ws_accept(conn)
        conn.recv(1 << 20)
        conn.sendall(answer)
        read_until_eof(conn, stop)

    with raw_server(handler) as server, client(server.url, transport="ws") as policy:
        exc = act_bounded(policy, server)
    assert isinstance(exc, PolicyUnavailableError), repr(exc)
    assert len(str(exc)) < 2000


def test_ws_reconnects_after_a_garbage_frame():
    state = {"bad": True}

    def handler(conn: socket.socket, stop: threading.Event) -> None:
        ws_accept(conn)
        while True:
            data = conn.recv(1 << 20)
            if not data:
                return
            conn.sendall(ws_frame(b"\xc1" if state["bad"] else GOOD_MSGPACK))

    with raw_server(handler) as server, client(server.url, transport="ws") as policy:
        assert isinstance(act_bounded(policy, server), PolicyUnavailableError)
        assert policy._ws is None  # a server that sent garbage is not kept
        state["bad"] = False
        assert policy.act(IMAGES, STATE, "go").positions.shape[0] == SPEC.horizon


# ------------------------------------------------------------------------------ leaks


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("transport", ["http", "ws"])
def test_many_failures_leak_no_sockets_or_threads(transport):
    def rude(conn: socket.socket, stop: threading.Event) -> None:
        if transport == "ws":
            ws_accept(conn)
            conn.recv(1 << 20)
            conn.sendall(ws_frame(b"\xc1"))
        else:
            read_request(conn)
            conn.sendall(http_answer(b"<html>", b"500 Oops"))

    with raw_server(rude) as server, client(server.url, transport=transport) as policy:
        act_bounded(policy, server)  # the first builds the pools and the client
        fds, threads = _open_fds(), threading.active_count()
        for _ in range(30):
            assert isinstance(act_bounded(policy, server), PolicyUnavailableError)
        assert _open_fds() <= fds + 2
        assert threading.active_count() <= threads + 2


# ------------------------------------------------------------------------------ any answer

_FLOAT_DTYPES = st.sampled_from(["<f2", "<f4", "<f8", np.longdouble().dtype.str, "<i4", "|b1"])
_valid_actions = hnp.arrays(
    st.sampled_from(["<f2", "<f4", "<f8"]),
    st.tuples(st.integers(1, SPEC.horizon), st.just(SPEC.action_dim)),
    elements={"allow_nan": False, "allow_infinity": False},
)
# Mostly a chunk of the right shape, so the other keys' checks are reached.
_actions = st.one_of(
    *[_valid_actions] * 6,
    hnp.arrays(
        _FLOAT_DTYPES,
        st.tuples(st.integers(0, SPEC.horizon + 2), st.integers(12, 15)),
        elements=None,
        fill=st.nothing(),
    ),
    st.just(np.full((2, SPEC.action_dim), 1e4000, np.longdouble)),
    st.lists(st.floats(), max_size=3),
    st.none(),
    st.text(max_size=5),
)
_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=4),
    st.just(np.zeros(3)),
    st.just(np.float32(0.5)),
)
_value = st.recursive(
    _scalar,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)
# Keys checked before others mostly hold valid values, so the later checks are reached.
_payload = st.fixed_dictionaries(
    {"actions": _actions},
    optional={
        "step_dt": st.just(SPEC.step_dt),
        "dt_ms": st.floats(0.0, 1e3),
        "joint_names": st.one_of(st.integers(), st.just(np.zeros(3)), _value),
        "mode": _value,
        "timings": st.one_of(st.just(np.zeros(2)), _value),
        "server_timing": st.one_of(st.just(np.zeros(1)), _value),
        "depth_codes": _value,
        "depth_changed": _value,
    },
)


@settings(
    max_examples=200, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(_payload)
def test_any_answer_parses_into_a_publishable_chunk_or_raises_the_protocol_error(payload):
    # Before: an int joint_names raised TypeError, an array timings ValueError, and a long
    # double 1e4000 passed the finite check and became inf.
    try:
        response = parse_act_response(payload, SPEC, len(JOINTS))
    except ProtocolError:
        return
    result = ActionChunkResult(
        positions=response.positions, step_dt=response.step_dt, joint_names=JOINTS, mode="flow"
    )
    assert check_result(result, JOINTS) is None
    assert response.positions.dtype == np.float64
