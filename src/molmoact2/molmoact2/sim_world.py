"""A synthetic tabletop whose camera images depend on the simulated joint state (no ROS).

Each arm is drawn as a planar chain whose link angles are its joint positions, with a gripper
whose jaw opening is the gripper joint; a few fixed objects sit on the table. A moving arm
therefore changes the pixels the policy (and Think mode's change detection) sees, in the cells
the arm sweeps through, and nowhere else. Wrist cameras look at the scene from the end of their
arm, so their whole view shifts when that arm moves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

TABLE_RGB = (150, 120, 90)
FLOOR_RGB = (60, 64, 70)
LINK_RGB = ((230, 230, 235), (80, 160, 240))
JOINT_RGB = (40, 40, 40)
OBJECTS = (  # (centre x, centre y, half size, RGB) in scene units: x right, y up, table = [-1, 1]
    (-0.55, 0.35, 0.09, (220, 40, 40)),
    (0.45, 0.45, 0.07, (40, 180, 70)),
    (0.05, 0.70, 0.11, (240, 200, 40)),
)


@dataclass(frozen=True)
class ArmLayout:
    """Which joints form one arm and where its base sits on the table."""

    joint_indices: tuple[int, ...]  # revolute joints, base first
    gripper_index: int | None
    base_xy: tuple[float, float]
    link_length: float = 0.28


def arm_layouts(joint_names: Sequence[str]) -> list[ArmLayout]:
    """Group joints into arms by their prefix (``left_``/``right_``), else one arm."""
    groups: dict[str, list[int]] = {}
    for index, name in enumerate(joint_names):
        prefix = name.split("_", 1)[0] + "_" if name.startswith(("left_", "right_")) else ""
        groups.setdefault(prefix, []).append(index)
    layouts = []
    bases = {"left_": (-0.5, -0.9), "right_": (0.5, -0.9), "": (0.0, -0.9)}
    for prefix, indices in groups.items():
        gripper = next((i for i in indices if "gripper" in joint_names[i]), None)
        joints = tuple(i for i in indices if i != gripper)
        layouts.append(ArmLayout(joints, gripper, bases.get(prefix, (0.0, -0.9))))
    return layouts


def forward_kinematics(layout: ArmLayout, positions: np.ndarray) -> np.ndarray:
    """Planar chain: points of the base, every joint and the tool, shape (n + 2, 2)."""
    points = [np.array(layout.base_xy, dtype=float)]
    # Link angles accumulate like a serial arm; only the first four joints bend the chain so
    # that wrist-roll style joints do not fold it into a knot.
    angle = np.pi / 2
    for count, index in enumerate(layout.joint_indices[:4]):
        angle += float(positions[index]) * (0.6 if count else 0.8)
        points.append(points[-1] + layout.link_length * np.array([np.cos(angle), np.sin(angle)]))
    tool = points[-1] + 0.08 * np.array([np.cos(angle), np.sin(angle)])
    points.append(tool)
    return np.stack(points)


class SimWorld:
    """Renders camera images of the scene for a given joint state."""

    def __init__(
        self,
        joint_names: Sequence[str],
        camera_names: Sequence[str],
        width: int = 640,
        height: int = 480,
    ) -> None:
        if width < 32 or height < 32:
            raise ValueError(f"camera size {width}x{height} is too small")
        self.joint_names = tuple(joint_names)
        self.camera_names = tuple(camera_names)
        self.width, self.height = width, height
        self.layouts = arm_layouts(self.joint_names)
        self._background = self._render_background()

    def _to_pixels(self, xy: np.ndarray, zoom: float, centre: np.ndarray) -> np.ndarray:
        scale = 0.45 * min(self.width, self.height) * zoom
        px = (xy[..., 0] - centre[0]) * scale + self.width / 2
        py = self.height / 2 - (xy[..., 1] - centre[1]) * scale
        return np.stack([px, py], axis=-1).round().astype(np.int32)

    def _render_background(self) -> np.ndarray:
        image = np.empty((self.height, self.width, 3), dtype=np.uint8)
        image[:] = FLOOR_RGB
        # A faint gradient gives the change detector texture to compare against.
        ramp = np.linspace(0, 30, self.width, dtype=np.float32)[None, :, None]
        return np.clip(image.astype(np.float32) + ramp, 0, 255).astype(np.uint8)

    def _camera_view(self, camera: str, positions: np.ndarray) -> tuple[float, np.ndarray]:
        """Zoom and scene centre of a camera: fixed for scene cameras, following wrists."""
        if "wrist" in camera:
            side = camera.split("_", 1)[0] + "_" if "_" in camera else ""
            layout = next(
                (
                    lay
                    for lay in self.layouts
                    if not side or self.joint_names[lay.joint_indices[0]].startswith(side)
                ),
                self.layouts[0],
            )
            tool = forward_kinematics(layout, positions)[-1]
            return 2.2, tool
        return 0.95, np.array([0.0, 0.0])

    def render(self, camera: str, positions: np.ndarray) -> np.ndarray:
        """An HxWx3 uint8 RGB image of ``camera`` with the arms at ``positions``."""
        positions = np.asarray(positions, dtype=float)
        if positions.shape != (len(self.joint_names),):
            raise ValueError(
                f"expected {len(self.joint_names)} joint positions, got {positions.shape}"
            )
        zoom, centre = self._camera_view(camera, positions)
        image = self._background.copy()
        table = self._to_pixels(np.array([[-1.1, -1.0], [1.1, 1.0]]), zoom, centre)
        cv2.rectangle(image, tuple(table[0]), tuple(table[1]), TABLE_RGB, thickness=-1)
        for x, y, half, colour in OBJECTS:
            corners = self._to_pixels(np.array([[x - half, y - half], [x + half, y + half]]), zoom,
                                      centre)
            cv2.rectangle(image, tuple(corners[0]), tuple(corners[1]), colour, thickness=-1)
        thickness = max(2, int(0.02 * min(self.width, self.height) * zoom))
        for arm_index, layout in enumerate(self.layouts):
            points = self._to_pixels(forward_kinematics(layout, positions), zoom, centre)
            colour = LINK_RGB[arm_index % len(LINK_RGB)]
            cv2.polylines(image, [points[:-1].reshape(-1, 1, 2)], False, colour, thickness)
            for point in points[:-1]:
                cv2.circle(image, tuple(point), thickness, JOINT_RGB, thickness=-1)
            opening = 0.5
            if layout.gripper_index is not None:
                opening = float(np.clip(positions[layout.gripper_index], 0.0, 1.0))
            self._draw_gripper(image, points[-2], points[-1], opening, thickness, colour)
        return image

    @staticmethod
    def _draw_gripper(image, wrist, tool, opening, thickness, colour) -> None:
        direction = (tool - wrist).astype(float)
        norm = np.linalg.norm(direction) or 1.0
        normal = np.array([-direction[1], direction[0]]) / norm
        spread = (4 + 14 * opening) * thickness / 3
        for sign in (-1, 1):
            base = (wrist + sign * spread * normal).round().astype(int)
            tip = (tool + sign * spread * normal).round().astype(int)
            cv2.line(image, tuple(base), tuple(tip), colour, max(1, thickness // 2))
