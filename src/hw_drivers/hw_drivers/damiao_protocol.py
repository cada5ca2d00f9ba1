"""DaMiao motor CAN framing in MIT mode: pure bytes in, numbers out (no bus, no ROS).

Frames (classic CAN, 8 data bytes):

* control frames go to arbitration id ``motor_id`` (MIT mode uses offset 0x000):
  ``FF FF FF FF FF FF FF FC`` enable, ``... FD`` disable, ``... FE`` set zero, ``... FB`` clear
  error;
* parameter frames go to ``0x7FF``: ``[id_lo, id_hi, 0xCC]`` refresh (ask for one feedback
  frame), ``[id_lo, id_hi, 0xAA]`` save parameters to flash, ``[id_lo, id_hi, 0x33, rid]`` read
  register ``rid``, answered by ``[id_lo, id_hi, 0x33, rid, value]`` with the value a
  little-endian float32 (or uint32 for the id/mode/version registers);
* an MIT command packs position (16 bit), velocity (12), kp (12), kd (12) and feed-forward
  torque (12) big-endian into 8 bytes, each value mapped linearly from ``[min, max]`` onto the
  unsigned integer range; position/velocity/torque ranges are ``+-P_MAX/V_MAX/T_MAX`` of the
  motor type (configured on the motor, defaults in ``MOTOR_TYPES``), kp in ``[0, 500]``, kd in
  ``[0, 5]``;
* a feedback frame comes back on the motor's master id: byte 0 is ``error << 4 | id & 0xF``,
  then position (16 bit), velocity (12), torque (12), MOS and rotor temperature (degC).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

CONTROL_PREFIX = b"\xff" * 7
CMD_ENABLE = 0xFC
CMD_DISABLE = 0xFD
CMD_SET_ZERO = 0xFE
CMD_CLEAR_ERROR = 0xFB
PARAM_ARBITRATION_ID = 0x7FF
PARAM_REFRESH = 0xCC
PARAM_SAVE = 0xAA
PARAM_READ = 0x33
PARAM_WRITE = 0x55
#: Registers holding the MIT mapping ranges (DaMiao's ``DM_variable``: PMAX 21, VMAX 22, TMAX 23;
#: float32 values).
REG_PMAX = 21
REG_VMAX = 22
REG_TMAX = 23

KP_MAX = 500.0
KD_MAX = 5.0

#: Error nibble of a feedback frame -> meaning. Anything else is not a DaMiao feedback frame.
ERROR_CODES: dict[int, str] = {
    0x0: "disabled",
    0x1: "enabled",
    0x8: "over-voltage",
    0x9: "under-voltage",
    0xA: "over-current",
    0xB: "MOS over-temperature",
    0xC: "rotor over-temperature",
    0xD: "communication lost",
    0xE: "overload",
}
STATE_DISABLED = 0x0
STATE_ENABLED = 0x1


class FrameError(ValueError):
    """A frame that is not what the protocol allows (wrong length, id, error code)."""


@dataclass(frozen=True)
class MotorType:
    """MIT-mode mapping ranges of one DaMiao model: the PMAX/VMAX/TMAX registers (21/22/23)
    the motor decodes commands and encodes feedback with. They are writable, so what counts is
    what the motor holds: a host assuming other ranges is wrong by a constant factor in both
    directions, and nothing on the bus reports it."""

    name: str
    p_max: float  # rad
    v_max: float  # rad/s
    t_max: float  # N*m


#: The type names are i2rt's (``i2rt/motor_drivers/utils.py``, ``MotorType``), with the ranges
#: i2rt's YAM motors hold (its ``motor_config_tool/dm_motor_registers.md`` table): a YAM's DM4340
#: runs VMAX 10 rad/s, not the 8 of DaMiao's 24 V factory default (DaMiao's ``DM_CAN.py``
#: ``Limit_Param``), which ``DM4340_24V`` keeps for a motor nobody reconfigured. The other entries
#: are DaMiao's factory defaults, which i2rt's agree with where it has the type.
MOTOR_TYPES: dict[str, MotorType] = {
    m.name: m
    for m in (
        MotorType("DM3507", 12.5, 50.0, 5.0),
        MotorType("DM4310", 12.5, 30.0, 10.0),
        MotorType("DM4310_48V", 12.5, 50.0, 10.0),
        MotorType("DM4340", 12.5, 10.0, 28.0),
        MotorType("DM4340_24V", 12.5, 8.0, 28.0),
        MotorType("DM4340_48V", 12.5, 10.0, 28.0),
        MotorType("DM6006", 12.5, 45.0, 20.0),
        MotorType("DM8006", 12.5, 45.0, 40.0),
        MotorType("DM8009", 12.5, 45.0, 54.0),
        MotorType("DM10010L", 12.5, 25.0, 200.0),
        MotorType("DM10010", 12.5, 20.0, 200.0),
    )
}


def motor_type(name: str) -> MotorType:
    """Look up a motor type by name (case-insensitive); ``KeyError`` lists the known ones."""
    key = name.upper()
    if key not in MOTOR_TYPES:
        raise KeyError(f"unknown DaMiao motor type {name!r}; known: {sorted(MOTOR_TYPES)}")
    return MOTOR_TYPES[key]


@dataclass(frozen=True)
class CanFrame:
    """One classic CAN frame (standard 11-bit id)."""

    arbitration_id: int
    data: bytes


@dataclass(frozen=True)
class MitCommand:
    """Targets of one MIT-mode command: torque = kp*(p - q) + kd*(v - dq) + t_ff."""

    position: float
    velocity: float
    kp: float
    kd: float
    torque: float


@dataclass(frozen=True)
class Feedback:
    """One decoded feedback frame."""

    motor_id: int  # low nibble of the motor id, as carried in the frame
    error_code: int
    position: float
    velocity: float
    torque: float
    temperature_mos: int
    temperature_rotor: int

    @property
    def enabled(self) -> bool:
        return self.error_code == STATE_ENABLED

    @property
    def fault(self) -> str | None:
        """The fault text, or None when the motor is merely enabled/disabled."""
        if self.error_code in (STATE_DISABLED, STATE_ENABLED):
            return None
        return ERROR_CODES[self.error_code]


def float_to_uint(value: float, low: float, high: float, bits: int) -> int:
    """Map ``value`` in [low, high] linearly onto 0..2**bits-1 (saturating)."""
    clipped = min(max(float(value), low), high)
    top = (1 << bits) - 1
    return round((clipped - low) * top / (high - low))


def uint_to_float(value: int, low: float, high: float, bits: int) -> float:
    """Inverse of ``float_to_uint``."""
    top = (1 << bits) - 1
    return low + (high - low) * float(value) / top


def quantum(low: float, high: float, bits: int) -> float:
    """Value step of one integer count (the round-trip error is at most half of it)."""
    return (high - low) / ((1 << bits) - 1)


def _control(motor_id: int, command: int) -> CanFrame:
    return CanFrame(motor_id, CONTROL_PREFIX + bytes([command]))


def encode_enable(motor_id: int) -> CanFrame:
    return _control(motor_id, CMD_ENABLE)


def encode_disable(motor_id: int) -> CanFrame:
    return _control(motor_id, CMD_DISABLE)


def encode_set_zero(motor_id: int) -> CanFrame:
    return _control(motor_id, CMD_SET_ZERO)


def encode_clear_error(motor_id: int) -> CanFrame:
    return _control(motor_id, CMD_CLEAR_ERROR)


def _param(motor_id: int, command: int) -> CanFrame:
    return CanFrame(
        PARAM_ARBITRATION_ID,
        bytes([motor_id & 0xFF, (motor_id >> 8) & 0xFF, command, 0, 0, 0, 0, 0]),
    )


def encode_refresh(motor_id: int) -> CanFrame:
    """Ask the motor for one feedback frame without commanding it."""
    return _param(motor_id, PARAM_REFRESH)


def encode_save(motor_id: int) -> CanFrame:
    """Store the motor's parameters to flash (motor must be disabled)."""
    return _param(motor_id, PARAM_SAVE)


def encode_read_register(motor_id: int, rid: int) -> CanFrame:
    """Ask the motor for the value of register ``rid``."""
    return CanFrame(
        PARAM_ARBITRATION_ID,
        bytes([motor_id & 0xFF, (motor_id >> 8) & 0xFF, PARAM_READ, rid & 0xFF, 0, 0, 0, 0]),
    )


def encode_register_reply(master_id: int, motor_id: int, rid: int, value: float) -> CanFrame:
    """A motor's answer to a float register read (used by the emulator)."""
    head = bytes([motor_id & 0xFF, (motor_id >> 8) & 0xFF, PARAM_READ, rid & 0xFF])
    return CanFrame(master_id, head + struct.pack("<f", float(value)))


def decode_register_reply(data: bytes, motor_id: int, rid: int) -> float | None:
    """The float value if ``data`` answers a read of ``rid`` from ``motor_id``, else None.

    Only the echo of motor id, read command and register tells a register reply from a feedback
    frame (both can come on the master id), so anything else is not this reply.
    """
    if (
        len(data) != 8
        or data[0] != motor_id & 0xFF
        or data[1] != (motor_id >> 8) & 0xFF
        or data[2] != PARAM_READ
        or data[3] != rid & 0xFF
    ):
        return None
    return struct.unpack("<f", bytes(data[4:8]))[0]


def is_register_reply(data: bytes, motor_id: int) -> bool:
    """Whether ``data`` echoes a register read or write of ``motor_id``.

    Such a reply comes on the motor's master id like its feedback, and its first byte (the id's
    low byte) reads as the state nibble "disabled" plus the right id nibble, so a late one
    decodes as a valid feedback frame with a position near -P_MAX. A real feedback frame with
    these bytes would put the motor within 0.1 rad of -P_MAX, which no joint reaches.
    """
    return (
        len(data) == 8
        and data[0] == motor_id & 0xFF
        and data[1] == (motor_id >> 8) & 0xFF
        and data[2] in (PARAM_READ, PARAM_WRITE)
    )


def scale_mismatch(held: MotorType, assumed: MotorType) -> str | None:
    """Why a motor holding ``held`` ranges cannot be driven as ``assumed`` (None: it can).

    The registers are float32, so equal means within float32 rounding; a NaN (an unwritten flash
    cell reads 0xFFFFFFFF) is a mismatch too, since nothing is known about the scale then.
    """
    parts = []
    for name, have, want in (
        ("PMAX", held.p_max, assumed.p_max),
        ("VMAX", held.v_max, assumed.v_max),
        ("TMAX", held.t_max, assumed.t_max),
    ):
        if not (math.isfinite(have) and math.isclose(have, want, rel_tol=1e-5)):
            parts.append(f"{name} {have:g} (expected {want:g})")
    if not parts:
        return None
    return (
        f"registers hold {', '.join(parts)} for type {assumed.name}: every command and reading "
        "would be rescaled"
    )


def control_command(frame: CanFrame) -> int | None:
    """The control byte (FC/FD/FE/FB) if ``frame`` is a control frame, else None."""
    if (
        len(frame.data) == 8
        and frame.data[:7] == CONTROL_PREFIX
        and frame.data[7]
        in (
            CMD_ENABLE,
            CMD_DISABLE,
            CMD_SET_ZERO,
            CMD_CLEAR_ERROR,
        )
    ):
        return frame.data[7]
    return None


def param_request(frame: CanFrame) -> tuple[int, int] | None:
    """(motor id, command byte) if ``frame`` is a 0x7FF parameter frame, else None."""
    if frame.arbitration_id != PARAM_ARBITRATION_ID or len(frame.data) < 3:
        return None
    return frame.data[0] | (frame.data[1] << 8), frame.data[2]


def encode_mit(motor_id: int, command: MitCommand, mtype: MotorType) -> CanFrame:
    """Pack an MIT command; out-of-range values saturate at the type's limits."""
    p = float_to_uint(command.position, -mtype.p_max, mtype.p_max, 16)
    v = float_to_uint(command.velocity, -mtype.v_max, mtype.v_max, 12)
    kp = float_to_uint(command.kp, 0.0, KP_MAX, 12)
    kd = float_to_uint(command.kd, 0.0, KD_MAX, 12)
    t = float_to_uint(command.torque, -mtype.t_max, mtype.t_max, 12)
    data = bytes(
        [
            p >> 8,
            p & 0xFF,
            v >> 4,
            ((v & 0xF) << 4) | (kp >> 8),
            kp & 0xFF,
            kd >> 4,
            ((kd & 0xF) << 4) | (t >> 8),
            t & 0xFF,
        ]
    )
    return CanFrame(motor_id, data)


def decode_mit(data: bytes, mtype: MotorType) -> MitCommand:
    """Unpack an MIT command (what a motor, or our emulator, does with it)."""
    if len(data) != 8:
        raise FrameError(f"MIT command must have 8 data bytes, got {len(data)}")
    p = (data[0] << 8) | data[1]
    v = (data[2] << 4) | (data[3] >> 4)
    kp = ((data[3] & 0xF) << 8) | data[4]
    kd = (data[5] << 4) | (data[6] >> 4)
    t = ((data[6] & 0xF) << 8) | data[7]
    return MitCommand(
        position=uint_to_float(p, -mtype.p_max, mtype.p_max, 16),
        velocity=uint_to_float(v, -mtype.v_max, mtype.v_max, 12),
        kp=uint_to_float(kp, 0.0, KP_MAX, 12),
        kd=uint_to_float(kd, 0.0, KD_MAX, 12),
        torque=uint_to_float(t, -mtype.t_max, mtype.t_max, 12),
    )


def encode_feedback(
    master_id: int,
    motor_id: int,
    error_code: int,
    position: float,
    velocity: float,
    torque: float,
    mtype: MotorType,
    temperature_mos: int = 30,
    temperature_rotor: int = 30,
) -> CanFrame:
    """Pack a feedback frame as a motor sends it (used by the emulator)."""
    p = float_to_uint(position, -mtype.p_max, mtype.p_max, 16)
    v = float_to_uint(velocity, -mtype.v_max, mtype.v_max, 12)
    t = float_to_uint(torque, -mtype.t_max, mtype.t_max, 12)
    data = bytes(
        [
            ((error_code & 0xF) << 4) | (motor_id & 0xF),
            p >> 8,
            p & 0xFF,
            v >> 4,
            ((v & 0xF) << 4) | (t >> 8),
            t & 0xFF,
            temperature_mos & 0xFF,
            temperature_rotor & 0xFF,
        ]
    )
    return CanFrame(master_id, data)


def decode_feedback(
    data: bytes, mtype: MotorType, expected_motor_id: int | None = None
) -> Feedback:
    """Unpack a feedback frame; ``FrameError`` when it cannot be one from this motor.

    CAN's CRC already rejects bit errors on the wire, so what reaches us garbled is a frame of
    the wrong shape or from the wrong sender (firmware glitch, id clash, a stray device):
    reject a wrong length, an unknown error nibble, or an id nibble that is not the motor's.
    """
    if len(data) != 8:
        raise FrameError(f"feedback frame must have 8 data bytes, got {len(data)}")
    error_code = data[0] >> 4
    motor_nibble = data[0] & 0xF
    if error_code not in ERROR_CODES:
        raise FrameError(f"feedback frame has unknown error code 0x{error_code:X}")
    if expected_motor_id is not None and motor_nibble != (expected_motor_id & 0xF):
        raise FrameError(
            f"feedback frame names motor 0x{motor_nibble:X}, expected 0x{expected_motor_id & 0xF:X}"
        )
    p = (data[1] << 8) | data[2]
    v = (data[3] << 4) | (data[4] >> 4)
    t = ((data[4] & 0xF) << 8) | data[5]
    return Feedback(
        motor_id=motor_nibble,
        error_code=error_code,
        position=uint_to_float(p, -mtype.p_max, mtype.p_max, 16),
        velocity=uint_to_float(v, -mtype.v_max, mtype.v_max, 12),
        torque=uint_to_float(t, -mtype.t_max, mtype.t_max, 12),
        temperature_mos=data[6],
        temperature_rotor=data[7],
    )


def gripper_to_motor(opening: float, closed_rad: float, open_rad: float) -> float:
    """Normalised opening 0 (closed)..1 (open) -> motor angle; clipped to the endpoints."""
    clipped = min(max(float(opening), 0.0), 1.0)
    return closed_rad + clipped * (open_rad - closed_rad)


def motor_to_gripper(angle: float, closed_rad: float, open_rad: float) -> float:
    """Motor angle -> normalised opening (not clipped: a reading reports what is there)."""
    return (float(angle) - closed_rad) / (open_rad - closed_rad)
