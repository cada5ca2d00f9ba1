"""MolmoAct2's flow-matching action expert: a DiT over the action chunk that cross-attends, block by
block, into the VLM's per-layer K/V.

Attribute names reproduce the released state-dict keys below `model.action_expert.`, so a released
checkpoint loads by stripping that prefix. Two paths compute the same velocity field:

- `forward` is the uncached reference: it projects the context, embeds the timestep and runs the
  adaLN modulation on every call.
- `prepare_context` (once per observation) + `time_modulation` (once per weights and step count)
  + `forward_cached` (once per Euler step) split that work so the per-step cost is only the
  action-token stream. The sampler in `flow.py` and its CUDA-graph runner build on this split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Every norm in the expert is RMSNorm with this eps (the released code hard-codes it for the
# block/context/final norms; only the per-head QK norms read `qk_norm_eps`).
NORM_EPS = 1e-6
NUM_BLOCK_MODULATIONS = 9  # shift/scale/gate for self-attn, cross-attn, MLP (in that order)
NUM_FINAL_MODULATIONS = 2  # shift, scale


def round_up(value: float, multiple_of: int) -> int:
    """Smallest multiple of `multiple_of` >= `value` (`value` itself when multiple_of <= 0)."""
    if multiple_of <= 0:
        return int(value)
    return int(math.ceil(value / multiple_of) * multiple_of)


@dataclass
class ActionExpertConfig:
    """Sizes of the action expert; the defaults are the released MolmoAct2 sizes.

    Field names are the keys of `action_expert_config` in the released config.json, plus two
    values that are not released keys: `llm_kv_dim` (derived from the VLM: kv_heads * head_dim;
    `MolmoAct2Config` sets it) and `rope_theta` (the released expert hard-codes 10000).
    """

    max_action_horizon: int = 30
    max_action_dim: int = 32
    hidden_size: int = 1024
    num_layers: int = 36
    num_heads: int = 16
    mlp_ratio: float = 2.75
    ffn_multiple_of: int = 256
    timestep_embed_dim: int = 256
    dropout: float = 0.0
    attn_dropout: float = 0.0
    context_layer_norm: bool = True
    qk_norm: bool = True
    qk_norm_eps: float = 1e-6
    rope: bool = True
    rope_theta: float = 10000.0
    causal_attn: bool = False
    llm_kv_dim: int = 1024

    def __post_init__(self) -> None:
        problems = []
        for name in ("max_action_horizon", "max_action_dim", "hidden_size", "num_layers",
                     "num_heads", "timestep_embed_dim", "llm_kv_dim"):
            if int(getattr(self, name)) <= 0:
                problems.append(f"{name} must be > 0 (got {getattr(self, name)})")
        if self.num_heads > 0 and self.hidden_size % self.num_heads != 0:
            problems.append(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        elif self.num_heads > 0 and self.rope and (self.hidden_size // self.num_heads) % 2:
            problems.append("RoPE needs an even head dim (hidden_size / num_heads)")
        if self.timestep_embed_dim % 2:
            problems.append(f"timestep_embed_dim must be even (got {self.timestep_embed_dim})")
        if self.mlp_ratio <= 0:
            problems.append(f"mlp_ratio must be > 0 (got {self.mlp_ratio})")
        if problems:
            raise ValueError("invalid ActionExpertConfig: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden_size(self) -> int:
        """SwiGLU inner width: int(hidden_size * mlp_ratio) rounded up to ffn_multiple_of.

        Truncated first, as released: 171 x 1.5 = 256.5 gives 256 with multiple 256, not 512.
        """
        return round_up(int(self.hidden_size * self.mlp_ratio), self.ffn_multiple_of)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ActionExpertConfig:
        """Build from a config dict; unknown keys raise ValueError naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"unknown action expert config keys: {unknown} (known: {sorted(known)})"
            )
        return cls(**dict(d))


def rms_norm(x: Tensor, eps: float = NORM_EPS) -> Tensor:
    """Weightless RMSNorm over the last dim, computed in fp32 and cast back to x's dtype."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)).to(x.dtype)


class RMSNorm(nn.Module):
    """Weightless RMSNorm (no parameters, so it adds no state-dict keys)."""

    def __init__(self, eps: float = NORM_EPS) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.eps)


class SinusoidalTimestepEmbedding(nn.Module):
    """[sin, cos] halves with frequency exp(-ln(10000) * i / (half - 1)), t fed raw (in [0, 1])."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, timesteps: Tensor) -> Tensor:
        half = self.dim // 2
        exponent = torch.arange(half, device=timesteps.device, dtype=torch.float32)
        freqs = torch.exp(exponent * (-math.log(10000.0) / max(half - 1, 1)))
        args = timesteps.float()[:, None] * freqs[None, :]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


def rope_tables(
    length: int, head_dim: int, theta: float, device: torch.device | str | None, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """cos/sin tables (length, head_dim // 2) for rotate-half RoPE over positions 0..length-1."""
    half = head_dim // 2
    inv_freq = 1.0 / (theta ** (torch.arange(half, device=device, dtype=torch.float32) / half))
    angles = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate-half RoPE on (..., T, head_dim) with cos/sin of shape (T, head_dim // 2)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class Modulation(nn.Module):
    """adaLN: SiLU then Linear(hidden -> num_chunks * hidden)."""

    def __init__(self, hidden_size: int, num_chunks: int) -> None:
        super().__init__()
        self.num_chunks = num_chunks
        self.linear = nn.Linear(hidden_size, num_chunks * hidden_size)

    def forward(self, conditioning: Tensor) -> Tensor:
        """(N, hidden) -> (N, num_chunks, hidden)."""
        out = self.linear(F.silu(conditioning))
        return out.view(conditioning.shape[0], self.num_chunks, -1)


class SelfAttention(nn.Module):
    def __init__(self, config: ActionExpertConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.qk_norm = config.qk_norm
        self.qk_norm_eps = config.qk_norm_eps
        self.use_rope = config.rope
        self.causal = config.causal_attn
        self.attn_dropout = config.attn_dropout
        self.out_drop = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, cos: Tensor | None, sin: Tensor | None) -> Tensor:
        batch, horizon, hidden = x.shape
        # (B, H, 3, heads, hd) -> three (B, heads, H, hd)
        q, k, v = self.qkv(x).view(batch, horizon, 3, self.num_heads, self.head_dim).permute(
            2, 0, 3, 1, 4
        )
        if self.qk_norm:
            q, k = rms_norm(q, self.qk_norm_eps), rms_norm(k, self.qk_norm_eps)
        if self.use_rope and cos is not None and sin is not None:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = F.scaled_dot_product_attention(
            q, k, v,
            dropout_p=self.attn_dropout if self.training else 0.0,
            is_causal=self.causal,
        )
        return self.out_drop(self.out_proj(out.transpose(1, 2).reshape(batch, horizon, hidden)))


class CrossAttention(nn.Module):
    """Queries from the action stream; keys/values are the prepared per-layer VLM context."""

    def __init__(self, config: ActionExpertConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.qk_norm = config.qk_norm
        self.qk_norm_eps = config.qk_norm_eps
        self.attn_dropout = config.attn_dropout
        self.out_drop = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, keys: Tensor, values: Tensor, additive_mask: Tensor) -> Tensor:
        """x (B, H, hidden); keys/values (B, heads, S, hd), already k-normed; mask (B, 1, 1, S)."""
        batch, horizon, hidden = x.shape
        q = self.q_proj(x).view(batch, horizon, self.num_heads, self.head_dim).transpose(1, 2)
        if self.qk_norm:
            q = rms_norm(q, self.qk_norm_eps)
        out = F.scaled_dot_product_attention(
            q, keys, values,
            attn_mask=additive_mask,
            dropout_p=self.attn_dropout if self.training else 0.0,
        )
        return self.out_drop(self.out_proj(out.transpose(1, 2).reshape(batch, horizon, hidden)))


class SwiGLU(nn.Module):
    def __init__(self, config: ActionExpertConfig) -> None:
        super().__init__()
        inner = config.mlp_hidden_size
        self.up_proj = nn.Linear(config.hidden_size, inner)
        self.gate_proj = nn.Linear(config.hidden_size, inner)
        self.down_proj = nn.Linear(inner, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.dropout(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return self.dropout(self.down_proj(hidden))


class ExpertBlock(nn.Module):
    """self-attn -> cross-attn -> MLP, each as x + gate * sublayer(modulate(norm(x)))."""

    def __init__(self, config: ActionExpertConfig) -> None:
        super().__init__()
        self.self_norm = RMSNorm()
        self.cross_norm = RMSNorm()
        self.ff_norm = RMSNorm()
        self.self_attn = SelfAttention(config)
        self.cross_attn = CrossAttention(config)
        self.mlp = SwiGLU(config)
        self.modulation = Modulation(config.hidden_size, NUM_BLOCK_MODULATIONS)

    def forward(
        self,
        x: Tensor,
        mods: Sequence[Tensor],
        keys: Tensor,
        values: Tensor,
        additive_mask: Tensor,
        cos: Tensor | None,
        sin: Tensor | None,
    ) -> Tensor:
        """`mods` = 9 tensors broadcastable to x: shift, 1 + scale, gate for each sublayer.

        Carrying `1 + scale` (not scale) lets the cached path add the 1 once per model, not per
        step; the result is the same modulate() as the reference.
        """
        sa_shift, sa_scale1, sa_gate, ca_shift, ca_scale1, ca_gate, ff_shift, ff_scale1, ff_gate = (
            mods
        )
        x = x + sa_gate * self.self_attn(
            torch.addcmul(sa_shift, self.self_norm(x), sa_scale1), cos, sin
        )
        x = x + ca_gate * self.cross_attn(
            torch.addcmul(ca_shift, self.cross_norm(x), ca_scale1), keys, values, additive_mask
        )
        return x + ff_gate * self.mlp(torch.addcmul(ff_shift, self.ff_norm(x), ff_scale1))


class FinalLayer(nn.Module):
    def __init__(self, config: ActionExpertConfig) -> None:
        super().__init__()
        self.norm = RMSNorm()
        self.modulation = Modulation(config.hidden_size, NUM_FINAL_MODULATIONS)
        self.linear = nn.Linear(config.hidden_size, config.max_action_dim)

    def forward(self, x: Tensor, shift: Tensor, scale1: Tensor) -> Tensor:
        return self.linear(torch.addcmul(shift, self.norm(x), scale1))


@dataclass
class ExpertContext:
    """Per-observation cache: everything the expert derives from the VLM context.

    keys/values: per layer (B, heads, S, head_dim), projected, context-normed and (keys) k-normed.
    additive_mask: (B, 1, 1, S), 0 where attended, the dtype's most negative value elsewhere.
    rope_cos/rope_sin: (max_action_horizon, head_dim // 2), or None without RoPE.
    """

    keys: list[Tensor]
    values: list[Tensor]
    additive_mask: Tensor
    rope_cos: Tensor | None
    rope_sin: Tensor | None

    @property
    def batch_size(self) -> int:
        return self.additive_mask.shape[0]

    @property
    def context_length(self) -> int:
        return self.additive_mask.shape[-1]

    def repeat_interleave(self, repeats: int) -> ExpertContext:
        """Each batch row repeated `repeats` times (row i -> rows i*repeats .. i*repeats+r-1)."""
        if repeats == 1:
            return self

        def rep(t: Tensor) -> Tensor:
            return t.repeat_interleave(repeats, dim=0)

        return ExpertContext(
            keys=[rep(k) for k in self.keys],
            values=[rep(v) for v in self.values],
            additive_mask=rep(self.additive_mask),
            rope_cos=self.rope_cos,
            rope_sin=self.rope_sin,
        )


def euler_timesteps(num_steps: int, device: torch.device | str | None = None) -> Tensor:
    """The times every Euler sampler (``flow``, ``rtc``) evaluates the expert at: t_k = k / N
    for k = 0..N-1 as float32 (built one way so every sampler sees equal bits)."""
    if num_steps <= 0:
        raise ValueError(f"num_steps must be > 0, got {num_steps}")
    steps = torch.arange(num_steps, dtype=torch.float64) / num_steps
    return steps.to(device=device, dtype=torch.float32)


@dataclass
class TimeModulation:
    """adaLN outputs for a fixed list of timesteps (one per Euler step), shared by the batch.

    blocks[step][layer] is the 9-tuple (shift, 1 + scale, gate) x 3, each (1, 1, hidden);
    final[step] is (shift, 1 + scale), each (1, 1, hidden).
    """

    timesteps: Tensor
    blocks: list[list[tuple[Tensor, ...]]]
    final: list[tuple[Tensor, Tensor]]

    @property
    def num_steps(self) -> int:
        return len(self.final)


def _split_modulation(mod: Tensor) -> tuple[Tensor, ...]:
    """(N, chunks, hidden) -> chunks tensors of (N, 1, hidden), scale chunks turned into 1 + scale.

    Chunks come in (shift, scale, gate) triples, (shift, scale) for the final layer.
    """
    parts = []
    for i, chunk in enumerate(mod.unbind(dim=1)):
        is_scale = i % 3 == 1
        parts.append((chunk + 1 if is_scale else chunk).unsqueeze(1))
    return tuple(parts)


class ActionExpert(nn.Module):
    def __init__(self, config: ActionExpertConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        self.time_embed = nn.Sequential(
            SinusoidalTimestepEmbedding(config.timestep_embed_dim),
            nn.Linear(config.timestep_embed_dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
        )
        self.action_embed = nn.Linear(config.max_action_dim, hidden)
        self.context_k_proj = nn.Linear(config.llm_kv_dim, hidden, bias=False)
        self.context_v_proj = nn.Linear(config.llm_kv_dim, hidden, bias=False)
        self.context_norm = RMSNorm() if config.context_layer_norm else nn.Identity()
        self.blocks = nn.ModuleList([ExpertBlock(config) for _ in range(config.num_layers)])
        self.final_layer = FinalLayer(config)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier for the trunk; modulation and output layers zero: untrained velocity is 0."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        zero_layers = [b.modulation.linear for b in self.blocks]
        zero_layers += [self.final_layer.modulation.linear, self.final_layer.linear]
        for layer in zero_layers:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    # ---------------------------------------------------------------- input checks

    def _check_actions(self, noisy_actions: Tensor) -> None:
        cfg = self.config
        if noisy_actions.dim() != 3:
            raise ValueError(
                f"noisy_actions must be (B, H, A), got shape {tuple(noisy_actions.shape)}"
            )
        _, horizon, dim = noisy_actions.shape
        if dim != cfg.max_action_dim:
            raise ValueError(
                f"noisy_actions last dim {dim} != max_action_dim {cfg.max_action_dim} "
                "(pad actions to max_action_dim)"
            )
        if not 0 < horizon <= cfg.max_action_horizon:
            raise ValueError(
                f"action horizon {horizon} outside 1..max_action_horizon {cfg.max_action_horizon}"
            )

    def _check_context(
        self, context_k: Sequence[Tensor], context_v: Sequence[Tensor], context_mask: Tensor
    ) -> None:
        cfg = self.config
        for name, seq in (("context_k", context_k), ("context_v", context_v)):
            if len(seq) != cfg.num_layers:
                raise ValueError(
                    f"{name} has {len(seq)} layers, the expert has num_layers={cfg.num_layers}"
                )
        if context_mask.dim() != 2 or context_mask.dtype != torch.bool:
            raise ValueError(
                "context_mask must be a (B, S) bool tensor (True = attend), got "
                f"{tuple(context_mask.shape)} {context_mask.dtype}"
            )
        expected = (*context_mask.shape, cfg.llm_kv_dim)
        for name, seq in (("context_k", context_k), ("context_v", context_v)):
            for layer, t in enumerate(seq):
                if tuple(t.shape) != expected:
                    raise ValueError(
                        f"{name}[{layer}] has shape {tuple(t.shape)}, expected {expected} "
                        "(B, S, llm_kv_dim) matching context_mask"
                    )
        if not bool(context_mask.any(dim=1).all()):
            raise ValueError("context_mask hides every position of some batch row")

    # ---------------------------------------------------------------- cached building blocks

    def prepare_context(
        self, context_k: Sequence[Tensor], context_v: Sequence[Tensor], context_mask: Tensor
    ) -> ExpertContext:
        """Project, normalise and reshape the per-layer VLM K/V once per observation."""
        self._check_context(context_k, context_v, context_mask)
        cfg = self.config
        dtype = self.action_embed.weight.dtype
        batch, length = context_mask.shape
        keys, values = [], []
        for k_in, v_in, block in zip(context_k, context_v, self.blocks, strict=True):
            k = self.context_norm(self.context_k_proj(k_in.to(dtype)))
            v = self.context_norm(self.context_v_proj(v_in.to(dtype)))
            k = k.view(batch, length, cfg.num_heads, cfg.head_dim).transpose(1, 2)
            v = v.view(batch, length, cfg.num_heads, cfg.head_dim).transpose(1, 2)
            if block.cross_attn.qk_norm:
                k = rms_norm(k, cfg.qk_norm_eps)
            keys.append(k.contiguous())
            values.append(v.contiguous())
        # A finite "minus infinity": masked positions get exactly zero weight, and a row cannot
        # turn into NaN the way -inf would.
        additive = torch.zeros(batch, 1, 1, length, device=context_mask.device, dtype=dtype)
        additive.masked_fill_(~context_mask[:, None, None, :], torch.finfo(dtype).min)
        cos = sin = None
        if cfg.rope:
            cos, sin = rope_tables(
                cfg.max_action_horizon, cfg.head_dim, cfg.rope_theta, context_mask.device, dtype
            )
        return ExpertContext(keys, values, additive, cos, sin)

    def _conditioning(self, timesteps: Tensor) -> Tensor:
        # The sinusoid is built in fp32 (t near 1 needs the precision); the MLP runs in the
        # expert's dtype.
        sinusoid = self.time_embed[0](timesteps).to(self.action_embed.weight.dtype)
        return self.time_embed[1:](sinusoid)

    @torch.no_grad()
    def time_modulation(self, timesteps: Tensor) -> TimeModulation:
        """adaLN outputs of every block and the final layer for each of the N timesteps."""
        if timesteps.dim() != 1:
            raise ValueError(f"timesteps must be (N,), got {tuple(timesteps.shape)}")
        timesteps = timesteps.to(self.action_embed.weight.device)
        cond = self._conditioning(timesteps)
        per_layer = [_split_modulation(block.modulation(cond)) for block in self.blocks]
        final = _split_modulation(self.final_layer.modulation(cond))
        blocks = [
            [tuple(part[step : step + 1] for part in layer) for layer in per_layer]
            for step in range(timesteps.shape[0])
        ]
        finals = [(final[0][step : step + 1], final[1][step : step + 1])
                  for step in range(timesteps.shape[0])]
        return TimeModulation(timesteps.detach().clone(), blocks, finals)

    def _run(
        self,
        noisy_actions: Tensor,
        block_mods: Sequence[Sequence[Tensor]],
        final_mod: tuple[Tensor, Tensor],
        ctx: ExpertContext,
    ) -> Tensor:
        horizon = noisy_actions.shape[1]
        cos = ctx.rope_cos[:horizon] if ctx.rope_cos is not None else None
        sin = ctx.rope_sin[:horizon] if ctx.rope_sin is not None else None
        # The sampler may integrate in fp32 around a bf16/fp16 expert: run in the expert's dtype.
        x = self.action_embed(noisy_actions.to(self.action_embed.weight.dtype))
        for block, mods, keys, values in zip(
            self.blocks, block_mods, ctx.keys, ctx.values, strict=True
        ):
            x = block(x, mods, keys, values, ctx.additive_mask, cos, sin)
        return self.final_layer(x, *final_mod)

    def velocity(self, noisy_actions: Tensor, timesteps: Tensor, ctx: ExpertContext) -> Tensor:
        """Velocity with per-sample timesteps (B,) over a prepared context (training uses this)."""
        self._check_actions(noisy_actions)
        if timesteps.shape != (noisy_actions.shape[0],):
            raise ValueError(
                f"timesteps must be (B,) = ({noisy_actions.shape[0]},), "
                f"got {tuple(timesteps.shape)}"
            )
        if ctx.batch_size != noisy_actions.shape[0]:
            raise ValueError(
                f"context batch {ctx.batch_size} != action batch {noisy_actions.shape[0]}"
            )
        cond = self._conditioning(timesteps)
        block_mods = [_split_modulation(block.modulation(cond)) for block in self.blocks]
        final_mod = _split_modulation(self.final_layer.modulation(cond))
        return self._run(noisy_actions, block_mods, (final_mod[0], final_mod[1]), ctx)

    def forward(
        self,
        noisy_actions: Tensor,
        timesteps: Tensor,
        context_k: Sequence[Tensor],
        context_v: Sequence[Tensor],
        context_mask: Tensor,
    ) -> Tensor:
        """Uncached reference: (B, H, A) noisy actions at timesteps (B,) -> velocity (B, H, A)."""
        self._check_actions(noisy_actions)
        ctx = self.prepare_context(context_k, context_v, context_mask)
        return self.velocity(noisy_actions, timesteps, ctx)

    def forward_cached(
        self, noisy_actions: Tensor, step: int, ctx: ExpertContext, tmod: TimeModulation
    ) -> Tensor:
        """Velocity at Euler step `step` of `tmod`, reusing the prepared context.

        Skips input validation: it runs inside the sampling loop (and CUDA-graph capture), and the
        sampler validated the shapes once.
        """
        return self._run(noisy_actions, tmod.blocks[step], tmod.final[step], ctx)


class DepthGate(nn.Module):
    """Learned gate on the depth part of the expert's context (MolmoAct2-Think checkpoints).

    Per batch row, g = sigmoid(w . mean(V over the valid non-gated positions) + b), with w a
    vector over kv_dim; K and V of the gated positions (the depth span: every depth code and the
    <depth_output>/<depth_start>/<depth_end> tokens) are multiplied by g before the expert projects
    them, the other positions are left as they are. The pooled input leaves the gated positions
    (and padding) out, so the gate reads the rest of the prompt (images, instruction, state) and
    not the depth codes it scales.

    ``per_layer=False`` (the released default): one gate fed with the last VLM layer's V, applied
    to every layer. ``per_layer=True``: one gate per layer, each fed with its own layer's V.

    The released model holds each gate as an ``nn.Linear(kv_dim, 1)``; here they are stacked into
    ``weight`` (count, kv_dim) and ``bias`` (count,), which the checkpoint key map splits back.
    w starts at 0, so an untrained gate is exactly sigmoid(init_bias).
    """

    def __init__(
        self, num_layers: int, kv_dim: int, per_layer: bool = False, init_bias: float = -4.0
    ) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.kv_dim = kv_dim
        self.per_layer = per_layer
        self.init_bias = float(init_bias)
        count = num_layers if per_layer else 1
        self.weight = nn.Parameter(torch.empty(count, kv_dim))
        self.bias = nn.Parameter(torch.empty(count))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        nn.init.constant_(self.bias, self.init_bias)

    def _check(
        self,
        context_v: Sequence[Tensor],
        depth_token_mask: Tensor,
        context_mask: Tensor,
        context_k: Sequence[Tensor] = (),
    ) -> None:
        layers = [len(context_v)] + ([len(context_k)] if context_k else [])
        if any(count != self.num_layers for count in layers):
            raise ValueError(
                f"DepthGate has {self.num_layers} layers, got K/V for {layers} layers"
            )
        if context_mask.dtype != torch.bool or context_mask.dim() != 2:
            raise ValueError(
                "context_mask must be a (B, S) bool tensor, got "
                f"{tuple(context_mask.shape)} {context_mask.dtype}"
            )
        if depth_token_mask.dtype != torch.bool or depth_token_mask.shape != context_mask.shape:
            raise ValueError(
                f"depth_token_mask must be a (B, S) = {tuple(context_mask.shape)} bool tensor "
                f"matching context_mask, got {tuple(depth_token_mask.shape)} "
                f"{depth_token_mask.dtype}"
            )
        expected = (*context_mask.shape, self.kv_dim)
        for t in (*context_k, *context_v):
            if tuple(t.shape) != expected:
                raise ValueError(
                    f"DepthGate expects K/V of shape (B, S, kv_dim) = {expected}, "
                    f"got {tuple(t.shape)}"
                )

    def gates(
        self, context_v: Sequence[Tensor], depth_token_mask: Tensor, context_mask: Tensor
    ) -> list[Tensor]:
        """Per layer, the gate value (B,) in V's dtype (the shared gate repeated per layer)."""
        self._check(context_v, depth_token_mask, context_mask)
        gated = depth_token_mask & context_mask
        pool = context_mask & ~gated
        # A row whose valid positions are all gated pools over all of them rather than nothing.
        pool = torch.where(pool.any(dim=1, keepdim=True), pool, context_mask)
        if self.per_layer:
            return [self._gate(v, pool, index) for index, v in enumerate(context_v)]
        shared = self._gate(context_v[-1], pool, 0)
        return [shared] * self.num_layers

    def _gate(self, v: Tensor, pool: Tensor, index: int) -> Tensor:
        # Same dtype steps as the released gate: pool in V's dtype (torch sums half types with
        # fp32 accumulation), the linear in the gate's dtype, the result back in V's dtype.
        weights = pool.to(v.dtype)[:, :, None]
        pooled = (v * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
        weight, bias = self.weight[index : index + 1], self.bias[index : index + 1]
        logits = F.linear(pooled.to(weight.dtype), weight, bias)
        return torch.sigmoid(logits).to(v.dtype)[:, 0]

    def forward(
        self,
        context_k: Sequence[Tensor],
        context_v: Sequence[Tensor],
        depth_token_mask: Tensor,
        context_mask: Tensor,
    ) -> tuple[list[Tensor], list[Tensor]]:
        """(K, V) per layer with the gated positions scaled by that layer's gate.

        ``depth_token_mask`` (B, S) bool marks the gated positions, ``context_mask`` (B, S) bool
        the valid ones (padding False); a gated position outside ``context_mask`` is not gated.
        """
        self._check(context_v, depth_token_mask, context_mask, context_k)
        gated = (depth_token_mask & context_mask)[:, :, None]
        new_k, new_v = [], []
        for k, v, gate in zip(
            context_k, context_v, self.gates(context_v, depth_token_mask, context_mask), strict=True
        ):
            # One scale for K and V, in K's dtype, as the released model builds it.
            scale = torch.where(gated, gate.to(k.dtype)[:, None, None], 1.0).to(k.dtype)
            new_k.append(k * scale)
            new_v.append(v * scale)
        return new_k, new_v


@torch.no_grad()
def init_weights_randomly_for_tests(
    expert: ActionExpert, generator: torch.Generator, std: float = 0.02
) -> None:
    """Give every weight and bias (zero-initialised layers included) N(0, std) values.

    The released init makes an untrained expert output exactly 0; tests and tiny demo
    checkpoints need a non-trivial velocity field.
    """
    for param in expert.parameters():
        noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
        param.copy_((noise * std).to(device=param.device, dtype=param.dtype))
