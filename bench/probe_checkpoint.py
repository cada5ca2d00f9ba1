"""Outside-in probe of checkpoint loading with malformed files (not part of CI).

Writes the tiny checkpoint (``write_tiny_checkpoint``) once, then for each case copies it,
breaks one thing (a config.json value, a norm_stats.json statistic of the tag the embodiment
uses or of another tag, the tokenizer or processor files, the safetensors header or data),
loads it with ``load_policy`` and, when that succeeds, runs one ``act`` on blank images. Each
case ends in one outcome:

* ``refused``: ``load_checkpoint`` raised CheckpointError (what the policy node reports
  clearly, naming the file);
* ``mismatch``: the checkpoint loaded but does not serve the embodiment: EmbodimentMismatchError
  (says what the embodiment asks for, what the checkpoint has, which parameter to change);
* ``load-error``: another exception while loading (a raw torch/transformers error, or a
  ValueError from the policy's own compatibility checks);
* ``acted``: loaded and acted with finite actions (fine where the change is harmless);
* ``nonfinite``: acted, with NaN/inf actions;
* ``overflow``: acted, with finite float64 actions that are inf as float32 (the released model's
  dtype): 1e300 radians is as wrong as inf, only harder to spot;
* ``act-error``: loaded, then ``act`` raised;
* ``timeout`` / ``memory``: ran past ``--timeout`` seconds, or past the address-space limit.

Cases run in this process (hundreds of loads; a child per case would cost an interpreter and
a torch import each). ``--mem-gb`` caps the address space so a case that allocates a huge
tensor fails with MemoryError/RuntimeError instead of taking the host down.

    .venv/bin/python bench/probe_checkpoint.py [--mode flow] [--only text_config] [--json f]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import resource
import shutil
import signal
import struct
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from molmoact2_common.embodiments import get_embodiment
from molmoact2_policy.model import released_config
from molmoact2_policy.model.checkpoint import (
    CONFIG_FILE,
    PREPROCESSOR_FILE,
    PROCESSOR_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    write_tiny_checkpoint,
)
from molmoact2_policy.model.compat import EmbodimentMismatchError
from molmoact2_policy.model.config import MolmoAct2Config
from molmoact2_policy.model.loader import load_policy

LOG = logging.getLogger("probe_checkpoint")
NORM_FILE = "norm_stats.json"
SUB_CONFIGS = ("vit_config", "adapter_config", "text_config", "action_expert_config")
# Values tried for every number of config.json: zero, negative, huge, wrong JSON types.
BAD_INTEGERS: tuple[Any, ...] = (0, -1, 10**9, "x", None, 1.5, True)
BAD_FLOATS: tuple[Any, ...] = (0, -1, 1e9, float("nan"), float("inf"), "x", None)
OUTCOMES = (
    "refused", "mismatch", "load-error", "acted", "nonfinite", "overflow", "act-error", "timeout",
    "memory",
)

Mutation = Callable[[Path], None]


class _TimeoutError(Exception):
    pass


def _on_alarm(*_: Any) -> None:
    raise _TimeoutError


# ---------------------------------------------------------------------------- mutations
def edit_json(name: str, change: Callable[[Any], object]) -> Mutation:
    """Load ``name``, let ``change`` edit it in place (its return value is ignored), write it."""

    def mutate(directory: Path) -> None:
        file = directory / name
        data = json.loads(file.read_text())
        change(data)
        file.write_text(json.dumps(data))

    return mutate


def edit_bytes(name: str, change: Callable[[bytes], bytes]) -> Mutation:
    def mutate(directory: Path) -> None:
        file = directory / name
        file.write_bytes(change(file.read_bytes()))

    return mutate


def delete(name: str) -> Mutation:
    return lambda directory: (directory / name).unlink()


def set_at(path: tuple[str, ...], value: Any) -> Callable[[Any], None]:
    def change(data: Any) -> None:
        for key in path[:-1]:
            data = data[key]
        data[path[-1]] = value

    return change


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---------------------------------------------------------------------------- cases
def _read_keys(section: str, values: dict[str, Any]) -> list[str]:
    """The keys of a config.json section that change what is computed.

    Skipped: sub-config keys the released rules ``Ignore`` (dropout, init ranges...) and
    top-level keys that are neither ours nor value-checked (kept and written back unread).
    """
    if section:
        rules = released_config.RULES[section]
        return [key for key in values if not isinstance(rules.get(key), released_config.Ignore)]
    ours = {item.name for item in dataclasses.fields(MolmoAct2Config)}
    return [key for key in values if key in ours or key in released_config.VALUE_RULES[""]]


def config_cases(config: dict[str, Any], all_keys: bool) -> Iterator[tuple[str, Mutation]]:
    yield "config.json missing", delete(CONFIG_FILE)
    yield "config.json truncated", edit_bytes(CONFIG_FILE, lambda raw: raw[:100])
    yield "config.json is an array", edit_bytes(CONFIG_FILE, lambda _: b"[1, 2]")
    for key in config:
        yield f"config.json without {key}", edit_json(CONFIG_FILE, lambda d, k=key: d.pop(k))
    sections: list[tuple[tuple[str, ...], dict[str, Any]]] = [((), config)]
    sections += [((name,), config[name]) for name in SUB_CONFIGS if isinstance(config[name], dict)]
    for prefix, values in sections:
        keys = list(values) if all_keys else _read_keys(".".join(prefix), values)
        for key in keys:
            value = values[key]
            if not _is_number(value):
                continue
            bad_values = BAD_INTEGERS if isinstance(value, int) else BAD_FLOATS
            where = ".".join((*prefix, key))
            for bad in bad_values:
                yield f"{where}={bad!r}", edit_json(CONFIG_FILE, set_at((*prefix, key), bad))


def _stat_lists(entry: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(entry, dict):
        for key, value in entry.items():
            yield from _stat_lists(value, (*path, key))
    elif isinstance(entry, list) and entry and all(_is_number(item) for item in entry):
        yield path


def norm_cases(stats: dict[str, Any], used_tag: str) -> Iterator[tuple[str, Mutation]]:
    """Every statistic of the used tag, broken six ways; one NaN per other tag."""
    yield "norm_stats.json missing", delete(NORM_FILE)
    yield "norm_stats.json truncated", edit_bytes(NORM_FILE, lambda raw: raw[:50])
    tags = stats["metadata_by_tag"]

    def first(path: tuple[str, ...], value: Any) -> Mutation:
        def change(data: Any) -> None:
            node = data
            for key in path:
                node = node[key]
            node[0] = value

        return edit_json(NORM_FILE, change)

    def replace(path: tuple[str, ...], make: Callable[[list], Any]) -> Mutation:
        def change(data: Any) -> None:
            node = data
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = make(node[path[-1]])

        return edit_json(NORM_FILE, change)

    for tag in tags:
        for path in _stat_lists(tags[tag], ("metadata_by_tag", tag)):
            name = "norm " + ".".join(path[1:])
            if tag != used_tag:
                yield f"{name} NaN (unused tag)", first(path, float("nan"))
                break
            yield f"{name} NaN", first(path, float("nan"))
            yield f"{name} inf", first(path, float("inf"))
            yield f"{name} -inf", first(path, float("-inf"))
            yield f"{name} one value short", replace(path, lambda values: values[:-1])
            yield f"{name} a string", replace(path, lambda _: "x")
            yield f"{name} 1e300", first(path, 1e300)
            # Finite in float64, inf in the released float32 arithmetic.
            yield f"{name} 3.5e38", first(path, 3.5e38)
    mode = stats.get("norm_mode", "min_max")
    low, high = {
        "min_max": ("min", "max"),
        "q01_q99": ("q01", "q99"),
        "q10_q90": ("q10", "q90"),
        "mean_std": ("mean", "std"),
    }.get(mode, (None, None))
    if low is None:
        return
    entry = tags[used_tag]
    for group in ("state", "action", "state_stats", "action_stats"):
        if group not in entry:
            continue
        base = ("metadata_by_tag", used_tag, group)
        if mode == "mean_std":
            yield (
                f"norm {used_tag}.{group} std all zero",
                replace((*base, high), lambda values: [0.0] * len(values)),
            )
            yield f"norm {used_tag}.{group} std 1e36", replace((*base, high), _first_to(1e36))
            continue
        # Both bounds fit float32; the range (and 2 x range, un-normalising) does not.
        yield (
            f"norm {used_tag}.{group} range overflows float32 ({low}=-2e38, {high}=2e38)",
            edit_json(NORM_FILE, lambda d, b=base: _set_firsts(d, b, {low: -2e38, high: 2e38})),
        )
        yield (
            f"norm {used_tag}.{group} zero range ({low}={high})",
            replace((*base, high), lambda _, b=base, lo=low: _lookup(stats, (*b, lo))),
        )
        yield (
            f"norm {used_tag}.{group} inverted range ({low}>{high})",
            edit_json(NORM_FILE, lambda d, b=base: _swap(d, b, low, high)),
        )


def mismatch_cases(stats: dict[str, Any], used_tag: str) -> Iterator[tuple[str, Mutation]]:
    """Valid files that do not serve the embodiment: tag renamed, dims off, chunk length off."""
    entry = stats["metadata_by_tag"][used_tag]
    yield (
        f"norm tag {used_tag} renamed (embodiment mismatch)",
        edit_json(NORM_FILE, lambda d: d["metadata_by_tag"].update(
            other_robot=d["metadata_by_tag"].pop(used_tag)
        )),
    )
    for group in ("state", "action", "state_stats", "action_stats"):
        if group in entry:
            yield (
                f"norm {used_tag}.{group} every list one dim short (embodiment mismatch)",
                edit_json(NORM_FILE, lambda d, g=group: _drop_last_dim(
                    d["metadata_by_tag"][used_tag][g]
                )),
            )
    horizon = entry.get("action_horizon")
    if isinstance(horizon, int):
        yield (
            f"norm {used_tag}.action_horizon {horizon * 2} (embodiment mismatch)",
            edit_json(
                NORM_FILE, set_at(("metadata_by_tag", used_tag, "action_horizon"), horizon * 2)
            ),
        )
        yield (
            f"norm {used_tag}.n_action_steps {horizon + 1} (embodiment mismatch)",
            edit_json(
                NORM_FILE, set_at(("metadata_by_tag", used_tag, "n_action_steps"), horizon + 1)
            ),
        )


def _drop_last_dim(group: dict[str, Any]) -> None:
    for value in group.values():
        if isinstance(value, list) and value:
            value.pop()


def _first_to(value: float) -> Callable[[list], list]:
    return lambda values: [value, *values[1:]]


def _set_firsts(data: Any, path: tuple[str, ...], values: dict[str, float]) -> None:
    for key in path:
        data = data[key]
    for key, value in values.items():
        data[key][0] = value


def _lookup(data: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        data = data[key]
    return copy.deepcopy(data)


def _swap(data: Any, path: tuple[str, ...], first: str, second: str) -> None:
    for key in path:
        data = data[key]
    data[first], data[second] = data[second], data[first]


def file_cases(directory: Path) -> Iterator[tuple[str, Mutation]]:
    yield "tokenizer.json missing", delete("tokenizer.json")
    yield "tokenizer.json truncated", edit_bytes("tokenizer.json", lambda raw: raw[:1000])
    yield "tokenizer_config.json missing", delete("tokenizer_config.json")
    yield f"{PREPROCESSOR_FILE} missing", delete(PREPROCESSOR_FILE)
    for name in (PREPROCESSOR_FILE, PROCESSOR_FILE):
        for key in json.loads((directory / name).read_text()):
            for bad in (None, -1):
                yield f"{name} {key}={bad!r}", edit_json(name, set_at((key,), bad))


def weights_cases(directory: Path) -> Iterator[tuple[str, Mutation]]:
    raw = (directory / WEIGHTS_FILE).read_bytes()
    length = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + length])
    body = raw[8 + length :]
    keys = [key for key in header if key != "__metadata__"]

    def rewrite(change: Callable[[dict, bytearray], None]) -> Mutation:
        def mutate(target: Path) -> None:
            new_header, new_body = copy.deepcopy(header), bytearray(body)
            change(new_header, new_body)
            text = json.dumps(new_header).encode()
            data = struct.pack("<Q", len(text)) + text + bytes(new_body)
            (target / WEIGHTS_FILE).write_bytes(data)

        return mutate

    yield "safetensors empty", edit_bytes(WEIGHTS_FILE, lambda _: b"")
    yield "safetensors cut in the header", edit_bytes(WEIGHTS_FILE, lambda data: data[:20])
    yield "safetensors cut in half", edit_bytes(WEIGHTS_FILE, lambda data: data[: len(data) // 2])
    yield (
        "safetensors header length 2^40",
        edit_bytes(WEIGHTS_FILE, lambda data: struct.pack("<Q", 1 << 40) + data[8:]),
    )
    for key in keys[:: max(1, len(keys) // 8)]:
        yield f"safetensors without {key}", rewrite(lambda h, _, k=key: h.pop(k))
        yield f"safetensors {key} reshaped", rewrite(lambda h, _, k=key: _reshape(h[k]))
        yield f"safetensors {key} as I32", rewrite(lambda h, _, k=key: h[k].update(dtype="I32"))
        yield (
            f"safetensors {key} offsets past the end",
            rewrite(lambda h, _, k=key: h[k].update(data_offsets=[0, 10**12])),
        )
    yield (
        "safetensors extra tensor",
        rewrite(
            lambda h, _: h.update(
                {"extra.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
            )
        ),
    )

    def nan_everywhere(new_header: dict, new_body: bytearray) -> None:
        for key in keys:
            start, end = new_header[key]["data_offsets"]
            if new_header[key]["dtype"] == "F32":
                new_body[start:end] = np.full((end - start) // 4, np.nan, np.float32).tobytes()

    yield "safetensors every F32 weight NaN", rewrite(nan_everywhere)


def _reshape(entry: dict[str, Any]) -> None:
    shape = entry["shape"]
    entry["shape"] = (
        shape[::-1] if len(shape) > 1 and shape[0] != shape[-1] else [*shape[:-1], shape[-1] + 1]
    )


# ---------------------------------------------------------------------------- running
def run_case(directory: Path, embodiment: str, mode: str) -> tuple[str, str]:
    """(outcome, detail) of loading ``directory`` and acting once."""
    try:
        policy = load_policy(str(directory), embodiment, mode=mode)
    except CheckpointError as error:
        return "refused", str(error)
    except EmbodimentMismatchError as error:
        return "mismatch", f"{type(error).__name__}: {error}"
    except MemoryError as error:
        return "memory", str(error)
    except Exception as error:  # what escapes is what the probe reports
        return "load-error", f"{type(error).__name__}: {error}"
    spec = policy.embodiment
    images = {name: np.zeros((480, 640, 3), np.uint8) for name in spec.camera_names}
    state = np.zeros(spec.state_dim, np.float32)
    try:
        chunk = policy.act(images, state, "pick up the cube")
    except MemoryError as error:
        return "memory", str(error)
    except Exception as error:
        return "act-error", f"{type(error).__name__}: {error}"
    positions = np.asarray(chunk.positions)
    if not np.isfinite(positions).all():
        outcome = "nonfinite"
    elif (np.abs(positions) > np.finfo(np.float32).max).any():
        outcome = "overflow"
    else:
        outcome = "acted"
    return outcome, f"actions {positions.shape}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--embodiment", default="yam_bimanual")
    parser.add_argument("--mode", default="flow", choices=("flow", "think", "fast"))
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="run only cases whose name contains this (repeatable)",
    )
    parser.add_argument(
        "--all-keys",
        action="store_true",
        help="also break the numbers config.json carries but nothing reads",
    )
    parser.add_argument("--timeout", type=int, default=120, help="seconds per case")
    parser.add_argument("--mem-gb", type=float, default=8.0, help="address-space limit")
    parser.add_argument("--json", type=Path, help="write {case: [outcome, detail]} here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # The library's own warnings (unknown keys...) would drown the table.
    logging.getLogger("molmoact2_policy").setLevel(logging.ERROR)
    limit = int(args.mem_gb * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    signal.signal(signal.SIGALRM, _on_alarm)

    with tempfile.TemporaryDirectory(prefix="probe_checkpoint_") as tmp:
        base = write_tiny_checkpoint(Path(tmp) / "base")
        config = json.loads((base / CONFIG_FILE).read_text())
        stats = json.loads((base / NORM_FILE).read_text())
        used_tag = get_embodiment(args.embodiment).norm_tag
        cases = [
            *config_cases(config, args.all_keys),
            *norm_cases(stats, used_tag),
            *mismatch_cases(stats, used_tag),
            *file_cases(base),
            *weights_cases(base),
        ]
        results: dict[str, tuple[str, str]] = {}
        for name, mutate in cases:
            if args.only and not any(part in name for part in args.only):
                continue
            case_dir = Path(tmp) / "case"
            shutil.rmtree(case_dir, ignore_errors=True)
            shutil.copytree(base, case_dir)
            mutate(case_dir)
            signal.alarm(args.timeout)
            try:
                results[name] = run_case(case_dir, args.embodiment, args.mode)
            except _TimeoutError:
                results[name] = ("timeout", f"> {args.timeout} s")
            finally:
                signal.alarm(0)
            outcome, detail = results[name]
            LOG.info("%-58s %-10s %s", name[:58], outcome, " ".join(detail.split())[:150])

    counts = Counter(outcome for outcome, _ in results.values())
    LOG.info("")
    LOG.info(
        "%d cases (%s mode, %s): %s",
        len(results),
        args.mode,
        args.embodiment,
        ", ".join(f"{outcome} {counts[outcome]}" for outcome in OUTCOMES if counts[outcome]),
    )
    LOG.info("not refused by CheckpointError: %d", len(results) - counts["refused"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
