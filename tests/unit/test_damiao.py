"""DaMiao MIT-mode framing, and the backend against the emulated motor bank on a virtual bus."""

from __future__ import annotations

import itertools
import types

import numpy as np
import pytest

from hw_drivers import damiao_protocol as dm
from hw_drivers.backends.base import BackendError
from hw_drivers.backends.damiao import YAM_KP, DamiaoBackend, yam_arm
from hw_drivers.emulators.damiao_emulator import DamiaoEmulator

DM4340 = dm.motor_type("DM4340")
DM4310 = dm.motor_type("dm4310")
_channels = itertools.count()


def test_control_frames_are_the_documented_bytes():
    assert dm.encode_enable(3) == dm.CanFrame(3, bytes.fromhex("FFFFFFFFFFFFFFFC"))
    assert dm.encode_disable(3).data == bytes.fromhex("FFFFFFFFFFFFFFFD")
    assert dm.encode_set_zero(3).data == bytes.fromhex("FFFFFFFFFFFFFFFE")
    assert dm.encode_refresh(0x102) == dm.CanFrame(0x7FF, bytes([0x02, 0x01, 0xCC, 0, 0, 0, 0, 0]))
    assert dm.encode_save(7).data[:3] == bytes([7, 0, 0xAA])
    assert dm.control_command(dm.encode_enable(1)) == dm.CMD_ENABLE
    assert dm.control_command(dm.CanFrame(1, bytes(8))) is None


def test_register_read_frames_have_damiaos_layout():
    # DaMiao's own Python driver (cmjang/DM_Control_Python, DM_CAN.py): ``__read_RID_param`` sends
    # [id_lo, id_hi, 0x33, RID, 0, 0, 0, 0] to 0x7FF; ``__process_set_param_packet`` takes the
    # reply's data[3] as RID and data[4:8] as a little-endian float32 (RIDs outside 7-10, 13-16,
    # 35-36); DM_variable numbers PMAX 21, VMAX 22, TMAX 23.
    assert dm.encode_read_register(0x102, 22) == dm.CanFrame(
        0x7FF, bytes([0x02, 0x01, 0x33, 22, 0, 0, 0, 0])
    )
    assert (dm.REG_PMAX, dm.REG_VMAX, dm.REG_TMAX) == (21, 22, 23)
    # 10.0 as float32 is 0x41200000, little-endian on the wire.
    reply = bytes([0x02, 0x00, 0x33, 22, 0x00, 0x00, 0x20, 0x41])
    assert dm.decode_register_reply(reply, 2, 22) == 10.0
    assert dm.encode_register_reply(0x12, 2, 22, 10.0) == dm.CanFrame(0x12, reply)
    # Not this read's echo (other motor, other register, a feedback frame): not its answer.
    assert dm.decode_register_reply(reply, 3, 22) is None
    assert dm.decode_register_reply(reply, 2, 21) is None
    feedback = dm.encode_feedback(0x12, 2, dm.STATE_ENABLED, 0.0, 0.0, 0.0, DM4310)
    assert dm.decode_register_reply(feedback.data, 2, 22) is None
    assert dm.decode_register_reply(reply[:7], 2, 22) is None


@pytest.mark.parametrize(
    ("gains", "text"),
    [
        ({"kp": (600.0, 80, 80, 40, 10, 10, 20)}, r"kp \[600.0\] outside the MIT range \[0, 500\]"),
        ({"kp": (80, -1.0, 80, 40, 10, 10, 20)}, r"kp \[-1.0\]"),
        ({"kd": (5, 5, 5, 1.5, 1.5, 1.5, float("nan"))}, r"kd \[nan\] outside .*\[0, 5\]"),
        ({"kd": (5, 5, 5, 1.5, 1.5, 6.0, 0.5)}, r"kd \[6.0\]"),
    ],
)
def test_gains_outside_the_mit_range_are_refused_not_saturated(gains, text):
    # DaMiao's DM_CAN.py (cmjang/DM_Control_Python) packs kp over [0, 500] and kd over [0, 5]
    # (controlMIT); i2rt's MotorConstants has the same KP_MAX/KD_MAX. Beyond them the frame
    # saturates: a configured kp of 600 ran as 500, a negative one as 0, with no error.
    with pytest.raises(ValueError, match=text):
        yam_arm("can0", ARM_NAMES, **gains)
    assert yam_arm("can0", ARM_NAMES, kp=(500.0, 0.0, 80, 40, 10, 10, 20)).motors[0].kp == 500.0


def test_mit_golden_bytes():
    # Zero everything: position/velocity/torque sit at mid-scale, gains at 0.
    frame = dm.encode_mit(1, dm.MitCommand(0.0, 0.0, 0.0, 0.0, 0.0), DM4310)
    assert frame.data == bytes([0x80, 0x00, 0x80, 0x00, 0x00, 0x00, 0x08, 0x00])
    # Full scale everywhere.
    frame = dm.encode_mit(1, dm.MitCommand(12.5, 30.0, 500.0, 5.0, 10.0), DM4310)
    assert frame.data == bytes([0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])
    # Saturation: beyond the limits maps to the ends, never wraps.
    low = dm.encode_mit(1, dm.MitCommand(-99.0, -99.0, -1.0, -1.0, -99.0), DM4310)
    assert low.data == bytes(8)


@pytest.mark.parametrize("mtype", [DM4340, DM4310, dm.motor_type("DM3507")])
def test_mit_round_trip_within_quantisation(mtype):
    rng = np.random.default_rng(0)
    for _ in range(200):
        cmd = dm.MitCommand(
            rng.uniform(-mtype.p_max, mtype.p_max),
            rng.uniform(-mtype.v_max, mtype.v_max),
            rng.uniform(0, dm.KP_MAX),
            rng.uniform(0, dm.KD_MAX),
            rng.uniform(-mtype.t_max, mtype.t_max),
        )
        back = dm.decode_mit(dm.encode_mit(5, cmd, mtype).data, mtype)
        assert abs(back.position - cmd.position) <= dm.quantum(-mtype.p_max, mtype.p_max, 16) / 2
        assert abs(back.velocity - cmd.velocity) <= dm.quantum(-mtype.v_max, mtype.v_max, 12) / 2
        assert abs(back.kp - cmd.kp) <= dm.quantum(0, dm.KP_MAX, 12) / 2
        assert abs(back.kd - cmd.kd) <= dm.quantum(0, dm.KD_MAX, 12) / 2
        assert abs(back.torque - cmd.torque) <= dm.quantum(-mtype.t_max, mtype.t_max, 12) / 2


def test_feedback_layout_and_rejection():
    frame = dm.encode_feedback(0x12, 0x02, dm.STATE_ENABLED, 1.0, -2.0, 3.0, DM4340, 41, 52)
    assert frame.arbitration_id == 0x12
    assert frame.data[0] == 0x12  # error nibble 1 (enabled), id nibble 2
    fb = dm.decode_feedback(frame.data, DM4340, expected_motor_id=2)
    assert fb.enabled and fb.fault is None
    assert fb.position == pytest.approx(1.0, abs=dm.quantum(-12.5, 12.5, 16))
    assert fb.velocity == pytest.approx(-2.0, abs=dm.quantum(-8, 8, 12))
    assert fb.torque == pytest.approx(3.0, abs=dm.quantum(-28, 28, 12))
    assert (fb.temperature_mos, fb.temperature_rotor) == (41, 52)
    over_current = dm.encode_feedback(0x12, 0x02, 0xA, 0, 0, 0, DM4340)
    assert dm.decode_feedback(over_current.data, DM4340).fault == "over-current"
    with pytest.raises(dm.FrameError, match="8 data bytes"):
        dm.decode_feedback(frame.data[:7], DM4340)
    with pytest.raises(dm.FrameError, match="unknown error code"):
        dm.decode_feedback(bytes([0x32]) + frame.data[1:], DM4340)
    with pytest.raises(dm.FrameError, match="expected 0x3"):
        dm.decode_feedback(frame.data, DM4340, expected_motor_id=3)


def test_gripper_scaling():
    assert dm.gripper_to_motor(0.0, 0.0, -2.7) == 0.0
    assert dm.gripper_to_motor(1.0, 0.0, -2.7) == pytest.approx(-2.7)
    assert dm.gripper_to_motor(1.5, 0.0, -2.7) == pytest.approx(-2.7)  # clipped
    assert dm.motor_to_gripper(-1.35, 0.0, -2.7) == pytest.approx(0.5)
    with pytest.raises(KeyError, match="known"):
        dm.motor_type("DM9999")


# -- backend against the emulator ----------------------------------------------------------
ARM_NAMES = [f"left_joint{i}" for i in range(1, 7)] + ["left_gripper"]
START = [0.1, 1.0, 1.2, -0.2, 0.3, -0.4, -1.35]  # gripper motor at half opening


@pytest.fixture
def rig():
    channel = f"dm_test_{next(_channels)}"
    emulator = DamiaoEmulator(channel, initial_positions=START).start()
    backend = DamiaoBackend(
        [yam_arm(channel, ARM_NAMES, gripper_type="crank_4310")],
        interface="virtual",
        # Generous: the emulator is a thread of this process, which a loaded CI machine can keep
        # off the CPU for longer than the driver's default. Dropped and garbled replies wait out
        # the timeout (three tries at most), so the I/O watchdog must outlast three of them.
        reply_timeout=0.25,
        retries=2,
        io_timeout=2.0,
    )
    backend.connect()
    yield backend, emulator
    backend.disconnect()
    emulator.stop()


def test_connect_reads_state(rig):
    backend, _ = rig
    reading = backend.read_state()
    expected = np.array([*START[:6], 0.5])
    np.testing.assert_allclose(reading.positions, expected, atol=dm.quantum(-12.5, 12.5, 16))
    assert reading.positions.shape == reading.velocities.shape == reading.efforts.shape == (7,)


def test_commands_arrive_with_the_right_encoding(rig):
    backend, emulator = rig
    backend.enable()
    assert all(emulator.snapshot(i).enabled for i in range(1, 8))
    target = np.array([0.2, 1.1, 1.0, 0.0, 0.5, -0.3, 0.25])
    backend.write_command(target, velocities=np.full(7, 0.5))
    for index, motor_id in enumerate(range(1, 8)):
        motor = emulator.snapshot(motor_id)
        assert len(motor.received) == 1
        got = motor.received[0]
        expected_pos = -2.7 * 0.25 if index == 6 else target[index]
        assert got.position == pytest.approx(expected_pos, abs=dm.quantum(-12.5, 12.5, 16) / 2)
        assert got.kp == pytest.approx(YAM_KP[index], abs=dm.quantum(0, 500, 12) / 2)
        v_max = motor.mtype.v_max
        expected_vel = 0.5 * -2.7 if index == 6 else 0.5
        assert got.velocity == pytest.approx(expected_vel, abs=dm.quantum(-v_max, v_max, 12) / 2)
    reading = backend.read_state()
    np.testing.assert_allclose(reading.positions, target, atol=1e-3)
    assert len(backend.command_log) == 1


def test_disabled_motor_does_not_move(rig):
    backend, emulator = rig
    backend.write_command(np.zeros(7))
    assert emulator.snapshot(1).position == pytest.approx(START[0])
    assert emulator.snapshot(1).received == []


def test_dropped_and_garbled_replies_are_retried(rig):
    backend, emulator = rig
    emulator.drop_replies(1)
    emulator.garble_replies(1)
    reading = backend.read_state()
    np.testing.assert_allclose(reading.positions[:6], START[:6], atol=1e-3)


def test_persistent_garbage_is_reported_and_never_used(rig):
    backend, emulator = rig
    backend.enable()
    emulator.garble_replies(100)
    with pytest.raises(BackendError, match=r"left_joint1 \(id 0x01\).*garbled.*3 tries"):
        backend.read_state()
    # The garbage was never turned into a position: the motors are where they started.
    assert emulator.snapshot(1).position == pytest.approx(START[0])


def test_silent_motor_is_named(rig):
    backend, emulator = rig
    emulator.silent = True
    backend.reply_timeout = 0.01
    with pytest.raises(BackendError, match=r"left_joint1 .*no reply after 3 tries"):
        backend.read_state()


def test_connect_fails_cleanly_without_motors():
    backend = DamiaoBackend(
        [yam_arm(f"dm_empty_{next(_channels)}", ARM_NAMES, gripper_type="crank_4310")],
        interface="virtual",
        reply_timeout=0.01,
        retries=1,
    )
    with pytest.raises(BackendError, match="no reply"):
        backend.connect()
    assert not backend.is_connected


def test_non_finite_command_is_refused(rig):
    backend, emulator = rig
    backend.enable()
    with pytest.raises(BackendError, match="finite"):
        backend.write_command(np.array([np.nan] * 7))
    assert emulator.snapshot(1).received == []


def test_from_params_splits_arms():
    params = types.SimpleNamespace(
        can_channels=("can0", "can1"),
        joint_names=tuple(ARM_NAMES + [n.replace("left", "right") for n in ARM_NAMES]),
    )
    backend = DamiaoBackend.from_params(params)
    assert [arm.channel for arm in backend.arms] == ["can0", "can1"]
    assert backend.arms[1].motors[6].is_gripper
    assert backend.arms[1].motors[0].master_id == 0x11
    bad = types.SimpleNamespace(can_channels=("can0", "can1"), joint_names=tuple(ARM_NAMES))
    with pytest.raises(BackendError, match="cannot be split"):
        DamiaoBackend.from_params(bad)
