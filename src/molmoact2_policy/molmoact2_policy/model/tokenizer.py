"""Tokenizer: the special tokens MolmoAct2 adds, a tiny byte-level tokenizer for tests and tiny
checkpoints, and loading a checkpoint's own ``tokenizer.json``.

Indexed families (``<state_k>``, ``<action_k>``, ``<depth_k>``) must have contiguous ids; the
wrapper checks that against the config's ``*_token_start_id`` so a mismatched tokenizer fails at
load time instead of producing a silently wrong prompt.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

EOS_TOKEN = "<|endoftext|>"
CHAT_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|image|>", "<|video|>")
PROMPT_MARKERS = (
    "<setup_start>",
    "<setup_end>",
    "<control_start>",
    "<control_end>",
    "<state_start>",
    "<state_end>",
    "<action_output>",
    "<action_start>",
    "<action_end>",
    "<depth_output>",
    "<depth_start>",
    "<depth_end>",
)
# Molmo2's image tokens; the VLM treats them as its "additional" vocabulary, placed last.
IMAGE_TOKENS = (
    "<im_start>",
    "<im_end>",
    "<im_patch>",
    "<im_col>",
    "<low_res_im_start>",
    "<frame_start>",
    "<frame_end>",
    "<im_low>",
)


class TokenizerError(ValueError):
    """A tokenizer lacks a token the model needs or disagrees with the config."""


@dataclass(frozen=True)
class TokenLayout:
    """Sizes of the indexed token families."""

    num_state_tokens: int = 256
    num_action_tokens: int = 2048
    num_depth_tokens: int = 128


def indexed_tokens(prefix: str, count: int) -> list[str]:
    return [f"<{prefix}_{index}>" for index in range(count)]


def build_tiny_tokenizer(layout: TokenLayout | None = None) -> Tokenizer:
    """A deterministic byte-level tokenizer (256 byte tokens, no merges) plus every special token.

    Id order: bytes, chat tokens, prompt markers, state, action, depth, image tokens; the image
    tokens come last so they form the VLM's additional vocabulary.
    """
    layout = layout or TokenLayout()
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: index for index, symbol in enumerate(alphabet)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    specials = [
        *CHAT_TOKENS,
        *PROMPT_MARKERS,
        *indexed_tokens("state", layout.num_state_tokens),
        *indexed_tokens("action", layout.num_action_tokens),
        *indexed_tokens("depth", layout.num_depth_tokens),
        *IMAGE_TOKENS,
    ]
    tokenizer.add_special_tokens([AddedToken(token, special=True) for token in specials])
    return tokenizer


class MolmoAct2Tokenizer:
    """Thin wrapper over ``tokenizers.Tokenizer`` with the ids the prompt builder needs."""

    def __init__(self, tokenizer: Tokenizer, bos_token: str | None = EOS_TOKEN) -> None:
        self.tokenizer = tokenizer
        self.bos_token = bos_token
        self._ids: dict[str, int] = {}
        self._added: dict[int, str] | None = None

    # ------------------------------------------------------------------ lookups
    def token_id(self, token: str) -> int:
        cached = self._ids.get(token)
        if cached is not None:
            return cached
        index = self.tokenizer.token_to_id(token)
        if index is None:
            raise TokenizerError(f"tokenizer has no token {token!r}")
        self._ids[token] = index
        return index

    def token_ids(self, tokens: Sequence[str]) -> list[int]:
        return [self.token_id(token) for token in tokens]

    def family_start(self, prefix: str, count: int) -> int:
        """Id of ``<prefix_0>``, after checking the family's ids are contiguous."""
        start = self.token_id(f"<{prefix}_0>")
        last = self.token_id(f"<{prefix}_{count - 1}>")
        if last != start + count - 1:
            raise TokenizerError(
                f"tokens <{prefix}_0>..<{prefix}_{count - 1}> are not contiguous "
                f"(ids {start}..{last})"
            )
        return start

    @property
    def bos_token_id(self) -> int | None:
        return None if self.bos_token is None else self.token_id(self.bos_token)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    # ------------------------------------------------------------------ text
    def _added_by_id(self) -> dict[int, str]:
        if self._added is None:  # thousands of entries for a released tokenizer: built once
            self._added = {
                index: token.content
                for index, token in sorted(self.tokenizer.get_added_tokens_decoder().items())
            }
        return self._added

    def added_tokens(self) -> list[str]:
        """Every added (special) token, in id order."""
        return list(self._added_by_id().values())

    def added_tokens_in(self, text: str) -> list[str]:
        """The added (special) tokens the tokenizer would read in ``text``, in order.

        Added tokens are matched in the text before any BPE, so an instruction that spells
        ``<im_patch>`` or ``<|im_end|>`` puts that control token into the prompt.
        """
        added = self._added_by_id()
        return [added[i] for i in self.encode(text) if i in added]

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (special tokens written literally are recognised)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    # ------------------------------------------------------------------ files
    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.tokenizer.save(str(directory / TOKENIZER_FILE))
        config = {"bos_token": self.bos_token, "eos_token": EOS_TOKEN}
        (directory / TOKENIZER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def from_directory(cls, directory: str | Path) -> MolmoAct2Tokenizer:
        directory = Path(directory)
        path = directory / TOKENIZER_FILE
        if not path.is_file():
            raise TokenizerError(f"{path}: file not found")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as error:  # the Rust side raises plain Exception subclasses
            raise TokenizerError(f"{path}: cannot be read ({error})") from None
        bos: str | None = EOS_TOKEN
        config_path = directory / TOKENIZER_CONFIG_FILE
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise TokenizerError(f"{config_path}: not valid JSON ({error})") from None
            except RecursionError:  # what json raises for arrays nested thousands deep
                raise TokenizerError(f"{config_path}: not valid JSON (nested too deep)") from None
            except OSError as error:
                raise TokenizerError(
                    f"{config_path}: cannot be read ({error.strerror or error})"
                ) from None
            if not isinstance(config, dict):
                raise TokenizerError(f"{config_path}: expected a JSON object")
            bos = _token_text(config.get("bos_token")) or _token_text(config.get("eos_token"))
            # Every prompt starts with it: an unknown one would fail the first act, not the load.
            if bos is not None and tokenizer.token_to_id(bos) is None:
                raise TokenizerError(
                    f"{config_path}: bos_token {bos!r} is not a token of {TOKENIZER_FILE}"
                )
        return cls(tokenizer, bos_token=bos)

    @classmethod
    def tiny(cls, layout: TokenLayout | None = None) -> MolmoAct2Tokenizer:
        return cls(build_tiny_tokenizer(layout))


def _token_text(value: object) -> str | None:
    # HF tokenizer configs write special tokens either as strings or as {"content": ...} dicts.
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None
