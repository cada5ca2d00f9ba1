"""Checkpoints in the released HF layout: config.json, model.safetensors (or shards plus
model.safetensors.index.json), norm_stats.json and tokenizer files. safetensors only, no pickle.

The discrete ("fast") mode also needs the OpenFAST action tokenizer: it lives in the
subdirectory ``fast_tokenizer/`` (``FAST_TOKENIZER_DIR``), in the released tokenizer's layout
(``tokenizer.json`` with the byte-level BPE, ``processor_config.json`` with scale and
``min_token``; see ``fast.py``). Its
ids 0..V-1 are the VLM's ``<action_0>..<action_{V-1}>``, so V must not exceed the config's
``num_action_tokens``. It is optional: ``load_fast_tokenizer`` reads it when fast mode asks for
it, and a checkpoint without it still serves the flow and Think modes. The tiny preset carries
one (``tiny_fast_tokenizer``) trained on smooth synthetic normalised chunks.

The key map between the released tensor names and our module keys is ``keymap.py``; the
reading of safetensors files straight into the target device and dtype is ``weights_io.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor

from molmoact2_common.embodiments import EMBODIMENTS, get_embodiment
from molmoact2_policy.model.config import ConfigError, MolmoAct2Config
from molmoact2_policy.model.fast import FastActionTokenizer
from molmoact2_policy.model.keymap import (  # noqa: F401 - the key map's public names live on here
    CheckpointError,
    check_released_keys,
    from_released_state_dict,
    load_released_into,
    model_from_released,
    released_state_dict,
    to_released_state_dict,
)
from molmoact2_policy.model.model import MolmoAct2Model
from molmoact2_policy.model.normalize import NormStats, NormStatsError, synthetic_group_stats
from molmoact2_policy.model.tokenizer import MolmoAct2Tokenizer, TokenizerError
from molmoact2_policy.model.weights_io import WeightsError, WeightSource

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
FAST_TOKENIZER_DIR = "fast_tokenizer"
PREPROCESSOR_FILE = "preprocessor_config.json"  # the image processor's options
PROCESSOR_FILE = "processor_config.json"  # the processor's image-token options
# What building the module tree from a config can raise (torch: RuntimeError for a negative or
# overflowing size; transformers: ValueError/TypeError/KeyError for a malformed option).
_BUILD_ERRORS = (ValueError, RuntimeError, TypeError, KeyError, IndexError, ZeroDivisionError,
                 OverflowError)


# ---------------------------------------------------------------------------- files
def save_checkpoint(
    path: str | Path,
    model: MolmoAct2Model,
    norm_stats: NormStats,
    tokenizer: MolmoAct2Tokenizer,
    *,
    max_shard_bytes: int | None = None,
    fast_tokenizer: FastActionTokenizer | None = None,
) -> Path:
    """Write an HF-layout directory; shard the weights when they exceed ``max_shard_bytes``.

    ``fast_tokenizer`` (optional) goes to ``FAST_TOKENIZER_DIR`` for the discrete mode.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = model.config
    (path / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    tensors = {
        key: value.detach().to("cpu").contiguous().clone()
        for key, value in sorted(released_state_dict(model).items())
    }
    _write_weights(path, tensors, max_shard_bytes)
    norm_stats.save(path / config.norm_stats_filename)
    tokenizer.save(path)
    _write_processor_files(path, config)
    if fast_tokenizer is not None:
        check_fast_tokenizer(fast_tokenizer, config, source="fast_tokenizer")
        fast_tokenizer.save(path / FAST_TOKENIZER_DIR)
    return path


def _write_weights(path: Path, tensors: dict[str, Tensor], max_shard_bytes: int | None) -> None:
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    metadata = {"format": "pt"}
    if max_shard_bytes is None or total <= max_shard_bytes:
        save_file(tensors, str(path / WEIGHTS_FILE), metadata=metadata)
        return
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    weight_map = {}
    for index, shard in enumerate(shards):
        name = f"model-{index + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path / name), metadata=metadata)
        weight_map.update(dict.fromkeys(shard, name))
    index_data = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / WEIGHTS_INDEX_FILE).write_text(json.dumps(index_data, indent=2) + "\n")


def _implemented_preprocessor(config: MolmoAct2Config) -> dict[str, Any]:
    """The released image-processor options of the one image path ``preprocess`` implements."""
    vision = config.vlm.vision_config
    size = int(vision.image_size[0])
    return {
        "crop_mode": "resize",
        "size": {"height": size, "width": size},
        "patch_size": int(vision.patch_size),
        "pooling_size": [2, 2],
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }


def _write_processor_files(path: Path, config: MolmoAct2Config) -> None:
    """The released export's processor files, describing the one image path we implement."""
    preprocessor = _implemented_preprocessor(config)
    processor = {
        "image_use_col_tokens": config.image_use_col_tokens,
        "use_single_crop_col_tokens": config.use_single_crop_col_tokens,
        "use_single_crop_start_token": config.use_single_crop_start_token,
    }
    (path / PREPROCESSOR_FILE).write_text(json.dumps(preprocessor, indent=2) + "\n")
    (path / PROCESSOR_FILE).write_text(json.dumps(processor, indent=2) + "\n")


def _parse_json(file: Path) -> Any:
    """``file``'s JSON; every way reading it fails is a CheckpointError naming the file."""
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{file}: not valid JSON ({error})") from None
    except RecursionError:  # what json raises for arrays nested thousands deep
        raise CheckpointError(f"{file}: not valid JSON (nested too deep)") from None
    except OSError as error:  # a directory under the name, a dangling link, no permission
        raise CheckpointError(f"{file}: cannot be read ({error.strerror or error})") from None


def member_file(path: Path, name: Any, where: str) -> Path:
    """``path / name`` for a file name the checkpoint's own JSON gives (an index's shard,
    config.json's norm_stats_filename), refused unless it is a relative path that stays in the
    folder: a damaged or hostile file must not make the loader read /etc/passwd or another
    checkpoint. Links inside the folder are followed as they are: the Hugging Face cache links
    every file of a snapshot into its blobs/ folder."""
    parts = PurePosixPath(name).parts if isinstance(name, str) and "\0" not in name else None
    if not parts or parts[0] == "/" or ".." in parts:
        raise CheckpointError(
            f"{where}: file name {name!r} is not a relative path inside the checkpoint {path}"
        )
    return path.joinpath(*parts)


def _read_json_object(file: Path) -> dict[str, Any] | None:
    if not file.is_file():
        return None
    data = _parse_json(file)
    if not isinstance(data, dict):
        raise CheckpointError(f"{file}: expected a JSON object")
    return data


GENERATION_CONFIG_FILE = "generation_config.json"


def generation_eos_token_id(path: str | Path) -> int | None:
    """``eos_token_id`` of the checkpoint's generation_config.json (the first of a list).

    The released discrete decoding stops at the config's ``eos_token_id`` and, when the config
    has none, at the generation config's (what ``from_pretrained`` loads beside the model).
    """
    data = _read_json_object(Path(path) / GENERATION_CONFIG_FILE)
    value = None if data is None else data.get("eos_token_id")
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise CheckpointError(
            f"{Path(path) / GENERATION_CONFIG_FILE}: eos_token_id must be a token id, got {value!r}"
        )
    return value


def apply_processor_files(path: str | Path, config: MolmoAct2Config) -> None:
    """Check the checkpoint's image processor against ours and take its image-token options.

    Only crop mode "resize" (one 378x378 crop per camera, what the released robot checkpoints
    use) is implemented; the processor's own default is multi-crop, so a file that names no
    crop mode is refused too. Absent files leave the config as it is.
    """
    path = Path(path)
    preprocessor = _read_json_object(path / PREPROCESSOR_FILE)
    if preprocessor is not None:
        where = path / PREPROCESSOR_FILE
        expected = _implemented_preprocessor(config)
        defaults = {"crop_mode": "overlap-and-resize-c2"}  # the released processor's
        for key, want in expected.items():
            have = preprocessor.get(key, defaults.get(key, want))
            if key in ("image_mean", "image_std") and isinstance(have, (int, float)):
                have = [have] * 3
            same = have == want
            if isinstance(want, list) and isinstance(have, list) and len(have) == len(want):
                same = all(
                    isinstance(a, (int, float)) and abs(a - b) < 1e-6
                    for a, b in zip(have, want, strict=True)
                )
            if not same:
                raise CheckpointError(
                    f"{where}: {key} {have!r} is not supported (this policy implements {want!r})"
                )
    processor = _read_json_object(path / PROCESSOR_FILE)
    if processor is not None:
        flags = {}
        for key, default in (
            ("image_use_col_tokens", True),
            ("use_single_crop_start_token", True),
            ("use_single_crop_col_tokens", None),
        ):
            value = processor.get(key, default)
            if value is not None and not isinstance(value, bool):
                raise CheckpointError(f"{path / PROCESSOR_FILE}: {key} must be true or false")
            flags[key] = value
        config.image_use_col_tokens = flags["image_use_col_tokens"]
        config.use_single_crop_start_token = flags["use_single_crop_start_token"]
        # Unset, the released processor falls back to the multi-crop column option.
        single = flags["use_single_crop_col_tokens"]
        config.use_single_crop_col_tokens = (
            flags["image_use_col_tokens"] if single is None else single
        )


def read_config(path: str | Path) -> MolmoAct2Config:
    config_path = Path(path) / CONFIG_FILE
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: file not found")
    data = _parse_json(config_path)
    try:
        return MolmoAct2Config.from_dict(data)
    except ConfigError as error:
        raise CheckpointError(f"{config_path}: {error}") from None


def weight_files(path: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint: the single file, or every shard of the index."""
    path = Path(path)
    index_path = path / WEIGHTS_INDEX_FILE
    weight_map = _weight_map(path)
    if weight_map is not None:
        shards = sorted(set(weight_map.values()))
        files = [member_file(path, shard, str(index_path)) for shard in shards]
        for file in files:
            if not file.is_file():
                raise CheckpointError(f"{file}: file not found")
        return files
    single = path / WEIGHTS_FILE
    if not single.is_file():
        raise CheckpointError(f"{path}: neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX_FILE} found")
    return [single]


def _weight_map(path: Path) -> dict[str, str] | None:
    """The index's tensor name -> shard file name, or None for a single-file checkpoint."""
    index_path = path / WEIGHTS_INDEX_FILE
    if not index_path.is_file():
        return None
    data = _parse_json(index_path)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index_path}: malformed index (no 'weight_map' object)")
    for key, shard in weight_map.items():
        if not isinstance(shard, str):
            raise CheckpointError(
                f"{index_path}: malformed index ({key!r} maps to {shard!r}, not a file name)"
            )
    return weight_map


def open_weights(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> WeightSource:
    """A lazy view of every tensor of a checkpoint, read into ``device``/``dtype`` on access."""
    path = Path(path)
    files = weight_files(path)
    try:
        source = WeightSource.open(files, device=device, dtype=dtype)
    except WeightsError as error:
        raise CheckpointError(str(error)) from None
    weight_map = _weight_map(path)
    if weight_map is not None:
        missing = sorted(set(weight_map) - set(source))
        if missing:
            source.close()
            raise CheckpointError(
                f"{path / WEIGHTS_INDEX_FILE}: keys listed but absent from shards: {missing[:5]}"
            )
    return source


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """All tensors of a checkpoint (single file or index + shards), on CPU in the file's dtype."""
    with open_weights(path) as source:
        try:
            return {key: source.read(key) for key in source}
        except WeightsError as error:
            raise CheckpointError(str(error)) from None


def load_checkpoint(
    path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[MolmoAct2Model, MolmoAct2Config, NormStats, MolmoAct2Tokenizer]:
    """Load a checkpoint directory; every failure is a CheckpointError naming its cause.

    Each tensor is read from the safetensors files straight into ``device`` and ``dtype``
    (``weights_io``): the host never holds more than the model (on CPU) plus one tensor.
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a checkpoint directory")
    config = read_config(path)
    norm_file = member_file(
        path, config.norm_stats_filename, f"{path / CONFIG_FILE}: norm_stats_filename"
    )
    try:
        norm_stats = NormStats.from_file(norm_file)
    except NormStatsError as error:
        raise CheckpointError(str(error)) from None
    try:
        tokenizer = MolmoAct2Tokenizer.from_directory(path)
        config.check_tokenizer(tokenizer)
    except (TokenizerError, ConfigError) as error:
        raise CheckpointError(f"{path}: {error}") from None
    apply_processor_files(path, config)
    with open_weights(path, device=device, dtype=dtype) as source:
        try:
            model = model_from_released(config, source, source=str(path))
        except (CheckpointError, torch.cuda.OutOfMemoryError):
            # Out of device memory is a RuntimeError too, but says nothing about config.json.
            raise
        except WeightsError as error:
            raise CheckpointError(str(error)) from None
        except _BUILD_ERRORS as error:
            # config.json passed its own checks but still names a module torch or
            # transformers cannot build (a combination no rule covers): say which file.
            raise CheckpointError(
                f"{path / CONFIG_FILE}: config.json describes a model that cannot be built: "
                f"{type(error).__name__}: {error}"
            ) from None
    # Weights are in place already; this moves the computed buffers (kept in fp32).
    model = model.to_inference(device, dtype)
    return model, config, norm_stats, tokenizer


def check_fast_tokenizer(
    fast_tokenizer: FastActionTokenizer, config: MolmoAct2Config, source: str
) -> None:
    """Its vocabulary must fit the ``<action_k>`` family."""
    if fast_tokenizer.vocab_size > config.num_action_tokens:
        raise CheckpointError(
            f"{source}: FAST vocabulary of {fast_tokenizer.vocab_size} ids does not fit the "
            f"config's num_action_tokens {config.num_action_tokens}"
        )


def load_fast_tokenizer(path: str | Path, config: MolmoAct2Config) -> FastActionTokenizer:
    """The checkpoint's FAST action tokenizer (``FAST_TOKENIZER_DIR``), checked against ``config``.

    A checkpoint without one cannot run the discrete mode; the error names the directory.
    """
    directory = Path(path) / FAST_TOKENIZER_DIR
    if not directory.is_dir():
        raise CheckpointError(
            f"{directory}: not found; mode 'fast' needs the OpenFAST action tokenizer in the "
            f"checkpoint's {FAST_TOKENIZER_DIR}/ subdirectory (use mode 'flow' without it)"
        )
    try:
        fast_tokenizer = FastActionTokenizer.from_directory(directory)
    except (FileNotFoundError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{directory}: {error}") from None
    except Exception as error:  # the Rust tokenizer raises plain Exception subclasses
        raise CheckpointError(f"{directory}: unreadable FAST tokenizer ({error})") from None
    check_fast_tokenizer(fast_tokenizer, config, source=str(directory))
    return fast_tokenizer


# ---------------------------------------------------------------------------- tiny preset
def tiny_norm_stats(seed: int, embodiments: Sequence[str]) -> NormStats:
    """Per-embodiment synthetic stats; a tag's numbers do not depend on which others are listed."""
    order = list(EMBODIMENTS)
    tags = {}
    extras = {}
    for name in embodiments:
        spec = get_embodiment(name)
        base = seed * 1000 + order.index(name) * 10
        tags[spec.norm_tag] = {
            "state": synthetic_group_stats(spec.state_dim, base + 1),
            "action": synthetic_group_stats(spec.action_dim, base + 2),
        }
        # Without it the released code generates max_action_horizon steps for the tag (and
        # FAST decodes to that length), not the embodiment's chunk.
        extras[spec.norm_tag] = {"action_horizon": spec.horizon}
    return NormStats(norm_mode="q01_q99", tags=tags, extras=extras)


def build_tiny(
    seed: int = 0, embodiments: Sequence[str] | None = None
) -> tuple[MolmoAct2Model, MolmoAct2Config, NormStats, MolmoAct2Tokenizer]:
    """The tiny preset in memory, deterministic from ``seed``."""
    names = list(EMBODIMENTS) if embodiments is None else list(embodiments)
    config = MolmoAct2Config.tiny()
    model = MolmoAct2Model.random(config, seed)
    tokenizer = MolmoAct2Tokenizer.tiny(config.token_layout())
    return model, config, tiny_norm_stats(seed, names), tokenizer


TINY_FAST_VOCAB = 256


def tiny_fast_chunks(count_per_embodiment: int = 60, seed: int = 0) -> list[np.ndarray]:
    """Smooth synthetic normalised chunks at every embodiment's own horizon and width.

    Offset + two low sines per dim, |x| < 1. Like the released tokenizer, one BPE serves every
    embodiment, each chunk at its real action width (no padding).
    """
    rng = np.random.default_rng(seed)
    chunks = []
    for spec in EMBODIMENTS.values():
        horizon, dims = spec.horizon, spec.action_dim
        t = np.linspace(0.0, 1.0, horizon)[:, None]
        for _ in range(count_per_embodiment):
            chunk = rng.uniform(-0.3, 0.3, (1, dims)) + np.zeros((horizon, dims))
            for harmonic in (1, 2):
                amplitude = rng.uniform(-0.3, 0.3, (1, dims))
                frequency = harmonic * rng.uniform(0.2, 0.8, (1, dims))
                phase = rng.uniform(0.0, 2 * np.pi, (1, dims))
                chunk += amplitude * np.sin(2 * np.pi * frequency * t + phase)
            chunks.append(chunk)
    return chunks


@lru_cache(maxsize=1)
def _tiny_fast_tokenizer_cached() -> FastActionTokenizer:
    return FastActionTokenizer.train(tiny_fast_chunks(), vocab_size=TINY_FAST_VOCAB, scale=10.0)


def tiny_fast_tokenizer() -> FastActionTokenizer:
    """The tiny preset's FAST tokenizer: 256 ids, scale 10; the same in every process.

    It is data, not weights, so it does not depend on the weight seed. Trained once per process
    (a fraction of a second) and shared: the tokenizer is not modified after training.
    """
    return _tiny_fast_tokenizer_cached()


def write_tiny_checkpoint(
    path: str | Path,
    *,
    seed: int = 0,
    embodiments: Sequence[str] | None = None,
    max_shard_bytes: int | None = None,
) -> Path:
    """Write the tiny preset (a few MB) as an HF-layout directory; deterministic from ``seed``.

    Includes the tiny FAST tokenizer (``FAST_TOKENIZER_DIR``), so every mode can load it.
    """
    model, _, norm_stats, tokenizer = build_tiny(seed, embodiments)
    return save_checkpoint(
        path,
        model,
        norm_stats,
        tokenizer,
        max_shard_bytes=max_shard_bytes,
        fast_tokenizer=tiny_fast_tokenizer(),
    )


# ---------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """``molmoact2-checkpoint tiny --out DIR`` / ``molmoact2-checkpoint inspect DIR``."""
    parser = argparse.ArgumentParser(
        prog="molmoact2-checkpoint", description="Write or inspect MolmoAct2 checkpoints."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("tiny", help="write a tiny random checkpoint (tests, demos)")
    tiny.add_argument("--out", required=True, help="output directory")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument(
        "--embodiment", action="append", choices=sorted(EMBODIMENTS),
        help="norm-stats tag to include (repeatable; default: all)",
    )
    tiny.add_argument("--max-shard-mb", type=float, default=None, help="shard above this size")
    inspect = sub.add_parser("inspect", help="load a checkpoint and print a summary")
    inspect.add_argument("path")
    args = parser.parse_args(argv)
    try:
        if args.command == "tiny":
            shard = None if args.max_shard_mb is None else int(args.max_shard_mb * 1e6)
            out = write_tiny_checkpoint(
                args.out, seed=args.seed, embodiments=args.embodiment, max_shard_bytes=shard
            )
            size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
            sys.stdout.write(f"wrote {out} ({size / 1e6:.1f} MB)\n")
        else:
            model, config, stats, tokenizer = load_checkpoint(args.path)
            summary: dict[str, Any] = {
                "parameters": sum(p.numel() for p in model.parameters()),
                "vlm_layers": config.num_vlm_layers,
                "expert_width": config.action_expert.hidden_size,
                "norm_mode": stats.norm_mode,
                "norm_tags": sorted(stats.tags),
                "vocab": tokenizer.vocab_size,
                "fast_tokenizer": None,
            }
            if (Path(args.path) / FAST_TOKENIZER_DIR).is_dir():
                fast = load_fast_tokenizer(args.path, config)
                summary["fast_tokenizer"] = {"vocab": fast.vocab_size, "scale": fast.scale}
            sys.stdout.write(json.dumps(summary, indent=2) + "\n")
    except CheckpointError as error:
        sys.stderr.write(f"error: {error}\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
