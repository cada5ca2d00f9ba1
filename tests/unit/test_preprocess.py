"""Image preprocessing: 378x378, mean/std 0.5, 729 patches x 588 values, 2x2 pooling indices."""

from __future__ import annotations

import numpy as np
import pytest

from molmoact2_policy.model.preprocess import (
    ImageGeometry,
    ImageTokenLayout,
    image_to_patches,
    normalize_pixels,
    pooling_indices,
    preprocess_images,
    resize_image,
)


def test_shapes_for_three_cameras_of_different_sizes():
    images = [
        np.zeros((360, 640, 3), np.uint8),
        np.zeros((480, 640, 3), np.uint8),
        np.zeros((378, 378, 3), np.uint8),
    ]
    out = preprocess_images(images)
    assert out.pixel_values.shape == (3, 729, 588)
    assert out.pixel_values.dtype == np.float32
    assert out.pooling_indices.shape == (3 * 196, 4)
    assert out.grids.tolist() == [[14, 14, 0, 0]] * 3
    # Image k's pooled tokens index its own patches: offsets of 729 per image.
    second = out.pooling_indices[196:392]
    valid = second[second >= 0]
    assert valid.min() == 729 and valid.max() == 2 * 729 - 1


def test_normalisation_maps_0_to_minus_1_and_255_to_1():
    values = normalize_pixels(np.array([0, 51, 255], np.uint8))
    np.testing.assert_allclose(values, [-1.0, 51 / 127.5 - 1.0, 1.0], atol=1e-6)


def test_patch_values_hand_computed():
    # A 378x378 image (no resize) whose pixel value encodes its position: every patch entry can
    # be predicted by hand.
    rows, cols = np.meshgrid(np.arange(378), np.arange(378), indexing="ij")
    image = np.stack([(rows % 256), (cols % 256), ((rows + cols) % 256)], axis=-1).astype(np.uint8)
    out = preprocess_images([image])
    patches = out.pixel_values[0]
    # Patch 28 is row 1, col 1 of the 27x27 grid: pixels rows 14..27, cols 14..27.
    patch = patches[28].reshape(14, 14, 3)
    y, x = 3, 5  # inside the patch
    expected = np.array([14 + y, 14 + x, 28 + y + x]) / 127.5 - 1.0
    np.testing.assert_allclose(patch[y, x], expected, atol=1e-6)
    # Entry order in the 588-vector is (y, x, channel): index (y*14 + x)*3 + c.
    np.testing.assert_allclose(patches[28][(y * 14 + x) * 3 + 2], expected[2], atol=1e-6)
    # Last patch (26, 26) starts at pixel (364, 364).
    np.testing.assert_allclose(
        patches[728][:3], np.array([364 % 256, 364 % 256, 728 % 256]) / 127.5 - 1.0, atol=1e-6
    )


def test_resize_of_uniform_and_two_tone_images():
    uniform = np.full((8, 10, 3), 51, np.uint8)
    resized = resize_image(uniform)
    assert resized.shape == (378, 378, 3) and np.all(resized == 51)
    # Left half 0, right half 200: bilinear keeps the far columns at the original values and
    # produces a monotone ramp at the seam.
    two_tone = np.zeros((4, 4, 3), np.uint8)
    two_tone[:, 2:] = 200
    out = resize_image(two_tone)[0, :, 0].astype(int)
    assert out[0] == 0 and out[-1] == 200
    assert np.all(np.diff(out) >= 0)


def test_pooling_indices_hand_computed():
    idx = pooling_indices(27, 2, 2)
    assert idx.shape == (196, 4)
    assert idx[0].tolist() == [0, 1, 27, 28]
    assert idx[1].tolist() == [2, 3, 29, 30]
    # The 27th column/row is padded on the right/bottom with -1.
    assert idx[13].tolist() == [26, -1, 53, -1]
    assert idx[14].tolist() == [54, 55, 81, 82]
    assert idx[195].tolist() == [728, -1, -1, -1]
    assert sorted(idx[idx >= 0].tolist()) == list(range(729))


def test_image_to_patches_inverse_layout():
    image = np.arange(28 * 28 * 3, dtype=np.float32).reshape(28, 28, 3)
    patches = image_to_patches(image, 14)
    assert patches.shape == (4, 588)
    np.testing.assert_array_equal(patches[1].reshape(14, 14, 3), image[:14, 14:])
    np.testing.assert_array_equal(patches[2].reshape(14, 14, 3), image[14:, :14])


def test_image_token_layout_single_crop():
    geometry = ImageGeometry()
    tokens = ImageTokenLayout().tokens(geometry.pooled_rows, geometry.pooled_cols)
    assert tokens[0] == "<low_res_im_start>" and tokens[-1] == "<im_end>"
    assert tokens.count("<im_patch>") == 196
    assert tokens.count("<im_col>") == 14
    assert len(tokens) == 212
    assert tokens[1:17] == ["<im_patch>"] * 14 + ["<im_col>", "<im_patch>"]
    plain = ImageTokenLayout(use_col_tokens=False, use_low_res_start_token=False).tokens(2, 3)
    assert plain == ["<im_start>"] + ["<im_patch>"] * 6 + ["<im_end>"]


def test_empty_image_list_is_refused():
    with pytest.raises(ValueError, match="at least one image"):
        preprocess_images([])
