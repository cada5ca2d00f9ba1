"""FastPolicy (mode "fast") on the random tiny preset: its constrained decoding (restricted
greedy over OpenFAST tokens). The released decoding: tests/unit/test_fast_release_decode.py."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from molmoact2_policy.model.checkpoint import (
    FAST_TOKENIZER_DIR,
    CheckpointError,
    tiny_fast_tokenizer,
    write_tiny_checkpoint,
)
from molmoact2_policy.model.fast import FastActionTokenizer, reconstruction_bound
from molmoact2_policy.model.fast_policy import (
    ActionTokenRun,
    ActionTokenRunError,
    FastPolicy,
    fast_prompt,
)
from molmoact2_policy.model.loader import load_policy
from molmoact2_policy.policy_api import Policy

torch.set_num_threads(1)

EMBODIMENT = "libero"  # the shortest chunk (10 x 7): the fewest decoding steps
INSTRUCTION = "put the bowl on the plate"


def _observation(spec, seed=0):
    rng = np.random.default_rng(seed)
    images = {n: rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for n in spec.camera_names}
    return images, rng.uniform(-0.5, 0.5, spec.state_dim)


def _fresh_policy() -> FastPolicy:
    policy = load_policy("tiny", EMBODIMENT, mode="fast", seed=0)
    assert isinstance(policy, FastPolicy)
    return policy


def _prefix(policy: FastPolicy, images, state):
    with torch.inference_mode():
        return policy.run_prefix(policy.prepare_inputs(images, state, INSTRUCTION))


@pytest.fixture(scope="module")
def policy() -> FastPolicy:
    return _fresh_policy()


@pytest.fixture(scope="module")
def baseline(policy):
    images, state = _observation(policy.embodiment)
    return images, state, policy.act(images, state, INSTRUCTION)


def test_act_returns_a_deterministic_chunk_in_the_contract_shape(policy, baseline):
    images, state, result = baseline
    assert isinstance(policy, Policy)
    assert result.positions.shape == (10, 7) and result.positions.dtype == np.float64
    assert np.all(np.isfinite(result.positions))
    assert result.mode == "fast" and result.step_dt == pytest.approx(0.1)
    assert set(result.timings) == {"preprocess", "prefix", "decode", "total"}
    assert result.timings["total"] >= result.timings["decode"] > 0
    # Greedy: the seed argument and reset() change nothing.
    again = policy.act(images, state, INSTRUCTION, seed=123)
    np.testing.assert_array_equal(again.positions, result.positions)
    meta = policy.metadata()
    assert meta["mode"] == "fast" and meta["fast_vocab"] == tiny_fast_tokenizer().vocab_size
    # horizon x the embodiment's own width (the tiny alphabet is one byte per coefficient)
    assert meta["max_action_tokens"] == 10 * 7
    assert "flow_steps" not in meta
    assert meta["fast_decoding"] == "constrained"  # the random preset; directories: "release"


def test_decoding_is_restricted_greedy_over_action_tokens(policy):
    """The static-cache decoder equals plain greedy over the full LM head with non-action
    logits masked (and overshooting ids masked), through transformers' own DynamicCache."""
    config, fast = policy.config, policy.fast_tokenizer
    images, state = _observation(policy.embodiment, seed=1)
    run = policy.decode_action_tokens(_prefix(policy, images, state))
    start, vocab = config.action_token_start_id, fast.vocab_size
    counts = fast.coefficient_counts()
    needed = policy.coefficients_per_chunk
    assert run.complete and not run.ended and run.coefficients == needed
    assert all(start <= t < start + vocab for t in run.token_ids)  # no non-action token at all
    np.testing.assert_array_equal(run.fast_ids, np.asarray(run.token_ids) - start)
    assert counts[run.fast_ids].sum() == needed

    prefix = _prefix(policy, images, state)
    head = policy.model.vlm.lm_head.weight
    allowed = torch.zeros(head.shape[0], dtype=torch.bool)
    allowed[start : start + vocab] = True
    allowed[config.action_end_token_id] = True
    reference, total, cache = [], 0, prefix.cache
    hidden = prefix.last_hidden_state[:, -1]
    with torch.inference_mode():
        while total < needed:
            logits = (hidden @ head.T)[0].masked_fill(~allowed, float("-inf"))
            overshoot = torch.from_numpy(counts > needed - total)
            logits[start : start + vocab] = logits[start : start + vocab].masked_fill(
                overshoot, float("-inf")
            )
            token = int(logits.argmax())
            assert token != config.action_end_token_id
            reference.append(token)
            total += int(counts[token - start])
            position = torch.tensor([[prefix.mask.shape[1] + len(reference) - 1]])
            hidden = policy.model.vlm.model.language_model(
                input_ids=torch.tensor([[token]]),
                position_ids=position,
                past_key_values=cache,
                use_cache=True,
            ).last_hidden_state[:, -1]
    assert run.token_ids == reference


def test_budget_exhausted_without_end_is_a_clear_error_and_the_policy_recovers(
    policy, baseline
):
    images, state, result = baseline
    policy.max_action_tokens = 12  # fewer than the 70 coefficients a chunk needs
    try:
        with pytest.raises(ActionTokenRunError, match=r"without <action_end> within its budget"):
            policy.act(images, state, INSTRUCTION)
    finally:
        policy.max_action_tokens = None
    recovered = policy.act(images, state, INSTRUCTION)
    np.testing.assert_array_equal(recovered.positions, result.positions)


def test_early_action_end_is_a_truncated_run_error_and_the_policy_recovers(
    policy, baseline, monkeypatch
):
    images, state, result = baseline
    original = policy.decoder.candidate_logits
    calls = []

    def end_at_fourth_token(hidden):
        logits = original(hidden).clone()
        calls.append(1)
        if len(calls) == 4:
            logits[-1] = float("inf")  # the model "chooses" <action_end> now
        return logits

    monkeypatch.setattr(policy.decoder, "candidate_logits", end_at_fourth_token)
    with pytest.raises(ActionTokenRunError, match=r"3-token action run does not decode.*truncated"):
        policy.act(images, state, INSTRUCTION)
    monkeypatch.undo()
    recovered = policy.act(images, state, INSTRUCTION)
    np.testing.assert_array_equal(recovered.positions, result.positions)


def test_tokens_to_chunk_names_out_of_vocabulary_ids(policy):
    vocab = policy.fast_tokenizer.vocab_size
    valid = int(np.flatnonzero(policy.fast_tokenizer.coefficient_counts() > 0)[0])
    run = ActionTokenRun(
        fast_ids=np.array([valid, vocab + 3]),
        token_ids=[],
        ended=True,
        complete=False,
        coefficients=0,
        forwards=0,
    )
    with pytest.raises(ActionTokenRunError, match=rf"id {vocab + 3}, outside the FAST vocabulary"):
        policy.tokens_to_chunk(run)


def test_model_trained_to_emit_a_token_run_acts_exactly_that_chunk():
    """Fit the LM head's action rows so the tiny VLM writes the FAST code of a known chunk;
    act() must return that code's chunk, un-normalised (gripper passing through)."""
    policy = _fresh_policy()
    spec, fast, config = policy.embodiment, policy.fast_tokenizer, policy.config
    t = np.linspace(0.0, 1.0, spec.horizon)[:, None]
    target = 0.5 * np.sin(2 * np.pi * 0.5 * t + np.arange(spec.action_dim)) + 0.1
    ids = fast.encode(target)
    tokens = [config.action_token_start_id + i for i in ids]
    images, state = _observation(spec, seed=7)

    # Teacher forcing: the hidden state that predicts each target token (fixed while only the
    # LM head changes; embeddings and LM head are not tied).
    prefix = _prefix(policy, images, state)
    length = prefix.mask.shape[1]
    with torch.inference_mode():
        rest = policy.model.vlm.model.language_model(
            input_ids=torch.tensor([tokens[:-1]]),
            position_ids=torch.arange(length, length + len(tokens) - 1)[None],
            past_key_values=prefix.cache,
            use_cache=True,
        ).last_hidden_state[0]
    hidden = torch.cat([prefix.last_hidden_state[0, -1:], rest]).clone()
    candidates = policy.decoder.candidates
    labels = torch.tensor(ids)
    rows = policy.model.vlm.lm_head.weight.detach()[candidates].clone().requires_grad_(True)
    optimizer = torch.optim.Adam([rows], lr=0.05)
    for _ in range(500):
        logits = hidden @ rows.T
        top2 = logits.topk(2, dim=1).values
        correct = (logits.argmax(dim=1) == labels).all()
        if correct and bool((top2[:, 0] - top2[:, 1] > 1.0).all()):
            break
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(logits, labels).backward()
        optimizer.step()
    else:
        pytest.fail("the LM head did not fit the target token run")
    with torch.no_grad():
        policy.model.vlm.lm_head.weight[candidates] = rows.detach()

    run = policy.decode_action_tokens(_prefix(policy, images, state))
    assert run.fast_ids.tolist() == ids and run.complete
    result = policy.act(images, state, INSTRUCTION)
    decoded = fast.decode(ids, spec.horizon, spec.action_dim)
    np.testing.assert_allclose(result.positions, policy.unnormalize(decoded), rtol=0, atol=1e-12)
    # The chunk is the target up to FAST's quantisation, seen through the norm stats.
    bound = reconstruction_bound(spec.horizon, fast.scale)[:, None]
    assert (np.abs(decoded - target) <= bound + 1e-12).all()
    # The tiny stats have no mask: every dim is un-normalised, grippers included (as released).
    for dim in range(spec.action_dim):
        assert not np.allclose(result.positions[:, dim], decoded[:, dim])


def test_written_checkpoint_carries_the_fast_tokenizer_and_its_absence_is_named(tmp_path):
    path = write_tiny_checkpoint(tmp_path / "tiny", seed=0, embodiments=[EMBODIMENT])
    assert (path / FAST_TOKENIZER_DIR / "processor_config.json").is_file()
    written = FastActionTokenizer.from_directory(path / FAST_TOKENIZER_DIR)
    assert written.vocab_size == tiny_fast_tokenizer().vocab_size
    assert written.min_token == tiny_fast_tokenizer().min_token

    shutil.rmtree(path / FAST_TOKENIZER_DIR)
    with pytest.raises(CheckpointError, match=r"fast_tokenizer: not found; mode 'fast' needs"):
        load_policy(str(path), EMBODIMENT, mode="fast")
    # The other modes do not need it.
    assert load_policy(str(path), EMBODIMENT).mode_name == "flow"


def test_fast_prompt_appends_the_action_start_marker():
    assert fast_prompt("...assistant\n<action_output>").endswith("<action_output><action_start>")
    with pytest.raises(ValueError, match="must end with"):
        fast_prompt("no answer marker")


def test_owed_continuation_bytes_follow_utf8():
    from molmoact2_policy.model.fast_policy import _owed_after

    two = chr(0x3A9).encode()  # 2 bytes
    three = chr(0x4E00).encode()  # 3 bytes
    assert _owed_after(0, b"a") == 0
    assert _owed_after(0, two[:1]) == 1 and _owed_after(1, two[1:]) == 0
    assert _owed_after(0, three[:1]) == 2 and _owed_after(2, three[1:2]) == 1
    assert _owed_after(0, b"a" + two[:1]) == 1  # the last character decides
    assert _owed_after(0, two + three) == 0
