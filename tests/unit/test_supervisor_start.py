"""``molmoact2 launch`` stopped while its graph starts: no more nodes start, none is left.

A Ctrl-C or SIGTERM while the supervisor started the nodes went on starting every remaining
one (each then stopped again); a node that could not be started (an exception from its
overrides file or exec) left the ones already started running without the rest of the graph.
"""

from __future__ import annotations

import io
import subprocess

import pytest

from molmoact2 import cli, graph, supervisor
from molmoact2.supervisor import Supervisor
from tests.rostest_util import REPO_ROOT


def _sleepers(*names: str) -> list[graph.NodeSpec]:
    return [graph.NodeSpec(n, "molmoact2", n, "tests.sleeper_node", ()) for n in names]


def _kill_all(sup: Supervisor) -> None:
    for child in sup._children:
        if child.process.poll() is None:
            child.process.kill()
            child.process.wait()


def test_a_stop_requested_while_starting_starts_no_more_nodes(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # `python -m tests.sleeper_node`
    sup = Supervisor(_sleepers("a", "b", "c"), output=io.StringIO())
    write = supervisor.write_overrides

    def write_then_stop(spec, directory):
        if spec.name == "a":
            sup.request_stop()  # as the SIGINT handler does, while "a" is being started
        return write(spec, directory)

    monkeypatch.setattr(supervisor, "write_overrides", write_then_stop)
    try:
        run = sup.run(install_signal_handlers=False)
    finally:
        _kill_all(sup)
    # "a" may get the SIGINT before its handler is installed (status -2): what counts is that
    # it was stopped and that "b" and "c" never started.
    assert [c.spec.name for c in sup._children] == ["a"]
    assert list(run.node_exit_codes) == ["a"], sup.output.getvalue()


def test_a_node_that_cannot_start_stops_those_already_running(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    sup = Supervisor(_sleepers("a", "b"), output=io.StringIO())
    write = supervisor.write_overrides

    def fail_on_b(spec, directory):
        if spec.name == "b":
            raise OSError(28, "No space left on device")
        return write(spec, directory)

    monkeypatch.setattr(supervisor, "write_overrides", fail_on_b)
    try:
        with pytest.raises(OSError, match="No space left"):
            sup.run(install_signal_handlers=False)
        (child,) = sup._children
        try:
            child.process.wait(timeout=0)  # already gone: run() stopped it before raising
        except subprocess.TimeoutExpired:
            pytest.fail("node a was left running after node b could not be started")
    finally:
        _kill_all(sup)


def test_ctrl_c_before_the_graph_starts_is_one_line_not_a_traceback(monkeypatch, capsys):
    def interrupted(_args):
        raise KeyboardInterrupt  # Ctrl-C during the config check or the demo checkpoint

    monkeypatch.setattr(cli, "graph_for", interrupted)
    try:
        code = cli.main(["launch", "yam"])
    except KeyboardInterrupt:  # would end this pytest session, not fail one test
        pytest.fail("KeyboardInterrupt escaped molmoact2's main (a traceback for the user)")
    assert code == 130
    assert capsys.readouterr().err == "molmoact2: interrupted before the graph started\n"
