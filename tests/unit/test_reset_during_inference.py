"""``Policy.reset`` during an inference returns at once and takes effect as the inference ends.

The policy node's ``~/reset`` and the depth-cache node's ``~/reset`` call ``reset`` on the
node's executor thread. It used to wait for the policy lock, so a reset during a Think
inference blocked every camera, status and service callback of the node until that inference
ended (seconds on a CPU).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from molmoact2_policy.model.loader import load_policy

WAIT = 60.0  # generous bound for one tiny inference on a loaded 2-core host


def observation(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    names = ("top", "left_wrist", "right_wrist")
    return {name: rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for name in names}


@pytest.fixture(scope="module", params=["think", "flow"])
def policy(request):
    return load_policy("tiny", "yam_bimanual", mode=request.param)


class _Held:
    """Holds one ``act`` inside its model forward (the lock taken) until released."""

    def __init__(self, policy) -> None:
        self.policy = policy
        self.inside = threading.Event()
        self.release = threading.Event()
        self._forward = policy.run_prefix

        def held_prefix(inputs):
            self.inside.set()
            assert self.release.wait(WAIT)
            return self._forward(inputs)

        policy.run_prefix = held_prefix
        self.result: list = []
        self.thread = threading.Thread(
            target=lambda: self.result.append(policy.act(observation(1), np.zeros(14), "fold")),
            daemon=True,
        )

    def __enter__(self):
        self.thread.start()
        assert self.inside.wait(WAIT)
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.thread.join(WAIT)
        del self.policy.run_prefix  # the instance attribute goes: the method is back


def test_reset_during_an_inference_does_not_wait_for_it(policy):
    policy.reset()
    with _Held(policy) as held:
        resetter = threading.Thread(target=policy.reset, daemon=True)
        resetter.start()
        resetter.join(WAIT)
        # The inference is still held inside its forward: a reset that waited for the lock
        # would still be running here.
        assert not resetter.is_alive()
        assert held.thread.is_alive()
    assert not held.thread.is_alive() and held.result


def test_the_deferred_reset_applies_after_the_running_inference(policy):
    # Reference: reset, then two unseeded inferences (noise from the restarted sequence).
    images, state = observation(2), np.zeros(14)
    policy.reset()
    expected = policy.act(images, state, "fold").positions
    policy.act(images, state, "fold")
    with _Held(policy):
        policy.reset()  # while the held inference draws from the old sequence
    after = policy.act(images, state, "fold").positions
    # As if reset had run after the held inference: the sequence restarted, and for Think
    # the depth cache the held inference filled is forgotten (all cells predicted again).
    np.testing.assert_array_equal(after, expected)
    if policy.mode_name == "think":
        policy.reset()
        with _Held(policy):
            policy.reset()
        assert policy.depth_cache.empty
