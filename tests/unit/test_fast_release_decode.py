"""FAST mode decodes as the released code does: golden rules from the released source.

Source (read with the search tools; facts only, no code copied): ``huggingface/lerobot``
``src/lerobot/policies/molmoact2/hf_model/modeling_molmoact2.py`` at commit
28693f90891eb5fffbc111a172cbc53bc452def9 (``predict_action`` with
``inference_action_mode="discrete"``, ``_continue_discrete_generation_from_output``,
``_extract_discrete_token_bins``, ``_decode_discrete_action_chunk``, ``_build_robot_text``) and
``.../hf_model/action_tokenizer.py`` at 18f0dfe265649b2a1b440559c61066ec5a27c0b7
(``UniversalActionProcessor.decode``). The rules:

* prompt: the robot prompt ending ``<action_output>``, nothing appended;
* loop: ``argmax(logits[:, -1, :])`` over the whole LM head, the token appended and fed back,
  stop when it equals ``eos_token_id`` (EOS kept in the stream); ``max(1, horizon * 16)``
  tokens at most, then ``RuntimeError`` (no chunk);
* parse: from after the first ``<action_start>`` (stream start if none) to the first
  ``<action_end>`` after it (stream end if none), keep ids in
  ``[action_token_start_id, + num_action_tokens)`` as ``id - action_token_start_id``, skip the
  rest; nothing kept -> ``RuntimeError``;
* tokenizer: ``PreTrainedTokenizerFast.decode`` (the ``tokenizers`` pipeline), ``ord + min_token``,
  ``reshape(-1, action_dim)`` must be ``(horizon, action_dim)`` else an all-zero chunk,
  ``idct(coeff / scale, axis=0, norm="ortho")``, float32, un-normalised.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from molmoact2_common.embodiments import get_embodiment
from molmoact2_policy.model.checkpoint import build_tiny, tiny_fast_tokenizer, write_tiny_checkpoint
from molmoact2_policy.model.decoding import span_bins
from molmoact2_policy.model.fast import (
    FastActionTokenizer,
    FastDecodeError,
    _clean_up_tokenization,
)
from molmoact2_policy.model.fast_policy import (
    ActionTokenRunError,
    FastPolicy,
    ReleasedTokenRun,
)
from molmoact2_policy.model.loader import load_policy
from molmoact2_policy.model.tokenizer import EOS_TOKEN

torch.set_num_threads(1)

EMBODIMENT = "libero"  # 10 x 7
INSTRUCTION = "put the bowl on the plate"


def naive_idct(coefficients: np.ndarray) -> np.ndarray:
    """scipy.fft.idct(c, type=2, norm="ortho", axis=0) from its definition (DCT-III)."""
    n = coefficients.shape[0]
    out = np.zeros_like(coefficients, dtype=np.float64)
    for t in range(n):
        for k in range(n):
            weight = math.sqrt((1 if k == 0 else 2) / n)
            out[t] += weight * coefficients[k] * math.cos(math.pi * (2 * t + 1) * k / (2 * n))
    return out


def released_policy() -> FastPolicy:
    """The tiny model with an EOS id in its config (as a released config.json has), decoding
    as released."""
    model, config, stats, tokenizer = build_tiny(0)
    config.extra["eos_token_id"] = tokenizer.token_id(EOS_TOKEN)
    return FastPolicy(
        model,
        config,
        stats,
        tokenizer,
        get_embodiment(EMBODIMENT),
        fast_tokenizer=tiny_fast_tokenizer(),
        decoding="release",
    )


def _observation(spec, seed=0):
    rng = np.random.default_rng(seed)
    images = {n: rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for n in spec.camera_names}
    return images, rng.uniform(-0.5, 0.5, spec.state_dim)


def _prefix(policy, images, state):
    with torch.inference_mode():
        return policy.run_prefix(policy.prepare_inputs(images, state, INSTRUCTION))


# ------------------------------------------------------------------ parsing (released rule)
@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        # start ... end: only the ids in the action range between them
        ([9, 1, 20, 21, 99, 22, 2, 23, 0], [0, 1, 2]),
        # no start: from the stream's beginning up to... the end (end only searched after a start)
        ([20, 21, 2, 22, 0], [0, 1, 2]),
        # start without end: to the stream's end
        ([1, 20, 21, 0], [0, 1]),
        # first start wins, an end before it is ignored, the first end after it closes
        ([2, 20, 1, 21, 1, 22, 2, 23, 2], [1, 1 + 1]),
        # ids at or past start + count are skipped (count is the config's num_action_tokens)
        ([1, 20, 24, 25, 21, 2], [0, 1]),
        ([1, 2, 0], []),
    ],
)
def test_span_parsing_follows_the_released_rule(stream, expected):
    # start id 1, end id 2, <action_0> = 20, four action ids (20..23)
    assert span_bins(stream, 1, 2, 20, 4) == expected


# ------------------------------------------------------------------ tokenizer decode
def test_released_tokenizer_decode_matches_the_release_and_refuses_what_it_would_zero():
    fast = tiny_fast_tokenizer()
    rng = np.random.default_rng(3)
    t = np.linspace(0, 1, 10)[:, None]
    chunk = 0.4 * np.sin(2 * np.pi * t + rng.uniform(0, 6, (1, 7)))
    ids = fast.encode(chunk)
    text = fast._bpe.decode(ids, skip_special_tokens=False)
    coeff = (np.array([ord(c) for c in text]) + fast.min_token).reshape(-1, 7)
    expected = naive_idct(coeff / fast.scale)
    np.testing.assert_allclose(fast.decode_released(ids, 10, 7), expected, atol=1e-12)
    # The strict decoder agrees on a valid run.
    np.testing.assert_allclose(fast.decode(ids, 10, 7), expected, atol=1e-12)
    # Ids the BPE does not know are skipped by the released tokenizer: same chunk.
    with_unknown = [*ids[:3], fast.vocab_size + 5, *ids[3:]]
    np.testing.assert_allclose(fast.decode_released(with_unknown, 10, 7), expected, atol=1e-12)
    with pytest.raises(FastDecodeError, match="outside the FAST vocabulary"):
        fast.decode(with_unknown, 10, 7)  # the strict decoder refuses it
    # Wrong count: the release prints and returns zeros; we refuse, naming it.
    with pytest.raises(FastDecodeError, match="all-zero chunk"):
        fast.decode_released(ids[:-1], 10, 7)
    with pytest.raises(FastDecodeError, match="all-zero chunk"):
        fast.decode_released(ids, 9, 7)


def test_alphabet_entries_decode_as_their_own_character_as_released():
    """The trained alphabet has chr(0).. entries no byte maps to; the released byte-level
    decoder falls back to the entry's own UTF-8 bytes, so each stands for its character."""
    fast = tiny_fast_tokenizer()
    never = [i for i in range(fast.vocab_size) if fast.token_bytes(i) is None]
    assert never
    token = fast._bpe.id_to_token(never[0])
    assert fast.released_text([never[0]]) == token
    chunk = fast.decode_released([never[0]], 1, 1)
    assert chunk.shape == (1, 1)
    assert chunk[0, 0] == pytest.approx((ord(token) + fast.min_token) / fast.scale)


def test_invalid_utf8_is_refused_not_read_as_u_fffd():
    rng = np.random.default_rng(4)
    t = np.linspace(0, 1, 30)[:, None]
    chunks = [0.9 * np.sin(2 * np.pi * t * rng.uniform(0.2, 2, (1, 6))) for _ in range(60)]
    wide = FastActionTokenizer.train(chunks, vocab_size=600, scale=40.0)  # 2-byte coefficients
    lead = [
        i
        for i in range(wide.vocab_size)
        if (raw := wide.token_bytes(i)) is not None and not _utf8(raw)
    ]
    assert "\ufffd" in wide.released_text(lead[:1])  # what the release would read
    with pytest.raises(FastDecodeError, match="UTF-8"):
        wide.decode_released(lead[:1], 1, 1)


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_clean_up_tokenization_is_transformers_rule():
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    text = "a . b ? c ! d , e ' f n't 'm 's 've 're"
    assert _clean_up_tokenization(text) == PreTrainedTokenizerBase.clean_up_tokenization(None, text)


# ------------------------------------------------------------------ the decoding loop
@pytest.fixture(scope="module")
def policy() -> FastPolicy:
    return released_policy()


def test_release_prompt_ends_with_action_output_only(policy):
    prompt = policy.build_prompt(np.zeros(policy.embodiment.state_dim), INSTRUCTION)
    assert prompt.endswith("<action_output>")


def test_free_greedy_loop_equals_plain_greedy_over_the_whole_head(policy):
    """Released loop: argmax over every LM-head row, fed back through the cache; checked
    against transformers' own DynamicCache continuation, with EOS moved to a token the random
    model writes so the loop stops there (EOS included in the stream)."""
    images, state = _observation(policy.embodiment, seed=1)
    free = policy.decode_action_tokens(_prefix(policy, images, state))
    assert isinstance(free, ReleasedTokenRun)
    assert free.budget == 16 * policy.embodiment.horizon
    # Random weights: no EOS in 160 tokens -> the released RuntimeError, ours as a named error.
    assert not free.ended and len(free.token_ids) == 160
    with pytest.raises(ActionTokenRunError, match=r"did not write EOS .* within 160 tokens"):
        policy.tokens_to_chunk(free)

    prefix = _prefix(policy, images, state)
    head = policy.model.vlm.lm_head.weight
    reference, cache = [], prefix.cache
    hidden = prefix.last_hidden_state[:, -1]
    with torch.inference_mode():
        for step in range(12):
            token = int((hidden @ head.T)[0].argmax())
            reference.append(token)
            hidden = policy.model.vlm.model.language_model(
                input_ids=torch.tensor([[token]]),
                position_ids=torch.tensor([[prefix.mask.shape[1] + step]]),
                past_key_values=cache,
                use_cache=True,
            ).last_hidden_state[:, -1]
    assert free.token_ids[:12] == reference
    # EOS = the 5th token written: the loop stops right there, EOS kept.
    eos = reference[4]
    first = reference.index(eos)
    decoder = policy.released_decoder
    saved = decoder.eos
    decoder.eos = eos
    try:
        stopped = policy.decode_action_tokens(_prefix(policy, images, state))
    finally:
        decoder.eos = saved
    assert stopped.ended and stopped.token_ids == reference[: first + 1]


def test_model_trained_to_answer_acts_the_released_chunk():
    """Fit LM-head rows so the tiny model writes a released-style answer with noise around
    the span; act() returns exactly what the released parser and processor make of it."""
    policy = released_policy()
    spec, fast, config = policy.embodiment, policy.fast_tokenizer, policy.config
    t = np.linspace(0.0, 1.0, spec.horizon)[:, None]
    target = 0.5 * np.sin(2 * np.pi * 0.5 * t + np.arange(spec.action_dim)) + 0.1
    ids = fast.encode(target)
    start, end = config.action_start_token_id, config.action_end_token_id
    first = config.action_token_start_id
    eos = policy.released_decoder.eos
    text = policy.tokenizer.token_id("<state_start>")  # any non-action token
    tokens = [text, start, *(first + i for i in ids[:2]), text, *(first + i for i in ids[2:])]
    tokens += [end, first + ids[0], eos]  # an action id after <action_end> is not read
    images, state = _observation(spec, seed=7)
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
    head = policy.model.vlm.lm_head.weight
    rows = sorted(set(tokens))
    labels = torch.tensor([rows.index(token) for token in tokens])
    trainable = head.detach()[rows].clone().requires_grad_(True)
    others = torch.ones(head.shape[0], dtype=torch.bool)
    others[rows] = False
    fixed = hidden @ head.detach()[others].T  # every other row's logits, unchanged
    optimizer = torch.optim.Adam([trainable], lr=0.05)
    for _ in range(800):
        mine = hidden @ trainable.T
        margin = (
            mine.gather(1, labels[:, None])[:, 0]
            - torch.cat([fixed, mine.scatter(1, labels[:, None], float("-inf"))], dim=1)
            .max(dim=1)
            .values
        )
        if bool((margin > 1.0).all()):
            break
        optimizer.zero_grad()
        torch.relu(2.0 - margin).sum().backward()
        optimizer.step()
    else:
        pytest.fail("the LM head did not fit the answer")
    with torch.no_grad():
        head[rows] = trainable.detach()

    run = policy.decode_action_tokens(_prefix(policy, images, state))
    assert run.token_ids == tokens and run.ended
    assert policy.released_fast_ids(run) == ids
    result = policy.act(images, state, INSTRUCTION)
    text_values = fast.released_text(ids)
    coeff = (np.array([ord(c) for c in text_values]) + fast.min_token).reshape(-1, spec.action_dim)
    normalized = naive_idct(coeff / fast.scale).astype(np.float32)
    expected = policy.norm_stats.unnormalize_action(spec.norm_tag, normalized.astype(np.float64))
    np.testing.assert_allclose(result.positions, expected, rtol=0, atol=1e-9)


def test_written_checkpoint_decodes_as_released(tmp_path):
    """A checkpoint directory always decodes as released; without an eos_token_id it is refused
    at load (the release refuses discrete generation without one)."""
    path = write_tiny_checkpoint(tmp_path / "tiny", seed=0, embodiments=[EMBODIMENT])
    # The tag names the chunk length: the released code generates (and FAST-decodes) the tag's
    # action_horizon steps, max_action_horizon (30) when it has none.
    stats = json.loads((path / "norm_stats.json").read_text())
    tag = get_embodiment(EMBODIMENT).norm_tag
    assert stats["metadata_by_tag"][tag]["action_horizon"] == 10
    with pytest.raises(ValueError, match="no eos_token_id"):
        load_policy(str(path), EMBODIMENT, mode="fast")
    _, _, _, tokenizer = build_tiny(0)
    eos = tokenizer.token_id(EOS_TOKEN)
    # As released, the generation config's EOS counts when the config has none ...
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [eos, eos + 1]}))
    loaded = load_policy(str(path), EMBODIMENT, mode="fast")
    assert loaded.released_decoder.eos == eos
    # ... and the config's own wins over it.
    config = json.loads((path / "config.json").read_text())
    config["eos_token_id"] = eos + 2
    (path / "config.json").write_text(json.dumps(config))
    loaded = load_policy(str(path), EMBODIMENT, mode="fast")
    assert loaded.released_decoder.eos == eos + 2
    assert isinstance(loaded, FastPolicy) and loaded.decoding == "release"
    assert loaded.metadata()["fast_decoding"] == "release"
    images, state = _observation(loaded.embodiment)
    with pytest.raises(ActionTokenRunError, match="did not write EOS"):
        loaded.act(images, state, INSTRUCTION)
