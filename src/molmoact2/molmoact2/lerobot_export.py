"""``molmoact2 export lerobot REC.mcap [...] --out DIR``: recordings -> a LeRobot v3.0 dataset.

The layout is LeRobot's codebase v3.0 as its own writer lays it out (``lerobot/datasets/
utils.py``: ``meta/info.json``, ``meta/stats.json``, ``meta/tasks.parquet``,
``meta/episodes/chunk-000/file-000.parquet``, ``data/chunk-000/file-000.parquet``,
``videos/<key>/chunk-000/file-000.mp4``), so LeRobot's dataset class and MolmoAct2
fine-tuning read it. Every episode's frames sit in one data file and one video file per
camera; an episode's place in them is its ``dataset_from_index``/``dataset_to_index`` and its
``videos/<key>/from_timestamp``/``to_timestamp``.

Frames are sampled on a grid at the model's rate (the embodiment's ``rate_hz``, so one dataset
frame is one action step) from the first instant every input exists: each camera contributes
its newest image stamped at or before the frame time, ``observation.state`` is the newest
measured ``joint_states`` and ``action`` the newest command the driver sent
(``<driver>/commanded_joint_states``), both in the model's joint order. One episode per
recording, or, with ``split_on_instruction``, one per instruction the policy ran (what a
``~/run_task`` goal sets; paused stretches are dropped). Alongside LeRobot's ``stats.json``
the robot's ``norm_stats.json`` is written in the format our loader and the released model
read, for fine-tuning with the exported data.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from molmoact2 import graph

LOG = logging.getLogger("molmoact2.export")
CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
VIDEO_CODEC = "libx264"  # h264 in yuv420p: decoded by LeRobot's pyav/torchcodec backends
STATE_KEY = "observation.state"
ACTION_KEY = "action"
NS = 1_000_000_000


class ExportError(ValueError):
    """A recording that cannot become a dataset; the message says what is missing."""


def video_key(camera: str) -> str:
    return f"observation.images.{camera}"


@dataclass
class _Series:
    """Time-stamped samples of one input, for "newest at or before t" lookups."""

    stamps: list[int] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)

    def add(self, stamp: int, value: Any) -> None:
        self.stamps.append(stamp)
        self.values.append(value)

    def sorted(self) -> _Series:
        order = np.argsort(np.asarray(self.stamps, dtype=np.int64), kind="stable")
        return _Series([self.stamps[i] for i in order], [self.values[i] for i in order])

    def index_at(self, times: np.ndarray) -> np.ndarray:
        """Index of the newest sample at or before each time (-1: none yet)."""
        return np.searchsorted(np.asarray(self.stamps, dtype=np.int64), times, side="right") - 1


@dataclass
class RecordingSeries:
    """What one recording holds for export (images are read again, per camera, when encoding)."""

    path: Path
    camera_stamps: dict[str, _Series]
    camera_shapes: dict[str, tuple[int, int, int]]
    state: _Series
    command: _Series
    instructions: _Series  # chunk capture stamp -> instruction the chunk was computed for


@dataclass(frozen=True)
class EpisodePlan:
    recording: Path
    task: str
    frame_times: np.ndarray  # ns, on the model-rate grid
    camera_ordinals: dict[str, np.ndarray]  # per frame: the image's place in its topic
    states: np.ndarray  # (frames, dim) float32
    actions: np.ndarray  # (frames, dim) float32


def _stamp(header: Any) -> int:
    return int(header.stamp.sec) * NS + int(header.stamp.nanosec)


def _ordered(names: Sequence[str], positions: Sequence[float], joints: Sequence[str]) -> Any:
    """The positions of ``joints`` in that order; None if a message lacks one, has fewer
    positions than names (a malformed JointState), or a NaN/inf among them."""
    if len(positions) != len(names):
        return None
    index = {name: i for i, name in enumerate(names)}
    if any(j not in index for j in joints):
        return None
    values = np.asarray([positions[index[j]] for j in joints], dtype=np.float64)
    return values if np.all(np.isfinite(values)) else None


def read_recording(path: Path, config: graph.RobotConfig) -> RecordingSeries:
    """Stamps of every image and the low-dimensional streams of one MCAP recording."""
    from molmoact2.mcap_io import read_messages

    shared = config.shared
    joints = list(shared["joint_names"])
    camera_topics = {
        graph.resolve_topic("", t): name
        for name, t in zip(shared["camera_names"], shared["camera_topics"], strict=True)
    }
    state_topic = graph.resolve_topic("", "joint_states")
    command_topic = graph.resolve_topic("", f"{config.driver_name}/commanded_joint_states")
    chunk_topic = graph.resolve_topic("", f"{graph.POLICY_NODE}/action_chunk")
    cameras = {name: _Series() for name in camera_topics.values()}
    shapes: dict[str, tuple[int, int, int]] = {}
    state, command, instructions = _Series(), _Series(), _Series()
    topics = [*camera_topics, state_topic, command_topic, chunk_topic]
    ordinals = dict.fromkeys(cameras, 0)
    compressed: set[str] = set()
    bad_images: dict[str, list] = {}
    convertible: set[tuple] = set()
    unusable: dict[str, tuple[list[str], int]] = {}  # the first message each topic could not use
    for topic, _log_ns, msg in read_messages(path, topics):
        if topic in camera_topics:
            camera = camera_topics[topic]
            ordinal, ordinals[camera] = ordinals[camera], ordinals[camera] + 1
            if not hasattr(msg, "height"):
                compressed.add(camera)
                continue
            problem = _image_problem(msg, shapes.get(camera), convertible)
            if problem:
                # A frame the video cannot take (another size, a bad buffer or encoding):
                # the frames around it stand in for it, as for a dropped frame.
                bad_images.setdefault(camera, [0, problem])[0] += 1
                continue
            shapes.setdefault(camera, (int(msg.height), int(msg.width), 3))
            stamp = _stamp(msg.header)
            series = cameras[camera]
            # Images are encoded in one streaming pass in file order: one whose stamp goes
            # back in time (a reordered delivery) is left out rather than buffered.
            if not series.stamps or stamp > series.stamps[-1]:
                series.add(stamp, ordinal)
        elif topic in (state_topic, command_topic):
            values = _ordered(msg.name, msg.position, joints)
            if values is not None:
                (state if topic == state_topic else command).add(_stamp(msg.header), values)
            else:  # another joint group's message, or a bad sample
                unusable.setdefault(topic, (list(msg.name), len(msg.position)))
        elif topic == chunk_topic:
            instructions.add(_stamp(msg.header), str(msg.instruction))
    for camera, (count, problem) in bad_images.items():
        LOG.warning("%s: left out %d images of camera %r (the first: %s)", path, count, camera,
                    problem)
    for camera in cameras:
        if camera in compressed and camera not in shapes:
            raise ExportError(f"{path}: camera {camera!r} images are compressed; record raw")
    missing = [c for c, s in cameras.items() if not s.stamps]
    missing += [t for t, s in ((state_topic, state), (command_topic, command)) if not s.stamps]
    if missing:
        why = [
            f"{topic} had messages, none with a finite position for each of {joints} (the "
            f"first named {names} with {count} positions)"
            for topic, (names, count) in unusable.items()
            if topic in missing
        ]
        raise ExportError(
            f"{path}: nothing recorded on {', '.join(missing)}" + "".join(f"; {w}" for w in why)
        )
    return RecordingSeries(
        path, cameras, shapes, state.sorted(), command.sorted(), instructions.sorted()
    )


def plan_episodes(
    series: RecordingSeries,
    fps: float,
    *,
    task: str = "",
    split_on_instruction: bool = False,
) -> list[EpisodePlan]:
    """The episodes of one recording: frame times, image choices, states and actions."""
    starts = [s.stamps[0] for s in series.camera_stamps.values()]
    starts += [series.state.stamps[0], series.command.stamps[0]]
    ends = [s.stamps[-1] for s in series.camera_stamps.values()]
    ends += [series.state.stamps[-1], series.command.stamps[-1]]
    start, end = max(starts), min(ends)
    if end <= start:
        raise ExportError(f"{series.path}: the inputs never overlap in time")
    step = NS / fps
    times = start + np.round(np.arange(int((end - start) // step) + 1) * step).astype(np.int64)

    chunk_index = series.instructions.index_at(times)
    recorded = np.array(
        [series.instructions.values[i] if i >= 0 else "" for i in chunk_index], dtype=object
    )
    if split_on_instruction:
        runs = [(b, e, str(recorded[b])) for b, e in _runs(recorded) if recorded[b]]
    else:
        named = [t for t in series.instructions.values if t]
        most_common = max(set(named), key=named.count) if named else ""
        runs = [(0, len(times), most_common)] if (most_common or task) else []

    episodes = []
    for begin, stop, label in runs:
        frame_times = times[begin:stop]
        episodes.append(
            EpisodePlan(
                recording=series.path,
                task=task or label,  # --task names every episode; the split stays recorded
                frame_times=frame_times,
                camera_ordinals={
                    camera: np.asarray(s.values, dtype=np.int64)[s.index_at(frame_times)]
                    for camera, s in series.camera_stamps.items()
                },
                states=_values_at(series.state, frame_times),
                actions=_values_at(series.command, frame_times),
            )
        )
    if not episodes:
        raise ExportError(
            f"{series.path}: no chunk carried an instruction; pass --task to name the task"
        )
    return episodes


def _runs(labels: np.ndarray) -> Iterator[tuple[int, int]]:
    begin = 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[begin]:
            yield begin, i
            begin = i


def _values_at(series: _Series, times: np.ndarray) -> np.ndarray:
    return np.stack([series.values[i] for i in series.index_at(times)]).astype(np.float32)


def _tasks_table(tasks: list[str]) -> Any:
    """meta/tasks.parquet: LeRobot reads it with pandas as a DataFrame indexed by the task text
    with a ``task_index`` column; the pandas metadata makes ``pd.read_parquet`` restore that
    index without pandas being needed here."""
    import pyarrow as pa

    table = pa.table(
        {
            "task_index": pa.array(range(len(tasks)), type=pa.int64()),
            "task": pa.array(tasks, type=pa.string()),
        }
    )
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [],
        "columns": [
            {"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
             "numpy_type": "int64", "metadata": None},
            {"name": "task", "field_name": "task", "pandas_type": "unicode",
             "numpy_type": "object", "metadata": None},
        ],
        "creator": {"library": "molmoact2", "version": "1"},
        "pandas_version": "2.2.3",
    }
    return table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})


def _feature_stats(values: np.ndarray) -> dict[str, Any]:
    """LeRobot's per-feature statistics (compute_stats.py keys) of (frames, dim) values."""
    return {
        "min": values.min(axis=0).tolist(),
        "max": values.max(axis=0).tolist(),
        "mean": values.mean(axis=0).tolist(),
        "std": values.std(axis=0).tolist(),
        "count": [int(values.shape[0])],
        "q01": np.quantile(values, 0.01, axis=0).tolist(),
        "q99": np.quantile(values, 0.99, axis=0).tolist(),
    }


def _image_stats(total: np.ndarray, total_sq: np.ndarray, minimum, maximum, count: int) -> dict:
    """Per-channel stats of images in [0, 1], shaped (3, 1, 1) as LeRobot keeps them."""
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))

    def shaped(v: np.ndarray) -> list:
        return np.asarray(v, dtype=np.float64).reshape(3, 1, 1).tolist()

    return {
        "min": shaped(minimum),
        "max": shaped(maximum),
        "mean": shaped(mean),
        "std": shaped(std),
        "count": [count],
    }


class _VideoWriter:
    """One camera's video file: frames appended in dataset order at the dataset's fps."""

    def __init__(self, path: Path, fps: int, shape: tuple[int, int, int]) -> None:
        import av

        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), mode="w")
        self.stream = self.container.add_stream(VIDEO_CODEC, rate=fps)
        self.stream.height, self.stream.width = shape[0], shape[1]
        self.stream.pix_fmt = "yuv420p"
        # Constant quality and a short GOP: training samples frames at random.
        self.stream.options = {"crf": "18", "g": "2"}
        self.frames = 0
        self._sum = np.zeros(3)
        self._sum_sq = np.zeros(3)
        self._min = np.full(3, np.inf)
        self._max = np.full(3, -np.inf)

    def add(self, image: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        pixels = image.reshape(-1, 3).astype(np.float64) / 255.0
        self._sum += pixels.mean(axis=0)
        self._sum_sq += (pixels**2).mean(axis=0)
        self._min = np.minimum(self._min, pixels.min(axis=0))
        self._max = np.maximum(self._max, pixels.max(axis=0))
        self.frames += 1

    def close(self) -> dict[str, Any]:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        return _image_stats(self._sum, self._sum_sq, self._min, self._max, self.frames)


def _image_problem(msg: Any, shape: tuple[int, int, int] | None, convertible: set[tuple]) -> str:
    """Why an image cannot be a frame of its camera's video ("" if it can).

    Whether an image converts depends on its layout only (encoding, size, step, buffer length,
    byte order), never on its pixels: one conversion per layout seen (``convertible``) checks
    every image of that layout.
    """
    from molmoact2_policy.image_conversion import ImageConversionError, image_msg_to_rgb

    size = (int(msg.height), int(msg.width), 3)
    if shape is not None and size != shape:
        return f"{size[1]}x{size[0]}, the camera's first image {shape[1]}x{shape[0]}"
    layout = (msg.encoding, size, int(msg.step), len(msg.data), bool(msg.is_bigendian))
    if layout in convertible:
        return ""
    try:
        image_msg_to_rgb(msg)
    except ImageConversionError as exc:
        return str(exc)
    convertible.add(layout)
    return ""


def _images(path: Path, topic: str) -> Iterator[tuple[int, Any]]:
    """(place in the topic, Image message) of each of the camera's images, in file order."""
    from molmoact2.mcap_io import read_messages

    for ordinal, (_topic, _log_ns, msg) in enumerate(read_messages(path, [topic])):
        yield ordinal, msg


def export_lerobot(
    recordings: Sequence[str | Path],
    out_dir: str | Path,
    *,
    robot: str,
    fps: float | None = None,
    task: str = "",
    split_on_instruction: bool = False,
) -> dict[str, Any]:
    """Write the dataset; returns its ``info.json``."""
    final = Path(out_dir)
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise ExportError(f"{final} exists and is not an empty directory")
    # Written beside the destination and moved there when whole: an export that fails half
    # way (a bad recording, a full disk) leaves no half dataset that a rerun would refuse.
    final.parent.mkdir(parents=True, exist_ok=True)
    # (mkdir, not mkdtemp: the dataset gets the permissions of any directory made here)
    staging = final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        info = _write_dataset(
            recordings, staging, robot=robot, fps=fps, task=task,
            split_on_instruction=split_on_instruction,
        )  # fmt: skip
        if final.exists():
            final.rmdir()  # empty (checked above)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    LOG.info(
        "wrote %s: %d episodes, %d frames, %d tasks",
        final, info["total_episodes"], info["total_frames"], info["total_tasks"],
    )  # fmt: skip
    return info


def _write_dataset(
    recordings: Sequence[str | Path],
    out: Path,
    *,
    robot: str,
    fps: float | None,
    task: str,
    split_on_instruction: bool,
) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from molmoact2_common.embodiments import get_embodiment
    from molmoact2_policy.image_conversion import image_msg_to_rgb
    from molmoact2_policy.model.normalize import NormStats

    config = graph.load_robot_config(robot)
    shared = config.shared
    embodiment = get_embodiment(shared["embodiment"])
    fps = float(embodiment.rate_hz if fps is None else fps)  # --fps 0 is an error, not "default"
    if not np.isfinite(fps) or fps <= 0 or fps != int(fps):
        raise ExportError(f"fps must be a positive whole number (LeRobot stores an int), got {fps}")
    fps_int = int(fps)
    joints = list(shared["joint_names"])
    cameras = list(shared["camera_names"])
    camera_topics = dict(zip(cameras, shared["camera_topics"], strict=True))

    plans: list[EpisodePlan] = []
    shapes: dict[str, tuple[int, int, int]] = {}
    for recording in recordings:
        series = read_recording(Path(recording), config)
        for camera, shape in series.camera_shapes.items():
            if shapes.setdefault(camera, shape) != shape:
                raise ExportError(
                    f"{recording}: camera {camera!r} is {shape}, "
                    f"earlier recordings {shapes[camera]}"
                )
        plans += plan_episodes(
            series, fps, task=task, split_on_instruction=split_on_instruction
        )

    tasks = sorted({p.task for p in plans})
    task_index = {t: i for i, t in enumerate(tasks)}
    writers = {
        c: _VideoWriter(
            out / VIDEO_PATH.format(video_key=video_key(c), chunk_index=0, file_index=0),
            fps_int,
            shapes[c],
        )
        for c in cameras
    }
    rows: dict[str, list] = {
        k: []
        for k in (STATE_KEY, ACTION_KEY, "timestamp", "frame_index", "episode_index", "index",
                  "task_index")
    }
    episodes: list[dict[str, Any]] = []
    offset = 0
    for plan_index, plan in enumerate(plans):
        length = len(plan.frame_times)
        rows[STATE_KEY] += list(plan.states)
        rows[ACTION_KEY] += list(plan.actions)
        rows["timestamp"] += (np.arange(length, dtype=np.float32) / fps_int).tolist()
        rows["frame_index"] += list(range(length))
        rows["episode_index"] += [plan_index] * length
        rows["index"] += list(range(offset, offset + length))
        rows["task_index"] += [task_index[plan.task]] * length
        row: dict[str, Any] = {
            "episode_index": plan_index,
            "tasks": [plan.task],
            "length": length,
            "data/chunk_index": 0,
            "data/file_index": 0,
            "dataset_from_index": offset,
            "dataset_to_index": offset + length,
            "meta/episodes/chunk_index": 0,
            "meta/episodes/file_index": 0,
        }
        for camera in cameras:
            key = video_key(camera)
            row[f"videos/{key}/chunk_index"] = 0
            row[f"videos/{key}/file_index"] = 0
            row[f"videos/{key}/from_timestamp"] = offset / fps_int
            row[f"videos/{key}/to_timestamp"] = (offset + length) / fps_int
        for key, values in ((STATE_KEY, plan.states), (ACTION_KEY, plan.actions)):
            for stat, value in _feature_stats(values).items():
                row[f"stats/{key}/{stat}"] = value
        episodes.append(row)
        offset += length
    for camera in cameras:
        topic = graph.resolve_topic("", camera_topics[camera])
        for plan in plans:
            # Streamed: each image is decoded once, repeated while it is the newest, dropped.
            images = _images(plan.recording, topic)
            current, current_ordinal = None, -1
            for wanted in plan.camera_ordinals[camera]:
                if wanted != current_ordinal:  # only the frames used are converted
                    while current_ordinal < wanted:
                        current_ordinal, msg = next(images)
                    current = image_msg_to_rgb(msg)
                writers[camera].add(current)
    image_stats = {video_key(c): writers[c].close() for c in cameras}

    def vectors(values: list, dim: int) -> Any:
        flat = pa.array(np.asarray(values, dtype=np.float32).reshape(-1), type=pa.float32())
        return pa.FixedSizeListArray.from_arrays(flat, dim)

    table = pa.table(
        {
            STATE_KEY: vectors(rows[STATE_KEY], len(joints)),
            ACTION_KEY: vectors(rows[ACTION_KEY], len(joints)),
            "timestamp": pa.array(rows["timestamp"], type=pa.float32()),
            "frame_index": pa.array(rows["frame_index"], type=pa.int64()),
            "episode_index": pa.array(rows["episode_index"], type=pa.int64()),
            "index": pa.array(rows["index"], type=pa.int64()),
            "task_index": pa.array(rows["task_index"], type=pa.int64()),
        }
    )
    data_path = out / DATA_PATH.format(chunk_index=0, file_index=0)
    data_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, data_path)
    episodes_path = out / EPISODES_PATH
    episodes_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(episodes), episodes_path)
    pq.write_table(_tasks_table(tasks), out / "meta" / "tasks.parquet")

    all_states = np.asarray(rows[STATE_KEY], dtype=np.float32)
    all_actions = np.asarray(rows[ACTION_KEY], dtype=np.float32)
    stats = {STATE_KEY: _feature_stats(all_states), ACTION_KEY: _feature_stats(all_actions)}
    stats.update(image_stats)
    (out / "meta" / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")

    features: dict[str, Any] = {
        STATE_KEY: {"dtype": "float32", "shape": [len(joints)], "names": joints},
        ACTION_KEY: {"dtype": "float32", "shape": [len(joints)], "names": joints},
    }
    for camera in cameras:
        height, width, channels = shapes[camera]
        features[video_key(camera)] = {
            "dtype": "video",
            "shape": [height, width, channels],
            "names": ["height", "width", "channels"],
            "info": {
                "video.height": height,
                "video.width": width,
                "video.codec": "h264",
                "video.pix_fmt": "yuv420p",
                "video.is_depth_map": False,
                "video.fps": fps_int,
                "video.channels": channels,
                "has_audio": False,
            },
        }
    for key in ("timestamp",):
        features[key] = {"dtype": "float32", "shape": [1], "names": None}
    for key in ("frame_index", "episode_index", "index", "task_index"):
        features[key] = {"dtype": "int64", "shape": [1], "names": None}
    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": str(shared["robot"]),
        "total_episodes": len(plans),
        "total_frames": offset,
        "total_tasks": len(tasks),
        "chunks_size": CHUNKS_SIZE,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 500,
        "fps": fps_int,
        "splits": {"train": f"0:{len(plans)}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH,
        "features": features,
    }
    (out / "meta" / "info.json").write_text(json.dumps(info, indent=4) + "\n")

    # The robot's norm stats, as MolmoAct2's checkpoints carry them (state and action groups
    # under the embodiment's tag), for fine-tuning with this data.
    def group(values: np.ndarray) -> dict[str, Any]:
        stats = _feature_stats(values)
        return {k: stats[k] for k in ("min", "max", "mean", "std", "q01", "q99")} | {
            "names": joints
        }

    norm = NormStats.from_dict(
        {
            "norm_mode": "min_max",
            "metadata_by_tag": {
                embodiment.norm_tag: {
                    "state_stats": group(all_states),
                    "action_stats": group(all_actions),
                    "action_horizon": embodiment.horizon,
                }
            },
        }
    )
    norm.save(out / "meta" / "norm_stats.json")
    return info


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="molmoact2 export lerobot",
        description="Turn MCAP recordings into a LeRobot v3.0 dataset (one episode per "
        "recording, or per instruction with --split-on-instruction).",
    )
    parser.add_argument("recordings", nargs="+", help="MCAP files written by record:=true")
    parser.add_argument("--out", required=True, help="dataset directory (new or empty)")
    parser.add_argument("--robot", default="yam", help="robot config the recordings came from")
    parser.add_argument("--fps", type=float, default=None,
                        help="frame rate (default: the embodiment's action rate)")
    parser.add_argument("--task", default="", help="task text (default: the recorded instruction)")
    parser.add_argument("--split-on-instruction", action="store_true",
                        help="one episode per instruction the policy ran (e.g. per task goal)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from molmoact2.mcap_io import RecordingError

    try:
        export_lerobot(
            args.recordings,
            args.out,
            robot=args.robot,
            fps=args.fps,
            task=args.task,
            split_on_instruction=args.split_on_instruction,
        )
    except (ExportError, RecordingError, graph.ConfigError, OSError) as exc:
        print(f"molmoact2 export: {exc}", file=sys.stderr)
        return 2
    return 0
