"""The VLM prefix: transformers' native Molmo2 run once over the prompt, returning each layer's
K and V (the action expert's context) and the prompt mask.

transformers' own ``DynamicCache`` is the reference for K/V: with ``expert_kv_source="cache"``
the tensors handed to the expert are exactly ``cache.layers[i].keys/.values``, flattened from
(batch, kv_heads, seq, head_dim) to (batch, seq, kv_heads * head_dim). The other two sources
read the same attention's K before RoPE through forward hooks (see config.EXPERT_KV_SOURCES).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from transformers import Molmo2Config, Molmo2ForConditionalGeneration
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import BaseModelOutput
from transformers.models.molmo2.modeling_molmo2 import (
    ALL_ATTENTION_FUNCTIONS,
    Molmo2Adapter,
    Molmo2VisionAttention,
    eager_attention_forward,
)

from molmoact2_policy.model.preprocess import ImageInputs
from molmoact2_policy.model.tokenizer import IMAGE_TOKENS, MolmoAct2Tokenizer


class UnmaskedPoolingAdapter(Molmo2Adapter):
    """The adapter with the released ``pooling_attention_mask: false`` rule.

    Each pooled token gathers its 2x2 patches; a slot past the edge of an odd patch grid is
    index -1 and its features are zeroed. transformers' Molmo2 (and the released class with the
    option on) takes the query as the mean of the valid patches and lets it attend only to them.
    With the option off, the released class takes the plain mean over all four slots (zeros
    included) and attends to every slot. Same parameters, so only the class changes.
    """

    def forward(self, image_features: Tensor, pooled_patches_idx: Tensor, **kwargs) -> Any:
        flat = image_features.reshape(-1, image_features.shape[-1])
        valid = pooled_patches_idx >= 0
        valid_token = torch.any(valid, -1)
        to_pool = flat[torch.clip(pooled_patches_idx, 0)] * valid.to(flat.dtype)[..., None]
        query = to_pool.mean(-2, keepdim=True)
        pooled, _ = self.image_pooling_2d(query, to_pool, attention_mask=None)
        pooled = self.image_projector(pooled.squeeze(1))
        return BaseModelOutput(last_hidden_state=pooled[valid_token])


class Float32Attention(Molmo2VisionAttention):
    """The released ``float32_attention`` (its default, for the ViT and the image pooling).

    Projections run in the weights' dtype; the attention itself (q.k, softmax, weights x v)
    runs on float32 copies of q, k and v, and its output is cast back before ``o_proj``: the
    released attention's SDPA path. In float32 inference this is the parent's computation.
    """

    def forward(
        self,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[Tensor, Tensor | None]:
        source = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        shape = hidden_states.shape[:-1]
        query = self.q_proj(hidden_states).view(*shape, -1, self.head_dim).transpose(1, 2)
        key = self.k_proj(source).view(*source.shape[:-1], -1, self.head_dim).transpose(1, 2)
        value = self.v_proj(source).view(*source.shape[:-1], -1, self.head_dim).transpose(1, 2)
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.float()
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        output, weights = attention(
            self,
            query.float(),
            key.float(),
            value.float(),
            attention_mask,
            is_causal=self.is_causal,
            scaling=self.scaling,
            dropout=0.0 if not self.training else self.attention_dropout,
            **kwargs,
        )
        output = output.to(query.dtype).reshape(*shape, -1).contiguous()
        return self.o_proj(output), weights


def build_vlm(
    config: Molmo2Config,
    attn_implementation: str = "sdpa",
    pooling_attention_mask: bool = True,
    vit_float32_attention: bool = True,
    adapter_float32_attention: bool = True,
) -> Molmo2ForConditionalGeneration:
    """A randomly initialised Molmo2 (global torch RNG) in eval mode.

    ``pooling_attention_mask`` and the two ``float32_attention`` flags are the released
    adapter/ViT options (see ``UnmaskedPoolingAdapter`` and ``Float32Attention``); only the
    module classes change, never the parameters.
    """
    config._attn_implementation = attn_implementation
    vlm = Molmo2ForConditionalGeneration(config)
    if not pooling_attention_mask:
        vlm.model.multi_modal_projector.__class__ = UnmaskedPoolingAdapter
    if vit_float32_attention:
        for layer in vlm.model.vision_tower.layers:
            layer.self_attn.__class__ = Float32Attention
    if adapter_float32_attention:
        vlm.model.multi_modal_projector.image_pooling_2d.__class__ = Float32Attention
    return vlm.eval()


@dataclass
class PrefixInputs:
    """Tensors for one prefix forward (batch B, sequence S, N images in total)."""

    input_ids: Tensor  # (B, S) int64
    attention_mask: Tensor  # (B, S) bool, False on right padding
    mm_token_type_ids: Tensor  # (B, S) int64, 1 on image tokens (bidirectional block)
    pixel_values: Tensor  # (N, num_patches, pixels_per_patch)
    image_token_pooling: Tensor  # (N * tokens_per_image, pool_h * pool_w) int64
    image_grids: Tensor  # (N, 4) int64

    def to(self, device: torch.device | str, dtype: torch.dtype) -> PrefixInputs:
        return PrefixInputs(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            mm_token_type_ids=self.mm_token_type_ids.to(device),
            pixel_values=self.pixel_values.to(device=device, dtype=dtype),
            image_token_pooling=self.image_token_pooling.to(device),
            image_grids=self.image_grids.to(device),
        )


@dataclass
class PrefixOutput:
    """Per-layer context for the action expert plus what Think decoding continues from."""

    keys: list[Tensor]  # per layer (B, S, kv_heads * head_dim)
    values: list[Tensor]  # per layer (B, S, kv_heads * head_dim)
    mask: Tensor  # (B, S) bool: prompt tokens the expert may attend to
    cache: DynamicCache  # the VLM's own cache (post-RoPE K), for continued decoding
    last_hidden_state: Tensor  # (B, S, hidden), after the final norm
    input_ids: Tensor | None = None  # (B, S) the sequence, for the expert's context mask


def image_token_ids(tokenizer: MolmoAct2Tokenizer) -> list[int]:
    return [
        index for index in (tokenizer.tokenizer.token_to_id(t) for t in IMAGE_TOKENS)
        if index is not None
    ]


def tokenize_prompt(
    tokenizer: MolmoAct2Tokenizer,
    prompt: str,
    image_tokens: Sequence[int],
    placeholder: str = "<|image|>",
) -> list[int]:
    """Token ids of a prompt whose placeholders expand to ``image_tokens``.

    Splitting on the placeholder and encoding the pieces separately gives the same ids as
    encoding the expanded text (special tokens are split out before BPE) without tokenising
    hundreds of literal image tokens per call.
    """
    pieces = prompt.split(placeholder)
    ids: list[int] = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    for index, piece in enumerate(pieces):
        if piece:
            ids.extend(tokenizer.encode(piece))
        if index < len(pieces) - 1:
            ids.extend(image_tokens)
    return ids


def collate_prefix_inputs(
    token_ids: Sequence[Sequence[int]],
    images: ImageInputs,
    image_ids: Sequence[int],
    pad_id: int,
) -> PrefixInputs:
    """Right-pad B prompts into one batch; ``images`` holds every prompt's images in order."""
    length = max(len(ids) for ids in token_ids)
    batch = len(token_ids)
    input_ids = np.full((batch, length), pad_id, dtype=np.int64)
    mask = np.zeros((batch, length), dtype=bool)
    for row, ids in enumerate(token_ids):
        input_ids[row, : len(ids)] = ids
        mask[row, : len(ids)] = True
    mm_types = np.isin(input_ids, np.asarray(image_ids, dtype=np.int64)) & mask
    return PrefixInputs(
        input_ids=torch.from_numpy(input_ids),
        attention_mask=torch.from_numpy(mask),
        mm_token_type_ids=torch.from_numpy(mm_types.astype(np.int64)),
        pixel_values=torch.from_numpy(images.pixel_values),
        image_token_pooling=torch.from_numpy(images.pooling_indices),
        image_grids=torch.from_numpy(images.grids),
    )


def flatten_heads(tensor: Tensor) -> Tensor:
    """(B, kv_heads, S, head_dim) -> (B, S, kv_heads * head_dim)."""
    batch, heads, length, head_dim = tensor.shape
    return tensor.transpose(1, 2).reshape(batch, length, heads * head_dim)


def cache_key_values(cache: DynamicCache) -> tuple[list[Tensor], list[Tensor]]:
    """Every layer's cached K and V, flattened to (B, S, kv_heads * head_dim)."""
    keys = [flatten_heads(layer.keys) for layer in cache.layers]
    values = [flatten_heads(layer.values) for layer in cache.layers]
    return keys, values


def _pre_rope_key_hooks(
    vlm: Molmo2ForConditionalGeneration, source: str, store: list[Tensor | None]
) -> list[torch.utils.hooks.RemovableHandle]:
    handles = []
    for index, layer in enumerate(vlm.model.language_model.layers):
        module = layer.self_attn.k_norm if source == "pre_rope" else layer.self_attn.k_proj

        def hook(_module: torch.nn.Module, _inputs: object, output: Tensor, index: int = index):
            store[index] = output

        handles.append(module.register_forward_hook(hook))
    return handles


def expert_context_mask(
    input_ids: Tensor,
    attention_mask: Tensor,
    *,
    action_mode: str,
    eos_token_ids: Sequence[int],
    action_start_token_id: int | None,
    action_end_token_id: int | None,
) -> Tensor:
    """(B, S) bool: the sequence positions the action expert attends to, as released.

    A checkpoint trained with both action heads (``action_mode`` "both") saw sequences that also
    carried a discrete answer; its expert never attends to EOS tokens nor to an
    ``<action_start>`` ... ``<action_end>`` span (an unclosed span runs to the end), so neither
    may it here. Other modes attend to every non-padding token. ``eos_token_ids`` is the
    config's ``eos_token_id`` as a sequence: a transformers config may list several, each an
    end of sequence.
    """
    mask = attention_mask.to(torch.bool).clone()
    if action_mode != "both":
        return mask
    for eos in eos_token_ids:
        mask &= input_ids != int(eos)
    if action_start_token_id is None or action_end_token_id is None:
        return mask
    for row in range(input_ids.shape[0]):
        ids = input_ids[row].tolist()
        inside = False
        for column, token in enumerate(ids):
            if token == action_start_token_id:
                inside = True
            if inside:
                mask[row, column] = False
            if inside and token == action_end_token_id:
                inside = False
    return mask


def prefix_forward(
    vlm: Molmo2ForConditionalGeneration, inputs: PrefixInputs, kv_source: str = "cache"
) -> PrefixOutput:
    """Run the VLM over the prompt (no LM head) and collect the expert's per-layer K/V."""
    num_layers = len(vlm.model.language_model.layers)
    hooked: list[Tensor | None] = [None] * num_layers
    handles = _pre_rope_key_hooks(vlm, kv_source, hooked) if kv_source != "cache" else []
    try:
        output = vlm.model(
            input_ids=inputs.input_ids,
            pixel_values=inputs.pixel_values,
            image_token_pooling=inputs.image_token_pooling,
            image_grids=inputs.image_grids,
            attention_mask=inputs.attention_mask.long(),
            mm_token_type_ids=inputs.mm_token_type_ids,
            use_cache=True,
        )
    finally:
        for handle in handles:
            handle.remove()
    cache = output.past_key_values
    keys, values = cache_key_values(cache)
    if kv_source != "cache":
        batch, length = inputs.input_ids.shape
        keys = [tensor.reshape(batch, length, -1) for tensor in hooked if tensor is not None]
        if len(keys) != num_layers:
            raise RuntimeError(f"captured K of {len(keys)} of {num_layers} VLM layers")
    return PrefixOutput(
        keys=keys,
        values=values,
        mask=inputs.attention_mask.clone(),
        cache=cache,
        last_hidden_state=output.last_hidden_state,
        input_ids=inputs.input_ids,
    )
