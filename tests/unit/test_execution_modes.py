"""Shadow execution, per-arm activation, preflight and fault holds of the control loop, on the
sim backend and on the DaMiao backend against emulated buses with bus time (virtual clock)."""

from __future__ import annotations

import numpy as np
import pytest

from hw_drivers import health as hl
from hw_drivers.backends.base import BackendError
from hw_drivers.backends.damiao import DamiaoBackend, yam_arm
from hw_drivers.backends.sim import SimBackend
from hw_drivers.chunk import Chunk
from hw_drivers.control_loop import ControlLoop
from hw_drivers.driver_params import DriverParams
from hw_drivers.emulators.damiao_emulator import TimedDamiaoBus
from hw_drivers.executor import ChunkExecutor
from hw_drivers.hardware_status import execution_summary, health_statuses, make_preflight
from hw_drivers.preflight import RateMeter, arm_hold_mask
from tests.driver_config import config_driver_params, driver_section, joint_names
from tests.virtual_bus import VIRTUAL_TIME_IO_TIMEOUT

SECTION = driver_section("yam")
NAMES = joint_names("yam")
RATE = float(SECTION["control_rate"])
PERIOD = 1.0 / RATE
# Start pose: joints in motor radians, grippers half open (motor -1.35 rad of -2.7).
ARM_START = [0.1, 1.0, 1.2, -0.2, 0.3, -0.4, 0.5]
START = np.array(ARM_START * 2)
MOTOR_START = [*ARM_START[:6], -1.35]


def params(**overrides) -> DriverParams:
    # The fixed-limit gripper these tests were written for (i2rt's crank_4310).
    values = dict(backend="damiao", can_channels=("can0", "can1"),
                  frame_prefixes=("left_", "right_"), gripper_type="crank_4310")
    return config_driver_params("yam", **{**values, **overrides})


class Robot:
    """A control loop on one backend kind, stepped on a virtual clock."""

    def __init__(self, kind: str, p: DriverParams, *, preflight=None):
        self.kind, self.p, self.now = kind, p, 0.0
        self.buses: dict[str, TimedDamiaoBus] = {}
        if kind == "sim":
            physical = params()  # the simulated robot's own range, not the driver's limits
            self.backend = SimBackend(
                p.joint_names,
                START.copy(),
                np.array(physical.position_lower),
                np.array(physical.position_upper),
                time_constant=0.02,
                rate=RATE,
                clock=lambda: self.now,
            )
        else:
            self.buses = {
                ch: TimedDamiaoBus(ch, initial_positions=list(MOTOR_START), seed=k)
                for k, ch in enumerate(p.can_channels)
            }
            self.backend = DamiaoBackend(
                [
                    yam_arm("can0", p.joint_names[:7], gripper_type="crank_4310"),
                    yam_arm("can1", p.joint_names[7:], gripper_type="crank_4310"),
                ],
                control_rate=RATE,
                link_factory=self.buses.__getitem__,
                io_timeout=VIRTUAL_TIME_IO_TIMEOUT,
            )
        executor = ChunkExecutor(p.joint_names, p.limits(), p.safety_config(), p.executor_config())
        self.loop = ControlLoop(
            self.backend,
            executor,
            on_fault=p.on_fault,
            reconnect_period=0.5,
            shadow=p.is_shadow(),
            hold_mask=p.hold_mask(),
            preflight=preflight,
        )
        self.results = []

    def step(self, count: int = 1):
        for _ in range(count):
            self.now += PERIOD
            for bus in self.buses.values():
                bus.sleep_until(self.now)
            self.results.append(self.loop.step(self.now))
        return self.results[-1]

    def measured(self) -> np.ndarray:
        if self.kind == "sim":
            return self.backend.read_state().positions
        positions = []
        for ch in ("can0", "can1"):
            for m in range(1, 8):
                value = self.buses[ch].snapshot(m).position
                positions.append(value / -2.7 if m == 7 else value)
        return np.array(positions)

    def submit_motion(self, delta: float = 0.15, duration: float = 1.0) -> None:
        """A chunk from the measured pose to ``delta`` further on every arm joint."""
        steps = int(duration / 0.1) + 1
        measured = self.loop.last_reading.positions
        ramp = np.linspace(0.0, 1.0, steps)[:, None]
        target = measured + np.where([n.endswith("gripper") for n in NAMES], 0.0, delta)
        chunk = Chunk(
            stamp=self.now,
            start_offset=0.0,
            step_dt=0.1,
            joint_names=tuple(NAMES),
            positions=measured + ramp * (target - measured),
        )
        result = self.loop.executor.submit(chunk, self.now, measured)
        assert result.accepted, result.reason


KINDS = ["sim", "damiao"]


@pytest.mark.parametrize("kind", KINDS)
def test_shadow_is_the_default_on_hardware_and_holds_the_robot_while_commands_run(kind):
    p = params(backend=kind)
    assert p.is_shadow() is (kind != "sim")
    robot = Robot(kind, params(execution="shadow"))
    robot.loop.start()
    robot.step(5)
    robot.submit_motion()
    robot.step(int(1.5 * RATE))
    commanded = robot.results[-1].command.positions
    arm = [not n.endswith("gripper") for n in NAMES]
    # The executor followed the chunk (what is published and shown)...
    np.testing.assert_allclose(commanded[arm], START[arm] + 0.15, atol=0.02)
    # ...and the robot stayed where it was measured.
    np.testing.assert_allclose(robot.measured(), START, atol=1e-3)
    assert all(np.allclose(r.sent, START, atol=1e-3) for r in robot.results if r.wrote)


@pytest.mark.parametrize("kind", KINDS)
def test_leaving_shadow_ramps_in_from_the_measured_pose(kind):
    robot = Robot(kind, params(execution="shadow"))
    robot.loop.start()
    robot.step(5)
    robot.submit_motion()
    robot.step(int(1.2 * RATE))
    robot.loop.set_activation(shadow=False)
    assert robot.loop.executor.state == "idle"  # restarted: the next chunk ramps in
    first = robot.step()
    assert np.max(np.abs(first.sent - START)) <= params().max_step_per_tick + 1e-6
    robot.submit_motion()
    robot.step(int(1.5 * RATE))
    arm = np.array([not n.endswith("gripper") for n in NAMES])
    np.testing.assert_allclose(robot.measured()[arm], START[arm] + 0.15, atol=0.02)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("active", ["left", "right"])
def test_only_the_active_arm_moves(kind, active):
    robot = Robot(kind, params(execution="live", active_arms=active))
    robot.loop.start()
    robot.step(5)
    robot.submit_motion()
    robot.step(int(1.5 * RATE))
    moved = robot.measured() - START
    mine = np.array([n.startswith(active) and not n.endswith("gripper") for n in NAMES])
    other = np.array([not n.startswith(active) for n in NAMES])
    np.testing.assert_allclose(moved[mine], 0.15, atol=0.02)
    np.testing.assert_allclose(moved[other], 0.0, atol=1e-3)


def test_a_command_fault_stays_latched_through_activation_changes_until_reset(monkeypatch):
    """A non-finite planned command (a bug upstream) latches a fault that holds the arm until
    ``~/reset``. Bringing an arm back into play (live ``active_arms``/``execution``) and
    re-activating restart the command stream; they cleared the fault, and the next chunk ran."""
    from hw_drivers import executor as executor_module

    robot = Robot("sim", params(execution="live", active_arms="left"))
    robot.loop.start()
    robot.step(5)
    robot.submit_motion()
    robot.step(int(0.3 * RATE))
    original = executor_module._Plan.sample
    monkeypatch.setattr(
        executor_module._Plan, "sample", lambda self, t: (np.full(len(NAMES), np.nan),) * 2
    )
    robot.step()
    monkeypatch.setattr(executor_module._Plan, "sample", original)
    executor = robot.loop.executor
    assert executor.state == "fault" and executor.fault.startswith("non_finite:")
    held = robot.measured()

    def still_faulted() -> None:
        assert executor.fault.startswith("non_finite:"), executor.fault
        assert executor.state == "fault" and "until reset" in executor.state_message
        measured = robot.loop.last_reading.positions
        motion = measured + np.linspace(0.0, 0.2, 11)[:, None]
        chunk = Chunk(robot.now, 0.0, 0.1, tuple(NAMES), motion)
        refused = executor.submit(chunk, robot.now, measured)
        assert not refused.accepted and refused.reason.startswith("fault:"), refused.reason
        robot.step(int(0.5 * RATE))
        np.testing.assert_allclose(robot.measured(), held, atol=1e-3)

    robot.loop.set_activation(shadow=False, hold_mask=np.zeros(len(NAMES), dtype=bool))
    still_faulted()
    robot.loop.set_activation(shadow=True)
    robot.loop.set_activation(shadow=False)
    still_faulted()
    robot.loop.start()  # the lifecycle's activate
    still_faulted()
    assert "cleared fault" in executor.reset(robot.loop.last_reading.positions)
    robot.step()
    robot.submit_motion()
    robot.step(int(1.5 * RATE))
    assert np.abs(robot.measured() - held).max() > 0.1


def test_arm_selection_names_come_from_the_frame_prefixes():
    assert arm_hold_mask(NAMES, ("left_", "right_"), "both").sum() == 0
    assert list(arm_hold_mask(NAMES, ("left_", "right_"), "left")) == [False] * 7 + [True] * 7
    with pytest.raises(ValueError, match=r"'middle' is not 'both' or one of the arms"):
        arm_hold_mask(NAMES, ("left_", "right_"), "middle")
    assert any("active_arms" in problem for problem in params(active_arms="top").validate())


# -- preflight ------------------------------------------------------------------------------
class Cameras:
    def __init__(self, rates):
        self.rates = rates

    def __call__(self):
        return dict(self.rates)


def preflight_robot(kind, cameras, **overrides):
    p = params(
        backend=kind,
        execution="live",
        preflight="on",
        camera_names=("top",),
        camera_topics=("cameras/top/image_raw",),
        camera_rates=(30.0,),
        **overrides,
    )
    logs = []
    robot = Robot(kind, p)
    robot.loop.preflight = make_preflight(
        p, robot.backend, cameras, lambda text, ok: logs.append((text, ok))
    )
    return robot, logs


def energised(robot) -> bool:
    if robot.kind == "sim":
        return robot.backend.is_enabled
    return any(bus.snapshot(m).enabled for bus in robot.buses.values() for m in range(1, 8))


@pytest.mark.parametrize("kind", KINDS)
def test_preflight_passes_and_reports_one_block(kind):
    robot, logs = preflight_robot(kind, Cameras({"top": 30.0}))
    robot.loop.start()
    assert energised(robot)
    [(text, ok)] = logs
    assert ok and text.startswith(f"preflight yam ({kind}): PASSED")
    assert "[ok] joints inside limits" in text
    assert "[ok] camera top: 30.0 Hz, expected 30 Hz +/- 20%" in text
    entry = robot.loop.last_preflight.health_entry()
    assert entry.level == hl.OK and entry.name == "preflight"


@pytest.mark.parametrize("kind", KINDS)
def test_preflight_refuses_torque_while_a_camera_is_not_streaming(kind):
    cameras = Cameras({"top": 1.2})
    robot, logs = preflight_robot(kind, cameras)
    with pytest.raises(
        BackendError,
        match=r"preflight failed: camera top: 1.2 Hz, expected 30 Hz \+/- 20% \(below 24.0\)",
    ):
        robot.loop.start()
    assert not energised(robot)
    assert logs[-1][1] is False and "FAILED, torque stays off" in logs[-1][0]
    assert robot.loop.last_preflight.health_entry().level == hl.ERROR
    cameras.rates["top"] = 26.0  # the camera came up: the retry passes
    robot.loop.start()
    assert energised(robot)


@pytest.mark.parametrize("kind", KINDS)
def test_preflight_refuses_a_joint_outside_its_limits(kind):
    p = params()
    lower = list(p.position_lower)
    lower[1] = 1.05  # left_joint2 rests at 1.0
    robot, _logs = preflight_robot(kind, Cameras({"top": 30.0}), position_lower=tuple(lower))
    with pytest.raises(BackendError, match=r"left_joint2 1.000 not in \[1.050"):
        robot.loop.start()
    assert not energised(robot)


def test_preflight_refuses_a_motor_fault_and_names_it():
    robot, _logs = preflight_robot("damiao", Cameras({"top": 30.0}))
    robot.buses["can1"].set_fault(4, 0xB)
    with pytest.raises(BackendError, match=r"right_joint4 \(id 0x04, can1\): fault: MOS over-temp"):
        robot.loop.start()
    assert not energised(robot)
    entries = {e.name: e for e in health_statuses(robot.loop, robot.p)}
    assert entries["preflight"].level == hl.ERROR
    assert entries["damiao motor right_joint4 (id 0x04, can1)"].level == hl.ERROR


def test_rate_meter_measures_the_rate_on_the_given_clock():
    meter = RateMeter(window=2.0)
    for k in range(100):
        meter.tick(k / 30.0)
    assert meter.rate(99 / 30.0) == pytest.approx(30.0, rel=0.01)
    assert meter.rate(10.0) == 0.0  # stopped streaming


# -- faults hold within one tick ------------------------------------------------------------
def test_motor_that_stops_replying_holds_the_loop_on_that_tick_and_is_named():
    robot = Robot("damiao", params(execution="live"))
    robot.loop.start()
    robot.step(5)
    robot.submit_motion()
    robot.step(50)
    robot.buses["can0"].silence(3)
    result = robot.step()
    assert "left_joint3 (id 0x03) on can0: no reply" in result.error
    assert robot.loop.faulted and result.command is None
    sent = [len(robot.buses[ch].snapshot(m).received) for ch in ("can0", "can1") for m in (1, 2)]
    robot.step(int(0.4 * RATE))  # before reconnect_period: nothing is commanded
    assert sent == [
        len(robot.buses[ch].snapshot(m).received) for ch in ("can0", "can1") for m in (1, 2)
    ]
    entry = next(e for e in health_statuses(robot.loop, robot.p) if "left_joint3" in e.name)
    assert entry.level == hl.ERROR and "no reply" in entry.message


def test_over_temperature_holds_the_loop_on_that_tick_and_is_named():
    robot = Robot("damiao", params(execution="live"))
    robot.loop.start()
    robot.step(5)
    robot.buses["can1"].set_fault(6, 0xC)
    result = robot.step()
    assert "right_joint6 (id 0x06) on can1: rotor over-temperature" in result.error
    assert robot.loop.faulted
    entry = next(e for e in health_statuses(robot.loop, robot.p) if "right_joint6" in e.name)
    assert entry.level == hl.ERROR and "rotor over-temperature" in entry.message


def test_execution_summary_states_mode_budget_and_sag():
    p = params()
    robot = Robot("damiao", p)
    text = execution_summary(p, robot.backend)
    assert "execution: SHADOW" in text and "execution:=live" in text
    assert "CAN budget: 7 motors/bus at 1 Mbit/s: 1.89 ms bus time per tick, 47% load" in text
    assert "gravity feed-forward off" in text
