"""ActionChunkResult -> ActionChunk / JointState / MarkerArray messages.

Message types are imported inside the builders, so the pure helpers here (row timing, result
checks) are usable and testable without ROS.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from molmoact2_policy.observation import NS_PER_S, ns_to_stamp
from molmoact2_policy.policy_api import ActionChunkResult

# Distinct colours for per-joint trajectory markers (RGB, 0..1), cycled over joints.
_PALETTE = (
    (0.12, 0.47, 0.71),
    (1.0, 0.5, 0.05),
    (0.17, 0.63, 0.17),
    (0.84, 0.15, 0.16),
    (0.58, 0.4, 0.74),
    (0.55, 0.34, 0.29),
    (0.89, 0.47, 0.76),
    (0.5, 0.5, 0.5),
    (0.74, 0.74, 0.13),
    (0.09, 0.75, 0.81),
)


def check_result(result: ActionChunkResult, joint_names: Sequence[str]) -> str | None:
    """Why ``result`` must not be published (None when it is fine)."""
    positions = np.asarray(result.positions)
    if positions.ndim != 2 or positions.shape[0] == 0:
        return f"policy returned positions of shape {positions.shape}, expected (horizon, joints)"
    if positions.shape[1] != len(joint_names):
        return (
            f"policy returned {positions.shape[1]} columns but {len(joint_names)} joint_names "
            f"are configured"
        )
    if not np.all(np.isfinite(positions)):
        rows, cols = np.nonzero(~np.isfinite(positions))
        return (
            f"policy returned non-finite positions (first at step {rows[0]}, "
            f"joint {joint_names[cols[0]]!r})"
        )
    if not (result.step_dt > 0.0 and math.isfinite(result.step_dt)):
        return f"policy returned step_dt {result.step_dt}"
    return None


def first_applicable_row(
    stamp_ns: int, start_offset: float, step_dt: float, horizon: int, now_ns: int
) -> int:
    """Index of the first row whose apply time is not in the past at ``now_ns`` (clamped)."""
    elapsed = (now_ns - stamp_ns) / NS_PER_S - start_offset
    if elapsed <= 0.0:
        return 0
    return min(horizon - 1, math.ceil(elapsed / step_dt - 1e-9))


def row_time_ns(stamp_ns: int, start_offset: float, step_dt: float, row: int) -> int:
    """Apply time of ``row``: stamp + start_offset + row * step_dt, in nanoseconds."""
    return stamp_ns + round((start_offset + row * step_dt) * NS_PER_S)


def _time_msg(stamp_ns: int) -> Any:
    from builtin_interfaces.msg import Time

    sec, nanosec = ns_to_stamp(stamp_ns)
    return Time(sec=sec, nanosec=nanosec)


def _duration_msg(seconds: float) -> Any:
    from builtin_interfaces.msg import Duration

    sec, nanosec = divmod(round(seconds * NS_PER_S), NS_PER_S)
    return Duration(sec=int(sec), nanosec=int(nanosec))


def action_chunk_msg(
    result: ActionChunkResult,
    *,
    stamp_ns: int,
    start_offset: float,
    joint_names: Sequence[str],
    sequence: int,
    inference_latency: float,
    instruction: str,
) -> Any:
    """molmoact2_msgs/ActionChunk for ``result`` computed from the observation at ``stamp_ns``."""
    from molmoact2_msgs.msg import ActionChunk

    positions = np.ascontiguousarray(result.positions, dtype=np.float64)
    msg = ActionChunk()
    msg.header.stamp = _time_msg(stamp_ns)
    msg.start_offset = _duration_msg(start_offset)
    msg.step_dt = float(result.step_dt)
    msg.joint_names = list(joint_names)
    msg.horizon = int(positions.shape[0])
    msg.positions = positions.ravel()  # row-major: positions[k * J + j]
    msg.sequence = int(sequence)
    msg.inference_latency = float(inference_latency)
    msg.mode = result.mode
    msg.instruction = instruction
    return msg


def predicted_joint_state_msg(
    result: ActionChunkResult,
    *,
    stamp_ns: int,
    start_offset: float,
    joint_names: Sequence[str],
    now_ns: int,
) -> Any:
    """sensor_msgs/JointState of the first row not yet in the past, stamped with its time."""
    from sensor_msgs.msg import JointState

    row = first_applicable_row(stamp_ns, start_offset, result.step_dt, result.horizon, now_ns)
    msg = JointState()
    msg.header.stamp = _time_msg(row_time_ns(stamp_ns, start_offset, result.step_dt, row))
    msg.name = list(joint_names)
    msg.position = [float(v) for v in result.positions[row]]
    return msg


def end_effector_paths(model: Any, positions: np.ndarray, links: Sequence[str]) -> np.ndarray:
    """(horizon, len(links), 3): each link's origin at every chunk row, by forward kinematics.

    ``model`` is a ``molmoact2_common.rigid_body.RigidBodyModel`` built for the chunk's joint names
    (``link_poses(row) -> {link: 4x4 in the URDF root}``).
    """
    paths = np.empty((len(positions), len(links), 3))
    for row, q in enumerate(np.asarray(positions, dtype=np.float64)):
        poses = model.link_poses(q)
        for column, link in enumerate(links):
            paths[row, column] = np.asarray(poses[link])[:3, 3]
    return paths


def end_effector_markers_msg(
    paths: np.ndarray,
    *,
    stamp_ns: int,
    links: Sequence[str],
    frame_id: str,
    line_width: float = 0.005,
) -> Any:
    """visualization_msgs/MarkerArray: per link, a LINE_STRIP through its predicted positions
    (``paths`` from ``end_effector_paths``) and a sphere where the chunk ends."""
    from geometry_msgs.msg import Point
    from visualization_msgs.msg import Marker, MarkerArray

    stamp = _time_msg(stamp_ns)
    array = MarkerArray()
    for index, link in enumerate(links):
        r, g, b = _PALETTE[index % len(_PALETTE)]
        points = [Point(x=float(x), y=float(y), z=float(z)) for x, y, z in paths[:, index]]
        for kind, marker_id in ((Marker.LINE_STRIP, 0), (Marker.SPHERE, 1)):
            marker = Marker()
            marker.header.stamp = stamp
            marker.header.frame_id = frame_id
            marker.ns = f"{link}_path"
            marker.id = marker_id
            marker.type = kind
            marker.action = Marker.ADD
            marker.pose.orientation.w = 1.0
            marker.color.r, marker.color.g, marker.color.b, marker.color.a = r, g, b, 1.0
            if kind == Marker.LINE_STRIP:
                marker.scale.x = line_width
                marker.points = points
            else:
                marker.scale.x = marker.scale.y = marker.scale.z = 4 * line_width
                marker.pose.position = points[-1]
            array.markers.append(marker)
    return array


def chunk_markers_msg(
    result: ActionChunkResult,
    *,
    stamp_ns: int,
    start_offset: float,
    joint_names: Sequence[str],
    frame_id: str,
    line_width: float = 0.005,
) -> Any:
    """visualization_msgs/MarkerArray: per joint, a LINE_STRIP of (time from stamp, position)."""
    from geometry_msgs.msg import Point
    from visualization_msgs.msg import Marker, MarkerArray

    stamp = _time_msg(stamp_ns)
    times = start_offset + np.arange(result.horizon) * result.step_dt
    array = MarkerArray()
    for index, name in enumerate(joint_names):
        marker = Marker()
        marker.header.stamp = stamp
        marker.header.frame_id = frame_id
        marker.ns = name
        marker.id = 0
        marker.type = Marker.LINE_STRIP
        marker.action = Marker.ADD
        marker.pose.orientation.w = 1.0
        marker.scale.x = line_width
        r, g, b = _PALETTE[index % len(_PALETTE)]
        marker.color.r, marker.color.g, marker.color.b, marker.color.a = r, g, b, 1.0
        marker.points = [
            Point(x=float(t), y=float(p), z=0.0)
            for t, p in zip(times, result.positions[:, index], strict=True)
        ]
        array.markers.append(marker)
    return array
