"""Frame ids that RViz and tf2 listeners can never resolve are refused at start, by name.

tf2 (ros2/geometry2 ``tf2/src/buffer_core.cpp``): ``validateFrameId`` refuses an id that is
empty or starts with '/' in every lookup ("in tf2 frame_ids cannot start with a '/'"), while
``setTransformImpl`` strips the slash before storing. So a config frame "/cam" reached /tf as
"cam", and images and markers stamped "/cam" could never be placed.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from molmoact2.sim_camera_node import SimCameraParams
from molmoact2.tf_node import TfParams
from molmoact2_policy.depth_cache_params import DepthCacheParams
from molmoact2_policy.policy_node_params import PolicyNodeParams

TF_OK = dict(
    frame_ids=("top_link", "top_optical_frame"),
    frame_parents=("world", "top_link"),
    frame_xyz=(0.0,) * 6,
    frame_rpy=(0.0,) * 6,
)
SIM_OK = dict(
    joint_names=("j1",),
    camera_names=("top",),
    camera_topics=("top/image_raw",),
    camera_frames=("top_optical_frame",),
    camera_rates=(30.0,),
)


def test_frame_id_rule():
    from molmoact2_common.ros_params import frame_id_problem

    assert frame_id_problem("top_optical_frame") == ""
    assert frame_id_problem("") == ""  # empty is each field's business (often "default")
    assert "cannot start with a '/'" in frame_id_problem("/top_optical_frame")
    assert "'top_optical_frame'" in frame_id_problem("/top_optical_frame")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (DepthCacheParams(camera_frames=("/top_optical_frame",)), "camera_frames"),
        (DepthCacheParams(marker_frame="/top_optical_frame"), "marker_frame"),
        (TfParams(**{**TF_OK, "frame_ids": ("/top_link", "top_optical_frame")}), "frame_ids"),
        (
            TfParams(**{**TF_OK, "frame_parents": ("/world", "top_link"), "world_frame": "/world"}),
            "frame_parents",
        ),
        (TfParams(**{**TF_OK, "world_frame": "/world"}), "world_frame"),
        (SimCameraParams(**{**SIM_OK, "camera_frames": ("/top_optical_frame",)}), "camera_frames"),
        (PolicyNodeParams(marker_frame="/base_link"), "marker_frame"),
    ],
)
def test_a_leading_slash_frame_id_is_named(params, field):
    problems = params.validate()
    assert any(p.startswith(f"{field}:") and "cannot start with a '/'" in p for p in problems), (
        problems
    )


def test_valid_frames_pass():
    assert DepthCacheParams().validate() == []
    assert TfParams(**TF_OK).validate() == []
    assert SimCameraParams(**SIM_OK).validate() == []


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"camera_frames": ("",)}, "empty frame id"),
        ({"camera_transports": ("jpeg",)}, "raw or compressed"),
        ({"camera_rates": (1e-320,)}, "camera_rates must lie in"),
        ({"camera_rates": (1e9,)}, "camera_rates must lie in"),
        ({"rate": 1e9}, "rate must be at most"),
    ],
)
def test_sim_camera_refuses_what_it_cannot_publish(change, words):
    problems = SimCameraParams(**{**SIM_OK, **change}).validate()
    assert any(words in p for p in problems), problems


def test_urdf_links_with_a_leading_slash_are_refused(tmp_path):
    from molmoact2.urdf_frames import parse_urdf_joints

    urdf = tmp_path / "slash.urdf"
    urdf.write_text(
        '<robot name="r"><link name="/a"/><link name="b"/>'
        '<joint name="j" type="fixed"><parent link="/a"/><child link="b"/></joint></robot>'
    )
    with pytest.raises(ValueError, match="not a tf2 frame id"):
        parse_urdf_joints(urdf)


names = st.sampled_from(["world", "base_link", "top_link", "/top_link", "/world", "", "cam"])
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 1e308, -1e308])
)


@settings(max_examples=300, derandomize=True, deadline=None, database=None)
@given(
    data=st.data(),
    count=st.integers(0, 4),
    world=st.sampled_from(["world", "/world", ""]),
)
def test_whatever_static_config_passes_every_tf_static_transform_is_usable(data, count, world):
    from builtin_interfaces.msg import Time

    from molmoact2.tf_node import transform_msg

    params = TfParams(
        world_frame=world,
        frame_ids=tuple(data.draw(st.lists(names, min_size=count, max_size=count))),
        frame_parents=tuple(data.draw(st.lists(names, min_size=count, max_size=count))),
        frame_xyz=tuple(data.draw(st.lists(numbers, min_size=3 * count, max_size=3 * count))),
        frame_rpy=tuple(data.draw(st.lists(numbers, min_size=3 * count, max_size=3 * count))),
    )
    if params.validate():
        return  # refused at start, by name
    for frame in params.static_frames():
        msg = transform_msg(frame.parent, frame.child, frame.matrix, Time(sec=1))
        for frame_id in (msg.header.frame_id, msg.child_frame_id):
            assert frame_id and not frame_id.startswith("/"), frame_id
        assert msg.header.frame_id != msg.child_frame_id
        t, r = msg.transform.translation, msg.transform.rotation
        assert all(math.isfinite(v) for v in (t.x, t.y, t.z, r.x, r.y, r.z, r.w))
        assert abs(r.x**2 + r.y**2 + r.z**2 + r.w**2 - 1.0) < 1e-9
