"""MolmoAct2Config: presets, config.json round trip in the released layout, clear errors."""

from __future__ import annotations

import json
import re

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
        ({"flow_matching_num_steps": "ten"}, "flow_matching_num_steps='ten' must be an integer"),
        ({"add_setup_tokens": 1}, "'add_setup_tokens' must be true or false"),
        ({"expert_kv_source": "values"}, "expert_kv_source 'values'"),
        ({"action_expert_config": {"hidden_size": 64, "num_layers": 2, "llm_kv_dim": 64}},
         "num_layers 2 != VLM layers 3"),
        ({"action_expert_config": {"hidden_size": 64, "llm_kv_dim": 96}},
         "llm_kv_dim=96 but the VLM's K/V width"),
        ({"vit_config": {"hidden_size": "wide"}}, "vit_config.hidden_size='wide' must be an int"),
        ({"vit_config": {"image_default_input_size": 5}}, "invalid VLM sub-config"),
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


# One case per value the outside-in probe (bench/probe_checkpoint.py) saw reach torch, run
# as something else, or allocate at act time: (section, key, value, the rule named).
_BAD_VALUES = [
    ("vit_config", "hidden_size", -1, "an integer >= 1"),
    ("vit_config", "intermediate_size", -1, "an integer >= 1"),
    ("vit_config", "num_attention_heads", 0, "an integer >= 1"),
    ("vit_config", "num_key_value_heads", -1, "an integer >= 1"),
    ("vit_config", "head_dim", 0, "an integer >= 1"),
    ("vit_config", "hidden_size", 32.0, "an integer >= 1"),
    ("vit_config", "layer_norm_eps", 0, "a finite number > 0"),
    ("adapter_config", "intermediate_size", -1, "an integer >= 1"),
    ("adapter_config", "text_hidden_size", -1, "an integer >= 1"),
    ("adapter_config", "num_attention_heads", 0, "an integer >= 1"),
    ("text_config", "num_attention_heads", 0, "an integer >= 1"),
    ("text_config", "num_key_value_heads", 0, "an integer >= 1 or null"),
    ("text_config", "head_dim", 0, "an integer >= 1"),
    ("text_config", "vocab_size", -1, "an integer >= 1"),
    ("text_config", "hidden_size", True, "an integer >= 1"),
    ("text_config", "max_position_embeddings", 0, "an integer >= 1"),
    ("text_config", "max_position_embeddings", -1, "an integer >= 1"),
    ("text_config", "rope_theta", "x", "a finite number > 0"),
    ("text_config", "layer_norm_eps", float("nan"), "a finite number > 0"),
    ("action_expert_config", "ffn_multiple_of", "x", "an integer >= 1"),
    ("action_expert_config", "ffn_multiple_of", None, "an integer >= 1"),
    ("action_expert_config", "dropout", -1, r"a number in \[0, 1\)"),
    ("action_expert_config", "dropout", 1e9, r"a number in \[0, 1\)"),
    ("action_expert_config", "dropout", "x", r"a number in \[0, 1\)"),
    ("action_expert_config", "dropout", None, r"a number in \[0, 1\)"),
    ("action_expert_config", "qk_norm_eps", "x", "a finite number > 0"),
    ("action_expert_config", "qk_norm_eps", None, "a finite number > 0"),
    ("action_expert_config", "qk_norm_eps", -1, "a finite number > 0"),
    ("action_expert_config", "mlp_ratio", float("inf"), "a finite number > 0"),
    ("action_expert_config", "rope", 1, "true or false"),
    (None, "max_action_horizon", 10**9, r"an integer in \[1, 1024\]"),
    (None, "flow_matching_num_steps", 10**9, r"an integer in \[1, 1000\]"),
    (None, "flow_matching_num_steps", "ten", r"an integer in \[1, 1000\]"),
    (None, "n_obs_steps", 0, "an integer >= 1"),
    (None, "n_obs_steps", -1, "an integer >= 1"),
    (None, "num_depth_codes", -1, r"an integer in \[1, 4096\]"),
    (None, "num_state_tokens", -1, "an integer >= 0"),
    (None, "flow_matching_cutoff", float("nan"), "a finite number"),
    (None, "image_col_id", -1, "an integer >= 0 or null"),
    (None, "image_col_id", "x", "an integer >= 0 or null"),
    (None, "depth_start_token_id", 1.5, "an integer >= 0 or null"),
    (None, "action_output_token_id", 10**6, "a token id below the vocabulary size"),
    (None, "image_patch_id", 10**6, "a token id below the vocabulary size"),
]


@pytest.mark.parametrize(
    ("section", "key", "value", "rule"),
    _BAD_VALUES,
    ids=[f"{s or 'top'}.{k}={v!r}" for s, k, v, _ in _BAD_VALUES],
)
def test_a_value_outside_its_rule_is_named_with_the_rule(section, key, value, rule):
    data = MolmoAct2Config.tiny().to_dict()
    (data if section is None else data[section])[key] = value
    where = key if section is None else f"{section}.{key}"
    shown = json.dumps(value) if value is not None else "null"
    with pytest.raises(ConfigError) as info:
        MolmoAct2Config.from_dict(data)
    message = str(info.value)
    assert re.search(rf"{re.escape(where)}=\S+ must be {rule}", message), message
    if isinstance(value, int) and not isinstance(value, bool):
        assert f"{where}={shown}" in message


def test_query_heads_must_be_a_multiple_of_the_kv_heads():
    data = MolmoAct2Config.tiny().to_dict()
    data["text_config"]["num_key_value_heads"] = 3  # 4 query heads
    with pytest.raises(ConfigError, match=r"text_config\.num_attention_heads=4 must be a "
                                          r"multiple of text_config\.num_key_value_heads=3"):
        MolmoAct2Config.from_dict(data)


def test_a_token_family_past_the_vocabulary_is_named():
    data = MolmoAct2Config.tiny().to_dict()
    vocab = data["text_config"]["vocab_size"] + data["text_config"]["additional_vocab_size"]
    data["state_token_start_id"] = vocab - 10
    with pytest.raises(ConfigError, match=r"state_token_start_id=\d+ \+ num_state_tokens=256 "
                                          rf"runs past the vocabulary size {vocab}"):
        MolmoAct2Config.from_dict(data)


def test_every_value_problem_is_named_at_once():
    data = MolmoAct2Config.tiny().to_dict()
    data["text_config"]["head_dim"] = 0
    data["max_action_horizon"] = -3
    with pytest.raises(ConfigError) as info:
        MolmoAct2Config.from_dict(data)
    assert "text_config.head_dim=0" in str(info.value)
    assert "max_action_horizon=-3" in str(info.value)


def test_the_released_classes_defaults_pass_the_value_rules():
    # configuration_molmoact2.py (huggingface/lerobot@1116513c): the defaults a released
    # config.json may carry, including null token ids, 0 token counts and 30 observation steps.
    data = MolmoAct2Config.tiny().to_dict()
    data.update(
        max_action_dim=32, max_action_horizon=30, n_obs_steps=30, flow_matching_num_steps=10,
        flow_matching_cutoff=1.0, flow_matching_time_offset=0.001,
        flow_matching_time_scale=0.999, flow_matching_beta_alpha=1.0,
        flow_matching_beta_beta=1.5, num_depth_codes=100,
        action_expert_depth_gate_init_bias=-4.0, num_depth_tokens=0,
        depth_output_token_id=None, depth_start_token_id=None, depth_end_token_id=None,
        depth_token_start_id=None, image_col_id=None,
    )
    data["text_config"].update(num_key_value_heads=None, layer_norm_eps=1e-6,
                               rope_theta=1000000.0, max_position_embeddings=4096)
    data["action_expert_config"].update(mlp_ratio=8.0 / 3.0, dropout=0.0, attn_dropout=0.0,
                                        qk_norm_eps=1e-6)
    data["action_expert_config"]["num_heads"] = 4  # the tiny width; 16 is released
    config = MolmoAct2Config.from_dict(data)
    assert config.n_obs_steps == 30
    assert config.text_config.num_key_value_heads == config.text_config.num_attention_heads
