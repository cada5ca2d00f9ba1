"""MolmoAct2-Think: adaptive depth-token decoding and the Think policy.

After the prompt the model writes a 10 x 10 grid of ``<depth_k>`` tokens (VQ-VAE codes of the
main camera's depth, row-major), then the action expert reads the VLM's per-layer K/V of the
prompt *and* the depth tokens. Decoding is greedy over the ``num_depth_tokens`` depth logits
only (the LM head is applied to those rows alone).

Adaptive decoding (``DepthDecoder.decode``): given the codes cached for the previous frame and
which cells changed (``depth_change``), unchanged cells are not predicted. Known tokens (cached
codes, and the code just predicted) are collected into a run and fed in one multi-token forward
right before the next changed cell needs its logits; the final run also carries the tail
tokens. So nothing changed -> exactly one forward for all 100 cells; every cell changed -> 100
forwards, the same as the reference path (``adaptive=False``: one forward per cell, the
behaviour of plain greedy decoding and the reference the adaptive path is tested against).

Sequence layout (uncertain, kept in the constants below): the robot prompt's trailing
``<action_output>`` is replaced by ``<depth_output><depth_start>``; after the codes come
``<depth_end><action_output>``. The expert's context is the whole sequence.

KV cache: the depth span is decoded into a transformers ``StaticCache`` preallocated for
prompt + depth span and reused across calls (reallocated only when a longer prompt arrives):
every decode step writes in place at a fixed address, which is what a CUDA-graph capture of the
per-step forward needs, and no step reallocates the growing cache as a ``DynamicCache`` would.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from transformers.cache_utils import StaticCache

from molmoact2_policy.depth_change import (
    DEFAULT_GRID,
    DEFAULT_SIZE,
    DEFAULT_THRESHOLD,
    changes_from_patches,
    prepare_frame,
)
from molmoact2_policy.model.config import MolmoAct2Config
from molmoact2_policy.model.decoding import DecodeStats, StaticCacheDecoder, check_single_unpadded
from molmoact2_policy.model.policy import MolmoAct2Policy
from molmoact2_policy.model.vlm import PrefixOutput, flatten_heads
from molmoact2_policy.policy_api import (
    ActionChunkResult,
    PolicyInputError,
    validate_observation,
)

# The Think continuation of the robot prompt (see the module docstring).
PROMPT_END = "<action_output>"
THINK_PROMPT_END = "<depth_output><depth_start>"
THINK_TAIL_TOKENS = ("<depth_end>", "<action_output>")


def think_prompt(prompt: str) -> str:
    """The robot prompt with its answer start replaced by the start of the depth span."""
    if not prompt.endswith(PROMPT_END):
        raise ValueError(f"robot prompt must end with {PROMPT_END!r} to become a Think prompt")
    return prompt[: -len(PROMPT_END)] + THINK_PROMPT_END


# The depth decoder counts with the shared decoder counters (``predicted``: cells by argmax).
DepthDecodeStats = DecodeStats


@dataclass
class DepthDecodeOutput:
    """Codes of one frame plus the context the action expert reads."""

    codes: np.ndarray  # (cells,) int64 in [0, num_depth_tokens)
    changed: np.ndarray  # (cells,) bool: predicted (True) or replayed from the cache
    keys: list[Tensor]  # per layer (1, S_total, kv_dim): prompt + depth span + tail
    values: list[Tensor]
    mask: Tensor  # (1, S_total) bool, all True (batch 1, no padding)
    depth_token_mask: Tensor  # (1, S_total) bool, True on the <depth_k> positions
    forwards: int  # forwards this call took
    cache: StaticCache = field(repr=False)


class DepthDecoder(StaticCacheDecoder):
    """Greedy depth-span decoding over a Molmo2 VLM, adaptive or token by token."""

    def __init__(
        self, vlm: torch.nn.Module, config: MolmoAct2Config, tail_token_ids: Sequence[int]
    ) -> None:
        missing = [name for name in ("depth_token_start_id",) if getattr(config, name) is None]
        if missing:
            raise ValueError(f"config lacks {', '.join(missing)}: not a Think checkpoint")
        super().__init__(vlm, config.expert_kv_source)
        self.config = config
        self.num_cells = int(config.num_depth_codes)
        self.num_codes = int(config.num_depth_tokens)
        self.code_start = int(config.depth_token_start_id)
        try:
            self.check_head_rows(self.code_start, self.num_codes)
        except ValueError as error:
            raise ValueError(f"depth {error}") from None
        self.tail_token_ids = [int(t) for t in tail_token_ids]

    def _depth_logits(self, hidden: Tensor) -> Tensor:
        rows = self.vlm.lm_head.weight[self.code_start : self.code_start + self.num_codes]
        return hidden.to(rows.dtype) @ rows.T

    # ------------------------------------------------------------------ decoding
    @torch.no_grad()
    def decode(
        self,
        prefix: PrefixOutput,
        cached_codes: np.ndarray | None = None,
        changed: np.ndarray | None = None,
        *,
        adaptive: bool = True,
    ) -> DepthDecodeOutput:
        """Depth codes for the frame whose prompt ``prefix`` encodes.

        ``cached_codes``/``changed``: the previous frame's codes and which cells to re-predict;
        without them every cell is predicted. ``adaptive=False`` is the reference path: one
        forward per cell (cached codes still forced where ``changed`` is False).
        """
        n = self.num_cells
        check_single_unpadded(prefix, "Think decoding")
        if cached_codes is None or changed is None:
            cached = np.zeros(n, dtype=np.int64)
            predict = np.ones(n, dtype=bool)
        else:
            cached = np.asarray(cached_codes, dtype=np.int64)
            predict = np.asarray(changed, dtype=bool)
            if cached.shape != (n,) or predict.shape != (n,):
                raise ValueError(
                    f"cached codes {cached.shape} and changed mask {predict.shape} must be ({n},)"
                )
            if cached.min() < 0 or cached.max() >= self.num_codes:
                raise ValueError(f"cached depth codes must lie in [0, {self.num_codes})")

        prompt_len = prefix.mask.shape[1]
        total = prompt_len + n + len(self.tail_token_ids)
        cache = self._static_cache(prefix, total)
        hooked: list[list[Tensor]] = [[] for _ in self._language_model().layers]
        forwards_before = self.stats.forwards
        codes = cached.copy()
        next_hidden = prefix.last_hidden_state[:, -1]  # predicts cell 0
        pending: list[int] = []  # known tokens not yet fed
        position = prompt_len
        for cell in range(n):
            if predict[cell]:
                if pending:
                    next_hidden = self._forward(cache, pending, position, hooked)
                    position += len(pending)
                    pending = []
                codes[cell] = int(self._depth_logits(next_hidden).argmax(dim=-1).item())
                self.stats.predicted += 1
            pending.append(self.code_start + int(codes[cell]))
            if not adaptive and cell < n - 1:
                next_hidden = self._forward(cache, pending, position, hooked)
                position += len(pending)
                pending = []
        self._forward(cache, pending + self.tail_token_ids, position, hooked)
        self.stats.calls += 1

        values = [flatten_heads(layer.values[:, :, :total]) for layer in cache.layers]
        if self.kv_source == "cache":
            keys = [flatten_heads(layer.keys[:, :, :total]) for layer in cache.layers]
        else:
            keys = [
                torch.cat([prompt_keys, *captured], dim=1)
                for prompt_keys, captured in zip(prefix.keys, hooked, strict=True)
            ]
        device = prefix.mask.device
        mask = torch.ones(1, total, dtype=torch.bool, device=device)
        depth_mask = torch.zeros(1, total, dtype=torch.bool, device=device)
        depth_mask[:, prompt_len : prompt_len + n] = True
        return DepthDecodeOutput(
            codes=codes,
            changed=predict.copy(),
            keys=keys,
            values=values,
            mask=mask,
            depth_token_mask=depth_mask,
            forwards=self.stats.forwards - forwards_before,
            cache=cache,
        )


@dataclass
class DepthCache:
    """What Think remembers between frames: the reference frame (as patches) and its codes.

    Each cell's reference patch is the one its code was predicted from: patches of unchanged
    cells are kept, so a slow drift adds up until the cell is re-predicted instead of creeping
    past the threshold one small step at a time.
    """

    patches: np.ndarray | None = None  # prepare_frame output (cells, values)
    codes: np.ndarray | None = None  # (cells,) int64

    @property
    def empty(self) -> bool:
        return self.patches is None or self.codes is None

    def clear(self) -> None:
        self.patches = None
        self.codes = None


def plan_frame(
    cache: DepthCache,
    rgb: np.ndarray,
    *,
    grid: int = DEFAULT_GRID,
    size: int = DEFAULT_SIZE,
    threshold: float = DEFAULT_THRESHOLD,
) -> tuple[np.ndarray, np.ndarray]:
    """(patches of ``rgb``, changed mask) against the cache; all changed when it is empty."""
    patches = prepare_frame(rgb, size, grid)
    if cache.empty:
        return patches, np.ones(grid * grid, dtype=bool)
    return patches, changes_from_patches(cache.patches, patches, threshold).changed


def update_cache(
    cache: DepthCache, patches: np.ndarray, codes: np.ndarray, changed: np.ndarray
) -> None:
    """Store the new codes; re-predicted cells take this frame's patch as their reference."""
    if cache.empty:
        cache.patches = patches.copy()
    else:
        cache.patches[changed] = patches[changed]
    cache.codes = np.asarray(codes, dtype=np.int64).copy()


class ThinkPolicy(MolmoAct2Policy):
    """MolmoAct2-Think: depth tokens of the main camera, then the flow expert over both.

    Owns the depth cache {reference frame patches, codes}: ``reset()`` clears it (with the
    noise sequence). ``adaptive=False`` re-predicts every cell each step (the reference).
    """

    mode_name = "think"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.decoder = DepthDecoder(
            self.model.vlm, self.config, self.tokenizer.token_ids(THINK_TAIL_TOKENS)
        )
        self.depth_cache = DepthCache()
        self.main_camera = self.embodiment.camera_names[0]
        self.change_threshold = DEFAULT_THRESHOLD
        self.adaptive = True
        side = math.isqrt(self.config.num_depth_codes)
        if side * side != self.config.num_depth_codes:
            raise ValueError(f"num_depth_codes {self.config.num_depth_codes} is not a square grid")
        self.grid = side

    def configure_change_detection(self, camera_name: str, threshold: float) -> None:
        """Which camera drives the depth grid, and the re-prediction threshold (clears cache)."""
        if camera_name not in self.embodiment.camera_names:
            raise ValueError(
                f"camera {camera_name!r} is not one of {self.embodiment.name}'s cameras "
                f"({', '.join(self.embodiment.camera_names)})"
            )
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"change threshold {threshold} is not in [-1, 1]")
        with self._lock:
            self.main_camera = camera_name
            self.change_threshold = float(threshold)
            self.depth_cache.clear()

    def build_prompt(self, state: np.ndarray, instruction: str) -> str:
        return think_prompt(super().build_prompt(state, instruction))

    def act(
        self,
        images: Mapping[str, np.ndarray],
        state: np.ndarray,
        instruction: str,
        *,
        seed: int | None = None,
    ) -> ActionChunkResult:
        validate_observation(self.embodiment, images, state, instruction)
        with self._lock, torch.inference_mode():
            start = time.perf_counter()
            try:
                patches, changed = plan_frame(
                    self.depth_cache,
                    images[self.main_camera],
                    grid=self.grid,
                    size=DEFAULT_SIZE,
                    threshold=self.change_threshold,
                )
            except ValueError as error:
                raise PolicyInputError(f"camera {self.main_camera!r}: {error}") from None
            if not self.adaptive:
                changed = np.ones_like(changed)
            inputs = self.prepare_inputs(images, np.asarray(state), instruction)
            noise = self.make_noise(seed)
            after_preprocess = self._clock()
            prefix = self.run_prefix(inputs)
            after_prefix = self._clock()
            depth = self.decoder.decode(
                prefix, self.depth_cache.codes, changed, adaptive=self.adaptive
            )
            after_depth = self._clock()
            ctx = self.model.expert_context(
                PrefixOutput(
                    keys=depth.keys,
                    values=depth.values,
                    mask=depth.mask,
                    cache=depth.cache,
                    last_hidden_state=prefix.last_hidden_state,
                ),
                depth.depth_token_mask,
            )
            normalized = self.sample_chunk(ctx, noise)
            after_flow = self._clock()
            positions = self.postprocess(normalized)
            update_cache(self.depth_cache, patches, depth.codes, depth.changed)
            end = time.perf_counter()
        timings = {
            "preprocess": after_preprocess - start,
            "prefix": after_prefix - after_preprocess,
            "depth": after_depth - after_prefix,
            "flow": after_flow - after_depth,
            "total": end - start,
        }
        return self.chunk_result(
            positions,
            timings,
            depth_codes=depth.codes.copy(),
            depth_changed=depth.changed.copy(),
        )

    def reset(self) -> None:
        """Restart the noise sequence and forget the depth cache (next frame: all cells)."""
        super().reset()
        with self._lock:
            self.depth_cache.clear()

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta.update(
            depth_grid=[self.grid, self.grid],
            depth_codes=self.config.num_depth_tokens,
            depth_camera=self.main_camera,
            change_threshold=self.change_threshold,
            adaptive_depth=self.adaptive,
            depth_gate=self.model.action_expert_depth_gate is not None,
        )
        return meta


__all__ = [
    "THINK_PROMPT_END",
    "THINK_TAIL_TOKENS",
    "DepthCache",
    "DepthDecodeOutput",
    "DepthDecodeStats",
    "DepthDecoder",
    "ThinkPolicy",
    "plan_frame",
    "think_prompt",
    "update_cache",
]
