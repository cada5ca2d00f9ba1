"""The inference thread: single pending slot, error capture, rate cap (issue 6), without ROS."""

from __future__ import annotations

import queue
import threading
import time

import numpy as np
import pytest

from molmoact2_common.embodiments import get_embodiment
from molmoact2_policy.inference_worker import (
    INPUT_ERROR,
    INTERNAL,
    UNAVAILABLE,
    InferenceOutcome,
    InferenceRequest,
    InferenceWorker,
)
from molmoact2_policy.observation import Observation
from tests.fake_policy import FAIL_CRASH, FAIL_INPUT, FAIL_UNAVAILABLE, FakePolicy

SPEC = get_embodiment("so100_101")


def _request(value: float, instruction: str = "pick", stamp_ns: int = 0) -> InferenceRequest:
    images = {c: np.full((16, 16, 3), 100, np.uint8) for c in SPEC.camera_names}
    obs = Observation(
        stamp_ns=stamp_ns,
        images=images,
        state=np.full(SPEC.state_dim, value),
        camera_stamps_ns={c: stamp_ns for c in SPEC.camera_names},
        joint_stamps_ns={},
    )
    return InferenceRequest(obs, instruction, seed=0)


class _Collector:
    def __init__(self) -> None:
        self.outcomes: queue.Queue[InferenceOutcome] = queue.Queue()

    def __call__(self, outcome: InferenceOutcome) -> None:
        self.outcomes.put(outcome)

    def next(self, timeout: float = 5.0) -> InferenceOutcome:
        return self.outcomes.get(timeout=timeout)


@pytest.fixture
def policy():
    return FakePolicy(SPEC)


def test_pending_request_is_replaced_not_queued(policy):
    collect = _Collector()
    worker = InferenceWorker(policy, collect)
    worker.start()
    try:
        policy.release.clear()  # hold the first act() inside the model
        worker.submit(_request(1.0))
        assert policy.started.wait(5.0)
        assert worker.busy
        assert worker.submit(_request(2.0)) is False
        assert worker.submit(_request(3.0)) is True  # overwrote 2.0
        assert worker.has_pending
        policy.release.set()
        first, second = collect.next(), collect.next()
        assert first.ok and first.request.observation.state[0] == 1.0
        assert second.ok and second.request.observation.state[0] == 3.0
        assert [call["state"][0] for call in policy.calls] == [1.0, 3.0]
        assert worker.replaced == 1 and worker.completed == 2
        assert collect.outcomes.empty()
    finally:
        policy.release.set()
        assert worker.stop()


def test_result_is_what_the_policy_returned(policy):
    collect = _Collector()
    worker = InferenceWorker(policy, collect)
    worker.start()
    try:
        request = _request(0.5)
        worker.submit(request)
        outcome = collect.next()
        expected = FakePolicy(SPEC).act(
            request.observation.images, request.observation.state, "pick", seed=0
        )
        np.testing.assert_array_equal(outcome.result.positions, expected.positions)
        assert outcome.error == "" and outcome.model_time >= 0.0
    finally:
        worker.stop()


@pytest.mark.parametrize(
    ("instruction", "kind", "text"),
    [
        (FAIL_INPUT, INPUT_ERROR, "policy rejected the observation: fake refuses"),
        (FAIL_UNAVAILABLE, UNAVAILABLE, "policy unavailable: fake server is down"),
        (FAIL_CRASH, INTERNAL, "inference failed: ZeroDivisionError: fake model crashed"),
    ],
)
def test_exceptions_become_error_outcomes_and_the_thread_survives(policy, instruction, kind, text):
    collect = _Collector()
    worker = InferenceWorker(policy, collect)
    worker.start()
    try:
        worker.submit(_request(1.0, instruction))
        failed = collect.next()
        assert not failed.ok and failed.error_kind == kind
        assert failed.error.startswith(text)
        worker.submit(_request(2.0))
        assert collect.next().ok
        assert worker.failed == 1 and worker.completed == 1
    finally:
        worker.stop()


def test_callback_exception_is_reported_and_the_thread_survives(policy):
    errors: list[BaseException] = []
    delivered = threading.Event()
    calls = []

    def on_outcome(outcome: InferenceOutcome) -> None:
        calls.append(outcome)
        if len(calls) == 1:
            raise RuntimeError("publisher gone")
        delivered.set()

    worker = InferenceWorker(policy, on_outcome, on_callback_error=errors.append)
    worker.start()
    try:
        worker.submit(_request(1.0))
        deadline = time.monotonic() + 5.0
        while not errors and time.monotonic() < deadline:
            time.sleep(0.01)
        worker.submit(_request(2.0))
        assert delivered.wait(5.0)
        assert [str(e) for e in errors] == ["publisher gone"]
    finally:
        worker.stop()


class _ManualClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_cap_holds_the_next_request_until_the_interval_passed(policy):
    clock = _ManualClock()
    collect = _Collector()
    worker = InferenceWorker(policy, collect, max_rate=20.0, clock=clock)  # 50 ms interval
    worker.start()
    try:
        worker.submit(_request(1.0))
        assert collect.next().ok
        worker.submit(_request(2.0))
        # The manual clock has not moved: the request must stay pending however long we wait.
        with pytest.raises(queue.Empty):
            collect.next(timeout=0.3)
        assert worker.has_pending and len(policy.calls) == 1
        clock.now += 0.05
        assert collect.next().request.observation.state[0] == 2.0
    finally:
        worker.stop()


def test_outcome_carries_queue_wait_and_the_request_stages(policy):
    from molmoact2_policy.stage_times import StageTimes

    clock = _ManualClock()
    collect = _Collector()
    worker = InferenceWorker(policy, collect, max_rate=20.0, clock=clock)  # 50 ms interval
    worker.start()
    try:
        worker.submit(_request(1.0))
        first = collect.next()
        assert first.queue_wait == 0.0  # the thread was idle: taken at the submit time
        stages = StageTimes(convert=0.002, assemble=0.0005)
        request = _request(2.0)
        worker.submit(InferenceRequest(request.observation, "pick", 0, 0, stages))
        clock.now += 0.05  # the rate cap held it exactly this long
        second = collect.next()
        assert second.queue_wait == pytest.approx(0.05)
        assert second.request.stages == stages
    finally:
        worker.stop()


def test_stop_drops_pending_and_clear_pending_forgets(policy):
    collect = _Collector()
    worker = InferenceWorker(policy, collect)
    worker.start()
    policy.release.clear()
    worker.submit(_request(1.0))
    assert policy.started.wait(5.0)
    worker.submit(_request(2.0))
    worker.clear_pending()
    assert not worker.has_pending
    worker.submit(_request(3.0))
    policy.release.set()
    assert collect.next().request.observation.state[0] == 1.0
    assert collect.next().request.observation.state[0] == 3.0
    assert worker.stop()
    worker.submit(_request(4.0))
    with pytest.raises(queue.Empty):
        collect.next(timeout=0.2)


def test_on_start_runs_right_before_act_and_its_value_is_in_the_outcome(policy):
    """What the caller must know about the moment act() began (a depth-cache reset
    generation) is taken on the worker thread right before act(), not at submit; it is given
    the request that act() is about to run (its camera stamps may call for a reset first)."""
    collect = _Collector()
    tokens = iter(range(100))
    seen_at_start: list[int] = []
    requests: list[InferenceRequest] = []

    def on_start(request: InferenceRequest) -> int:
        seen_at_start.append(len(policy.calls))  # act() has not been entered yet
        requests.append(request)
        return next(tokens)

    worker = InferenceWorker(policy, collect, on_start=on_start)
    worker.start()
    try:
        worker.submit(_request(0.1))
        first = collect.next()
        worker.submit(_request(0.2, instruction=FAIL_INPUT))
        second = collect.next()
    finally:
        worker.stop()
    assert (first.start_token, second.start_token) == (0, 1)
    assert not second.ok  # a failed act carries its token too
    assert seen_at_start == [0, 1]
    assert requests == [first.request, second.request]
