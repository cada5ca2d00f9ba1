"""The robot's frames as the config states them: static transforms and their tree (no ROS).

A robot config lists, in the ``molmoact2_tf`` section, one static transform per frame: the
frame, its parent, its translation (metres) and its rotation (roll, pitch, yaw in radians about
the parent's fixed x, y, z axes, as URDF ``rpy``). Arms' base frames hang off the world frame,
cameras' ``<camera>_link`` (REP-103 body axes: x forward) off the world or an arm, and each
optical frame (REP-103 optical axes: z forward, x right, y down) off its camera link.

``FrameTree`` answers what RViz's fixed-frame check answers: does a frame connect to another,
and with which pose. Quaternions come from transforms3d (the library tf_transformations wraps).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import transforms3d

# REP-103: the optical frame seen from its camera link (z forward, x right, y down).
OPTICAL_FROM_LINK_RPY = (-math.pi / 2.0, 0.0, -math.pi / 2.0)


@dataclass(frozen=True)
class StaticFrame:
    """One transform: ``child`` expressed in ``parent``."""

    parent: str
    child: str
    translation: tuple[float, float, float]
    rpy: tuple[float, float, float]

    @property
    def quaternion_xyzw(self) -> tuple[float, float, float, float]:
        """The rotation as geometry_msgs/Quaternion orders it (x, y, z, w)."""
        w, x, y, z = transforms3d.euler.euler2quat(*self.rpy, axes="sxyz")
        return (float(x), float(y), float(z), float(w))

    @property
    def matrix(self) -> np.ndarray:
        """4x4 homogeneous transform taking child coordinates to parent coordinates."""
        out = np.eye(4)
        out[:3, :3] = transforms3d.euler.euler2mat(*self.rpy, axes="sxyz")
        out[:3, 3] = self.translation
        return out


def static_frames_from_params(
    frames: Sequence[str],
    parents: Sequence[str],
    xyz: Sequence[float],
    rpy: Sequence[float],
) -> list[StaticFrame]:
    """The config's parallel lists as transforms; ValueError naming the first problem."""
    n = len(frames)
    if len(parents) != n:
        raise ValueError(f"frame_parents has {len(parents)} entries for {n} frame_ids")
    for key, values in (("frame_xyz", xyz), ("frame_rpy", rpy)):
        if len(values) != 3 * n:
            raise ValueError(f"{key} needs 3 numbers per frame ({3 * n}), got {len(values)}")
        if not all(math.isfinite(float(v)) for v in values):
            raise ValueError(f"{key} has a non-finite number")
    out: list[StaticFrame] = []
    seen: set[str] = set()
    for i, (child, parent) in enumerate(zip(frames, parents, strict=True)):
        if not child or not parent:
            raise ValueError(f"frame {i}: empty frame id or parent")
        if child == parent:
            raise ValueError(f"frame {child!r} is its own parent")
        if child in seen:
            raise ValueError(f"frame {child!r} is listed twice (a frame has one parent)")
        seen.add(child)
        out.append(
            StaticFrame(
                parent=str(parent),
                child=str(child),
                translation=tuple(float(v) for v in xyz[3 * i : 3 * i + 3]),
                rpy=tuple(float(v) for v in rpy[3 * i : 3 * i + 3]),
            )
        )
    FrameTree.from_frames(out)  # raises on a cycle
    return out


class FrameTree:
    """Parent links between frames, each with the child's pose in its parent (4x4)."""

    def __init__(self) -> None:
        self._parent: dict[str, tuple[str, np.ndarray]] = {}

    @classmethod
    def from_frames(cls, frames: Sequence[StaticFrame]) -> FrameTree:
        tree = cls()
        for frame in frames:
            tree.set(frame.parent, frame.child, frame.matrix)
        return tree

    def set(self, parent: str, child: str, child_in_parent: np.ndarray) -> None:
        """Add or replace ``child``'s link to ``parent``; ValueError if it would close a loop."""
        node = parent
        while node in self._parent:
            if node == child:
                raise ValueError(f"frames form a loop through {child!r}")
            node = self._parent[node][0]
        if node == child:
            raise ValueError(f"frames form a loop through {child!r}")
        self._parent[child] = (parent, np.asarray(child_in_parent, dtype=np.float64))

    @property
    def frames(self) -> set[str]:
        return set(self._parent) | {parent for parent, _ in self._parent.values()}

    def root_of(self, frame: str) -> str:
        while frame in self._parent:
            frame = self._parent[frame][0]
        return frame

    def pose_in_root(self, frame: str) -> np.ndarray:
        """4x4 pose of ``frame`` in the root of its tree."""
        pose = np.eye(4)
        while frame in self._parent:
            parent, child_in_parent = self._parent[frame]
            pose = child_in_parent @ pose
            frame = parent
        return pose

    def lookup(self, target: str, source: str) -> np.ndarray | None:
        """Pose of ``source`` in ``target`` (4x4), or None when they are not connected."""
        if target not in self.frames or source not in self.frames:
            return None
        if self.root_of(target) != self.root_of(source):
            return None
        return np.linalg.inv(self.pose_in_root(target)) @ self.pose_in_root(source)


def unreachable(tree: FrameTree, fixed_frame: str, frames: Mapping[str, str]) -> dict[str, str]:
    """Of ``frames`` (frame id -> where it is used), those with no path to ``fixed_frame``."""
    return {f: where for f, where in frames.items() if tree.lookup(fixed_frame, f) is None}
