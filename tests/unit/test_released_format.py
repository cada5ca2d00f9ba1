"""The released checkpoint format, worked out from the released source, not from our code.

Source: LeRobot's copy of the MolmoAct2 Hugging Face remote code,
``huggingface/lerobot`` ``src/lerobot/policies/molmoact2/hf_model/configuration_molmoact2.py``
and ``modeling_molmoact2.py``, plus transformers' ``PretrainedConfig.__init__``/``to_dict``
(4.5x, the generation the release targets). The fixtures below spell out what those classes
write and declare; the tests load them with our code.
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from molmoact2_policy.model.checkpoint import (
    CheckpointError,
    load_checkpoint,
    write_tiny_checkpoint,
)
from molmoact2_policy.model.config import ConfigError, MolmoAct2Config
from molmoact2_policy.model.loader import load_policy
from molmoact2_policy.model.weights_io import read_header

torch.set_num_threads(1)

# ----------------------------------------------------------------------------- config.json
# PretrainedConfig's own attributes, as to_dict writes them into the top level and into every
# nested config (transformers 4.5x: __init__ stores each, the generation defaults included).
PRETRAINED_BASE = {
    "return_dict": True,
    "output_hidden_states": False,
    "output_attentions": False,
    "torchscript": False,
    "dtype": None,
    "use_bfloat16": False,
    "tf_legacy_loss": False,
    "pruned_heads": {},
    "tie_word_embeddings": True,
    "chunk_size_feed_forward": 0,
    "is_encoder_decoder": False,
    "is_decoder": False,
    "cross_attention_hidden_size": None,
    "add_cross_attention": False,
    "tie_encoder_decoder": False,
    "max_length": 20,
    "min_length": 0,
    "do_sample": False,
    "early_stopping": False,
    "num_beams": 1,
    "num_beam_groups": 1,
    "diversity_penalty": 0.0,
    "temperature": 1.0,
    "top_k": 50,
    "top_p": 1.0,
    "typical_p": 1.0,
    "repetition_penalty": 1.0,
    "length_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "num_return_sequences": 1,
    "output_scores": False,
    "return_dict_in_generate": False,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "remove_invalid_values": False,
    "exponential_decay_length_penalty": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "architectures": None,
    "finetuning_task": None,
    "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
    "label2id": {"LABEL_0": 0, "LABEL_1": 1},
    "tokenizer_class": None,
    "prefix": None,
    "bos_token_id": None,
    "pad_token_id": None,
    "eos_token_id": None,
    "sep_token_id": None,
    "decoder_start_token_id": None,
    "task_specific_params": None,
    "problem_type": None,
    "_name_or_path": "",
}


def released_config_json(*, diff: bool = False) -> dict:
    """config.json of a tiny MolmoAct2 as the released MolmoAct2Config writes it.

    The sizes and token ids are the tiny preset's (data); every key, nested ``model_type`` and
    default is the released classes'. ``diff=False`` is ``to_dict()`` (every base key in every
    nested config); ``diff=True`` is what ``save_pretrained`` keeps (base keys only where they
    differ from PretrainedConfig's defaults; the older ``torch_dtype`` spelling).
    """
    tiny = MolmoAct2Config.tiny()
    vit = {
        # MolmoAct2VitConfig.__init__ (model_type "molmoact2")
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "hidden_act": "gelu_pytorch_tanh",
        "layer_norm_eps": 1e-6,
        "image_default_input_size": [378, 378],
        "image_patch_size": 14,
        "image_num_pos": 729,
        "attention_dropout": 0.0,
        "residual_dropout": 0.0,
        "initializer_range": 0.02,
        "float32_attention": True,
        "attn_implementation": "eager",
        "model_type": "molmoact2",
    }
    adapter = {
        # MolmoAct2AdapterConfig.__init__ (model_type "molmoact2")
        "vit_layers": [-1, -2],
        "pooling_attention_mask": True,
        "hidden_size": 32,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "float32_attention": True,
        "attention_dropout": 0.0,
        "residual_dropout": 0.0,
        "hidden_act": "silu",
        "intermediate_size": 64,
        "text_hidden_size": 128,
        "image_feature_dropout": 0.0,
        "initializer_range": 0.02,
        "attn_implementation": "eager",
        "model_type": "molmoact2",
    }
    text = {
        # MolmoAct2TextConfig.__init__ (model_type "molmoact2_text"); Qwen3-style values
        "hidden_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "vocab_size": tiny.text_config.vocab_size,
        "additional_vocab_size": tiny.text_config.additional_vocab_size,
        "qkv_bias": False,
        "num_hidden_layers": 3,
        "intermediate_size": 256,
        "hidden_act": "silu",
        "embedding_dropout": 0.0,
        "attention_dropout": 0.0,
        "residual_dropout": 0.0,
        "max_position_embeddings": 4096,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "rope_scaling_layers": None,
        "use_qk_norm": True,
        "qk_norm_type": "qwen3",
        "layer_norm_eps": 1e-6,
        "norm_after": False,
        "initializer_range": 0.02,
        "use_cache": True,
        "tie_word_embeddings": False,
        "attn_implementation": "eager",
        "model_type": "molmoact2_text",
    }
    expert = {
        # MolmoAct2ActionExpertConfig.to_dict pops max_action_horizon / max_action_dim
        "hidden_size": 64,
        "num_layers": 3,
        "num_heads": 4,
        "mlp_ratio": 2.0,
        "ffn_multiple_of": 32,
        "timestep_embed_dim": 32,
        "dropout": 0.0,
        "attn_dropout": 0.0,
        "context_layer_norm": True,
        "qk_norm": True,
        "qk_norm_eps": 1e-6,
        "rope": True,
        "causal_attn": False,
        "model_type": "molmoact2_action_expert",
    }
    top = {
        # MolmoAct2Config.__init__ stores each of these (image_high_res_id = image_patch_id)
        "image_start_token_id": tiny.vlm.image_start_token_id,
        "low_res_image_start_token_id": tiny.vlm.low_res_image_start_token_id,
        "image_end_token_id": tiny.vlm.image_end_token_id,
        "image_low_res_id": tiny.extra["image_low_res_id"],
        "image_high_res_id": tiny.vlm.image_patch_id,
        "image_patch_id": tiny.vlm.image_patch_id,
        "image_col_id": tiny.extra["image_col_id"],
        "frame_start_token_id": tiny.vlm.frame_start_token_id,
        "frame_end_token_id": tiny.vlm.frame_end_token_id,
        "use_frame_special_tokens": True,
        "initializer_range": 0.02,
        "max_action_dim": 32,
        "max_action_horizon": 30,
        "n_obs_steps": 1,
        "action_mode": "both",
        "state_format": "discrete",
        "flow_matching_num_steps": 10,
        "flow_matching_cutoff": 1.0,
        "flow_matching_time_offset": 0.001,
        "flow_matching_time_scale": 0.999,
        "flow_matching_beta_alpha": 1.0,
        "flow_matching_beta_beta": 1.5,
        "mask_action_dim_padding": True,
        "enable_depth_reasoning": False,
        "depth_mode": 2,
        "num_depth_codes": 100,
        "action_expert_depth_gate": False,
        "action_expert_depth_gate_per_layer": False,
        "action_expert_depth_gate_init_bias": -4.0,
        "add_setup_tokens": True,
        "add_control_tokens": True,
        "norm_stats_filename": "norm_stats.json",
        "add_action_expert": True,
        **{
            name: getattr(tiny, name)
            for name in (
                "action_output_token_id", "action_start_token_id", "action_end_token_id",
                "action_token_start_id", "num_action_tokens", "depth_output_token_id",
                "depth_start_token_id", "depth_end_token_id", "depth_token_start_id",
                "num_depth_tokens", "state_start_token_id", "state_end_token_id",
                "state_token_start_id", "num_state_tokens",
            )
        },
        "model_type": "molmoact2",
    }
    if diff:
        nested = {"vit_config": vit, "adapter_config": adapter, "text_config": text,
                  "action_expert_config": expert}
        # text_config sets tie_word_embeddings=False, which differs from the base default.
        out = dict(top, **nested, torch_dtype="float32")
    else:
        nested = {
            "vit_config": {**PRETRAINED_BASE, **vit},
            "adapter_config": {**PRETRAINED_BASE, **adapter},
            "text_config": {**PRETRAINED_BASE, **text},
            "action_expert_config": {**PRETRAINED_BASE, **expert},
        }
        out = {**PRETRAINED_BASE, **top, **nested, "dtype": "float32"}
    out["architectures"] = ["MolmoAct2ForConditionalGeneration"]
    out["auto_map"] = {
        "AutoConfig": "configuration_molmoact2.MolmoAct2Config",
        "AutoModelForImageTextToText": "modeling_molmoact2.MolmoAct2ForConditionalGeneration",
    }
    out["transformers_version"] = "4.57.1"
    return json.loads(json.dumps(out))


@pytest.mark.parametrize("diff", [False, True], ids=["to_dict", "save_pretrained"])
def test_released_config_json_loads_with_every_size_from_released_keys(diff):
    config = MolmoAct2Config.from_dict(released_config_json(diff=diff))
    tiny = MolmoAct2Config.tiny()
    assert config.llm_kv_dim == 2 * 32  # num_key_value_heads x head_dim, not a 4B default
    assert config.action_expert.llm_kv_dim == config.llm_kv_dim
    assert config.action_expert.max_action_dim == 32
    assert config.action_expert.max_action_horizon == 30
    assert config.vlm.adapter_config.vision_feature_layer == [1, 0]
    assert config.vlm.text_config.rope_parameters["rope_theta"] == 1e6
    assert config.vlm.text_config.attention_bias is False
    assert config.pooling_attention_mask is True
    for section in ("vision_config", "adapter_config", "text_config"):
        ours = getattr(config.vlm, section).to_dict()
        want = getattr(tiny.vlm, section).to_dict()
        for key in ("transformers_version", "_name_or_path", "dtype", "architectures"):
            ours.pop(key, None)
            want.pop(key, None)
        assert ours == want, section
    assert config.action_expert == tiny.action_expert


def test_released_config_json_loads_a_checkpoint_that_acts_like_ours(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "tiny", seed=0, embodiments=["droid"])
    (path / "config.json").write_text(json.dumps(released_config_json()))
    loaded = load_policy(str(path), "droid", seed=0)
    reference = load_policy("tiny", "droid", seed=0)
    gen = torch.Generator().manual_seed(3)
    images = {
        name: torch.randint(0, 256, (48, 64, 3), generator=gen, dtype=torch.uint8).numpy()
        for name in loaded.embodiment.camera_names
    }
    state = torch.rand(loaded.embodiment.state_dim, generator=gen).numpy() - 0.5
    first = loaded.act(images, state, "wipe the table", seed=5).positions
    second = reference.act(images, state, "wipe the table", seed=5).positions
    assert (first == second).all()


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("text_config", "use_qk_norm", False, r"text_config\.use_qk_norm=false is not implemented"),
        ("vit_config", "image_num_pos", 577, r"vit_config\.image_num_pos=577 is not implemented"),
        ("text_config", "rope_scaling", {"rope_type": "dynamic", "factor": 2.0},
         r"text_config\.rope_scaling=\{'rope_type': 'dynamic', 'factor': 2\.0\} is not impl"),
        ("text_config", "pruned_heads", {"0": [1]}, r"text_config\.pruned_heads=\{'0': \[1\]\}"),
        (None, "quantization_config", {"quant_method": "bitsandbytes"},
         r"config\.quantization_config=.*quantised weights are not implemented"),
        ("text_config", "additional_vocab_size", None,
         r"text_config\.additional_vocab_size=null is not implemented"),
        ("action_expert_config", "rope_theta", 500.0,
         r"action_expert_config\.rope_theta=500\.0 is not implemented"),
        ("adapter_config", "pooling_attention_mask", "yes",
         r"pooling_attention_mask='yes' must be true or false"),
    ],
)
def test_behaviour_changing_options_are_refused_by_name_and_value(section, key, value, message):
    data = released_config_json()
    (data if section is None else data[section])[key] = value
    with pytest.raises(ConfigError, match=message):
        MolmoAct2Config.from_dict(data)


def test_keys_the_release_never_reads_are_accepted_and_reported(caplog):
    data = released_config_json()
    data["text_config"]["some_training_flag"] = 3
    data["vit_config"]["attention_dropout"] = 0.3  # inactive at inference
    with caplog.at_level("WARNING"):
        config = MolmoAct2Config.from_dict(data)
    assert config.num_vlm_layers == 3
    assert "text_config.some_training_flag" in caplog.text


def test_pooling_attention_mask_absent_means_the_released_default_false():
    data = released_config_json()
    del data["adapter_config"]["pooling_attention_mask"]
    assert MolmoAct2Config.from_dict(data).pooling_attention_mask is False


# ----------------------------------------------------------------------------- tensors
def released_tensor_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor MolmoAct2ForConditionalGeneration's state dict holds for ``config``.

    Written from the released module tree: MolmoAct2TextModel (wte.embedding/new_embedding,
    blocks.N.self_attn.att_proj [+bias when qkv_bias], q_norm/k_norm per head for qwen3,
    attn_out, attn_norm, mlp.ff_proj (2 x intermediate), mlp.ff_out, ff_norm, ln_f, the
    persistent rotary_emb.inv_freq), MolmoAct2VisionBackbone (image_vit trimmed to the deepest
    layer vit_layers reads, ViTMultiHeadDotProductAttention wq/wk/wv/wo with biases, ViTMLP
    w1/w2 with biases, LayerNorms, image_pooling_2d over len(vit_layers) x width, bias-free
    ImageProjectorMLP w1/w2/w3), ActionExpert (time_embed.1/.3, action_embed, bias-free
    context_k/v_proj over kv_heads x head_dim, blocks with qkv, out_proj, cross_attn q_proj /
    out_proj, SwiGLU up/gate/down of round_up(int(h * r), multiple), modulation.linear (9h),
    final_layer) and lm_head (vocab_size rows, no bias).
    """
    shapes: dict[str, tuple[int, ...]] = {}
    text, vit, adapter, expert = (
        config["text_config"], config["vit_config"], config["adapter_config"],
        config["action_expert_config"],
    )
    hidden, heads, kv, head_dim = (
        text["hidden_size"], text["num_attention_heads"], text["num_key_value_heads"],
        text["head_dim"],
    )
    t = "model.transformer."
    shapes[t + "wte.embedding"] = (text["vocab_size"], hidden)
    shapes[t + "wte.new_embedding"] = (text["additional_vocab_size"], hidden)
    fused = heads * head_dim + 2 * kv * head_dim
    for n in range(text["num_hidden_layers"]):
        b = f"{t}blocks.{n}."
        shapes[b + "self_attn.att_proj.weight"] = (fused, hidden)
        if text["qkv_bias"]:
            shapes[b + "self_attn.att_proj.bias"] = (fused,)
        qwen3 = text["qk_norm_type"] == "qwen3"
        shapes[b + "self_attn.q_norm.weight"] = (head_dim if qwen3 else heads * head_dim,)
        shapes[b + "self_attn.k_norm.weight"] = (head_dim if qwen3 else kv * head_dim,)
        shapes[b + "self_attn.attn_out.weight"] = (hidden, heads * head_dim)
        shapes[b + "attn_norm.weight"] = (hidden,)
        shapes[b + "mlp.ff_proj.weight"] = (2 * text["intermediate_size"], hidden)
        shapes[b + "mlp.ff_out.weight"] = (hidden, text["intermediate_size"])
        shapes[b + "ff_norm.weight"] = (hidden,)
    shapes[t + "ln_f.weight"] = (hidden,)
    shapes[t + "rotary_emb.inv_freq"] = (head_dim // 2,)
    v = "model.vision_backbone."
    width = vit["hidden_size"]
    layers = [x if x >= 0 else x + vit["num_hidden_layers"] for x in adapter["vit_layers"]]
    patch = vit["image_patch_size"]
    shapes[v + "image_vit.positional_embedding"] = (vit["image_num_pos"], width)
    shapes[v + "image_vit.patch_embedding.weight"] = (width, patch * patch * 3)
    shapes[v + "image_vit.patch_embedding.bias"] = (width,)
    q_out = vit["num_attention_heads"] * vit["head_dim"]
    kv_out = vit["num_key_value_heads"] * vit["head_dim"]
    for n in range(max(layers) + 1):
        b = f"{v}image_vit.transformer.resblocks.{n}."
        for name, rows, cols in (("wq", q_out, width), ("wk", kv_out, width),
                                 ("wv", kv_out, width), ("wo", width, q_out)):
            shapes[f"{b}attention.{name}.weight"] = (rows, cols)
            shapes[f"{b}attention.{name}.bias"] = (rows,)
        inner = vit["intermediate_size"]
        shapes[b + "feed_forward.w1.weight"] = (inner, width)
        shapes[b + "feed_forward.w1.bias"] = (inner,)
        shapes[b + "feed_forward.w2.weight"] = (width, inner)
        shapes[b + "feed_forward.w2.bias"] = (width,)
        for norm in ("attention_norm", "ffn_norm"):
            shapes[f"{b}{norm}.weight"] = (width,)
            shapes[f"{b}{norm}.bias"] = (width,)
    pool_in = width * len(layers)
    a_q = adapter["num_attention_heads"] * adapter["head_dim"]
    a_kv = adapter["num_key_value_heads"] * adapter["head_dim"]
    for name, rows, cols in (("wq", a_q, pool_in), ("wk", a_kv, pool_in), ("wv", a_kv, pool_in),
                             ("wo", adapter["hidden_size"], a_q)):
        shapes[f"{v}image_pooling_2d.{name}.weight"] = (rows, cols)
        shapes[f"{v}image_pooling_2d.{name}.bias"] = (rows,)
    a_in, a_mid = adapter["hidden_size"], adapter["intermediate_size"]
    shapes[v + "image_projector.w1.weight"] = (a_mid, a_in)
    shapes[v + "image_projector.w2.weight"] = (adapter["text_hidden_size"], a_mid)
    shapes[v + "image_projector.w3.weight"] = (a_mid, a_in)
    e = "model.action_expert."
    h, dim = expert["hidden_size"], config["max_action_dim"]
    inner = int(h * expert["mlp_ratio"])
    multiple = expert["ffn_multiple_of"]
    inner = inner if multiple <= 0 else math.ceil(inner / multiple) * multiple
    for name, rows, cols, bias in (
        ("time_embed.1", h, expert["timestep_embed_dim"], True), ("time_embed.3", h, h, True),
        ("action_embed", h, dim, True), ("context_k_proj", h, kv * head_dim, False),
        ("context_v_proj", h, kv * head_dim, False),
        ("final_layer.modulation.linear", 2 * h, h, True), ("final_layer.linear", dim, h, True),
    ):
        shapes[f"{e}{name}.weight"] = (rows, cols)
        if bias:
            shapes[f"{e}{name}.bias"] = (rows,)
    for n in range(expert["num_layers"]):
        for name, rows, cols in (
            ("self_attn.qkv", 3 * h, h), ("self_attn.out_proj", h, h),
            ("cross_attn.q_proj", h, h), ("cross_attn.out_proj", h, h),
            ("mlp.up_proj", inner, h), ("mlp.gate_proj", inner, h), ("mlp.down_proj", h, inner),
            ("modulation.linear", 9 * h, h),
        ):
            shapes[f"{e}blocks.{n}.{name}.weight"] = (rows, cols)
            shapes[f"{e}blocks.{n}.{name}.bias"] = (rows,)
    shapes["lm_head.weight"] = (text["vocab_size"], hidden)
    return shapes


# The keys each released configuration class's __init__ stores (and so writes).
RELEASED_OWN_KEYS = {
    "vit_config": {
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "head_dim", "hidden_act", "layer_norm_eps",
        "image_default_input_size", "image_patch_size", "image_num_pos", "attention_dropout",
        "residual_dropout", "initializer_range", "float32_attention", "attn_implementation",
    },
    "adapter_config": {
        "vit_layers", "pooling_attention_mask", "hidden_size", "num_attention_heads",
        "num_key_value_heads", "head_dim", "float32_attention", "attention_dropout",
        "residual_dropout", "hidden_act", "intermediate_size", "text_hidden_size",
        "image_feature_dropout", "initializer_range", "attn_implementation",
    },
    "text_config": {
        "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "vocab_size",
        "additional_vocab_size", "qkv_bias", "num_hidden_layers", "intermediate_size",
        "hidden_act", "embedding_dropout", "attention_dropout", "residual_dropout",
        "max_position_embeddings", "rope_theta", "rope_scaling", "rope_scaling_layers",
        "use_qk_norm", "qk_norm_type", "layer_norm_eps", "norm_after", "initializer_range",
        "use_cache", "tie_word_embeddings", "attn_implementation",
    },
    "action_expert_config": {
        "hidden_size", "num_layers", "num_heads", "mlp_ratio", "ffn_multiple_of",
        "timestep_embed_dim", "dropout", "attn_dropout", "context_layer_norm", "qk_norm",
        "qk_norm_eps", "rope", "causal_attn",
    },
}
SUB_MODEL_TYPES = {
    "vit_config": "molmoact2", "adapter_config": "molmoact2", "text_config": "molmoact2_text",
    "action_expert_config": "molmoact2_action_expert",
}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("released") / "tiny", seed=0)


def test_written_config_has_every_released_key_with_the_released_types(written):
    data = json.loads((written / "config.json").read_text())
    assert data["model_type"] == "molmoact2"
    assert data["architectures"] == ["MolmoAct2ForConditionalGeneration"]
    for section, keys in RELEASED_OWN_KEYS.items():
        assert data[section]["model_type"] == SUB_MODEL_TYPES[section]
        assert set(data[section]) == keys | {"model_type"}, section
    # The values the released classes would build our model with (their defaults differ).
    assert data["text_config"]["use_qk_norm"] is True
    assert data["text_config"]["qkv_bias"] is False
    assert data["adapter_config"]["pooling_attention_mask"] is True
    assert data["image_high_res_id"] == data["image_patch_id"]
    # vit_layers resolve against the written ViT depth to the layers our model reads.
    depth = data["vit_config"]["num_hidden_layers"]
    layers = [x % depth for x in data["adapter_config"]["vit_layers"]]
    assert max(layers) + 1 == depth


def test_written_tensors_are_exactly_the_released_state_dict(written):
    config = json.loads((written / "config.json").read_text())
    header = read_header(written / "model.safetensors")
    written_shapes = {name: entry.shape for name, entry in header.items()}
    expected = released_tensor_shapes(config)
    assert sorted(set(expected) - set(written_shapes)) == []  # nothing a strict load misses
    assert sorted(set(written_shapes) - set(expected)) == []  # nothing it would reject
    for name, shape in expected.items():
        assert written_shapes[name] == shape, name
    assert header["model.transformer.rotary_emb.inv_freq"].dtype == torch.float32


def test_written_checkpoint_reloads_from_the_released_config_fixture(written, tmp_path):
    # The writer's tensors under the released class's own config.json load with our loader.
    copy = tmp_path / "copy"
    shutil.copytree(written, copy)
    (copy / "config.json").write_text(json.dumps(released_config_json()))
    model, config, *_ = load_checkpoint(copy)
    assert config.num_vlm_layers == 3
    rope = model.vlm.model.language_model.rotary_emb.inv_freq
    assert rope.dtype == torch.float32


def test_a_stale_rope_table_name_is_refused(written, tmp_path):
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "copy"
    shutil.copytree(written, copy)
    tensors = load_file(str(copy / "model.safetensors"))
    # rotary_embs.* exist only when some layers are left unscaled; this config scales all.
    tensors["model.transformer.rotary_embs.default.inv_freq"] = tensors.pop(
        "model.transformer.rotary_emb.inv_freq"
    )
    save_file(tensors, str(copy / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected keys: .*rotary_embs\.default"):
        load_checkpoint(copy)


def test_a_config_without_action_expert_has_a_null_expert_config():
    # The released class sets action_expert_config to None when add_action_expert is false.
    data = released_config_json()
    data["add_action_expert"] = False
    data["action_expert_config"] = None
    config = MolmoAct2Config.from_dict(data)
    assert config.add_action_expert is False
    assert config.to_dict()["action_expert_config"] is None
    assert MolmoAct2Config.from_dict(config.to_dict()).add_action_expert is False
