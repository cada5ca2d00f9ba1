"""A TF listener for tests, written from tf2's message semantics (not from our publisher):

- ``/tf_static`` (transient local) and ``/tf`` carry ``tf2_msgs/TFMessage``; each
  ``TransformStamped`` says: ``child_frame_id``'s pose in ``header.frame_id`` at
  ``header.stamp``. Every frame has one parent: a newer transform for a child replaces the
  parent link (tf2 warns, and uses the latest).
- Static transforms hold for all time; dynamic ones are looked up at their latest stamp
  (tf2's ``lookup_transform(target, source, Time())``).
- A frame resolves to a target when both lie in one tree: walk each to its root and compose.

Rotations go through transforms3d; nothing here imports the suite's frame code.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import transforms3d


def pose_matrix(transform: Any) -> np.ndarray:
    """4x4 child-in-parent pose of a geometry_msgs/Transform."""
    t, r = transform.translation, transform.rotation
    out = np.eye(4)
    out[:3, :3] = transforms3d.quaternions.quat2mat([r.w, r.x, r.y, r.z])
    out[:3, 3] = [t.x, t.y, t.z]
    return out


class TfBuffer:
    """Latest transform per child frame from everything received on /tf and /tf_static."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._edges: dict[str, tuple[str, np.ndarray, bool]] = {}  # child -> parent, pose, static
        self.messages = {"/tf": 0, "/tf_static": 0}

    def add(self, msg: Any, static: bool) -> None:
        with self._lock:
            self.messages["/tf_static" if static else "/tf"] += 1
            for transform in msg.transforms:
                q = transform.transform.rotation
                norm = np.linalg.norm([q.x, q.y, q.z, q.w])
                assert abs(norm - 1.0) < 1e-6, f"{transform.child_frame_id}: |q| = {norm}"
                self._edges[transform.child_frame_id] = (
                    transform.header.frame_id,
                    pose_matrix(transform.transform),
                    static,
                )

    def subscribe(self, node: Any) -> None:
        """Subscribe ``node`` to /tf and /tf_static with tf2_ros TransformListener's QoS."""
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from tf2_msgs.msg import TFMessage

        node.create_subscription(
            TFMessage, "/tf", lambda m: self.add(m, False),
            QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE),
        )
        node.create_subscription(
            TFMessage, "/tf_static", lambda m: self.add(m, True),
            QoSProfile(
                depth=100,
                reliability=ReliabilityPolicy.RELIABLE,
                durability=DurabilityPolicy.TRANSIENT_LOCAL,
            ),
        )

    @property
    def frames(self) -> set[str]:
        with self._lock:
            return set(self._edges) | {parent for parent, _, _ in self._edges.values()}

    def _chain(self, frame: str) -> tuple[str, np.ndarray]:
        """(root, frame's pose in root)."""
        pose = np.eye(4)
        seen = {frame}
        with self._lock:
            while frame in self._edges:
                parent, child_in_parent, _ = self._edges[frame]
                pose = child_in_parent @ pose
                frame = parent
                assert frame not in seen, f"TF loop through {frame}"
                seen.add(frame)
        return frame, pose

    def lookup(self, target: str, source: str) -> np.ndarray | None:
        """``source``'s pose in ``target`` (4x4), or None: not connected / unknown frame."""
        known = self.frames
        if target not in known or source not in known:
            return None
        root_t, target_in_root = self._chain(target)
        root_s, source_in_root = self._chain(source)
        if root_t != root_s:
            return None
        return np.linalg.inv(target_in_root) @ source_in_root
