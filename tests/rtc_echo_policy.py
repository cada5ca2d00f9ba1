"""A test ``Policy`` that shows which chunk real-time chunking conditioned it on.

Without RTC its chunk starts at the observed state and moves slowly (``SLOPE``); with an
``RtcRequest`` the chunk *is* the request's ``previous`` rows (what the real sampler returns
for its frozen prefix, here for every row), continued at the same slope. So a published chunk
says, to float rounding, which earlier chunk the node fed it. Calls listed in the
``MOLMOACT2_TEST_RTC_POISON`` environment variable (comma-separated, 0-based) are moved far
off the arm, for the driver to reject.

``MOLMOACT2_TEST_RTC_GATE`` names a directory: when the file ``block`` is in it, the next
result's positions hold whoever first reads them (the policy node, right after ``act``, before
it publishes) until ``release`` exists; ``started`` says they are held.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from molmoact2_common.embodiments import get_embodiment
from molmoact2_policy.policy_api import ActionChunkResult, RtcRequest

POISON_ENV = "MOLMOACT2_TEST_RTC_POISON"
GATE_ENV = "MOLMOACT2_TEST_RTC_GATE"
RELEASE_TIMEOUT_S = 120.0


class HeldRows:
    """Positions that, read the first time, wait for the gate's ``release`` file."""

    def __init__(self, rows: np.ndarray, gate: Path) -> None:
        self.rows = rows
        self.gate = gate
        self.held = False

    def __array__(self, dtype=None, copy=None):
        if not self.held:
            self.held = True
            (self.gate / "started").touch()
            deadline = time.monotonic() + RELEASE_TIMEOUT_S
            while not (self.gate / "release").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        return self.rows if dtype is None else self.rows.astype(dtype)

    # The rest of the node's uses (visualisation) read it as the array it stands for.
    @property
    def shape(self) -> tuple[int, ...]:
        return self.rows.shape

    def __getitem__(self, index: Any) -> Any:
        return self.rows[index]
SLOPE = 0.05  # [rad/s, gripper units/s] every joint
POISON_OFFSET = 0.8  # [rad] on every joint but the last (the gripper): past any start check


class RtcEchoPolicy:
    def __init__(
        self,
        embodiment: str,
        joint_names: tuple[str, ...],
        poison: set[int],
        gate: Path | None = None,
    ) -> None:
        self.embodiment = get_embodiment(embodiment)
        self.gate = gate
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
        positions: Any = rows
        if self.gate is not None and (self.gate / "block").exists():
            (self.gate / "block").unlink()
            positions = HeldRows(rows, self.gate)
        return ActionChunkResult(
            positions=positions,
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
    gate = os.environ.get(GATE_ENV)
    return RtcEchoPolicy(
        params.embodiment, tuple(params.joint_names), poison, Path(gate) if gate else None
    )
