"""Observation synchronisation by capture stamps (issue 6), without ROS."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from molmoact2_policy.observation import (
    ERROR,
    STALE,
    WAITING,
    Observation,
    ObservationAssembler,
    Rejection,
    is_new_camera_set,
    ns_to_stamp,
    stamp_to_ns,
)

S = 1_000_000_000
T0 = 1_700_000_000 * S + 123_456_789  # a realistic epoch stamp, ns precision matters
CAMERAS = ("top", "left_wrist", "right_wrist")
LEFT = ("left_joint1", "left_gripper")
RIGHT = ("right_joint1", "right_gripper")


def _assembler(**kwargs) -> ObservationAssembler:
    defaults = dict(
        camera_names=CAMERAS,
        joint_names=LEFT + RIGHT,
        joint_topics=("left/joint_states", "right/joint_states"),
        max_age=0.5,
        max_skew=0.05,
    )
    defaults.update(kwargs)
    return ObservationAssembler(**defaults)


def _image(value: int) -> np.ndarray:
    return np.full((8, 8, 3), value, np.uint8)


def _fill(assembler: ObservationAssembler, stamp_ns: int = T0) -> None:
    for index, camera in enumerate(CAMERAS):
        assembler.add_image(camera, stamp_ns + index * 1_000_000, _image(index))
    # Arms publish in their own order and with extra joints the model does not use.
    assembler.add_joint_state(
        "right/joint_states",
        stamp_ns,
        ["right_gripper", "right_extra", "right_joint1"],
        [0.9, 5.0, 0.3],
    )
    assembler.add_joint_state(
        "left/joint_states", stamp_ns, ["left_gripper", "left_joint1"], [0.7, 0.1]
    )


def test_builds_when_all_inputs_are_fresh_and_merges_arms_by_name():
    assembler = _assembler()
    _fill(assembler)
    obs = assembler.build(T0 + S // 10)
    assert isinstance(obs, Observation)
    np.testing.assert_array_equal(obs.state, [0.1, 0.7, 0.3, 0.9])
    assert list(obs.images) == list(CAMERAS)
    assert obs.images["left_wrist"][0, 0, 0] == 1


def test_observation_stamp_is_the_oldest_camera_stamp_exactly():
    assembler = _assembler()
    _fill(assembler)
    assembler.add_image("top", T0 + 7_000_000, _image(9))  # top is now the newest
    obs = assembler.build(T0 + S // 10)
    assert isinstance(obs, Observation)
    # left_wrist (T0 + 1 ms) is now the oldest camera; right_wrist is T0 + 2 ms.
    assert obs.stamp_ns == T0 + 1_000_000
    assert ns_to_stamp(obs.stamp_ns) == (1_700_000_000, 124_456_789)
    assert stamp_to_ns(*ns_to_stamp(obs.stamp_ns)) == obs.stamp_ns


def test_missing_camera_and_missing_joint_wait_with_names():
    assembler = _assembler()
    result = assembler.build(T0)
    assert result == Rejection(WAITING, "camera 'top': no image received yet")
    for camera in CAMERAS:
        assembler.add_image(camera, T0, _image(0))
    assembler.add_joint_state("left/joint_states", T0, list(LEFT), [0.0, 0.0])
    assembler.add_joint_state("right/joint_states", T0, ["right_joint1"], [0.0])
    result = assembler.build(T0)
    assert isinstance(result, Rejection) and result.kind == WAITING
    assert "joint 'right_gripper' missing" in result.reason


def test_stale_camera_is_rejected_with_its_age():
    assembler = _assembler()
    _fill(assembler)
    result = assembler.build(T0 + 810_000_000)
    assert result == Rejection(STALE, "camera 'top' is stale: 0.81 s > 0.5 s")


def test_stale_joint_is_rejected_even_when_cameras_are_fresh():
    assembler = _assembler()
    _fill(assembler)
    later = T0 + 2 * S
    for camera in CAMERAS:
        assembler.add_image(camera, later, _image(0))
    assembler.add_joint_state("right/joint_states", later, list(RIGHT), [0.0, 0.0])
    result = assembler.build(later + S // 10)
    assert isinstance(result, Rejection) and result.kind == STALE
    assert result.reason.startswith("joint 'left_joint1' is stale: 2.10 s")


def test_future_stamps_are_rejected():
    assembler = _assembler()
    _fill(assembler, T0 + 2 * S)
    result = assembler.build(T0)
    assert isinstance(result, Rejection) and result.kind == STALE
    assert "in the future" in result.reason


def test_camera_skew_names_the_two_cameras():
    assembler = _assembler()
    _fill(assembler)
    assembler.add_image("left_wrist", T0 + 120_000_000, _image(0))
    result = assembler.build(T0 + 200_000_000)
    assert result == Rejection(STALE, "camera skew 0.120 s > 0.05 s between 'top' and 'left_wrist'")


def test_nan_joint_blocks_until_a_finite_value_arrives():
    assembler = _assembler()
    _fill(assembler)
    assembler.add_joint_state("left/joint_states", T0, ["left_joint1"], [math.nan])
    result = assembler.build(T0)
    assert result == Rejection(ERROR, "NaN in joint 'left_joint1' (from 'left/joint_states')")
    assembler.add_joint_state("left/joint_states", T0, ["left_joint1"], [0.2])
    obs = assembler.build(T0)
    assert isinstance(obs, Observation) and obs.state[0] == 0.2


def test_malformed_joint_state_is_reported_and_blocks():
    assembler = _assembler()
    _fill(assembler)
    error = assembler.add_joint_state("left/joint_states", T0, ["a", "b"], [1.0])
    assert error == "joint states on 'left/joint_states': 2 names but 1 positions"
    assert assembler.build(T0) == Rejection(ERROR, error)
    statuses = {s.name: s for s in assembler.input_status(T0)}
    assert not statuses["left/joint_states"].ok and statuses["right/joint_states"].ok


def test_bad_image_blocks_until_a_good_frame_arrives():
    assembler = _assembler()
    _fill(assembler)
    assembler.add_image_error("right_wrist", T0, "unsupported image encoding '16UC1'")
    assert assembler.build(T0) == Rejection(
        ERROR, "camera 'right_wrist': unsupported image encoding '16UC1'"
    )
    assembler.add_image("right_wrist", T0, _image(3))
    assert isinstance(assembler.build(T0), Observation)


def test_input_status_reports_ages_and_nan_before_first_message():
    assembler = _assembler()
    assembler.add_image("top", T0, _image(0))
    statuses = {s.name: s for s in assembler.input_status(T0 + S // 4)}
    assert statuses["top"].age == pytest.approx(0.25) and statuses["top"].ok
    assert math.isnan(statuses["left_wrist"].age) and not statuses["left_wrist"].ok


def test_input_key_changes_only_with_new_messages_and_clear_forgets():
    assembler = _assembler()
    _fill(assembler)
    first = assembler.build(T0)
    again = assembler.build(T0 + 1)
    assert isinstance(first, Observation) and isinstance(again, Observation)
    assert first.input_key == again.input_key
    assembler.add_image("top", T0 + 5, _image(0))
    newer = assembler.build(T0 + 10)
    assert isinstance(newer, Observation) and newer.input_key != first.input_key
    assembler.clear()
    assert isinstance(assembler.build(T0), Rejection)


def test_an_input_that_stopped_is_not_ok_once_older_than_max_age():
    assembler = _assembler()
    assembler.add_image("top", T0, _image(0))
    assert {s.name: s for s in assembler.input_status(T0 + S // 4)}["top"].ok
    old = {s.name: s for s in assembler.input_status(T0 + 3 * S // 4)}["top"]
    assert old.age == pytest.approx(0.75) and not old.ok


def test_a_new_camera_set_needs_a_new_frame_from_every_camera():
    assembler = _assembler()
    _fill(assembler, T0)
    first = assembler.build(T0)
    assert isinstance(first, Observation)
    assert first.camera_key == (T0, T0 + 1_000_000, T0 + 2_000_000)
    assert is_new_camera_set(first.camera_key, None)
    assert not is_new_camera_set(first.camera_key, first.camera_key)
    # New joint states alone, or part of the next set: still the same frames in use.
    assembler.add_joint_state("left/joint_states", T0 + S // 100, LEFT, [0.5, 0.6])
    later = T0 + S // 30
    assembler.add_image("top", later, _image(7))
    partial = assembler.build(later)
    assert isinstance(partial, Observation) and partial.input_key != first.input_key
    assert not is_new_camera_set(partial.camera_key, first.camera_key)
    for camera in CAMERAS[1:]:
        assembler.add_image(camera, later, _image(8))
    full = assembler.build(later)
    assert is_new_camera_set(full.camera_key, first.camera_key)
    # Stamps that jump back (sim time restarted) are different frames, not old ones.
    assert is_new_camera_set((T0 - S, T0 - S, T0 - S), full.camera_key)
    assert is_new_camera_set((T0,), full.camera_key)  # a different camera list altogether


@pytest.mark.parametrize(
    ("names", "positions", "velocities", "efforts", "problem"),
    [
        (["left_joint1", "left_gripper", "left_joint1"], [0.1, 0.7, 0.9], [], [],
         "joint names given more than once: ['left_joint1']"),
        (["left_gripper", "left_joint1"], [0.7, 0.1], [0.0], [],
         "2 names but 1 velocities (must be 2 or none)"),
        (["left_gripper", "left_joint1"], [0.7, 0.1], [], [0.0, 0.0, 0.0],
         "2 names but 3 efforts (must be 2 or none)"),
    ],
)
def test_a_joint_state_that_breaks_its_layout_is_refused_whole(
    names, positions, velocities, efforts, problem
):
    """sensor_msgs/JointState: each array has one entry per name (velocity and effort may be
    empty); a name given twice leaves its value to a guess. Both used to be merged silently."""
    assembler = _assembler()
    _fill(assembler)
    error = assembler.add_joint_state(
        "left/joint_states", T0, names, positions, velocities, efforts
    )
    assert error == f"joint states on 'left/joint_states': {problem}"
    assert assembler.build(T0) == Rejection(ERROR, error)
    # The next well-formed message clears it (velocity and effort empty or full are fine).
    assert assembler.add_joint_state(
        "left/joint_states", T0, list(LEFT), [0.3, 0.4], [], [1.0, 2.0]
    ) is None
    obs = assembler.build(T0)
    assert isinstance(obs, Observation) and obs.state[:2].tolist() == [0.3, 0.4]


_NAMES = st.sampled_from(["left_joint1", "left_gripper", "right_joint1", "right_gripper", "x"])


@settings(max_examples=300, deadline=None)
@given(
    names=st.lists(_NAMES, max_size=7),
    extra=st.tuples(*(st.integers(-1, 1),) * 3),
    values=st.lists(st.floats(-3, 3), min_size=10, max_size=10),
)
def test_any_joint_state_is_either_refused_or_merged_exactly_by_name(names, extra, values):
    """For any JointState: a layout ROS allows with unique names sets each joint the model
    uses to exactly the value given for its name; anything else is refused and blocks."""
    count = len(names)
    lengths = [max(0, count + d) for d in extra]
    lengths[1:] = [0 if d == -1 else n for d, n in zip(extra[1:], lengths[1:], strict=True)]
    positions, velocities, efforts = (values[:n] for n in lengths)
    assembler = _assembler(joint_topics=("joint_states",))
    for camera in CAMERAS:
        assembler.add_image(camera, T0, _image(1))
    assembler.add_joint_state("joint_states", T0, list(LEFT + RIGHT), [9.0] * 4)
    error = assembler.add_joint_state("joint_states", T0, names, positions, velocities, efforts)
    built = assembler.build(T0)
    well_formed = (
        len(positions) == count
        and all(len(v) in (0, count) for v in (velocities, efforts))
        and len(set(names)) == count
    )
    if not well_formed:
        assert error and built == Rejection(ERROR, error)
        return
    assert error is None and isinstance(built, Observation)
    given_values = dict(zip(names, positions, strict=True))
    for index, joint in enumerate(LEFT + RIGHT):
        assert built.state[index] == given_values.get(joint, 9.0)
