"""Launch arguments no node can run with are refused before anything starts.

``namespace:=1bad`` (or one with a space, ``a//b``, ``~x``) reached every node as
``-r __ns:=/1bad``: rcl refused it in each, so all of them started and died with an RCLError
traceback. ``--duration nan`` never stopped the graph (every comparison with NaN is false).
"""

from __future__ import annotations

import pytest

from molmoact2 import cli, graph


@pytest.mark.parametrize("namespace", ["1bad", "bad ns", "a//b", "~x", "arm-2", "ä"])
def test_a_namespace_rcl_refuses_is_refused_by_both_launch_paths(namespace, capsys):
    with pytest.raises(graph.ConfigError, match=r"launch argument namespace:=.* is not a ROS"):
        graph.build_graph("yam", graph.LaunchOptions(namespace=namespace))
    assert cli.main(["graph", "yam", "--namespace", namespace]) == 2
    err = capsys.readouterr().err
    assert "not a ROS namespace" in err and "Traceback" not in err


@pytest.mark.parametrize("namespace", ["", "/", "arm2", "/lab/arm_2/", "_a/b1"])
def test_ros_namespaces_are_accepted(namespace):
    graph.build_graph("yam", graph.LaunchOptions(namespace=namespace))


@pytest.mark.parametrize("duration", ["nan", "-5", "0", "inf", "soon"])
def test_a_duration_that_never_or_instantly_ends_is_refused(duration, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["graph", "yam", "--duration", duration])  # parsed alike, starts nothing
    assert info.value.code == 2
    assert "argument --duration" in capsys.readouterr().err


def test_a_misspelled_ros2_launch_argument_is_refused():
    # ros2 launch takes any name:=value silently: serial_prot:= ran the arm on the config's
    # port. generate_robot_launch_description raises these before any action is returned.
    from molmoact2.launch_support import LAUNCH_ARGUMENTS, misspelled_arguments

    given = [*LAUNCH_ARGUMENTS, "simm", "serial_prot", "calibraton_file", "my_parent_arg"]
    assert misspelled_arguments(given) == [
        "unknown launch argument calibraton_file:= (did you mean calibration_file:=?)",
        "unknown launch argument serial_prot:= (did you mean serial_port:=?)",
        "unknown launch argument simm:= (did you mean sim:=?)",
    ]
    assert misspelled_arguments(LAUNCH_ARGUMENTS) == []


def test_a_root_only_section_is_refused_in_a_namespace(tmp_path):
    # rcl gives a `yam_driver:` section (no '/**/') to /yam_driver only: under namespace:=arm1
    # the driver ran on its defaults while the config check had read the section.
    text = graph.config_path("yam").read_text().replace("/**/yam_driver:", "yam_driver:")
    path = tmp_path / "yam.yaml"
    path.write_text(text)
    graph.build_graph(path)  # the root namespace: the section applies
    with pytest.raises(graph.ConfigError, match=r"section\(s\) yam_driver apply at the root"):
        graph.build_graph(path, graph.LaunchOptions(namespace="arm1"))
