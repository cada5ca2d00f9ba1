"""A test ``Policy`` that shows which chunk real-time chunking conditioned it on.

Without RTC its chunk starts at the observed state and moves slowly (``SLOPE``); with an
``RtcRequest`` the chunk *is* the request's ``previous`` rows (what the real sampler returns
for its frozen prefix, here for every row), continued at the same slope. So a published chunk
says, to float rounding, which earlier chunk the node fed it. Calls listed in the
``MOLMOACT2_TEST_RTC_POISON`` environment variable (comma-separated, 0-based) are moved far
off the arm, for the driver to reject.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from molmoact2_common.embodiments import get_embodiment
from molmoact2_policy.policy_api import ActionChunkResult, RtcRequest

POISON_ENV = "MOLMOACT2_TEST_RTC_POISON"
SLOPE = 0.05  # [rad/s, gripper units/s] every joint
POISON_OFFSET = 0.8  # [rad] on every joint but the last (the gripper): past any start check


class RtcEchoPolicy:
    def __init__(self, embodiment: str, joint_names: tuple[str, ...], poison: set[int]) -> None:
        self.embodiment = get_embodiment(embodiment)
        self.joint_names = tuple(joint_names)
        self.poison = set(poison)
        self.calls = 0
        self._lock = threading.Lock()

    def act(
        self,
        images: Mapping[str, np.ndarray],
        state: np.ndarray,
        instruction: str,
        *,
        seed: int | None = None,
        rtc: RtcRequest | None = None,
    ) -> ActionChunkResult:
        with self._lock:
            call = self.calls
            self.calls += 1
        spec = self.embodiment
        steps = np.arange(spec.horizon, dtype=np.float64)[:, None]
        rows = np.asarray(state, np.float64)[None, :] + SLOPE * spec.step_dt * steps
        if rtc is not None and len(rtc.previous):
            n = min(len(rtc.previous), spec.horizon)
            rows[:n] = rtc.previous[:n]
            rows[n:] = rtc.previous[n - 1] + SLOPE * spec.step_dt * (steps[n:] - (n - 1))
        if call in self.poison:
            rows[:, :-1] += POISON_OFFSET
        return ActionChunkResult(
            positions=rows,
            step_dt=spec.step_dt,
            joint_names=self.joint_names,
            mode="flow",
            timings={"total": 0.0},
        )

    def check_instruction(self, instruction: str) -> None:
        pass  # any words: its chunk never depends on them

    def reset(self) -> None:
        pass

    def metadata(self) -> dict[str, Any]:
        return {"checkpoint": "rtc-echo", "embodiment": self.embodiment.name, "device": "cpu"}


def make_rtc_echo_policy(params: Any) -> RtcEchoPolicy:
    """Factory for ``MOLMOACT2_TEST_POLICY_FACTORY=tests.rtc_echo_policy:make_rtc_echo_policy``."""
    poison = {int(x) for x in os.environ.get(POISON_ENV, "").split(",") if x.strip()}
    return RtcEchoPolicy(params.embodiment, tuple(params.joint_names), poison)
