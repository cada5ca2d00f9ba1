"""Flow samplers: cached == uncached reference, padded dims, seeds, masks, graph runner."""

from __future__ import annotations

import pytest
import torch

from molmoact2_policy.model.action_expert import (
    ActionExpert,
    euler_timesteps,
    init_weights_randomly_for_tests,
)
from molmoact2_policy.model.flow import (
    CachedFlowSampler,
    GraphFlowRunner,
    euler_sample_reference,
    make_noise,
)
from tests.unit.test_action_expert import TINY, random_context, tiny_expert

torch.set_num_threads(1)

VALID_DIMS = 5


def dim_mask(valid: int = VALID_DIMS, device: str | torch.device = "cpu") -> torch.Tensor:
    mask = torch.zeros(TINY.max_action_dim, dtype=torch.bool, device=device)
    mask[:valid] = True
    return mask


def seeded_noise(seed: int, shape: tuple[int, int, int] = (2, 8, 32)) -> torch.Tensor:
    return make_noise(shape, torch.Generator().manual_seed(seed), "cpu", torch.float32, dim_mask())


def test_euler_timesteps_are_k_over_n() -> None:
    assert euler_timesteps(4).tolist() == [0.0, 0.25, 0.5, 0.75]
    with pytest.raises(ValueError):
        euler_timesteps(0)


def test_cached_sampler_matches_uncached_reference() -> None:
    expert = tiny_expert()
    keys, values, mask = random_context()
    noise = seeded_noise(7)
    reference = euler_sample_reference(expert, keys, values, mask, noise, 10, dim_mask())
    ctx = expert.prepare_context(keys, values, mask)
    cached = CachedFlowSampler(expert, num_steps=10).sample(ctx, noise, dim_mask())
    assert (reference - noise).abs().max() > 0.1  # the flow actually moved the sample
    assert (reference - cached).abs().max().item() <= 1e-5
    assert cached.shape == (2, 8, 32)


def test_padded_dims_stay_exactly_zero_even_with_dirty_noise() -> None:
    expert = tiny_expert()
    keys, values, mask = random_context()
    dirty = torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(2))
    reference = euler_sample_reference(expert, keys, values, mask, dirty, 4, dim_mask())
    cached = CachedFlowSampler(expert, 4).sample(
        expert.prepare_context(keys, values, mask), dirty, dim_mask()
    )
    for chunk in (reference, cached):
        assert torch.equal(chunk[..., VALID_DIMS:], torch.zeros(2, 8, 32 - VALID_DIMS))
        assert chunk[..., :VALID_DIMS].abs().min() > 0
    noise = make_noise((3, 4, 32), None, "cpu", torch.float32, dim_mask())
    assert torch.equal(noise[..., VALID_DIMS:], torch.zeros(3, 4, 32 - VALID_DIMS))


def test_same_seed_same_chunk_different_seed_different_chunk() -> None:
    expert = tiny_expert()
    keys, values, mask = random_context()
    sampler = CachedFlowSampler(expert, 10)
    ctx = expert.prepare_context(keys, values, mask)

    def chunk(seed: int) -> torch.Tensor:
        return sampler.sample(ctx, seeded_noise(seed), dim_mask())

    assert torch.equal(chunk(11), chunk(11))
    assert not torch.allclose(chunk(11), chunk(12))


def test_sampler_ignores_masked_context_positions() -> None:
    expert = tiny_expert()
    keys, values, mask = random_context()
    sampler = CachedFlowSampler(expert, 5)
    noise = seeded_noise(0)
    hidden = ~mask[:, :, None]
    other_k = [k + 9.0 * hidden for k in keys]
    other_v = [v - 9.0 * hidden for v in values]
    first = sampler.sample(expert.prepare_context(keys, values, mask), noise, dim_mask())
    second = sampler.sample(expert.prepare_context(other_k, other_v, mask), noise, dim_mask())
    assert torch.equal(first, second)


def test_zero_initialised_expert_returns_the_noise() -> None:
    expert = ActionExpert(TINY).eval()
    keys, values, mask = random_context()
    noise = seeded_noise(0)
    out = CachedFlowSampler(expert, 10).sample(expert.prepare_context(keys, values, mask), noise,
                                               dim_mask())
    assert torch.equal(out, noise)


def test_refresh_picks_up_new_weights() -> None:
    expert = tiny_expert(seed=0)
    keys, values, mask = random_context()
    noise = seeded_noise(0)
    sampler = CachedFlowSampler(expert, 6)
    sampler.sample(expert.prepare_context(keys, values, mask), noise, dim_mask())
    init_weights_randomly_for_tests(expert, torch.Generator().manual_seed(99), std=0.2)
    ctx = expert.prepare_context(keys, values, mask)
    reference = euler_sample_reference(expert, keys, values, mask, noise, 6, dim_mask())
    stale = sampler.sample(ctx, noise, dim_mask())
    assert (stale - reference).abs().max() > 1e-3  # the old modulation is still cached
    sampler.refresh()
    assert (sampler.sample(ctx, noise, dim_mask()) - reference).abs().max() <= 1e-5


def test_sampler_rejects_mismatched_inputs() -> None:
    expert = tiny_expert()
    keys, values, mask = random_context()
    ctx = expert.prepare_context(keys, values, mask)
    sampler = CachedFlowSampler(expert, 3)
    with pytest.raises(ValueError, match="batch"):
        sampler.sample(ctx, torch.zeros(3, 8, 32), dim_mask())
    with pytest.raises(ValueError, match="action_dim_mask"):
        sampler.sample(ctx, torch.zeros(2, 8, 32), dim_mask().float())
    with pytest.raises(ValueError, match="noise"):
        sampler.sample(ctx, torch.zeros(2, 8, 14), dim_mask())


def test_graph_runner_on_cpu_equals_cached_sampler() -> None:
    expert = tiny_expert()
    keys, values, mask = random_context()
    ctx = expert.prepare_context(keys, values, mask)
    noise = seeded_noise(4)
    runner = GraphFlowRunner(expert, num_steps=10, use_cuda_graph=True)
    out = runner.sample(ctx, noise, dim_mask())
    assert torch.equal(out, CachedFlowSampler(expert, 10).sample(ctx, noise, dim_mask()))
    assert runner.captured_shapes == []


@pytest.mark.gpu
def test_cuda_graph_matches_eager_and_recaptures_on_new_shape() -> None:
    if not torch.cuda.is_available():
        pytest.skip("CUDA not available")
    torch.backends.cuda.matmul.allow_tf32 = False
    device = torch.device("cuda")
    expert = tiny_expert().to(device)
    runner = GraphFlowRunner(expert, num_steps=10, use_cuda_graph=True)
    eager = CachedFlowSampler(expert, 10)
    mask_dims = dim_mask(device=device)
    gen = torch.Generator().manual_seed(0)

    def case(batch: int, horizon: int, length: int) -> None:
        keys, values, mask = random_context(batch=batch, length=length, seed=batch + length)
        ctx = expert.prepare_context([k.to(device) for k in keys], [v.to(device) for v in values],
                                     mask.to(device))
        noise = make_noise((batch, horizon, 32), gen, device, torch.float32, mask_dims)
        graphed = runner.sample(ctx, noise, mask_dims)
        expected = eager.sample(ctx, noise, mask_dims)
        assert (graphed - expected).abs().max().item() <= 1e-5
        assert torch.equal(graphed[..., VALID_DIMS:], torch.zeros_like(graphed[..., VALID_DIMS:]))

    case(2, 8, 11)
    assert runner.captured_shapes == [(2, 8, 32, 64)]  # context 11 -> bucket 64
    case(2, 8, 40)  # another prompt length in the same bucket: replayed, not recaptured
    assert len(runner.captured_shapes) == 1
    case(1, 6, 17)
    assert runner.captured_shapes == [(2, 8, 32, 64), (1, 6, 32, 64)]
    case(2, 8, 11)
    # Every graph holds the time tables it read.
    tables = runner.sampler.time_modulation
    assert all(runner._graphs.get(key).tmod is tables for key in runner._graphs.keys())


@pytest.mark.gpu
def test_cuda_graph_lru_bounds_the_graphs_and_shares_one_pool() -> None:
    if not torch.cuda.is_available():
        pytest.skip("CUDA not available")
    device = torch.device("cuda")
    expert = tiny_expert().to(device)
    runner = GraphFlowRunner(expert, num_steps=4, use_cuda_graph=True, granularity=8, max_graphs=2)
    eager = CachedFlowSampler(expert, 4)
    mask_dims = dim_mask(device=device)
    gen = torch.Generator().manual_seed(0)
    pools = set()
    for length in (5, 12, 20, 6):  # buckets 8, 16, 24, 8
        keys, values, mask = random_context(batch=1, length=length, seed=length)
        ctx = expert.prepare_context([k.to(device) for k in keys], [v.to(device) for v in values],
                                     mask.to(device))
        noise = make_noise((1, 8, 32), gen, device, torch.float32, mask_dims)
        graphed = runner.sample(ctx, noise, mask_dims)
        assert (graphed - eager.sample(ctx, noise, mask_dims)).abs().max().item() <= 1e-5
        pools.add(runner._pool)
    assert [key[3] for key in runner.captured_shapes] == [24, 8]  # 16 evicted, 8 recaptured
    assert len(pools) == 1


def test_bf16_expert_with_fp32_integration() -> None:
    expert = tiny_expert().to(torch.bfloat16)
    keys, values, mask = random_context()
    noise = seeded_noise(3)
    ctx = expert.prepare_context(keys, values, mask)
    assert ctx.keys[0].dtype == torch.bfloat16
    cached = CachedFlowSampler(expert, 5).sample(ctx, noise, dim_mask())
    reference = euler_sample_reference(expert, keys, values, mask, noise, 5, dim_mask())
    assert cached.dtype == torch.float32
    assert torch.equal(cached[..., VALID_DIMS:], torch.zeros(2, 8, 32 - VALID_DIMS))
    assert (cached - reference).abs().max() < 5e-2
    fp32 = CachedFlowSampler(tiny_expert(), 5).sample(
        tiny_expert().prepare_context(keys, values, mask), noise, dim_mask()
    )
    assert (cached - fp32).abs().max() < 0.2
