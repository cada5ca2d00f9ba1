"""Feetech STS packets, and the backend against the emulated servo bus on a pty."""

from __future__ import annotations

import time
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hw_drivers import feetech_protocol as ft
from hw_drivers.backends.base import BackendError
from hw_drivers.backends.feetech import FeetechBackend
from hw_drivers.calibration import SO101_JOINTS, save_calibration
from hw_drivers.emulators.feetech_emulator import FeetechEmulator
from tests.feetech_servos import START_TICKS, calibration


def test_packet_golden_bytes():
    assert ft.build_ping(1) == bytes.fromhex("FFFF010201FB")
    # READ id 1, address 56, 2 bytes: checksum ~(1+4+2+56+2) = ~65
    assert ft.build_read(1, 56, 2) == bytes([0xFF, 0xFF, 1, 4, 2, 56, 2, (~65) & 0xFF])
    sync = ft.build_sync_write(42, 2, {1: b"\x00\x08", 2: b"\x10\x00"})
    assert sync[:5] == bytes([0xFF, 0xFF, 0xFE, 2 + 2 + 6, 0x83])
    assert sync[5:-1] == bytes([42, 2, 1, 0x00, 0x08, 2, 0x10, 0x00])
    packet = ft.parse_packet(ft.build_sync_read(56, 4, [1, 2, 3]))
    assert (packet.servo_id, packet.code, packet.params) == (0xFE, 0x82, bytes([56, 4, 1, 2, 3]))


def test_sign_magnitude_and_register_values():
    homing = ft.STS_REGISTERS["Homing_Offset"]
    assert ft.encode_value(homing, -5) == bytes([0x05, 0x08])  # sign in bit 11
    assert ft.decode_value(homing, bytes([0x05, 0x08])) == -5
    assert ft.decode_value(ft.STS_REGISTERS["Present_Velocity"], bytes([0x10, 0x80])) == -16
    assert ft.encode_value(ft.STS_REGISTERS["Goal_Position"], 2048) == bytes([0x00, 0x08])
    with pytest.raises(ValueError, match="sign bit 11"):
        ft.encode_value(homing, 5000)


def test_split_packets_resyncs_on_noise_and_bad_checksum():
    good = ft.build_packet(3, 0, b"\x01\x02")
    bad = good[:-1] + bytes([good[-1] ^ 1])
    buffer = bytearray(b"\x00\x13" + bad + good + good[:4])
    items = ft.split_packets(buffer)
    assert isinstance(items[0], ft.PacketError) and "checksum" in str(items[0])
    assert items[1:] == [good]
    assert bytes(buffer) == good[:4]  # the partial packet waits for the rest
    with pytest.raises(ft.PacketError, match="checksum"):
        ft.parse_packet(bad)


def test_a_stray_ff_before_a_packet_is_skipped_one_byte_at_a_time_as_the_sdk_does():
    # Feetech's SDK (scservo_sdk/protocol_packet_handler.py, rxPacket; read in
    # StarCycle/FTServo_Python and avramidis/Feetech-Servo-SDK): at a header whose id byte is
    # above 0xFD it removes the *first byte only* and looks again, so ``FF FF FF 01 ...`` is the
    # status packet of servo 1 behind one stray 0xFF. Dropping the whole false header lost it.
    status = bytes.fromhex("FFFF0104000008" + "F2")  # servo 1, no error, params 00 08
    assert ft.parse_packet(status) == ft.Packet(1, 0, b"\x00\x08")
    buffer = bytearray(b"\xff" + status)
    assert ft.split_packets(buffer) == [status]
    assert buffer == bytearray()
    # Several stray bytes, and one in front of each of two packets back to back.
    other = ft.build_packet(2, 0x20, b"\x01")
    buffer = bytearray(b"\xff\xff\xff" + status + b"\xff" + other)
    assert ft.split_packets(buffer) == [status, other]


# -- backend against the emulator ----------------------------------------------------------
# The emulator answers from a thread of this process: on a loaded CI machine it can be off the
# CPU for tens of milliseconds, so a 20 ms reply timeout (the driver's default) failed a read
# now and then. Tests that want a reply get one with a generous timeout; the ones that need a
# timeout to pass shorten it themselves (``_expect_timeouts``).
RIG_REPLY_TIMEOUT = 0.25


def _expect_timeouts(backend: FeetechBackend) -> None:
    backend.reply_timeout = 0.02


@pytest.fixture
def rig(tmp_path):
    emulator = FeetechEmulator(initial_ticks=START_TICKS).start()
    backend = FeetechBackend(
        SO101_JOINTS, emulator.port, calibration(), reply_timeout=RIG_REPLY_TIMEOUT, retries=2
    )
    backend.connect()
    yield backend, emulator
    backend.disconnect()
    emulator.stop()


def test_connect_writes_lerobot_settings_and_calibration(rig):
    backend, emu = rig
    cal = calibration()
    for name, c in cal.items():
        assert emu.get(c.id, "Homing_Offset") == c.homing_offset
        assert emu.get(c.id, "Min_Position_Limit") == c.range_min
        assert emu.get(c.id, "Max_Position_Limit") == c.range_max
        assert emu.get(c.id, "P_Coefficient") == 16
        assert emu.get(c.id, "D_Coefficient") == 32
        assert emu.get(c.id, "Lock") == 1, name
        assert emu.get(c.id, "Torque_Enable") == 0
    assert emu.get(6, "Max_Torque_Limit") == 500
    assert emu.get(1, "Max_Torque_Limit") == 1000
    # Nothing to change on a second connect: EEPROM is not rewritten every start.
    backend.disconnect()
    writes = len(emu.writes)
    backend.connect()
    eeprom = [w for w in emu.writes[writes:] if w[1] < 40]
    assert eeprom == []


def test_read_state_decodes_through_the_calibration(rig):
    backend, emu = rig
    reading = backend.read_state()
    expected = [
        c.ticks_to_value(emu.get(i + 1, "Present_Position"))
        for i, c in enumerate(backend.conventions)
    ]
    np.testing.assert_allclose(reading.positions, expected)
    # Present = encoder - homing offset, as the servo reports it.
    assert (
        emu.get(1, "Present_Position")
        == START_TICKS[0] - calibration()["shoulder_pan"].homing_offset
    )


def test_enable_does_not_jump_to_a_stale_goal(rig):
    backend, emu = rig
    emu.registers[2][42:44] = ft.encode_value(ft.STS_REGISTERS["Goal_Position"], 3000)
    before = backend.read_state().positions
    backend.enable()
    assert emu.get(2, "Torque_Enable") == 1
    np.testing.assert_allclose(backend.read_state().positions, before)
    assert emu.get(6, "Torque_Limit") == 500


def test_commands_arrive_with_the_right_encoding(rig):
    backend, emu = rig
    backend.enable()
    target = np.array([0.1, 1.2, 1.9, -0.3, 0.4, 0.8])
    backend.write_command(target)
    time.sleep(0.05)  # sync write has no reply; let the emulator take it
    tick_rad = 2 * np.pi / 4095
    for i, conv in enumerate(backend.conventions):
        goal = emu.get(i + 1, "Goal_Position")
        assert goal == conv.value_to_ticks(target[i])
        tolerance = 1 / 1000 if conv.is_gripper else tick_rad / 2 + 1e-9
        assert conv.ticks_to_value(goal) == pytest.approx(target[i], abs=tolerance)
    np.testing.assert_allclose(backend.read_state().positions, target, atol=tick_rad)
    assert len(backend.command_log) == 1


def test_dropped_and_corrupt_replies_are_retried(rig):
    backend, emu = rig
    expected = backend.read_state().positions
    emu.drop_replies(1)
    np.testing.assert_allclose(backend.read_state().positions, expected)
    emu.corrupt_replies(2)
    np.testing.assert_allclose(backend.read_state().positions, expected)


def test_persistent_corruption_is_reported(rig):
    backend, emu = rig
    emu.corrupt_replies(1000)
    with pytest.raises(BackendError, match=r"shoulder_pan \(id 1\).*corrupt reply.*3 tries"):
        backend.read_state()


def test_silent_servo_is_named(rig):
    backend, emu = rig
    del emu.registers[4]  # servo 4 stops answering
    _expect_timeouts(backend)
    with pytest.raises(BackendError, match=r"wrist_flex \(id 4\).*no reply"):
        backend.read_state()


def test_garbage_never_moves_a_servo(rig):
    backend, emu = rig
    backend.enable()
    before = emu.get(1, "Present_Position")
    rejected = emu.rejected_packets
    packet = ft.build_write(1, 42, ft.encode_value(ft.STS_REGISTERS["Goal_Position"], 100))
    backend._serial.write(packet[:-1] + bytes([packet[-1] ^ 0xFF]))
    deadline = time.monotonic() + 2.0
    while emu.rejected_packets == rejected and time.monotonic() < deadline:
        time.sleep(0.01)
    assert emu.rejected_packets == rejected + 1
    assert emu.get(1, "Present_Position") == before


def test_disconnect_is_a_backend_error(rig):
    backend, emu = rig
    emu.disconnect()
    with pytest.raises(BackendError):
        backend.read_state()


def test_from_params_needs_port_and_calibration(tmp_path):
    params = types.SimpleNamespace(
        joint_names=SO101_JOINTS, serial_port="/dev/ttyACM0", calibration_file=""
    )
    with pytest.raises(BackendError, match="needs calibration_file"):
        FeetechBackend.from_params(params)
    path = tmp_path / "cal.json"
    save_calibration(calibration(), path)
    params.calibration_file = str(path)
    backend = FeetechBackend.from_params(params)
    assert backend.servo_ids == [1, 2, 3, 4, 5, 6]
    params.serial_port = "/nonexistent/tty"
    with pytest.raises(BackendError, match="cannot open serial port"):
        FeetechBackend.from_params(params).connect()


def test_a_second_driver_cannot_open_the_same_bus(rig):
    backend, emulator = rig
    second = FeetechBackend(
        SO101_JOINTS, emulator.port, calibration(), reply_timeout=RIG_REPLY_TIMEOUT, retries=2
    )
    with pytest.raises(BackendError, match="another driver"):
        second.connect()
    assert backend.read_state() is not None  # the first one keeps its bus


@settings(max_examples=300, derandomize=True, deadline=None)
@given(
    noise=st.binary(max_size=12).map(lambda b: b.replace(b"\xff", b"")),
    stray=st.integers(0, 3),
    servo_id=st.integers(0, 0xFD),
    error=st.integers(0, 0x7F),
    params=st.binary(max_size=8),
)
def test_a_status_packet_behind_any_line_noise_is_found(noise, stray, servo_id, error, params):
    # Noise without a header, then up to three stray 0xFF right before the packet: Feetech's
    # SDK receiver (scservo_sdk/protocol_packet_handler.py, rxPacket) finds the packet in all of
    # these, skipping non-header bytes, then one byte at a time at an id above 0xFD.
    packet = ft.build_packet(servo_id, error, params)
    buffer = bytearray(noise + b"\xff" * stray + packet)
    assert ft.split_packets(buffer)[-1:] == [packet]
    assert buffer == bytearray()
