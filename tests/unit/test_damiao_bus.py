"""DaMiao on buses with bus time: the rate a real CAN bus carries, faults, health, gravity.

Every test here runs the real backend (one I/O thread per bus, MIT exchanges) against
``TimedDamiaoBus``: frames take their worst-case bit time at the configured bitrate on a
virtual clock, so the results are what a real bus would do and do not depend on how loaded the
machine running the test is.
"""

from __future__ import annotations

import math
import types
from pathlib import Path

import numpy as np
import pytest
import yaml

from hw_drivers import damiao_protocol as dm
from hw_drivers import health as hl
from hw_drivers.backends.base import BackendError
from hw_drivers.backends.damiao import YAM_KP, DamiaoBackend, with_dynamics, yam_arm
from hw_drivers.can_budget import BusBudget, can_frame_bits
from hw_drivers.emulators.damiao_emulator import TimedDamiaoBus
from tests.virtual_bus import VIRTUAL_TIME_IO_TIMEOUT

ROOT = Path(__file__).resolve().parents[2]
ARM_URDF = ROOT / "tests" / "fixtures" / "two_link_arm.urdf"
LEFT = [f"left_joint{i}" for i in range(1, 7)] + ["left_gripper"]
RIGHT = [n.replace("left", "right") for n in LEFT]
START = [0.1, 1.0, 1.2, -0.2, 0.3, -0.4, -1.35]


def shipped_rate() -> float:
    config = yaml.safe_load((ROOT / "config" / "yam.yaml").read_text())
    return float(config["/**/yam_driver"]["ros__parameters"]["control_rate"])


class Rig:
    """Two YAM arms, each on its own timed bus, behind one backend."""

    def __init__(self, rate: float | None, bitrate: int = 1_000_000, seed: int = 0, **kwargs):
        self.buses = {
            ch: TimedDamiaoBus(ch, bitrate=bitrate, initial_positions=START, seed=seed + k)
            for k, ch in enumerate(("can0", "can1"))
        }
        self.backend = DamiaoBackend(
            [
                yam_arm("can0", LEFT, gripper_type="crank_4310"),
                yam_arm("can1", RIGHT, gripper_type="crank_4310"),
            ],
            bitrate=bitrate,
            control_rate=rate,
            link_factory=self.buses.__getitem__,
            **{"io_timeout": VIRTUAL_TIME_IO_TIMEOUT, **kwargs},
        )
        self.period = 1.0 / (rate or 250.0)

    def __enter__(self) -> Rig:
        self.backend.connect()
        self.backend.enable()
        return self

    def __exit__(self, *exc) -> None:
        self.backend.disconnect()

    def wait_for_tick(self, k: int) -> float:
        start = k * self.period
        for bus in self.buses.values():
            bus.sleep_until(start)
        return start

    def tick(self, k: int, positions: np.ndarray) -> bool:
        """One control tick (read, then command); True when every bus finished in time."""
        start = self.wait_for_tick(k)
        self.backend.read_state()
        self.backend.write_command(positions)
        return all(bus.now() - start <= self.period for bus in self.buses.values())


def pose(t: float) -> np.ndarray:
    arm = np.array([0.1, 1.0, 1.2, -0.2, 0.3, -0.4, 0.5]) + 0.05 * math.sin(2 * math.pi * 0.5 * t)
    return np.concatenate([arm, arm])


# -- the budget -----------------------------------------------------------------------------
def test_frame_bits_are_the_worst_case_of_can_2_0a():
    # 8 data bytes: 64 + 47 fixed + 24 stuff bits (Davis et al. 2007, eq. 1).
    assert can_frame_bits(8) == 135
    assert can_frame_bits(0) == 55
    assert can_frame_bits(8, worst_case_stuffing=False) == 111


def test_budget_of_one_mit_exchange_per_motor():
    budget = BusBudget(1_000_000, motors_per_bus=7)
    assert budget.tick_bus_time == pytest.approx(14 * 135e-6)
    assert budget.check(shipped_rate()) is None
    # What the old scheme needed: refresh + MIT round trips (4 frames per motor), both arms one
    # after the other: ~7.6 ms of bus time per tick, against a 4 ms period at 250 Hz.
    old = 2 * 7 * 4 * 135e-6
    assert old > 1.0 / 250.0


def test_a_rate_the_bus_cannot_carry_is_refused_at_configure_with_the_numbers():
    with pytest.raises(BackendError) as info:
        DamiaoBackend([yam_arm("can0", LEFT)], control_rate=500.0, link_factory=lambda ch: None)
    message = str(info.value)
    for number in ("500 Hz", "7 motors", "135 bits", "1.89 ms", "94%", "70%", "370 Hz"):
        assert number in message, (number, message)
    params = types.SimpleNamespace(
        can_channels=("can0", "can1"), joint_names=tuple(LEFT + RIGHT), control_rate=400.0
    )
    with pytest.raises(BackendError, match="does not fit the CAN bus"):
        DamiaoBackend.from_params(params)
    # A slower bus fits fewer ticks: 500 kbit/s carries 185 Hz at most.
    with pytest.raises(BackendError, match="highest rate that fits: 185 Hz"):
        DamiaoBackend([yam_arm("can0", LEFT)], bitrate=500_000, control_rate=250.0)


# -- the rate real buses carry ------------------------------------------------------------
def test_bimanual_yam_holds_its_ticks_at_the_shipped_rate_with_bus_time_modelled():
    rate = shipped_rate()
    ticks = 1500
    with Rig(rate) as rig:
        held = sum(rig.tick(k, pose(k / rate)) for k in range(1, ticks + 1))
        bus_time = max(h.max_exchange_time for h in rig.backend.bus_health)
        frames = [bus.frames_on_wire for bus in rig.buses.values()]
    assert held / ticks >= 0.99, (held, ticks)
    # One MIT exchange per motor per tick: 7 commands + 7 replies per bus, nothing else
    # (connect and enable add one round each, and the first read after enable one refresh;
    # connect also reads 3 range registers per motor, a request and a reply each).
    assert frames == [14 * (ticks + 3) + 7 * 3 * 2] * 2
    assert bus_time < 1.0 / rate


def test_occasional_lost_replies_are_resent_within_the_tick():
    rate = shipped_rate()
    with Rig(rate) as rig:
        held = 0
        for k in range(1, 501):
            if k % 50 == 0:
                rig.buses["can0"].drop_replies(1)
            held += rig.tick(k, pose(k / rate))
        misses = sum(h.missed for h in rig.backend.motor_health[0])
    assert misses == 10
    assert held / 500 >= 0.99


def test_a_rate_beyond_the_bus_misses_its_ticks_in_the_emulator():
    # Bypass the configure check to show what the bus would do at 800 Hz (1.25 ms period).
    rig = Rig(None)
    rig.period = 1.0 / 800.0
    with rig:
        held = sum(rig.tick(k, pose(k / 800.0)) for k in range(1, 201))
    assert held == 0


def test_stale_reply_from_an_earlier_request_is_not_taken_as_feedback():
    with Rig(shipped_rate()) as rig:
        bus = rig.buses["can0"]
        rig.wait_for_tick(1)
        # A reply that was already on its way before this tick's request: it must be discarded.
        bus.send(dm.encode_refresh(1))
        bus.sleep_until(bus.now() + 0.001)
        before = rig.backend.motor_health[0][0].stale
        rig.backend.write_command(pose(0.0))
        assert rig.backend.motor_health[0][0].stale == before + 1


# -- faults -----------------------------------------------------------------------------------
def test_silent_motor_fails_the_tick_it_stops_and_is_named_in_health():
    with Rig(shipped_rate()) as rig:
        rig.tick(1, pose(0.0))
        rig.buses["can1"].silence(5)
        rig.wait_for_tick(2)
        rig.backend.read_state()  # last tick's replies: still fine
        with pytest.raises(BackendError, match=r"right_joint5 \(id 0x05\) on can1: no reply"):
            rig.backend.write_command(pose(0.0))
        entries = {e.name: e for e in rig.backend.health()}
        bad = entries["damiao motor right_joint5 (id 0x05, can1)"]
        assert bad.level == hl.ERROR and "no reply" in bad.message
        assert entries["damiao motor right_joint4 (id 0x04, can1)"].level == hl.OK


def test_over_temperature_fault_fails_the_tick_and_is_named():
    with Rig(shipped_rate()) as rig:
        rig.tick(1, pose(0.0))
        rig.buses["can0"].set_temperature(2, 60, 121)
        rig.buses["can0"].set_fault(2, 0xC)
        with pytest.raises(BackendError, match=r"left_joint2 \(id 0x02\) on can0: rotor over-temp"):
            rig.tick(2, pose(0.0))
        entry = next(e for e in rig.backend.health() if "left_joint2" in e.name)
        assert entry.level == hl.ERROR and "rotor over-temperature" in entry.message
        assert entry.values["temperature_rotor_c"] == "121"


def test_hot_motor_is_a_warning_before_it_trips():
    with Rig(shipped_rate(), temperature_warn=70.0) as rig:
        rig.buses["can1"].set_temperature(3, 72, 50)
        rig.tick(1, pose(0.0))
        rig.tick(2, pose(0.0))
        entry = next(e for e in rig.backend.health() if "right_joint3" in e.name)
        assert entry.level == hl.WARN and "72" in entry.message


def test_fault_present_at_start_is_reported_and_refused_until_cleared():
    rig = Rig(shipped_rate())
    rig.buses["can1"].set_fault(7, 0x9)  # under-voltage latched at power-up
    rig.backend.connect()
    try:
        entry = next(e for e in rig.backend.health() if "right_gripper" in e.name)
        assert entry.level == hl.ERROR and "under-voltage" in entry.message
        with pytest.raises(BackendError, match=r"right_gripper \(id 0x07\) on can1: under-voltage"):
            rig.backend.enable()
        assert not rig.buses["can1"].snapshot(1).enabled  # no motor was energised
        cleared = rig.backend.clear_faults()
        assert cleared == ["right_gripper (id 0x07): under-voltage -> cleared"]
        assert dm.CMD_CLEAR_ERROR in rig.buses["can1"].snapshot(7).control_log
        rig.backend.enable()
        assert all(rig.buses["can1"].snapshot(m).enabled for m in range(1, 8))
    finally:
        rig.backend.disconnect()


def test_frozen_io_thread_is_reported_instead_of_blocking():
    class Stuck(TimedDamiaoBus):
        hang = False

        def recv(self, timeout):
            if self.hang:
                import threading

                threading.Event().wait(2.0)
            return super().recv(timeout)

    stuck = Stuck("can0", initial_positions=START)
    backend = DamiaoBackend(
        [yam_arm("can0", LEFT, gripper_type="crank_4310")],
        control_rate=250.0,
        link_factory=lambda ch: stuck,
        io_timeout=0.2,
    )
    backend.connect()
    backend.enable()
    stuck.hang = True
    with pytest.raises(BackendError, match="frozen"):
        backend.write_command(pose(0.0)[:7])
    with pytest.raises(BackendError, match="frozen"):
        backend.read_state()
    assert any(e.level == hl.ERROR and "frozen" in e.message for e in backend.health())
    backend.disconnect()


def test_disable_reaches_every_motor_and_reports_a_closed_bus():
    with Rig(shipped_rate()) as rig:
        rig.buses["can0"].close()
        with pytest.raises(BackendError, match="left_joint1 on can0"):
            rig.backend.disable()
        rig.buses["can1"].sleep_until(rig.buses["can1"].now() + 0.01)
        assert not any(rig.buses["can1"].snapshot(m).enabled for m in range(1, 8))


# -- gravity feed-forward ----------------------------------------------------------------
def analytic_gravity(q1: float, q2: float) -> np.ndarray:
    g, m1, m2, l1, l2 = 9.81, 2.0, 1.5, 0.5, 0.3
    return np.array(
        [
            g * (m1 * l1 * math.cos(q1) + m2 * (l1 * math.cos(q1) + l2 * math.cos(q1 + q2))),
            m2 * g * l2 * math.cos(q1 + q2),
        ]
    )


def test_gravity_feed_forward_from_the_arm_model_matches_analytic_torques():
    names = ["left_shoulder", "left_elbow", "left_gripper"]
    arm = with_dynamics(
        yam_arm(
            "can0",
            names,
            motor_ids=(1, 2, 3),
            motor_types=("DM4340", "DM4340", "DM4310"),
            kp=(80.0, 80.0, 20.0),
            kd=(5.0, 5.0, 0.5),
            gripper_type="crank_4310",
        ),
        str(ARM_URDF),
        prefix="left_",
    )
    start = [0.4, -0.3, -1.35]
    bus = TimedDamiaoBus(
        "can0", motors=[(1, "DM4340"), (2, "DM4340"), (3, "DM4310")], initial_positions=start
    )
    backend = DamiaoBackend(
        [arm], control_rate=250.0, link_factory=lambda ch: bus, io_timeout=VIRTUAL_TIME_IO_TIMEOUT
    )
    backend.connect()
    backend.enable()
    # Torques at the measured pose (feedback is quantised to 16 bits over +-12.5 rad).
    measured = backend.read_state().positions
    np.testing.assert_allclose(measured[:2], [0.4, -0.3], atol=dm.quantum(-12.5, 12.5, 16))
    expected = analytic_gravity(measured[0], measured[1])
    np.testing.assert_allclose(backend.gravity_torques()[:2], expected, atol=1e-9)
    assert backend.gravity_torques()[2] == 0.0
    backend.write_command(np.array([0.4, -0.3, 0.5]))
    sent = [bus.snapshot(m).received[-1].torque for m in (1, 2, 3)]
    quantum = dm.quantum(-28.0, 28.0, 12)
    np.testing.assert_allclose(sent[:2], expected, atol=quantum / 2 + 1e-9)
    assert abs(sent[2]) <= dm.quantum(-10.0, 10.0, 12) / 2
    assert "gravity feed-forward from the arm model" in backend.sag_note()
    backend.disconnect()


def test_without_a_model_feed_forward_is_zero_and_the_sag_is_stated():
    with Rig(shipped_rate()) as rig:
        rig.tick(1, pose(0.0))
        assert all(
            abs(rig.buses["can0"].snapshot(m).received[-1].torque) < 0.01 for m in range(1, 8)
        )
        note = rig.backend.sag_note()
    assert "gravity feed-forward off" in note
    assert f"left_joint5 {1 / YAM_KP[4]:.3f} rad/(N*m)" in note


def test_a_urdf_without_the_arm_joints_is_refused():
    with pytest.raises(BackendError, match="no movable joint"):
        with_dynamics(
            yam_arm("can0", LEFT, gripper_type="crank_4310"), str(ARM_URDF), prefix="left_"
        )


def test_config_validation_refuses_a_rate_the_bus_cannot_carry():
    from hw_drivers.driver_params import DriverParams

    base = dict(
        joint_names=tuple(LEFT + RIGHT),
        backend="damiao",
        can_channels=("can0", "can1"),
        position_lower=(-3.0,) * 14,
        position_upper=(3.0,) * 14,
        max_velocity=(3.0,) * 14,
        max_acceleration=(20.0,) * 14,
    )
    assert not DriverParams(control_rate=shipped_rate(), **base).validate()
    [problem] = DriverParams(control_rate=500.0, **base).validate()
    assert problem.startswith("control_rate 500 Hz does not fit the CAN bus")
    # The same rate on the sim backend has no bus to fit.
    assert not DriverParams(control_rate=500.0, **{**base, "backend": "sim"}).validate()


def test_from_params_builds_the_arm_models_with_the_urdfs_joint_names():
    params = types.SimpleNamespace(
        can_channels=("can0", "can1"),
        joint_names=("left_a", "left_b", "left_gripper", "right_a", "right_b", "right_gripper"),
        frame_prefixes=("left_", "right_"),
        damiao_motor_ids=(1, 2, 3),
        damiao_motor_types=("DM4340", "DM4340", "DM4310"),
        damiao_kp=(80.0, 80.0, 20.0),
        damiao_kd=(5.0, 5.0, 0.5),
        dynamics_urdf=str(ARM_URDF),
        dynamics_joint_names=("shoulder", "elbow"),
        control_rate=250.0,
    )
    backend = DamiaoBackend.from_params(params)
    torques = backend.gravity_torques(np.array([0.4, -0.3, 0.5, 0.1, 0.2, 0.5]))
    np.testing.assert_allclose(torques[:2], analytic_gravity(0.4, -0.3), atol=1e-9)
    np.testing.assert_allclose(torques[3:5], analytic_gravity(0.1, 0.2), atol=1e-9)
    assert torques[2] == torques[5] == 0.0
    params.dynamics_joint_names = ("shoulder",)
    with pytest.raises(BackendError, match="1 dynamics_joint_names for the 2 non-gripper"):
        DamiaoBackend.from_params(params)


def test_replies_older_than_the_feedback_age_are_not_reused_as_the_measurement():
    with Rig(shipped_rate()) as rig:
        rig.tick(1, pose(0.0))
        frames = rig.buses["can0"].frames_on_wire
        rig.wait_for_tick(2)
        rig.backend.read_state()  # one period later: last tick's replies, no bus traffic
        assert rig.buses["can0"].frames_on_wire == frames
        rig.backend.write_command(pose(0.0))
        frames = rig.buses["can0"].frames_on_wire
        rig.wait_for_tick(10)  # the caller stalled for 8 periods
        rig.backend.read_state()
        assert rig.buses["can0"].frames_on_wire == frames + 14  # a refresh round


# -- the scale the real motors hold -------------------------------------------------------
#: PMAX/VMAX/TMAX (registers 21/22/23) of a YAM's motors, from i2rt's register tool
#: (i2rt-robotics/i2rt, i2rt/motor_config_tool/dm_motor_registers.md, table "Values this library
#: expects": DM4340 12.5 / 10 / 28, DM4310 12.5 / 30 / 10; the same numbers as
#: ``MotorType.get_motor_constants`` in i2rt/motor_drivers/utils.py). The motor decodes every
#: MIT command and encodes every reply with these, whatever the host assumes.
I2RT_YAM_REGISTERS = [
    (motor_id, dm.MotorType(f"i2rt {name}", *ranges))
    for motor_id, name, ranges in (
        (1, "DM4340", (12.5, 10.0, 28.0)),
        (2, "DM4340", (12.5, 10.0, 28.0)),
        (3, "DM4340", (12.5, 10.0, 28.0)),
        (4, "DM4310", (12.5, 30.0, 10.0)),
        (5, "DM4310", (12.5, 30.0, 10.0)),
        (6, "DM4310", (12.5, 30.0, 10.0)),
        (7, "DM4310", (12.5, 30.0, 10.0)),
    )
]


def test_yam_velocities_reach_the_motors_at_the_scale_their_registers_hold():
    # With DaMiao's 24 V factory VMAX (8 rad/s) assumed for a YAM's DM4340s, which hold 10, a
    # velocity feed-forward arrived 1.25x too large and measured velocities read 0.8x.
    bus = TimedDamiaoBus("can0", motors=I2RT_YAM_REGISTERS, initial_positions=START)
    backend = DamiaoBackend(
        [yam_arm("can0", LEFT, gripper_type="crank_4310")],
        control_rate=shipped_rate(),
        link_factory={"can0": bus}.__getitem__,
        io_timeout=VIRTUAL_TIME_IO_TIMEOUT,
    )
    backend.connect()
    backend.enable()
    try:
        velocities = np.array([2.0, -3.0, 5.0, 1.5, -6.0, 12.0, 0.0])
        positions = backend.read_state().positions
        backend.write_command(positions, velocities)
        reading = backend.read_state()
    finally:
        backend.disconnect()
    for i, (motor_id, registers) in enumerate(I2RT_YAM_REGISTERS[:6]):
        step = dm.quantum(-registers.v_max, registers.v_max, 12)
        received = bus.snapshot(motor_id).received[-1]
        assert received.velocity == pytest.approx(velocities[i], abs=step), motor_id
        assert reading.velocities[i] == pytest.approx(velocities[i], abs=2 * step), motor_id


def test_a_motor_holding_another_mit_scale_is_refused_and_named():
    # A YAM joint motor left at DaMiao's 24 V factory ranges (DM_CAN.py ``Limit_Param`` for the
    # DM4340: 12.5 / 8 / 28) while the arm is driven as i2rt's DM4340 (VMAX 10): nothing on the
    # bus reports it (i2rt's dm_motor_registers.md, "MIT scaling"), the registers do.
    registers = list(I2RT_YAM_REGISTERS)
    registers[1] = (2, dm.MotorType("DaMiao factory DM4340", 12.5, 8.0, 28.0))
    bus = TimedDamiaoBus("can0", motors=registers, initial_positions=START)
    backend = DamiaoBackend(
        [yam_arm("can0", LEFT, gripper_type="crank_4310")],
        control_rate=shipped_rate(),
        link_factory={"can0": bus}.__getitem__,
        io_timeout=VIRTUAL_TIME_IO_TIMEOUT,
    )
    backend.connect()
    try:
        entry = next(e for e in backend.health() if "left_joint2" in e.name)
        assert entry.level == hl.ERROR and "VMAX 8 (expected 10)" in entry.message
        assert entry.values["mit_scale"] == "PMAX 12.5, VMAX 8, TMAX 28"
        others = [e for e in backend.health() if "motor left_joint1" in e.name]
        assert others[0].values["mit_scale"] == "PMAX 12.5, VMAX 10, TMAX 28"
        with pytest.raises(BackendError, match=r"left_joint2 \(id 0x02\) on can0: .*VMAX 8"):
            backend.enable()
        assert not any(bus.snapshot(m).enabled for m in range(1, 8))
        with pytest.raises(BackendError, match="MIT scale mismatch, no command sent"):
            backend.write_command(backend.read_state().positions)
        assert not bus.snapshot(2).received
    finally:
        backend.disconnect()


def test_the_emulated_bus_has_the_transmit_queue_of_a_linux_can_device():
    # Linux's can_setup() (drivers/net/can/dev.c) gives a CAN device tx_queue_len = 10, and
    # SocketCAN answers a send beyond it with ENOBUFS instead of blocking. A host that bursts more
    # frames than that loses the rest; the emulator refuses them the same way.
    bus = TimedDamiaoBus("can0")
    for _ in range(11):  # the first goes onto the idle wire at once, ten wait in the queue
        bus.send(dm.encode_refresh(1))
    with pytest.raises(OSError, match="No buffer space"):
        bus.send(dm.encode_refresh(1))
    bus.sleep_until(bus.now() + 135e-6)  # one frame's time at 1 Mbit/s: the next one went out
    bus.send(dm.encode_refresh(1))


def test_a_late_register_reply_is_never_taken_as_feedback():
    # A register reply ([id_lo, id_hi, 0x33, rid, float32]: DaMiao's DM_CAN.py) comes on the
    # master id like feedback, and its first byte reads as "disabled, id nibble right". Behind a
    # USB adapter's latency (here 0.5 ms each way; i2rt's own loop allows 7 ms for 7 sequential
    # round trips, EXPECTED_CONTROL_PERIOD in dm_driver.py) the last register reply of connect
    # came after the next exchange had started and was taken as the gripper's answer to enable:
    # "did not enable: still disabled", with a position near -12.5 rad.
    assert dm.is_register_reply(dm.encode_register_reply(0x17, 7, dm.REG_TMAX, 10.0).data, 7)
    at_zero = dm.encode_feedback(0x17, 7, dm.STATE_DISABLED, 0.0, 0.0, 0.0, dm.motor_type("DM4310"))
    assert not dm.is_register_reply(at_zero.data, 7)
    bus = TimedDamiaoBus("can0", initial_positions=START, adapter_latency=1.0e-3)
    backend = DamiaoBackend(
        [yam_arm("can0", LEFT, gripper_type="crank_4310")],
        control_rate=shipped_rate(),
        link_factory={"can0": bus}.__getitem__,
        io_timeout=VIRTUAL_TIME_IO_TIMEOUT,
    )
    backend.connect()
    try:
        backend.enable()
        assert all(bus.snapshot(m).enabled for m in range(1, 8))
        reading = backend.read_state()
        np.testing.assert_allclose(reading.positions[:6], START[:6], atol=1e-3)
    finally:
        backend.disconnect()
