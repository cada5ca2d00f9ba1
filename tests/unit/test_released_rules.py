"""Golden values for three released rules, worked out by hand from the released code.

Source: ``huggingface/lerobot`` ``src/lerobot/policies/molmoact2/hf_model/modeling_molmoact2.py``:
``_FeatureNormalizer`` (norm stats), ``ActionExpertMLP`` / ``_round_up_multiple`` (expert MLP
width) and ``MolmoAct2VisionBackbone.forward`` (``pooling_attention_mask``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from molmoact2_policy.model.action_expert import ActionExpert, ActionExpertConfig
from molmoact2_policy.model.config import MolmoAct2Config
from molmoact2_policy.model.model import MolmoAct2Model
from molmoact2_policy.model.normalize import NormStats

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- norm stats
def _stats(mask=None):
    group = {
        "q01": [0.0, -1.0, 0.0],
        "q99": [2.0, 1.0, 1.0],
        "min": [-1.0, -2.0, 0.5],
        "max": [3.0, 2.0, 0.5],  # dim 2 constant
    }
    if mask is not None:
        group["mask"] = mask
    return NormStats.from_dict(
        {"norm_mode": "q01_q99",
         "metadata_by_tag": {"t": {"state_stats": group, "action_stats": group}}}
    )


def test_group_without_mask_normalises_every_dim_as_released():
    # released: normed = clip(2 (x - q01) / max(q99 - q01, 1e-6) - 1, -1, 1); no mask -> all
    # dims; min == max dims -> 0.
    stats = _stats()
    np.testing.assert_allclose(stats.normalize_state("t", np.array([1.0, 0.5, 0.7])),
                               [0.0, 0.5, 0.0])
    np.testing.assert_allclose(stats.normalize_state("t", np.array([3.0, -3.0, 5.0])),
                               [1.0, -1.0, 0.0])
    # released unnormalise: clip to [-1, 1], (a + 1) (q99 - q01) / 2 + q01, no constant rule.
    np.testing.assert_allclose(stats.unnormalize_action("t", np.array([0.5, -0.5, 2.0])),
                               [1.5, -0.5, 1.0])


def test_mask_false_dims_pass_through_as_released():
    stats = _stats(mask=[True, False, True])
    np.testing.assert_allclose(stats.normalize_state("t", np.array([1.0, 0.5, 0.7])),
                               [0.0, 0.5, 0.0])
    np.testing.assert_allclose(stats.normalize_state("t", np.array([1.0, 3.0, 0.7])),
                               [0.0, 3.0, 0.0])
    # un-normalising passes the clipped value through on a False dim
    np.testing.assert_allclose(stats.unnormalize_action("t", np.array([0.5, -2.0, 2.0])),
                               [1.5, -1.0, 1.0])


def test_policy_state_tokens_normalise_the_grippers_when_the_stats_have_no_mask():
    from molmoact2_common.embodiments import get_embodiment
    from molmoact2_policy.model.checkpoint import build_tiny
    from molmoact2_policy.model.policy import MolmoAct2Policy

    model, config, stats, tokenizer = build_tiny(0, ["yam_bimanual"])
    spec = get_embodiment("yam_bimanual")
    policy = MolmoAct2Policy(model, config, stats, tokenizer, spec)
    group = stats.group(spec.norm_tag, "state")
    assert group.mask is None
    state = np.linspace(-0.4, 0.4, 14)
    low, high = group.stats["q01"], group.stats["q99"]
    expected = np.clip(2 * (state - low) / np.maximum(high - low, 1e-6) - 1, -1, 1)
    bins = np.rint((expected.astype(np.float32) + 1) / 2 * 255).astype(int)
    np.testing.assert_array_equal(policy.normalized_state_bins(state), bins)


# ----------------------------------------------------------------------------- MLP width
@pytest.mark.parametrize(
    ("hidden", "ratio", "multiple", "width"),
    [
        (1024, 8.0 / 3.0, 256, 2816),  # int(2730.67) = 2730 -> 11 x 256
        (1024, 2.75, 256, 2816),  # 2816 exactly
        (171, 1.5, 256, 256),  # int(256.5) = 256 stays; ceil would give 512
        (64, 2.0, 32, 128),
        (100, 0.255, 0, 25),  # multiple <= 0: int(25.5) unrounded
        (10, 2.51, 4, 28),  # int(25.1) = 25 -> 28
    ],
)
def test_expert_mlp_width_truncates_then_rounds_up(hidden, ratio, multiple, width):
    config = ActionExpertConfig(
        hidden_size=hidden, num_layers=1, num_heads=1, mlp_ratio=ratio,
        ffn_multiple_of=multiple, llm_kv_dim=8, rope=False,
    )
    assert config.mlp_hidden_size == width
    if hidden <= 200:
        expert = ActionExpert(config)
        assert expert.blocks[0].mlp.up_proj.weight.shape == (width, hidden)


# ----------------------------------------------------------------------------- pooling mask
def _released_pooling(adapter, features, idx, masked):
    """MolmoAct2VisionBackbone.forward's pooling, from the released formulas with plain ops."""
    attention = adapter.image_pooling_2d
    heads = adapter.config.num_attention_heads
    head_dim = adapter.config.head_dim
    flat = features.reshape(-1, features.shape[-1])
    valid = idx >= 0
    to_pool = flat[idx.clip(min=0)] * valid[..., None].float()
    if masked:
        count = valid.float().sum(-1)
        count = torch.where(count == 0, torch.ones_like(count), count)
        query = to_pool.sum(-2, keepdim=True) / count[:, None, None]
    else:
        query = to_pool.mean(-2, keepdim=True)
    q = attention.q_proj(query).view(-1, 1, heads, head_dim)
    k = attention.k_proj(to_pool).view(-1, idx.shape[-1], heads, head_dim)
    v = attention.v_proj(to_pool).view(-1, idx.shape[-1], heads, head_dim)
    logits = torch.einsum("bqhd,bkhd->bhqk", q / math.sqrt(head_dim), k)
    if masked:
        logits = logits.masked_fill(~valid[:, None, None, :], float("-inf"))
    weights = F.softmax(logits, dim=-1)
    out = torch.einsum("bhqk,bkhd->bqhd", weights, v).reshape(-1, 1, heads * head_dim)
    out = attention.o_proj(out).squeeze(1)
    projector = adapter.image_projector
    out = projector.down_proj(F.silu(projector.gate_proj(out)) * projector.up_proj(out))
    return out[valid.any(-1)]


@pytest.mark.parametrize("masked", [True, False])
def test_pooling_attention_mask_both_ways(masked):
    config = MolmoAct2Config.tiny(pooling_attention_mask=masked)
    torch.manual_seed(0)
    model = MolmoAct2Model(config)
    adapter = model.vlm.model.multi_modal_projector
    width = config.vlm.vision_config.hidden_size * 2
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # weights large enough that the two rules visibly differ
        for parameter in adapter.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=gen) * 0.3)
    features = torch.randn(1, 9, width, generator=gen)
    # 3 x 3 patches pooled 2 x 2: the right and bottom cells reach past the grid (-1 slots).
    idx = torch.tensor([[0, 1, 3, 4], [2, -1, 5, -1], [6, 7, -1, -1], [8, -1, -1, -1]])
    with torch.no_grad():
        ours = adapter(features, idx).last_hidden_state
        want = _released_pooling(adapter, features, idx, masked)
        other = _released_pooling(adapter, features, idx, not masked)
    scale = want.abs().max()
    torch.testing.assert_close(ours, want, rtol=0, atol=1e-5 * scale)
    # The first cell is complete, so both rules agree there; the edge cells differ.
    torch.testing.assert_close(ours[0], other[0], rtol=0, atol=1e-5 * scale)
    assert (ours[1:] - other[1:]).abs().max() > 1e-2 * scale


# ----------------------------------------------------------------------------- float32 attention
def _released_fp32_attention(attention, x):
    """ViTMultiHeadDotProductAttention with float32_attention, SDPA path: q, k, v in float32."""
    heads = attention.config.num_attention_heads
    kv_heads = attention.config.num_key_value_heads
    head_dim = attention.head_dim
    q = attention.q_proj(x).view(*x.shape[:-1], heads, head_dim).float()
    k = attention.k_proj(x).view(*x.shape[:-1], kv_heads, head_dim).float()
    v = attention.v_proj(x).view(*x.shape[:-1], kv_heads, head_dim).float()
    k = k.repeat_interleave(heads // kv_heads, dim=2)
    v = v.repeat_interleave(heads // kv_heads, dim=2)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    out = out.transpose(1, 2).reshape(*x.shape[:-1], heads * head_dim).to(x.dtype)
    return attention.o_proj(out)


def test_float32_attention_runs_the_vit_attention_in_float32_around_bf16_weights():
    torch.manual_seed(0)
    model = MolmoAct2Model(MolmoAct2Config.tiny()).to(torch.bfloat16)
    attention = model.vlm.model.vision_tower.layers[0].self_attn
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for parameter in attention.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=gen) * 0.5)
        x = torch.randn(2, 9, attention.q_proj.in_features, generator=gen).to(torch.bfloat16)
        ours, _ = attention(x)
        want = _released_fp32_attention(attention, x)
    torch.testing.assert_close(ours, want, rtol=0, atol=0)


def test_float32_attention_flags_round_trip_and_change_nothing_in_float32():
    data = MolmoAct2Config.tiny().to_dict()
    assert data["vit_config"]["float32_attention"] is True
    data["adapter_config"]["float32_attention"] = False
    config = MolmoAct2Config.from_dict(data)
    assert config.vit_float32_attention and not config.adapter_float32_attention
    assert config.to_dict()["adapter_config"]["float32_attention"] is False
    torch.manual_seed(0)
    on = MolmoAct2Model(MolmoAct2Config.tiny())
    torch.manual_seed(0)
    off = MolmoAct2Model(MolmoAct2Config.tiny(vit_float32_attention=False))
    x = torch.randn(1, 9, on.config.vlm.vision_config.hidden_size)
    with torch.no_grad():
        torch.testing.assert_close(
            on.vlm.model.vision_tower.layers[0].self_attn(x)[0],
            off.vlm.model.vision_tower.layers[0].self_attn(x)[0],
            rtol=1e-6, atol=1e-6,
        )
