"""MolmoAct2Policy end to end on the tiny preset: overfit, validation, determinism, contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from molmoact2_policy.model.compat import EmbodimentMismatchError
from molmoact2_policy.model.loader import POLICY_CLASSES, load_policy
from molmoact2_policy.model.policy import MolmoAct2Policy
from molmoact2_policy.model.training import flow_matching_loss
from molmoact2_policy.policy_api import MODES, Policy, PolicyInputError

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def policy():
    return load_policy("tiny", "yam_bimanual", seed=0)


def _observation(spec, seed=0, size=(48, 64)):
    rng = np.random.default_rng(seed)
    images = {n: rng.integers(0, 256, (*size, 3), dtype=np.uint8) for n in spec.camera_names}
    return images, rng.uniform(-0.5, 0.5, spec.state_dim)


def test_act_returns_a_chunk_in_the_contract_shape(policy):
    assert isinstance(policy, Policy)
    images, state = _observation(policy.embodiment)
    result = policy.act(images, state, "fold the towel", seed=0)
    assert result.positions.shape == (30, 14) and result.positions.dtype == np.float64
    assert np.all(np.isfinite(result.positions))
    assert result.step_dt == pytest.approx(1 / 30)
    assert result.mode == "flow" and len(result.joint_names) == 14
    assert set(result.timings) == {"preprocess", "prefix", "flow", "total"}
    assert result.timings["total"] >= result.timings["prefix"] > 0
    meta = policy.metadata()
    assert meta["embodiment"] == "yam_bimanual" and meta["checkpoint"] == "tiny"
    assert meta["flow_steps"] == 10 and meta["expert_kv_source"] == "cache"


def test_same_seed_same_chunk_and_reset_replays_the_sequence(policy):
    images, state = _observation(policy.embodiment, seed=1)
    first = policy.act(images, state, "fold the towel", seed=5).positions
    again = policy.act(images, state, "fold the towel", seed=5).positions
    np.testing.assert_array_equal(first, again)
    policy.reset()
    run_a = [policy.act(images, state, "fold the towel").positions for _ in range(2)]
    policy.reset()
    run_b = [policy.act(images, state, "fold the towel").positions for _ in range(2)]
    np.testing.assert_array_equal(run_a[0], run_b[0])
    np.testing.assert_array_equal(run_a[1], run_b[1])
    assert not np.allclose(run_a[0], run_a[1])  # unseeded calls draw fresh noise


def test_observation_changes_the_chunk(policy):
    images, state = _observation(policy.embodiment, seed=2)
    base = policy.act(images, state, "fold the towel", seed=0).positions
    other_state = policy.act(images, state + 0.3, "fold the towel", seed=0).positions
    other_text = policy.act(images, state, "unfold the towel", seed=0).positions
    assert not np.allclose(base, other_state)
    assert not np.allclose(base, other_text)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda im, st: (dict(list(im.items())[:2]), st), "missing camera image.*right_wrist"),
        (
            lambda im, st: ({**im, "top": im["top"].astype(np.float32)}, st),
            "'top': expected a uint8",
        ),
        (lambda im, st: ({**im, "top": im["top"][:, :, 0]}, st), r"'top': expected an HxWx3"),
        (lambda im, st: (im, st[:5]), r"state: expected shape \(14,\)"),
        (lambda im, st: (im, np.where(np.arange(14) == 3, np.nan, st)), r"non-finite .* \[3\]"),
    ],
)
def test_bad_observations_raise_policy_input_error(policy, mutate, message):
    images, state = _observation(policy.embodiment)
    bad_images, bad_state = mutate(images, state)
    with pytest.raises(PolicyInputError, match=message):
        policy.act(bad_images, bad_state, "fold the towel")
    with pytest.raises(PolicyInputError, match="empty instruction"):
        policy.act(images, state, "   ")
    # The policy keeps working after refusing an observation.
    assert policy.act(images, state, "fold the towel", seed=0).positions.shape == (30, 14)


def test_construction_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown embodiment 'ur5'"):
        load_policy("tiny", "ur5")
    with pytest.raises(ValueError, match="unknown mode 'dream'"):
        load_policy("tiny", "droid", mode="dream")
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        load_policy("tiny", "droid", dtype="int8")
    with pytest.raises(ValueError, match="8 action dims, got 2 joint names"):
        load_policy("tiny", "droid", joint_names=["a", "b"])


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_loads_its_own_policy_class(mode):
    """Every mode the node and server accept has a class, and the loader returns exactly it."""
    assert set(POLICY_CLASSES) == set(MODES)
    policy = load_policy("tiny", "so100_101", mode=mode, seed=0)
    assert type(policy) is POLICY_CLASSES[mode]
    assert policy.mode_name == mode == policy.metadata()["mode"]


def test_overfit_one_chunk_through_the_full_policy():
    """Train only the expert (VLM frozen, prefix computed once) on one (observation, chunk)."""
    policy = load_policy("tiny", "libero", seed=0)
    spec = policy.embodiment
    images, state = _observation(spec, seed=3)
    instruction = "put the bowl on the plate"
    phase = np.linspace(0.0, 1.0, spec.horizon)[:, None] + np.arange(spec.action_dim) / 7
    target_normalized = 0.6 * np.sin(2 * np.pi * phase)
    target = policy.norm_stats.unnormalize_action(spec.norm_tag, target_normalized)

    with torch.no_grad():
        prefix = policy.run_prefix(policy.prepare_inputs(images, state, instruction))
    actions = torch.zeros(1, spec.horizon, policy.config.max_action_dim)
    actions[0, :, : spec.action_dim] = torch.from_numpy(target_normalized).float()
    expert = policy.model.action_expert
    base_lr, steps = 5e-3, 300
    optimizer = torch.optim.AdamW(expert.parameters(), lr=base_lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    before = policy.act(images, state, instruction, seed=1).positions
    for step in range(steps):
        loss = flow_matching_loss(
            expert, prefix.keys, prefix.values, prefix.mask, actions, policy.action_dim_mask,
            num_noise_samples=16, generator=generator,
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for group in optimizer.param_groups:  # cosine decay: settles the noisy single-pair loss
            group["lr"] = base_lr * 0.5 * (1 + np.cos(np.pi * (step + 1) / steps))
    policy.weights_changed()

    def normalized_mse(positions: np.ndarray) -> float:
        predicted = policy.norm_stats.normalize_action(spec.norm_tag, positions)
        return float(np.mean((predicted - target_normalized) ** 2))

    assert normalized_mse(before) > 0.1
    for seed in (1, 2):
        result = policy.act(images, state, instruction, seed=seed)
        assert normalized_mse(result.positions) < 1e-2
    np.testing.assert_allclose(result.positions, target, atol=0.5)


def test_expert_context_mask_follows_the_released_rule_for_both_action_heads():
    from molmoact2_policy.model.vlm import expert_context_mask

    eos, start, end = 1, 7, 8
    ids = torch.tensor([[eos, 3, 4, start, 5, end, 6, start, 9]])
    valid = torch.tensor([[True] * 8 + [False]])  # right padding
    both = expert_context_mask(
        ids, valid, action_mode="both", eos_token_ids=(eos,),
        action_start_token_id=start, action_end_token_id=end,
    )
    # EOS dropped, the closed span dropped inclusively, the unclosed span to the end, padding.
    assert both.tolist() == [[False, True, True, False, False, False, True, False, False]]
    continuous = expert_context_mask(
        ids, valid, action_mode="continuous", eos_token_ids=(eos,),
        action_start_token_id=start, action_end_token_id=end,
    )
    assert continuous.tolist() == valid.tolist()
    # A transformers config may list several EOS ids: none of them is attended to.
    listed = expert_context_mask(
        ids, valid, action_mode="both", eos_token_ids=(eos, 6),
        action_start_token_id=start, action_end_token_id=end,
    )
    assert listed.tolist() == [[False, True, True, False, False, False, False, False, False]]


def test_policy_hides_the_eos_token_from_the_expert_when_the_config_names_it():
    from molmoact2_policy.model.tokenizer import EOS_TOKEN

    policy = load_policy("tiny", "droid", seed=0)
    images, state = _observation(policy.embodiment)
    with torch.inference_mode():
        prefix = policy.run_prefix(policy.prepare_inputs(images, state, "wipe the table"))
        assert policy.expert_context(prefix).additive_mask[0, 0, 0, 0] == 0  # no eos id known
        eos = policy.tokenizer.token_id(EOS_TOKEN)
        assert int(prefix.input_ids[0, 0]) == eos  # the prompt starts with it as BOS
        policy.config.extra["eos_token_id"] = eos
        try:
            masked = policy.expert_context(prefix).additive_mask[0, 0, 0]
        finally:
            del policy.config.extra["eos_token_id"]
    assert masked[0] < -1e30 and (masked[1:] == 0).all()


def test_a_checkpoint_listing_several_eos_ids_acts_and_bad_ids_are_refused_at_load():
    """config.json's top-level ``eos_token_id`` may be a list (transformers allows it); the
    expert mask raised TypeError (int() of a list) at the first act. Anything else that is no
    token id is refused when the config is read (released_config.value_problems)."""
    from molmoact2_policy.model.config import ConfigError, MolmoAct2Config
    from molmoact2_policy.model.tokenizer import EOS_TOKEN

    policy = load_policy("tiny", "droid", seed=0)
    eos = policy.tokenizer.token_id(EOS_TOKEN)
    data = policy.config.to_dict()
    data["action_mode"] = "both"
    data["eos_token_id"] = [eos, eos + 1]
    config = MolmoAct2Config.from_dict(data)
    assert config.eos_token_ids == (eos, eos + 1)
    policy.config = config
    images, state = _observation(policy.embodiment)
    result = policy.act(images, state, "wipe the table", seed=0)
    assert np.isfinite(result.positions).all()
    for bad in ("2", True, -1, 1.5, [], [eos, None], {"id": eos}):
        data["eos_token_id"] = bad
        with pytest.raises(ConfigError, match="eos_token_id"):
            MolmoAct2Config.from_dict(data)


def _policy_with_tag_metadata(**metadata):
    from molmoact2_common.embodiments import get_embodiment
    from molmoact2_policy.model.checkpoint import build_tiny
    from molmoact2_policy.model.normalize import NormStats

    model, config, stats, tokenizer = build_tiny(seed=0)
    spec = get_embodiment("droid")
    data = stats.to_dict()
    data["metadata_by_tag"][spec.norm_tag].update(metadata)
    return MolmoAct2Policy(model, config, NormStats.from_dict(data), tokenizer, spec)


def test_the_checkpoints_setup_and_control_text_go_into_the_prompt():
    policy = _policy_with_tag_metadata(
        setup_type="a franka arm on a cart", control_mode="absolute joint positions"
    )
    prompt = policy.build_prompt(np.zeros(policy.embodiment.state_dim), "wipe the table")
    assert "The setup is <setup_start>a franka arm on a cart<setup_end>." in prompt
    assert "<control_start>absolute joint positions<control_end>" in prompt
    spec = policy.embodiment
    plain = load_policy("tiny", "droid", seed=0)
    fallback = plain.build_prompt(np.zeros(spec.state_dim), "wipe the table")
    assert f"<setup_start>{spec.setup}<setup_end>" in fallback


def test_tag_action_steps_shorten_the_chunk_and_a_wrong_horizon_is_refused():
    policy = _policy_with_tag_metadata(action_horizon=15, n_action_steps=8)
    images, state = _observation(policy.embodiment)
    result = policy.act(images, state, "wipe the table", seed=0)
    assert result.positions.shape == (8, 8)
    with pytest.raises(EmbodimentMismatchError, match="'tiny' has action_horizon 30"):
        _policy_with_tag_metadata(action_horizon=30)
    with pytest.raises(EmbodimentMismatchError, match="'tiny' has n_action_steps 16"):
        _policy_with_tag_metadata(n_action_steps=16)


def test_n_obs_steps_picks_where_the_returned_steps_start_as_released():
    import dataclasses

    from molmoact2_common.embodiments import get_embodiment
    from molmoact2_policy.model.checkpoint import build_tiny
    from molmoact2_policy.model.normalize import NormStats

    spec = get_embodiment("droid")
    full_policy = _policy_with_tag_metadata()
    model, config, stats, tokenizer = build_tiny(seed=0)
    data = stats.to_dict()
    data["metadata_by_tag"][spec.norm_tag]["n_action_steps"] = 8
    later = MolmoAct2Policy(
        model, dataclasses.replace(config, n_obs_steps=3), NormStats.from_dict(data), tokenizer,
        spec,
    )
    images, state = _observation(spec)
    full = full_policy.act(images, state, "wipe the table", seed=0).positions
    # released: actions[:, n_obs_steps - 1 : n_obs_steps - 1 + n_action_steps]
    np.testing.assert_array_equal(
        later.act(images, state, "wipe the table", seed=0).positions, full[2:10]
    )
    with pytest.raises(EmbodimentMismatchError, match="n_obs_steps 2 with 15 returned"):
        MolmoAct2Policy(model, dataclasses.replace(config, n_obs_steps=2), stats, tokenizer, spec)
