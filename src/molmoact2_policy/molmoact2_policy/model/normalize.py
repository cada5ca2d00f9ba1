"""norm_stats.json: per-tag state/action statistics and the normalisation modes.

File layout: ``{"format": "molmoact2_norm_stats.v1", "norm_mode": <mode>, "metadata_by_tag":
{<tag>: {...}}}``. Two spellings of a tag's groups are read:

* released checkpoints: ``"state_stats"`` / ``"action_stats"``, each ``{<stat>: [...],
  "mask": [...], "names": [...]}``, next to tag metadata (``setup_type``, ``control_mode``,
  ``action_horizon``, ``n_action_steps``, ...) that is kept and exposed, never rejected;
* ours (and older dataset dumps): ``"state"`` / ``"action"`` (plus a few aliases).

A loaded file is saved back under the keys it was read with; stats built in code are written
with ``"state"`` / ``"action"``. Statistics: ``min``/``max``, ``q01``/``q99``, ``q10``/``q90``,
``mean``/``std``. One ``norm_mode`` covers every tag and both groups; when the file has none
it is ``min_max``, the released loader's and exporter's default.

Semantics (those of the released MolmoAct2 HF code, so a released checkpoint sees the numbers
it was trained on):

* ``min_max`` / ``q01_q99`` / ``q10_q90`` map [lo, hi] to [-1, 1] with the span floored at
  1e-6 and clip the result to [-1, 1]; un-normalising clips its input to [-1, 1] first.
* ``mean_std`` divides by ``max(std, 1e-6)``; un-normalising multiplies by the raw ``std``.
  Neither direction clips.
* ``none`` leaves values alone.
* The statistics the mode uses must be finite as float32 (the dtype the released code reads
  them in) in every dimension, and in every normalised dimension not inverted (lower bound <=
  upper bound, ``std >= 0``) and small enough that the released float32 arithmetic cannot
  overflow: ``2 * (hi - lo)`` (un-normalising computes ``(x + 1) * (hi - lo)`` at x = 1) and
  ``|mean| + MEAN_STD_REACH * std``. A file that breaks this is refused at load with the key,
  index and value. Statistics the mode does not use are not checked (the released loader never
  reads them).
* In the bounded modes a dimension whose ``min == max`` normalises to exactly 0, whatever the
  mask says (it carries no information). ``q01 == q99`` alone gets no such rule.
* A group's ``mask`` marks the dimensions that ARE normalised; ``False`` dims pass through
  (on un-normalising they pass the clipped value through, as the released code does). A group
  without a mask normalises every dimension, grippers included: that is what the released
  loader does, so it is what the checkpoint was trained with.

We compute in float64 (the released code uses float32), so results agree to float32 rounding.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

NORM_STATS_FORMAT = "molmoact2_norm_stats.v1"
NORM_MODES: dict[str, tuple[str, ...]] = {
    "min_max": ("min", "max"),
    "q01_q99": ("q01", "q99"),
    "q10_q90": ("q10", "q90"),
    "mean_std": ("mean", "std"),
    "none": (),
}
BOUNDED_MODES = frozenset({"min_max", "q01_q99", "q10_q90"})
DEFAULT_NORM_MODE = "min_max"
STAT_KEYS = frozenset(key for pair in NORM_MODES.values() for key in pair)
# Floors a span or std so a constant dimension stays finite; the released value, so a
# near-constant dimension scales exactly as it did in training.
_EPS = 1e-6
# The released normaliser reads statistics and values as float32 (``_to_array``); a statistic
# finite in float64 (1e300) is inf there and turns every action of its dim into inf or NaN.
_F32_MAX = float(np.finfo(np.float32).max)
# mean_std neither clips nor bounds: un-normalising must stay finite in float32 for z-scores up
# to this. Flow outputs are O(1); a real std is many orders of magnitude below the limit.
MEAN_STD_REACH = 1e3
# Released files use the *_stats keys; the rest are spellings our own and dataset dumps used.
_GROUP_ALIASES = {
    "state": ("state_stats", "state", "observation.state", "proprio", "states"),
    "action": ("action_stats", "action", "actions"),
}


class NormStatsError(ValueError):
    """norm_stats.json is malformed or lacks what a tag/mode needs."""


@dataclass(frozen=True)
class GroupStats:
    """Statistics of one group (state or action) of one tag, each a float64 vector.

    ``mask`` (bool per dim, True = normalised) is the file's; ``extras`` holds the group's
    other keys (``names``, counts, ...) so a load/save round trip is lossless.
    """

    stats: Mapping[str, np.ndarray]
    mask: np.ndarray | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        for value in self.stats.values():
            return int(value.shape[0])
        if self.mask is not None:
            return int(self.mask.shape[0])
        raise NormStatsError("norm stats group has neither statistics nor a mask")

    def require(self, mode: str, where: str) -> tuple[np.ndarray, ...]:
        """The statistics ``mode`` uses, checked present and finite."""
        if mode not in NORM_MODES:
            raise NormStatsError(f"unknown norm mode {mode!r}; known: {', '.join(NORM_MODES)}")
        keys = NORM_MODES[mode]
        missing = [key for key in keys if key not in self.stats]
        if missing:
            raise NormStatsError(f"{where}: mode {mode!r} needs {', '.join(missing)}")
        for key in keys:
            with np.errstate(over="ignore"):
                finite = np.isfinite(self.stats[key].astype(np.float32))
            if not np.all(finite):
                index = int(np.flatnonzero(~finite)[0])
                raise NormStatsError(
                    f"{where}.{key}: mode {mode!r} needs finite values; "
                    f"{key}[{index}] = {float(self.stats[key][index])!r} is not finite as float32 "
                    f"(|x| <= {_F32_MAX:.6g})"
                )
        values = tuple(self.stats[key] for key in keys)
        _check_arithmetic(mode, keys, values, self.normalized_dims(), where)
        return values

    def normalized_dims(self) -> np.ndarray:
        """True where a dim is normalised: the file's mask, else every dim (as released)."""
        if self.mask is not None:
            return self.mask
        return np.ones(self.dim, dtype=bool)

    def constant_dims(self) -> np.ndarray | None:
        """Dims with ``min == max``; compared in float32 because the released code does."""
        if "min" not in self.stats or "max" not in self.stats:
            return None
        with np.errstate(over="ignore"):  # 1e300 is inf in float32 there too
            return self.stats["min"].astype(np.float32) == self.stats["max"].astype(np.float32)


def _check_arithmetic(
    mode: str,
    keys: tuple[str, ...],
    values: tuple[np.ndarray, ...],
    normalized: np.ndarray,
    where: str,
) -> None:
    """Refuse statistics that are inverted or overflow the released float32 arithmetic in a
    normalised dim (finite float32 values assumed, checked by the caller)."""
    if mode not in BOUNDED_MODES and mode != "mean_std":
        return
    first, second = (value.astype(np.float32) for value in values)
    # Statistics computed from data never invert (a quantile or bound never exceeds the
    # higher one, a std is never negative); an inverted one would flip and rescale every
    # action of that dimension, with finite numbers nothing downstream could tell from
    # real ones. A zero range is real (a constant dimension, floored at 1e-6 as released)
    # and stays accepted.
    if mode in BOUNDED_MODES:
        inverted = (values[0] > values[1]) & normalized
        rule = f"{keys[0]} <= {keys[1]}"
    else:
        inverted = (values[1] < 0) & normalized
        rule = "std >= 0"
    if np.any(inverted):
        dims = np.flatnonzero(inverted).tolist()
        i = dims[0]
        raise NormStatsError(
            f"{where}: mode {mode!r} needs {rule}; dims {dims} break it "
            f"({_pair(keys, values, i)})"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        if mode in BOUNDED_MODES:
            # Un-normalising computes (x + 1) * (hi - lo) / 2 + lo: at x = 1 that is 2 * span.
            reach = 2.0 * (second - first)
            what = f"2 * ({keys[1]} - {keys[0]})"
        else:
            reach = np.abs(first) + np.float32(MEAN_STD_REACH) * second
            what = f"|mean| + {MEAN_STD_REACH:g} * std"
        overflow = ~np.isfinite(reach) & normalized
    if np.any(overflow):
        i = int(np.flatnonzero(overflow)[0])
        raise NormStatsError(
            f"{where}: mode {mode!r} needs {what} to fit float32 (<= {_F32_MAX:.6g}), the "
            f"released code's dtype; dim {i} overflows ({_pair(keys, values, i)})"
        )


def _pair(keys: tuple[str, ...], values: tuple[np.ndarray, ...], index: int) -> str:
    pairs = zip(keys, values, strict=True)
    return ", ".join(f"{key}[{index}] = {float(value[index])!r}" for key, value in pairs)


def normalize(
    values: np.ndarray,
    group: GroupStats,
    mode: str,
    where: str = "norm stats",
) -> np.ndarray:
    """Robot units -> normalised units along the last axis (semantics: module docstring)."""
    values = np.asarray(values, dtype=np.float64)
    stats = _stats_for(values, group, mode, where)
    if mode == "none":
        return values.copy()
    first, second = stats
    if mode == "mean_std":
        out = (values - first) / np.maximum(second, _EPS)
    else:
        out = np.clip(2.0 * (values - first) / np.maximum(second - first, _EPS) - 1.0, -1.0, 1.0)
    out = np.where(group.normalized_dims(), out, values)
    constant = group.constant_dims() if mode in BOUNDED_MODES else None
    if constant is not None:
        out = np.where(constant, 0.0, out)
    return out


def unnormalize(
    values: np.ndarray,
    group: GroupStats,
    mode: str,
    where: str = "norm stats",
) -> np.ndarray:
    """Normalised units -> robot units along the last axis (inverse of ``normalize`` inside
    the clipped range)."""
    values = np.asarray(values, dtype=np.float64)
    stats = _stats_for(values, group, mode, where)
    if mode == "none":
        return values.copy()
    first, second = stats
    if mode == "mean_std":
        out = values * second + first
        kept = values
    else:
        # The model never saw targets outside [-1, 1]; anything beyond is extrapolation.
        kept = np.clip(values, -1.0, 1.0)
        out = (kept + 1.0) * (second - first) / 2.0 + first
    return np.where(group.normalized_dims(), out, kept)


def _stats_for(
    values: np.ndarray, group: GroupStats, mode: str, where: str
) -> tuple[np.ndarray, ...]:
    stats = group.require(mode, where)
    if values.ndim == 0 or values.shape[-1] != group.dim:
        got = values.shape[-1] if values.ndim else 0
        raise NormStatsError(f"{where}: values have {got} dims, stats have {group.dim}")
    return stats


@dataclass
class NormStats:
    """All tags of one checkpoint's norm_stats.json."""

    norm_mode: str = DEFAULT_NORM_MODE
    tags: dict[str, dict[str, GroupStats]] = field(default_factory=dict)
    # Per-tag metadata (setup_type, action_horizon, counts, ...), kept so a load/save round
    # trip is lossless and exposed through ``metadata``.
    extras: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The JSON key each group was read from, so a released file is saved back in its layout.
    group_keys: dict[str, dict[str, str]] = field(default_factory=dict)

    def group(self, tag: str, name: str) -> GroupStats:
        if tag not in self.tags:
            known = ", ".join(sorted(self.tags)) or "none"
            raise NormStatsError(f"norm stats have no tag {tag!r}; known: {known}")
        if name not in self.tags[tag]:
            # A release may ship metadata-only tags; its loader then skips normalisation, but
            # silently feeding raw units to the model is worse than refusing.
            raise NormStatsError(f"norm stats tag {tag!r} has no {name!r} statistics")
        return self.tags[tag][name]

    def metadata(self, tag: str) -> dict[str, Any]:
        """The tag's non-statistics keys (setup_type, control_mode, action_horizon, ...)."""
        if tag not in self.tags:
            known = ", ".join(sorted(self.tags)) or "none"
            raise NormStatsError(f"norm stats have no tag {tag!r}; known: {known}")
        return dict(self.extras.get(tag, {}))

    def action_horizon(self, tag: str) -> int | None:
        return self._positive_int(tag, "action_horizon")

    def n_action_steps(self, tag: str) -> int | None:
        return self._positive_int(tag, "n_action_steps")

    def _positive_int(self, tag: str, key: str) -> int | None:
        # Checked on use, not on load: a bad value must not make the other tags unusable.
        value = self.metadata(tag).get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise NormStatsError(f"norm stats: {tag}.{key} must be an integer, got {value!r}")
        if not math.isfinite(value) or value != int(value) or value < 1:
            raise NormStatsError(f"norm stats: {tag}.{key} must be an integer >= 1, got {value}")
        return int(value)

    def normalize_state(self, tag: str, state: np.ndarray) -> np.ndarray:
        return self._apply(normalize, tag, "state", state)

    def unnormalize_state(self, tag: str, state: np.ndarray) -> np.ndarray:
        return self._apply(unnormalize, tag, "state", state)

    def normalize_action(self, tag: str, action: np.ndarray) -> np.ndarray:
        return self._apply(normalize, tag, "action", action)

    def unnormalize_action(self, tag: str, action: np.ndarray) -> np.ndarray:
        return self._apply(unnormalize, tag, "action", action)

    def _apply(
        self,
        transform: Callable[..., np.ndarray],
        tag: str,
        name: str,
        values: np.ndarray,
    ) -> np.ndarray:
        group = self.group(tag, name)
        return transform(values, group, self.norm_mode, self._where(tag, name))

    def _where(self, tag: str, name: str) -> str:
        return f"{tag}.{self.group_keys.get(tag, {}).get(name, name)}"

    # ----------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        metadata: dict[str, Any] = {}
        for tag, groups in self.tags.items():
            entry = dict(self.extras.get(tag, {}))
            keys = self.group_keys.get(tag, {})
            for name, group in groups.items():
                raw: dict[str, Any] = dict(group.extras)
                raw.update({key: value.tolist() for key, value in group.stats.items()})
                if group.mask is not None:
                    raw["mask"] = group.mask.tolist()
                entry[keys.get(name, name)] = raw
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
        if not isinstance(mode, str) or mode not in NORM_MODES:  # a list is unhashable
            raise NormStatsError(
                f"norm stats: unknown norm_mode {mode!r}; known: {', '.join(NORM_MODES)}"
            )
        metadata = data.get("metadata_by_tag")
        if not isinstance(metadata, dict):
            raise NormStatsError("norm stats: 'metadata_by_tag' must be an object of tags")
        stats = cls(norm_mode=mode)
        for tag, entry in metadata.items():
            stats._add_tag(tag, {} if entry is None else entry)
        return stats

    def _add_tag(self, tag: str, entry: Any) -> None:
        if not isinstance(entry, dict):
            raise NormStatsError(f"norm stats: tag {tag!r} must be an object")
        groups: dict[str, GroupStats] = {}
        keys: dict[str, str] = {}
        for name, aliases in _GROUP_ALIASES.items():
            # A null group is "no statistics" to the released loader, not an error.
            found = [alias for alias in aliases if entry.get(alias) is not None]
            if len(found) > 1:
                raise NormStatsError(
                    f"norm stats: tag {tag!r} has {name} statistics under both "
                    f"{found[0]!r} and {found[1]!r}"
                )
            if found:
                where = f"{tag}.{found[0]}"
                group = _parse_group(entry[found[0]], where)
                # Checked now so a file that cannot serve its own mode fails at load time.
                group.require(self.norm_mode, where)
                groups[name] = group
                keys[name] = found[0]
        self.tags[tag] = groups
        self.group_keys[tag] = keys
        used = set(keys.values())
        self.extras[tag] = {key: value for key, value in entry.items() if key not in used}

    @classmethod
    def from_file(cls, path: str | Path) -> NormStats:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise NormStatsError(f"{path}: file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise NormStatsError(f"{path}: not valid JSON ({error})") from None
        except RecursionError:  # what json raises for arrays nested thousands deep
            raise NormStatsError(f"{path}: not valid JSON (nested too deep)") from None
        except OSError as error:  # a directory under the name, no permission
            raise NormStatsError(f"{path}: cannot be read ({error.strerror or error})") from None
        try:
            return cls.from_dict(data)
        except NormStatsError as error:
            raise NormStatsError(f"{path}: {error}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_group(raw: Any, where: str) -> GroupStats:
    if not isinstance(raw, dict):
        raise NormStatsError(f"norm stats: {where} must be an object of statistics")
    stats: dict[str, np.ndarray] = {}
    extras: dict[str, Any] = {}
    dim: int | None = None
    for key, value in raw.items():
        if key == "mask":
            continue
        if key not in STAT_KEYS:
            extras[key] = value  # names, counts and other annotations are not statistics
            continue
        if not isinstance(value, list) or not all(_is_number(item) for item in value):
            raise NormStatsError(f"norm stats: {where}.{key} is not a list of numbers")
        if dim is not None and len(value) != dim:
            raise NormStatsError(
                f"norm stats: {where}.{key} has {len(value)} values, expected {dim}"
            )
        dim = len(value)
        stats[key] = np.asarray(value, dtype=np.float64)
    mask = _parse_mask(raw.get("mask"), dim, where)
    if not stats and mask is None:
        raise NormStatsError(f"norm stats: {where} has no statistics")
    return GroupStats(stats, mask, extras)


def _parse_mask(raw: Any, dim: int | None, where: str) -> np.ndarray | None:
    if raw is None:
        return None

    def flag(item: Any) -> bool:
        if isinstance(item, bool) or (_is_number(item) and item in (0, 1)):
            return bool(item)
        raise NormStatsError(f"norm stats: {where}.mask must hold booleans, got {item!r}")

    if not isinstance(raw, list):
        # A single flag covers every dim, as numpy broadcasting does in the released loader.
        if dim is None:
            raise NormStatsError(
                f"norm stats: {where}.mask is a single flag but no statistic gives the dim"
            )
        return np.full(dim, flag(raw))
    if dim is not None and len(raw) != dim:
        raise NormStatsError(f"norm stats: {where}.mask has {len(raw)} values, expected {dim}")
    return np.array([flag(item) for item in raw], dtype=bool)


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
