"""The driver's parameter check reads the calibration file once, not on every parameter change.

``DriverParams.validate`` runs at configure and again on every ``ros2 param set`` (through
``live_update``); it re-read and parsed the feetech calibration JSON each time. The read is
cached by the file's identity (mtime, size, inode): a parameter change reads nothing, a
configure after the file changed reads it again, and a missing or malformed file still fails
with the clear error.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from hw_drivers import calibration as cal
from hw_drivers.driver_params import DriverParams, live_update
from tests.feetech_servos import calibration_file


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """Every read of a calibration file (``load_calibration``), by path."""
    seen: list[str] = []
    real = cal.load_calibration

    def counting(path):
        seen.append(str(path))
        return real(path)

    monkeypatch.setattr(cal, "load_calibration", counting)
    return seen


def calibration_problems(params: DriverParams) -> list[str]:
    return [p for p in params.validate() if "calibration" in p]


def feetech_params(path: str) -> DriverParams:
    return DriverParams(
        backend="feetech",
        joint_names=cal.SO101_JOINTS,
        serial_port="/dev/ttyACM0",
        calibration_file=path,
    )


def test_a_parameter_change_does_not_read_the_file_again(reads):
    params = feetech_params(calibration_file())
    assert calibration_problems(params) == []  # configure
    assert len(reads) == 1
    for value in ("shadow", "live", "shadow"):
        changed, problems = live_update(params, params, {"execution": value})
        assert changed is not None, problems
    assert len(reads) == 1


def test_a_configure_after_the_file_changed_reads_it_again(reads, tmp_path):
    path = tmp_path / "calibration.json"
    path.write_text(Path(calibration_file()).read_text())
    params = feetech_params(str(path))
    assert calibration_problems(params) == []
    data = json.loads(path.read_text())
    del data[cal.SO101_JOINTS[0]]
    path.write_text(json.dumps(data))
    stat = path.stat()  # a distinct mtime however coarse the file system's clock
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    problems = calibration_problems(params)
    assert len(reads) == 2
    assert any(f"no entry for joints ['{cal.SO101_JOINTS[0]}']" in p for p in problems), problems


def test_missing_or_malformed_files_still_fail_with_the_clear_error(reads, tmp_path):
    path = tmp_path / "calibration.json"
    params = feetech_params(str(path))
    assert any("does not exist" in p for p in calibration_problems(params))
    path.write_text("{not json")
    assert any("is not valid JSON" in p for p in calibration_problems(params))
    # A failed read is not cached: once fixed, the file is read and accepted.
    path.write_text(Path(calibration_file()).read_text())
    os.utime(path, ns=(0, 10**18))
    assert calibration_problems(replace(params)) == []
