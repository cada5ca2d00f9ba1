"""Hostile connections against the policy server on 127.0.0.1: slowloris head and body, idle
connections, a connection flood, token coverage, clients hanging up mid-body.

Short server limits keep each test to a few seconds; every wait is a loop on an observable
condition with a generous deadline, never a sleep standing in for synchronisation.
"""

from __future__ import annotations

import logging
import socket
import time

import httpx
import json_numpy
import numpy as np
import pytest

from molmoact2_common.embodiments import get_embodiment
from molmoact2_policy.remote.guard import ConnectionLimits
from molmoact2_policy.remote.server import create_app
from tests.remote_fakes import FakePolicy, ServerThread

SPEC = get_embodiment("yam_bimanual")
TOKEN = "s3cret"
DEADLINE = 15.0  # seconds any single wait may take on a loaded 2-core machine


def _body() -> bytes:
    rng = np.random.default_rng(0)
    payload = {
        "top_cam": rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
        "left_cam": rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
        "right_cam": rng.integers(0, 256, (48, 64, 3), dtype=np.uint8),
        "instruction": "stack the cups",
        "state": np.zeros(14, np.float32),
    }
    return json_numpy.dumps(payload).encode()


def _health_status(server: ServerThread) -> int | None:
    """``GET /healthz``'s status, None when the connection was reset (a refused connection that
    had already sent its request may see a reset instead of the 503 written before the close)."""
    try:
        return httpx.get(f"{server.url}/healthz").status_code
    except httpx.TransportError:
        return None


def _wait_served(server: ServerThread) -> None:
    deadline = time.monotonic() + DEADLINE
    while _health_status(server) != 200:
        assert time.monotonic() < deadline, "the server never took connections again"


def _connect(server: ServerThread) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=DEADLINE)
    sock.settimeout(0.05)
    return sock


def _read_until_closed(sock: socket.socket, trickle: bytes = b"") -> bytes:
    """Everything the server sends until it closes, sending ``trickle`` one byte at a time."""
    received = b""
    deadline = time.monotonic() + DEADLINE
    index = 0
    while time.monotonic() < deadline:
        if index < len(trickle):
            try:
                sock.sendall(trickle[index : index + 1])
            except OSError:
                break  # closed under us: what remains to read is below
            index += 1
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            return received
        received += chunk
    else:
        raise AssertionError(f"the server kept the connection open ({received[:80]!r})")
    sock.settimeout(1.0)
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except OSError:
        pass
    return received


@pytest.fixture
def guarded():
    # Short enough for quick tests, long enough that a legitimate request on a loaded 2-core
    # machine (client thread descheduled between connect and send) is never cut.
    limits = ConnectionLimits(header_timeout=2.0, body_timeout=2.0, idle_timeout=2.0)
    fake = FakePolicy(SPEC)
    with ServerThread(create_app(fake, warmup=False), connection_limits=limits) as server:
        yield fake, server


def test_slowloris_head_is_cut_with_408(guarded):
    _, server = guarded
    with _connect(server) as sock:
        head = (
            b"POST /act HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + b"X: y\r\n" * 400
        )
        reply = _read_until_closed(sock, trickle=head)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:80]
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_slowloris_body_is_cut_with_408(guarded, caplog):
    fake, server = guarded
    caplog.set_level(logging.INFO, logger="molmoact2.remote.server")
    body = _body()
    with _connect(server) as sock:
        sock.sendall(
            b"POST /act HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        reply = _read_until_closed(sock, trickle=body)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:80]
    assert b"request body not received in time" in reply
    assert fake.calls == 0  # nothing half-received reached the model
    assert httpx.post(f"{server.url}/act", content=body).status_code == 200
    # By now the cut request's handler has run: the server's own cut is not reported as the
    # client hanging up.
    assert not [r for r in caplog.records if "hung up" in r.getMessage()]


def test_idle_connections_are_closed(guarded):
    _, server = guarded
    with _connect(server) as silent:
        assert _read_until_closed(silent) == b""  # never sent a byte: closed, nothing said
    with _connect(server) as kept_alive:
        kept_alive.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = _read_until_closed(kept_alive)  # answered, then idle past idle_timeout
    assert reply.startswith(b"HTTP/1.1 200") and b'"status"' in reply


def test_connection_flood_is_capped_and_the_server_recovers():
    cap, flood = 8, 60
    # The whole flood is accepted long before the first admitted connection's deadline.
    limits = ConnectionLimits(header_timeout=3.0, max_connections=cap)
    with ServerThread(
        create_app(FakePolicy(SPEC), warmup=False), connection_limits=limits
    ) as server:
        sockets = [_connect(server) for _ in range(flood)]
        try:
            replies = [_read_until_closed(sock) for sock in sockets]
        finally:
            for sock in sockets:
                sock.close()
        refused = [reply for reply in replies if reply.startswith(b"HTTP/1.1 503")]
        assert len(refused) == flood - cap
        assert b"too many open connections" in refused[0]
        assert replies.count(b"") == cap  # the admitted ones timed out without a request
        _wait_served(server)  # all closed: a real client gets in again


def test_connection_cap_counts_kept_alive_clients():
    limits = ConnectionLimits(max_connections=2, idle_timeout=30.0)
    with ServerThread(
        create_app(FakePolicy(SPEC), warmup=False), connection_limits=limits
    ) as server:
        clients = [httpx.Client(base_url=server.url) for _ in range(2)]
        try:
            for client in clients:
                assert client.get("/healthz").status_code == 200  # held open by keep-alive
            assert _health_status(server) in (503, None)
            clients.pop().close()
            _wait_served(server)
        finally:
            for client in clients:
                client.close()


@pytest.mark.parametrize("path", ["/docs", "/openapi.json", "/redoc", "/act", "/nowhere"])
def test_everything_but_healthz_needs_the_token(path):
    fake = FakePolicy(SPEC)
    with ServerThread(create_app(fake, token=TOKEN, warmup=False)) as server:
        denied = httpx.get(f"{server.url}{path}")
        assert denied.status_code == 401 and "token" in denied.json()["error"]["message"]
        allowed = httpx.get(f"{server.url}{path}", headers={"Authorization": f"Bearer {TOKEN}"})
        assert allowed.status_code == (404 if path == "/nowhere" else 200)
        if path == "/openapi.json":
            assert "/act" in allowed.json()["paths"]
        # /healthz: liveness for probes without the token, the model's details only with it.
        public = httpx.get(f"{server.url}/healthz").json()
        assert set(public) == {"status", "warmup"}
        private = httpx.get(f"{server.url}/healthz", headers={"X-Molmoact2-Token": TOKEN}).json()
        assert private["model"]["checkpoint"] == "fake"


def test_client_hanging_up_mid_body_is_one_log_line(caplog):
    fake = FakePolicy(SPEC)
    caplog.set_level(logging.INFO)
    # log_config=None: uvicorn's own loggers propagate, so a traceback there would show too.
    with ServerThread(create_app(fake, warmup=False), log_config=None) as server:
        with _connect(server) as sock:
            sock.sendall(
                b"POST /act HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"{" * 10
            )
        deadline = time.monotonic() + DEADLINE
        while not any("hung up" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
            time.sleep(0.01)
        assert httpx.post(f"{server.url}/act", content=_body()).status_code == 200
    lines = [r for r in caplog.records if "hung up" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0].getMessage()
    assert "10 of 100000 bytes" in lines[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info or "Exception" in r.getMessage()]
    assert fake.calls == 1


def test_connection_cap_counts_websockets():
    from websockets.sync.client import connect

    limits = ConnectionLimits(max_connections=2)
    with ServerThread(
        create_app(FakePolicy(SPEC), warmup=False), connection_limits=limits
    ) as server:
        ws_url = server.url.replace("http", "ws") + "/ws"
        with connect(ws_url) as first, connect(ws_url) as second:
            for ws in (first, second):
                ws.recv(timeout=DEADLINE)  # the server's hello: both are open and counted
            assert _health_status(server) in (503, None)
        _wait_served(server)


def test_serve_flags_are_the_connection_limits():
    from molmoact2_policy.remote.server import build_arg_parser

    required = ["--checkpoint", "tiny", "--embodiment", "so100_101"]
    defaults = build_arg_parser().parse_args(required)
    assert (defaults.header_timeout, defaults.body_timeout) == (10.0, 30.0)
    assert (defaults.idle_timeout, defaults.max_connections) == (5.0, 32)
    limits = ["--header-timeout", "2.5", "--body-timeout", "7", "--idle-timeout", "1"]
    args = build_arg_parser().parse_args([*required, *limits, "--max-connections", "3"])
    assert (args.header_timeout, args.body_timeout, args.idle_timeout) == (2.5, 7.0, 1.0)
    assert isinstance(args.max_connections, int) and args.max_connections == 3
