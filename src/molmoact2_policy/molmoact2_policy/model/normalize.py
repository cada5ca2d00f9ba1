"""norm_stats.json: per-tag state/action statistics and the four normalisation modes.

File layout (released export): ``{"format": "molmoact2_norm_stats.v1", "norm_mode": <mode>,
"metadata_by_tag": {<tag>: {"state": {<stat>: [...]}, "action": {<stat>: [...]}}}}`` with stats
``min``/``max``, ``q01``/``q99``, ``q10``/``q90``, ``mean``/``std``. The bounded modes map
[lo, hi] to [-1, 1]; ``mean_std`` standardises. Gripper dims are passed through unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

NORM_STATS_FORMAT = "molmoact2_norm_stats.v1"
NORM_MODES: dict[str, tuple[str, str]] = {
    "min_max": ("min", "max"),
    "q01_q99": ("q01", "q99"),
    "q10_q90": ("q10", "q90"),
    "mean_std": ("mean", "std"),
}
DEFAULT_NORM_MODE = "q01_q99"
# Keeps a constant dimension (hi == lo, std == 0) finite and exactly invertible.
_EPS = 1e-8
# Alternative spellings seen in robot datasets for the two groups.
_GROUP_ALIASES = {
    "state": ("state", "observation.state", "proprio", "states"),
    "action": ("action", "actions"),
}


class NormStatsError(ValueError):
    """norm_stats.json is malformed or lacks what a tag/mode needs."""


@dataclass(frozen=True)
class GroupStats:
    """Statistics of one group (state or action) of one tag, each a float64 vector."""

    stats: Mapping[str, np.ndarray]

    @property
    def dim(self) -> int:
        return int(next(iter(self.stats.values())).shape[0])

    def require(self, mode: str, where: str) -> tuple[np.ndarray, np.ndarray]:
        first, second = NORM_MODES[mode]
        missing = [key for key in (first, second) if key not in self.stats]
        if missing:
            raise NormStatsError(f"{where}: mode {mode!r} needs {', '.join(missing)}")
        return self.stats[first], self.stats[second]


def normalize(
    values: np.ndarray,
    group: GroupStats,
    mode: str,
    passthrough_dims: Iterable[int] = (),
    where: str = "norm stats",
) -> np.ndarray:
    """Robot units -> normalised units along the last axis; passthrough dims are copied."""
    values = np.asarray(values, dtype=np.float64)
    first, second = _stats_for(values, group, mode, where)
    if mode == "mean_std":
        out = (values - first) / (second + _EPS)
    else:
        out = 2.0 * (values - first) / np.maximum(second - first, _EPS) - 1.0
    return _restore(out, values, passthrough_dims)


def unnormalize(
    values: np.ndarray,
    group: GroupStats,
    mode: str,
    passthrough_dims: Iterable[int] = (),
    where: str = "norm stats",
) -> np.ndarray:
    """Normalised units -> robot units along the last axis (inverse of ``normalize``)."""
    values = np.asarray(values, dtype=np.float64)
    first, second = _stats_for(values, group, mode, where)
    if mode == "mean_std":
        out = values * (second + _EPS) + first
    else:
        out = (values + 1.0) / 2.0 * np.maximum(second - first, _EPS) + first
    return _restore(out, values, passthrough_dims)


def _stats_for(
    values: np.ndarray, group: GroupStats, mode: str, where: str
) -> tuple[np.ndarray, np.ndarray]:
    if mode not in NORM_MODES:
        raise NormStatsError(f"unknown norm mode {mode!r}; known: {', '.join(NORM_MODES)}")
    first, second = group.require(mode, where)
    if values.shape[-1] != first.shape[0]:
        raise NormStatsError(
            f"{where}: values have {values.shape[-1]} dims, stats have {first.shape[0]}"
        )
    return first, second


def _restore(out: np.ndarray, original: np.ndarray, passthrough_dims: Iterable[int]) -> np.ndarray:
    dims = list(passthrough_dims)
    if dims:
        out[..., dims] = original[..., dims]
    return out


@dataclass
class NormStats:
    """All tags of one checkpoint's norm_stats.json."""

    norm_mode: str = DEFAULT_NORM_MODE
    tags: dict[str, dict[str, GroupStats]] = field(default_factory=dict)
    # Per-tag extras (counts, names, ...) kept so a load/save round trip is lossless.
    extras: dict[str, dict[str, Any]] = field(default_factory=dict)

    def group(self, tag: str, name: str) -> GroupStats:
        if tag not in self.tags:
            known = ", ".join(sorted(self.tags)) or "none"
            raise NormStatsError(f"norm stats have no tag {tag!r}; known: {known}")
        if name not in self.tags[tag]:
            raise NormStatsError(f"norm stats tag {tag!r} has no {name!r} statistics")
        return self.tags[tag][name]

    def normalize_state(
        self, tag: str, state: np.ndarray, passthrough_dims: Sequence[int] = ()
    ) -> np.ndarray:
        return normalize(
            state, self.group(tag, "state"), self.norm_mode, passthrough_dims, f"{tag}.state"
        )

    def unnormalize_state(
        self, tag: str, state: np.ndarray, passthrough_dims: Sequence[int] = ()
    ) -> np.ndarray:
        return unnormalize(
            state, self.group(tag, "state"), self.norm_mode, passthrough_dims, f"{tag}.state"
        )

    def normalize_action(
        self, tag: str, action: np.ndarray, passthrough_dims: Sequence[int] = ()
    ) -> np.ndarray:
        return normalize(
            action, self.group(tag, "action"), self.norm_mode, passthrough_dims, f"{tag}.action"
        )

    def unnormalize_action(
        self, tag: str, action: np.ndarray, passthrough_dims: Sequence[int] = ()
    ) -> np.ndarray:
        return unnormalize(
            action, self.group(tag, "action"), self.norm_mode, passthrough_dims, f"{tag}.action"
        )

    # ----------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        metadata: dict[str, Any] = {}
        for tag, groups in self.tags.items():
            entry = dict(self.extras.get(tag, {}))
            for name, group in groups.items():
                entry[name] = {key: value.tolist() for key, value in group.stats.items()}
            metadata[tag] = entry
        return {
            "format": NORM_STATS_FORMAT,
            "norm_mode": self.norm_mode,
            "metadata_by_tag": metadata,
        }

    @classmethod
    def from_dict(cls, data: Any) -> NormStats:
        if not isinstance(data, dict):
            raise NormStatsError("norm stats: top level must be a JSON object")
        fmt = data.get("format", NORM_STATS_FORMAT)
        if fmt != NORM_STATS_FORMAT:
            raise NormStatsError(f"norm stats: unsupported format {fmt!r}")
        mode = data.get("norm_mode", DEFAULT_NORM_MODE)
        if mode not in NORM_MODES:
            raise NormStatsError(f"norm stats: unknown norm_mode {mode!r}")
        metadata = data.get("metadata_by_tag")
        if not isinstance(metadata, dict):
            raise NormStatsError("norm stats: 'metadata_by_tag' must be an object of tags")
        tags: dict[str, dict[str, GroupStats]] = {}
        extras: dict[str, dict[str, Any]] = {}
        for tag, entry in metadata.items():
            if not isinstance(entry, dict):
                raise NormStatsError(f"norm stats: tag {tag!r} must be an object")
            groups: dict[str, GroupStats] = {}
            used: set[str] = set()
            for name, aliases in _GROUP_ALIASES.items():
                for alias in aliases:
                    if alias in entry:
                        groups[name] = _parse_group(entry[alias], f"{tag}.{alias}")
                        used.add(alias)
                        break
            if not groups:
                raise NormStatsError(f"norm stats: tag {tag!r} has neither state nor action stats")
            tags[tag] = groups
            extras[tag] = {key: value for key, value in entry.items() if key not in used}
        return cls(norm_mode=mode, tags=tags, extras=extras)

    @classmethod
    def from_file(cls, path: str | Path) -> NormStats:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise NormStatsError(f"{path}: file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise NormStatsError(f"{path}: not valid JSON ({error})") from None
        try:
            return cls.from_dict(data)
        except NormStatsError as error:
            raise NormStatsError(f"{path}: {error}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


def _parse_group(raw: Any, where: str) -> GroupStats:
    if not isinstance(raw, dict):
        raise NormStatsError(f"norm stats: {where} must be an object of statistics")
    stats: dict[str, np.ndarray] = {}
    dim: int | None = None
    for key, value in raw.items():
        if key not in {name for pair in NORM_MODES.values() for name in pair}:
            continue  # counts, names and other annotations are not statistics
        try:
            vector = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise NormStatsError(f"norm stats: {where}.{key} is not a list of numbers") from None
        if vector.ndim != 1 or not np.all(np.isfinite(vector)):
            raise NormStatsError(f"norm stats: {where}.{key} must be a finite 1-D list")
        if dim is not None and vector.shape[0] != dim:
            raise NormStatsError(
                f"norm stats: {where}.{key} has {vector.shape[0]} values, expected {dim}"
            )
        dim = vector.shape[0]
        stats[key] = vector
    if not stats:
        raise NormStatsError(f"norm stats: {where} has no statistics")
    return GroupStats(stats)


def synthetic_group_stats(dim: int, seed: int, scale: float = 1.0) -> GroupStats:
    """Plausible, deterministic statistics for tiny checkpoints and tests (all eight keys)."""
    rng = np.random.default_rng(seed)
    centre = rng.uniform(-0.5, 0.5, dim) * scale
    spread = rng.uniform(0.5, 1.5, dim) * scale
    stats = {
        "mean": centre,
        "std": spread / 2.0,
        "min": centre - spread * 1.2,
        "max": centre + spread * 1.2,
        "q01": centre - spread,
        "q99": centre + spread,
        "q10": centre - spread * 0.6,
        "q90": centre + spread * 0.6,
    }
    # Rounded so the JSON text is short and reloads bit-identically.
    return GroupStats({key: np.round(value, 6) for key, value in stats.items()})
