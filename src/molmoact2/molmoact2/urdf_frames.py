"""Link frames of a URDF from measured joint positions (no ROS): the pip path's
robot_state_publisher.

Like robot_state_publisher, every URDF joint becomes one transform from its parent link to its
child link: fixed joints once (``/tf_static``), movable joints for every joint state
(``/tf``). Forward kinematics come from pinocchio through ``molmoact2_common.rigid_body`` (the model
the drivers use for gravity terms), so the two can never disagree about the arm.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MOVABLE_TYPES = ("revolute", "continuous", "prismatic")
SUPPORTED_TYPES = (*MOVABLE_TYPES, "fixed")


@dataclass(frozen=True)
class UrdfJoint:
    name: str
    type: str
    parent: str
    child: str
    mimic: bool = False  # driven by another joint: never read from joint_states


def parse_urdf_joints(path: str | Path) -> list[UrdfJoint]:
    """The joints of a URDF file in document order; ValueError on what we cannot publish."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        raise ValueError(f"cannot read URDF {path}: {exc}") from exc
    if root.tag != "robot":
        raise ValueError(f"{path}: root element is <{root.tag}>, expected <robot>")
    joints = []
    for element in root.findall("joint"):
        name = element.get("name", "")
        kind = element.get("type", "")
        parent = element.find("parent")
        child = element.find("child")
        if not name or parent is None or child is None:
            raise ValueError(f"{path}: joint {name!r} lacks a name, parent or child")
        if kind not in SUPPORTED_TYPES:
            raise ValueError(f"{path}: joint {name!r} has type {kind!r}; supported: "
                             f"{', '.join(SUPPORTED_TYPES)}")
        for link in (parent.get("link", ""), child.get("link", "")):
            # tf2 strips a leading '/' when storing a transform but refuses it in lookups.
            if not link or link.startswith("/"):
                raise ValueError(
                    f"{path}: joint {name!r} names link {link!r}, not a tf2 frame id "
                    "(empty, or starts with '/')"
                )
        joints.append(
            UrdfJoint(
                name=name,
                type=kind,
                parent=parent.get("link", ""),
                child=child.get("link", ""),
                mimic=element.find("mimic") is not None,
            )
        )
    return joints


class UrdfFrames:
    """Per-joint transforms of one URDF, computed by forward kinematics."""

    def __init__(self, urdf_path: str | Path) -> None:
        from molmoact2_common.rigid_body import RigidBodyModel  # pinocchio: imported only when used

        self.path = Path(urdf_path)
        self.joints = parse_urdf_joints(self.path)
        # Mimic joints follow their leader inside the model; joint_states never carries them.
        self.movable = [j.name for j in self.joints if j.type in MOVABLE_TYPES and not j.mimic]
        self.model = RigidBodyModel.from_urdf(str(self.path), self.movable)
        self.links = {j.child for j in self.joints} | {j.parent for j in self.joints}
        self._zero = np.zeros(len(self.movable))
        # Origins that add up beyond float range (1e308 twice) made a fixed joint NaN on
        # /tf_static and refused every joint state as "too large": refuse the URDF instead.
        far = [
            child
            for _, child, pose in self._joint_transforms(self._zero, SUPPORTED_TYPES)
            if not np.isfinite(pose).all()
        ]
        if far:
            raise ValueError(
                f"{self.path}: links {', '.join(far)} lie at non-finite poses (joint origins "
                "beyond float range)"
            )

    def _joint_transforms(
        self, q: np.ndarray, kinds: Sequence[str]
    ) -> list[tuple[str, str, np.ndarray]]:
        poses = self.model.link_poses(q)
        out = []
        for joint in self.joints:
            if joint.type not in kinds:
                continue
            parent = np.asarray(poses[joint.parent], dtype=np.float64)
            child = np.asarray(poses[joint.child], dtype=np.float64)
            out.append((joint.parent, joint.child, np.linalg.solve(parent, child)))
        return out

    def fixed_transforms(self) -> list[tuple[str, str, np.ndarray]]:
        """(parent link, child link, child in parent) of every fixed joint."""
        return self._joint_transforms(self._zero, ("fixed",))

    def positions_from(self, names: Sequence[str], positions: Sequence[float]) -> np.ndarray:
        """Model-order joint vector from a JointState's names and positions; ValueError if a
        movable joint is missing or a value is not finite."""
        if len(names) != len(positions):
            raise ValueError(f"joint state has {len(names)} names but {len(positions)} positions")
        by_name = dict(zip(names, positions, strict=True))
        missing = [n for n in self.movable if n not in by_name]
        if missing:
            raise ValueError(f"joint state lacks {', '.join(missing)}")
        q = np.array([float(by_name[n]) for n in self.movable])
        bad = [n for n, v in zip(self.movable, q, strict=True) if not math.isfinite(v)]
        if bad:
            raise ValueError(f"joint state has non-finite positions for {', '.join(bad)}")
        return q

    def moving_transforms(self, q: np.ndarray) -> list[tuple[str, str, np.ndarray]]:
        """(parent link, child link, child in parent) of every movable joint at ``q``;
        ValueError when one is not finite.

        Finite positions can still overflow: two stacked prismatic joints at 1e308 put a link
        at infinity, and the joint between two links there comes out NaN (tf2 drops it as
        TF_NAN_INPUT; an inf one it keeps, and every lookup through it is NaN).
        """
        out = self._joint_transforms(np.asarray(q, dtype=np.float64), MOVABLE_TYPES)
        bad = [child for _, child, pose in out if not np.isfinite(pose).all()]
        if bad:
            raise ValueError(
                f"joint positions put {', '.join(bad)} at a non-finite pose (positions too "
                "large for the arm)"
            )
        return out

    def joint_state_transforms(
        self, names: Sequence[str], positions: Sequence[float]
    ) -> list[tuple[str, str, np.ndarray]]:
        """The /tf transforms of one joint state (``positions_from`` then
        ``moving_transforms``); ValueError naming why there are none."""
        return self.moving_transforms(self.positions_from(names, positions))

    def link_positions(self, q: np.ndarray, links: Sequence[str]) -> np.ndarray:
        """(len(links), 3) origins of ``links`` in the URDF root at ``q``."""
        poses = self.model.link_poses(np.asarray(q, dtype=np.float64))
        return np.array([np.asarray(poses[link])[:3, 3] for link in links], dtype=np.float64)

    @property
    def root_link(self) -> str:
        children = {j.child for j in self.joints}
        roots = sorted({j.parent for j in self.joints} - children)
        if len(roots) != 1:
            raise ValueError(f"{self.path}: expected one root link, found {roots}")
        return roots[0]
