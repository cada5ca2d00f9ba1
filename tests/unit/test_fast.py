"""OpenFAST tokenizer: the released action tokenizer's rules, round trip, malformed runs.

Golden values are worked out from the released ``UniversalActionProcessor``
(``huggingface/lerobot`` ``src/lerobot/policies/molmoact2/hf_model/action_tokenizer.py``):
``dct(chunk, axis=time, norm="ortho")``, ``np.around(coeff * scale)``, one character
``chr(max(v - min_token, 0))`` per coefficient read time-major, a ``ByteLevelBPETokenizer``
trained with ``initial_alphabet = chr(0..max - min)``, min_frequency 2; decoding reverses it
and reshapes to (-1, action_dim).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from molmoact2_policy.model.fast import (
    SETTINGS_FILE,
    FastActionTokenizer,
    FastDecodeError,
    _to_string,
    byte_level_alphabet,
    dct_matrix,
    reconstruction_bound,
)

HORIZON = 30
DIMS = 8
SCALE = 10.0


def smooth_chunk(rng: np.random.Generator, amplitude: float = 0.3, dims: int = DIMS) -> np.ndarray:
    """Sum of three low-frequency sines per dim, within about [-0.9, 0.9] (normalised units)."""
    t = np.linspace(0.0, 1.0, HORIZON)[:, None]
    chunk = np.zeros((HORIZON, dims))
    for harmonic in (1, 2, 3):
        amp = rng.uniform(-amplitude, amplitude, (1, dims))
        freq = harmonic * rng.uniform(0.2, 1.0, (1, dims))
        chunk += amp * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi, (1, dims)))
    return chunk


@pytest.fixture(scope="module")
def trained() -> tuple[FastActionTokenizer, np.random.Generator]:
    rng = np.random.default_rng(0)
    tokenizer = FastActionTokenizer.train(
        [smooth_chunk(rng) for _ in range(150)], vocab_size=512, scale=SCALE
    )
    return tokenizer, rng


def naive_dct(x: np.ndarray) -> np.ndarray:
    """scipy.fft.dct(x, type=2, norm="ortho", axis=0), spelled out from its definition."""
    n = x.shape[0]
    out = np.zeros_like(x, dtype=np.float64)
    for k in range(n):
        weight = math.sqrt((1 if k == 0 else 2) / n)
        basis = np.cos(np.pi * k * (2 * np.arange(n) + 1) / (2 * n))
        out[k] = weight * (basis[:, None] * x).sum(axis=0)
    return out


def test_dct_is_the_orthonormal_dct_ii() -> None:
    c = dct_matrix(HORIZON)
    assert np.allclose(c @ c.T, np.eye(HORIZON), atol=1e-12)
    x = np.random.default_rng(1).normal(size=(HORIZON, 3))
    assert np.allclose(c @ x, naive_dct(x), atol=1e-12)


def test_coefficient_string_follows_the_released_rules() -> None:
    # A constant 0.5 over T=4 has one DCT coefficient: 0.5 * sqrt(4) = 1.0; x scale 10 = 10.
    chunk = np.full((4, 2), 0.5)
    tokenizer = FastActionTokenizer(None, scale=10.0, min_token=-3)
    coefficients = tokenizer.quantise(chunk)
    np.testing.assert_array_equal(coefficients, [[10, 10], [0, 0], [0, 0], [0, 0]])
    # time-major, chr(v - min_token): 13, 13, then six 3s
    assert _to_string(coefficients, -3) == "\x0d\x0d" + "\x03" * 6
    # below the trained minimum clamps to chr(0); no upper clamp
    assert _to_string(np.array([[-9, 500]]), -3) == "\x00" + chr(503)
    # np.around rounds half to even: 0.625 * 4 = 2.5 -> 2, 0.875 * 4 = 3.5 -> 4 (T = 1: DCT = x)
    half = FastActionTokenizer(None, scale=4.0, min_token=0)
    np.testing.assert_array_equal(half.quantise(np.array([[0.625, 0.875]])), [[2, 4]])


def _released_bpe(strings: list[str], alphabet_size: int, vocab_size: int):
    """The released fit's BPE, built with the same library calls."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.trainers import BpeTrainer

    bpe = ByteLevelBPETokenizer()
    trainer = BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, show_progress=False, special_tokens=[],
        initial_alphabet=[chr(i) for i in range(alphabet_size)], max_token_length=10000,
    )
    bpe._tokenizer.train_from_iterator(strings, trainer=trainer)
    return bpe._tokenizer


@pytest.mark.parametrize("scale", [10.0, 40.0])  # 40: coefficients past chr(127), 2 bytes
def test_token_ids_and_decoding_match_the_released_tokenizer(scale) -> None:
    rng = np.random.default_rng(4)
    chunks = [smooth_chunk(rng, dims=6) for _ in range(80)]
    ours = FastActionTokenizer.train(chunks, vocab_size=600, scale=scale)
    quantised = [np.rint(naive_dct(c) * scale).astype(int) for c in chunks]
    low = min(q.min() for q in quantised)
    high = max(q.max() for q in quantised)
    assert ours.min_token == low
    strings = ["".join(chr(v - low) for v in q.reshape(-1)) for q in quantised]
    released = _released_bpe(strings, high - low + 1, 600)
    assert ours.vocab_size == released.get_vocab_size()
    held_out = np.random.default_rng(5)
    for _ in range(5):
        chunk = smooth_chunk(held_out, amplitude=0.2, dims=6)
        q = np.rint(naive_dct(chunk) * scale).astype(int)
        text = "".join(chr(max(v - low, 0)) for v in q.reshape(-1))
        ids = released.encode(text).ids
        assert ours.encode(chunk) == ids
        # released decode: bpe.decode -> ord + min_token -> (-1, D) -> idct(coeff / scale)
        codes = np.array([ord(c) for c in released.decode(ids)]) + low
        want = dct_matrix(HORIZON).T @ (codes.reshape(-1, 6) / scale)
        np.testing.assert_allclose(ours.decode(ids, HORIZON, 6), want, rtol=0, atol=1e-12)
        counts = ours.coefficient_counts()
        assert counts[ids].sum() == HORIZON * 6  # lead bytes = coefficients
    if scale == 40.0:
        assert high - low >= 128  # the multi-byte case was exercised
        assert (ours.coefficient_counts() == 0).any()  # continuation-only ids exist


def test_byte_level_alphabet_is_the_gpt2_table() -> None:
    table = byte_level_alphabet()
    assert len(table) == 256 and sorted(table.values()) == list(range(256))
    assert table["!"] == 0x21 and table["\u0100"] == 0 and table["\u0120"] == 0x20


def test_round_trip_error_is_within_the_quantisation_bound(trained) -> None:
    tokenizer, _ = trained
    rng = np.random.default_rng(123)  # held-out chunks, not seen in training
    pointwise = reconstruction_bound(HORIZON, SCALE)
    assert np.allclose(pointwise, 0.5 / SCALE * np.abs(dct_matrix(HORIZON)).sum(axis=0))
    for _ in range(20):
        chunk = smooth_chunk(rng, amplitude=0.25)
        ids = tokenizer.encode(chunk)
        assert all(0 <= i < tokenizer.vocab_size for i in ids)
        assert len(ids) < HORIZON * DIMS  # BPE compresses the mostly-zero coefficient string
        decoded = tokenizer.decode(ids, HORIZON, DIMS)
        assert decoded.shape == (HORIZON, DIMS)
        error = np.abs(decoded - chunk)
        assert (error <= pointwise[:, None] + 1e-12).all()
        assert error.max() > 0  # lossy: the bound is being tested, not identity


def test_malformed_token_runs_raise_fast_decode_error(trained) -> None:
    tokenizer, rng = trained
    ids = tokenizer.encode(smooth_chunk(rng))
    with pytest.raises(FastDecodeError, match="outside the FAST vocabulary"):
        tokenizer.decode([*ids[:-1], tokenizer.vocab_size], HORIZON, DIMS)
    with pytest.raises(FastDecodeError, match="outside the FAST vocabulary"):
        tokenizer.decode([-1, *ids], HORIZON, DIMS)
    never = int(np.flatnonzero(tokenizer.coefficient_counts() < 0)[0])  # chr(0): no byte maps
    with pytest.raises(FastDecodeError, match="outside the FAST vocabulary"):
        tokenizer.decode([never, *ids], HORIZON, DIMS)
    with pytest.raises(FastDecodeError, match="truncated"):
        tokenizer.decode(ids[: len(ids) // 2], HORIZON, DIMS)
    with pytest.raises(FastDecodeError, match="truncated"):
        tokenizer.decode([], HORIZON, DIMS)
    with pytest.raises(FastDecodeError, match="expected"):
        tokenizer.decode(ids, HORIZON - 1, DIMS)  # right tokens, wrong horizon
    with pytest.raises(FastDecodeError, match="not an integer"):
        tokenizer.decode([*ids[:-1], 1.5], HORIZON, DIMS)


def test_split_multibyte_character_is_refused() -> None:
    rng = np.random.default_rng(4)
    wide = FastActionTokenizer.train(
        [smooth_chunk(rng, dims=6) for _ in range(80)], vocab_size=600, scale=40.0
    )
    lead_only = [
        index for index in range(wide.vocab_size)
        if (raw := wide.token_bytes(index)) is not None and len(raw) == 1 and raw[0] >= 0xC0
    ]
    with pytest.raises(FastDecodeError, match="UTF-8"):
        wide.decode(lead_only[:1], 1, 1)


def test_bad_training_and_encoding_inputs(trained) -> None:
    tokenizer, _ = trained
    with pytest.raises(ValueError, match="NaN"):
        tokenizer.encode(np.full((HORIZON, 4), np.nan))
    with pytest.raises(ValueError, match="vocab_size"):
        FastActionTokenizer.train([np.linspace(-50, 50, HORIZON)[:, None]], vocab_size=64)


def test_save_writes_the_released_layout_and_reloads(trained, tmp_path: Path) -> None:
    tokenizer, rng = trained
    tokenizer.save(tmp_path)
    settings = json.loads((tmp_path / SETTINGS_FILE).read_text())
    assert settings["scale"] == SCALE and settings["min_token"] == tokenizer.min_token
    assert settings["vocab_size"] == tokenizer.vocab_size
    assert (tmp_path / "tokenizer.json").is_file()
    loaded = FastActionTokenizer.from_directory(tmp_path)
    assert (loaded.vocab_size, loaded.scale, loaded.min_token) == (
        tokenizer.vocab_size, tokenizer.scale, tokenizer.min_token
    )
    chunk = smooth_chunk(rng)
    ids = tokenizer.encode(chunk)
    assert loaded.encode(chunk) == ids
    assert np.array_equal(loaded.decode(ids, HORIZON, DIMS), tokenizer.decode(ids, HORIZON, DIMS))
    # The released processor's defaults for keys it does not find: scale 10, min_token 0.
    (tmp_path / SETTINGS_FILE).write_text(json.dumps({"vocab_size": 512}))
    bare = FastActionTokenizer.from_directory(tmp_path)
    assert (bare.scale, bare.min_token) == (10.0, 0)
    (tmp_path / SETTINGS_FILE).write_text(json.dumps({"scale": "ten"}))
    with pytest.raises(ValueError, match="scale must be a number"):
        FastActionTokenizer.from_directory(tmp_path)
    with pytest.raises(FileNotFoundError, match="lacks processor_config"):
        FastActionTokenizer.from_directory(tmp_path / "missing")
