"""Real-time action-chunk executor: latency skip, C1 splicing, watchdog, ramp-in, e-stop.

Pure and clock-injected: every method takes ``now`` (seconds on the driver's clock), nothing
sleeps or starts threads, so tests drive it tick by tick. The driver calls ``submit`` when a
chunk arrives and ``tick`` at the control rate; ``tick`` returns the one command to send.

Every command ``tick`` returns, whatever state produced it (tracking, ramp-in, hold, reset,
e-stop, watchdog, dry run), passes through one ``CommandGuard``: finite, inside the position
limits, step, speed and acceleration limited relative to the previous command. A non-finite
planned value is a fault that holds the last command until ``reset``. A rejected chunk changes
nothing but the rejection counters.

Timing model (real-time chunking): action ``k`` applies at ``chunk.time_of(k)``. When a chunk
arrives at ``now`` its first ``d = ceil((now - time_of(0)) / step_dt)`` actions are already in
the past; they are skipped (never executed late) and the trajectory is sampled at the right
phase. A splice carries the previous plan's position and velocity at the takeover tick into the
new trajectory with a cubic correction that fades out over ``blend_window``
(``HermiteCorrection``), so neither position nor velocity jumps at a chunk boundary. Because the
carried state is the previous *plan's* (not the last command pushed forward at its velocity), a
stream of chunks faster than the control rate converges on their content: the latest chunk
wins and the command follows the trajectory they describe. A chunk whose first action is still
ahead waits in a short queue and takes over at that action (the current plan, or the hold, runs
until then), so nothing is ever extrapolated outside a chunk's knots; a flood of such chunks
cannot starve the queue because the ones already waiting keep their turn.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from hw_drivers.chunk import Chunk
from hw_drivers.interpolation import INTERPOLATIONS, HermiteCorrection, KnotTrajectory
from hw_drivers.safety import (
    CommandGuard,
    JointLimits,
    SafetyConfig,
    check_chunk_content,
    check_chunk_limits,
    check_start_deviation,
    clip_into,
    validate_timing,
)

SPLICE_POLICIES = ("blend", "replace", "average")
STATES = ("idle", "ramp_in", "tracking", "holding", "estop", "fault")
# What ~/estop and ~/hold answer and why chunks are refused meanwhile (the trajectory bridge
# answers the same: hw_drivers.bridge_control).
ESTOP_LATCHED = "e-stop latched; call ~/reset to resume"
REJECT_ESTOP = "estop: e-stop latched; call reset first"
REJECT_HOLD = "hold: hold requested; chunks are ignored until released"
HOLDING = "holding"
HOLD_RELEASED = "hold released: following chunks (the next one ramps in)"
HOLD_RELEASED_IN_ESTOP = "hold released, but the e-stop is latched: still holding; call ~/reset"
OPERATOR_ESTOP = "operator ~/estop"  # the reason of an e-stop nobody gave one for

# Slack for "already in the past" so a chunk whose action lands exactly on `now` keeps it.
_TIME_EPS = 1e-9
#: Chunks whose first action is still ahead, waiting their turn; a newer one beyond this many
#: replaces the newest waiting one (latest wins) instead of pushing the oldest out.
MAX_WAITING = 16
#: Diagnostics count rejections over this many seconds, so they describe the present.
REJECTION_WINDOW = 10.0


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
    rejection_window: float = REJECTION_WINDOW  # [s] recent rejections counted over this span

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
        if not self.rejection_window > 0:
            problems.append("rejection_window must be > 0")
        return problems


@dataclass(frozen=True)
class SubmitResult:
    accepted: bool
    reason: str  # "" when accepted
    skipped_steps: int  # actions already in the past at submit time


@dataclass(frozen=True)
class PreparedChunk:
    """A chunk with the work done that needs no executor state (``ChunkExecutor.prepare``): a
    driver does it outside its lock and only ``submit_prepared`` under it. Every reason comes
    out where ``submit`` gives it, so preparing first changes no verdict and no reason."""

    chunk: Chunk | None  # None: the message could not be made into a chunk (``problem`` says)
    ordered: Chunk | None  # in the executor's joint order; None when ``problem``
    problem: str | None  # the first reason the chunk is unusable whatever the state
    joint_names: tuple[str, ...]  # the executor's it was prepared for
    # Checked against these limits (the live ones then; submit checks again if they changed).
    limits: JointLimits | None = None
    limits_problem: str | None = None
    # Its trajectory, when no state shapes it (not the "average" splice policy).
    trajectory: KnotTrajectory | None = None
    trajectory_problem: str | None = None


@dataclass(frozen=True)
class Command:
    positions: np.ndarray
    velocities: np.ndarray
    state: str  # one of STATES
    clamped: bool  # the safety clamp changed the planned position this tick
    reason: str  # why the executor is holding / idle / stopped ("" while tracking)


class EventWindow:
    """Counts events in the last ``window`` seconds, in one-second buckets (bounded memory
    however many events arrive)."""

    def __init__(self, window: float = REJECTION_WINDOW) -> None:
        self.window = window
        self._buckets: dict[int, int] = {}

    def add(self, now: float) -> None:
        if not math.isfinite(now):
            return
        key = math.floor(now)
        self._prune(now)
        self._buckets[key] = self._buckets.get(key, 0) + 1

    def count(self, now: float) -> int:
        self._prune(now)
        return sum(self._buckets.values())

    def _prune(self, now: float) -> None:
        if not math.isfinite(now):
            return
        # Keys after `now` too: a clock that stepped back (sim time reset) starts afresh.
        low, high = math.floor(now - self.window), math.floor(now)
        for key in [k for k in self._buckets if k <= low or k > high]:
            del self._buckets[key]


@dataclass
class ExecutorStats:
    ticks: int = 0
    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)  # reason code -> count (since start)
    clamped_ticks: int = 0
    splices: int = 0
    watchdog_holds: int = 0
    skipped_steps: int = 0
    faults: int = 0
    last_reject_reason: str = ""
    recent_rejections: EventWindow = field(default_factory=EventWindow)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def rejected_recently(self, now: float) -> int:
        """Chunks rejected in the last ``recent_rejections.window`` seconds before ``now``."""
        return self.recent_rejections.count(now)


@dataclass
class _Plan:
    chunk: Chunk
    trajectory: KnotTrajectory
    accepted_at: float
    correction: HermiteCorrection | None = None

    @property
    def order_stamp(self) -> float:
        """Stamp for ordering; one from the future counts as its arrival time, so a chunk
        stamped ahead cannot lock out the chunks that follow it."""
        return min(self.chunk.stamp, self.accepted_at)

    def sample(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        pos, vel = self.trajectory.sample(t)
        if self.correction is not None:
            dpos, dvel = self.correction.sample(t)
            pos, vel = pos + dpos, vel + dvel
            if t >= self.trajectory.end:
                vel = dvel  # never extrapolate: the trajectory itself stands still past its end
        return pos, vel

    def blend_end(self) -> float:
        """When this plan's splice / ramp-in blend is over."""
        end = -math.inf
        if self.correction is not None and self.correction.window > 0:
            end = self.correction.t0 + self.correction.window
        return end

    def end(self) -> float:
        return max(self.trajectory.end, self.blend_end())


@dataclass(frozen=True)
class _Ramp:
    """The ramp-in from where the command stood (after start, reset, hold or watchdog): over
    ``duration`` the command moves from ``hold`` onto whatever plan runs, as the convex blend
    ``hold + a(s) (plan - hold)``, ``a`` the smoothstep ``3s^2 - 2s^3``. At every tick the
    command lies between the hold point and the plan, whatever chunks are spliced meanwhile
    (an offset faded from the first chunk's value instead went on being added to the later
    chunks' motion: 0.1 rad past every chunk under 1-2 s latencies), and it leaves the hold
    and meets the plan with matching velocity (a'(0) = a'(1) = 0)."""

    t0: float
    duration: float
    hold: np.ndarray

    def active(self, t: float) -> bool:
        return t < self.t0 + self.duration

    def apply(
        self, t: float, pos: np.ndarray, vel: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        if not self.active(t):
            return pos, vel
        s = min(max((t - self.t0) / self.duration, 0.0), 1.0)
        a = s * s * (3.0 - 2.0 * s)
        da = 6.0 * s * (1.0 - s) / self.duration
        offset = pos - self.hold
        return self.hold + a * offset, a * vel + da * offset


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
        self.stats = ExecutorStats(recent_rejections=EventWindow(config.rejection_window))
        self.guard = CommandGuard(limits, safety)
        self._plan: _Plan | None = None
        self._ramp: _Ramp | None = None
        self._waiting: list[_Plan] = []  # accepted, in arrival order, not yet taken over
        self._hold_target: np.ndarray | None = None  # where holds aim; None: stay put
        self._last_accept: float | None = None
        self._last_now: float | None = None  # time of the last tick
        # Why the e-stop is latched ("" while it is not): the one record of it, so whatever
        # reports it (diagnostics, the log after a lifecycle re-configure) says why.
        self._estop_reason = ""
        self._hold_requested = False
        self._fault = ""
        self._needs_ramp_in = True
        self._ramp_after_hold = False
        self._state = "idle"
        self._reason = "no chunk yet"

    # -- inputs -------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    def set_limits(self, limits: JointLimits, max_step_per_tick: float) -> None:
        """New limits (live parameters) for the next tick and the next chunk's checks.

        A command now outside tighter position limits is not jumped inside: the guard moves it
        towards them at the (new) step, speed and acceleration limits.
        """
        if limits.num_joints != len(self.joint_names):
            raise ValueError(f"{limits.num_joints} joint limits for {len(self.joint_names)} joints")
        self.limits = limits
        self.safety = dataclasses.replace(self.safety, max_step_per_tick=max_step_per_tick)
        self.guard.limits = limits
        self.guard.config = self.safety

    @property
    def state_message(self) -> str:
        """What the state means now (``Command.reason`` of the last tick): why it holds, is idle
        or stopped, with the e-stop's reason while it is latched; "" while tracking."""
        return self._reason

    @property
    def hold_requested(self) -> bool:
        """``~/hold(true)`` is in force (until ``hold(false)``, ``reset`` or ``start``)."""
        return self._hold_requested

    @property
    def estopped(self) -> bool:
        return bool(self._estop_reason)

    @property
    def estop_reason(self) -> str:
        """Why the e-stop is latched ("" when it is not); cleared only by ``reset``."""
        return self._estop_reason

    @property
    def fault(self) -> str:
        """Why the executor is faulted ("" when it is not); cleared by ``reset``."""
        return self._fault

    @property
    def running_chunk(self) -> Chunk | None:
        """The chunk being executed (ramping in or tracking), as of the last tick."""
        return self._plan.chunk if self._plan is not None else None

    @property
    def pending_chunk(self) -> Chunk | None:
        """The newest accepted chunk still waiting for its first action (it takes over then
        unless a newer one does or a hold, e-stop or reset drops it)."""
        return self._waiting[-1].chunk if self._waiting else None

    @property
    def last_command(self) -> np.ndarray | None:
        return self.guard.position if self.guard.started else None

    def reject(self, reason: str, now: float = math.nan) -> SubmitResult:
        """Count a chunk rejected before it could be submitted (e.g. a malformed message).

        ``reason`` starts with a short code and a colon, like the executor's own reasons.
        """
        return self._reject(reason, now)

    def _reject(self, reason: str, now: float) -> SubmitResult:
        self.stats.rejected[reason.split(":", 1)[0]] += 1
        self.stats.last_reject_reason = reason
        self.stats.recent_rejections.add(now)
        return SubmitResult(False, reason, 0)

    def prepare(self, chunk: Chunk) -> PreparedChunk:
        """Everything about ``chunk`` that needs no executor state, so a driver can do it
        outside its lock: the layout, joint-set and finiteness checks (``check_chunk_content``),
        the columns in the executor's order, the position and velocity limits against the
        limits in force now, and the knot trajectory. Never raises for any chunk.

        It reads only the joint names (fixed) and whole objects that are replaced, never
        changed, while it may run (``limits``, ``safety``, ``config``). Nothing per step is
        done for a chunk whose step_dt or span the timing check refuses whatever the time
        (fixed bounds): a hostile 100k-step chunk costs no more than its conversion.
        """
        names = self.joint_names
        safety, limits = self.safety, self.limits
        if not (
            safety.min_step_dt <= chunk.step_dt <= safety.max_step_dt
            and chunk.horizon * chunk.step_dt <= safety.max_chunk_duration
        ):
            # validate_timing refuses it whatever the time, before any per-step check would.
            return PreparedChunk(chunk, None, None, names)
        ordered, problem = check_chunk_content(chunk, names)
        if ordered is None:
            return PreparedChunk(chunk, None, problem, names)
        limits_problem = check_chunk_limits(ordered, names, limits)
        if limits_problem is None:
            ordered = clip_into(ordered, limits)
        trajectory, trajectory_problem = None, None
        if limits_problem is None and self.config.splice_policy != "average":
            try:
                trajectory = KnotTrajectory(
                    ordered.times(), ordered.positions, self.config.interpolation
                )
            except ValueError as err:  # e.g. knot times that float resolution cannot separate
                trajectory_problem = f"timing: {err}"
        return PreparedChunk(
            chunk, ordered, None, names, limits, limits_problem, trajectory, trajectory_problem
        )

    def unusable(self, problem: str) -> PreparedChunk:
        """A message that could not be made into a chunk: ``submit_prepared`` rejects it first,
        with ``problem`` (a code and a colon, like every reason)."""
        return PreparedChunk(None, None, problem, self.joint_names)

    def submit(self, chunk: Chunk, now: float, measured: np.ndarray | None) -> SubmitResult:
        """Validate ``chunk`` and schedule it to take over at the next tick.

        Never raises for any chunk; a rejected chunk changes nothing but the statistics.
        """
        return self.submit_prepared(self.prepare(chunk), now, measured)

    def submit_prepared(
        self, prepared: PreparedChunk, now: float, measured: np.ndarray | None
    ) -> SubmitResult:
        """``submit`` for a chunk ``prepare`` has seen: the checks that depend on the state,
        the time and the measured pose, then the swap-in. O(joints) for a prepared chunk unless
        the live limits changed since (checked again) or the "average" splice policy merges it
        with the running plan; the horizon is bounded by the timing check before either."""
        if prepared.joint_names != self.joint_names:
            raise ValueError("a chunk prepared for another executor's joints")
        chunk = prepared.chunk
        if chunk is None:
            return self._reject(prepared.problem or "shape: no chunk", now)
        if self.estopped:
            return self._reject(REJECT_ESTOP, now)
        if self._fault:
            return self._reject(f"fault: {self._fault}; call reset first", now)
        if self._hold_requested:
            return self._reject(REJECT_HOLD, now)
        if not math.isfinite(now):
            return self._reject(f"non_finite: driver time {now}", now)
        if measured is not None:
            measured = np.asarray(measured, dtype=float).reshape(-1)
            if measured.shape != (len(self.joint_names),) or not np.all(np.isfinite(measured)):
                return self._reject("measured: the robot's measured pose is not usable", now)
        positions = chunk.positions
        if positions.ndim != 2 or positions.shape[0] == 0:
            return self._reject(
                f"shape: positions must be (horizon>0, joints), got shape {positions.shape}", now
            )
        reason = validate_timing(chunk, now, self.safety)
        if reason is not None:
            return self._reject(reason, now)
        delay = (now - chunk.time_of(0)) / chunk.step_dt
        skipped = max(0, math.ceil(delay - _TIME_EPS))
        if skipped >= chunk.horizon:
            return self._reject(
                f"stale: all {chunk.horizon} actions are in the past (last at "
                f"{chunk.end_time:.3f}, now {now:.3f}; latency {now - chunk.stamp:.3f} s)",
                now,
            )
        ordered, problem = prepared.ordered, prepared.problem
        if ordered is None and problem is None:  # skipped by prepare (refused above, normally)
            ordered, problem = check_chunk_content(chunk, self.joint_names)
        if problem is not None or ordered is None:
            return self._reject(problem or "shape: no chunk", now)
        if prepared.limits is self.limits:
            reason = prepared.limits_problem
        else:  # not checked yet, or the live limits changed since
            reason = check_chunk_limits(ordered, self.joint_names, self.limits)
            if reason is None:
                ordered = clip_into(ordered, self.limits)
        reason = reason or check_start_deviation(
            ordered, self.joint_names, measured, self.safety, first_index=skipped
        )
        if reason is not None:
            return self._reject(reason, now)
        active = self._waiting[-1] if self._waiting else self._plan
        if active is not None and chunk.stamp < active.order_stamp:
            return self._reject(
                f"out_of_order: chunk stamp {chunk.stamp:.3f} is older than the active chunk's "
                f"{active.order_stamp:.3f}",
                now,
            )
        chunk = ordered
        trajectory = prepared.trajectory
        if prepared.trajectory_problem is not None:
            return self._reject(prepared.trajectory_problem, now)
        if trajectory is None:
            knots = chunk.positions
            times = chunk.times()
            if (
                self.config.splice_policy == "average"
                and self._plan is not None
                and not self._needs_ramp_in
            ):
                knots = self._average_with(self._plan, times, knots)
            try:
                trajectory = KnotTrajectory(times, knots, self.config.interpolation)
            except ValueError as err:  # e.g. knot times that float resolution cannot separate
                return self._reject(f"timing: {err}", now)
        plan = _Plan(chunk=chunk, trajectory=trajectory, accepted_at=now)
        if len(self._waiting) >= MAX_WAITING:
            self._waiting[-1] = plan
        else:
            self._waiting.append(plan)
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

    def _drop_plans(self) -> None:
        self._plan = None
        self._ramp = None
        self._waiting = []

    def start(self, measured: np.ndarray, now: float | None = None) -> None:
        """The link to the robot came (back) up holding at ``measured``: a new command stream
        starts there. Plans and hold requests are dropped; a latched e-stop and a latched
        command fault stay latched (only ``reset`` clears them: whatever produced the bad
        command is still upstream).

        Raises ``ValueError`` when ``measured`` is not a finite pose of the right size.
        """
        self.guard.start(measured, now)
        self._drop_plans()
        self._hold_target = None
        self._hold_requested = False
        self._needs_ramp_in = True
        self._ramp_after_hold = False
        if self.estopped:
            self._state, self._reason = "estop", self._estop_message()
        elif self._fault:
            self._state, self._reason = "fault", self._fault_message()
        else:
            self._state, self._reason = "idle", "started; waiting for a chunk"

    def estop(self, reason: str = OPERATOR_ESTOP) -> str:
        """Latch the e-stop: commands hold where they are with zero velocity until ``reset``.

        ``reason`` says why; while latched the first reason stays (what stopped the arm), a
        later one is not what the operator has to look at first.
        """
        if not self._estop_reason:
            self._estop_reason = reason or OPERATOR_ESTOP
        self._drop_plans()
        self._hold_target = None
        return ESTOP_LATCHED

    def _estop_message(self) -> str:
        """The state message while the e-stop is latched: what latched it (the operator, tick
        errors, recurring backend faults), so ~/status and diagnostics name the cause."""
        return f"e-stop latched: {self._estop_reason}; call ~/reset"

    def reset(self, measured: np.ndarray | None) -> str:
        """Clear e-stop, fault, hold and plans; settle at ``measured``; the next chunk ramps in.

        The command moves from where it is to ``measured`` through the guard like any other
        (never a jump); with no usable ``measured`` it holds where it is. Returns what it did.
        """
        pose = None
        if measured is not None:
            pose = np.array(measured, dtype=float, copy=True).reshape(-1)
            if pose.shape != (len(self.joint_names),) or not np.all(np.isfinite(pose)):
                pose = None
        if not self.guard.started:
            if pose is None:
                raise ValueError("reset before any command needs a finite measured pose")
            self.guard.start(pose)
        cleared = [
            name
            for name, latched in (
                ("e-stop", self.estopped),
                ("fault", bool(self._fault)),
                ("hold", self._hold_requested),
            )
            if latched
        ]
        self._estop_reason = ""
        self._hold_requested = False
        self._fault = ""
        self._drop_plans()
        self._hold_target = pose
        self._needs_ramp_in = True
        self._ramp_after_hold = False
        where = "settling at the measured pose" if pose is not None else "holding"
        self._state, self._reason = "idle", f"reset; {where}; waiting for a chunk"
        done = f"cleared {', '.join(cleared)}; " if cleared else ""
        return f"reset: {done}{where}; the next chunk ramps in"

    def hold(self, on: bool) -> tuple[bool, str]:
        """Hold the current command (on) or accept chunks again (off).

        Returns (whether chunks are now followed as asked, what the executor does now).
        """
        self._hold_requested = on
        if on:
            self._drop_plans()
            self._hold_target = None
            self._ramp_after_hold = True  # the arm stopped: the next chunk ramps in
            return True, HOLDING
        if self.estopped:
            return False, HOLD_RELEASED_IN_ESTOP
        if self._fault:
            return False, f"hold released, but faulted ({self._fault}): still holding; call ~/reset"
        return True, HOLD_RELEASED

    # -- the control tick ---------------------------------------------------------------------

    def tick(self, now: float, measured: np.ndarray) -> Command:
        """The command for time ``now``."""
        self.stats.ticks += 1
        if not self.guard.started:
            self.guard.start(measured)  # the first command is where the robot is
        if self._last_now is not None and now < self._last_now:
            # The clock stepped back (sim time reset): plans, stamps and the watchdog all refer
            # to the old timeline. Hold; whatever comes next ramps in on the new one.
            self._drop_plans()
            self._hold_target = None
            self._last_accept = None
            self._ramp_after_hold = True
        if math.isfinite(now):
            self._last_now = now
        target, velocity = self._plan_target(now)
        if self.estopped or self._fault:
            out = self.guard.hold(now)
        else:
            out = self.guard.apply(target, velocity, now)
        if out.fault:
            self._latch_fault(out.fault)
        elif out.clamped:
            self.stats.clamped_ticks += 1
        return Command(
            positions=out.positions.copy(),
            velocities=out.velocities.copy(),
            state=self._state,
            clamped=out.clamped,
            reason=self._reason,
        )

    def _latch_fault(self, why: str) -> None:
        self._fault = why
        self.stats.faults += 1
        self._drop_plans()
        self._hold_target = None
        self._state, self._reason = "fault", self._fault_message()

    def _fault_message(self) -> str:
        return f"{self._fault}; holding the last safe command until reset"

    def _hold_here(self, state: str, reason: str) -> tuple[np.ndarray, np.ndarray]:
        self._state, self._reason = state, reason
        target = self._hold_target if self._hold_target is not None else self.guard.position
        return target.copy(), np.zeros(len(self.joint_names))

    def _plan_target(self, now: float) -> tuple[np.ndarray, np.ndarray]:
        if self.estopped:
            return self._hold_here("estop", self._estop_message())
        if self._fault:
            return self._hold_here("fault", self._fault_message())
        if self._hold_requested:
            return self._hold_here("holding", "hold requested")
        due = [i for i, p in enumerate(self._waiting) if p.trajectory.start <= now + _TIME_EPS]
        if due:
            # The latest arrival whose first action has come takes over; those before it are
            # superseded, those after it keep waiting for their first action.
            plan = self._waiting[due[-1]]
            self._waiting = self._waiting[due[-1] + 1 :]
            self._activate(plan, now)
        plan = self._plan
        if plan is None:
            state = "idle" if self._needs_ramp_in else "holding"
            return self._hold_here(state, self._reason if state == self._state else "no chunk")
        if self._last_accept is None:
            # Every plan comes from an accepted chunk; not an assert, which -O drops.
            raise RuntimeError("executor: a plan without an accepted chunk")
        since_accept = now - self._last_accept
        if since_accept > self.safety.watchdog_timeout:
            self._plan = None
            self._ramp = None
            self._hold_target = None
            self.stats.watchdog_holds += 1
            # The policy went away (crash, restart, network): whatever comes next starts
            # from where the arm is, like after a reset, not spliced over blend_window.
            self._ramp_after_hold = True
            return self._hold_here("holding", f"watchdog: no chunk for {since_accept:.3f} s")
        ramp = self._ramp
        in_ramp = ramp is not None and ramp.active(now)
        if now > plan.end() and not in_ramp:
            self._plan = None
            self._ramp = None
            # The ramp, if any, is over by now: the command has reached the plan's last point.
            last_point, _ = plan.sample(plan.end())
            self._hold_target = last_point
            return self._hold_here("holding", "chunk ended; holding its last point")
        self._state, self._reason = ("ramp_in" if in_ramp else "tracking"), ""
        pos, vel = plan.sample(now)
        return ramp.apply(now, pos, vel) if in_ramp else (pos, vel)

    def _activate(self, plan: _Plan, now: float) -> None:
        """Anchor ``plan`` (its first action has come) at this tick: the command continues
        without a jump in position or velocity."""
        current = self._plan
        if self._needs_ramp_in or self._ramp_after_hold:
            # Ramp in from the command itself (after start, reset, hold or watchdog there is
            # no plan to continue), never from a jump to somewhere else.
            self._needs_ramp_in = False
            self._ramp_after_hold = False
            duration = max(self.safety.ramp_in_time, 0.0)
            self._ramp = (
                _Ramp(now, duration, self.guard.position.copy()) if duration > 0 else None
            )
            plan.correction = None
            self._hold_target = None
            self._plan = plan
            return
        if current is not None:
            # Where the previous plan is now: a splice continues the plan, not the last
            # command pushed on at its velocity (that coasts when chunks come every tick). A
            # ramp-in under way goes on around both plans.
            start_pos, start_vel = current.sample(now)
            self.stats.splices += 1
        else:
            start_pos, start_vel = self.guard.position, self.guard.velocity
        window = self.config.blend_window
        if self.config.splice_policy == "replace":
            window = 0.0
        self._hold_target = None
        new_pos, new_vel = plan.trajectory.sample(now)  # now >= its first action: inside
        plan.correction = (
            HermiteCorrection(now, window, start_pos - new_pos, start_vel - new_vel)
            if window > 0
            else None
        )
        self._plan = plan
