"""MolmoAct2 policy server: ``molmoact2 serve`` on a GPU host, any ``Policy`` behind HTTP/websocket.

Endpoints (schema in docs/remote_inference.md):

* ``POST /act``: released-compatible JSON (json_numpy arrays) in, a chunk out.
* ``/ws``: the same dictionaries as binary msgpack frames; one persistent connection per robot.
* ``GET /healthz``: model, embodiment, device, warm-up state and queue.
* ``POST /reset``: forget per-episode state (Think-mode depth cache).

One inference runs at a time, on one worker thread (the device and CUDA graphs are not shared
between threads); at most ``max_queue`` more requests wait for it and the rest get 503 at once,
so a slow GPU never builds an unbounded backlog of stale observations.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import ipaddress
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import anyio
import numpy as np
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import Response

from molmoact2_policy.embodiments import get_embodiment
from molmoact2_policy.policy_api import (
    ActionChunkResult,
    Policy,
    PolicyInputError,
    PolicyUnavailableError,
)
from molmoact2_policy.remote.protocol import (
    DEFAULT_MAX_BODY_BYTES,
    PROTOCOL_VERSION,
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
)

logger = logging.getLogger("molmoact2.remote.server")

TOKEN_HEADER = "x-molmoact2-token"
WARMUP_IMAGE_SHAPE = (480, 640, 3)
_T = TypeVar("_T")


class ServerBusyError(RuntimeError):
    """The inference queue is full."""


class _ThrottledLog:
    """At most one log line per key per ``period`` seconds, with a count of what was dropped."""

    def __init__(self, period: float = 5.0) -> None:
        self._period = period
        self._last: dict[str, float] = {}
        self._dropped: dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, key: str, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -1e9) < self._period:
                self._dropped[key] = self._dropped.get(key, 0) + 1
                return
            self._last[key] = now
            dropped = self._dropped.pop(key, 0)
        suffix = f" ({dropped} similar suppressed)" if dropped else ""
        logger.warning("%s%s", message, suffix)


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


class PolicyService:
    """Framework-free core of the server: admission, decoding, warm-up, inference, timings."""

    def __init__(
        self, policy: Policy, *, max_queue: int = 4, limits: RequestLimits | None = None
    ) -> None:
        self.policy = policy
        self.spec = policy.embodiment
        self.limits = limits or RequestLimits()
        self.queue = InferenceQueue(max_queue)
        # JPEG decoding of several cameras in parallel; bounded so a burst cannot take all cores.
        self._codec_pool = ThreadPoolExecutor(
            max_workers=min(4, os.cpu_count() or 1), thread_name_prefix="molmoact2-decode"
        )
        self.warmup: dict[str, Any] = {"state": "pending"}
        self.served = 0
        self.failed = 0
        self._log = _ThrottledLog()

    def start_warmup(self) -> Future[None]:
        """Queue one inference on synthetic input so the first real request is not the slow one."""
        return self.queue.submit(self._warm_up)

    def _warm_up(self) -> None:
        self.warmup = {"state": "running"}
        start = time.perf_counter()
        images = {
            name: np.full(WARMUP_IMAGE_SHAPE, 128, np.uint8) for name in self.spec.camera_names
        }
        try:
            self.policy.act(images, np.zeros(self.spec.state_dim), "warm up", seed=0)
            self.policy.reset()  # warm-up must not leave a depth cache behind
        except Exception as exc:
            logger.exception("warm-up inference failed")
            self.warmup = {"state": "failed", "error": f"{type(exc).__name__}: {exc}"}
            return
        self.warmup = {"state": "ready", "seconds": time.perf_counter() - start}
        logger.info("warm-up inference took %.3f s", self.warmup["seconds"])

    def shutdown(self) -> None:
        self.queue.shutdown()
        self._codec_pool.shutdown(wait=False, cancel_futures=True)

    def health(self) -> dict[str, Any]:
        try:
            model = dict(self.policy.metadata())
        except Exception as exc:
            model = {"error": f"metadata() failed: {exc}"}
        return {
            "status": "ok" if self.warmup["state"] != "failed" else "degraded",
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
        }

    async def reset(self) -> None:
        with self.queue.slot():
            await self.queue.run(self.policy.reset)

    async def handle(self, body: bytes, decode: Callable[..., Any]) -> tuple[int, Any]:
        """One encoded request -> (HTTP status, response object or array). Never raises."""
        start = time.perf_counter()
        try:
            with self.queue.slot():
                request = await anyio.to_thread.run_sync(self._decode, body, decode)
                decoded = time.perf_counter()
                result, queue_wait, infer = await self.queue.run(
                    lambda: self._infer(request, time.perf_counter())
                )
        except ServerBusyError as exc:
            self._log.warning("busy", str(exc))
            return 503, error_payload("busy", str(exc))
        except RequestTooLargeError as exc:
            self._log.warning("too_large", f"rejected request: {exc}")
            return 413, error_payload(exc.code, str(exc))
        except (ProtocolError, PolicyInputError) as exc:
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
            return 200, np.asarray(result.positions, dtype=np.float64)
        timing["total"] = time.perf_counter() - start
        return 200, build_act_response(result, self.spec.name, timing)

    def _decode(self, body: bytes, decode: Callable[..., Any]) -> ActRequest:
        payload = decode(body, max_bytes=self.limits.max_body_bytes)
        return parse_act_request(payload, self.spec, self.limits, executor=self._codec_pool)

    def _infer(
        self, request: ActRequest, submitted: float
    ) -> tuple[ActionChunkResult, float, float]:
        start = time.perf_counter()
        if request.reset:
            self.policy.reset()
        extra = {"rtc": request.rtc} if request.rtc is not None else {}
        result = self.policy.act(
            request.images, request.state, request.instruction, seed=request.seed, **extra
        )
        return result, start - submitted, time.perf_counter() - start


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


async def _read_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise RequestTooLargeError(f"body of {declared} bytes exceeds the limit of {max_bytes}")
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():  # chunked bodies have no Content-Length: count
        received += len(chunk)
        if received > max_bytes:
            raise RequestTooLargeError(f"body exceeds the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    policy: Policy,
    *,
    token: str | None = None,
    max_queue: int = 4,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    warmup: bool = True,
) -> FastAPI:
    """A FastAPI app serving ``policy``; run it with uvicorn (``main`` does)."""
    service = PolicyService(
        policy, max_queue=max_queue, limits=RequestLimits(max_body_bytes=max_body_bytes)
    )

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

    @app.get("/healthz")
    async def healthz(request: Request) -> Response:
        if not _token_ok(request.headers, token):
            return _json_response(401, error_payload("unauthorized", _UNAUTHORIZED))
        return _json_response(200, service.health())

    @app.post("/reset")
    async def reset(request: Request) -> Response:
        if not _token_ok(request.headers, token):
            return _json_response(401, error_payload("unauthorized", _UNAUTHORIZED))
        try:
            await service.reset()
        except ServerBusyError as exc:
            return _json_response(503, error_payload("busy", str(exc)))
        return _json_response(200, {"reset": True})

    @app.post("/act")
    async def act(request: Request) -> Response:
        if not _token_ok(request.headers, token):
            return _json_response(401, error_payload("unauthorized", _UNAUTHORIZED))
        try:
            body = await _read_body(request, max_body_bytes)
        except RequestTooLargeError as exc:
            return _json_response(413, error_payload(exc.code, str(exc)))
        status, payload = await service.handle(body, decode_json)
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
        while True:
            try:
                message = await websocket.receive()
            except WebSocketDisconnect:
                return
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is None:
                status, payload = (
                    400,
                    error_payload(
                        "bad_request", "binary msgpack frames expected, got a text frame"
                    ),
                )
            else:
                status, payload = await service.handle(data, decode_msgpack)
            if status != 200:
                payload = {**payload, "status": status}
            try:
                await websocket.send_bytes(encode_msgpack(payload))
            except (WebSocketDisconnect, RuntimeError):
                return

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

        from molmoact2_policy.model.policy import MolmoAct2Policy
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
        return MolmoAct2Policy.from_checkpoint(
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
    parser.add_argument("--mode", default="flow", choices=("flow", "fast", "think"))
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
    max_body_bytes = int(args.max_body_mb * 2**20)
    policy = _load_policy(args)
    app = create_app(
        policy,
        token=args.token or None,
        max_queue=args.max_queue,
        max_body_bytes=max_body_bytes,
        warmup=not args.no_warmup,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level.lower(),
        ws_max_size=max_body_bytes,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
