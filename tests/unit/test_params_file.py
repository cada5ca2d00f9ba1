"""The launch's config check reads the robot config as rcl reads it for the nodes.

The nodes get the config through rcl's own YAML parser (``--params-file``); the check read it
with PyYAML. Files rcl refuses as a whole (a list mixing ``0`` and ``0.0``, a ``key:`` with no
value, an anchor) passed the check and every node of the graph then died at start with an
RCLError traceback; values PyYAML types otherwise (``y``, ``10:40``, ``1_000``) were checked as
other values than the nodes got. tests/ros/test_params_file_rcl.py compares with rcl itself.
"""

from __future__ import annotations

import math
import re

import pytest

from molmoact2 import graph
from molmoact2.params_file import ParamsFileError, rcl_scalar, read_params_file
from tests.config_edits import YAM
from tests.config_edits import edited_yam as _yam
from tests.config_edits import launch as _launch


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        # An integer among decimals: rcl refuses the whole file ("Sequence should be of
        # same type"), so every node died at start.
        (
            "position_lower: [-2.6, 0.0,",
            "position_lower: [-2.6, 0,",
            r"line 66: position_lower mixes double and integer entries",
        ),
        ('urdf: ""', "urdf:", r"line 27: urdf has no value"),
        ("width: 640", "width: &w 640", r"line 125: anchor &w"),
        (
            "    width: 640\n",
            "    width: 640\n    width: 320\n",
            r"line 126: .*'width' is given twice \(first on line 125\)",
        ),
        (
            "/**/sim_cameras:\n  ros__parameters:\n",
            "/**/sim_cameras:\n  foo: 1\n  ros__parameters:\n",
            r"line 124: section '/\*\*/sim_cameras': 'foo' beside ros__parameters",
        ),
        ("    width: 640\n", "    <<: {width: 320}\n", r"line 125: YAML merge keys"),
        ("/**/sim_cameras:", "/robot1/sim_cameras:", r"section '/robot1/sim_cameras': write"),
        (
            "/**/sim_cameras:",
            "sim_cameras:\n  ros__parameters: {}\n/**/sim_cameras:",
            r"node 'sim_cameras' has two sections",
        ),
    ],
)
def test_what_rcl_refuses_is_refused_with_file_and_line(tmp_path, old, new, message):
    path = _yam(tmp_path, old, new)
    with pytest.raises(graph.ConfigError) as info:
        _launch(path)
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"{path}: "), text
    assert re.search(message, text), text


def test_values_are_checked_as_rcl_types_them(tmp_path):
    # rcl: `y` is true (PyYAML: a string), `10:40` a string (PyYAML: 640), a number past
    # int64 a double (PyYAML: an int the node never gets).
    for old, new, message in [
        (
            'instruction: "fold the towel"',
            "instruction: y",
            "instruction must be a string, got True",
        ),
        ("width: 640", "width: 10:40", "width must be an integer, got '10:40'"),
        (
            "can_bitrate: 1000000",
            "can_bitrate: 99999999999999999999",
            "can_bitrate must be an integer, got 1e+20",
        ),
    ]:
        with pytest.raises(graph.ConfigError, match=re.escape(message)):
            _launch(_yam(tmp_path, old, new))
    assert (
        graph.load_robot_config(_yam(tmp_path, "cuda_graph: false", "cuda_graph: n")).params_for(
            graph.POLICY_NODE
        )["cuda_graph"]
        is False
    )


@pytest.mark.parametrize(
    ("text", "style", "value"),
    [
        ("y", None, True),
        ("Off", None, False),
        ("'on'", "'", "'on'"),
        ("017", None, 15),
        ("0x1f", None, 31),
        ("-0x10", None, -16),
        ("08", None, 8.0),
        ("1_000", None, "1_000"),
        ("1e3", None, 1000.0),
        ("1e400", None, "1e400"),
        ("1e-400", None, "1e-400"),
        ("9223372036854775807", None, 2**63 - 1),
        ("9223372036854775808", None, 2.0**63),
        ("+.inf", None, math.inf),
        ("infinity", None, math.inf),
        ("~", None, "~"),
        ("null", None, "null"),
        ("5.", None, 5.0),
        ("0x1p3", None, 8.0),
        ("5\n", "|", "5\n"),
        ("2001-12-14", None, "2001-12-14"),
        ("5", '"', "5"),
    ],
)
def test_scalars_are_typed_as_rcl_types_them(text, style, value):
    got = rcl_scalar(text, style, "!rcl-plain")
    assert type(got) is type(value) and got == value, (text, got)
    assert math.isnan(rcl_scalar(".nan", None, "!rcl-plain"))


def test_unreadable_files_are_one_line_errors(tmp_path):
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"/**:\n  ros__parameters:\n    robot: \xff\n")
    directory = tmp_path / "dir.yaml"
    directory.mkdir()
    deep = tmp_path / "deep.yaml"
    deep.write_text("/**:\n  ros__parameters:\n    a: " + "[" * 5000 + "]" * 5000 + "\n")
    for path, message in [
        (binary, "line 3: not UTF-8 text (byte 0xff)"),
        (directory, "is a directory"),
        (tmp_path / "missing.yaml", "cannot read: No such file"),
        (deep, "malformed YAML"),
        (_yam(tmp_path, "robot: yam", "robot: [yam"), "malformed YAML at line"),
    ]:
        with pytest.raises(graph.ConfigError) as info:
            graph.load_robot_config(path)
        assert str(info.value).startswith(f"{path}: {message}"), info.value
        assert "\n" not in str(info.value)
    with pytest.raises(ParamsFileError, match="empty"):
        read_params_file(_yam(tmp_path, YAM, "# nothing\n"))


def test_the_shipped_configs_read_the_same_as_with_pyyaml():
    # Nothing in them depends on where the two readings differ.
    import yaml

    for robot in graph.known_robots():
        path = graph.config_path(robot)
        assert read_params_file(path) == {
            k: v["ros__parameters"] for k, v in yaml.safe_load(path.read_text()).items()
        }, robot
