"""Safety limits changed while running: only inside the configured (hard) ones, and the
executor's next commands obey the new ones without a jump."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hw_drivers.chunk import Chunk
from hw_drivers.driver_params import DriverParams, live_limit_problems
from hw_drivers.executor import ChunkExecutor, ExecutorConfig
from hw_drivers.safety import JointLimits, SafetyConfig

NAMES = ("a", "b", "c")
TICK = 1.0 / 250.0
HARD = DriverParams(
    joint_names=NAMES,
    position_lower=(-1.0, -2.0, -3.0),
    position_upper=(1.0, 2.0, 3.0),
    max_velocity=(2.0, 2.0, 2.0),
    max_acceleration=(20.0, 20.0, 20.0),
    max_step_per_tick=0.03,
)


def change(**values) -> DriverParams:
    return dataclasses.replace(HARD, **values)


def test_tightening_is_accepted_and_the_hard_limits_themselves_too():
    assert live_limit_problems(HARD, HARD) == []
    tighter = change(
        position_lower=(-0.5, -2.0, -1.0),
        position_upper=(0.5, 1.0, 3.0),
        max_velocity=(0.5, 2.0, 1.0),
        max_acceleration=(5.0, 20.0, 1.0),
        max_step_per_tick=0.01,
    )
    assert live_limit_problems(HARD, tighter) == []


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"position_lower": (-1.1, -2.0, -3.0)}, "position_lower below the configured hard"),
        ({"position_upper": (1.0, 2.5, 3.0)}, "position_upper above the configured hard"),
        (
            {"position_lower": (0.5, -2.0, -3.0), "position_upper": (0.5, 2.0, 3.0)},
            ">= position_upper for a",
        ),
        ({"max_velocity": (2.0, 2.0, 2.1)}, "max_velocity above the configured hard limit for c"),
        ({"max_velocity": (0.0, 2.0, 2.0)}, "max_velocity must be > 0 for a"),
        ({"max_acceleration": (25.0, 20.0, 20.0)}, "max_acceleration above the configured"),
        ({"max_step_per_tick": 0.05}, "max_step_per_tick must be in (0, 0.03]"),
        ({"max_step_per_tick": 0.0}, "max_step_per_tick must be in"),
        ({"max_step_per_tick": float("nan")}, "max_step_per_tick must be in"),
        ({"max_velocity": (1.0, 1.0)}, "max_velocity needs 3 values"),
        ({"position_upper": (1.0, float("inf"), 3.0)}, "position_upper has non-finite"),
    ],
)
def test_anything_looser_or_malformed_is_refused_with_the_joint(values, needle):
    problems = live_limit_problems(HARD, change(**values))
    assert any(needle in p for p in problems), problems


@settings(max_examples=200, derandomize=True, deadline=None)
@given(
    st.lists(st.floats(-5, 5) | st.just(float("nan")), min_size=2, max_size=4),
    st.lists(st.floats(-5, 5) | st.just(float("inf")), min_size=3, max_size=3),
    st.lists(st.floats(-1, 5), min_size=3, max_size=3),
    st.floats(-0.1, 0.1) | st.just(float("nan")),
)
def test_every_accepted_change_lies_inside_the_hard_limits(lower, upper, velocity, step):
    changed = change(
        position_lower=tuple(lower),
        position_upper=tuple(upper),
        max_velocity=tuple(velocity),
        max_step_per_tick=step,
    )
    if live_limit_problems(HARD, changed):
        return
    assert np.all(np.asarray(lower) >= HARD.position_lower)
    assert np.all(np.asarray(upper) <= HARD.position_upper)
    assert np.all(np.asarray(lower) < np.asarray(upper))
    assert np.all((np.asarray(velocity) > 0) & (np.asarray(velocity) <= HARD.max_velocity))
    assert 0 < step <= HARD.max_step_per_tick


def _executor() -> ChunkExecutor:
    safety = SafetyConfig(max_step_per_tick=0.03, ramp_in_time=0.0, watchdog_timeout=10.0)
    return ChunkExecutor(NAMES, HARD.limits(), safety, ExecutorConfig(interpolation="linear"))


def test_tighter_limits_bind_the_next_ticks_without_a_jump():
    executor = _executor()
    executor.start(np.zeros(3), 0.0)
    # A chunk sweeping every joint up at 1.5 rad/s for 0.63 s (to 0.95 rad).
    horizon, step_dt = 20, 1.0 / 30.0
    positions = 1.5 * step_dt * np.arange(horizon)[:, None] * np.ones(3)
    now = 0.0
    assert executor.submit(Chunk(now, 0.0, step_dt, NAMES, positions), now, np.zeros(3)).accepted
    commands = []
    for _ in range(100):  # 0.4 s at the hard limits
        now += TICK
        commands.append(executor.tick(now, np.zeros(3)).positions)
    before = commands[-1].copy()
    assert before[0] > 0.5
    tighter = JointLimits(
        lower=np.full(3, -1.0),
        upper=np.array([0.3, 2.0, 3.0]),  # joint a is already past its new upper limit
        max_velocity=np.full(3, 0.5),
        max_acceleration=np.full(3, 20.0),
    )
    executor.set_limits(tighter, 0.01)
    for _ in range(250):
        now += TICK
        commands.append(executor.tick(now, np.zeros(3)).positions)
    after = np.asarray(commands[99:])
    steps = np.abs(np.diff(after, axis=0))
    assert steps.max() <= 0.5 * TICK + 1e-9  # the new speed limit, from the first tick on
    # Joint a is brought back inside its new range, never jumped there; b and c stay in theirs.
    assert after[-1][0] <= 0.3 + 1e-9
    assert np.all(after[:, 1:] <= np.array([2.0, 3.0]))
