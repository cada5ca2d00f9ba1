"""Action expert: released key names, zero init, cached == uncached, masks, RoPE, depth gate."""

from __future__ import annotations

import math

import pytest
import torch

from molmoact2_policy.model.action_expert import (
    ActionExpert,
    ActionExpertConfig,
    DepthGate,
    SinusoidalTimestepEmbedding,
    apply_rope,
    init_weights_randomly_for_tests,
    rope_tables,
)
from molmoact2_policy.model.flow import euler_timesteps

torch.set_num_threads(1)

KV_DIM = 48
TINY = ActionExpertConfig(
    max_action_horizon=8,
    max_action_dim=32,
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    mlp_ratio=2.0,
    ffn_multiple_of=64,
    timestep_embed_dim=32,
    llm_kv_dim=KV_DIM,
)


def tiny_expert(seed: int = 0, random_weights: bool = True, std: float = 0.2) -> ActionExpert:
    torch.manual_seed(seed)
    expert = ActionExpert(TINY).eval()
    if random_weights:
        init_weights_randomly_for_tests(expert, torch.Generator().manual_seed(seed), std=std)
    return expert


def random_context(
    batch: int = 2, length: int = 11, seed: int = 1, layers: int = 2
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Per-layer K/V (B, S, KV_DIM) and a padding mask hiding the tail of row 1."""
    gen = torch.Generator().manual_seed(seed)
    keys = [torch.randn(batch, length, KV_DIM, generator=gen) for _ in range(layers)]
    values = [torch.randn(batch, length, KV_DIM, generator=gen) for _ in range(layers)]
    mask = torch.ones(batch, length, dtype=torch.bool)
    if batch > 1:
        mask[1, length - 4 :] = False
    return keys, values, mask


def test_released_state_dict_keys_for_two_layers() -> None:
    expected = {
        "time_embed.1.weight", "time_embed.1.bias", "time_embed.3.weight", "time_embed.3.bias",
        "action_embed.weight", "action_embed.bias",
        "context_k_proj.weight", "context_v_proj.weight",
        "final_layer.linear.weight", "final_layer.linear.bias",
        "final_layer.modulation.linear.weight", "final_layer.modulation.linear.bias",
    }
    for n in range(2):
        for name in ("self_attn.qkv", "self_attn.out_proj", "cross_attn.q_proj",
                     "cross_attn.out_proj", "mlp.up_proj", "mlp.gate_proj", "mlp.down_proj",
                     "modulation.linear"):
            expected |= {f"blocks.{n}.{name}.weight", f"blocks.{n}.{name}.bias"}
    state = ActionExpert(TINY).state_dict()
    assert set(state) == expected
    hidden, inner = TINY.hidden_size, TINY.mlp_hidden_size
    assert state["blocks.1.self_attn.qkv.weight"].shape == (3 * hidden, hidden)
    assert state["blocks.0.modulation.linear.weight"].shape == (9 * hidden, hidden)
    assert state["final_layer.modulation.linear.weight"].shape == (2 * hidden, hidden)
    assert state["context_k_proj.weight"].shape == (hidden, KV_DIM)
    assert state["blocks.0.mlp.gate_proj.weight"].shape == (inner, hidden)
    assert state["final_layer.linear.weight"].shape == (TINY.max_action_dim, hidden)


def test_released_checkpoint_loads_by_prefix_stripping() -> None:
    source = tiny_expert(seed=3)
    released = {f"model.action_expert.{k}": v for k, v in source.state_dict().items()}
    prefix = "model.action_expert."
    target = ActionExpert(TINY).eval()
    target.load_state_dict({k[len(prefix):]: v for k, v in released.items()}, strict=True)
    keys, values, mask = random_context()
    x = torch.randn(2, 8, 32)
    t = torch.tensor([0.2, 0.7])
    assert torch.equal(source(x, t, keys, values, mask), target(x, t, keys, values, mask))


def test_config_sizes_and_dict_round_trip() -> None:
    released = ActionExpertConfig()
    assert released.mlp_hidden_size == 2816
    assert released.head_dim == 64
    assert ActionExpertConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ValueError, match="bogus_key"):
        ActionExpertConfig.from_dict({**TINY.to_dict(), "bogus_key": 1})
    with pytest.raises(ValueError, match="divisible"):
        ActionExpertConfig(hidden_size=100, num_heads=16)


def test_output_shape_for_shorter_horizon() -> None:
    expert = tiny_expert()
    keys, values, mask = random_context(batch=3)
    out = expert(torch.randn(3, 5, 32), torch.rand(3), keys, values, mask)
    assert out.shape == (3, 5, 32)
    assert out.abs().max() > 0


def test_zero_initialised_expert_outputs_exactly_zero() -> None:
    expert = ActionExpert(TINY).eval()
    keys, values, mask = random_context()
    out = expert(torch.randn(2, 8, 32), torch.rand(2), keys, values, mask)
    assert torch.equal(out, torch.zeros_like(out))


def test_forward_cached_matches_uncached_forward_at_every_step() -> None:
    expert = tiny_expert()
    keys, values, mask = random_context()
    ctx = expert.prepare_context(keys, values, mask)
    timesteps = euler_timesteps(10)
    tmod = expert.time_modulation(timesteps)
    x = torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        for step in range(10):
            reference = expert(x, timesteps[step].expand(2), keys, values, mask)
            cached = expert.forward_cached(x, step, ctx, tmod)
            assert reference.abs().max() > 1e-3
            assert (reference - cached).abs().max().item() <= 1e-5


def test_masked_context_positions_do_not_change_the_output() -> None:
    expert = tiny_expert()
    keys, values, mask = random_context()
    x = torch.randn(2, 8, 32)
    t = torch.tensor([0.3, 0.6])
    with torch.no_grad():
        before = expert(x, t, keys, values, mask)
        hidden = ~mask[:, :, None]
        changed_k = [k + 50.0 * torch.randn_like(k) * hidden for k in keys]
        changed_v = [v + 50.0 * torch.randn_like(v) * hidden for v in values]
        after = expert(x, t, changed_k, changed_v, mask)
        # Sanity: the same change at an attended position does move the output.
        moved_k = [k.clone() for k in keys]
        moved_k[0][1, 0] += 5.0
        moved = expert(x, t, moved_k, values, mask)
    assert torch.equal(before, after)
    assert (moved[1] - before[1]).abs().max() > 1e-4


def test_bad_inputs_raise_clear_errors() -> None:
    expert = tiny_expert()
    keys, values, mask = random_context()
    with pytest.raises(ValueError, match="max_action_dim"):
        expert(torch.randn(2, 8, 14), torch.rand(2), keys, values, mask)
    with pytest.raises(ValueError, match="layers"):
        expert(torch.randn(2, 8, 32), torch.rand(2), keys[:1], values[:1], mask)
    with pytest.raises(ValueError, match="horizon"):
        expert(torch.randn(2, 9, 32), torch.rand(2), keys, values, mask)
    hidden_row = mask.clone()
    hidden_row[0] = False
    with pytest.raises(ValueError, match="hides every position"):
        expert.prepare_context(keys, values, hidden_row)
    with pytest.raises(ValueError, match="bool"):
        expert.prepare_context(keys, values, mask.float())


def test_rope_scores_depend_only_on_relative_position() -> None:
    cos, sin = rope_tables(8, 16, 10000.0, "cpu", torch.float32)
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(16, generator=gen), torch.randn(16, generator=gen)
    rq = apply_rope(q.expand(8, 16), cos, sin)
    rk = apply_rope(k.expand(8, 16), cos, sin)
    assert torch.allclose(rq.norm(dim=-1), q.norm().expand(8), atol=1e-5)
    assert torch.allclose(rq[0] @ rk[0], q @ k, atol=1e-5)  # position 0 is unrotated
    assert torch.allclose(rq[1] @ rk[3], rq[4] @ rk[6], atol=1e-5)
    assert not torch.allclose(rq[1] @ rk[3], rq[1] @ rk[1], atol=1e-3)


def test_sinusoidal_time_embedding_frequencies() -> None:
    emb = SinusoidalTimestepEmbedding(8)(torch.tensor([0.0, 0.5]))
    freqs = [math.exp(-math.log(10000.0) * i / 3) for i in range(4)]
    expected = [math.sin(0.5 * f) for f in freqs] + [math.cos(0.5 * f) for f in freqs]
    assert torch.allclose(emb[1], torch.tensor(expected), atol=1e-6)
    assert torch.equal(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))


def test_depth_gate_at_init_scales_only_depth_positions_by_sigmoid_bias() -> None:
    gate = DepthGate(num_layers=2, per_layer=True, init_bias=-4.0)
    keys, values, _ = random_context(length=10)
    depth = torch.zeros(2, 10, dtype=torch.bool)
    depth[:, 3:7] = True
    new_k, new_v = gate(keys, values, depth)
    g = torch.sigmoid(torch.tensor(-4.0))
    for old, new in zip(keys + values, new_k + new_v, strict=True):
        assert torch.allclose(new[:, 3:7], old[:, 3:7] * g, atol=1e-7)
        assert torch.equal(new[:, :3], old[:, :3])
        assert torch.equal(new[:, 7:], old[:, 7:])


def test_depth_gate_uses_mean_of_depth_values_per_layer() -> None:
    gate = DepthGate(num_layers=2, per_layer=True, init_bias=-4.0)
    with torch.no_grad():
        gate.weight.copy_(torch.tensor([2.0, -1.0]))
    keys, values, _ = random_context(length=10)
    depth = torch.zeros(2, 10, dtype=torch.bool)
    depth[0, 2:5] = True
    depth[1, 6:9] = True
    _, new_v = gate(keys, values, depth)
    for layer, w in enumerate((2.0, -1.0)):
        for row, span in enumerate((slice(2, 5), slice(6, 9))):
            pooled = values[layer][row, span].mean()
            expected = torch.sigmoid(w * pooled - 4.0)
            assert torch.allclose(new_v[layer][row, span], values[layer][row, span] * expected)
    shared = DepthGate(num_layers=2, per_layer=False)
    assert shared.weight.shape == (1,)
    with pytest.raises(ValueError, match="depth_token_mask"):
        gate(keys, values, depth[:, :5])
