"""Whatever joint state arrives, the link frames that go out on /tf are finite, with a unit
quaternion, and stamped no further ahead than clock skew allows.

tf2 (ros2/geometry2 ``tf2/src/buffer_core.cpp``, ``setTransformImpl``) drops a transform with
a NaN (TF_NAN_INPUT) or a quaternion off unit length by more than 1e-2 (TF_DENORMALIZED_
QUATERNION); an infinite translation it keeps, and every lookup through it is NaN. Its
TimeCache drops data older than its newest entry by more than the cache time, so one
transform stamped far ahead blinds listeners to the correct ones that follow.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("pinocchio")

from molmoact2.tf_node import joint_stamp_problem, transform_msg
from molmoact2.urdf_frames import UrdfFrames

# Two prismatic joints in a row: finite positions near the float limit add up to infinity.
URDF = """<?xml version="1.0"?>
<robot name="stack">
  <link name="base_link"/><link name="a"/><link name="b"/><link name="c"/><link name="d"/>
  <link name="tool"/>
  <joint name="s1" type="prismatic"><parent link="base_link"/><child link="a"/>
    <origin xyz="0.1 0 0"/><axis xyz="1 0 0"/>
    <limit lower="-1" upper="1" effort="1" velocity="1"/></joint>
  <joint name="s2" type="prismatic"><parent link="a"/><child link="b"/>
    <origin xyz="0 0.2 0" rpy="0.3 0 0"/><axis xyz="1 0 0"/>
    <limit lower="-1" upper="1" effort="1" velocity="1"/></joint>
  <joint name="r" type="revolute"><parent link="b"/><child link="c"/>
    <origin xyz="0 0 0.1" rpy="0 0.5 0"/><axis xyz="0 0 1"/>
    <limit lower="-3" upper="3" effort="1" velocity="1"/></joint>
  <joint name="k" type="continuous"><parent link="c"/><child link="d"/>
    <axis xyz="0 1 0"/></joint>
  <joint name="f" type="fixed"><parent link="d"/><child link="tool"/>
    <origin xyz="0 0 0.05"/></joint>
</robot>
"""
NAMES = ["s1", "s2", "r", "k"]


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> UrdfFrames:
    path = tmp_path_factory.mktemp("urdf") / "stack.urdf"
    path.write_text(URDF)
    return UrdfFrames(path)


def assert_publishable(edges) -> None:
    from builtin_interfaces.msg import Time

    for parent, child, pose in edges:
        msg = transform_msg(parent, child, pose, Time(sec=1))
        t, r = msg.transform.translation, msg.transform.rotation
        values = [t.x, t.y, t.z, r.x, r.y, r.z, r.w]
        assert all(math.isfinite(v) for v in values), (child, values)
        assert abs(r.x**2 + r.y**2 + r.z**2 + r.w**2 - 1.0) < 1e-9, (child, values)


def test_stacked_prismatic_overflow_is_refused_not_published(frames):
    with pytest.raises(ValueError, match="non-finite pose"):
        frames.joint_state_transforms(NAMES, [1e308, 1e308, 0.0, 0.0])


floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-10.0, max_value=10.0),
    st.sampled_from([1e308, -1e308, 1.7e308, 1e200, 5e-324]),
)


@settings(max_examples=300, derandomize=True, deadline=None, database=None)
@given(positions=st.lists(floats, min_size=4, max_size=4), order=st.permutations(NAMES))
def test_whatever_arrives_every_published_link_frame_is_finite_and_unit(frames, positions, order):
    try:
        edges = frames.joint_state_transforms(order, positions)
    except ValueError:
        return  # refused with a reason: the node logs it and publishes nothing
    assert [child for _, child, _ in edges] == ["a", "b", "c", "d"]
    assert_publishable(edges)


@pytest.mark.parametrize(
    ("stamp_ns", "now_ns", "words"),
    [
        (3600 * 10**9 + 5, 5, "ahead of this node's clock"),
        (-1, 10**18, "negative"),
    ],
)
def test_stamps_tf2_listeners_would_choke_on_are_named(stamp_ns, now_ns, words):
    assert words in joint_stamp_problem(stamp_ns, now_ns)


@pytest.mark.parametrize(
    ("stamp_ns", "now_ns"),
    [
        (10**18, 10**18),  # now
        (10**18 + 5 * 10**8, 10**18),  # half a second of clock skew
        (42 * 10**9, 10**18),  # old (a bag, a test): tf2 keeps it, no harm to newer data
        (10**18, 0),  # sim clock not started yet: nothing to compare with
    ],
)
def test_ordinary_stamps_pass(stamp_ns, now_ns):
    assert joint_stamp_problem(stamp_ns, now_ns) == ""


def test_a_urdf_whose_origins_overflow_is_refused_at_load(tmp_path):
    path = tmp_path / "far.urdf"
    path.write_text(
        '<robot name="far"><link name="base_link"/><link name="a"/><link name="b"/>'
        '<joint name="f1" type="fixed"><parent link="base_link"/><child link="a"/>'
        '<origin xyz="1e308 0 0"/></joint>'
        '<joint name="f2" type="fixed"><parent link="a"/><child link="b"/>'
        '<origin xyz="1e308 0 0"/></joint></robot>'
    )
    with pytest.raises(ValueError, match="links b lie at non-finite poses"):
        UrdfFrames(path)
