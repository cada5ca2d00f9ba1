"""Change detection marks exactly the cells that changed, and rejects frames it cannot read."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from molmoact2_policy.depth_change import (
    compare_frames,
    detect_changed_cells,
    patch_similarity,
    prepare_frame,
    stamp_jump_reason,
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
    half = np.asarray(Image.fromarray(big).resize((320, 320), Image.BILINEAR))
    np.testing.assert_array_equal(prepare_frame(half), small)
    assert not detect_changed_cells(big, half).any()


def test_black_patches_count_as_unchanged_as_released():
    black = np.zeros((320, 320, 3), dtype=np.uint8)
    assert not detect_changed_cells(black, black).any()
    lit = black.copy()
    lit[:32, :32] = 200
    # The released rule: a norm product below 1e-8 is similarity 1.0, whatever the other is.
    assert not detect_changed_cells(black, lit).any()
    sims = patch_similarity(prepare_frame(black), prepare_frame(lit))
    assert sims[0] == 1.0 and sims[1] == 1.0
    dimmed = lit.copy()
    dimmed[:32, :16] = 10
    assert detect_changed_cells(lit, dimmed)[0]


def released_update_mask(current, previous, num_depth_codes=100):
    """The released ``_compute_depth_update_mask`` rule written out from its source
    (huggingface/lerobot src/lerobot/policies/molmoact2/hf_model/modeling_molmoact2.py,
    commit 28693f90891eb5fffbc111a172cbc53bc452def9): PIL bilinear to side x 32 unless already
    that size, float32 patches, ``where(|a||b| < 1e-8, 1, dot / (|a||b| + 1e-12)) < 0.996``."""
    side = math.isqrt(num_depth_codes)
    target = side * 32

    def resized(image):
        if image.shape[0] == target and image.shape[1] == target:
            return image
        return np.asarray(Image.fromarray(image).resize((target, target), Image.BILINEAR))

    def cells(image):
        pixels = resized(image).astype(np.float32)
        grid = pixels.reshape(side, 32, side, 32, 3).transpose(0, 2, 1, 3, 4)
        return grid.reshape(side, side, -1)

    cur, prev = cells(current), cells(previous)
    dot = np.sum(cur * prev, axis=-1)
    denom = np.linalg.norm(cur, axis=-1) * np.linalg.norm(prev, axis=-1)
    similarity = np.where(denom < 1e-8, 1.0, dot / (denom + 1e-12))
    return np.asarray(similarity < 0.996, dtype=np.bool_).reshape(-1), similarity.reshape(-1)


@pytest.mark.parametrize("shape", [(320, 320), (480, 640), (333, 517), (96, 128)])
def test_change_mask_equals_the_released_rule_bit_for_bit(shape):
    rng = np.random.default_rng(shape[0])
    prev = textured_scene(*shape, seed=shape[1])
    # Noise of growing strength per cell row: similarities on both sides of 0.996.
    h = shape[0]
    strength = np.repeat(np.linspace(0, 40, 10), -(-h // 10))[:h, None, None]
    noise = rng.normal(0, 1, prev.shape) * strength
    frame = np.clip(prev + noise, 0, 255).astype(np.uint8)
    frame[: h // 10, : shape[1] // 10] = 0  # a black cell
    expected, similarity = released_update_mask(frame, prev)
    changes = compare_frames(prev, frame)
    np.testing.assert_array_equal(changes.changed, expected)
    np.testing.assert_array_equal(changes.similarity, similarity)
    assert 0 < expected.sum() < 100


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


# ---------------------------------------------------------------------------------------------
# Which Think results survive a depth-cache reset


def test_a_result_started_before_a_reset_is_not_admitted():
    from molmoact2_policy.depth_change import ResetGenerations

    generations = ResetGenerations()
    token = generations.token()  # the inference starts
    with generations.resetting():  # ~/reset arrives while it runs
        pass
    assert not generations.admit(token)
    assert generations.dropped == 1
    after = generations.token()  # the next inference starts after the reset
    assert generations.admit(after)
    assert generations.dropped == 1


def test_a_start_during_a_reset_counts_as_before_it():
    """The policy's reset may wait for the model call: an inference that starts while a reset
    is running may still read the cache the reset is about to drop."""
    from molmoact2_policy.depth_change import ResetGenerations

    generations = ResetGenerations()
    with generations.resetting():
        token = generations.token()
    assert not generations.admit(token)


def test_a_failed_reset_still_ends_and_results_without_resets_are_admitted():
    from molmoact2_policy.depth_change import ResetGenerations

    generations = ResetGenerations()
    with pytest.raises(RuntimeError), generations.resetting():
        raise RuntimeError("policy reset failed")
    token = generations.token()
    assert generations.admit(token) and generations.admit(token)  # no reset since
    assert generations.dropped == 0


def test_frames_one_slow_inference_apart_are_not_a_jump():
    # A CPU Think inference takes seconds: its consecutive frames lie that far apart.
    assert stamp_jump_reason(10.0, 14.5, 1.0, pace_s=4.0) is None
    reason = stamp_jump_reason(10.0, 15.5, 1.0, pace_s=4.0)
    assert reason is not None and "5.000 s" in reason and "4.000 s per inference" in reason
    assert stamp_jump_reason(10.0, 11.5, 1.0) is not None  # no pace known: max_stamp_gap alone
    assert stamp_jump_reason(10.0, 9.0, 1.0, pace_s=100.0) is not None  # backwards always
