"""Damaged checkpoints from the outside: each gives one CheckpointError naming the file and the
fault, reads nothing outside the checkpoint folder, and never unpickles.

The cases are the ones the adversarial probe of checkpoint loading found reaching the caller as a
raw TypeError / RecursionError / IsADirectoryError / AttributeError, loading silently (NaN
weights, overlapping tensors, an unknown BOS token that failed the first act), or reading files
outside the folder (an index shard or norm_stats_filename of ``../x`` or ``/etc/passwd``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from molmoact2_policy.model.checkpoint import (
    CheckpointError,
    load_checkpoint,
    write_tiny_checkpoint,
)
from molmoact2_policy.model.loader import load_policy

torch.set_num_threads(1)

KEY = "model.transformer.blocks.0.self_attn.att_proj.weight"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
DEEP = "[" * 100_000 + "]" * 100_000  # json raises RecursionError, not JSONDecodeError

# Files opened while a case loads (sys.addaudithook cannot be removed: it records only while on).
_OPENED: list[str] = []
_RECORDING = [False]


def _audit(event: str, args: tuple) -> None:
    if _RECORDING[0] and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("damaged")
    single = write_tiny_checkpoint(root / "single", seed=0, embodiments=["droid"])
    sharded = write_tiny_checkpoint(
        root / "sharded", seed=0, embodiments=["droid"], max_shard_bytes=2_000_000
    )
    return single, sharded


def _weights(path: Path) -> dict[str, torch.Tensor]:
    # Cloned: load_file maps the file, which is then rewritten in place.
    return {key: value.clone() for key, value in load_file(str(path / WEIGHTS)).items()}


def _rewrite_header(path: Path, edit: Callable[[dict], object]) -> None:
    data = (path / WEIGHTS).read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    edit(header)
    text = json.dumps(header).encode()
    (path / WEIGHTS).write_bytes(struct.pack("<Q", len(text)) + text + data[8 + length :])


def _header_bytes(path: Path, text: str) -> None:
    data = (path / WEIGHTS).read_bytes()
    body = data[8 + int.from_bytes(data[:8], "little") :]
    (path / WEIGHTS).write_bytes(struct.pack("<Q", len(text)) + text.encode() + body)


def _set_weight(path: Path, row: int, value: float) -> None:
    tensors = _weights(path)
    tensors[KEY][row, 0] = value
    save_file(tensors, str(path / WEIGHTS))


def _overlap(header: dict) -> None:
    # The last 512 bytes of one tensor claimed by a (128,) float32 neighbour's name.
    end = header[KEY]["data_offsets"][1]
    other = next(
        name
        for name, info in header.items()
        if name not in (KEY, "__metadata__") and info["dtype"] == "F32" and info["shape"] == [128]
    )
    header[other]["data_offsets"] = [end - 512, end]


def _json_edit(file: str, edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        data = json.loads((path / file).read_text())
        edit(data)
        (path / file).write_text(json.dumps(data))

    return apply


def _write(file: str, content: str | bytes) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        target = path / file
        target.write_bytes(content if isinstance(content, bytes) else content.encode())

    return apply


def _first_shard(edit: Callable[[Path, dict, str], None]) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        index = json.loads((path / INDEX).read_text())
        key = next(iter(index["weight_map"]))
        edit(path, index, key)
        (path / INDEX).write_text(json.dumps(index))

    return apply


def _outside_shard(absolute: bool) -> Callable[[Path], None]:
    def edit(path: Path, index: dict, key: str) -> None:
        # A complete, valid shard just outside the folder: the old loader read it and loaded.
        shard = index["weight_map"][key]
        outside = path.parent / f"outside-{path.name}.safetensors"
        shutil.move(path / shard, outside)
        name = str(outside) if absolute else f"../{outside.name}"
        index["weight_map"] = {k: name if v == shard else v for k, v in index["weight_map"].items()}

    return _first_shard(edit)


def _outside_norm_stats(absolute: bool) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        outside = path.parent / f"outside-{path.name}.json"
        shutil.move(path / "norm_stats.json", outside)
        name = str(outside) if absolute else f"../{outside.name}"
        _json_edit("config.json", lambda d: d.__setitem__("norm_stats_filename", name))(path)

    return apply


def _directory_in_place_of(file: str) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        (path / file).unlink()
        (path / file).mkdir()

    return apply


NOT_INSIDE = r"file name .* is not a relative path inside the checkpoint"
CASES: dict[str, tuple[bool, Callable[[Path], None], str, str]] = {
    # name: (sharded, damage, file named, message)
    "dtype-a-list": (
        False,
        lambda p: _rewrite_header(p, lambda h: h[KEY].__setitem__("dtype", ["F32"])),
        WEIGHTS,
        r"unsupported dtype \['F32'\]",
    ),
    "offsets-bools": (
        False,
        lambda p: _rewrite_header(p, lambda h: h[KEY].__setitem__("data_offsets", [False, True])),
        WEIGHTS,
        r"malformed data_offsets \[False, True\]",
    ),
    "tensors-overlap": (
        False,
        lambda p: _rewrite_header(p, _overlap),
        WEIGHTS,
        r"tensors .* and .* overlap",
    ),
    "header-nested-deep": (False, lambda p: _header_bytes(p, DEEP), WEIGHTS, "nested too deep"),
    "weight-nan": (
        False,
        lambda p: _set_weight(p, 3, float("nan")),
        WEIGHTS,
        rf"tensor '{KEY}' holds non-finite values \(1 NaN, 0 inf",
    ),
    "weight-inf": (
        False,
        lambda p: _set_weight(p, 0, float("-inf")),
        WEIGHTS,
        r"holds non-finite values \(0 NaN, 1 inf",
    ),
    "shard-dot-dot": (True, _outside_shard(absolute=False), INDEX, NOT_INSIDE),
    "shard-absolute": (True, _outside_shard(absolute=True), INDEX, NOT_INSIDE),
    "shard-etc-passwd": (
        True,
        _first_shard(lambda p, i, k: i["weight_map"].__setitem__(k, "../" * 30 + "etc/passwd")),
        INDEX,
        NOT_INSIDE,
    ),
    "shard-empty-name": (
        True,
        _first_shard(lambda p, i, k: i["weight_map"].__setitem__(k, "")),
        INDEX,
        NOT_INSIDE,
    ),
    "shard-name-a-number": (
        True,
        _first_shard(lambda p, i, k: i["weight_map"].__setitem__(k, 5)),
        INDEX,
        r"maps to 5, not a file name",
    ),
    "index-nested-deep": (True, _write(INDEX, DEEP), INDEX, "nested too deep"),
    "index-not-utf8": (True, _write(INDEX, b'{"weight_map": {"\xff": 1}}'), INDEX, "not valid"),
    "index-no-weight-map": (True, _write(INDEX, "[]"), INDEX, "no 'weight_map' object"),
    "norm-file-dot-dot": (False, _outside_norm_stats(absolute=False), "config.json", NOT_INSIDE),
    "norm-file-absolute": (False, _outside_norm_stats(absolute=True), "config.json", NOT_INSIDE),
    "norm-file-empty": (
        False,
        _json_edit("config.json", lambda d: d.__setitem__("norm_stats_filename", "")),
        "config.json",
        NOT_INSIDE,
    ),
    **{
        f"config-eos-{value!r}": (
            False,
            _json_edit("config.json", lambda d, value=value: d.__setitem__("eos_token_id", value)),
            "config.json",
            rf"eos_token_id={re.escape(text)} must ",
        )
        for value, text in [
            ("abc", "'abc'"),  # failed the first act (the expert's context mask)
            (3.5, "3.5"),  # truncated to token 3
            (True, "true"),
            ([], "[]"),
            (10**8, "100000000"),
        ]
    },
    # A million layers: refused from the weight names before any module is built (10k took
    # 90 s and 1.6 GB of meta modules before the key check named the fault).
    "config-a-million-layers": (
        False,
        _json_edit(
            "config.json",
            lambda d: (
                d["text_config"].__setitem__("num_hidden_layers", 10**6),
                d["action_expert_config"].__setitem__("num_layers", 10**6),
            ),
        ),
        "",  # the folder: the count is config.json's against the weights' names
        r"config\.json's text_config\.num_hidden_layers=1000000 but the weights hold 3 ",
    ),
    "config-nested-deep": (False, _write("config.json", DEEP), "config.json", "nested too deep"),
    "norm-stats-a-directory": (
        False,
        _directory_in_place_of("norm_stats.json"),
        "norm_stats.json",
        "cannot be read",
    ),
    "norm-stats-nested-deep": (
        False,
        _write("norm_stats.json", DEEP),
        "norm_stats.json",
        "nested too deep",
    ),
    "norm-mode-a-list": (
        False,
        _json_edit("norm_stats.json", lambda d: d.__setitem__("norm_mode", ["q01_q99"])),
        "norm_stats.json",
        r"unknown norm_mode \['q01_q99'\]",
    ),
    "tokenizer-config-a-list": (
        False,
        _write("tokenizer_config.json", "[]"),
        "tokenizer_config.json",
        "expected a JSON object",
    ),
    "tokenizer-config-not-utf8": (
        False,
        _write("tokenizer_config.json", b"\xff"),
        "tokenizer_config.json",
        "not valid JSON",
    ),
    "tokenizer-config-nested-deep": (
        False,
        _write("tokenizer_config.json", DEEP),
        "tokenizer_config.json",
        "nested too deep",
    ),
    "bos-token-unknown": (
        False,
        _write("tokenizer_config.json", '{"bos_token": "<s>"}'),
        "tokenizer_config.json",
        r"bos_token '<s>' is not a token of tokenizer\.json",
    ),
    "preprocessor-nested-deep": (
        False,
        _write("preprocessor_config.json", DEEP),
        "preprocessor_config.json",
        "nested too deep",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_checkpoint_is_named_and_nothing_outside_is_read(tiny_dirs, tmp_path, case):
    sharded, damage, file, message = CASES[case]
    path = tmp_path / "ckpt"
    shutil.copytree(tiny_dirs[sharded], path)
    damage(path)
    _OPENED.clear()
    _RECORDING[0] = True
    try:
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
    finally:
        _RECORDING[0] = False
    text = str(info.value)
    assert f"{path / file}" in text, text
    assert re.search(message, text), text
    outside = [name for name in _OPENED if "outside-" in name or name.endswith("/etc/passwd")]
    assert not outside, f"read outside the checkpoint: {outside}"


def test_links_inside_the_folder_are_followed_as_the_hub_cache_lays_them_out(tiny_dirs, tmp_path):
    # huggingface_hub's cache: snapshots/<rev>/<file> -> ../../blobs/<hash>. The rule refuses
    # names that leave the folder, not links that do.
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots" / "rev"
    shutil.copytree(tiny_dirs[True], blobs)
    snapshot.mkdir(parents=True)
    for file in blobs.iterdir():
        if file.is_file():
            (snapshot / file.name).symlink_to(os.path.relpath(file, snapshot))
    model, *_ = load_checkpoint(snapshot)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_a_weight_beyond_float16_is_named_when_loading_in_float16(tiny_dirs, tmp_path):
    path = tmp_path / "ckpt"
    shutil.copytree(tiny_dirs[False], path)
    _set_weight(path, 1, 1e6)  # finite in the file's float32, inf as float16
    load_checkpoint(path)
    with pytest.raises(
        CheckpointError, match=rf"'{KEY}' holds non-finite values as torch\.float16"
    ):
        load_checkpoint(path, dtype=torch.float16)


def test_a_generation_eos_beyond_the_lm_head_names_the_file(tiny_dirs, tmp_path):
    # The fast mode's decoder checked the range itself with a bare ValueError naming no file.
    path = tmp_path / "ckpt"
    shutil.copytree(tiny_dirs[False], path)
    (path / "generation_config.json").write_text('{"eos_token_id": 99999999}')
    with pytest.raises(CheckpointError, match=r"generation_config\.json: eos_token_id 99999999 "):
        load_policy(str(path), "droid", mode="fast")


def test_a_checkpoint_without_any_eos_is_refused_for_the_fast_mode_naming_both_files(
    tiny_dirs, tmp_path
):
    # The released discrete decoding stops at EOS; the decoder raised a bare ValueError.
    path = tmp_path / "ckpt"
    shutil.copytree(tiny_dirs[False], path)
    with pytest.raises(
        CheckpointError, match=r"config\.json and generation_config\.json have no eos_token_id"
    ):
        load_policy(str(path), "droid", mode="fast")


@pytest.mark.parametrize(
    ("key", "value"), [("scale", "NaN"), ("scale", "Infinity"), ("min_token", "NaN")]
)
def test_a_fast_tokenizer_setting_that_is_not_finite_is_named(tiny_dirs, tmp_path, key, value):
    # json.loads reads NaN / Infinity: a NaN scale loaded and made every decoded action NaN.
    path = tmp_path / "ckpt"
    shutil.copytree(tiny_dirs[False], path)
    (path / "generation_config.json").write_text('{"eos_token_id": 0}')
    settings = path / "fast_tokenizer" / "processor_config.json"
    text = settings.read_text()
    old = json.dumps({key: json.loads(text)[key]})[1:-1]  # '"scale": 10.0'
    assert old in text
    settings.write_text(text.replace(old, f'"{key}": {value}'))
    with pytest.raises(CheckpointError, match=rf"processor_config\.json: {key} must be finite"):
        load_policy(str(path), "droid", mode="fast")


class _Marker:
    """Unpickling it creates ``path``: the proof a loader ran pickle on the file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


@pytest.mark.parametrize("where", ["model.safetensors", "index shard", "next to the weights"])
def test_a_pickle_offered_for_the_weights_is_refused_and_never_unpickled(
    tiny_dirs, tmp_path, where
):
    import pickle

    marker = tmp_path / "unpickled"
    path = tmp_path / "ckpt"
    shutil.copytree(tiny_dirs[where == "index shard"], path)
    payload = pickle.dumps(_Marker(str(marker)))
    if where == "model.safetensors":
        (path / WEIGHTS).write_bytes(payload)
        message = r"model\.safetensors: unreadable safetensors"
    elif where == "index shard":
        (path / "pytorch_model.bin").write_bytes(payload)
        _first_shard(lambda p, i, k: i["weight_map"].__setitem__(k, "pytorch_model.bin"))(path)
        message = r"pytorch_model\.bin: unreadable safetensors"
    else:
        (path / WEIGHTS).unlink()
        (path / "pytorch_model.bin").write_bytes(payload)
        message = r"neither model\.safetensors nor model\.safetensors\.index\.json found"
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)
    assert not marker.exists()
