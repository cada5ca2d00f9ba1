"""Checkpoints in the released HF layout: config.json, model.safetensors (or shards plus
model.safetensors.index.json), norm_stats.json and tokenizer files. safetensors only, no pickle.

The discrete ("fast") mode also needs the OpenFAST action tokenizer: it lives in the
subdirectory ``fast_tokenizer/`` (``FAST_TOKENIZER_DIR``: ``tokenizer.json`` with the BPE model
and ``fast_settings.json`` with scale, padded width and coefficient range, see ``fast.py``). Its
ids 0..V-1 are the VLM's ``<action_0>..<action_{V-1}>``, so V must not exceed the config's
``num_action_tokens``. It is optional: ``load_fast_tokenizer`` reads it when fast mode asks for
it, and a checkpoint without it still serves the flow and Think modes. The tiny preset carries
one (``tiny_fast_tokenizer``) trained on smooth synthetic normalised chunks.

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

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from molmoact2_policy.embodiments import EMBODIMENTS, get_embodiment
from molmoact2_policy.model.config import ConfigError, MolmoAct2Config
from molmoact2_policy.model.fast import FastActionTokenizer
from molmoact2_policy.model.normalize import NormStats, NormStatsError, synthetic_group_stats
from molmoact2_policy.model.tokenizer import MolmoAct2Tokenizer, TokenizerError

if TYPE_CHECKING:
    from molmoact2_policy.model.model import MolmoAct2Model

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
FAST_TOKENIZER_DIR = "fast_tokenizer"
PREPROCESSOR_FILE = "preprocessor_config.json"  # the image processor's options
PROCESSOR_FILE = "processor_config.json"  # the processor's image-token options


class CheckpointError(ValueError):
    """A checkpoint directory cannot be loaded; the message names the file or key at fault."""


# ---------------------------------------------------------------------------- key map
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
    for key, tensor in released.items():
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
        elif key in _RELEASED_WTE or key in _RELEASED_ROPE:
            continue
        else:
            out[reverse[key]] = tensor
    out[_EMBED] = torch.cat([released[_RELEASED_WTE[0]], released[_RELEASED_WTE[1]]], dim=0)
    for name, rows in gate_rows.items():
        out[_GATE + name] = torch.cat([rows[row] for row in sorted(rows)], dim=0)
    return out


def _reverse_rename_table(config: MolmoAct2Config) -> dict[str, str]:
    """released key -> our key, for the one-to-one renames of a model built from ``config``."""
    from molmoact2_policy.model.model import MolmoAct2Model

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


def _computed_table_shapes(model: MolmoAct2Model) -> dict[str, tuple[int, ...]]:
    """Released RoPE key -> shape of the table ``model`` computes for it."""
    buffers = dict(model.named_buffers())
    return {
        key: tuple(buffers[ours].shape) for key, ours in _RELEASED_ROPE.items() if ours in buffers
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
    missing = sorted(set(expected) - set(released))
    unexpected = sorted(set(released) - set(shapes))
    wrong = [
        f"{key}: file {tuple(released[key].shape)} vs model {shapes[key]}"
        for key in sorted(set(shapes) & set(released))
        if tuple(released[key].shape) != shapes[key]
    ]
    problems = []
    if missing:
        problems.append("missing keys: " + ", ".join(_clip(missing)))
    if unexpected:
        problems.append("unexpected keys: " + ", ".join(_clip(unexpected)))
    if wrong:
        problems.append("shape mismatches: " + "; ".join(_clip(wrong)))
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
    for key, ours in _RELEASED_ROPE.items():
        if key not in released or ours not in buffers:
            continue
        stored = released[key]
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


def model_from_released(
    config: MolmoAct2Config, released: Mapping[str, Tensor], source: str = "checkpoint"
) -> MolmoAct2Model:
    """A model whose parameters are the checkpoint's tensors, with no random init first.

    The module tree is built on the meta device (shapes only) and the loaded tensors are
    assigned in place of its parameters, so the 4B model is never allocated twice nor filled
    with random numbers that are thrown away. Parameters keep the file's dtype until the caller
    converts them.
    """
    from molmoact2_policy.model.model import MolmoAct2Model

    with torch.device("meta"):
        model = MolmoAct2Model(config)
    check_released_keys(released, model, source)
    internal = from_released_state_dict(released, config)
    model.load_state_dict(internal, strict=True, assign=True)
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


# ---------------------------------------------------------------------------- files
def save_checkpoint(
    path: str | Path,
    model: MolmoAct2Model,
    norm_stats: NormStats,
    tokenizer: MolmoAct2Tokenizer,
    *,
    max_shard_bytes: int | None = None,
    fast_tokenizer: FastActionTokenizer | None = None,
) -> Path:
    """Write an HF-layout directory; shard the weights when they exceed ``max_shard_bytes``.

    ``fast_tokenizer`` (optional) goes to ``FAST_TOKENIZER_DIR`` for the discrete mode.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = model.config
    (path / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    tensors = {
        key: value.detach().to("cpu").contiguous().clone()
        for key, value in sorted(model.released_state_dict().items())
    }
    _write_weights(path, tensors, max_shard_bytes)
    norm_stats.save(path / config.norm_stats_filename)
    tokenizer.save(path)
    _write_processor_files(path, config)
    if fast_tokenizer is not None:
        check_fast_tokenizer(fast_tokenizer, config, source="fast_tokenizer")
        fast_tokenizer.save(path / FAST_TOKENIZER_DIR)
    return path


def _write_weights(path: Path, tensors: dict[str, Tensor], max_shard_bytes: int | None) -> None:
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    metadata = {"format": "pt"}
    if max_shard_bytes is None or total <= max_shard_bytes:
        save_file(tensors, str(path / WEIGHTS_FILE), metadata=metadata)
        return
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    weight_map = {}
    for index, shard in enumerate(shards):
        name = f"model-{index + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path / name), metadata=metadata)
        weight_map.update(dict.fromkeys(shard, name))
    index_data = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / WEIGHTS_INDEX_FILE).write_text(json.dumps(index_data, indent=2) + "\n")


def _implemented_preprocessor(config: MolmoAct2Config) -> dict[str, Any]:
    """The released image-processor options of the one image path ``preprocess`` implements."""
    vision = config.vlm.vision_config
    size = int(vision.image_size[0])
    return {
        "crop_mode": "resize",
        "size": {"height": size, "width": size},
        "patch_size": int(vision.patch_size),
        "pooling_size": [2, 2],
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }


def _write_processor_files(path: Path, config: MolmoAct2Config) -> None:
    """The released export's processor files, describing the one image path we implement."""
    preprocessor = _implemented_preprocessor(config)
    processor = {
        "image_use_col_tokens": config.image_use_col_tokens,
        "use_single_crop_col_tokens": config.use_single_crop_col_tokens,
        "use_single_crop_start_token": config.use_single_crop_start_token,
    }
    (path / PREPROCESSOR_FILE).write_text(json.dumps(preprocessor, indent=2) + "\n")
    (path / PROCESSOR_FILE).write_text(json.dumps(processor, indent=2) + "\n")


def _read_json_object(file: Path) -> dict[str, Any] | None:
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{file}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file}: expected a JSON object")
    return data


def apply_processor_files(path: str | Path, config: MolmoAct2Config) -> None:
    """Check the checkpoint's image processor against ours and take its image-token options.

    Only crop mode "resize" (one 378x378 crop per camera, what the released robot checkpoints
    use) is implemented; the processor's own default is multi-crop, so a file that names no
    crop mode is refused too. Absent files leave the config as it is.
    """
    path = Path(path)
    preprocessor = _read_json_object(path / PREPROCESSOR_FILE)
    if preprocessor is not None:
        where = path / PREPROCESSOR_FILE
        expected = _implemented_preprocessor(config)
        defaults = {"crop_mode": "overlap-and-resize-c2"}  # the released processor's
        for key, want in expected.items():
            have = preprocessor.get(key, defaults.get(key, want))
            if key in ("image_mean", "image_std") and isinstance(have, (int, float)):
                have = [have] * 3
            same = have == want
            if isinstance(want, list) and isinstance(have, list) and len(have) == len(want):
                same = all(
                    isinstance(a, (int, float)) and abs(a - b) < 1e-6
                    for a, b in zip(have, want, strict=True)
                )
            if not same:
                raise CheckpointError(
                    f"{where}: {key} {have!r} is not supported (this policy implements {want!r})"
                )
    processor = _read_json_object(path / PROCESSOR_FILE)
    if processor is not None:
        flags = {}
        for key, default in (
            ("image_use_col_tokens", True),
            ("use_single_crop_start_token", True),
            ("use_single_crop_col_tokens", None),
        ):
            value = processor.get(key, default)
            if value is not None and not isinstance(value, bool):
                raise CheckpointError(f"{path / PROCESSOR_FILE}: {key} must be true or false")
            flags[key] = value
        config.image_use_col_tokens = flags["image_use_col_tokens"]
        config.use_single_crop_start_token = flags["use_single_crop_start_token"]
        # Unset, the released processor falls back to the multi-crop column option.
        single = flags["use_single_crop_col_tokens"]
        config.use_single_crop_col_tokens = (
            flags["image_use_col_tokens"] if single is None else single
        )


def read_config(path: str | Path) -> MolmoAct2Config:
    config_path = Path(path) / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: file not found")
    try:
        data = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{config_path}: not valid JSON ({error})") from None
    try:
        return MolmoAct2Config.from_dict(data)
    except ConfigError as error:
        raise CheckpointError(f"{config_path}: {error}") from None


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """All tensors of a checkpoint (single file or index + shards), on CPU."""
    path = Path(path)
    index_path = path / WEIGHTS_INDEX_FILE
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise CheckpointError(f"{index_path}: malformed index ({error})") from None
        tensors: dict[str, Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            shard_tensors = _load_safetensors(path / shard)
            tensors.update(shard_tensors)
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise CheckpointError(
                f"{index_path}: keys listed but absent from shards: {missing[:5]}"
            )
        return tensors
    single = path / WEIGHTS_FILE
    if not single.is_file():
        raise CheckpointError(f"{path}: neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX_FILE} found")
    return _load_safetensors(single)


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: unreadable safetensors ({error})") from None


def load_checkpoint(
    path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[MolmoAct2Model, MolmoAct2Config, NormStats, MolmoAct2Tokenizer]:
    """Load a checkpoint directory; every failure is a CheckpointError naming its cause."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory")
    config = read_config(path)
    try:
        norm_stats = NormStats.from_file(path / config.norm_stats_filename)
    except NormStatsError as error:
        raise CheckpointError(str(error)) from None
    try:
        tokenizer = MolmoAct2Tokenizer.from_directory(path)
        config.check_tokenizer(tokenizer)
    except (TokenizerError, ConfigError) as error:
        raise CheckpointError(f"{path}: {error}") from None
    apply_processor_files(path, config)
    released = read_weights(path)
    model = model_from_released(config, released, source=str(path))
    del released  # the model holds the tensors now; the dtype/device move may free the originals
    model = model.to_inference(device, dtype)
    return model, config, norm_stats, tokenizer


def check_fast_tokenizer(
    fast_tokenizer: FastActionTokenizer, config: MolmoAct2Config, source: str
) -> None:
    """Its vocabulary must fit the ``<action_k>`` family and its width ``max_action_dim``."""
    if fast_tokenizer.vocab_size > config.num_action_tokens:
        raise CheckpointError(
            f"{source}: FAST vocabulary of {fast_tokenizer.vocab_size} ids does not fit the "
            f"config's num_action_tokens {config.num_action_tokens}"
        )
    if fast_tokenizer.action_dim > config.max_action_dim:
        raise CheckpointError(
            f"{source}: FAST width {fast_tokenizer.action_dim} > max_action_dim "
            f"{config.max_action_dim}"
        )


def load_fast_tokenizer(path: str | Path, config: MolmoAct2Config) -> FastActionTokenizer:
    """The checkpoint's FAST action tokenizer (``FAST_TOKENIZER_DIR``), checked against ``config``.

    A checkpoint without one cannot run the discrete mode; the error names the directory.
    """
    directory = Path(path) / FAST_TOKENIZER_DIR
    if not directory.is_dir():
        raise CheckpointError(
            f"{directory}: not found; mode 'fast' needs the OpenFAST action tokenizer in the "
            f"checkpoint's {FAST_TOKENIZER_DIR}/ subdirectory (use mode 'flow' without it)"
        )
    try:
        fast_tokenizer = FastActionTokenizer.from_directory(directory)
    except (FileNotFoundError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{directory}: {error}") from None
    except Exception as error:  # the Rust tokenizer raises plain Exception subclasses
        raise CheckpointError(f"{directory}: unreadable FAST tokenizer ({error})") from None
    check_fast_tokenizer(fast_tokenizer, config, source=str(directory))
    return fast_tokenizer


# ---------------------------------------------------------------------------- tiny preset
def tiny_norm_stats(seed: int, embodiments: Sequence[str]) -> NormStats:
    """Per-embodiment synthetic stats; a tag's numbers do not depend on which others are listed."""
    order = list(EMBODIMENTS)
    tags = {}
    for name in embodiments:
        spec = get_embodiment(name)
        base = seed * 1000 + order.index(name) * 10
        tags[spec.norm_tag] = {
            "state": synthetic_group_stats(spec.state_dim, base + 1),
            "action": synthetic_group_stats(spec.action_dim, base + 2),
        }
    return NormStats(norm_mode="q01_q99", tags=tags)


def build_tiny(
    seed: int = 0, embodiments: Sequence[str] | None = None
) -> tuple[MolmoAct2Model, MolmoAct2Config, NormStats, MolmoAct2Tokenizer]:
    """The tiny preset in memory, deterministic from ``seed``."""
    from molmoact2_policy.model.model import MolmoAct2Model

    names = list(EMBODIMENTS) if embodiments is None else list(embodiments)
    config = MolmoAct2Config.tiny()
    model = MolmoAct2Model.random(config, seed)
    tokenizer = MolmoAct2Tokenizer.tiny(config.token_layout())
    return model, config, tiny_norm_stats(seed, names), tokenizer


TINY_FAST_VOCAB = 256
TINY_FAST_HORIZONS = (10, 15, 30)  # every embodiment's chunk length


def tiny_fast_width() -> int:
    """The tiny FAST tokenizer pads to the widest embodiment (14), not to max_action_dim 32.

    Fewer padded coefficients per chunk keep an untrained tiny model's token runs (which may
    use one-coefficient tokens throughout) short enough for tests on a CPU.
    """
    return max(spec.action_dim for spec in EMBODIMENTS.values())


def tiny_fast_chunks(count_per_horizon: int = 60, seed: int = 0) -> list[np.ndarray]:
    """Smooth synthetic normalised chunks (offset + two low sines per dim, |x| < 1)."""
    rng = np.random.default_rng(seed)
    dims = tiny_fast_width()
    chunks = []
    for horizon in TINY_FAST_HORIZONS:
        t = np.linspace(0.0, 1.0, horizon)[:, None]
        for _ in range(count_per_horizon):
            chunk = rng.uniform(-0.3, 0.3, (1, dims)) + np.zeros((horizon, dims))
            for harmonic in (1, 2):
                amplitude = rng.uniform(-0.3, 0.3, (1, dims))
                frequency = harmonic * rng.uniform(0.2, 0.8, (1, dims))
                phase = rng.uniform(0.0, 2 * np.pi, (1, dims))
                chunk += amplitude * np.sin(2 * np.pi * frequency * t + phase)
            chunks.append(chunk)
    return chunks


@lru_cache(maxsize=1)
def _tiny_fast_tokenizer_cached() -> FastActionTokenizer:
    return FastActionTokenizer.train(
        tiny_fast_chunks(), vocab_size=TINY_FAST_VOCAB, scale=10.0, action_dim=tiny_fast_width()
    )


def tiny_fast_tokenizer() -> FastActionTokenizer:
    """The tiny preset's FAST tokenizer: 256 ids, scale 10, width 14; the same in every process.

    It is data, not weights, so it does not depend on the weight seed. Trained once per process
    (a fraction of a second) and shared: the tokenizer is not modified after training.
    """
    return _tiny_fast_tokenizer_cached()


def write_tiny_checkpoint(
    path: str | Path,
    *,
    seed: int = 0,
    embodiments: Sequence[str] | None = None,
    max_shard_bytes: int | None = None,
) -> Path:
    """Write the tiny preset (a few MB) as an HF-layout directory; deterministic from ``seed``.

    Includes the tiny FAST tokenizer (``FAST_TOKENIZER_DIR``), so every mode can load it.
    """
    model, _, norm_stats, tokenizer = build_tiny(seed, embodiments)
    return save_checkpoint(
        path,
        model,
        norm_stats,
        tokenizer,
        max_shard_bytes=max_shard_bytes,
        fast_tokenizer=tiny_fast_tokenizer(),
    )


# ---------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """``molmoact2-checkpoint tiny --out DIR`` / ``molmoact2-checkpoint inspect DIR``."""
    parser = argparse.ArgumentParser(
        prog="molmoact2-checkpoint", description="Write or inspect MolmoAct2 checkpoints."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("tiny", help="write a tiny random checkpoint (tests, demos)")
    tiny.add_argument("--out", required=True, help="output directory")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument(
        "--embodiment", action="append", choices=sorted(EMBODIMENTS),
        help="norm-stats tag to include (repeatable; default: all)",
    )
    tiny.add_argument("--max-shard-mb", type=float, default=None, help="shard above this size")
    inspect = sub.add_parser("inspect", help="load a checkpoint and print a summary")
    inspect.add_argument("path")
    args = parser.parse_args(argv)
    try:
        if args.command == "tiny":
            shard = None if args.max_shard_mb is None else int(args.max_shard_mb * 1e6)
            out = write_tiny_checkpoint(
                args.out, seed=args.seed, embodiments=args.embodiment, max_shard_bytes=shard
            )
            size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
            sys.stdout.write(f"wrote {out} ({size / 1e6:.1f} MB)\n")
        else:
            model, config, stats, tokenizer = load_checkpoint(args.path)
            summary: dict[str, Any] = {
                "parameters": sum(p.numel() for p in model.parameters()),
                "vlm_layers": config.num_vlm_layers,
                "expert_width": config.action_expert.hidden_size,
                "norm_mode": stats.norm_mode,
                "norm_tags": sorted(stats.tags),
                "vocab": tokenizer.vocab_size,
                "fast_tokenizer": None,
            }
            if (Path(args.path) / FAST_TOKENIZER_DIR).is_dir():
                fast = load_fast_tokenizer(args.path, config)
                summary["fast_tokenizer"] = {"vocab": fast.vocab_size, "scale": fast.scale}
            sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    except CheckpointError as error:
        sys.stderr.write(f"error: {error}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
