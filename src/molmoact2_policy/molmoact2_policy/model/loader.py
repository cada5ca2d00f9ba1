"""Load a MolmoAct2 policy from a checkpoint in the mode asked for (no ROS).

The mode picks the class: ``flow`` samples the flow-matching action expert
(``MolmoAct2Policy``), ``think`` first decodes depth tokens (``ThinkPolicy``), ``fast`` decodes
discrete OpenFAST action tokens (``FastPolicy``, with the checkpoint's FAST tokenizer). Both
subclasses build on ``MolmoAct2Policy``, so the choice between them is made here, above all
three, and the base class never imports its subclasses.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from molmoact2_common.embodiments import get_embodiment
from molmoact2_policy.model.checkpoint import (
    CONFIG_FILE,
    GENERATION_CONFIG_FILE,
    CheckpointError,
    build_tiny,
    generation_eos_token_id,
    load_checkpoint,
    load_fast_tokenizer,
    tiny_fast_tokenizer,
)
from molmoact2_policy.model.fast_policy import FastPolicy, eos_token_id
from molmoact2_policy.model.policy import TINY, MolmoAct2Policy, resolve_dtype
from molmoact2_policy.model.think import ThinkPolicy
from molmoact2_policy.policy_api import MODES

#: The class each mode runs.
POLICY_CLASSES: dict[str, type[MolmoAct2Policy]] = {
    "flow": MolmoAct2Policy,
    "fast": FastPolicy,
    "think": ThinkPolicy,
}


def load_policy(
    checkpoint: str,
    embodiment: str,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    cuda_graph: bool = False,
    mode: str = "flow",
    seed: int = 0,
    joint_names: Sequence[str] | None = None,
) -> MolmoAct2Policy:
    """Load a checkpoint directory, or build the tiny preset in memory for ``"tiny"``, as the
    policy class of ``mode`` (``POLICY_CLASSES``). Fast mode reads the checkpoint's FAST
    tokenizer (``checkpoint.FAST_TOKENIZER_DIR``; CheckpointError naming it when absent)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
    spec = get_embodiment(embodiment)
    torch_dtype = resolve_dtype(dtype)
    if checkpoint == TINY:
        model, config, stats, tokenizer = build_tiny(seed)
    else:
        # Straight to the target device and dtype: no full fp32 host copy of the weights.
        model, config, stats, tokenizer = load_checkpoint(
            Path(checkpoint).expanduser(), device=device, dtype=torch_dtype
        )
        missing = [
            name for name in POLICY_CLASSES[mode].required_token_ids
            if getattr(config, name) is None
        ]
        if missing:
            raise CheckpointError(
                f"{Path(checkpoint).expanduser() / CONFIG_FILE}: mode {mode!r} needs "
                f"{', '.join(missing)}, which the file leaves null"
            )
    extra: dict[str, Any] = {}
    if mode == "fast":
        extra["fast_tokenizer"] = (
            tiny_fast_tokenizer()
            if checkpoint == TINY
            else load_fast_tokenizer(Path(checkpoint).expanduser(), config)
        )
        # Random weights never write EOS: the in-memory preset decodes constrained (not the
        # released decoding; see fast_policy). Every checkpoint directory decodes as released.
        extra["decoding"] = "constrained" if checkpoint == TINY else "release"
        if checkpoint != TINY:
            eos = generation_eos_token_id(Path(checkpoint).expanduser())
            rows = model.vlm.lm_head.weight.shape[0]
            # Otherwise the decoder's own range check raised a bare ValueError naming no file.
            if eos is not None and eos >= rows:
                raise CheckpointError(
                    f"{Path(checkpoint).expanduser() / GENERATION_CONFIG_FILE}: eos_token_id "
                    f"{eos} is not a row of the LM head ({rows} tokens)"
                )
            if eos is None and eos_token_id(config) is None:
                # The decoder raised this as a bare ValueError at construction, naming no file.
                raise CheckpointError(
                    f"{Path(checkpoint).expanduser()}: {CONFIG_FILE} and "
                    f"{GENERATION_CONFIG_FILE} have no eos_token_id: mode 'fast' needs one (the "
                    "released discrete decoding stops at EOS)"
                )
            extra["generation_eos_token_id"] = eos
    return POLICY_CLASSES[mode](
        model,
        config,
        stats,
        tokenizer,
        spec,
        device=device,
        dtype=dtype,
        cuda_graph=cuda_graph,
        seed=seed,
        joint_names=joint_names,
        checkpoint=checkpoint,
        **extra,
    )
