"""Launching edited copies of config/yam.yaml, for the config-check tests."""

from __future__ import annotations

from pathlib import Path

from molmoact2 import graph

YAM = graph.config_path("yam").read_text()


def launch(path: Path, sim: bool = True) -> list[graph.NodeSpec]:
    """The checked graph of the config at ``path`` (ConfigError when it is refused)."""
    config = graph.load_robot_config(path)
    nodes = graph.build_graph(config, graph.LaunchOptions(sim=sim, checkpoint="tiny"))
    graph.check_graph(config, nodes)
    return nodes


def edited_yam(tmp_path: Path, old: str, new: str) -> Path:
    """config/yam.yaml with its first ``old`` replaced by ``new``, written under ``tmp_path``."""
    assert old in YAM, old
    path = tmp_path / "yam.yaml"
    path.write_text(YAM.replace(old, new, 1))
    return path
