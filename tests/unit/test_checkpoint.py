"""Tiny checkpoints: write/load round trip in the released layout and errors that name the fault."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from molmoact2_policy.model.checkpoint import (
    CheckpointError,
    build_tiny,
    from_released_state_dict,
    load_checkpoint,
    main,
    model_from_released,
    released_state_dict,
    save_checkpoint,
    tiny_norm_stats,
    to_released_state_dict,
    write_tiny_checkpoint,
)
from molmoact2_policy.model.config import MolmoAct2Config
from molmoact2_policy.model.loader import load_policy
from molmoact2_policy.model.model import MolmoAct2Model
from molmoact2_policy.model.tokenizer import MolmoAct2Tokenizer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", seed=0)


def _observation(spec, seed=0):
    rng = np.random.default_rng(seed)
    images = {name: rng.integers(0, 256, (64, 80, 3), dtype=np.uint8) for name in spec.camera_names}
    return images, rng.uniform(-0.5, 0.5, spec.state_dim)


def test_layout_and_released_key_names(tiny_dir):
    names = {path.name for path in tiny_dir.iterdir()}
    assert {"config.json", "model.safetensors", "norm_stats.json", "tokenizer.json"} <= names
    assert sum(path.stat().st_size for path in tiny_dir.iterdir()) < 10e6
    keys = set(load_file(str(tiny_dir / "model.safetensors")))
    for key in (
        "lm_head.weight",
        "model.transformer.wte.embedding",
        "model.transformer.wte.new_embedding",
        "model.transformer.blocks.0.self_attn.att_proj.weight",
        "model.transformer.blocks.2.mlp.ff_proj.weight",
        "model.transformer.blocks.1.attn_norm.weight",
        "model.transformer.ln_f.weight",
        "model.vision_backbone.image_vit.transformer.resblocks.0.attention.wq.weight",
        "model.vision_backbone.image_pooling_2d.wq.weight",
        "model.vision_backbone.image_projector.w3.weight",
        "model.action_expert.time_embed.1.weight",
        "model.action_expert.blocks.0.self_attn.qkv.weight",
        "model.action_expert.final_layer.linear.weight",
    ):
        assert key in keys, key
    stats = json.loads((tiny_dir / "norm_stats.json").read_text())
    assert {"yam_bimanual", "droid", "so100_101", "libero"} <= set(stats["metadata_by_tag"])


def test_fused_weights_split_the_documented_way():
    model, config, _, _ = build_tiny(seed=0)
    released = released_state_dict(model)
    attention = model.vlm.model.language_model.layers[1].self_attn
    fused = released["model.transformer.blocks.1.self_attn.att_proj.weight"]
    torch.testing.assert_close(fused[:128], attention.q_proj.weight)
    torch.testing.assert_close(fused[128:192], attention.k_proj.weight)
    torch.testing.assert_close(fused[192:], attention.v_proj.weight)
    mlp = model.vlm.model.language_model.layers[1].mlp
    ff_proj = released["model.transformer.blocks.1.mlp.ff_proj.weight"]
    torch.testing.assert_close(ff_proj[:256], mlp.up_proj.weight)
    torch.testing.assert_close(ff_proj[256:], mlp.gate_proj.weight)
    assert released["model.transformer.wte.new_embedding"].shape[0] == 8
    back = from_released_state_dict(released, config)
    state = model.state_dict()
    assert set(back) == set(state)
    assert all(torch.equal(back[key], state[key]) for key in state)
    rope = {"model.transformer.rotary_emb.inv_freq"}  # a computed table, not a module weight
    assert to_released_state_dict(back, config).keys() == released.keys() - rope


def test_write_load_round_trip_gives_identical_actions(tiny_dir):
    loaded = load_policy(str(tiny_dir), "droid", seed=0)
    in_memory = load_policy("tiny", "droid", seed=0)
    images, state = _observation(loaded.embodiment)
    first = loaded.act(images, state, "wipe the table", seed=7)
    second = in_memory.act(images, state, "wipe the table", seed=7)
    assert first.positions.shape == (15, 8)
    np.testing.assert_array_equal(first.positions, second.positions)
    other_seed = in_memory.act(images, state, "wipe the table", seed=8)
    assert not np.allclose(other_seed.positions, first.positions)


def test_sharded_checkpoint_loads_the_same_weights(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "sharded", seed=0, max_shard_bytes=2_000_000)
    assert (path / "model.safetensors.index.json").is_file()
    assert len(list(path.glob("model-*-of-*.safetensors"))) >= 3
    model, *_ = load_checkpoint(path)
    reference, *_ = build_tiny(seed=0)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in reference.state_dict().items())


def _rope_tables(model):
    return {
        name: buffer
        for name, buffer in model.named_buffers()
        if name.endswith("inv_freq")  # the only tensors a checkpoint does not carry
    }


def test_loading_assigns_the_files_tensors_without_a_random_model(tiny_dir):
    from molmoact2_policy.model.checkpoint import read_config, read_weights

    released = read_weights(tiny_dir)
    model = model_from_released(read_config(tiny_dir), released)
    # The parameter *is* the file's tensor (no second copy, no random init to overwrite).
    key = "model.action_expert.context_k_proj.weight"
    assert model.action_expert.context_k_proj.weight.data_ptr() == released[key].data_ptr()
    assert not [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    reference, *_ = build_tiny(seed=0)
    expected = _rope_tables(reference)
    assert len(expected) == 4
    for name, table in _rope_tables(model).items():
        torch.testing.assert_close(table, expected[name], rtol=0, atol=0)


def test_bfloat16_keeps_rope_tables_in_float32(tiny_dir):
    model32, *_ = load_checkpoint(tiny_dir)
    model16, *_ = load_checkpoint(tiny_dir, dtype=torch.bfloat16)
    assert model16.action_expert.context_k_proj.weight.dtype == torch.bfloat16
    for name, table in _rope_tables(model16).items():
        assert table.dtype == torch.float32, name
        torch.testing.assert_close(table, _rope_tables(model32)[name], rtol=0, atol=0)
    # What rounding the tables would break: rotation angles at a prompt position near 1000.
    rotary = model16.vlm.model.language_model.rotary_emb
    x = torch.zeros(1, 1, 8, dtype=torch.bfloat16)
    position = torch.tensor([[950]])
    cos16, _ = rotary(x, position_ids=position)
    cos32, _ = model32.vlm.model.language_model.rotary_emb(x.float(), position_ids=position)
    assert (cos16.float() - cos32).abs().max() < 1e-2  # bf16 rounding of cos only


def test_policy_in_bfloat16_keeps_rope_tables_in_float32():
    policy = load_policy("tiny", "droid", seed=0, dtype="bfloat16")
    tables = _rope_tables(policy.model)
    assert tables and all(t.dtype == torch.float32 for t in tables.values())
    images, state = _observation(policy.embodiment)
    result = policy.act(images, state, "wipe the table", seed=7)
    assert np.isfinite(result.positions).all()


def _copy(tiny_dir, tmp_path):
    target = tmp_path / "copy"
    # copytree: the checkpoint has a subdirectory (the FAST tokenizer).
    shutil.copytree(tiny_dir, target)
    return target


def _edit_weights(path, edit):
    tensors = load_file(str(path / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(path / "model.safetensors"))


def test_renamed_key_is_named_as_missing_and_unexpected(tiny_dir, tmp_path):
    path = _copy(tiny_dir, tmp_path)
    key = "model.action_expert.context_k_proj.weight"
    _edit_weights(path, lambda t: t.__setitem__("model.action_expert.ctx_k.weight", t.pop(key)))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert f"missing keys: {key}" in message
    assert "unexpected keys: model.action_expert.ctx_k.weight" in message


def test_wrong_shape_is_named(tiny_dir, tmp_path):
    path = _copy(tiny_dir, tmp_path)
    key = "model.transformer.blocks.0.self_attn.att_proj.weight"
    _edit_weights(path, lambda t: t.__setitem__(key, torch.zeros(10, 128)))
    with pytest.raises(CheckpointError, match=rf"shape mismatches: {key}: file \(10, 128\)"):
        load_checkpoint(path)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int8, torch.bool])
def test_a_weight_that_is_not_floating_point_is_named(tiny_dir, tmp_path, dtype):
    path = _copy(tiny_dir, tmp_path)
    key = "model.transformer.blocks.0.self_attn.att_proj.weight"
    _edit_weights(path, lambda t: t.__setitem__(key, t[key].to(dtype)))
    with pytest.raises(CheckpointError, match=rf"not floating point: {re.escape(key)}: {dtype}"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("filename", "content", "message"),
    [
        ("config.json", "{broken", r"config\.json: not valid JSON"),
        ("config.json", '{"model_type": "llama"}', r"config\.json: model_type is 'llama'"),
        ("norm_stats.json", "[1, 2]", r"norm_stats\.json: norm stats: top level"),
        ("norm_stats.json", "{oops", r"norm_stats\.json: not valid JSON"),
        ("model.safetensors", "not a safetensors file", r"model\.safetensors: unreadable"),
    ],
)
def test_malformed_files_are_named(tiny_dir, tmp_path, filename, content, message):
    path = _copy(tiny_dir, tmp_path)
    (path / filename).write_text(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        # Values the probe saw reach torch: a negative dimension, a division by zero.
        ("vit_config", "hidden_size", -1, r"vit_config\.hidden_size=-1 must be an integer >= 1"),
        ("text_config", "num_attention_heads", 0,
         r"text_config\.num_attention_heads=0 must be an integer >= 1"),
        # 32 GB at the first act before; now refused at load.
        (None, "max_action_horizon", 10**9, r"max_action_horizon=1000000000 must be an integer"),
    ],
)
def test_config_values_are_refused_naming_file_key_and_rule(
    tiny_dir, tmp_path, section, key, value, message
):
    path = _copy(tiny_dir, tmp_path)
    data = json.loads((path / "config.json").read_text())
    (data if section is None else data[section])[key] = value
    (path / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=rf"{re.escape(str(path))}/config\.json: .*{message}"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        # Valid by every value rule, yet torch cannot allocate it (storage overflow).
        ("action_expert_config", "hidden_size", 10**9),
        # An activation transformers does not know (its lookup raises KeyError).
        ("vit_config", "hidden_act", "no_such_activation"),
    ],
)
def test_a_config_that_cannot_be_built_is_a_checkpoint_error(
    tiny_dir, tmp_path, section, key, value
):
    path = _copy(tiny_dir, tmp_path)
    data = json.loads((path / "config.json").read_text())
    data[section][key] = value
    (path / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"config\.json describes a model that cannot be "
                                              r"built: \w+(Error|Exception)"):
        load_checkpoint(path)


def test_out_of_device_memory_is_not_blamed_on_config_json(tiny_dir, monkeypatch):
    # A RuntimeError like the build errors above, but the file is fine: the GPU is too small.
    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr("molmoact2_policy.model.checkpoint.model_from_released", out_of_memory)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        load_checkpoint(tiny_dir)


@pytest.mark.parametrize(
    ("mode", "key"), [("think", "depth_start_token_id"), ("fast", "action_start_token_id")]
)
def test_a_mode_whose_token_ids_the_file_leaves_null_is_refused_at_load(
    tiny_dir, tmp_path, mode, key
):
    # null is the released class's default, so the file is valid for the flow mode.
    path = _copy(tiny_dir, tmp_path)
    data = json.loads((path / "config.json").read_text())
    data[key] = None
    (path / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=rf"config\.json: mode '{mode}' needs {key}\b"):
        load_policy(str(path), "yam_bimanual", mode=mode)
    assert getattr(load_policy(str(path), "yam_bimanual", mode="flow").config, key) is None


@pytest.mark.parametrize("filename", ["config.json", "norm_stats.json", "tokenizer.json"])
def test_missing_files_are_named(tiny_dir, tmp_path, filename):
    path = _copy(tiny_dir, tmp_path)
    (path / filename).unlink()
    with pytest.raises(CheckpointError, match=rf"{filename}: file not found"):
        load_checkpoint(path)


def test_missing_weights_and_directory_are_named(tiny_dir, tmp_path):
    path = _copy(tiny_dir, tmp_path)
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"neither model\.safetensors nor"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        load_checkpoint(tmp_path / "nowhere")


# What the released export adds: the VLM's RoPE inverse frequencies as persistent buffers, one
# table without rope_scaling_layers, the default and the scaled one with them.
SINGLE_ROPE = {"model.transformer.rotary_emb.inv_freq": "rotary_emb"}
SPLIT_ROPE = {
    "model.transformer.rotary_embs.default.inv_freq": "rotary_emb_unscaled",
    "model.transformer.rotary_embs.scaling.inv_freq": "rotary_emb",
}


def _with_rope_tables(tiny_dir, tmp_path, layout, transform=lambda t: t, only=None):
    """A copy of the tiny checkpoint plus the computed tables under ``layout``'s released keys,
    passed through ``transform`` (all of them, or just the key ``only``)."""
    reference, *_ = build_tiny(seed=0)
    text = reference.vlm.model.language_model
    tables = {key: getattr(text, name).inv_freq.clone() for key, name in layout.items()}
    tables = {k: transform(v) if only in (None, k) else v for k, v in tables.items()}
    path = _copy(tiny_dir, tmp_path)
    # Our writer stores the single table; a layout's own tables replace it.
    _edit_weights(path, lambda t: (t.pop(*SINGLE_ROPE, None), t.update(tables)))
    if layout is SPLIT_ROPE:
        # The released model has the two tables only when some layers are left unscaled.
        config = json.loads((path / "config.json").read_text())
        config["text_config"]["rope_scaling_layers"] = [0, 1]
        (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("layout", [SINGLE_ROPE, SPLIT_ROPE], ids=["single", "split"])
def test_released_rope_tables_are_accepted_and_not_loaded(tiny_dir, tmp_path, layout):
    path = _with_rope_tables(tiny_dir, tmp_path, layout)
    assert set(layout) <= set(load_file(str(path / "model.safetensors")))
    loaded = load_policy(str(path), "droid", seed=0)
    in_memory = load_policy("tiny", "droid", seed=0)
    assert not any(key.endswith("inv_freq") for key in loaded.model.state_dict())
    images, state = _observation(loaded.embodiment)
    first = loaded.act(images, state, "wipe the table", seed=7)
    second = in_memory.act(images, state, "wipe the table", seed=7)
    np.testing.assert_array_equal(first.positions, second.positions)


def test_rope_table_stored_in_bfloat16_is_accepted(tiny_dir, tmp_path):
    path = _with_rope_tables(tiny_dir, tmp_path, SINGLE_ROPE, lambda t: t.bfloat16())
    model, *_ = load_checkpoint(path)
    reference, *_ = build_tiny(seed=0)
    torch.testing.assert_close(
        model.vlm.model.language_model.rotary_emb.inv_freq,
        reference.vlm.model.language_model.rotary_emb.inv_freq,
        rtol=0,
        atol=0,
    )


@pytest.mark.parametrize(
    ("layout", "key"),
    [(SINGLE_ROPE, key) for key in SINGLE_ROPE] + [(SPLIT_ROPE, key) for key in SPLIT_ROPE],
)
def test_rope_table_from_another_theta_is_named(tiny_dir, tmp_path, layout, key):
    head_dim = MolmoAct2Config.tiny().text_config.head_dim

    def other_theta(table):
        # rope_theta 10000 instead of the config's 1e6
        return 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))

    path = _with_rope_tables(tiny_dir, tmp_path, layout, other_theta, only=key)
    with pytest.raises(CheckpointError, match=rf"{re.escape(key)} does not match the RoPE table"):
        load_checkpoint(path)


def test_rope_table_of_the_wrong_size_is_named(tiny_dir, tmp_path):
    path = _with_rope_tables(tiny_dir, tmp_path, SINGLE_ROPE, lambda t: torch.cat([t, t]))
    key = "model.transformer.rotary_emb.inv_freq"
    with pytest.raises(CheckpointError, match=rf"shape mismatches: {re.escape(key)}: file \(32,\)"):
        load_checkpoint(path)


def _gated_tiny(per_layer: bool) -> MolmoAct2Model:
    config = MolmoAct2Config.tiny(
        action_expert_depth_gate=True, action_expert_depth_gate_per_layer=per_layer
    )
    model = MolmoAct2Model.random(config, seed=0)
    gate = model.action_expert_depth_gate
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        gate.weight.copy_(torch.randn(gate.weight.shape, generator=generator))
        gate.bias.copy_(torch.randn(gate.bias.shape, generator=generator))
    return model


@pytest.mark.parametrize("per_layer", [False, True], ids=["shared", "per_layer"])
def test_depth_gate_round_trips_in_the_released_layout(tmp_path, per_layer):
    model = _gated_tiny(per_layer)
    config = model.config
    kv_dim, layers = config.llm_kv_dim, config.num_vlm_layers
    gate = model.action_expert_depth_gate
    released = released_state_dict(model)
    gate_keys = {k: tuple(v.shape) for k, v in released.items() if "depth_gate" in k}
    prefix = "model.action_expert_depth_gate."
    if per_layer:
        # nn.ModuleList of nn.Linear(kv_dim, 1), one per layer
        assert gate_keys == {
            f"{prefix}{i}.{name}": shape
            for i in range(layers)
            for name, shape in (("weight", (1, kv_dim)), ("bias", (1,)))
        }
        for i in range(layers):
            assert torch.equal(released[f"{prefix}{i}.weight"], gate.weight[i : i + 1])
            assert torch.equal(released[f"{prefix}{i}.bias"], gate.bias[i : i + 1])
    else:
        # one nn.Linear(kv_dim, 1)
        assert gate_keys == {f"{prefix}weight": (1, kv_dim), f"{prefix}bias": (1,)}
    tokenizer = MolmoAct2Tokenizer.tiny(config.token_layout())
    path = save_checkpoint(tmp_path / "gated", model, tiny_norm_stats(0, ["droid"]), tokenizer)
    assert {k for k in load_file(str(path / "model.safetensors")) if "depth_gate" in k} == set(
        gate_keys
    )
    loaded, loaded_config, *_ = load_checkpoint(path)
    assert loaded_config.action_expert_depth_gate_per_layer is per_layer
    loaded_gate = loaded.action_expert_depth_gate
    assert loaded_gate.per_layer is per_layer
    assert torch.equal(loaded_gate.weight, gate.weight)
    assert torch.equal(loaded_gate.bias, gate.bias)
    back = from_released_state_dict(released, config)
    rope = {"model.transformer.rotary_emb.inv_freq"}  # a computed table, not a module weight
    assert to_released_state_dict(back, config).keys() == released.keys() - rope


def test_gate_layout_that_disagrees_with_the_config_is_named():
    shared = _gated_tiny(per_layer=False)
    per_layer_config = _gated_tiny(per_layer=True).config
    with pytest.raises(CheckpointError, match=r"missing keys: .*action_expert_depth_gate\.0\."):
        model_from_released(per_layer_config, released_state_dict(shared))


def test_cli_writes_and_inspects(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["tiny", "--out", str(out), "--seed", "1", "--embodiment", "yam_bimanual"]) == 0
    stats = json.loads((out / "norm_stats.json").read_text())
    assert list(stats["metadata_by_tag"]) == ["yam_bimanual"]
    assert main(["inspect", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert summary["vlm_layers"] == 3 and summary["norm_tags"] == ["yam_bimanual"]
    (out / "config.json").write_text("{")
    assert main(["inspect", str(out)]) == 1
    assert "config.json: not valid JSON" in capsys.readouterr().err


def test_processor_files_are_written_and_their_token_options_taken(tiny_dir, tmp_path):
    assert json.loads((tiny_dir / "preprocessor_config.json").read_text())["crop_mode"] == "resize"
    path = _copy(tiny_dir, tmp_path)
    # Unset, the released processor puts <im_col> after single-crop rows when the multi-crop
    # option is on.
    (path / "processor_config.json").write_text(
        json.dumps({"image_use_col_tokens": True, "use_single_crop_col_tokens": None})
    )
    policy = load_policy(str(path), "droid", seed=0)
    default = load_policy(str(tiny_dir), "droid", seed=0)
    col = default.tokenizer.token_id("<im_col>")
    assert col not in default._image_tokens and len(default._image_tokens) == 198
    assert policy._image_tokens.count(col) == 14 and len(policy._image_tokens) == 212


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"crop_mode": "overlap-and-resize-c2"}, "crop_mode 'overlap-and-resize-c2'"),
        ({}, "crop_mode 'overlap-and-resize-c2'"),  # the released processor's default
        ({"crop_mode": "resize", "size": {"height": 336, "width": 336}}, "size"),
        ({"crop_mode": "resize", "image_mean": [0.48, 0.46, 0.41]}, "image_mean"),
    ],
)
def test_an_image_processor_we_do_not_implement_is_named(tiny_dir, tmp_path, content, message):
    path = _copy(tiny_dir, tmp_path)
    (path / "preprocessor_config.json").write_text(json.dumps(content))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)
