"""The ~/status chunk rate of a policy slower than the status period (chunk_rate.py)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from molmoact2_policy.chunk_rate import ChunkRateMeter


def _readings(period: float, until: float, status_period: float = 1.0) -> list[tuple[float, float]]:
    """(time, rate) at every status tick of a policy publishing every ``period`` seconds."""
    meter = ChunkRateMeter()
    meter.start(0.0)
    chunks = [period * (i + 1) for i in range(int(until / period))]
    out, ticks = [], [status_period * (i + 1) for i in range(int(until / status_period))]
    events = sorted([(t, "chunk") for t in chunks] + [(t, "tick") for t in ticks])
    for t, kind in events:
        if kind == "chunk":
            meter.record(t)
        else:
            out.append((t, meter.rate(t)))
    return out


def test_a_policy_slower_than_the_status_period_never_reads_zero_while_it_runs():
    # 2.2 s per chunk (a CPU model): counted over 1 s, the old figure was 0.0 or 1.0.
    readings = [r for t, r in _readings(2.2, 60.0) if t >= 12.0]
    assert min(readings) > 0.0
    assert all(abs(r - 1 / 2.2) <= 0.1 + 1e-9 for r in readings)


@settings(max_examples=60, deadline=None)
@given(st.floats(min_value=0.02, max_value=5.0))
def test_steady_chunks_read_within_one_chunk_per_window_of_the_true_rate(period):
    meter_window = ChunkRateMeter().window
    for t, rate in _readings(period, 40.0):
        if t >= meter_window + period:
            assert abs(rate - 1 / period) <= 1 / meter_window + 1e-9, (t, rate)


def test_the_rate_falls_to_zero_once_chunks_stop_for_a_window():
    meter = ChunkRateMeter(window=10.0)
    meter.start(0.0)
    for i in range(1, 50):
        meter.record(i * 0.1)
    assert meter.rate(5.0) == pytest.approx(49 / 5.0)
    assert 0.0 < meter.rate(12.0) < 49 / 10.0
    assert meter.rate(15.1) == 0.0


def test_right_after_activation_the_rate_counts_only_the_time_since():
    meter = ChunkRateMeter(window=10.0, min_span=1.0)
    meter.start(100.0)
    for i in range(1, 21):
        meter.record(100.0 + i * 0.1)  # 10 Hz for 2 s
    assert meter.rate(102.0) == pytest.approx(10.0)
    meter.start(200.0)  # reactivation forgets the earlier chunks
    assert meter.rate(200.5) == 0.0
    meter.record(200.4)
    assert meter.rate(200.5) == pytest.approx(1.0)  # one chunk over the 1 s minimum span


def test_a_meter_never_started_reads_zero_and_bad_windows_are_refused():
    assert ChunkRateMeter().rate(5.0) == 0.0
    with pytest.raises(ValueError):
        ChunkRateMeter(window=0.0)
    with pytest.raises(ValueError):
        ChunkRateMeter(window=1.0, min_span=2.0)
