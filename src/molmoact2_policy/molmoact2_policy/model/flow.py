"""Euler flow sampling for the action expert: uncached reference, cached loop, CUDA-graph runner.

Convention: t = 0 is noise, t = 1 is data; N Euler steps with dt = 1/N at t_k = k/N,
x_{k+1} = x_k + dt * v(x_k, t_k). Padded action dims (action_dim_mask False) are zeroed in the
noise and in the velocity at every step, so they stay exactly zero.

All three samplers compute the same numbers (up to float rounding); they differ only in how much
work is repeated per step:
- `euler_sample_reference` calls `ActionExpert.forward`, which re-projects the context and
  re-runs the time embedding and adaLN every step.
- `CachedFlowSampler` uses a prepared `ExpertContext` (context K/V projected once per
  observation) and a `TimeModulation` computed once per weights and step count.
- `GraphFlowRunner` records the cached N-step loop as CUDA graphs keyed by context-length
  bucket (`graph_cache.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from molmoact2_policy.model.action_expert import (
    ActionExpert,
    ExpertContext,
    TimeModulation,
    euler_timesteps,
)
from molmoact2_policy.model.graph_cache import (
    DEFAULT_GRANULARITY,
    DEFAULT_MAX_GRAPHS,
    LRUCache,
    StaticLoopInputs,
    bucket_length,
)
from molmoact2_policy.model.rtc import RtcGuide, RtcRunner


def _check_dim_mask(action_dim_mask: Tensor, action_dim: int) -> None:
    if action_dim_mask.dtype != torch.bool or tuple(action_dim_mask.shape) != (action_dim,):
        raise ValueError(
            f"action_dim_mask must be a ({action_dim},) bool tensor (True = real action dim), "
            f"got {tuple(action_dim_mask.shape)} {action_dim_mask.dtype}"
        )


def _check_noise(expert: ActionExpert, noise: Tensor, action_dim_mask: Tensor) -> None:
    cfg = expert.config
    if noise.dim() != 3 or noise.shape[-1] != cfg.max_action_dim:
        raise ValueError(
            f"noise must be (B, H, {cfg.max_action_dim}), got {tuple(noise.shape)}"
        )
    if not 0 < noise.shape[1] <= cfg.max_action_horizon:
        raise ValueError(
            f"noise horizon {noise.shape[1]} outside 1..{cfg.max_action_horizon}"
        )
    _check_dim_mask(action_dim_mask, noise.shape[-1])
    if action_dim_mask.device != noise.device:
        raise ValueError(
            f"action_dim_mask is on {action_dim_mask.device}, noise on {noise.device}"
        )


def _check_context_matches(expert: ActionExpert, ctx: ExpertContext, noise: Tensor) -> None:
    if len(ctx.keys) != expert.config.num_layers or len(ctx.values) != expert.config.num_layers:
        raise ValueError(
            f"context has {len(ctx.keys)} layers, the expert has {expert.config.num_layers}"
        )
    if ctx.batch_size != noise.shape[0]:
        raise ValueError(f"context batch {ctx.batch_size} != noise batch {noise.shape[0]}")
    if ctx.additive_mask.device != noise.device:
        raise ValueError(f"context is on {ctx.additive_mask.device}, noise on {noise.device}")


def make_noise(
    shape: Sequence[int],
    generator: torch.Generator | None,
    device: torch.device | str,
    dtype: torch.dtype,
    action_dim_mask: Tensor,
) -> Tensor:
    """Standard Gaussian noise (B, H, A) with the padded action dims zeroed.

    Drawn in float32 on the generator's device and then moved, so one seed gives the same noise
    whatever device or dtype the expert runs in.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise ValueError(f"noise shape must be (B, H, A), got {shape}")
    _check_dim_mask(action_dim_mask, shape[-1])
    source_device = generator.device if generator is not None else device
    noise = torch.randn(shape, generator=generator, device=source_device, dtype=torch.float32)
    noise = noise.to(device=device, dtype=dtype)
    return noise.masked_fill_(~action_dim_mask.to(noise.device), 0.0)


@torch.no_grad()
def euler_sample_reference(
    expert: ActionExpert,
    context_k: Sequence[Tensor],
    context_v: Sequence[Tensor],
    context_mask: Tensor,
    noise: Tensor,
    num_steps: int,
    action_dim_mask: Tensor,
) -> Tensor:
    """Uncached Euler integration from noise (t=0) to actions (t=1): the numerical reference."""
    _check_noise(expert, noise, action_dim_mask)
    padded = ~action_dim_mask
    timesteps = euler_timesteps(num_steps, noise.device)
    dt = 1.0 / num_steps
    x = noise.masked_fill(padded, 0.0)
    for step in range(num_steps):
        t = timesteps[step].expand(x.shape[0])
        velocity = expert(x, t, context_k, context_v, context_mask).masked_fill(padded, 0.0)
        x = x + dt * velocity
    return x


def _cached_euler_loop(
    expert: ActionExpert,
    ctx: ExpertContext,
    noise: Tensor,
    padded: Tensor,
    tmod: TimeModulation,
) -> Tensor:
    """The N-step loop over a prepared context; no validation, no host syncs (graph-capturable)."""
    dt = 1.0 / tmod.num_steps
    x = noise.masked_fill(padded, 0.0)
    for step in range(tmod.num_steps):
        velocity = expert.forward_cached(x, step, ctx, tmod)
        x.add_(velocity.masked_fill_(padded, 0.0), alpha=dt)
    return x


class CachedFlowSampler:
    """Euler sampling over a prepared context with the adaLN modulation precomputed.

    The modulation depends only on the weights and the step count, so it is computed once (on
    first use, or again when the expert moves to another device/dtype) and reused for every
    observation. Call `refresh()` after changing the weights.
    """

    def __init__(self, expert: ActionExpert, num_steps: int = 10) -> None:
        if num_steps <= 0:
            raise ValueError(f"num_steps must be > 0, got {num_steps}")
        self.expert = expert
        self.num_steps = num_steps
        self._tmod: TimeModulation | None = None
        self._tmod_key: tuple | None = None

    def _weights_key(self) -> tuple:
        weight = self.expert.action_embed.weight
        return (weight.device, weight.dtype)

    @property
    def time_modulation(self) -> TimeModulation:
        key = self._weights_key()
        if self._tmod is None or self._tmod_key != key:
            self._tmod = self.expert.time_modulation(euler_timesteps(self.num_steps, key[0]))
            self._tmod_key = key
        return self._tmod

    def refresh(self) -> None:
        """Recompute the time modulation (call after the expert's weights change)."""
        self._tmod = None
        _ = self.time_modulation

    def validate(self, ctx: ExpertContext, noise: Tensor, action_dim_mask: Tensor) -> None:
        _check_noise(self.expert, noise, action_dim_mask)
        _check_context_matches(self.expert, ctx, noise)
        expert_device = self.expert.action_embed.weight.device
        if noise.device != expert_device:
            raise ValueError(f"noise is on {noise.device}, the expert on {expert_device}")

    @torch.no_grad()
    def sample(self, ctx: ExpertContext, noise: Tensor, action_dim_mask: Tensor) -> Tensor:
        """Integrate `noise` (B, H, A) to an action chunk (B, H, A); padded dims stay zero."""
        self.validate(ctx, noise, action_dim_mask)
        return _cached_euler_loop(
            self.expert, ctx, noise, ~action_dim_mask, self.time_modulation
        )


@dataclass
class _CapturedLoop:
    """One recorded N-step loop and every tensor it reads or writes.

    The graph replays raw addresses: whatever it read at capture (the static inputs, the adaLN
    time tables) must stay alive and unchanged as long as the graph does, so it is held here.
    """

    graph: torch.cuda.CUDAGraph
    inputs: StaticLoopInputs
    tmod: TimeModulation
    output: Tensor


class GraphFlowRunner:
    """The cached Euler loop recorded as CUDA graphs, keyed by context-length bucket.

    Each call pads the context into the static buffers of the graph for its (batch, horizon,
    action dim, context bucket, dtype, device), replays the whole N-step loop with one launch,
    and returns a clone of the static output. Buckets (``graph_cache.bucket_length``) keep one
    graph serving every prompt length in its bucket; at most ``max_graphs`` graphs are kept (least
    recently used dropped) and all of them allocate from one shared memory pool. The adaLN time
    tables are computed before capture and held by each graph, never rebuilt inside one. On CPU,
    or with use_cuda_graph=False, it runs the eager cached loop.
    """

    WARMUP_RUNS = 2

    def __init__(
        self,
        expert: ActionExpert,
        num_steps: int = 10,
        use_cuda_graph: bool = True,
        *,
        granularity: int = DEFAULT_GRANULARITY,
        max_graphs: int = DEFAULT_MAX_GRAPHS,
    ) -> None:
        self.sampler = CachedFlowSampler(expert, num_steps)
        self.use_cuda_graph = use_cuda_graph
        self.granularity = granularity
        self._graphs: LRUCache[_CapturedLoop] = LRUCache(max_graphs)
        self._pool = None  # one graph memory pool for every capture (made on first capture)
        # Real-time chunking (model/rtc.py): its own graphs, its own eager fallback.
        self.rtc = RtcRunner(expert, use_cuda_graph)

    @property
    def expert(self) -> ActionExpert:
        return self.sampler.expert

    @property
    def captured_shapes(self) -> list[tuple]:
        """(batch, horizon, action_dim, context bucket) of every kept graph, oldest use first."""
        return [key[:4] for key in self._graphs.keys()]

    def refresh(self) -> None:
        """Recompute the modulation and drop the graphs (they recorded the old tensors)."""
        self._graphs.clear()
        self.rtc.refresh()
        self.sampler.refresh()

    def graph_key(self, ctx: ExpertContext, noise: Tensor) -> tuple:
        """What one graph serves: shapes with the context length rounded up to its bucket."""
        bucket = bucket_length(ctx.context_length, self.granularity)
        return (*noise.shape, bucket, noise.dtype, ctx.additive_mask.dtype, noise.device)

    def _capture(
        self, ctx: ExpertContext, noise: Tensor, action_dim_mask: Tensor, bucket: int
    ) -> _CapturedLoop:
        tmod = self.sampler.time_modulation  # computed eagerly, before any capture starts
        inputs = StaticLoopInputs.like(ctx, noise, action_dim_mask, bucket)
        device = noise.device
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        # Warm-up off the capture stream: lazy kernel/workspace initialisation must not be recorded.
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP_RUNS):
                _cached_euler_loop(self.expert, inputs.ctx, inputs.noise, inputs.padded_dims, tmod)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            output = _cached_euler_loop(
                self.expert, inputs.ctx, inputs.noise, inputs.padded_dims, tmod
            )
        return _CapturedLoop(graph, inputs, tmod, output)

    @torch.no_grad()
    def sample(
        self,
        ctx: ExpertContext,
        noise: Tensor,
        action_dim_mask: Tensor,
        guide: RtcGuide | None = None,
    ) -> Tensor:
        """The chunk for ``noise``; with ``guide``, RTC-consistent with the previous chunk."""
        if guide is not None:
            self.sampler.validate(ctx, noise, action_dim_mask)
            return self.rtc.sample(
                ctx, noise, action_dim_mask, self.sampler.time_modulation, guide
            )
        if not (self.use_cuda_graph and noise.is_cuda):
            return self.sampler.sample(ctx, noise, action_dim_mask)
        self.sampler.validate(ctx, noise, action_dim_mask)
        key = self.graph_key(ctx, noise)
        loop = self._graphs.get(key)
        if loop is not None and loop.tmod is not self.sampler.time_modulation:
            loop = None  # the expert moved or changed: its tables are new tensors
        if loop is None:
            loop = self._capture(ctx, noise, action_dim_mask, key[3])
            self._graphs.put(key, loop)  # an evicted graph returns its memory to the pool
        loop.inputs.copy_in(ctx, noise, action_dim_mask)
        loop.graph.replay()
        return loop.output.clone()
