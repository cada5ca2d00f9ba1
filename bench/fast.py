"""Fast (OpenFAST token) mode benchmark: chunk time against the flow policy on the same weights.

Measures, in one run on one machine (ratios only mean something within a run):
1. ``act`` of the flow policy;
2. ``act`` of FastPolicy with the token run of a smooth chunk (what a trained model writes:
   a few dozen tokens), forced through the real forwards;
3. ``act`` of FastPolicy with whatever the untrained model writes (often one-coefficient tokens,
   i.e. the longest valid run: the worst case the length constraint allows);
and the decoding cost per token.

    .venv/bin/python bench/fast.py                 # mid-size CPU preset
    .venv/bin/python bench/fast.py --preset tiny   # quick check
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import torch

from molmoact2_common.embodiments import get_embodiment
from molmoact2_policy.model.checkpoint import tiny_fast_tokenizer, tiny_norm_stats
from molmoact2_policy.model.config import MolmoAct2Config
from molmoact2_policy.model.fast_policy import FastPolicy
from molmoact2_policy.model.model import MolmoAct2Model
from molmoact2_policy.model.policy import MolmoAct2Policy
from molmoact2_policy.model.tokenizer import MolmoAct2Tokenizer

from timing import best_seconds

INSTRUCTION = "fold the towel"


def forced_run(
    policy: FastPolicy, fast_ids: list[int], images: dict[str, np.ndarray], state: np.ndarray
) -> Callable[[], object]:
    """``act`` whose decoder computes the real logits but picks ``fast_ids`` in order."""
    real = policy.decoder.candidate_logits
    step = [0]

    def scripted(hidden: torch.Tensor) -> torch.Tensor:
        logits = real(hidden)
        forced = torch.full_like(logits, float("-inf"))
        forced[fast_ids[step[0]] if step[0] < len(fast_ids) else -1] = 0.0
        step[0] += 1
        return forced

    def run() -> object:
        step[0] = 0
        policy.decoder.candidate_logits = scripted
        try:
            return policy.act(images, state, INSTRUCTION)
        finally:
            del policy.decoder.candidate_logits  # back to the class method

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("mid_cpu", "tiny"), default="mid_cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = getattr(MolmoAct2Config, args.preset)()
    model = MolmoAct2Model.random(config, seed=0)
    spec = get_embodiment("yam_bimanual")
    stats = tiny_norm_stats(0, [spec.name])
    tokenizer = MolmoAct2Tokenizer.tiny(config.token_layout())
    fast_tokenizer = tiny_fast_tokenizer()
    flow = MolmoAct2Policy(model, config, stats, tokenizer, spec)
    # Random weights never write EOS: the constrained decoding (see fast_policy).
    fast = FastPolicy(
        model, config, stats, tokenizer, spec, fast_tokenizer=fast_tokenizer, decoding="constrained"
    )

    rng = np.random.default_rng(0)
    images = {n: rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for n in spec.camera_names}
    state = np.zeros(spec.state_dim)
    t = np.linspace(0.0, 1.0, spec.horizon)[:, None]
    smooth = 0.4 * np.sin(2 * np.pi * 0.5 * t + np.arange(spec.action_dim)) + 0.1
    smooth_ids = fast_tokenizer.encode(smooth)

    untrained = fast.act(images, state, INSTRUCTION)
    forwards_before = fast.decoder.stats.forwards
    fast.act(images, state, INSTRUCTION)
    untrained_tokens = fast.decoder.stats.forwards - forwards_before + 1
    print(
        f"preset {args.preset}: {config.num_vlm_layers} VLM layers x "
        f"{config.text_config.hidden_size}, {spec.name} chunk {spec.horizon} x {spec.action_dim}"
        f", FAST vocab {fast_tokenizer.vocab_size} scale {fast_tokenizer.scale}"
        f", threads {args.threads}"
    )
    print(
        f"token runs: smooth chunk {len(smooth_ids)} tokens, untrained model "
        f"{untrained_tokens} tokens (finite chunk: {bool(np.isfinite(untrained.positions).all())})"
    )
    best = best_seconds(
        {
            "flow": lambda: flow.act(images, state, INSTRUCTION, seed=0),
            "fast_smooth": forced_run(fast, smooth_ids, images, state),
            "fast_untrained": lambda: fast.act(images, state, INSTRUCTION),
        },
        args.repeats,
    )
    for name, seconds in best.items():
        print(f"{name:>15}: {seconds * 1e3:8.1f} ms/chunk  {1 / seconds:6.2f} Hz")
    per_token = (best["fast_untrained"] - best["fast_smooth"]) / max(
        untrained_tokens - len(smooth_ids), 1
    )
    print(f"decoding cost: {per_token * 1e3:.2f} ms/token (from the two fast runs)")
    print(
        f"ratios: fast_smooth/flow {best['fast_smooth'] / best['flow']:.2f}x, "
        f"fast_untrained/flow {best['fast_untrained'] / best['flow']:.2f}x"
    )


if __name__ == "__main__":
    main()
