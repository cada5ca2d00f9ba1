"""The sim scene: images follow the joint state, and only where the arm moved."""

from __future__ import annotations

import numpy as np
import pytest

from molmoact2.sim_world import SimWorld, arm_layouts, forward_kinematics

YAM = [f"left_joint{i}" for i in range(1, 7)] + ["left_gripper"]
YAM += [f"right_joint{i}" for i in range(1, 7)] + ["right_gripper"]
Q0 = np.array([0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.5] * 2)


def test_bimanual_joints_split_into_two_arms_with_grippers():
    layouts = arm_layouts(YAM)
    assert [lay.joint_indices for lay in layouts] == [tuple(range(6)), tuple(range(7, 13))]
    assert [lay.gripper_index for lay in layouts] == [6, 13]


def test_render_is_deterministic_rgb_of_the_configured_size():
    world = SimWorld(YAM, ["top", "left_wrist", "right_wrist"], width=320, height=240)
    image = world.render("top", Q0)
    assert image.shape == (240, 320, 3) and image.dtype == np.uint8
    assert np.array_equal(image, world.render("top", Q0))


def test_moving_a_gripper_changes_only_pixels_around_that_gripper():
    world = SimWorld(YAM, ["top"], width=320, height=240)
    moved = Q0.copy()
    moved[13] = 1.0  # right gripper opens
    diff = np.any(world.render("top", Q0) != world.render("top", moved), axis=2)
    rows, cols = np.nonzero(diff)
    assert rows.size > 0
    tool = world._to_pixels(forward_kinematics(world.layouts[1], Q0)[-1], 0.95, np.zeros(2))
    distance = np.hypot(cols - tool[0], rows - tool[1])
    assert distance.max() < 40, "pixels far from the right gripper changed"


def test_wrist_camera_view_follows_its_own_arm():
    world = SimWorld(YAM, ["left_wrist", "right_wrist"], width=160, height=120)
    moved = Q0.copy()
    moved[0] += 0.3  # left arm base joint
    changed = {
        cam: np.mean(np.any(world.render(cam, Q0) != world.render(cam, moved), axis=2))
        for cam in ("left_wrist", "right_wrist")
    }
    # The left wrist camera moves with its arm (its whole view shifts); the right one only
    # sees the left arm pass through part of its view.
    assert changed["left_wrist"] > 0.1
    assert changed["right_wrist"] < changed["left_wrist"] / 2


def test_gripper_opening_is_visible():
    world = SimWorld(YAM, ["top"], width=320, height=240)
    closed, opened = Q0.copy(), Q0.copy()
    closed[6], opened[6] = 0.0, 1.0
    assert not np.array_equal(world.render("top", closed), world.render("top", opened))


def test_wrong_state_size_is_refused():
    world = SimWorld(YAM, ["top"], width=64, height=64)
    with pytest.raises(ValueError, match="expected 14 joint positions"):
        world.render("top", np.zeros(6))
