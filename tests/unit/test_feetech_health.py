"""Feetech servo health against the real counterpart: registers, error bits and packets written
from public sources, the serial bus budget, and the control loop on an emulated bus with byte
time (virtual clock): a servo that overheats, reports an error bit or falls silent holds the
driver on that tick, named; a fault at power-up keeps the torque off until it is cleared.

Sources (transcribed here, not taken from our code):
- huggingface/lerobot ``src/lerobot/motors/feetech/tables.py``: ``STS_SMS_SERIES_CONTROL_TABLE``
  (address, size) of Max_Temperature_Limit, Max/Min_Voltage_Limit, Present_Voltage,
  Present_Temperature, Status.
- Feetech SDK ``scservo_sdk/protocol_packet_handler.py`` (StarCycle/FTServo_Python, a copy of
  ftservo/FTServo_Python): ``ERRBIT_VOLTAGE = 1, ERRBIT_ANGLE = 2, ERRBIT_OVERHEAT = 4,
  ERRBIT_OVERELE = 8, ERRBIT_OVERLOAD = 32``; ``readTxRx`` packet layout; ``port_handler.py``:
  ``tx_time_per_byte = (1000.0 / baudrate) * 10.0`` [ms].
- SMS/STS memory table: Present_Voltage in 0.1 V, Present_Temperature in degC, Status bits
  0 voltage, 1 encoder, 2 temperature, 3 current, 5 overload; Max_Temperature_Limit default 70.
"""

from __future__ import annotations

import numpy as np
import pytest

from hw_drivers import feetech_protocol as ft
from hw_drivers import health as hl
from hw_drivers.backends.base import BackendError
from hw_drivers.backends.feetech import FeetechBackend
from hw_drivers.calibration import SO101_JOINTS
from hw_drivers.chunk import Chunk
from hw_drivers.control_loop import ControlLoop
from hw_drivers.driver_params import DriverParams
from hw_drivers.emulators.feetech_emulator import TimedFeetechBus
from hw_drivers.executor import ChunkExecutor
from hw_drivers.hardware_status import health_statuses, make_preflight
from hw_drivers.serial_budget import SerialBudget
from tests.driver_config import config_driver_params, driver_section
from tests.feetech_servos import START_TICKS, calibration, calibration_file

SECTION = driver_section("so101")
RATE = float(SECTION["control_rate"])
PERIOD = 1.0 / RATE
PORT = "/dev/ttyEMU"

# -- the real counterpart ------------------------------------------------------------------
#: lerobot tables.py, STS_SMS_SERIES_CONTROL_TABLE: name -> (address, size).
LEROBOT_STS = {
    "Max_Temperature_Limit": (13, 1),
    "Max_Voltage_Limit": (14, 1),
    "Min_Voltage_Limit": (15, 1),
    "Present_Voltage": (62, 1),
    "Present_Temperature": (63, 1),
    "Status": (65, 1),
    "Present_Position": (56, 2),
    "Present_Velocity": (58, 2),
    "Goal_Position": (42, 2),
}
#: Feetech SDK ERRBIT_* -> what each bit means.
SDK_ERRBITS = {1: "voltage", 2: "angle", 4: "overheat", 8: "current", 32: "overload"}


def test_registers_match_lerobots_sts_control_table():
    for name, (address, size) in LEROBOT_STS.items():
        reg = ft.STS_REGISTERS[name]
        assert (reg.address, reg.size) == (address, size), name
    # The health read covers voltage..status in one READ; the limits likewise.
    assert ft.HEALTH_ADDRESS == 62 and ft.HEALTH_ADDRESS + ft.HEALTH_LENGTH - 1 == 65
    assert ft.LIMITS_ADDRESS == 13 and ft.LIMITS_ADDRESS + ft.LIMITS_LENGTH - 1 == 15


def test_error_bits_are_the_sdks():
    assert set(ft.ERROR_FLAGS) == set(SDK_ERRBITS)
    for bit, word in SDK_ERRBITS.items():
        assert word in ft.error_text(bit).replace("angle sensor", "angle")
    assert ft.error_text(0x24) == "overheat, overload"
    assert ft.error_text(0x10) == "reserved bit 0x10"
    assert ft.error_text(0) == ""


def test_health_read_golden_packets():
    # SDK readTxRx: FF FF id 4 INST_READ(2) address length checksum.
    request = bytes([0xFF, 0xFF, 0x03, 0x04, 0x02, 62, 4])
    request += bytes([(~sum(request[2:])) & 0xFF])
    assert ft.build_read(3, ft.HEALTH_ADDRESS, ft.HEALTH_LENGTH) == request
    # A servo at 11.9 V and 72 degC with its overheat bit set: the error byte (5th) and the
    # Status register (4th param) carry the same bit.
    body = bytes([0x03, 0x06, 0x04, 119, 72, 0x00, 0x04])
    reply = b"\xff\xff" + body + bytes([(~sum(body)) & 0xFF])
    packet = ft.parse_packet(reply)
    assert packet.code == 0x04 and ft.error_text(packet.code) == "overheat"
    block = ft.decode_health(packet.params)
    assert block.voltage == pytest.approx(11.9)
    assert (block.temperature, block.status) == (72, 0x04)


def test_byte_time_is_the_sdks():
    # tx_time_per_byte [ms] = 1000 / baudrate * 10
    for baud in (1_000_000, 500_000, 115_200):
        assert SerialBudget(baud, 6).byte_time == pytest.approx(1000.0 / baud * 10.0 / 1e3)


# -- the bus budget -------------------------------------------------------------------------
def test_budget_counts_every_byte_of_a_tick():
    n = 6
    health = (6 + 2) + (6 + 4)  # READ request + reply with 4 bytes
    sync_read = (6 + 2 + n) + n * (6 + 4)  # request listing n ids + n replies of pos+vel
    sync_write = 6 + 2 + n * (1 + 2)  # id + 2-byte goal per servo, no reply
    budget = SerialBudget(1_000_000, n)
    assert budget.tick_bytes == health + sync_read + sync_write == 118
    assert budget.wire_time == pytest.approx(118 * 10e-6)
    assert budget.tick_bus_time == pytest.approx(1.18e-3 + 7 * 100e-6 + 2 * 1e-3)


def so101_params(**overrides) -> DriverParams:
    values = dict(
        backend="feetech", serial_port=PORT, calibration_file=calibration_file(), execution="live"
    )
    return config_driver_params("so101", **{**values, **overrides})


def test_shipped_rate_fits_and_a_rate_the_bus_cannot_carry_is_refused_at_configure():
    assert so101_params().validate() == []
    assert so101_params().bus_budget().load(RATE) < 0.5
    problems = so101_params(serial_baudrate=115_200).validate()
    [problem] = [p for p in problems if "serial bus" in p]
    assert "control_rate 100 Hz does not fit the Feetech serial bus" in problem
    assert "118 bytes at 115200 baud (10.24 ms)" in problem and "highest rate that fits" in problem
    with pytest.raises(BackendError, match="does not fit the Feetech serial bus"):
        FeetechBackend(SO101_JOINTS, PORT, calibration(), baudrate=115_200, control_rate=RATE)


# -- the loop on an emulated bus with byte time ---------------------------------------------
class Rig:
    """A control loop on the Feetech backend over a ``TimedFeetechBus``, ticked on its clock."""

    def __init__(self, *, baudrate: int = 1_000_000, rate: float = RATE, check: bool = True):
        self.bus = TimedFeetechBus(initial_ticks=START_TICKS, baudrate=baudrate, seed=3)
        self.rate = rate
        self.p = so101_params(control_rate=rate, serial_baudrate=baudrate)
        self.backend = FeetechBackend(
            SO101_JOINTS,
            PORT,
            calibration(),
            baudrate=baudrate,
            control_rate=rate if check else None,
            port_factory=lambda port, baud: self.bus.reopen(),
        )
        executor = ChunkExecutor(
            self.p.joint_names, self.p.limits(), self.p.safety_config(), self.p.executor_config()
        )
        self.backend.control_rate = rate  # overruns are counted against it either way
        self.loop = ControlLoop(self.backend, executor, reconnect_period=0.5)
        self.now = 0.0
        self.results = []
        self.on_time = 0

    def start(self) -> None:
        """Connect, configure and enable (about 0.2 s of bus time), then tick from there."""
        try:
            self.loop.start()
        finally:
            self.now = self.bus.now()

    def step(self, count: int = 1):
        for _ in range(count):
            self.now += 1.0 / self.rate
            self.bus.sleep_until(self.now)
            self.results.append(self.loop.step(self.now))
            # The tick's exchanges ended before the next tick was due.
            self.on_time += self.bus.now() <= self.now + 1.0 / self.rate
        return self.results[-1]

    def torque(self) -> list[int]:
        return [self.bus.get(i, "Torque_Enable") for i in self.bus.servo_ids]

    def entry(self, joint: str) -> hl.HealthEntry:
        return next(e for e in health_statuses(self.loop, self.p) if f"servo {joint} " in e.name)

    def submit_motion(self, delta: float = 0.1) -> None:
        measured = self.loop.last_reading.positions
        ramp = np.linspace(0.0, 1.0, 11)[:, None]
        target = measured + np.where([n == "gripper" for n in SO101_JOINTS], 0.0, delta)
        chunk = Chunk(
            stamp=self.now,
            start_offset=0.0,
            step_dt=0.1,
            joint_names=tuple(SO101_JOINTS),
            positions=measured + ramp * (target - measured),
        )
        assert self.loop.executor.submit(chunk, self.now, measured).accepted


def test_shipped_rate_holds_its_ticks_with_byte_time_modelled_and_within_the_budget():
    rig = Rig()
    rig.start()
    rig.submit_motion()
    rig.step(300)
    assert all(r.wrote and not r.error for r in rig.results)
    assert rig.on_time >= 0.99 * 300
    budget = rig.backend.budget
    measured = rig.backend.bus_health.max_read_time
    # The budget is a bound (worst-case turnaround), and not a loose one: the reads are
    # most of it (the sync write's 26 bytes go out without waiting).
    assert 0.6 * budget.tick_bus_time < measured <= budget.tick_bus_time
    # The wire carried exactly the bytes the budget counts per tick.
    before = rig.bus.bytes_on_wire
    rig.step(6)
    assert rig.bus.bytes_on_wire - before == 6 * budget.tick_bytes
    # The arm moved: commands reached the servos through the bus.
    np.testing.assert_allclose(
        rig.loop.last_reading.positions[:5], rig.results[0].reading.positions[:5] + 0.1, atol=0.01
    )


def test_a_rate_the_bus_cannot_carry_overruns_on_the_emulated_bus():
    rig = Rig(baudrate=115_200, check=False)  # what configure would have refused
    rig.start()
    rig.step(50)
    assert rig.on_time == 0
    assert rig.backend.health()[0].level == hl.WARN  # overruns are reported


def test_a_stray_ff_before_the_replies_costs_no_retry():
    # A half-duplex line can carry one spurious 0xFF where the transceiver turns around; the
    # SDK's receiver skips it (scservo_sdk/protocol_packet_handler.py, rxPacket). The whole
    # position read used to be lost to it and sent again, twice the bus time of that tick.
    rig = Rig()
    rig.start()
    rig.submit_motion()
    rig.step(5)
    replies = {sid: h.replies for sid, h in rig.backend.servo_health.items()}
    before = rig.bus.bytes_on_wire
    rig.bus.glitch_replies(len(SO101_JOINTS) + 1)  # the health read's reply and every position
    result = rig.step()
    assert result.wrote and not result.error
    assert all(h.missed == 0 and h.garbled == 0 for h in rig.backend.servo_health.values())
    assert all(rig.backend.servo_health[sid].replies > n for sid, n in replies.items())
    assert rig.bus.bytes_on_wire - before == rig.backend.budget.tick_bytes  # nothing resent


def running_rig() -> Rig:
    rig = Rig()
    rig.start()
    rig.submit_motion()
    rig.step(20)
    assert not rig.loop.faulted
    return rig


def test_servo_overheating_holds_on_that_tick_and_is_named():
    rig = running_rig()
    rig.bus.set_temperature(4, 74)  # past its 70 degC limit: the servo sets its overheat bit
    writes = len(rig.bus.writes)
    result = rig.step()
    assert rig.loop.faulted and result.command is None and not result.wrote
    assert "wrist_flex (id 4): overheat (status 0x04)" in result.error
    assert len(rig.bus.writes) == writes  # nothing was commanded on that tick
    rig.step(int(0.4 * RATE))  # before the reconnect: nothing is commanded either
    assert len(rig.bus.writes) == writes
    entry = rig.entry("wrist_flex")
    assert entry.level == hl.ERROR and entry.message.startswith("fault: overheat")
    assert entry.name == f"feetech servo wrist_flex (id 4, {PORT})"
    assert entry.values["status"] == "overheat"


@pytest.mark.parametrize(
    ("bits", "text"),
    [(0x20, "overload"), (0x08, "over-current"), (0x02, "angle sensor"), (0x01, "input voltage")],
)
def test_servo_error_bit_holds_on_that_tick_and_is_named(bits, text):
    rig = running_rig()
    rig.bus.set_status_bits(2, bits)
    result = rig.step()
    assert rig.loop.faulted
    assert f"shoulder_lift (id 2): {text} (status 0x{bits:02X})" in result.error
    entry = rig.entry("shoulder_lift")
    assert entry.level == hl.ERROR and text in entry.message


def test_temperature_at_the_limit_is_caught_by_the_interleaved_read():
    # At 70 degC exactly the servo has not tripped (its bit sets above the limit); the
    # driver's own check holds once the round-robin health read reaches the servo.
    rig = running_rig()
    rig.bus.set_temperature(5, 70)
    for _ in range(len(SO101_JOINTS)):
        result = rig.step()
        if rig.loop.faulted:
            break
    assert rig.loop.faulted
    assert "wrist_roll (id 5): over-temperature 70 degC (limit 70 degC)" in result.error


def test_servo_that_stops_replying_holds_on_that_tick_and_is_named():
    rig = running_rig()
    rig.bus.silence(3)
    writes = len(rig.bus.writes)
    result = rig.step()
    assert rig.loop.faulted and result.command is None
    assert "elbow_flex (id 3)" in result.error and "no reply" in result.error
    assert len(rig.bus.writes) == writes
    entry = rig.entry("elbow_flex")
    assert entry.level == hl.ERROR and "no reply" in entry.message and "s ago" in entry.message
    assert rig.entry("elbow_flex").values["missed_replies"] != "0"


def test_fault_at_power_up_keeps_torque_off_until_cleared():
    rig = Rig()
    rig.bus.set_status_bits(5, 0x08)  # over-current reported from the start
    with pytest.raises(BackendError, match=r"not enabled: wrist_roll \(id 5\): over-current"):
        rig.start()
    assert rig.torque() == [0] * 6
    entry = rig.entry("wrist_roll")
    assert entry.level == hl.ERROR and "over-current" in entry.message
    # The preflight names it too.
    report = make_preflight(rig.p, rig.backend, dict)(rig.backend.read_state())
    assert not report.ok and "wrist_roll (id 5" in "; ".join(report.failures())
    # Clearing while the condition lasts is refused, by name; torque stays off.
    with pytest.raises(BackendError, match=r"wrist_roll \(id 5\).*still present"):
        rig.backend.clear_faults()
    with pytest.raises(BackendError, match="torque not enabled"):
        rig.start()
    assert rig.torque() == [0] * 6
    # The cause is gone: the condition alone does not re-enable anything...
    rig.bus.set_status_bits(5, 0)
    with pytest.raises(BackendError, match="torque not enabled"):
        rig.start()
    assert rig.torque() == [0] * 6
    # ...the explicit clear does.
    assert rig.backend.clear_faults() == [
        "wrist_roll (id 5): over-current (status 0x08) -> cleared"
    ]
    rig.start()
    assert rig.torque() == [1] * 6
    assert rig.entry("wrist_roll").level == hl.OK


def test_fault_while_running_stays_latched_across_reconnects_until_cleared():
    rig = running_rig()
    rig.bus.set_status_bits(1, 0x20)
    rig.step()
    assert rig.loop.faulted
    rig.bus.set_status_bits(1, 0)  # the overload is gone by itself
    rig.step(int(1.2 * RATE))  # two reconnect attempts
    assert rig.loop.faulted and "torque not enabled" in rig.loop.stats.last_error
    assert rig.torque() == [0] * 6
    assert rig.backend.clear_faults() == ["shoulder_pan (id 1): overload (status 0x20) -> cleared"]
    rig.step(int(0.6 * RATE))
    assert not rig.loop.faulted and rig.torque() == [1] * 6


def test_servo_entries_read_like_the_damiao_motor_entries():
    from hw_drivers.backends.damiao import DamiaoBackend, yam_arm

    rig = running_rig()
    servo = rig.entry("gripper")
    assert servo.level == hl.OK
    assert servo.values["temperature_c"] == "35" and servo.values["voltage_v"] == "12.0"
    assert servo.values["temperature_limit_c"] == "70"
    assert servo.values["voltage_limits_v"] == "4.0..14.0"
    damiao = DamiaoBackend([yam_arm("can0", [f"j{i}" for i in range(7)])])
    motor = next(e for e in damiao.health() if "motor" in e.name)
    link = {"feedback_age_s", "replies", "missed_replies", "garbled_replies", "stale_replies"}
    assert link <= set(servo.values) and link <= set(motor.values)
    bus = rig.backend.health()[0]
    assert bus.name == f"feetech bus {PORT}" and bus.level == hl.OK
    assert "servos:" in bus.values["budget"]


def test_a_fault_that_went_away_is_shown_latched_with_what_clears_it():
    rig = running_rig()
    rig.bus.set_status_bits(6, 0x20)
    rig.step()
    rig.bus.set_status_bits(6, 0)
    rig.step(int(0.6 * RATE))  # one reconnect: the servo reads fine again
    entry = rig.entry("gripper")
    assert entry.level == hl.ERROR and entry.values["status"] == "ok"
    assert entry.message == (
        "fault: overload (status 0x20) (gone now; latched until ~/clear_motor_faults)"
    )
