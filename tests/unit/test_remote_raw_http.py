"""Malformed and unusual HTTP framing against the policy server, over raw sockets.

An outside-in probe as an untrusted network peer: broken request lines, Content-Length wrong,
missing, negative, duplicated or beyond the limit, chunked bodies (valid, with extensions and
trailers, with a bad or absurd chunk size), truncated bodies, HTTP/1.0 and other versions,
headers without colons, folded, non-ASCII or huge, odd paths and methods, websocket handshakes
gone wrong, Expect: 100-continue, pipelined requests. Every one is answered with a status below
500 and the expected class, nothing is logged as an error, and a released request still gets
its chunk afterwards. (The probe found no failure here; this keeps it that way.)

Clients the released client never is (``allenai/molmoact2`` ``examples/yam/molmoact_client.py``
posts ``json_numpy.dumps(payload)`` with ``requests``) must still never see a 5xx traceback.
Every wait is the socket's, bounded by a deadline; nothing asserts time.
"""

from __future__ import annotations

import logging
import re
import socket

import httpx
import json_numpy

from molmoact2_common.embodiments import get_embodiment
from molmoact2_policy.remote.guard import ConnectionLimits
from molmoact2_policy.remote.server import create_app
from tests.remote_fakes import FakePolicy, ServerThread, released_body

SPEC = get_embodiment("yam_bimanual")
DEADLINE = 15.0
_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


GOOD = released_body()


def _request(
    method: str = "POST",
    path: str = "/act",
    body: bytes = b"",
    headers: tuple[tuple[str, str], ...] = (),
    *,
    length: bool = True,
) -> bytes:
    """One HTTP/1.1 request that asks the server to close after answering."""
    lines = [f"{method} {path} HTTP/1.1", "Host: x", "Connection: close"]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{key}: {value}" for key, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _keep_alive(method: str, path: str, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def _chunked(body: bytes, extra: bytes = b"") -> bytes:
    head = b"POST /act HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n"
    return head + b"\r\n" + b"%x\r\n" % len(body) + body + b"\r\n0\r\n" + extra + b"\r\n"


def _plain(head: bytes) -> bytes:
    return head + b"\r\nHost: x\r\nConnection: close\r\n\r\n"


def _length(*values: str, body: bytes = b"{}") -> bytes:
    """A POST /act of ``body`` declaring the Content-Length header(s) ``values``."""
    return _request(body=body, length=False, headers=tuple(("Content-Length", v) for v in values))


def _upgrade(path: bytes, key: bytes | None) -> bytes:
    """A websocket handshake (the server closes once it refused it)."""
    head = b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    if key is not None:
        head += b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n"
    return head + b"\r\n"


# (raw bytes, the statuses expected in order). 2xx: the server served it; 4xx: refused.
CASES: dict[str, tuple[bytes, list[int]]] = {
    "no-content-length": (_request(length=False), [400]),
    "empty-body": (_request(body=b""), [400]),
    "negative-length": (_length("-1"), [400]),
    "plus-length": (_length("+2"), [400]),
    "hex-length": (_length("0x2"), [400]),
    "40-digit-length": (_length("9" * 40, body=b""), [400]),
    "length-over-limit": (_length(str(33 * 2**20), body=b""), [413]),
    "conflicting-lengths": (_length("2", "3"), [400]),
    "repeated-length": (_length("2", "2"), [400]),
    "length-and-chunked": (
        _chunked(GOOD).replace(b"Transfer-Encoding", b"Content-Length: 5\r\nTransfer-Encoding", 1),
        [200],
    ),
    "unknown-transfer-coding": (
        _request(body=b"{}", length=False, headers=(("Transfer-Encoding", "gzip"),)),
        [400],
    ),
    "chunked": (_chunked(GOOD), [200]),
    "chunked-with-trailer": (_chunked(GOOD, b"X-Trailer: 1\r\n"), [200]),
    "chunk-extension": (_chunked(GOOD).replace(b"\r\n0\r\n", b"\r\n0;name=value\r\n"), [200]),
    "bad-chunk-size": (_chunked(GOOD).replace(b"%x\r\n" % len(GOOD), b"zz\r\n", 1), [400]),
    "truncated-body": (
        _request(body=GOOD, length=False, headers=(("Content-Length", str(len(GOOD) + 10)),)),
        [408],
    ),
    "absurd-chunk-size": (
        _chunked(GOOD).replace(b"%x\r\n" % len(GOOD), b"f" * 20 + b"\r\n", 1),
        [408],
    ),
    "body-not-json": (_request(body=b"\xff\xfe\x00garbage"), [400]),
    "gzip-body": (
        _request(body=b"\x1f\x8b\x08\x00" + GOOD[:100], headers=(("Content-Encoding", "gzip"),)),
        [400],
    ),
    "no-request-line": (b"POST\r\n\r\n", [400]),
    "binary-garbage": (b"\x00\x01\x02\xff\xfe" * 100 + b"\r\n\r\n", [400]),
    "http-0.9": (b"GET /act\r\n\r\n", [400]),
    "http-1.0": (b"POST /act HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(GOOD) + GOOD, [200]),
    "no-host": (b"GET /act HTTP/1.1\r\nConnection: close\r\n\r\n", [400]),
    "two-hosts": (_plain(b"GET /act HTTP/1.1\r\nHost: y"), [400]),
    "header-without-colon": (_plain(b"GET /act HTTP/1.1\r\nBroken"), [400]),
    "space-before-colon": (_plain(b"GET /act HTTP/1.1\r\nX-A : 1"), [400]),
    "non-ascii-header-name": (_plain(b"GET /act HTTP/1.1\r\nX-\xff: 1"), [400]),
    "non-ascii-header-value": (_plain(b"GET /act HTTP/1.1\r\nX-A: \xfe\xff\x80"), [200]),
    "folded-header": (_plain(b"GET /act HTTP/1.1\r\nX-A: 1\r\n 2"), [200]),
    "1000-headers": (
        _plain(b"GET /act HTTP/1.1" + b"".join(b"\r\nX-%d: a" % i for i in range(1000))),
        [200],
    ),
    "bare-lf": (b"GET /act HTTP/1.1\nHost: x\nConnection: close\n\n", [200]),
    "long-path": (_plain(b"GET /" + b"a" * 10_000 + b" HTTP/1.1"), [404]),
    "absolute-uri": (_plain(b"GET http://elsewhere/act HTTP/1.1"), [404]),
    "asterisk": (_plain(b"OPTIONS * HTTP/1.1"), [404]),
    "bad-percent": (_plain(b"GET /%zz%ff%00 HTTP/1.1"), [404]),
    "non-ascii-path": (_plain(b"GET /\xff\xfe HTTP/1.1"), [400]),
    "dot-dot": (_plain(b"GET /../../etc/passwd HTTP/1.1"), [404]),
    "query": (_plain(b"GET /act?x=%ff&y HTTP/1.1"), [200]),
    "put": (_request("PUT", body=GOOD), [405]),
    "delete": (_request("DELETE"), [405]),
    "head": (_request("HEAD", length=False), [405]),
    "trace": (_request("TRACE"), [405]),
    "lowercase-post": (_request("post", body=GOOD), [405]),
    "made-up-method": (_request("BREW", body=GOOD), [405]),
    "connect": (_plain(b"CONNECT elsewhere:443 HTTP/1.1"), [404]),
    "get-with-body": (_request("GET", body=GOOD), [200]),
    "post-healthz": (_request("POST", "/healthz", GOOD), [405]),
    "reset-with-body": (_request("POST", "/reset", GOOD), [200]),
    "unknown-path": (_request("POST", "/nope", GOOD), [404]),
    "ws-without-upgrade": (_request("GET", "/ws"), [404]),
    "ws-without-key": (_upgrade(b"/ws", None), [400]),
    "ws-bad-key": (_upgrade(b"/ws", b"x"), [400]),
    "ws-on-act": (_upgrade(b"/act", b"dGhlIHNhbXBsZSBub25jZQ=="), [403]),
    "h2c-upgrade": (_plain(b"GET /act HTTP/1.1\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAA"), [200]),
    "http2-preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", [404, 400]),
    "expect-100": (_request(body=GOOD, headers=(("Expect", "100-continue"),)), [100, 200]),
    "pipelined": (
        _keep_alive("POST", "/act", b"{")
        + _keep_alive("GET", "/act")
        + _keep_alive("POST", "/act", GOOD)
        + _request("GET", "/nope"),
        [400, 200, 200, 404],
    ),
}  # fmt: skip
# Heads beyond h11's 16 KiB: refused 400 when they arrive in several reads, served when one read
# takes them whole (the reads' sizes are the kernel's); either way never a 5xx.
OVERSIZED_HEADS = {
    "200k-header": _plain(b"GET /act HTTP/1.1\r\nX-A: " + b"a" * 200_000),
    "200k-path": _plain(b"GET /" + b"a" * 200_000 + b" HTTP/1.1"),
    "5000-headers": _plain(
        b"GET /act HTTP/1.1" + b"".join(b"\r\nX-%d: a" % i for i in range(5000))
    ),
}


def _exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` and read until the server closes (or resets) the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass  # refused mid-send (a huge head): what it answered is still readable
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk


def test_malformed_http_gets_4xx_never_5xx_and_the_server_keeps_serving(caplog):
    caplog.set_level(logging.WARNING)
    # Short body deadline: the two cases that never finish their body end in 408 sooner.
    limits = ConnectionLimits(header_timeout=5.0, body_timeout=1.0, idle_timeout=1.0)
    fake = FakePolicy(SPEC)
    with ServerThread(create_app(fake, warmup=False), connection_limits=limits) as server:
        answered = {
            name: [int(code) for code in _STATUS.findall(_exchange(server.port, data))]
            for name, (data, _) in CASES.items()
        }
        oversized = {
            name: [int(code) for code in _STATUS.findall(_exchange(server.port, data))]
            for name, data in OVERSIZED_HEADS.items()
        }
        reply = httpx.post(f"{server.url}/act", content=GOOD, timeout=DEADLINE)
    assert answered == {name: statuses for name, (_, statuses) in CASES.items()}
    assert all(codes in ([], [200], [400], [404]) for codes in oversized.values()), oversized
    assert reply.status_code == 200, reply.text
    assert json_numpy.loads(reply.text)["actions"].shape == (SPEC.horizon, SPEC.action_dim)
    assert fake.max_running == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
