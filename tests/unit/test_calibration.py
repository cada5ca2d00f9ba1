"""LeRobot calibration files and the released SO-101 tick <-> model-convention transform."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hw_drivers.calibration import (
    SO101_JOINTS,
    CalibrationError,
    MotorCalibration,
    degrees_to_ticks,
    lerobot_to_model_degrees,
    load_calibration,
    model_to_lerobot_degrees,
    parse_calibration,
    save_calibration,
    so101_conventions,
    ticks_to_degrees,
    ticks_to_range_0_100,
)

BODY = MotorCalibration(id=2, drive_mode=0, homing_offset=-120, range_min=1000, range_max=3000)


def so101_calibration(gripper_drive_mode: int = 0) -> dict[str, MotorCalibration]:
    cal = {
        name: MotorCalibration(i + 1, 0, 10 * i - 20, 800 + 10 * i, 3200 - 10 * i)
        for i, name in enumerate(SO101_JOINTS)
    }
    cal["gripper"] = MotorCalibration(6, gripper_drive_mode, 5, 2000, 3000)
    return cal


def test_released_transform_golden_values():
    # signs [1, -1, 1, 1, 1, 1], offsets [0, 90, 90, 0, 0, 0] degrees: model = s * lerobot + o
    assert lerobot_to_model_degrees(10.0, 0) == 10.0
    assert lerobot_to_model_degrees(10.0, 1) == 80.0
    assert lerobot_to_model_degrees(10.0, 2) == 100.0
    assert lerobot_to_model_degrees(-30.0, 3) == -30.0
    assert model_to_lerobot_degrees(80.0, 1) == 10.0
    assert model_to_lerobot_degrees(0.0, 1) == 90.0
    assert model_to_lerobot_degrees(0.0, 2) == -90.0


def test_lerobot_degrees_mode_golden_values():
    assert ticks_to_degrees(2000, BODY) == 0.0  # middle of the calibrated range
    assert ticks_to_degrees(2000 + 4095 / 4, BODY) == pytest.approx(90.0)
    assert ticks_to_degrees(500, BODY) == pytest.approx(-1500 * 360 / 4095)  # not clamped
    assert degrees_to_ticks(45.0, BODY) == 2512  # 2000 + 511.875, rounded
    assert degrees_to_ticks(90.0, BODY) == 3000  # 3023.75 is past range_max: clamped
    assert degrees_to_ticks(-170.0, BODY) == 1000


def test_gripper_range_and_drive_mode():
    normal = MotorCalibration(6, 0, 0, 2000, 3000)
    inverted = MotorCalibration(6, 1, 0, 2000, 3000)
    assert ticks_to_range_0_100(2250, normal) == 25.0
    assert ticks_to_range_0_100(2250, inverted) == 75.0
    assert ticks_to_range_0_100(5000, normal) == 100.0  # clamped


def test_joint_conventions_golden_and_round_trip():
    conv = so101_conventions(so101_calibration())
    # Each joint at the middle of its range: LeRobot 0 deg -> model offset -> radians.
    mids = [c.calibration.mid for c in conv]
    values = [c.ticks_to_value(t) for c, t in zip(conv, mids, strict=True)]
    np.testing.assert_allclose(values[:5], [0.0, math.pi / 2, math.pi / 2, 0.0, 0.0], atol=1e-12)
    assert values[5] == pytest.approx(0.5)
    # shoulder_lift's sign flips: more ticks -> smaller model angle.
    assert conv[1].ticks_to_value(mids[1] + 100) < conv[1].ticks_to_value(mids[1])
    rng = np.random.default_rng(1)
    tick_rad = 2 * math.pi / 4095
    for c in conv:
        for _ in range(50):
            ticks = int(rng.integers(c.calibration.range_min, c.calibration.range_max + 1))
            value = c.ticks_to_value(ticks)
            assert c.value_to_ticks(value) == ticks
            if not c.is_gripper:
                assert c.ticks_to_value(c.value_to_ticks(value + 0.3 * tick_rad)) == pytest.approx(
                    value, abs=tick_rad / 2 + 1e-12
                )


def test_inverted_gripper_round_trip():
    conv = so101_conventions(so101_calibration(gripper_drive_mode=1))[5]
    assert conv.ticks_to_value(2000) == 1.0
    assert conv.value_to_ticks(1.0) == 2000
    assert conv.value_to_ticks(0.25) == 2750


def test_file_round_trip_and_errors(tmp_path):
    path = tmp_path / "so101.json"
    save_calibration(so101_calibration(), path)
    raw = json.loads(path.read_text())
    assert set(raw["gripper"]) == {"id", "drive_mode", "homing_offset", "range_min", "range_max"}
    assert load_calibration(path) == so101_calibration()
    with pytest.raises(CalibrationError, match="does not exist"):
        load_calibration(tmp_path / "missing.json")
    bad = dict(raw, gripper={**raw["gripper"], "range_min": 3000, "range_max": 2000})
    with pytest.raises(CalibrationError, match="'gripper' needs 0 <= range_min < range_max"):
        parse_calibration(bad)
    with pytest.raises(CalibrationError, match="'gripper' lacks"):
        parse_calibration(dict(raw, gripper={"id": 6}))
    with pytest.raises(CalibrationError, match="not unique"):
        parse_calibration(dict(raw, gripper={**raw["gripper"], "id": 1}))
    with pytest.raises(CalibrationError, match="no entry for joints"):
        so101_conventions({k: v for k, v in so101_calibration().items() if k != "wrist_roll"})
