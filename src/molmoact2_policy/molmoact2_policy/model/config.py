"""MolmoAct2Config: the VLM (transformers' Molmo2Config), the action expert, and the top-level
fields of the released ``config.json`` (model_type ``molmoact2``).

``config.json`` layout: sub-configs ``vit_config``, ``adapter_config``, ``text_config`` (the
released MolmoAct2 keys, translated to transformers' ``Molmo2*Config``) and
``action_expert_config``; everything else is top level. What each released key means here
(built from, ignored, or refused by value) is ``released_config.py``. Top-level keys we do not
use are kept in ``extra`` and written back.

Presets: ``released()`` (released sizes), ``tiny()`` (tests and demo; a CPU ``act`` in about
0.1 s), ``mid_cpu()`` (benchmarks). Token ids of the presets follow the tiny tokenizer's layout
(``tokenizer.build_tiny_tokenizer``); a real checkpoint's config.json carries its own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import transformers
from transformers import Molmo2Config
from transformers.models.molmo2.configuration_molmo2 import Molmo2TextConfig

from molmoact2_policy.model import released_config
from molmoact2_policy.model.action_expert import ActionExpertConfig
from molmoact2_policy.model.tokenizer import MolmoAct2Tokenizer, TokenLayout

MODEL_TYPE = "molmoact2"

# Which VLM key tensor the expert's per-layer context is built from.
#   "cache":    exactly what the VLM's KV cache holds (after k-norm and RoPE).
#   "pre_rope": after k-norm, before RoPE.
#   "raw":      the k_proj output (before k-norm and RoPE).
# Default "cache": the released model conditions the expert on "the VLM's per-layer KV cache",
# and the cache is what one prefill produces (and what the Think path's static cache holds), so
# using it costs nothing extra. Values are the same in all three (V has no norm or RoPE).
EXPERT_KV_SOURCES = ("cache", "pre_rope", "raw")

_VLM_TOP_LEVEL = (
    "image_start_token_id",
    "low_res_image_start_token_id",
    "image_end_token_id",
    "image_patch_id",
    "frame_start_token_id",
    "frame_end_token_id",
)


class ConfigError(ValueError):
    """config.json is malformed or inconsistent."""


def _meta(description: str) -> dict[str, str]:
    return {"description": description}


@dataclass
class MolmoAct2Config:
    """Everything needed to build MolmoAct2Model; field names are the released config.json keys."""

    vlm: Molmo2Config
    action_expert: ActionExpertConfig
    add_action_expert: bool = field(default=True, metadata=_meta("build the flow expert"))
    max_action_dim: int = field(default=32, metadata=_meta("actions are padded to this"))
    max_action_horizon: int = field(default=30, metadata=_meta("longest chunk the expert takes"))
    n_obs_steps: int = field(default=1, metadata=_meta("observation frames per prompt"))
    action_mode: str = field(default="both", metadata=_meta("discrete, continuous or both"))
    state_format: str = field(default="discrete", metadata=_meta("state as <state_k> tokens"))
    flow_matching_num_steps: int = field(default=10, metadata=_meta("Euler steps"))
    flow_matching_cutoff: float = field(default=1.0, metadata=_meta("last integration time"))
    flow_matching_time_offset: float = field(default=0.001, metadata=_meta("t = off + scale*b"))
    flow_matching_time_scale: float = field(default=0.999, metadata=_meta("t = off + scale*b"))
    flow_matching_beta_alpha: float = field(default=1.0, metadata=_meta("training t ~ Beta"))
    flow_matching_beta_beta: float = field(default=1.5, metadata=_meta("training t ~ Beta"))
    mask_action_dim_padding: bool = field(default=True, metadata=_meta("zero padded dims"))
    enable_depth_reasoning: bool = field(default=False, metadata=_meta("Think checkpoints"))
    num_depth_codes: int = field(default=100, metadata=_meta("depth tokens per image (10x10)"))
    # Not a released key: random-weight presets never write <depth_end>, so Think appends it.
    think_force_depth_end: bool = field(
        default=False, metadata=_meta("append <depth_end> after the codes instead of decoding it")
    )
    action_expert_depth_gate: bool = field(default=False, metadata=_meta("learned depth gate"))
    action_expert_depth_gate_per_layer: bool = field(
        default=False, metadata=_meta("one gate per layer (else one, fed the last layer's V)")
    )
    action_expert_depth_gate_init_bias: float = field(default=-4.0, metadata=_meta("gate bias"))
    action_output_token_id: int | None = field(default=None, metadata=_meta("<action_output>"))
    action_start_token_id: int | None = field(default=None, metadata=_meta("<action_start>"))
    action_end_token_id: int | None = field(default=None, metadata=_meta("<action_end>"))
    action_token_start_id: int | None = field(default=None, metadata=_meta("<action_0>"))
    num_action_tokens: int = field(default=2048, metadata=_meta("FAST vocabulary size"))
    depth_output_token_id: int | None = field(default=None, metadata=_meta("<depth_output>"))
    depth_start_token_id: int | None = field(default=None, metadata=_meta("<depth_start>"))
    depth_end_token_id: int | None = field(default=None, metadata=_meta("<depth_end>"))
    depth_token_start_id: int | None = field(default=None, metadata=_meta("<depth_0>"))
    num_depth_tokens: int = field(default=128, metadata=_meta("VQ-VAE codebook size"))
    state_start_token_id: int | None = field(default=None, metadata=_meta("<state_start>"))
    state_end_token_id: int | None = field(default=None, metadata=_meta("<state_end>"))
    state_token_start_id: int | None = field(default=None, metadata=_meta("<state_0>"))
    num_state_tokens: int = field(default=256, metadata=_meta("state bins"))
    add_setup_tokens: bool = field(default=True, metadata=_meta("<setup_start>...<setup_end>"))
    add_control_tokens: bool = field(default=True, metadata=_meta("<control_start>..."))
    norm_stats_filename: str = field(default="norm_stats.json", metadata=_meta("stats file"))
    expert_kv_source: str = field(default="cache", metadata=_meta("see EXPERT_KV_SOURCES"))
    # adapter_config.pooling_attention_mask in config.json. True: the 2x2 pooling query is the
    # mean of the valid patches and attends only to them (what transformers' Molmo2 does);
    # False (the released class's default): the mean and the attention include the zeroed
    # padding slots of the edge cells. A file without the key gets the released default.
    pooling_attention_mask: bool = field(
        default=True, metadata=_meta("mask padded patches in the 2x2 image pooling")
    )
    # vit_config / adapter_config.float32_attention in config.json (the released default true):
    # the ViT's and the pooling's attention run in float32 around bf16 weights.
    vit_float32_attention: bool = field(
        default=True, metadata=_meta("ViT attention in float32 (vit_config.float32_attention)")
    )
    adapter_float32_attention: bool = field(
        default=True,
        metadata=_meta("image pooling attention in float32 (adapter_config.float32_attention)"),
    )
    # Released processor options (processor_config.json); see preprocess.ImageTokenLayout.
    image_use_col_tokens: bool = field(
        default=True, metadata=_meta("<im_col> after each high-res row of a multi-crop image")
    )
    use_single_crop_start_token: bool = field(
        default=True, metadata=_meta("multi-crop global view starts with <low_res_im_start>")
    )
    use_single_crop_col_tokens: bool = field(
        default=False, metadata=_meta("<im_col> after each row of a single crop")
    )
    extra: dict[str, Any] = field(default_factory=dict, metadata=_meta("unknown keys, kept"))

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ derived
    @property
    def text_config(self) -> Molmo2TextConfig:
        return self.vlm.text_config

    @property
    def llm_kv_dim(self) -> int:
        text = self.vlm.text_config
        return text.num_key_value_heads * text.head_dim

    @property
    def num_vlm_layers(self) -> int:
        return self.vlm.text_config.num_hidden_layers

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """The top-level ``eos_token_id``: none, one, or (a transformers config may list
        several) all of a list, in order."""
        value = self.extra.get("eos_token_id")
        if value is None:
            return ()
        return tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),)

    def validate(self) -> None:
        problems = []
        if self.expert_kv_source not in EXPERT_KV_SOURCES:
            problems.append(
                f"expert_kv_source {self.expert_kv_source!r} not in {EXPERT_KV_SOURCES}"
            )
        if self.add_action_expert:
            expert = self.action_expert
            if expert.num_layers != self.num_vlm_layers:
                problems.append(
                    f"action_expert_config.num_layers {expert.num_layers} != VLM layers "
                    f"{self.num_vlm_layers} (one expert block per VLM layer)"
                )
            if expert.llm_kv_dim != self.llm_kv_dim:
                problems.append(
                    f"action_expert_config.llm_kv_dim {expert.llm_kv_dim} != VLM kv_heads x "
                    f"head_dim {self.llm_kv_dim}"
                )
            if expert.max_action_dim != self.max_action_dim:
                problems.append(
                    f"action_expert_config.max_action_dim {expert.max_action_dim} != "
                    f"max_action_dim {self.max_action_dim}"
                )
            if expert.max_action_horizon < self.max_action_horizon:
                problems.append(
                    f"action_expert_config.max_action_horizon {expert.max_action_horizon} < "
                    f"max_action_horizon {self.max_action_horizon}"
                )
        if self.flow_matching_num_steps <= 0:
            problems.append("flow_matching_num_steps must be > 0")
        if problems:
            raise ConfigError("invalid MolmoAct2 config: " + "; ".join(problems))

    def token_layout(self) -> TokenLayout:
        return TokenLayout(self.num_state_tokens, self.num_action_tokens, self.num_depth_tokens)

    def check_tokenizer(self, tokenizer: MolmoAct2Tokenizer) -> None:
        """Raise ConfigError when a configured token id disagrees with the tokenizer."""
        expected = _token_ids_from_tokenizer(tokenizer, self.token_layout())
        problems = [
            f"{name}={getattr(self, name)} but the tokenizer has {value}"
            for name, value in expected.items()
            if getattr(self, name) is not None and getattr(self, name) != value
        ]
        for name in _VLM_TOP_LEVEL:
            token = _VLM_TOKEN_NAMES[name]
            index = tokenizer.tokenizer.token_to_id(token)
            if index is not None and getattr(self.vlm, name) != index:
                problems.append(f"{name}={getattr(self.vlm, name)} but {token} has id {index}")
        if problems:
            raise ConfigError("config.json and tokenizer disagree: " + "; ".join(problems))

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """config.json as the released ``MolmoAct2Config`` writes it (see ``released_config``).

        Every released key is written, with the values we compute from (so the released classes
        build this model and load its weights strictly); our own options follow at the top level.
        """
        vision = self.vlm.vision_config
        adapter = self.vlm.adapter_config
        text = self.vlm.text_config
        expert = self.action_expert
        out: dict[str, Any] = {
            "model_type": MODEL_TYPE,
            "architectures": list(released_config.ARCHITECTURES),
            "auto_map": dict(released_config.AUTO_MAP),
            "transformers_version": transformers.__version__,
        }
        out["vit_config"] = {
            "model_type": released_config.SUB_MODEL_TYPES["vit_config"],
            "hidden_size": vision.hidden_size,
            "intermediate_size": vision.intermediate_size,
            "num_hidden_layers": vision.num_hidden_layers,
            "num_attention_heads": vision.num_attention_heads,
            "num_key_value_heads": vision.num_key_value_heads,
            "head_dim": vision.head_dim,
            "hidden_act": vision.hidden_act,
            "layer_norm_eps": vision.layer_norm_eps,
            "image_default_input_size": list(vision.image_size),
            "image_patch_size": vision.patch_size,
            "image_num_pos": vision.num_position_embeddings,
            "attention_dropout": 0.0,
            "residual_dropout": 0.0,
            "initializer_range": vision.initializer_range,
            "float32_attention": self.vit_float32_attention,
            "attn_implementation": "eager",
        }
        out["adapter_config"] = {
            "model_type": released_config.SUB_MODEL_TYPES["adapter_config"],
            # Positive: the released class resolves negative indices against the ViT depth
            # written above, which is already trimmed to the deepest layer read.
            "vit_layers": list(adapter.vision_feature_layer),
            "pooling_attention_mask": self.pooling_attention_mask,
            "hidden_size": adapter.hidden_size,
            "num_attention_heads": adapter.num_attention_heads,
            "num_key_value_heads": adapter.num_key_value_heads,
            "head_dim": adapter.head_dim,
            "float32_attention": self.adapter_float32_attention,
            "attention_dropout": 0.0,
            "residual_dropout": 0.0,
            "hidden_act": adapter.hidden_act,
            "intermediate_size": adapter.intermediate_size,
            "text_hidden_size": adapter.text_hidden_size,
            "image_feature_dropout": 0.0,
            "initializer_range": adapter.initializer_range,
            "attn_implementation": "eager",
        }
        layers = list(text.rope_scaling_layers or [])
        out["text_config"] = {
            "model_type": released_config.SUB_MODEL_TYPES["text_config"],
            "hidden_size": text.hidden_size,
            "num_attention_heads": text.num_attention_heads,
            "num_key_value_heads": text.num_key_value_heads,
            "head_dim": text.head_dim,
            "vocab_size": text.vocab_size,
            "additional_vocab_size": text.additional_vocab_size,
            "qkv_bias": bool(text.attention_bias),
            "num_hidden_layers": text.num_hidden_layers,
            "intermediate_size": text.intermediate_size,
            "hidden_act": text.hidden_act,
            "embedding_dropout": 0.0,
            "attention_dropout": 0.0,
            "residual_dropout": 0.0,
            "max_position_embeddings": text.max_position_embeddings,
            **released_config.released_rope_keys(text.rope_parameters or {}),
            # null: one RoPE table for every layer (the released single ``rotary_emb``).
            "rope_scaling_layers": (
                None if layers == list(range(text.num_hidden_layers)) else layers
            ),
            "use_qk_norm": True,
            "qk_norm_type": text.qk_norm_type,
            "layer_norm_eps": text.rms_norm_eps,
            "norm_after": text.norm_after,
            "initializer_range": text.initializer_range,
            "use_cache": True,
            "tie_word_embeddings": False,
            "attn_implementation": "eager",
        }
        if self.add_action_expert:
            out["action_expert_config"] = {
                "model_type": released_config.SUB_MODEL_TYPES["action_expert_config"],
                **{
                    key: getattr(expert, key)
                    for key, rule in released_config.EXPERT_RULES.items()
                    if isinstance(rule, released_config.Map)
                },
            }
        else:
            out["action_expert_config"] = None
        for name in _VLM_TOP_LEVEL:
            out[name] = getattr(self.vlm, name)
        # Derived in the released class from image_patch_id; written as it writes it.
        out["image_high_res_id"] = self.vlm.image_patch_id
        for item in dataclasses.fields(self):
            if item.name not in ("vlm", "action_expert", "extra", *_SUB_CONFIG_FIELDS):
                out[item.name] = getattr(self, item.name)
        for key, value in _RELEASED_TOP_DEFAULTS.items():
            out[key] = self.extra.get(key, value)
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> MolmoAct2Config:
        """Read any config.json the released ``MolmoAct2Config`` writes (and our older ones).

        Keys that change nothing we compute are accepted; an option whose value we do not
        implement is refused by name and value; every size comes from the released keys.
        """
        if not isinstance(data, dict):
            raise ConfigError("config.json: top level must be a JSON object")
        if data.get("model_type") != MODEL_TYPE:
            raise ConfigError(
                f"config.json: model_type is {data.get('model_type')!r}, expected {MODEL_TYPE!r}"
            )
        add_expert = data.get("add_action_expert", True)
        subs: dict[str, dict[str, Any]] = {}
        for key in ("vit_config", "adapter_config", "text_config", "action_expert_config"):
            if key == "action_expert_config" and add_expert is False and data.get(key) is None:
                subs[key] = {}
                continue
            if not isinstance(data.get(key), dict):
                raise ConfigError(f"config.json: {key!r} is missing or not an object")
            subs[key] = dict(data[key])
        # Sizes and ids first: what follows computes with them (and so does torch, later).
        value_problems = released_config.value_problems(data)
        if value_problems:
            raise ConfigError("config.json: " + "; ".join(value_problems))
        read = {key: released_config.translate(key, value) for key, value in subs.items()}
        problems = released_config.check_base_keys(data, "config")
        unknown: list[str] = []
        for result in read.values():
            problems += result.problems
            unknown += result.unknown
        text = dict(read["text_config"].values)
        rope, rope_problems = released_config.rope_parameters(text)
        problems += rope_problems
        if text.get("num_key_value_heads", 0) is None:  # released: null means one per query head
            text["num_key_value_heads"] = text.get("num_attention_heads")
        if "additional_vocab_size" in text and text["additional_vocab_size"] is None:
            problems.append(
                "text_config.additional_vocab_size=null is not implemented (the released model "
                "then has a single `wte.weight` table; Molmo2 checkpoints split it in two)"
            )
        vision = dict(read["vit_config"].values)
        adapter = dict(read["adapter_config"].values)
        flags = {
            # ours: (section, released key, the released class's default)
            "pooling_attention_mask": (adapter, "adapter_config.pooling_attention_mask", False),
            "vit_float32_attention": (vision, "vit_config.float32_attention", True),
            "adapter_float32_attention": (adapter, "adapter_config.float32_attention", True),
        }
        options: dict[str, bool] = {}
        for name, (section, where, default) in flags.items():
            value = section.pop(where.split(".")[1], default)
            if not isinstance(value, bool):
                problems.append(f"{where}={value!r} must be true or false")
            options[name] = value
        problems += _check_positions(vision)
        if problems:
            raise ConfigError("config.json: " + "; ".join(problems))
        released_config.warn_unknown(unknown)
        try:
            vlm = Molmo2Config(
                vit_config=vision,
                adapter_config=adapter,
                text_config=dict(text, rope_parameters=rope, tie_word_embeddings=False),
                **{name: data[name] for name in _VLM_TOP_LEVEL if name in data},
            )
        except Exception as error:  # transformers raises TypeError/ValueError/StrictDataclass*
            raise ConfigError(f"config.json: invalid VLM sub-config ({error})") from None
        expert = _expert_config(read["action_expert_config"].values, subs, data, vlm)
        own = {item.name: item for item in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = dict(options)
        extra: dict[str, Any] = {}
        skip = {*subs, *_VLM_TOP_LEVEL, "image_high_res_id", *_WRITER_KEYS}
        for key, value in data.items():
            if key in skip:
                continue
            if key in own and key not in ("vlm", "action_expert", "extra"):
                kwargs[key] = _checked_value(key, value, own[key].default)
            elif key not in released_config.BASE_KEYS or key in _KEPT_BASE_KEYS:
                extra[key] = value
        return cls(vlm=vlm, action_expert=expert, extra=extra, **kwargs)

    # ------------------------------------------------------------------ presets
    @classmethod
    def tiny(cls, **overrides: Any) -> MolmoAct2Config:
        """3 text layers at width 128, a 2-layer width-32 ViT, expert width 64."""
        return _preset(
            vit=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=2, head_dim=16),
            vit_layers=[-1, -2],
            adapter=dict(hidden_size=32, num_attention_heads=2, num_key_value_heads=2,
                         head_dim=16, intermediate_size=64),
            text=dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=32, num_hidden_layers=3, intermediate_size=256),
            expert=dict(hidden_size=64, num_heads=4, mlp_ratio=2.0, ffn_multiple_of=32,
                        timestep_embed_dim=32),
            overrides=overrides,
        )

    @classmethod
    def mid_cpu(cls, **overrides: Any) -> MolmoAct2Config:
        """4 text layers at width 512, a 4-layer width-256 ViT, expert width 256."""
        return _preset(
            vit=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                     num_attention_heads=4, num_key_value_heads=4, head_dim=64),
            vit_layers=[-1, -3],
            adapter=dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=4,
                         head_dim=64, intermediate_size=1024),
            text=dict(hidden_size=512, num_attention_heads=8, num_key_value_heads=4,
                      head_dim=64, num_hidden_layers=4, intermediate_size=1536),
            expert=dict(hidden_size=256, num_heads=4, mlp_ratio=2.75, ffn_multiple_of=64,
                        timestep_embed_dim=128),
            overrides=overrides,
        )

    @classmethod
    def released(cls, **overrides: Any) -> MolmoAct2Config:
        """Released sizes: Qwen3-4B-style LLM, SigLIP2 so400m ViT, 1024-wide expert.

        The vocabulary here is the tiny tokenizer's; a real checkpoint brings its own
        config.json (vocab size, token ids) and is loaded with ``load_checkpoint``.
        """
        return _preset(
            vit=dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                     num_attention_heads=16, num_key_value_heads=16, head_dim=72),
            vit_layers=[-3, -9],
            adapter=dict(hidden_size=1152, num_attention_heads=16, num_key_value_heads=16,
                         head_dim=72, intermediate_size=9728),
            text=dict(hidden_size=2560, num_attention_heads=32, num_key_value_heads=8,
                      head_dim=128, num_hidden_layers=36, intermediate_size=9728),
            expert=dict(hidden_size=1024, num_heads=16, mlp_ratio=2.75, ffn_multiple_of=256,
                        timestep_embed_dim=256),
            overrides=overrides,
        )


_VLM_TOKEN_NAMES = {
    "image_start_token_id": "<im_start>",
    "low_res_image_start_token_id": "<low_res_im_start>",
    "image_end_token_id": "<im_end>",
    "image_patch_id": "<im_patch>",
    "frame_start_token_id": "<frame_start>",
    "frame_end_token_id": "<frame_end>",
}


def _token_ids_from_tokenizer(tokenizer: MolmoAct2Tokenizer, layout: TokenLayout) -> dict[str, int]:
    return {
        "action_output_token_id": tokenizer.token_id("<action_output>"),
        "action_start_token_id": tokenizer.token_id("<action_start>"),
        "action_end_token_id": tokenizer.token_id("<action_end>"),
        "action_token_start_id": tokenizer.family_start("action", layout.num_action_tokens),
        "depth_output_token_id": tokenizer.token_id("<depth_output>"),
        "depth_start_token_id": tokenizer.token_id("<depth_start>"),
        "depth_end_token_id": tokenizer.token_id("<depth_end>"),
        "depth_token_start_id": tokenizer.family_start("depth", layout.num_depth_tokens),
        "state_start_token_id": tokenizer.token_id("<state_start>"),
        "state_end_token_id": tokenizer.token_id("<state_end>"),
        "state_token_start_id": tokenizer.family_start("state", layout.num_state_tokens),
    }


def _preset(
    *,
    vit: dict[str, Any],
    vit_layers: list[int],
    adapter: dict[str, Any],
    text: dict[str, Any],
    expert: dict[str, Any],
    overrides: dict[str, Any],
) -> MolmoAct2Config:
    layout = TokenLayout()
    tokenizer = MolmoAct2Tokenizer.tiny(layout)
    num_image_tokens = len(_VLM_TOKEN_NAMES) + 2  # + <im_col>, <im_low>
    total = tokenizer.vocab_size
    text_config = dict(
        text,
        vocab_size=total - num_image_tokens,
        additional_vocab_size=num_image_tokens,
        max_position_embeddings=4096,
        rope_theta=1_000_000.0,
        qk_norm_type="qwen3",
    )
    vit_config = dict(vit, image_default_input_size=[378, 378], image_patch_size=14)
    adapter_config = dict(adapter, vit_layers=vit_layers, text_hidden_size=text["hidden_size"])
    # Built through the released keys (vit_config) so the ViT is trimmed to the deepest layer the
    # adapter reads, exactly as when the same config is loaded back from config.json.
    vlm = Molmo2Config(
        vit_config=vit_config,
        adapter_config=adapter_config,
        text_config=text_config,
        **{name: tokenizer.token_id(token) for name, token in _VLM_TOKEN_NAMES.items()},
    )
    max_action_dim = overrides.get("max_action_dim", 32)
    max_action_horizon = overrides.get("max_action_horizon", 30)
    expert_config = ActionExpertConfig(
        **expert,
        num_layers=text["num_hidden_layers"],
        llm_kv_dim=text["num_key_value_heads"] * text["head_dim"],
        max_action_dim=max_action_dim,
        max_action_horizon=max_action_horizon,
    )
    kwargs: dict[str, Any] = dict(_token_ids_from_tokenizer(tokenizer, layout))
    kwargs["think_force_depth_end"] = True  # random weights: see the field
    # Released top-level ids the processor uses (not read by the model itself).
    kwargs["extra"] = {
        "image_col_id": tokenizer.token_id("<im_col>"),
        "image_low_res_id": tokenizer.token_id("<im_low>"),
    }
    kwargs.update(overrides)
    return MolmoAct2Config(vlm=vlm, action_expert=expert_config, **kwargs)


# Our fields that are written inside a sub-config (see to_dict), not at the top level.
_SUB_CONFIG_FIELDS = (
    "pooling_attention_mask",
    "vit_float32_attention",
    "adapter_float32_attention",
)
# Top-level keys of the released class that change nothing we compute; written with these
# defaults unless the loaded file had its own values (kept in ``extra``).
_RELEASED_TOP_DEFAULTS: dict[str, Any] = {
    "use_frame_special_tokens": True,
    "initializer_range": 0.02,
    "depth_mode": 2,
    "tie_word_embeddings": False,
}
# Written by ``to_dict`` itself; a loaded file's values are not carried over.
_WRITER_KEYS = ("model_type", "architectures", "auto_map", "transformers_version")
# Base keys with a meaning here (the released expert context mask reads eos_token_id). The
# file's dtype is not kept: what we write back may be in another precision.
_KEPT_BASE_KEYS = ("eos_token_id", "bos_token_id", "pad_token_id")


def _check_positions(vision: dict[str, Any]) -> list[str]:
    """The released ViT interpolates its position table when it does not fit the patch grid."""
    size = vision.get("image_size", [378, 378])
    patch = vision.get("patch_size", 14)
    count = vision.get("num_position_embeddings")
    try:
        grid = (int(size[0]) // int(patch)) * (int(size[1]) // int(patch))
    except (TypeError, ValueError, IndexError, ZeroDivisionError):
        return []  # transformers names the malformed value
    if count is not None and count != grid:
        return [
            f"vit_config.image_num_pos={count!r} is not implemented (the patch grid has {grid} "
            "cells; the released ViT would interpolate its position table bicubically)"
        ]
    return []


def _expert_config(
    values: dict[str, Any],
    subs: dict[str, dict[str, Any]],
    data: dict[str, Any],
    vlm: Molmo2Config,
) -> ActionExpertConfig:
    """The expert's sizes: its released keys, the top-level action sizes, the VLM's K/V width."""
    text = vlm.text_config
    derived = text.num_key_value_heads * text.head_dim
    raw = subs["action_expert_config"]
    problems = []
    # Not released keys; files this project wrote before carried them.
    if raw.get("llm_kv_dim", derived) != derived:
        problems.append(
            f"action_expert_config.llm_kv_dim={raw['llm_kv_dim']!r} but the VLM's K/V width "
            f"(num_key_value_heads x head_dim) is {derived}"
        )
    theta = raw.get("rope_theta", 10000.0)
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or theta != 10000.0:
        problems.append(
            f"action_expert_config.rope_theta={raw['rope_theta']!r} is not implemented (the "
            "released expert's RoPE base is 10000)"
        )
    if problems:
        raise ConfigError("config.json: " + "; ".join(problems))
    kwargs = dict(values)
    kwargs.setdefault("num_layers", text.num_hidden_layers)
    defaults = {item.name: item.default for item in dataclasses.fields(MolmoAct2Config)}
    for key in ("max_action_dim", "max_action_horizon"):
        # The released class overwrites the nested values with the top-level ones.
        kwargs[key] = data.get(key, raw.get(key, defaults[key]))
    try:
        return ActionExpertConfig(llm_kv_dim=derived, **kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"config.json: action_expert_config: {error}") from None


def _checked_value(key: str, value: Any, default: Any) -> Any:
    """Reject values whose JSON type cannot be what the field means (a string step count...)."""
    if default is dataclasses.MISSING or default is None:
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        raise ConfigError(f"config.json: {key!r} must be an integer or null, got {value!r}")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config.json: {key!r} must be true or false, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config.json: {key!r} must be an integer, got {value!r}")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"config.json: {key!r} must be a number, got {value!r}")
    if isinstance(default, str):
        if isinstance(value, str):
            return value
        raise ConfigError(f"config.json: {key!r} must be a string, got {value!r}")
    return value
