"""A robot config with any value in any key is either launched or refused with a ConfigError
naming the file: never another exception from inside the bringup.

An outside-in sweep of config/*.yaml (every key of every section set to null, a string, a
number, a list, a mapping...) found 663 of 3,718 cases failing with a TypeError or
AttributeError ("object of type 'NoneType' has no len()") instead: a key left empty in YAML
(`max_velocity:`) is null, and nothing checked types before the lengths were compared and the
values validated. Both launch paths go through ``load_robot_config``, ``build_graph`` and
``check_graph``, so that is what is exercised here.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from molmoact2 import graph

ROBOTS = ("yam", "so101", "droid")
_BASES = {robot: yaml.safe_load(graph.config_path(robot).read_text()) for robot in ROBOTS}
_KEYS = sorted(
    (robot, section, key)
    for robot, base in _BASES.items()
    for section, body in base.items()
    for key in body["ros__parameters"]
)
_ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=4)), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _launch(path: Path, sim: bool) -> None:
    config = graph.load_robot_config(path)
    nodes = graph.build_graph(config, graph.LaunchOptions(sim=sim, checkpoint="tiny"))
    graph.check_graph(config, nodes)


def _write(tmp: Path, robot: str, section: str, key: str, value) -> Path:
    data = copy.deepcopy(_BASES[robot])
    data[section]["ros__parameters"][key] = value
    path = tmp / f"{robot}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(("robot", "section", "key"), _KEYS)
def test_a_key_left_empty_is_refused_by_name_or_accepted(tmp_path, robot, section, key):
    path = _write(tmp_path, robot, section, key, None)
    for sim in (True, False):
        try:
            _launch(path, sim)
        except graph.ConfigError as err:
            assert str(path) in str(err)


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    where=st.sampled_from(_KEYS),
    value=_ODD_VALUES,
    sim=st.booleans(),
)
def test_any_value_anywhere_is_launched_or_refused_with_a_config_error(
    tmp_path, where, value, sim
):
    robot, section, key = where
    path = _write(tmp_path, robot, section, key, value)
    try:
        _launch(path, sim)
    except graph.ConfigError as err:
        assert str(path) in str(err)


@pytest.mark.parametrize(("key", "value"), [("can_bitrate", 0), ("can_bitrate", -1),
                                            ("gripper_max_force", 0.0),
                                            ("gripper_max_force", -5.0)])
def test_yam_bus_and_gripper_numbers_that_break_the_backend_are_refused(tmp_path, key, value):
    # A bitrate <= 0 skipped the bus budget and was divided by in the reply deadline; a force
    # limit <= 0 left the gripper no grip. The sweep above accepted both.
    path = _write(tmp_path, "yam", "/**/yam_driver", key, value)
    with pytest.raises(graph.ConfigError, match=rf"{key} must be > 0"):
        _launch(path, sim=False)
