"""One control tick of a driver: read the backend, run the executor, write the command.

Pure (no ROS, no threads, clock injected) so the driver node is a thin timer around
``ControlLoop.step`` and tests run it against the sim backend with simulated time. Backend
faults are caught here: the executor holds, the backend is optionally disabled, and the link is
reconnected every ``reconnect_period`` seconds; after a reconnect the executor starts a new
command stream at the measured pose, so motion resumes with a ramp-in, never with a jump.

It also owns the driver's message and service paths (``submit_msg``, ``estop``, ``reset``,
``hold``), so the node only forwards them and every answer comes from the state it describes.

Shadow execution and per-arm activation: the executor runs and its commands are reported, but
the joints of a held arm (all joints in shadow) are sent the pose measured when they were
taken out of play, with zero velocity, so the model can be watched without the robot moving.
A joint that comes back into play makes the executor restart its command stream from the
measured pose (ramp-in; a latched e-stop stays latched). An optional preflight runs on every
start before torque is enabled; a failed one keeps the torque off and is retried like a failed
connect.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from hw_drivers.backends.base import Backend, BackendError, JointReading
from hw_drivers.chunk import Chunk
from hw_drivers.conversions import chunk_from_msg
from hw_drivers.driver_params import EXIT_BEHAVIORS
from hw_drivers.executor import (
    HOLD_RELEASED_IN_ESTOP,
    HOLDING,
    OPERATOR_ESTOP,
    ChunkExecutor,
    Command,
    PreparedChunk,
    SubmitResult,
)
from hw_drivers.preflight import PreflightReport
from hw_drivers.tick_errors import FaultWindow, TickErrorEscalation

# What the arm does when the driver process stops (parameter ``exit_behavior``, EXIT_BEHAVIORS):
# hold: stop following chunks and keep holding where it is, torque on (the default: safe for
#   any arm, never drops one);
# rest: return slowly to the pose measured when the driver started, then hold;
# rest_then_release: the same, then torque off, only if the rest pose was reached.
REST_TOLERANCE = 0.05  # [rad] the rest pose counts as reached within this of every joint
# Between ``ControlLoop.stop`` and ``start`` (the driver's lifecycle: inactive).
STOPPED = "the driver is inactive: chunks are refused until it is activated"
REJECT_STOPPED = f"inactive: {STOPPED}"


@dataclass(frozen=True)
class StepResult:
    reading: JointReading | None  # None when the read failed
    command: Command | None  # None while the backend is faulted
    wrote: bool  # the command was sent to the backend (False in dry-run and on faults)
    error: str  # "" or the backend fault of this tick
    sent: np.ndarray | None = None  # positions sent (held joints at their hold pose)


@dataclass
class LoopStats:
    steps: int = 0
    writes: int = 0
    backend_errors: int = 0
    reconnects: int = 0
    last_error: str = ""


class ControlLoop:
    """Ties a ``Backend`` to a ``ChunkExecutor``."""

    def __init__(
        self,
        backend: Backend,
        executor: ChunkExecutor,
        *,
        on_fault: str = "hold",
        reconnect_period: float = 1.0,
        shadow: bool = False,
        hold_mask: np.ndarray | None = None,
        preflight: Callable[[JointReading], PreflightReport] | None = None,
        max_tick_errors: int = 3,
        fault_window: float = 60.0,
        max_backend_faults: int = 3,
    ) -> None:
        if on_fault not in ("hold", "disable"):
            raise ValueError(f"on_fault must be hold or disable, got {on_fault!r}")
        self.backend = backend
        self.executor = executor
        self.on_fault = on_fault
        self.reconnect_period = reconnect_period
        self.stats = LoopStats()
        self.faulted = False
        # ~/hold(true) from the operator (not the holds of a fault, stop or finish): it outlives
        # a link fault and reconnect, and stop -> start; only hold(false) or reset end it. This
        # is its one record: ``start`` applies it to each new command stream.
        self.operator_hold = False
        # Between ``stop`` and the next ``start`` (the driver deactivated): chunks are refused
        # as such. A flag of its own, not the executor's hold: an operator's hold(false) or
        # reset while inactive released that, and chunks were then answered "accepted" with no
        # tick to run them.
        self.stopped = False
        self._last_attempt = float("-inf")
        self.last_reading: JointReading | None = None
        self.rest_pose: np.ndarray | None = None  # measured at the first start
        self.preflight = preflight
        self.last_preflight: PreflightReport | None = None
        self.shadow = bool(shadow)
        n = backend.num_joints
        self.hold_mask = (
            np.zeros(n, dtype=bool) if hold_mask is None else np.asarray(hold_mask, dtype=bool)
        )
        if self.hold_mask.shape != (n,):
            raise ValueError(f"hold_mask must have {n} entries, got {self.hold_mask.shape}")
        self._hold_pose: np.ndarray | None = None
        self.tick_errors = TickErrorEscalation(max_tick_errors, fault_window)
        # A backend fault that recurs would otherwise hold and reconnect for ever: with
        # on_fault: hold the arm lurches between holds and ramp-ins into the next chunk, with
        # on_fault: disable the torque cycles off and on. ``max_backend_faults`` of them within
        # ``fault_window`` latch the e-stop: reconnects go on (state and diagnostics), chunks
        # are refused until ~/reset; with hold the arm holds its measured pose (torque on),
        # with disable the torque is kept off (``torque_off_latched``). ros2_control likewise
        # takes a component whose read/write returns ERROR out of service until reactivated.
        self.backend_faults = FaultWindow(max_backend_faults, fault_window)
        self.torque_off_latched = False

    @property
    def held(self) -> np.ndarray:
        """Joints sent their hold pose instead of the executor's command."""
        return np.ones_like(self.hold_mask) if self.shadow else self.hold_mask.copy()

    def set_activation(self, shadow: bool, hold_mask: np.ndarray | None = None) -> None:
        """Change shadow / per-arm activation while running. Newly held joints hold where they
        were last measured; if any joint comes back into play the executor restarts from the
        measured pose, so it ramps in instead of jumping to where the plan had got to."""
        before = self.held
        self.shadow = bool(shadow)
        if hold_mask is not None:
            self.hold_mask = np.asarray(hold_mask, dtype=bool)
        after = self.held
        if self.last_reading is None:
            return
        measured = self.last_reading.positions
        if self._hold_pose is None:
            self._hold_pose = measured.copy()
        newly_held = after & ~before
        self._hold_pose[newly_held] = measured[newly_held]
        if np.any(before & ~after):
            # The executor's command went on with the plan while these joints were held (in
            # shadow all of them): restart the stream where the arm is, never from there.
            # Unlike ~/reset this keeps a latched e-stop, and a requested hold stays.
            holding = self.executor.hold_requested
            self.executor.start(measured)
            if holding:
                self.executor.hold(True)

    def start(self) -> JointReading:
        """Connect, run the preflight, energise and hold at the measured pose (raises
        ``BackendError``; a failed preflight leaves the torque off). An operator's hold stays
        in force on the new command stream."""
        self.stopped = False
        if not self.backend.is_connected:
            self.backend.connect()
        if self.preflight is not None:
            report = self.preflight(self.backend.read_state())
            self.last_preflight = report
            if not report.ok:
                raise BackendError("preflight failed: " + "; ".join(report.failures()))
        if not self.torque_off_latched:
            self.backend.enable()
        reading = self._read()
        self.executor.start(reading.positions)
        if self.operator_hold:
            # The new command stream drops hold requests: an operator's hold must not end with
            # a reconnect or a deactivate -> activate (the arm followed the next chunk again).
            self.executor.hold(True)
        self.last_reading = reading
        if self.rest_pose is None:
            self.rest_pose = np.array(reading.positions, dtype=float, copy=True)
        self._hold_pose = reading.positions.copy()
        self.faulted = False
        return reading

    def stop(self) -> None:
        """Stop following chunks until the next ``start``; the motors keep holding their last
        target."""
        self.stopped = True
        self.executor.hold(True)

    def shutdown(self, release: bool = True) -> None:
        """Close the link, torque off first when ``release`` (never raises)."""
        actions = (self.backend.disable, self.backend.disconnect) if release else (
            self.backend.disconnect,
        )
        for action in actions:
            try:
                action()
            except BackendError as err:
                self.stats.last_error = str(err)

    def finish(
        self,
        behavior: str,
        *,
        period: float,
        speed: float,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> tuple[bool, str]:
        """The arm's last moves before the process ends: (release torque?, what happened).

        Always holds first. ``rest`` moves to ``rest_pose`` at ``speed`` [rad/s] as an ordinary
        chunk through the executor (same limits and clamps as every other command), ticking
        every ``period`` for at most ``timeout`` seconds, then holds wherever it got to. Torque
        is released only for ``rest_then_release`` with the rest pose reached.
        """
        if behavior not in EXIT_BEHAVIORS:
            raise ValueError(f"exit_behavior must be one of {EXIT_BEHAVIORS}, got {behavior!r}")
        self.executor.hold(True)
        if self.faulted or self.last_reading is None:
            return False, "backend not running: left as it is"
        now = clock()
        result = self._exit_step(now)
        if result.reading is None or self.faulted:
            return False, f"no tick while stopping ({result.error}): left as it is"
        if behavior == "hold" or self.rest_pose is None:
            return False, "holding the arm where it is (torque on)"
        # From where the motors are being told to be (the measurement lags the command):
        # starting from the measurement would first pull the arm back by that lag.
        last = self.executor.last_command
        start = np.asarray(result.reading.positions if last is None else last, dtype=float)
        distance = float(np.max(np.abs(self.rest_pose - start))) if start.size else 0.0
        duration = max(distance / max(speed, 1e-6), period)
        # Knots at a step the safety layer accepts for this driver (it checks every chunk's
        # step_dt against the policy's action period); the last knots sit at the rest pose.
        safety = self.executor.safety
        step = float(np.sqrt(safety.min_step_dt * safety.max_step_dt))
        steps = max(2, int(np.ceil(duration / step)) + 1)
        fraction = np.minimum(1.0, np.arange(steps) * step / duration)
        knots = start + fraction[:, None] * (self.rest_pose - start)
        chunk = Chunk(
            stamp=now,
            start_offset=0.0,
            step_dt=step,
            joint_names=self.executor.joint_names,
            positions=knots,
        )
        self.executor.hold(False)
        submitted = self.executor.submit(chunk, now, np.asarray(result.reading.positions))
        if not submitted.accepted:
            self.executor.hold(True)
            self._exit_step(clock())
            return False, f"return to rest refused ({submitted.reason}): holding"
        deadline = now + min(timeout, duration + 0.5)
        reading = result.reading
        while clock() < deadline:
            sleep(period)
            result = self._exit_step(clock())
            if result.reading is None or self.faulted:
                return False, f"backend fault on the way to rest ({result.error}): stopped"
            reading = result.reading
            if np.max(np.abs(reading.positions - self.rest_pose)) <= REST_TOLERANCE:
                break
        self.executor.hold(True)
        self._exit_step(clock())
        error = float(np.max(np.abs(reading.positions - self.rest_pose)))
        if error > REST_TOLERANCE:
            return False, f"rest pose not reached in {timeout:g} s ({error:.3f} rad off): holding"
        if behavior == "rest_then_release":
            return True, "at the rest pose: torque off"
        return False, "at the rest pose: holding (torque on)"

    def _exit_step(self, now: float) -> StepResult:
        """``step`` on the way out: a tick that raises (a bug, not a backend fault, which
        ``step`` handles) ends the last moves instead of the exit, so cleanup, shutdown and
        process exit still close the link (a raising on_cleanup left the node in
        ErrorProcessing with the link open)."""
        try:
            return self.step(now)
        except Exception as err:  # any bug: the exit must go on
            self.stats.last_error = f"control tick failed: {type(err).__name__}: {err}"
            return StepResult(None, None, False, self.stats.last_error)

    def step(self, now: float) -> StepResult:
        """One control tick at time ``now``."""
        self.stats.steps += 1
        if self.faulted:
            return self._recover(now)
        try:
            reading = self._read()
        except BackendError as err:
            return self._fault(now, None, f"read failed: {err}")
        self.last_reading = reading
        command = self.executor.tick(now, reading.positions)
        if self.executor.config.dry_run or self.torque_off_latched:
            # Torque kept off: nothing is sent (a position write may energise some servos).
            return StepResult(reading, command, False, "")
        positions, velocities = command.positions, command.velocities
        held = self.held
        if held.any():
            if self._hold_pose is None:
                self._hold_pose = reading.positions.copy()
            positions = np.where(held, self._hold_pose, positions)
            velocities = np.where(held, 0.0, velocities)
        try:
            self.backend.write_command(positions, velocities)
        except BackendError as err:
            return self._fault(now, reading, f"write failed: {err}")
        self.stats.writes += 1
        return StepResult(reading, command, True, "", positions)

    def _read(self) -> JointReading:
        reading = self.backend.read_state()
        positions = np.asarray(reading.positions, dtype=float)
        if positions.shape != (len(self.executor.joint_names),) or not np.all(
            np.isfinite(positions)
        ):
            raise BackendError(f"unusable joint positions {positions.tolist()}")
        return reading

    # -- the driver's message and service paths -----------------------------------------------

    def submit_msg(self, msg: Any, now: float) -> SubmitResult:
        """An ``ActionChunk`` message arrived at ``now``: convert, check, submit (never raises)."""
        return self.submit_prepared(self.prepare_msg(msg), now)

    def prepare_msg(self, msg: Any) -> PreparedChunk:
        """The first half of ``submit_msg``: conversion and the checks that depend on no state
        (``ChunkExecutor.prepare``). Touches nothing that changes, so the driver runs it outside
        its lock (a 100k-step message took 2.9 ms, most of a 4 ms tick, under it)."""
        try:
            chunk = chunk_from_msg(msg)
        except (ValueError, TypeError, OverflowError) as err:
            return self.executor.unusable(f"shape: {err}")
        return self.executor.prepare(chunk)

    def submit_prepared(self, prepared: PreparedChunk, now: float) -> SubmitResult:
        """The second half, under the driver's lock: the checks that need the backend's and the
        executor's state, the time and the live limits, then the swap-in."""
        if prepared.chunk is None:
            return self.executor.submit_prepared(prepared, now, None)  # rejected first, as before
        if self.stopped:
            return self.executor.reject(REJECT_STOPPED, now)
        if self.faulted or self.last_reading is None:
            return self.executor.reject("backend: no measurement (backend faulted)", now)
        return self.executor.submit_prepared(prepared, now, self.last_reading.positions)

    def estop(self, reason: str = OPERATOR_ESTOP) -> str:
        """Latch the e-stop for ``reason`` (the executor keeps it until ``reset``)."""
        return self.executor.estop(reason)

    def reset(self) -> tuple[bool, str]:
        """Clear e-stop, fault and hold from a fresh reading; (success, what happened)."""
        if self.faulted:
            return False, f"backend faulted: {self.stats.last_error}"
        try:
            reading = self._read()
        except BackendError as err:
            return False, f"cannot read the robot: {err}"
        if self.torque_off_latched:
            # Energise as a reconnect does: a new command stream at the measured pose (the arm
            # may have sagged while limp; the old command must not pull it back).
            self.torque_off_latched = False
            stopped = self.stopped  # a reset while stopped leaves it stopped
            try:
                reading = self.start()
            except BackendError as err:
                self.torque_off_latched = True
                return False, f"cannot turn the torque on: {err}"
            finally:
                self.stopped = stopped
        self.last_reading = reading
        self.operator_hold = False
        self.tick_errors.reset()
        self.backend_faults.clear()
        message = self.executor.reset(reading.positions)
        if self.stopped:
            self.executor.hold(True)  # the stop's own hold, not the operator's
            message += f"; {STOPPED}"
        return True, message

    def hold(self, on: bool) -> tuple[bool, str]:
        """The operator's ``~/hold``."""
        self.operator_hold = bool(on)
        if self.stopped:
            # The executor keeps the stop's hold; ``start`` applies the operator's.
            if on:
                return True, HOLDING
            if self.executor.estopped:
                return False, HOLD_RELEASED_IN_ESTOP
            return True, f"hold released; {STOPPED}"
        return self.executor.hold(on)

    def fault(self, now: float, error: str) -> StepResult:
        """A fault found outside ``step`` (the driver's tick raised): handled as a backend
        fault, so the arm holds (torque off with ``on_fault: disable``) and the link is
        reconnected after ``reconnect_period``, with a fresh command stream. It counts towards
        ``max_backend_faults`` only with ``on_fault: disable`` (it turned the torque off too);
        with hold, tick errors have their own count (``tick_error``), whose reason names a bug
        rather than the backend."""
        return self._fault(now, self.last_reading, error, backend=False)

    def tick_error(self, now: float, error: str) -> str | None:
        """The driver's tick raised ``error``: a fault (see ``fault``), and after
        ``max_tick_errors`` of them without a successful tick between, the e-stop latches
        (``hw_drivers.tick_errors``); so do ``max_tick_errors`` of them within ``fault_window``.
        Returns the e-stop's reason when this error latched it (None when it did not, and
        when an e-stop was latched already: its reason stays)."""
        self.fault(now, error)
        reason = self.tick_errors.failed(now, error)
        if reason is None or self.executor.estopped:
            return None
        self.executor.estop(reason)
        return reason

    @property
    def estop_reason(self) -> str:
        """Why the e-stop is latched ("" when it is not)."""
        return self.executor.estop_reason

    def tick_succeeded(self) -> None:
        """The driver's tick ran the executor (``step`` returned a command) and finished."""
        self.tick_errors.succeeded()

    def _fault(
        self, now: float, reading: JointReading | None, error: str, backend: bool = True
    ) -> StepResult:
        self.stats.backend_errors += 1
        self.stats.last_error = error
        self.faulted = True
        self._last_attempt = now
        # Drop the plan: after the fault the arm may not be where the plan assumed.
        self.executor.hold(True)
        if self.on_fault == "disable":
            try:
                self.backend.disable()
            except BackendError as err:
                # Reported, not swallowed: the operator must know the torque may still be on.
                error = f"{error}; disable failed too: {err}"
                self.stats.last_error = error
        if (backend or self.on_fault == "disable") and self.backend_faults.add(now):
            self._latch_recurring(error)
        return StepResult(reading, None, False, error)

    def _latch_recurring(self, error: str) -> None:
        """``max_backend_faults`` faults within ``fault_window``: latch the e-stop (once; an
        e-stop already latched keeps its first reason, the torque goes off all the same)."""
        if self.on_fault == "disable":
            if self.torque_off_latched:
                return
            self.torque_off_latched = True
            then = "torque kept off"
        else:
            if self.executor.estopped:
                return
            then = "holding the measured pose, torque on"
        faults = self.backend_faults
        self.executor.estop(
            f"{faults.limit} backend faults within {faults.window:g} s with on_fault: "
            f"{self.on_fault} (last: {error}): {then}"
        )

    def _recover(self, now: float) -> StepResult:
        if now - self._last_attempt < self.reconnect_period:
            return StepResult(None, None, False, self.stats.last_error)
        self._last_attempt = now
        try:
            self.backend.disconnect()
            reading = self.start()
        except BackendError as err:
            self.stats.backend_errors += 1
            self.stats.last_error = f"reconnect failed: {err}"
            return StepResult(None, None, False, self.stats.last_error)
        self.stats.reconnects += 1
        return StepResult(reading, None, False, "")
