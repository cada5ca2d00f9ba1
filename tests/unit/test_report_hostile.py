"""`molmoact2 report` on recordings of misbehaving publishers.

The recorder writes whatever was published: a chunk whose positions do not fill horizon x
joints, a depth grid with too few codes, joint states naming other joints than the commands,
NaN latencies or positions. The report used to stop with a traceback on each (a reshape, an
index out of range, a histogram of NaN) and wrote NaN into summary.json (not JSON). Such
messages are now left out and counted, and the summary says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from molmoact2 import report
from molmoact2.mcap_io import McapRecorder

CHUNK = "/molmoact2_policy/action_chunk"
DEPTH = "/molmoact2_policy/depth_tokens"
MEASURED = "/joint_states"
COMMANDED = "/arm_driver/commanded_joint_states"


def _recording(path: Path, chunks=(), depths=(), measured=(), commanded=()) -> Path:
    from rclpy.serialization import serialize_message

    recorder = McapRecorder(path)
    recorder.add_topic(CHUNK, "molmoact2_msgs/msg/ActionChunk")
    recorder.add_topic(DEPTH, "molmoact2_msgs/msg/DepthTokens")
    recorder.add_topic(MEASURED, "sensor_msgs/msg/JointState")
    recorder.add_topic(COMMANDED, "sensor_msgs/msg/JointState")
    t = 10**9
    for topic, msgs in ((CHUNK, chunks), (DEPTH, depths), (MEASURED, measured),
                        (COMMANDED, commanded)):  # fmt: skip
        for msg in msgs:
            t += 10**7
            recorder.write(topic, serialize_message(msg), t, t)
    recorder.close()
    return path


def _chunk(horizon: int, names: list[str], positions: list[float], latency: float = 0.1):
    from molmoact2_msgs.msg import ActionChunk

    return ActionChunk(
        joint_names=names,
        horizon=horizon,
        positions=positions,
        step_dt=0.1,
        inference_latency=latency,
    )


def _joints(names: list[str], positions: list[float], sec: int):
    from sensor_msgs.msg import JointState

    msg = JointState(name=names, position=positions)
    msg.header.stamp.sec = sec
    return msg


def _depth(rows: int, cols: int, codes: list[int], changed: list[bool]):
    from molmoact2_msgs.msg import DepthTokens

    return DepthTokens(rows=rows, cols=cols, num_codes=8, codes=codes, changed=changed)


def _good_joints(n: int = 10, names=("a", "b")) -> list:
    return [_joints(list(names), [0.1 * i] * len(names), i) for i in range(n)]


def _strict_json(path: Path) -> dict:
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


CASES = {
    "chunk positions short of horizon x joints": dict(
        chunks=[_chunk(3, ["a", "b"], [0.0] * 4), _chunk(2, ["a", "b"], [0.0] * 4)],
        skipped=(CHUNK, 1, "4 positions for horizon 3 x 2 joints"),
    ),
    "depth codes short of the grid": dict(
        depths=[_depth(3, 2, [1, 2, 3, 4], []), _depth(2, 2, [1, 2, 3, 4], [True] * 4)],
        skipped=(DEPTH, 1, "4 codes"),
    ),
    "depth changed flags short of the grid": dict(
        depths=[_depth(2, 2, [1, 2, 3, 4], [True])], skipped=(DEPTH, 1, "1 changed flags")
    ),
    "measured joints other than the commanded ones": dict(
        measured=_good_joints(names=("a",)),
        commanded=_good_joints(names=("a", "b")),
        chunks=[_chunk(1, ["a", "b"], [0.0, 0.0])],
        skipped=None,
    ),
    "a joint state with no names first": dict(
        measured=[_joints([], [], 0), *_good_joints()], skipped=(MEASURED, 1, "no joint names")
    ),
    "NaN latencies and positions": dict(
        chunks=[_chunk(1, ["a", "b"], [0.0, 0.0], float("nan"))] * 3,
        measured=[_joints(["a", "b"], [float("nan"), 0.0], i) for i in range(10)],
        commanded=_good_joints(),
        skipped=None,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_report_leaves_out_and_counts_malformed_messages(tmp_path, capsys, case):
    spec = dict(CASES[case])
    skipped = spec.pop("skipped")
    path = _recording(tmp_path / "rec.mcap", **spec)
    assert report.main([str(path), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    summary = _strict_json(tmp_path / "out" / "summary.json")
    if skipped is not None:
        topic, count, reason = skipped
        assert summary["skipped"][topic]["count"] == count
        assert reason in summary["skipped"][topic]["reason"]
        assert f"skipped {count} malformed messages on {topic}" in out


names_st = st.lists(st.sampled_from(["a", "b", "c"]), max_size=3)
floats_st = st.floats(allow_nan=True, allow_infinity=True, width=32)


@settings(max_examples=40, derandomize=True, deadline=None, database=None)
@given(
    chunks=st.lists(
        st.tuples(st.integers(0, 3), names_st, st.lists(floats_st, max_size=7), floats_st),
        max_size=4,
    ),
    joints=st.lists(st.tuples(names_st, st.lists(floats_st, max_size=3)), max_size=6),
    commands=st.lists(st.tuples(names_st, st.lists(floats_st, max_size=3)), max_size=6),
)
def test_summary_of_any_mix_of_messages_is_plain_json(tmp_path_factory, chunks, joints, commands):
    path = _recording(
        tmp_path_factory.mktemp("rec") / "rec.mcap",
        chunks=[_chunk(h, n, p, lat) for h, n, p, lat in chunks],
        measured=[_joints(n, p, i) for i, (n, p) in enumerate(joints)],
        commanded=[_joints(n, p, i) for i, (n, p) in enumerate(commands)],
    )
    summary = report.summarize(report.load_recording(path))
    json.loads(json.dumps(summary, allow_nan=False))
    report.format_summary(summary)


def test_a_users_topic_named_like_ours_with_another_type_is_counted_not_read(tmp_path, capsys):
    from rclpy.serialization import serialize_message
    from std_msgs.msg import String

    path = tmp_path / "rec.mcap"
    recorder = McapRecorder(path)
    for topic in ("/gripper/status", "/other/joint_states", "/x/action_chunk"):
        recorder.add_topic(topic, "std_msgs/msg/String")
        recorder.write(topic, serialize_message(String(data="hello")), 10**9, 10**9)
    recorder.close()
    assert report.main([str(path), "--out", str(tmp_path / "out")]) == 0
    summary = _strict_json(tmp_path / "out" / "summary.json")
    assert summary["topics"]["/gripper/status"]["count"] == 1
    assert summary["chunks"] == 0 and summary["measurements"] == 0
