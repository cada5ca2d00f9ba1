"""Recordings that are not whole: a killed recorder's torn file, empty files, other formats.

A recorder killed with SIGKILL (or the OOM killer, a power cut) leaves an MCAP file without
its summary and footer, ending inside a chunk. mcap's own reader then fails before the first
message (it looks for the footer first), so such a file used to give `molmoact2 report` and
`molmoact2 export lerobot` a traceback and nothing else. The whole chunks before the torn end
are intact (each has a CRC): they are read, and the report says the file is incomplete.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from molmoact2 import report
from molmoact2.lerobot_export import main as export_main
from molmoact2.mcap_io import McapRecorder, ReadInfo, RecordingError, read_messages

MESSAGES = 400


def _write(path: Path, count: int = MESSAGES, chunk_size: int = 2048) -> list[int]:
    """A recording of ``count`` joint states in small chunks; returns the recorded stamps."""
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import JointState

    recorder = McapRecorder(path, chunk_size=chunk_size)
    recorder.add_topic("/joint_states", "sensor_msgs/msg/JointState")
    for i in range(count):
        msg = JointState(name=["a", "b"], position=[0.01 * i, 0.5])
        msg.header.stamp.sec = 100 + i
        recorder.write("/joint_states", serialize_message(msg), 10**9 + i, 10**9 + i)
    recorder.close()
    return [100 + i for i in range(count)]


@functools.cache
def _whole() -> tuple[bytes, list[int]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "whole.mcap"
        stamps = _write(path)
        return path.read_bytes(), stamps


@pytest.fixture
def whole() -> tuple[bytes, list[int]]:
    return _whole()


def test_a_whole_recording_reads_complete(tmp_path, whole):
    data, stamps = whole
    path = tmp_path / "whole.mcap"
    path.write_bytes(data)
    info = ReadInfo()
    got = [m.header.stamp.sec for _t, _ns, m in read_messages(path, info=info)]
    assert got == stamps
    assert info.complete and info.problem == "" and info.messages == len(stamps)


@settings(max_examples=60, derandomize=True, deadline=None, database=None)
@given(fraction=st.floats(min_value=0.0, max_value=1.0, exclude_max=True))
def test_a_torn_recording_gives_the_messages_before_the_tear(tmp_path_factory, fraction):
    """Cut anywhere: the messages read are the first k written, in order; the read says it is
    incomplete and never raises anything but RecordingError (a file cut inside its magic)."""
    data, stamps = _whole()
    cut = int(fraction * len(data))
    path = tmp_path_factory.mktemp("torn") / "torn.mcap"
    path.write_bytes(data[:cut])
    info = ReadInfo()
    try:
        got = [m.header.stamp.sec for _t, _ns, m in read_messages(path, info=info)]
    except RecordingError:
        assert cut < 8  # only a file without a whole MCAP magic is refused outright
        return
    assert got == stamps[: len(got)]
    if info.complete:  # cut inside the summary: every message was before it
        assert got == stamps
    else:
        assert "no summary" in info.problem
    if cut > len(data) // 2:  # 2 KB chunks: the first half of the file holds whole chunks
        assert len(got) >= MESSAGES // 4


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"", "empty file"),
        (b"\x89MCA", "cut short"),
        (b"PK\x03\x04 not a recording at all" * 10, "not an MCAP file"),
        (None, "cannot open"),
    ],
)
def test_report_on_a_file_that_is_no_recording_says_so_in_one_line(tmp_path, capsys, content, says):
    path = tmp_path / "bad recording é.mcap"
    if content is not None:
        path.write_bytes(content)
    assert report.main([str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_report_on_a_directory_says_so(tmp_path, capsys):
    assert report.main([str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "cannot open" in err and len(err.strip().splitlines()) == 1


def test_report_on_a_torn_recording_reports_what_was_recovered(tmp_path, whole, capsys):
    data, stamps = whole
    path = tmp_path / "torn.mcap"
    path.write_bytes(data[: int(len(data) * 0.7)])
    assert report.main([str(path), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("INCOMPLETE RECORDING: no summary")
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert "INCOMPLETE RECORDING" in summary
    recovered = report.load_recording(path)
    assert 0 < recovered.counts["/joint_states"] < len(stamps)
    assert recovered.incomplete


@pytest.mark.parametrize("content", [b"", b"garbage" * 100])
def test_export_of_a_file_that_is_no_recording_says_so_in_one_line(tmp_path, capsys, content):
    path = tmp_path / "bad.mcap"
    path.write_bytes(content)
    assert export_main([str(path), "--out", str(tmp_path / "ds")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("molmoact2 export: ") and "Traceback" not in err


def test_a_damaged_chunk_is_left_out_and_the_others_are_read(tmp_path, whole, capsys):
    """One flipped bit inside a chunk (a bad disk block) used to make the whole file
    unreadable; now only that chunk's messages are missing and the report says so."""
    from mcap.reader import make_reader

    data, stamps = whole
    with open(tmp_path / "probe.mcap", "wb") as f:
        f.write(data)
    with open(tmp_path / "probe.mcap", "rb") as f:
        chunks = sorted(
            make_reader(f).get_summary().chunk_indexes, key=lambda c: c.chunk_start_offset
        )
    second = chunks[1]
    damaged = bytearray(data)
    damaged[second.chunk_start_offset + second.chunk_length // 2] ^= 0x10
    path = tmp_path / "damaged.mcap"
    path.write_bytes(bytes(damaged))
    info = ReadInfo()
    got = [m.header.stamp.sec for _t, _ns, m in read_messages(path, info=info)]
    assert not info.complete and f"1 of {len(chunks)} chunks are damaged" in info.problem
    assert 0 < len(got) < len(stamps) and got == sorted(got)
    assert got[0] == stamps[0] and got[-1] == stamps[-1]  # the chunks around it are read
    assert report.main([str(path), "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.startswith("INCOMPLETE RECORDING: 1 of")


def test_a_message_that_does_not_decode_is_skipped_and_counted(tmp_path, capsys):
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import JointState

    path = tmp_path / "garbled.mcap"
    recorder = McapRecorder(path)
    recorder.add_topic("/joint_states", "sensor_msgs/msg/JointState")
    good = serialize_message(JointState(name=["a"], position=[1.0]))
    for i, data in enumerate([good, b"\x00\x01\x00\x00\xff\xff\xff\x7f", good, b"", good]):
        recorder.write("/joint_states", data, 10 + i, 10 + i)
    recorder.close()
    info = ReadInfo()
    assert len(list(read_messages(path, info=info))) == 3
    assert info.undecodable == 2 and info.complete
    assert report.main([str(path), "--out", str(tmp_path / "out")]) == 0
