"""The recorder's file: never overwritten, on disk as it goes, and a failing disk is said.

"Nothing is lost": a relaunch with the same ``file_name`` (or two recorders started in the same
second, whose default names are equal) used to open the existing recording with "wb" and
truncate it; a write error (disk full, a file size limit) raised out of the subscription
callback and took the node down with a traceback, and slow topics sat in memory until a
1 MiB chunk filled, so a killed recorder lost minutes of them.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from molmoact2.mcap_io import McapRecorder, ReadInfo, read_messages

DEFINITION = "string data\n"


def _record(path: Path, texts: list[str], close: bool = True) -> McapRecorder:
    from rclpy.serialization import serialize_message
    from std_msgs.msg import String

    recorder = McapRecorder(path)
    recorder.add_topic("/notes", "std_msgs/msg/String", DEFINITION)
    for i, text in enumerate(texts):
        recorder.write("/notes", serialize_message(String(data=text)), 10 + i, 10 + i)
    if close:
        recorder.close()
    return recorder


def _texts(path: Path, info: ReadInfo | None = None) -> list[str]:
    return [m.data for _t, _ns, m in read_messages(path, info=info)]


def test_an_existing_recording_is_not_overwritten(tmp_path):
    path = tmp_path / "run é 1.mcap"
    first = _record(path, ["first"])
    second = _record(path, ["second"])
    third = _record(path, ["third"])
    assert first.path == path
    assert second.path == tmp_path / "run é 1_1.mcap"
    assert third.path == tmp_path / "run é 1_2.mcap"
    assert [_texts(r.path) for r in (first, second, third)] == [["first"], ["second"], ["third"]]


def test_flush_puts_what_was_recorded_on_disk_before_close(tmp_path):
    """A recorder killed after a flush: its file (never closed) holds every message so far."""
    recorder = _record(tmp_path / "live.mcap", ["a", "b", "c"], close=False)
    recorder.flush()
    killed = tmp_path / "killed.mcap"
    killed.write_bytes(recorder.path.read_bytes())  # the file as a SIGKILL would leave it
    info = ReadInfo()
    assert _texts(killed, info) == ["a", "b", "c"]
    assert not info.complete
    recorder.close()
    assert _texts(recorder.path) == ["a", "b", "c"]


CHILD = textwrap.dedent(
    """
    import json, logging, resource, sys
    from rclpy.serialization import serialize_message
    from std_msgs.msg import String
    from molmoact2.mcap_io import McapRecorder

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    # A full disk, emulated: writes past 64 KiB fail with EFBIG (Python ignores SIGXFSZ).
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
    recorder = McapRecorder(sys.argv[1], chunk_size=4096)
    recorder.add_topic("/notes", "std_msgs/msg/String", "string data\\n")
    for i in range(3000):
        data = serialize_message(String(data=f"note {i:05d} " + "x" * 40))
        recorder.write("/notes", data, 10 + i, 10 + i)
    recorder.close()
    print(json.dumps({"failed": recorder.failed, "dropped": recorder.dropped,
                      "counts": recorder.counts}))
    """
)


def test_a_full_disk_stops_the_recording_with_one_error_and_keeps_what_was_written(tmp_path):
    path = tmp_path / "full.mcap"
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, timeout=60
    )
    assert child.returncode == 0, child.stderr
    assert "Traceback" not in child.stderr
    errors = [line for line in child.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and str(path) in errors[0] and "File too large" in errors[0]
    import json

    result = json.loads(child.stdout)
    written = result["counts"]["/notes"]
    assert result["failed"] and 0 < written < 3000
    assert written + result["dropped"] == 3000
    info = ReadInfo()
    texts = _texts(path, info)
    assert not info.complete
    # Whole chunks before the failed write are there, in order, and nothing else.
    assert texts == [f"note {i:05d} " + "x" * 40 for i in range(len(texts))]
    assert 0 < len(texts) <= written


def test_output_dir_with_a_tilde_means_the_home_directory(monkeypatch, tmp_path):
    from molmoact2.recorder_node import RecorderParams

    monkeypatch.setenv("HOME", str(tmp_path))
    params = RecorderParams(output_dir="~/recordings", file_name="run.mcap", topics=("a",))
    assert params.output_path() == tmp_path / "recordings" / "run.mcap"


@pytest.mark.parametrize("name", ["../run.mcap", "/tmp/run.mcap", "sub/run.mcap", "..", "."])
def test_a_file_name_that_leaves_output_dir_is_refused(name):
    from molmoact2.recorder_node import RecorderParams

    problems = RecorderParams(file_name=name, topics=("a",)).validate()
    assert any("file_name" in p and "plain file name" in p for p in problems), problems
    assert RecorderParams(file_name="run 1 é.mcap", topics=("a",)).validate() == []


def test_a_recording_deleted_while_open_is_an_error_and_the_last_line_says_so(tmp_path, caplog):
    import logging

    from molmoact2.recorder_node import exit_report

    recorder = _record(tmp_path / "gone.mcap", ["a"], close=False)
    recorder.path.unlink()  # `rm -r out/` while the graph runs
    with caplog.at_level(logging.ERROR, logger="molmoact2.recording"):
        recorder.flush()
        recorder.flush()
        recorder.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "deleted while recording" in errors[0]
    assert "was deleted while recording" in exit_report(recorder, {"/notes"})


def test_the_last_line_names_the_topics_nothing_was_recorded_on(tmp_path):
    from molmoact2.recorder_node import exit_report

    recorder = _record(tmp_path / "run.mcap", ["a", "b"])
    line = exit_report(recorder, {"/notes", "/camera/image", "/joint_states"})
    assert line.startswith(f"wrote {recorder.path} (/notes: 2)")
    assert "nothing recorded on /camera/image, /joint_states" in line
    assert "nothing recorded" not in exit_report(recorder, {"/notes"})


def test_a_recorder_killed_at_once_leaves_a_readable_file(tmp_path):
    recorder = McapRecorder(tmp_path / "early.mcap")  # never closed: SIGKILL in its first second
    killed = tmp_path / "killed.mcap"
    killed.write_bytes(recorder.path.read_bytes())
    info = ReadInfo()
    assert _texts(killed, info) == [] and not info.complete
    recorder.close()
