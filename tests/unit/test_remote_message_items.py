"""A request body of many tiny JSON/msgpack values is refused before it is parsed.

Probe (raw HTTP against the server with the fake policy): a 32 MB ``POST /act`` body of nested
empty lists, ``{"x":[[[[[]]]],...]}``, within the body limit, became 1.4 GB of Python objects,
and ``json.loads`` built them in C holding the GIL: the event loop stopped, and ``/healthz``
(every other client) waited 15.5 s for that one request, which was then refused 400 for its
missing instruction. A flat list of floats stalled it 4.5 s (476 MB); msgpack empty arrays in a
websocket frame made 2.3 GB in 27 s. A request needs a few dozen values (its arrays travel as
base64 text or binary strings), so the decoders now refuse a message of more than
``MAX_MESSAGE_ITEMS`` values before building them.

The tests measure what decoding allocates (tracemalloc, deterministic), never time.
"""

from __future__ import annotations

import asyncio
import json
import struct
import tracemalloc

import httpx
import json_numpy
import numpy as np
import pytest

from molmoact2_common.embodiments import get_embodiment
from molmoact2_policy.remote import protocol as p
from molmoact2_policy.remote.server import PolicyService, create_app
from tests.remote_fakes import FakePolicy, ServerThread

SPEC = get_embodiment("yam_bimanual")
BODY_BYTES = 8 * 2**20  # well inside the 32 MiB body limit
# What decoding a refused flood may allocate: the values built before the count passes the cap
# (a float is 24 bytes and a list slot 8). Before: 8 to 40 times the body.
MAX_PEAK = 4 * 2**20
DEADLINE = 15.0


def _json_body(unit: bytes) -> bytes:
    """A JSON object whose list ``x`` repeats ``unit`` (``b"[],"``...) to ~BODY_BYTES."""
    return b'{"x":[' + unit * (BODY_BYTES // len(unit)) + b'0],"instruction":"stack the cups"}'


def _msgpack_body(unit: bytes, per_list: int | None = None) -> bytes:
    """A msgpack map whose ``x`` holds ``unit`` values, in one array or arrays of ``per_list``."""
    count = BODY_BYTES // len(unit)
    if per_list is None:
        return b"\x81\xa1x\xdd" + struct.pack(">I", count) + unit * count
    lists = count // per_list
    inner = b"\xdd" + struct.pack(">I", per_list) + unit * per_list
    return b"\x81\xa1x\xdd" + struct.pack(">I", lists) + inner * lists


JSON_FLOODS = {
    "empty-lists": b"[],",
    "nested-lists": b"[[[[]]]],",
    "empty-objects": b"{},",
    "floats": b"0.1,",
    "short-strings": b'"ab",',
    "nulls": b"null,",
}
MSGPACK_FLOODS = {
    "empty-arrays": (b"\x90", None),
    "nested-arrays": (b"\x91\x91\x91\x90", None),
    "empty-maps": (b"\x80", None),
    "nils": (b"\xc0", None),
    "floats-in-many-arrays": (b"\xca\x3f\x80\x00\x00", 50_000),
    "nils-in-many-arrays": (b"\xc0", 1_000),
}


def _peak_while(decode, body: bytes) -> tuple[int, BaseException | None]:
    """Bytes allocated at the peak of ``decode(body)`` and what it raised."""
    tracemalloc.start()
    try:
        try:
            decoded = decode(body, max_bytes=p.DEFAULT_MAX_BODY_BYTES)
        except p.ProtocolError as exc:
            raised: BaseException | None = exc
        else:
            raised = None
            del decoded
        return tracemalloc.get_traced_memory()[1], raised
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("unit", JSON_FLOODS.values(), ids=JSON_FLOODS.keys())
def test_json_of_many_small_values_is_refused_without_building_them(unit):
    body = _json_body(unit)
    peak, raised = _peak_while(p.decode_json, body)
    assert isinstance(raised, p.RequestTooLargeError), raised
    assert "values" in str(raised)
    assert peak < MAX_PEAK, f"{peak / len(body):.1f} x the body allocated"


@pytest.mark.parametrize(("unit", "per_list"), MSGPACK_FLOODS.values(), ids=MSGPACK_FLOODS.keys())
def test_msgpack_of_many_small_values_is_refused_without_building_them(unit, per_list):
    body = _msgpack_body(unit, per_list)
    peak, raised = _peak_while(p.decode_msgpack, body)
    assert isinstance(raised, p.RequestTooLargeError), raised
    assert peak < MAX_PEAK, f"{peak / len(body):.1f} x the body allocated"


def test_the_largest_legitimate_structures_still_decode():
    """Plain JSON lists where arrays are allowed (state, the RTC chunk of rows x joints) and a
    long instruction full of commas are far below the cap."""
    rng = np.random.default_rng(0)
    payload = {
        f"{name}_cam": rng.integers(0, 256, (360, 640, 3), dtype=np.uint8)
        for name in ("top", "left", "right")
    }
    previous = rng.normal(size=(SPEC.horizon, SPEC.action_dim)).tolist()
    payload.update(
        instruction=", ".join(["cup"] * 400),
        state=[0.0] * SPEC.state_dim,
        rtc={"previous": previous, "delay_steps": 2, "execution_horizon": None},
    )
    decoded = p.decode_json(json_numpy.dumps(payload).encode())
    assert decoded["rtc"]["previous"] == previous
    packed = p.encode_msgpack({**payload, "rtc": {**payload["rtc"], "previous": previous}})
    assert p.decode_msgpack(packed)["rtc"]["previous"] == previous


def test_server_answers_a_value_flood_413_and_keeps_serving():
    fake = FakePolicy(SPEC)
    rng = np.random.default_rng(0)
    good = {
        f"{name}_cam": rng.integers(0, 256, (36, 64, 3), dtype=np.uint8)
        for name in ("top", "left", "right")
    }
    good.update(instruction="stack the cups", state=np.zeros(14, np.float32))
    with ServerThread(create_app(fake, warmup=False)) as server:
        reply = httpx.post(f"{server.url}/act", content=_json_body(b"[[[[]]]],"), timeout=DEADLINE)
        assert reply.status_code == 413, reply.text
        assert reply.json()["error"]["code"] == "too_large"
        reply = httpx.post(
            f"{server.url}/act", content=json_numpy.dumps(good).encode(), timeout=DEADLINE
        )
        assert reply.status_code == 200, reply.text
        assert json_numpy.loads(reply.text)["actions"].shape == (SPEC.horizon, SPEC.action_dim)
    assert fake.calls == 1


def test_websocket_frames_are_held_to_the_same_cap():
    service = PolicyService(FakePolicy(SPEC))
    try:
        body = _msgpack_body(b"\x90")
        status, answer = asyncio.run(service.handle(body, p.decode_msgpack))
    finally:
        service.shutdown()
    assert status == 413, answer
    assert json.dumps(answer)  # a plain error object
