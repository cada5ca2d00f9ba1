"""Every key and section of a robot config is one some node reads, or the launch refuses it.

No node reads the launch layer's own section (molmoact2_bringup), nodes ignore undeclared keys
of ``/**``, and a section for no node applies to nothing: a typo in any of them
(``hardwre_backend``, ``/**/sim_camera``, ``urdff``) was accepted and its value silently lost.
Sections of nodes a launch does not start (the recorder without record:=true) were not checked
until the first launch that started them.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from molmoact2 import graph
from tests.config_edits import YAM
from tests.config_edits import edited_yam as _yam
from tests.config_edits import launch as _launch


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            "hardware_backend: damiao",
            "hardware_backend: damiao\n    hardwre_backend: sim",
            "molmoact2_bringup: unknown key 'hardwre_backend' (did you mean 'hardware_backend'?)",
        ),
        (
            "hardware_backend: damiao",
            "hardware_backend: damaio",
            "molmoact2_bringup.hardware_backend must be one of damiao, feetech, franky, "
            "ros2_control, got 'damaio'",
        ),
        (
            "driver_node: yam_driver",
            "driver_node: molmoact2_policy",
            "molmoact2_bringup.driver_node must be the driver's node name",
        ),
        (
            "/**/sim_cameras:",
            "/**/sim_camera:",
            "section 'sim_camera' is for no node of this graph (did you mean 'sim_cameras'?)",
        ),
        (
            "    robot: yam\n",
            "    robot: yam\n    urdff: robot.urdf\n",
            "'/**': unknown parameter 'urdff' (did you mean 'urdf'?): no node declares it",
        ),
        (
            "output_dir: out/recordings",
            "output_dir: 5",
            "recorder: output_dir must be a string, got 5",
        ),
    ],
)
def test_keys_and_sections_no_node_reads_are_refused(tmp_path, old, new, message):
    path = _yam(tmp_path, old, new)
    with pytest.raises(graph.ConfigError) as info:
        _launch(path)  # sim: neither the hardware backend nor the recorder is started
    assert str(info.value) == f"{path}: {message}" or str(info.value).startswith(
        f"{path}: {message}"
    ), str(info.value)


# -- property: any one-line edit of a shipped config is launched as the same graph, or refused
# with one line per problem naming the file; never another exception.

_BASE = [(n.name, n.executable) for n in _launch(graph.config_path("yam"))]
_LINES = [i for i, line in enumerate(YAM.splitlines()) if re.match(r"^\s+\w+:", line)]
_ODD = st.sampled_from(
    [
        "",
        "y",
        "on",
        "~",
        "1_0",
        "10:40",
        "[1, 2.0]",
        "[a, 1]",
        ".nan",
        "-.inf",
        "&a 1",
        "'x'",
        "0x10",
        "1e400",
        "-1",
        "0",
        "99999999999999999999",
        "[]",
        "{}",
        "[[1]]",
        "{a: 1}",
        "!!str 5",
        '""',
        "yes",
        "'1.0'",
        "[y, n]",
    ]
)


def _mutate(text: str, index: int, how: str, odd: str, char: int) -> str:
    lines = text.splitlines()
    line = lines[index]
    indent, key, value = re.match(r"^(\s+)(\w+):(.*)$", line).groups()
    if how == "value":
        lines[index] = f"{indent}{key}: {odd}"
    elif how == "typo":
        at = char % len(key)
        lines[index] = f"{indent}{key[:at]}{key[at + 1 :] or 'x'}:{value}"
    elif how == "drop":
        del lines[index]
    elif how == "twice":
        lines.insert(index, line)
    return "\n".join(lines) + "\n"


@settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    index=st.sampled_from(_LINES),
    how=st.sampled_from(["value", "typo", "drop", "twice"]),
    odd=_ODD,
    char=st.integers(0, 40),
)
def test_any_one_line_edit_is_launched_as_the_same_graph_or_refused(
    tmp_path, index, how, odd, char
):
    path = tmp_path / "yam.yaml"
    path.write_text(_mutate(YAM, index, how, odd, char))
    try:
        nodes = _launch(path)
    except graph.ConfigError as err:
        lines = str(err).splitlines()
        assert lines and all(line.startswith(f"{path}: ") for line in lines), str(err)
        return
    # Only a value (or a dropped key the node has a default for) may pass; a renamed or
    # doubled key never does.
    assert how in ("value", "drop"), (how, YAM.splitlines()[index])
    assert [(n.name, n.executable) for n in nodes] == _BASE
