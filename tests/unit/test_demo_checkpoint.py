"""The demo model's target motion: smooth, inside the normalised range, grippers near start."""

from __future__ import annotations

import numpy as np

from molmoact2.demo_checkpoint import DEMO_RECIPE, demo_target, is_current_demo_checkpoint


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


def _fake_writer(calls):
    """Stands in for the minute of fine-tuning: writes the marker like the real writer."""
    from molmoact2 import demo_checkpoint

    def write(path, robot, *, log=print, **_kw):
        calls.append(robot)
        path.mkdir(parents=True)
        (path / demo_checkpoint.MARKER_FILE).write_text(
            f"demo for {robot} (recipe {demo_checkpoint.DEMO_RECIPE}, seed 0)\n"
        )
        return path

    return write


def test_demo_checkpoint_is_made_on_first_use_then_reused(tmp_path, monkeypatch):
    from molmoact2 import demo_checkpoint

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls: list[str] = []
    monkeypatch.setattr(demo_checkpoint, "write_demo_checkpoint", _fake_writer(calls))
    stale = tmp_path / "molmoact2" / "demo_checkpoints" / f".yam-recipe{DEMO_RECIPE}.partial-1"
    stale.mkdir(parents=True)  # left by a run that was killed mid-way
    said: list[str] = []
    first = demo_checkpoint.ensure_demo_checkpoint("yam", log=said.append)
    assert first == tmp_path / "molmoact2" / "demo_checkpoints" / f"yam-recipe{DEMO_RECIPE}"
    assert is_current_demo_checkpoint(first) and not stale.exists()
    assert any("on first use" in line for line in said)
    said.clear()
    assert demo_checkpoint.ensure_demo_checkpoint("yam", log=said.append) == first
    assert calls == ["yam"] and any("(cached)" in line for line in said)


def test_launch_resolves_only_the_demo_checkpoint(tmp_path, monkeypatch):
    from molmoact2 import demo_checkpoint, graph

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls: list[str] = []
    monkeypatch.setattr(demo_checkpoint, "write_demo_checkpoint", _fake_writer(calls))

    def policy_checkpoint(options):
        nodes = demo_checkpoint.resolve_checkpoint(
            "so101", graph.build_graph("so101", options), log=lambda _t: None
        )
        policy = next(n for n in nodes if n.name == graph.POLICY_NODE)
        return policy.overrides.get("checkpoint")

    # The config's default is the demo checkpoint: resolved to the cached directory.
    assert policy_checkpoint(graph.LaunchOptions()) == str(
        demo_checkpoint.demo_checkpoint_dir("so101")
    )
    assert policy_checkpoint(graph.LaunchOptions(checkpoint="tiny")) == "tiny"
    assert policy_checkpoint(graph.LaunchOptions(checkpoint="/models/x")) == "/models/x"
    assert calls == ["so101"]


def test_start_pose_checkpoint_maps_the_start_pose_to_the_middle_of_the_model_range(tmp_path):
    from molmoact2 import graph
    from molmoact2.demo_checkpoint import tiny_checkpoint_at_start_pose
    from molmoact2_policy.model.normalize import NormStats

    made = tiny_checkpoint_at_start_pose(tmp_path / "ck", "so101", spread=0.25)
    config = graph.load_robot_config("so101")
    start = np.asarray(config.params_for(config.driver_name)["initial_positions"], dtype=float)
    np.testing.assert_array_equal(made.start, start)
    spec = made.policy.embodiment
    # Saved with the checkpoint (a later load sees it) and the loaded policy uses it.
    saved = NormStats.from_file(made.path / made.policy.config.norm_stats_filename)
    for stats in (saved, made.policy.norm_stats):
        normalized = stats.normalize_action(spec.norm_tag, start[None])[0]
        arm = [d for d in range(spec.action_dim) if d not in spec.gripper_dims]
        np.testing.assert_allclose(normalized[arm], 0.0, atol=1e-5)
        # Grippers stay in robot units (the released stats mask).
        np.testing.assert_allclose(normalized[list(spec.gripper_dims)],
                                   start[list(spec.gripper_dims)])
        edge = stats.normalize_action(spec.norm_tag, (start + 0.25)[None])[0]
        np.testing.assert_allclose(edge[arm], 1.0, atol=1e-5)
