"""Think depth decoding follows the released decoder: budgets, the free path, span parsing.

Source (read with the search tools; facts only): ``huggingface/lerobot``
``src/lerobot/policies/molmoact2/hf_model/modeling_molmoact2.py`` at commit
28693f90891eb5fffbc111a172cbc53bc452def9, ``_generate_depth_prefix``,
``_max_depth_decode_steps``, ``_decode_depth_bins_from_token_ids`` and
``_extract_discrete_token_bins``:

* adaptive path (``enable_adaptive_depth=True``, the default): ``<depth_start>`` fed, the codes
  argmax over the depth rows only, then argmax over the whole head, each token fed, until
  ``<depth_end>`` within ``max(8, H)`` tokens, H = ``_resolve_action_horizon()`` without a tag =
  the checkpoint's ``max_action_horizon``;
* free path (``enable_adaptive_depth=False``): argmax over the whole head from the prompt's own
  logits, each token fed, until ``<depth_end>`` has been fed, at most
  ``max(num_depth_codes + 8, 16 H, 1)`` tokens (else RuntimeError); the codes are the depth ids
  between the first ``<depth_start>`` and the first ``<depth_end>`` after it, other ids skipped,
  none -> RuntimeError.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from molmoact2_policy.model.config import MolmoAct2Config
from molmoact2_policy.model.model import MolmoAct2Model
from molmoact2_policy.model.think import DepthDecodeError, DepthDecoder, ThinkPolicy
from molmoact2_policy.model.tokenizer import MolmoAct2Tokenizer
from molmoact2_policy.model.vlm import cache_key_values
from molmoact2_policy.policy_api import PolicyUnavailableError
from tests.unit.test_think import PROMPT, text_prefix

torch.set_num_threads(1)


class Scripted(DepthDecoder):
    """Full-vocabulary choices scripted (random weights never write a depth span); every
    forward and cache write is the real code."""

    def __init__(self, *args, script, **kwargs):
        super().__init__(*args, **kwargs)
        self.script = list(script)

    def _next_token(self, hidden):
        return self.script.pop(0)


@pytest.fixture(scope="module")
def tiny():
    config = MolmoAct2Config.tiny(enable_depth_reasoning=True, think_force_depth_end=False)
    model = MolmoAct2Model.random(config, seed=3)
    tokenizer = MolmoAct2Tokenizer.tiny()
    return config, model, tokenizer, text_prefix(model, tokenizer, PROMPT)


def _max_diff(a, b) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def test_free_path_is_plain_greedy_over_the_whole_head_and_fails_without_depth_end(tiny):
    config, model, tokenizer, prefix = tiny
    decoder = DepthDecoder(model.vlm, config)
    with pytest.raises(DepthDecodeError, match="<depth_end> within 12 tokens"):
        decoder.decode_free(prefix, max_tokens=12)
    written = list(decoder._static.layers[0].keys.shape)  # the static cache was used
    assert written[2] >= prefix.mask.shape[1] + 12
    # The same 12 choices through transformers' DynamicCache, one token at a time.
    fresh = text_prefix(model, tokenizer, PROMPT)
    head = model.vlm.lm_head.weight
    hidden, cache, reference = fresh.last_hidden_state[:, -1], fresh.cache, []
    with torch.no_grad():
        for step in range(12):
            token = int((hidden @ head.T).argmax())
            reference.append(token)
            hidden = model.vlm.model.language_model(
                input_ids=torch.tensor([[token]]),
                position_ids=torch.tensor([[fresh.mask.shape[1] + step]]),
                past_key_values=cache,
                use_cache=True,
            ).last_hidden_state[:, -1]
    # Re-run with EOS-free budget 12 but record the choices: the decoder's own picks.
    picks = []
    original = decoder._next_token

    def record(h):
        picks.append(original(h))
        return picks[-1]

    decoder._next_token = record
    try:
        with pytest.raises(DepthDecodeError):
            decoder.decode_free(text_prefix(model, tokenizer, PROMPT), max_tokens=12)
    finally:
        del decoder._next_token
    assert picks == reference


def test_free_path_parses_the_span_as_released(tiny):
    config, model, tokenizer, prefix = tiny
    start, end, first = (
        config.depth_start_token_id,
        config.depth_end_token_id,
        config.depth_token_start_id,
    )
    codes = np.random.default_rng(0).integers(0, config.num_depth_tokens, 100)
    junk = 11  # an ordinary token: skipped inside the span, kept in the context
    script = [junk, first + 5, start, *(first + c for c in codes[:50]), junk]
    script += [*(first + c for c in codes[50:]), end]
    decoder = Scripted(model.vlm, config, script=script)
    out = decoder.decode_free(prefix, max_tokens=500)
    np.testing.assert_array_equal(out.codes, codes)  # the code before <depth_start> not read
    assert out.span_ids == script and out.changed.all()
    assert out.forwards == len(script)  # every token fed, <depth_end> included
    # The depth-token mask marks exactly the 100 codes read (not the one before the start).
    length = prefix.mask.shape[1]
    marked = torch.nonzero(out.depth_token_mask[0]).flatten().tolist()
    expected = [length + i for i, t in enumerate(script) if first <= t and i > 2]
    assert marked == expected and len(marked) == 100
    # The cache equals one plain forward of prompt + everything written.
    ids = torch.tensor([[*tokenizer.encode(PROMPT), *script]])
    with torch.no_grad():
        keys, values = cache_key_values(
            model.vlm.model(input_ids=ids, use_cache=True).past_key_values
        )
    assert _max_diff(out.keys, keys) < 1e-4 and _max_diff(out.values, values) < 1e-4


@pytest.mark.parametrize(
    ("count", "message"),
    [(99, "wrote 99 depth codes, the grid has 100"), (0, "no depth codes between")],
)
def test_free_path_refuses_a_grid_it_cannot_use(tiny, count, message):
    config, model, _, prefix = tiny
    script = [config.depth_start_token_id, *[config.depth_token_start_id] * count]
    script.append(config.depth_end_token_id)
    decoder = Scripted(model.vlm, config, script=script)
    with pytest.raises(DepthDecodeError, match=message):
        decoder.decode_free(prefix, max_tokens=500)


def test_budgets_come_from_the_checkpoints_max_action_horizon():
    from molmoact2_policy.model.loader import load_policy

    policy = load_policy("tiny", "libero", mode="think")  # the tag's horizon is 10
    assert isinstance(policy, ThinkPolicy)
    horizon = policy.config.max_action_horizon
    assert policy.embodiment.horizon == 10 and horizon == 30
    assert policy.decoder.end_budget == max(8, horizon)
    assert policy.free_depth_budget == max(policy.config.num_depth_codes + 8, 16 * horizon)
    assert policy.metadata()["depth_decoding"] == "adaptive"
    policy.depth_decoding = "sideways"
    rng = np.random.default_rng(0)
    images = {
        n: rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for n in policy.embodiment.camera_names
    }
    with pytest.raises(ValueError, match="unknown depth decoding 'sideways'"):
        policy.act(images, np.zeros(policy.embodiment.state_dim), "fold")
    # The released free path on random weights: no <depth_end> within the released budget is
    # a failed step (the release raises), the depth cache is left as it was.
    policy.depth_decoding = "adaptive"
    state = np.zeros(policy.embodiment.state_dim)
    first = policy.act(images, state, "fold")
    policy.depth_decoding = "free"
    with pytest.raises(PolicyUnavailableError, match=r"<depth_end> within 480 tokens"):
        policy.act(images, state, "fold")
    np.testing.assert_array_equal(policy.depth_cache.codes, first.depth_codes)


def test_configure_depth_decoding_switches_paths_and_clears_the_cache():
    from molmoact2_policy.model.loader import load_policy

    policy = load_policy("tiny", "libero", mode="think")
    policy.depth_cache.codes = np.zeros(100, dtype=np.int64)
    policy.depth_cache.patches = np.zeros((100, 3072), dtype=np.float32)
    policy.configure_depth_decoding("free")  # the depth-cache node's adaptive_depth: false
    assert policy.depth_decoding == "free" and policy.depth_cache.empty
    assert policy.metadata()["depth_decoding"] == "free"
    with pytest.raises(ValueError, match="unknown depth decoding 'greedy'"):
        policy.configure_depth_decoding("greedy")
    assert policy.depth_decoding == "free"
