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
    euler_timesteps,
    init_weights_randomly_for_tests,
    rope_tables,
)

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


def gate_case(
    length: int = 12, seed: int = 4
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Two-layer K/V with gated positions 3..6 in both rows and row 1 padded after position 9.

    Gated and padded positions hold values far from the rest, so a gate that pooled over them
    would come out clearly different.
    """
    keys, values, _ = random_context(length=length, seed=seed)
    gated = torch.zeros(2, length, dtype=torch.bool)
    gated[:, 3:7] = True
    valid = torch.ones(2, length, dtype=torch.bool)
    valid[1, 10:] = False
    gated[1, 11] = True  # marked, but padding: neither gated nor pooled
    for v in values:
        v[gated] += 30.0
        v[~valid] -= 50.0
    return keys, values, gated, valid


def random_gate(per_layer: bool, seed: int = 7) -> DepthGate:
    gate = DepthGate(num_layers=2, kv_dim=KV_DIM, per_layer=per_layer, init_bias=-4.0)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        gate.weight.copy_(torch.randn(gate.weight.shape, generator=gen) * 0.3)
        gate.bias.copy_(torch.randn(gate.bias.shape, generator=gen))
    return gate


def expected_gate(gate: DepthGate, index: int, v: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """sigmoid(w . mean(V over `pool`) + b) per row, written out row by row."""
    return torch.stack([
        torch.sigmoid(gate.weight[index] @ v[row][pool[row]].mean(dim=0) + gate.bias[index])
        for row in range(v.shape[0])
    ])


@pytest.mark.parametrize("per_layer", [False, True])
def test_depth_gate_parameters_match_the_released_linear_heads(per_layer: bool) -> None:
    gate = DepthGate(num_layers=2, kv_dim=KV_DIM, per_layer=per_layer, init_bias=-3.0)
    count = 2 if per_layer else 1
    state = gate.state_dict()
    assert set(state) == {"weight", "bias"}
    assert state["weight"].shape == (count, KV_DIM)  # rows of nn.Linear(kv_dim, 1) weights
    assert state["bias"].shape == (count,)
    assert torch.equal(state["weight"], torch.zeros(count, KV_DIM))
    assert torch.equal(state["bias"], torch.full((count,), -3.0))


@pytest.mark.parametrize("per_layer", [False, True])
def test_untrained_depth_gate_is_exactly_sigmoid_of_init_bias(per_layer: bool) -> None:
    gate = DepthGate(num_layers=2, kv_dim=KV_DIM, per_layer=per_layer, init_bias=-4.0)
    keys, values, gated, valid = gate_case()
    g = torch.sigmoid(torch.tensor(-4.0))
    for layer_gate in gate.gates(values, gated, valid):
        assert torch.equal(layer_gate, g.expand(2))
    new_k, new_v = gate(keys, values, gated, valid)
    for old, new in zip(keys + values, new_k + new_v, strict=True):
        assert torch.equal(new[:, 3:7], old[:, 3:7] * g)


def test_depth_gate_pools_over_valid_non_gated_positions_only() -> None:
    gate = random_gate(per_layer=True)
    _, values, gated, valid = gate_case()
    pool = valid & ~gated
    gates = gate.gates(values, gated, valid)
    for layer, v in enumerate(values):
        expected = expected_gate(gate, layer, v, pool)
        torch.testing.assert_close(gates[layer], expected)
        # The case is built so that pooling over gated or padded positions would show.
        assert (expected_gate(gate, layer, v, valid) - expected).abs().min() > 1e-3
        assert (expected_gate(gate, layer, v, pool | ~valid) - expected).abs()[1] > 1e-3
    # Changing V only where it is gated or padded leaves every gate as it was.
    moved = [v + 7.0 * (gated | ~valid)[:, :, None] for v in values]
    for before, after in zip(gates, gate.gates(moved, gated, valid), strict=True):
        assert torch.equal(before, after)


def test_depth_gate_pools_over_all_valid_positions_when_all_are_gated() -> None:
    gate = random_gate(per_layer=True)
    _, values, _, valid = gate_case()
    everything = valid.clone()
    gates = gate.gates(values, everything, valid)
    for layer, v in enumerate(values):
        torch.testing.assert_close(gates[layer], expected_gate(gate, layer, v, valid))


def test_shared_depth_gate_uses_the_last_layers_values_for_every_layer() -> None:
    gate = random_gate(per_layer=False)
    keys, values, gated, valid = gate_case()
    gates = gate.gates(values, gated, valid)
    expected = expected_gate(gate, 0, values[-1], valid & ~gated)
    assert len(gates) == 2
    for layer_gate in gates:
        torch.testing.assert_close(layer_gate, expected)
    changed_first = [values[0] + 3.0, values[1]]
    assert torch.equal(gate.gates(changed_first, gated, valid)[0], gates[0])
    changed_last = [values[0], values[1] + 3.0]
    assert not torch.equal(gate.gates(changed_last, gated, valid)[0], gates[0])
    new_k, new_v = gate(keys, values, gated, valid)
    for old, new in zip(keys + values, new_k + new_v, strict=True):
        torch.testing.assert_close(new[:, 3:7], old[:, 3:7] * expected[:, None, None])


@pytest.mark.parametrize("per_layer", [False, True])
def test_depth_gate_scales_only_the_gated_positions(per_layer: bool) -> None:
    gate = random_gate(per_layer=per_layer)
    keys, values, gated, valid = gate_case()
    gates = gate.gates(values, gated, valid)
    new_k, new_v = gate(keys, values, gated, valid)
    scaled = gated & valid
    for layer in range(2):
        g = gates[layer]
        assert ((g > 0) & (g < 1)).all() and not torch.allclose(g, g.new_ones(2))
        for old, new in ((keys[layer], new_k[layer]), (values[layer], new_v[layer])):
            assert torch.equal(new[~scaled], old[~scaled])  # padding marked as gated included
            for row in range(2):
                assert torch.equal(new[row][scaled[row]], old[row][scaled[row]] * g[row])


def test_depth_gate_keeps_the_context_dtype() -> None:
    gate = random_gate(per_layer=False)
    keys, values, gated, valid = gate_case()
    new_k, new_v = gate(
        [k.bfloat16() for k in keys], [v.bfloat16() for v in values], gated, valid
    )
    assert all(t.dtype == torch.bfloat16 for t in new_k + new_v)
    reference, _ = gate(keys, values, gated, valid)
    torch.testing.assert_close(new_k[0].float(), reference[0], rtol=2e-2, atol=2e-2)


def test_depth_gate_rejects_mismatched_inputs() -> None:
    gate = DepthGate(num_layers=2, kv_dim=KV_DIM)
    keys, values, gated, valid = gate_case()
    with pytest.raises(ValueError, match="depth_token_mask"):
        gate(keys, values, gated[:, :5], valid)
    with pytest.raises(ValueError, match="context_mask"):
        gate(keys, values, gated, valid.float())
    with pytest.raises(ValueError, match="2 layers"):
        gate(keys[:1], values[:1], gated, valid)
    with pytest.raises(ValueError, match="kv_dim"):
        gate([k[..., :8] for k in keys], [v[..., :8] for v in values], gated, valid)
