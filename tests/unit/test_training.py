"""Flow-matching loss: time law, masking, knowledge insulation, and that it actually learns."""

from __future__ import annotations

import pytest
import torch

from molmoact2_policy.model.action_expert import ActionExpert, ActionExpertConfig
from molmoact2_policy.model.flow import CachedFlowSampler, make_noise
from molmoact2_policy.model.training import flow_matching_loss, sample_beta_time
from tests.unit.test_action_expert import TINY, random_context, tiny_expert

torch.set_num_threads(1)


def valid_dims(count: int) -> torch.Tensor:
    mask = torch.zeros(32, dtype=torch.bool)
    mask[:count] = True
    return mask


def test_beta_time_law_range_mean_and_seed() -> None:
    def draw(seed: int) -> torch.Tensor:
        return sample_beta_time(20000, alpha=1.0, beta=1.5, offset=0.001, scale=0.999,
                                generator=torch.Generator().manual_seed(seed), device="cpu")

    t = draw(0)
    assert t.min() >= 0.001 and t.max() <= 1.0
    # Beta(1, 1.5) has mean 1 / 2.5 = 0.4 and more mass near t = 0 (the noise end).
    assert abs(t.mean().item() - (0.001 + 0.999 * 0.4)) < 0.01
    assert (t < 0.5).float().mean() > 0.6
    assert torch.equal(t, draw(0))
    assert not torch.equal(t, draw(1))
    with pytest.raises(ValueError):
        sample_beta_time(3, alpha=0.0, beta=1.0, offset=0.0, scale=1.0, generator=None,
                         device="cpu")


def test_loss_ignores_padded_dims_and_is_seeded() -> None:
    expert = tiny_expert()
    keys, values, mask = random_context()
    actions = torch.zeros(2, 8, 32)
    actions[..., :4] = torch.randn(2, 8, 4)

    def loss(a: torch.Tensor, seed: int) -> torch.Tensor:
        return flow_matching_loss(expert, keys, values, mask, a, valid_dims(4),
                                  generator=torch.Generator().manual_seed(seed))

    dirty = actions.clone()
    dirty[..., 4:] = 100.0
    assert loss(actions, 0).item() > 0
    assert torch.equal(loss(actions, 0), loss(dirty, 0))
    assert not torch.equal(loss(actions, 0), loss(actions, 1))
    per_row = torch.stack([valid_dims(4), valid_dims(6)])
    assert flow_matching_loss(expert, keys, values, mask, actions, per_row,
                              generator=torch.Generator().manual_seed(0)).item() > 0
    with pytest.raises(ValueError, match="action_dim_mask"):
        flow_matching_loss(expert, keys, values, mask, actions, valid_dims(4)[:10])


def test_knowledge_insulation_detaches_the_vlm_context() -> None:
    expert = tiny_expert()
    keys, values, mask = random_context()
    keys = [k.requires_grad_() for k in keys]
    actions = torch.randn(2, 8, 32)
    flow_matching_loss(expert, keys, values, mask, actions, valid_dims(4)).backward()
    assert all(k.grad is None for k in keys)
    assert expert.context_k_proj.weight.grad is not None
    flow_matching_loss(expert, keys, values, mask, actions, valid_dims(4),
                       detach_context=False).backward()
    assert all(k.grad is not None and k.grad.abs().sum() > 0 for k in keys)


def test_training_on_one_chunk_samples_it_back() -> None:
    torch.manual_seed(0)
    config = ActionExpertConfig(**{**TINY.to_dict(), "llm_kv_dim": 32, "timestep_embed_dim": 64})
    expert = ActionExpert(config)
    gen = torch.Generator().manual_seed(0)
    keys = [torch.randn(1, 6, 32, generator=gen) for _ in range(2)]
    values = [torch.randn(1, 6, 32, generator=gen) for _ in range(2)]
    mask = torch.ones(1, 6, dtype=torch.bool)
    dims = valid_dims(4)
    time = torch.linspace(0, 1, 8)[:, None]
    chunk = torch.zeros(1, 8, 32)
    chunk[0, :, :4] = torch.cat(
        [torch.sin(3 * time), torch.cos(2 * time), time - 0.5, -0.8 * time], dim=1
    )
    steps = 300
    optimizer = torch.optim.Adam(expert.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        loss = flow_matching_loss(expert, keys, values, mask, chunk, dims, num_noise_samples=16,
                                  generator=gen)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()

    expert.eval()
    ctx = expert.prepare_context(keys, values, mask).repeat_interleave(8)
    noise = make_noise((8, 8, 32), gen, "cpu", torch.float32, dims)
    sampled = CachedFlowSampler(expert, num_steps=10).sample(ctx, noise, dims)
    valid = chunk[..., :4]
    normalised_mse = ((sampled[..., :4] - valid) ** 2).mean() / (valid**2).mean()
    assert normalised_mse.item() < 1e-2
    assert torch.equal(sampled[..., 4:], torch.zeros(8, 8, 28))
