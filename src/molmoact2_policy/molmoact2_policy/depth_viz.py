"""Pictures of a Think depth-code grid (pure numpy/OpenCV, no ROS).

``render_depth_image`` turns the 10 x 10 codes into an RGB image (one colour per code, changed
cells outlined, optionally blended over the camera frame); ``depth_cell_boxes`` gives the
geometry of one box per cell for an RViz MarkerArray. Codes are ordered by mean depth (larger
means farther, see DepthTokens.msg), so the colour map runs from warm (near) to cool (far).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from molmoact2_policy.depth_change import check_rgb_frame

OUTLINE_RGB = (255, 255, 255)  # changed cells; white never occurs in the colour map


def check_code_grid(
    codes: np.ndarray, rows: int, cols: int, num_codes: int, changed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(codes int64, changed bool)``, each of length rows*cols; ValueError otherwise."""
    if rows < 1 or cols < 1:
        raise ValueError(f"grid must be at least 1 x 1, got {rows} x {cols}")
    if num_codes < 1:
        raise ValueError(f"num_codes must be >= 1, got {num_codes}")
    codes = np.asarray(codes)
    if codes.shape != (rows * cols,):
        raise ValueError(f"expected {rows * cols} depth codes ({rows} x {cols}), got {codes.shape}")
    if not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"depth codes must be integers, got dtype {codes.dtype}")
    if codes.size and (codes.min() < 0 or codes.max() >= num_codes):
        raise ValueError(
            f"depth codes must lie in [0, {num_codes}), got range [{codes.min()}, {codes.max()}]"
        )
    if changed is None:
        changed = np.zeros(rows * cols, dtype=bool)
    changed = np.asarray(changed)
    if changed.shape != (rows * cols,):
        raise ValueError(f"expected {rows * cols} changed flags, got shape {changed.shape}")
    return codes.astype(np.int64), changed.astype(bool)


@lru_cache(maxsize=8)
def depth_colormap(num_codes: int) -> np.ndarray:
    """(num_codes, 3) uint8 RGB: code 0 (nearest) red through yellow/green to blue (farthest)."""
    # Turbo reversed: a perceptually ordered map whose ends read as near (red) / far (blue).
    ramp = np.linspace(255, 0, num_codes).round().astype(np.uint8).reshape(-1, 1)
    bgr = cv2.applyColorMap(ramp, cv2.COLORMAP_TURBO).reshape(num_codes, 3)
    colours = bgr[:, ::-1].copy()
    colours.setflags(write=False)
    return colours


def render_depth_image(
    codes: np.ndarray,
    changed: np.ndarray | None = None,
    *,
    rows: int = 10,
    cols: int = 10,
    num_codes: int = 128,
    cell_size: int = 32,
    outline_px: int = 2,
    background: np.ndarray | None = None,
    blend_alpha: float = 1.0,
) -> np.ndarray:
    """(rows*cell_size, cols*cell_size, 3) uint8 RGB picture of a depth-code grid.

    Each cell is filled with its code's colour; changed cells get a white outline
    ``outline_px`` wide drawn inside the cell. With ``background`` (an RGB camera frame of any
    size, resized to the output) the colours are blended over it with weight ``blend_alpha``;
    outlines are drawn on top unblended so they stay visible.
    """
    codes, changed = check_code_grid(codes, rows, cols, num_codes, changed)
    if cell_size < 1:
        raise ValueError(f"cell_size must be >= 1, got {cell_size}")
    if not 0.0 <= blend_alpha <= 1.0:
        raise ValueError(f"blend_alpha must be in [0, 1], got {blend_alpha}")
    grid_rgb = depth_colormap(num_codes)[codes].reshape(rows, cols, 3)
    image = np.repeat(np.repeat(grid_rgb, cell_size, axis=0), cell_size, axis=1)
    height, width = rows * cell_size, cols * cell_size
    if background is not None and blend_alpha < 1.0:
        frame = check_rgb_frame(background, "background frame")
        if frame.shape[:2] != (height, width):
            frame = cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
        image = cv2.addWeighted(image, blend_alpha, frame, 1.0 - blend_alpha, 0.0)
    else:
        image = image.copy()
    width_px = max(0, min(outline_px, cell_size // 2))
    if width_px:
        for index in np.flatnonzero(changed):
            r, c = divmod(int(index), cols)
            top, left = r * cell_size, c * cell_size
            cell = image[top : top + cell_size, left : left + cell_size]
            cell[:width_px] = OUTLINE_RGB
            cell[-width_px:] = OUTLINE_RGB
            cell[:, :width_px] = OUTLINE_RGB
            cell[:, -width_px:] = OUTLINE_RGB
    return image


@dataclass(frozen=True)
class CellBox:
    """One cell as a box in the camera's optical frame (x right, y down, z forward; metres)."""

    index: int
    center: tuple[float, float, float]
    size: tuple[float, float, float]
    rgba: tuple[float, float, float, float]  # components in [0, 1]


def depth_cell_boxes(
    codes: np.ndarray,
    changed: np.ndarray | None = None,
    *,
    rows: int = 10,
    cols: int = 10,
    num_codes: int = 128,
    cell_size_m: float = 0.05,
    max_depth_m: float = 0.5,
    unchanged_alpha: float = 0.45,
) -> list[CellBox]:
    """One box per cell laid out as the image grid, extruded along +z by its code.

    Box height grows linearly with the code (code 0 -> a thin slab, the largest code ->
    ``max_depth_m``), so the grid reads as a coarse depth relief seen from the camera. Changed
    cells are opaque; cells replayed from the cache are translucent.
    """
    codes, changed = check_code_grid(codes, rows, cols, num_codes, changed)
    if cell_size_m <= 0 or max_depth_m <= 0:
        raise ValueError("cell_size_m and max_depth_m must be positive")
    colours = depth_colormap(num_codes).astype(np.float64) / 255.0
    min_height = max_depth_m / max(num_codes, 1)
    boxes = []
    for index, code in enumerate(codes.tolist()):
        r, c = divmod(index, cols)
        height = min_height + (max_depth_m - min_height) * code / max(num_codes - 1, 1)
        x = (c - cols / 2.0 + 0.5) * cell_size_m
        y = (r - rows / 2.0 + 0.5) * cell_size_m
        red, green, blue = colours[code]
        alpha = 1.0 if changed[index] else unchanged_alpha
        boxes.append(
            CellBox(
                index=index,
                center=(x, y, height / 2.0),
                size=(cell_size_m * 0.95, cell_size_m * 0.95, height),
                rgba=(float(red), float(green), float(blue), float(alpha)),
            )
        )
    return boxes
