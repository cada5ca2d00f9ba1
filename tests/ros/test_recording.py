"""MCAP recording: schemas from the installed .msg files, and a read-back of what was written."""

from __future__ import annotations

import pytest

from molmoact2.mcap_io import McapRecorder, message_definition, read_messages

pytestmark = pytest.mark.ros


def test_message_definition_appends_nested_types_once():
    text = message_definition("molmoact2_msgs/msg/PolicyStatus")
    assert text.startswith("# Status of a molmoact2_policy node")
    assert text.count("MSG: std_msgs/Header") == 1
    assert text.count("MSG: builtin_interfaces/Time") == 1
    assert "MSG: molmoact2_msgs/InputAge" in text
    image = message_definition("sensor_msgs/msg/Image")
    assert "uint8[] data" in image and "MSG: std_msgs/Header" in image


def test_recorded_messages_read_back_with_the_mcap_reader(tmp_path):
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import JointState

    from molmoact2_msgs.msg import ActionChunk, DepthTokens

    path = tmp_path / "rec.mcap"
    recorder = McapRecorder(path)
    recorder.add_topic("/policy/action_chunk", "molmoact2_msgs/msg/ActionChunk")
    recorder.add_topic("/joint_states", "sensor_msgs/msg/JointState")
    recorder.add_topic("/depth", "molmoact2_msgs/msg/DepthTokens")
    for i in range(5):
        chunk = ActionChunk(joint_names=["a", "b"], horizon=2, positions=[i, 0.0, 1.0, 2.0])
        chunk.header.stamp.sec = 10 + i
        recorder.write("/policy/action_chunk", serialize_message(chunk), i, i)
        js = JointState(name=["a", "b"], position=[0.1 * i, 0.2])
        recorder.write("/joint_states", serialize_message(js), i, i)
    depth = DepthTokens(rows=2, cols=2, num_codes=128, codes=[1, 2, 3, 4])
    recorder.write("/depth", serialize_message(depth), 9, 9)
    recorder.write("/not_registered", b"\x00", 0, 0)  # ignored, not an error
    recorder.close()
    recorder.close()  # idempotent (shutdown paths may call it twice)

    got = list(read_messages(path))
    chunks = [m for t, _, m in got if t == "/policy/action_chunk"]
    assert [c.header.stamp.sec for c in chunks] == [10, 11, 12, 13, 14]
    assert list(chunks[3].positions) == [3.0, 0.0, 1.0, 2.0]
    states = [m for t, _, m in got if t == "/joint_states"]
    assert len(states) == 5 and states[2].position[0] == pytest.approx(0.2)
    assert [list(m.codes) for t, _, m in got if t == "/depth"] == [[1, 2, 3, 4]]
    assert recorder.counts == {"/policy/action_chunk": 5, "/joint_states": 5, "/depth": 1}
