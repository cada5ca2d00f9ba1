"""A fake Think policy whose inference a test can hold, across processes, through files.

``MOLMOACT2_TEST_THINK_GATE`` names a directory. When the file ``block`` is in it, the next
``act`` removes it, writes its call number to ``started`` and waits until ``release``
exists. Every result carries depth codes that spell its call number (``call_of_codes``), so a
test can tell which inference a ``DepthTokens`` message came from, and how many cache resets the
policy had seen when that inference began (``resets_of_codes``).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from molmoact2_policy.policy_api import ActionChunkResult
from tests.fake_policy import FakePolicy

GATE_ENV = "MOLMOACT2_TEST_THINK_GATE"
CELLS = 100
NUM_CODES = 128
RELEASE_TIMEOUT_S = 120.0


def codes_of_call(call: int) -> np.ndarray:
    """The call number in base 128 over the first three cells (all codes < 128)."""
    codes = np.zeros(CELLS, dtype=np.int64)
    for index in range(3):
        codes[index] = (call // NUM_CODES**index) % NUM_CODES
    return codes


def call_of_codes(codes: Any) -> int:
    return sum(int(codes[index]) * NUM_CODES**index for index in range(3))


def resets_of_codes(codes: Any) -> int:
    """Resets before the inference began (saturating at NUM_CODES - 1)."""
    return int(codes[3])


class GatedThinkPolicy(FakePolicy):
    def __init__(self, embodiment: str, joint_names: tuple[str, ...], gate: Path) -> None:
        super().__init__(embodiment, joint_names, mode="think")
        self.gate = gate
        self._count = 0
        self._count_lock = threading.Lock()

    def act(self, images, state, instruction, *, seed=None) -> ActionChunkResult:
        with self._count_lock:
            call = self._count
            self._count += 1
            resets = min(self.resets, NUM_CODES - 1)
        block = self.gate / "block"
        if block.exists():
            block.unlink()
            partial = self.gate / "started.partial"
            partial.write_text(str(call))
            partial.replace(self.gate / "started")  # atomic: a reader sees all of it or nothing
            deadline = time.monotonic() + RELEASE_TIMEOUT_S
            while not (self.gate / "release").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
        result = super().act(images, state, instruction, seed=seed)
        codes = codes_of_call(call)
        codes[3] = resets
        return dataclasses.replace(
            result,
            depth_codes=codes,
            depth_changed=np.ones(CELLS, dtype=bool),
        )


def make_gated_think_policy(params: Any) -> GatedThinkPolicy:
    """Factory for ``MOLMOACT2_TEST_POLICY_FACTORY`` (see policy_factory.TEST_POLICY_ENV)."""
    gate = Path(os.environ[GATE_ENV])
    return GatedThinkPolicy(params.embodiment, tuple(params.joint_names), gate)
