"""ROS message <-> executor types (messages are duck-typed; classes are imported lazily)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hw_drivers.chunk import Chunk


def stamp_to_seconds(stamp: Any) -> float:
    """builtin_interfaces/Time or Duration -> seconds."""
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def seconds_to_time_msg(seconds: float):
    """Seconds -> builtin_interfaces/Time."""
    from builtin_interfaces.msg import Time

    sec = int(np.floor(seconds))
    nanosec = round((seconds - sec) * 1e9)
    if nanosec >= 1_000_000_000:
        sec, nanosec = sec + 1, nanosec - 1_000_000_000
    return Time(sec=sec, nanosec=nanosec)


def chunk_from_msg(msg: Any) -> Chunk:
    """molmoact2_msgs/ActionChunk -> Chunk; ``ValueError`` when the layout is inconsistent."""
    names = tuple(msg.joint_names)
    positions = np.asarray(msg.positions, dtype=float)
    horizon = int(msg.horizon)
    if len(names) == 0:
        raise ValueError("chunk has no joint names")
    if positions.size != horizon * len(names):
        raise ValueError(
            f"chunk has {positions.size} positions for horizon {horizon} x {len(names)} joints"
        )
    return Chunk(
        stamp=stamp_to_seconds(msg.header.stamp),
        start_offset=stamp_to_seconds(msg.start_offset),
        step_dt=float(msg.step_dt),
        joint_names=names,
        positions=positions.reshape(horizon, len(names)),
        sequence=int(msg.sequence),
        latency=float(msg.inference_latency),
        velocities=np.asarray(msg.velocities, dtype=float),  # checked by the safety layer
    )


def chunk_to_msg(chunk: Chunk, mode: str = "flow", instruction: str = ""):
    """Chunk -> molmoact2_msgs/ActionChunk (for tests, benches and tools)."""
    from builtin_interfaces.msg import Duration

    from molmoact2_msgs.msg import ActionChunk

    msg = ActionChunk()
    msg.header.stamp = seconds_to_time_msg(chunk.stamp)
    offset = seconds_to_time_msg(chunk.start_offset)
    msg.start_offset = Duration(sec=offset.sec, nanosec=offset.nanosec)
    msg.step_dt = float(chunk.step_dt)
    msg.joint_names = list(chunk.joint_names)
    msg.horizon = chunk.horizon
    msg.positions = chunk.positions.reshape(-1).astype(float).tolist()
    msg.velocities = chunk.velocities.reshape(-1).astype(float).tolist()
    msg.sequence = int(chunk.sequence)
    msg.inference_latency = float(chunk.latency)
    msg.mode = mode
    msg.instruction = instruction
    return msg


def joint_state_msg(
    names: Sequence[str],
    positions: np.ndarray,
    stamp_seconds: float,
    velocities: np.ndarray | None = None,
    efforts: np.ndarray | None = None,
):
    """sensor_msgs/JointState stamped at ``stamp_seconds``."""
    from sensor_msgs.msg import JointState

    msg = JointState()
    msg.header.stamp = seconds_to_time_msg(stamp_seconds)
    msg.name = list(names)
    msg.position = np.asarray(positions, dtype=float).tolist()
    if velocities is not None:
        msg.velocity = np.asarray(velocities, dtype=float).tolist()
    if efforts is not None:
        msg.effort = np.asarray(efforts, dtype=float).tolist()
    return msg
