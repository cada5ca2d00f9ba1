"""A deterministic fake ``Policy`` for tests of the policy node, worker and benchmarks.

Its chunk is a pure function of (images, state, instruction, seed), so a test can recompute the
expected chunk for an observation it published. Test hooks: ``delay`` (seconds per act), and
instructions that trigger failures: "raise input error", "raise unavailable", "raise crash".
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from functools import cache
from typing import Any

import numpy as np

from molmoact2_common.embodiments import EmbodimentSpec, get_embodiment
from molmoact2_policy.model.preprocess import check_instruction, refused_instruction_tokens
from molmoact2_policy.policy_api import (
    ActionChunkResult,
    PolicyInputError,
    PolicyUnavailableError,
    validate_observation,
)

FAIL_INPUT = "raise input error"
FAIL_UNAVAILABLE = "raise unavailable"
FAIL_CRASH = "raise crash"


class FakePolicy:
    """Implements the Policy contract with a cheap, exactly reproducible formula."""

    def __init__(
        self,
        embodiment: EmbodimentSpec | str,
        joint_names: tuple[str, ...] | None = None,
        *,
        delay: float = 0.0,
        mode: str = "flow",
    ) -> None:
        self.embodiment = get_embodiment(embodiment) if isinstance(embodiment, str) else embodiment
        self.joint_names = tuple(
            joint_names or (f"joint{i}" for i in range(self.embodiment.action_dim))
        )
        self.delay = delay
        self.mode = mode
        self.calls: list[dict[str, Any]] = []
        self.resets = 0
        self.started = threading.Event()  # set when act() begins (for worker tests)
        self.release = threading.Event()  # when cleared by a test, act() blocks until set
        self.release.set()

    def act(
        self,
        images: Mapping[str, np.ndarray],
        state: np.ndarray,
        instruction: str,
        *,
        seed: int | None = None,
    ) -> ActionChunkResult:
        self.calls.append({"state": np.array(state), "instruction": instruction, "seed": seed})
        self.started.set()
        self.release.wait()
        if instruction == FAIL_INPUT:
            raise PolicyInputError("fake refuses this observation")
        if instruction == FAIL_UNAVAILABLE:
            raise PolicyUnavailableError("fake server is down")
        if instruction == FAIL_CRASH:
            raise ZeroDivisionError("fake model crashed")
        validate_observation(self.embodiment, images, state, instruction)
        if self.delay:
            time.sleep(self.delay)
        return ActionChunkResult(
            positions=expected_positions(self.embodiment, images, state, instruction, seed),
            step_dt=self.embodiment.step_dt,
            joint_names=self.joint_names,
            mode=self.mode,
            timings={"total": self.delay},
        )

    def check_instruction(self, instruction: str) -> None:
        """As the tiny model: refuses the control tokens of the tiny checkpoint's tokenizer."""
        tiny_check_instruction(instruction)

    def reset(self) -> None:
        self.resets += 1

    def metadata(self) -> dict[str, Any]:
        return {"checkpoint": "fake", "embodiment": self.embodiment.name, "device": "cpu"}


@cache
def _tiny_tokenizer() -> Any:
    from molmoact2_policy.model.tokenizer import MolmoAct2Tokenizer

    return MolmoAct2Tokenizer.tiny()


def tiny_control_tokens() -> list[str]:
    """What the tiny model's ``control_tokens`` states (and its check refuses)."""
    return refused_instruction_tokens(_tiny_tokenizer())


def tiny_check_instruction(instruction: str) -> None:
    """``PolicyInputError`` as the tiny model's ``check_instruction`` raises it (the tiny
    tokenizer's added tokens are the released families): what the fakes refuse."""
    check_instruction(instruction, _tiny_tokenizer())


def expected_positions(
    spec: EmbodimentSpec,
    images: Mapping[str, np.ndarray],
    state: np.ndarray,
    instruction: str,
    seed: int | None,
) -> np.ndarray:
    """The fake's chunk: state + per-camera mean brightness ramp + instruction/seed offset."""
    brightness = sum(float(images[c].mean()) for c in spec.camera_names) / 255.0
    offset = (len(instruction) + (seed or 0)) * 1e-3
    steps = np.arange(spec.horizon, dtype=np.float64)[:, None]
    return np.asarray(state, np.float64)[None, :] + (steps + 1) * 0.01 * brightness + offset


def make_fake_policy(params: Any) -> FakePolicy:
    """Factory for ``MOLMOACT2_TEST_POLICY_FACTORY=tests.fake_policy:make_fake_policy``."""
    return FakePolicy(params.embodiment, tuple(params.joint_names), mode=params.mode)


class FaultInjectingPolicy:
    """Wraps a policy and raises the FAIL_* errors for those instructions (ROS fault tests)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.embodiment = inner.embodiment

    def act(self, images, state, instruction, *, seed=None) -> ActionChunkResult:
        if instruction == FAIL_INPUT:
            raise PolicyInputError("fake refuses this observation")
        if instruction == FAIL_UNAVAILABLE:
            raise PolicyUnavailableError("fake server is down")
        if instruction == FAIL_CRASH:
            raise ZeroDivisionError("fake model crashed")
        return self.inner.act(images, state, instruction, seed=seed)

    def check_instruction(self, instruction: str) -> None:
        self.inner.check_instruction(instruction)

    def reset(self) -> None:
        self.inner.reset()

    def metadata(self) -> dict[str, Any]:
        return self.inner.metadata()


def make_faulty_policy(params: Any) -> FaultInjectingPolicy:
    """The configured policy (the real model), wrapped to inject failures."""
    from molmoact2_policy.policy_factory import make_policy

    return FaultInjectingPolicy(make_policy(params, allow_test_override=False))
