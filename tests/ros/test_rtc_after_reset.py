"""RTC after a new instruction or ``~/reset``: the first chunk is sampled free.

A new instruction and ``~/reset`` bump the policy node's epoch and clear the RTC feed. The
worker checked the epoch before it built and published its chunk: a chunk of the old
instruction whose check passed just before the change went out after the change was accepted,
and was recorded in the cleared feed, so the new instruction's first chunk continued the old
instruction's plan. The RTC echo policy holds one result between ``act`` and the publish
(``MOLMOACT2_TEST_RTC_GATE``) while the test changes the instruction, so the order is fixed by
the test, not by timing.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.ros.policy_node_harness import NODE, chunk_stamp_ns, running_robot, yam_params
from tests.rostest_util import call_service
from tests.rtc_echo_policy import GATE_ENV

pytestmark = pytest.mark.ros

DEADLINE_S = 30.0


def test_the_first_chunk_of_a_new_instruction_does_not_continue_the_old_one(tmp_path):
    from molmoact2_msgs.srv import SetInstruction

    gate = tmp_path / "gate"
    gate.mkdir()
    env = {
        "MOLMOACT2_TEST_POLICY_FACTORY": "tests.rtc_echo_policy:make_rtc_echo_policy",
        GATE_ENV: str(gate),
    }
    params = yam_params(rtc=True, rtc_execution_topic="", rtc_commanded_topic="", instruction="old")
    with running_robot(params, tmp_path, env=env) as robot:
        (gate / "block").touch()
        # The worker is now between act() and the publish of an "old" chunk.
        assert robot.run(DEADLINE_S, until=(gate / "started").exists)
        request = SetInstruction.Request(instruction="new")
        response = call_service(
            robot.node, None, SetInstruction, f"{NODE}/set_instruction", request
        )
        assert response.accepted
        (gate / "release").touch()

        def first_new():
            return next((c for c in robot.chunks if c.instruction == "new"), None)

        assert robot.run(DEADLINE_S, until=lambda: first_new() is not None)
        chunk = first_new()
        row0 = np.asarray(chunk.positions).reshape(chunk.horizon, -1)[0]
        # Sampled free, the echo policy's chunk starts at the state it observed.
        state = robot.frames[chunk_stamp_ns(chunk)].state
        np.testing.assert_allclose(row0, state, rtol=0, atol=1e-9)
