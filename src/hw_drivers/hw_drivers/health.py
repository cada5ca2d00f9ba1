"""Hardware health as plain data: what a backend knows about its motors and buses.

Backends report ``HealthEntry`` records (one per motor, one per bus); the driver node turns each
into a ``diagnostic_msgs/DiagnosticStatus`` with the same level, so a frozen or faulted motor is
named on ``/diagnostics`` and not only in a log line. Every motor entry (DaMiao motor, Feetech
servo) is made by ``motor_entry`` from a ``MotorHealth``, so they read the same. No ROS imports
here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

# Same numbers as diagnostic_msgs/DiagnosticStatus.
OK = 0
WARN = 1
ERROR = 2
STALE = 3

LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR", STALE: "STALE"}


@dataclass(frozen=True)
class HealthEntry:
    """One component's state: ``name`` names the part (motor, bus, camera) unambiguously."""

    name: str
    level: int
    message: str
    values: dict[str, str] = field(default_factory=dict)
    hardware_id: str = ""


def worst(entries: list[HealthEntry]) -> int:
    """The most severe level among ``entries`` (OK when empty); STALE counts as ERROR."""
    levels = [ERROR if e.level == STALE else e.level for e in entries]
    return max(levels, default=OK)


@dataclass
class MotorHealth:
    """What a backend knows about one motor's link, the same for every motor kind: a backend
    subclasses it with its own readings and says what its ``fault`` is."""

    last_reply: float | None = None  # link time of the last accepted reply
    replies: int = 0
    missed: int = 0  # requests that got no usable reply in time (resent or failed)
    garbled: int = 0
    stale: int = 0  # replies older than the request they would answer (discarded)
    problem: str = ""  # current link error of this motor ("" when fine)

    @property
    def fault(self) -> str | None:
        """A fault the motor reports (None when it reports none)."""
        return None


def motor_entry(
    name: str,
    hardware_id: str,
    health: MotorHealth,
    *,
    temperatures: Mapping[str, float | None],
    temperature_warn: float,
    now: float | None,
    values: Mapping[str, str] = MappingProxyType({}),
) -> HealthEntry:
    """One motor's ``/diagnostics`` entry: ERROR for a fault the motor reports or a link problem,
    WARN from ``temperature_warn`` [degC] on, else OK. ``temperatures`` maps value keys (e.g.
    ``temperature_mos_c``) to degC or None when not read yet; ``values`` adds the backend's own
    readings before the link statistics every motor entry has."""
    read = [t for t in temperatures.values() if t is not None]
    level, message = OK, "ok"
    fault = health.fault
    if fault is not None:
        level, message = ERROR, f"fault: {fault}"
    elif health.problem:
        level, message = ERROR, health.problem
    elif read and max(read) >= temperature_warn:
        level, message = WARN, f"hot: {max(read):g} degC"
    age = "" if health.last_reply is None or now is None else f"{now - health.last_reply:.4f}"
    return HealthEntry(
        name=name,
        level=level,
        message=message,
        hardware_id=hardware_id,
        values={
            **values,
            **{key: "" if t is None else f"{t:g}" for key, t in temperatures.items()},
            "feedback_age_s": age,
            "replies": str(health.replies),
            "missed_replies": str(health.missed),
            "garbled_replies": str(health.garbled),
            "stale_replies": str(health.stale),
        },
    )


def estop_message(reason: str) -> str:
    """The diagnostic message of a latched e-stop, the driver's and the trajectory bridge's."""
    return f"e-stop latched: {reason}; call ~/reset"


def driver_summary(
    state: str,
    *,
    control_stopped: str | None = None,
    estop_reason: str = "",
    backend_fault: str | None,
    command_fault: str,
    tick_rate: float,
    target_rate: float,
    rejected_recently: int,
    rejection_window: float,
    last_reject_reason: str,
) -> tuple[int, str]:
    """The driver's own diagnostic level and message.

    The message names only what is wrong now: a monitor (or a user reading ``/diagnostics``)
    that sees "rejected" while no chunk was rejected, only because the tick rate dipped, goes
    looking for a chunk problem that does not exist. ``backend_fault`` is None when the backend
    is healthy; ``control_stopped`` is None while the control loop runs (else why it ended);
    ``state`` is the executor's; ``estop_reason`` why the e-stop is latched ("" when it is
    not: the operator's ~/estop, tick errors or faults that kept recurring). It is named before
    a backend fault: the latch is what needs a person, and a bug that latched it also faults
    the backend at every reconnect, which would hide the cause; the fault follows it.
    """
    if control_stopped is not None:
        # Nothing commands the arm any more: the motors keep their last target.
        return ERROR, f"control loop stopped: {control_stopped}"
    if estop_reason:
        message = estop_message(estop_reason)
        if backend_fault is not None and backend_fault not in estop_reason:
            message += f"; backend fault: {backend_fault}"
        return ERROR, message
    if backend_fault is not None:
        return ERROR, f"backend fault: {backend_fault}"
    if state == "estop":
        return ERROR, "e-stop latched"
    if state == "fault":
        return ERROR, f"command fault: {command_fault}"
    problems = []
    if not tick_rate >= 0.9 * target_rate:  # NaN counts as too slow
        problems.append(f"tick rate {tick_rate:.0f}/{target_rate:g} Hz")
    if rejected_recently:
        problems.append(
            f"{rejected_recently} chunks rejected in the last {rejection_window:g} s; "
            f"last: {last_reject_reason}"
        )
    if problems:
        return WARN, "; ".join([state, *problems])
    return OK, state
