"""MolmoAct2 discrete ("fast") mode: the VLM writes OpenFAST action tokens, no flow expert.

Two decodings (``FastPolicy.decoding``):

``"release"`` (default; every checkpoint directory) is the released discrete path
(``MolmoAct2ForConditionalGeneration.predict_action`` with ``inference_action_mode="discrete"``
in ``huggingface/lerobot`` ``src/lerobot/policies/molmoact2/hf_model/modeling_molmoact2.py``):
the robot prompt ends ``<action_output>``; greedy argmax over the *whole* LM head, each token fed
back, until the model writes the checkpoint's ``eos_token_id`` (the EOS is kept in the stream)
or ``max(1, 16 x horizon)`` tokens have been written (then the release raises, and so do we).
The ids between the first ``<action_start>`` and the first ``<action_end>`` after it that are
``<action_k>`` become FAST ids k (``decoding.span_bins``: other ids skipped, a missing marker
widens the span to the stream's start/end); none at all is an error as released. They are
decoded by the released processor's rules (``fast.FastActionTokenizer.decode_released``),
reshaped to the tag's (horizon, action_dim), rounded to float32 as released, un-normalised.
Safety after release-identical decoding: a run the release would turn into an all-zero chunk
(the middle of every joint's range) or whose bytes are not UTF-8 is refused
(``ActionTokenRunError``), never published.

``"constrained"`` (the random-weight ``tiny`` preset only, which never writes an EOS): the
prompt continues with ``<action_start>``; greedy over the ``<action_k>`` logits plus
``<action_end>`` only; ids that would overshoot horizon x action_dim DCT coefficients are
masked out (each FAST id adds as many coefficients as it has UTF-8 lead bytes) and the run is
complete when the count is reached. It is not the released behaviour; it keeps demos and tests
on random weights producing chunks.

A run that does not decode is an inference failure of the model, not bad input: ``act`` raises
``ActionTokenRunError`` (a RuntimeError) naming the problem, the node reports it and publishes no
chunk; the next call starts afresh.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from molmoact2_policy.model.config import MolmoAct2Config
from molmoact2_policy.model.decoding import (
    StaticCacheDecoder,
    check_single_unpadded,
    span_bins,
)
from molmoact2_policy.model.fast import FastActionTokenizer, FastDecodeError
from molmoact2_policy.model.policy import MolmoAct2Policy
from molmoact2_policy.model.vlm import PrefixOutput
from molmoact2_policy.policy_api import (
    ActionChunkResult,
    PolicyInputError,
    RtcRequest,
    validate_observation,
)

# The discrete continuation of the robot prompt (see the module docstring).
PROMPT_END = "<action_output>"
FAST_PROMPT_SUFFIX = "<action_start>"
DECODINGS = ("release", "constrained")
# The released discrete decoding budget: max(1, horizon x 16) tokens.
RELEASED_TOKENS_PER_STEP = 16


class ActionTokenRunError(RuntimeError):
    """The model's action token run does not decode to a chunk (an inference failure)."""


def fast_prompt(prompt: str) -> str:
    """The robot prompt continued with the start of the discrete action span."""
    if not prompt.endswith(PROMPT_END):
        raise ValueError(f"robot prompt must end with {PROMPT_END!r} to become a FAST prompt")
    return prompt + FAST_PROMPT_SUFFIX


@dataclass
class ActionTokenRun:
    """What the decoder wrote after ``<action_start>``."""

    fast_ids: np.ndarray  # (n,) int64 FAST ids, every one in [0, fast vocab)
    token_ids: list[int]  # the VLM ids emitted, in order (ends with <action_end> if emitted)
    ended: bool  # the model emitted <action_end>
    complete: bool  # the ids stand for exactly the coefficients a chunk needs
    coefficients: int  # DCT coefficients the ids stand for
    forwards: int  # VLM forwards this run took (the prompt prefill not counted)
    budget: int = field(default=0)  # the token budget it ran under


class ActionTokenDecoder(StaticCacheDecoder):
    """Greedy decoding restricted to ``<action_0..V-1>`` and ``<action_end>``.

    ``coefficient_counts[k]``: how many DCT coefficients FAST id k adds to a run (-1: an id no
    encoding produces, never admissible), which drives the length constraint.
    """

    def __init__(
        self,
        vlm: torch.nn.Module,
        config: MolmoAct2Config,
        coefficient_counts: np.ndarray,
        token_bytes: list[bytes | None] | None = None,
    ) -> None:
        missing = [
            name
            for name in ("action_token_start_id", "action_end_token_id")
            if getattr(config, name) is None
        ]
        if missing:
            raise ValueError(f"config lacks {', '.join(missing)}: no discrete action tokens")
        super().__init__(vlm, config.expert_kv_source)
        counts = np.asarray(coefficient_counts, dtype=np.int64)
        if counts.ndim != 1 or counts.size == 0 or counts.max() < 1:
            raise ValueError("no FAST id decodes to a coefficient")
        if counts.size > config.num_action_tokens:
            raise ValueError(
                f"FAST vocabulary of {counts.size} ids does not fit the config's "
                f"num_action_tokens {config.num_action_tokens}"
            )
        self.vocab = int(counts.size)
        self.action_start = int(config.action_token_start_id)
        self.end_id = int(config.action_end_token_id)
        try:
            self.check_head_rows(self.action_start, self.vocab)
            self.check_head_rows(self.end_id, 1)
        except ValueError as error:
            raise ValueError(f"action {error}") from None
        device = vlm.lm_head.weight.device
        # Candidate k < V is <action_k>; candidate V is <action_end> (it stands for 0 coefficients).
        action_rows = torch.arange(self.action_start, self.action_start + self.vocab)
        self.candidates = torch.cat([action_rows, torch.tensor([self.end_id])]).to(device)
        self.counts = torch.from_numpy(np.append(counts, 0)).to(device)
        self.never = torch.from_numpy(np.append(counts < 0, False)).to(device)
        self._host_counts = np.append(counts, 0)  # the running total without a device sync
        # With the ids' bytes, a run that reaches its count on a character's lead byte goes on
        # with continuation-only ids (count 0) until that character is whole.
        self._token_bytes = token_bytes
        self.continuation_only = torch.from_numpy(np.append(counts == 0, False)).to(device)

    def candidate_logits(self, hidden: Tensor) -> Tensor:
        """(V + 1,) logits: the ``<action_k>`` rows of the LM head, then ``<action_end>``."""
        rows = self.vlm.lm_head.weight.index_select(0, self.candidates)
        return (hidden.to(rows.dtype) @ rows.T)[0]

    # inference_mode, not no_grad: the static cache is first filled inside act's inference
    # mode, and its tensors can only be updated in place inside inference mode afterwards.
    @torch.inference_mode()
    def decode(
        self, prefix: PrefixOutput, *, max_tokens: int, coefficients: int | None
    ) -> ActionTokenRun:
        """Greedy action token run after ``prefix`` (whose prompt ends with ``<action_start>``).

        ``coefficients``: the count a valid run decodes to, enabling the length constraint;
        None decodes until ``<action_end>`` or ``max_tokens``.
        """
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        check_single_unpadded(prefix, "FAST decoding")
        prompt_len = prefix.mask.shape[1]
        cache = self._static_cache(prefix, prompt_len + max_tokens)
        forwards_before = self.stats.forwards
        hidden = prefix.last_hidden_state[:, -1]
        fast_ids: list[int] = []
        token_ids: list[int] = []
        total = 0
        owed = 0  # continuation bytes the last character still needs
        ended = False
        for step in range(max_tokens):
            logits = self.candidate_logits(hidden).masked_fill(self.never, float("-inf"))
            if coefficients is not None:
                logits = logits.masked_fill(self.counts > coefficients - total, float("-inf"))
                if total == coefficients and owed:
                    logits = logits.masked_fill(~self.continuation_only, float("-inf"))
            choice = int(logits.argmax().item())
            self.stats.predicted += 1
            if choice == self.vocab:
                token_ids.append(self.end_id)
                ended = True
                break
            fast_ids.append(choice)
            token_ids.append(self.action_start + choice)
            total += int(self._host_counts[choice])
            if self._token_bytes is not None:
                owed = _owed_after(owed, self._token_bytes[choice] or b"")
            if coefficients is not None and total == coefficients and not owed:
                break  # only <action_end> is admissible now: implied, no forward needed
            if step < max_tokens - 1:
                hidden = self._forward(cache, [token_ids[-1]], prompt_len + step)
        self.stats.calls += 1
        return ActionTokenRun(
            fast_ids=np.asarray(fast_ids, dtype=np.int64),
            token_ids=token_ids,
            ended=ended,
            complete=coefficients is not None and total == coefficients and not owed,
            coefficients=total,
            forwards=self.stats.forwards - forwards_before,
            budget=max_tokens,
        )


@dataclass
class ReleasedTokenRun:
    """What the released discrete decoding wrote after the prompt (EOS included when hit)."""

    token_ids: list[int]
    ended: bool  # the model wrote EOS within the budget
    budget: int
    forwards: int


def eos_token_id(config: MolmoAct2Config) -> int | None:
    """The checkpoint's ``eos_token_id`` (the first one of a list), as the release reads it."""
    return config.eos_token_ids[0] if config.eos_token_ids else None


# config.json token ids the released discrete decoding cannot run without (null is the
# released default).
RELEASED_TOKEN_IDS = ("action_start_token_id", "action_end_token_id", "action_token_start_id")


class ReleasedTokenDecoder(StaticCacheDecoder):
    """Greedy argmax over the whole LM head until EOS, each token fed back (as released)."""

    def __init__(
        self, vlm: torch.nn.Module, config: MolmoAct2Config, eos: int | None = None
    ) -> None:
        """``eos``: the generation config's, used when the config has none (as released)."""
        eos = eos_token_id(config) if eos_token_id(config) is not None else eos
        if eos is None:
            # The release raises the same way: its discrete generation stops at EOS only.
            raise ValueError("config has no eos_token_id: released discrete decoding stops at EOS")
        missing = [name for name in RELEASED_TOKEN_IDS if getattr(config, name) is None]
        if missing:
            raise ValueError(f"config lacks {', '.join(missing)}: no discrete action tokens")
        super().__init__(vlm, config.expert_kv_source)
        self.eos = eos
        self.check_head_rows(eos, 1)

    def logits(self, hidden: Tensor) -> Tensor:
        """(vocab,) logits of the whole LM head (the release's ``lm_head(last_hidden)``)."""
        weight = self.vlm.lm_head.weight
        return torch.nn.functional.linear(hidden.to(weight.dtype), weight)[0]

    @torch.inference_mode()
    def decode(self, prefix: PrefixOutput, *, max_tokens: int) -> ReleasedTokenRun:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        check_single_unpadded(prefix, "FAST decoding")
        prompt_len = prefix.mask.shape[1]
        cache = self._static_cache(prefix, prompt_len + max_tokens)
        forwards_before = self.stats.forwards
        hidden = prefix.last_hidden_state[:, -1]
        token_ids: list[int] = []
        ended = False
        for step in range(max_tokens):
            choice = int(self.logits(hidden).argmax().item())
            self.stats.predicted += 1
            token_ids.append(choice)
            if choice == self.eos:
                ended = True
                break
            if step < max_tokens - 1:
                hidden = self._forward(cache, [choice], prompt_len + step)
        self.stats.calls += 1
        return ReleasedTokenRun(
            token_ids=token_ids,
            ended=ended,
            budget=max_tokens,
            forwards=self.stats.forwards - forwards_before,
        )


def _owed_after(owed: int, piece: bytes) -> int:
    """Continuation bytes still owed by the last UTF-8 character after appending ``piece``."""
    for byte in piece:
        if byte & 0xC0 == 0x80:
            owed = max(owed - 1, 0)
        else:  # a lead byte: 0xxxxxxx, 110xxxxx, 1110xxxx or 11110xxx
            owed = 0 if byte < 0x80 else 1 if byte < 0xE0 else 2 if byte < 0xF0 else 3
    return owed


class FastPolicy(MolmoAct2Policy):
    """MolmoAct2 with discrete OpenFAST action tokens (``mode="fast"``); greedy, so no noise.

    ``decoding``: ``"release"`` or ``"constrained"`` (module docstring), fixed at construction
    (the prompt differs). ``max_action_tokens`` (None: the release's 16 x horizon, or for
    constrained decoding horizon x action_dim x the most UTF-8 bytes one coefficient can take)
    bounds the run; it may change between calls.
    """

    mode_name = "fast"
    # A checkpoint directory decodes as released (the constrained decoding needs fewer ids).
    required_token_ids = RELEASED_TOKEN_IDS

    def __init__(
        self,
        *args: Any,
        fast_tokenizer: FastActionTokenizer,
        decoding: str = "release",
        max_action_tokens: int | None = None,
        generation_eos_token_id: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if decoding not in DECODINGS:
            raise ValueError(f"unknown FAST decoding {decoding!r}; known: {', '.join(DECODINGS)}")
        self.fast_tokenizer = fast_tokenizer
        counts = fast_tokenizer.coefficient_counts()
        token_bytes = [fast_tokenizer.token_bytes(index) for index in range(len(counts))]
        self.decoder = ActionTokenDecoder(self.model.vlm, self.config, counts, token_bytes)
        self.released_decoder = (
            ReleasedTokenDecoder(self.model.vlm, self.config, generation_eos_token_id)
            if decoding == "release"
            else None
        )
        # Ids of continuation bytes only add no coefficient: a run may need more ids than
        # coefficients (up to one per byte).
        self._bytes_per_coefficient = 1 if counts[counts >= 0].min() >= 1 else 3
        self._decoding = decoding
        self.max_action_tokens = max_action_tokens

    @property
    def decoding(self) -> str:
        return self._decoding

    @property
    def coefficients_per_chunk(self) -> int:
        # The released decoder reshapes to the tag's own action width (no padding).
        return self.embodiment.horizon * self.embodiment.action_dim

    def build_prompt(self, state: np.ndarray, instruction: str) -> str:
        prompt = super().build_prompt(state, instruction)
        return prompt if self.decoding == "release" else fast_prompt(prompt)

    # ------------------------------------------------------------------ steps
    @property
    def token_budget(self) -> int:
        if self.max_action_tokens:
            return self.max_action_tokens
        if self.decoding == "release":
            return max(1, RELEASED_TOKENS_PER_STEP * self.embodiment.horizon)
        return self.coefficients_per_chunk * self._bytes_per_coefficient

    def decode_action_tokens(self, prefix: PrefixOutput) -> ActionTokenRun | ReleasedTokenRun:
        if self.released_decoder is not None:
            return self.released_decoder.decode(prefix, max_tokens=self.token_budget)
        return self.decoder.decode(
            prefix, max_tokens=self.token_budget, coefficients=self.coefficients_per_chunk
        )

    def released_fast_ids(self, run: ReleasedTokenRun) -> list[int]:
        """The FAST ids the released parser takes from a run (may be empty)."""
        config = self.config
        return span_bins(
            run.token_ids,
            int(config.action_start_token_id),
            int(config.action_end_token_id),
            int(config.action_token_start_id),
            int(config.num_action_tokens),
        )

    def tokens_to_chunk(self, run: ActionTokenRun | ReleasedTokenRun) -> np.ndarray:
        """Normalised (horizon, action_dim) chunk of a run; ActionTokenRunError if it is bad."""
        if isinstance(run, ReleasedTokenRun):
            return self._released_chunk(run)
        spec = self.embodiment
        if not run.ended and not run.complete:
            raise ActionTokenRunError(
                f"the model wrote {len(run.fast_ids)} action tokens "
                f"({run.coefficients} of {self.coefficients_per_chunk} DCT coefficients) "
                f"without <action_end> within its budget of {run.budget} tokens"
            )
        try:
            return self.fast_tokenizer.decode(run.fast_ids.tolist(), spec.horizon, spec.action_dim)
        except FastDecodeError as error:
            raise ActionTokenRunError(
                f"the model's {len(run.fast_ids)}-token action run does not decode: {error}"
            ) from None

    def _released_chunk(self, run: ReleasedTokenRun) -> np.ndarray:
        spec = self.embodiment
        if not run.ended:
            raise ActionTokenRunError(
                f"the model did not write EOS (id {self.released_decoder.eos}) within "
                f"{run.budget} tokens"
            )
        fast_ids = self.released_fast_ids(run)
        if not fast_ids:
            raise ActionTokenRunError(
                f"the model's {len(run.token_ids)}-token answer has no action tokens between "
                "<action_start> and <action_end>"
            )
        try:
            chunk = self.fast_tokenizer.decode_released(fast_ids, spec.horizon, spec.action_dim)
        except FastDecodeError as error:
            raise ActionTokenRunError(
                f"the model's {len(fast_ids)}-token action run does not decode: {error}"
            ) from None
        # The release hands the decoded chunk on as float32.
        return chunk.astype(np.float32).astype(np.float64)

    def unnormalize(self, normalized: np.ndarray) -> np.ndarray:
        """Normalised (horizon, action_dim) -> robot units (the norm stats' mask applies)."""
        spec = self.embodiment
        return self.norm_stats.unnormalize_action(
            spec.norm_tag, np.asarray(normalized, dtype=np.float64)
        )

    # ------------------------------------------------------------------ Policy API
    def act(
        self,
        images: Mapping[str, np.ndarray],
        state: np.ndarray,
        instruction: str,
        *,
        seed: int | None = None,
        rtc: RtcRequest | None = None,
    ) -> ActionChunkResult:
        """One chunk by greedy token decoding; ``seed`` is accepted and has no effect."""
        del seed  # greedy decoding draws no noise
        if rtc is not None:
            raise PolicyInputError("real-time chunking needs the flow expert (mode flow or think)")
        validate_observation(self.embodiment, images, state, instruction)
        with self._inference(), torch.inference_mode():
            start = time.perf_counter()
            inputs = self.prepare_inputs(images, np.asarray(state), instruction)
            after_preprocess = self._clock()
            prefix = self.run_prefix(inputs)
            after_prefix = self._clock()
            run = self.decode_action_tokens(prefix)
            normalized = self.tokens_to_chunk(run)
            after_decode = time.perf_counter()
            positions = self.unnormalize(normalized)
            end = time.perf_counter()
        timings = {
            "preprocess": after_preprocess - start,
            "prefix": after_prefix - after_preprocess,
            "decode": after_decode - after_prefix,
            "total": end - start,
        }
        return self.chunk_result(positions, timings)

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta.pop("flow_steps", None)
        meta.update(
            fast_vocab=self.fast_tokenizer.vocab_size,
            fast_scale=self.fast_tokenizer.scale,
            fast_width=self.fast_tokenizer.action_dim,
            max_action_tokens=self.token_budget,
            fast_decoding=self.decoding,
        )
        return meta


__all__ = [
    "DECODINGS",
    "FAST_PROMPT_SUFFIX",
    "ActionTokenDecoder",
    "ActionTokenRun",
    "ActionTokenRunError",
    "FastPolicy",
    "ReleasedTokenDecoder",
    "ReleasedTokenRun",
    "eos_token_id",
    "fast_prompt",
]
