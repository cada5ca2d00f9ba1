"""The demo checkpoint never stalls the demo: from any pose the arm is pushed to (each joint up
to 0.4 rad off), its chunks pass the driver's own safety checks and bring the arm back.

The cached demo checkpoint (the one ``molmoact2 launch`` makes, kept per test session through
``XDG_CACHE_HOME``) drives the real ``ChunkExecutor`` and sim arm in simulated time
(``demo_closed_loop``). Recipe 5's chunks were refused here for ``start_deviation`` forever.
"""

from __future__ import annotations

import numpy as np
import pytest

from molmoact2 import graph
from molmoact2.demo_checkpoint import (
    DEMO_ACTION_SPREAD,
    RECOVERY_REACH,
    ensure_demo_checkpoint,
)
from tests.system.demo_closed_loop import driver_params, run_closed_loop

ROBOT = "yam"


@pytest.fixture(scope="module")
def demo_policy():
    from molmoact2_policy.model.loader import load_policy

    config = graph.load_robot_config(ROBOT)
    path = ensure_demo_checkpoint(ROBOT, log=lambda _t: None)
    names = list(config.shared["joint_names"])
    policy = load_policy(str(path), str(config.shared["embodiment"]), joint_names=names)
    return policy, str(config.params_for(graph.POLICY_NODE)["instruction"])


def _arm_joints(params) -> np.ndarray:
    return np.array(["gripper" not in name for name in params.joint_names])


@pytest.mark.parametrize("signs", ["+", "-", "+-"])
def test_demo_recovers_from_every_joint_pushed_off(demo_policy, signs):
    policy, instruction = demo_policy
    base = driver_params(ROBOT)
    start = np.array(base.initial_positions)
    arm = _arm_joints(base)
    # Every arm joint pushed RECOVERY_REACH off at once (the start-deviation check takes the
    # worst joint), all one way or alternating.
    pattern = {"+": [1.0], "-": [-1.0], "+-": [1.0, -1.0]}[signs]
    push = np.resize(pattern, arm.sum()) * RECOVERY_REACH
    initial = start.copy()
    initial[arm] += push
    params = driver_params(ROBOT, initial_positions=tuple(initial))
    run = run_closed_loop(policy, params, instruction, seconds=3.5)
    # The first chunk is accepted where the arm was pushed to. While the driver ramps in from
    # there (ramp_in_time, 1 s) a few chunks may be refused (rightly); once it has settled,
    # none is.
    assert run.accepted > 0 and run.rejected.keys() <= {"start_deviation"}
    assert run.rejected_at == [] or run.rejected_at[0] > 0.15  # not the first chunk
    assert all(t < 2.5 for t in run.rejected_at), (run.rejected_at, run.first_rejection)
    offset = np.abs(run.positions[:, arm] - start[arm])
    np.testing.assert_allclose(offset[0], RECOVERY_REACH, atol=1e-6)
    # Back within the demo's own range of the start pose (DEMO_ACTION_SPREAD plus lag).
    assert offset[-1].max() < DEMO_ACTION_SPREAD + 0.1, offset[-1]


def test_undisturbed_demo_moves_and_every_chunk_is_accepted(demo_policy):
    policy, instruction = demo_policy
    params = driver_params(ROBOT)
    run = run_closed_loop(policy, params, instruction, seconds=3.0, latency=0.3, period=0.35)
    assert run.rejected == {}, run.first_rejection
    arm = _arm_joints(params)
    path = np.abs(np.diff(run.positions[:, arm], axis=0)).sum(axis=0)
    # Every arm joint moves (with the ramp-in's first second, 0.025-0.075 rad of path in 3 s:
    # the chunks' own 0.1 rad motion, no longer amplified by the ramp-in's overshoot).
    assert path.min() > 0.02, path
    offset = np.abs(run.positions[:, arm] - np.array(params.initial_positions)[arm])
    assert offset.max() < DEMO_ACTION_SPREAD + 0.1


def test_demo_keeps_going_after_a_load_spike(demo_policy):
    """Recipe 5 stalled for good after a ~1 s inference: the arm ended off its loop."""
    policy, instruction = demo_policy
    params = driver_params(ROBOT)
    # Observations 3..5 take 0.9, 1.2 and 0.6 s (the first two arrive stale or nearly so).
    spikes = {3: 0.9, 4: 1.2, 5: 0.6}
    run = run_closed_loop(
        policy, params, instruction, seconds=6.0, latency=lambda i: spikes.get(i, 0.15)
    )
    assert run.rejected.keys() <= {"stale"}, run.first_rejection
    assert run.accepted >= len(run.positions) - 1 - sum(run.rejected.values())
    offset = np.abs(run.positions - np.array(params.initial_positions))
    assert offset[:, _arm_joints(params)].max() < DEMO_ACTION_SPREAD + 0.1
