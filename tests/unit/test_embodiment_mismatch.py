"""A checkpoint that does not serve the configured embodiment: a named error (a ValueError, as
before) saying what the embodiment asks for, what the checkpoint has, and which parameter to
change; the node's factory passes it on as its load error."""

from __future__ import annotations

import pytest

from molmoact2_common.embodiments import get_embodiment
from molmoact2_policy.model.checkpoint import tiny_norm_stats, write_tiny_checkpoint
from molmoact2_policy.model.compat import (
    EmbodimentMismatchError,
    NormStatsMismatchError,
    check_embodiment,
)
from molmoact2_policy.model.normalize import NormStats, NormStatsError, synthetic_group_stats
from molmoact2_policy.policy_factory import PolicyLoadError, make_policy
from molmoact2_policy.policy_node_params import PolicyNodeParams

LIMITS = {"max_action_dim": 32, "max_action_horizon": 50, "n_obs_steps": 1}


def _check(name: str, stats: NormStats, **limits: int) -> tuple[int, int]:
    return check_embodiment(get_embodiment(name), stats, checkpoint="ckpt", **{**LIMITS, **limits})


def test_a_matching_checkpoint_passes_and_gives_the_chunk_window():
    stats = tiny_norm_stats(0, ["droid"])
    assert _check("droid", stats) == (0, get_embodiment("droid").horizon)


def test_a_missing_tag_says_both_sides_and_the_parameter_to_change():
    stats = tiny_norm_stats(0, ["droid"])
    with pytest.raises(EmbodimentMismatchError) as info:
        _check("yam_bimanual", stats)
    message = str(info.value)
    assert isinstance(info.value, ValueError)  # callers catching ValueError still do
    assert "embodiment 'yam_bimanual' (parameter 'embodiment') needs norm-stats tag" in message
    assert "checkpoint 'ckpt' has tags droid" in message
    assert "Set 'embodiment' to one it serves (droid)" in message
    assert "point 'checkpoint' at a checkpoint trained for 'yam_bimanual'" in message


def test_wrong_dims_are_both_a_norm_stats_error_and_a_mismatch():
    spec = get_embodiment("droid")
    stats = NormStats(
        norm_mode="q01_q99",
        tags={
            spec.norm_tag: {
                "state": synthetic_group_stats(spec.state_dim + 1, 1),
                "action": synthetic_group_stats(spec.action_dim, 2),
            }
        },
    )
    with pytest.raises(NormStatsMismatchError) as info:
        _check("droid", stats)
    assert isinstance(info.value, NormStatsError) and isinstance(
        info.value, EmbodimentMismatchError
    )
    message = str(info.value)
    assert f"needs state/action dims {spec.state_dim}/{spec.action_dim}" in message
    assert f"has {spec.state_dim + 1}/{spec.action_dim} under norm-stats tag 'droid'" in message
    assert "No known embodiment matches this checkpoint" in message


@pytest.mark.parametrize(
    ("limits", "metadata", "asks", "has"),
    [
        ({"max_action_dim": 4}, {}, "8 action dims", "max_action_dim 4"),
        ({"max_action_horizon": 10}, {}, "a 15-step chunk", "expert max_action_horizon 10"),
        ({}, {"action_horizon": 30}, "a 15-step chunk", "action_horizon 30 under"),
        ({}, {"n_action_steps": 16}, "at most 15 steps per chunk", "n_action_steps 16 under"),
    ],
)
def test_every_mismatch_is_named(limits, metadata, asks, has):
    stats = tiny_norm_stats(0, ["droid"])
    stats.extras["droid"].update(metadata)
    with pytest.raises(EmbodimentMismatchError, match=f"needs {asks}; checkpoint 'ckpt' has {has}"):
        _check("droid", stats, **limits)


def test_the_factory_reports_the_mismatch_by_name(tmp_path):
    """What the policy node shows on its status and log when configure fails."""
    checkpoint = write_tiny_checkpoint(tmp_path / "droid_only", embodiments=["droid"])
    joints = ("a", "b", "c", "d", "e", "gripper")
    params = PolicyNodeParams(
        embodiment="so100_101", joint_names=joints, checkpoint=str(checkpoint)
    )
    with pytest.raises(PolicyLoadError) as info:
        make_policy(params, allow_test_override=False)
    message = str(info.value)
    assert isinstance(info.value.__cause__, EmbodimentMismatchError)
    assert "EmbodimentMismatchError: embodiment 'so100_101' (parameter 'embodiment')" in message
    assert "Set 'embodiment' to one it serves (droid)" in message
