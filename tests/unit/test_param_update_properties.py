"""Parameter values as a ROS user or a buggy neighbour can send them (``ros2 param set``, a
params file), through the one place each passes: ``coerce_param`` (types), every params
dataclass's ``validate`` (values) and the driver's ``live_update`` (what may change live).

Values are drawn from everything a ROS parameter can hold: bools, 64-bit ints, floats with
NaN/inf, strings with odd characters, arrays of each (empty, wrong length). CI runs a bounded
number of derandomized examples.
"""

from __future__ import annotations

import dataclasses
import math
import typing

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hw_drivers.driver_params import LIVE_LIMITS, LIVE_PARAMS, DriverParams, live_update
from hw_drivers.trajectory_bridge_params import TrajectoryBridgeParams
from molmoact2.foxglove_node import FoxgloveParams
from molmoact2.recorder_node import RecorderParams
from molmoact2.sim_camera_node import SimCameraParams
from molmoact2.tf_node import TfParams
from molmoact2_common.ros_params import (
    ParamTypeError,
    coerce_param,
    finite_problems,
    topic_name_problem,
)
from molmoact2_policy.depth_cache_params import DepthCacheParams
from molmoact2_policy.policy_node_params import PolicyNodeParams
from tests.rostest_util import REPO_ROOT

CI = settings(
    max_examples=200,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
ALL_PARAMS = (
    DriverParams,
    TrajectoryBridgeParams,
    PolicyNodeParams,
    DepthCacheParams,
    RecorderParams,
    SimCameraParams,
    FoxgloveParams,
    TfParams,
)

# What a ROS parameter can hold (rcl_interfaces/ParameterValue).
scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12),
)
ros_values = st.one_of(
    scalars,
    st.lists(st.booleans(), max_size=8),
    st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=8),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=8),
    st.lists(st.text(max_size=6), max_size=8),
)


def _driver() -> DriverParams:
    data = yaml.safe_load((REPO_ROOT / "config" / "so101.yaml").read_text())
    values = {**data["/**"]["ros__parameters"], **data["/**/so101_driver"]["ros__parameters"]}
    names = {f.name for f in dataclasses.fields(DriverParams)}
    return DriverParams(
        **{k: coerce_param(DriverParams, k, v) for k, v in values.items() if k in names}
    )


HARD = _driver()


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


@CI
@given(data=st.data(), value=ros_values)
def test_coerce_param_returns_the_field_type_or_names_the_parameter(data, value):
    cls = data.draw(st.sampled_from(ALL_PARAMS))
    name = data.draw(st.sampled_from(_field_names(cls)))
    hint = typing.get_type_hints(cls)[name]
    try:
        coerced = coerce_param(cls, name, value)
    except ParamTypeError as err:
        assert name in str(err)
        return
    if typing.get_origin(hint) is tuple:
        kind = typing.get_args(hint)[0]
        assert isinstance(coerced, tuple)
        assert all(type(v) is kind for v in coerced)
    else:
        assert type(coerced) is hint


def test_coerce_param_cases():
    assert coerce_param(DriverParams, "control_rate", 250) == 250.0
    assert coerce_param(DriverParams, "max_velocity", [3, 3.5]) == (3.0, 3.5)
    for name, value in [
        ("control_rate", "fast"),
        ("control_rate", True),
        ("max_step_per_tick", [0.1]),
        ("max_velocity", "3.0"),
        ("max_velocity", [1.0, "a"]),
        ("joint_names", 5),
        ("joint_names", "j1"),
        ("seed", 1.5),
        ("dry_run", "yes"),
        ("dry_run", 1),
    ]:
        with pytest.raises(ParamTypeError, match=name):
            coerce_param(DriverParams, name, value)


@CI
@given(data=st.data(), bad=st.sampled_from([math.nan, math.inf, -math.inf]))
def test_every_float_parameter_refuses_nan_and_inf(data, bad):
    cls = data.draw(st.sampled_from(ALL_PARAMS))
    floats = [
        f.name
        for f in dataclasses.fields(cls)
        if typing.get_type_hints(cls)[f.name] in (float, tuple[float, ...])
    ]
    if not floats:
        return
    name = data.draw(st.sampled_from(floats))
    value = (bad,) if isinstance(getattr(cls(), name), tuple) else bad
    params = dataclasses.replace(cls(), **{name: value})
    assert any(name in p for p in params.validate()), (cls.__name__, name)
    assert finite_problems(params) == [f"{name} must be finite, got {value}"]


# Plausible live changes too, so that many are accepted: per-joint lists in and around the
# configured limits, step sizes around the configured one, the real execution words.
def _plausible(name: str) -> st.SearchStrategy:
    # Fractions of the configured range: mostly inside it, sometimes just outside.
    fractions = st.lists(
        st.floats(-0.05, 1.0).map(lambda f: max(f, 0.0) if f > -0.01 else f),
        min_size=6,
        max_size=6,
    )
    lower, upper = np.array(HARD.position_lower), np.array(HARD.position_upper)
    if name == "position_lower":
        return fractions.map(lambda f: list(lower + 0.4 * np.array(f) * (upper - lower)))
    if name == "position_upper":
        return fractions.map(lambda f: list(upper - 0.4 * np.array(f) * (upper - lower)))
    if name in ("max_velocity", "max_acceleration"):
        return fractions.map(lambda f: list(np.array(f) * np.array(getattr(HARD, name))))
    if name == "max_step_per_tick":
        return st.floats(-0.3, 1.3).map(lambda f: f * HARD.max_step_per_tick)
    if name == "execution":
        return st.sampled_from(["auto", "shadow", "live", "Live"])
    return st.sampled_from(["both", "left"])


@st.composite
def live_changes(draw) -> dict:
    names = draw(st.lists(st.sampled_from(LIVE_PARAMS), min_size=1, max_size=3))
    if draw(st.integers(0, 4)) == 0:  # now and then a parameter that is not live
        names.append(draw(st.sampled_from(_field_names(DriverParams))))
    # One in six values is anything ROS can carry; the rest plausible.
    return {
        name: draw(ros_values if draw(st.integers(0, 5)) == 5 else _plausible(name))
        for name in names
    }


ACCEPTED: list[dict] = []


@CI
@given(changes=live_changes())
def test_live_update_never_raises_and_keeps_every_accepted_limit_inside_the_hard_ones(changes):
    updated, problems = live_update(HARD, HARD, changes)
    if updated is None:
        assert problems and all(isinstance(p, str) and p for p in problems)
        return
    assert not problems
    ACCEPTED.append(changes)
    assert set(changes) <= set(LIVE_PARAMS)
    # The sim start pose may fall outside tightened limits: it only matters at start, and a
    # command outside them is moved inside by the guard (ChunkExecutor.set_limits).
    problems = [p for p in updated.validate() if not p.startswith("initial_positions")]
    assert problems == [], problems
    lower, upper = np.array(updated.position_lower), np.array(updated.position_upper)
    assert np.all(lower >= np.array(HARD.position_lower))
    assert np.all(upper <= np.array(HARD.position_upper))
    assert np.all(lower < upper)
    for name in ("max_velocity", "max_acceleration"):
        value = np.array(getattr(updated, name))
        assert np.all((value > 0) & (value <= np.array(getattr(HARD, name))))
    assert 0 < updated.max_step_per_tick <= HARD.max_step_per_tick
    for name in _field_names(DriverParams):
        if name not in changes:
            assert getattr(updated, name) == getattr(HARD, name)


def test_the_property_run_accepted_some_changes():
    # The property above proves nothing if every drawn change was refused.
    if not ACCEPTED:  # run alone (-k): run the property here
        test_live_update_never_raises_and_keeps_every_accepted_limit_inside_the_hard_ones()
    assert len(ACCEPTED) >= 20, len(ACCEPTED)


def test_live_update_cases():
    tighter = [v / 2 for v in HARD.max_velocity]
    updated, problems = live_update(HARD, HARD, {"max_velocity": tighter, "execution": "shadow"})
    assert problems == [] and updated.max_velocity == tuple(tighter)
    assert updated.execution == "shadow"
    # A batch is all or nothing: one refused entry refuses the others.
    updated, problems = live_update(HARD, HARD, {"max_velocity": tighter, "control_rate": 50})
    assert updated is None and "control_rate is read at start" in problems[0]
    _, problems = live_update(HARD, HARD, {"max_step_per_tick": "abc"})
    assert problems == ["max_step_per_tick must be a number, got 'abc'"]
    _, problems = live_update(HARD, HARD, {"max_step_per_tick": [0.01]})
    assert problems == ["max_step_per_tick must be a number, got [0.01]"]
    _, problems = live_update(HARD, HARD, {"max_velocity": [1.0] * 10**6})
    assert problems == ["max_velocity needs 6 values (one per joint), got 1000000"]
    # The control loop's time source is fixed; other rclpy parameters are not ours.
    updated, problems = live_update(HARD, HARD, {"use_sim_time": True})
    assert updated is None and "use_sim_time is fixed" in problems[0]
    updated, problems = live_update(HARD, HARD, {"qos_overrides./x.publisher.depth": 5})
    assert updated == HARD and problems == []
    assert set(LIVE_LIMITS) < set(LIVE_PARAMS)


@pytest.mark.parametrize(
    ("cls", "name", "value"),
    [
        (DriverParams, "chunk_topic", "bad topic!"),
        (DriverParams, "camera_topics", ("cameras/front", "a//b")),
        (TrajectoryBridgeParams, "trajectory_topic", "1controller/joint_trajectory"),
        (PolicyNodeParams, "joint_state_topics", ("joint_states/",)),
        (RecorderParams, "topics", ("ok", "not ok")),
        (FoxgloveParams, "topics", ("~x",)),
        (TfParams, "joint_states_topic", "joint states"),
    ],
)
def test_every_topic_parameter_must_be_a_ros_name(cls, name, value):
    problems = dataclasses.replace(cls(), **{name: value}).validate()
    assert any(p.startswith(f"{name}: ") and "is not a ROS topic name" in p for p in problems)


def test_the_shipped_configs_have_valid_topic_names():
    for robot in ("yam", "so101", "droid"):
        data = yaml.safe_load((REPO_ROOT / "config" / f"{robot}.yaml").read_text())
        for section in data.values():
            for key, value in section.get("ros__parameters", {}).items():
                if key.endswith(("_topic", "_topics")) or key == "topics":
                    for name in value if isinstance(value, list) else [value]:
                        assert not name or not topic_name_problem(name), (robot, key, name)


@pytest.mark.parametrize(
    ("transports", "word"),
    [(("raw",), "1 camera_transports for 2 camera_names"), (("raw", "jpeg"), "['jpeg']")],
)
def test_driver_camera_transports_match_the_cameras(transports, word):
    params = dataclasses.replace(
        HARD, camera_names=("a", "b"), camera_topics=("x", "y"), camera_transports=transports
    )
    assert any(word in p for p in params.validate())
