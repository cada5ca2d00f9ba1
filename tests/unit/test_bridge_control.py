"""The trajectory bridge's e-stop, hold and reset answer as the driver's executor does."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hw_drivers.bridge_control import (
    MIN_STOP_TIME,
    OPERATOR_ESTOP,
    BridgeControl,
    StopBudget,
    budget_acceleration,
    stop_trajectory,
)
from hw_drivers.executor import (
    HOLD_RELEASED_IN_ESTOP,
    REJECT_HOLD,
    ChunkExecutor,
    ExecutorConfig,
)
from hw_drivers.jtc_model import bounds, check_trajectory, sample
from hw_drivers.safety import JointLimits, SafetyConfig

NAMES = ("a", "b")


def _executor() -> ChunkExecutor:
    limits = JointLimits(
        lower=(-1.0, -1.0), upper=(1.0, 1.0), max_velocity=(1.0, 1.0), max_acceleration=(5.0, 5.0)
    )
    executor = ChunkExecutor(NAMES, limits, SafetyConfig(), ExecutorConfig())
    executor.start(np.zeros(2), 0.0)
    return executor


def test_estop_and_hold_answer_with_the_executors_words():
    bridge, executor = BridgeControl(), _executor()
    assert bridge.hold(True) == executor.hold(True)
    assert bridge.state("idle") == "holding"
    assert bridge.hold(False) == executor.hold(False)
    assert bridge.refusal() == ""
    assert bridge.estop() == executor.estop()
    assert bridge.state("idle") == "estop"
    assert bridge.hold(False) == executor.hold(False)  # refused: the e-stop stays
    assert not bridge.hold(False)[0]
    assert bridge.refusal().startswith("estop:")
    bridge.hold(True)
    assert bridge.refusal().startswith("estop:")  # the e-stop wins over a hold


def test_the_estop_keeps_why_it_latched_until_reset():
    bridge = BridgeControl()
    assert bridge.estop_reason == ""
    bridge.estop()
    assert bridge.estop_reason == OPERATOR_ESTOP == "operator e-stop via ~/estop"
    bridge.estop("something else")  # the first reason stays while latched
    bridge.hold(False)
    assert bridge.estop_reason == OPERATOR_ESTOP
    assert not bridge.reset(measured=False)[0] and bridge.estop_reason == OPERATOR_ESTOP
    assert bridge.reset(measured=True)[0] and bridge.estop_reason == ""
    bridge.estop("a guard's reason")
    assert bridge.estop_reason == "a guard's reason"


def test_reset_clears_only_with_a_measured_pose():
    bridge = BridgeControl()
    bridge.estop()
    bridge.hold(True)
    ok, message = bridge.reset(measured=False)
    assert not ok and bridge.estopped and bridge.hold_requested
    ok, message = bridge.reset(measured=True)
    assert ok and "cleared e-stop, hold" in message
    assert bridge.refusal() == "" and bridge.state("idle") == "idle"


def test_stop_decelerates_at_the_acceleration_limit_and_never_comes_back():
    amax = np.array([2.0, 4.0])
    p, v = np.array([0.1, -0.2]), np.array([1.0, -0.4])
    stop = stop_trajectory(NAMES, p, v, amax, np.array([-1, -1]), np.array([1, 1]), 0.0)
    [point] = stop.points
    duration = point.time_from_start
    assert duration == pytest.approx(0.5)  # the slowest joint: 1.0 / 2.0
    assert point.velocities.tolist() == [0.0, 0.0]
    # The controller's cubic from (p, v) to (target, 0) over T: constant deceleration v / T,
    # within the limit, moving one way only.
    t = np.linspace(0.0, duration, 51)[:, None]
    target = point.positions
    a = (3 * (target - p) - 2 * v * duration) / duration**2
    b = (-2 * (target - p) + v * duration) / duration**3
    velocity = v + 2 * a * t + 3 * b * t**2
    assert np.all(velocity * np.sign(v) >= -1e-12)
    assert np.all(np.abs(2 * a + 6 * b * t) <= amax + 1e-9)


def test_stop_of_an_arm_at_rest_or_of_unknown_speed_holds_the_measured_pose():
    p = np.array([0.3, 0.9])
    for velocity in (None, np.array([np.nan, 0.0]), np.zeros(2)):
        stop = stop_trajectory(NAMES, p, velocity, np.ones(2), -np.ones(2), np.ones(2), 0.05)
        assert stop.points[0].positions.tolist() == p.tolist()
        assert stop.points[0].time_from_start == MIN_STOP_TIME
    # Never past a position limit.
    stop = stop_trajectory(NAMES, p, np.array([0.0, 2.0]), np.ones(2), -np.ones(2), np.ones(2), 0)
    assert stop.points[0].positions[1] == 1.0


# -- the stop from a start the controller took later than planned ---------------------------


def _stated_budget(v, amax, age, delay):
    """The start error the stop must absorb (docs/ros2_control_bridge.md), written out here
    rather than taken from the code under test: the arm moved on at most |v| delay / 2 either
    way around the planned moment, and its velocity changed by at most amax (age + delay)
    since the reading, adding amax (age + delay)^2 / 2 to the position."""
    tau = age + delay
    return np.abs(v) * delay / 2 + amax * tau**2 / 2, amax * tau


@st.composite
def _stops(draw):
    n = draw(st.integers(1, 3))
    floats = st.floats(allow_nan=False, allow_infinity=False)
    amax = np.array([draw(floats.filter(lambda x: 0.5 <= x <= 10.0)) for _ in range(n)])
    v = np.array([draw(st.floats(-2.0, 2.0)) for _ in range(n)])
    age = draw(st.floats(0.0, 0.1))
    delay = draw(st.floats(0.0, 0.05))
    min_time = draw(st.floats(0.0, 0.1))
    fe = np.array([draw(st.floats(-1.0, 1.0)) for _ in range(n)])
    fw = np.array([draw(st.floats(-1.0, 1.0)) for _ in range(n)])
    return amax, v, age, delay, min_time, fe, fw


@settings(max_examples=300, derandomize=True, deadline=None)
@given(_stops())
def test_the_stop_stays_within_the_acceleration_limit_from_any_start_within_the_budget(case):
    # Before: T = |v| / amax, exact only from the planned start; the controller starts from
    # the arm as it is when it takes the stop (later), which added 6 e / T^2 + 4 w / T.
    amax, v, age, delay, min_time, fe, fw = case
    n = v.size
    names = NAMES[:n] if n <= 2 else ("a", "b", "c")
    p = np.zeros(n)
    # Limits far enough for the stop to fit, close enough to matter (a few stop distances).
    lower, upper = np.full(n, -6.0), np.full(n, 6.0)
    stop = stop_trajectory(
        names, p, v, amax, lower, upper, min_time, StopBudget(state_age=age, start_delay=delay)
    )
    [point] = stop.points
    duration = point.time_from_start
    assert duration >= max(MIN_STOP_TIME, min_time)
    assert check_trajectory(stop, names) is None
    assert np.all(np.asarray(point.velocities) == 0.0)
    assert np.all((point.positions >= lower) & (point.positions <= upper))
    # The controller's start: off the planned one by up to the budget, either way.
    position_error, velocity_error = _stated_budget(v, amax, age, delay)
    start, start_v = p + fe * position_error, v + fw * velocity_error
    # Its reference over the stop, as joint_trajectory_controller samples it (jtc_model): the
    # acceleration of the cubic is linear in time, so the finite differences of its velocity
    # on a fine grid (midpoint values) bound it up to rounding.
    times = np.linspace(0.0, duration, 201)
    velocities = np.array([sample(stop, start, start_v, t)[1] for t in times])
    acceleration = np.diff(velocities, axis=0) / np.diff(times)[:, None]
    assert np.all(np.abs(acceleration) <= amax * (1 + 1e-6) + 1e-9), (
        np.abs(acceleration).max(axis=0),
        amax,
        duration,
    )
    assert np.all(sample(stop, start, start_v, duration + 1.0)[1] == 0.0)
    lowest, highest, _fastest = bounds(stop, start, start_v)
    assert np.all((lowest >= lower) & (highest <= upper))


def test_the_stop_is_lengthened_only_as_far_as_the_budget_needs():
    # At 0.3 rad/s and 2 rad/s^2 with a 10 ms old joint state and 20 ms until the controller
    # takes it: the root of 2 T^2 - (0.3 + 4 * 0.06) T - 6 * 0.0039 = 0.
    v, amax = np.array([0.3]), np.array([2.0])
    budget = StopBudget(state_age=0.01, start_delay=0.02)
    stop = stop_trajectory(("a",), np.zeros(1), v, amax, -np.ones(1), np.ones(1), 0.0, budget)
    duration = stop.points[0].time_from_start
    assert duration == pytest.approx((0.54 + math.sqrt(0.54**2 + 24 * 2.0 * 0.0039)) / 4.0)
    assert duration == pytest.approx(0.3080, abs=1e-4)  # 0.15 s without the budget
    # The stop is where constant deceleration from the planned start ends: v T / 2 on.
    assert stop.points[0].positions[0] == pytest.approx(0.3 * duration / 2)
    # The worst start within the budget is exactly at the limit: no longer than needed.
    e, w = _stated_budget(v, amax, 0.01, 0.02)
    start_acceleration = -v / duration - 6 * e / duration**2 - 4 * w / duration
    assert abs(start_acceleration[0]) == pytest.approx(2.0)


def test_an_old_joint_state_lengthens_the_stop_only_by_max_extension():
    # 1 rad/s from a joint state 0.5 s old (max_state_age): the full budget asks for a 2.9 s
    # stop, 1.4 rad on; an e-stop must stop the arm sooner than that.
    v, amax = np.array([1.0]), np.array([2.0])
    budget = StopBudget(state_age=0.5, start_delay=0.02)
    limits = (-10 * np.ones(1), 10 * np.ones(1))
    full = stop_trajectory(("a",), np.zeros(1), v, amax, *limits, 0.0, budget)
    assert full.points[0].time_from_start == pytest.approx(2.87, abs=0.01)
    cut = stop_trajectory(("a",), np.zeros(1), v, amax, *limits, 0.0, budget, 0.25)
    duration = cut.points[0].time_from_start
    assert duration == pytest.approx(0.5 + 0.25)  # |v| / amax, plus the extension
    assert cut.points[0].positions[0] == pytest.approx(1.0 * duration / 2)
    # What a start at the edge of the budget then needs is reported, above the limit...
    assert budget_acceleration(v, amax, budget, duration)[0] > 2.0
    # ...and within it for the stop the budget was free to size.
    full_duration = full.points[0].time_from_start
    assert budget_acceleration(v, amax, budget, full_duration)[0] == pytest.approx(2.0)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(_stops(), st.floats(0.0, 1.0))
def test_no_stop_is_longer_than_the_limit_allows_plus_max_extension(case, extension):
    amax, v, age, delay, min_time, _fe, _fw = case
    n = v.size
    names = NAMES[:n] if n <= 2 else ("a", "b", "c")
    limits = (np.full(n, -6.0), np.full(n, 6.0))
    budget = StopBudget(state_age=age, start_delay=delay, velocity_spread=0.3)
    stop = stop_trajectory(names, np.zeros(n), v, amax, *limits, min_time, budget, extension)
    at_the_limit = max(MIN_STOP_TIME, min_time, float(np.max(np.abs(v) / amax)))
    duration = stop.points[0].time_from_start
    assert at_the_limit - 1e-12 <= duration <= at_the_limit + extension + 1e-9
    unbounded = stop_trajectory(names, np.zeros(n), v, amax, *limits, min_time, budget)
    assert duration == pytest.approx(min(unbounded.points[0].time_from_start,
                                         at_the_limit + extension))


def test_while_inactive_chunks_are_refused_as_such_and_the_latches_wait_for_activation():
    """As the driver's ``ControlLoop.stopped``: an inactive bridge answered hold(false) and reset
    with "following chunks" / "the next chunk ramps in" and refused nothing itself (the node
    dropped chunks without a verdict); activation keeps what hold and reset set meanwhile."""
    from hw_drivers.control_loop import REJECT_STOPPED

    bridge = BridgeControl(stopped=True)
    assert bridge.refusal() == REJECT_STOPPED
    ok, message = bridge.hold(False)
    assert ok and "following" not in message and "inactive" in message
    ok, message = bridge.reset(measured=True)
    assert ok and "ramps in" not in message and "inactive" in message
    bridge.estop()
    assert bridge.refusal() == REJECT_STOPPED  # inactive first, as the driver orders them
    assert bridge.hold(False) == (False, HOLD_RELEASED_IN_ESTOP)
    bridge.hold(True)
    assert bridge.reset(measured=True)[0]
    bridge.hold(True)
    bridge.start()
    assert bridge.refusal() == REJECT_HOLD  # the hold set while inactive is still in force
    bridge.stop()
    assert bridge.hold(False)[0] and bridge.refusal() == REJECT_STOPPED
    bridge.start()
    assert bridge.refusal() == ""
