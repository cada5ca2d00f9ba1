"""Greedy continuation of a VLM prefix in a preallocated KV cache (shared by Think and FAST).

Both token families the model writes after the prompt (Think's ``<depth_k>`` grid, FAST's
``<action_k>`` run) are decoded the same way: copy the prefix's K/V into a transformers
``StaticCache`` sized for prompt + span, then feed tokens at fixed positions and read the last
hidden state. The static cache is reused across calls (reallocated only when a longer sequence
arrives), so every step writes in place at a fixed address, as a CUDA-graph capture of the
per-step forward needs, and no step reallocates a growing ``DynamicCache``.

The decoding loops themselves live with their token family (``think.DepthDecoder``,
``fast_policy.ActionTokenDecoder``); this module holds the parts they share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers.cache_utils import StaticCache

from molmoact2_policy.model.vlm import PrefixOutput

# Extra static-cache room so a somewhat longer prompt next time (instruction text varies) does
# not force a reallocation.
STATIC_CACHE_SLACK = 64


@dataclass
class DecodeStats:
    """Cumulative counters of a decoder (tests assert on them; benchmarks print them)."""

    calls: int = 0
    forwards: int = 0  # VLM decoder forwards over the span (the prompt prefill not counted)
    tokens_fed: int = 0  # tokens those forwards processed
    predicted: int = 0  # tokens chosen by argmax (the rest replayed or forced)

    def reset(self) -> None:
        self.calls = self.forwards = self.tokens_fed = self.predicted = 0


class StaticCacheDecoder:
    """The VLM's language model continued from a prefix, one static cache per decoder.

    ``kv_source`` other than ``"cache"`` makes ``forward`` capture each layer's pre-RoPE K
    (what the action expert reads in that configuration) when given a ``hooked`` list.
    """

    def __init__(self, vlm: torch.nn.Module, kv_source: str = "cache") -> None:
        self.vlm = vlm
        self.kv_source = kv_source
        self.stats = DecodeStats()
        self._static: StaticCache | None = None
        self._static_len = 0
        self._static_key: tuple | None = None

    def _language_model(self) -> torch.nn.Module:
        return self.vlm.model.language_model

    def check_head_rows(self, start: int, count: int) -> None:
        """Raise ValueError when LM-head rows ``start..start+count-1`` do not exist."""
        rows = self.vlm.lm_head.weight.shape[0]
        if start < 0 or start + count > rows:
            raise ValueError(
                f"tokens {start}..{start + count - 1} lie outside the LM head ({rows} rows)"
            )

    def _static_cache(self, prefix: PrefixOutput, total: int) -> StaticCache:
        """The preallocated cache (room for ``total`` positions), refilled with the prompt's K/V."""
        first = prefix.cache.layers[0].keys
        cache = self._static
        key = (first.dtype, first.device, first.shape[0])
        if cache is None or self._static_len < total or self._static_key != key:
            self._static_len = total + STATIC_CACHE_SLACK
            self._static_key = key
            cache = StaticCache(config=self.vlm.config.text_config, max_cache_len=self._static_len)
            self._static = cache
        else:
            cache.reset()
        for index, layer in enumerate(prefix.cache.layers):
            cache.update(layer.keys, layer.values, index)
        return cache

    def _forward(
        self,
        cache: StaticCache,
        tokens: list[int],
        position: int,
        hooked: list[list[Tensor]] | None = None,
    ) -> Tensor:
        """Feed ``tokens`` at ``position``; the last position's final hidden state (1, hidden)."""
        return self._forward_all(cache, tokens, position, hooked)[:, -1]

    @staticmethod
    def _truncate(cache: StaticCache, length: int, hooked: list[list[Tensor]], drop: int) -> None:
        """Forget the last ``drop`` fed tokens: the cache continues at ``length`` again.

        Entries past ``length`` stay in the static buffers but the next forward overwrites them
        and the causal mask hides them until then; captured keys lose their last ``drop`` rows.
        """
        for layer in cache.layers:
            if isinstance(layer.cumulative_length, Tensor):
                layer.cumulative_length.fill_(length)
            else:
                layer.cumulative_length = length
        for captured in hooked:
            if captured:
                captured[-1] = captured[-1][:, :-drop]

    def _forward_all(
        self,
        cache: StaticCache,
        tokens: list[int],
        position: int,
        hooked: list[list[Tensor]] | None = None,
    ) -> Tensor:
        """Feed ``tokens`` at ``position``; the final hidden state of each, (1, len, hidden)."""
        device = cache.layers[0].keys.device
        ids = torch.tensor([tokens], dtype=torch.long, device=device)
        positions = torch.arange(position, position + len(tokens), device=device)[None]
        capture = hooked is not None and self.kv_source != "cache"
        handles = self._key_hooks(hooked) if capture else []
        try:
            out = self._language_model()(
                input_ids=ids, position_ids=positions, past_key_values=cache, use_cache=True
            )
        finally:
            for handle in handles:
                handle.remove()
        self.stats.forwards += 1
        self.stats.tokens_fed += len(tokens)
        return out.last_hidden_state

    def _key_hooks(self, hooked: list[list[Tensor]]) -> list[Any]:
        """Capture each layer's pre-RoPE K (the expert's source other than the cache)."""
        handles = []
        for index, layer in enumerate(self._language_model().layers):
            attn = layer.self_attn
            module = attn.k_norm if self.kv_source == "pre_rope" else attn.k_proj

            def hook(_m: Any, _i: Any, output: Tensor, index: int = index) -> None:
                hooked[index].append(output.reshape(output.shape[0], output.shape[1], -1))

            handles.append(module.register_forward_hook(hook))
        return handles


def span_bins(
    generated: list[int], start_id: int, end_id: int, first_id: int, count: int
) -> list[int]:
    """Indices (token id - ``first_id``) of the ids in ``first_id..first_id+count-1`` that
    stand in the first ``start_id`` ... ``end_id`` span of ``generated``, as released.

    The released parser (``_extract_discrete_token_bins`` in the HF ``modeling_molmoact2.py``)
    reads from just after the first ``start_id`` (from the beginning when there is none) to
    the first ``end_id`` after it (to the end when there is none, or when no start was found)
    and silently skips every other id in between.
    """
    start = next((i for i, token in enumerate(generated) if token == start_id), None)
    end = None
    if start is not None:
        end = next(
            (i for i in range(start + 1, len(generated)) if generated[i] == end_id), None
        )
    span = generated[(0 if start is None else start + 1) : (len(generated) if end is None else end)]
    return [token - first_id for token in span if first_id <= token < first_id + count]


def check_single_unpadded(prefix: PrefixOutput, what: str) -> None:
    """Span decoding continues exactly one prompt; padding would shift every position."""
    if prefix.mask.shape[0] != 1 or not bool(prefix.mask.all()):
        raise ValueError(f"{what} takes one unpadded prompt (batch 1)")


__all__ = [
    "STATIC_CACHE_SLACK",
    "DecodeStats",
    "StaticCacheDecoder",
    "check_single_unpadded",
    "span_bins",
]
