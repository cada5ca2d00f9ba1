"""The SO-101 servo calibration and start positions the Feetech backend tests share."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

from hw_drivers.calibration import SO101_JOINTS, MotorCalibration, save_calibration

# Servo ticks the emulated servos start at, in SO101_JOINTS order.
START_TICKS = [2000, 2100, 1900, 2048, 2200, 2500]


def calibration() -> dict[str, MotorCalibration]:
    """A different homing offset and range per servo, so a mixed-up id shows."""
    cal = {
        name: MotorCalibration(i + 1, 0, 40 * i - 100, 700 + 20 * i, 3300 - 20 * i)
        for i, name in enumerate(SO101_JOINTS)
    }
    cal["gripper"] = MotorCalibration(6, 0, 30, 2000, 3000)
    return cal


@functools.cache
def calibration_file() -> str:
    """``calibration()`` as a LeRobot calibration file, for driver parameters (the feetech
    backend's parameter check reads it)."""
    path = Path(tempfile.mkdtemp(prefix="molmoact2-feetech-")) / "calibration.json"
    save_calibration(calibration(), path)
    return str(path)
