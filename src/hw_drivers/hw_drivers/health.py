"""Hardware health as plain data: what a backend knows about its motors and buses.

Backends report ``HealthEntry`` records (one per motor, one per bus); the driver node turns each
into a ``diagnostic_msgs/DiagnosticStatus`` with the same level, so a frozen or faulted motor is
named on ``/diagnostics`` and not only in a log line. No ROS imports here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
