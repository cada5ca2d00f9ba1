"""The bridge's checks of a trajectory against the measured pose and the joint limits."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hw_drivers.bridge_guard import GuardConfig, guard, ramp_duration
from hw_drivers.chunk import Chunk
from hw_drivers.trajectory import chunk_to_trajectory

ARM = [f"panda_joint{i}" for i in range(1, 8)]
HOME = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785])
VMAX = np.array([2.175, 2.175, 2.175, 2.175, 2.61, 2.61, 2.61])
AMAX = np.array([15.0, 7.5, 10.0, 12.5, 15.0, 20.0, 20.0])
CONFIG = GuardConfig(max_start_deviation=0.5, ramp_threshold=0.02, ramp_in_time=1.0)


def trajectory(start: np.ndarray, step: float = 0.01, horizon: int = 8, dt: float = 1 / 15):
    positions = np.array([start + step * k for k in range(horizon)])
    chunk = Chunk(0.0, dt, dt, tuple(ARM), positions)
    return chunk_to_trajectory(chunk, 0.0, min_lead_time=0.05)


def implied_peaks(result, measured):
    first = result.output.trajectory.points[0]
    d = np.abs(first.positions - measured)
    t = first.time_from_start
    return 1.5 * d / t, 6.0 * d / t**2


def test_a_chunk_starting_at_the_measured_pose_goes_out_unchanged():
    out = trajectory(HOME)
    result = guard(out, ARM, HOME, VMAX, AMAX, CONFIG)
    assert result.reason == "" and result.ramp == 0.0
    assert result.output.trajectory == out.trajectory


def test_a_chunk_starting_0_4_rad_away_is_ramped_in_not_sent_as_is():
    measured = HOME.copy()
    measured[1] -= 0.4
    out = trajectory(HOME)
    result = guard(out, ARM, measured, VMAX, AMAX, CONFIG)
    assert result.output is not None and result.ramp > 0
    # As is, the first point (due in 1/15 s) would need 9 rad/s; ramped in it is reached no
    # sooner than the ramp-in time and within every limit.
    as_is = 0.4 / out.trajectory.points[0].time_from_start
    assert as_is > VMAX[1]
    velocity, acceleration = implied_peaks(result, measured)
    assert result.output.trajectory.points[0].time_from_start >= 1.0 - 1e-9
    assert np.all(velocity <= VMAX) and np.all(acceleration <= AMAX)
    # The schedule keeps its spacing, only later.
    times = [p.time_from_start for p in result.output.trajectory.points]
    assert np.allclose(np.diff(times), 1 / 15)


def test_beyond_the_start_deviation_it_is_refused():
    measured = HOME.copy()
    measured[3] += 0.6
    result = guard(trajectory(HOME), ARM, measured, VMAX, AMAX, CONFIG)
    assert result.output is None
    assert result.reason.startswith("start_deviation: joint panda_joint4")


def test_without_a_measurement_nothing_is_sent():
    result = guard(trajectory(HOME), ARM, None, VMAX, AMAX, CONFIG)
    assert result.output is None and result.reason.startswith("start_pose:")


def test_a_continuing_chunk_is_not_delayed_by_the_tracking_lag():
    measured = HOME - 0.03  # the arm lags its trajectory while moving
    result = guard(trajectory(HOME), ARM, measured, VMAX, AMAX, CONFIG, idle=False)
    assert result.ramp == 0.0 and result.output is not None
    from_idle = guard(trajectory(HOME), ARM, measured, VMAX, AMAX, CONFIG, idle=True)
    assert from_idle.ramp > 0


def test_a_point_to_point_velocity_over_the_limit_is_refused():
    out = trajectory(HOME, step=0.2)  # 0.2 rad per 1/15 s = 3 rad/s
    result = guard(out, ARM, HOME, VMAX, AMAX, CONFIG)
    assert result.output is None
    assert result.reason.startswith("velocity_limit: joint panda_joint1")


def test_an_acceleration_over_the_limit_is_refused():
    positions = np.array([HOME + (0.0 if k < 4 else 0.12 * (k - 3)) for k in range(8)])
    chunk = Chunk(0.0, 1 / 15, 1 / 15, tuple(ARM), positions)
    out = chunk_to_trajectory(chunk, 0.0, min_lead_time=0.05)
    result = guard(out, ARM, HOME, VMAX, AMAX, CONFIG)
    assert result.output is None
    assert result.reason.startswith("acceleration_limit: joint panda_joint1"), result.reason


def test_ramp_duration_is_the_rest_to_rest_cubic_bound():
    assert ramp_duration(np.array([0.4]), np.array([2.0]), np.array([10.0])) == pytest.approx(
        max(1.5 * 0.4 / 2.0, (6 * 0.4 / 10.0) ** 0.5)
    )


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    offset=st.lists(st.floats(-0.5, 0.5), min_size=7, max_size=7),
    idle=st.booleans(),
)
def test_whatever_the_start_offset_what_is_sent_respects_the_limits(offset, idle):
    measured = HOME + np.array(offset)
    result = guard(trajectory(HOME, step=0.005), ARM, measured, VMAX, AMAX, CONFIG, idle=idle)
    if result.output is None:
        assert result.reason
        return
    first = result.output.trajectory.points[0]
    d = np.abs(first.positions - measured)
    factor = 1.5 if result.ramp > 0 else 1.0
    assert np.all(factor * d / first.time_from_start <= VMAX * (1 + 1e-6))
