"""OpenFAST discrete action tokens: DCT along time, scale and round, BPE.

A normalised chunk (T, D) is zero-padded to `action_dim` columns, transformed with the orthonormal
DCT-II along time, multiplied by `scale` and rounded to integers. The integers, flattened
time-major (all dims of coefficient 0, then coefficient 1, ...), become one character each, and a
byte-pair-encoding model (the `tokenizers` library) trained on such strings compresses them into
ids 0..vocab_size-1. The caller maps id k to the `<action_k>` token.

Decoding inverts each step. Model output can be any id run, so every malformed case (ids out of
range, a coefficient count that does not fill horizon x action_dim) raises FastDecodeError.

Round-trip error: rounding moves each scaled coefficient by at most 0.5, i.e. each coefficient by
at most 0.5 / scale; the inverse DCT maps that to at most (0.5 / scale) * sum_k |C[k, t]| at time
step t (`reconstruction_bound`), for coefficients inside the trained range (values outside it are
clipped to the range on encode).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

FORMAT = "molmoact2_fast.v1"
TOKENIZER_FILE = "tokenizer.json"
SETTINGS_FILE = "fast_settings.json"
# One character per quantised value, from a block of ordinary letters: no normaliser or
# pre-tokenizer runs, so only distinctness matters, and these never collide with whitespace.
SYMBOL_BASE = 0x4E00


class FastDecodeError(ValueError):
    """A token run that does not decode to a (horizon, action_dim) chunk."""


@lru_cache(maxsize=16)
def dct_matrix(length: int) -> np.ndarray:
    """Orthonormal DCT-II matrix C (length x length): coefficients = C @ x, x = C.T @ coeffs."""
    if length <= 0:
        raise ValueError(f"DCT length must be > 0, got {length}")
    k = np.arange(length)[:, None]
    t = np.arange(length)[None, :]
    matrix = np.sqrt(2.0 / length) * np.cos(np.pi * (2 * t + 1) * k / (2 * length))
    matrix[0] /= math.sqrt(2.0)
    matrix.setflags(write=False)
    return matrix


def reconstruction_bound(horizon: int, scale: float) -> np.ndarray:
    """Per time step, the largest round-trip error one dimension can have: (horizon,)."""
    return 0.5 / scale * np.abs(dct_matrix(horizon)).sum(axis=0)


def _tokenizers():
    try:
        import tokenizers
    except ImportError as err:  # pragma: no cover - the venv pins it
        raise ImportError(
            "FAST action tokens need the `tokenizers` package (pip install tokenizers)"
        ) from err
    return tokenizers


class FastActionTokenizer:
    """DCT + BPE action tokenizer; build with `train` or `from_directory`."""

    def __init__(
        self, bpe, *, scale: float, action_dim: int, min_token: int, max_token: int
    ) -> None:
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        if max_token < min_token:
            raise ValueError(f"empty coefficient range [{min_token}, {max_token}]")
        self._bpe = bpe
        self.scale = float(scale)
        self.action_dim = int(action_dim)
        self.min_token = int(min_token)
        self.max_token = int(max_token)

    # ---------------------------------------------------------------- construction

    @classmethod
    def train(
        cls,
        chunks: Sequence[np.ndarray],
        vocab_size: int = 2048,
        scale: float = 10.0,
        action_dim: int = 32,
    ) -> FastActionTokenizer:
        """Fit the coefficient range and the BPE merges on normalised chunks (T, D<=action_dim)."""
        if not chunks:
            raise ValueError("need at least one chunk to train a FAST tokenizer")
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        quantised = [_quantise(_pad(chunk, action_dim), scale) for chunk in chunks]
        min_token = int(min(q.min() for q in quantised))
        max_token = int(max(q.max() for q in quantised))
        alphabet_size = max_token - min_token + 1
        if alphabet_size > vocab_size:
            raise ValueError(
                f"coefficient range [{min_token}, {max_token}] needs {alphabet_size} symbols, more "
                f"than vocab_size {vocab_size}; lower `scale` or check the chunks are normalised"
            )
        tk = _tokenizers()
        bpe = tk.Tokenizer(tk.models.BPE())
        trainer = tk.trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=2,
            show_progress=False,
            special_tokens=[],
            initial_alphabet=[chr(SYMBOL_BASE + i) for i in range(alphabet_size)],
            limit_alphabet=alphabet_size,
        )
        strings = [_to_string(q, min_token) for q in quantised]
        bpe.train_from_iterator(strings, trainer=trainer)
        return cls(
            bpe, scale=scale, action_dim=action_dim, min_token=min_token, max_token=max_token
        )

    @classmethod
    def from_directory(cls, path: str | Path) -> FastActionTokenizer:
        directory = Path(path)
        settings_path = directory / SETTINGS_FILE
        tokenizer_path = directory / TOKENIZER_FILE
        for required in (settings_path, tokenizer_path):
            if not required.is_file():
                raise FileNotFoundError(
                    f"FAST tokenizer directory {directory} lacks {required.name}"
                )
        settings = json.loads(settings_path.read_text())
        if settings.get("format") != FORMAT:
            raise ValueError(
                f"{settings_path} has format {settings.get('format')!r}, expected {FORMAT!r}"
            )
        if settings.get("symbol_base", SYMBOL_BASE) != SYMBOL_BASE:
            raise ValueError(f"{settings_path}: unsupported symbol_base {settings['symbol_base']}")
        bpe = _tokenizers().Tokenizer.from_file(str(tokenizer_path))
        return cls(
            bpe,
            scale=settings["scale"],
            action_dim=settings["action_dim"],
            min_token=settings["min_token"],
            max_token=settings["max_token"],
        )

    def save(self, path: str | Path) -> None:
        """Write tokenizer.json (the BPE model) and fast_settings.json into directory `path`."""
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        self._bpe.save(str(directory / TOKENIZER_FILE))
        settings = {
            "format": FORMAT,
            "scale": self.scale,
            "action_dim": self.action_dim,
            "min_token": self.min_token,
            "max_token": self.max_token,
            "symbol_base": SYMBOL_BASE,
            "vocab_size": self.vocab_size,
        }
        (directory / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")

    # ---------------------------------------------------------------- use

    @property
    def vocab_size(self) -> int:
        return int(self._bpe.get_vocab_size())

    @property
    def coefficient_range(self) -> tuple[int, int]:
        """Smallest and largest quantised coefficient the tokenizer can represent."""
        return self.min_token, self.max_token

    def coefficient_counts(self) -> np.ndarray:
        """How many DCT coefficients each id 0..vocab_size-1 decodes to, (vocab_size,) int64.

        A valid run's counts sum to horizon x action_dim; constrained decoding uses this to
        never pick a token that would overshoot.
        """
        return np.array(
            [len(self._bpe.id_to_token(index)) for index in range(self.vocab_size)],
            dtype=np.int64,
        )

    def quantise(self, chunk: np.ndarray) -> np.ndarray:
        """Padded, scaled and rounded DCT coefficients (T, action_dim) of a chunk, unclipped."""
        return _quantise(_pad(chunk, self.action_dim), self.scale)

    def encode(self, chunk: np.ndarray) -> list[int]:
        """Token ids (0..vocab_size-1) of a normalised chunk (T, D <= action_dim)."""
        coefficients = np.clip(self.quantise(chunk), self.min_token, self.max_token)
        return list(self._bpe.encode(_to_string(coefficients, self.min_token)).ids)

    def decode(self, ids: Sequence[int], horizon: int, action_dim: int) -> np.ndarray:
        """Chunk (horizon, action_dim) from token ids; malformed runs raise FastDecodeError."""
        if horizon <= 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        if not 0 < action_dim <= self.action_dim:
            raise ValueError(
                f"action_dim must be in 1..{self.action_dim} (the tokenizer's width), "
                f"got {action_dim}"
            )
        vocab = self.vocab_size
        pieces = []
        for position, raw in enumerate(ids):
            if isinstance(raw, bool) or not isinstance(raw, (int, np.integer)):
                raise FastDecodeError(f"token {position} is {raw!r}, not an integer id")
            token = self._bpe.id_to_token(int(raw)) if 0 <= raw < vocab else None
            if token is None:
                raise FastDecodeError(
                    f"token {position} has id {raw}, outside the FAST vocabulary 0..{vocab - 1}"
                )
            pieces.append(token)
        codes = np.fromiter((ord(c) for c in "".join(pieces)), dtype=np.int64)
        alphabet_size = self.max_token - self.min_token + 1
        offsets = codes - SYMBOL_BASE
        if codes.size and (offsets.min() < 0 or offsets.max() >= alphabet_size):
            raise FastDecodeError("token run contains symbols outside the coefficient alphabet")
        expected = horizon * self.action_dim
        if offsets.size != expected:
            raise FastDecodeError(
                f"token run decodes to {offsets.size} DCT coefficients, expected "
                f"horizon x action_dim = {horizon} x {self.action_dim} = {expected} "
                "(truncated or over-long action token run)"
            )
        coefficients = (offsets + self.min_token).reshape(horizon, self.action_dim) / self.scale
        chunk = dct_matrix(horizon).T @ coefficients
        return chunk[:, :action_dim]


def _pad(chunk: np.ndarray, action_dim: int) -> np.ndarray:
    array = np.asarray(chunk, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0:
        raise ValueError(f"action chunk must be (T, D) with T > 0, got shape {array.shape}")
    if array.shape[1] > action_dim:
        raise ValueError(f"chunk has {array.shape[1]} dims, the tokenizer handles {action_dim}")
    if not np.isfinite(array).all():
        raise ValueError("action chunk contains NaN or infinite values")
    padded = np.zeros((array.shape[0], action_dim))
    padded[:, : array.shape[1]] = array
    return padded


def _quantise(padded: np.ndarray, scale: float) -> np.ndarray:
    return np.rint(dct_matrix(padded.shape[0]) @ padded * scale).astype(np.int64)


def _to_string(coefficients: np.ndarray, min_token: int) -> str:
    return "".join(chr(SYMBOL_BASE + int(v) - min_token) for v in coefficients.reshape(-1))
