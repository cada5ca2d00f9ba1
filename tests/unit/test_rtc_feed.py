"""What feeds real-time chunking: the node's RtcFeed, the worker hook, the remote 'rtc' field."""

from __future__ import annotations

import math
import queue
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from molmoact2_common.embodiments import get_embodiment
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


# Stamps of the size ROS time has (2026): float seconds there are only good to 0.24 us.
EPOCH_NS = 1_764_000_000_123_456_789


def test_rows_on_the_previous_chunks_grid_are_its_rows_bit_for_bit():
    # 0.1 s = exactly 3 steps of 1/30 s after a stamp where float seconds round: the old
    # float-seconds alignment interpolated these rows ~1e-5 of a step off (the ROS test's 1e-5).
    chunk = np.random.default_rng(0).normal(size=(SPEC.horizon, 6))
    feed = RtcFeed(JOINTS, DT, SPEC.horizon)
    feed.record_chunk(EPOCH_NS, 0.0, chunk, latency=0.05)
    request = feed.request_for(EPOCH_NS + 100_000_000)
    assert request is not None and request.previous.shape == (SPEC.horizon - 3, 6)
    np.testing.assert_array_equal(request.previous, chunk[3:])


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    stamp_ns=st.integers(10**18, 2 * 10**18),
    rows=st.integers(1, SPEC.horizon - 2),
    fraction=st.one_of(st.just(0.0), st.floats(0.0, 1.0, exclude_max=True)),
    offset=st.floats(-0.1, 0.1, allow_nan=False),
)
def test_alignment_is_exact_on_the_grid_and_linear_between(stamp_ns, rows, fraction, offset):
    chunk = np.random.default_rng(rows).normal(size=(SPEC.horizon, 6))
    feed = RtcFeed(JOINTS, DT, SPEC.horizon)
    feed.record_chunk(stamp_ns, offset, chunk, latency=0.05)
    # Whole ns nearest to row ``rows + fraction`` of the old chunk (the new chunk has the
    # same start offset, so the offset cancels).
    exact = Fraction(rows) + Fraction(fraction)
    obs_ns = stamp_ns + round(exact * Fraction(DT) * NS_PER_S)
    request = feed.request_for(obs_ns)
    assert request is not None
    row = Fraction(obs_ns - stamp_ns, NS_PER_S) / Fraction(DT)  # exact
    if abs(row - round(row)) * Fraction(DT) * NS_PER_S <= 1:
        np.testing.assert_array_equal(request.previous, chunk[round(row):][: len(request.previous)])
        return
    for k, got in enumerate(request.previous):
        at = row + k
        low = math.floor(at)
        high = min(low + 1, SPEC.horizon - 1)
        a, b = (np.array([Fraction(x) for x in chunk[i]]) for i in (low, high))
        expected = [float(x) for x in a + (at - low) * (b - a)]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def _following_feed(max_deviation: float = 0.05) -> RtcFeed:
    feed = RtcFeed(JOINTS, DT, SPEC.horizon, max_deviation=max_deviation, still_time=0.1)
    feed.record_chunk(_ns(1.0), 0.0, _chunk(), latency=0.1)  # published at 1.1 s
    return feed


def _command(feed: RtcFeed, seconds: float, positions, names=JOINTS) -> None:
    feed.record_commanded(_ns(seconds), list(names), list(positions))


def test_a_driver_holding_still_off_the_chunk_turns_rtc_off():
    feed = _following_feed()
    # Holding the start pose since before the chunk and 0.1 s after it was published.
    for k in range(40):
        _command(feed, 0.9 + 0.01 * k, _chunk()[0] - 0.2)  # up to 1.29 s
    assert feed.request_for(_ns(1.3)) is None
    assert feed.skipped == {"driver_not_following": 1}
    # It moves again (a reset ramps in): following.
    _command(feed, 1.30, _chunk()[0] - 0.19)
    assert feed.request_for(_ns(1.31)) is not None
    diag = feed.diagnostics()
    assert diag["rtc_requests"] == "1" and diag["rtc_skipped/driver_not_following"] == "1"


def test_a_driver_ramping_in_or_blending_far_off_the_plan_is_following():
    feed = _following_feed()
    # The executor's ramp-in: far from the plan (0.3 > 0.05) but moving towards it every tick.
    for k in range(30):
        _command(feed, 1.1 + 0.01 * k, _chunk()[0] - 0.3 * (1 - k / 60))
    assert feed.request_for(_ns(1.4)) is not None
    assert feed.skipped == {}


def test_standing_still_says_nothing_before_the_driver_could_have_moved():
    feed = _following_feed()
    # Idle at the start pose up to the chunk's publication and just after (not yet received):
    # the next request comes right after the chunk is published.
    for k in range(25):
        _command(feed, 0.9 + 0.01 * k, _chunk()[0] - 0.2)  # up to 1.14 s
    assert feed.request_for(_ns(1.15)) is not None
    # Held within max_deviation of the plan: nothing to skip.
    feed = _following_feed(max_deviation=1.0)
    for k in range(40):
        _command(feed, 1.1 + 0.01 * k, _chunk()[5])
    assert feed.request_for(_ns(1.5)) is not None  # within max_deviation


def test_stale_or_partial_commands():
    feed = _following_feed()
    for k in range(40):
        _command(feed, 0.0 + 0.01 * k, _chunk()[0] + 5.0)  # held, but long ago
    assert feed.request_for(_ns(1.3)) is not None
    # Names in another order, an unknown joint ignored, an unnamed joint never compared.
    feed = _following_feed()
    for k in range(40):
        _command(feed, 1.0 + 0.01 * k, [_chunk()[0][5], *(_chunk()[0][:4] - 0.2), 99.0],
                 names=["gripper", *JOINTS[:4], "extra"])
    assert feed.request_for(_ns(1.4)) is None


def test_commands_that_cannot_be_compared_are_named_not_silently_ignored():
    # A user's stack stamping its commanded joint states zero, or naming other joints, or
    # sending NaN: the command says nothing, RTC goes on as without the topic, but the feed
    # says why (it was silent: a hold far off the plan went on being continued, status ok).
    feed = _following_feed()
    assert feed.diagnostics()["rtc_commanded_check"] == "no command received"
    assert feed.record_commanded(0, list(JOINTS), list(_chunk()[0] + 5.0)) == ""
    assert feed.request_for(_ns(1.4)) is not None  # behaviour as before: not compared
    check = feed.diagnostics()["rtc_commanded_check"]
    assert "stamped -1.400 s from the observation" in check and "not compared" in check
    # Stamped right again: compared, and the hold far off the plan turns RTC off.
    for k in range(40):
        _command(feed, 1.0 + 0.01 * k, _chunk()[0] + 5.0)
    assert feed.request_for(_ns(1.4)) is None
    assert feed.diagnostics()["rtc_commanded_check"] == "ok"

    cases = [
        (["x", "y"], [1.0, 2.0], "names none of the policy's joints (got ['x', 'y'])"),
        (list(JOINTS), [0.1] * 5, "5 positions for 6 joint names"),
        (["a", "b"], [0.1, float("nan")], "non-finite position for joint(s) 'b'"),
        (["a", "zz"], [float("inf"), 0.0], "non-finite position for joint(s) 'a'"),
    ]
    for names, positions, expected in cases:
        assert feed.record_commanded(_ns(1.5), names, positions) == expected
        assert feed.diagnostics()["rtc_commanded_check"] == expected
    assert feed.diagnostics()["rtc_commanded_ignored"] == str(len(cases))
    assert feed.record_commanded(_ns(1.5), ["gripper"], [0.5]) == ""  # a part is fine


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    entries=st.lists(
        st.tuples(
            st.sampled_from([*JOINTS, "other", ""]),
            st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(0.5)),
        ),
        max_size=9,
    ),
    extra_values=st.integers(-2, 2),
)
def test_a_command_is_named_unusable_exactly_when_it_cannot_be_compared(entries, extra_values):
    names = [n for n, _ in entries]
    values = [v for _, v in entries]
    if extra_values < 0:
        values = values[: len(values) + extra_values]
    else:
        values += [0.0] * extra_values
    feed = _following_feed()
    problem = feed.record_commanded(_ns(1.2), names, values)
    comparable = (
        len(values) == len(names)
        and any(n in JOINTS for n in names)
        and all(math.isfinite(v) for n, v in zip(names, values, strict=True) if n in JOINTS)
    )
    assert (problem == "") == comparable, problem
    assert feed.diagnostics()["rtc_commanded_check"] == (problem or "ok")
    feed.request_for(_ns(1.25))  # never raises on any of them


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
    from molmoact2_policy.model.loader import load_policy
    from molmoact2_policy.remote.client import RemotePolicy
    from molmoact2_policy.remote.server import create_app
    from tests.remote_fakes import ServerThread

    def build():
        return load_policy("tiny", SPEC.name, joint_names=JOINTS, seed=0)

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
