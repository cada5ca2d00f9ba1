"""RTC continues the chunk the driver runs: the driver's ChunkExecution reports and the feed.

The driver side is the real ``ChunkExecutor`` with ``ExecutionReporter``; the policy side the
node's ``RtcFeed``. A rejected chunk leaves the driver running an older one, and the next
request must continue that one, not the chunk published last.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hw_drivers.chunk import Chunk
from hw_drivers.execution_report import ExecutionReporter
from hw_drivers.executor import ChunkExecutor, ExecutorConfig, SubmitResult
from hw_drivers.safety import JointLimits, SafetyConfig
from molmoact2_common.chunk_execution import ChunkExecution, ChunkRef
from molmoact2_policy.rtc_feed import NS_PER_S, RtcFeed

NAMES = ("a", "b", "c")
DT = 1.0 / 30.0
HORIZON = 30
TICK = 0.01
# ROS time today: float seconds there are good to ~0.24 us, which the reports must survive.
EPOCH_NS = 1_764_000_000_123_456_789


def _executor(ramp_in_time: float = 0.2) -> ChunkExecutor:
    n = len(NAMES)
    limits = JointLimits(
        lower=np.full(n, -5.0),
        upper=np.full(n, 5.0),
        max_velocity=np.full(n, 50.0),
        max_acceleration=np.full(n, 1e5),
    )
    safety = SafetyConfig(
        max_step_per_tick=1.0,
        max_start_deviation=0.5,
        ramp_in_time=ramp_in_time,
        watchdog_timeout=1.0,
    )
    return ChunkExecutor(NAMES, limits, safety, ExecutorConfig())


def _positions(start: np.ndarray, slope: float = 0.3) -> np.ndarray:
    k = np.arange(HORIZON)[:, None] * DT
    return start[None, :] + slope * k * (np.arange(len(NAMES)) + 1)[None, :]


class Rig:
    """A driver (executor + reporter, perfect tracking) and a policy's RtcFeed, in one clock."""

    def __init__(self, verdict_timeout: float = 0.0) -> None:
        self.executor = _executor()
        self.reporter = ExecutionReporter()
        self.feed = RtcFeed(NAMES, DT, HORIZON, verdict_timeout=verdict_timeout)
        self.now_ns = EPOCH_NS
        self.pose = np.zeros(len(NAMES))
        self.executor.tick(self.seconds, self.pose)
        self.chunks: dict[int, tuple[int, np.ndarray]] = {}  # sequence -> (stamp_ns, rows)
        self.sequence = 0

    @property
    def seconds(self) -> float:
        return self.now_ns / NS_PER_S

    def advance(self, seconds: float) -> None:
        """Control ticks (100 Hz) for ``seconds``; every due report reaches the feed."""
        end = self.now_ns + round(seconds * NS_PER_S)
        while self.now_ns + round(TICK * NS_PER_S) <= end:
            self.now_ns += round(TICK * NS_PER_S)
            command = self.executor.tick(self.seconds, self.pose)
            self.pose = command.positions  # the arm is where it was told to be
            report = self.reporter.due(self.executor, self.seconds)
            if report is not None:
                self.feed.record_execution(report)
        self.now_ns = end

    def publish(self, stamp_ns: int, rows: np.ndarray, latency: float) -> SubmitResult:
        """The policy publishes a chunk captured at ``stamp_ns``; the driver judges it now."""
        sequence = self.sequence
        self.sequence += 1
        self.chunks[sequence] = (stamp_ns, rows)
        self.feed.record_chunk(stamp_ns, 0.0, rows, latency, sequence)
        chunk = Chunk(stamp_ns / NS_PER_S, 0.0, DT, NAMES, rows, sequence=sequence)
        result = self.executor.submit(chunk, self.seconds, self.pose)
        self.reporter.on_verdict(sequence, stamp_ns, result.accepted, result.reason)
        report = self.reporter.due(self.executor, self.seconds)
        assert report is not None  # a verdict is always news
        self.feed.record_execution(report)
        return result

    def followed(self) -> Chunk | None:
        return self.executor.pending_chunk or self.executor.running_chunk


def _row_at(stamp_ns: int, rows: np.ndarray, at_ns: int) -> np.ndarray:
    """Row of a chunk captured at ``stamp_ns`` that applies at ``at_ns`` (linear in time)."""
    position = (at_ns - stamp_ns) / NS_PER_S / DT
    grid = np.arange(rows.shape[0])
    return np.array([np.interp(position, grid, rows[:, j]) for j in range(rows.shape[1])])


# ---------------------------------------------------------------------------- the report


def test_report_round_trips_through_the_message():
    from molmoact2_msgs.msg import ChunkExecution as Msg

    report = ChunkExecution(
        stamp_ns=EPOCH_NS,
        state="tracking",
        running=ChunkRef(7, EPOCH_NS - 300_000_000),
        pending=ChunkRef(8, EPOCH_NS - 100_000_000),
        last=ChunkRef(9, EPOCH_NS - 50_000_000),
        last_accepted=False,
        last_reject_reason="start_deviation: joint a is 0.9 rad from the measured pose",
    )
    assert ChunkExecution.from_msg(report.fill_msg(Msg())) == report
    idle = ChunkExecution(stamp_ns=EPOCH_NS, state="idle")
    msg = idle.fill_msg(Msg())
    assert not msg.running and not msg.pending and not msg.has_last
    assert ChunkExecution.from_msg(msg) == idle


@given(sec=st.integers(-(2**31), 2**31 - 1), nanosec=st.integers(0, NS_PER_S - 1))
@example(sec=2**31 - 1, nanosec=NS_PER_S - 1)  # rounds up to 2**31 s in float seconds
@example(sec=-1, nanosec=0)
@settings(max_examples=200, derandomize=True, deadline=None)
def test_any_header_stamp_reported_back_stays_in_the_time_message_range(sec, nanosec):
    """Whatever stamp a chunk carried, its report after the executor's float-seconds round trip
    serializes to the same instant (within the round trip), never wrapped past int32 seconds."""
    from rclpy.serialization import deserialize_message, serialize_message

    from molmoact2_msgs.msg import ChunkExecution as Msg

    stamp_ns = sec * NS_PER_S + nanosec
    ref = ChunkRef.from_seconds(3, stamp_ns / NS_PER_S)
    report = ChunkExecution(stamp_ns=EPOCH_NS, state="tracking", running=ref, last=ref)
    wire = deserialize_message(serialize_message(report.fill_msg(Msg())), Msg)
    back = ChunkExecution.from_msg(wire)
    assert 0 <= wire.running_stamp.sec <= 2**31 - 1
    if stamp_ns >= 0:
        assert back.running is not None and back.running.same_as(3, stamp_ns)
    else:
        assert back.running == ChunkRef(3, 0)


def test_reporter_follows_accept_take_over_reject_and_hold():
    rig = Rig()
    assert rig.reporter.current(rig.executor, rig.seconds).following() is None
    stamp = rig.now_ns
    rig.advance(0.1)
    assert rig.publish(stamp, _positions(rig.pose), 0.1).accepted
    report = rig.reporter.current(rig.executor, rig.seconds)
    # Accepted: waiting for the next tick to take over, then running.
    assert report.last.same_as(0, stamp) and report.last_accepted
    assert report.following().same_as(0, stamp)
    rig.advance(0.05)
    report = rig.reporter.current(rig.executor, rig.seconds)
    assert report.state == "ramp_in" and report.running.same_as(0, stamp)
    assert report.pending is None
    # A chunk far off the arm is rejected: chunk 0 goes on running.
    stamp1 = rig.now_ns
    rig.advance(0.1)
    result = rig.publish(stamp1, _positions(rig.pose + 2.0), 0.1)
    assert not result.accepted and result.reason.startswith("start_deviation")
    report = rig.reporter.current(rig.executor, rig.seconds)
    assert report.last.same_as(1, stamp1) and not report.last_accepted
    assert report.last_reject_reason == result.reason
    assert report.following().same_as(0, stamp)
    # A backend fault stops the executor's ticks: the driver reports the loop's state.
    assert rig.reporter.current(rig.executor, rig.seconds, "fault").state == "fault"
    rig.executor.hold(True)
    rig.advance(0.02)
    report = rig.reporter.current(rig.executor, rig.seconds)
    assert report.state == "holding" and report.following() is None


def test_reports_name_running_chunks_by_their_exact_header_stamp():
    # The executor keeps float seconds (0.24 us steps at today's epoch); the report carries the
    # stamp the ActionChunk's header had, so a user can match the two exactly.
    rig = Rig()
    stamp = rig.now_ns
    assert round((stamp / NS_PER_S) * NS_PER_S) != stamp  # the round trip is lossy here
    rig.advance(0.1)
    assert rig.publish(stamp, _positions(rig.pose), 0.1).accepted
    assert rig.reporter.current(rig.executor, rig.seconds).pending.stamp_ns == stamp
    rig.advance(0.05)
    assert rig.reporter.current(rig.executor, rig.seconds).running.stamp_ns == stamp


def test_reports_are_due_on_change_and_as_a_heartbeat():
    executor = _executor()
    executor.tick(10.0, np.zeros(3))
    reporter = ExecutionReporter(heartbeat=1.0)
    assert reporter.due(executor, 10.0) is not None  # the first one
    assert reporter.due(executor, 10.5) is None  # nothing new
    assert reporter.due(executor, 11.0) is not None  # heartbeat
    reporter.on_verdict(3, 11_000_000_000, False, "limits: too far")
    assert reporter.due(executor, 11.1).last_reject_reason == "limits: too far"
    assert reporter.due(executor, 11.2) is None
    assert reporter.due(executor, 5.0) is not None  # the clock stepped back


# ---------------------------------------------------------------------------- the feed


def test_a_rejected_chunk_is_not_continued_the_running_one_is():
    rig = Rig()
    capture0 = rig.now_ns
    rig.advance(0.1)
    rig.publish(capture0, _positions(rig.pose), 0.1)
    rig.advance(0.2)
    capture1 = rig.now_ns
    request = rig.feed.request_for(capture1)
    assert request is not None and rig.feed.last_previous_sequence == 0
    rig.advance(0.1)
    poisoned = _positions(rig.pose + 2.0)
    assert not rig.publish(capture1, poisoned, 0.1).accepted
    rig.advance(0.02)
    capture2 = rig.now_ns
    request = rig.feed.request_for(capture2)
    assert request is not None
    assert rig.feed.last_previous_sequence == 0  # chunk 0 runs, not the rejected chunk 1
    stamp0, rows0 = rig.chunks[0]
    np.testing.assert_allclose(request.previous[0], _row_at(stamp0, rows0, capture2), atol=1e-12)
    assert np.abs(request.previous[0] - _row_at(capture1, poisoned, capture2)).max() > 1.0


def test_an_old_driver_that_never_reports_keeps_the_last_published_chunk():
    feed = RtcFeed(NAMES, DT, HORIZON)
    rows = _positions(np.zeros(3))
    feed.record_chunk(EPOCH_NS, 0.0, rows, 0.1, sequence=0)
    feed.record_chunk(EPOCH_NS + 100_000_000, 0.0, rows + 2.0, 0.1, sequence=1)
    assert not feed.driver_reports
    feed.request_for(EPOCH_NS + 200_000_000)
    assert feed.last_previous_sequence == 1
    assert feed.diagnostics()["rtc_driver_state"] == "not reported"


AT = EPOCH_NS + 150_000_000  # report time
FIRST, SECOND = ChunkRef(0, EPOCH_NS), ChunkRef(1, EPOCH_NS + 100_000_000)


@pytest.mark.parametrize(
    ("report", "reason"),
    [
        (
            ChunkExecution(AT, "holding", last=SECOND, last_reject_reason="hold: hold requested"),
            "driver_holding",
        ),
        (ChunkExecution(AT, "estop", last=SECOND), "driver_estop"),
        (ChunkExecution(AT, "dancing", last=SECOND), "driver_other"),
        # Running a chunk 5 ms off ours: from another publisher or an earlier policy run.
        (
            ChunkExecution(AT, "tracking", running=ChunkRef(0, EPOCH_NS - 5_000_000), last=SECOND),
            "driver_runs_unknown_chunk",
        ),
        # No verdict on chunk 1 yet: the report's last is chunk 0.
        (
            ChunkExecution(AT, "tracking", running=FIRST, last=FIRST, last_accepted=True),
            "driver_verdict_pending",
        ),
        (
            ChunkExecution(
                EPOCH_NS - 3 * NS_PER_S, "tracking", running=SECOND, last=SECOND, last_accepted=True
            ),
            "driver_report_stale",
        ),
    ],
)
def test_rtc_is_skipped_with_the_reason_when_the_driver_runs_nothing_of_ours(report, reason):
    feed = RtcFeed(NAMES, DT, HORIZON, verdict_timeout=0.0)
    rows = _positions(np.zeros(3))
    feed.record_chunk(EPOCH_NS, 0.0, rows, 0.1, sequence=0)
    feed.record_chunk(EPOCH_NS + 100_000_000, 0.0, rows, 0.1, sequence=1)
    feed.record_execution(report)
    assert feed.request_for(EPOCH_NS + 200_000_000) is None
    assert feed.skipped == {reason: 1}
    assert feed.diagnostics()["rtc_last_skip"].startswith(reason + ": ")
    assert feed.diagnostics()[f"rtc_skipped/{reason}"] == "1"


def test_the_feed_waits_for_the_verdict_on_the_chunk_published_last():
    feed = RtcFeed(NAMES, DT, HORIZON, verdict_timeout=30.0)  # generous: a loaded machine
    rows = _positions(np.zeros(3))
    feed.record_chunk(EPOCH_NS, 0.0, rows, 0.1, sequence=0)
    feed.record_execution(
        ChunkExecution(
            EPOCH_NS + 50_000_000,
            "tracking",
            running=ChunkRef(0, EPOCH_NS),
            last=ChunkRef(0, EPOCH_NS),
            last_accepted=True,
        )
    )
    feed.record_chunk(EPOCH_NS + 100_000_000, 0.0, rows + 2.0, 0.1, sequence=1)
    results = []
    asking = threading.Thread(
        target=lambda: results.append(feed.request_for(EPOCH_NS + 200_000_000))
    )
    asking.start()
    # The verdict (chunk 1 rejected) comes after the request began or before: either way the
    # request must see it, not the report from before chunk 1 was published.
    feed.record_execution(
        ChunkExecution(
            EPOCH_NS + 110_000_000,
            "tracking",
            running=ChunkRef(0, EPOCH_NS),
            last=ChunkRef(1, EPOCH_NS + 100_000_000),
            last_accepted=False,
            last_reject_reason="start_deviation: far",
        )
    )
    asking.join(timeout=60.0)
    assert not asking.is_alive()
    assert results[0] is not None and feed.last_previous_sequence == 0
    np.testing.assert_allclose(results[0].previous[0], rows[6], atol=1e-12)  # 0.2 s later


def test_a_driver_gone_quiet_is_not_waited_for():
    clock_calls = []

    def clock() -> float:  # a wait would read it (and end at once: 10 s per reading)
        clock_calls.append(1)
        return 10.0 * len(clock_calls)

    feed = RtcFeed(NAMES, DT, HORIZON, verdict_timeout=1.0, clock=clock)
    rows = _positions(np.zeros(3))
    feed.record_chunk(EPOCH_NS, 0.0, rows, 0.1, sequence=0)
    feed.record_execution(ChunkExecution(EPOCH_NS - 3 * NS_PER_S, "tracking"))
    assert feed.request_for(EPOCH_NS + 200_000_000) is None
    assert feed.skipped == {"driver_report_stale": 1} and not clock_calls


def test_without_a_verdict_in_time_rtc_is_skipped():
    ticks = iter(float(i) for i in range(100))
    feed = RtcFeed(NAMES, DT, HORIZON, verdict_timeout=0.5, clock=lambda: next(ticks))
    rows = _positions(np.zeros(3))
    feed.record_chunk(EPOCH_NS, 0.0, rows, 0.1, sequence=0)
    feed.record_execution(ChunkExecution(EPOCH_NS + 50_000_000, "tracking"))
    assert feed.request_for(EPOCH_NS + 200_000_000) is None
    assert feed.skipped == {"driver_verdict_pending": 1}


def test_clear_forgets_the_history_so_an_older_running_chunk_is_unknown():
    rig = Rig()
    capture0 = rig.now_ns
    rig.advance(0.1)
    rig.publish(capture0, _positions(rig.pose), 0.1)
    rig.advance(0.1)
    rig.feed.clear()  # new instruction: the running chunk was for the old one
    capture1 = rig.now_ns
    rig.advance(0.1)
    rig.publish(capture1, _positions(rig.pose + 2.0), 0.1)  # rejected
    rig.advance(0.02)
    assert rig.feed.request_for(rig.now_ns) is None
    assert rig.feed.skipped == {"driver_runs_unknown_chunk": 1}


# ---------------------------------------------------------------------------- the property

ACTIONS = st.sampled_from(["accept", "accept", "reject", "hold"])


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    actions=st.lists(ACTIONS, min_size=1, max_size=12),
    latency=st.sampled_from([0.04, 0.1, 0.2, 0.35]),
    gaps=st.lists(st.sampled_from([0.0, 0.01, 0.05, 0.2, 0.6]), min_size=12, max_size=12),
)
def test_rtc_always_continues_the_chunk_the_driver_follows(actions, latency, gaps):
    """Any accept / reject / hold sequence: a request continues exactly the chunk the executor
    follows at that moment (pending, else running), and is skipped only when there is none, it
    is not one of ours, or it has no rows left at the new capture time."""
    rig = Rig()
    for action, gap in zip(actions, gaps, strict=False):
        capture = rig.now_ns
        request = rig.feed.request_for(capture)
        followed = rig.followed()
        if request is None:
            if followed is not None and followed.sequence in rig.chunks:
                stamp_ns, rows = rig.chunks[followed.sequence]
                # The only reasons to skip a chunk the driver follows: it is over, or not older.
                assert rig.feed.last_skip.startswith(
                    ("previous_chunk_over", "observation_not_newer")
                ), rig.feed.last_skip
        else:
            assert followed is not None, "RTC continued a chunk while the driver runs none"
            assert rig.feed.last_previous_sequence == followed.sequence
            stamp_ns, rows = rig.chunks[followed.sequence]
            np.testing.assert_allclose(
                request.previous[0], _row_at(stamp_ns, rows, capture), atol=1e-9
            )
        # Inference: the chunk reaches the driver ``latency`` after its capture.
        rig.advance(latency)
        if action == "hold":
            rig.executor.hold(True)
        offset = 2.0 if action == "reject" else 0.0
        slope = 0.3 if rig.sequence % 2 else -0.3  # back and forth: never near the limits
        result = rig.publish(capture, _positions(rig.pose + offset, slope), latency)
        assert result.accepted == (action == "accept"), result.reason
        if action == "hold":
            rig.advance(0.02)
            rig.executor.hold(False)
        rig.advance(gap)
