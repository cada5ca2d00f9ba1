"""Released checkpoint tensor names <-> this project's module keys, and the checks that a file's
tensors fit the model a config.json describes.

The key map (the one place that knows both naming schemes)
----------------------------------------------------------
Our module keeps transformers' Molmo2 names under ``vlm.`` and the expert's released names
under ``action_expert.`` / ``action_expert_depth_gate.``. The released export uses the original
Molmo2 names; the renaming below is the one transformers applies when it loads a released
Molmo2 (``conversion_mapping.py`` entries "molmo2" and "Molmo2TextModel"), run in both
directions:

====================================================  ==============================================
released (file)                                        ours (module)
====================================================  ==============================================
lm_head.weight                                         vlm.lm_head.weight
model.transformer.wte.embedding  (+) .new_embedding    vlm.model.language_model.embed_tokens.weight
                                                       (rows [0, vocab) then the additional rows)
model.transformer.blocks.N.attn_norm / ff_norm         ...language_model.layers.N.input_layernorm /
                                                       post_attention_layernorm
model.transformer.blocks.N.self_attn.att_proj          ...self_attn.q_proj | k_proj | v_proj (fused
                                                       on dim 0 in that order)
model.transformer.blocks.N.self_attn.attn_out          ...self_attn.o_proj
model.transformer.blocks.N.self_attn.q_norm / k_norm   ...self_attn.q_norm / k_norm
model.transformer.blocks.N.mlp.ff_proj                 ...mlp.up_proj | gate_proj (halves on dim 0)
model.transformer.blocks.N.mlp.ff_out                  ...mlp.down_proj
model.transformer.ln_f                                 vlm.model.language_model.norm
model.vision_backbone.image_vit.<x>                    vlm.model.vision_tower.<x>
  .transformer.resblocks.N.attention.wq|wk|wv|wo       .layers.N.self_attn.{q,k,v,o}_proj
  .transformer.resblocks.N.feed_forward.w1|w2          .layers.N.mlp.fc1|fc2
  .transformer.resblocks.N.attention_norm|ffn_norm     .layers.N.layer_norm1|layer_norm2
model.vision_backbone.image_pooling_2d.wq|wk|wv|wo     ...multi_modal_projector.image_pooling_2d.
                                                       {q,k,v,o}_proj
model.vision_backbone.image_projector.w1|w2|w3         ...multi_modal_projector.image_projector.
                                                       gate_proj|down_proj|up_proj
model.action_expert.<x>                                action_expert.<x>
model.action_expert_depth_gate.weight / .bias          action_expert_depth_gate.weight / .bias
  (shared gate, one nn.Linear(kv_dim, 1))              (1, kv_dim) / (1,)
model.action_expert_depth_gate.N.weight / .bias        row N of action_expert_depth_gate.weight /
  (action_expert_depth_gate_per_layer: one per layer)  .bias (the per-layer gates stacked on dim 0)
====================================================  ==============================================

RoPE tables in the file
-----------------------
The released export registers the VLM's RoPE inverse frequencies as persistent buffers, so its
safetensors carry ``model.transformer.rotary_emb.inv_freq`` (or, when the text config sets
``rope_scaling_layers``, ``model.transformer.rotary_embs.default.inv_freq`` and
``...rotary_embs.scaling.inv_freq``). Ours are non-persistent, computed from config.json as in
transformers' Molmo2 (``rotary_emb`` is the table of the scaled layers, ``rotary_emb_unscaled``
the plain one). These keys are accepted but not loaded: after the model is built their values
are compared with the computed tables, so a config.json whose rope_theta or RoPE scaling differs
from the one the weights were exported with fails to load instead of running with wrong positions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor

from molmoact2_policy.model.config import MolmoAct2Config
from molmoact2_policy.model.model import MolmoAct2Model


class CheckpointError(ValueError):
    """A checkpoint directory cannot be loaded; the message names the file or key at fault."""

_TEXT = "vlm.model.language_model."
_VIT = "vlm.model.vision_tower."
_ADAPTER = "vlm.model.multi_modal_projector."

# (our regex, released template) for one-to-one renames, in the table's order.
_RENAMES: list[tuple[str, str]] = [
    (r"^vlm\.lm_head\.(.+)$", r"lm_head.\1"),
    (_TEXT.replace(".", r"\.") + r"layers\.(\d+)\.input_layernorm\.(.+)$",
     r"model.transformer.blocks.\1.attn_norm.\2"),
    (_TEXT.replace(".", r"\.") + r"layers\.(\d+)\.post_attention_layernorm\.(.+)$",
     r"model.transformer.blocks.\1.ff_norm.\2"),
    (_TEXT.replace(".", r"\.") + r"layers\.(\d+)\.self_attn\.o_proj\.(.+)$",
     r"model.transformer.blocks.\1.self_attn.attn_out.\2"),
    (_TEXT.replace(".", r"\.") + r"layers\.(\d+)\.self_attn\.(q_norm|k_norm)\.(.+)$",
     r"model.transformer.blocks.\1.self_attn.\2.\3"),
    (_TEXT.replace(".", r"\.") + r"layers\.(\d+)\.mlp\.down_proj\.(.+)$",
     r"model.transformer.blocks.\1.mlp.ff_out.\2"),
    (_TEXT.replace(".", r"\.") + r"norm\.(.+)$", r"model.transformer.ln_f.\1"),
    (_VIT.replace(".", r"\.") + r"layers\.(\d+)\.self_attn\.q_proj\.(.+)$",
     r"model.vision_backbone.image_vit.transformer.resblocks.\1.attention.wq.\2"),
    (_VIT.replace(".", r"\.") + r"layers\.(\d+)\.self_attn\.k_proj\.(.+)$",
     r"model.vision_backbone.image_vit.transformer.resblocks.\1.attention.wk.\2"),
    (_VIT.replace(".", r"\.") + r"layers\.(\d+)\.self_attn\.v_proj\.(.+)$",
     r"model.vision_backbone.image_vit.transformer.resblocks.\1.attention.wv.\2"),
    (_VIT.replace(".", r"\.") + r"layers\.(\d+)\.self_attn\.o_proj\.(.+)$",
     r"model.vision_backbone.image_vit.transformer.resblocks.\1.attention.wo.\2"),
    (_VIT.replace(".", r"\.") + r"layers\.(\d+)\.mlp\.fc1\.(.+)$",
     r"model.vision_backbone.image_vit.transformer.resblocks.\1.feed_forward.w1.\2"),
    (_VIT.replace(".", r"\.") + r"layers\.(\d+)\.mlp\.fc2\.(.+)$",
     r"model.vision_backbone.image_vit.transformer.resblocks.\1.feed_forward.w2.\2"),
    (_VIT.replace(".", r"\.") + r"layers\.(\d+)\.layer_norm1\.(.+)$",
     r"model.vision_backbone.image_vit.transformer.resblocks.\1.attention_norm.\2"),
    (_VIT.replace(".", r"\.") + r"layers\.(\d+)\.layer_norm2\.(.+)$",
     r"model.vision_backbone.image_vit.transformer.resblocks.\1.ffn_norm.\2"),
    (_VIT.replace(".", r"\.") + r"(positional_embedding|patch_embedding\..+)$",
     r"model.vision_backbone.image_vit.\1"),
    (_ADAPTER.replace(".", r"\.") + r"image_pooling_2d\.q_proj\.(.+)$",
     r"model.vision_backbone.image_pooling_2d.wq.\1"),
    (_ADAPTER.replace(".", r"\.") + r"image_pooling_2d\.k_proj\.(.+)$",
     r"model.vision_backbone.image_pooling_2d.wk.\1"),
    (_ADAPTER.replace(".", r"\.") + r"image_pooling_2d\.v_proj\.(.+)$",
     r"model.vision_backbone.image_pooling_2d.wv.\1"),
    (_ADAPTER.replace(".", r"\.") + r"image_pooling_2d\.o_proj\.(.+)$",
     r"model.vision_backbone.image_pooling_2d.wo.\1"),
    (_ADAPTER.replace(".", r"\.") + r"image_projector\.gate_proj\.(.+)$",
     r"model.vision_backbone.image_projector.w1.\1"),
    (_ADAPTER.replace(".", r"\.") + r"image_projector\.down_proj\.(.+)$",
     r"model.vision_backbone.image_projector.w2.\1"),
    (_ADAPTER.replace(".", r"\.") + r"image_projector\.up_proj\.(.+)$",
     r"model.vision_backbone.image_projector.w3.\1"),
    (r"^action_expert\.(.+)$", r"model.action_expert.\1"),
    # The shared gate only; the per-layer rows are split/stacked by the functions below.
    (r"^action_expert_depth_gate\.(.+)$", r"model.action_expert_depth_gate.\1"),
]
_COMPILED = [(re.compile(pattern), template) for pattern, template in _RENAMES]
_TEXT_RE = _TEXT.replace(".", r"\.")
_FUSED_QKV = re.compile(_TEXT_RE + r"layers\.(\d+)\.self_attn\.([qkv])_proj\.(.+)$")
_FUSED_MLP = re.compile(_TEXT.replace(".", r"\.") + r"layers\.(\d+)\.mlp\.(up|gate)_proj\.(.+)$")
_EMBED = _TEXT + "embed_tokens.weight"
_RELEASED_QKV = re.compile(r"^model\.transformer\.blocks\.(\d+)\.self_attn\.att_proj\.(.+)$")
_RELEASED_MLP = re.compile(r"^model\.transformer\.blocks\.(\d+)\.mlp\.ff_proj\.(.+)$")
_RELEASED_WTE = ("model.transformer.wte.embedding", "model.transformer.wte.new_embedding")
_GATE = "action_expert_depth_gate."
_RELEASED_GATE_ROW = re.compile(r"^model\.action_expert_depth_gate\.(\d+)\.(weight|bias)$")
_ROPE = _TEXT + "rotary_emb.inv_freq"
_ROPE_UNSCALED = _TEXT + "rotary_emb_unscaled.inv_freq"
# released key -> our buffer holding the same table (see "RoPE tables in the file")
_RELEASED_ROPE = {
    "model.transformer.rotary_emb.inv_freq": _ROPE,
    "model.transformer.rotary_embs.scaling.inv_freq": _ROPE,
    "model.transformer.rotary_embs.default.inv_freq": _ROPE_UNSCALED,
}


def _is_per_layer_gate(key: str, config: MolmoAct2Config) -> bool:
    return key.startswith(_GATE) and config.action_expert_depth_gate_per_layer


def _rename_to_released(key: str) -> str | None:
    for pattern, template in _COMPILED:
        if pattern.match(key):
            return pattern.sub(template, key)
    return None


def to_released_state_dict(
    state: Mapping[str, Tensor], config: MolmoAct2Config
) -> dict[str, Tensor]:
    """Our module's state dict -> released key names (fused q/k/v, up/gate, split embedding)."""
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    mlp: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, tensor in state.items():
        if key == _EMBED:
            vocab = config.text_config.vocab_size
            out[_RELEASED_WTE[0]] = tensor[:vocab]
            out[_RELEASED_WTE[1]] = tensor[vocab:]
        elif match := _FUSED_QKV.match(key):
            qkv.setdefault((match[1], match[3]), {})[match[2]] = tensor
        elif match := _FUSED_MLP.match(key):
            mlp.setdefault((match[1], match[3]), {})[match[2]] = tensor
        elif _is_per_layer_gate(key, config):
            name = key[len(_GATE) :]
            for row in range(tensor.shape[0]):
                out[f"model.{_GATE}{row}.{name}"] = tensor[row : row + 1]
        elif (released := _rename_to_released(key)) is not None:
            out[released] = tensor
        else:
            raise CheckpointError(f"no released name for module key {key!r}")
    for (layer, suffix), parts in qkv.items():
        fused = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
        out[f"model.transformer.blocks.{layer}.self_attn.att_proj.{suffix}"] = fused
    for (layer, suffix), parts in mlp.items():
        fused = torch.cat([parts["up"], parts["gate"]], dim=0)
        out[f"model.transformer.blocks.{layer}.mlp.ff_proj.{suffix}"] = fused
    return out


def from_released_state_dict(
    released: Mapping[str, Tensor], config: MolmoAct2Config
) -> dict[str, Tensor]:
    """Released key names -> our module's keys; call only after ``check_released_keys``."""
    reverse = _reverse_rename_table(config)
    text = config.text_config
    q_dim = text.num_attention_heads * text.head_dim
    kv_dim = text.num_key_value_heads * text.head_dim
    out: dict[str, Tensor] = {}
    gate_rows: dict[str, dict[int, Tensor]] = {}
    for key in released:
        if key in _RELEASED_WTE or key in _RELEASED_ROPE:
            continue  # read separately (the embedding) or only compared (the RoPE tables)
        tensor = released[key]
        if match := _RELEASED_QKV.match(key):
            q, k, v = torch.split(tensor, [q_dim, kv_dim, kv_dim], dim=0)
            prefix = f"{_TEXT}layers.{match[1]}.self_attn."
            out[f"{prefix}q_proj.{match[2]}"] = q
            out[f"{prefix}k_proj.{match[2]}"] = k
            out[f"{prefix}v_proj.{match[2]}"] = v
        elif match := _RELEASED_MLP.match(key):
            up, gate = torch.chunk(tensor, 2, dim=0)
            prefix = f"{_TEXT}layers.{match[1]}.mlp."
            out[f"{prefix}up_proj.{match[2]}"] = up
            out[f"{prefix}gate_proj.{match[2]}"] = gate
        elif match := _RELEASED_GATE_ROW.match(key):
            gate_rows.setdefault(match[2], {})[int(match[1])] = tensor
        else:
            out[reverse[key]] = tensor
    out[_EMBED] = _joined_embedding(released)
    for name, rows in gate_rows.items():
        out[_GATE + name] = torch.cat([rows[row] for row in sorted(rows)], dim=0)
    return out


def _joined_embedding(released: Mapping[str, Tensor]) -> Tensor:
    """The two released embedding tables as one, written in place when the source can.

    A ``WeightSource`` fills slices of the final tensor directly, so the 4B model's 0.8 GB
    table is never held twice.
    """
    base, extra = _RELEASED_WTE
    read_into = getattr(released, "read_into", None)
    if read_into is None:
        return torch.cat([released[base], released[extra]], dim=0)
    shapes = released.shapes()
    rows = shapes[base][0]
    out = torch.empty(
        (rows + shapes[extra][0], *shapes[base][1:]),
        dtype=released.target_dtype(base),
        device=released.device,
    )
    read_into(base, out[:rows])
    read_into(extra, out[rows:])
    return out


def _reverse_rename_table(config: MolmoAct2Config) -> dict[str, str]:
    """released key -> our key, for the one-to-one renames of a model built from ``config``."""
    with torch.device("meta"):
        skeleton = MolmoAct2Model(config)
    table = {}
    for key in skeleton.state_dict():
        if _FUSED_QKV.match(key) or _FUSED_MLP.match(key) or _is_per_layer_gate(key, config):
            continue
        released = _rename_to_released(key)
        if released is not None:
            table[released] = key
    return table


def expected_released_shapes(model: MolmoAct2Model) -> dict[str, tuple[int, ...]]:
    """Released key -> shape for every tensor ``model`` needs."""
    meta = {
        key: torch.empty(value.shape, device="meta") for key, value in model.state_dict().items()
    }
    return {key: tuple(t.shape) for key, t in to_released_state_dict(meta, model.config).items()}


def released_rope_keys(config: MolmoAct2Config) -> dict[str, str]:
    """Released RoPE buffer name -> our buffer, for the module the released class builds.

    With ``rope_scaling_layers`` unset (every layer scaled alike; transformers lists them all)
    the released text model has one ``rotary_emb``; otherwise ``rotary_embs.scaling`` (the
    listed layers) and ``rotary_embs.default`` (the rest).
    """
    text = config.text_config
    layers = list(text.rope_scaling_layers or range(text.num_hidden_layers))
    if layers == list(range(text.num_hidden_layers)):
        return {"model.transformer.rotary_emb.inv_freq": _ROPE}
    return {
        "model.transformer.rotary_embs.scaling.inv_freq": _ROPE,
        "model.transformer.rotary_embs.default.inv_freq": _ROPE_UNSCALED,
    }


def released_rope_tables(model: MolmoAct2Model) -> dict[str, Tensor]:
    """The persistent RoPE buffers the released model saves, from our computed tables (fp32)."""
    buffers = dict(model.named_buffers())
    return {
        key: buffers[ours].detach().to(torch.float32)
        for key, ours in released_rope_keys(model.config).items()
    }


def released_state_dict(model: MolmoAct2Model) -> dict[str, Tensor]:
    """Every tensor the released model's state dict holds, under its names."""
    out = to_released_state_dict(model.state_dict(), model.config)
    out.update(released_rope_tables(model))
    return out


def _computed_table_shapes(model: MolmoAct2Model) -> dict[str, tuple[int, ...]]:
    """Released RoPE key -> shape of the table ``model`` computes for it."""
    buffers = dict(model.named_buffers())
    return {
        key: tuple(buffers[ours].shape)
        for key, ours in released_rope_keys(model.config).items()
        if ours in buffers
    }


def check_released_keys(
    released: Mapping[str, Tensor], model: MolmoAct2Model, source: str = "checkpoint"
) -> None:
    """Raise CheckpointError naming missing / unexpected keys and shape mismatches.

    The released RoPE tables may be present (not required); their values are checked by
    ``check_rope_tables`` once the model's own tables exist.
    """
    expected = expected_released_shapes(model)
    optional = _computed_table_shapes(model)
    shapes = {**optional, **expected}
    if hasattr(released, "shapes"):  # a WeightSource: the headers, no tensor data
        stored = dict(released.shapes())
        dtypes = {key: released.stored_dtype(key) for key in stored}
    else:
        stored = {key: tuple(tensor.shape) for key, tensor in released.items()}
        dtypes = {key: tensor.dtype for key, tensor in released.items()}
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(shapes))
    wrong = [
        f"{key}: file {stored[key]} vs model {shapes[key]}"
        for key in sorted(set(shapes) & set(stored))
        if stored[key] != shapes[key]
    ]
    # Every weight and table is floating point; an integer or bool tensor under a weight's name
    # used to reach load_state_dict, which failed with torch's "Only Tensors of floating point
    # ... can require gradients" deep inside the copy.
    not_float = [
        f"{key}: {dtypes[key]}"
        for key in sorted(set(shapes) & set(stored))
        if not dtypes[key].is_floating_point
    ]
    problems = []
    if missing:
        problems.append("missing keys: " + ", ".join(_clip(missing)))
    if unexpected:
        problems.append("unexpected keys: " + ", ".join(_clip(unexpected)))
    if wrong:
        problems.append("shape mismatches: " + "; ".join(_clip(wrong)))
    if not_float:
        problems.append("not floating point: " + "; ".join(_clip(not_float)))
    if problems:
        raise CheckpointError(f"{source}: " + " | ".join(problems))


def check_rope_tables(
    model: MolmoAct2Model, released: Mapping[str, Tensor], source: str = "checkpoint"
) -> None:
    """Raise CheckpointError naming a released RoPE table that differs from the computed one.

    Compared in fp32. A table the file stores in half precision is the computed one rounded
    once, so the tolerance is that dtype's epsilon; a different rope_theta or scaling moves the
    frequencies by far more.
    """
    buffers = dict(model.named_buffers())
    for key, ours in released_rope_keys(model.config).items():
        if key not in released or ours not in buffers:
            continue
        # The file's own values and precision, not a copy already cast to the target dtype.
        read_stored = getattr(released, "read_stored", None)
        stored = released[key] if read_stored is None else read_stored(key)
        computed = buffers[ours].detach().to(device="cpu", dtype=torch.float32)
        if not stored.is_floating_point():
            raise CheckpointError(f"{source}: {key} has dtype {stored.dtype}, not a float table")
        rtol = max(1e-5, torch.finfo(stored.dtype).eps)
        values = stored.detach().to(device="cpu", dtype=torch.float32)
        if values.shape != computed.shape or not torch.allclose(
            values, computed, rtol=rtol, atol=0.0
        ):
            if values.shape == computed.shape:
                worst = ((values - computed).abs() / computed.abs()).max().item()
                detail = f"largest relative difference {worst:.3g}"
            else:
                detail = f"shape {tuple(values.shape)} vs {tuple(computed.shape)}"
            raise CheckpointError(
                f"{source}: {key} does not match the RoPE table computed from config.json "
                f"({detail}); the checkpoint was exported with a different rope_theta or RoPE "
                "scaling than its config.json describes"
            )


def _clip(items: Sequence[str], limit: int = 12) -> list[str]:
    return list(items[:limit]) + ([f"... {len(items) - limit} more"] if len(items) > limit else [])


def load_released_into(
    model: MolmoAct2Model, released: Mapping[str, Tensor], source: str = "checkpoint"
) -> None:
    check_released_keys(released, model, source)
    internal = from_released_state_dict(released, model.config)
    model.load_state_dict(internal, strict=True)
    check_rope_tables(model, released, source)


_RELEASED_TEXT_BLOCK = re.compile(r"^model\.transformer\.blocks\.(\d+)\.")


def check_layer_counts(
    config: MolmoAct2Config, names: Iterable[str], source: str = "checkpoint"
) -> None:
    """Refuse a config.json with more VLM layers than the file has blocks, from the names alone.

    Every layer is a module tree even on the meta device: 10k layers took 90 s and 1.6 GB
    before the key check named the fault, a million would exhaust the host. The expert has one
    block per VLM layer (the config checks that), so one count bounds both.
    """
    blocks = {int(match[1]) for name in names if (match := _RELEASED_TEXT_BLOCK.match(name))}
    have = max(blocks) + 1 if blocks else 0
    want = config.text_config.num_hidden_layers
    if want > have:
        raise CheckpointError(
            f"{source}: config.json's text_config.num_hidden_layers={want} but the weights hold "
            f"{have} transformer blocks"
        )


def model_from_released(
    config: MolmoAct2Config, released: Mapping[str, Tensor], source: str = "checkpoint"
) -> MolmoAct2Model:
    """A model whose parameters are the checkpoint's tensors, with no random init first.

    The module tree is built on the meta device (shapes only) and the loaded tensors are
    assigned in place of its parameters, so the 4B model is never allocated twice nor filled
    with random numbers that are thrown away. Parameters keep the device and dtype ``released``
    yields: a ``weights_io.WeightSource`` reads each tensor straight into its target.
    """
    check_layer_counts(config, released, source)
    with torch.device("meta"):
        model = MolmoAct2Model(config)
    check_released_keys(released, model, source)
    internal = from_released_state_dict(released, config)
    model.load_state_dict(internal, strict=True, assign=True)
    del internal
    _materialize_computed_buffers(model)
    check_rope_tables(model, released, source)
    return model


def _materialize_computed_buffers(model: MolmoAct2Model) -> None:
    """Recompute the buffers derived from the config (RoPE frequency tables) after a meta build.

    They are never loaded from the file (see "RoPE tables in the file"), so transformers' own
    weight init for the module that owns them recomputes them; a meta tensor left anywhere would
    fail much later, mid-forward.
    """
    for module in model.vlm.modules():
        meta = [name for name, buffer in module.named_buffers(recurse=False) if buffer.is_meta]
        for name in meta:
            buffer = getattr(module, name)
            persistent = name not in module._non_persistent_buffers_set
            module.register_buffer(name, torch.empty_like(buffer, device="cpu"), persistent)
        if meta:
            model.vlm._init_weights(module)
    left = [
        name
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]
        if tensor.is_meta
    ]
    if left:
        raise CheckpointError(f"tensors not restored after loading: {', '.join(_clip(left))}")
