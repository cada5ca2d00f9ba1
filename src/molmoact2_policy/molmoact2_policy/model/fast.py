"""OpenFAST discrete action tokens, with the released action tokenizer's rules.

Source of the rules: the released ``UniversalActionProcessor`` (``huggingface/lerobot``
``src/lerobot/policies/molmoact2/hf_model/action_tokenizer.py``) and its use in
``modeling_molmoact2.py`` (``_decode_discrete_action_chunk``).

* Encode a normalised chunk (T, D), D = the embodiment's own action dims (no padding): the
  orthonormal DCT-II along time, times ``scale``, rounded half to even; each integer ``v``
  becomes the character ``chr(max(v - min_token, 0))``, read time-major (all dims of
  coefficient 0, then coefficient 1, ...). The string goes through a byte-level BPE tokenizer
  (the ``tokenizers`` library's ``ByteLevelBPETokenizer``: UTF-8 bytes mapped to printable
  characters, the GPT-2 split pattern, BPE merges); its ids 0..V-1 are the VLM's
  ``<action_0>..<action_{V-1}>``.
* Decode: the tokenizer's byte-level decoding back to a string, ``ord(c) + min_token`` per
  character, reshaped to (-1, D); it must be exactly (horizon, D); inverse DCT of the
  coefficients / ``scale``.
* Training (``fit``): ``min_token`` is the smallest rounded coefficient seen, the initial
  alphabet is ``chr(0)..chr(max - min)``, min_frequency 2, no special tokens.
* Files: ``tokenizer.json`` (the tokenizers pipeline, as ``PreTrainedTokenizerFast`` saves it)
  and ``processor_config.json`` (``scale``, ``vocab_size``, ``min_token``, optional
  ``action_dim`` / ``time_horizon``).

Two decoders:

* ``decode_released`` is the released ``UniversalActionProcessor.decode`` step for step: the
  ids go through the ``tokenizers`` pipeline's own ``decode`` (ids the BPE does not know are
  skipped, an alphabet entry no byte maps to stands for its own character, invalid UTF-8
  becomes U+FFFD), ``ord + min_token``, ``reshape(-1, D)``. What the release then does with a
  bad run is not something a robot may execute: where it prints the error and substitutes an
  all-zero chunk (the middle of every joint's range, so the arm would move there) we raise
  ``FastDecodeError``; a run whose bytes were not valid UTF-8 (the release reads U+FFFD as
  coefficient 65533 + min_token, which un-normalising clips to a range end) is refused too.
* ``decode`` is stricter (every id must be a byte token of the vocabulary); the constrained
  decoder of random presets uses it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

TOKENIZER_FILE = "tokenizer.json"
SETTINGS_FILE = "processor_config.json"
_TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


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


@lru_cache(maxsize=1)
def byte_level_alphabet() -> dict[str, int]:
    """The byte-level BPE's printable character for each byte value -> that byte.

    Printable Latin-1 bytes stand for themselves; the other 68 byte values take the characters
    from U+0100 up, in byte order (the GPT-2 byte-to-unicode table).
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {chr(b): b for b in printable}
    extra = 0
    for byte in range(256):
        if byte not in printable:
            table[chr(0x100 + extra)] = byte
            extra += 1
    return table


def _tokenizers():
    try:
        import tokenizers
    except ImportError as err:  # pragma: no cover - the venv pins it
        raise ImportError(
            "FAST action tokens need the `tokenizers` package (pip install tokenizers)"
        ) from err
    return tokenizers


class FastActionTokenizer:
    """DCT + byte-level BPE action tokenizer; build with ``train`` or ``from_directory``."""

    def __init__(
        self,
        bpe,
        *,
        scale: float,
        min_token: int,
        action_dim: int | None = None,
        time_horizon: int | None = None,
    ) -> None:
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self._bpe = bpe
        self.scale = float(scale)
        self.min_token = int(min_token)
        self.action_dim = None if action_dim is None else int(action_dim)
        self.time_horizon = None if time_horizon is None else int(time_horizon)
        # transformers' PreTrainedTokenizerFast.decode post-processing, from tokenizer_config.json
        self.clean_up_tokenization_spaces = False

    # ---------------------------------------------------------------- construction

    @classmethod
    def train(
        cls,
        chunks: Sequence[np.ndarray],
        vocab_size: int = 2048,
        scale: float = 10.0,
    ) -> FastActionTokenizer:
        """Fit ``min_token`` and the BPE merges on normalised chunks (T, D), as released."""
        if not chunks:
            raise ValueError("need at least one chunk to train a FAST tokenizer")
        if scale <= 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        quantised = [_quantise(_checked(chunk), scale) for chunk in chunks]
        min_token = int(min(q.min() for q in quantised))
        max_token = int(max(q.max() for q in quantised))
        if max_token - min_token > vocab_size:
            raise ValueError(
                f"coefficient range [{min_token}, {max_token}] is wider than vocab_size "
                f"{vocab_size}; lower `scale` or check the chunks are normalised"
            )
        tk = _tokenizers()
        bpe = tk.ByteLevelBPETokenizer()
        trainer = tk.trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=2,
            show_progress=False,
            special_tokens=[],
            initial_alphabet=[chr(i) for i in range(max_token - min_token + 1)],
            max_token_length=10000,
        )
        strings = [_to_string(q, min_token) for q in quantised]
        # The inner Tokenizer is trained directly: ByteLevelBPETokenizer.train would replace
        # the alphabet with the 256 byte characters.
        bpe._tokenizer.train_from_iterator(strings, trainer=trainer)
        return cls(bpe._tokenizer, scale=scale, min_token=min_token)

    @classmethod
    def from_directory(cls, path: str | Path) -> FastActionTokenizer:
        """The released layout: tokenizer.json + processor_config.json."""
        directory = Path(path)
        settings_path = directory / SETTINGS_FILE
        tokenizer_path = directory / TOKENIZER_FILE
        for required in (settings_path, tokenizer_path):
            if not required.is_file():
                raise FileNotFoundError(
                    f"FAST tokenizer directory {directory} lacks {required.name}"
                )
        settings = json.loads(settings_path.read_text())
        if not isinstance(settings, dict):
            raise ValueError(f"{settings_path}: expected a JSON object")
        bpe = _tokenizers().Tokenizer.from_file(str(tokenizer_path))
        # The released processor's defaults for absent keys.
        tokenizer = cls(
            bpe,
            scale=_number(settings.get("scale", 10), "scale", settings_path),
            min_token=int(_number(settings.get("min_token", 0), "min_token", settings_path)),
            action_dim=settings.get("action_dim"),
            time_horizon=settings.get("time_horizon"),
        )
        # The released processor loads the directory with PreTrainedTokenizerFast, whose
        # decode cleans up spaces when tokenizer_config.json asks for it (absent: off).
        tokenizer_config = _read_optional_json(directory / _TOKENIZER_CONFIG_FILE)
        tokenizer.clean_up_tokenization_spaces = bool(
            tokenizer_config.get("clean_up_tokenization_spaces", False)
        )
        return tokenizer

    def save(self, path: str | Path) -> None:
        """Write the released layout into directory ``path``."""
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        self._bpe.save(str(directory / TOKENIZER_FILE))
        settings = {
            "processor_class": "UniversalActionProcessor",
            "scale": self.scale,
            "vocab_size": self.vocab_size,
            "min_token": self.min_token,
            "action_dim": self.action_dim,
            "time_horizon": self.time_horizon,
        }
        (directory / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n")
        tokenizer_config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "clean_up_tokenization_spaces": False,
        }
        (directory / _TOKENIZER_CONFIG_FILE).write_text(
            json.dumps(tokenizer_config, indent=2) + "\n"
        )

    # ---------------------------------------------------------------- use

    @property
    def vocab_size(self) -> int:
        return int(self._bpe.get_vocab_size())

    def token_bytes(self, index: int) -> bytes | None:
        """The bytes id ``index`` stands for; None for an alphabet entry no byte maps to.

        Training adds ``chr(0)..`` to the alphabet, but the byte-level pre-tokenizer only ever
        produces the 256 byte characters, so the other entries never occur in an encoding.
        """
        table = byte_level_alphabet()
        token = self._bpe.id_to_token(index)
        if token is None or any(char not in table for char in token):
            return None
        return bytes(table[char] for char in token)

    def coefficient_counts(self) -> np.ndarray:
        """DCT coefficients each id 0..V-1 adds to a run, (V,) int64; -1: never valid.

        A coefficient is one character, one to three UTF-8 bytes of which exactly one is a
        lead byte (not 0b10xxxxxx), so an id adds as many coefficients as it has lead bytes
        (0 for an id of continuation bytes only). Constrained decoding never lets a run
        overshoot horizon x D with these.
        """
        counts = np.full(self.vocab_size, -1, dtype=np.int64)
        for index in range(self.vocab_size):
            raw = self.token_bytes(index)
            if raw is not None:
                counts[index] = sum(1 for byte in raw if byte & 0xC0 != 0x80)
        return counts

    def quantise(self, chunk: np.ndarray) -> np.ndarray:
        """Scaled and rounded DCT coefficients (T, D) of a chunk."""
        return _quantise(_checked(chunk), self.scale)

    def encode(self, chunk: np.ndarray) -> list[int]:
        """Token ids (0..vocab_size-1) of a normalised chunk (T, D)."""
        return list(self._bpe.encode(_to_string(self.quantise(chunk), self.min_token)).ids)

    def released_text(self, ids: Sequence[int]) -> str:
        """The string the released processor reads coefficients from (``tokenizers`` decode)."""
        text = self._bpe.decode([int(i) for i in ids], skip_special_tokens=False)
        return _clean_up_tokenization(text) if self.clean_up_tokenization_spaces else text

    def decode_released(self, ids: Sequence[int], horizon: int, action_dim: int) -> np.ndarray:
        """Chunk (horizon, action_dim) exactly as the released processor decodes ``ids``.

        Raises FastDecodeError where the release would substitute an all-zero chunk, and for
        invalid UTF-8 (see the module docstring); otherwise the release's own values.
        """
        if horizon <= 0 or action_dim <= 0:
            raise ValueError(f"horizon and action_dim must be > 0, got {horizon}, {action_dim}")
        text = self.released_text(ids)
        if _REPLACEMENT in text:
            raise FastDecodeError(
                "token run is not valid UTF-8 (a split character): the released decoder "
                "would read U+FFFD as a coefficient"
            )
        return self._chunk_from_text(
            text, horizon, action_dim, "the released decoder would substitute an all-zero chunk"
        )

    def decode(self, ids: Sequence[int], horizon: int, action_dim: int) -> np.ndarray:
        """Chunk (horizon, action_dim) from token ids; malformed runs raise FastDecodeError."""
        if horizon <= 0 or action_dim <= 0:
            raise ValueError(f"horizon and action_dim must be > 0, got {horizon}, {action_dim}")
        vocab = self.vocab_size
        raw = bytearray()
        for position, token in enumerate(ids):
            if isinstance(token, bool) or not isinstance(token, (int, np.integer)):
                raise FastDecodeError(f"token {position} is {token!r}, not an integer id")
            piece = self.token_bytes(int(token)) if 0 <= token < vocab else None
            if piece is None:
                raise FastDecodeError(
                    f"token {position} has id {token}, outside the FAST vocabulary's byte "
                    f"tokens 0..{vocab - 1}"
                )
            raw += piece
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise FastDecodeError("token run is not valid UTF-8 (a split character)") from None
        return self._chunk_from_text(
            text, horizon, action_dim, "truncated or over-long action token run"
        )

    def _chunk_from_text(self, text: str, horizon: int, action_dim: int, why: str) -> np.ndarray:
        """Inverse BPE text -> (horizon, action_dim) chunk: one DCT coefficient per character
        (offset by ``min_token``, divided by ``scale``), inverse DCT over time; ``why`` says
        in the error what a run of the wrong length means."""
        codes = np.fromiter((ord(c) for c in text), dtype=np.int64, count=len(text))
        expected = horizon * action_dim
        if codes.size != expected:
            raise FastDecodeError(
                f"token run decodes to {codes.size} DCT coefficients, expected "
                f"horizon x action_dim = {horizon} x {action_dim} = {expected} ({why})"
            )
        coefficients = (codes + self.min_token).reshape(horizon, action_dim) / self.scale
        return dct_matrix(horizon).T @ coefficients


def _number(value: object, key: str, where: Path) -> float:
    # JSON's NaN / Infinity are numbers to json.loads: a NaN scale loaded and made every
    # decoded action NaN, a NaN min_token failed int() with a message naming no key.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: {key} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{where}: {key} must be finite, got {value!r}")
    return float(value)


def _checked(chunk: np.ndarray) -> np.ndarray:
    array = np.asarray(chunk, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"action chunk must be (T, D) with T, D > 0, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("action chunk contains NaN or infinite values")
    return array


def _quantise(chunk: np.ndarray, scale: float) -> np.ndarray:
    # np.rint rounds half to even, as the released np.around does.
    return np.rint(dct_matrix(chunk.shape[0]) @ chunk * scale).astype(np.int64)


def _to_string(coefficients: np.ndarray, min_token: int) -> str:
    # Below the trained range clamps to chr(0); above it is kept (both as released).
    return "".join(chr(max(int(v) - min_token, 0)) for v in coefficients.reshape(-1))


_REPLACEMENT = "\ufffd"  # what a lossy UTF-8 decode puts where bytes were invalid


def _read_optional_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def _clean_up_tokenization(text: str) -> str:
    """transformers' ``clean_up_tokenization`` (applied when the tokenizer config asks)."""
    for before, after in (
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ):
        text = text.replace(before, after)
    return text
