"""Test doubles for remote inference: a deterministic fake Policy and a uvicorn server thread.

The fake's chunk is a hash of every input byte (images, state, instruction, seed, num_steps), so
a remote round trip equals a local call only if the server saw bit-identical inputs.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import json_numpy
import numpy as np

from molmoact2_common.embodiments import EmbodimentSpec
from molmoact2_policy.policy_api import ActionChunkResult, validate_observation
from tests.fake_policy import tiny_check_instruction, tiny_control_tokens


def released_payload(**changes: object) -> dict[str, object]:
    """The released client's raw request (``MolmoActHTTP.send_request``, ``jpeg_wire=False``,
    allenai/molmoact2 examples/yam/molmoact_client.py), with ``changes`` applied."""
    rng = np.random.default_rng(0)
    payload: dict[str, object] = {
        key: rng.integers(0, 256, (36, 64, 3), dtype=np.uint8)
        for key in ("left_cam", "top_cam", "right_cam")
    }
    payload.update(
        timestamp=1.7e9,
        instruction="stack the cups",
        state=np.zeros(14, np.float32),
        normalization_tag="yam_dual_molmoact2",
    )
    payload.update(changes)
    return payload


def released_body(**changes: object) -> bytes:
    """``released_payload`` as the released client sends it (json_numpy)."""
    return json_numpy.dumps(released_payload(**changes)).encode()


class FakePolicy:
    """Implements ``Policy``: output depends on every input bit; optional gate to hold calls."""

    def __init__(
        self,
        embodiment: EmbodimentSpec,
        joint_names: Sequence[str] | None = None,
        *,
        gate: threading.Event | None = None,
        fail_with: Exception | None = None,
    ) -> None:
        self.embodiment = embodiment
        self.joint_names = tuple(joint_names or (f"j{i}" for i in range(embodiment.action_dim)))
        self.gate = gate  # when set, act() waits for it: lets tests fill the server's queue
        self.fail_with = fail_with
        self.calls = 0
        self.resets = 0
        self.running = 0  # concurrent act() calls in progress; the server must keep this <= 1
        self.max_running = 0
        self._lock = threading.Lock()

    def act(
        self,
        images: Mapping[str, np.ndarray],
        state: np.ndarray,
        instruction: str,
        *,
        seed: int | None = None,
        num_steps: int | None = None,
    ) -> ActionChunkResult:
        validate_observation(self.embodiment, images, state, instruction)
        with self._lock:
            self.calls += 1
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            if self.gate is not None and not self.gate.wait(timeout=20.0):
                raise TimeoutError("FakePolicy gate never opened")
            if self.fail_with is not None:
                raise self.fail_with
            digest = hashlib.blake2b(digest_size=16)
            for name in self.embodiment.camera_names:
                image = np.ascontiguousarray(images[name])
                digest.update(name.encode() + str(image.shape).encode() + image.tobytes())
            digest.update(np.asarray(state, dtype=np.float64).tobytes())
            digest.update(instruction.encode())
            digest.update(b"steps %d" % (num_steps or 10))  # None is the default of 10 steps
            entropy = [int.from_bytes(digest.digest(), "little")]
            if seed is not None:
                entropy.append(seed)
            else:
                entropy.append(int(np.random.SeedSequence().entropy))
            rng = np.random.default_rng(entropy)
            spec = self.embodiment
            positions = rng.normal(scale=0.1, size=(spec.horizon, spec.action_dim))
            return ActionChunkResult(
                positions=positions,
                step_dt=spec.step_dt,
                joint_names=self.joint_names,
                mode="flow",
                timings={"vlm": 0.001, "expert": 0.002, "total": 0.003},
            )
        finally:
            with self._lock:
                self.running -= 1

    def check_instruction(self, instruction: str) -> None:
        """As the tiny model: refuses the control tokens of the tiny checkpoint's tokenizer."""
        tiny_check_instruction(instruction)

    def control_tokens(self) -> list[str]:
        """As the tiny model: what its check refuses, for the server's ``/healthz``."""
        return tiny_control_tokens()

    def reset(self) -> None:
        self.resets += 1

    def metadata(self) -> dict[str, Any]:
        return {
            "checkpoint": "fake",
            "embodiment": self.embodiment.name,
            "device": "cpu",
            "mode": "flow",
            "flow_steps": 10,
        }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerThread:
    """Serve an ASGI app on 127.0.0.1:``port`` in a background thread, configured as
    ``molmoact2 serve`` configures uvicorn (guarded protocol, ``connection_limits``)."""

    def __init__(
        self,
        app: Any,
        port: int | None = None,
        connection_limits: Any = None,
        **config: Any,
    ) -> None:
        import uvicorn

        from molmoact2_policy.remote.server import uvicorn_config

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config.setdefault("log_level", "warning")
        self._server = uvicorn.Server(
            uvicorn_config(
                app,
                host="127.0.0.1",
                port=self.port,
                connection_limits=connection_limits,
                **config,
            )
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + 20.0
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on port {self.port}")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10.0)
