"""Real-time chunking (RTC): sample the next chunk consistent with the one being executed.

Black, Galliker, Levine, "Real-Time Execution of Action Chunking Flow Policies" (2025). While
chunk n+1 is sampled, the robot keeps executing chunk n; without RTC the two are sampled
independently and may come from different modes of the action distribution, so the splice can
only hide the jump. RTC treats the new chunk as inpainting of the old one, with no retraining:

- rows ``[0, d)`` (``d`` = inference delay in steps) run while the new chunk is computed: they
  are *frozen* to the previous chunk's actions (replaced by their noisy interpolant at every
  Euler step so the expert sees a consistent input, and copied exactly at the end);
- rows ``[d, end)`` of the overlap are guided softly towards the previous chunk with weights
  that decay exponentially, ``w_i = c_i (e^{c_i} - 1) / (e - 1)``,
  ``c_i = (end - i) / (end - d + 1)``; rows from ``end`` on are free;
- guidance is the pseudo-inverse (PiGDM) step through the expert: with the one-step estimate
  ``x1 = x_t + (1 - t) v(x_t, t)``, the velocity becomes
  ``v + min(beta, (1 - t) / (t r_t^2)) * [(Y - x1) * W]^T dx1/dx_t``,
  ``r_t^2 = (1 - t)^2 / (t^2 + (1 - t)^2)``; the vector-Jacobian product is one backward pass
  of the expert per step, and ``beta`` (``max_guidance_weight``) clips the weight, which is
  unbounded at t = 0.

Convention as in ``flow.py``: t = 0 is noise, t = 1 is data (the paper's and the Kinetix
reference's direction; LeRobot's ``src/lerobot/policies/rtc/modeling_rtc.py`` runs time the
other way, so its ``x_t + time * v`` is this module's ``x_t + (1 - t) v``, and its
``execution_horizon`` is this module's ``end``).

Everything here works on model-unit tensors; the policy normalises the previous chunk and
aligns it to the new chunk's rows (row i of ``target`` applies when new row i does).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from molmoact2_policy.model.action_expert import (
    ActionExpert,
    ExpertContext,
    TimeModulation,
    euler_timesteps,
)

# The paper's clip on the guidance weight (beta = 5 in all its experiments).
DEFAULT_MAX_GUIDANCE_WEIGHT = 5.0


def prefix_weights(delay: int, end: int, total: int) -> Tensor:
    """(total,) float32 guidance weights: 1 on ``[0, delay)``, exponential decay on
    ``[delay, end)``, 0 from ``end`` on (the paper's eq. 5 with ``end = H - s``)."""
    if total <= 0:
        raise ValueError(f"total must be > 0, got {total}")
    delay = max(0, min(int(delay), total))
    end = max(delay, min(int(end), total))
    weights = torch.zeros(total, dtype=torch.float64)
    weights[:delay] = 1.0
    span = end - delay
    if span > 0:
        rows = torch.arange(delay, end, dtype=torch.float64)
        c = (end - rows) / (span + 1)
        weights[delay:end] = c * torch.expm1(c) / (math.e - 1.0)
    return weights.to(torch.float32)


def guidance_scale(t: float, max_guidance_weight: float) -> float:
    """``min(beta, (1 - t) / (t r_t^2))`` = ``min(beta, (t^2 + (1 - t)^2) / (t (1 - t)))``."""
    if max_guidance_weight < 0 or not math.isfinite(max_guidance_weight):
        raise ValueError(f"max_guidance_weight must be finite and >= 0, got {max_guidance_weight}")
    if t <= 0.0 or t >= 1.0:
        return float(max_guidance_weight)
    return float(min(max_guidance_weight, (t * t + (1.0 - t) ** 2) / (t * (1.0 - t))))


@dataclass
class RtcGuide:
    """What one RTC sample is steered towards, as tensors (a CUDA graph copies them in).

    target: (B, H, A) the previous chunk in model units aligned to the new rows, zero where it
        has no row (those rows carry weight 0).
    weights: (1, H, 1) guidance weights (``prefix_weights``).
    frozen: (1, H, 1) bool, True on the ``delay`` rows copied from ``target``.
    """

    target: Tensor
    weights: Tensor
    frozen: Tensor
    max_guidance_weight: float = DEFAULT_MAX_GUIDANCE_WEIGHT

    @classmethod
    def build(
        cls,
        previous: Tensor,
        delay: int,
        end: int | None,
        horizon: int,
        *,
        max_guidance_weight: float = DEFAULT_MAX_GUIDANCE_WEIGHT,
    ) -> RtcGuide:
        """From ``previous`` (B, P, A), P <= horizon rows aligned to the new chunk's first rows.

        ``delay`` rows are frozen (clipped to P); guidance ends at ``end`` (default P, never
        past P: beyond the previous chunk there is nothing to agree with).
        """
        if previous.dim() != 3:
            raise ValueError(f"previous must be (B, P, A), got {tuple(previous.shape)}")
        rows = previous.shape[1]
        if not 0 < rows <= horizon:
            raise ValueError(f"previous has {rows} rows; expected 1..{horizon}")
        if delay < 0:
            raise ValueError(f"delay must be >= 0, got {delay}")
        if not torch.isfinite(previous).all():
            raise ValueError("previous chunk contains NaN or inf")
        guidance_scale(0.5, max_guidance_weight)  # validates beta
        delay = min(int(delay), rows)
        end = rows if end is None else max(delay, min(int(end), rows))
        target = previous.new_zeros(previous.shape[0], horizon, previous.shape[2])
        target[:, :rows] = previous
        weights = prefix_weights(delay, end, horizon).to(previous.device, previous.dtype)
        frozen = torch.zeros(1, horizon, 1, dtype=torch.bool, device=previous.device)
        frozen[:, :delay] = True
        return cls(target, weights.view(1, horizon, 1), frozen, float(max_guidance_weight))

    @property
    def delay(self) -> int:
        return int(self.frozen.sum().item())

    def check(self, noise: Tensor) -> None:
        if tuple(self.target.shape) != tuple(noise.shape):
            raise ValueError(
                f"RTC target {tuple(self.target.shape)} does not match noise {tuple(noise.shape)}"
            )
        horizon = noise.shape[1]
        for name, t in (("weights", self.weights), ("frozen", self.frozen)):
            if tuple(t.shape) != (1, horizon, 1):
                raise ValueError(f"RTC {name} must be (1, {horizon}, 1), got {tuple(t.shape)}")
        for t in (self.target, self.weights, self.frozen):
            if t.device != noise.device:
                raise ValueError(f"RTC guide is on {t.device}, noise on {noise.device}")


VelocityFn = Callable[[Tensor, int], Tensor]


def _guided_velocity(
    velocity_fn: VelocityFn,
    x: Tensor,
    step: int,
    t: float,
    scale: float,
    guide: RtcGuide,
    padded: Tensor,
) -> Tensor:
    """v + scale * vjp(x1 wrt x_t, (target - x1) * W): one forward and one backward."""
    with torch.inference_mode(False), torch.enable_grad():
        x_in = x.detach().clone().requires_grad_(True)
        velocity = velocity_fn(x_in, step).to(x.dtype).masked_fill(padded, 0.0)
        estimate = x_in + (1.0 - t) * velocity
        error = (guide.target - estimate.detach()) * guide.weights
        (correction,) = torch.autograd.grad(estimate, x_in, grad_outputs=error)
    return (velocity.detach() + scale * correction).masked_fill(padded, 0.0)


def rtc_euler_loop(
    velocity_fn: VelocityFn,
    noise: Tensor,
    padded: Tensor,
    num_steps: int,
    guide: RtcGuide,
) -> Tensor:
    """N guided Euler steps from ``noise``; no host syncs (capturable in a CUDA graph).

    ``velocity_fn(x, step)`` is the expert's velocity at Euler step ``step`` (t = step / N);
    it must be differentiable in ``x``.
    """
    dt = 1.0 / num_steps
    target = guide.target.to(noise.dtype)
    padded = _grad_ready(padded)  # masked_fill keeps the mask for its backward
    x = noise.masked_fill(padded, 0.0)
    for step in range(num_steps):
        t = step / num_steps
        # Frozen rows sit where the flow would put the previous chunk at time t.
        x = torch.where(guide.frozen, (1.0 - t) * noise + t * target, x)
        scale = guidance_scale(t, guide.max_guidance_weight)
        x = x + dt * _guided_velocity(velocity_fn, x, step, t, scale, guide, padded)
    return torch.where(guide.frozen, target, x).masked_fill(padded, 0.0)


def _grad_ready(t: Tensor) -> Tensor:
    """Inference-mode tensors cannot be saved for backward: give autograd a normal copy."""
    if not t.is_inference():
        return t
    with torch.inference_mode(False):
        return t.clone()


def grad_ready_context(ctx: ExpertContext) -> ExpertContext:
    """``ctx`` usable inside autograd (copies only what ``torch.inference_mode`` created)."""
    def opt(t: Tensor | None) -> Tensor | None:
        return None if t is None else _grad_ready(t)

    return ExpertContext(
        keys=[_grad_ready(k) for k in ctx.keys],
        values=[_grad_ready(v) for v in ctx.values],
        additive_mask=_grad_ready(ctx.additive_mask),
        rope_cos=opt(ctx.rope_cos),
        rope_sin=opt(ctx.rope_sin),
    )


def grad_ready_modulation(tmod: TimeModulation) -> TimeModulation:
    return TimeModulation(
        timesteps=_grad_ready(tmod.timesteps),
        blocks=[[tuple(_grad_ready(p) for p in layer) for layer in step] for step in tmod.blocks],
        final=[(_grad_ready(a), _grad_ready(b)) for a, b in tmod.final],
    )


def rtc_cached_loop(
    expert: ActionExpert,
    ctx: ExpertContext,
    noise: Tensor,
    padded: Tensor,
    tmod: TimeModulation,
    guide: RtcGuide,
) -> Tensor:
    """The RTC loop over a prepared context and precomputed modulation (the fast path)."""

    def velocity(x: Tensor, step: int) -> Tensor:
        return expert.forward_cached(x, step, ctx, tmod)

    return rtc_euler_loop(velocity, noise, padded, tmod.num_steps, guide)


def rtc_sample_reference(
    expert: ActionExpert,
    context_k: list[Tensor],
    context_v: list[Tensor],
    context_mask: Tensor,
    noise: Tensor,
    num_steps: int,
    action_dim_mask: Tensor,
    guide: RtcGuide,
) -> Tensor:
    """Uncached RTC sampling through ``ActionExpert.forward``: the numerical reference."""
    guide.check(noise)
    timesteps = euler_timesteps(num_steps, noise.device)

    def velocity(x: Tensor, step: int) -> Tensor:
        t = timesteps[step].expand(x.shape[0])
        return expert(x, t, context_k, context_v, context_mask)

    return rtc_euler_loop(velocity, noise, ~action_dim_mask, num_steps, guide)


@dataclass
class _CapturedRtcLoop:
    """One recorded RTC loop: static inputs (context, noise, mask, guide) and its output."""

    graph: torch.cuda.CUDAGraph
    ctx: ExpertContext
    noise: Tensor
    padded: Tensor
    guide: RtcGuide
    output: Tensor

    def copy_in(
        self, ctx: ExpertContext, noise: Tensor, action_dim_mask: Tensor, guide: RtcGuide
    ) -> None:
        for static, fresh in zip(self.ctx.keys, ctx.keys, strict=True):
            static.copy_(fresh)
        for static, fresh in zip(self.ctx.values, ctx.values, strict=True):
            static.copy_(fresh)
        self.ctx.additive_mask.copy_(ctx.additive_mask)
        self.noise.copy_(noise)
        torch.logical_not(action_dim_mask, out=self.padded)
        self.guide.target.copy_(guide.target)
        self.guide.weights.copy_(guide.weights)
        self.guide.frozen.copy_(guide.frozen)


class RtcRunner:
    """RTC sampling for ``GraphFlowRunner``: eager on CPU, one CUDA graph per shape on CUDA.

    The guided loop has no host syncs and its backward passes run on the capturing stream, so
    it can be recorded like the plain loop (the frozen rows and weights are tensors, so a new
    delay needs no new graph; beta is part of the key). If recording fails on some torch/driver
    combination, that shape falls back to the eager guided loop for the rest of the run and
    ``eager_fallbacks`` says so.
    """

    WARMUP_RUNS = 2

    def __init__(self, expert: ActionExpert, use_cuda_graph: bool) -> None:
        self.expert = expert
        self.use_cuda_graph = use_cuda_graph
        self._graphs: dict[tuple, _CapturedRtcLoop | None] = {}
        self._tmod_source: TimeModulation | None = None
        self._tmod: TimeModulation | None = None
        self.eager_fallbacks: dict[tuple, str] = {}

    def refresh(self) -> None:
        self._graphs.clear()
        self._tmod_source = self._tmod = None

    def _modulation(self, tmod: TimeModulation) -> TimeModulation:
        if self._tmod_source is not tmod:
            self._tmod_source, self._tmod = tmod, grad_ready_modulation(tmod)
        assert self._tmod is not None
        return self._tmod

    def sample(
        self,
        ctx: ExpertContext,
        noise: Tensor,
        action_dim_mask: Tensor,
        tmod: TimeModulation,
        guide: RtcGuide,
    ) -> Tensor:
        guide.check(noise)
        tmod = self._modulation(tmod)
        loop = None
        if self.use_cuda_graph and noise.is_cuda:
            key = (*noise.shape, ctx.context_length, noise.dtype, noise.device,
                   guide.max_guidance_weight)
            if key not in self._graphs:
                try:
                    self._graphs[key] = self._capture(ctx, noise, action_dim_mask, tmod, guide)
                except RuntimeError as error:  # documented fallback: eager guided loop
                    self._graphs[key] = None
                    self.eager_fallbacks[key] = str(error)
            loop = self._graphs[key]
        if loop is None:  # CPU, graphs off, or a shape whose capture failed
            return rtc_cached_loop(
                self.expert, grad_ready_context(ctx), noise, ~action_dim_mask, tmod, guide
            )
        loop.copy_in(ctx, noise, action_dim_mask, guide)
        loop.graph.replay()
        return loop.output.clone()

    def _capture(
        self,
        ctx: ExpertContext,
        noise: Tensor,
        action_dim_mask: Tensor,
        tmod: TimeModulation,
        guide: RtcGuide,
    ) -> _CapturedRtcLoop:
        with torch.inference_mode(False):
            static_ctx = ExpertContext(
                keys=[k.clone() for k in ctx.keys],
                values=[v.clone() for v in ctx.values],
                additive_mask=ctx.additive_mask.clone(),
                rope_cos=None if ctx.rope_cos is None else ctx.rope_cos.clone(),
                rope_sin=None if ctx.rope_sin is None else ctx.rope_sin.clone(),
            )
            static_noise = noise.clone()
            static_padded = ~action_dim_mask
            static_guide = RtcGuide(
                guide.target.clone(), guide.weights.clone(), guide.frozen.clone(),
                guide.max_guidance_weight,
            )

            def run() -> Tensor:
                return rtc_cached_loop(
                    self.expert, static_ctx, static_noise, static_padded, tmod, static_guide
                )

            device = noise.device
            side = torch.cuda.Stream(device=device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(self.WARMUP_RUNS):
                    run()
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                output = run()
        return _CapturedRtcLoop(graph, static_ctx, static_noise, static_padded, static_guide,
                                output)
