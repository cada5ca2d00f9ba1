"""Parameters of the ``molmoact2_depth_cache`` node: declared once here (no ROS imports).

``molmoact2_common.ros_params.declare_dataclass_params`` turns this dataclass into ROS parameters;
the bringup validates the ``molmoact2_depth_cache`` section of ``config/<robot>.yaml`` against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from molmoact2_common.ros_params import field_problems

# What molmoact2_msgs/DepthTokens can carry: rows and cols are uint8, num_codes and the codes
# uint16 (rosidl refuses a larger value when the message is filled, mid-publish).
MAX_GRID = 255
MAX_NUM_CODES = 65535
# ~/depth_image side in pixels: the largest frame the camera inputs accept (a 100000 px cell
# allocated a 1e6 x 1e6 picture at the first result).
MAX_PICTURE_PX = 4096
# Metres: RViz renders in float32; far beyond the scene a cube only misleads.
MAX_MARKER_DISTANCE_M = 1000.0


def _doc(text: str) -> dict[str, str]:
    return {"description": text}


@dataclass(frozen=True)
class DepthCacheParams:
    """Everything the depth-cache node reads from its ROS parameters."""

    # Shared keys (under `/**` in the robot config), used to name the camera's optical frame.
    # Non-empty defaults: an empty list default cannot be read back without an override.
    camera_names: tuple[str, ...] = field(
        default=("top",), metadata=_doc("Camera names in the order the model sees them.")
    )
    camera_frames: tuple[str, ...] = field(
        default=("top_optical_frame",),
        metadata=_doc("Optical frame id per camera, in camera_names order."),
    )

    camera_name: str = field(
        default="top",
        metadata=_doc("Main camera whose frames drive change detection and the depth grid."),
    )
    change_threshold: float = field(
        default=0.996,
        metadata=_doc(
            "A cell is re-predicted when the cosine similarity of its 32x32 patch with the "
            "previous frame's is below this."
        ),
    )
    adaptive_depth: bool = field(
        default=True,
        metadata=_doc(
            "Re-predict only the changed cells and replay the others from the cache (the "
            "released enable_adaptive_depth). false: the model writes the whole depth span "
            "freely every step (the released non-adaptive decoding); changed is then all true."
        ),
    )
    max_stamp_gap: float = field(
        default=1.0,
        metadata=_doc(
            "Seconds: a gap between the main-camera stamps of consecutive Think results "
            "longer than this beyond the slowest of the last 5 inferences, or a stamp going "
            "backwards, resets the depth cache (new episode, replayed bag, paused camera)."
        ),
    )
    grid_rows: int = field(default=10, metadata=_doc("Rows of the depth-code grid."))
    grid_cols: int = field(default=10, metadata=_doc("Columns of the depth-code grid."))
    num_codes: int = field(default=128, metadata=_doc("Size of the depth codebook."))
    cell_size: int = field(
        default=32, metadata=_doc("Pixels per grid cell in ~/depth_image (320x320 for 10x10).")
    )
    outline_px: int = field(
        default=2, metadata=_doc("Width in pixels of the outline around re-predicted cells.")
    )
    blend_alpha: float = field(
        default=1.0,
        metadata=_doc(
            "Weight of the depth colours over the camera frame in ~/depth_image "
            "(1: colours only, 0: camera only)."
        ),
    )
    marker_frame: str = field(
        default="",
        metadata=_doc(
            "Frame of ~/depth_markers (empty: the main camera's optical frame). The cubes are "
            "placed in optical-frame axes (x right, y down, z forward), so any other frame "
            "must be that camera's optical frame under another name."
        ),
    )
    camera_hfov: float = field(
        default=1.2,
        metadata=_doc(
            "Horizontal field of view [rad] of the main camera (pinhole, square pixels): "
            "aims each cell's cube along its pixel ray."
        ),
    )
    marker_distance: float = field(
        default=1.0,
        metadata=_doc(
            "Depth [m] along the optical axis at which the cell cubes are placed. Fixed: the "
            "released checkpoint defines no map from a depth code to metres."
        ),
    )
    image_every_n: int = field(
        default=1,
        metadata=_doc("Publish ~/depth_image and ~/depth_markers on every n-th result only."),
    )

    def camera_frame(self) -> str:
        """The main camera's optical frame id (from camera_frames, else <camera>_optical_frame)."""
        if self.camera_name in self.camera_names:
            index = self.camera_names.index(self.camera_name)
            if index < len(self.camera_frames) and self.camera_frames[index]:
                return self.camera_frames[index]
        return f"{self.camera_name}_optical_frame"

    def validate(self) -> list[str]:
        """Every problem with these values, as sentences (empty list: valid)."""
        problems: list[str] = field_problems(self)  # NaN passes `x <= 0` checks; topic names
        if not self.camera_name:
            problems.append("camera_name is empty")
        if self.camera_names and self.camera_name not in self.camera_names:
            problems.append(
                f"camera_name {self.camera_name!r} is not one of camera_names "
                f"({', '.join(self.camera_names)})"
            )
        if not -1.0 <= self.change_threshold <= 1.0:
            problems.append(f"change_threshold {self.change_threshold} is not in [-1, 1]")
        if not self.max_stamp_gap > 0.0:
            problems.append(f"max_stamp_gap must be > 0, got {self.max_stamp_gap}")
        for key in ("grid_rows", "grid_cols", "num_codes", "cell_size", "image_every_n"):
            if getattr(self, key) < 1:
                problems.append(f"{key} must be >= 1, got {getattr(self, key)}")
        for key, most in (
            ("grid_rows", MAX_GRID),
            ("grid_cols", MAX_GRID),
            ("num_codes", MAX_NUM_CODES),
        ):
            if getattr(self, key) > most:
                value = getattr(self, key)
                problems.append(f"{key} must be <= {most} (DepthTokens field), got {value}")
        side = max(self.grid_rows, self.grid_cols) * self.cell_size
        if side > MAX_PICTURE_PX:
            problems.append(
                f"~/depth_image would be {self.grid_rows * self.cell_size} x "
                f"{self.grid_cols * self.cell_size} px: grid x cell_size must be <= "
                f"{MAX_PICTURE_PX} px a side"
            )
        if self.outline_px < 0:
            problems.append(f"outline_px must be >= 0, got {self.outline_px}")
        if not 0.0 <= self.blend_alpha <= 1.0:
            problems.append(f"blend_alpha {self.blend_alpha} is not in [0, 1]")
        if not 0.0 < self.camera_hfov < 3.14159:
            problems.append(f"camera_hfov must be in (0, pi) radians, got {self.camera_hfov}")
        if not 0.0 < self.marker_distance <= MAX_MARKER_DISTANCE_M:
            problems.append(
                f"marker_distance must be in (0, {MAX_MARKER_DISTANCE_M:g}] m, "
                f"got {self.marker_distance}"
            )
        return problems
