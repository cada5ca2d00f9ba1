"""Pictures of a Think depth-code grid (pure numpy/OpenCV, no ROS).

``render_depth_image`` turns the 10 x 10 codes into an RGB image (one colour per code, changed
cells outlined, optionally blended over the camera frame); ``depth_cell_cubes`` places one cube
per cell on that cell's camera ray for an RViz MarkerArray.

The released model ships no map from a depth code to metres: the codes are indices into the
VQ-VAE codebook the Think data was tokenised with, the checkpoint carries neither codebook nor
decoder, and the released code only maps ``<depth_k>`` tokens to the integer k (huggingface/
lerobot, src/lerobot/policies/molmoact2/modeling_molmoact2.py). Nothing says the indices are
ordered by depth either. So the cubes sit at one fixed, configured distance, and colours tell
codes apart without suggesting an order: equal codes share a colour, neighbouring indices get
far-apart hues.
"""

from __future__ import annotations

import colorsys
import math
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


GOLDEN_HUE_STEP = (math.sqrt(5.0) - 1.0) / 2.0  # successive hues as far apart as possible


@lru_cache(maxsize=8)
def depth_colormap(num_codes: int) -> np.ndarray:
    """(num_codes, 3) uint8 RGB, one categorical colour per code (no near/far order implied).

    Code k gets hue k * 0.618... (mod 1): every code a different colour, consecutive indices
    far apart on the colour wheel, never white (the outline colour) or grey.
    """
    colours = np.array(
        [
            colorsys.hsv_to_rgb((k * GOLDEN_HUE_STEP) % 1.0, 0.85, 0.95)
            for k in range(num_codes)
        ]
    )
    colours = np.round(colours * 255.0).astype(np.uint8)
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


def depth_cell_cubes(
    codes: np.ndarray,
    changed: np.ndarray | None = None,
    *,
    rows: int = 10,
    cols: int = 10,
    num_codes: int = 128,
    image_size: tuple[int, int] = (640, 480),
    hfov: float = 1.2,
    distance: float = 1.0,
    unchanged_alpha: float = 0.45,
) -> list[CellBox]:
    """One cube per cell, centred on the ray through the cell's centre pixel at depth
    ``distance`` (optical z), sized to the cell's footprint there.

    ``image_size`` is the camera frame's (width, height) in pixels, ``hfov`` its horizontal
    field of view in radians (pinhole, square pixels, principal point at the centre). The
    cells tile the image, so the cubes tile the view frustum's cross-section at ``distance``:
    with TF, they sit where that camera looks. Changed cells are opaque, cached ones
    translucent.
    """
    codes, changed = check_code_grid(codes, rows, cols, num_codes, changed)
    width, height = image_size
    if width < 1 or height < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if not 0.0 < hfov < math.pi:
        raise ValueError(f"hfov must be in (0, pi) radians, got {hfov}")
    if not (distance > 0.0 and math.isfinite(distance)):
        raise ValueError(f"distance must be a positive number of metres, got {distance}")
    focal = (width / 2.0) / math.tan(hfov / 2.0)  # pixels
    # Ratios first: distance * u overflowed to inf for a large finite distance.
    cell_w, cell_h = distance * ((width / cols) / focal), distance * ((height / rows) / focal)
    side = min(cell_w, cell_h)
    colours = depth_colormap(num_codes).astype(np.float64) / 255.0
    boxes = []
    for index, code in enumerate(codes.tolist()):
        r, c = divmod(index, cols)
        u = (c + 0.5) * width / cols - width / 2.0
        v = (r + 0.5) * height / rows - height / 2.0
        red, green, blue = colours[code]
        boxes.append(
            CellBox(
                index=index,
                center=(distance * (u / focal), distance * (v / focal), distance),
                size=(cell_w * 0.95, cell_h * 0.95, side * 0.95),
                rgba=(
                    float(red),
                    float(green),
                    float(blue),
                    1.0 if changed[index] else float(unchanged_alpha),
                ),
            )
        )
    if boxes and not all(
        math.isfinite(x) for box in boxes for x in (*box.center, *box.size)
    ):
        raise ValueError(
            f"cubes at distance {distance} m with hfov {hfov} rad lie beyond float range"
        )
    return boxes
