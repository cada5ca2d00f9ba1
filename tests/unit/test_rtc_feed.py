"""What feeds real-time chunking: the node's RtcFeed, the worker hook, the remote 'rtc' field."""

from __future__ import annotations

import queue

import numpy as np
import pytest

from molmoact2_policy.embodiments import get_embodiment
from molmoact2_policy.inference_worker import InferenceRequest, InferenceWorker
from molmoact2_policy.observation import Observation
from molmoact2_policy.policy_api import RtcRequest
from molmoact2_policy.remote import protocol as p
from molmoact2_policy.rtc_feed import NS_PER_S, RtcFeed
from tests.fake_policy import FakePolicy

SPEC = get_embodiment("so100_101")
JOINTS = ("a", "b", "c", "d", "e", "gripper")
DT = SPEC.step_dt


def _chunk(rows: int = 30) -> np.ndarray:
    k = np.arange(rows)[:, None]
    return 0.01 * k * np.arange(1, 7)[None, :]  # joint j moves 0.01 * (j + 1) per step


def _ns(seconds: float) -> int:
    return round(seconds * NS_PER_S)


# ---------------------------------------------------------------------------- RtcFeed


def test_previous_chunk_is_aligned_to_the_new_capture_time():
    feed = RtcFeed(JOINTS, DT, SPEC.horizon)
    assert feed.request_for(_ns(1.0)) is None  # nothing published yet
    feed.record_chunk(_ns(1.0), 0.0, _chunk(), latency=0.15)
    # 5.5 steps later: row i of the new chunk lies halfway between old rows 5 + i and 6 + i.
    request = feed.request_for(_ns(1.0 + 5.5 * DT))
    assert isinstance(request, RtcRequest)
    assert request.previous.shape == (24, 6)  # old rows 5.5 .. 28.5 lie inside the old chunk
    np.testing.assert_allclose(request.previous, _chunk()[5:29] + 0.005 * np.arange(1, 7))
    assert request.delay_steps == 5  # ceil(0.15 s / (1/30) s) = ceil(4.5)
    assert request.execution_horizon is None


def test_delay_comes_from_the_largest_recent_latency_minus_the_start_offset():
    feed = RtcFeed(JOINTS, DT, SPEC.horizon, latency_window=3)
    for latency in (0.30, 0.05, 0.06, 0.07):  # 0.30 has left the window of three
        feed.record_chunk(_ns(1.0), 0.0, _chunk(), latency)
    assert feed.delay_steps() == 3  # ceil(0.07 * 30 = 2.1)
    assert feed.delay_steps(start_offset=DT) == 2
    feed.record_chunk(_ns(1.0), 0.0, _chunk(), 0.1)  # exactly 3 steps: not rounded up to 4
    assert feed.delay_steps() == 3


def test_nothing_to_guide_by_means_a_free_chunk():
    feed = RtcFeed(JOINTS, DT, SPEC.horizon)
    feed.record_chunk(_ns(2.0), 0.0, _chunk(), 0.1)
    assert feed.request_for(_ns(2.0)) is None  # not newer than the chunk
    assert feed.request_for(_ns(2.0 + 30 * DT)) is None  # the chunk has run out
    assert feed.request_for(_ns(2.0 + 29 * DT)).previous.shape == (1, 6)  # its last row
    feed.clear()
    assert feed.request_for(_ns(2.5)) is None
    assert feed.skipped == {
        "observation_not_newer": 1, "previous_chunk_over": 1, "no_previous_chunk": 1
    }


def test_a_driver_that_is_not_following_the_chunk_turns_rtc_off():
    feed = RtcFeed(JOINTS, DT, SPEC.horizon, max_deviation=0.05)
    feed.record_chunk(_ns(1.0), 0.0, _chunk(), 0.1)
    at = 1.0 + 4 * DT
    planned = _chunk()[4]
    # Following (names in another order, one unknown joint ignored): RTC on.
    feed.record_commanded(_ns(at), ["gripper", *JOINTS[:5], "extra"],
                          [planned[5], *planned[:5], 99.0])
    assert feed.request_for(_ns(at + DT)) is not None
    # Holding at the start pose while the chunk moves on: RTC off for this request.
    feed.record_commanded(_ns(at), JOINTS, _chunk()[0])
    assert feed.request_for(_ns(at + DT)) is None
    assert feed.skipped["driver_not_following"] == 1
    # Right after a splice the driver blends out of the chunk before: still following.
    feed.record_chunk(_ns(at), 0.0, _chunk() + 1.0, 0.1)
    feed.record_commanded(_ns(at + DT), JOINTS, 0.5 * (_chunk()[5] + _chunk()[1] + 1.0))
    assert feed.request_for(_ns(at + 2 * DT)) is not None
    feed.record_commanded(_ns(at + DT), JOINTS, _chunk()[5] + 1.5)  # beyond both plans
    assert feed.request_for(_ns(at + 2 * DT)) is None
    # A stale command says nothing about now.
    feed.record_commanded(_ns(at - 1.0), JOINTS, _chunk()[0] + 5.0)
    assert feed.request_for(_ns(at + DT)) is not None
    diag = feed.diagnostics()
    assert diag["rtc_requests"] == "3" and diag["rtc_skipped/driver_not_following"] == "2"


# ---------------------------------------------------------------------------- worker hook


def _request(stamp_ns: int) -> InferenceRequest:
    images = {c: np.full((16, 16, 3), 100, np.uint8) for c in SPEC.camera_names}
    obs = Observation(stamp_ns, images, np.zeros(SPEC.state_dim),
                      {c: stamp_ns for c in SPEC.camera_names}, {})
    return InferenceRequest(obs, "pick", seed=0)


class _RtcRecordingPolicy(FakePolicy):
    def __init__(self) -> None:
        super().__init__(SPEC)
        self.seen: list[RtcRequest | None] = []

    def act(self, images, state, instruction, *, seed=None, rtc=None):
        self.seen.append(rtc)
        return super().act(images, state, instruction, seed=seed)


def test_worker_asks_the_rtc_source_right_before_act_and_passes_only_a_request():
    outcomes: queue.Queue = queue.Queue()
    asked: list[int] = []
    rtc = RtcRequest(np.zeros((4, SPEC.action_dim)), 2)

    def source(request: InferenceRequest) -> RtcRequest | None:
        asked.append(request.observation.stamp_ns)
        return rtc if request.observation.stamp_ns > 0 else None

    policy = _RtcRecordingPolicy()
    worker = InferenceWorker(policy, outcomes.put, rtc_source=source)
    worker.start()
    try:
        worker.submit(_request(0))
        assert outcomes.get(timeout=10).ok
        worker.submit(_request(5))
        assert outcomes.get(timeout=10).ok
    finally:
        worker.stop()
    assert asked == [0, 5] and policy.seen == [None, rtc]
    # A policy that never heard of RTC still works when the source has nothing to give.
    plain = FakePolicy(SPEC)
    worker = InferenceWorker(plain, outcomes.put, rtc_source=lambda request: None)
    worker.start()
    try:
        worker.submit(_request(1))
        assert outcomes.get(timeout=10).ok
    finally:
        worker.stop()


# ---------------------------------------------------------------------------- remote field


def _observation():
    rng = np.random.default_rng(0)
    images = {c: rng.integers(0, 256, (32, 48, 3), dtype=np.uint8) for c in SPEC.camera_names}
    return images, rng.normal(size=SPEC.state_dim)


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_rtc_field_round_trips_and_is_absent_when_unused(codec):
    encode, decode = {"json": (p.encode_json, p.decode_json),
                      "msgpack": (p.encode_msgpack, p.decode_msgpack)}[codec]
    images, state = _observation()
    plain = p.build_act_request(SPEC, images, state, "go", image_encoding="raw")
    assert p.RTC_FIELD not in plain  # released-style requests are unchanged
    assert p.parse_act_request(decode(encode(plain)), SPEC).rtc is None
    rtc = RtcRequest(_chunk(12), 4, 9)
    payload = p.build_act_request(SPEC, images, state, "go", image_encoding="raw", rtc=rtc)
    parsed = p.parse_act_request(decode(encode(payload)), SPEC).rtc
    np.testing.assert_array_equal(parsed.previous, rtc.previous)
    assert (parsed.delay_steps, parsed.execution_horizon) == (4, 9)


@pytest.mark.parametrize(
    "value,message",
    [
        ("yes", "must be an object"),
        ({"previous": "x", "delay_steps": 1}, "numeric array"),
        ({"previous": np.zeros((3, 5)), "delay_steps": 1}, "shape"),
        ({"previous": np.zeros((31, 6)), "delay_steps": 1}, "rows"),
        ({"previous": np.full((3, 6), np.nan), "delay_steps": 1}, "finite"),
        ({"previous": np.zeros((3, 6)), "delay_steps": -1}, "delay_steps"),
        ({"previous": np.zeros((3, 6)), "delay_steps": True}, "delay_steps"),
        ({"previous": np.zeros((3, 6)), "delay_steps": 1, "execution_horizon": 2.5},
         "execution_horizon"),
    ],
)
def test_bad_rtc_fields_are_refused_with_the_reason(value, message):
    images, state = _observation()
    payload = p.build_act_request(SPEC, images, state, "go", image_encoding="raw")
    payload[p.RTC_FIELD] = value
    with pytest.raises(p.ProtocolError, match=message):
        p.parse_act_request(p.decode_json(p.encode_json(payload)), SPEC)


@pytest.mark.parametrize("transport", ["http", "ws"])
def test_tiny_model_rtc_chunk_over_the_network_equals_local(transport):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from molmoact2_policy.model.policy import MolmoAct2Policy
    from molmoact2_policy.remote.client import RemotePolicy
    from molmoact2_policy.remote.server import create_app
    from tests.remote_fakes import ServerThread

    def build():
        return MolmoAct2Policy.from_checkpoint("tiny", SPEC.name, joint_names=JOINTS, seed=0)

    served, local = build(), build()
    images, state = _observation()
    rtc = RtcRequest(_chunk(20) * 0.1, 3)
    with ServerThread(create_app(served, warmup=False)) as server:
        client = RemotePolicy(server.url, SPEC, JOINTS, transport=transport,
                              image_encoding="raw", timeout=60.0)
        try:
            remote = client.act(images, state, "go", seed=3, rtc=rtc)
        finally:
            client.close()
    expected = local.act(images, state, "go", seed=3, rtc=rtc)
    np.testing.assert_array_equal(expected.positions[:3], rtc.previous[:3])
    # The released response carries float32 actions: equal to the local chunk as sent.
    sent = expected.positions.astype(np.float32).astype(np.float64)
    np.testing.assert_array_equal(remote.positions, sent)
