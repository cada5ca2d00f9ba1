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
import math
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


# ---------------------------------------------------------------------------- values
# What a number in config.json may be. The sizes build tensors, so a zero, negative, fractional
# or string size would otherwise reach torch (a negative dimension, a division by zero, a
# TypeError mid-build) instead of a refusal naming the key. Every rule accepts the released
# class's defaults (huggingface/lerobot@1116513c,
# src/lerobot/policies/molmoact2/hf_model/configuration_molmoact2.py) and the released sizes.
#
# Upper bounds only where a value sizes an allocation at ``act`` time and no weight tensor's
# shape bounds it (a width that does not match the weights is refused by the key map):
# * max_action_horizon (released 30): the expert's RoPE table, the noise, and Think's free
#   decoding budget of 16 tokens per step (a static KV cache of 16 x H tokens: 16k at 1024,
#   about 2.4 GB for the released 4B in bf16). 1024 steps is a 20 s chunk at 50 Hz, far past
#   any released embodiment's 10-50 steps.
# * flow_matching_num_steps (released 10): one expert pass per step and the time grid; 1000
#   is 100x the released value.
# * num_depth_codes (released 100, a 10x10 grid): tokens Think decodes per image; 4096 is a
#   64x64 grid.
MAX_ACTION_HORIZON = 1024
MAX_FLOW_STEPS = 1000
MAX_DEPTH_CODES = 4096


@dataclass(frozen=True)
class Integer:
    """A JSON integer (not a bool, float or string) in [low, high]; null when ``nullable``."""

    low: int = 1
    high: int | None = None
    nullable: bool = False
    why: str = ""  # why the bound, said in the refusal

    def problem(self, value: Any) -> str | None:
        if value is None and self.nullable:
            return None
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok and value >= self.low and (self.high is None or value <= self.high):
            return None
        rule = f"an integer >= {self.low}" if self.high is None else (
            f"an integer in [{self.low}, {self.high}]"
        )
        why = f" ({self.why})" if self.why else ""
        return f"must be {rule}{' or null' if self.nullable else ''}{why}"


@dataclass(frozen=True)
class Number:
    """A finite JSON number (int or float, not a bool); ``low``/``high`` bound it."""

    low: float | None = None
    low_open: bool = False
    high: float | None = None
    high_open: bool = False

    def problem(self, value: Any) -> str | None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and math.isfinite(value)
        if ok and self.low is not None:
            ok = value > self.low if self.low_open else value >= self.low
        if ok and self.high is not None:
            ok = value < self.high if self.high_open else value <= self.high
        if ok:
            return None
        if self.low is None and self.high is None:
            return "must be a finite number"
        if self.high is None:
            return f"must be a finite number {'>' if self.low_open else '>='} {self.low:g}"
        left = "(" if self.low_open else "["
        right = ")" if self.high_open else "]"
        return f"must be a number in {left}{self.low:g}, {self.high:g}{right}"


@dataclass(frozen=True)
class Flag:
    """A JSON true or false."""

    def problem(self, value: Any) -> str | None:
        return None if isinstance(value, bool) else "must be true or false"


ValueRule = Integer | Number | Flag

_SIZE = Integer(1)
_POSITIVE = Number(0.0, low_open=True)
_PROBABILITY = Number(0.0, high=1.0, high_open=True)
_FINITE = Number()
_ALLOCATES = "it sizes buffers allocated at act time; the released value is {}"
# A token id: checked against the vocabulary size too (``value_problems``).
_TOKEN_ID = Integer(0, nullable=True)

VALUE_RULES: dict[str, dict[str, ValueRule]] = {
    "vit_config": {
        **dict.fromkeys(
            ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "head_dim", "image_patch_size", "image_num_pos"),
            _SIZE,
        ),
        "layer_norm_eps": _POSITIVE,
    },
    "adapter_config": dict.fromkeys(
        ("hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
         "intermediate_size", "text_hidden_size"),
        _SIZE,
    ),
    "text_config": {
        **dict.fromkeys(
            ("hidden_size", "num_attention_heads", "head_dim", "vocab_size", "num_hidden_layers",
             "intermediate_size", "max_position_embeddings"),
            _SIZE,
        ),
        # null: one KV head per query head (the released class's reading).
        "num_key_value_heads": Integer(1, nullable=True),
        # null is refused by name in MolmoAct2Config.from_dict (not implemented).
        "additional_vocab_size": Integer(0, nullable=True),
        "layer_norm_eps": _POSITIVE,
        "rope_theta": _POSITIVE,
        "qkv_bias": Flag(),
        "norm_after": Flag(),
    },
    "action_expert_config": {
        **dict.fromkeys(
            ("hidden_size", "num_layers", "num_heads", "ffn_multiple_of", "timestep_embed_dim"),
            _SIZE,
        ),
        "mlp_ratio": _POSITIVE,
        "dropout": _PROBABILITY,
        "attn_dropout": _PROBABILITY,
        "qk_norm_eps": _POSITIVE,
        **dict.fromkeys(("context_layer_norm", "qk_norm", "rope", "causal_attn"), Flag()),
    },
    "": {  # top level
        "max_action_dim": _SIZE,
        "max_action_horizon": Integer(1, MAX_ACTION_HORIZON, why=_ALLOCATES.format(30)),
        "n_obs_steps": _SIZE,
        "flow_matching_num_steps": Integer(1, MAX_FLOW_STEPS, why=_ALLOCATES.format(10)),
        "num_depth_codes": Integer(1, MAX_DEPTH_CODES, why=_ALLOCATES.format(100)),
        # Training-time sampling of t and an unused cutoff: finite is all inference needs.
        **dict.fromkeys(
            ("flow_matching_cutoff", "flow_matching_time_offset", "flow_matching_time_scale",
             "flow_matching_beta_alpha", "flow_matching_beta_beta",
             "action_expert_depth_gate_init_bias"),
            _FINITE,
        ),
        # The released class's defaults are 0 (no such tokens).
        **dict.fromkeys(("num_action_tokens", "num_depth_tokens", "num_state_tokens"),
                        Integer(0)),
        **dict.fromkeys(
            ("action_output_token_id", "action_start_token_id", "action_end_token_id",
             "action_token_start_id", "depth_output_token_id", "depth_start_token_id",
             "depth_end_token_id", "depth_token_start_id", "state_start_token_id",
             "state_end_token_id", "state_token_start_id", "image_start_token_id",
             "low_res_image_start_token_id", "image_end_token_id", "image_patch_id",
             "image_high_res_id", "image_col_id", "image_low_res_id", "frame_start_token_id",
             "frame_end_token_id"),
            _TOKEN_ID,
        ),
    },
}
# Token families: the first id and the count that follows it.
_TOKEN_FAMILIES = {
    "action_token_start_id": "num_action_tokens",
    "depth_token_start_id": "num_depth_tokens",
    "state_token_start_id": "num_state_tokens",
}


def value_problems(data: Mapping[str, Any]) -> list[str]:
    """Every number of a config.json object that breaks ``VALUE_RULES``, named by its key path.

    ``data`` is the whole file; sub-configs that are not objects are left to the caller.
    """
    problems: list[str] = []
    for section, rules in VALUE_RULES.items():
        values = data if not section else data.get(section)
        if not isinstance(values, Mapping):
            continue
        for key, rule in rules.items():
            if key in values and (reason := rule.problem(values[key])) is not None:
                where = f"{section}.{key}" if section else key
                problems.append(f"{where}={_json(values[key])} {reason}")
    eos = data.get("eos_token_id")
    eos_ids = eos if isinstance(eos, list) else [eos]
    if eos is not None and (not eos_ids or any(_TOKEN_ID.problem(i) or i is None for i in eos_ids)):
        # The expert's context mask and the discrete decoding read it at act time: a string or
        # float there failed the first act (a float was silently truncated), not the load.
        problems.append(
            f"eos_token_id={_json(eos)} must be a token id (an integer >= 0), a non-empty list "
            "of them, or null"
        )
    if problems:
        return problems  # the cross-field rules below read these values
    for section in ("vit_config", "adapter_config", "text_config"):
        values = data.get(section)
        if not isinstance(values, Mapping):
            continue
        heads = values.get("num_attention_heads")
        kv_heads = values.get("num_key_value_heads")
        # Grouped-query attention shares each K/V head among a whole number of query heads.
        if isinstance(heads, int) and isinstance(kv_heads, int) and heads % kv_heads:
            problems.append(
                f"{section}.num_attention_heads={heads} must be a multiple of "
                f"{section}.num_key_value_heads={kv_heads}"
            )
    # The returned steps start at n_obs_steps - 1 of the chunk (as released), so it must lie in
    # the longest chunk the expert makes.
    obs, horizon = data.get("n_obs_steps"), data.get("max_action_horizon")
    if isinstance(obs, int) and isinstance(horizon, int) and obs > horizon:
        problems.append(f"n_obs_steps={obs} must be <= max_action_horizon={horizon} (the "
                        "returned steps start at step n_obs_steps - 1 of the chunk)")
    text = data.get("text_config")
    text = text if isinstance(text, Mapping) else {}
    # Only where the file states both sizes (a null additional_vocab_size is refused by name
    # by the caller; an absent one takes transformers' default).
    sizes = (text.get("vocab_size"), text.get("additional_vocab_size"))
    if all(isinstance(size, int) for size in sizes):
        vocab = sum(sizes)
        for key, rule in VALUE_RULES[""].items():
            value = data.get(key)
            if rule is _TOKEN_ID and value is not None and value >= vocab:
                problems.append(
                    f"{key}={value} must be a token id below the vocabulary size {vocab} "
                    "(text_config.vocab_size + additional_vocab_size)"
                )
        if eos is not None and any(i >= vocab for i in eos_ids):
            problems.append(
                f"eos_token_id={_json(eos)} must hold token ids below the vocabulary size {vocab} "
                "(text_config.vocab_size + additional_vocab_size)"
            )
        for start_key, count_key in _TOKEN_FAMILIES.items():
            start, count = data.get(start_key), data.get(count_key)
            if start is not None and isinstance(count, int) and start < vocab < start + count:
                problems.append(
                    f"{start_key}={start} + {count_key}={count} runs past the vocabulary size "
                    f"{vocab}"
                )
    return problems
