"""CUDA-graph bookkeeping on CPU: context buckets, the bounded LRU, padded static inputs."""

from __future__ import annotations

import random

import pytest
import torch

from molmoact2_policy.model.flow import GraphFlowRunner, _cached_euler_loop
from molmoact2_policy.model.graph_cache import LRUCache, StaticLoopInputs, bucket_length
from tests.unit.test_action_expert import random_context, tiny_expert
from tests.unit.test_flow import dim_mask, seeded_noise

torch.set_num_threads(1)


def test_bucket_is_the_smallest_multiple_not_below_the_length():
    for granularity in (0, 1, 2, 7, 64, 300):
        for length in range(1, 1500):
            bucket = bucket_length(length, granularity)
            assert bucket >= length
            if granularity > 1:
                assert bucket % granularity == 0
                assert bucket - length < granularity
            else:
                assert bucket == length


def test_bucket_examples_and_errors():
    assert [bucket_length(n, 64) for n in (1, 64, 65, 700)] == [64, 64, 128, 704]
    with pytest.raises(ValueError):
        bucket_length(0)


def test_lru_keeps_the_most_recently_used_and_reports_evictions():
    cache: LRUCache[str] = LRUCache(2)
    assert cache.put("a", "A") == []
    assert cache.put("b", "B") == []
    assert cache.get("a") == "A"  # a is now the most recent
    assert cache.put("c", "C") == [("b", "B")]
    assert cache.keys() == ["a", "c"]
    assert cache.get("b") is None
    assert cache.put("a", "A2") == []  # replacing does not evict
    assert cache.keys() == ["c", "a"] and len(cache) == 2
    with pytest.raises(ValueError):
        LRUCache(0)


@pytest.mark.parametrize("seed", range(20))
def test_lru_matches_a_reference_model(seed):
    rng = random.Random(seed)
    capacity = rng.randint(1, 4)
    keys = [rng.randint(0, 6) for _ in range(rng.randint(0, 40))]
    cache: LRUCache[int] = LRUCache(capacity)
    order: list[int] = []  # least recent first
    for key in keys:
        if cache.get(key) is None:
            cache.put(key, key)
        if key in order:
            order.remove(key)
        order.append(key)
        order = order[-capacity:]
        assert cache.keys() == order


def test_graph_key_buckets_the_context_length():
    expert = tiny_expert()
    runner = GraphFlowRunner(expert, num_steps=4, granularity=16)
    noise = seeded_noise(1)
    keys = []
    for length in (5, 16, 17, 31):
        k, v, m = random_context(length=length)
        keys.append(runner.graph_key(expert.prepare_context(k, v, m), noise)[:4])
    assert keys == [(2, 8, 32, 16), (2, 8, 32, 16), (2, 8, 32, 32), (2, 8, 32, 32)]


@pytest.mark.parametrize("length", [5, 11, 16])
def test_padded_static_inputs_give_the_unpadded_chunk(length):
    expert = tiny_expert()
    runner = GraphFlowRunner(expert, num_steps=6, use_cuda_graph=False)
    tmod = runner.sampler.time_modulation
    keys, values, mask = random_context(length=length, seed=length)
    mask[1, length - 2 :] = False  # a row with its own padding too
    ctx = expert.prepare_context(keys, values, mask)
    noise = seeded_noise(length)
    plain = _cached_euler_loop(expert, ctx, noise.clone(), ~dim_mask(), tmod)
    static = StaticLoopInputs.like(ctx, noise, dim_mask(), bucket_length(length, 16) + 16)
    padded = _cached_euler_loop(expert, static.ctx, static.noise.clone(), static.padded_dims, tmod)
    torch.testing.assert_close(padded, plain, rtol=0, atol=1e-5)
    # A second, shorter observation copied into the same buffers clears the old tail.
    keys2, values2, mask2 = random_context(length=3, seed=99)
    ctx2 = expert.prepare_context(keys2, values2, mask2)
    static.copy_in(ctx2, noise, dim_mask())
    again = _cached_euler_loop(expert, static.ctx, static.noise.clone(), static.padded_dims, tmod)
    want = _cached_euler_loop(expert, ctx2, noise.clone(), ~dim_mask(), tmod)
    torch.testing.assert_close(again, want, rtol=0, atol=1e-5)


def test_bf16_policy_integrates_in_float32():
    from molmoact2_policy.model.loader import load_policy

    policy = load_policy("tiny", "droid", dtype="bfloat16", seed=0)
    noise = policy.make_noise(seed=1)
    assert noise.dtype == torch.float32
    assert policy.model.action_expert.action_embed.weight.dtype == torch.bfloat16


def test_warm_up_runs_the_instruction_and_leaves_the_noise_sequence_at_its_start():
    import numpy as np

    from molmoact2_policy.model.loader import load_policy

    warmed = load_policy("tiny", "droid", seed=3)
    fresh = load_policy("tiny", "droid", seed=3)
    timings = warmed.warm_up("wipe the table")
    assert timings["total"] > 0
    rng = np.random.default_rng(0)
    images = {
        name: rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        for name in warmed.embodiment.camera_names
    }
    state = rng.uniform(-0.5, 0.5, warmed.embodiment.state_dim)
    np.testing.assert_array_equal(
        warmed.act(images, state, "wipe the table").positions,
        fresh.act(images, state, "wipe the table").positions,
    )


def test_num_steps_per_call_runs_that_many_euler_steps():
    import numpy as np

    from molmoact2_policy.model.flow import CachedFlowSampler
    from molmoact2_policy.model.loader import load_policy

    policy = load_policy("tiny", "droid", seed=0)
    rng = np.random.default_rng(0)
    images = {
        name: rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        for name in policy.embodiment.camera_names
    }
    state = rng.uniform(-0.5, 0.5, policy.embodiment.state_dim)
    default = policy.act(images, state, "wipe the table", seed=1).positions
    five = policy.act(images, state, "wipe the table", seed=1, num_steps=5).positions
    assert not np.allclose(default, five)
    # the same as the five-step sampler on the same context and noise
    with torch.inference_mode():
        ctx = policy.expert_context(
            policy.run_prefix(policy.prepare_inputs(images, state, "wipe the table"))
        )
        chunk = CachedFlowSampler(policy.model.action_expert, 5).sample(
            ctx, policy.make_noise(1), policy.action_dim_mask
        )
    np.testing.assert_allclose(five, policy.postprocess(chunk), rtol=0, atol=1e-9)
    assert np.array_equal(
        policy.act(images, state, "wipe the table", seed=1, num_steps=10).positions, default
    )
    for bad in (0, 101, 2.5):
        with pytest.raises(ValueError, match="num_steps"):
            policy.act(images, state, "wipe the table", num_steps=bad)


@pytest.mark.gpu
def test_bf16_cuda_graph_policy_matches_its_eager_run():
    if not torch.cuda.is_available():
        pytest.skip("CUDA not available")
    import numpy as np

    from molmoact2_policy.model.loader import load_policy

    graphed = load_policy(
        "tiny", "droid", device="cuda", dtype="bfloat16", cuda_graph=True, seed=0
    )
    eager = load_policy(
        "tiny", "droid", device="cuda", dtype="bfloat16", cuda_graph=False, seed=0
    )
    graphed.warm_up("wipe the table")
    assert len(graphed.flow_runner.captured_shapes) == 1  # captured during the warm-up
    rng = np.random.default_rng(0)
    images = {
        name: rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        for name in graphed.embodiment.camera_names
    }
    state = rng.uniform(-0.5, 0.5, graphed.embodiment.state_dim)
    for seed in (1, 2):
        first = graphed.act(images, state, "wipe the table", seed=seed).positions
        second = eager.act(images, state, "wipe the table", seed=seed).positions
        np.testing.assert_allclose(first, second, rtol=0, atol=1e-5)
    assert len(graphed.flow_runner.captured_shapes) == 1  # same bucket: replayed
