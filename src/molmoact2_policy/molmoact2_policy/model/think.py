"""MolmoAct2-Think: adaptive depth-token decoding and the Think policy.

After the prompt the model writes a 10 x 10 grid of ``<depth_k>`` tokens (VQ-VAE codes of the
main camera's depth, row-major), then the action expert reads the VLM's per-layer K/V of the
prompt *and* the depth tokens. Decoding is greedy over the ``num_depth_tokens`` depth logits
only (the LM head is applied to those rows alone).

Adaptive decoding (``DepthDecoder.decode``): given the codes cached for the previous frame and
which cells changed (``depth_change``), unchanged cells are not predicted. Known tokens
(``<depth_start>``, cached codes, the code just predicted) are collected into a run and fed in
one multi-token forward right before the next changed cell needs its logits; the final run also
carries ``<depth_end>``. So nothing changed -> exactly one forward for the whole span; every
cell changed -> 101 forwards, the same as the reference path (``adaptive=False``: one forward
per token, the behaviour of plain greedy decoding and the reference the adaptive path is tested
against). The released decoder replays each unchanged run in its own forward; merging the code
just predicted into the next run gives the same tokens with fewer forwards.

Sequence layout (as the released model decodes it, ``_generate_depth_prefix`` in
``huggingface/lerobot`` ``src/lerobot/policies/molmoact2/hf_model/modeling_molmoact2.py``): the
Think prompt asks for the depth map first and ends ``<depth_output><action_output>``; decoding
feeds ``<depth_start>``, the codes, then continues greedily over the whole vocabulary until the
model writes ``<depth_end>`` (in practice the very next token; at most
max(8, the checkpoint's ``max_action_horizon``) tokens). ``<depth_end>`` is fed along with the
last known codes and accepted when the logits after the codes pick it, so the usual case costs
no extra forward; any other choice rolls that token back and decodes token by token. The
expert's context is the whole sequence. Checkpoints that never learned to write ``<depth_end>``
(our random presets: ``think_force_depth_end``, not a released key) get it appended.

The released non-adaptive path (``enable_adaptive_depth=False``) is ``DepthDecoder.decode_free``
(``ThinkPolicy.depth_decoding = "free"``): nothing forced, greedy over the whole vocabulary from
the prompt until ``<depth_end>``, the codes parsed from the span as released.

KV cache: the depth span is decoded into a transformers ``StaticCache`` preallocated for
prompt + depth span and reused across calls (reallocated only when a longer prompt arrives):
every decode step writes in place at a fixed address, which is what a CUDA-graph capture of the
per-step forward needs, and no step reallocates the growing cache as a ``DynamicCache`` would.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
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
from molmoact2_policy.model.decoding import (
    DecodeStats,
    StaticCacheDecoder,
    check_single_unpadded,
    span_bins,
)
from molmoact2_policy.model.policy import MolmoAct2Policy
from molmoact2_policy.model.vlm import PrefixOutput, flatten_heads
from molmoact2_policy.policy_api import (
    ActionChunkResult,
    PolicyInputError,
    PolicyUnavailableError,
    RtcRequest,
    validate_observation,
)


class DepthDecodeError(RuntimeError):
    """The model did not close the depth span: no chunk may come from this step."""


# The depth decoder counts with the shared decoder counters (``predicted``: cells by argmax).
DepthDecodeStats = DecodeStats


@dataclass
class DepthDecodeOutput:
    """Codes of one frame plus the context the action expert reads."""

    codes: np.ndarray  # (cells,) int64 in [0, num_depth_tokens)
    changed: np.ndarray  # (cells,) bool: predicted (True) or replayed from the cache
    span_ids: list[int]  # what followed the prompt: <depth_start>, codes, ..., <depth_end>
    keys: list[Tensor]  # per layer (1, S_total, kv_dim): prompt + span
    values: list[Tensor]
    mask: Tensor  # (1, S_total) bool, all True (batch 1, no padding)
    depth_token_mask: Tensor  # (1, S_total) bool, True on the span's <depth_k> codes
    forwards: int  # forwards this call took
    cache: StaticCache = field(repr=False)


# config.json token ids depth decoding cannot run without (null is the released default).
DEPTH_TOKEN_IDS = ("depth_token_start_id", "depth_start_token_id", "depth_end_token_id")


class DepthDecoder(StaticCacheDecoder):
    """Greedy depth-span decoding over a Molmo2 VLM, adaptive or token by token.

    ``end_budget``: tokens the model may write after the codes before ``<depth_end>``.
    """

    def __init__(self, vlm: torch.nn.Module, config: MolmoAct2Config, end_budget: int = 8) -> None:
        missing = [name for name in DEPTH_TOKEN_IDS if getattr(config, name) is None]
        if missing:
            raise ValueError(f"config lacks {', '.join(missing)}: not a Think checkpoint")
        super().__init__(vlm, config.expert_kv_source)
        self.config = config
        self.num_cells = int(config.num_depth_codes)
        self.num_codes = int(config.num_depth_tokens)
        self.code_start = int(config.depth_token_start_id)
        self.start_id = int(config.depth_start_token_id)
        self.end_id = int(config.depth_end_token_id)
        self.force_end = bool(config.think_force_depth_end)
        if end_budget < 1:
            raise ValueError(f"end_budget must be >= 1, got {end_budget}")
        self.end_budget = int(end_budget)
        try:
            self.check_head_rows(self.code_start, self.num_codes)
            self.check_head_rows(self.end_id, 1)
        except ValueError as error:
            raise ValueError(f"depth {error}") from None

    def _depth_logits(self, hidden: Tensor) -> Tensor:
        rows = self.vlm.lm_head.weight[self.code_start : self.code_start + self.num_codes]
        return hidden.to(rows.dtype) @ rows.T

    def _next_token(self, hidden: Tensor) -> int:
        """Greedy choice over the whole vocabulary (what follows the codes)."""
        weight = self.vlm.lm_head.weight
        return int((hidden.to(weight.dtype) @ weight.T).argmax(dim=-1).item())

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
        Raises DepthDecodeError when the model does not write ``<depth_end>`` in time.
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
        writer = _SpanWriter(
            self,
            self._static_cache(prefix, prompt_len + 1 + n + self.end_budget),
            [[] for _ in self._language_model().layers],
            prompt_len,
        )
        forwards_before = self.stats.forwards
        codes = cached.copy()
        pending: list[int] = [self.start_id]  # known tokens not yet fed
        next_hidden = prefix.last_hidden_state[:, -1]  # replaced before first use
        for cell in range(n):
            if predict[cell]:
                if pending:
                    next_hidden = writer.feed(pending)[:, -1]
                    pending = []
                codes[cell] = int(self._depth_logits(next_hidden).argmax(dim=-1).item())
                self.stats.predicted += 1
            pending.append(self.code_start + int(codes[cell]))
            if not adaptive and cell < n - 1:
                next_hidden = writer.feed(pending)[:, -1]
                pending = []
        self._close_span(writer, pending)
        self.stats.calls += 1
        positions = list(range(prompt_len + 1, prompt_len + 1 + n))
        return self._output(prefix, writer, codes, predict.copy(), positions, forwards_before)

    @torch.no_grad()
    def decode_free(self, prefix: PrefixOutput, max_tokens: int) -> DepthDecodeOutput:
        """The released non-adaptive path (``enable_adaptive_depth=False``).

        Greedy argmax over the whole LM head from the prompt's own last logits (nothing is
        forced, not even ``<depth_start>``), each token fed back, until the model has written
        and fed ``<depth_end>`` or ``max_tokens`` tokens (then DepthDecodeError, as the release
        raises). The codes are the ``<depth_k>`` ids of the first ``<depth_start>`` ...
        ``<depth_end>`` span (``decoding.span_bins``, the released parser). A grid of another
        size than ``num_depth_codes`` (the release would go on with it) is refused: it cannot be
        cached, shown or trusted.
        """
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        check_single_unpadded(prefix, "Think decoding")
        prompt_len = prefix.mask.shape[1]
        writer = _SpanWriter(
            self,
            self._static_cache(prefix, prompt_len + max_tokens),
            [[] for _ in self._language_model().layers],
            prompt_len,
        )
        forwards_before = self.stats.forwards
        hidden = prefix.last_hidden_state[:, -1]
        closed = False
        for _ in range(max_tokens):
            chosen = self._next_token(hidden)
            self.stats.predicted += 1
            hidden = writer.feed([chosen])[:, -1]
            if chosen == self.end_id:
                closed = True
                break
        self.stats.calls += 1
        if not closed:
            raise DepthDecodeError(
                f"the model did not write <depth_end> within {max_tokens} tokens"
            )
        bins = span_bins(writer.span, self.start_id, self.end_id, self.code_start, self.num_codes)
        if not bins:
            raise DepthDecodeError(
                "the model wrote no depth codes between <depth_start> and <depth_end>"
            )
        if len(bins) != self.num_cells:
            raise DepthDecodeError(
                f"the model wrote {len(bins)} depth codes, the grid has {self.num_cells} cells"
            )
        span = writer.span
        start = span.index(self.start_id) if self.start_id in span else -1
        positions = [
            prompt_len + index
            for index, token in enumerate(span)
            if index > start and self.code_start <= token < self.code_start + self.num_codes
        ][: self.num_cells]
        return self._output(
            prefix,
            writer,
            np.asarray(bins, dtype=np.int64),
            np.ones(self.num_cells, dtype=bool),
            positions,
            forwards_before,
        )

    def _output(
        self,
        prefix: PrefixOutput,
        writer: _SpanWriter,
        codes: np.ndarray,
        changed: np.ndarray,
        code_positions: list[int],
        forwards_before: int,
    ) -> DepthDecodeOutput:
        cache = writer.cache
        total = writer.position
        values = [flatten_heads(layer.values[:, :, :total]) for layer in cache.layers]
        if self.kv_source == "cache":
            keys = [flatten_heads(layer.keys[:, :, :total]) for layer in cache.layers]
        else:
            keys = [
                torch.cat([prompt_keys, *captured], dim=1)
                for prompt_keys, captured in zip(prefix.keys, writer.hooked, strict=True)
            ]
        device = prefix.mask.device
        mask = torch.ones(1, total, dtype=torch.bool, device=device)
        depth_mask = torch.zeros(1, total, dtype=torch.bool, device=device)
        depth_mask[0, code_positions] = True
        return DepthDecodeOutput(
            codes=codes,
            changed=changed,
            span_ids=list(writer.span),
            keys=keys,
            values=values,
            mask=mask,
            depth_token_mask=depth_mask,
            forwards=self.stats.forwards - forwards_before,
            cache=cache,
        )

    def _close_span(self, writer: _SpanWriter, pending: list[int]) -> None:
        """Feed the last known codes and whatever the model writes up to ``<depth_end>``."""
        hidden = writer.feed([*pending, self.end_id])
        if self.force_end:
            return
        chosen = self._next_token(hidden[:, -2])  # the model's pick right after the codes
        if chosen == self.end_id:
            return
        # The model writes something else first: take <depth_end> back and follow the model.
        writer.take_back(1)
        for _ in range(self.end_budget):
            hidden = writer.feed([chosen])
            if chosen == self.end_id:
                return
            chosen = self._next_token(hidden[:, -1])
        raise DepthDecodeError(
            f"the model did not write <depth_end> within {self.end_budget} tokens after the "
            "depth codes"
        )


class _SpanWriter:
    """Feeds tokens after the prompt into the static cache and remembers what it fed."""

    def __init__(
        self,
        decoder: StaticCacheDecoder,
        cache: StaticCache,
        hooked: list[list[Tensor]],
        position: int,
    ) -> None:
        self.decoder = decoder
        self.cache = cache
        self.hooked = hooked
        self.position = position
        self.span: list[int] = []

    def feed(self, tokens: list[int]) -> Tensor:
        """Final hidden states of ``tokens`` (1, len, hidden)."""
        hidden = self.decoder._forward_all(self.cache, tokens, self.position, self.hooked)
        self.position += len(tokens)
        self.span.extend(tokens)
        return hidden

    def take_back(self, count: int) -> None:
        """Forget the last ``count`` fed tokens (all from the latest ``feed``)."""
        self.position -= count
        del self.span[-count:]
        self.decoder._truncate(self.cache, self.position, self.hooked, drop=count)


@dataclass
class DepthCache:
    """What Think remembers between frames: the last frame (as patches) and its codes.

    As released (``depth_cache = {"image": latest first image, "depth_bins": ...}`` after every
    step), the next frame is compared with the last one whole, whichever cells were replayed.
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


def update_cache(cache: DepthCache, patches: np.ndarray, codes: np.ndarray) -> None:
    """Remember this frame and its codes (the reference of the next comparison)."""
    cache.patches = patches.copy()
    cache.codes = np.asarray(codes, dtype=np.int64).copy()


def depth_gate_positions(input_ids: Tensor, config: MolmoAct2Config) -> Tensor:
    """(B, S) bool: the tokens the depth gate scales: every ``<depth_k>`` and the span markers.

    As released, the gate covers ``<depth_output>``, ``<depth_start>``, ``<depth_end>`` and the
    codes wherever they stand, so it is computed from the ids rather than from positions.
    """
    start = int(config.depth_token_start_id)
    codes = (input_ids >= start) & (input_ids < start + int(config.num_depth_tokens))
    markers = [config.depth_output_token_id, config.depth_start_token_id, config.depth_end_token_id]
    for marker in markers:
        if marker is not None:
            codes |= input_ids == int(marker)
    return codes


#: How ThinkPolicy decodes the depth span (``ThinkPolicy.depth_decoding``).
DEPTH_DECODINGS = ("adaptive", "full", "free")


class ThinkPolicy(MolmoAct2Policy):
    """MolmoAct2-Think: depth tokens of the main camera, then the flow expert over both.

    Owns the depth cache {last frame patches, codes}: ``reset()`` clears it (with the
    noise sequence). ``depth_decoding``:

    * ``"adaptive"`` (default): the released ``enable_adaptive_depth=True`` path: changed cells
      predicted, the others replayed from the cache (all predicted when it is empty);
    * ``"full"``: the same path with every cell re-predicted each step (the reference the
      adaptive one is measured against; what the release does on a first frame);
    * ``"free"``: the released ``enable_adaptive_depth=False`` path (``DepthDecoder.decode_free``:
      unconstrained greedy from the prompt until ``<depth_end>``).
    """

    mode_name = "think"
    required_token_ids = DEPTH_TOKEN_IDS
    depth_reasoning = True  # the prompt asks for the depth map first

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The released decoder lets the model write up to max(8, H) tokens after the codes,
        # H the checkpoint's max_action_horizon (``_resolve_action_horizon()`` without a tag).
        self.decoder = DepthDecoder(
            self.model.vlm, self.config, end_budget=max(8, int(self.config.max_action_horizon))
        )
        self.depth_cache = DepthCache()
        self.main_camera = self.embodiment.camera_names[0]
        self.change_threshold = DEFAULT_THRESHOLD
        self.depth_decoding = "adaptive"
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

    def configure_depth_decoding(self, decoding: str) -> None:
        """``"adaptive"``, ``"full"`` or ``"free"`` (class docstring); clears the cache."""
        if decoding not in DEPTH_DECODINGS:
            raise ValueError(
                f"unknown depth decoding {decoding!r}; known: {', '.join(DEPTH_DECODINGS)}"
            )
        with self._lock:
            self.depth_decoding = decoding
            self.depth_cache.clear()

    def act(
        self,
        images: Mapping[str, np.ndarray],
        state: np.ndarray,
        instruction: str,
        *,
        seed: int | None = None,
        num_steps: int | None = None,
        rtc: RtcRequest | None = None,
    ) -> ActionChunkResult:
        validate_observation(self.embodiment, images, state, instruction)
        runner = self.flow_runner_for(num_steps)  # a bad count fails before any work
        with self._inference(), torch.inference_mode():
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
            decoding = self.depth_decoding
            if decoding not in DEPTH_DECODINGS:
                raise ValueError(
                    f"unknown depth decoding {decoding!r}; known: {', '.join(DEPTH_DECODINGS)}"
                )
            if decoding != "adaptive":
                changed = np.ones_like(changed)
            inputs = self.prepare_inputs(images, np.asarray(state), instruction)
            noise = self.make_noise(seed)
            guide = self.rtc_guide(rtc)
            after_preprocess = self._clock()
            prefix = self.run_prefix(inputs)
            after_prefix = self._clock()
            try:
                if decoding == "free":
                    depth = self.decoder.decode_free(prefix, self.free_depth_budget)
                else:
                    depth = self.decoder.decode(prefix, self.depth_cache.codes, changed)
            except DepthDecodeError as error:
                raise PolicyUnavailableError(str(error)) from None
            after_depth = self._clock()
            sequence = torch.cat(
                [inputs.input_ids, inputs.input_ids.new_tensor([depth.span_ids])], dim=1
            )
            ctx = self.expert_context(
                PrefixOutput(
                    keys=depth.keys,
                    values=depth.values,
                    mask=depth.mask,
                    cache=depth.cache,
                    last_hidden_state=prefix.last_hidden_state,
                    input_ids=sequence,
                ),
                depth_gate_positions(sequence, self.config),
            )
            normalized = runner.sample(ctx, noise, self.action_dim_mask, guide)
            after_flow = self._clock()
            positions = self.freeze_prefix(self.postprocess(normalized), rtc)
            update_cache(self.depth_cache, patches, depth.codes)
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

    @property
    def free_depth_budget(self) -> int:
        """Tokens the released non-adaptive decoding may write: max(cells + 8, 16 H, 1)."""
        horizon = int(self.config.max_action_horizon)
        return max(int(self.config.num_depth_codes) + 8, horizon * 16, 1)

    def _reset_state(self) -> None:
        """Restart the noise sequence and forget the depth cache (next frame: all cells)."""
        super()._reset_state()
        self.depth_cache.clear()

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta.update(
            depth_grid=[self.grid, self.grid],
            depth_codes=self.config.num_depth_tokens,
            depth_camera=self.main_camera,
            change_threshold=self.change_threshold,
            depth_decoding=self.depth_decoding,
            depth_gate=self.model.action_expert_depth_gate is not None,
        )
        return meta


__all__ = [
    "DEPTH_DECODINGS",
    "DepthCache",
    "DepthDecodeError",
    "DepthDecodeOutput",
    "DepthDecodeStats",
    "DepthDecoder",
    "ThinkPolicy",
    "depth_gate_positions",
    "plan_frame",
    "update_cache",
]
