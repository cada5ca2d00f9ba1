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

import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit, urlunsplit

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
    MAX_NUM_STEPS,
    ProtocolError,
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
                raw = self._post_http(body)
                received = time.perf_counter()
                payload = self._decode(decode_json, raw)
            else:
                body = encode_msgpack(request)
                encoded = time.perf_counter()
                raw = self._exchange_ws(body)
                received = time.perf_counter()
                payload = self._decode(decode_msgpack, raw)
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
            response = httpx.get(
                f"{self.server_url}/healthz", headers=self._headers, timeout=self.timeout
            )
            if response.status_code == 200:
                payload = self._decode(decode_json, response.content)
                if isinstance(payload, dict) and "model" in payload:
                    self._server_info = payload
                    return payload
            # Our server without the right token (liveness only), or a released server (no or
            # a bare /healthz): the released health call answers, or says 401.
            response = httpx.get(
                f"{self.server_url}/act", headers=self._headers, timeout=self.timeout
            )
        except httpx.HTTPError as exc:
            raise PolicyUnavailableError(f"{self._where()}: health check failed: {exc!r}") from exc
        if response.status_code != 200:
            try:
                message = _error_message(decode_json(response.content))
            except ProtocolError:
                message = response.content[:200].decode("utf-8", "replace")
            hint = " (check the token)" if response.status_code == 401 else ""
            raise PolicyUnavailableError(
                f"{self._where()}: health check HTTP {response.status_code}: {message}{hint}"
            )
        payload = self._decode(decode_json, response.content)
        self._server_info = payload
        return payload

    def close(self) -> None:
        with self._lock:
            self._drop_connections()
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

    def _drop_connections(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        if self._ws is not None:
            try:
                self._ws.close()
            except Exception:  # already broken; we only want it gone
                pass
            self._ws = None

    def _post_http(self, body: bytes) -> bytes:
        if self._http is None:
            # One persistent client: keep-alive saves a TCP handshake per chunk; httpx opens a
            # fresh connection by itself when the server restarted.
            self._http = httpx.Client(timeout=self.timeout, headers=self._headers)
        try:
            response = self._http.post(
                f"{self.server_url}/act",
                content=body,
                headers={"Content-Type": "application/json"},
            )
        except httpx.TimeoutException as exc:
            self._drop_connections()
            raise PolicyUnavailableError(
                f"{self._where()}: no answer within {self.timeout:.3f} s ({type(exc).__name__})"
            ) from exc
        except httpx.HTTPError as exc:
            self._drop_connections()
            raise PolicyUnavailableError(f"{self._where()}: {exc!r}") from exc
        if response.status_code == 200:
            return response.content
        self._raise_for_status(response.status_code, response.content)
        raise AssertionError("unreachable")

    def _exchange_ws(self, body: bytes) -> bytes:
        from websockets.exceptions import WebSocketException
        from websockets.sync.client import connect

        try:
            if self._ws is None:
                self._ws = connect(
                    self.ws_url,
                    additional_headers=self._headers,
                    open_timeout=self.timeout,
                    max_size=_MAX_RESPONSE_BYTES,
                    # Images are JPEG or raw sensor pixels: deflate would cost CPU, save little.
                    compression=None,
                    legacy=True,  # we hold the connection across calls, not in a with-block
                )
                hello = self._decode(decode_msgpack, self._ws.recv(timeout=self.timeout))
                self._raise_for_ws_error(hello)
                self._server_info = hello.get("metadata") if isinstance(hello, dict) else None
            self._ws.send(body)
            return self._ws.recv(timeout=self.timeout)
        except TimeoutError as exc:
            # A late answer would arrive as the reply to the next request: start over.
            self._drop_connections()
            raise PolicyUnavailableError(
                f"{self._where()}: no answer within {self.timeout:.3f} s"
            ) from exc
        except (OSError, WebSocketException) as exc:
            self._drop_connections()
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
            status = int(payload.get("status", 500))
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
                message = content[:200].decode("utf-8", "replace")
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


def _error_message(payload: Any) -> str:
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        if "detail" in payload:
            return str(payload["detail"])
    return str(payload)[:200]
