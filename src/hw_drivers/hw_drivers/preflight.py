"""Checks before torque is enabled, and what the driver does with the arms while it runs.

``run_preflight`` is what the released YAM deployment checks before it energises the motors:
every joint inside its limits, no motor or bus reporting a fault, every camera streaming at its
rate (each camera's configured rate, ``camera_rates``, within a tolerance; one check per camera
with measured and expected rate). Its report is one log block (``PreflightReport.text``) and
one diagnostics entry (``PreflightReport.health_entry``). ``RateMeter`` measures a camera's
rate from arrival times on the node clock. ``arm_hold_mask`` says which joints an arm
selection holds. No ROS imports.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from hw_drivers import health as hl

#: Slack on the position-limit check: encoder quantisation must not fail a robot resting on a
#: limit (DaMiao feedback: 0.0004 rad per count).
LIMIT_TOLERANCE = 1e-3
#: How far a camera's measured rate may be from its configured rate (fraction).
DEFAULT_RATE_TOLERANCE = 0.2


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class PreflightReport:
    checks: tuple[Check, ...]
    title: str = "preflight"

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failures(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.checks if not c.ok]

    def text(self) -> str:
        """The whole report as one log block."""
        lines = [f"{self.title}: {'PASSED' if self.ok else 'FAILED, torque stays off'}"]
        lines += [f"  [{'ok' if c.ok else 'FAIL'}] {c.name}: {c.detail}" for c in self.checks]
        return "\n".join(lines)

    def health_entry(self, hardware_id: str = "") -> hl.HealthEntry:
        return hl.HealthEntry(
            name="preflight",
            level=hl.OK if self.ok else hl.ERROR,
            message="passed" if self.ok else "failed: " + "; ".join(self.failures()),
            values={c.name: ("ok: " if c.ok else "FAIL: ") + c.detail for c in self.checks},
            hardware_id=hardware_id,
        )


def run_preflight(
    joint_names: Sequence[str],
    lower: Sequence[float],
    upper: Sequence[float],
    positions: Sequence[float] | np.ndarray,
    health: Sequence[hl.HealthEntry],
    camera_rates: Mapping[str, float] | None,
    expected_rates: Mapping[str, float] | None,
    tolerance: float = DEFAULT_RATE_TOLERANCE,
    title: str = "preflight",
) -> PreflightReport:
    """All checks, each with its numbers. ``camera_rates`` maps camera name -> measured Hz,
    ``expected_rates`` camera name -> its configured rate; each camera is one check, passed
    when measured within ``tolerance`` (a fraction) of its rate. None: cameras not checked."""
    checks = []
    q = np.asarray(positions, dtype=float)
    lo, hi = np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)
    outside = [
        f"{name} {value:.3f} not in [{a:.3f}, {b:.3f}]"
        for name, value, a, b in zip(joint_names, q, lo, hi, strict=True)
        if not (a - LIMIT_TOLERANCE <= value <= b + LIMIT_TOLERANCE)
    ]
    checks.append(
        Check(
            "joints inside limits",
            not outside and bool(np.all(np.isfinite(q))),
            "; ".join(outside) if outside else f"all {len(q)} joints inside their limits",
        )
    )
    faults = [f"{e.name}: {e.message}" for e in health if e.level in (hl.ERROR, hl.STALE)]
    warnings = [f"{e.name}: {e.message}" for e in health if e.level == hl.WARN]
    detail = "; ".join(faults) if faults else f"{len(health)} motors/buses report no fault"
    if warnings and not faults:
        detail += " (warnings: " + "; ".join(warnings) + ")"
    checks.append(Check("no motor faults", not faults, detail))
    if camera_rates is not None and expected_rates is not None:
        checks += camera_checks(camera_rates, expected_rates, tolerance)
    return PreflightReport(tuple(checks), title)


def camera_checks(
    measured: Mapping[str, float], expected: Mapping[str, float], tolerance: float
) -> list[Check]:
    """One check per configured camera: its measured rate within ``tolerance`` (fraction) of
    its configured rate, either way (a camera far above its rate is misconfigured or has a
    second publisher on its topic)."""
    if not expected:
        return [Check("cameras", True, "none configured")]
    checks = []
    for name, rate in expected.items():
        got = float(measured.get(name, 0.0))
        low, high = rate * (1.0 - tolerance), rate * (1.0 + tolerance)
        ok = low <= got <= high
        detail = f"{got:.1f} Hz, expected {rate:g} Hz +/- {tolerance:.0%}"
        if got == 0.0:
            detail += " (not streaming)"
        elif not ok:
            detail += f" ({'below' if got < low else 'above'} {low if got < low else high:.1f})"
        checks.append(Check(f"camera {name}", ok, detail))
    return checks


class RateMeter:
    """Message rate over a sliding window of arrival times (seconds on one clock).

    Thread-safe: the driver ticks it from camera callbacks (executor thread) and reads it in
    the preflight, which a reconnect runs on the control thread.
    """

    def __init__(self, window: float = 2.0) -> None:
        self.window = float(window)
        self._stamps: deque[float] = deque()
        self._lock = threading.Lock()

    def tick(self, now: float) -> None:
        with self._lock:
            self._stamps.append(now)
            self._trim(now)

    def rate(self, now: float) -> float:
        with self._lock:
            self._trim(now)
            if len(self._stamps) < 2:
                return 0.0
            span = now - self._stamps[0]
            return (len(self._stamps) - 1) / span if span > 0 else 0.0

    def _trim(self, now: float) -> None:
        while self._stamps and self._stamps[0] < now - self.window:
            self._stamps.popleft()


def arm_hold_mask(
    joint_names: Sequence[str], frame_prefixes: Sequence[str], active_arms: str
) -> np.ndarray:
    """True for every joint the arm selection holds still: ``both`` holds none; an arm name
    (a frame prefix without its trailing ``_``, e.g. ``left``) holds every joint of the other
    arms. Raises ``ValueError`` for a name no prefix has."""
    names = list(joint_names)
    if active_arms == "both":
        return np.zeros(len(names), dtype=bool)
    arms = {p.rstrip("_/"): p for p in frame_prefixes if p}
    if active_arms not in arms:
        raise ValueError(
            f"active_arms {active_arms!r} is not 'both' or one of the arms {sorted(arms)} "
            "(from frame_prefixes)"
        )
    prefix = arms[active_arms]
    return np.array([not n.startswith(prefix) for n in names], dtype=bool)
