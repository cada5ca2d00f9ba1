"""bench/launch_bound_policy.py: its act is the dispatch of a set number of tiny torch ops."""

from __future__ import annotations

import numpy as np
import pytest
from torch.utils._python_dispatch import TorchDispatchMode

from bench.launch_bound_policy import (
    LAUNCHES_ENV,
    OPS_PER_STEP,
    LaunchBoundPolicy,
    make_launch_bound_policy,
)
from molmoact2_common.embodiments import get_embodiment


class CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def act(policy: LaunchBoundPolicy, state: np.ndarray):
    return policy.act({}, state, "pick up the cube", seed=0)


def test_act_dispatches_the_launches_it_was_given():
    spec = get_embodiment("yam_bimanual")
    joints = tuple(f"j{i}" for i in range(spec.action_dim))
    counts = {}
    for launches in (30, 300):
        policy = LaunchBoundPolicy("yam_bimanual", joints, launches)
        with CountOps() as mode:
            act(policy, np.zeros(spec.state_dim))
        loop_ops = [n for n in mode.names if n.split(".")[1] in ("mul", "add", "tanh")]
        counts[launches] = len(loop_ops)
    # mul, add and tanh per step: the ops scale with the setting, one op per launch.
    assert counts == {30: 30, 300: 300}


def test_chunk_is_one_a_driver_takes_and_the_same_every_call():
    spec = get_embodiment("yam_bimanual")
    joints = tuple(f"j{i}" for i in range(spec.action_dim))
    policy = LaunchBoundPolicy("yam_bimanual", joints, 3 * OPS_PER_STEP)
    first = act(policy, np.full(spec.state_dim, 0.4))
    again = act(policy, np.full(spec.state_dim, 0.4))
    assert first.positions.shape == (spec.horizon, spec.action_dim)
    assert np.all(np.isfinite(first.positions))
    assert np.all(np.abs(first.positions - 0.1) <= 0.01)
    assert first.joint_names == joints and first.step_dt == spec.step_dt
    np.testing.assert_array_equal(first.positions, again.positions)


def test_too_few_launches_are_refused():
    with pytest.raises(ValueError, match="at least 3"):
        LaunchBoundPolicy("yam_bimanual", ("a",), 2)


def test_factory_reads_the_launch_count_from_the_environment(monkeypatch):
    class Params:
        embodiment = "yam_bimanual"
        joint_names = tuple(f"j{i}" for i in range(get_embodiment("yam_bimanual").action_dim))

    monkeypatch.setenv(LAUNCHES_ENV, "90")
    assert make_launch_bound_policy(Params()).steps == 90 // OPS_PER_STEP
