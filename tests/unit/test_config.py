"""MolmoAct2Config: presets, config.json round trip in the released layout, clear errors."""

from __future__ import annotations

import json

import pytest

from molmoact2_policy.model.config import ConfigError, MolmoAct2Config
from molmoact2_policy.model.tokenizer import MolmoAct2Tokenizer


def test_released_preset_has_released_sizes():
    config = MolmoAct2Config.released()
    text = config.vlm.text_config
    assert (text.num_hidden_layers, text.hidden_size) == (36, 2560)
    assert (text.num_attention_heads, text.num_key_value_heads, text.head_dim) == (32, 8, 128)
    assert config.llm_kv_dim == 1024
    # ViT features from layers -3 and -9 of 27: the ViT is trimmed after layer 24.
    assert config.vlm.adapter_config.vision_feature_layer == [24, 18]
    assert config.vlm.vision_config.num_hidden_layers == 25
    expert = config.action_expert
    assert (expert.hidden_size, expert.num_layers, expert.num_heads) == (1024, 36, 16)
    assert expert.mlp_hidden_size == 2816
    assert (config.max_action_dim, config.flow_matching_num_steps) == (32, 10)
    assert (config.num_state_tokens, config.num_depth_codes) == (256, 100)
    assert config.expert_kv_source == "cache"


def test_tiny_and_mid_presets_keep_the_structure():
    for config in (MolmoAct2Config.tiny(), MolmoAct2Config.mid_cpu()):
        assert config.action_expert.num_layers == config.num_vlm_layers
        assert config.action_expert.llm_kv_dim == config.llm_kv_dim
    tiny = MolmoAct2Config.tiny()
    assert (tiny.num_vlm_layers, tiny.vlm.text_config.hidden_size) == (3, 128)
    assert tiny.action_expert.hidden_size == 64
    mid = MolmoAct2Config.mid_cpu()
    assert (mid.num_vlm_layers, mid.vlm.text_config.hidden_size) == (4, 512)
    assert mid.action_expert.hidden_size == 256


def test_json_round_trip_uses_released_keys():
    config = MolmoAct2Config.tiny()
    data = json.loads(json.dumps(config.to_dict()))
    assert data["model_type"] == "molmoact2"
    assert {"vit_config", "adapter_config", "text_config", "action_expert_config"} <= set(data)
    assert data["vit_config"]["image_default_input_size"] == [378, 378]
    assert data["vit_config"]["image_patch_size"] == 14
    assert "vit_layers" in data["adapter_config"]
    assert data["flow_matching_time_offset"] == 0.001
    data["some_future_field"] = {"kept": True}
    loaded = MolmoAct2Config.from_dict(data)
    assert loaded.extra["some_future_field"] == {"kept": True}
    assert loaded.to_dict() == data


def test_token_ids_match_the_tiny_tokenizer():
    config = MolmoAct2Config.tiny()
    tokenizer = MolmoAct2Tokenizer.tiny()
    config.check_tokenizer(tokenizer)
    assert config.state_token_start_id == tokenizer.token_id("<state_0>")
    assert config.vlm.image_patch_id == tokenizer.token_id("<im_patch>")
    shifted = MolmoAct2Config.from_dict(config.to_dict() | {"state_token_start_id": 3})
    with pytest.raises(ConfigError, match="state_token_start_id=3"):
        shifted.check_tokenizer(tokenizer)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model_type": "molmo2"}, "model_type is 'molmo2'"),
        ({"text_config": None}, "'text_config' is missing"),
        ({"flow_matching_num_steps": "ten"}, "'flow_matching_num_steps' must be an integer"),
        ({"add_setup_tokens": 1}, "'add_setup_tokens' must be true or false"),
        ({"expert_kv_source": "values"}, "expert_kv_source 'values'"),
        ({"action_expert_config": {"hidden_size": 64, "num_layers": 2, "llm_kv_dim": 64}},
         "num_layers 2 != VLM layers 3"),
        ({"action_expert_config": {"hidden_size": 64, "llm_kv_dim": 96}},
         "llm_kv_dim=96 but the VLM's K/V width"),
        ({"vit_config": {"hidden_size": "wide"}}, "invalid VLM sub-config"),
    ],
)
def test_malformed_config_is_named(change, message):
    data = MolmoAct2Config.tiny().to_dict()
    for key, value in change.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    with pytest.raises(ConfigError, match=message):
        MolmoAct2Config.from_dict(data)


def test_depth_gate_defaults_are_the_released_ones():
    # The released converter and config default to one shared gate with logit -4; a config.json
    # that leaves the fields out must build that gate, not one per layer.
    data = MolmoAct2Config.tiny(action_expert_depth_gate=True).to_dict()
    for key in ("action_expert_depth_gate_per_layer", "action_expert_depth_gate_init_bias"):
        data.pop(key)
    config = MolmoAct2Config.from_dict(data)
    assert config.action_expert_depth_gate
    assert config.action_expert_depth_gate_per_layer is False
    assert config.action_expert_depth_gate_init_bias == -4.0
    assert MolmoAct2Config.tiny().action_expert_depth_gate is False
