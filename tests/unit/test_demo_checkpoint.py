"""The demo model's target motion: smooth, inside the normalised range, grippers near start."""

from __future__ import annotations

import numpy as np

from molmoact2.demo_checkpoint import demo_target, is_current_demo_checkpoint


def test_demo_target_is_smooth_and_starts_grippers_where_they_are():
    target = demo_target(30, 8, (7,), np.array([0.0]))
    assert target.shape == (30, 8)
    assert np.abs(target[:, :7]).max() <= 0.6 + 1e-12
    # A closed gripper (0.0) is centred at 0.2: the loop stays inside 0..1 and starts within
    # the drivers' start-deviation limit (0.5) of the measured opening.
    assert 0.0 <= target[:, 7].min() and target[:, 7].max() <= 0.4 + 1e-12
    assert abs(target[0, 7] - 0.0) < 0.5
    # Smooth: one step of 1/30 s moves a normalised joint by at most 0.6 * 2 * pi / 30.
    assert np.abs(np.diff(target, axis=0)).max() <= 0.6 * 2 * np.pi / 30 + 1e-9


def test_stale_or_missing_demo_checkpoints_are_rebuilt(tmp_path):
    assert not is_current_demo_checkpoint(tmp_path)
    (tmp_path / "DEMO_CHECKPOINT.txt").write_text("... recipe 1, seed 0 ...")
    assert not is_current_demo_checkpoint(tmp_path)
