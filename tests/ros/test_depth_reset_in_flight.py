"""``molmoact2_depth_cache/reset`` while a Think inference runs, in the real policy node.

The result of an inference that began before the reset comes from the cache the reset drops;
it was published on ``~/depth_tokens`` as if it described the scene after the reset. The fake
Think policy (``tests.gated_think_policy``) is held inside ``act`` until the reset has been
answered, so the order is fixed by the test, not by timing.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.gated_think_policy import GATE_ENV, call_of_codes
from tests.ros.policy_node_harness import running_robot, yam_params

pytestmark = pytest.mark.ros

DEPTH = "/molmoact2_depth_cache"
DEADLINE_S = 30.0


def _wait_file(path, robot) -> str:
    assert robot.run(DEADLINE_S, until=path.exists), f"{path.name} never appeared"
    return path.read_text()


def test_a_result_started_before_the_reset_is_not_published(tmp_path):
    from diagnostic_msgs.msg import DiagnosticArray
    from std_srvs.srv import Trigger

    from molmoact2_msgs.msg import DepthTokens

    gate = tmp_path / "gate"
    gate.mkdir()
    env = {
        "MOLMOACT2_TEST_POLICY_FACTORY": "tests.gated_think_policy:make_gated_think_policy",
        GATE_ENV: str(gate),
    }
    params = yam_params(instruction="stack the blocks", mode="think")
    with running_robot(params, tmp_path, env=env) as robot:
        tokens: list[Any] = []
        dropped: list[str] = []

        def on_diagnostics(msg: Any) -> None:
            for status in msg.status:
                for value in status.values:
                    if value.key == "depth_results_dropped_after_reset":
                        dropped.append(value.value)

        robot.node.create_subscription(DepthTokens, f"{DEPTH}/depth_tokens", tokens.append, 100)
        robot.node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
        assert robot.run(DEADLINE_S, until=lambda: len(tokens) >= 2), "no depth tokens"

        (gate / "block").touch()
        held = int(_wait_file(gate / "started", robot))  # that inference is inside act now
        reset = robot.node.create_client(Trigger, f"{DEPTH}/reset")
        assert reset.wait_for_service(timeout_sec=10.0)
        future = reset.call_async(Trigger.Request())
        assert robot.run(DEADLINE_S, until=future.done)
        assert future.result().success
        (gate / "release").touch()

        def calls() -> list[int]:
            return [call_of_codes(t.codes) for t in tokens]

        assert robot.run(DEADLINE_S, until=lambda: any(c > held for c in calls())), calls()
        assert held not in calls(), "the inference begun before the reset was published"
        assert robot.run(DEADLINE_S, until=lambda: "1" in dropped), dropped[-3:]
