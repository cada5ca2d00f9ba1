"""The K/V handed to the expert equal transformers' own cache for the same tiny Molmo2 and input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.models.molmo2.modeling_molmo2 import apply_rotary_pos_emb

from molmoact2_policy.model.config import MolmoAct2Config
from molmoact2_policy.model.preprocess import ImageTokenLayout, build_prompt, preprocess_images
from molmoact2_policy.model.tokenizer import MolmoAct2Tokenizer
from molmoact2_policy.model.vlm import (
    build_vlm,
    collate_prefix_inputs,
    image_token_ids,
    prefix_forward,
    tokenize_prompt,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def setup():
    config = MolmoAct2Config.tiny()
    torch.manual_seed(0)
    vlm = build_vlm(config.vlm)
    tokenizer = MolmoAct2Tokenizer.tiny()
    return vlm, tokenizer


def _inputs(tokenizer, images, instructions):
    image_tokens = tokenizer.token_ids(ImageTokenLayout().tokens(14, 14))
    assert len(image_tokens) == 198  # <im_start>, 14 x 14 <im_patch>, <im_end>
    ids = [
        tokenize_prompt(
            tokenizer,
            build_prompt(
                num_images=len(images) // len(instructions),
                instruction=text,
                setup="single Franka arm",
                control_mode="absolute joint pose",
                state_bins=[1, 2, 3],
            ),
            image_tokens,
        )
        for text in instructions
    ]
    return collate_prefix_inputs(
        ids,
        preprocess_images(images),
        image_token_ids(tokenizer),
        tokenizer.token_id("<|endoftext|>"),
    )


def _images(seed: int, count: int = 2):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(count)]


@torch.no_grad()
def test_cache_source_equals_transformers_past_key_values(setup):
    vlm, tokenizer = setup
    inputs = _inputs(tokenizer, _images(0), ["pick up the cube"])
    reference = vlm(
        input_ids=inputs.input_ids,
        pixel_values=inputs.pixel_values,
        image_token_pooling=inputs.image_token_pooling,
        image_grids=inputs.image_grids,
        attention_mask=inputs.attention_mask.long(),
        mm_token_type_ids=inputs.mm_token_type_ids,
        use_cache=True,
    ).past_key_values
    ours = prefix_forward(vlm, inputs, "cache")
    assert len(ours.keys) == len(reference.layers) == 3
    batch, length = inputs.input_ids.shape
    for layer, cached in enumerate(reference.layers):
        assert cached.keys.shape == (batch, 2, length, 32)  # (B, kv_heads, S, head_dim)
        expected_k = cached.keys.transpose(1, 2).reshape(batch, length, 64)
        expected_v = cached.values.transpose(1, 2).reshape(batch, length, 64)
        torch.testing.assert_close(ours.keys[layer], expected_k, rtol=0, atol=0)
        torch.testing.assert_close(ours.values[layer], expected_v, rtol=0, atol=0)
    assert ours.mask.dtype == torch.bool and bool(ours.mask.all())
    assert not torch.allclose(ours.keys[0], ours.keys[2])


@torch.no_grad()
def test_pre_rope_and_raw_sources_rotate_into_the_cache(setup):
    vlm, tokenizer = setup
    inputs = _inputs(tokenizer, _images(1), ["open the drawer"])
    cached = prefix_forward(vlm, inputs, "cache")
    pre_rope = prefix_forward(vlm, inputs, "pre_rope")
    raw = prefix_forward(vlm, inputs, "raw")
    batch, length = inputs.input_ids.shape
    text_model = vlm.model.language_model
    positions = torch.arange(length)[None]
    cos, sin = text_model.rotary_emb(cached.keys[0], positions)
    for layer in range(3):
        attention = text_model.layers[layer].self_attn
        k = pre_rope.keys[layer].view(batch, length, 2, 32).transpose(1, 2)
        _, rotated = apply_rotary_pos_emb(k, k, cos, sin)
        torch.testing.assert_close(
            rotated.transpose(1, 2).reshape(batch, length, 64), cached.keys[layer]
        )
        normed = attention.k_norm(raw.keys[layer].view(batch, length, 2, 32))
        torch.testing.assert_close(normed.reshape(batch, length, 64), pre_rope.keys[layer])
        torch.testing.assert_close(pre_rope.values[layer], cached.values[layer])
    assert not torch.allclose(pre_rope.keys[1], cached.keys[1])


@torch.no_grad()
def test_image_tokens_form_one_bidirectional_block(setup):
    vlm, tokenizer = setup
    images = _images(2)
    base = prefix_forward(vlm, _inputs(tokenizer, images, ["stack the cups"]))
    changed_images = [images[0], 255 - images[1]]  # only the second camera changes
    changed = prefix_forward(vlm, _inputs(tokenizer, changed_images, ["stack the cups"]))
    ids = _inputs(tokenizer, images, ["stack the cups"]).input_ids[0]
    first_image_token = int((ids == tokenizer.token_id("<im_start>")).nonzero()[0])
    # Layer 1's K at the first image's tokens depends on the second image (bidirectional block)
    # but text before the images never sees them (causal).
    assert not torch.allclose(
        base.keys[1][0, first_image_token], changed.keys[1][0, first_image_token]
    )
    before = slice(0, first_image_token)
    torch.testing.assert_close(base.keys[2][0, before], changed.keys[2][0, before])


def test_each_image_is_one_run_of_198_bidirectional_tokens(setup):
    _, tokenizer = setup
    inputs = _inputs(tokenizer, _images(5, count=3), ["wipe the table"])
    ids, types = inputs.input_ids[0].tolist(), inputs.mm_token_type_ids[0].tolist()
    start, end, patch = (tokenizer.token_id(t) for t in ("<im_start>", "<im_end>", "<im_patch>"))
    starts = [i for i, token in enumerate(ids) if token == start]
    assert len(starts) == 3
    for first in starts:
        run = ids[first : first + 198]
        assert run == [start] + [patch] * 196 + [end]
        assert types[first : first + 198] == [1] * 198
        assert types[first - 1] == 0 and types[first + 198] == 0  # "Image k" text around it
    assert sum(types) == 3 * 198
    assert inputs.image_grids.tolist() == [[14, 14, 0, 0]] * 3
    assert inputs.image_token_pooling.shape == (3 * 196, 4)


@torch.no_grad()
def test_right_padded_batch_matches_single_prompts(setup):
    vlm, tokenizer = setup
    images_a, images_b = _images(3), _images(4)
    short, long = "go", "put the red block into the green bowl"
    batch = prefix_forward(vlm, _inputs(tokenizer, images_a + images_b, [short, long]))
    single = prefix_forward(vlm, _inputs(tokenizer, images_a, [short]))
    length = single.mask.shape[1]
    assert batch.mask[0, :length].all() and not batch.mask[0, length:].any()
    assert batch.mask[1].all()
    for layer in range(3):
        torch.testing.assert_close(
            batch.keys[layer][0, :length], single.keys[layer][0], rtol=1e-4, atol=1e-5
        )
