"""The websocket transport against clients that leave with requests queued, flood, or send
frames over the body limit (a real ``websockets`` client against the uvicorn server).

The server read one frame ahead only: a client that sent several requests and closed had each
of them run on the device, one after the other, before its close was read. Now every frame is
read as it arrives and a close drops the requests still waiting, through the ``client_gone``
hook HTTP uses. Every wait is on an observable condition with a generous deadline.
"""

from __future__ import annotations

import contextlib
import struct
import threading

import json_numpy
import msgpack
import pytest

from molmoact2_policy.remote.protocol import encode_msgpack
from molmoact2_policy.remote.server import create_app
from tests.remote_fakes import FakePolicy, ServerThread
from tests.unit.test_remote_probes import DEADLINE, SPEC, _body, _wait_until

N_REQUESTS = 5


def _ws_url(server: ServerThread) -> str:
    return server.url.replace("http", "ws") + "/ws"


def _frame(instruction: str) -> bytes:
    return encode_msgpack(json_numpy.loads(_body(instruction=instruction)))


class _RecordingPolicy(FakePolicy):
    """Records the instruction of every inference it runs."""

    def __init__(self, gate: threading.Event) -> None:
        super().__init__(SPEC, gate=gate)
        self.instructions: list[str] = []

    def act(self, images, state, instruction, **kwargs):
        self.instructions.append(instruction)
        return super().act(images, state, instruction, **kwargs)


@pytest.mark.parametrize("device", ["busy_with_another_client", "running_its_first"])
def test_a_client_that_closes_with_requests_queued_costs_at_most_the_running_one(device):
    from websockets.sync.client import connect

    gate = threading.Event()
    fake = _RecordingPolicy(gate)
    app = create_app(fake, warmup=False)
    service = app.state.service
    queue = service.queue
    with ServerThread(app) as server, contextlib.ExitStack() as connections:
        blocker = None
        if device == "busy_with_another_client":
            blocker = connections.enter_context(connect(_ws_url(server)))
            blocker.recv(timeout=DEADLINE)
            blocker.send(_frame("blocker"))
            _wait_until(lambda: fake.running == 1, "the other client's request runs")
        with connect(_ws_url(server)) as leaving:
            leaving.recv(timeout=DEADLINE)
            for _ in range(N_REQUESTS):
                leaving.send(_frame("left"))
            if blocker is not None:
                _wait_until(lambda: queue.snapshot()["admitted"] == 2, "its first one queues")
            else:
                _wait_until(lambda: fake.running == 1, "its first one runs")
        # Closed: what it sent and never ran is dropped as soon as the close is read. Its
        # first request, if it runs, finishes first (a model call cannot be interrupted).
        if blocker is not None:  # its first one waited for the device: dropped too
            _wait_until(lambda: queue.snapshot()["admitted"] == 1, "its queued one is dropped")
        else:
            gate.set()
        # Read ahead and never run, plus the first one when it only waited for the device.
        dropped = N_REQUESTS - 1 + (blocker is not None)
        _wait_until(lambda: service.dropped == dropped, "the close drops what is left")
        gate.set()
        if blocker is not None:
            assert "actions" in msgpack.unpackb(blocker.recv(timeout=DEADLINE))
        _wait_until(lambda: queue.snapshot()["admitted"] == 0, "the device is free")
        with connect(_ws_url(server)) as live:  # a live client afterwards is served
            live.recv(timeout=DEADLINE)
            live.send(_frame("live"))
            assert "actions" in msgpack.unpackb(live.recv(timeout=DEADLINE))
    ran_for_it = fake.instructions.count("left")
    assert ran_for_it == (0 if blocker is not None else 1), fake.instructions
    assert fake.instructions[-1] == "live"


def test_pipelined_requests_beyond_the_read_ahead_are_answered_busy_in_order():
    """One request runs or waits per connection and ``max_queue`` more keep their bytes;
    a frame beyond is answered 503 ``busy`` in its turn (its bytes are not kept)."""
    from websockets.sync.client import connect

    gate = threading.Event()
    fake = _RecordingPolicy(gate)
    app = create_app(fake, warmup=False, max_queue=1)
    with ServerThread(app) as server, connect(_ws_url(server)) as ws:
        ws.recv(timeout=DEADLINE)
        for index in range(4):
            ws.send(_frame(f"request {index}"))
        _wait_until(lambda: fake.running == 1, "the first runs")
        gate.set()
        answers = [msgpack.unpackb(ws.recv(timeout=DEADLINE)) for _ in range(4)]
    assert ["actions" in a for a in answers[:2]] == [True, True], answers[:2]
    assert [a.get("status") for a in answers[2:]] == [503, 503]
    assert "wait for an answer" in answers[2]["error"]["message"]
    assert fake.instructions == ["request 0", "request 1"]


def test_a_frame_over_the_body_limit_is_refused_at_its_header_with_the_reason(caplog):
    """uvicorn's own limit (16 MiB) was the websocket's, whatever ``--max-body-mb`` said: a
    frame over the body limit was read in full before the request was refused. The frame's
    header is enough now: the raw header below declares 1 TiB and sends 4 bytes of it."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    limit = 100_000
    fake = FakePolicy(SPEC)
    caplog.set_level("INFO", logger="molmoact2.remote.server")
    with ServerThread(create_app(fake, warmup=False, max_body_bytes=limit)) as server:
        with connect(_ws_url(server), max_size=None) as ws:
            ws.recv(timeout=DEADLINE)
            with pytest.raises(ConnectionClosed) as closed:
                ws.send(b"\0" * (limit + 1))
                ws.recv(timeout=DEADLINE)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        assert f"exceeds limit of {limit} bytes" in closed.value.rcvd.reason

        with connect(_ws_url(server)) as ws:
            ws.recv(timeout=DEADLINE)
            # FIN + binary, masked, 64-bit length 2**40, the mask, then 4 payload bytes.
            header = bytes([0x82, 0x80 | 127]) + struct.pack("!Q", 2**40) + b"\1\2\3\4"
            ws.socket.sendall(header + b"abcd")
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=DEADLINE)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        assert any("closed the websocket" in r.getMessage() for r in caplog.records)

        with connect(_ws_url(server)) as ws:  # the server serves on
            ws.recv(timeout=DEADLINE)
            ws.send(_frame("after"))
            assert "actions" in msgpack.unpackb(ws.recv(timeout=DEADLINE))
    assert fake.calls == 1
