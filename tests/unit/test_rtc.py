"""Real-time chunking: weights and guidance scale as published, frozen prefix, paths agree."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from molmoact2_policy.model.flow import CachedFlowSampler, GraphFlowRunner
from molmoact2_policy.model.rtc import (
    RtcGuide,
    guidance_scale,
    prefix_weights,
    rtc_sample_reference,
)
from molmoact2_policy.policy_api import PolicyInputError, RtcRequest
from tests.unit.test_action_expert import random_context, tiny_expert
from tests.unit.test_flow import VALID_DIMS, dim_mask, seeded_noise

torch.set_num_threads(1)

STEPS = 6


def paper_weights(delay: int, end: int, total: int) -> np.ndarray:
    """Eq. 5 of Black et al. 2025 written out row by row (end = H - s)."""
    out = np.zeros(total)
    for i in range(total):
        if i < delay:
            out[i] = 1.0
        elif i < end:
            c = (end - i) / (end - delay + 1)
            out[i] = c * (math.exp(c) - 1) / (math.e - 1)
    return out


@pytest.mark.parametrize("delay,end,total", [(0, 8, 8), (3, 8, 8), (2, 6, 10), (4, 4, 8)])
def test_prefix_weights_are_the_papers_exponential_schedule(delay, end, total):
    weights = prefix_weights(delay, end, total).numpy()
    np.testing.assert_allclose(weights, paper_weights(delay, end, total), rtol=1e-6)
    assert np.all(np.diff(weights) <= 0)  # never more weight further into the future
    # LeRobot's EXP schedule builds the same numbers from linspace(1, 0, n + 2)[1:-1].
    span = end - delay
    if span > 0:
        lin = np.linspace(1, 0, span + 2)[1:-1]
        np.testing.assert_allclose(
            weights[delay:end], lin * np.expm1(lin) / (math.e - 1), rtol=1e-6
        )


def test_prefix_weights_clip_delay_and_end_to_the_chunk():
    assert prefix_weights(50, 60, 8).tolist() == [1.0] * 8
    assert prefix_weights(0, 0, 4).tolist() == [0.0] * 4
    assert prefix_weights(5, 2, 8)[:5].tolist() == [1.0] * 5  # end before delay: no soft rows


def test_guidance_scale_is_the_clipped_pigdm_weight():
    assert guidance_scale(0.0, 5.0) == 5.0  # unbounded at pure noise: clipped to beta
    assert guidance_scale(0.5, 5.0) == pytest.approx(2.0)
    for t in (0.1, 0.3, 0.7, 0.9):
        r2 = (1 - t) ** 2 / (t**2 + (1 - t) ** 2)
        assert guidance_scale(t, 100.0) == pytest.approx((1 - t) / (t * r2))
        # LeRobot's form, with its time running from noise (1) to data (0).
        tau = 1 - t
        lerobot = tau / (1 - tau) * (tau**2 + (1 - tau) ** 2) / tau**2
        assert guidance_scale(t, 100.0) == pytest.approx(lerobot)
        assert guidance_scale(t, 0.0) == 0.0
    with pytest.raises(ValueError):
        guidance_scale(0.5, -1.0)


def _setup(seed: int = 0):
    expert = tiny_expert(seed)
    keys, values, mask = random_context()
    noise = seeded_noise(7)
    return expert, keys, values, mask, noise


def _previous(rows: int = 8, seed: int = 3) -> torch.Tensor:
    previous = torch.randn(2, rows, 32, generator=torch.Generator().manual_seed(seed))
    previous[..., VALID_DIMS:] = 0.0
    return previous


def test_guidance_weight_zero_and_no_delay_equals_the_plain_sampler():
    expert, keys, values, mask, noise = _setup()
    ctx = expert.prepare_context(keys, values, mask)
    plain = CachedFlowSampler(expert, STEPS).sample(ctx, noise, dim_mask())
    guide = RtcGuide.build(_previous(), 0, None, 8, max_guidance_weight=0.0)
    runner = GraphFlowRunner(expert, STEPS, use_cuda_graph=True)  # CPU: the eager RTC loop
    guided = runner.sample(ctx, noise, dim_mask(), guide)
    torch.testing.assert_close(guided, plain, rtol=0, atol=1e-6)
    # With beta > 0 the same call really does steer.
    steered = runner.sample(ctx, noise, dim_mask(), RtcGuide.build(_previous(), 0, None, 8))
    assert (steered - plain).abs().max() > 1e-2


@pytest.mark.parametrize("delay", [1, 3, 7])
def test_frozen_prefix_is_the_previous_chunk_exactly(delay):
    expert, keys, values, mask, noise = _setup()
    previous = _previous()
    guide = RtcGuide.build(previous, delay, None, 8)
    ctx = expert.prepare_context(keys, values, mask)
    cached = GraphFlowRunner(expert, STEPS).sample(ctx, noise, dim_mask(), guide)
    reference = rtc_sample_reference(
        expert, keys, values, mask, noise, STEPS, dim_mask(), guide
    )
    for chunk in (cached, reference):
        assert torch.equal(chunk[:, :delay], previous[:, :delay])
        assert torch.equal(chunk[..., VALID_DIMS:], torch.zeros(2, 8, 32 - VALID_DIMS))
        assert (chunk[:, delay:] - previous[:, delay:]).abs().max() > 1e-3  # not a copy


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cached_rtc_loop_agrees_with_the_uncached_reference(dtype):
    # float64: the two loops compute the same thing (they agree to ~1e-15). float32: the same
    # up to rounding, judged against the output's size (outputs reach ~13 here, and how the
    # matmuls are blocked differs by CPU: 1.05e-5 absolute on an AVX2 EPYC, under 1e-5 on the
    # machines before it).
    expert, keys, values, mask, noise = _setup(seed=2)
    expert = expert.to(dtype)
    keys, values = [k.to(dtype) for k in keys], [v.to(dtype) for v in values]
    noise = noise.to(dtype)
    guide = RtcGuide.build(_previous(rows=6).to(dtype), 2, 5, 8)
    reference = rtc_sample_reference(
        expert, keys, values, mask, noise, STEPS, dim_mask(), guide
    )
    cached = GraphFlowRunner(expert, STEPS).sample(
        expert.prepare_context(keys, values, mask), noise, dim_mask(), guide
    )
    assert cached.dtype == dtype
    assert (reference - noise).abs().max() > 0.1
    scale = reference.abs().max().item()
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5 * scale
    assert (reference - cached).abs().max().item() <= tolerance


def test_guidance_pulls_the_soft_rows_towards_the_previous_chunk():
    expert, keys, values, mask, noise = _setup(seed=1)
    ctx = expert.prepare_context(keys, values, mask)
    previous = _previous()
    runner = GraphFlowRunner(expert, STEPS)

    def soft_error(beta: float) -> float:
        guide = RtcGuide.build(previous, 2, 7, 8, max_guidance_weight=beta)
        out = runner.sample(ctx, noise, dim_mask(), guide)
        return float((out[:, 2:5, :VALID_DIMS] - previous[:, 2:5, :VALID_DIMS]).abs().mean())

    assert soft_error(5.0) < 0.7 * soft_error(0.0)


@pytest.mark.parametrize("delay,end", [(0, 0), (0, None), (8, None), (10**9, 10**9), (1, 10**9)])
def test_extreme_delays_and_horizons_stay_finite(delay, end):
    expert, keys, values, mask, noise = _setup()
    previous = _previous(rows=3) * 50.0  # far outside the normalised range, too
    guide = RtcGuide.build(previous, delay, end, 8, max_guidance_weight=1e3)
    out = GraphFlowRunner(expert, STEPS).sample(
        expert.prepare_context(keys, values, mask), noise, dim_mask(), guide
    )
    assert torch.isfinite(out).all()
    frozen = min(delay, 3)
    assert torch.equal(out[:, :frozen], previous[:, :frozen])


def test_guide_inputs_are_checked():
    with pytest.raises(ValueError, match="rows"):
        RtcGuide.build(_previous(rows=9), 1, None, 8)
    with pytest.raises(ValueError, match="delay"):
        RtcGuide.build(_previous(), -1, None, 8)
    bad = _previous()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        RtcGuide.build(bad, 1, None, 8)
    expert, keys, values, mask, noise = _setup()
    guide = RtcGuide.build(_previous()[:1], 1, None, 8)
    with pytest.raises(ValueError, match="target"):
        GraphFlowRunner(expert, STEPS).sample(
            expert.prepare_context(keys, values, mask), noise, dim_mask(), guide
        )


# ---------------------------------------------------------------------------- policies


def _record_expert_inputs(policy, monkeypatch):
    """Capture the gated K/V the expert projects and the (noise, guide, output) of the loop."""
    seen: dict = {}
    expert = policy.model.action_expert
    original_prepare = expert.prepare_context
    original_sample = policy.flow_runner.sample

    def prepare(context_k, context_v, context_mask):
        seen["context"] = (context_k, context_v, context_mask)
        return original_prepare(context_k, context_v, context_mask)

    def sample(ctx, noise, action_dim_mask, guide=None):
        out = original_sample(ctx, noise, action_dim_mask, guide)
        seen["sample"] = (noise, guide, out)
        return out

    monkeypatch.setattr(expert, "prepare_context", prepare)
    monkeypatch.setattr(policy.flow_runner, "sample", sample)
    return seen


def _plain(t: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode(False):
        return t.clone()


def _check_policy_rtc(policy, images, state, monkeypatch):
    spec = policy.embodiment
    plain = policy.act(images, state, "fold the towel", seed=4).positions
    rng = np.random.default_rng(0)
    previous = plain[5:] + rng.normal(0.0, 0.05, plain[5:].shape)  # a chunk being executed
    rtc = RtcRequest(previous=previous, delay_steps=4, execution_horizon=20)
    seen = _record_expert_inputs(policy, monkeypatch)
    result = policy.act(images, state, "fold the towel", seed=4, rtc=rtc)
    assert result.positions.shape == (spec.horizon, spec.action_dim)
    np.testing.assert_array_equal(result.positions[:4], previous[:4])  # exact, robot units
    assert np.all(np.isfinite(result.positions))
    assert np.abs(result.positions[4:] - plain[4:]).max() > 1e-4

    # The cached (and, for Think, depth-gated) path equals the uncached reference loop.
    context_k, context_v, context_mask = seen["context"]
    noise, guide, out = seen["sample"]
    reference = rtc_sample_reference(
        policy.model.action_expert,
        [_plain(k) for k in context_k],
        [_plain(v) for v in context_v],
        _plain(context_mask),
        _plain(noise),
        policy.config.flow_matching_num_steps,
        policy.action_dim_mask,
        guide,
    )
    assert (reference - out).abs().max().item() <= 1e-4
    return result


def test_flow_policy_rtc_freezes_the_executing_rows_and_matches_the_reference(monkeypatch):
    from molmoact2_policy.model.loader import load_policy

    policy = load_policy("tiny", "so100_101", seed=0)
    rng = np.random.default_rng(1)
    spec = policy.embodiment
    images = {n: rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for n in spec.camera_names}
    _check_policy_rtc(policy, images, rng.uniform(-0.5, 0.5, spec.state_dim), monkeypatch)
    with pytest.raises(PolicyInputError, match="rows"):
        policy.act(images, np.zeros(spec.state_dim), "go",
                   rtc=RtcRequest(np.zeros((2, spec.action_dim + 1)), 1))
    with pytest.raises(PolicyInputError, match="delay_steps"):
        policy.act(images, np.zeros(spec.state_dim), "go",
                   rtc=RtcRequest(np.zeros((2, spec.action_dim)), -2))


def test_think_policy_rtc_matches_the_reference(monkeypatch):
    from molmoact2_policy.model.loader import load_policy

    policy = load_policy("tiny", "so100_101", mode="think", seed=0)
    rng = np.random.default_rng(2)
    spec = policy.embodiment
    images = {n: rng.integers(0, 256, (96, 128, 3), dtype=np.uint8) for n in spec.camera_names}
    result = _check_policy_rtc(policy, images, np.zeros(spec.state_dim), monkeypatch)
    assert result.mode == "think" and result.depth_codes is not None


def test_fast_mode_refuses_rtc():
    from molmoact2_policy.model.loader import load_policy

    policy = load_policy("tiny", "so100_101", mode="fast", seed=0)
    spec = policy.embodiment
    images = {n: np.zeros((48, 64, 3), dtype=np.uint8) for n in spec.camera_names}
    with pytest.raises(PolicyInputError, match="flow expert"):
        policy.act(images, np.zeros(spec.state_dim), "go",
                   rtc=RtcRequest(np.zeros((2, spec.action_dim)), 1))


def test_rtc_rows_line_up_with_the_returned_rows_when_they_start_later():
    """n_obs_steps = 3: the returned chunk is model rows 2..9, and ``previous`` row i applies
    when returned row i does, so it guides model row 2 + i (not row i)."""
    import dataclasses

    from molmoact2_common.embodiments import get_embodiment
    from molmoact2_policy.model.checkpoint import build_tiny
    from molmoact2_policy.model.normalize import NormStats
    from molmoact2_policy.model.policy import MolmoAct2Policy

    spec = get_embodiment("droid")
    model, config, stats, tokenizer = build_tiny(seed=0)
    data = stats.to_dict()
    data["metadata_by_tag"][spec.norm_tag]["n_action_steps"] = 8
    policy = MolmoAct2Policy(model, dataclasses.replace(config, n_obs_steps=3),
                             NormStats.from_dict(data), tokenizer, spec)
    rng = np.random.default_rng(3)
    images = {n: rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for n in spec.camera_names}
    state = rng.uniform(-0.5, 0.5, spec.state_dim)
    plain = policy.act(images, state, "wipe", seed=1).positions
    previous = plain[3:] + 0.05  # 5 rows, the chunk being executed, 3 steps on
    rtc = RtcRequest(previous=previous, delay_steps=2)
    guide = policy.rtc_guide(rtc)
    assert guide.frozen[0, :, 0].tolist() == [i in (2, 3) for i in range(spec.horizon)]
    weights = guide.weights[0, :, 0].numpy()
    np.testing.assert_allclose(weights[:2], 0.0)
    np.testing.assert_allclose(weights[2:], prefix_weights(2, 5, spec.horizon - 2).numpy())
    expected = policy.norm_stats.normalize_action(spec.norm_tag, previous)
    np.testing.assert_allclose(guide.target[0, 2:7, : spec.action_dim].numpy(), expected,
                               rtol=0, atol=1e-6)
    result = policy.act(images, state, "wipe", seed=1, rtc=rtc)
    np.testing.assert_array_equal(result.positions[:2], previous[:2])
    assert result.positions.shape == (8, spec.action_dim)
