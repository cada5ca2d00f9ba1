"""A policy whose whole cost is issuing small ops, as a GPU model's is (bench/policy_node.py).

On a GPU the tiny model is launch-bound: its time goes to the Python and dispatcher work of
issuing some thousands of small kernels. torch releases the GIL around every op it dispatches
and takes it back after, so each op is a point where another thread of the process that wants
the GIL (the node's executor, its timers, a decode worker) can take it, and the inference
thread then waits until that thread lets go. A CPU model spends most of its time inside a few
large kernels and hides this; this policy has nothing else, so ``--policy launch-bound`` shows
on a machine without a GPU what the node's other threads cost a GPU model's inference thread.

Run inside the policy node through its test hook::

    MOLMOACT2_TEST_POLICY_FACTORY=bench.launch_bound_policy:make_launch_bound_policy

with ``MOLMOACT2_BENCH_LAUNCHES`` ops per ``act`` (both sides of the bench read the same
value).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from molmoact2_common.embodiments import get_embodiment
from molmoact2_policy.policy_api import ActionChunkResult

LAUNCHES_ENV = "MOLMOACT2_BENCH_LAUNCHES"
DEFAULT_LAUNCHES = 12000
OPS_PER_STEP = 3  # mul, add, tanh


class LaunchBoundPolicy:
    """Implements the Policy contract; ``act`` dispatches ``launches`` tiny torch ops."""

    def __init__(self, embodiment: str, joint_names: tuple[str, ...], launches: int) -> None:
        if launches < OPS_PER_STEP:
            raise ValueError(f"launches must be at least {OPS_PER_STEP}, got {launches}")
        self.embodiment = get_embodiment(embodiment)
        self.joint_names = tuple(joint_names)
        self.steps = launches // OPS_PER_STEP
        generator = torch.Generator().manual_seed(0)
        # About 64 floats: each op's arithmetic is negligible next to dispatching it.
        self._width = max(64, self.embodiment.action_dim)
        self._scale = torch.rand(self._width, generator=generator) * 0.5
        self._shift = torch.rand(self._width, generator=generator) * 0.1

    def act(
        self,
        images: Mapping[str, np.ndarray],
        state: np.ndarray,
        instruction: str,
        *,
        seed: int | None = None,
    ) -> ActionChunkResult:
        spec = self.embodiment
        value = torch.full((self._width,), float(np.mean(state)), dtype=torch.float32)
        for _ in range(self.steps):
            value = torch.tanh(value * self._scale + self._shift)
        # tanh keeps every value in (-1, 1); scaled to 0.1 +- 0.01 rad, inside any joint's
        # limits (config/yam.yaml), so the chunk is one a driver would take.
        offsets = 0.01 * value[: spec.action_dim].numpy().astype(np.float64)
        positions = np.tile(0.1 + offsets, (spec.horizon, 1))
        return ActionChunkResult(
            positions=positions,
            step_dt=spec.step_dt,
            joint_names=self.joint_names,
            mode="flow",
            timings={"total": 0.0},
        )

    def check_instruction(self, instruction: str) -> None:
        pass  # a real model's instruction check belongs to its own time, not the node's

    def reset(self) -> None:
        pass  # no state between calls

    def metadata(self) -> dict[str, Any]:
        return {"checkpoint": "launch-bound", "embodiment": self.embodiment.name, "mode": "flow"}


def launches_from_env() -> int:
    return int(os.environ.get(LAUNCHES_ENV, str(DEFAULT_LAUNCHES)))


def make_launch_bound_policy(params: Any) -> LaunchBoundPolicy:
    """Factory for the node's ``MOLMOACT2_TEST_POLICY_FACTORY`` hook (takes PolicyNodeParams)."""
    return LaunchBoundPolicy(params.embodiment, tuple(params.joint_names), launches_from_env())
