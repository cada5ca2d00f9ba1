"""safetensors checkpoints read tensor by tensor, straight into the target device and dtype.

``safetensors.torch.load_file`` returns every tensor of a file on the host at once, in the file's
dtype, so loading a 4B model for a GPU in bf16 used to hold the whole model on the host first
(twice that when an fp32 copy was made on the way). Here a ``WeightSource`` parses the file
headers only (the format: an 8-byte little-endian header length, a JSON header mapping each
name to dtype, shape and byte range, then the raw little-endian data) and reads one tensor at a
time with ``readinto`` when asked: host memory holds at most the tensor in flight beyond the
model itself. Plain reads, not mmap: mapped pages of a file count towards the process's resident
memory until unmapped, which would double the peak for a CPU load.

A header whose tensors overlap, or a floating tensor holding NaN or inf (in the file, or after
the cast to the target dtype), is refused with the file and tensor named.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
# A header is a few hundred kB even for the 4B model; this only rejects garbage lengths.
_MAX_HEADER_BYTES = 100_000_000


class WeightsError(ValueError):
    """A safetensors file is malformed; the message names the file and what is wrong."""


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lies: ``nbytes`` raw bytes from absolute offset ``offset`` of ``file``."""

    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int


def read_header(path: str | Path) -> dict[str, TensorEntry]:
    """The tensors a safetensors file declares, checked against its size; no data is read."""
    path = Path(path)
    unreadable = f"{path}: unreadable safetensors"
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) != 8:
                raise WeightsError(f"{unreadable} (shorter than a header)")
            length = int.from_bytes(prefix, "little")
            if length <= 0 or length > min(_MAX_HEADER_BYTES, size - 8):
                raise WeightsError(f"{unreadable} (header length {length} does not fit the file)")
            header = json.loads(handle.read(length))
    except OSError as error:
        raise WeightsError(f"{unreadable} ({error})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise WeightsError(f"{unreadable} (header is not valid JSON: {error})") from None
    except RecursionError:
        # json raises it, not JSONDecodeError, for arrays nested thousands deep.
        raise WeightsError(f"{unreadable} (header JSON is nested too deep)") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{unreadable} (header is not a JSON object)")
    data_start = 8 + length
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        entries[name] = _entry(path, name, info, data_start, size)
    _check_disjoint(path, entries)
    return entries


def _count(value: Any) -> bool:
    """A JSON integer >= 0; ``true`` is an int to Python but no size or offset."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_disjoint(path: Path, entries: Mapping[str, TensorEntry]) -> None:
    """Refuse tensors whose byte ranges overlap, as the safetensors library does: two weights
    sharing bytes is a damaged (or hand-made) file, never one the writers produce."""
    ranges = sorted((e.offset, e.offset + e.nbytes, n) for n, e in entries.items() if e.nbytes)
    for (_, end, first), (begin, _, second) in itertools.pairwise(ranges):
        if begin < end:
            raise WeightsError(
                f"{path}: tensors {first!r} and {second!r} overlap in the file's data"
            )


def _entry(path: Path, name: str, info: Any, data_start: int, size: int) -> TensorEntry:
    where = f"{path}: tensor {name!r}"
    if not isinstance(info, dict):
        raise WeightsError(f"{where}: entry is not an object")
    name_of_dtype = info.get("dtype")
    # A list or object there is unhashable: the lookup itself would raise TypeError.
    dtype = _DTYPES.get(name_of_dtype) if isinstance(name_of_dtype, str) else None
    if dtype is None:
        raise WeightsError(f"{where}: unsupported dtype {info.get('dtype')!r}")
    shape = info.get("shape")
    offsets = info.get("data_offsets")
    if not (isinstance(shape, list) and all(_count(d) for d in shape)):
        raise WeightsError(f"{where}: malformed shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(_count(o) for o in offsets)):
        raise WeightsError(f"{where}: malformed data_offsets {offsets!r}")
    begin, end = offsets
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    if end - begin != nbytes or data_start + end > size:
        raise WeightsError(
            f"{where}: byte range {offsets} does not hold {tuple(shape)} {info['dtype']} "
            f"({nbytes} bytes) inside the {size}-byte file"
        )
    return TensorEntry(path, dtype, tuple(shape), data_start + begin, nbytes)


def _check_finite(entry: TensorEntry, name: str, tensor: Tensor) -> None:
    """Refuse a NaN or inf weight: every action computed through it would be NaN (or, for a
    masked path, silently wrong), and nothing at act time says which tensor was at fault.
    Checked after the cast, so a float32 value beyond float16's range is caught too. NaN
    propagates through min/max and an inf is one of them: ``aminmax`` allocates no mask and
    is ~20x faster on CPU than ``isfinite(...).all()`` (about 2 s for the 4B model on one
    thread)."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return
    low, high = torch.aminmax(tensor)
    if bool(torch.isfinite(low) & torch.isfinite(high)):
        return
    nan = int(torch.isnan(tensor).sum())
    inf = int(torch.isinf(tensor).sum())
    cast = "" if tensor.dtype == entry.dtype else f" as {tensor.dtype}"
    raise WeightsError(
        f"{entry.file}: tensor {name!r} holds non-finite values{cast} ({nan} NaN, {inf} inf "
        f"of {tensor.numel()})"
    )


class WeightSource(Mapping[str, Tensor]):
    """Every tensor of one checkpoint, read on access into ``device`` and (floats) ``dtype``.

    A read-only mapping, so code written for a dict of tensors takes it unchanged; each access
    reads the file again, so read each key once. Use as a context manager (or ``close``) to
    release the file handles.
    """

    def __init__(
        self,
        entries: Mapping[str, TensorEntry],
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> None:
        self._entries = dict(entries)
        self.device = torch.device(device)
        self.dtype = dtype
        self._handles: dict[Path, IO[bytes]] = {}

    @classmethod
    def open(
        cls,
        files: list[Path],
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
    ) -> WeightSource:
        entries: dict[str, TensorEntry] = {}
        for file in files:
            for name, entry in read_header(file).items():
                if name in entries:
                    raise WeightsError(f"{file}: tensor {name!r} also in {entries[name].file}")
                entries[name] = entry
        return cls(entries, device=device, dtype=dtype)

    # ---------------------------------------------------------------- Mapping
    def __getitem__(self, name: str) -> Tensor:
        return self.read(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    # ---------------------------------------------------------------- reading
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: entry.shape for name, entry in self._entries.items()}

    def stored_dtype(self, name: str) -> torch.dtype:
        return self._entries[name].dtype

    def target_dtype(self, name: str) -> torch.dtype:
        """The dtype ``read`` returns: ``dtype`` for floating tensors, the file's otherwise."""
        stored = self._entries[name].dtype
        if self.dtype is not None and stored.is_floating_point:
            return self.dtype
        return stored

    def read(self, name: str) -> Tensor:
        """Tensor ``name`` on ``device`` in ``target_dtype``; one host copy in flight at most."""
        entry = self._entries[name]
        want = self.target_dtype(name)
        if self.device.type == "cpu" and want == entry.dtype:
            out = torch.empty(entry.shape, dtype=entry.dtype)
            self._read_raw(entry, out)
        else:
            staged = torch.empty(entry.shape, dtype=entry.dtype)
            self._read_raw(entry, staged)
            out = staged.to(device=self.device, dtype=want)
        _check_finite(entry, name, out)
        return out

    def read_stored(self, name: str) -> Tensor:
        """Tensor ``name`` on the host in the file's own dtype."""
        entry = self._entries[name]
        out = torch.empty(entry.shape, dtype=entry.dtype)
        self._read_raw(entry, out)
        _check_finite(entry, name, out)
        return out

    def read_into(self, name: str, out: Tensor) -> None:
        """Fill ``out`` (the tensor's shape; any device and dtype) with tensor ``name``."""
        entry = self._entries[name]
        if tuple(out.shape) != entry.shape:
            raise WeightsError(f"{entry.file}: tensor {name!r} is {entry.shape}, not {out.shape}")
        if out.device.type == "cpu" and out.dtype == entry.dtype and out.is_contiguous():
            self._read_raw(entry, out)
        else:
            staged = torch.empty(entry.shape, dtype=entry.dtype)
            self._read_raw(entry, staged)
            out.copy_(staged)
        _check_finite(entry, name, out)

    def _read_raw(self, entry: TensorEntry, out: Tensor) -> None:
        if sys.byteorder != "little":  # pragma: no cover - safetensors data is little-endian
            raise WeightsError("reading safetensors on a big-endian host is not supported")
        if entry.nbytes == 0:
            return
        handle = self._handles.get(entry.file)
        if handle is None:
            handle = self._handles[entry.file] = open(entry.file, "rb", buffering=0)
        view = memoryview(out.reshape(-1).view(torch.uint8).numpy())
        handle.seek(entry.offset)
        done = 0
        while done < entry.nbytes:
            count = handle.readinto(view[done:])
            if not count:
                raise WeightsError(f"{entry.file}: file ended inside a tensor")
            done += count

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def __enter__(self) -> WeightSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
