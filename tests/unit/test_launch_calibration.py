"""A Feetech arm launched on hardware needs its LeRobot calibration: both launch paths refuse
the graph before anything starts when it is missing or unusable, naming ``calibration_file``
and how to set it, as they refuse ``sim:=ture``.

Before, ``ros2 launch molmoact2 so101.launch.py sim:=false`` started the policy and cameras
while the driver failed its configure transition (it cannot map servo ticks to radians): the
launch ran on, and nothing but one driver log line said why the arm never moved.

Both paths check through ``graph.check_graph``: ``molmoact2 launch`` / ``molmoact2 graph``
(``cli.graph_for``) and ``ros2 launch`` (``launch_support.launch_actions``, run by the launch
file's OpaqueFunction; an exception there ends the launch before any node action runs).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from molmoact2 import cli, graph
from molmoact2.launch_support import LAUNCH_ARGUMENTS, options_from_values

# An SO-101 follower calibration as LeRobot writes it: ``Robot._save_calibration`` dumps
# ``dict[str, MotorCalibration]`` (fields id, drive_mode, homing_offset, range_min, range_max)
# with draccus, indent 4, keyed by the follower's motor names (huggingface/lerobot
# src/lerobot/robots/robot.py, so101_follower/so101_follower.py, motors/motors_bus.py).
LEROBOT_SO101_CALIBRATION = """{
    "shoulder_pan": {
        "id": 1,
        "drive_mode": 0,
        "homing_offset": -1470,
        "range_min": 758,
        "range_max": 3292
    },
    "shoulder_lift": {
        "id": 2,
        "drive_mode": 0,
        "homing_offset": 157,
        "range_min": 612,
        "range_max": 3401
    },
    "elbow_flex": {
        "id": 3,
        "drive_mode": 0,
        "homing_offset": 1105,
        "range_min": 850,
        "range_max": 3100
    },
    "wrist_flex": {
        "id": 4,
        "drive_mode": 0,
        "homing_offset": -1940,
        "range_min": 868,
        "range_max": 3198
    },
    "wrist_roll": {
        "id": 5,
        "drive_mode": 0,
        "homing_offset": 1876,
        "range_min": 0,
        "range_max": 4095
    },
    "gripper": {
        "id": 6,
        "drive_mode": 0,
        "homing_offset": 1232,
        "range_min": 2031,
        "range_max": 3482
    }
}"""


def _so101() -> graph.RobotConfig:
    return graph.load_robot_config("so101")


def _launch_values(**overrides: str):
    """``value(name)`` of each launch argument as ``ros2 launch so101.launch.py`` reads it."""
    values = {name: default for name, (default, _text) in LAUNCH_ARGUMENTS.items()}
    values.update(overrides)
    return values.__getitem__


class _FakeNode:
    """``launch_ros.actions.Node``: what the launch would start."""

    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs


@pytest.fixture
def ros2_launch(monkeypatch):
    """``launch_support.launch_actions`` (what the launch files' OpaqueFunction runs) for
    ``name:=value`` arguments, with ``launch``/``launch_ros`` stand-ins (the pip venv has
    neither) recording the nodes it would start; the demo checkpoint is never made."""
    import logging
    import sys
    import types

    made = []
    fakes = {name: types.ModuleType(name) for name in ("launch", "launch.logging", "launch_ros")}
    fakes["launch_ros.actions"] = types.ModuleType("launch_ros.actions")
    fakes["launch.logging"].get_logger = logging.getLogger
    fakes["launch"].logging = fakes["launch.logging"]
    fakes["launch_ros.actions"].Node = _FakeNode
    fakes["launch_ros"].actions = fakes["launch_ros.actions"]
    for name, module in fakes.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(
        "molmoact2.demo_checkpoint.ensure_in_child_process",
        lambda robot, log=print: made.append(robot) or Path("/tmp/demo"),
    )

    def run(**arguments: str) -> list:
        from molmoact2.launch_support import launch_actions

        return launch_actions("so101", options_from_values(_launch_values(**arguments)))

    run.made = made
    return run


def _cli_graph(*argv: str) -> list[graph.NodeSpec]:
    parser = cli.argparse.ArgumentParser()
    cli._add_launch_arguments(parser)
    return cli.graph_for(parser.parse_args(["so101", *argv]))[1]


def _driver(nodes: list[graph.NodeSpec]) -> graph.NodeSpec:
    return next(n for n in nodes if n.name == _so101().driver_name)


# ---------------------------------------------------------------------------------------------
# No calibration file


def test_hardware_without_calibration_is_refused_by_the_shared_check():
    config = _so101()
    nodes = graph.build_graph(config, graph.LaunchOptions(sim=False))
    with pytest.raises(graph.ConfigError) as refused:
        graph.check_graph(config, nodes)
    message = str(refused.value)
    assert "so101_driver" in message and "needs calibration_file" in message
    # How to set it, on either path, and where LeRobot keeps one.
    assert "calibration_file:=" in message and "--calibration-file" in message
    assert "lerobot/calibration/robots/so101_follower" in message


def test_molmoact2_launch_refuses_it_before_starting(capsys):
    with pytest.raises(graph.ConfigError, match="needs calibration_file"):
        _cli_graph("--no-sim")
    # `molmoact2 graph|launch` print the reason and exit 2 without starting a process.
    assert cli.main(["graph", "so101", "--no-sim"]) == 2
    assert "calibration_file:=" in capsys.readouterr().err


def test_ros2_launch_refuses_it_before_any_node_action(ros2_launch):
    with pytest.raises(graph.ConfigError, match="needs calibration_file"):
        ros2_launch(sim="false")
    assert ros2_launch.made == []  # refused before the minute of demo-checkpoint training


def test_sim_needs_no_calibration():
    graph.check_graph(_so101(), graph.build_graph(_so101(), graph.LaunchOptions(sim=True)))
    assert _driver(_cli_graph()).overrides["backend"] == "sim"


# ---------------------------------------------------------------------------------------------
# A calibration file that cannot be used


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what the refusal says)."""
    good = json.loads(LEROBOT_SO101_CALIBRATION)
    files = {
        "missing": (tmp_path / "nowhere.json", "does not exist"),
        "directory": (tmp_path, "cannot be read"),
        "not_json": (tmp_path / "notes.json", "is not valid JSON"),
        "binary": (tmp_path / "blob.json", "is not valid JSON"),
        "a_list": (tmp_path / "list.json", "expected a non-empty object of motors"),
        "lacks_a_key": (tmp_path / "lacks.json", "'gripper' lacks ['range_max']"),
        "not_integer": (tmp_path / "float.json", "'elbow_flex' range_min=850.5"),
        "no_wrist_roll": (tmp_path / "five.json", "no entry for joints ['wrist_roll']"),
    }
    files["not_json"][0].write_text("shoulder_pan: {id: 1}\n")
    files["binary"][0].write_bytes(b"\xff\xfe\x00garbage")
    files["a_list"][0].write_text(json.dumps([good["gripper"]]))
    lacks = {**good, "gripper": {k: v for k, v in good["gripper"].items() if k != "range_max"}}
    files["lacks_a_key"][0].write_text(json.dumps(lacks))
    files["not_integer"][0].write_text(
        json.dumps({**good, "elbow_flex": {**good["elbow_flex"], "range_min": 850.5}})
    )
    files["no_wrist_roll"][0].write_text(
        json.dumps({k: v for k, v in good.items() if k != "wrist_roll"})
    )
    return files


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "directory",
        "not_json",
        "binary",
        "a_list",
        "lacks_a_key",
        "not_integer",
        "no_wrist_roll",
    ],
)
def test_an_unusable_calibration_file_is_refused_with_the_reason(tmp_path, case, ros2_launch):
    path, reason = _bad_files(tmp_path)[case]
    with pytest.raises(graph.ConfigError) as refused:
        _cli_graph("--no-sim", "--calibration-file", str(path))
    assert reason in str(refused.value)
    assert "so101_driver" in str(refused.value)
    with pytest.raises(graph.ConfigError, match=reason.replace("[", r"\[")):
        ros2_launch(sim="false", calibration_file=str(path))


def test_the_configs_calibration_file_is_checked_too(tmp_path):
    """Set in the driver's config section instead of the launch argument: the same check."""
    text = graph.config_path("so101").read_text()
    assert '    calibration_file: ""' in text
    mine = tmp_path / "so101.yaml"
    mine.write_text(text.replace('    calibration_file: ""', "    calibration_file: /no/cal.json"))
    config = graph.load_robot_config(mine)
    with pytest.raises(graph.ConfigError, match=r"calibration file /no/cal\.json does not exist"):
        graph.check_graph(config, graph.build_graph(config, graph.LaunchOptions(sim=False)))


# ---------------------------------------------------------------------------------------------
# A usable one


def test_a_lerobot_calibration_file_launches(tmp_path, monkeypatch):
    path = tmp_path / "my_arm.json"
    path.write_text(LEROBOT_SO101_CALIBRATION)
    driver = _driver(_cli_graph("--no-sim", "--calibration-file", str(path)))
    assert driver.overrides["backend"] == "feetech"
    assert driver.overrides["calibration_file"] == str(path)
    # Relative to where the user typed it, and with ~ (not expanded in `name:=~/x`): both
    # reach the driver as absolute paths, whatever the node's working directory.
    monkeypatch.chdir(tmp_path)
    assert _driver(_cli_graph("--no-sim", "--calibration-file", "my_arm.json")).overrides[
        "calibration_file"
    ] == str(path)
    monkeypatch.setenv("HOME", str(tmp_path))
    options = options_from_values(_launch_values(sim="false", calibration_file="~/my_arm.json"))
    assert options.calibration_file == "~/my_arm.json"
    nodes = graph.build_graph(_so101(), options)
    assert _driver(nodes).overrides["calibration_file"] == str(path)
    graph.check_graph(_so101(), nodes)


def test_ros2_launch_starts_the_feetech_driver_with_it(tmp_path, ros2_launch):
    path = tmp_path / "my_arm.json"
    path.write_text(LEROBOT_SO101_CALIBRATION)
    actions = ros2_launch(sim="false", calibration_file=str(path), checkpoint="tiny")
    [driver] = [a for a in actions if a.kwargs["name"] == "so101_driver"]
    overrides = driver.kwargs["parameters"][-1]
    assert overrides["backend"] == "feetech" and overrides["calibration_file"] == str(path)


@pytest.mark.parametrize("robot", ["yam", "droid"])
def test_calibration_file_for_a_robot_whose_backend_reads_none_is_refused(robot, tmp_path):
    path = tmp_path / "my_arm.json"
    path.write_text(LEROBOT_SO101_CALIBRATION)
    options = graph.LaunchOptions(sim=False, calibration_file=str(path))
    with pytest.raises(graph.ConfigError, match="calibration_file is for the feetech backend"):
        graph.build_graph(robot, options)


# ---------------------------------------------------------------------------------------------
# The serial port: an SO-101 enumerates as whichever /dev/ttyACM<n> is free, so both launch
# paths take it as an argument instead of a config edit.
def test_serial_port_reaches_the_driver_on_both_launch_paths(tmp_path, ros2_launch):
    path = tmp_path / "my_arm.json"
    path.write_text(LEROBOT_SO101_CALIBRATION)
    cli_driver = _driver(
        _cli_graph("--no-sim", "--calibration-file", str(path), "--serial-port", "/dev/ttyACM1")
    )
    assert cli_driver.overrides["serial_port"] == "/dev/ttyACM1"
    actions = ros2_launch(
        sim="false", calibration_file=str(path), serial_port="/dev/ttyACM1", checkpoint="tiny"
    )
    [driver] = [a for a in actions if a.kwargs["name"] == "so101_driver"]
    assert driver.kwargs["parameters"][-1]["serial_port"] == "/dev/ttyACM1"
    # Without the argument the config's port stands.
    default = _driver(_cli_graph("--no-sim", "--calibration-file", str(path)))
    assert "serial_port" not in default.overrides


@pytest.mark.parametrize("robot", ["yam", "droid"])
def test_serial_port_for_a_robot_whose_backend_has_none_is_refused(robot):
    options = graph.LaunchOptions(sim=False, serial_port="/dev/ttyACM1")
    with pytest.raises(graph.ConfigError, match="serial_port is for the feetech backend"):
        graph.build_graph(robot, options)
