"""Norm statistics either work in the released float32 arithmetic or are refused by name.

The released normaliser (huggingface/lerobot@28693f90891eb5fffbc111a172cbc53bc452def9,
src/lerobot/policies/molmoact2/hf_model/modeling_molmoact2.py, ``_to_array`` /
``_FeatureNormalizer``) converts statistics and values to float32, normalises bounded modes as
``clip(2 * (x - lo) / max(hi - lo, 1e-6) - 1, -1, 1)`` and mean_std as
``(x - mean) / max(std, 1e-6)``, un-normalises as ``(clip(x, -1, 1) + 1) * (hi - lo) / 2 + lo``
and ``x * std + mean``; a per-dim mask passes values through, ``min == max`` dims normalise to 0.
``_released`` below is that arithmetic, written from the source, so the property checks the
numbers the released model would see, not only ours.

Property: statistics the loader accepts give finite float32 results (ours cast to float32, and
the released float32 arithmetic) for every finite in-range input; statistics it refuses raise
NormStatsError naming the key, the index and the value.
"""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from molmoact2_policy.model.normalize import (
    BOUNDED_MODES,
    MEAN_STD_REACH,
    NORM_MODES,
    GroupStats,
    NormStats,
    NormStatsError,
    normalize,
    unnormalize,
)

F32_MAX = float(np.finfo(np.float32).max)
MODES = [*sorted(BOUNDED_MODES), "mean_std"]
# What a refusal must name: ``key[index] = value``.
NAMED = re.compile(r"\b(min|max|q01|q99|q10|q90|mean|std)\[\d+\] = \S+")


def _released(x: np.ndarray, group: GroupStats, mode: str, inverse: bool) -> np.ndarray:
    """The released float32 (un)normalisation (see the module docstring)."""
    lo_key, hi_key = NORM_MODES[mode]
    with np.errstate(all="ignore"):
        arr = np.asarray(x, dtype=np.float32)
        lo = group.stats[lo_key].astype(np.float32)
        hi = group.stats[hi_key].astype(np.float32)
        eps = 1e-6
        if not inverse:
            if mode == "mean_std":
                out = (arr - lo) / np.maximum(hi, eps)
            else:
                out = np.clip(2.0 * (arr - lo) / np.maximum(hi - lo, eps) - 1.0, -1.0, 1.0)
            out = np.where(group.normalized_dims(), out, arr)
            constant = group.constant_dims()
            if mode in BOUNDED_MODES and constant is not None:
                out = np.where(constant, 0.0, out)
        else:
            if mode in BOUNDED_MODES:
                arr = np.clip(arr, -1.0, 1.0)
                out = (arr + 1.0) * (hi - lo) / 2.0 + lo
            else:
                out = arr * hi + lo
            out = np.where(group.normalized_dims(), out, arr)
    return np.asarray(out, dtype=np.float32)


# Ordinary magnitudes, and the ones that break float32: finite in float64 but inf in float32,
# near the float32 limit, tiny, zero.
_SPECIAL = st.sampled_from(
    [0.0, -0.0, 1e-300, 1e-8, 1.0, -1.0, 1e30, -1e30, 1.7e38, -1.7e38, 3.4e38, -3.4e38,
     3.5e38, -3.5e38, 1e300, -1e300, float("inf"), float("-inf"), float("nan")]
)  # fmt: skip
_VALUE = st.one_of(st.floats(-1e3, 1e3), st.floats(allow_nan=True, allow_infinity=True), _SPECIAL)


@st.composite
def _groups(draw) -> tuple[str, GroupStats]:
    mode = draw(st.sampled_from(MODES))
    dim = draw(st.integers(1, 4))
    lo_key, hi_key = NORM_MODES[mode]
    lo = np.array(draw(st.lists(_VALUE, min_size=dim, max_size=dim)), dtype=np.float64)
    if draw(st.booleans()):
        # Mostly sensible upper bounds: lo plus a span (zero too: a constant dimension).
        span = np.array(draw(st.lists(_VALUE, min_size=dim, max_size=dim)), dtype=np.float64)
        with np.errstate(all="ignore"):
            hi = lo + np.abs(span)
    else:
        hi = np.array(draw(st.lists(_VALUE, min_size=dim, max_size=dim)), dtype=np.float64)
    if mode == "mean_std" and draw(st.booleans()):
        hi = np.abs(hi)
    stats = {lo_key: lo, hi_key: hi}
    if mode in BOUNDED_MODES and mode != "min_max" and draw(st.booleans()):
        stats["min"], stats["max"] = lo.copy(), hi.copy()
    mask = None
    if draw(st.booleans()):
        mask = np.array(draw(st.lists(st.booleans(), min_size=dim, max_size=dim)), dtype=bool)
    return mode, GroupStats(stats, mask)


def _inputs(mode: str, group: GroupStats, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Finite in-range robot values and normalised values, edges included."""
    lo_key, hi_key = NORM_MODES[mode]
    lo = group.stats[lo_key].astype(np.float32).astype(np.float64)
    hi = group.stats[hi_key].astype(np.float32).astype(np.float64)
    rng = np.random.default_rng(seed)
    t = np.concatenate([[0.0, 1.0, 0.5], rng.uniform(0.0, 1.0, 5)])[:, None]
    if mode in BOUNDED_MODES:
        robot = lo + t * (hi - lo)
        # Bounded modes clip, so any finite float32 is in range for normalising.
        robot = np.vstack([robot, np.full_like(lo, F32_MAX), np.full_like(lo, -F32_MAX)])
        # Un-normalising clips: values past [-1, 1] are in range too.
        normalized = np.broadcast_to(2 * t - 1, (t.shape[0], lo.shape[0]))
        normalized = np.vstack([normalized, np.full_like(lo, 7.0), np.full_like(lo, -7.0)])
    else:
        z = (2 * t - 1) * MEAN_STD_REACH
        # A masked-off dim's std is never read: keep its robot values finite float32.
        robot = np.clip(lo + z * hi, -F32_MAX, F32_MAX)
        normalized = np.broadcast_to(z, (z.shape[0], lo.shape[0]))
    return robot, np.array(normalized)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_groups(), seed=st.integers(0, 2**16))
def test_accepted_stats_give_finite_float32_results_refused_ones_name_key_index_value(case, seed):
    mode, group = case
    try:
        group.require(mode, "arm.state_stats")
    except NormStatsError as error:
        event("refused")
        message = str(error)
        assert "arm.state_stats" in message
        assert NAMED.search(message), message
        return
    event("accepted")
    robot, normalized = _inputs(mode, group, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow warning in our float64 path is a failure
        ours = normalize(robot, group, mode).astype(np.float32)
        back = unnormalize(normalized, group, mode).astype(np.float32)
    assert np.isfinite(ours).all(), (robot, ours)
    assert np.isfinite(back).all(), (normalized, back)
    assert np.isfinite(_released(robot, group, mode, inverse=False)).all()
    assert np.isfinite(_released(normalized, group, mode, inverse=True)).all()


def _file(tmp_path, mode: str, **action: list[float]) -> NormStats:
    base = {"q01": [-1.0, -2.0], "q99": [1.0, 2.0], "min": [-1.5, -3.0], "max": [1.5, 3.0]}
    base.update({"q10": [-0.5, -1.0], "q90": [0.5, 1.0], "mean": [0.0, 0.0], "std": [1.0, 1.0]})
    payload = {
        "format": "molmoact2_norm_stats.v1",
        "norm_mode": mode,
        "metadata_by_tag": {
            "arm": {"state_stats": dict(base), "action_stats": {**base, **action}},
        },
    }
    path = tmp_path / "norm_stats.json"
    path.write_text(json.dumps(payload))
    return NormStats.from_file(path)


@pytest.mark.parametrize(
    ("mode", "action", "message"),
    [
        # Finite in float64, inf in float32: loaded before, and every action of dim 1 was inf.
        ("q01_q99", {"q99": [1.0, 1e300]}, r"q99\[1\] = 1e\+300 is not finite as float32"),
        ("q01_q99", {"q01": [-3.5e38, -2.0]}, r"q01\[0\] = -3\.5e\+38 is not finite"),
        # Each bound fits float32, the range does not.
        (
            "min_max",
            {"min": [-1.5, -3e38], "max": [1.5, 3e38]},
            r"2 \* \(max - min\) to fit float32.*dim 1 overflows \(min\[1\] = -3e\+38, "
            r"max\[1\] = 3e\+38\)",
        ),
        (
            "q01_q99",
            {"q01": [-1.0, 0.0], "q99": [1.0, 2e38]},
            r"dim 1 overflows \(q01\[1\] = 0\.0, q99\[1\] = 2e\+38\)",
        ),
        ("mean_std", {"std": [1.0, 1e36]}, r"\|mean\| \+ 1000 \* std.*std\[1\] = 1e\+36"),
        ("mean_std", {"std": [-1.0, 1.0]}, r"std >= 0; dims \[0\] break it.*std\[0\] = -1\.0"),
        ("q01_q99", {"q01": [2.0, -2.0]}, r"q01 <= q99; dims \[0\] break it.*q01\[0\] = 2\.0"),
    ],
)
def test_the_loader_refuses_stats_the_float32_arithmetic_cannot_serve(
    tmp_path, mode, action, message
):
    with pytest.raises(NormStatsError, match=message) as info:
        _file(tmp_path, mode, **action)
    assert "arm.action_stats" in str(info.value)


@pytest.mark.parametrize("mode", MODES)
def test_constant_and_padded_dims_stay_accepted(tmp_path, mode):
    """A zero range / zero std is a constant joint (or a padded dim); the released code floors
    it at 1e-6, so it must load and give finite numbers."""
    zero = {key: [0.0, 5.0] for key in ("q01", "q99", "q10", "q90", "min", "max")}
    stats = _file(tmp_path, mode, **zero, mean=[0.0, 5.0], std=[0.0, 0.0])
    assert np.isfinite(stats.normalize_action("arm", np.array([0.3, 5.0]))).all()
    assert np.isfinite(stats.unnormalize_action("arm", np.array([0.3, -0.7]))).all()


def test_a_huge_value_in_a_statistic_the_mode_does_not_use_is_ignored(tmp_path):
    """As released: only the mode's statistics are read."""
    stats = _file(tmp_path, "q01_q99", std=[1.0, 1e300])
    assert np.isfinite(stats.unnormalize_action("arm", np.array([1.0, 1.0]))).all()
