"""OpenFAST tokenizer: DCT basics, round trip within the quantisation bound, malformed runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from molmoact2_policy.model.fast import (
    SETTINGS_FILE,
    FastActionTokenizer,
    FastDecodeError,
    dct_matrix,
    reconstruction_bound,
)

HORIZON = 30
DIMS = 8
SCALE = 10.0


def smooth_chunk(rng: np.random.Generator, amplitude: float = 0.3) -> np.ndarray:
    """Sum of three low-frequency sines per dim, within about [-0.9, 0.9] (normalised units)."""
    t = np.linspace(0.0, 1.0, HORIZON)[:, None]
    chunk = np.zeros((HORIZON, DIMS))
    for harmonic in (1, 2, 3):
        amp = rng.uniform(-amplitude, amplitude, (1, DIMS))
        freq = harmonic * rng.uniform(0.2, 1.0, (1, DIMS))
        chunk += amp * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi, (1, DIMS)))
    return chunk


@pytest.fixture(scope="module")
def trained() -> tuple[FastActionTokenizer, np.random.Generator]:
    rng = np.random.default_rng(0)
    tokenizer = FastActionTokenizer.train(
        [smooth_chunk(rng) for _ in range(150)], vocab_size=512, scale=SCALE, action_dim=32
    )
    return tokenizer, rng


def test_dct_matrix_is_orthonormal() -> None:
    c = dct_matrix(HORIZON)
    assert np.allclose(c @ c.T, np.eye(HORIZON), atol=1e-12)
    # Row 0 is the mean: a constant signal has only a DC coefficient.
    coefficients = c @ np.full(HORIZON, 0.5)
    assert np.isclose(coefficients[0], 0.5 * np.sqrt(HORIZON))
    assert np.allclose(coefficients[1:], 0.0, atol=1e-12)


def test_round_trip_error_is_within_the_quantisation_bound(trained) -> None:
    tokenizer, _ = trained
    rng = np.random.default_rng(123)  # held-out chunks, not seen in training
    # Each rounded coefficient is off by <= 0.5 / scale; through the orthonormal inverse DCT
    # that is <= (0.5 / scale) * sum_k |C[k, t]| per time step, and <= (0.5 / scale) * sqrt(T)
    # in L2 norm per dim (Parseval).
    pointwise = reconstruction_bound(HORIZON, SCALE)
    assert np.allclose(pointwise, 0.5 / SCALE * np.abs(dct_matrix(HORIZON)).sum(axis=0))
    low, high = tokenizer.coefficient_range
    for _ in range(20):
        chunk = smooth_chunk(rng, amplitude=0.25)
        coefficients = tokenizer.quantise(chunk)
        assert low <= coefficients.min() and coefficients.max() <= high  # no clipping involved
        ids = tokenizer.encode(chunk)
        assert all(0 <= i < tokenizer.vocab_size for i in ids)
        assert len(ids) < HORIZON * 32  # BPE compresses the mostly-zero coefficient string
        decoded = tokenizer.decode(ids, HORIZON, DIMS)
        assert decoded.shape == (HORIZON, DIMS)
        error = np.abs(decoded - chunk)
        assert (error <= pointwise[:, None] + 1e-12).all()
        assert (np.linalg.norm(decoded - chunk, axis=0) <= 0.5 / SCALE * np.sqrt(HORIZON)).all()
        assert error.max() > 0  # lossy: the bound is being tested, not identity
    full = tokenizer.decode(tokenizer.encode(chunk), HORIZON, 32)
    assert np.allclose(full[:, DIMS:], 0.0)  # padded dims decode to zero


def test_malformed_token_runs_raise_fast_decode_error(trained) -> None:
    tokenizer, rng = trained
    ids = tokenizer.encode(smooth_chunk(rng))
    with pytest.raises(FastDecodeError, match="outside the FAST vocabulary"):
        tokenizer.decode([*ids[:-1], tokenizer.vocab_size], HORIZON, DIMS)
    with pytest.raises(FastDecodeError, match="outside the FAST vocabulary"):
        tokenizer.decode([-1, *ids], HORIZON, DIMS)
    with pytest.raises(FastDecodeError, match="truncated"):
        tokenizer.decode(ids[: len(ids) // 2], HORIZON, DIMS)
    with pytest.raises(FastDecodeError, match="truncated"):
        tokenizer.decode([], HORIZON, DIMS)
    with pytest.raises(FastDecodeError, match="expected"):
        tokenizer.decode(ids, HORIZON - 1, DIMS)  # right tokens, wrong horizon
    with pytest.raises(FastDecodeError, match="not an integer"):
        tokenizer.decode([*ids[:-1], 1.5], HORIZON, DIMS)
    with pytest.raises(ValueError, match="action_dim"):
        tokenizer.decode(ids, HORIZON, 33)


def test_bad_training_and_encoding_inputs(trained) -> None:
    tokenizer, _ = trained
    with pytest.raises(ValueError, match="dims"):
        tokenizer.encode(np.zeros((HORIZON, 40)))
    with pytest.raises(ValueError, match="NaN"):
        tokenizer.encode(np.full((HORIZON, 4), np.nan))
    with pytest.raises(ValueError, match="vocab_size"):
        FastActionTokenizer.train([np.linspace(-50, 50, HORIZON)[:, None]], vocab_size=64)


def test_save_and_from_directory_round_trip(trained, tmp_path: Path) -> None:
    tokenizer, rng = trained
    tokenizer.save(tmp_path)
    loaded = FastActionTokenizer.from_directory(tmp_path)
    assert loaded.vocab_size == tokenizer.vocab_size
    assert loaded.coefficient_range == tokenizer.coefficient_range
    assert loaded.scale == tokenizer.scale and loaded.action_dim == tokenizer.action_dim
    chunk = smooth_chunk(rng)
    assert loaded.encode(chunk) == tokenizer.encode(chunk)
    ids = tokenizer.encode(chunk)
    assert np.array_equal(loaded.decode(ids, HORIZON, DIMS), tokenizer.decode(ids, HORIZON, DIMS))

    settings = json.loads((tmp_path / SETTINGS_FILE).read_text())
    (tmp_path / SETTINGS_FILE).write_text(json.dumps({**settings, "format": "other"}))
    with pytest.raises(ValueError, match="format"):
        FastActionTokenizer.from_directory(tmp_path)
    with pytest.raises(FileNotFoundError, match="lacks fast_settings"):
        FastActionTokenizer.from_directory(tmp_path / "missing")
