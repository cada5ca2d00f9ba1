"""Connection hardening for the policy server: head and body deadlines, a connection cap.

uvicorn closes a keep-alive connection that sits idle after a response (``timeout_keep_alive``),
but it sets no deadline for a request head or body, and its ``limit_concurrency`` answers 503
only once a whole request head has arrived. A client that opens connections and sends nothing,
or trickles a head or a body a byte at a time (slowloris), therefore held a socket, a file
descriptor and an h11 parser for as long as it liked: 1000 such connections stayed open.

``guarded_protocol(limits)`` is uvicorn's own h11 protocol with four additions:

* a connection beyond ``max_connections`` (HTTP and websocket together) gets a 503 and is closed
  at once, before any byte of it is parsed;
* the request head must be complete within ``header_timeout`` of the connection opening or of
  the previous response (trickling bytes does not extend it);
* the body must be complete within ``body_timeout`` of its head; the server answers 408 and
  closes, and the handler waiting for the body sees a disconnect marked as ours
  (``SERVER_CLOSED_KEY`` in the ASGI scope) so it does not log a client hang-up as well;
* a client that leaves our answers unread for ``send_timeout`` (the kernel refused some of
  our bytes and they are still waiting) is cut: pipelining requests without reading held a
  connection for good, and so did closing one with a few kB of answers still unsent.

Each close is logged in one line (throttled: a flood gives one line per kind and period).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.utils import get_remote_addr
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from molmoact2_policy.remote.protocol import bounded_message

logger = logging.getLogger("molmoact2.remote.server")

# Set in the request's ASGI scope when the server (not the client) ended the request.
SERVER_CLOSED_KEY = "molmoact2.server_closed"

_REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\ncontent-length: 41\r\n\r\ntoo many open connections; retry later.\r\n"
)
_HEAD_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"connection: close\r\ncontent-length: 35\r\n\r\nrequest head not received in time\r\n"
)


@dataclass(frozen=True)
class ConnectionLimits:
    """How long a client may take and how many connections may be open at once.

    Each field's ``help`` is its ``molmoact2 serve --<field>`` flag's text (remote/server.py).
    """

    header_timeout: float = field(
        default=10.0, metadata={"help": "seconds a client has to send a complete request head"}
    )
    # 30 s carries a 32 MB body at ~10 Mbit/s.
    body_timeout: float = field(
        default=30.0,
        metadata={"help": "seconds a client has to send a request body once its head arrived"},
    )
    idle_timeout: float = field(
        default=5.0, metadata={"help": "seconds an idle keep-alive connection stays open"}
    )
    # Answers are a few kB: only a client that stopped reading (pipelining requests whose
    # answers it never takes) fills the socket buffers; it held its connection for good.
    send_timeout: float = field(
        default=10.0,
        metadata={"help": "seconds a client may leave the server's answer unread before the "
                  "connection is cut"},
    )
    # uvicorn waits for in-flight requests without a limit once asked to stop: an inference
    # stuck on the device kept `molmoact2 serve` from exiting on SIGTERM/Ctrl-C for as long
    # as it was stuck. A few normal inferences fit in 10 s.
    shutdown_timeout: float = field(
        default=10.0,
        metadata={"help": "seconds in-flight requests get to finish once the server is stopped"},
    )
    # Robots need one or two connections each.
    max_connections: int = field(
        default=32,
        metadata={"help": "open connections (HTTP and websocket) beyond which new ones get 503"},
    )

    def __post_init__(self) -> None:
        for name in (
            "header_timeout", "body_timeout", "idle_timeout", "send_timeout", "shutdown_timeout"
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 seconds, got {getattr(self, name)}")
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {self.max_connections}")


class ThrottledLog:
    """At most one log line per key per ``period`` seconds, with a count of what was dropped."""

    def __init__(self, period: float = 5.0, log: logging.Logger = logger) -> None:
        self._period = period
        self._log = log
        self._last: dict[str, float] = {}
        self._dropped: dict[str, int] = {}
        self._lock = threading.Lock()

    def log(self, level: int, key: str, message: str, *, exc_info: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -1e9) < self._period:
                self._dropped[key] = self._dropped.get(key, 0) + 1
                return
            self._last[key] = now
            dropped = self._dropped.pop(key, 0)
        suffix = f" ({dropped} similar suppressed)" if dropped else ""
        self._log.log(level, "%s%s", bounded_message(message), suffix, exc_info=exc_info)

    def warning(self, key: str, message: str) -> None:
        self.log(logging.WARNING, key, message)

    def info(self, key: str, message: str) -> None:
        self.log(logging.INFO, key, message)


_throttled = ThrottledLog()


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "unknown client"


class _SendDeadline:
    """Cut a connection whose client leaves our answers unread for ``limits.send_timeout``.

    asyncio pauses writing when the transport's buffer passes its high-water mark; uvicorn then
    waits for it to drain, with no deadline. ``transport.close()`` waits to flush that buffer
    too, so the connection is aborted. The high-water mark is 0: by asyncio's default (64 kB)
    a close with less than that unsent (a head deadline after pipelined answers the client
    never read) waited for good, the connection still counted in ``max_connections``, and
    nothing was paused to start a deadline. At 0, any byte the kernel refused starts it.
    """

    limits = ConnectionLimits()
    _send_deadline: asyncio.TimerHandle | None = None
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    client: tuple[str, int] | None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        # Paused (and the deadline running) from the first byte the kernel refuses until the
        # last one is sent. uvicorn then awaits the drain before writing more, which costs
        # nothing while the kernel's own buffer (up to MBs) is still full.
        transport.set_write_buffer_limits(high=0)  # type: ignore[attr-defined]

    def pause_writing(self) -> None:
        super().pause_writing()  # type: ignore[misc]
        if self._send_deadline is None:
            self._send_deadline = self.loop.call_later(
                self.limits.send_timeout, self._send_timed_out
            )

    def resume_writing(self) -> None:
        self._stop_send_deadline()
        super().resume_writing()  # type: ignore[misc]

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_send_deadline()
        super().connection_lost(exc)  # type: ignore[misc]

    def _stop_send_deadline(self) -> None:
        if self._send_deadline is not None:
            self._send_deadline.cancel()
            self._send_deadline = None

    def _send_timed_out(self) -> None:
        self._send_deadline = None
        _throttled.info(
            "send_timeout",
            f"closed the connection from {_peer(self.client)}: it left the answers unread for "
            f"{self.limits.send_timeout:g} s",
        )
        cycle = getattr(self, "cycle", None)  # HTTP: the handler must not report a hang-up
        if cycle is not None:
            cycle.scope[SERVER_CLOSED_KEY] = "send timeout"
        self.transport.abort()


class _GuardedWebSocketProtocol(_SendDeadline, WebSocketsSansIOProtocol):
    """uvicorn's websocket protocol (what ``ws="auto"`` picks with websockets installed) with
    the send deadline: its keep-alive timeout closes with ``transport.close()``, which never
    completes while the client is not reading (probe: held 60 s+ after 2373 answers)."""

    def handle_parser_exception(self) -> None:
        # A frame over ws_max_size (the body limit) or a protocol error: the parser has
        # already chosen the close (1009 "frame with N bytes exceeds limit of M bytes").
        close = self.conn.close_sent
        if close is not None:
            _throttled.info(
                "ws_refused",
                f"closed the websocket from {_peer(self.client)}: {close.code} {close.reason}",
            )
        super().handle_parser_exception()


class _GuardedH11Protocol(_SendDeadline, H11Protocol):

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = "head"  # head | body | app (request complete, the app is answering) | ws
        self._deadline: asyncio.TimerHandle | None = None
        self._refused = False

    # ---------------------------------------------------------------- asyncio.Protocol
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        open_now = len(self.connections)
        if open_now >= self.limits.max_connections:
            self._refused = True
            self.transport = transport
            _throttled.warning(
                "connection_cap",
                f"refused a connection from {_peer(get_remote_addr(transport))}: {open_now} "
                f"open (max_connections {self.limits.max_connections})",
            )
            transport.write(_REFUSED)
            transport.close()
            return
        super().connection_made(transport)
        self._arm(self.limits.header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if not self._refused:
            super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        self._track()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._track()

    # ---------------------------------------------------------------- deadlines
    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _track(self) -> None:
        """Move the deadline to the phase the connection is in now."""
        if self.transport.is_closing():
            self._disarm()
            return
        if self.transport.get_protocol() is not self:  # upgraded to a websocket
            self._phase = "ws"
            self._disarm()
            return
        state = self.conn.their_state
        if state is h11.IDLE:
            phase = "head"
        elif state is h11.SEND_BODY:
            phase = "body"
        else:
            phase = "app"
        if phase == self._phase:
            return  # trickled bytes never move a deadline
        self._phase = phase
        if phase == "head":
            self._arm(self.limits.header_timeout, self._head_timed_out)
        elif phase == "body":
            self._arm(self.limits.body_timeout, self._body_timed_out)
        else:
            self._disarm()  # inference may take as long as it takes; the client has its timeout

    def _head_timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        partial = bool(self.conn.trailing_data[0])
        _throttled.info(
            "head_timeout",
            f"closed the connection from {_peer(self.client)}: "
            + (
                f"request head incomplete after {self.limits.header_timeout:g} s"
                if partial
                else f"no request within {self.limits.header_timeout:g} s"
            ),
        )
        if partial:
            self.transport.write(_HEAD_TIMEOUT)
        self.transport.close()

    def _body_timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        where = ""
        if cycle is not None:
            where = f" of {cycle.scope['method']} {cycle.scope['path']}"
            cycle.scope[SERVER_CLOSED_KEY] = "body timeout"  # type: ignore[literal-required]
            if not cycle.response_started and not cycle.disconnected:
                self._send_body_timeout()
            # The handler waiting for the body wakes to a disconnect; its replies go nowhere.
            cycle.disconnected = True
            cycle.message_event.set()
        _throttled.info(
            "body_timeout",
            f"closed the connection from {_peer(self.client)}: request body{where} incomplete "
            f"after {self.limits.body_timeout:g} s",
        )
        self.transport.close()

    def _send_body_timeout(self) -> None:
        body = b'{"error":{"code":"timeout","message":"request body not received in time"}}'
        try:
            for event in (
                h11.Response(
                    status_code=408,
                    reason=b"Request Timeout",
                    headers=[
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"connection", b"close"),
                    ],
                ),
                h11.Data(data=body),
                h11.EndOfMessage(),
            ):
                self.transport.write(self.conn.send(event))
        except h11.LocalProtocolError:
            pass  # h11 will not frame a response now; closing says enough


def guarded_protocol(limits: ConnectionLimits) -> type[H11Protocol]:
    """uvicorn's h11 protocol class with ``limits`` enforced (pass as ``uvicorn.Config(http=)``)."""
    return type("GuardedH11Protocol", (_GuardedH11Protocol,), {"limits": limits})


def guarded_ws_protocol(limits: ConnectionLimits) -> type[WebSocketsSansIOProtocol]:
    """uvicorn's websocket protocol with the send deadline (``uvicorn.Config(ws=)``)."""
    return type("GuardedWebSocketProtocol", (_GuardedWebSocketProtocol,), {"limits": limits})
