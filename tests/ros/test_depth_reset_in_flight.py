"""Depth cache resets around Think inferences, in the real policy node.

The result of an inference that began before the reset comes from the cache the reset drops;
it was published on ``~/depth_tokens`` as if it described the scene after the reset. The fake
Think policy (``tests.gated_think_policy``) is held inside ``act`` until the reset has been
answered, so the order is fixed by the test, not by timing.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.gated_think_policy import GATE_ENV, call_of_codes, resets_of_codes
from tests.ros.policy_node_harness import running_robot, yam_params

pytestmark = pytest.mark.ros

DEPTH = "/molmoact2_depth_cache"
DEADLINE_S = 30.0


def _wait_file(path, robot) -> str:
    assert robot.run(DEADLINE_S, until=path.exists), f"{path.name} never appeared"
    return path.read_text()


# The depth cache's own reset, and the policy node's, which drops the same cache.
@pytest.mark.parametrize("service", [f"{DEPTH}/reset", "/molmoact2_policy/reset"])
def test_a_result_started_before_the_reset_is_not_published(tmp_path, service):
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
        seen: dict[str, list[str]] = {
            "depth_results_dropped_after_reset": [],
            "depth_cache_resets": [],
        }

        def on_diagnostics(msg: Any) -> None:
            for status in msg.status:
                for value in status.values:
                    if value.key in seen:
                        seen[value.key].append(value.value)

        robot.node.create_subscription(DepthTokens, f"{DEPTH}/depth_tokens", tokens.append, 100)
        robot.node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
        assert robot.run(DEADLINE_S, until=lambda: len(tokens) >= 2), "no depth tokens"

        (gate / "block").touch()
        held = int(_wait_file(gate / "started", robot))  # that inference is inside act now
        reset = robot.node.create_client(Trigger, service)
        assert reset.wait_for_service(timeout_sec=10.0)
        future = reset.call_async(Trigger.Request())
        assert robot.run(DEADLINE_S, until=future.done)
        assert future.result().success
        (gate / "release").touch()

        def calls() -> list[int]:
            return [call_of_codes(t.codes) for t in tokens]

        assert robot.run(DEADLINE_S, until=lambda: any(c > held for c in calls())), calls()
        assert held not in calls(), "the inference begun before the reset was published"
        after = next(t for t in tokens if call_of_codes(t.codes) > held)
        assert resets_of_codes(after.codes) == 1
        # Either reset goes through the depth cache node (its cubes leave RViz too).
        resets = seen["depth_cache_resets"]
        assert robot.run(DEADLINE_S, until=lambda: "1" in resets), resets[-3:]
        if service.startswith(DEPTH):
            # The policy node's own reset drops the held request earlier, as superseded.
            dropped = seen["depth_results_dropped_after_reset"]
            assert robot.run(DEADLINE_S, until=lambda: "1" in dropped), dropped[-3:]


def _stamp_ns(msg: Any) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def test_a_camera_pause_drops_the_cache_before_the_next_inference_reads_it(tmp_path):
    """The first frame after a pause longer than max_stamp_gap shows a scene the cache may not
    describe (a new episode): the cache is dropped before that frame's inference, not after
    its result, which was published as computed from the scene before the pause."""
    from molmoact2_msgs.msg import DepthTokens

    env = {
        "MOLMOACT2_TEST_POLICY_FACTORY": "tests.gated_think_policy:make_gated_think_policy",
        GATE_ENV: str(tmp_path),  # no ``block`` file: no inference is held
    }
    params = yam_params(instruction="stack the blocks", mode="think")
    with running_robot(params, tmp_path, env=env) as robot:
        tokens: list[Any] = []
        robot.node.create_subscription(DepthTokens, f"{DEPTH}/depth_tokens", tokens.append, 100)
        assert robot.run(DEADLINE_S, until=lambda: len(tokens) >= 2), "no depth tokens"
        assert all(resets_of_codes(t.codes) == 0 for t in tokens)

        # The pause: no frames for longer than max_stamp_gap (1 s in config/yam.yaml) plus
        # the fake model's pace (microseconds). Longer under load is still a pause.
        import rclpy

        paused_ns = robot.now_ns()
        while robot.now_ns() - paused_ns < 2_000_000_000:
            rclpy.spin_once(robot.node, timeout_sec=0.05)
        resumed_ns = robot.now_ns()
        robot._next_publish = 0.0  # publish again at once

        def after_pause() -> list[Any]:
            return [t for t in tokens if _stamp_ns(t) >= resumed_ns]

        assert robot.run(DEADLINE_S, until=lambda: len(after_pause()) >= 1), "no tokens after"
        first = after_pause()[0]
        assert resets_of_codes(first.codes) >= 1, (
            "the first inference after the pause read the cache from before it"
        )
