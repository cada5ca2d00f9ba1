"""``molmoact2 export lerobot``: an MCAP recording becomes a LeRobot v3.0 dataset.

LeRobot itself cannot be installed beside our pinned CPU torch (lerobot 0.4.4 needs
torch < 2.11 and torchvision), so the dataset is read back with pyarrow and PyAV against the
layout LeRobot's writer uses (``lerobot/datasets/utils.py``: path templates, info.json keys,
DEFAULT_FEATURES; episode metadata columns as its writer fills them), and every value is
checked against what the recording holds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from molmoact2 import graph
from molmoact2.lerobot_export import ExportError, export_lerobot
from molmoact2.mcap_io import McapRecorder

NS = 1_000_000_000
T0 = 1_700_000_000 * NS
SHAPE = (48, 64, 3)
CAMERA_RATE = 30.0


def camera_image(index: int) -> np.ndarray:
    """A flat colour that names the image: decoded video frames are matched back by colour."""
    image = np.empty(SHAPE, dtype=np.uint8)
    image[..., 0] = index * 4
    image[..., 1] = 255 - index * 4
    image[..., 2] = 128
    return image


def image_index(frame: np.ndarray) -> int:
    red = float(frame[..., 0].mean())
    green = float(frame[..., 1].mean())
    return round(((red + 255 - green) / 2) / 4)


def camera_stamp(k: int) -> int:
    return T0 + int(k * NS / CAMERA_RATE) + 1_000_000  # cameras start 1 ms after the arm


def joint_values(t_ns: int, dim: int, scale: float) -> np.ndarray:
    t = (t_ns - T0) / NS
    return scale * np.sin(t + np.arange(dim) * 0.3)


def write_recording(path: Path, instructions: list[tuple[float, float, str]]) -> dict:
    """2 s of YAM: 3 cameras at 30 Hz, joint states at 100 Hz, commands at 200 Hz, chunks."""
    from builtin_interfaces.msg import Time
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import JointState

    from molmoact2_msgs.msg import ActionChunk
    from molmoact2_policy.image_conversion import make_image_msg

    config = graph.load_robot_config("yam")
    joints = list(config.shared["joint_names"])
    cameras = dict(zip(config.shared["camera_names"], config.shared["camera_topics"], strict=True))
    recorder = McapRecorder(path)
    state_topic = "/joint_states"
    command_topic = f"/{config.driver_name}/commanded_joint_states"
    chunk_topic = "/molmoact2_policy/action_chunk"
    for topic in cameras.values():
        recorder.add_topic(f"/{topic}", "sensor_msgs/msg/Image")
    recorder.add_topic(state_topic, "sensor_msgs/msg/JointState")
    recorder.add_topic(command_topic, "sensor_msgs/msg/JointState")
    recorder.add_topic(chunk_topic, "molmoact2_msgs/msg/ActionChunk")

    def stamp(t_ns: int) -> Time:
        return Time(sec=t_ns // NS, nanosec=t_ns % NS)

    events = []
    for k in range(int(2.0 * CAMERA_RATE)):
        t = camera_stamp(k)
        for topic in cameras.values():
            msg = make_image_msg(camera_image(k), stamp=stamp(t), frame_id="cam")
            events.append((t, f"/{topic}", serialize_message(msg)))
    for k in range(200):
        t = T0 + k * 10_000_000
        msg = JointState(name=list(reversed(joints)))
        msg.header.stamp = stamp(t)
        msg.position = list(reversed(joint_values(t, len(joints), 0.5).tolist()))
        events.append((t, state_topic, serialize_message(msg)))
    for k in range(400):
        t = T0 + k * 5_000_000
        msg = JointState(name=joints, position=joint_values(t, len(joints), 0.7).tolist())
        msg.header.stamp = stamp(t)
        events.append((t, command_topic, serialize_message(msg)))
    for begin, end, text in instructions:
        for k in range(int(begin * 10), int(end * 10)):
            t = T0 + k * 100_000_000
            msg = ActionChunk(instruction=text, joint_names=joints)
            msg.header.stamp = stamp(t)
            events.append((t, chunk_topic, serialize_message(msg)))
    events.sort(key=lambda e: e[0])
    for t, topic, data in events:
        recorder.write(topic, data, t, t)
    recorder.close()
    return {"joints": joints, "cameras": list(cameras)}


def read_dataset(root: Path) -> dict:
    import av
    import pyarrow.parquet as pq

    info = json.loads((root / "meta/info.json").read_text())
    data = pq.read_table(root / info["data_path"].format(chunk_index=0, file_index=0))
    episodes = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet")
    tasks = pq.read_table(root / "meta/tasks.parquet")
    videos = {}
    for key, feature in info["features"].items():
        if feature["dtype"] != "video":
            continue
        path = root / info["video_path"].format(video_key=key, chunk_index=0, file_index=0)
        with av.open(str(path)) as container:
            videos[key] = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return {"info": info, "data": data, "episodes": episodes, "tasks": tasks, "videos": videos}


def expected_frames(start_ns: int, count: int, fps: float) -> np.ndarray:
    return start_ns + np.round(np.arange(count) * NS / fps).astype(np.int64)


def test_one_recording_becomes_one_episode_with_the_recorded_values(tmp_path):
    recording = tmp_path / "run.mcap"
    meta = write_recording(recording, [(0.0, 2.0, "stack the red block")])
    out = tmp_path / "dataset"
    info = export_lerobot([recording], out, robot="yam")
    ds = read_dataset(out)

    assert info == ds["info"]
    assert info["codebase_version"] == "v3.0" and info["fps"] == 30  # yam_bimanual: 30 Hz
    n = info["total_frames"]
    assert info["total_episodes"] == 1 and info["total_tasks"] == 1
    assert n == ds["data"].num_rows
    # The inputs overlap from the first camera image (1 ms after T0) to the last one.
    start = T0 + 1_000_000
    assert n == int((T0 + 59 * NS // 30 + 1_000_000 - start) // (NS / 30)) + 1
    data = ds["data"].to_pydict()
    assert data["index"] == list(range(n)) and data["frame_index"] == list(range(n))
    assert set(data["episode_index"]) == {0} and set(data["task_index"]) == {0}
    np.testing.assert_allclose(data["timestamp"], np.arange(n) / 30, atol=1e-6)
    times = expected_frames(start, n, 30.0)
    joints = meta["joints"]
    for i, t in enumerate(times):
        newest_state = T0 + (t - T0) // 10_000_000 * 10_000_000
        newest_command = T0 + (t - T0) // 5_000_000 * 5_000_000
        np.testing.assert_allclose(
            data["observation.state"][i], joint_values(newest_state, len(joints), 0.5), atol=1e-6
        )
        np.testing.assert_allclose(
            data["action"][i], joint_values(newest_command, len(joints), 0.7), atol=1e-6
        )
    assert info["features"]["observation.state"]["names"] == joints
    image_stamps = np.asarray([camera_stamp(k) for k in range(60)])
    for camera in meta["cameras"]:
        frames = ds["videos"][f"observation.images.{camera}"]
        assert len(frames) == n
        for i, t in enumerate(times):
            newest = int(np.searchsorted(image_stamps, t, side="right") - 1)
            assert image_index(frames[i]) == newest, (camera, i)
        feature = info["features"][f"observation.images.{camera}"]
        assert feature["shape"] == list(SHAPE) and feature["info"]["video.fps"] == 30

    episodes = ds["episodes"].to_pylist()
    assert episodes[0]["tasks"] == ["stack the red block"]
    assert (episodes[0]["dataset_from_index"], episodes[0]["dataset_to_index"]) == (0, n)
    assert ds["tasks"].to_pydict() == {"task_index": [0], "task": ["stack the red block"]}

    stats = json.loads((out / "meta/stats.json").read_text())
    states = np.asarray(data["observation.state"])
    np.testing.assert_allclose(stats["observation.state"]["mean"], states.mean(axis=0), rtol=1e-5)
    assert stats["observation.state"]["count"] == [n]

    from molmoact2_common.embodiments import get_embodiment
    from molmoact2_policy.model.normalize import NormStats

    norm = NormStats.from_file(out / "meta/norm_stats.json")
    tag = get_embodiment("yam_bimanual").norm_tag
    group = norm.group(tag, "action")
    actions = np.asarray(data["action"])
    np.testing.assert_allclose(group.stats["max"], actions.max(axis=0), rtol=1e-6)


def test_split_on_instruction_makes_one_episode_per_task_and_drops_paused_time(tmp_path):
    recording = tmp_path / "tasks.mcap"
    phases = [(0.0, 0.8, "open the drawer"), (0.8, 1.1, ""), (1.1, 2.0, "close it")]
    write_recording(recording, phases)
    out = tmp_path / "dataset"
    info = export_lerobot([recording], out, robot="yam", split_on_instruction=True)
    ds = read_dataset(out)
    episodes = ds["episodes"].to_pylist()
    assert [e["tasks"] for e in episodes] == [["open the drawer"], ["close it"]]
    assert info["total_episodes"] == 2 and info["total_tasks"] == 2
    first, second = episodes
    assert first["dataset_to_index"] == second["dataset_from_index"]
    assert second["dataset_to_index"] == info["total_frames"] == ds["data"].num_rows
    # About 0.3 s of paused policy is not in the dataset.
    assert abs(info["total_frames"] - (2.0 - 0.3) * 30) <= 3
    data = ds["data"].to_pydict()
    lengths = [e["length"] for e in episodes]
    assert data["episode_index"] == [0] * lengths[0] + [1] * lengths[1]
    assert data["frame_index"] == list(range(lengths[0])) + list(range(lengths[1]))
    key = "observation.images.top"
    assert len(ds["videos"][key]) == info["total_frames"]
    assert second[f"videos/{key}/from_timestamp"] == pytest.approx(lengths[0] / 30)


def test_a_recording_without_commands_or_instruction_is_refused_by_name(tmp_path):
    recording = tmp_path / "quiet.mcap"
    write_recording(recording, [])
    with pytest.raises(ExportError, match="--task"):
        export_lerobot([recording], tmp_path / "a", robot="yam")
    info = export_lerobot([recording], tmp_path / "b", robot="yam", task="wave")
    assert info["total_episodes"] == 1
    empty = tmp_path / "empty.mcap"
    McapRecorder(empty).close()
    with pytest.raises(ExportError, match="nothing recorded"):
        export_lerobot([empty], tmp_path / "c", robot="yam")
