"""A policy that costs nothing: one fixed chunk, returned at once (bench/policy_node.py).

Run inside the policy node through its test hook::

    MOLMOACT2_TEST_POLICY_FACTORY=bench.zero_cost_policy:make_zero_cost_policy

so the node's own latency (transport, image conversion, assembly, hand-over to the inference
thread, chunk messages) is measured without a model. Nothing is checked or computed per call:
a real model's input validation belongs to its model time, not to the node.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from molmoact2_common.embodiments import get_embodiment
from molmoact2_policy.policy_api import ActionChunkResult


class ZeroCostPolicy:
    """Implements the Policy contract; ``act`` returns the same chunk every time."""

    def __init__(self, embodiment: str, joint_names: tuple[str, ...]) -> None:
        self.embodiment = get_embodiment(embodiment)
        spec = self.embodiment
        # Inside any joint's limits (config/yam.yaml): a constant, finite, plausible pose.
        positions = np.full((spec.horizon, spec.action_dim), 0.1)
        self._chunk = ActionChunkResult(
            positions=positions,
            step_dt=spec.step_dt,
            joint_names=tuple(joint_names),
            mode="flow",
            timings={"total": 0.0},
        )

    def act(
        self,
        images: Mapping[str, np.ndarray],
        state: np.ndarray,
        instruction: str,
        *,
        seed: int | None = None,
    ) -> ActionChunkResult:
        return self._chunk

    def check_instruction(self, instruction: str) -> None:
        pass  # nothing is checked per call (module docstring)

    def reset(self) -> None:
        pass

    def metadata(self) -> dict[str, Any]:
        return {"checkpoint": "zero-cost", "embodiment": self.embodiment.name, "mode": "flow"}


def make_zero_cost_policy(params: Any) -> ZeroCostPolicy:
    """Factory for the node's ``MOLMOACT2_TEST_POLICY_FACTORY`` hook (takes PolicyNodeParams)."""
    return ZeroCostPolicy(params.embodiment, tuple(params.joint_names))
