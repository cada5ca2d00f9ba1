"""What the driver node says about the hardware: preflight, health, execution mode (no ROS).

Kept out of ``driver_node`` so the node stays a thin shell: these functions turn parameters, the
control loop and the backend into log text, a preflight callable and ``HealthEntry`` lists that
the node only publishes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from hw_drivers import health as hl
from hw_drivers.backends.base import Backend, JointReading
from hw_drivers.preflight import PreflightReport, run_preflight


def make_preflight(
    params: Any,
    backend: Backend,
    camera_rates: Callable[[], dict[str, float]],
    log: Callable[[str, bool], None] | None = None,
) -> Callable[[JointReading], PreflightReport]:
    """The preflight the control loop runs before torque enable: ``backend``'s health,
    ``camera_rates()`` (camera name -> measured Hz) against each camera's configured rate, and
    the reading against ``params``' limits; the report goes to ``log(text, ok)`` as one block."""

    def preflight(reading: JointReading) -> PreflightReport:
        checked = params.preflight_cameras
        positions = np.array(reading.positions, dtype=float)
        # A gripper whose limits torque enable calibrates has no opening yet (NaN); it cannot
        # be outside its end stops, so it is checked after calibration, not here.
        uncalibrated = getattr(backend, "uncalibrated_joints", lambda: [])()
        for k, name in enumerate(params.joint_names):
            if name in uncalibrated:
                positions[k] = params.position_lower[k]
        report = run_preflight(
            params.joint_names,
            params.position_lower,
            params.position_upper,
            positions,
            backend.health(),
            camera_rates() if checked else None,
            params.expected_camera_rates() if checked else None,
            params.preflight_camera_tolerance,
            title=f"preflight {params.robot or 'robot'} ({params.backend})",
        )
        if log is not None:
            log(report.text(), report.ok)
        return report

    return preflight


def health_statuses(loop: Any, params: Any) -> list[hl.HealthEntry]:
    """Backend health plus the last preflight, for ``/diagnostics``."""
    entries = list(loop.backend.health())
    if loop.last_preflight is not None:
        entries.append(loop.last_preflight.health_entry(f"{params.robot}:{params.backend}"))
    return entries


def execution_summary(params: Any, backend: Backend) -> str:
    """One log line: shadow or live, which arms move, preflight, bus budget, gravity."""
    held = [n for n, h in zip(params.joint_names, params.hold_mask(), strict=True) if h]
    parts = [
        "execution: SHADOW (commands published, the robot holds at its measured pose; set "
        "execution:=live to move)"
        if params.is_shadow()
        else "execution: live",
        f"active arms: {params.active_arms}" + (f" (holding {', '.join(held)})" if held else ""),
        f"preflight: {'on' if params.runs_preflight() else 'off'}",
    ]
    budget = params.bus_budget()
    if budget is not None:
        parts.append(f"{budget.KIND} budget: {budget.describe(params.control_rate)}")
    sag = getattr(backend, "sag_note", None)
    if sag is not None:
        parts.append(sag())
    return "; ".join(parts)
