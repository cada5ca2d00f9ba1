"""One test per safety rule, each checking the rejection reason."""

from __future__ import annotations

import numpy as np
import pytest

from hw_drivers.chunk import Chunk
from hw_drivers.safety import (
    CommandGuard,
    JointLimits,
    SafetyConfig,
    step_dt_bounds,
    validate_chunk,
    validate_timing,
)

NAMES = ("j1", "j2", "gripper")
LIMITS = JointLimits(
    lower=np.array([-1.0, -2.0, 0.0]),
    upper=np.array([1.0, 2.0, 1.0]),
    max_velocity=np.array([2.0, 2.0, 4.0]),
    max_acceleration=np.array([20.0, 20.0, 30.0]),
)
CONFIG = SafetyConfig(max_step_per_tick=0.03, max_start_deviation=0.5)
MEASURED = np.array([0.0, 0.0, 0.5])


def _chunk(positions, names=NAMES, step_dt=0.1) -> Chunk:
    return Chunk(0.0, 0.0, step_dt, names, np.asarray(positions, dtype=float))


def _ok_positions(h=5):
    return np.tile(MEASURED, (h, 1)) + np.linspace(0, 0.1, h)[:, None]


def test_a_good_chunk_passes():
    assert validate_chunk(_chunk(_ok_positions()), NAMES, LIMITS, MEASURED, CONFIG) is None


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_reject_the_chunk(bad):
    positions = _ok_positions()
    positions[3, 1] = bad
    reason = validate_chunk(_chunk(positions), NAMES, LIMITS, MEASURED, CONFIG)
    assert reason.startswith("non_finite:") and "step 3 joint j2" in reason


def test_wrong_joint_set_rejects_the_chunk():
    reason = validate_chunk(
        _chunk(_ok_positions(), names=("j1", "j2", "wrist")), NAMES, LIMITS, MEASURED, CONFIG
    )
    assert reason.startswith("joint_set:")
    assert "missing ['gripper']" in reason and "unknown ['wrist']" in reason


def test_wrong_number_of_columns_rejects_the_chunk():
    reason = validate_chunk(_chunk(np.zeros((4, 2)), names=NAMES), NAMES, LIMITS, None, CONFIG)
    assert reason.startswith("shape:")


def test_position_outside_limits_rejects_the_chunk():
    positions = _ok_positions()
    positions[4, 2] = 1.2
    reason = validate_chunk(_chunk(positions), NAMES, LIMITS, MEASURED, CONFIG)
    assert reason.startswith("position_limit:") and "gripper at step 4" in reason


def test_step_beyond_velocity_limit_rejects_the_chunk():
    positions = _ok_positions()
    positions[2:, 0] += 0.25  # 0.25 rad in 0.1 s = 2.5 rad/s > 2.0
    reason = validate_chunk(_chunk(positions), NAMES, LIMITS, MEASURED, CONFIG)
    assert reason.startswith("velocity_limit:") and "j1 from step 1 to 2" in reason


def test_first_applicable_point_far_from_measured_rejects_the_chunk():
    positions = _ok_positions() + np.array([0.0, 0.6, 0.0])
    reason = validate_chunk(_chunk(positions), NAMES, LIMITS, MEASURED, CONFIG)
    assert reason.startswith("start_deviation:") and "joint j2" in reason
    # Only the first *executed* action counts: the earlier ones are skipped for latency.
    positions = _ok_positions(6)
    positions[:2, 1] = 0.7
    positions[2, 1] = 0.5  # the rest of the chunk moves within velocity limits
    positions[3:, 1] = np.linspace(0.35, 0.05, 3)
    assert validate_chunk(_chunk(positions), NAMES, LIMITS, MEASURED, CONFIG, first_index=5) is None
    reason = validate_chunk(_chunk(positions), NAMES, LIMITS, MEASURED, CONFIG, first_index=0)
    assert reason.startswith("start_deviation:")


def _guard(previous, config=CONFIG) -> CommandGuard:
    guard = CommandGuard(LIMITS, config)
    guard.start(np.asarray(previous, dtype=float), now=0.0)
    return guard


def test_guard_position_limits():
    guard = _guard([0.99, 0.0, 0.5])
    reached = [guard.apply(np.array([1.5, 0.0, 0.5]), np.zeros(3), 0.01 * k) for k in range(1, 20)]
    assert all(out.clamped and out.positions[0] <= 1.0 for out in reached)
    assert reached[-1].positions[0] == pytest.approx(1.0)


def test_guard_per_tick_step():
    config = SafetyConfig(max_step_per_tick=0.01)
    guard = _guard(np.zeros(3), config)
    for k in range(1, 4):  # accelerate past the acceleration rule, then the step rule binds
        out = guard.apply(np.array([0.5, -0.5, 0.5]), np.zeros(3), 0.1 * k)
    assert out.clamped
    np.testing.assert_allclose(out.positions, [0.03, -0.03, 0.03])


def test_guard_velocity_limit():
    guard = _guard(np.zeros(3))
    t = 0.0
    for _ in range(100):
        t += 0.004
        out = guard.apply(np.array([0.9, 0.0, 0.5]), np.zeros(3), t)
    assert out.clamped
    assert np.abs(guard.velocity[0]) == pytest.approx(2.0)


def test_guard_acceleration_limits_speed_growth_but_not_stopping():
    dt = 0.004
    guard = _guard(np.zeros(3))
    out = guard.apply(np.array([0.008, 0.0, 0.0]), np.zeros(3), dt)
    assert out.clamped and out.positions[0] == pytest.approx(20.0 * dt * dt)
    t = dt
    while guard.velocity[0] < 2.0 - 1e-9:  # up to full speed within the rules
        t += dt
        out = guard.apply(np.array([0.9, 0.0, 0.0]), np.zeros(3), t)
    # Moving at 2 rad/s, a hold stops it at once (never limited, no overshoot).
    here = out.positions.copy()
    stopped = guard.apply(here, np.zeros(3), t + dt)
    assert not stopped.clamped
    np.testing.assert_array_equal(stopped.positions, here)
    # Reversing counts from zero speed.
    back = guard.apply(here - 0.5, np.zeros(3), t + 2 * dt)
    assert back.positions[0] == pytest.approx(here[0] - 20.0 * dt * dt)


def test_guard_leaves_a_safe_target_alone():
    guard = _guard(np.array([0.0, 0.0, 0.5]))
    target = np.array([0.001, 0.0, 0.5])
    out = guard.apply(target, np.array([0.25, 0.0, 0.0]), 0.01)
    assert not out.clamped
    np.testing.assert_array_equal(out.positions, target)
    np.testing.assert_array_equal(out.velocities, [0.25, 0.0, 0.0])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_guard_non_finite_request_is_a_fault_that_holds(bad):
    guard = _guard(np.array([0.1, 0.2, 0.3]))
    out = guard.apply(np.array([0.1, bad, 0.3]), np.zeros(3), 0.01)
    assert out.fault.startswith("non_finite:")
    np.testing.assert_array_equal(out.positions, [0.1, 0.2, 0.3])
    np.testing.assert_array_equal(guard.position, [0.1, 0.2, 0.3])


def test_guard_started_outside_the_limits_only_moves_towards_them():
    guard = _guard(np.array([1.2, 0.0, 0.5]))  # j1 upper limit is 1.0
    positions, t = [], 0.0
    for _ in range(200):
        t += 0.01
        positions.append(guard.apply(np.array([1.5, 0.0, 0.5]), np.zeros(3), t).positions[0])
    assert np.all(np.diff(positions) <= 0) and positions[-1] == pytest.approx(1.0)


def test_guard_holds_when_the_clock_steps_back():
    guard = _guard(np.zeros(3))
    guard.apply(np.full(3, 0.001), np.zeros(3), 1.0)
    out = guard.apply(np.full(3, 0.5), np.zeros(3), 0.5)
    assert np.all(out.velocities == 0)
    np.testing.assert_array_equal(out.positions, guard.position)


# -- the time domain ------------------------------------------------------------------------


def test_step_dt_bounds_follow_the_control_and_chunk_rates():
    assert step_dt_bounds(100.0, 30.0) == pytest.approx((0.01, 4 / 30))
    assert step_dt_bounds(250.0, 30.0) == pytest.approx((1 / 120, 4 / 30))
    assert step_dt_bounds(100.0) == pytest.approx((0.01, 1.0))


TIMING = SafetyConfig(min_step_dt=0.01, max_step_dt=0.2, max_chunk_duration=3.0,
                      max_chunk_lead=0.25, max_chunk_age=2.0)


@pytest.mark.parametrize(
    ("stamp", "offset", "step_dt", "horizon", "code"),
    [
        (100.0, 0.0, 1e-9, 10, "timing:"),
        (100.0, 0.0, 1e308, 10, "timing:"),
        (100.0, 0.0, 0.1, 40, "timing:"),  # 4 s of actions
        (100.0, -0.5, 0.1, 10, "timing:"),
        (110.0, 0.0, 0.1, 10, "future:"),
        (100.0, 0.3, 0.1, 10, "future:"),
        (97.0, 0.0, 0.1, 10, "stale:"),
        (np.nan, 0.0, 0.1, 10, "non_finite:"),
        (100.0, 0.0, np.inf, 10, "non_finite:"),
    ],
)
def test_timing_rules_reject_with_a_reason(stamp, offset, step_dt, horizon, code):
    chunk = Chunk(stamp, offset, step_dt, NAMES, np.zeros((horizon, 3)))
    reason = validate_timing(chunk, 100.0, TIMING)
    assert reason is not None and reason.startswith(code), reason


def test_timing_accepts_a_normal_chunk():
    chunk = Chunk(99.9, 1 / 30, 1 / 30, NAMES, np.zeros((30, 3)))
    assert validate_timing(chunk, 100.0, TIMING) is None


def test_limits_of_unequal_length_raise():
    with pytest.raises(ValueError, match="different lengths"):
        JointLimits(np.zeros(2), np.ones(3), np.ones(3), np.ones(3))
