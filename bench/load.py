"""Checkpoint loading benchmark: peak host memory while loading, as a ratio to the file size.

Writes a synthetic checkpoint of at least ``--size-gb`` GB in bf16 (the tiny preset's tokenizer
and stats, a text model wide and deep enough to reach the size), then loads it in fresh
subprocesses and reads the kernel's peak resident set (VmHWM) minus the resident set just
before loading (imports and interpreter, the same in every path):

1. ``load_checkpoint(dtype=bfloat16)``: each tensor read from the file into its target
   (``weights_io``); target ratio <= 1.3;
2. the previous path, for reference: ``safetensors.torch.load_file`` of everything, the model
   built from that dict, moved to float32 (what ``to_inference(cpu, float32)`` did before the
   policy converted to its own dtype), then to bf16.

    .venv/bin/python bench/load.py               # 1.1 GB file
    .venv/bin/python bench/load.py --size-gb 2
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from molmoact2_policy.model.checkpoint import WEIGHTS_FILE, write_tiny_checkpoint
from molmoact2_policy.model.config import MolmoAct2Config
from molmoact2_policy.model.keymap import expected_released_shapes, released_rope_tables
from molmoact2_policy.model.model import MolmoAct2Model

TARGET_RATIO = 1.3

_MEASURE = r"""
import sys, torch
path, mode = sys.argv[1], sys.argv[2]
from molmoact2_policy.model import checkpoint

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)

before = status("VmRSS")
if mode == "direct":
    model, *_ = checkpoint.load_checkpoint(path, dtype=torch.bfloat16)
else:
    from safetensors.torch import load_file
    from pathlib import Path
    config = checkpoint.read_config(path)
    released = load_file(str(Path(path) / checkpoint.WEIGHTS_FILE))
    model = checkpoint.model_from_released(config, released)
    del released
    model = model.to_inference("cpu", torch.float32).to_inference("cpu", torch.bfloat16)
weights = sum(p.numel() * p.element_size() for p in model.parameters())
print(before, status("VmHWM"), weights)
"""


def synthetic_config(size_bytes: int) -> dict:
    """The tiny preset's config.json with a text model of ``size_bytes`` bf16 weights or more."""
    data = MolmoAct2Config.tiny().to_dict()
    hidden, heads, kv, head_dim, inner = 2048, 16, 8, 128, 8192
    per_layer = 2 * (hidden * (heads + 2 * kv) * head_dim + heads * head_dim * hidden
                     + 3 * hidden * inner + 2 * hidden)
    layers = max(1, math.ceil(size_bytes / per_layer))
    data["text_config"].update(
        hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv,
        head_dim=head_dim, intermediate_size=inner, num_hidden_layers=layers,
    )
    data["adapter_config"]["text_hidden_size"] = hidden
    data["action_expert_config"]["num_layers"] = layers
    return data


def write_synthetic(path: Path, size_bytes: int) -> int:
    """A loadable checkpoint directory with random bf16 weights; returns the weight file size."""
    from safetensors.torch import save_file

    write_tiny_checkpoint(path, seed=0, embodiments=["droid"])
    data = synthetic_config(size_bytes)
    (path / "config.json").write_text(json.dumps(data))
    config = MolmoAct2Config.from_dict(data)
    with torch.device("meta"):
        skeleton = MolmoAct2Model(config)
    generator = torch.Generator().manual_seed(0)
    tensors = {
        name: (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)
        for name, shape in expected_released_shapes(skeleton).items()
    }
    # The real (computed) RoPE table, so the loader's check passes.
    with torch.device("cpu"):
        small = MolmoAct2Model(MolmoAct2Config.from_dict(data | {
            "text_config": dict(data["text_config"], num_hidden_layers=1),
            "action_expert_config": dict(data["action_expert_config"], num_layers=1),
        }))
    tensors.update(released_rope_tables(small))
    del small
    save_file(tensors, str(path / WEIGHTS_FILE), metadata={"format": "pt"})
    return (path / WEIGHTS_FILE).stat().st_size


def measure(path: Path, mode: str) -> tuple[int, int, int]:
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path), mode],
        check=True, capture_output=True, text=True,
    ).stdout.split()
    before, peak, weights = (int(value) for value in out[-3:])
    return before, peak, weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.1, help="weights file size (>= 1)")
    parser.add_argument("--skip-previous", action="store_true", help="only the direct path")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synthetic"
        size = write_synthetic(path, int(args.size_gb * 1e9))
        print(f"synthetic checkpoint: {size / 1e9:.2f} GB of bf16 weights")
        modes = ["direct"] if args.skip_previous else ["direct", "previous"]
        for mode in modes:
            before, peak, weights = measure(path, mode)
            ratio = (peak - before) / size
            print(
                f"{mode:9s} peak RSS {peak / 1e9:.2f} GB (before loading {before / 1e9:.2f} GB), "
                f"model {weights / 1e9:.2f} GB; loading peak / file size = {ratio:.2f}"
                + (f" (target <= {TARGET_RATIO})" if mode == "direct" else "")
            )


if __name__ == "__main__":
    main()
