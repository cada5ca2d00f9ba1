"""The demo model's target motion and range: smooth, anchored at the start pose, never refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from molmoact2.demo_checkpoint import (
    DEMO_ACTION_SPREAD,
    DEMO_RECIPE,
    RECOVERY_REACH,
    _pose_stats,
    demo_target,
    is_current_demo_checkpoint,
    observation_poses,
)


def test_demo_target_leaves_and_returns_to_the_start_pose_smoothly():
    horizon, amplitude = 30, 0.75
    target = demo_target(
        horizon, 8, (7,), np.array([0.0]), amplitude=amplitude, gripper_amplitude=0.1
    )
    assert target.shape == (30, 8)
    arm = target[:, :7]
    # Row k is at most amplitude * sin(pi k / H)^2 off the start pose (normalised 0): the first
    # rows stay near it, so the chunk is acceptable from wherever near the start the arm is.
    envelope = amplitude * np.sin(np.pi * np.arange(horizon) / horizon) ** 2
    assert np.all(np.abs(arm) <= envelope[:, None] + 1e-12)
    np.testing.assert_array_equal(arm[0], 0.0)
    assert np.abs(arm[-1]).max() < 0.01  # and it leads back there
    assert np.abs(arm).max() > 0.5 * amplitude  # it does move
    # A closed gripper (0.0) moves around 0.2: inside 0..1, first point 0.2 from its opening.
    assert 0.1 - 1e-12 <= target[:, 7].min() and target[:, 7].max() <= 0.3 + 1e-12
    assert target[0, 7] == pytest.approx(0.2)
    # Smooth: one step of 1/30 s moves a normalised joint by well under 0.3.
    assert np.abs(np.diff(target, axis=0)).max() < 0.3
    # By default grippers hold their (kept inside 0.2..0.8) opening.
    held = demo_target(horizon, 8, (7,), np.array([0.9]))
    np.testing.assert_array_equal(held[:, 7], 0.8)


def _yam_stats_and_target():
    from molmoact2 import graph
    from molmoact2_common.embodiments import get_embodiment

    config = graph.load_robot_config("yam")
    spec = get_embodiment(str(config.shared["embodiment"]))
    start = np.asarray(config.params_for(config.driver_name)["initial_positions"], dtype=float)
    grippers = list(spec.gripper_dims)
    stats = _pose_stats(start, DEMO_ACTION_SPREAD, spec.gripper_dims)
    target = demo_target(spec.horizon, spec.action_dim, spec.gripper_dims, start[grippers])
    return config, spec, start, stats, target


def _unnormalize(stats, normalized):
    from molmoact2_policy.model.normalize import NormStats

    norm = NormStats(norm_mode="q01_q99", tags={"t": {"state": stats, "action": stats}})
    return norm.unnormalize_action("t", normalized)


def _driver_check(config, chunk_positions, measured, first_index):
    """The driver's own chunk check (hw_drivers.safety.validate_chunk) with yam's limits."""
    from hw_drivers.chunk import Chunk
    from hw_drivers.safety import JointLimits, SafetyConfig, validate_chunk

    params = config.params_for(config.driver_name)
    names = list(config.shared["joint_names"])
    limits = JointLimits(
        params["position_lower"], params["position_upper"], params["max_velocity"],
        params["max_acceleration"],
    )
    chunk = Chunk(0.0, 0.0, 1 / 30, names, chunk_positions)
    return validate_chunk(chunk, names, limits, measured, SafetyConfig(), first_index=first_index)


def test_demo_chunk_passes_the_start_deviation_check_from_any_pose_within_reach():
    config, spec, start, stats, target = _yam_stats_and_target()
    chunk = _unnormalize(stats, target)
    arm = np.array([d not in spec.gripper_dims for d in range(spec.action_dim)])
    # Each arm joint RECOVERY_REACH off either way (the check is per joint, so the extremes of
    # each joint are the worst cases), whatever the latency (the first executed row).
    for first_index in range(spec.horizon):
        for sign in (1.0, -1.0):
            for joint in np.flatnonzero(arm):
                measured = start.copy()
                measured[joint] += sign * RECOVERY_REACH
                assert _driver_check(config, chunk, measured, first_index) is None
    # Not vacuous: further off and the driver refuses it.
    measured = start.copy()
    measured[np.flatnonzero(arm)] += 0.55
    assert _driver_check(config, chunk, measured, 9).startswith("start_deviation")


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    output=arrays(np.float64, (30, 14), elements=st.floats(-1e6, 1e6)),
    where=arrays(np.float64, (14,), elements=st.floats(-1.0, 1.0)),
    first_index=st.integers(0, 29),
)
def test_no_demo_output_is_ever_refused_for_start_deviation_from_where_it_can_take_the_arm(
    output, where, first_index
):
    """Whatever the expert outputs for the arm joints (noise, garbage), un-normalising clips it
    to within DEMO_ACTION_SPREAD of the start pose; from anywhere within 0.2 rad more (the
    executor's ramp-ins and blends, the arm's lag) the driver never refuses it for start
    deviation.
    Grippers are not normalised, so not clipped: they are held where measured here."""
    config, spec, start, stats, _ = _yam_stats_and_target()
    grippers = list(spec.gripper_dims)
    measured = start + where * (DEMO_ACTION_SPREAD + 0.199)  # 1 mrad from the limit
    measured[grippers] = (where[grippers] + 1) / 2
    output[:, grippers] = measured[grippers]
    chunk = _unnormalize(stats, output)
    arm = np.array([d not in grippers for d in range(spec.action_dim)])
    assert np.all(np.abs(chunk[:, arm] - start[arm]) <= DEMO_ACTION_SPREAD + 1e-9)
    reason = _driver_check(config, chunk, measured, first_index) or ""
    assert not reason.startswith("start_deviation"), reason


def test_training_observations_cover_the_path_and_the_range_around_the_start():
    _, spec, start, stats, target = _yam_stats_and_target()
    path = _unnormalize(stats, target)
    poses = observation_poses(path, start, spec.gripper_dims, np.random.default_rng(0),
                              on_path=10, off_path=20, reach=0.5)
    assert len(poses) == 30
    on, off = np.array(poses[:10]), np.array(poses[10:])
    assert np.abs(on - path[np.linspace(0, 29, 10).round().astype(int)]).max() < 0.1
    arm = [d for d in range(spec.action_dim) if d not in spec.gripper_dims]
    assert np.abs(off[:, arm] - start[arm]).max() <= 0.5
    assert np.abs(off[:, arm] - start[arm]).max() > 0.4  # they do reach far off the path
    grip = off[:, list(spec.gripper_dims)]
    assert grip.min() >= 0.0 and grip.max() <= 1.0


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
