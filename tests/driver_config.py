"""DriverParams for a shipped robot's driver, with its joint limits as its config file states them.

For tests that run a driver's control loop on an emulated bus: the robot's joint names, limits
and control rate come from ``config/<robot>.yaml`` (the one source of those facts), the rest
from the dataclass defaults, a short ramp-in and a lenient watchdog (tests step their own clock).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from hw_drivers.driver_params import DriverParams

ROOT = Path(__file__).resolve().parents[1]
# The driver limits copied from the config: everything that bounds a command.
LIMIT_KEYS = (
    "position_lower",
    "position_upper",
    "position_margin",
    "max_velocity",
    "max_acceleration",
)


def robot_config(robot: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "config" / f"{robot}.yaml").read_text())


def driver_section(robot: str) -> dict[str, Any]:
    """The ``ros__parameters`` of ``<robot>_driver`` in the robot's config."""
    return robot_config(robot)[f"/**/{robot}_driver"]["ros__parameters"]


def joint_names(robot: str) -> list[str]:
    return list(robot_config(robot)["/**"]["ros__parameters"]["joint_names"])


def config_driver_params(robot: str, **overrides: Any) -> DriverParams:
    """``DriverParams`` with ``robot``'s joints, limits and control rate, then ``overrides``."""
    section = driver_section(robot)
    values: dict[str, Any] = {key: tuple(section[key]) for key in LIMIT_KEYS if key in section}
    values.update(
        robot=robot,
        joint_names=tuple(joint_names(robot)),
        control_rate=float(section["control_rate"]),
        max_step_per_tick=float(section["max_step_per_tick"]),
        ramp_in_time=0.2,
        watchdog_timeout=5.0,
    )
    values.update(overrides)
    return DriverParams(**values)
