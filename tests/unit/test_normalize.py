"""norm_stats.json: all four modes round-trip, gripper dims pass through, bad files are named."""

from __future__ import annotations

import json

import numpy as np
import pytest

from molmoact2_policy.model.normalize import (
    NORM_MODES,
    GroupStats,
    NormStats,
    NormStatsError,
    normalize,
    synthetic_group_stats,
    unnormalize,
)


def _stats(dim: int = 4) -> NormStats:
    return NormStats(
        norm_mode="q01_q99",
        tags={
            "arm": {"state": synthetic_group_stats(dim, 1), "action": synthetic_group_stats(dim, 2)}
        },
    )


@pytest.mark.parametrize("mode", sorted(NORM_MODES))
def test_round_trip_all_modes_with_gripper_passthrough(mode):
    group = synthetic_group_stats(4, seed=3)
    values = np.random.default_rng(0).normal(size=(30, 4))
    normalized = normalize(values, group, mode, passthrough_dims=(3,))
    np.testing.assert_array_equal(normalized[:, 3], values[:, 3])  # gripper untouched
    assert not np.allclose(normalized[:, :3], values[:, :3])
    back = unnormalize(normalized, group, mode, passthrough_dims=(3,))
    np.testing.assert_allclose(back, values, atol=1e-12)


def test_bounded_modes_map_their_bounds_to_minus_one_and_one():
    group = GroupStats(
        {
            "min": np.array([0.0]), "max": np.array([4.0]),
            "q01": np.array([1.0]), "q99": np.array([3.0]),
            "q10": np.array([1.5]), "q90": np.array([2.5]),
            "mean": np.array([2.0]), "std": np.array([0.5]),
        }
    )
    assert normalize(np.array([0.0, 4.0]).reshape(2, 1), group, "min_max").ravel().tolist() == [
        -1.0, 1.0
    ]
    np.testing.assert_allclose(
        normalize(np.array([[1.0], [3.0]]), group, "q01_q99").ravel(), [-1.0, 1.0]
    )
    np.testing.assert_allclose(
        normalize(np.array([[1.5], [2.5]]), group, "q10_q90").ravel(), [-1.0, 1.0]
    )
    np.testing.assert_allclose(
        normalize(np.array([[2.0], [3.0]]), group, "mean_std").ravel(), [0.0, 2.0], atol=1e-6
    )


def test_constant_dimension_stays_finite_and_invertible():
    group = GroupStats({"q01": np.array([2.0]), "q99": np.array([2.0])})
    normalized = normalize(np.array([[2.0]]), group, "q01_q99")
    assert np.isfinite(normalized).all()
    np.testing.assert_allclose(unnormalize(normalized, group, "q01_q99"), [[2.0]])


def test_file_round_trip_and_policy_helpers(tmp_path):
    stats = _stats()
    stats.save(tmp_path / "norm_stats.json")
    data = json.loads((tmp_path / "norm_stats.json").read_text())
    assert data["format"] == "molmoact2_norm_stats.v1"
    assert data["norm_mode"] == "q01_q99"
    assert set(data["metadata_by_tag"]["arm"]) == {"state", "action"}
    loaded = NormStats.from_file(tmp_path / "norm_stats.json")
    action = np.array([[0.1, -0.2, 0.3, 1.0]])
    normalized = loaded.normalize_action("arm", action, passthrough_dims=(3,))
    np.testing.assert_allclose(loaded.unnormalize_action("arm", normalized, (3,)), action)
    np.testing.assert_array_equal(
        loaded.normalize_state("arm", action[0], (3,)),
        stats.normalize_state("arm", action[0], (3,)),
    )


def test_missing_tag_and_missing_statistic_are_named():
    stats = _stats()
    with pytest.raises(NormStatsError, match="no tag 'droid'; known: arm"):
        stats.normalize_state("droid", np.zeros(4))
    min_max_only = GroupStats({"min": np.zeros(2), "max": np.ones(2)})
    partial = NormStats(norm_mode="mean_std", tags={"arm": {"state": min_max_only}})
    with pytest.raises(NormStatsError, match="needs mean, std"):
        partial.normalize_state("arm", np.zeros(2))
    with pytest.raises(NormStatsError, match="values have 3 dims, stats have 4"):
        stats.normalize_state("arm", np.zeros(3))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"norm_mode": "q01_q99"}', "metadata_by_tag"),
        ('{"norm_mode": "zscore", "metadata_by_tag": {}}', "unknown norm_mode 'zscore'"),
        ('{"metadata_by_tag": {"arm": {"state": {"min": [0, "x"]}}}}', "arm.state.min"),
        ('{"metadata_by_tag": {"arm": {"state": {"min": [0, 1], "max": [1]}}}}', "arm.state.max"),
        ('{"metadata_by_tag": {"arm": {"counts": 3}}}', "neither state nor action"),
    ],
)
def test_malformed_files_are_named(tmp_path, content, message):
    path = tmp_path / "norm_stats.json"
    path.write_text(content)
    with pytest.raises(NormStatsError, match=message) as info:
        NormStats.from_file(path)
    assert str(path) in str(info.value)
