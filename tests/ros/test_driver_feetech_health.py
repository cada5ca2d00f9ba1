"""The SO-101 driver node on an emulated Feetech bus: one /diagnostics entry per servo like the
DaMiao motors', an overheating servo named there and holding the driver, and
~/clear_motor_faults refused while the servo is still hot, then bringing the arm back."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from tests.ros.driver_harness import latest, running_driver, wait_for

pytestmark = pytest.mark.ros

CALIBRATION = {
    name: {
        "id": i + 1,
        "drive_mode": 0,
        "homing_offset": 40 * i - 100,
        "range_min": 700 + 20 * i,
        "range_max": 3300 - 20 * i,
    }
    for i, name in enumerate(
        ["shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll"]
    )
} | {
    "gripper": {"id": 6, "drive_mode": 0, "homing_offset": 30, "range_min": 2000, "range_max": 3000}
}
START_TICKS = [2000, 2000, 2000, 2000, 2000, 2500]


@pytest.fixture
def rig(tmp_path):
    from hw_drivers.emulators.feetech_emulator import FeetechEmulator

    emulator = FeetechEmulator(initial_ticks=START_TICKS).start()
    (tmp_path / "calibration.json").write_text(json.dumps(CALIBRATION))
    overrides = {
        "backend": "feetech",
        "serial_port": emulator.port,
        "calibration_file": str(tmp_path / "calibration.json"),
        "control_rate": 50.0,
        # Generous for an emulator thread on a loaded machine (real servos answer in
        # microseconds; the default is 20 ms per reply).
        "read_timeout": 0.05,
        "execution": "live",
        "preflight_cameras": False,
        "reconnect_period": 0.3,
    }
    namespace = f"/ft_{uuid.uuid4().hex[:6]}"
    try:
        with running_driver("so101", "so101_driver", overrides, tmp_path, namespace) as driver:
            yield driver.node, driver.probe, emulator, driver.diagnostics
    finally:
        emulator.stop()


def call(probe, client, timeout=10.0):
    from std_srvs.srv import Trigger

    future = client.call_async(Trigger.Request())
    assert wait_for(future.done, timeout)
    return future.result()


def test_servo_health_on_diagnostics_an_overheat_named_and_cleared_only_once_cool(rig):
    from std_srvs.srv import Trigger

    node, probe, emulator, diagnostics = rig
    servo = f": feetech servo wrist_flex (id 4, {emulator.port})"
    assert wait_for(lambda: latest(diagnostics, servo) is not None, 10.0)
    status = latest(diagnostics, servo)
    assert status.level == b"\x00"
    values = {kv.key: kv.value for kv in status.values}
    assert values["temperature_c"] == "35" and values["voltage_v"] == "12.0"
    assert values["status"] == "ok" and int(values["replies"]) > 0
    bus = {kv.key: kv.value for kv in latest(diagnostics, f": feetech bus {emulator.port}").values}
    assert bus["baudrate"] == "1000000" and "3.88 ms per tick" in bus["budget"]
    assert latest(diagnostics, ": preflight").level == b"\x00"
    assert wait_for(lambda: emulator.get(4, "Torque_Enable") == 1, 5.0)

    emulator.set_temperature(4, 76)  # past its 70 degC limit: it sets its overheat bit
    assert wait_for(lambda: node._loop.faulted, 5.0)

    def named():
        status = latest(diagnostics, ": driver")
        return (
            status is not None
            and status.level == b"\x02"
            and "wrist_flex (id 4" in status.message
            and "overheat" in status.message
        )

    assert wait_for(named, 10.0)
    assert wait_for(lambda: latest(diagnostics, servo).level == b"\x02", 5.0)
    values = {kv.key: kv.value for kv in latest(diagnostics, servo).values}
    assert values["status"] == "overheat"

    client = probe.create_client(Trigger, "so101_driver/clear_motor_faults")
    assert client.wait_for_service(timeout_sec=10.0)
    response = call(probe, client)
    assert not response.success and "wrist_flex (id 4)" in response.message
    assert "still present" in response.message
    time.sleep(0.8)  # two reconnect periods: the latched fault keeps the torque off
    assert node._loop.faulted and emulator.get(4, "Torque_Enable") == 0

    emulator.set_temperature(4, 50)  # cooled down
    response = call(probe, client)
    assert response.success and response.message.startswith(
        "wrist_flex (id 4): overheat (status 0x04)"
    )
    assert response.message.endswith("-> cleared")
    assert wait_for(lambda: not node._loop.faulted, 10.0), node._loop.stats.last_error
    assert wait_for(lambda: emulator.get(4, "Torque_Enable") == 1, 5.0)
