"""MolmoAct2-Think benchmark: adaptive depth decoding vs full re-prediction, Think vs flow steps.

Measures, in one run on one machine (ratios only mean something within a run):
1. depth-span decoding time with 0 %, 10 %, 50 % and 100 % of the cells changed (adaptive)
   against re-predicting all 100 cells token by token (the reference path);
2. whole ``act`` step rate of Think (static scene, and every cell re-predicted) against the
   plain flow policy on the same weights.

    .venv/bin/python bench/think.py                 # mid-size CPU preset, all cores
    .venv/bin/python bench/think.py --preset tiny   # quick check

Threads default to torch's own choice (every core), which is how the policy node runs. The
ratio depends on it: a one-token forward is bound by reading the weights from memory and gains
little from a second core, while the multi-token replay forwards are compute-bound and do. On
the 2-core development machine the 10 % row reads about 4.8x with ``--threads 1`` and 5.0-6.1x
with both cores.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import torch

from molmoact2_common.embodiments import get_embodiment
from molmoact2_policy.model.checkpoint import tiny_norm_stats
from molmoact2_policy.model.config import MolmoAct2Config
from molmoact2_policy.model.model import MolmoAct2Model
from molmoact2_policy.model.policy import MolmoAct2Policy
from molmoact2_policy.model.think import ThinkPolicy
from molmoact2_policy.model.tokenizer import MolmoAct2Tokenizer

from timing import best_seconds

FRACTIONS = (0.0, 0.1, 0.5, 1.0)
INSTRUCTION = "fold the towel"


def changed_mask(fraction: float, rng: np.random.Generator, cells: int = 100) -> np.ndarray:
    mask = np.zeros(cells, dtype=bool)
    mask[rng.choice(cells, size=round(fraction * cells), replace=False)] = True
    return mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("mid_cpu", "tiny"), default="mid_cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's, all cores)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = getattr(MolmoAct2Config, args.preset)()
    model = MolmoAct2Model.random(config, seed=0)
    spec = get_embodiment("yam_bimanual")
    stats = tiny_norm_stats(0, [spec.name])
    tokenizer = MolmoAct2Tokenizer.tiny(config.token_layout())
    think = ThinkPolicy(model, config, stats, tokenizer, spec)
    flow = MolmoAct2Policy(model, config, stats, tokenizer, spec)

    rng = np.random.default_rng(0)
    images = {
        name: rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for name in spec.camera_names
    }
    state = np.zeros(spec.state_dim)

    print(
        f"preset {args.preset}: {config.num_vlm_layers} VLM layers x "
        f"{config.text_config.hidden_size}, {torch.get_num_threads()} thread(s), "
        f"device {think.device}"
    )

    # 1. Depth decoding alone, on one prefix.
    with torch.inference_mode():
        prefix = think.run_prefix(think.prepare_inputs(images, state, INSTRUCTION))
        decoder = think.decoder
        reference = decoder.decode(prefix, adaptive=False)
        cached = reference.codes
        masks = {
            fraction: changed_mask(fraction, np.random.default_rng(int(fraction * 100)))
            for fraction in FRACTIONS
        }
        forwards = {f: decoder.decode(prefix, cached, m).forwards for f, m in masks.items()}
        candidates: dict[str, Callable[[], object]] = {
            "full": lambda: decoder.decode(prefix, adaptive=False)
        }
        for fraction, mask in masks.items():
            candidates[f"{fraction}"] = lambda m=mask: decoder.decode(prefix, cached, m)
        best = best_seconds(candidates, args.repeats)
        full_s = best["full"]
        print(f"prompt {prefix.mask.shape[1]} tokens; depth span {decoder.num_cells} cells")
        print(
            f"full re-prediction ({reference.forwards} forwards, token by token): "
            f"{full_s * 1e3:8.1f} ms"
        )
        print(f"{'changed':>8} {'forwards':>9} {'ms':>9} {'speedup':>8}")
        for fraction in FRACTIONS:
            seconds = best[f"{fraction}"]
            print(
                f"{fraction:>8.0%} {forwards[fraction]:>9d} {seconds * 1e3:>9.1f} "
                f"{full_s / seconds:>7.1f}x"
            )

    # 2. Whole steps.
    def flow_step() -> None:
        flow.act(images, state, INSTRUCTION, seed=0)

    def think_static() -> None:
        think.act(images, state, INSTRUCTION, seed=0)  # same frame: cache replays all cells

    def think_full() -> None:
        think.depth_decoding = "full"
        try:
            think.act(images, state, INSTRUCTION, seed=0)
        finally:
            think.depth_decoding = "adaptive"

    think.reset()
    steps = best_seconds(
        {"flow": flow_step, "static": think_static, "full": think_full}, args.repeats
    )
    flow_s, static_s, full_step_s = steps["flow"], steps["static"], steps["full"]
    print(f"step rate: flow {1 / flow_s:6.2f} Hz")
    print(
        f"step rate: think, static scene {1 / static_s:6.2f} Hz ({flow_s / static_s:.2f}x of flow)"
    )
    print(
        f"step rate: think, all cells re-predicted {1 / full_step_s:6.2f} Hz "
        f"({flow_s / full_step_s:.2f}x of flow); adaptive step speedup "
        f"{full_step_s / static_s:.2f}x"
    )


if __name__ == "__main__":
    main()
