"""rviz:=true opens the launched robot's topics, in its namespace and fixed frame."""

from __future__ import annotations

import argparse
import logging

import pytest
import yaml

from molmoact2 import cli, graph
from molmoact2.rviz_config import rviz_config, write_rviz_config


def _topics(config: dict) -> dict[str, str]:
    def flatten(displays):
        for display in displays:
            yield display
            yield from flatten(display.get("Displays", []))

    displays = config["Visualization Manager"]["Displays"]
    return {d["Topic"]["Value"]: d["Class"] for d in flatten(displays) if "Topic" in d}


@pytest.mark.parametrize("robot", ["yam", "so101", "droid"])
@pytest.mark.parametrize("namespace", ["", "robot1", "/lab/arm2/"])
def test_the_config_names_that_robots_topics_in_its_namespace(robot, namespace):
    config = graph.load_robot_config(robot)
    options = graph.LaunchOptions(namespace=namespace, think=True)
    topics = _topics(rviz_config(config, options))
    prefix = "/" + namespace.strip("/") if namespace.strip("/") else ""
    cameras = [f"{prefix}/{t}" for t in config.shared["camera_topics"]]
    expected = {t: "rviz_default_plugins/Image" for t in cameras}
    expected[f"{prefix}/molmoact2_policy/predicted_chunk_markers"] = (
        "rviz_default_plugins/MarkerArray"
    )
    expected[f"{prefix}/molmoact2_depth_cache/depth_image"] = "rviz_default_plugins/Image"
    expected[f"{prefix}/molmoact2_depth_cache/depth_markers"] = "rviz_default_plugins/MarkerArray"
    assert topics == expected


def test_cameras_are_subscribed_best_effort_and_think_only_in_think_mode():
    for think in (False, True):
        config = rviz_config("so101", graph.LaunchOptions(think=think))
        displays = config["Visualization Manager"]["Displays"]
        images = [d for d in displays if d["Class"] == "rviz_default_plugins/Image"]
        assert [d["Name"] for d in images] == ["front camera", "wrist camera"]
        assert {d["Topic"]["Reliability Policy"] for d in images} == {"Best Effort"}
        [group] = [d for d in displays if d["Class"] == "rviz_common/Group"]
        assert group["Enabled"] is think
    time_panel = [p for p in config["Panels"] if p["Class"] == "rviz_common/Time"]
    assert time_panel[0]["SyncSource"] == "front camera"


def test_the_fixed_frame_is_the_configs_world_frame(tmp_path):
    text = graph.config_path("so101").read_text().replace("world_frame: world", "world_frame: lab")
    mine = tmp_path / "so101.yaml"
    mine.write_text(text)
    config = rviz_config(graph.load_robot_config(mine))
    assert config["Visualization Manager"]["Global Options"]["Fixed Frame"] == "lab"


def test_the_shipped_file_is_yams_config_without_a_namespace():
    shipped = yaml.safe_load((graph.config_dir() / "molmoact2.rviz").read_text())
    assert shipped == rviz_config("yam", graph.LaunchOptions(think=True))


def test_written_file_parses_to_the_config(tmp_path):
    options = graph.LaunchOptions(namespace="robot1")
    path = write_rviz_config("so101", options, tmp_path)
    assert path.name == "molmoact2-so101-robot1.rviz"
    assert yaml.safe_load(path.read_text()) == rviz_config("so101", options)


def test_cli_without_rviz2_writes_the_config_and_says_where(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setattr("tempfile.mkdtemp", lambda prefix="": str(tmp_path))
    # The CLI's own parser, so the namespace has every launch argument it declares.
    parser = argparse.ArgumentParser()
    cli._add_launch_arguments(parser)
    args = parser.parse_args(["so101", "--rviz", "--namespace", "arm2"])
    with caplog.at_level(logging.WARNING):
        assert cli._start_rviz(args) is None
    path = tmp_path / "molmoact2-so101-arm2.rviz"
    assert f"rviz2 -d {path}" in caplog.text
    assert "/arm2/cameras/wrist/image_raw" in _topics(yaml.safe_load(path.read_text()))
