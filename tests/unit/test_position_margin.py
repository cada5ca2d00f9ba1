"""``position_margin``: a chunk point slightly outside a joint's limits runs at the limit.

A flow-matching policy's gripper output overshoots its normalised 0..1 when it closes or opens
fully; the released YAM deployment (allenai/molmoact2, examples/yam/launch_yaml_eval_molmoact.py)
accepts gripper targets in [-0.05, 1.05]. Refusing such a chunk whole stalled the arm on every
full grasp. The margin only decides refuse-or-clip: no command ever leaves [lower, upper].
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hw_drivers.chunk import Chunk
from hw_drivers.driver_params import DriverParams
from hw_drivers.executor import ChunkExecutor, ExecutorConfig
from hw_drivers.safety import JointLimits, SafetyConfig, check_chunk_limits, clip_into
from hw_drivers.trajectory_bridge_params import TrajectoryBridgeParams
from tests.command_invariants import CommandChecker
from tests.driver_config import config_driver_params, driver_section, joint_names

NAMES = ("arm", "gripper")
LOWER = np.array([-1.0, 0.0])
UPPER = np.array([1.0, 1.0])
VMAX = np.array([2.0, 10.0])
AMAX = np.array([20.0, 200.0])
MAX_STEP = 0.03
RATE = 250.0
STEP = 1 / 30
T0 = 1.7e9
CI = settings(
    max_examples=150,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def limits(margin=(0.0, 0.05)) -> JointLimits:
    return JointLimits(LOWER, UPPER, VMAX, AMAX, margin=np.array(margin))


def executor(margin=(0.0, 0.05)) -> ChunkExecutor:
    safety = SafetyConfig(
        max_step_per_tick=MAX_STEP,
        ramp_in_time=0.0,
        watchdog_timeout=5.0,
        min_step_dt=1 / RATE,
        max_step_dt=1.0,
    )
    return ChunkExecutor(NAMES, limits(margin), safety, ExecutorConfig(blend_window=0.0))


def gripper_closing(start: float, end: float, horizon: int = 30) -> np.ndarray:
    """The arm still at 0.2, the gripper going from ``start`` to ``end``."""
    return np.column_stack([np.full(horizon, 0.2), np.linspace(start, end, horizon)])


def run(ex: ChunkExecutor, rows: np.ndarray, measured: np.ndarray, seconds: float = 1.2):
    """Submit ``rows`` stamped now and tick through them; (accepted, reason, commands)."""
    now = T0
    ex.start(measured, now)
    result = ex.submit(Chunk(now, 0.0, STEP, NAMES, rows), now, measured)
    commands = []
    for _ in range(round(seconds * RATE)):
        now += 1 / RATE
        commands.append(ex.tick(now, measured).positions)
    return result.accepted, result.reason, np.array(commands)


def test_a_gripper_overshoot_within_the_margin_runs_and_closes_at_the_limit():
    measured = np.array([0.2, 0.3])
    accepted, reason, commands = run(executor(), gripper_closing(0.3, -0.04), measured)
    assert accepted, reason
    assert commands[:, 1].min() == 0.0  # closed fully, never commanded below its limit
    assert commands[-1, 1] == 0.0


def test_without_a_margin_the_same_chunk_is_refused_whole_as_before():
    measured = np.array([0.2, 0.3])
    accepted, reason, commands = run(executor((0.0, 0.0)), gripper_closing(0.3, -0.04), measured)
    assert not accepted
    assert reason.startswith("position_limit: joint gripper")
    np.testing.assert_array_equal(commands[-1], measured)  # nothing moved


def test_beyond_the_margin_is_refused_and_the_reason_names_the_margin():
    accepted, reason, _ = run(executor(), gripper_closing(0.3, -0.08), np.array([0.2, 0.3]))
    assert not accepted
    assert reason.startswith("position_limit: joint gripper") and "(margin 0.05)" in reason


def test_a_joint_without_margin_is_still_refused_just_outside():
    rows = gripper_closing(0.5, 0.5)
    rows[-1, 0] = 1.0 + 1e-6
    accepted, reason, _ = run(executor(), rows, np.array([0.2, 0.5]))
    assert not accepted and reason.startswith("position_limit: joint arm")


def test_clip_into_leaves_a_chunk_inside_the_limits_untouched():
    inside = Chunk(T0, 0.0, STEP, NAMES, gripper_closing(0.3, 0.0))
    assert clip_into(inside, limits()) is inside
    outside = Chunk(T0, 0.0, STEP, NAMES, gripper_closing(1.04, -0.04))
    clipped = clip_into(outside, limits())
    assert clipped.positions[:, 1].min() == 0.0 and clipped.positions[:, 1].max() == 1.0
    inside_rows = (outside.positions[:, 1] >= 0.0) & (outside.positions[:, 1] <= 1.0)
    assert 0 < inside_rows.sum() < outside.horizon
    np.testing.assert_array_equal(clipped.positions[inside_rows], outside.positions[inside_rows])
    np.testing.assert_array_equal(clipped.positions[:, 0], outside.positions[:, 0])


@pytest.mark.parametrize("margin", [[0.0, -0.01], [0.0, float("nan")], [0.0, float("inf")], [0.1]])
def test_limits_refuse_a_negative_non_finite_or_short_margin(margin):
    with pytest.raises(ValueError):
        limits(margin)


@pytest.mark.parametrize("params_cls", [DriverParams, TrajectoryBridgeParams])
@pytest.mark.parametrize(
    ("margin", "problem"),
    [
        ((0.05,), "position_margin has 1 values for 2 joints"),
        ((0.0, -0.05), "position_margin must be finite and >= 0"),
        ((0.0, float("nan")), "position_margin must be finite and >= 0"),
    ],
)
def test_params_refuse_a_margin_that_does_not_fit(params_cls, margin, problem):
    base = {
        "joint_names": NAMES,
        "position_lower": tuple(LOWER),
        "position_upper": tuple(UPPER),
        "max_velocity": tuple(VMAX),
        "max_acceleration": tuple(AMAX),
    }
    assert not any("position_margin" in p for p in params_cls(**base).validate())
    problems = params_cls(**base, position_margin=margin).validate()
    assert any(p.startswith(problem) for p in problems), problems


@pytest.mark.parametrize("robot", ["yam", "so101"])
def test_shipped_configs_give_grippers_the_released_margin_and_arms_none(robot):
    names = joint_names(robot)
    params = config_driver_params(robot)
    assert params.validate() == []
    margin = params.limits().margin
    expected = [0.05 if name.endswith("gripper") else 0.0 for name in names]
    np.testing.assert_array_equal(margin, expected)
    assert "position_margin" in driver_section(robot)


# -- properties -------------------------------------------------------------------------------
_value = st.floats(-1.2, 1.2)


@CI
@given(
    rows=st.lists(st.tuples(_value, _value), min_size=1, max_size=40),
    margin=st.tuples(st.sampled_from([0.0, 0.02, 0.2]), st.sampled_from([0.0, 0.05, 0.3])),
)
def test_accepted_exactly_inside_the_margin_and_clipped_into_the_limits(rows, margin):
    lim = limits(margin)
    # Velocity limits out of the way: this is about positions only.
    lim = JointLimits(LOWER, UPPER, [1e9, 1e9], AMAX, margin=lim.margin)
    chunk = Chunk(T0, 0.0, STEP, NAMES, np.array(rows))
    positions = chunk.positions
    slack = 1e-9  # the check's rounding allowance
    inside = np.all(
        (positions >= LOWER - lim.margin - slack) & (positions <= UPPER + lim.margin + slack)
    )
    reason = check_chunk_limits(chunk, NAMES, lim)
    assert (reason is None) == bool(inside), reason
    clipped = clip_into(chunk, lim).positions
    assert np.all((clipped >= LOWER) & (clipped <= UPPER))
    kept = (positions >= LOWER) & (positions <= UPPER)
    np.testing.assert_array_equal(clipped[kept], positions[kept])


@CI
@given(
    start=st.tuples(st.floats(-0.4, 0.4), st.floats(0.0, 1.0)),
    targets=st.lists(
        st.tuples(st.floats(-1.1, 1.1), st.floats(-0.1, 1.1), st.integers(2, 40)),
        min_size=1,
        max_size=6,
    ),
    margin=st.tuples(st.sampled_from([0.0, 0.05]), st.sampled_from([0.0, 0.05, 0.1])),
)
def test_commands_stay_inside_the_limits_whatever_the_margin_accepts(start, targets, margin):
    """Chunks sweeping towards targets in and beyond the margin band, each run for a while:
    every command obeys the command invariants of the un-widened limits."""
    ex = executor(margin)
    check = CommandChecker(LOWER, UPPER, VMAX, AMAX, MAX_STEP)
    now, measured = T0, np.array(start)
    ex.start(measured, now)
    for arm, grip, horizon in targets:
        command = ex.last_command if ex.last_command is not None else measured
        rows = np.linspace(command, [arm, grip], horizon)
        ex.submit(Chunk(now, 0.0, STEP, NAMES, rows), now, measured)
        for _ in range(round(horizon * STEP * RATE) + 10):
            now += 1 / RATE
            out = ex.tick(now, measured)
            problems = check.check(now, out.positions)
            assert not problems, problems
            measured = out.positions
