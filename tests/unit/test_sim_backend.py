"""Sim backend dynamics, backend registry, DriverParams vs the robot configs, fault handling."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from hw_drivers.backends.base import BackendError
from hw_drivers.backends.registry import BackendUnavailableError, backend_class, make_backend
from hw_drivers.backends.sim import SimBackend
from hw_drivers.control_loop import ControlLoop
from hw_drivers.driver_params import DriverParams
from hw_drivers.executor import ChunkExecutor, ExecutorConfig
from hw_drivers.safety import SafetyConfig

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
DRIVER_SECTIONS = {"yam": "yam_driver", "so101": "so101_driver", "droid": "franka_driver"}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _sim(clock, **kwargs) -> SimBackend:
    return SimBackend(
        ("a", "b"), np.array([0.0, 0.5]), np.array([-1.0, -1.0]), np.array([1.0, 1.0]),
        clock=clock, **kwargs,
    )


def test_first_order_tracking_matches_the_exponential():
    clock = Clock()
    sim = _sim(clock, time_constant=0.1, rate=1000.0)
    sim.connect()
    sim.enable()
    sim.write_command(np.array([0.5, 0.0]))
    clock.now = 0.2
    reading = sim.read_state()
    expected = np.array([0.5, 0.0]) + (np.array([0.0, 0.5]) - [0.5, 0.0]) * math.exp(-2.0)
    np.testing.assert_allclose(reading.positions, expected, atol=1e-9)
    assert reading.stamp == pytest.approx(0.2)
    np.testing.assert_allclose(reading.velocities, ([0.5, 0.0] - expected) / 0.1, atol=1e-9)


def test_position_limits_and_command_log():
    clock = Clock()
    sim = _sim(clock)
    sim.connect()
    sim.enable()
    sim.write_command(np.array([5.0, -5.0]))
    clock.now = 5.0
    np.testing.assert_allclose(sim.read_state().positions, [1.0, -1.0], atol=1e-9)
    assert len(sim.command_log) == 1 and sim.command_log[0][1].tolist() == [5.0, -5.0]


def test_disabled_arm_does_not_move_and_errors_are_backend_errors():
    clock = Clock()
    sim = _sim(clock)
    with pytest.raises(BackendError, match="not connected"):
        sim.read_state()
    sim.connect()
    sim.write_command(np.array([0.9, 0.9]))  # torque off: ignored
    clock.now = 1.0
    np.testing.assert_allclose(sim.read_state().positions, [0.0, 0.5])
    with pytest.raises(BackendError, match="3 values for 2 joints"):
        sim.write_command(np.zeros(3))


def test_noise_is_deterministic_per_seed():
    def readings(seed):
        clock = Clock()
        sim = _sim(clock, noise_std=0.01, seed=seed)
        sim.connect()
        out = []
        for _ in range(5):
            clock.now += 0.01
            out.append(sim.read_state().positions)
        return np.array(out)

    np.testing.assert_array_equal(readings(3), readings(3))
    assert not np.array_equal(readings(3), readings(4))
    assert 0.001 < np.std(readings(3) - [0.0, 0.5]) < 0.05


def _config_params(robot: str) -> DriverParams:
    data = yaml.safe_load((CONFIG_DIR / f"{robot}.yaml").read_text())
    section = data["/**/" + DRIVER_SECTIONS[robot]]["ros__parameters"]
    values = {**data["/**"]["ros__parameters"], **section}
    names = {f.name for f in dataclasses.fields(DriverParams)}
    keys = {k: v for k, v in values.items() if k in names}
    # Every key the driver section sets must be a DriverParams field.
    driver_keys = set(section)
    assert driver_keys <= names, driver_keys - names
    return DriverParams(**{k: tuple(v) if isinstance(v, list) else v for k, v in keys.items()})


@pytest.mark.parametrize("robot", sorted(DRIVER_SECTIONS))
def test_robot_configs_are_valid_driver_params(robot):
    params = _config_params(robot)
    assert params.validate() == []
    backend = make_backend(params)
    assert isinstance(backend, SimBackend) and backend.joint_names == params.joint_names
    np.testing.assert_allclose(backend.read_state.__self__._positions, params.initial_pose())


def test_validate_names_the_problems():
    params = dataclasses.replace(
        _config_params("so101"),
        max_velocity=(1.0, 2.0),
        on_fault="explode",
        initial_positions=(9.0, 0, 0, 0, 0, 0),
    )
    problems = " | ".join(params.validate())
    assert "max_velocity has 2 values for 6 joints" in problems
    assert "on_fault 'explode'" in problems
    assert "initial_positions outside the limits for ['shoulder_pan']" in problems


def test_registry_errors_name_the_backend():
    with pytest.raises(BackendUnavailableError, match="unknown backend 'kuka'"):
        backend_class("kuka")
    with pytest.raises(BackendUnavailableError, match="trajectory_bridge_node"):
        backend_class("ros2_control")
    assert backend_class("sim") is SimBackend


def test_missing_vendor_module_is_a_clear_error(monkeypatch):
    from hw_drivers.backends import registry

    monkeypatch.setitem(registry.BACKEND_CLASSES, "acme", "hw_drivers.backends.acme_sdk:Acme")
    with pytest.raises(BackendUnavailableError, match="backend 'acme' needs module"):
        backend_class("acme")


@pytest.mark.parametrize("on_fault", ["hold", "disable"])
def test_control_loop_reports_faults_holds_and_reconnects(on_fault):
    clock = Clock()
    sim = _sim(clock)
    safety = SafetyConfig(max_step_per_tick=0.05)
    limits = DriverParams(
        joint_names=("a", "b"), position_lower=(-1.0, -1.0), position_upper=(1.0, 1.0),
        max_velocity=(2.0, 2.0), max_acceleration=(20.0, 20.0),
    ).limits()
    executor = ChunkExecutor(("a", "b"), limits, safety, ExecutorConfig())
    loop = ControlLoop(sim, executor, on_fault=on_fault, reconnect_period=0.5)
    loop.start()
    clock.now = 0.01
    assert loop.step(clock.now).wrote
    sim.inject_faults(1)
    clock.now = 0.02
    result = loop.step(clock.now)
    assert result.error.startswith("read failed") and result.command is None
    assert loop.faulted and loop.stats.backend_errors == 1
    assert sim.is_enabled is (on_fault == "hold")
    clock.now = 0.3  # before the reconnect period: still faulted, nothing written
    assert not loop.step(clock.now).wrote and loop.faulted
    clock.now = 0.6
    loop.step(clock.now)
    assert not loop.faulted and loop.stats.reconnects == 1 and sim.is_enabled
    assert executor.state == "idle"  # reset from the measured pose: the next chunk ramps in
    clock.now = 0.61
    assert loop.step(clock.now).wrote
