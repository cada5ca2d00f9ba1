"""Change detection marks exactly the cells that changed, and rejects frames it cannot read."""

from __future__ import annotations

import numpy as np
import pytest

from molmoact2_policy.depth_change import (
    compare_frames,
    detect_changed_cells,
    patch_similarity,
    prepare_frame,
)


def textured_scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def paint_cells(frame: np.ndarray, cells: list[tuple[int, int]], grid: int = 10, seed: int = 1):
    """A new random texture inside the given cells, in the frame's own pixel grid."""
    out = frame.copy()
    rng = np.random.default_rng(seed)
    h, w = frame.shape[:2]
    for r, c in cells:
        rows = slice(r * h // grid, (r + 1) * h // grid)
        cols = slice(c * w // grid, (c + 1) * w // grid)
        patch_shape = out[rows, cols].shape
        out[rows, cols] = rng.integers(0, 256, size=patch_shape, dtype=np.uint8)
    return out


@pytest.mark.parametrize("shape", [(320, 320), (480, 640), (360, 640), (100, 200)])
def test_exactly_the_altered_cells_are_marked(shape):
    prev = textured_scene(*shape)
    moved = [(0, 0), (3, 4), (3, 5), (9, 9), (7, 2)]
    frame = paint_cells(prev, moved)
    changed = detect_changed_cells(prev, frame)
    expected = np.zeros(100, dtype=bool)
    for r, c in moved:
        expected[r * 10 + c] = True
    assert changed.shape == (100,) and changed.dtype == bool
    np.testing.assert_array_equal(changed, expected)


def test_identical_frames_change_nothing_and_first_frame_changes_everything():
    frame = textured_scene(480, 640)
    assert not detect_changed_cells(frame, frame.copy()).any()
    assert detect_changed_cells(None, frame).all()


def test_threshold_decides_and_similarities_are_reported():
    prev = textured_scene(320, 320)
    # Small noise: cosine similarity stays high, above 0.99 but below 0.99999.
    rng = np.random.default_rng(5)
    noisy = np.clip(prev.astype(int) + rng.integers(-6, 7, prev.shape), 0, 255).astype(np.uint8)
    loose = compare_frames(prev, noisy, threshold=0.99)
    strict = compare_frames(prev, noisy, threshold=0.99999)
    assert not loose.changed.any()
    assert strict.changed.all()
    assert np.all((loose.similarity > 0.99) & (loose.similarity < 0.99999))
    assert strict.changed_fraction == 1.0


def test_previous_frame_of_another_size_is_compared_after_resizing():
    big = textured_scene(640, 640)
    small = prepare_frame(big)  # 320 x 320 patches
    import cv2

    half = cv2.resize(big, (320, 320), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(prepare_frame(half), small)
    assert not detect_changed_cells(big, half).any()


def test_black_patches():
    black = np.zeros((320, 320, 3), dtype=np.uint8)
    assert not detect_changed_cells(black, black).any()
    lit = black.copy()
    lit[:32, :32] = 200
    changed = detect_changed_cells(black, lit)
    assert changed[0] and changed.sum() == 1
    sims = patch_similarity(prepare_frame(black), prepare_frame(lit))
    assert sims[0] == 0.0 and sims[1] == 1.0


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (np.zeros((48, 64, 3), dtype=np.float32), "uint8"),
        (np.zeros((48, 64, 3), dtype=np.uint16), "uint8"),
        (np.zeros((48, 64), dtype=np.uint8), "HxWx3"),
        (np.zeros((48, 64, 4), dtype=np.uint8), "HxWx3"),
        ([[1, 2, 3]], "numpy array"),
    ],
)
def test_unreadable_frames_are_rejected_with_a_clear_error(frame, message):
    good = textured_scene(48, 64)
    with pytest.raises(ValueError, match=message):
        detect_changed_cells(good, frame)
    with pytest.raises(ValueError, match=message):
        detect_changed_cells(frame, good)


def test_bad_geometry_and_threshold_are_rejected():
    frame = textured_scene(64, 64)
    with pytest.raises(ValueError, match="multiple of grid"):
        detect_changed_cells(frame, frame, grid=10, size=325)
    with pytest.raises(ValueError, match="threshold"):
        detect_changed_cells(frame, frame, threshold=1.5)


def test_second_node_in_the_policy_process_keeps_params_but_not_the_name_remap():
    from molmoact2_policy.depth_cache_node import second_node_ros_args

    argv = [
        "policy_node", "--ros-args", "-r", "__node:=molmoact2_policy", "-r", "__ns:=/robot1",
        "--params-file", "config/yam.yaml", "-p", "use_sim_time:=true",
        "-r", "cameras/top:=/real/top", "-r", "molmoact2_policy:__node:=other",
        "--params-file", "/tmp/over.yaml", "--", "trailing",
    ]
    assert second_node_ros_args(argv) == [
        "--ros-args", "--params-file", "config/yam.yaml", "-p", "use_sim_time:=true",
        "-r", "cameras/top:=/real/top", "--params-file", "/tmp/over.yaml",
    ]
    assert second_node_ros_args(["node"]) == []
