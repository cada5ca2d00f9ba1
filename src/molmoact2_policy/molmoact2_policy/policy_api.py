"""The one policy contract every backend implements (local model, remote client, fakes).

Nodes import only this module (never torch): ``act(images, state, instruction)`` returns an
``ActionChunkResult``; ``reset()`` clears per-episode state (Think-mode depth cache).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from molmoact2_policy.embodiments import EmbodimentSpec


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
    mode: str  # "flow" | "fast" | "think"
    timings: Mapping[str, float] = field(default_factory=dict)  # seconds per stage + "total"
    depth_codes: np.ndarray | None = None  # (rows*cols,) int64, think mode only
    depth_changed: np.ndarray | None = None  # (rows*cols,) bool, think mode only

    @property
    def horizon(self) -> int:
        return int(self.positions.shape[0])


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
    ) -> ActionChunkResult:
        """Predict a chunk. ``images``: camera name -> HxWx3 uint8 RGB; ``state``: model order."""
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
