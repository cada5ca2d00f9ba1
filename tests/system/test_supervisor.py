"""``molmoact2 launch``'s process supervision: clean stops flush recordings, deaths are errors."""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path

import pytest

from molmoact2 import graph
from molmoact2.mcap_io import read_messages
from molmoact2.supervisor import Supervisor
from molmoact2_common import fastdds_shm
from tests.rostest_util import REPO_ROOT

pytestmark = pytest.mark.ros


def camera_and_recorder(tmp_path, **camera_overrides):
    config = graph.load_robot_config("so101")
    nodes = graph.build_graph(config, graph.LaunchOptions(record=True))
    keep = []
    for node in nodes:
        if node.name == graph.RECORDER_NODE:
            keep.append(dataclasses.replace(node, overrides={
                **node.overrides, "output_dir": str(tmp_path), "file_name": "rec.mcap"}))
        elif node.name == graph.SIM_CAMERAS_NODE:
            keep.append(dataclasses.replace(node, overrides={
                **node.overrides, "width": 160, "height": 120, **camera_overrides}))
    return keep


def test_clean_stop_flushes_the_recording(tmp_path):
    output = io.StringIO()
    # Counted from the recorder subscribing, not from the start: process start-up on a loaded
    # machine can take longer than any fixed duration.
    run = Supervisor(
        camera_and_recorder(tmp_path), output=output,
        ready=("recorder", "recording /cameras/wrist/image_raw"),
    ).run(duration=3.0, install_signal_handlers=False)
    log = output.getvalue()
    assert run.exit_code == 0, log
    assert run.failed_node is None
    assert "[recorder   ]" in log and "[sim_cameras]" in log  # prefixed, aligned logs
    topics = [topic for topic, _, _ in read_messages(tmp_path / "rec.mcap")]
    assert topics.count("/cameras/front/image_raw") > 0, log
    assert topics.count("/cameras/wrist/image_raw") > 0, log


def test_a_node_that_dies_stops_the_graph_with_an_error(tmp_path):
    output = io.StringIO()
    nodes = camera_and_recorder(tmp_path, rate=-1.0)  # the camera node refuses this and exits
    run = Supervisor(nodes, output=output).run(duration=30.0, install_signal_handlers=False)
    assert run.exit_code == 1
    assert run.failed_node == "sim_cameras"
    assert "node sim_cameras exited unexpectedly" in output.getvalue()
    assert "rate must be >= 0" in output.getvalue()
    # The other nodes were stopped cleanly, and the recorder still closed its file properly.
    assert run.node_exit_codes["recorder"] == 0
    list(read_messages(tmp_path / "rec.mcap"))


def test_graph_processes_get_the_large_shared_memory_profile(monkeypatch):
    import xml.etree.ElementTree as ET

    monkeypatch.delenv("FASTDDS_DEFAULT_PROFILES_FILE", raising=False)
    supervisor = Supervisor([], output=io.StringIO())
    profile = supervisor.env["FASTDDS_DEFAULT_PROFILES_FILE"]
    assert profile == str(graph.fastdds_profile())
    sizes = [e.text for e in ET.parse(profile).getroot().iter() if e.tag.endswith("segment_size")]
    assert sizes and int(sizes[0]) >= 4 * 640 * 480 * 3  # several raw frames fit
    # A user's own profile wins.
    monkeypatch.setenv("FASTDDS_DEFAULT_PROFILES_FILE", "/etc/my_profile.xml")
    assert Supervisor([], output=io.StringIO()).env["FASTDDS_DEFAULT_PROFILES_FILE"] == (
        "/etc/my_profile.xml"
    )


def test_graph_processes_are_told_the_launchers_pid(monkeypatch):
    # An outer launcher's PID (inherited) is replaced: the nodes watch the one that runs them.
    monkeypatch.setenv("MOLMOACT2_LAUNCHER_PID", "1")
    assert Supervisor([], output=io.StringIO()).env["MOLMOACT2_LAUNCHER_PID"] == str(os.getpid())


def test_a_node_that_segfaults_at_import_shows_where(monkeypatch):
    # Before its runtime could enable faulthandler itself: the launcher's environment does.
    monkeypatch.chdir(REPO_ROOT)  # `python -m tests.crash_at_import`
    output = io.StringIO()
    crash = graph.NodeSpec("crasher", "molmoact2", "crasher", "tests.crash_at_import", ())
    run = Supervisor([crash], output=output).run(duration=30.0, install_signal_handlers=False)
    log = output.getvalue()
    assert run.failed_node == "crasher"
    assert "node crasher exited unexpectedly with status -11 (SIGSEGV)" in log, log
    assert "[crasher] Fatal Python error: Segmentation fault" in log, log
    assert 'crash_at_import.py", line 6 in <module>' in log, log


def test_start_removes_shared_memory_a_dead_graph_left():
    # A killed graph's Fast DDS port stays in /dev/shm; nodes started on the same domain would
    # reopen it (a crash in participant creation of the wheels' Fast DDS). A port number no
    # participant uses (they are 7400 + 250 * domain + ...; domains end at 232).
    shm = Path(fastdds_shm.SHM_DIR)
    port = f"fastdds_port{99000 + os.getpid() % 900}"
    names = [port, f"{port}_el", f"{port}_sl", f"sem.{port}_mutex"]
    for name in names:
        (shm / name).write_bytes(b"")
        os.utime(shm / name, (1_000_000, 1_000_000))
    try:
        Supervisor([], output=io.StringIO()).start()
        assert [name for name in names if (shm / name).exists()] == []
    finally:
        for name in names:
            (shm / name).unlink(missing_ok=True)
