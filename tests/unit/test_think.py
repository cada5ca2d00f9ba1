"""MolmoAct2-Think depth decoding: adaptive == token-by-token, one forward when nothing changed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from molmoact2_policy.depth_change import detect_changed_cells
from molmoact2_policy.model.config import MolmoAct2Config
from molmoact2_policy.model.model import MolmoAct2Model
from molmoact2_policy.model.think import (
    DepthCache,
    DepthDecodeError,
    DepthDecoder,
    depth_gate_positions,
    plan_frame,
    update_cache,
)
from molmoact2_policy.model.tokenizer import MolmoAct2Tokenizer
from molmoact2_policy.model.vlm import PrefixOutput, cache_key_values

torch.set_num_threads(1)

PROMPT = "The task is to fold the towel.<|im_start|>assistant\n<depth_output><action_output>"
SPAN_EXTRA = 2  # <depth_start> before the codes, <depth_end> after them


def text_prefix(model: MolmoAct2Model, tokenizer: MolmoAct2Tokenizer, text: str) -> PrefixOutput:
    """A prompt prefill without images (the decoder only continues from the prefix cache)."""
    ids = torch.tensor([tokenizer.encode(text)])
    with torch.no_grad():
        out = model.vlm.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
    keys, values = cache_key_values(out.past_key_values)
    return PrefixOutput(
        keys=keys,
        values=values,
        mask=torch.ones(ids.shape, dtype=torch.bool),
        cache=out.past_key_values,
        last_hidden_state=out.last_hidden_state,
    )


@pytest.fixture(scope="module")
def tiny():
    config = MolmoAct2Config.tiny(enable_depth_reasoning=True)
    model = MolmoAct2Model.random(config, seed=3)
    tokenizer = MolmoAct2Tokenizer.tiny()
    decoder = DepthDecoder(model.vlm, config)
    return config, model, tokenizer, decoder, text_prefix(model, tokenizer, PROMPT)


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True))


def test_full_decoding_is_plain_greedy_over_the_depth_logits(tiny):
    config, model, _, decoder, prefix = tiny
    out = decoder.decode(prefix, adaptive=False)
    # <depth_start>, then one forward per code; the last code goes in with <depth_end>.
    assert out.codes.shape == (100,) and out.changed.all() and out.forwards == 101
    # Reference: transformers' own DynamicCache, one token at a time, argmax over depth rows.
    start = config.depth_token_start_id
    rows = model.vlm.lm_head.weight[start : start + config.num_depth_tokens]
    ids = torch.tensor([[*prefix_ids(tiny)]])
    with torch.no_grad():
        step = model.vlm.model(input_ids=ids, use_cache=True)
        cache, codes = step.past_key_values, []
        step = model.vlm.model.language_model(
            input_ids=torch.tensor([[config.depth_start_token_id]]),
            past_key_values=cache,
            use_cache=True,
        )
        for _ in range(100):
            codes.append(int((step.last_hidden_state[:, -1] @ rows.T).argmax()))
            step = model.vlm.model.language_model(
                input_ids=torch.tensor([[start + codes[-1]]]), past_key_values=cache, use_cache=True
            )
    np.testing.assert_array_equal(out.codes, codes)
    assert out.span_ids == [
        config.depth_start_token_id, *(start + c for c in codes), config.depth_end_token_id
    ]
    # Context: prompt + span, the code positions marked.
    prompt_len = prefix.mask.shape[1]
    total = prompt_len + 100 + SPAN_EXTRA
    assert out.keys[0].shape == (1, total, config.llm_kv_dim) and out.mask.all()
    assert int(out.depth_token_mask.sum()) == 100
    assert out.depth_token_mask[0, prompt_len + 1] and not out.depth_token_mask[0, prompt_len]


def prefix_ids(tiny) -> list[int]:
    _, _, tokenizer, _, _ = tiny
    return tokenizer.encode(PROMPT)


def test_nothing_changed_is_one_forward_returning_the_cached_codes(tiny):
    _, _, _, decoder, prefix = tiny
    full = decoder.decode(prefix, adaptive=False)
    before = decoder.stats.forwards
    again = decoder.decode(prefix, full.codes, np.zeros(100, dtype=bool))
    assert again.forwards == 1 and decoder.stats.forwards == before + 1
    np.testing.assert_array_equal(again.codes, full.codes)
    assert not again.changed.any()
    assert max_diff(again.keys, full.keys) < 1e-4
    assert max_diff(again.values, full.values) < 1e-4


def test_every_cell_forced_to_repredict_equals_full_decoding(tiny):
    _, _, _, decoder, prefix = tiny
    full = decoder.decode(prefix, adaptive=False)
    stale = (full.codes + 7) % 128  # cached codes that must all be overwritten
    adaptive = decoder.decode(prefix, stale, np.ones(100, dtype=bool))
    np.testing.assert_array_equal(adaptive.codes, full.codes)
    assert adaptive.forwards == 101


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_partial_changes_adaptive_equals_token_by_token(tiny, seed):
    _, _, _, decoder, prefix = tiny
    rng = np.random.default_rng(seed)
    cached = rng.integers(0, 128, size=100)
    changed = rng.random(100) < [0.1, 0.3, 0.6][seed]
    changed[rng.integers(0, 100)] = True
    adaptive = decoder.decode(prefix, cached, changed)
    reference = decoder.decode(prefix, cached, changed, adaptive=False)
    np.testing.assert_array_equal(adaptive.codes, reference.codes)
    np.testing.assert_array_equal(adaptive.codes[~changed], cached[~changed])
    assert max_diff(adaptive.keys, reference.keys) < 1e-4
    # One forward per changed cell that follows known tokens, plus the tail forward.
    assert adaptive.forwards <= int(changed.sum()) + 1 < reference.forwards


def test_pre_rope_key_source_sees_the_depth_span(tiny):
    config, model, tokenizer, _, _ = tiny
    pre_config = MolmoAct2Config.tiny(enable_depth_reasoning=True, expert_kv_source="pre_rope")
    pre_model = MolmoAct2Model(pre_config)
    pre_model.load_state_dict(model.state_dict())
    decoder = DepthDecoder(pre_model.vlm, pre_config)
    prefix = text_prefix(pre_model, tokenizer, PROMPT)
    out = decoder.decode(prefix)
    total = prefix.mask.shape[1] + 100 + SPAN_EXTRA
    assert out.keys[0].shape == (1, total, config.llm_kv_dim)
    # Pre-RoPE keys of the same token differ from the cached (rotated) ones except at position 0.
    cached_keys = out.cache.layers[0].keys[:, :, :total].transpose(1, 2).reshape(1, total, -1)
    assert not torch.allclose(out.keys[0][:, -5:], cached_keys[:, -5:])


def test_bad_cache_inputs_are_rejected(tiny):
    _, _, _, decoder, prefix = tiny
    with pytest.raises(ValueError, match=r"\(100,\)"):
        decoder.decode(prefix, np.zeros(99, dtype=np.int64), np.ones(99, dtype=bool))
    with pytest.raises(ValueError, match=r"\[0, 128\)"):
        decoder.decode(prefix, np.full(100, 200), np.ones(100, dtype=bool))


class ScriptedEnd(DepthDecoder):
    """A decoder whose full-vocabulary choices after the codes are scripted.

    Random weights never write <depth_end>; the script stands in for what a trained model
    writes, while every forward, cache write and rollback is the real code under test.
    """

    def __init__(self, *args, script, **kwargs):
        super().__init__(*args, **kwargs)
        self.script = list(script)

    def _next_token(self, hidden):
        return self.script.pop(0)


def greedy_end_decoder(tiny, script, end_budget=8):
    config, model, *_ = tiny
    greedy = MolmoAct2Config.tiny(enable_depth_reasoning=True, think_force_depth_end=False)
    assert greedy.depth_end_token_id == config.depth_end_token_id
    return ScriptedEnd(model.vlm, greedy, end_budget=end_budget, script=script)


def test_depth_end_written_right_after_the_codes_costs_no_extra_forward(tiny):
    config, _, _, decoder, prefix = tiny
    forced = decoder.decode(prefix, adaptive=False)
    greedy = greedy_end_decoder(tiny, [config.depth_end_token_id])
    out = greedy.decode(prefix, forced.codes, np.zeros(100, dtype=bool))
    assert out.forwards == 1 and not greedy.script  # the model was asked once
    assert out.span_ids == forced.span_ids
    assert max_diff(out.keys, forced.keys) < 1e-4


def test_tokens_before_depth_end_are_decoded_and_kept_in_the_context(tiny):
    config, model, _, decoder, prefix = tiny
    codes = decoder.decode(prefix, adaptive=False).codes
    extra = [11, 12]  # ordinary text tokens the model chose to write before <depth_end>
    greedy = greedy_end_decoder(tiny, [*extra, config.depth_end_token_id])
    out = greedy.decode(prefix, codes, np.zeros(100, dtype=bool))
    start = config.depth_token_start_id
    expected = [config.depth_start_token_id, *(start + c for c in codes), *extra]
    assert out.span_ids == [*expected, config.depth_end_token_id]
    # The rejected <depth_end> guess was overwritten: the cache equals one plain forward of the
    # whole sequence through transformers' DynamicCache.
    ids = torch.tensor([[*prefix_ids(tiny), *out.span_ids]])
    with torch.no_grad():
        reference = model.vlm.model(input_ids=ids, use_cache=True).past_key_values
    keys, values = cache_key_values(reference)
    assert max_diff(out.keys, keys) < 1e-4 and max_diff(out.values, values) < 1e-4
    assert out.forwards == 1 + len(extra) + 1


def test_a_span_the_model_never_closes_is_an_error(tiny):
    greedy = greedy_end_decoder(tiny, [11] * 20, end_budget=5)
    with pytest.raises(DepthDecodeError, match="<depth_end> within 5 tokens"):
        greedy.decode(tiny[4])


def test_the_gate_covers_codes_and_span_markers_wherever_they_stand(tiny):
    config = tiny[0]
    code = config.depth_token_start_id
    ids = torch.tensor([[5, config.depth_output_token_id, 7, config.depth_start_token_id,
                         code, code + 127, code + 128, config.depth_end_token_id, 9]])
    gated = depth_gate_positions(ids, config)
    assert gated.tolist() == [[False, True, False, True, True, True, False, True, False]]


def test_depth_cache_compares_each_frame_with_the_last_one_as_released():
    """The released depth cache holds the latest frame: a slow drift (a shadow creeping in)
    that never differs from the previous frame by the threshold is never re-predicted, even
    once it differs from the frame the code was predicted from."""
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
    cache = DepthCache()
    patches, changed = plan_frame(cache, frame)
    assert changed.all()
    update_cache(cache, patches, np.arange(100))
    drifted = frame.astype(np.float64)
    previous = frame
    for _ in range(60):
        drifted[:48, :64] = drifted[:48, :64] * 0.99 + 255 * 0.01
        current = np.clip(drifted, 0, 255).astype(np.uint8)
        patches, changed = plan_frame(cache, current)
        np.testing.assert_array_equal(changed, detect_changed_cells(previous, current))
        assert not changed.any()
        update_cache(cache, patches, cache.codes)
        previous = current
    assert detect_changed_cells(frame, previous)[0]  # against the first frame it did change
    with pytest.raises(ValueError, match="uint8"):
        plan_frame(cache, frame.astype(np.float32))


# ---------------------------------------------------------------------------- ThinkPolicy


@pytest.fixture(scope="module")
def think_policy():
    from molmoact2_policy.model.loader import load_policy

    return load_policy("tiny", "yam_bimanual", mode="think")


def observation(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    names = ("top", "left_wrist", "right_wrist")
    return {name: rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for name in names}


def test_think_policy_replays_unchanged_cells_and_repredicts_moved_ones(think_policy):
    from molmoact2_policy.model.think import ThinkPolicy

    policy = think_policy
    assert isinstance(policy, ThinkPolicy) and policy.metadata()["mode"] == "think"
    policy.reset()
    images, state = observation(), np.zeros(14)
    first = policy.act(images, state, "fold the towel", seed=1)
    assert first.mode == "think" and first.positions.shape == (30, 14)
    assert first.depth_changed.all() and first.depth_codes.shape == (100,)
    assert {"preprocess", "prefix", "depth", "flow", "total"} <= set(first.timings)

    forwards = policy.decoder.stats.forwards
    same = policy.act(images, state, "fold the towel", seed=1)
    assert policy.decoder.stats.forwards == forwards + 1
    assert not same.depth_changed.any()
    np.testing.assert_array_equal(same.depth_codes, first.depth_codes)
    np.testing.assert_allclose(same.positions, first.positions, atol=1e-5)

    # Another camera changing does not touch the depth grid; the main camera's cells do.
    moved = dict(images)
    moved["left_wrist"] = observation(5)["left_wrist"]
    moved["top"] = images["top"].copy()
    moved["top"][96:144, 320:384] = 255  # cell row 2, column 5
    result = policy.act(moved, state, "fold the towel", seed=1)
    expected = np.zeros(100, dtype=bool)
    expected[25] = True
    np.testing.assert_array_equal(result.depth_changed, expected)
    np.testing.assert_array_equal(result.depth_codes[~expected], first.depth_codes[~expected])

    policy.reset()
    assert policy.act(moved, state, "fold the towel").depth_changed.all()


def test_think_policy_rejects_an_unreadable_main_camera_frame(think_policy):
    from molmoact2_policy.policy_api import PolicyInputError

    think_policy.reset()
    images = observation()
    with pytest.raises(PolicyInputError, match="uint8"):
        bad = dict(images)
        bad["top"] = images["top"].astype(np.float32)
        think_policy.act(bad, np.zeros(14), "fold the towel")
    with pytest.raises(ValueError, match="not one of"):
        think_policy.configure_change_detection("side", 0.996)
    think_policy.configure_change_detection("left_wrist", 0.99)
    assert think_policy.main_camera == "left_wrist" and think_policy.depth_cache.empty
    think_policy.configure_change_detection("top", 0.996)


def test_depth_gate_scales_the_depth_context():
    from molmoact2_common.embodiments import get_embodiment
    from molmoact2_policy.model.checkpoint import tiny_norm_stats
    from molmoact2_policy.model.think import ThinkPolicy

    config = MolmoAct2Config.tiny(action_expert_depth_gate=True)
    plain_config = MolmoAct2Config.tiny()
    gated_model = MolmoAct2Model.random(config, seed=2)
    plain_model = MolmoAct2Model.random(plain_config, seed=2)
    plain_model.load_state_dict(gated_model.state_dict(), strict=False)
    stats = tiny_norm_stats(0, ["yam_bimanual"])
    spec = get_embodiment("yam_bimanual")
    tokenizer = MolmoAct2Tokenizer.tiny(config.token_layout())
    gated = ThinkPolicy(gated_model, config, stats, tokenizer, spec)
    plain = ThinkPolicy(plain_model, plain_config, stats, tokenizer, spec)
    images, state = observation(), np.zeros(14)

    def act(policy: ThinkPolicy, bias: float) -> np.ndarray:
        if policy.model.action_expert_depth_gate is not None:
            with torch.no_grad():
                policy.model.action_expert_depth_gate.bias.fill_(bias)
        policy.reset()
        return policy.act(images, state, "fold the towel", seed=4).positions

    open_gate = act(gated, 40.0)  # sigmoid(40) == 1: depth context passes unscaled
    np.testing.assert_allclose(open_gate, act(plain, 0.0), atol=1e-5)
    assert np.abs(act(gated, -4.0) - open_gate).max() > 1e-6


def test_an_unclosed_depth_span_fails_the_step_and_keeps_the_cache(think_policy):
    from molmoact2_policy.policy_api import PolicyUnavailableError

    policy = think_policy
    policy.reset()
    images, state = observation(), np.zeros(14)
    policy.act(images, state, "fold the towel", seed=1)
    codes_before = policy.depth_cache.codes.copy()
    original = policy.decoder
    greedy = MolmoAct2Config.tiny(enable_depth_reasoning=True, think_force_depth_end=False)
    policy.decoder = ScriptedEnd(policy.model.vlm, greedy, end_budget=3, script=[11] * 10)
    try:
        with pytest.raises(PolicyUnavailableError, match="<depth_end>"):
            policy.act(observation(seed=5), state, "fold the towel", seed=1)
    finally:
        policy.decoder = original
    # No chunk, and the cache still describes the last frame that produced one.
    np.testing.assert_array_equal(policy.depth_cache.codes, codes_before)
