"""The driver node on emulated DaMiao buses: motor health on /diagnostics, a fault named there,
the preflight entry, and ~/clear_motor_faults bringing the arm back."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import yaml

from tests.rostest_util import REPO_ROOT

pytestmark = pytest.mark.ros

ARM_START = [0.0, 1.0, 1.0, 0.0, 0.0, 0.0, -1.35]


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@pytest.fixture
def rig(tmp_path):
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import MultiThreadedExecutor

    from hw_drivers.driver_node import DriverNode
    from hw_drivers.emulators.damiao_emulator import DamiaoEmulator

    tag = uuid.uuid4().hex[:6]
    channels = [f"hw_{tag}_{i}" for i in range(2)]
    emulators = [DamiaoEmulator(c, initial_positions=ARM_START).start() for c in channels]
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text(
        yaml.safe_dump(
            {
                "/**/yam_driver": {
                    "ros__parameters": {
                        "backend": "damiao",
                        "can_interface": "virtual",
                        "can_channels": channels,
                        "read_timeout": 0.05,
                        "read_retries": 2,
                        "reconnect_period": 0.3,
                        "preflight_cameras": False,
                        "autostart": False,
                    }
                }
            }
        )
    )
    context = rclpy.Context()
    rclpy.init(context=context)
    namespace = f"/hw_{tag}"
    node = DriverNode(
        "yam_driver",
        namespace=namespace,
        context=context,
        cli_args=[
            "--ros-args",
            "--params-file",
            str(REPO_ROOT / "config" / "yam.yaml"),
            "--params-file",
            str(overrides),
        ],
    )
    probe = rclpy.create_node("hw_probe", namespace=namespace, context=context)
    diagnostics: list = []
    probe.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 50)
    executor = MultiThreadedExecutor(num_threads=3, context=context)
    executor.add_node(node)
    executor.add_node(probe)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        from rclpy.lifecycle import TransitionCallbackReturn

        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        node.trigger_activate()
        yield node, probe, emulators, diagnostics, executor
    finally:
        executor.shutdown()
        node._teardown()
        node.destroy_node()
        probe.destroy_node()
        rclpy.shutdown(context=context)
        spinner.join(timeout=5.0)
        for emulator in emulators:
            emulator.stop()


def latest(diagnostics, suffix):
    for array in reversed(diagnostics):
        for status in array.status:
            if status.name.endswith(suffix):
                return status
    return None


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
