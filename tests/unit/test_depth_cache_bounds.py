"""Depth-cache parameters the depth topics cannot carry are refused at start, by name; with any
parameters that pass, what goes out is what was meant.

molmoact2_msgs/DepthTokens holds rows and cols as uint8 and num_codes and codes as uint16: the
generated Python setters do not range-check, so grid_rows 300 went out as 44 and num_codes
70000 as 4464 (codes were wrapped by ``astype(np.uint16)`` before that). A cell_size of 100000
allocated a 1e6 x 1e6 picture at the first result; marker_distance 1e306 put the cubes at
-inf (``distance * u`` overflowed before the division).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from molmoact2_policy.depth_cache_params import DepthCacheParams
from molmoact2_policy.depth_viz import depth_cell_cubes, render_depth_image


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"grid_rows": 256}, "grid_rows must be <= 255"),
        ({"grid_cols": 300}, "grid_cols must be <= 255"),
        ({"num_codes": 65536}, "num_codes must be <= 65535"),
        ({"cell_size": 100000}, "must be <= 4096 px a side"),
        ({"grid_rows": 200, "cell_size": 21}, "must be <= 4096 px a side"),
        ({"marker_distance": 1e306}, "marker_distance must be in (0, 1000] m"),
        ({"marker_distance": 0.0}, "marker_distance must be in (0, 1000] m"),
    ],
)
def test_what_the_topics_cannot_carry_is_named(change, words):
    problems = DepthCacheParams(**change).validate()
    assert any(words in p for p in problems), problems


def test_cubes_at_a_large_finite_distance_stay_finite():
    boxes = depth_cell_cubes(np.zeros(100, np.int64), distance=1e306, hfov=1.2)
    assert all(math.isfinite(x) for b in boxes for x in (*b.center, *b.size))


def test_cubes_beyond_float_range_are_refused_not_returned():
    with pytest.raises(ValueError, match="beyond float range"):
        depth_cell_cubes(np.zeros(100, np.int64), distance=1e308, hfov=3.14159)


@settings(
    max_examples=40,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)
@given(
    rows=st.integers(1, 300),
    cols=st.integers(1, 300),
    num_codes=st.one_of(st.integers(1, 256), st.integers(60000, 70000)),
    cell_size=st.integers(1, 64),
    distance=st.one_of(st.floats(1e-6, 1e3), st.floats(1e3, 1e308)),
    hfov=st.floats(0.01, 3.14),
    seed=st.integers(0, 2**16),
)
def test_with_any_accepted_parameters_the_topics_carry_what_was_meant(
    rows, cols, num_codes, cell_size, distance, hfov, seed
):
    from builtin_interfaces.msg import Time
    from rclpy.serialization import deserialize_message, serialize_message

    from molmoact2_msgs.msg import DepthTokens
    from molmoact2_policy.depth_cache_node import DepthCacheNode
    from molmoact2_policy.image_conversion import make_image_msg

    p = DepthCacheParams(
        grid_rows=rows,
        grid_cols=cols,
        num_codes=num_codes,
        cell_size=cell_size,
        marker_distance=distance,
        camera_hfov=hfov,
    )
    assume(p.validate() == [])
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, num_codes, rows * cols)
    codes[0] = num_codes - 1
    changed = rng.random(rows * cols) < 0.5

    owner = SimpleNamespace(params=p, frame_id="top_optical_frame")
    msg = DepthCacheNode._tokens_msg(owner, Time(sec=1), codes, changed)
    back = deserialize_message(serialize_message(msg), DepthTokens)
    assert (back.rows, back.cols, back.num_codes) == (rows, cols, num_codes)
    assert list(back.codes) == codes.tolist()

    picture = render_depth_image(
        codes, changed, rows=rows, cols=cols, num_codes=num_codes, cell_size=cell_size
    )
    image = make_image_msg(picture, stamp=Time(sec=1), frame_id="top_optical_frame")
    assert (image.height, image.width) == (rows * cell_size, cols * cell_size)
    assert image.step == image.width * 3 and len(image.data) == image.step * image.height

    boxes = depth_cell_cubes(
        codes,
        changed,
        rows=rows,
        cols=cols,
        num_codes=num_codes,
        image_size=(640, 480),
        hfov=hfov,
        distance=distance,
    )
    values = [x for b in boxes for x in (*b.center, *b.size, *b.rgba)]
    assert all(math.isfinite(x) for x in values)
