"""The released ``config.json``: every key the released ``MolmoAct2Config`` writes, and what each
one means here.

The released configuration classes (LeRobot's copy of the Hugging Face remote code,
``src/lerobot/policies/molmoact2/hf_model/configuration_molmoact2.py``) are transformers
``PretrainedConfig`` subclasses: ``MolmoAct2Config`` (``model_type`` "molmoact2") with the
sub-configs ``vit_config`` (``MolmoAct2VitConfig``, "molmoact2"), ``adapter_config``
(``MolmoAct2AdapterConfig``, "molmoact2"), ``text_config`` (``MolmoAct2TextConfig``,
"molmoact2_text") and ``action_expert_config`` (``MolmoAct2ActionExpertConfig``,
"molmoact2_action_expert", which drops ``max_action_horizon``/``max_action_dim`` when
serialised: the parent's values win). ``PretrainedConfig.to_dict`` adds its own base keys to the
top level and to every sub-config (``return_dict``, ``dtype``/``torch_dtype``, ``id2label``,
generation defaults, ...); ``save_pretrained`` keeps those only where they differ from the
defaults, and adds ``architectures``, ``transformers_version`` and ``auto_map``.

Every key of a released sub-config has one rule here:

* ``Map``: a value we build from (passed to transformers' ``Molmo2*Config`` under its own name,
  or to the action expert);
* ``Ignore``: changes nothing we compute at inference (dropout rates, weight-init ranges, the
  attention kernel choice, the KV-cache switch);
* ``Require``: only some values are implemented; any other is refused by name with its value,
  never silently run as something else.

Keys outside the rules are what the released class itself would also store and never read:
they are accepted and reported in one warning. A handful of base keys do change behaviour and
are checked (``BASE_KEY_CHECKS``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_LOG = logging.getLogger(__name__)

# model_type of each released class.
TOP_MODEL_TYPE = "molmoact2"
SUB_MODEL_TYPES = {
    "vit_config": "molmoact2",
    "adapter_config": "molmoact2",
    "text_config": "molmoact2_text",
    "action_expert_config": "molmoact2_action_expert",
}
ARCHITECTURES = ["MolmoAct2ForConditionalGeneration"]
AUTO_MAP = {
    "AutoConfig": "configuration_molmoact2.MolmoAct2Config",
    "AutoModelForImageTextToText": "modeling_molmoact2.MolmoAct2ForConditionalGeneration",
}

# PretrainedConfig's own attributes as to_dict writes them: transformers 4.x (with the generation
# defaults it still stored) and 5.x. None of them changes the forward pass of MolmoAct2 except the
# ones in BASE_KEY_CHECKS; eos_token_id is read where the release reads it (the expert's context
# mask) and kept.
GENERATION_DEFAULTS: dict[str, Any] = {
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
}
BASE_DEFAULTS: dict[str, Any] = {
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
    **GENERATION_DEFAULTS,
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
BASE_KEYS = frozenset(
    {
        *BASE_DEFAULTS,
        "torch_dtype",
        "model_type",
        "transformers_version",
        "auto_map",
        "num_labels",
        "_attn_implementation_autoset",
        "_commit_hash",
        "use_cache",
    }
)


def _no_pruned_heads(value: Any) -> str | None:
    return None if not value else "pruned attention heads are not implemented"


def _no_quantization(value: Any) -> str | None:
    return None if value is None else "quantised weights are not implemented"


# Base keys whose value changes what the model computes.
BASE_KEY_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "pruned_heads": _no_pruned_heads,
    "quantization_config": _no_quantization,
}


@dataclass(frozen=True)
class Map:
    """A value we build from, under ``target`` (the released name when None)."""

    target: str | None = None


@dataclass(frozen=True)
class Ignore:
    """Changes nothing we compute; ``why`` says so."""

    why: str


@dataclass(frozen=True)
class Require:
    """Only ``allowed`` values are implemented."""

    allowed: tuple[Any, ...]
    why: str


Rule = Map | Ignore | Require

_DROPOUT = Ignore("dropout is inactive at inference")
_INIT = Ignore("weight initialisation only")
_KERNEL = Ignore("attention kernel choice; same math")
# The released ViT/pooling attention runs in float32 when set (its default): ours too
# (MolmoAct2Config.vit_float32_attention / adapter_float32_attention, vlm.Float32Attention).
_FP32_ATTENTION = Map()

VIT_RULES: dict[str, Rule] = {
    "hidden_size": Map(),
    "intermediate_size": Map(),
    "num_hidden_layers": Map(),
    "num_attention_heads": Map(),
    "num_key_value_heads": Map(),
    "head_dim": Map(),
    "hidden_act": Map(),
    "layer_norm_eps": Map(),
    "image_default_input_size": Map("image_size"),
    "image_patch_size": Map("patch_size"),
    "image_num_pos": Map("num_position_embeddings"),
    "attention_dropout": _DROPOUT,
    "residual_dropout": _DROPOUT,
    "initializer_range": _INIT,
    "float32_attention": _FP32_ATTENTION,
    "attn_implementation": _KERNEL,
}
ADAPTER_RULES: dict[str, Rule] = {
    "vit_layers": Map("vision_feature_layer"),
    "pooling_attention_mask": Map(),  # ours: MolmoAct2Config.pooling_attention_mask
    "hidden_size": Map(),
    "num_attention_heads": Map(),
    "num_key_value_heads": Map(),
    "head_dim": Map(),
    "hidden_act": Map(),
    "intermediate_size": Map(),
    "text_hidden_size": Map(),
    "float32_attention": _FP32_ATTENTION,
    "attention_dropout": _DROPOUT,
    "residual_dropout": _DROPOUT,
    "image_feature_dropout": _DROPOUT,
    "initializer_range": _INIT,
    "attn_implementation": _KERNEL,
}
TEXT_RULES: dict[str, Rule] = {
    "hidden_size": Map(),
    "num_attention_heads": Map(),
    "num_key_value_heads": Map(),
    "head_dim": Map(),
    "vocab_size": Map(),
    "additional_vocab_size": Map(),
    "qkv_bias": Map("attention_bias"),
    "num_hidden_layers": Map(),
    "intermediate_size": Map(),
    "hidden_act": Map(),
    "max_position_embeddings": Map(),
    "rope_theta": Map(),  # with rope_scaling -> transformers' rope_parameters
    "rope_scaling": Map(),
    "rope_scaling_layers": Map(),
    "qk_norm_type": Map(),
    "layer_norm_eps": Map("rms_norm_eps"),
    "norm_after": Map(),
    "use_qk_norm": Require(
        (True,), "transformers' Molmo2 always applies q/k norms (every released Molmo2-ER does)"
    ),
    "embedding_dropout": _DROPOUT,
    "attention_dropout": _DROPOUT,
    "residual_dropout": _DROPOUT,
    "initializer_range": _INIT,
    "use_cache": Ignore("the KV cache is always used"),
    # The released model declares no tied weights, so lm_head is always its own tensor.
    "tie_word_embeddings": Ignore("the released model never ties lm_head to the embedding"),
    "attn_implementation": _KERNEL,
}
EXPERT_RULES: dict[str, Rule] = {
    "hidden_size": Map(),
    "num_layers": Map(),
    "num_heads": Map(),
    "mlp_ratio": Map(),
    "ffn_multiple_of": Map(),
    "timestep_embed_dim": Map(),
    "dropout": Map(),
    "attn_dropout": Map(),
    "context_layer_norm": Map(),
    "qk_norm": Map(),
    "qk_norm_eps": Map(),
    "rope": Map(),
    "causal_attn": Map(),
    # The release drops these when writing and takes the top-level values when reading.
    "max_action_horizon": Ignore("the top-level max_action_horizon is used"),
    "max_action_dim": Ignore("the top-level max_action_dim is used"),
}
# RoPE types whose tables are fixed by the config (the same in the release and transformers).
STATIC_ROPE_TYPES = ("default", "linear")

RULES = {
    "vit_config": VIT_RULES,
    "adapter_config": ADAPTER_RULES,
    "text_config": TEXT_RULES,
    "action_expert_config": EXPERT_RULES,
}


@dataclass
class Translated:
    """One sub-config read through its rules."""

    values: dict[str, Any]  # target name -> value, for every Map rule present
    problems: list[str]  # refused options, each naming key and value
    unknown: list[str]  # keys no rule knows (accepted, reported)


def translate(section: str, data: Mapping[str, Any]) -> Translated:
    """Apply ``RULES[section]`` and the base-key checks to one released sub-config."""
    rules = RULES[section]
    values: dict[str, Any] = {}
    problems = check_base_keys(data, section)
    unknown = []
    expected_type = SUB_MODEL_TYPES[section]
    model_type = data.get("model_type", expected_type)
    # Our own files before this layout carried transformers' names; accept those too.
    if model_type not in (expected_type, _TRANSFORMERS_TYPES.get(section)):
        problems.append(f"{section}.model_type {model_type!r} (expected {expected_type!r})")
    for key, value in data.items():
        rule = rules.get(key)
        if rule is None:
            if key not in BASE_KEYS and key not in BASE_KEY_CHECKS:
                unknown.append(f"{section}.{key}")
        elif isinstance(rule, Map):
            values[rule.target or key] = value
        elif isinstance(rule, Require) and value not in rule.allowed:
            allowed = " or ".join(_json(item) for item in rule.allowed)
            problems.append(f"{section}.{key}={_json(value)} is not implemented ({allowed} "
                            f"only: {rule.why})")
    return Translated(values, problems, unknown)


def check_base_keys(data: Mapping[str, Any], where: str) -> list[str]:
    problems = []
    for key, check in BASE_KEY_CHECKS.items():
        if key in data and (reason := check(data[key])) is not None:
            problems.append(f"{where}.{key}={_json(data[key])} is not implemented ({reason})")
    return problems


def rope_parameters(values: dict[str, Any], where: str = "text_config") -> tuple[dict, list[str]]:
    """The released ``rope_theta`` + ``rope_scaling`` as transformers' ``rope_parameters``."""
    theta = values.pop("rope_theta", 1_000_000.0)  # MolmoAct2TextConfig's default
    scaling = values.pop("rope_scaling", None)
    problems = []
    params: dict[str, Any] = {"rope_type": "default", "rope_theta": float(theta)}
    if scaling is not None:
        if not isinstance(scaling, dict):
            return params, [f"{where}.rope_scaling={_json(scaling)} is not an object"]
        rope_type = scaling.get("rope_type", scaling.get("type", "default"))
        if rope_type not in STATIC_ROPE_TYPES:
            problems.append(
                f"{where}.rope_scaling={_json(scaling)} is not implemented (RoPE type "
                f"{rope_type!r}: only {', '.join(STATIC_ROPE_TYPES)} tables are verified to match)"
            )
        params.update({k: v for k, v in scaling.items() if k != "type"})
        params["rope_type"] = rope_type
    return params, problems


def released_rope_keys(params: Mapping[str, Any]) -> dict[str, Any]:
    """transformers' ``rope_parameters`` back to the released ``rope_theta`` / ``rope_scaling``."""
    scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    if scaling.get("rope_type", "default") == "default" and len(scaling) <= 1:
        scaling_value = None
    else:
        scaling_value = scaling
    return {"rope_theta": float(params.get("rope_theta", 1_000_000.0)),
            "rope_scaling": scaling_value}


def warn_unknown(unknown: list[str]) -> None:
    if unknown:
        _LOG.warning(
            "config.json: keys the released MolmoAct2Config does not define, ignored as it "
            "would ignore them: %s", ", ".join(sorted(unknown))
        )


def _json(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    return repr(value)


# transformers' own model_type names, written by this project before it wrote the released ones.
_TRANSFORMERS_TYPES = {
    "vit_config": "molmo2_vision",
    "adapter_config": "molmo2_adapter",
    "text_config": "molmo2_text",
    "action_expert_config": "molmoact2_action_expert",
}
