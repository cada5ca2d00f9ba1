"""One test per safety rule, each checking the rejection reason."""

from __future__ import annotations

import numpy as np
import pytest

from hw_drivers.chunk import Chunk
from hw_drivers.safety import JointLimits, SafetyConfig, clamp_command, validate_chunk

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


def test_clamp_position_limits():
    command, clamped = clamp_command(
        np.array([1.5, 0.0, 0.5]), np.array([0.99, 0.0, 0.5]), LIMITS, CONFIG, 0.01
    )
    assert clamped and command[0] == pytest.approx(1.0)


def test_clamp_per_tick_step():
    config = SafetyConfig(max_step_per_tick=0.01)
    command, clamped = clamp_command(
        np.array([0.5, -0.5, 0.5]), np.zeros(3), LIMITS, config, 0.1
    )
    assert clamped
    np.testing.assert_allclose(command, [0.01, -0.01, 0.01])


def test_clamp_velocity_limit():
    command, clamped = clamp_command(
        np.array([0.02, 0.0, 0.0]), np.zeros(3), LIMITS, CONFIG, 0.004
    )
    assert clamped and command[0] == pytest.approx(2.0 * 0.004)


def test_clamp_acceleration_limits_speed_growth_but_not_stopping():
    dt = 0.004
    command, clamped = clamp_command(
        np.array([0.008, 0.0, 0.0]), np.zeros(3), LIMITS, CONFIG, dt, previous_velocity=np.zeros(3)
    )
    assert clamped and command[0] == pytest.approx(20.0 * dt * dt)
    # Moving at 2 rad/s, a hold target stops it at once (never limited, no overshoot).
    command, clamped = clamp_command(
        np.zeros(3), np.zeros(3), LIMITS, CONFIG, dt, previous_velocity=np.array([2.0, 0, 0])
    )
    assert not clamped and command[0] == 0.0


def test_clamp_leaves_a_safe_target_alone():
    target = np.array([0.001, 0.0, 0.5])
    command, clamped = clamp_command(
        target,
        np.array([0.0, 0.0, 0.5]),
        LIMITS,
        CONFIG,
        0.004,
        previous_velocity=np.array([0.25, 0.0, 0.0]),
    )
    assert not clamped
    np.testing.assert_array_equal(command, target)


def test_limits_of_unequal_length_raise():
    with pytest.raises(ValueError, match="different lengths"):
        JointLimits(np.zeros(2), np.ones(3), np.ones(3), np.ones(3))
