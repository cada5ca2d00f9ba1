"""Image preprocessing as the released robot checkpoints do it (crop mode "resize").

Golden values come from the released rules, worked by hand where the comments show the
arithmetic: torchvision's tensor bilinear resize (antialias off, float32, fused multiply-adds,
round half to even), ``x / 255 * 2 - 1``, 14x14 patches, 2x2 pooling padded at the bottom/right,
and ``<im_start>`` + 14 x 14 ``<im_patch>`` + ``<im_end>`` per image.
"""

from __future__ import annotations

import sys

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


def test_normalisation_is_divide_by_255_then_times_2_minus_1_in_float32():
    values = np.arange(256, dtype=np.uint8)
    got = normalize_pixels(values)
    # The released processor: float32 x / 255, then x * 2 - 1, each step rounded to float32.
    expected = [
        np.float32(np.float32(np.float32(v) / np.float32(255.0)) * np.float32(2.0))
        - np.float32(1.0)
        for v in range(256)
    ]
    assert got.dtype == np.float32
    assert got.view(np.uint32).tolist() == np.array(expected, np.float32).view(np.uint32).tolist()
    assert got[0] == -1.0 and got[255] == 1.0
    # The released vision backbone snaps float pixels back to the uint8 grid and recomputes the
    # same expression, so these exact values are what its ViT sees.
    snapped = np.rint((got + np.float32(1.0)) * np.float32(0.5) * np.float32(255.0))
    assert snapped.tolist() == list(range(256))


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


def test_resize_keeps_a_378_image_and_a_uniform_one():
    image = np.random.default_rng(0).integers(0, 256, (378, 378, 3), dtype=np.uint8)
    assert resize_image(image) is image  # torchvision returns an image of the target size as is
    uniform = np.full((8, 10, 3), 51, np.uint8)
    resized = resize_image(uniform)
    assert resized.shape == (378, 378, 3) and resized.dtype == np.uint8
    assert np.all(resized == 51)


def test_resize_halving_averages_2x2_blocks_rounding_half_to_even():
    # 756 -> 378: scale 2, source = 2 * (i + 0.5) - 0.5 = 2i + 0.5, so both taps weigh 0.5 and
    # each output pixel is the mean of a 2x2 block (exact in float32), rounded half to even.
    blocks = {
        (0, 0): ([[0, 1], [0, 0]], 0),  # 0.25
        (0, 1): ([[1, 1], [0, 0]], 0),  # 0.5 -> even 0
        (0, 2): ([[1, 1], [1, 0]], 1),  # 0.75
        (1, 0): ([[2, 2], [1, 1]], 2),  # 1.5 -> even 2
        (1, 1): ([[3, 3], [2, 2]], 2),  # 2.5 -> even 2
        (1, 2): ([[255, 254], [255, 255]], 255),  # 254.75
    }
    image = np.zeros((756, 756, 3), np.uint8)
    for (row, col), (block, _) in blocks.items():
        image[2 * row : 2 * row + 2, 2 * col : 2 * col + 2] = np.array(block)[..., None]
    out = resize_image(image)
    for (row, col), (_, expected) in blocks.items():
        assert out[row, col].tolist() == [expected] * 3, (row, col)


def test_resize_doubling_the_width_clamps_at_the_edges_and_stretches():
    # 378x189 -> 378x378 (aspect ratio not kept, no padding). Rows: same size, copied. Columns:
    # scale 0.5, source = 0.5 * (j + 0.5) - 0.5 = j/2 - 0.25, clamped to 0 at the left edge;
    # the last source column has no right neighbour. Pixel values 4k make every value a
    # multiple of 1 or an exact .5 (round half to even).
    row = (4 * np.arange(189)).astype(np.uint8)  # 0, 4, 8, ... (wraps past 255)
    image = np.repeat(np.repeat(row[None, :, None], 378, axis=0), 3, axis=2)
    out = resize_image(image)[:, :, 0]
    assert np.all(out == out[0])  # rows are copied
    first = out[0].astype(int).tolist()
    assert first[:6] == [0, 1, 3, 5, 7, 9]  # 0; .75*0+.25*4; .25*0+.75*4=3; .75*4+.25*8=5; ...
    # Exact halves: 0.75 * 4 + 0.25 * 8 = 5 exactly, so use a two-tone pair for the tie case.
    tie = np.zeros((378, 189, 3), np.uint8)
    tie[:, 1:] = 2  # column 1 source 0.25: 0.75 * 0 + 0.25 * 2 = 0.5 -> 0; column 2: 1.5 -> 2
    assert resize_image(tie)[0, :4, 0].tolist() == [0, 0, 2, 2]
    assert first[-1] == int(row[-1])  # source 188.25 -> the last column on its own


def test_resize_computes_the_source_index_with_one_rounding():
    # 384 -> 378 wide: the real source of output column 31 is 31.5 * 384 / 378 - 0.5 = 31.5,
    # a tie. In float32 the scale is 8521761 / 2^23 (1.01587307...), and the released kernel's
    # fused multiply-add rounds 31.5 * scale - 0.5 = 31.50000185 once, to 31.50000191 (one ulp
    # above 31.5), so column 32 weighs 0.50000191 and column 31 0.49999809. Two roundings
    # (product, then difference) would give exactly 31.5 and the opposite result.
    y, x = np.mgrid[0:378, 0:384]
    image = np.stack([(y * 7 + x * 13) % 256, (y * 3 + x * 29) % 256, (x * x + y) % 256], -1)
    image = image.astype(np.uint8)
    assert image[1, 31].tolist() == [154, 134, 194] and image[1, 32].tolist() == [167, 163, 1]
    out = resize_image(image)
    # 154 * .49999809 + 167 * .50000191 = 160.500025 -> 161; 148.500055 -> 149; 97.49963 -> 97.
    assert out[1, 31].tolist() == [161, 149, 97]


def test_resize_without_torch_stays_within_one_grey_level(monkeypatch):
    # The robot side of remote inference may have no torch: OpenCV's float bilinear resize
    # stands in for torch's kernel there.
    rng = np.random.default_rng(7)
    for height, width in [(360, 640), (480, 640), (720, 1280), (100, 150), (379, 377)]:
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        with_torch = resize_image(image).astype(np.int16)
        with monkeypatch.context() as patch:
            patch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
            without = resize_image(image).astype(np.int16)
        difference = np.abs(with_torch - without)
        assert difference.max() <= 1 and (difference > 0).mean() < 0.01, (height, width)
        np.testing.assert_array_equal(resize_image(image, exact=False), without)


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((8, 8, 3), np.float32), "uint8"),
        (np.zeros((8, 8, 3), np.uint16), "uint8"),
        (np.zeros((8, 8), np.uint8), "HxWx3"),
        (np.zeros((8, 8, 4), np.uint8), "HxWx3"),
        (np.zeros((0, 8, 3), np.uint8), "HxWx3"),
    ],
)
def test_non_rgb_uint8_images_are_refused(image, match):
    with pytest.raises(ValueError, match=match):
        preprocess_images([image])


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


def test_image_token_layout_single_crop_is_im_start_patches_im_end():
    geometry = ImageGeometry()
    tokens = ImageTokenLayout().tokens(geometry.pooled_rows, geometry.pooled_cols)
    # Released options image_use_col_tokens=True, use_single_crop_col_tokens=False,
    # use_single_crop_start_token=True; a resize-mode image (grid 14, 14, 0, 0) always starts
    # with <im_start> and has no <im_col>.
    assert tokens == ["<im_start>"] + ["<im_patch>"] * 196 + ["<im_end>"]
    assert len(tokens) == 198


def test_image_token_layout_single_crop_column_option():
    with_cols = ImageTokenLayout(use_single_crop_col_tokens=True).tokens(2, 3)
    assert with_cols == ["<im_start>"] + (["<im_patch>"] * 3 + ["<im_col>"]) * 2 + ["<im_end>"]
    # None falls back to image_use_col_tokens.
    fallback = ImageTokenLayout(use_col_tokens=False, use_single_crop_col_tokens=None)
    assert fallback.tokens(2, 3) == ["<im_start>"] + ["<im_patch>"] * 6 + ["<im_end>"]
    assert ImageTokenLayout(use_single_crop_col_tokens=None).tokens(1, 2) == [
        "<im_start>",
        "<im_patch>",
        "<im_patch>",
        "<im_col>",
        "<im_end>",
    ]
    # The start-token option does not apply to a single crop.
    plain = ImageTokenLayout(use_low_res_start_token=False).tokens(2, 3)
    assert plain == ImageTokenLayout().tokens(2, 3)


def test_image_token_layout_multi_crop_grid():
    # Grid (2, 3, 2, 2): the low-res global view, then the high-res crops.
    patch, col = "<im_patch>", "<im_col>"
    tokens = ImageTokenLayout().tokens(2, 3, 2, 2)
    low_res = ["<low_res_im_start>", patch, patch, patch, patch, patch, patch, "<im_end>"]
    high_res = ["<im_start>", patch, patch, col, patch, patch, col, "<im_end>"]
    assert tokens == [*low_res, *high_res]
    plain = ImageTokenLayout(use_col_tokens=False, use_low_res_start_token=False).tokens(1, 1, 1, 2)
    assert plain == ["<im_start>", patch, "<im_end>", "<im_start>", patch, patch, "<im_end>"]


def test_empty_image_list_is_refused():
    with pytest.raises(ValueError, match="at least one image"):
        preprocess_images([])
