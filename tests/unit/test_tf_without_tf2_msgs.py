"""molmoact2_tf where tf2_msgs is not importable (a ROS install without it, e.g. the official
launch tools in their own venv): the node exits with one line, no traceback; both launch paths
leave it out with a warning and run the rest of the graph."""

from __future__ import annotations

import subprocess
import sys

import pytest

from molmoact2 import graph
from molmoact2.tf_node import NODE_NAME, TF2_MSGS_MISSING, tf2_msgs_missing, without_unavailable_tf

# Runs the node's real entry point (its ``__main__``) with tf2_msgs blocked: an entry of None in
# sys.modules makes every ``import tf2_msgs...`` raise ImportError, as an absent package does.
BLOCKED_RUN = (
    "import runpy, sys; sys.modules['tf2_msgs'] = None; "
    "runpy.run_module('molmoact2.tf_node', run_name='__main__')"
)


@pytest.fixture
def no_tf2_msgs(monkeypatch):
    monkeypatch.setitem(sys.modules, "tf2_msgs", None)
    monkeypatch.delitem(sys.modules, "tf2_msgs.msg", raising=False)


def test_the_node_exits_with_one_clear_line_and_no_traceback():
    done = subprocess.run(
        [sys.executable, "-c", BLOCKED_RUN, "--ros-args", "-r", f"__node:={NODE_NAME}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stderr.strip() == f"[{NODE_NAME}] {TF2_MSGS_MISSING}"
    assert "ros-<distro>-tf2-msgs" in done.stderr


def test_the_launch_leaves_the_node_out_and_says_so(no_tf2_msgs):
    nodes = graph.build_graph("yam", graph.LaunchOptions(sim=True))
    assert NODE_NAME in [n.name for n in nodes]  # the graph asks for it in sim
    warnings: list[str] = []
    kept = without_unavailable_tf(nodes, warnings.append)
    assert [n.name for n in kept] == [n.name for n in nodes if n.name != NODE_NAME]
    assert warnings == [
        f"{NODE_NAME} not started: {TF2_MSGS_MISSING}. The rest of the graph runs without "
        "its frames."
    ]


def test_with_tf2_msgs_nothing_changes():
    # The project's environment has tf2_msgs (ROS's, or the stand-in `make setup` builds).
    assert tf2_msgs_missing() is None
    nodes = graph.build_graph("yam", graph.LaunchOptions(sim=True))
    warnings: list[str] = []
    assert without_unavailable_tf(nodes, warnings.append) == nodes
    assert warnings == []
