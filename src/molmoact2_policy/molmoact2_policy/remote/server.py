"""MolmoAct2 policy server: ``molmoact2 serve`` on a GPU host, any ``Policy`` behind HTTP/websocket.

Endpoints (schema in docs/remote_inference.md):

* ``POST /act``: the released request and response (json_numpy JSON), plus our extensions.
* ``GET /act``: the released health/info answer (checkpoint, norm tag, cameras, state size).
* ``/ws``: the same dictionaries as binary msgpack frames; one persistent connection per robot.
* ``GET /healthz``: liveness for anyone; model, warm-up state and queue with the token.
* ``POST /reset``: forget per-episode state (Think-mode depth cache).

With a token, every path but ``/healthz`` (``/docs`` and ``/openapi.json`` included) needs it.
Slow, idle and surplus connections are cut by ``guard.guarded_protocol``.

One inference runs at a time, on one worker thread (the device and CUDA graphs are not shared
between threads); at most ``max_queue`` more requests wait for it and the rest get 503 at once,
so a slow GPU never builds an unbounded backlog of stale observations.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import hmac
import inspect
import ipaddress
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import anyio
import numpy as np
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import Response
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from molmoact2_common.allocator import keep_freed_memory
from molmoact2_common.embodiments import get_embodiment
from molmoact2_policy.policy_api import (
    MODES,
    ActionChunkResult,
    Policy,
    PolicyInputError,
    PolicyUnavailableError,
)
from molmoact2_policy.remote.guard import (
    SERVER_CLOSED_KEY,
    ConnectionLimits,
    ThrottledLog,
    guarded_protocol,
    guarded_ws_protocol,
)
from molmoact2_policy.remote.protocol import (
    DEFAULT_MAX_BODY_BYTES,
    HEALTH_CONTROL_TOKENS,
    PROTOCOL_VERSION,
    RELEASED_DEFAULT_NUM_STEPS,
    RTC_FIELD,
    ActRequest,
    ProtocolError,
    RequestLimits,
    RequestTooLargeError,
    build_act_response,
    decode_json,
    decode_msgpack,
    encode_json,
    encode_msgpack,
    error_payload,
    parse_act_request,
    released_actions,
    released_norm_tag,
    wire_cameras,
)

logger = logging.getLogger("molmoact2.remote.server")

TOKEN_HEADER = "x-molmoact2-token"
# The released YAM cameras' native size; the model stretches every frame to its square input,
# so the shape only has to be a plausible camera frame.
WARMUP_IMAGE_SHAPE = (360, 640, 3)
DEFAULT_WARMUP_INSTRUCTION = "pick up the object and put it in the bowl"
# Status of a request dropped because its client hung up (nginx's convention); never sent.
CLIENT_CLOSED = 499
_T = TypeVar("_T")


class ServerBusyError(RuntimeError):
    """The inference queue is full."""


class InferenceQueue:
    """One worker thread runs inferences in order; admission is bounded to 1 + ``max_queue``."""

    def __init__(self, max_queue: int) -> None:
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self.max_queue = max_queue
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="molmoact2-infer")
        self._lock = threading.Lock()
        self._admitted = 0
        self._running = 0

    @contextlib.contextmanager
    def slot(self) -> Any:
        """Hold a place in the queue for one request, or raise ``ServerBusyError`` at once."""
        with self._lock:
            if self._admitted >= 1 + self.max_queue:
                raise ServerBusyError(
                    f"server busy: 1 inference running and {self.max_queue} waiting "
                    "(max_queue); retry later"
                )
            self._admitted += 1
        try:
            yield
        finally:
            with self._lock:
                self._admitted -= 1

    def submit(self, fn: Callable[[], _T]) -> Future[_T]:
        def counted() -> _T:
            with self._lock:
                self._running += 1
            try:
                return fn()
            finally:
                with self._lock:
                    self._running -= 1

        return self._executor.submit(counted)

    async def run(self, fn: Callable[[], _T]) -> _T:
        return await asyncio.wrap_future(self.submit(fn))

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {
                "admitted": self._admitted,
                "running": self._running,
                "max_queue": self.max_queue,
            }

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class BodyBudget:
    """Bytes of HTTP request bodies held at once across connections: being received, queued
    or decoding. Bodies are read before a queue slot is taken, so without a budget
    ``max_connections`` uploads of ``max_body_bytes`` each were in memory together (probe: 32
    simultaneous 30 MB bodies, server peak 1.04 GB, 24 of them then refused as busy anyway)."""

    def __init__(self, limit_bytes: int) -> None:
        if limit_bytes < 1:
            raise ValueError(f"limit_bytes must be >= 1, got {limit_bytes}")
        self.limit_bytes = limit_bytes
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        with self._lock:
            return self._used

    @contextlib.contextmanager
    def hold(self) -> Iterator[Callable[[int], None]]:
        """A ``take(n)`` that reserves n more bytes or raises ``ServerBusyError``; everything
        taken is given back when the block ends."""
        taken = 0

        def take(count: int) -> None:
            nonlocal taken
            with self._lock:
                if self._used + count > self.limit_bytes:
                    raise ServerBusyError(
                        f"server busy: {self._used / 2**20:.1f} MiB of request bodies in "
                        f"flight, the limit is {self.limit_bytes / 2**20:.1f} MiB; retry later"
                    )
                self._used += count
                taken += count

        try:
            yield take
        finally:
            with self._lock:
                self._used -= taken


class PolicyService:
    """Framework-free core of the server: admission, decoding, warm-up, inference, timings."""

    def __init__(
        self,
        policy: Policy,
        *,
        max_queue: int = 4,
        limits: RequestLimits | None = None,
        warmup_instructions: Sequence[str] = (DEFAULT_WARMUP_INSTRUCTION,),
    ) -> None:
        self.policy = policy
        self.spec = policy.embodiment
        self.limits = limits or RequestLimits()
        self.queue = InferenceQueue(max_queue)
        if not warmup_instructions or not all(text.strip() for text in warmup_instructions):
            raise ValueError("warm-up needs at least one non-empty instruction")
        for text in warmup_instructions:  # else the warm-up fails and the server is degraded
            try:
                policy.check_instruction(text)
            except PolicyInputError as exc:
                raise ValueError(f"warm-up instruction {text!r}: {exc}") from None
        self.warmup_instructions = tuple(warmup_instructions)
        # Stated in /healthz when the policy can list them (the local models: their tokenizer's
        # added tokens); fixed for the policy's life, so listed once.
        control_tokens = getattr(policy, "control_tokens", None)
        self.control_tokens: list[str] | None = (
            [str(t) for t in control_tokens()] if callable(control_tokens) else None
        )
        # num_steps reaches a backend whose act() takes it; any other backend runs a fixed
        # number of flow steps (its metadata's), and a request for another number is refused
        # rather than ignored. A backend without a flow loop (FAST) accepts only the released
        # default, which released clients send meaning "the server's own".
        self._takes_num_steps = _accepts_keyword(policy.act, "num_steps")
        self._takes_rtc = _accepts_keyword(policy.act, "rtc")
        fixed = None if self._takes_num_steps else self._metadata().get("flow_steps")
        self._fixed_steps = fixed if isinstance(fixed, int) else RELEASED_DEFAULT_NUM_STEPS
        # JPEG decoding of several cameras in parallel; bounded so a burst cannot take all cores.
        self._codec_pool = ThreadPoolExecutor(
            max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="molmoact2-decode"
        )
        self.warmup: dict[str, Any] = {"state": "pending"}
        self.served = 0
        self.failed = 0
        self.dropped = 0  # requests never run because their client left (HTTP or websocket)
        self._log = ThrottledLog()

    def start_warmup(self) -> Future[None]:
        """Queue the warm-up (see ``_warm_up``) so the first real request is not the slow one."""
        return self.queue.submit(self._warm_up)

    def _warm_up(self) -> None:
        """One inference per configured instruction, on a dummy observation of real shapes.

        The prompt length follows the instruction, and CUDA graphs are captured per (bucketed)
        prompt length: warming up with the instruction the robot will send captures the graph
        its first real request replays, instead of capturing during that request.
        """
        self.warmup = {"state": "running"}
        start = time.perf_counter()
        images = {
            name: np.full(WARMUP_IMAGE_SHAPE, 128, np.uint8) for name in self.spec.camera_names
        }
        # A policy that knows how to warm itself up (the local model's ``warm_up``) does;
        # any other Policy gets one act() on the dummy observation.
        policy_warm_up = getattr(self.policy, "warm_up", None)
        try:
            for instruction in self.warmup_instructions:
                if callable(policy_warm_up):
                    policy_warm_up(instruction)
                else:
                    self.policy.act(images, np.zeros(self.spec.state_dim), instruction, seed=0)
            self.policy.reset()  # warm-up must not leave a depth cache behind
        except Exception as exc:
            logger.exception("warm-up inference failed")
            self.warmup = {"state": "failed", "error": f"{type(exc).__name__}: {exc}"}
            return
        self.warmup = {
            "state": "ready",
            "seconds": time.perf_counter() - start,
            "instructions": len(self.warmup_instructions),
        }
        logger.info(
            "warm-up (%d instruction(s)) took %.3f s",
            len(self.warmup_instructions),
            self.warmup["seconds"],
        )

    def shutdown(self) -> None:
        self.queue.shutdown()
        self._codec_pool.shutdown(wait=False, cancel_futures=True)

    def _metadata(self) -> dict[str, Any]:
        try:
            return dict(self.policy.metadata())
        except Exception as exc:
            return {"error": f"metadata() failed: {exc}"}

    def status(self) -> str:
        return {"failed": "degraded", "pending": "warming_up", "running": "warming_up"}.get(
            self.warmup["state"], "ok"
        )

    def liveness(self) -> dict[str, Any]:
        """What ``/healthz`` tells a caller without the token: alive, and warm or not."""
        return {"status": self.status(), "warmup": self.warmup["state"]}

    def released_info(self) -> dict[str, Any]:
        """``GET /act``: the released servers' health/info keys, then ours."""
        model = self._metadata()
        spec = self.spec
        return {
            "status": self.status(),
            "repo_id": model.get("checkpoint"),
            "norm_tag": released_norm_tag(spec),
            "device": model.get("device"),
            "dtype": _released_dtype(model.get("dtype")),
            "num_cameras": len(spec.camera_names),
            "state_dim": spec.state_dim,
            "action_horizon": int(getattr(self.policy, "returned_steps", spec.horizon)),
            "camera_keys": [f"{name}_cam" for name in wire_cameras(spec)],
            "embodiment": spec.name,
            "protocol_version": PROTOCOL_VERSION,
        }

    def health(self) -> dict[str, Any]:
        model = self._metadata()
        health = {
            "status": self.status(),
            "protocol_version": PROTOCOL_VERSION,
            "embodiment": self.spec.name,
            "camera_names": list(self.spec.camera_names),
            "state_dim": self.spec.state_dim,
            "horizon": self.spec.horizon,
            "device": model.get("device"),
            "model": model,
            "warmup": dict(self.warmup),
            "queue": self.queue.snapshot(),
            "served": self.served,
            "failed": self.failed,
            "dropped": self.dropped,
        }
        if self.control_tokens is not None:
            health[HEALTH_CONTROL_TOKENS] = self.control_tokens
        return health

    async def reset(self) -> None:
        with self.queue.slot():
            await self.queue.run(self.policy.reset)

    async def handle(
        self,
        body: bytes,
        decode: Callable[..., Any],
        *,
        client_gone: Callable[[], Awaitable[object]] | None = None,
    ) -> tuple[int, Any]:
        """One encoded request -> (HTTP status, response object or array). Never raises.

        ``client_gone`` returns when the requester hangs up: a request still waiting for the
        device is then dropped, so a client that timed out and retried does not leave dead
        inferences ahead of its live one (an inference already running finishes; the device
        cannot be interrupted). The connection is gone, so the status returned goes nowhere.
        """
        start = time.perf_counter()
        try:
            with self.queue.slot():
                # Decoding answers a value, never raises across the thread boundary: an exception
                # coming back through anyio's worker future forms a reference cycle with the
                # frames that hold the decoded payload, so each rejected request's body (up to
                # max_body_bytes, ten times that as Python objects) stayed in memory until the
                # cyclic garbage collector happened to run.
                outcome = await anyio.to_thread.run_sync(self._decode, body, decode)
                if isinstance(outcome, _Rejection):
                    self._log.warning(outcome.code, f"rejected request: {outcome.message}")
                    return outcome.status, error_payload(outcome.code, outcome.message)
                request = outcome
                decoded = time.perf_counter()
                inference = self.queue.submit(lambda: self._infer(request, time.perf_counter()))
                if client_gone is not None and await _client_left_first(inference, client_gone):
                    self.dropped += 1
                    self._log.info(
                        "dropped", "dropped a queued request: its client hung up before it ran"
                    )
                    return CLIENT_CLOSED, error_payload(
                        "client_closed", "the client hung up before its request ran"
                    )
                result, queue_wait, infer = await asyncio.wrap_future(inference)
        except ServerBusyError as exc:
            self._log.warning("busy", str(exc))
            return 503, error_payload("busy", str(exc))
        except asyncio.CancelledError:
            # uvicorn cancels the requests still open when --shutdown-timeout runs out; it would
            # answer them 500 and log a traceback each. A queued one never runs (its future
            # was cancelled with it); a running one ends on its own.
            # Handled here: clear the pending cancellation (Python >= 3.11 counts them).
            uncancel = getattr(asyncio.current_task(), "uncancel", None)
            if uncancel is not None:
                uncancel()
            self._log.info("stopping", "answered a pending request 503: the server is stopping")
            return 503, error_payload("stopping", "the server is stopping; retry later")
        except PolicyInputError as exc:
            self._log.warning("bad_request", f"rejected request: {exc}")
            return 400, error_payload("bad_request", str(exc))
        except PolicyUnavailableError as exc:
            self.failed += 1
            self._log.warning("unavailable", f"policy unavailable: {exc}")
            return 503, error_payload("unavailable", str(exc))
        except Exception as exc:
            self.failed += 1
            self._log.warning("inference", f"inference failed: {type(exc).__name__}: {exc}")
            return 500, error_payload("inference_failed", f"{type(exc).__name__}: {exc}")
        self.served += 1
        timing = {"decode": decoded - start, "queue": queue_wait, "infer": infer}
        if request.response_format == "action":
            return 200, released_actions(result)
        timing["total"] = time.perf_counter() - start
        return 200, build_act_response(result, self.spec.name, timing)

    def _decode(self, body: bytes, decode: Callable[..., Any]) -> ActRequest | _Rejection:
        """The checked request, or why it is refused (runs on a worker thread)."""
        try:
            return self._parse(body, decode)
        except RequestTooLargeError as exc:
            return _Rejection(413, exc.code, str(exc))
        except (ProtocolError, PolicyInputError) as exc:
            return _Rejection(400, "bad_request", str(exc))
        except Exception as exc:  # a request our parser did not foresee: say so, keep serving
            self._log.log(
                logging.ERROR, "decode_bug", "request decoding failed unexpectedly", exc_info=True
            )
            return _Rejection(
                500, "internal_error", f"request could not be read: {type(exc).__name__}: {exc}"
            )

    def _parse(self, body: bytes, decode: Callable[..., Any]) -> ActRequest:
        payload = decode(body, max_bytes=self.limits.max_body_bytes)
        request = parse_act_request(payload, self.spec, self.limits, executor=self._codec_pool)
        # Refused here, on the decode thread, not after waiting for the device (400 naming
        # the token; the model's act refuses it too).
        self.policy.check_instruction(request.instruction)
        steps = request.num_steps
        if steps is not None and not self._takes_num_steps and steps != self._fixed_steps:
            raise ProtocolError(
                f"num_steps {steps} cannot be honoured: this server's policy runs "
                f"{self._fixed_steps} flow steps and cannot change them per request"
            )
        if request.rtc is not None and not self._takes_rtc:
            raise ProtocolError(
                f"'{RTC_FIELD}' (real-time chunking) is not supported by this server's policy; "
                "send the request without it"
            )
        return request

    def _infer(
        self, request: ActRequest, submitted: float
    ) -> tuple[ActionChunkResult, float, float]:
        start = time.perf_counter()
        if request.reset:
            self.policy.reset()
        options: dict[str, Any] = {"seed": request.seed}
        if request.num_steps is not None and self._takes_num_steps:
            options["num_steps"] = request.num_steps
        if request.rtc is not None:  # only RTC-capable policies take it
            options["rtc"] = request.rtc
        result = self.policy.act(request.images, request.state, request.instruction, **options)
        return result, start - submitted, time.perf_counter() - start


def _released_dtype(dtype: Any) -> Any:
    """The released servers report ``str(model.dtype)``: ``"torch.bfloat16"``."""
    if isinstance(dtype, str) and dtype and not dtype.startswith("torch."):
        return f"torch.{dtype}"
    return dtype


@dataclasses.dataclass(frozen=True)
class _Rejection:
    """A request refused before inference: HTTP status, error code, message."""

    status: int
    code: str
    message: str


async def _client_left_first(
    inference: Future[Any], client_gone: Callable[[], Awaitable[object]]
) -> bool:
    """Wait until ``inference`` is done or the client hangs up; True when the request was
    dropped (its client left before it started). A started inference is always awaited."""
    watcher = asyncio.ensure_future(client_gone())
    finished = asyncio.ensure_future(asyncio.wrap_future(inference))
    try:
        await asyncio.wait({watcher, finished}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        inference.cancel()  # the server is stopping: a queued request never runs
        raise
    finally:
        watcher.cancel()
    if not finished.done() and inference.cancel():
        return True
    await asyncio.wait({finished})  # running: it holds the device until it ends
    if not finished.cancelled():
        # The caller awaits the inference itself; without this, a failed inference's error
        # stayed unretrieved here and asyncio logged "Future exception was never retrieved".
        finished.exception()
    return False


def _accepts_keyword(function: Callable[..., Any], name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        (p.name == name and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))
        or p.kind is p.VAR_KEYWORD
        for p in parameters
    )


def _token_ok(headers: Mapping[str, str], token: str | None) -> bool:
    if not token:
        return True
    offered = headers.get(TOKEN_HEADER, "")
    authorization = headers.get("authorization", "")
    if not offered and authorization.lower().startswith("bearer "):
        offered = authorization[7:].strip()
    return hmac.compare_digest(offered.encode(), token.encode())


def _json_response(status: int, payload: Any) -> Response:
    return Response(encode_json(payload), status_code=status, media_type="application/json")


_UNAUTHORIZED = (
    "missing or wrong token: send 'Authorization: Bearer <token>' or 'X-Molmoact2-Token: <token>'"
)


class _BodyAbandonedError(Exception):
    """The connection ended before the whole request body arrived."""

    def __init__(self, received: int, declared: str | None) -> None:
        super().__init__(f"{received} of {declared or 'unknown'} bytes")
        self.received = received
        self.declared = declared


async def _read_body(request: Request, max_bytes: int, take: Callable[[int], None]) -> bytes:
    """The whole body, each chunk's bytes reserved with ``take`` (``BodyBudget.hold``) as it
    arrives. Not the declared length up front: a head declaring ``max_bytes`` and no body held
    that much of the budget until the body deadline, so ``max_queue + 2`` such heads (a few
    bytes each, renewed every ``body_timeout``) kept every upload out with 503s; held bytes are
    now bytes the client really sent (uvicorn stops reading 64 kB ahead of the handler)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise RequestTooLargeError(f"body of {declared} bytes exceeds the limit of {max_bytes}")
    chunks: list[bytes] = []
    received = 0
    try:
        async for chunk in request.stream():  # chunked bodies have no Content-Length: count
            received += len(chunk)
            if received > max_bytes:
                raise RequestTooLargeError(f"body exceeds the limit of {max_bytes} bytes")
            take(len(chunk))
            chunks.append(chunk)
    except ClientDisconnect:
        raise _BodyAbandonedError(received, declared) from None
    return b"".join(chunks)


async def _http_disconnect(request: Request) -> None:
    """Return once the client of ``request`` (whose body was read) hangs up."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class _TokenGate:
    """Every HTTP path but ``/healthz`` needs the token (the docs and the OpenAPI schema too).

    Websockets check it in their handler, which says why before closing.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] != "/healthz":
            headers = {
                key.decode("latin-1").lower(): value.decode("latin-1")
                for key, value in scope["headers"]
            }
            if not _token_ok(headers, self.token):
                response = _json_response(401, error_payload("unauthorized", _UNAUTHORIZED))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# Frames of one websocket connection read and not answered yet (most of them answered 503 in
# their turn): a client that never waits for answers would otherwise grow the list of answers
# owed to it without bound. At the limit the server stops reading that connection until it has
# answered some; TCP flow control then holds the client back (closing it instead, uvicorn
# read and discarded its frames for the 10 s of the closing handshake).
WS_MAX_UNANSWERED = 64


@dataclasses.dataclass
class _WsFrame:
    """One request frame, answered in the order received: run (``data``) or, when refused on
    arrival, answered with ``refusal`` (status, payload) without its bytes being kept."""

    data: bytes | None
    refusal: tuple[int, Any] | None = None
    budget: contextlib.ExitStack | None = None  # its bytes' share of the body budget

    def release(self) -> None:
        self.data = None
        if self.budget is not None:
            self.budget.close()
            self.budget = None


class _WsReader:
    """The reading half of one websocket connection.

    It reads every frame as it arrives, whatever the requests before it are doing, so a
    client's close is seen while its earlier requests (up to ``WS_MAX_UNANSWERED``) still
    wait for the device: ``gone`` is then set, and it is the ``client_gone`` hook of
    ``PolicyService.handle`` (as HTTP's disconnect), so a queued request is dropped before it
    runs and the frames read ahead are never run. (Reading one frame ahead only, a client
    that sent several requests and closed had them run, one after another, before its close
    was read.)

    Memory: one request per connection runs or waits for the device; up to ``read_ahead``
    more keep their bytes, which also count in the server's body budget (shared with HTTP
    uploads); a frame beyond either is answered 503 ``busy`` in its turn, its bytes dropped at
    once. A frame is never larger than ``--max-body-mb``: uvicorn's ``ws_max_size``
    (``uvicorn_config``) closes the connection (1009, "frame with N bytes exceeds limit of M
    bytes") as soon as the frame's header declares more, before its payload is read.
    """

    def __init__(self, websocket: WebSocket, budget: BodyBudget, read_ahead: int) -> None:
        self.websocket = websocket
        self.gone = asyncio.Event()
        self.unrun = 0  # frames of a client that left, never run
        self._budget = budget
        self._read_ahead = read_ahead
        self._frames: collections.deque[_WsFrame] = collections.deque()
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()  # set when a frame was answered
        self._holding = 0  # frames holding their bytes: the one being handled and read-ahead
        self._answering = 0  # 1 while a taken frame is being handled and answered

    async def read(self) -> None:
        """Run as a task until the client leaves (or is cut)."""
        try:
            while True:
                while len(self._frames) + self._answering >= WS_MAX_UNANSWERED:
                    self._room.clear()
                    await self._room.wait()  # a close behind these frames is seen later
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                self._frames.append(self._admit(message))
                self._arrived.set()
        except (WebSocketDisconnect, RuntimeError, OSError):
            return  # the connection is gone (a receive after the close raises)
        finally:
            self.gone.set()
            self._arrived.set()

    def _admit(self, message: Mapping[str, Any]) -> _WsFrame:
        data = message.get("bytes")
        if data is None:
            text = "binary msgpack frames expected, got a text frame"
            return _WsFrame(None, (400, error_payload("bad_request", text)))
        if self._holding >= 1 + self._read_ahead:
            text = (
                f"server busy: {self._holding} requests of this connection are running or "
                "waiting; wait for an answer before sending more"
            )
            return _WsFrame(None, (503, error_payload("busy", text)))
        budget = contextlib.ExitStack()
        try:
            budget.enter_context(self._budget.hold())(len(data))
        except ServerBusyError as exc:
            budget.close()
            return _WsFrame(None, (503, error_payload("busy", str(exc))))
        self._holding += 1
        return _WsFrame(data, budget=budget)

    async def next(self) -> _WsFrame | None:
        """The next frame to answer; None once the client is gone (the rest is never run)."""
        while not self._frames and not self.gone.is_set():
            self._arrived.clear()
            await self._arrived.wait()
        if self.gone.is_set():
            return None
        self._answering = 1
        return self._frames.popleft()

    def done(self, frame: _WsFrame) -> None:
        """``frame`` (from ``next``) is answered, or will never be."""
        if frame.data is not None:
            self._holding -= 1
        frame.release()
        self._answering = 0
        self._room.set()

    def close(self) -> None:
        """Free what is left; count the requests of a client that left and never ran."""
        while self._frames:
            frame = self._frames.popleft()
            self.unrun += frame.data is not None
            self.done(frame)


_ws_log = ThrottledLog()


def create_app(
    policy: Policy,
    *,
    token: str | None = None,
    max_queue: int = 4,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    warmup: bool = True,
    warmup_instructions: Sequence[str] = (DEFAULT_WARMUP_INSTRUCTION,),
) -> FastAPI:
    """A FastAPI app serving ``policy``; serve it with ``uvicorn_config`` (``main`` does)."""
    service = PolicyService(
        policy,
        max_queue=max_queue,
        limits=RequestLimits(max_body_bytes=max_body_bytes),
        warmup_instructions=warmup_instructions,
    )
    disconnects = ThrottledLog()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if warmup:
            service.start_warmup()
        else:
            service.warmup = {"state": "skipped"}
        yield
        service.shutdown()

    app = FastAPI(title="MolmoAct2 policy server", lifespan=lifespan)
    app.state.service = service
    # The running request, the queued ones and one more being received.
    body_budget = BodyBudget((max_queue + 2) * max_body_bytes)
    app.state.body_budget = body_budget
    app.state.max_body_bytes = max_body_bytes  # uvicorn_config: the websocket frame limit
    if token:
        app.add_middleware(_TokenGate, token=token)

    @app.get("/healthz")
    async def healthz(request: Request) -> Response:
        # Open to liveness probes; the model's details only with the token.
        if not _token_ok(request.headers, token):
            return _json_response(200, service.liveness())
        return _json_response(200, service.health())

    @app.get("/act")
    async def act_info() -> Response:
        return _json_response(200, service.released_info())

    @app.post("/reset")
    async def reset() -> Response:
        try:
            await service.reset()
        except ServerBusyError as exc:
            return _json_response(503, error_payload("busy", str(exc)))
        return _json_response(200, {"reset": True})

    @app.post("/act")
    async def act(request: Request) -> Response:
        with body_budget.hold() as take:  # the body counts until its answer is built
            try:
                body = await _read_body(request, max_body_bytes, take)
            except RequestTooLargeError as exc:
                return _json_response(413, error_payload(exc.code, str(exc)))
            except ServerBusyError as exc:
                disconnects.warning("body_budget", str(exc))
                return _json_response(503, error_payload("busy", str(exc)))
            except _BodyAbandonedError as exc:
                # The guard logs the connections it closes itself; this is the client hanging up.
                if SERVER_CLOSED_KEY not in request.scope:
                    client = request.client
                    peer = f"{client.host}:{client.port}" if client else "a client"
                    disconnects.info(
                        "client_disconnect",
                        f"{peer} hung up during the body of POST /act ({exc}); nothing was run",
                    )
                return Response(status_code=400)  # goes nowhere: the connection is gone
            status, payload = await service.handle(
                body, decode_json, client_gone=lambda: _http_disconnect(request)
            )
            return _json_response(status, payload)

    @app.websocket("/ws")
    async def websocket_endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        if not _token_ok(websocket.headers, token):
            # Say why before closing: a bare 1008 close leaves users guessing.
            await websocket.send_bytes(
                encode_msgpack({**error_payload("unauthorized", _UNAUTHORIZED), "status": 401})
            )
            await websocket.close(code=1008, reason="unauthorized")
            return
        await websocket.send_bytes(encode_msgpack({"metadata": service.health()}))
        reader = _WsReader(websocket, body_budget, read_ahead=max_queue)
        reading = asyncio.ensure_future(reader.read())
        try:
            while (frame := await reader.next()) is not None:
                try:
                    if frame.data is None:
                        status, payload = frame.refusal
                    else:
                        status, payload = await service.handle(
                            frame.data, decode_msgpack, client_gone=reader.gone.wait
                        )
                finally:
                    reader.done(frame)
                if status == CLIENT_CLOSED:
                    return  # the client left before its request ran
                if status != 200:
                    payload = {**payload, "status": status}
                try:
                    await websocket.send_bytes(encode_msgpack(payload))
                except (WebSocketDisconnect, RuntimeError, OSError):
                    return
        finally:
            reading.cancel()
            reader.close()
            service.dropped += reader.unrun
            if reader.unrun:
                client = websocket.client
                peer = f"{client.host}:{client.port}" if client else "a client"
                _ws_log.info(
                    "ws_unrun",
                    f"websocket {peer} left with {reader.unrun} more request(s) it had sent; "
                    "none of them was run",
                )

    return app


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _load_policy(args: argparse.Namespace) -> Policy:
    try:
        import torch

        from molmoact2_policy.model.loader import load_policy
    except ImportError as exc:
        raise SystemExit(f"molmoact2 serve: the local model cannot be imported: {exc}") from exc
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = args.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    joint_names = [name for name in args.joint_names.split(",") if name] or None
    try:
        return load_policy(
            args.checkpoint,
            args.embodiment,
            device=device,
            dtype=dtype,
            cuda_graph=args.cuda_graph,
            mode=args.mode,
            seed=args.seed,
            joint_names=joint_names,
        )
    except (OSError, ValueError, NotImplementedError) as exc:
        raise SystemExit(f"molmoact2 serve: cannot load {args.checkpoint!r}: {exc}") from exc


def uvicorn_config(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8202,
    connection_limits: ConnectionLimits | None = None,
    **kwargs: Any,
) -> Any:
    """The ``uvicorn.Config`` the server runs with: the guarded h11 protocol and its limits."""
    import uvicorn

    limits = connection_limits or ConnectionLimits()
    # A websocket message is a request body: refused at its header beyond the app's body limit
    # (uvicorn's default, 16 MiB, let a frame larger than --max-body-mb be read in full first).
    max_body_bytes = getattr(getattr(app, "state", None), "max_body_bytes", None)
    if max_body_bytes is not None:
        kwargs.setdefault("ws_max_size", max_body_bytes)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=guarded_protocol(limits),
        ws=guarded_ws_protocol(limits),
        timeout_keep_alive=limits.idle_timeout,  # type: ignore[arg-type]  (float works)
        timeout_graceful_shutdown=limits.shutdown_timeout,  # type: ignore[arg-type]
        **kwargs,
    )


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="molmoact2 serve",
        description="Serve a MolmoAct2 checkpoint over HTTP (POST /act) and websocket (/ws).",
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory, or 'tiny'")
    parser.add_argument("--embodiment", required=True, help="e.g. yam_bimanual, droid, so100_101")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default)")
    parser.add_argument("--port", type=int, default=8202)
    parser.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto")
    parser.add_argument("--dtype", default="auto", help="bfloat16, float16, float32 or auto")
    parser.add_argument("--cuda-graph", action="store_true", help="replay the flow loop as a graph")
    parser.add_argument("--mode", default="flow", choices=MODES)
    parser.add_argument(
        "--seed", type=int, default=0, help="noise seed when a request carries none"
    )
    parser.add_argument("--joint-names", default="", help="comma-separated, for chunk metadata")
    parser.add_argument(
        "--token",
        default=os.environ.get("MOLMOACT2_TOKEN", ""),
        help="shared secret every request must carry (default: $MOLMOACT2_TOKEN)",
    )
    parser.add_argument("--max-queue", type=int, default=4, help="requests that may wait")
    parser.add_argument(
        "--max-body-mb", type=float, default=DEFAULT_MAX_BODY_BYTES / 2**20, help="request limit"
    )
    parser.add_argument("--no-warmup", action="store_true", help="skip the warm-up inference")
    parser.add_argument(
        "--warmup-instruction",
        action="append",
        default=None,
        help="instruction the robot will send (repeatable): warm-up captures its CUDA graph "
        f"(default: {DEFAULT_WARMUP_INSTRUCTION!r})",
    )
    for limit in dataclasses.fields(ConnectionLimits):
        parser.add_argument(
            "--" + limit.name.replace("_", "-"),
            type=type(limit.default),
            default=limit.default,
            help=limit.metadata["help"],
        )
    parser.add_argument("--ssl-certfile", default=None, help="serve HTTPS/WSS with this cert")
    parser.add_argument("--ssl-keyfile", default=None)
    parser.add_argument("--log-level", default="info")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``molmoact2 serve ...``: load the model, warm it up, serve until interrupted."""
    import uvicorn

    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s: %(message)s")
    try:
        get_embodiment(args.embodiment)
    except ValueError as exc:
        raise SystemExit(f"molmoact2 serve: {exc}") from exc
    if args.max_queue < 0:
        raise SystemExit("molmoact2 serve: --max-queue must be >= 0")
    if not _is_loopback(args.host) and not args.token:
        logger.warning(
            "serving on %s without --token: anyone who can reach this port can drive the "
            "policy; set a token and prefer an SSH tunnel or VPN (docs/remote_inference.md)",
            args.host,
        )
    try:
        limit_names = [limit.name for limit in dataclasses.fields(ConnectionLimits)]
        connection_limits = ConnectionLimits(**{name: getattr(args, name) for name in limit_names})
    except ValueError as exc:
        raise SystemExit(f"molmoact2 serve: {exc}") from exc
    warmup_instructions = tuple(args.warmup_instruction or (DEFAULT_WARMUP_INSTRUCTION,))
    if not all(text.strip() for text in warmup_instructions):
        raise SystemExit("molmoact2 serve: --warmup-instruction must not be empty")
    max_body_bytes = int(args.max_body_mb * 2**20)
    keep_freed_memory()  # before the model allocates anything (molmoact2_common.allocator)
    policy = _load_policy(args)
    try:
        app = create_app(
            policy,
            token=args.token or None,
            max_queue=args.max_queue,
            max_body_bytes=max_body_bytes,
            warmup=not args.no_warmup,
            warmup_instructions=warmup_instructions,
        )
    except ValueError as exc:
        raise SystemExit(f"molmoact2 serve: {exc}") from exc
    config = uvicorn_config(
        app,
        host=args.host,
        port=args.port,
        connection_limits=connection_limits,
        log_level=args.log_level.lower(),
        ws_max_size=max_body_bytes,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
    )
    interrupted = False
    try:
        # uvicorn re-raises the stopping signal once it has shut down: SIGINT comes back as
        # KeyboardInterrupt, after which the interpreter would join the inference thread.
        uvicorn.Server(config).run()
    except KeyboardInterrupt:
        # Ctrl-C is the normal way to stop it and uvicorn has logged the orderly shutdown; the
        # traceback it printed (CancelledError, then KeyboardInterrupt) read as a crash.
        interrupted = True
    finally:
        exit_if_inference_stuck(app.state.service)
    return 130 if interrupted else 0


def exit_if_inference_stuck(
    service: PolicyService, exit_process: Callable[[int], object] = os._exit
) -> None:
    """After the server stopped: end the process now if an inference is still running.

    uvicorn gave in-flight requests ``shutdown_timeout`` and cancelled them; a model call
    cannot be cancelled, and the interpreter joins the inference thread at exit, so a call
    stuck on the device (or a long warm-up) kept the process alive after Ctrl-C for as long as
    it ran (probe: 25.7 s after SIGINT during a 30 s warm-up).
    """
    running = service.queue.snapshot()["running"]
    if not running:
        return
    logger.error(
        "an inference (or the warm-up) is still running as the server stops; exiting without "
        "waiting for it (a model call cannot be interrupted)"
    )
    logging.shutdown()
    exit_process(1)


if __name__ == "__main__":
    raise SystemExit(main())
