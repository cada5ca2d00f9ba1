"""The preflight expects each camera at its own configured rate (``camera_rates`` in the robot
config, the one statement the sim cameras publish at too), within a tolerance, and names every
camera with its measured and expected rate; run on the sim backend."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from hw_drivers import health as hl
from hw_drivers.backends.base import BackendError
from hw_drivers.backends.sim import SimBackend
from hw_drivers.control_loop import ControlLoop
from hw_drivers.driver_params import DriverParams
from hw_drivers.executor import ChunkExecutor
from hw_drivers.hardware_status import make_preflight
from molmoact2 import graph
from molmoact2.sim_camera_node import SimCameraParams

ROBOTS = ["yam", "so101", "droid"]


def node_params(config: graph.RobotConfig, node: str, cls: type):
    known = {f for f in cls.__dataclass_fields__}
    values = {k: v for k, v in config.params_for(node).items() if k in known}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


@pytest.mark.parametrize("robot", ROBOTS)
def test_each_cameras_rate_comes_from_the_robot_config_for_driver_and_sim_cameras(robot):
    config = graph.load_robot_config(robot)
    shared = config.shared
    expected = dict(zip(shared["camera_names"], shared["camera_rates"], strict=True))
    driver = node_params(config, config.driver_name, DriverParams)
    assert driver.expected_camera_rates() == expected
    cameras = node_params(config, graph.SIM_CAMERAS_NODE, SimCameraParams)
    assert dict(zip(cameras.camera_names, cameras.rates(), strict=True)) == expected
    # One statement of the rate: the sim camera section does not restate it.
    assert "rate" not in config.sections[graph.SIM_CAMERAS_NODE]
    hardware = node_params(config, config.driver_name, DriverParams)
    assert hardware.validate() == []


def sim_loop(p: DriverParams, cameras, logs):
    now = [0.0]
    backend = SimBackend(
        p.joint_names,
        np.zeros(len(p.joint_names)),
        np.array(p.position_lower),
        np.array(p.position_upper),
        time_constant=0.02,
        rate=p.control_rate,
        clock=lambda: now[0],
    )
    executor = ChunkExecutor(p.joint_names, p.limits(), p.safety_config(), p.executor_config())
    preflight = make_preflight(p, backend, cameras, lambda text, ok: logs.append((text, ok)))
    return ControlLoop(backend, executor, preflight=preflight), backend


def params(**overrides) -> DriverParams:
    values = dict(
        robot="droid",
        joint_names=("j1", "j2"),
        backend="sim",
        preflight="on",
        position_lower=(-1.0, -1.0),
        position_upper=(1.0, 1.0),
        max_velocity=(1.0, 1.0),
        max_acceleration=(10.0, 10.0),
        camera_names=("exterior", "wrist"),
        camera_topics=("cameras/exterior/image_raw", "cameras/wrist/image_raw"),
        camera_rates=(15.0, 30.0),
    )
    values.update(overrides)
    return DriverParams(**values)


def test_a_camera_below_its_own_rate_fails_even_above_another_cameras_rate():
    measured = {"exterior": 15.2, "wrist": 15.1}  # wrist is configured for 30 Hz
    logs: list = []
    loop, backend = sim_loop(params(), lambda: dict(measured), logs)
    with pytest.raises(BackendError, match=r"camera wrist: 15.1 Hz, expected 30 Hz"):
        loop.start()
    assert not backend.is_enabled
    [(text, ok)] = logs
    assert not ok
    assert "[ok] camera exterior: 15.2 Hz, expected 15 Hz +/- 20%" in text
    assert "[FAIL] camera wrist: 15.1 Hz, expected 30 Hz +/- 20% (below 24.0)" in text
    entry = loop.last_preflight.health_entry()
    assert entry.level == hl.ERROR and "camera wrist" in entry.message
    assert entry.values["camera exterior"].startswith("ok: 15.2 Hz")
    assert entry.values["camera wrist"].startswith("FAIL: 15.1 Hz")
    measured["wrist"] = 29.4
    loop.start()
    assert backend.is_enabled and loop.last_preflight.ok


def test_a_camera_far_above_its_rate_or_silent_fails_and_is_named():
    logs: list = []
    loop, _ = sim_loop(params(), lambda: {"exterior": 30.0}, logs)
    with pytest.raises(BackendError) as err:
        loop.start()
    assert "camera exterior: 30.0 Hz, expected 15 Hz +/- 20% (above 18.0)" in str(err.value)
    assert "camera wrist: 0.0 Hz, expected 30 Hz +/- 20% (not streaming)" in str(err.value)


def test_tolerance_is_a_parameter_and_the_camera_check_can_be_switched_off():
    logs: list = []
    loop, _ = sim_loop(
        params(preflight_camera_tolerance=0.5), lambda: {"exterior": 8.0, "wrist": 44.0}, logs
    )
    loop.start()
    assert "+/- 50%" in logs[-1][0]
    loop, backend = sim_loop(params(preflight_cameras=False), dict, logs)
    loop.start()
    assert backend.is_enabled and "camera" not in logs[-1][0]


def test_bad_camera_rate_settings_are_refused():
    assert any("camera_rates entry > 0 per camera" in p for p in params(camera_rates=()).validate())
    assert any("per camera" in p for p in params(camera_rates=(15.0, 0.0)).validate())
    assert params(camera_rates=(), preflight_cameras=False).validate() == []
    assert any("tolerance" in p for p in params(preflight_camera_tolerance=1.0).validate())
    assert SimCameraParams(
        joint_names=("j",), camera_names=("a",), camera_topics=("t",), camera_frames=("f",)
    ).validate() == ["camera_rates needs one rate > 0 per camera (1)"]
    override = SimCameraParams(
        joint_names=("j",),
        camera_names=("a",),
        camera_topics=("t",),
        camera_frames=("f",),
        camera_rates=(15.0,),
        rate=5.0,
    )
    assert override.validate() == [] and override.rates() == (5.0,)
    assert "rate must be >= 0" in SimCameraParams(rate=-1.0).validate()


def write_config(tmp_path, mutate):
    raw = yaml.safe_load(graph.config_path("so101").read_text())
    mutate(raw)
    path = tmp_path / "so101.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_configs_without_or_with_bad_camera_rates_are_refused(tmp_path):
    def drop(raw):
        del raw["/**"]["ros__parameters"]["camera_rates"]

    with pytest.raises(graph.ConfigError, match="'/\\*\\*' is missing camera_rates"):
        graph.load_robot_config(write_config(tmp_path, drop))

    def short(raw):
        raw["/**"]["ros__parameters"]["camera_rates"] = [30.0]

    with pytest.raises(graph.ConfigError, match="camera_rates has 1 entries for 2 cameras"):
        graph.load_robot_config(write_config(tmp_path, short))

    def negative(raw):
        raw["/**"]["ros__parameters"]["camera_rates"] = [30.0, -5.0]

    with pytest.raises(graph.ConfigError, match="camera_rates must be frame rates > 0"):
        graph.load_robot_config(write_config(tmp_path, negative))

    def integers(raw):  # rclpy would refuse an integer array for the float parameter
        raw["/**"]["ros__parameters"]["camera_rates"] = [30, 30]

    with pytest.raises(graph.ConfigError, match=r"written as floats \(30.0, not 30\)"):
        graph.load_robot_config(write_config(tmp_path, integers))


def test_the_old_single_minimum_rate_parameter_is_named_with_its_replacement(tmp_path):
    def old(raw):
        raw["/**/so101_driver"]["ros__parameters"]["preflight_camera_rate"] = 5.0

    config = graph.load_robot_config(write_config(tmp_path, old))
    problems = graph.validate_graph_params(config, graph.build_graph(config))
    [problem] = [p for p in problems if "preflight_camera_rate" in p]
    assert "unknown parameter 'preflight_camera_rate' (replaced by each camera's own rate" in (
        problem
    )
