"""Flow-matching training objective of the action expert.

x_t = (1 - t) * eps + t * a with eps ~ N(0, I), target velocity a - eps, loss = MSE over the valid
action dims. t = time_offset + time_scale * Beta(alpha, beta): with the released (1, 1.5) most
mass sits near the noise end, t never reaches 0 and can reach 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from molmoact2_policy.model.action_expert import ActionExpert


def sample_beta_time(
    count: int,
    *,
    alpha: float,
    beta: float,
    offset: float,
    scale: float,
    generator: torch.Generator | None,
    device: torch.device | str,
) -> Tensor:
    """`count` flow times offset + scale * Beta(alpha, beta), float32 on `device`.

    Beta is drawn as G_a / (G_a + G_b) from two standard Gamma draws, because that route accepts a
    generator (torch.distributions.Beta does not), so a seed reproduces the same times.
    """
    if alpha <= 0 or beta <= 0:
        raise ValueError(f"Beta parameters must be > 0, got alpha={alpha} beta={beta}")
    source = generator.device if generator is not None else torch.device(device)
    gamma_a = torch._standard_gamma(
        torch.full((count,), float(alpha), device=source), generator=generator
    )
    gamma_b = torch._standard_gamma(
        torch.full((count,), float(beta), device=source), generator=generator
    )
    fraction = gamma_a / (gamma_a + gamma_b)
    return (offset + scale * fraction).to(device=device, dtype=torch.float32)


def flow_matching_loss(
    expert: ActionExpert,
    context_k: Sequence[Tensor],
    context_v: Sequence[Tensor],
    context_mask: Tensor,
    actions: Tensor,
    action_dim_mask: Tensor,
    *,
    num_noise_samples: int = 4,
    beta_alpha: float = 1.0,
    beta_beta: float = 1.5,
    time_offset: float = 0.001,
    time_scale: float = 0.999,
    generator: torch.Generator | None = None,
    detach_context: bool = True,
) -> Tensor:
    """Mean squared velocity error over valid action dims, K noise draws per chunk.

    actions: (B, H, A) normalised and zero-padded to max_action_dim; action_dim_mask: (A,) or
    (B, A) bool, True on real dims (a batch may mix embodiments). The context is projected once
    and shared by the K draws. detach_context=True is knowledge insulation: the loss trains the
    expert (including its context projections) but sends no gradient into the VLM's K/V.
    """
    if num_noise_samples <= 0:
        raise ValueError(f"num_noise_samples must be > 0, got {num_noise_samples}")
    if actions.dim() != 3:
        raise ValueError(f"actions must be (B, H, A), got {tuple(actions.shape)}")
    batch, horizon, dim = actions.shape
    if action_dim_mask.dtype != torch.bool or action_dim_mask.shape not in (
        (dim,),
        (batch, dim),
    ):
        raise ValueError(
            f"action_dim_mask must be bool ({dim},) or ({batch}, {dim}), got "
            f"{tuple(action_dim_mask.shape)} {action_dim_mask.dtype}"
        )
    if detach_context:
        context_k = [k.detach() for k in context_k]
        context_v = [v.detach() for v in context_v]

    dtype = expert.action_embed.weight.dtype
    device = actions.device
    ctx = expert.prepare_context(context_k, context_v, context_mask)
    ctx = ctx.repeat_interleave(num_noise_samples)

    valid = action_dim_mask.expand(batch, dim) if action_dim_mask.dim() == 1 else action_dim_mask
    valid = valid.repeat_interleave(num_noise_samples, dim=0)[:, None, :]  # (B*K, 1, A)
    target_actions = actions.to(dtype).repeat_interleave(num_noise_samples, dim=0)
    target_actions = target_actions.masked_fill(~valid, 0.0)

    rows = batch * num_noise_samples
    noise_source = generator.device if generator is not None else device
    noise = torch.randn(
        (rows, horizon, dim), generator=generator, device=noise_source, dtype=torch.float32
    ).to(device=device, dtype=dtype)
    noise = noise.masked_fill(~valid, 0.0)
    t = sample_beta_time(
        rows,
        alpha=beta_alpha,
        beta=beta_beta,
        offset=time_offset,
        scale=time_scale,
        generator=generator,
        device=device,
    )
    t_b = t.to(dtype)[:, None, None]
    noisy = (1 - t_b) * noise + t_b * target_actions
    target_velocity = target_actions - noise

    predicted = expert.velocity(noisy, t, ctx)
    squared = (predicted.float() - target_velocity.float()).pow(2)
    weights = valid.expand_as(squared).float()
    return (squared * weights).sum() / weights.sum().clamp(min=1.0)
