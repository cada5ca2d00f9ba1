"""A 3D picture of what RViz shows in the fixed frame, drawn from a recording (no rviz2 needed).

Reads ``/tf_static`` and ``/tf`` from an MCAP recording (``record:=true``), composes every
frame into the world frame the way a TF listener does, and draws each frame's axes plus the
last ``depth_markers`` cubes placed through their own frame. Cubes that sit where their
camera looks, and frames that join up, are the visual check that the TF tree is right.

    python -m molmoact2.scene_plot out/recordings/<file>.mcap docs/tf_scene.png
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import transforms3d

from molmoact2.frames import FrameTree

LOG = logging.getLogger("molmoact2.scene_plot")
DEPTH_MARKERS_SUFFIX = "/depth_markers"
CHUNK_MARKERS_SUFFIX = "/predicted_chunk_markers"
# visualization_msgs/Marker types (decoded recordings carry no constants).
MARKER_CUBE = 1
MARKER_LINE_STRIP = 4
AXIS_RGB = ((0.85, 0.1, 0.1), (0.1, 0.7, 0.1), (0.1, 0.25, 0.9))  # x, y, z as RViz draws them


def _pose(position: Any, orientation: Any) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = transforms3d.quaternions.quat2mat(
        [orientation.w, orientation.x, orientation.y, orientation.z]
    )
    out[:3, 3] = [position.x, position.y, position.z]
    return out


def scene_from_recording(path: str | Path) -> tuple[FrameTree, list[Any]]:
    """(frame tree with the latest transform per frame, the last depth-marker and chunk-marker
    arrays' markers)."""
    from molmoact2.mcap_io import read_messages

    tree = FrameTree()
    markers: list[Any] = []
    chunk: list[Any] = []
    for topic, _log_ns, msg in read_messages(path):
        if topic in ("/tf", "/tf_static"):
            for t in msg.transforms:
                tree.set(
                    t.header.frame_id,
                    t.child_frame_id,
                    _pose(t.transform.translation, t.transform.rotation),
                )
        elif topic.endswith(DEPTH_MARKERS_SUFFIX) and msg.markers:
            markers = list(msg.markers)
        elif topic.endswith(CHUNK_MARKERS_SUFFIX) and msg.markers:
            chunk = list(msg.markers)
    return tree, markers + chunk


def cube_corners(marker: Any) -> np.ndarray:
    """(8, 3) corners of a CUBE marker in its header frame."""
    half = np.array([marker.scale.x, marker.scale.y, marker.scale.z]) / 2.0
    signs = np.array(list(itertools.product((-1, 1), repeat=3)), dtype=np.float64)
    local = np.c_[signs * half, np.ones(8)]
    return (_pose(marker.pose.position, marker.pose.orientation) @ local.T).T[:, :3]


CUBE_FACES = ((0, 1, 3, 2), (4, 5, 7, 6), (0, 1, 5, 4), (2, 3, 7, 6), (0, 2, 6, 4), (1, 3, 7, 5))


def render(
    tree: FrameTree,
    markers: list[Any],
    out: str | Path,
    *,
    fixed_frame: str = "world",
    title: str = "",
    axis_length: float = 0.08,
) -> dict[str, Any]:
    """Draw frames and cubes in ``fixed_frame`` into ``out`` (PNG); what was drawn, as numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    fig = plt.figure(figsize=(10, 8), dpi=110)
    ax = fig.add_subplot(projection="3d")
    drawn: dict[str, Any] = {"frames": {}, "cubes": 0, "unreachable": []}
    for frame in sorted(tree.frames):
        pose = tree.lookup(fixed_frame, frame)
        if pose is None:
            drawn["unreachable"].append(frame)
            continue
        origin = pose[:3, 3]
        drawn["frames"][frame] = origin
        for axis in range(3):
            tip = origin + axis_length * pose[:3, axis]
            ax.plot(*zip(origin, tip, strict=True), color=AXIS_RGB[axis], linewidth=1.6)
        if not frame.endswith("_optical_frame"):  # label links only: optical frames coincide
            ax.text(*origin, f" {frame}", fontsize=7, color="0.25")
    drawn["paths"] = 0
    for marker in markers:  # predicted end-effector paths (the joint-space plot has no place)
        pose = tree.lookup(fixed_frame, marker.header.frame_id)
        if pose is None or marker.type != MARKER_LINE_STRIP or not marker.ns.endswith("_path"):
            continue
        points = np.array([[p.x, p.y, p.z, 1.0] for p in marker.points])
        world = (pose @ points.T).T[:, :3]
        ax.plot(*world.T, color=(marker.color.r, marker.color.g, marker.color.b), linewidth=2.2)
        ax.scatter(*world[-1], color=(marker.color.r, marker.color.g, marker.color.b), s=18)
        drawn["paths"] += 1
    faces, colours = [], []
    cubes = [m for m in markers if m.type == MARKER_CUBE]
    for marker in cubes:
        pose = tree.lookup(fixed_frame, marker.header.frame_id)
        if pose is None:
            continue
        corners = (pose @ np.c_[cube_corners(marker), np.ones(8)].T).T[:, :3]
        faces += [corners[list(face)] for face in CUBE_FACES]
        colours += [(marker.color.r, marker.color.g, marker.color.b, 0.35)] * len(CUBE_FACES)
        drawn["cubes"] += 1
    if faces:
        ax.add_collection3d(Poly3DCollection(faces, facecolors=colours, edgecolors=(0, 0, 0, 0.15),
                                             linewidths=0.2))
        # Rays from the camera through the outer corner cells: the cubes lie along them.
        camera = tree.lookup(fixed_frame, cubes[0].header.frame_id)
        cells = cubes
        for marker in (cells[0], cells[-1], *(cells[i] for i in _corner_indices(len(cells)))):
            centre = (camera @ np.r_[_pose(marker.pose.position, marker.pose.orientation)[:3, 3],
                                     1.0])[:3]
            ax.plot(*zip(camera[:3, 3], centre, strict=True), color="0.5", linewidth=0.6,
                    linestyle="--")
    points = list(drawn["frames"].values()) + [f.mean(axis=0) for f in faces[::6]]
    if points:
        stack = np.array(points)
        centre, span = stack.mean(axis=0), max(float(np.ptp(stack, axis=0).max()), 0.3)
        for setter, c in zip((ax.set_xlim, ax.set_ylim, ax.set_zlim), centre, strict=True):
            setter(c - span / 2, c + span / 2)
    ax.set_xlabel("x [m]")
    ax.set_ylabel("y [m]")
    ax.set_zlabel("z [m]")
    ax.set_box_aspect((1, 1, 1))
    ax.view_init(elev=18, azim=-150)
    ax.set_title(title or f"frames and depth cubes in {fixed_frame!r}")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return drawn


def _corner_indices(count: int) -> tuple[int, ...]:
    side = math.isqrt(count)
    if side * side != count or side < 2:
        return ()
    return (side - 1, count - side)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recording", help="MCAP file recorded with record:=true (think mode)")
    parser.add_argument("output", help="PNG to write")
    parser.add_argument("--fixed-frame", default="world")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    tree, markers = scene_from_recording(args.recording)
    if not tree.frames:
        LOG.error("%s has no /tf or /tf_static messages", args.recording)
        return 1
    drawn = render(tree, markers, args.output, fixed_frame=args.fixed_frame, title=args.title)
    LOG.info(
        "wrote %s: %d frames, %d cubes, %d paths; not connected to %s: %s",
        args.output, len(drawn["frames"]), drawn["cubes"], drawn["paths"], args.fixed_frame,
        ", ".join(drawn["unreachable"]) or "none",
    )
    return 0 if not drawn["unreachable"] else 1


if __name__ == "__main__":
    sys.exit(main())
