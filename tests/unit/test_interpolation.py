"""Linear and cubic interpolation of chunk knots, and the C1 splice correction."""

from __future__ import annotations

import numpy as np
import pytest

from hw_drivers.chunk import Chunk
from hw_drivers.interpolation import HermiteCorrection, KnotTrajectory


def _quadratic(t):
    return np.stack([0.3 + 1.5 * t - 2.0 * t**2, -0.2 * t + 0.7 * t**2], axis=-1)


def test_linear_interpolates_between_knots_with_segment_velocity():
    times = np.array([0.0, 0.1, 0.2])
    positions = np.array([[0.0], [1.0], [0.5]])
    traj = KnotTrajectory(times, positions, "linear")
    pos, vel = traj.sample(0.025)
    assert pos[0] == pytest.approx(0.25)
    assert vel[0] == pytest.approx(10.0)
    pos, vel = traj.sample(0.15)
    assert pos[0] == pytest.approx(0.75)
    assert vel[0] == pytest.approx(-5.0)


def test_cubic_passes_through_knots_and_reproduces_a_quadratic_exactly():
    times = np.linspace(0.0, 1.0, 11)
    traj = KnotTrajectory(times, _quadratic(times), "cubic")
    linear = KnotTrajectory(times, _quadratic(times), "linear")
    for t in np.linspace(0.0, 1.0, 97):
        pos, vel = traj.sample(t)
        np.testing.assert_allclose(pos, _quadratic(t), atol=1e-12)
        np.testing.assert_allclose(vel, [1.5 - 4.0 * t, -0.2 + 1.4 * t], atol=1e-9)
    # Linear has the chord error of a quadratic between knots: (h/2)^2 * |a|.
    mid = 0.05
    chord_error = np.abs(linear.sample(mid)[0] - _quadratic(mid))
    np.testing.assert_allclose(chord_error, [0.05**2 * 2.0, 0.05**2 * 0.7], rtol=1e-9)


def test_cubic_velocity_is_continuous_across_knots():
    rng = np.random.default_rng(3)
    times = np.arange(12) / 30.0
    traj = KnotTrajectory(times, rng.normal(size=(12, 3)), "cubic")
    for k in range(1, 11):
        _, before = traj.sample(times[k] - 1e-9)
        _, after = traj.sample(times[k] + 1e-9)
        np.testing.assert_allclose(before, after, rtol=1e-5, atol=1e-5)


def test_never_extrapolates_outside_the_knots():
    times = np.array([1.0, 1.1, 1.2])
    positions = np.array([[0.0], [0.1], [0.2]])
    for method in ("linear", "cubic"):
        traj = KnotTrajectory(times, positions, method)
        pos, vel = traj.sample(5.0)
        assert pos[0] == pytest.approx(0.2) and vel[0] == 0.0
        pos, vel = traj.sample(1.2 + 1e-9)
        assert pos[0] == pytest.approx(0.2) and vel[0] == 0.0
        # Before the first action: the first knot, standing still (a line drawn back from it
        # would run 10 rad off for a chunk stamped 10 s ahead).
        for t in (0.95, 1.0 - 1e-9, -10.0):
            pos, vel = traj.sample(t)
            assert pos[0] == 0.0 and vel[0] == 0.0


def test_bad_knots_raise():
    with pytest.raises(ValueError, match="increase"):
        KnotTrajectory(np.array([0.0, 0.0]), np.zeros((2, 1)))
    with pytest.raises(ValueError, match="interpolation"):
        KnotTrajectory(np.array([0.0]), np.zeros((1, 1)), "quintic")


def test_hermite_correction_matches_start_and_vanishes_at_window_end():
    corr = HermiteCorrection(2.0, 0.1, np.array([0.3, -0.1]), np.array([1.0, 0.5]))
    pos, vel = corr.sample(2.0)
    np.testing.assert_allclose(pos, [0.3, -0.1])
    np.testing.assert_allclose(vel, [1.0, 0.5])
    pos, vel = corr.sample(2.1)
    np.testing.assert_allclose(pos, 0.0, atol=1e-15)
    np.testing.assert_allclose(vel, 0.0, atol=1e-15)
    # Documented bound on its second derivative.
    ts = np.linspace(2.0, 2.1, 2001)
    v = np.array([corr.sample(t)[1] for t in ts])
    accel = np.abs(np.diff(v, axis=0) / np.diff(ts)[:, None]).max(axis=0)
    bound = 6 * np.abs(corr.delta_position) / 0.01 + 4 * np.abs(corr.delta_velocity) / 0.1
    assert np.all(accel <= bound + 1e-6)


def test_chunk_time_of_and_reordering_by_name():
    chunk = Chunk(10.0, 0.05, 0.1, ("b", "a", "c"), np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
    assert chunk.time_of(0) == pytest.approx(10.05)
    assert chunk.time_of(1) == pytest.approx(10.15)
    ordered = chunk.reordered(["a", "b", "c"])
    np.testing.assert_array_equal(ordered.positions, [[2.0, 1.0, 3.0], [5.0, 4.0, 6.0]])
    assert ordered.joint_names == ("a", "b", "c")
    with pytest.raises(ValueError, match=r"missing \['d'\], unknown \['c'\]"):
        chunk.reordered(["a", "b", "d"])


def test_chunk_accepts_row_major_flat_positions():
    chunk = Chunk(0.0, 0.0, 0.1, ("a", "b"), np.arange(6.0))
    assert chunk.positions.shape == (3, 2)
    assert chunk.positions[1, 0] == 2.0
