"""``RemotePolicy``: the ``Policy`` contract over the network, for robot computers without a GPU.

The policy node uses it exactly like the local model. Requests are the released ``/act`` ones
(``<camera>_cam`` raw arrays or ``images_jpeg`` base64, ``state``, ``instruction``,
``normalization_tag``, ``num_steps`` when set) plus our ``seed``/``reset``/``embodiment``, so it
also talks to a released ``host_server_*.py``. Frames travel at camera resolution unless
``image_size`` asks for the released processor's own resize on the robot (see ``__init__``).

``act()`` returns the server's chunk with the robot's own joint names, and timings that split
the latency into client encoding, network (round trip minus server time) and the server's
stages, so the node's chunk latency includes the network. Any failure to get a chunk (timeout,
connection refused, server busy or broken, wrong token) raises ``PolicyUnavailableError`` with
the reason; the next call reconnects.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpcore
import httpx
import numpy as np

from molmoact2_common.embodiments import EmbodimentSpec
from molmoact2_policy.model.preprocess import ControlTokenList, check_instruction
from molmoact2_policy.policy_api import (
    ActionChunkResult,
    PolicyInputError,
    PolicyUnavailableError,
    RtcRequest,
    validate_observation,
    validate_rtc,
)
from molmoact2_policy.remote.protocol import (
    HEALTH_CONTROL_TOKENS,
    IMAGE_ENCODINGS,
    MAX_MESSAGE_CHARS,
    MAX_NUM_STEPS,
    ProtocolError,
    bounded_message,
    build_act_request,
    decode_json,
    decode_msgpack,
    encode_json,
    encode_msgpack,
    parse_act_response,
)

TRANSPORTS = ("http", "ws")
# Responses are small (a chunk and timings); a large one means something other than our server.
_MAX_RESPONSE_BYTES = 8 * 1024 * 1024
# check_instruction asks an unreachable server for its control tokens again after this long
# [s] (each try can take the request timeout, and the node checks under its lock).
_HEALTH_RETRY_S = 5.0
# Bytes of a body read per socket read (httpcore's own size).
_READ_BYTES = 64 * 1024


class _Deadline(threading.local):
    """The monotonic time [s] by which the current thread's request must be done (None: none).

    httpx's timeouts bound each socket operation, not the request: a server answering a byte
    every 0.9 s held a 1 s act() for minutes (probe: 235 s for a 2 kB answer).
    """

    at: float | None = None

    def left(self, timeout: float | None, phase: str) -> float | None:
        if self.at is None:
            return timeout
        left = self.at - time.monotonic()
        if left <= 0.0:
            raise (httpcore.WriteTimeout if phase == "write" else httpcore.ReadTimeout)(
                "request deadline passed"
            )
        return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A socket whose every wait ends by the thread's request deadline."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: _Deadline) -> None:
        self._inner = inner
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._deadline.left(timeout, "read"))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # One wait per piece: the inner write loops send() with one timeout for all of it.
        view = memoryview(buffer)
        for start in range(0, len(view), _READ_BYTES):
            self._inner.write(
                bytes(view[start : start + _READ_BYTES]), self._deadline.left(timeout, "write")
            )

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(
            ssl_context, server_hostname, self._deadline.left(timeout, "read")
        )
        return _DeadlineStream(inner, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, deadline: _Deadline) -> None:
        self._inner = httpcore.SyncBackend()
        self._deadline = deadline

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None, socket_options: Any = None
                    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(
            host, port, self._deadline.left(timeout, "read"), local_address, socket_options
        )
        return _DeadlineStream(stream, self._deadline)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Any = None) -> httpcore.NetworkStream:
        stream = self._inner.connect_unix_socket(
            path, self._deadline.left(timeout, "read"), socket_options
        )
        return _DeadlineStream(stream, self._deadline)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _http_client(timeout: float, headers: Mapping[str, str], deadline: _Deadline) -> httpx.Client:
    transport = httpx.HTTPTransport()
    # httpx has no parameter for httpcore's network backend; its pool (public httpcore API)
    # takes one, so the transport gets a pool built like its own, with the deadline backend.
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(), network_backend=_DeadlineBackend(deadline)
    )
    # identity: a compressed answer is decoded within the size cap (_decoded_body), but an
    # honest server then sends none.
    return httpx.Client(
        timeout=timeout,
        headers={**headers, "Accept-Encoding": "identity"},
        transport=transport,
        follow_redirects=False,
    )


def _decoded_body(encoding: str, raw: bytes, limit: int) -> bytes:
    """``raw`` decoded per its Content-Encoding, at most ``limit`` bytes (``ProtocolError``
    past it: a 1 MB gzip of spaces is 1 GB, probe)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding not in ("gzip", "deflate"):
        raise ProtocolError(f"answer has Content-Encoding {encoding!r} (gzip/deflate/identity)")
    wbits = zlib.MAX_WBITS | 32 if encoding == "gzip" else zlib.MAX_WBITS
    try:
        inflater = zlib.decompressobj(wbits)
        body = inflater.decompress(raw, limit + 1)
    except zlib.error:
        try:  # deflate as many servers send it: raw, without the zlib header
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            body = inflater.decompress(raw, limit + 1)
        except zlib.error as exc:
            raise ProtocolError(f"answer with bad {encoding} data: {exc}") from exc
    if len(body) > limit:
        raise ProtocolError(f"answer inflates to more than {limit} bytes ({encoding})")
    return body


class RemotePolicy:
    """Implements ``Policy`` by calling a ``molmoact2 serve`` server."""

    def __init__(
        self,
        server_url: str,
        embodiment: EmbodimentSpec,
        joint_names: Sequence[str],
        *,
        timeout: float = 1.0,
        token: str | None = "",
        image_encoding: str = "jpeg",
        jpeg_quality: int = 90,
        transport: str = "http",
        image_size: int = 0,
        num_steps: int | None = None,
    ) -> None:
        if image_size < 0:
            raise ValueError(f"image_size must be >= 0, got {image_size}")
        if image_size:
            try:
                import torch  # noqa: F401  (the released processor's resize kernel)
            except ImportError:
                raise ValueError(
                    f"image_size={image_size} resizes with the released processor's kernel, "
                    "which needs torch on this computer; use image_size=0 (camera resolution)"
                ) from None
        if num_steps is not None and not 1 <= num_steps <= MAX_NUM_STEPS:
            raise ValueError(f"num_steps must be in 1..{MAX_NUM_STEPS} or None, got {num_steps}")
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
        if image_encoding not in IMAGE_ENCODINGS:
            raise ValueError(
                f"image_encoding must be one of {IMAGE_ENCODINGS}, got {image_encoding!r}"
            )
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if len(joint_names) != embodiment.action_dim:
            raise ValueError(
                f"{len(joint_names)} joint names for {embodiment.name}, which has "
                f"{embodiment.action_dim} action dims"
            )
        parts = urlsplit(server_url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"server_url must be http(s)://host:port, got {server_url!r}")
        self.embodiment = embodiment
        self.joint_names = tuple(joint_names)
        self.server_url = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        self.ws_url = urlunsplit(
            ("wss" if parts.scheme == "https" else "ws", parts.netloc, parts.path + "/ws", "", "")
        )
        self.timeout = timeout
        self.image_encoding = image_encoding
        self.jpeg_quality = jpeg_quality
        self.transport = transport
        # 0 (default): frames travel at camera resolution and the server's processor stretches
        # them, as the release does; it measured that a client-side resize before JPEG shifts
        # the model's behaviour (gripper-open fraction +0.3-0.4). > 0, for bandwidth-starved
        # links only: the released processor's own bilinear kernel runs here, so raw frames
        # give the same chunk; JPEG of the smaller frame does not.
        self.image_size = image_size
        self.num_steps = num_steps
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        # Cameras are JPEG-encoded in parallel: cv2 releases the GIL, and encoding is most of
        # the client's share of the round trip.
        self._codec_pool: ThreadPoolExecutor | None = None
        self._http: httpx.Client | None = None
        self._ws: Any = None
        self._server_info: dict[str, Any] | None = None
        self._control_tokens: tuple[list[str], ControlTokenList] | None = None
        self._next_health_try = 0.0  # monotonic [s]
        self._reset_pending = False
        # Each request's deadline (per thread: metadata() may read /healthz while act() runs).
        self._deadline = _Deadline()
        # The node may call act() from a worker thread and metadata() from a timer.
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ Policy contract

    def _resized(self, images: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        from molmoact2_policy.model.preprocess import resize_image

        names = list(self.embodiment.camera_names)
        resized = self._encoder_pool().map(
            lambda name: resize_image(images[name], self.image_size, exact=True), names
        )
        return dict(zip(names, resized, strict=True))

    def act(
        self,
        images: Mapping[str, np.ndarray],
        state: np.ndarray,
        instruction: str,
        *,
        seed: int | None = None,
        num_steps: int | None = None,
        rtc: RtcRequest | None = None,
    ) -> ActionChunkResult:
        """One chunk from the server; ``num_steps`` overrides the constructor's for this call."""
        # Bad input never goes over the wire: same checks, same errors as the local model.
        validate_observation(self.embodiment, images, state, instruction)
        if rtc is not None:
            validate_rtc(self.embodiment, rtc)
        start = time.perf_counter()
        with self._lock:
            if self.image_size:
                images = self._resized(images)
            request = build_act_request(
                self.embodiment,
                images,
                state,
                instruction,
                seed=seed,
                image_encoding=self.image_encoding,
                jpeg_quality=self.jpeg_quality,
                reset=self._reset_pending,
                num_steps=self.num_steps if num_steps is None else num_steps,
                binary=self.transport == "ws",
                executor=self._encoder_pool(),
                rtc=rtc,
            )
            if self.transport == "http":
                body = encode_json(request)
                encoded = time.perf_counter()
                with self._deadline_in(self.timeout):
                    raw = self._post_http(body)
                received = time.perf_counter()
                try:
                    payload = self._decode(decode_json, raw)
                except PolicyUnavailableError:
                    # Not JSON: maybe the body was framed wrong (a Content-Length shorter than
                    # what came), and the rest waits in the kept connection's buffer, where the
                    # next call would read it as its own answer. Not a connection to keep.
                    self._drop_connections()
                    raise
            else:
                body = encode_msgpack(request)
                encoded = time.perf_counter()
                raw = self._exchange_ws(body)
                received = time.perf_counter()
                try:
                    payload = self._decode(decode_msgpack, raw)
                except PolicyUnavailableError:
                    # A frame that is not ours (text, garbage): the server is not one to keep.
                    self._drop_connections()
                    raise
                self._raise_for_ws_error(payload)
            try:
                response = parse_act_response(payload, self.embodiment, len(self.joint_names))
            except ProtocolError as exc:
                raise PolicyUnavailableError(f"{self._where()}: {exc}") from exc
            self._reset_pending = False
        done = time.perf_counter()
        server_total = response.server_timing.get("total", 0.0)
        timings: dict[str, float] = {f"model_{k}": v for k, v in response.model_timings.items()}
        timings.update({f"server_{k}": v for k, v in response.server_timing.items()})
        timings["client_encode"] = encoded - start
        timings["network"] = max(0.0, (received - encoded) - server_total)
        timings["client_decode"] = done - received
        timings["total"] = done - start
        if abs(response.step_dt - self.embodiment.step_dt) > 1e-9:
            raise PolicyUnavailableError(
                f"{self._where()}: server step_dt {response.step_dt} differs from "
                f"{self.embodiment.name}'s {self.embodiment.step_dt}"
            )
        return ActionChunkResult(
            positions=response.positions,
            step_dt=response.step_dt,
            joint_names=self.joint_names,
            mode=response.mode,
            timings=timings,
            depth_codes=response.depth_codes,
            depth_changed=response.depth_changed,
        )

    def check_instruction(self, instruction: str) -> None:
        """``PolicyInputError`` when the instruction spells one of the control tokens our server
        states in ``/healthz`` (its tokenizer's; the same check as the local model's).

        Which words are control tokens depends on the server's tokenizer: a server that states
        none (the released one) or cannot be reached leaves this accepting, and ``act`` raises
        the server's refusal (400 naming the token) as ``PolicyInputError``.
        """
        tokens = self._stated_control_tokens()
        if tokens is not None:
            check_instruction(instruction, tokens)

    def _stated_control_tokens(self) -> ControlTokenList | None:
        info = self._server_info
        if info is None and time.monotonic() >= self._next_health_try:
            try:
                info = self.health()
            except PolicyUnavailableError:
                self._next_health_try = time.monotonic() + _HEALTH_RETRY_S
                return None
        stated = info.get(HEALTH_CONTROL_TOKENS) if isinstance(info, dict) else None
        if not isinstance(stated, list) or not all(isinstance(t, str) for t in stated):
            return None
        if self._control_tokens is None or self._control_tokens[0] is not stated:
            # Compiled once per list the server stated (health() replaces the list).
            self._control_tokens = (stated, ControlTokenList(stated))
        return self._control_tokens[1]

    def reset(self) -> None:
        """Forget per-episode state: the server resets before serving the next request.

        Deferred rather than sent now, so a reset never fails while the server is unreachable.
        """
        self._reset_pending = True

    def metadata(self) -> dict[str, Any]:
        """Backend facts plus the server's ``/healthz`` (or why it could not be read)."""
        info: dict[str, Any] = {
            "backend": "remote",
            "server_url": self.server_url,
            "transport": self.transport,
            "image_size": self.image_size,
            "image_encoding": self.image_encoding,
            "num_steps": self.num_steps,
            "embodiment": self.embodiment.name,
        }
        try:
            info["server"] = self.health()
        except PolicyUnavailableError as exc:
            info["server_error"] = str(exc)
        return info

    # ------------------------------------------------------------------ extras

    def health(self) -> dict[str, Any]:
        """The server's ``/healthz`` details, else the released ``GET /act`` health/info.

        ``PolicyUnavailableError`` if neither can be read (a refused token says so).
        """
        try:
            with self._deadline_in(self.timeout), _http_client(
                self.timeout, self._headers, self._deadline
            ) as client:
                status, content = self._http_exchange(client, "GET", f"{self.server_url}/healthz")
                if status == 200:
                    payload = self._decode(decode_json, content)
                    if isinstance(payload, dict) and "model" in payload:
                        self._server_info = payload
                        return payload
                # Our server without the right token (liveness only), or a released server (no
                # or a bare /healthz): the released health call answers, or says 401.
                status, content = self._http_exchange(client, "GET", f"{self.server_url}/act")
        except _AnswerTooLargeError as exc:
            raise PolicyUnavailableError(f"{self._where()}: health check: {exc}") from exc
        except httpx.TimeoutException as exc:
            raise PolicyUnavailableError(
                f"{self._where()}: health check: no answer within {self.timeout:.3f} s"
            ) from exc
        except httpx.HTTPError as exc:
            raise PolicyUnavailableError(f"{self._where()}: health check failed: {exc!r}") from exc
        if status != 200:
            try:
                message = _error_message(decode_json(content, max_bytes=_MAX_RESPONSE_BYTES))
            except ProtocolError:
                message = _text_excerpt(content)
            hint = " (check the token)" if status == 401 else ""
            raise PolicyUnavailableError(
                f"{self._where()}: health check HTTP {status}: {message}{hint}"
            )
        payload = self._decode(decode_json, content)
        self._server_info = payload
        return payload

    def close(self) -> None:
        with self._lock:
            self._drop_connections(graceful=True)
            if self._codec_pool is not None:
                self._codec_pool.shutdown(wait=False)
                self._codec_pool = None

    def __enter__(self) -> RemotePolicy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ transports

    def _encoder_pool(self) -> ThreadPoolExecutor:
        if self._codec_pool is None:
            self._codec_pool = ThreadPoolExecutor(
                max_workers=min(len(self.embodiment.camera_names), os.cpu_count() or 1),
                thread_name_prefix="molmoact2-encode",
            )
        return self._codec_pool

    def _where(self) -> str:
        url = self.server_url if self.transport == "http" else self.ws_url
        return f"policy server {url}"

    @contextlib.contextmanager
    def _deadline_in(self, seconds: float) -> Iterator[None]:
        self._deadline.at = time.monotonic() + seconds
        try:
            yield
        finally:
            self._deadline.at = None

    def _drop_connections(self, *, graceful: bool = False) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        if self._ws is not None:
            if not graceful:
                # After a failure the close handshake could wait close_timeout for a server
                # that does not answer, or block on a send buffer it never drains (probe: a
                # 1 s timeout became 11 s): cut the socket first.
                _abort_socket(self._ws)
            try:
                self._ws.close()
            except Exception:  # already broken; we only want it gone
                pass
            self._ws = None

    def _http_exchange(
        self, client: httpx.Client, method: str, url: str, **kwargs: Any
    ) -> tuple[int, bytes]:
        """(status, body) within the request deadline; the body is cut at the size limit.

        ``response.content`` had read any body in full: an endless chunked answer or a 10 GB
        Content-Length grew the robot computer's memory at the link's speed until the server
        stopped (probe: 8 GB in 20 s).
        """
        with client.stream(method, url, **kwargs) as response:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > _MAX_RESPONSE_BYTES:
                raise _AnswerTooLargeError(
                    f"answer of {int(declared)} bytes (Content-Length) is over the limit of "
                    f"{_MAX_RESPONSE_BYTES}"
                )
            raw = bytearray()
            for chunk in response.iter_raw(_READ_BYTES):
                raw += chunk
                if len(raw) > _MAX_RESPONSE_BYTES:
                    raise _AnswerTooLargeError(
                        f"answer cut at the limit of {_MAX_RESPONSE_BYTES} bytes"
                    )
            try:
                body = _decoded_body(
                    response.headers.get("content-encoding", ""), bytes(raw), _MAX_RESPONSE_BYTES
                )
            except ProtocolError as exc:
                raise _AnswerTooLargeError(str(exc)) from exc
            return response.status_code, body

    def _post_http(self, body: bytes) -> bytes:
        if self._http is None:
            # One persistent client: keep-alive saves a TCP handshake per chunk; httpx opens a
            # fresh connection by itself when the server restarted.
            self._http = _http_client(self.timeout, self._headers, self._deadline)
        try:
            status, content = self._http_exchange(
                self._http,
                "POST",
                f"{self.server_url}/act",
                content=body,
                headers={"Content-Type": "application/json"},
            )
        except _AnswerTooLargeError as exc:
            self._drop_connections()
            raise PolicyUnavailableError(f"{self._where()}: unreadable response: {exc}") from exc
        except httpx.TimeoutException as exc:
            self._drop_connections()
            raise PolicyUnavailableError(
                f"{self._where()}: no answer within {self.timeout:.3f} s ({type(exc).__name__})"
            ) from exc
        except httpx.HTTPError as exc:
            self._drop_connections()
            raise PolicyUnavailableError(f"{self._where()}: {exc!r}") from exc
        if status == 200:
            return content
        self._raise_for_status(status, content)
        raise AssertionError("unreachable")

    def _exchange_ws(self, body: bytes) -> bytes:
        from websockets.exceptions import WebSocketException
        from websockets.sync.client import connect

        # One deadline for connect, hello, send and answer (each had its own timeout).
        deadline = time.monotonic() + self.timeout

        def left() -> float:
            seconds = deadline - time.monotonic()
            if seconds <= 0.0:
                raise TimeoutError("request deadline passed")
            return seconds

        try:
            if self._ws is None:
                self._ws = connect(
                    self.ws_url,
                    additional_headers=self._headers,
                    open_timeout=self.timeout,
                    close_timeout=self.timeout,
                    max_size=_MAX_RESPONSE_BYTES,
                    # Images are JPEG or raw sensor pixels: deflate would cost CPU, save little.
                    compression=None,
                    legacy=True,  # we hold the connection across calls, not in a with-block
                )
                hello = self._decode(decode_msgpack, self._ws.recv(timeout=left()))
                self._raise_for_ws_error(hello)
                self._server_info = hello.get("metadata") if isinstance(hello, dict) else None
            # websockets' send has no timeout: against a server that stops reading it blocked
            # until the server went away (probe: 30 s with a 1 s timeout). The watchdog cuts
            # the socket at the deadline, which ends the send.
            watchdog = threading.Timer(left(), _abort_socket, (self._ws,))
            watchdog.daemon = True
            watchdog.start()
            try:
                self._ws.send(body)
            finally:
                watchdog.cancel()
            return self._ws.recv(timeout=left())
        except PolicyUnavailableError:
            self._drop_connections()
            raise
        except TimeoutError as exc:
            # A late answer would arrive as the reply to the next request: start over.
            self._drop_connections()
            raise PolicyUnavailableError(
                f"{self._where()}: no answer within {self.timeout:.3f} s"
            ) from exc
        except (OSError, WebSocketException) as exc:
            self._drop_connections()
            if time.monotonic() >= deadline:  # the watchdog cut it
                raise PolicyUnavailableError(
                    f"{self._where()}: no answer within {self.timeout:.3f} s (send not done)"
                ) from exc
            raise PolicyUnavailableError(f"{self._where()}: {exc!r}") from exc

    def _decode(self, decoder: Any, raw: bytes | str) -> Any:
        if isinstance(raw, str):
            raw = raw.encode("utf-8")
        try:
            return decoder(raw, max_bytes=_MAX_RESPONSE_BYTES)
        except ProtocolError as exc:
            raise PolicyUnavailableError(f"{self._where()}: unreadable response: {exc}") from exc

    def _raise_for_ws_error(self, payload: Any) -> None:
        if isinstance(payload, dict) and "error" in payload:
            status = payload.get("status", 500)
            # A hostile status ("x", 1e400, a list) raised ValueError/TypeError from int().
            if isinstance(status, bool) or not isinstance(status, int):
                status = 500
            if status == 401:
                self._drop_connections()
            self._raise_for_status(status, payload)

    def _raise_for_status(self, status: int, content: bytes | dict[str, Any]) -> None:
        if isinstance(content, dict):
            message = _error_message(content)
        else:
            try:
                message = _error_message(decode_json(content, max_bytes=_MAX_RESPONSE_BYTES))
            except ProtocolError:
                message = _text_excerpt(content)
        if status == 400:
            # The server refused this observation (our own checks passed): same class of error
            # the local model raises for a bad observation.
            raise PolicyInputError(f"{self._where()} rejected the observation: {message}")
        hint = {
            401: " (check the token)",
            413: " (use image_encoding='jpeg' or raise the server's --max-body-mb)",
            503: " (server busy or model unavailable)",
        }.get(status, "")
        raise PolicyUnavailableError(f"{self._where()}: HTTP {status}: {message}{hint}")


class _AnswerTooLargeError(Exception):
    """A body over the client's limit (raw, declared or inflated)."""


def _abort_socket(ws: Any) -> None:
    """Shut the websocket's socket down: a send or recv blocked on it returns at once."""
    try:
        ws.socket.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed
        pass


def _text_excerpt(content: bytes) -> str:
    return bounded_message(content[:MAX_MESSAGE_CHARS].decode("utf-8", "replace"))


def _error_message(payload: Any) -> str:
    """The server's error text, cut to ``MAX_MESSAGE_CHARS``: it ends up in the node's status
    and log (probe: a 7 MB message went into the exception and every status message)."""
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and "message" in error:
            return bounded_message(str(error["message"]))
        if "detail" in payload:
            return bounded_message(str(payload["detail"]))
    return bounded_message(str(payload)[:200])
