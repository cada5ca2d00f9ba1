"""MolmoAct2 discrete ("fast") mode: the VLM writes OpenFAST action tokens, no flow expert.

One ``act`` = validate -> preprocess (the robot prompt, then ``<action_start>``) -> VLM prefix ->
greedy decoding over the ``<action_k>`` logits plus ``<action_end>`` (the LM head is applied to
those rows alone) -> FAST ids (token id - ``action_token_start_id``) -> inverse BPE + inverse DCT
(``fast.FastActionTokenizer.decode``, the released tokenizer's rules, at the embodiment's own
action width) -> un-normalise with the norm stats.

Sequence layout (uncertain, kept in the constants below): the robot prompt's trailing
``<action_output>`` is followed by ``<action_start>``; the model then writes ``<action_k>``
tokens and closes the run with ``<action_end>``.

Length-constrained decoding (default, ``constrain_length=True``): a valid run decodes to exactly
horizon x action_dim DCT coefficients, and each FAST id adds a known number of them (its UTF-8
lead bytes; ids of byte-level alphabet entries no byte maps to are never admissible). Ids that
would overshoot the remaining count are masked out, and once the count is reached the run is
complete (``<action_end>`` is the only admissible token left, so it is implied, not decoded).
The end token stays admissible at every step, so a model that stops early still produces a
truncated run, which is reported, not patched. With ``constrain_length=False`` decoding is plain
restricted greedy until ``<action_end>`` or the token budget.

A run that does not decode (truncated, over-long, budget exhausted) is an inference failure of
the model, not bad input: ``act`` raises ``ActionTokenRunError`` (a RuntimeError) naming the
problem, the node reports it and publishes no chunk; the next call starts afresh.
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
from molmoact2_policy.model.decoding import StaticCacheDecoder, check_single_unpadded
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

    ``max_action_tokens`` (None: horizon x action_dim x the most UTF-8 bytes one coefficient
    can take in this tokenizer, the longest valid run, as every id stands for at least one
    byte) bounds the decoding; ``constrain_length`` is described in the module docstring. Both
    may be changed between calls.
    """

    mode_name = "fast"

    def __init__(
        self,
        *args: Any,
        fast_tokenizer: FastActionTokenizer,
        max_action_tokens: int | None = None,
        constrain_length: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.fast_tokenizer = fast_tokenizer
        counts = fast_tokenizer.coefficient_counts()
        token_bytes = [fast_tokenizer.token_bytes(index) for index in range(len(counts))]
        self.decoder = ActionTokenDecoder(self.model.vlm, self.config, counts, token_bytes)
        # Ids of continuation bytes only add no coefficient: a run may need more ids than
        # coefficients (up to one per byte).
        self._bytes_per_coefficient = 1 if counts[counts >= 0].min() >= 1 else 3
        self.max_action_tokens = max_action_tokens
        self.constrain_length = constrain_length

    @property
    def coefficients_per_chunk(self) -> int:
        # The released decoder reshapes to the tag's own action width (no padding).
        return self.embodiment.horizon * self.embodiment.action_dim

    def build_prompt(self, state: np.ndarray, instruction: str) -> str:
        return fast_prompt(super().build_prompt(state, instruction))

    # ------------------------------------------------------------------ steps
    @property
    def token_budget(self) -> int:
        return self.max_action_tokens or self.coefficients_per_chunk * self._bytes_per_coefficient

    def decode_action_tokens(self, prefix: PrefixOutput) -> ActionTokenRun:
        budget = self.token_budget
        target = self.coefficients_per_chunk if self.constrain_length else None
        return self.decoder.decode(prefix, max_tokens=budget, coefficients=target)

    def tokens_to_chunk(self, run: ActionTokenRun) -> np.ndarray:
        """Normalised (horizon, action_dim) chunk of a run; ActionTokenRunError if it is bad."""
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
        with self._lock, torch.inference_mode():
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
            constrain_length=self.constrain_length,
        )
        return meta


__all__ = [
    "FAST_PROMPT_SUFFIX",
    "ActionTokenDecoder",
    "ActionTokenRun",
    "ActionTokenRunError",
    "FastPolicy",
    "fast_prompt",
]
