"""The bridge's checks of a trajectory against the measured pose and the joint limits, judged
by how joint_trajectory_controller will run it (``hw_drivers.jtc_model``, mirrored from
ros2_controllers' trajectory.cpp and checked there against hand-worked splines)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hw_drivers.bridge_guard import GuardConfig, blend_in, guard, ramp_duration
from hw_drivers.chunk import Chunk
from hw_drivers.jtc_model import check_trajectory, sample
from hw_drivers.trajectory import JointTrajectoryData, TrajectoryPoint, chunk_to_trajectory

ARM = [f"panda_joint{i}" for i in range(1, 8)]
HOME = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785])
VMAX = np.array([2.175, 2.175, 2.175, 2.175, 2.61, 2.61, 2.61])
AMAX = np.array([15.0, 7.5, 10.0, 12.5, 15.0, 20.0, 20.0])
LOWER = np.array([-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973])
UPPER = np.array([2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973])
CONFIG = GuardConfig(max_start_deviation=0.5, ramp_threshold=0.02, ramp_in_time=1.0)


def run(out, measured, *, idle=True, lower=LOWER, upper=UPPER, vmax=VMAX, amax=AMAX, v=None):
    return guard(
        out,
        ARM,
        measured,
        vmax,
        amax,
        CONFIG,
        lower=lower,
        upper=upper,
        idle=idle,
        measured_velocity=v,
    )


def as_run(trajectory, measured, velocity=None, samples=4000):
    """Positions and velocities the controller commands, densely sampled from time 0."""
    end = trajectory.points[-1].time_from_start
    times = np.linspace(0.0, end * 1.05, samples)
    start_v = np.zeros(len(measured)) if velocity is None else velocity
    pv = [sample(trajectory, measured, start_v, t) for t in times]
    return times, np.array([p for p, _ in pv]), np.array([v for _, v in pv])


def trajectory(start: np.ndarray, step: float = 0.01, horizon: int = 8, dt: float = 1 / 15):
    positions = np.array([start + step * k for k in range(horizon)])
    chunk = Chunk(0.0, dt, dt, tuple(ARM), positions)
    return chunk_to_trajectory(chunk, 0.0, min_lead_time=0.05)


def test_a_chunk_starting_at_the_measured_pose_goes_out_unchanged():
    out = trajectory(HOME)
    result = run(out, HOME)
    assert result.reason == "" and result.ramp == 0.0
    assert result.output.trajectory == out.trajectory


def test_a_chunk_starting_0_4_rad_away_is_ramped_in_not_sent_as_is():
    measured = HOME.copy()
    measured[1] -= 0.4
    out = trajectory(HOME)
    result = run(out, measured)
    assert result.output is not None and result.ramp >= 1.0
    # As is, the first point (due in 1/15 s) would need 9 rad/s.
    as_is = 0.4 / out.trajectory.points[0].time_from_start
    assert as_is > VMAX[1]
    sent = result.output.trajectory
    assert check_trajectory(sent, ARM) is None
    # The chunk's schedule is kept (not delayed); points finish the blend onto its last point.
    times = [p.time_from_start for p in sent.points]
    original = [p.time_from_start for p in out.trajectory.points]
    assert times[: len(original)] == pytest.approx(original)
    assert times[-1] == pytest.approx(result.ramp)
    assert np.allclose(sent.points[-1].positions, out.trajectory.points[-1].positions)
    # As the controller runs it: within the velocity limits, never outside the span between
    # the measured pose and the chunk, no swing the wrong way.
    _, positions, velocities = as_run(sent, measured)
    assert np.all(np.abs(velocities) <= VMAX * (1 + 1e-6))
    chunk = np.array([p.positions for p in out.trajectory.points])
    # (the controller's spline through finite-difference velocities dips ~1e-5 rad)
    low = np.minimum(measured, chunk.min(axis=0)) - 1e-4
    high = np.maximum(measured, chunk.max(axis=0)) + 1e-4
    assert np.all(positions >= low) and np.all(positions <= high)


def test_a_fast_chunk_near_a_limit_ramps_in_without_passing_the_limit():
    # Found by probing 1,200 random chunks through the controller's spline: a ramp that only
    # delayed the trajectory kept the first point's velocity (-1.09 rad/s) at the end of a 1 s
    # spline from rest, which swung up to 2.084 with the limit at 2.0 before coming back.
    upper = UPPER.copy()
    upper[0] = 2.0
    measured = HOME.copy()
    measured[0] = 1.9422
    start = HOME.copy()
    start[0] = 1.9156
    positions = np.array([start + np.eye(7)[0] * (-1.09 / 30) * k for k in range(30)])
    chunk = Chunk(0.0, 1 / 30, 1 / 30, tuple(ARM), positions)
    out = chunk_to_trajectory(chunk, 0.0, min_lead_time=0.0)
    result = run(out, measured, upper=upper)
    assert result.output is not None and result.ramp >= 1.0, result.reason
    _, sampled, _ = as_run(result.output.trajectory, measured)
    assert sampled[:, 0].max() <= measured[0] + 1e-6  # never up, towards the limit
    assert np.all(sampled <= upper + 1e-9)

    # The old ramp, as the controller would have run it: past the limit.
    delayed = JointTrajectoryData(
        out.trajectory.joint_names,
        tuple(
            TrajectoryPoint(p.positions, p.velocities, p.time_from_start + 1.0)
            for p in out.trajectory.points
        ),
    )
    _, old, _ = as_run(delayed, measured)
    assert old[:, 0].max() > 2.05


def test_beyond_the_start_deviation_it_is_refused():
    measured = HOME.copy()
    measured[3] += 0.6
    result = run(trajectory(HOME), measured)
    assert result.output is None
    assert result.reason.startswith("start_deviation: joint panda_joint4")


def test_without_a_measurement_nothing_is_sent():
    result = run(trajectory(HOME), None)
    assert result.output is None and result.reason.startswith("start_pose:")


def test_a_continuing_chunk_is_not_ramped_for_the_tracking_lag():
    measured = HOME - 0.03  # the arm lags its trajectory while moving
    result = run(trajectory(HOME), measured, idle=False, v=np.full(7, 0.15))
    assert result.ramp == 0.0 and result.output is not None, result.reason
    from_idle = run(trajectory(HOME), measured, idle=True)
    assert from_idle.ramp > 0


def test_a_point_to_point_velocity_over_the_limit_is_refused():
    out = trajectory(HOME, step=0.2)  # 0.2 rad per 1/15 s = 3 rad/s
    result = run(out, HOME, idle=False)
    assert result.output is None
    assert result.reason.startswith("velocity_limit: joint panda_joint1"), result.reason


def test_a_spline_faster_than_its_points_is_refused():
    # Chords at 2.0 rad/s (under 2.175) but the controller's cubic from the arm at rest to a
    # first point already moving peaks above the limit.
    out = trajectory(HOME, step=2.0 / 15)
    [ok] = [run(out, HOME - 2.0 / 15 * 0.0, idle=False, v=np.full(7, 2.0))]
    assert ok.output is not None, ok.reason
    result = run(out, HOME - 2.0 / 15, idle=False, v=np.zeros(7))
    assert result.output is None
    assert "as the controller interpolates" in result.reason, result.reason


def test_a_spline_past_a_position_limit_is_refused():
    upper = UPPER.copy()
    upper[0] = HOME[0] + 0.001
    positions = np.array([HOME + np.eye(7)[0] * 0.0 for _ in range(8)])
    positions[3:, 0] = HOME[0] + 0.001  # steps up to the limit and stays: the cubic overshoots
    positions[2, 0] = HOME[0] + 0.0009
    chunk = Chunk(0.0, 1 / 15, 1 / 15, tuple(ARM), positions)
    out = chunk_to_trajectory(chunk, 0.0, min_lead_time=0.05)
    _, sampled, _ = as_run(out.trajectory, HOME)
    overshoots = sampled[:, 0].max() > upper[0] + 1e-9
    result = run(out, HOME, idle=False, upper=upper)
    assert (result.output is None) == overshoots
    if overshoots:
        assert result.reason.startswith("position_limit: joint panda_joint1"), result.reason


def test_an_acceleration_over_the_limit_is_refused():
    positions = np.array([HOME + (0.0 if k < 4 else 0.09 * (k - 3)) for k in range(8)])
    chunk = Chunk(0.0, 1 / 15, 1 / 15, tuple(ARM), positions)
    out = chunk_to_trajectory(chunk, 0.0, min_lead_time=0.05)
    result = run(out, HOME)
    assert result.output is None
    assert result.reason.startswith("acceleration_limit: joint panda_joint1"), result.reason


def test_ramp_duration_is_the_rest_to_rest_cubic_bound():
    assert ramp_duration(np.array([0.4]), np.array([2.0]), np.array([10.0])) == pytest.approx(
        max(1.5 * 0.4 / 2.0, (6 * 0.4 / 10.0) ** 0.5)
    )


def test_the_blend_leaves_at_rest_and_meets_the_chunk():
    out = trajectory(HOME, step=0.01, horizon=30, dt=1 / 30)
    measured = HOME + 0.2
    blended = blend_in(out.trajectory, measured, 0.5)
    for before, after in zip(out.trajectory.points, blended.points, strict=False):
        s = before.time_from_start / 0.5
        if s >= 1.0:
            assert np.allclose(after.positions, before.positions)
            assert np.allclose(after.velocities, before.velocities)
        else:
            a = s * s * (3 - 2 * s)
            assert np.allclose(after.positions, measured + a * (before.positions - measured))


@st.composite
def smooth_chunks(draw):
    """Chunks as a policy makes them: 30 steps at 30 Hz, speeds up to the limits."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    frac = draw(st.floats(0.1, 1.0))
    start = HOME + rng.uniform(-0.3, 0.3, 7)
    accel = rng.uniform(-1, 1, (30, 7)) * AMAX * 0.5
    velocity = np.clip(
        np.cumsum(accel, axis=0) / 30 + rng.uniform(-1, 1, 7) * VMAX * frac,
        -VMAX * frac,
        VMAX * frac,
    )
    positions = np.clip(start + np.cumsum(velocity, axis=0) / 30, LOWER, UPPER)
    return positions


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(
    positions=smooth_chunks(),
    offset=st.lists(st.floats(-0.5, 0.5), min_size=7, max_size=7),
    idle=st.booleans(),
    lead=st.sampled_from([0.0, 0.05]),
    measured_v=st.sampled_from([None, "chunk"]),
)
def test_what_is_sent_respects_the_limits_as_the_controller_runs_it(
    positions, offset, idle, lead, measured_v
):
    chunk = Chunk(0.0, 1 / 30, 1 / 30, tuple(ARM), positions)
    out = chunk_to_trajectory(chunk, 0.0, min_lead_time=lead)
    measured = np.clip(positions[0] + np.array(offset), LOWER, UPPER)
    v = None if measured_v is None else (positions[1] - positions[0]) * 30
    result = run(out, measured, idle=idle, v=v)
    if result.output is None:
        assert result.reason
        return
    sent = result.output.trajectory
    assert check_trajectory(sent, ARM) is None
    _, sampled, velocities = as_run(sent, measured, v, samples=1500)
    assert np.all(sampled >= LOWER - 1e-6) and np.all(sampled <= UPPER + 1e-6)
    assert np.all(np.abs(velocities) <= VMAX * (1 + 1e-5))


def test_a_chunk_during_a_ramp_in_continues_that_ramp():
    # Found by the closed-loop test (tests/ros/test_trajectory_bridge_closed_loop.py): while a
    # ramp-in ran, the next chunk is ahead of the arm by what the ramp has still to cover; it
    # got a ramp of its own at the rest-to-rest bound, which with the chunk's own motion broke
    # the acceleration limit, so every chunk during a ramp-in was refused. Now it is blended on
    # the running ramp's schedule, from the same pose, as the driver's ramp-in goes on around
    # every chunk spliced meanwhile.
    from hw_drivers.bridge_guard import RampInProgress

    amax = np.full(7, 2.0)
    first = trajectory(HOME + 0.15, step=0.02, horizon=15)
    started = run(first, HOME, amax=amax)
    assert started.reason == "" and started.ramp == pytest.approx(1.0)
    # 0.1 s later the next chunk (the same motion, 0.1 s on); the arm has barely moved.
    arm = HOME + 0.15 * (3 * 0.1**2 - 2 * 0.1**3)
    second = trajectory(HOME + 0.15 + 0.03, step=0.02, horizon=15)
    alone = run(second, arm, idle=False, amax=amax)
    assert alone.output is None and alone.reason.startswith("acceleration_limit")
    ongoing = RampInProgress(HOME, 0.1, started.ramp)
    result = guard(
        second, ARM, arm, VMAX, amax, CONFIG, lower=LOWER, upper=UPPER, idle=False,
        ramp_in_progress=ongoing,
    )
    assert result.reason == "" and result.ramp == pytest.approx(0.9)
    sent = result.output.trajectory
    assert check_trajectory(sent, ARM) is None
    # Each point: the blend from HOME at s = (t + 0.1) / 1.0, as the running ramp would have it.
    for p, q in zip(sent.points, second.trajectory.points, strict=False):
        s = min((p.time_from_start + 0.1) / 1.0, 1.0)
        a = s * s * (3 - 2 * s)
        assert p.positions == pytest.approx(HOME + a * (q.positions - HOME))
    assert sent.points[-1].time_from_start >= 0.9 - 1e-9
