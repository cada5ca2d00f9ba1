"""Real-time action-chunk executor: latency skip, C1 splicing, watchdog, ramp-in, e-stop.

Pure and clock-injected: every method takes ``now`` (seconds on the driver's clock), nothing
sleeps or starts threads, so tests drive it tick by tick. The driver calls ``submit`` when a
chunk arrives and ``tick`` at the control rate; ``tick`` returns the one command to send.

Timing model (real-time chunking): action ``k`` applies at ``chunk.time_of(k)``. When a chunk
arrives at ``now`` its first ``d = ceil((now - time_of(0)) / step_dt)`` actions are already in
the past; they are skipped (never executed late) and the trajectory is sampled at the right
phase. A splice carries the previous command's position and velocity into the new trajectory
with a cubic correction that fades out over ``blend_window`` (``HermiteCorrection``), so neither
position nor velocity jumps at a chunk boundary, unlike a trajectory replace that restarts from
zero velocity.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from hw_drivers.chunk import Chunk
from hw_drivers.interpolation import INTERPOLATIONS, HermiteCorrection, KnotTrajectory
from hw_drivers.safety import JointLimits, SafetyConfig, clamp_command, validate_chunk

SPLICE_POLICIES = ("blend", "replace", "average")
STATES = ("idle", "ramp_in", "tracking", "holding", "estop")

# Slack for "already in the past" so a chunk whose action lands exactly on `now` keeps it.
_TIME_EPS = 1e-9


@dataclass(frozen=True)
class ExecutorConfig:
    interpolation: str = "cubic"  # "linear" | "cubic"
    # "blend": C1 correction over blend_window; "average": knots averaged with the old plan
    # where they overlap (LeRobot's weighted merge) and then the same C1 correction;
    # "replace": switch at once, only the per-tick clamp limits the jump.
    splice_policy: str = "blend"
    blend_window: float = 0.1  # [s]
    average_weight_new: float = 0.7
    dry_run: bool = False  # compute and publish commands but never send them to the hardware

    def validate(self) -> list[str]:
        problems = []
        if self.interpolation not in INTERPOLATIONS:
            problems.append(f"interpolation must be one of {INTERPOLATIONS}")
        if self.splice_policy not in SPLICE_POLICIES:
            problems.append(f"splice_policy must be one of {SPLICE_POLICIES}")
        if self.blend_window < 0:
            problems.append("blend_window must be >= 0")
        if not 0.0 <= self.average_weight_new <= 1.0:
            problems.append("average_weight_new must be in [0, 1]")
        return problems


@dataclass(frozen=True)
class SubmitResult:
    accepted: bool
    reason: str  # "" when accepted
    skipped_steps: int  # actions already in the past at submit time


@dataclass(frozen=True)
class Command:
    positions: np.ndarray
    velocities: np.ndarray
    state: str  # one of STATES
    clamped: bool  # the safety clamp changed the planned position this tick
    reason: str  # why the executor is holding / idle / stopped ("" while tracking)


@dataclass
class ExecutorStats:
    ticks: int = 0
    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)  # reason code -> count
    clamped_ticks: int = 0
    splices: int = 0
    watchdog_holds: int = 0
    skipped_steps: int = 0
    last_reject_reason: str = ""

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


@dataclass
class _Plan:
    chunk: Chunk
    trajectory: KnotTrajectory
    accepted_at: float
    correction: HermiteCorrection | None = None
    ramp_in: bool = False
    anchored: bool = False  # correction computed at the first tick after acceptance

    def sample(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        pos, vel = self.trajectory.sample(t)
        if self.correction is not None:
            dpos, dvel = self.correction.sample(t)
            pos, vel = pos + dpos, vel + dvel
            if t >= self.trajectory.end:
                vel = dvel  # never extrapolate: the trajectory itself stands still past its end
        return pos, vel

    def end(self) -> float:
        end = self.trajectory.end
        if self.correction is not None and self.correction.window > 0:
            end = max(end, self.correction.t0 + self.correction.window)
        return end


class ChunkExecutor:
    """Turns timed chunks into one safe joint command per control tick."""

    def __init__(
        self,
        joint_names: Sequence[str],
        limits: JointLimits,
        safety: SafetyConfig,
        config: ExecutorConfig,
    ) -> None:
        self.joint_names = tuple(joint_names)
        if limits.num_joints != len(self.joint_names):
            raise ValueError(
                f"{limits.num_joints} joint limits for {len(self.joint_names)} joints"
            )
        problems = config.validate()
        if problems:
            raise ValueError("executor config: " + "; ".join(problems))
        self.limits = limits
        self.safety = safety
        self.config = config
        self.stats = ExecutorStats()
        self._plan: _Plan | None = None
        self._pending: _Plan | None = None
        self._last_command: np.ndarray | None = None
        self._last_velocity = np.zeros(len(self.joint_names))
        self._last_tick: float | None = None
        self._last_accept: float | None = None
        self._estopped = False
        self._hold_requested = False
        self._needs_ramp_in = True
        self._ramp_after_hold = False
        self._state = "idle"
        self._reason = "no chunk yet"

    # -- inputs -------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    @property
    def estopped(self) -> bool:
        return self._estopped

    @property
    def last_command(self) -> np.ndarray | None:
        return None if self._last_command is None else self._last_command.copy()

    def reject(self, reason: str) -> SubmitResult:
        """Count a chunk rejected before it could be submitted (e.g. a malformed message).

        ``reason`` starts with a short code and a colon, like the executor's own reasons.
        """
        return self._reject(reason)

    def _reject(self, reason: str) -> SubmitResult:
        self.stats.rejected[reason.split(":", 1)[0]] += 1
        self.stats.last_reject_reason = reason
        return SubmitResult(False, reason, 0)

    def submit(self, chunk: Chunk, now: float, measured: np.ndarray) -> SubmitResult:
        """Validate ``chunk`` and schedule it to take over at the next tick."""
        if self._estopped:
            return self._reject("estop: e-stop latched; call reset first")
        if self._hold_requested:
            return self._reject("hold: hold requested; chunks are ignored until released")
        if chunk.positions.ndim == 2 and chunk.positions.shape[0] > 0 and chunk.step_dt > 0:
            delay = (now - chunk.time_of(0)) / chunk.step_dt
            skipped = max(0, math.ceil(delay - _TIME_EPS)) if math.isfinite(delay) else 0
            if skipped >= chunk.horizon:
                return self._reject(
                    f"stale: all {chunk.horizon} actions are in the past (last at "
                    f"{chunk.end_time:.3f}, now {now:.3f}; latency {now - chunk.stamp:.3f} s)"
                )
        else:
            skipped = 0
        reason = validate_chunk(
            chunk,
            self.joint_names,
            self.limits,
            measured,
            self.safety,
            first_index=skipped,
        )
        if reason is not None:
            return self._reject(reason)
        active = self._pending or self._plan
        if active is not None and chunk.stamp < active.chunk.stamp:
            return self._reject(
                f"out_of_order: chunk stamp {chunk.stamp:.3f} is older than the active chunk's "
                f"{active.chunk.stamp:.3f}"
            )
        chunk = chunk.reordered(self.joint_names)
        knots = chunk.positions
        times = chunk.times()
        if (
            self.config.splice_policy == "average"
            and self._plan is not None
            and not self._needs_ramp_in
        ):
            knots = self._average_with(self._plan, times, knots)
        trajectory = KnotTrajectory(times, knots, self.config.interpolation)
        self._pending = _Plan(
            chunk=chunk,
            trajectory=trajectory,
            accepted_at=now,
            ramp_in=self._needs_ramp_in or self._ramp_after_hold,
        )
        self._last_accept = now
        self.stats.accepted += 1
        self.stats.skipped_steps += skipped
        return SubmitResult(True, "", skipped)

    def _average_with(self, old: _Plan, times: np.ndarray, knots: np.ndarray) -> np.ndarray:
        w = self.config.average_weight_new
        merged = knots.copy()
        for k, t in enumerate(times):
            if old.trajectory.covers(t):
                old_pos, _ = old.sample(t)
                merged[k] = w * knots[k] + (1 - w) * old_pos
        return merged

    def estop(self) -> None:
        """Latch the e-stop: commands hold where they are with zero velocity until ``reset``."""
        self._estopped = True
        self._plan = None
        self._pending = None

    def reset(self, measured: np.ndarray) -> None:
        """Clear e-stop, hold and plans; hold at ``measured``; the next chunk ramps in."""
        self._estopped = False
        self._hold_requested = False
        self._plan = None
        self._pending = None
        self._last_command = np.array(measured, dtype=float, copy=True)
        self._last_velocity = np.zeros(len(self.joint_names))
        self._needs_ramp_in = True
        self._ramp_after_hold = False
        self._state = "idle"
        self._reason = "reset; waiting for a chunk"

    def hold(self, on: bool) -> None:
        """Hold the current command (on) or accept chunks again (off)."""
        self._hold_requested = on
        if on:
            self._plan = None
            self._pending = None

    # -- the control tick ---------------------------------------------------------------------

    def tick(self, now: float, measured: np.ndarray) -> Command:
        """The command for time ``now``."""
        self.stats.ticks += 1
        if self._last_command is None:
            self.reset(measured)
        assert self._last_command is not None
        dt = 0.0 if self._last_tick is None else now - self._last_tick
        if self._last_tick is not None and dt < 0:
            dt = 0.0  # a clock step backwards (sim time reset): hold this tick
        target, velocity = self._plan_target(now, measured)
        if self._estopped:
            command, clamped = self._last_command.copy(), False
            velocity = np.zeros_like(command)
        else:
            command, clamped = clamp_command(
                target,
                self._last_command,
                self.limits,
                self.safety,
                dt,
                previous_velocity=self._last_velocity,
            )
            if clamped:
                self.stats.clamped_ticks += 1
                velocity = (command - self._last_command) / dt if dt > 0 else velocity * 0
        self._last_command = command
        self._last_velocity = np.asarray(velocity, dtype=float)
        self._last_tick = now
        return Command(
            positions=command.copy(),
            velocities=self._last_velocity.copy(),
            state=self._state,
            clamped=clamped,
            reason=self._reason,
        )

    def _hold_here(self, state: str, reason: str) -> tuple[np.ndarray, np.ndarray]:
        self._state, self._reason = state, reason
        assert self._last_command is not None
        return self._last_command.copy(), np.zeros(len(self.joint_names))

    def _plan_target(self, now: float, measured: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._estopped:
            return self._hold_here("estop", "e-stop latched; call reset")
        if self._hold_requested:
            return self._hold_here("holding", "hold requested")
        if self._pending is not None:
            self._activate(self._pending, now, measured)
            self._pending = None
        plan = self._plan
        if plan is None:
            state = "idle" if self._needs_ramp_in else "holding"
            return self._hold_here(state, self._reason if state == self._state else "no chunk")
        assert self._last_accept is not None
        since_accept = now - self._last_accept
        if since_accept > self.safety.watchdog_timeout:
            self._plan = None
            self.stats.watchdog_holds += 1
            # The policy went away (crash, restart, network): whatever comes next starts
            # from where the arm is, like after a reset, not spliced over blend_window.
            self._ramp_after_hold = True
            return self._hold_here(
                "holding", f"watchdog: no chunk for {since_accept:.3f} s"
            )
        if now > plan.end():
            self._plan = None
            self._hold_here("holding", "chunk ended; holding its last point")
            last_point, _ = plan.sample(plan.end())
            return last_point, np.zeros(len(self.joint_names))
        in_ramp = plan.ramp_in and plan.correction is not None and plan.correction.active(now)
        self._state, self._reason = ("ramp_in" if in_ramp else "tracking"), ""
        return plan.sample(now)

    def _activate(self, plan: _Plan, now: float, measured: np.ndarray) -> None:
        """Anchor the pending plan at this tick so the command continues without a jump."""
        assert self._last_command is not None
        new_pos, new_vel = plan.trajectory.sample(now)
        if plan.ramp_in:
            start_pos = np.asarray(measured, dtype=float)
            start_vel = np.zeros_like(start_pos)
            window = max(self.safety.ramp_in_time, 0.0)
            self._needs_ramp_in = False
            self._ramp_after_hold = False
            # The ramp starts where the arm is, not where an older hold command was.
            self._last_command = start_pos.copy()
            self._last_velocity = start_vel.copy()
        else:
            # Where the previous command would be now, moving as it was.
            dt = 0.0 if self._last_tick is None else max(now - self._last_tick, 0.0)
            start_pos = self._last_command + self._last_velocity * dt
            start_vel = self._last_velocity.copy()
            window = self.config.blend_window
            if self.config.splice_policy == "replace":
                window = 0.0
            current = self._plan
            if (
                current is not None
                and current.ramp_in
                and current.correction is not None
                and current.correction.active(now)
            ):
                # A chunk that arrives mid ramp-in keeps the ramp's pace: spliced over the
                # ramp's remaining time, not the (short) blend window, so it cannot jump.
                remaining = current.correction.t0 + current.correction.window - now
                window = max(window, remaining)
                plan.ramp_in = True
            if self._plan is not None:
                self.stats.splices += 1
        plan.correction = (
            HermiteCorrection(now, window, start_pos - new_pos, start_vel - new_vel)
            if window > 0
            else None
        )
        plan.anchored = True
        self._plan = plan
