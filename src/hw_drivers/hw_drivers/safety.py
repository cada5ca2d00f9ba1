"""Safety rules for chunks and commands (pure numpy, no ROS).

``validate_chunk`` rejects a whole chunk instead of executing part of it; ``clamp_command`` limits
every command the executor sends. Rejection reasons start with a short code (``non_finite:``,
``joint_set:``, ...) that the executor counts by; the rest names the joint, step and values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hw_drivers.chunk import Chunk

#: Relative slack on velocity checks so a chunk sampled exactly at the limit is not rejected by
#: rounding.
_VELOCITY_SLACK = 1e-6
_POSITION_SLACK = 1e-9


@dataclass(frozen=True)
class JointLimits:
    """Per-joint limits in REP-103 units, each an array of shape (joints,)."""

    lower: np.ndarray
    upper: np.ndarray
    max_velocity: np.ndarray
    max_acceleration: np.ndarray

    def __post_init__(self) -> None:
        arrays = {}
        for name in ("lower", "upper", "max_velocity", "max_acceleration"):
            value = np.array(getattr(self, name), dtype=float, copy=True).reshape(-1)
            value.flags.writeable = False
            arrays[name] = value
            object.__setattr__(self, name, value)
        sizes = {k: v.size for k, v in arrays.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"joint limits have different lengths: {sizes}")
        if np.any(arrays["lower"] > arrays["upper"]):
            raise ValueError("joint limits: lower > upper for some joint")
        if np.any(arrays["max_velocity"] <= 0) or np.any(arrays["max_acceleration"] <= 0):
            raise ValueError("joint limits: max_velocity and max_acceleration must be > 0")

    @property
    def num_joints(self) -> int:
        return int(self.lower.size)


@dataclass(frozen=True)
class SafetyConfig:
    max_step_per_tick: float = 0.03  # largest change of any joint command per tick [rad]
    max_start_deviation: float = 0.5  # first applicable point vs measured [rad]
    ramp_in_time: float = 1.0  # blend from the measured position after start/reset [s]
    watchdog_timeout: float = 0.5  # no accepted chunk for this long -> hold [s]


def _joint(joint_names: Sequence[str], j: int) -> str:
    return joint_names[j] if j < len(joint_names) else f"#{j}"


def validate_chunk(
    chunk: Chunk,
    joint_names: Sequence[str],
    limits: JointLimits,
    measured: np.ndarray | None,
    config: SafetyConfig,
    *,
    first_index: int = 0,
) -> str | None:
    """Why ``chunk`` must not be executed, or None when it may.

    ``first_index`` is the first action that will actually be executed (after the latency skip);
    the start-deviation rule compares that action with ``measured``.
    """
    names = tuple(joint_names)
    positions = chunk.positions
    if positions.ndim != 2 or positions.shape[0] == 0:
        return f"shape: positions must be (horizon>0, joints), got shape {positions.shape}"
    if positions.shape[1] != len(chunk.joint_names):
        return (
            f"shape: {positions.shape[1]} position columns for "
            f"{len(chunk.joint_names)} joint names"
        )
    if not (np.isfinite(chunk.step_dt) and chunk.step_dt > 0):
        return f"shape: step_dt must be finite and > 0, got {chunk.step_dt}"
    if not (np.isfinite(chunk.stamp) and np.isfinite(chunk.start_offset)):
        return "non_finite: stamp or start_offset is not finite"
    try:
        ordered = chunk.reordered(names)
    except ValueError as err:
        return f"joint_set: {err}"
    positions = ordered.positions
    bad = ~np.isfinite(positions)
    if bad.any():
        k, j = (int(v) for v in np.argwhere(bad)[0])
        return (
            f"non_finite: {int(bad.sum())} NaN/inf values, first at step {k} joint "
            f"{_joint(names, j)} ({positions[k, j]})"
        )
    below = positions < limits.lower - _POSITION_SLACK
    above = positions > limits.upper + _POSITION_SLACK
    outside = below | above
    if outside.any():
        k, j = (int(v) for v in np.argwhere(outside)[0])
        return (
            f"position_limit: joint {_joint(names, j)} at step {k} is {positions[k, j]:.4f}, "
            f"outside [{limits.lower[j]:.4f}, {limits.upper[j]:.4f}]"
        )
    if positions.shape[0] > 1:
        velocity = np.abs(np.diff(positions, axis=0)) / chunk.step_dt
        too_fast = velocity > limits.max_velocity * (1 + _VELOCITY_SLACK)
        if too_fast.any():
            k, j = (int(v) for v in np.argwhere(too_fast)[0])
            return (
                f"velocity_limit: joint {_joint(names, j)} from step {k} to {k + 1} implies "
                f"{velocity[k, j]:.3f}/s > max {limits.max_velocity[j]:.3f}/s"
            )
    if measured is not None:
        measured = np.asarray(measured, dtype=float)
        first = positions[min(max(first_index, 0), positions.shape[0] - 1)]
        deviation = np.abs(first - measured)
        j = int(np.argmax(deviation))
        if deviation[j] > config.max_start_deviation:
            return (
                f"start_deviation: joint {_joint(names, j)} first executed point "
                f"{first[j]:.4f} is {deviation[j]:.4f} from measured {measured[j]:.4f} "
                f"(max {config.max_start_deviation})"
            )
    return None


def clamp_command(
    target: np.ndarray,
    previous: np.ndarray,
    limits: JointLimits,
    config: SafetyConfig,
    dt: float,
    *,
    previous_velocity: np.ndarray | None = None,
) -> tuple[np.ndarray, bool]:
    """The command to send this tick and whether any rule changed ``target``.

    Rules, per joint: position limits; a change of at most ``max_step_per_tick`` and
    ``max_velocity * dt``; with ``previous_velocity`` given, speed may grow by at most
    ``max_acceleration * dt`` per tick (slowing down is never limited: stopping is always
    allowed, and it cannot overshoot the target because the step never exceeds it).
    """
    target = np.asarray(target, dtype=float)
    previous = np.asarray(previous, dtype=float)
    limited = np.clip(target, limits.lower, limits.upper)
    clamped = bool(np.any(np.abs(limited - target) > _POSITION_SLACK))
    if dt <= 0:
        return previous.copy(), clamped or bool(np.any(np.abs(limited - previous) > 1e-12))
    step = limited - previous
    max_step = np.minimum(config.max_step_per_tick, limits.max_velocity * dt)
    if previous_velocity is not None:
        previous_velocity = np.asarray(previous_velocity, dtype=float)
        same_direction = np.sign(step) == np.sign(previous_velocity)
        speed_now = np.where(same_direction, np.abs(previous_velocity), 0.0)
        max_step = np.minimum(max_step, (speed_now + limits.max_acceleration * dt) * dt)
    new_step = np.clip(step, -max_step, max_step)
    clamped = clamped or bool(np.any(np.abs(new_step - step) > 1e-12))
    command = np.clip(previous + new_step, limits.lower, limits.upper)
    return command, clamped
