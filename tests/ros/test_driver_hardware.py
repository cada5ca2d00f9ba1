"""The driver node on emulated DaMiao buses: motor health on /diagnostics, a fault named there,
the preflight entry, and ~/clear_motor_faults bringing the arm back."""

from __future__ import annotations

import contextlib
import uuid

import pytest

from tests.ros.driver_harness import latest, running_driver, wait_for

pytestmark = pytest.mark.ros

ARM_START = [0.0, 1.0, 1.0, 0.0, 0.0, 0.0, -1.35]
# yam.yaml's linear_4310 gripper: end stops 6.57 rad apart (closed the larger angle), found by
# the driver's calibration at torque enable.
GRIPPER_STOPS = (1.5, 1.5 - 6.57)


def yam_bus(channel: str, **kwargs):
    from hw_drivers.emulators.damiao_emulator import DamiaoEmulator

    emulator = DamiaoEmulator(channel, initial_positions=ARM_START, **kwargs)
    emulator.attach_gripper(0x07, *GRIPPER_STOPS)
    return emulator.start()


@contextlib.contextmanager
def yam_on_emulated_buses(tmp_path, prefix: str, power_up_turns=None):
    """The yam driver on two emulated DaMiao buses of its own; (driver, emulators)."""
    tag = f"{prefix}_{uuid.uuid4().hex[:6]}"
    channels = [f"{tag}_{i}" for i in range(2)]
    turns = power_up_turns or [None, None]
    emulators = [
        yam_bus(c, **({"power_up_turns": t} if t else {}))
        for c, t in zip(channels, turns, strict=True)
    ]
    overrides = {
        "backend": "damiao",
        "can_interface": "virtual",
        "can_channels": channels,
        "read_timeout": 0.05,
        "read_retries": 2,
        "reconnect_period": 0.3,
        "preflight_cameras": False,
    }
    try:
        with running_driver("yam", "yam_driver", overrides, tmp_path, f"/{tag}") as driver:
            yield driver, emulators
    finally:
        for emulator in emulators:
            emulator.stop()


@pytest.fixture
def rig(tmp_path):
    with yam_on_emulated_buses(tmp_path, "hw") as (driver, emulators):
        yield driver.node, driver.probe, emulators, driver.diagnostics, driver.executor


def test_shadow_by_default_motor_health_and_an_over_temperature_named_and_cleared(rig):
    from std_srvs.srv import Trigger

    node, probe, emulators, diagnostics, _ = rig
    assert node._loop.shadow  # hardware backend, execution left at auto
    motor = ": damiao motor left_joint2 (id 0x02, " + emulators[0].channel + ")"
    assert wait_for(lambda: latest(diagnostics, motor) is not None, 10.0)
    assert latest(diagnostics, motor).level == b"\x00"
    preflight = latest(diagnostics, ": preflight")
    assert preflight is not None and preflight.level == b"\x00"
    assert all(emulators[0].snapshot(m).enabled for m in range(1, 8))
    # yam.yaml's linear_4310 gripper found its end stops at torque enable (i2rt's start-up
    # calibration), and says so on its motor's entry.
    gripper = ": damiao motor left_gripper (id 0x07, " + emulators[0].channel + ")"

    def calibrated():
        status = latest(diagnostics, gripper)
        values = {} if status is None else {kv.key: kv.value for kv in status.values}
        return values.get("gripper_type") == "linear_4310" and values.get(
            "gripper_calibration", ""
        ).startswith("closed 1.50")

    assert wait_for(calibrated, 10.0), latest(diagnostics, gripper)

    emulators[0].set_temperature(2, 55, 122)
    emulators[0].set_fault(2, 0xC)  # rotor over-temperature trips the motor
    assert wait_for(lambda: node._loop.faulted, 5.0)

    def named():
        status = latest(diagnostics, ": driver")
        return (
            status is not None
            and status.level == b"\x02"
            and "left_joint2 (id 0x02" in status.message
            and "rotor over-temperature" in status.message
        )

    assert wait_for(named, 10.0)
    assert wait_for(lambda: latest(diagnostics, motor).level == b"\x02", 5.0)
    values = {kv.key: kv.value for kv in latest(diagnostics, motor).values}
    assert values["temperature_rotor_c"] == "122"

    client = probe.create_client(Trigger, "yam_driver/clear_motor_faults")
    assert client.wait_for_service(timeout_sec=10.0)
    emulators[0].set_temperature(2, 45, 50)  # cooled down
    future = client.call_async(Trigger.Request())
    assert wait_for(future.done, 10.0)
    response = future.result()
    assert response.success and "left_joint2 (id 0x02): rotor over-temperature -> cleared" in (
        response.message
    )
    assert wait_for(lambda: not node._loop.faulted, 10.0), node._loop.stats.last_error
    assert wait_for(lambda: emulators[0].snapshot(2).enabled, 5.0)


def test_execution_and_active_arms_change_at_runtime(rig):
    from rclpy.parameter import Parameter

    node, _, emulators, _, _ = rig
    assert wait_for(lambda: all(emulators[0].snapshot(m).enabled for m in range(1, 8)), 10.0)
    assert wait_for(lambda: node._loop.last_reading is not None and not node._loop.faulted, 10.0)
    [result] = node.set_parameters([Parameter("active_arms", value="middle")])
    assert not result.successful and "'middle'" in result.reason
    results = node.set_parameters(
        [Parameter("execution", value="live"), Parameter("active_arms", value="right")]
    )
    assert all(r.successful for r in results)
    assert not node._loop.shadow
    assert list(node._loop.held) == [True] * 7 + [False] * 7


def test_a_motor_powered_up_a_turn_off_is_published_as_its_joint_angle_and_held(tmp_path):
    """Left joint 2 powers up reporting 1.0 + 2*pi (single-turn encoder): the driver reads
    1.0 on /joint_states, says so on its motor's /diagnostics entry, and holds the joint."""
    import math

    from sensor_msgs.msg import JointState

    turns = [[0, 1, 0, 0, 0, 0, 0], None]
    with yam_on_emulated_buses(tmp_path, "turn", turns) as (driver, emulators):
        channels = [e.channel for e in emulators]
        states: list = []
        driver.probe.create_subscription(JointState, "joint_states", states.append, 50)
        assert wait_for(
            lambda: all(e.snapshot(m).enabled for e in emulators for m in (1, 2)), 10
        )
        assert wait_for(lambda: len(states) >= 20, 10.0)
        for msg in states[-10:]:
            q = dict(zip(msg.name, msg.position, strict=True))
            assert abs(q["left_joint2"] - 1.0) < 0.01
            assert abs(q["right_joint2"] - 1.0) < 0.01
        motor = ": damiao motor left_joint2 (id 0x02, " + channels[0] + ")"
        assert wait_for(lambda: latest(driver.diagnostics, motor) is not None, 10.0)
        status = latest(driver.diagnostics, motor)
        assert status.level == b"\x00"
        values = {kv.key: kv.value for kv in status.values}
        assert float(values["turn_offset_rad"]) == pytest.approx(2 * math.pi, abs=1e-6)
        assert "+1 turn" in values["turn"]
        # Held where it stands: the motor was never asked for the angle a turn away.
        held = emulators[0].snapshot(2)
        assert held.received
        assert all(abs(c.position - (1.0 + 2 * math.pi)) < 0.01 for c in held.received)
        assert abs(held.joint_angle - 1.0) < 0.01
