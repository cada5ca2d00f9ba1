"""The one policy contract every backend implements (local model, remote client, fakes).

Nodes import only this module (never torch): ``act(images, state, instruction)`` returns an
``ActionChunkResult``; ``check_instruction(instruction)`` refuses an instruction before it is
used; ``reset()`` clears per-episode state (Think-mode depth cache).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from molmoact2_common.embodiments import EmbodimentSpec

#: How a policy computes its chunk: the flow-matching expert, discrete FAST tokens, or depth
#: tokens first and then the flow expert (Think).
MODES = ("flow", "fast", "think")


def instruction_characters_problem(instruction: str) -> str:
    """Why the characters of ``instruction`` are not words an operator typed ('' when they
    are), wherever it enters (topic, service, parameter, task goal, the remote ``/act``).
    ROS strings arrive decoded with U+FFFD in place of bytes that were not UTF-8 (a Latin-1
    "caf\\xe9" came in as "caf\\ufffd" and ran), and control characters other than whitespace
    (NUL cuts the string in the middleware; ESC, BEL, ...) reach the model as tokens of their
    own. Only the policy can judge the words themselves (``Policy.check_instruction``).
    """
    for index, char in enumerate(instruction):
        if char == "\ufffd":
            return (
                f"instruction has U+FFFD (a byte that was not UTF-8) at character {index}; "
                "send the instruction as UTF-8"
            )
        if unicodedata.category(char) == "Cc" and not char.isspace():
            return f"instruction has control character U+{ord(char):04X} at character {index}"
    return ""


class PolicyInputError(ValueError):
    """An observation the policy refuses (wrong shape, dtype, NaN, missing camera)."""


class PolicyUnavailableError(RuntimeError):
    """The policy cannot answer now (remote server down or busy, model not loaded)."""


@dataclass(frozen=True)
class ActionChunkResult:
    """One predicted chunk in robot units, plus what it took to compute it."""

    positions: np.ndarray  # (horizon, action_dim) float64; radians / metres / gripper units
    step_dt: float  # seconds between rows
    joint_names: tuple[str, ...]  # one per column
    mode: str  # one of MODES
    timings: Mapping[str, float] = field(default_factory=dict)  # seconds per stage + "total"
    depth_codes: np.ndarray | None = None  # (rows*cols,) int64, think mode only
    depth_changed: np.ndarray | None = None  # (rows*cols,) bool, think mode only

    @property
    def horizon(self) -> int:
        return int(self.positions.shape[0])


@dataclass(frozen=True)
class RtcRequest:
    """Real-time chunking: sample the next chunk consistent with the chunk being executed.

    ``previous`` is that chunk from the step the new chunk starts at: row ``i`` applies when the
    new chunk's row ``i`` does (so it has at most ``horizon`` rows). Its first ``delay_steps``
    rows run while the new chunk is computed; they come back unchanged. Guidance towards
    ``previous`` fades out by row ``execution_horizon`` (None: over all of ``previous``).
    Policies without a flow expert refuse it with ``PolicyInputError``.
    """

    previous: np.ndarray  # (rows, action_dim) float64, robot units like ActionChunkResult
    delay_steps: int
    execution_horizon: int | None = None


def validate_rtc(spec: EmbodimentSpec, rtc: RtcRequest) -> None:
    """Raise ``PolicyInputError`` naming the first problem with an RTC request."""
    previous = np.asarray(rtc.previous)
    if previous.ndim != 2 or previous.shape[1] != spec.action_dim:
        raise PolicyInputError(
            f"rtc previous chunk: expected shape (rows, {spec.action_dim}), got {previous.shape}"
        )
    if not 1 <= previous.shape[0] <= spec.horizon:
        raise PolicyInputError(
            f"rtc previous chunk has {previous.shape[0]} rows; expected 1..{spec.horizon}"
        )
    if previous.dtype.kind not in "iuf" or not np.all(np.isfinite(previous)):
        raise PolicyInputError("rtc previous chunk must be finite numbers")
    for name in ("delay_steps", "execution_horizon"):
        value = getattr(rtc, name)
        if value is None and name == "execution_horizon":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise PolicyInputError(f"rtc {name} must be an integer >= 0, got {value!r}")


@runtime_checkable
class Policy(Protocol):
    """What the policy node, the server and the benchmarks call."""

    embodiment: EmbodimentSpec

    def act(
        self,
        images: Mapping[str, np.ndarray],
        state: np.ndarray,
        instruction: str,
        *,
        seed: int | None = None,
        rtc: RtcRequest | None = None,
    ) -> ActionChunkResult:
        """Predict a chunk. ``images``: camera name -> HxWx3 uint8 RGB; ``state``: model order.

        ``rtc`` (optional; callers pass it only when set, so policies that never take it need
        not declare it) asks for a chunk consistent with the one being executed.
        """
        ...

    def check_instruction(self, instruction: str) -> None:
        """Raise ``PolicyInputError`` if ``act`` would refuse ``instruction`` for its words
        (it spells one of the model's control tokens, e.g. ``<im_patch>``, ``<|im_end|>``).

        Called where an instruction enters (the node's topic, service, parameter and task
        goal), so a bad one is refused once with the reason instead of failing every
        inference after it was accepted. The remote client checks against the tokens our
        server states in ``/healthz``; where it cannot know (a released server, one it cannot
        reach) it accepts, and its ``act`` reports the server's refusal.
        """
        ...

    def reset(self) -> None:
        """Forget per-episode state."""
        ...

    def metadata(self) -> dict[str, Any]:
        """Checkpoint, embodiment, device and mode, for status and health endpoints."""
        ...


def validate_observation(
    spec: EmbodimentSpec, images: Mapping[str, np.ndarray], state: np.ndarray, instruction: str
) -> None:
    """Raise ``PolicyInputError`` naming the first problem with an observation."""
    missing = [name for name in spec.camera_names if name not in images]
    if missing:
        raise PolicyInputError(f"missing camera image(s): {', '.join(missing)}")
    for name in spec.camera_names:
        image = images[name]
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            raise PolicyInputError(f"camera {name!r}: expected a uint8 array")
        if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 8 or image.shape[1] < 8:
            raise PolicyInputError(
                f"camera {name!r}: expected an HxWx3 RGB image, got shape {image.shape}"
            )
    state = np.asarray(state)
    if state.shape != (spec.state_dim,):
        raise PolicyInputError(
            f"state: expected shape ({spec.state_dim},) for {spec.name}, got {state.shape}"
        )
    if not np.all(np.isfinite(state)):
        bad = np.flatnonzero(~np.isfinite(state)).tolist()
        raise PolicyInputError(f"state: non-finite values at indices {bad}")
    if not instruction or not instruction.strip():
        raise PolicyInputError("empty instruction")
