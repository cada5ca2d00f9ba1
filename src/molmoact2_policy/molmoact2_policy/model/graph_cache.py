"""Bookkeeping for the CUDA-graph flow runner: context-length buckets, a bounded LRU of captured
graphs, and static input buffers padded to a bucket. Pure tensor code, tested on CPU.

A graph is recorded for fixed tensor shapes. The prompt length changes with the instruction (and
the Think path's depth span), so keying graphs by the exact length would capture a new graph,
with its own static buffers and pool memory, for every instruction a user types. Instead the
context is padded up to a bucket (a multiple of ``granularity`` positions) whose extra positions
are masked out: the attention weights of a masked key are exactly zero (its logit carries the
dtype's most negative value), so the padded loop computes the same chunk. At most
``max_graphs`` graphs are kept; the least recently used one is dropped when a new one is needed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch
from torch import Tensor

from molmoact2_policy.model.action_expert import ExpertContext

DEFAULT_GRANULARITY = 64
DEFAULT_MAX_GRAPHS = 8

V = TypeVar("V")


def bucket_length(length: int, granularity: int = DEFAULT_GRANULARITY) -> int:
    """``length`` rounded up to a multiple of ``granularity`` (itself when granularity <= 1)."""
    if length <= 0:
        raise ValueError(f"context length must be > 0, got {length}")
    if granularity <= 1:
        return length
    return -(-length // granularity) * granularity


class LRUCache(Generic[V]):
    """At most ``capacity`` entries; ``get`` marks an entry used, ``put`` evicts the stalest."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict[Hashable, V] = OrderedDict()

    def get(self, key: Hashable) -> V | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: Hashable, value: V) -> list[tuple[Hashable, V]]:
        """Insert (or replace) ``key``; returns the evicted (key, value) pairs, oldest first."""
        self._entries[key] = value
        self._entries.move_to_end(key)
        evicted = []
        while len(self._entries) > self.capacity:
            evicted.append(self._entries.popitem(last=False))
        return evicted

    def keys(self) -> list[Hashable]:
        """Least recently used first."""
        return list(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


@dataclass
class StaticLoopInputs:
    """The buffers one recorded loop reads, with the context padded to ``length`` positions."""

    ctx: ExpertContext
    noise: Tensor
    padded_dims: Tensor  # (A,) bool, True on padded action dims

    @classmethod
    def like(
        cls, ctx: ExpertContext, noise: Tensor, action_dim_mask: Tensor, length: int
    ) -> StaticLoopInputs:
        """Buffers shaped for ``noise`` and a context of ``length`` positions, filled with these."""
        if length < ctx.context_length:
            raise ValueError(f"bucket {length} < context length {ctx.context_length}")

        def grown(tensor: Tensor) -> Tensor:  # (B, H, S, D) -> (B, H, length, D), zeros
            shape = (*tensor.shape[:2], length, tensor.shape[3])
            return torch.zeros(shape, dtype=tensor.dtype, device=tensor.device)

        mask = ctx.additive_mask
        static = cls(
            ctx=ExpertContext(
                keys=[grown(k) for k in ctx.keys],
                values=[grown(v) for v in ctx.values],
                additive_mask=torch.full(
                    (*mask.shape[:-1], length), torch.finfo(mask.dtype).min,
                    dtype=mask.dtype, device=mask.device,
                ),
                rope_cos=None if ctx.rope_cos is None else ctx.rope_cos.detach().clone(),
                rope_sin=None if ctx.rope_sin is None else ctx.rope_sin.detach().clone(),
            ),
            noise=torch.empty_like(noise),
            padded_dims=torch.empty_like(action_dim_mask),
        )
        static.copy_in(ctx, noise, action_dim_mask)
        return static

    def copy_in(self, ctx: ExpertContext, noise: Tensor, action_dim_mask: Tensor) -> None:
        """Write a fresh observation into the buffers; positions past it are masked out."""
        length = ctx.context_length
        for static, fresh in zip(self.ctx.keys, ctx.keys, strict=True):
            static[:, :, :length].copy_(fresh)
            static[:, :, length:].zero_()
        for static, fresh in zip(self.ctx.values, ctx.values, strict=True):
            static[:, :, :length].copy_(fresh)
            static[:, :, length:].zero_()
        mask = self.ctx.additive_mask
        mask[..., :length].copy_(ctx.additive_mask)
        mask[..., length:].fill_(torch.finfo(mask.dtype).min)
        if self.ctx.rope_cos is not None and ctx.rope_cos is not None:
            self.ctx.rope_cos.copy_(ctx.rope_cos)
        if self.ctx.rope_sin is not None and ctx.rope_sin is not None:
            self.ctx.rope_sin.copy_(ctx.rope_sin)
        self.noise.copy_(noise)
        torch.logical_not(action_dim_mask, out=self.padded_dims)
