"""The depth picture shows each cell's code colour, outlines changed cells, blends on request."""

from __future__ import annotations

import numpy as np
import pytest

from molmoact2_policy.depth_viz import (
    OUTLINE_RGB,
    depth_cell_cubes,
    depth_colormap,
    render_depth_image,
)


def test_colormap_is_distinct_per_code_and_never_the_outline_colour():
    colours = depth_colormap(128)
    assert colours.shape == (128, 3) and colours.dtype == np.uint8
    assert len({tuple(c) for c in colours}) == 128
    assert not np.all(colours == OUTLINE_RGB, axis=1).any()
    # Categorical, not a ramp: the release gives codes no depth order, so consecutive indices
    # must not look alike (a ramp would suggest near/far).
    steps = np.abs(np.diff(colours.astype(int), axis=0)).sum(axis=1)
    assert steps.min() > 60


def test_cells_take_their_code_colour_and_changed_cells_are_outlined():
    codes = np.arange(100, dtype=np.int64)
    changed = np.zeros(100, dtype=bool)
    changed[[5, 42]] = True
    image = render_depth_image(codes, changed, cell_size=16, outline_px=2)
    assert image.shape == (160, 160, 3) and image.dtype == np.uint8
    colours = depth_colormap(128)
    for index in range(100):
        r, c = divmod(index, 10)
        cell = image[r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16]
        np.testing.assert_array_equal(cell[8, 8], colours[index])
        border = np.concatenate([cell[0], cell[-1], cell[:, 0], cell[:, -1]])
        if changed[index]:
            assert np.all(border == OUTLINE_RGB)
            np.testing.assert_array_equal(cell[2:-2, 2:-2].reshape(-1, 3).max(0), colours[index])
        else:
            assert np.all(border == colours[index])


def test_blend_over_camera_frame():
    codes = np.full(100, 127)
    frame = np.zeros((48, 64, 3), dtype=np.uint8)  # another size: resized to the output
    image = render_depth_image(codes, None, cell_size=4, background=frame, blend_alpha=0.25)
    expected = np.round(depth_colormap(128)[127] * 0.25)
    assert image.shape == (40, 40, 3)
    np.testing.assert_allclose(image[20, 20], expected, atol=1)
    opaque = render_depth_image(codes, None, cell_size=4, background=frame, blend_alpha=1.0)
    np.testing.assert_array_equal(opaque[20, 20], depth_colormap(128)[127])


@pytest.mark.parametrize(
    ("codes", "message"),
    [
        (np.zeros(99, dtype=np.int64), "100 depth codes"),
        (np.full(100, 128), r"\[0, 128\)"),
        (np.full(100, -1), r"\[0, 128\)"),
        (np.zeros(100, dtype=np.float32), "integers"),
    ],
)
def test_bad_codes_are_rejected(codes, message):
    with pytest.raises(ValueError, match=message):
        render_depth_image(codes)


def test_bad_background_and_alpha_are_rejected():
    codes = np.zeros(100, dtype=np.int64)
    with pytest.raises(ValueError, match="background frame"):
        render_depth_image(codes, background=np.zeros((8, 8), np.uint8), blend_alpha=0.5)
    with pytest.raises(ValueError, match="blend_alpha"):
        render_depth_image(codes, blend_alpha=1.5)


def test_cell_cubes_sit_on_their_pixel_rays_at_the_fixed_distance():
    import math

    codes = np.arange(100, dtype=np.int64)
    changed = np.zeros(100, dtype=bool)
    changed[0] = True
    width, height, hfov, distance = 640, 480, 1.2, 0.8
    cubes = depth_cell_cubes(
        codes, changed, image_size=(width, height), hfov=hfov, distance=distance
    )
    assert len(cubes) == 100
    focal = (width / 2) / math.tan(hfov / 2)
    for cube in cubes:
        r, c = divmod(cube.index, 10)
        x, y, z = cube.center
        assert z == pytest.approx(distance)
        # Projecting the centre through the pinhole lands on the cell's centre pixel.
        assert width / 2 + focal * x / z == pytest.approx((c + 0.5) * width / 10)
        assert height / 2 + focal * y / z == pytest.approx((r + 0.5) * height / 10)
        np.testing.assert_allclose(cube.rgba[:3], depth_colormap(128)[cube.index] / 255.0)
    # Neighbouring cubes tile the frustum's cross-section: no gap beyond the 5% margin.
    pitch_x = cubes[1].center[0] - cubes[0].center[0]
    pitch_y = cubes[10].center[1] - cubes[0].center[1]
    assert cubes[0].size[0] == pytest.approx(0.95 * pitch_x)
    assert cubes[0].size[1] == pytest.approx(0.95 * pitch_y)
    # The grid spans the horizontal field of view.
    left_edge = cubes[0].center[0] - pitch_x / 2
    assert math.atan2(-left_edge, distance) == pytest.approx(hfov / 2)
    assert cubes[0].rgba[3] == 1.0 and cubes[1].rgba[3] < 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"distance": 0.0}, "distance"),
        ({"distance": float("nan")}, "distance"),
        ({"hfov": 3.2}, "hfov"),
        ({"image_size": (0, 480)}, "image_size"),
    ],
)
def test_cell_cubes_reject_bad_geometry(kwargs, message):
    with pytest.raises(ValueError, match=message):
        depth_cell_cubes(np.zeros(100, dtype=np.int64), **kwargs)


def test_rviz_config_shows_the_cameras_the_depth_topics_and_the_chunk():
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
    rviz = yaml.safe_load((root / "config" / "molmoact2.rviz").read_text())
    manager = rviz["Visualization Manager"]
    # The fixed frame is the root every robot's published frames hang off (issue 20).
    for name in ("yam", "droid", "so101"):
        config = yaml.safe_load((root / "config" / f"{name}.yaml").read_text())
        tf = config["/**/molmoact2_tf"]["ros__parameters"]
        assert manager["Global Options"]["Fixed Frame"] == tf["world_frame"]

    def flatten(displays):
        for display in displays:
            yield display
            yield from flatten(display.get("Displays", []))

    topics = {
        d["Topic"]["Value"]: d["Class"] for d in flatten(manager["Displays"]) if "Topic" in d
    }
    robot = yaml.safe_load((root / "config" / "yam.yaml").read_text())
    for topic in robot["/**"]["ros__parameters"]["camera_topics"]:
        assert topics["/" + topic] == "rviz_default_plugins/Image"
    assert topics["/molmoact2_depth_cache/depth_image"] == "rviz_default_plugins/Image"
    assert topics["/molmoact2_depth_cache/depth_markers"] == "rviz_default_plugins/MarkerArray"
    assert topics["/molmoact2_policy/predicted_chunk_markers"] == (
        "rviz_default_plugins/MarkerArray"
    )
