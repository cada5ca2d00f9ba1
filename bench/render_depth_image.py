"""Render docs/depth_image.png: what ~/depth_image shows for a synthetic table-top scene.

The scene: a table receding from the camera with a box on it; between two frames the box
moves one cell to the right. Change detection (``depth_change``) runs on the two frames as the
Think policy does; the codes come from the scene's known depth, quantised like the depth
codebook (ordered by mean depth). The picture is rendered by ``depth_viz.render_depth_image``
exactly as the depth-cache node renders it (here blended over the camera frame).

    .venv/bin/python bench/render_depth_image.py [--out docs/depth_image.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from molmoact2_policy.depth_change import detect_changed_cells
from molmoact2_policy.depth_viz import render_depth_image

HEIGHT, WIDTH, GRID, NUM_CODES = 480, 640, 10, 128


def scene(box_col: int) -> tuple[np.ndarray, np.ndarray]:
    """(RGB frame, depth in metres) of the table with the box at grid column ``box_col``."""
    rows = np.arange(HEIGHT, dtype=np.float64)[:, None]
    cols = np.arange(WIDTH, dtype=np.float64)[None, :]
    depth = np.broadcast_to(2.5 - 1.9 * rows / HEIGHT, (HEIGHT, WIDTH)).copy()  # far at the top
    depth += 0.15 * np.abs(cols - WIDTH / 2) / WIDTH
    rng = np.random.default_rng(0)
    wood = np.clip(np.array([150, 110, 70]) + rng.normal(0, 12, (HEIGHT, WIDTH, 1)), 0, 255).astype(
        np.uint8
    )
    frame = np.broadcast_to(wood, (HEIGHT, WIDTH, 3)).copy()
    frame[: HEIGHT // 5] = (200, 205, 215)  # wall
    depth[: HEIGHT // 5] = 2.6
    top, left = 5 * HEIGHT // GRID, box_col * WIDTH // GRID
    bottom, right = top + 3 * HEIGHT // GRID, left + 2 * WIDTH // GRID
    frame[top:bottom, left:right] = (40, 90, 200)
    frame[top : top + 8, left:right] = (90, 140, 240)  # lit top face
    depth[top:bottom, left:right] = 0.7
    return frame, depth


def depth_codes(depth: np.ndarray, near: float = 0.5, far: float = 2.7) -> np.ndarray:
    """Mean depth per cell quantised to the codebook's order (0 nearest)."""
    cells = depth.reshape(GRID, HEIGHT // GRID, GRID, WIDTH // GRID).mean(axis=(1, 3))
    scaled = (cells - near) / (far - near) * (NUM_CODES - 1)
    return np.clip(np.rint(scaled), 0, NUM_CODES - 1).astype(np.int64).reshape(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "depth_image.png")
    )
    parser.add_argument("--blend-alpha", type=float, default=0.65)
    parser.add_argument("--cell-size", type=int, default=48)
    args = parser.parse_args()

    previous, _ = scene(box_col=3)
    frame, depth = scene(box_col=4)
    changed = detect_changed_cells(previous, frame)
    codes = depth_codes(depth)
    picture = render_depth_image(
        codes,
        changed,
        cell_size=args.cell_size,
        outline_px=3,
        background=frame,
        blend_alpha=args.blend_alpha,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    print(
        f"wrote {out} ({picture.shape[1]}x{picture.shape[0]}); {int(changed.sum())} cells changed"
    )


if __name__ == "__main__":
    main()
