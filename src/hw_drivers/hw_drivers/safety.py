"""Safety rules for chunks and commands (pure numpy, no ROS).

``validate_timing`` and ``validate_chunk`` reject a whole chunk instead of executing part of it;
``CommandGuard`` is the one place every command the executor produces passes through (tracking,
ramp-in, holds, reset, e-stop, watchdog, dry run alike), so its invariants hold whatever the
input was. Rejection reasons start with a short code (``non_finite:``, ``joint_set:``,
``timing:``, ...) that the executor counts by; the rest names the joint, step and values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from hw_drivers.chunk import Chunk

#: Relative slack on velocity checks so a chunk sampled exactly at the limit is not rejected by
#: rounding.
_VELOCITY_SLACK = 1e-6
_POSITION_SLACK = 1e-9


@dataclass(frozen=True)
class JointLimits:
    """Per-joint limits in REP-103 units, each an array of shape (joints,).

    ``margin``: how far outside [lower, upper] a chunk's point may lie and still be accepted;
    it is then executed at the limit (``clip_into``). None: 0 for every joint. A flow-matching
    policy's gripper output overshoots its normalised [0, 1] a little when it closes or opens
    fully (the released YAM deployment accepts gripper targets in [-0.05, 1.05]); without a
    margin each such chunk would be refused whole and the arm would stall on a full grasp.
    No command ever leaves [lower, upper]: the margin only decides refuse-or-clip.
    """

    lower: np.ndarray
    upper: np.ndarray
    max_velocity: np.ndarray
    max_acceleration: np.ndarray
    margin: np.ndarray | None = None

    def __post_init__(self) -> None:
        arrays = {}
        for name in ("lower", "upper", "max_velocity", "max_acceleration", "margin"):
            given = getattr(self, name)
            if name == "margin" and given is None:
                given = np.zeros(arrays["lower"].size)
            value = np.array(given, dtype=float, copy=True).reshape(-1)
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
        problems = margin_problems(arrays["margin"], arrays["lower"].size)
        if problems:
            raise ValueError(f"joint limits: {'; '.join(problems)}")

    @property
    def num_joints(self) -> int:
        return int(self.lower.size)


def margin_problems(margin: Sequence[float], joints: int) -> list[str]:
    """Why ``margin`` cannot be the ``position_margin`` of ``joints`` joints (empty: it can)."""
    values = np.asarray(margin, dtype=float).reshape(-1)
    if values.size != joints:
        return [f"position_margin has {values.size} values for {joints} joints"]
    if not np.all(np.isfinite(values) & (values >= 0)):
        return ["position_margin must be finite and >= 0 for every joint"]
    return []


#: How far a chunk's ``step_dt`` may stray from the embodiment's action period, either way.
STEP_DT_RATIO = 4.0


@dataclass(frozen=True)
class SafetyConfig:
    max_step_per_tick: float = 0.03  # largest change of any joint command per tick [rad]
    max_start_deviation: float = 0.5  # first applicable point vs measured [rad]
    ramp_in_time: float = 1.0  # blend from the current command after start/reset [s]
    watchdog_timeout: float = 0.5  # no accepted chunk for this long -> hold [s]
    # Time domain of a chunk (see ``validate_timing``; ``step_dt_bounds`` derives the first two).
    min_step_dt: float = 1e-3  # [s]
    max_step_dt: float = 1.0  # [s]
    max_chunk_duration: float = 10.0  # horizon * step_dt [s]
    max_chunk_lead: float = 0.25  # stamp / first action at most this far ahead of now [s]
    max_chunk_age: float = 2.0  # stamp at most this far behind now [s]


def step_dt_bounds(control_rate: float, chunk_rate: float = 0.0) -> tuple[float, float]:
    """The ``step_dt`` range a driver at ``control_rate`` [Hz] accepts.

    Actions closer together than one control tick cannot be followed (the loop would skip them
    and knot times run into float resolution), and a period far from the one the embodiment was
    trained at (``chunk_rate``, 0 when unknown) is not a chunk of that policy: its knots would be
    interpolated across spans the model never meant.
    """
    tick = 1.0 / control_rate
    if chunk_rate > 0:
        expected = 1.0 / chunk_rate
        low = max(tick, expected / STEP_DT_RATIO)
        return low, max(low, expected * STEP_DT_RATIO)
    return tick, max(tick, 1.0)


def validate_timing(chunk: Chunk, now: float, config: SafetyConfig) -> str | None:
    """Why ``chunk``'s times make it unusable at ``now`` (driver clock), or None.

    Checks ``step_dt`` against its bounds, the span ``horizon * step_dt``, and the stamp and
    first action against ``now``: a stamp is an observation's capture time, so one from the
    future (beyond clock skew) or long past is not a chunk for the present.
    """
    step_dt, stamp, offset = chunk.step_dt, chunk.stamp, chunk.start_offset
    if not all(math.isfinite(v) for v in (step_dt, stamp, offset)):
        return (
            f"non_finite: stamp {stamp}, start_offset {offset} and step_dt {step_dt} must be "
            "finite"
        )
    if not config.min_step_dt <= step_dt <= config.max_step_dt:
        return (
            f"timing: step_dt {step_dt:.6g} s is outside [{config.min_step_dt:.6g}, "
            f"{config.max_step_dt:.6g}] s"
        )
    duration = chunk.horizon * step_dt
    if duration > config.max_chunk_duration:
        return (
            f"timing: horizon {chunk.horizon} x step_dt {step_dt:.6g} s = {duration:.3f} s is "
            f"longer than {config.max_chunk_duration:g} s"
        )
    if not 0.0 <= offset <= config.max_chunk_duration:
        return f"timing: start_offset {offset:.6g} s is outside [0, {config.max_chunk_duration:g}]"
    if stamp > now + config.max_chunk_lead:
        return (
            f"future: stamp is {stamp - now:.3f} s ahead of the driver's clock (max "
            f"{config.max_chunk_lead:g} s)"
        )
    first = stamp + offset
    if first > now + config.max_chunk_lead:
        return (
            f"future: first action applies {first - now:.3f} s from now (max "
            f"{config.max_chunk_lead:g} s)"
        )
    if now - stamp > config.max_chunk_age:
        return (
            f"stale: stamp is {now - stamp:.3f} s old (max {config.max_chunk_age:g} s)"
        )
    return None


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
    the start-deviation rule compares that action with ``measured``. The checks of
    ``check_chunk_content``, ``check_chunk_limits`` and ``check_start_deviation``, in that order.
    """
    ordered, reason = check_chunk_content(chunk, joint_names)
    if reason is not None or ordered is None:
        return reason
    return check_chunk_limits(ordered, joint_names, limits) or check_start_deviation(
        ordered, joint_names, measured, config, first_index=first_index
    )


def check_chunk_content(
    chunk: Chunk, joint_names: Sequence[str]
) -> tuple[Chunk | None, str | None]:
    """The checks of ``validate_chunk`` that need nothing but the chunk and the driver's joint
    names: layout, joint set, finite positions and velocities. A driver runs them outside its
    lock (``ChunkExecutor.prepare``): they are O(horizon x joints) and depend on no state.

    Returns the chunk in ``joint_names``' column order and None, or None and the reason.
    """
    names = tuple(joint_names)
    positions = chunk.positions
    if positions.ndim != 2 or positions.shape[0] == 0:
        return None, f"shape: positions must be (horizon>0, joints), got shape {positions.shape}"
    if positions.shape[1] != len(chunk.joint_names):
        return None, (
            f"shape: {positions.shape[1]} position columns for "
            f"{len(chunk.joint_names)} joint names"
        )
    if not (np.isfinite(chunk.step_dt) and chunk.step_dt > 0):
        return None, f"shape: step_dt must be finite and > 0, got {chunk.step_dt}"
    if not (np.isfinite(chunk.stamp) and np.isfinite(chunk.start_offset)):
        return None, "non_finite: stamp or start_offset is not finite"
    try:
        ordered = chunk.reordered(names)
    except ValueError as err:
        return None, f"joint_set: {err}"
    positions = ordered.positions
    bad = ~np.isfinite(positions)
    if bad.any():
        k, j = (int(v) for v in np.argwhere(bad)[0])
        return None, (
            f"non_finite: {int(bad.sum())} NaN/inf values, first at step {k} joint "
            f"{_joint(names, j)} ({positions[k, j]})"
        )
    problem = _velocities_problem(ordered, names)
    if problem is not None:
        return None, problem
    return ordered, None


def check_chunk_limits(
    ordered: Chunk, joint_names: Sequence[str], limits: JointLimits
) -> str | None:
    """The position and velocity limits of ``validate_chunk`` for a chunk
    ``check_chunk_content`` passed and put in ``joint_names``' order."""
    names = tuple(joint_names)
    positions = ordered.positions
    below = positions < limits.lower - limits.margin - _POSITION_SLACK
    above = positions > limits.upper + limits.margin + _POSITION_SLACK
    outside = below | above
    if outside.any():
        k, j = (int(v) for v in np.argwhere(outside)[0])
        margin = f" (margin {limits.margin[j]:g})" if limits.margin[j] > 0 else ""
        return (
            f"position_limit: joint {_joint(names, j)} at step {k} is {positions[k, j]:.6g}, "
            f"outside [{limits.lower[j]:.4f}, {limits.upper[j]:.4f}]{margin}"
        )
    if positions.shape[0] > 1:
        velocity = np.abs(np.diff(positions, axis=0)) / ordered.step_dt
        too_fast = velocity > limits.max_velocity * (1 + _VELOCITY_SLACK)
        if too_fast.any():
            k, j = (int(v) for v in np.argwhere(too_fast)[0])
            return (
                f"velocity_limit: joint {_joint(names, j)} from step {k} to {k + 1} implies "
                f"{velocity[k, j]:.3f}/s > max {limits.max_velocity[j]:.3f}/s"
            )
    return None


def clip_into(ordered: Chunk, limits: JointLimits) -> Chunk:
    """``ordered`` (in the limits' joint order) with every position inside [lower, upper]: what
    a chunk ``check_chunk_limits`` accepted within its margin executes. The same object when
    nothing is outside, so a chunk inside the limits is untouched."""
    positions = ordered.positions
    clipped = np.clip(positions, limits.lower, limits.upper)
    if np.array_equal(clipped, positions):
        return ordered
    return replace(ordered, positions=clipped)


def check_start_deviation(
    ordered: Chunk,
    joint_names: Sequence[str],
    measured: np.ndarray | None,
    config: SafetyConfig,
    *,
    first_index: int = 0,
) -> str | None:
    """The start-deviation rule of ``validate_chunk``: the first executed action (after the
    latency skip) against the measured pose."""
    names = tuple(joint_names)
    positions = ordered.positions
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


def _velocities_problem(chunk: Chunk, names: Sequence[str]) -> str | None:
    """Why the chunk's optional velocities are malformed (None when empty or well-formed).

    Nothing follows them yet, but a chunk that carries them broken is not the chunk its sender
    meant: refused whole, like broken positions.
    """
    velocities, positions = chunk.velocities, chunk.positions
    if velocities.size == 0:
        return None
    if velocities.shape != positions.shape:
        return (
            f"shape: {velocities.size} velocities for {positions.shape[0]} steps x "
            f"{positions.shape[1]} joints (the layout of positions, or none)"
        )
    bad = ~np.isfinite(velocities)
    if bad.any():
        k, j = (int(v) for v in np.argwhere(bad)[0])
        return (
            f"non_finite: {int(bad.sum())} NaN/inf velocities, first at step {k} joint "
            f"{_joint(names, j)} ({velocities[k, j]})"
        )
    return None


@dataclass(frozen=True)
class GuardedCommand:
    positions: np.ndarray
    velocities: np.ndarray
    clamped: bool  # a rule changed the requested position this tick
    fault: str  # "" or why the request was unusable (non-finite); the command then holds


class CommandGuard:
    """The last word on every command: finite, inside the limits, step, speed and acceleration
    limited relative to the previous command.

    Per joint and tick, with ``dt`` the time since the previous command and ``v`` the previous
    command's actual speed (its step over its ``dt``): the position stays in
    ``[lower, upper]``; the step is at most ``max_step_per_tick`` and ``max_velocity * dt``;
    speed grows by at most ``max_acceleration * dt`` (a step against the previous motion
    counts from zero speed). Slowing down is never limited: stopping (e-stop, hold) is always
    allowed, and a step never overshoots the requested position. A non-finite request is a
    fault: the command holds the last one. ``dt <= 0`` (first command, clock stepped back)
    holds too.

    One exception, by necessity: ``start`` takes the measured pose as it is, and a robot
    started outside its limits is then only ever moved towards them.
    """

    def __init__(self, limits: JointLimits, config: SafetyConfig) -> None:
        self.limits = limits
        self.config = config
        self._position: np.ndarray | None = None
        self._speed = np.zeros(limits.num_joints)  # actual velocity of the last step
        self._time: float | None = None

    @property
    def started(self) -> bool:
        return self._position is not None

    @property
    def position(self) -> np.ndarray:
        if self._position is None:
            raise RuntimeError("command guard not started")
        return self._position.copy()

    @property
    def velocity(self) -> np.ndarray:
        """Actual velocity of the last command (its step over its tick)."""
        return self._speed.copy()

    def start(self, position: np.ndarray, now: float | None = None) -> None:
        """Begin a new command stream at ``position`` (the robot's pose as the link came up)."""
        position = np.array(position, dtype=float, copy=True).reshape(-1)
        if position.shape != (self.limits.num_joints,) or not np.all(np.isfinite(position)):
            raise ValueError(f"command guard start: need {self.limits.num_joints} finite values")
        self._position = position
        self._speed = np.zeros_like(position)
        self._time = now if now is not None and math.isfinite(now) else None

    def hold(self, now: float) -> GuardedCommand:
        """The previous command again (always allowed)."""
        return self.apply(self.position, np.zeros(self.limits.num_joints), now)

    def apply(self, target: np.ndarray, velocity: np.ndarray, now: float) -> GuardedCommand:
        """The command for ``now`` closest to ``target`` that obeys every rule."""
        previous = self.position
        n = previous.size
        target = np.asarray(target, dtype=float).reshape(-1)
        velocity = np.asarray(velocity, dtype=float).reshape(-1)
        dt = 0.0
        if math.isfinite(now):
            if self._time is not None:
                dt = now - self._time
            self._time = now
        if target.shape != (n,) or velocity.shape != (n,):
            return self._stay(previous, f"non_finite: planned command has shape {target.shape}")
        if not np.all(np.isfinite(target)):
            bad = int(np.flatnonzero(~np.isfinite(target))[0])
            return self._stay(
                previous, f"non_finite: planned position of joint #{bad} is {target[bad]}"
            )
        if not dt > 0:
            self._speed = np.zeros(n)
            return GuardedCommand(previous, np.zeros(n), bool(np.any(target != previous)), "")
        limits = self.limits
        limited = np.clip(target, limits.lower, limits.upper)
        clamped = bool(np.any(np.abs(limited - target) > _POSITION_SLACK))
        step = limited - previous
        max_step = np.minimum(self.config.max_step_per_tick, limits.max_velocity * dt)
        same_direction = np.sign(step) == np.sign(self._speed)
        speed_now = np.where(same_direction, np.abs(self._speed), 0.0)
        max_step = np.minimum(max_step, (speed_now + limits.max_acceleration * dt) * dt)
        new_step = np.clip(step, -max_step, max_step)
        clamped = clamped or bool(np.any(np.abs(new_step - step) > 1e-12))
        # Never further outside the limits than the previous command (see ``start``).
        command = np.clip(
            previous + new_step,
            np.minimum(limits.lower, previous),
            np.maximum(limits.upper, previous),
        )
        actual = (command - previous) / dt
        if clamped or not np.all(np.isfinite(velocity)):
            out_velocity = actual
        else:
            out_velocity = np.clip(velocity, -limits.max_velocity, limits.max_velocity)
        self._position = command
        self._speed = actual
        return GuardedCommand(command.copy(), out_velocity, clamped, "")

    def _stay(self, previous: np.ndarray, fault: str) -> GuardedCommand:
        self._speed = np.zeros(previous.size)
        return GuardedCommand(previous, np.zeros(previous.size), True, fault)
