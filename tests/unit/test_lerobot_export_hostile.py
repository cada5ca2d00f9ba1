"""`molmoact2 export lerobot` on recordings with bad camera frames, and exports that fail.

One image the video cannot take (a truncated buffer, an unknown encoding, a camera that changed
resolution) stopped the export with a traceback half way, leaving a half-written dataset
directory that the next run refused ("exists and is not empty"); a resized frame went into the
video silently rescaled. Such frames are now left out (the frame before stands in, as for a
dropped frame) with one warning per camera, and a failing export leaves nothing behind.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from molmoact2 import lerobot_export
from molmoact2.lerobot_export import ExportError, export_lerobot, main
from molmoact2.mcap_io import McapRecorder
from tests.unit.test_lerobot_export import camera_image, image_index, read_dataset, write_recording


def _with_bad_images(source: Path, target: Path, bad: dict[int, str]) -> None:
    """Copy ``source`` with the k-th image of the first camera topic replaced as ``bad`` says."""
    from mcap.reader import make_reader
    from rclpy.serialization import serialize_message

    from molmoact2_policy.image_conversion import make_image_msg

    recorder = McapRecorder(target)
    with open(source, "rb") as stream:
        reader = make_reader(stream)
        summary = reader.get_summary()
        for channel in summary.channels.values():
            recorder.add_topic(channel.topic, summary.schemas[channel.schema_id].name)
        camera_topic = min(c.topic for c in summary.channels.values() if "image" in c.topic)
        k = 0
        for _schema, channel, message in reader.iter_messages():
            data = message.data
            if channel.topic == camera_topic:
                if k in bad:
                    image = camera_image(k)
                    if bad[k] == "resized":
                        image = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)
                    msg = make_image_msg(image)
                    if bad[k] == "truncated":
                        msg.data = bytes(10)
                    elif bad[k] == "encoding":
                        msg.encoding = "weird42"
                    data = serialize_message(msg)
                k += 1
            recorder.write(channel.topic, data, message.log_time, message.publish_time)
    recorder.close()


def test_bad_frames_are_left_out_and_the_frame_before_stands_in(tmp_path, caplog):
    clean = tmp_path / "clean.mcap"
    write_recording(clean, [(0.0, 2.0, "stack the red block")])
    damaged = tmp_path / "damaged.mcap"
    _with_bad_images(clean, damaged, {10: "truncated", 20: "encoding", 30: "resized"})
    with caplog.at_level(logging.WARNING, logger="molmoact2.export"):
        info = export_lerobot([damaged], tmp_path / "ds", robot="yam")
    warnings = [r.getMessage() for r in caplog.records if "left out 3 images" in r.getMessage()]
    assert len(warnings) == 1 and "image data truncated" in warnings[0]
    reference = export_lerobot([clean], tmp_path / "ref", robot="yam")
    assert info["total_frames"] == reference["total_frames"]
    videos = read_dataset(tmp_path / "ds")["videos"]
    shown = [{image_index(frame) for frame in frames} for frames in videos.values()]
    damaged_camera = [s for s in shown if not {10, 20, 30} & s]  # the bad images are in none
    assert len(damaged_camera) == 1 and len(shown) == 3
    assert {9, 19, 29} <= damaged_camera[0]  # their predecessors stand in


def test_a_failing_export_leaves_no_half_dataset(tmp_path, monkeypatch):
    recording = tmp_path / "run.mcap"
    write_recording(recording, [(0.0, 2.0, "stack")])

    def disk_full(self):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lerobot_export._VideoWriter, "close", disk_full)
    out = tmp_path / "datasets" / "ds"
    with pytest.raises(OSError, match="No space left"):
        export_lerobot([recording], out, robot="yam")
    assert not out.exists() and list(out.parent.iterdir()) == []
    monkeypatch.undo()
    export_lerobot([recording], out, robot="yam")  # the rerun is not refused
    assert (out / "meta" / "info.json").is_file()


def test_an_output_path_that_is_a_file_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "ds").write_text("not a directory")
    with pytest.raises(ExportError, match="not an empty directory"):
        export_lerobot([tmp_path / "none.mcap"], tmp_path / "ds", robot="yam")
    assert main([str(tmp_path / "none.mcap"), "--out", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err
    assert "cannot open" in err and "Traceback" not in err


def _rewrite_joint_states(source: Path, target: Path, change) -> None:
    """Copy ``source`` with each /joint_states message (k-th) passed through ``change(k, msg)``."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import JointState

    recorder = McapRecorder(target)
    with open(source, "rb") as stream:
        reader = make_reader(stream, decoder_factories=[DecoderFactory()])
        summary = reader.get_summary()
        for channel in summary.channels.values():
            recorder.add_topic(channel.topic, summary.schemas[channel.schema_id].name)
        k = 0
        for _schema, channel, message, decoded in reader.iter_decoded_messages():
            data = message.data
            if channel.topic == "/joint_states":
                msg = JointState(name=list(decoded.name), position=list(decoded.position))
                msg.header.stamp.sec = decoded.header.stamp.sec
                msg.header.stamp.nanosec = decoded.header.stamp.nanosec
                data = serialize_message(change(k, msg))
                k += 1
            recorder.write(channel.topic, data, message.log_time, message.publish_time)
    recorder.close()


def test_joint_states_with_missing_positions_are_left_out(tmp_path):
    clean = tmp_path / "clean.mcap"
    write_recording(clean, [(0.0, 2.0, "stack")])
    damaged = tmp_path / "damaged.mcap"

    def drop_positions(k, msg):
        if k % 2:
            msg.position = msg.position[:1]  # names every joint, one position
        return msg

    _rewrite_joint_states(clean, damaged, drop_positions)
    info = export_lerobot([damaged], tmp_path / "ds", robot="yam")
    assert (
        info["total_frames"]
        == export_lerobot([clean], tmp_path / "ref", robot="yam")["total_frames"]
    )


def test_joint_states_of_another_robot_are_named_in_the_error(tmp_path, capsys):
    clean = tmp_path / "clean.mcap"
    write_recording(clean, [(0.0, 2.0, "stack")])
    other = tmp_path / "other.mcap"

    def other_robot(_k, msg):
        msg.name = [f"other_{i}" for i in range(len(msg.name))]
        return msg

    _rewrite_joint_states(clean, other, other_robot)
    assert main([str(other), "--out", str(tmp_path / "ds"), "--robot", "yam"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "nothing recorded on /joint_states" in err and "'other_0'" in err


@pytest.mark.parametrize("fps", ["0", "-30", "nan", "29.5"])
def test_an_fps_that_is_no_positive_whole_number_is_refused(tmp_path, capsys, fps):
    recording = tmp_path / "run.mcap"
    McapRecorder(recording).close()
    assert main([str(recording), "--out", str(tmp_path / "ds"), "--fps", fps]) == 2
    assert "fps must be a positive whole number" in capsys.readouterr().err
    assert not (tmp_path / "ds").exists()
