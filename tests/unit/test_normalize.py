"""norm_stats.json: the released layout and semantics, our own layout, bad files are named.

The expected numbers below are worked out by hand from the released semantics (see the
module docstring of ``molmoact2_policy.model.normalize``), not produced by running our code.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from molmoact2_policy.model.normalize import (
    BOUNDED_MODES,
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


# ------------------------------------------------------------------ the released layout
def _released_payload(mode: str | None = "min_max") -> dict:
    """A norm_stats.json as the released exporter writes it (one tag, every statistic).

    State dims: 0 ordinary, 1 narrow (clips), 2 constant (min == max, std == 0), 3 masked off.
    Action dims: 0 ordinary, 1 ordinary, 2 masked off, 3 constant.
    """
    payload = {
        "format": "molmoact2_norm_stats.v1",
        "norm_mode": mode,
        "metadata_by_tag": {
            "toy": {
                "setup_type": "bench",
                "control_mode": "joint",
                "action_horizon": 3,
                "n_action_steps": 2,
                "state_stats": {
                    "min": [-1.0, 0.0, 5.0, 0.0],
                    "max": [1.0, 2.0, 5.0, 1.0],
                    "q01": [-0.5, 0.5, 5.0, 0.0],
                    "q99": [0.5, 1.5, 5.0, 1.0],
                    "q10": [-0.25, 0.75, 4.0, 0.0],
                    "q90": [0.25, 1.25, 6.0, 1.0],
                    "mean": [0.0, 1.0, 5.0, 0.5],
                    "std": [0.5, 0.25, 0.0, 0.5],
                    "mask": [True, True, True, False],
                    "names": ["j0", "j1", "j2", "gripper"],
                },
                "action_stats": {
                    "min": [-2.0, 10.0, 3.0, 7.0],
                    "max": [2.0, 20.0, 3.0, 7.0],
                    "q01": [-1.0, 12.0, 3.0, 7.0],
                    "q99": [1.0, 18.0, 3.0, 7.0],
                    "q10": [-0.5, 14.0, 3.0, 7.0],
                    "q90": [0.5, 16.0, 3.0, 7.0],
                    "mean": [0.0, 15.0, 3.0, 7.0],
                    "std": [1.0, 2.0, 0.0, 0.0],
                    "mask": [True, True, False, True],
                },
            }
        },
    }
    if mode is None:
        del payload["norm_mode"]
    return payload


def _write(tmp_path, payload) -> NormStats:
    path = tmp_path / "norm_stats.json"
    path.write_text(json.dumps(payload))
    return NormStats.from_file(path)


STATE = np.array([0.125, 2.5, 5.0000001, 0.7])
ACTION_NORMALIZED = np.array([0.5, 1.5, -1.25, 0.3])
# mode -> (normalised STATE, un-normalised ACTION_NORMALIZED)
RELEASED_EXPECTED = {
    # dim 1 clips to 1; constant dim 2 -> 0; masked dim 3 passes through raw. On the way back
    # 1.5 clips to 1 first, the masked dim passes the *clipped* value, the constant dim is min.
    "min_max": ([0.125, 1.0, 0.0, 0.7], [1.0, 20.0, -1.0, 7.0]),
    "q01_q99": ([0.25, 1.0, 0.0, 0.7], [0.5, 18.0, -1.0, 7.0]),
    # q10 != q90 on state dim 2, but min == max still zeroes it.
    "q10_q90": ([0.5, 1.0, 0.0, 0.7], [0.25, 16.0, -1.0, 7.0]),
    # No clipping either way; std 0 divides by 1e-6 (1e-7 / 1e-6 = 0.1) and multiplies by 0.
    "mean_std": ([0.25, 6.0, 0.1, 0.7], [0.5, 18.0, -1.25, 7.0]),
    "none": (STATE.tolist(), ACTION_NORMALIZED.tolist()),
}


@pytest.mark.parametrize("mode", sorted(NORM_MODES))
def test_released_file_normalises_as_the_released_code(tmp_path, mode):
    stats = _write(tmp_path, _released_payload(mode))
    assert stats.norm_mode == mode
    want_state, want_action = RELEASED_EXPECTED[mode]
    np.testing.assert_allclose(stats.normalize_state("toy", STATE), want_state, atol=1e-9)
    np.testing.assert_allclose(
        stats.unnormalize_action("toy", ACTION_NORMALIZED), want_action, atol=1e-9
    )
    batch = np.stack([ACTION_NORMALIZED] * 3)  # (horizon, dim) chunks work along the last axis
    np.testing.assert_allclose(stats.unnormalize_action("toy", batch), [want_action] * 3)


def test_released_file_without_norm_mode_is_min_max(tmp_path):
    stats = _write(tmp_path, _released_payload(None))
    assert stats.norm_mode == "min_max"
    np.testing.assert_allclose(stats.normalize_state("toy", STATE), RELEASED_EXPECTED["min_max"][0])


def test_released_metadata_is_kept_exposed_and_saved_back(tmp_path):
    stats = _write(tmp_path, _released_payload("q10_q90"))
    assert stats.metadata("toy") == {
        "setup_type": "bench",
        "control_mode": "joint",
        "action_horizon": 3,
        "n_action_steps": 2,
    }
    assert stats.action_horizon("toy") == 3 and stats.n_action_steps("toy") == 2
    state = stats.group("toy", "state")
    assert state.dim == 4 and state.mask.tolist() == [True, True, True, False]
    assert state.extras == {"names": ["j0", "j1", "j2", "gripper"]}

    stats.save(tmp_path / "again.json")
    saved = json.loads((tmp_path / "again.json").read_text())
    assert saved == _released_payload("q10_q90")  # released keys, mask and names survive
    again = NormStats.from_file(tmp_path / "again.json")
    np.testing.assert_array_equal(
        again.normalize_state("toy", STATE), stats.normalize_state("toy", STATE)
    )


def test_metadata_only_tag_loads_but_refuses_to_normalise(tmp_path):
    payload = _released_payload()
    payload["metadata_by_tag"]["cams_only"] = {"setup_type": "bench", "state_stats": None}
    stats = _write(tmp_path, payload)
    assert stats.metadata("cams_only") == {"setup_type": "bench", "state_stats": None}
    assert stats.action_horizon("cams_only") is None
    with pytest.raises(NormStatsError, match="tag 'cams_only' has no 'state' statistics"):
        stats.normalize_state("cams_only", np.zeros(4))
    stats.normalize_state("toy", STATE)  # the other tag is unaffected


@pytest.mark.parametrize("value", [0, -2, 2.5, "3", True])
def test_bad_horizon_metadata_is_named_on_use_not_on_load(tmp_path, value):
    payload = _released_payload()
    payload["metadata_by_tag"]["toy"]["action_horizon"] = value
    stats = _write(tmp_path, payload)
    stats.normalize_state("toy", STATE)
    with pytest.raises(NormStatsError, match=r"toy\.action_horizon must be an integer"):
        stats.action_horizon("toy")


# ------------------------------------------------------------------ semantics, any layout
def _one_dim_group() -> GroupStats:
    return GroupStats(
        {
            "min": np.array([0.0]), "max": np.array([4.0]),
            "q01": np.array([1.0]), "q99": np.array([3.0]),
            "q10": np.array([1.5]), "q90": np.array([2.5]),
            "mean": np.array([2.0]), "std": np.array([0.5]),
        }
    )


def test_bounded_modes_map_their_bounds_to_minus_one_and_one():
    group = _one_dim_group()
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
        normalize(np.array([[2.0], [3.0]]), group, "mean_std").ravel(), [0.0, 2.0]
    )


@pytest.mark.parametrize("mode", sorted(BOUNDED_MODES))
def test_bounded_modes_clip_both_ways(mode):
    group = _one_dim_group()
    outside = np.array([[-10.0], [10.0]])
    np.testing.assert_array_equal(normalize(outside, group, mode).ravel(), [-1.0, 1.0])
    lo, hi = (group.stats[key][0] for key in NORM_MODES[mode])
    back = unnormalize(np.array([[-3.0], [3.0]]), group, mode)
    np.testing.assert_allclose(back.ravel(), [lo, hi])


def test_mean_std_does_not_clip():
    group = _one_dim_group()
    np.testing.assert_allclose(normalize(np.array([[10.0]]), group, "mean_std"), [[16.0]])
    np.testing.assert_allclose(unnormalize(np.array([[16.0]]), group, "mean_std"), [[10.0]])


@pytest.mark.parametrize("mode", sorted(BOUNDED_MODES))
def test_min_equal_max_normalises_to_zero_even_when_passed_through(mode):
    low, high = np.array([2.0, 2.0, 0.0]), np.array([2.0, 2.0, 1.0])
    stats = {"min": low, "max": high, "q01": low, "q99": high, "q10": low, "q90": high}
    group = GroupStats(stats, mask=np.array([True, False, False]))
    # Dim 1 is masked off, but min == max zeroes it all the same (as the released code zeroes
    # a mask-off dim); dim 2 is an ordinary pass-through.
    out = normalize(np.array([[2.0, 9.0, 0.5], [7.0, -3.0, 0.25]]), group, mode)
    np.testing.assert_array_equal(out, [[0.0, 0.0, 0.5], [0.0, 0.0, 0.25]])
    # Un-normalising a constant dim gives the constant back.
    np.testing.assert_array_equal(
        unnormalize(np.array([[0.7, 0.0, 0.5]]), GroupStats(stats, mask=np.array([True, True,
                    False])), mode),
        [[2.0, 2.0, 0.5]],
    )


def test_equal_quantiles_without_min_max_are_not_zeroed():
    """Only min == max triggers the zero rule: a q01 == q99 dim saturates instead."""
    group = GroupStats({"q01": np.array([2.0]), "q99": np.array([2.0])})
    out = normalize(np.array([[1.0], [2.0], [2.5]]), group, "q01_q99")
    np.testing.assert_array_equal(out.ravel(), [-1.0, -1.0, 1.0])
    np.testing.assert_allclose(unnormalize(out, group, "q01_q99").ravel(), [2.0, 2.0, 2.0])


def test_without_a_mask_every_dim_is_normalised():
    group = synthetic_group_stats(3, seed=5)
    masked = GroupStats(group.stats, mask=np.array([True, True, True]))
    values = np.array([[0.1, 0.9, -0.2]])
    for mode in NORM_MODES:
        np.testing.assert_array_equal(
            normalize(values, masked, mode), normalize(values, group, mode)
        )
        np.testing.assert_array_equal(
            unnormalize(values, masked, mode), unnormalize(values, group, mode)
        )


@pytest.mark.parametrize("mode", sorted(NORM_MODES))
def test_round_trip_all_modes_with_a_masked_gripper(mode):
    group = synthetic_group_stats(4, seed=3)
    group = GroupStats(group.stats, mask=np.array([True, True, True, False]))
    rng = np.random.default_rng(0)
    if mode in BOUNDED_MODES:  # round trips only inside the clip range
        lo, hi = (group.stats[key] for key in NORM_MODES[mode])
        values = lo + (hi - lo) * rng.uniform(0.0, 1.0, size=(30, 4))
    else:
        values = rng.normal(size=(30, 4))
    values[:, 3] = rng.uniform(0.0, 1.0, 30)  # a gripper in [0, 1]
    normalized = normalize(values, group, mode)
    np.testing.assert_array_equal(normalized[:, 3], values[:, 3])  # gripper untouched
    if mode != "none":
        assert not np.allclose(normalized[:, :3], values[:, :3])
    back = unnormalize(normalized, group, mode)
    np.testing.assert_allclose(back, values, atol=1e-12)


# ------------------------------------------------------------------ our layout
def test_file_round_trip_and_policy_helpers(tmp_path):
    stats = _stats()
    stats.save(tmp_path / "norm_stats.json")
    data = json.loads((tmp_path / "norm_stats.json").read_text())
    assert data["format"] == "molmoact2_norm_stats.v1"
    assert data["norm_mode"] == "q01_q99"
    assert set(data["metadata_by_tag"]["arm"]) == {"state", "action"}
    loaded = NormStats.from_file(tmp_path / "norm_stats.json")
    group = stats.group("arm", "action")
    action = (0.3 * group.stats["q01"] + 0.7 * group.stats["q99"])[None]  # inside the clip range
    normalized = loaded.normalize_action("arm", action)
    np.testing.assert_allclose(loaded.unnormalize_action("arm", normalized), action)
    np.testing.assert_array_equal(
        loaded.normalize_state("arm", action[0]), stats.normalize_state("arm", action[0])
    )
    assert loaded.to_dict() == data


def test_our_hand_written_layout_still_loads(tmp_path):
    """The layout we have always written: "state"/"action", explicit norm_mode, no mask."""
    stats = _write(
        tmp_path,
        {
            "format": "molmoact2_norm_stats.v1",
            "norm_mode": "q01_q99",
            "metadata_by_tag": {
                "arm": {
                    "count": 12,
                    "state": {"q01": [0.0, -1.0], "q99": [2.0, 1.0], "count": 12},
                    "actions": {"q01": [0.0, 0.0], "q99": [4.0, 1.0]},
                }
            },
        },
    )
    assert stats.metadata("arm") == {"count": 12}
    np.testing.assert_allclose(stats.normalize_state("arm", np.array([1.5, 0.5])), [0.5, 0.5])
    # No mask in the file: every dim is un-normalised, the gripper too (as released).
    np.testing.assert_allclose(stats.unnormalize_action("arm", np.array([0.5, 0.8])), [3.0, 0.9])
    assert set(stats.to_dict()["metadata_by_tag"]["arm"]) == {"count", "state", "actions"}


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


def _broken(change) -> str:
    payload = copy.deepcopy(_released_payload("min_max"))
    change(payload["metadata_by_tag"]["toy"], payload)
    return json.dumps(payload)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"norm_mode": "q01_q99"}', "metadata_by_tag"),
        ('{"norm_mode": "zscore", "metadata_by_tag": {}}', "unknown norm_mode 'zscore'"),
        ('{"format": "other.v2", "metadata_by_tag": {}}', "unsupported format 'other.v2'"),
        ('{"metadata_by_tag": {"arm": {"state": {"min": [0, "x"]}}}}', "arm.state.min"),
        ('{"metadata_by_tag": {"arm": {"state": {"min": [0, 1], "max": [1]}}}}', "arm.state.max"),
        ('{"metadata_by_tag": {"arm": [1, 2]}}', "tag 'arm' must be an object"),
        (
            _broken(lambda tag, _: tag.update(state_stats=[1, 2])),
            r"toy\.state_stats must be an object",
        ),
        (
            _broken(lambda tag, _: tag["state_stats"].update(mask=[True, False])),
            r"toy\.state_stats\.mask has 2 values, expected 4",
        ),
        (
            _broken(lambda tag, _: tag["action_stats"].update(mask=["yes"] * 4)),
            r"toy\.action_stats\.mask must hold booleans, got 'yes'",
        ),
        (
            _broken(lambda tag, _: tag["action_stats"].update(q01=[0, "1", 2, 3])),
            r"toy\.action_stats\.q01 is not a list of numbers",
        ),
        (
            _broken(lambda tag, _: [tag["state_stats"].pop(key) for key in ("min", "max")]),
            r"toy\.state_stats: mode 'min_max' needs min, max",
        ),
        (
            _broken(lambda tag, _: tag["state_stats"].update(max=[1, 2, float("nan"), 1])),
            r"toy\.state_stats\.max: mode 'min_max' needs finite values",
        ),
        (
            # The probe's swapped bounds: finite, so only this rule catches them.
            _broken(lambda tag, _: tag["action_stats"].update(min=[0, 5, 0, 0], max=[1, 1, 1, 1])),
            r"toy\.action_stats: mode 'min_max' needs min <= max; dims \[1\] break it",
        ),
        (
            _broken(lambda tag, _: tag.update(state={"min": [0.0], "max": [1.0]})),
            "state statistics under both 'state_stats' and 'state'",
        ),
    ],
)
def test_malformed_files_are_named(tmp_path, content, message):
    path = tmp_path / "norm_stats.json"
    path.write_text(content)
    with pytest.raises(NormStatsError, match=message) as info:
        NormStats.from_file(path)
    assert str(path) in str(info.value)


def test_unused_non_finite_statistic_does_not_reject_the_file(tmp_path):
    """Only the statistics the file's mode uses must be finite."""
    payload = _released_payload("q01_q99")
    payload["metadata_by_tag"]["toy"]["state_stats"]["std"] = [0.5, float("nan"), 0.0, 0.5]
    stats = _write(tmp_path, payload)
    np.testing.assert_allclose(stats.normalize_state("toy", STATE), RELEASED_EXPECTED["q01_q99"][0])


def test_an_inverted_range_is_refused_only_where_the_dim_is_normalised():
    inverted = {"q01": np.array([1.0, 0.0]), "q99": np.array([-1.0, 1.0])}
    with pytest.raises(NormStatsError, match=r"needs q01 <= q99; dims \[0\] break it"):
        GroupStats(inverted).require("q01_q99", "arm.state")
    # A dim the mask passes through is never scaled by its statistics.
    GroupStats(inverted, mask=np.array([False, True])).require("q01_q99", "arm.state")
    # A zero range is a constant dimension: real, and floored at 1e-6 as released.
    GroupStats({"q01": np.zeros(2), "q99": np.zeros(2)}).require("q01_q99", "arm.state")
    with pytest.raises(NormStatsError, match=r"needs std >= 0; dims \[1\] break it"):
        GroupStats({"mean": np.zeros(2), "std": np.array([1.0, -1.0])}).require(
            "mean_std", "arm.state"
        )
