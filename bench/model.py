"""MolmoAct2 flow policy benchmark: prefix, flow loop uncached vs cached (vs CUDA graph), chunk Hz.

Per preset (tiny, mid_cpu), in one run on one machine (compare ratios within a run only):
- prefix: VLM forward over the prompt + projecting the expert context once;
- flow loop: ``euler_sample_reference`` (re-projects the context and re-runs the adaLN at every
  step) against ``CachedFlowSampler`` (both once), and on CUDA the CUDA-graph replay;
- act: a whole ``MolmoAct2Policy.act`` (chunk Hz = 1 / its time).

    .venv/bin/python bench/model.py                       # both presets on CPU
    .venv/bin/python bench/model.py --device cuda         # adds graph vs eager
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import torch

from molmoact2_common.embodiments import get_embodiment
from molmoact2_policy.model.checkpoint import tiny_norm_stats
from molmoact2_policy.model.config import MolmoAct2Config
from molmoact2_policy.model.flow import (
    CachedFlowSampler,
    GraphFlowRunner,
    euler_sample_reference,
)
from molmoact2_policy.model.model import MolmoAct2Model
from molmoact2_policy.model.policy import MolmoAct2Policy
from molmoact2_policy.model.tokenizer import MolmoAct2Tokenizer

from timing import best_seconds

PRESETS = {"tiny": MolmoAct2Config.tiny, "mid_cpu": MolmoAct2Config.mid_cpu}
# The released sizes (random weights): for a GPU, e.g.
#   bench/model.py --preset released --embodiment libero --device cuda --dtype bfloat16
# (the paper's best: 55.79 Hz on one H100 at LIBERO shape). Not part of "all": ~4B parameters.
LARGE_PRESETS = {"released": MolmoAct2Config.released}
INSTRUCTION = "fold the towel"


def bench_preset(
    name: str, embodiment: str, device: str, repeats: int, dtype: str = "float32"
) -> None:
    config = {**PRESETS, **LARGE_PRESETS}[name]()
    spec = get_embodiment(embodiment)
    model = MolmoAct2Model.random(config, seed=0)
    policy = MolmoAct2Policy(
        model,
        config,
        tiny_norm_stats(0, [embodiment]),
        MolmoAct2Tokenizer.tiny(config.token_layout()),
        spec,
        device=device,
        dtype=dtype,
        cuda_graph=device.startswith("cuda"),
        checkpoint=f"random {name}",
    )
    rng = np.random.default_rng(0)
    images = {n: rng.integers(0, 256, (360, 640, 3), dtype=np.uint8) for n in spec.camera_names}
    state = rng.uniform(-0.5, 0.5, spec.state_dim)
    sync = policy.device.type == "cuda"
    expert = policy.model.action_expert
    steps = config.flow_matching_num_steps

    with torch.inference_mode():
        inputs = policy.prepare_inputs(images, state, INSTRUCTION)
        prefix = policy.run_prefix(inputs)
        ctx = policy.expert_context(prefix)
        noise = policy.make_noise(seed=0)
        mask = policy.action_dim_mask
        cached = CachedFlowSampler(expert, steps)
        graph = GraphFlowRunner(expert, steps, use_cuda_graph=True)
        candidates: dict[str, Callable[[], object]] = {
            "prefix": lambda: policy.expert_context(policy.run_prefix(inputs)),
            "flow_uncached": lambda: euler_sample_reference(
                expert, prefix.keys, prefix.values, prefix.mask, noise, steps, mask
            ),
            "flow_cached": lambda: cached.sample(ctx, noise, mask),
            "act": lambda: policy.act(images, state, INSTRUCTION, seed=0),
        }
        if sync:
            candidates["flow_graph"] = lambda: graph.sample(ctx, noise, mask)
        best = best_seconds(candidates, repeats, sync=sync)
        reference = euler_sample_reference(
            expert, prefix.keys, prefix.values, prefix.mask, noise, steps, mask
        )
        drift = (reference - cached.sample(ctx, noise, mask)).abs().max().item()

    params = sum(p.numel() for p in policy.model.parameters()) / 1e6
    print(
        f"\n[{name}] {params:.1f} M params, {embodiment} (horizon {spec.horizon}, "
        f"{len(spec.camera_names)} cameras), context {int(prefix.mask.sum())} tokens, "
        f"{steps} Euler steps, {policy.device}"
    )
    print(f"  prefix (VLM + context projection) {best['prefix'] * 1e3:8.2f} ms")
    print(f"  flow loop uncached (reference)     {best['flow_uncached'] * 1e3:8.2f} ms")
    print(
        f"  flow loop cached                   {best['flow_cached'] * 1e3:8.2f} ms   "
        f"speed-up x{best['flow_uncached'] / best['flow_cached']:.2f}   "
        f"(max |uncached - cached| {drift:.1e})"
    )
    if "flow_graph" in best:
        print(
            f"  flow loop CUDA graph               {best['flow_graph'] * 1e3:8.2f} ms   "
            f"vs cached eager x{best['flow_cached'] / best['flow_graph']:.2f}"
        )
    else:
        print("  flow loop CUDA graph               (no CUDA device: skipped)")
    print(f"  act (whole chunk)                  {best['act'] * 1e3:8.2f} ms   "
          f"= {1.0 / best['act']:.1f} chunks/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=(*PRESETS, *LARGE_PRESETS, "all"), default="all")
    parser.add_argument("--embodiment", default="yam_bimanual")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--dtype", default="float32", help="float32, float16 or bfloat16")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    for name in PRESETS if args.preset == "all" else (args.preset,):
        bench_preset(name, args.embodiment, args.device, args.repeats, args.dtype)


if __name__ == "__main__":
    main()
