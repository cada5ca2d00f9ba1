"""Feetech STS/SCS serial bus servo protocol (STS3215 of the SO-100/101): pure packet code.

Packet: ``FF FF id length instruction|error params... checksum`` where ``length`` counts the
params plus 2 and ``checksum = ~(id + length + instruction + sum(params)) & 0xFF``. The host
sends instruction packets; a servo answers with a status packet whose 5th byte is its error
flags. Broadcast id ``0xFE`` (used by SYNC_READ/SYNC_WRITE) is never answered by a status of
its own: after SYNC_READ each listed servo answers with a READ-style status in list order;
SYNC_WRITE is not answered at all. STS registers are little-endian; some fields are
sign-magnitude with the sign in a given bit (see ``Register.sign_bit``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

HEADER = b"\xff\xff"
BROADCAST_ID = 0xFE

PING = 0x01
READ = 0x02
WRITE = 0x03
REG_WRITE = 0x04
ACTION = 0x05
SYNC_READ = 0x82
SYNC_WRITE = 0x83

TICKS_PER_TURN = 4096
STS3215_MODEL_NUMBER = 777

#: Bits on the wire per byte: 8N1 framing (start bit, 8 data bits, stop bit), as Feetech's SDK
#: times a byte (``tx_time_per_byte = 1000 / baudrate * 10`` ms in ``port_handler.py``).
BITS_PER_BYTE = 10
#: Bytes of a packet around its params: FF FF id length instruction|error ... checksum.
PACKET_OVERHEAD = 6

#: Hardware error flags: the ``Status`` register (65) and the error byte of every status packet
#: carry the same bits (Feetech SDK ``ERRBIT_*``: voltage 1, angle 2, overheat 4, over-current
#: ("OverEle") 8, overload 32; bits 4, 6, 7 reserved). A bit stays set while its condition
#: lasts; the protocol has no command that clears it.
ERROR_FLAGS: dict[int, str] = {
    0x01: "input voltage",
    0x02: "angle sensor",
    0x04: "overheat",
    0x08: "over-current",
    0x20: "overload",
}
#: Present voltage unit [V per count].
VOLTS_PER_COUNT = 0.1


class PacketError(ValueError):
    """Bytes that are not a valid packet (short, bad header, bad length, bad checksum)."""


@dataclass(frozen=True)
class Register:
    """One control-table field."""

    address: int
    size: int  # bytes: 1 or 2
    sign_bit: int | None = None  # sign-magnitude sign bit, None for unsigned
    eeprom: bool = False  # EEPROM fields need Lock=0 to be written


def _r(address: int, size: int = 1, sign_bit: int | None = None) -> Register:
    return Register(address, size, sign_bit, eeprom=address < 40)


#: STS3215 control table (the fields the driver and emulator use).
STS_REGISTERS: dict[str, Register] = {
    "Model_Number": _r(3, 2),
    "ID": _r(5),
    "Baud_Rate": _r(6),
    "Return_Delay_Time": _r(7),
    "Min_Position_Limit": _r(9, 2),
    "Max_Position_Limit": _r(11, 2),
    "Max_Temperature_Limit": _r(13),  # degC
    "Max_Voltage_Limit": _r(14),  # 0.1 V
    "Min_Voltage_Limit": _r(15),  # 0.1 V
    "Max_Torque_Limit": _r(16, 2),
    "P_Coefficient": _r(21),
    "D_Coefficient": _r(22),
    "I_Coefficient": _r(23),
    "Protection_Current": _r(28, 2),
    "Homing_Offset": _r(31, 2, sign_bit=11),
    "Operating_Mode": _r(33),
    "Overload_Torque": _r(36),
    "Torque_Enable": _r(40),
    "Acceleration": _r(41),
    "Goal_Position": _r(42, 2, sign_bit=15),
    "Goal_Time": _r(44, 2),
    "Goal_Velocity": _r(46, 2, sign_bit=15),
    "Torque_Limit": _r(48, 2),
    "Lock": _r(55),
    "Present_Position": _r(56, 2, sign_bit=15),
    "Present_Velocity": _r(58, 2, sign_bit=15),
    "Present_Load": _r(60, 2, sign_bit=10),
    "Present_Voltage": _r(62),  # 0.1 V
    "Present_Temperature": _r(63),  # degC
    "Status": _r(65),  # ERROR_FLAGS
    "Moving": _r(66),
    "Present_Current": _r(69, 2, sign_bit=15),
}


def checksum(body: Iterable[int]) -> int:
    """Checksum over id, length, instruction/error and params."""
    return (~sum(body)) & 0xFF


def encode_sign_magnitude(value: int, sign_bit: int) -> int:
    """Signed int -> sign-magnitude field with the sign in ``sign_bit``."""
    magnitude = abs(int(value))
    if magnitude >= (1 << sign_bit):
        raise ValueError(f"{value} does not fit a sign-magnitude field with sign bit {sign_bit}")
    return magnitude | ((1 << sign_bit) if value < 0 else 0)


def decode_sign_magnitude(raw: int, sign_bit: int) -> int:
    magnitude = raw & ((1 << sign_bit) - 1)
    return -magnitude if raw & (1 << sign_bit) else magnitude


def encode_value(register: Register, value: int) -> bytes:
    """Register value -> little-endian bytes (sign-magnitude where the field is signed)."""
    raw = int(value)
    if register.sign_bit is not None:
        raw = encode_sign_magnitude(raw, register.sign_bit)
    if not 0 <= raw < (1 << (8 * register.size)):
        raise ValueError(f"{value} does not fit a {register.size}-byte register")
    return raw.to_bytes(register.size, "little")


def decode_value(register: Register, data: bytes) -> int:
    raw = int.from_bytes(data[: register.size], "little")
    if register.sign_bit is not None:
        return decode_sign_magnitude(raw, register.sign_bit)
    return raw


def build_packet(servo_id: int, instruction: int, params: bytes = b"") -> bytes:
    """An instruction packet (or, with ``instruction`` = error byte, a status packet)."""
    body = bytes([servo_id & 0xFF, len(params) + 2, instruction & 0xFF]) + bytes(params)
    return HEADER + body + bytes([checksum(body)])


def build_ping(servo_id: int) -> bytes:
    return build_packet(servo_id, PING)


def build_read(servo_id: int, address: int, length: int) -> bytes:
    return build_packet(servo_id, READ, bytes([address, length]))


def build_write(servo_id: int, address: int, data: bytes) -> bytes:
    return build_packet(servo_id, WRITE, bytes([address]) + bytes(data))


def build_sync_read(address: int, length: int, servo_ids: Iterable[int]) -> bytes:
    return build_packet(BROADCAST_ID, SYNC_READ, bytes([address, length, *servo_ids]))


def build_sync_write(address: int, length: int, data_by_id: Mapping[int, bytes]) -> bytes:
    params = bytearray([address, length])
    for servo_id, data in data_by_id.items():
        if len(data) != length:
            raise ValueError(
                f"sync write to servo {servo_id}: {len(data)} bytes, expected {length}"
            )
        params.append(servo_id)
        params.extend(data)
    return build_packet(BROADCAST_ID, SYNC_WRITE, bytes(params))


@dataclass(frozen=True)
class Packet:
    """A parsed packet: ``code`` is the instruction (host->servo) or error byte (servo->host)."""

    servo_id: int
    code: int
    params: bytes


def parse_packet(data: bytes) -> Packet:
    """Parse exactly one packet; ``PacketError`` says what is wrong."""
    if len(data) < 6:
        raise PacketError(f"packet too short ({len(data)} bytes)")
    if data[:2] != HEADER:
        raise PacketError(f"bad header {data[:2].hex()}")
    length = data[3]
    if length < 2 or len(data) != length + 4:
        raise PacketError(f"length byte {length} does not match {len(data)} bytes")
    body = data[2:-1]
    if checksum(body) != data[-1]:
        raise PacketError(f"bad checksum 0x{data[-1]:02X}, expected 0x{checksum(body):02X}")
    return Packet(servo_id=data[2], code=data[4], params=bytes(data[5:-1]))


def split_packets(buffer: bytearray) -> list[bytes | PacketError]:
    """Take every complete packet off the front of ``buffer`` (consumed in place).

    Returns raw packets, or a ``PacketError`` for each stretch that failed its checksum;
    leading noise before a header is skipped. An incomplete packet stays in the buffer.

    A header followed by id 0xFF is not a packet's start but noise before one (a stray 0xFF, as
    a half-duplex line's direction switch can leave, then the real ``FF FF``): it is skipped one
    byte at a time, as Feetech's SDK does (``protocol_packet_handler.rxPacket`` drops one byte
    on an id above 0xFD), so the packet behind it is still found.
    """
    out: list[bytes | PacketError] = []
    while True:
        start = buffer.find(HEADER)
        if start < 0:
            # Keep a trailing 0xFF: it may be the first half of the next header.
            del buffer[: max(len(buffer) - 1, 0) if buffer[-1:] == b"\xff" else len(buffer)]
            return out
        del buffer[:start]
        if len(buffer) < 4:
            return out
        if buffer[2] == 0xFF:
            del buffer[:1]
            continue
        length = buffer[3]
        if length < 2:
            del buffer[:2]
            out.append(PacketError(f"length byte {length} is impossible"))
            continue
        total = length + 4
        if len(buffer) < total:
            return out
        raw = bytes(buffer[:total])
        try:
            parse_packet(raw)
        except PacketError as exc:
            # Drop only the header so a real packet hiding inside the garbage is still found.
            del buffer[:2]
            out.append(exc)
            continue
        del buffer[:total]
        out.append(raw)


def error_text(error: int) -> str:
    """Human text for a status error byte (empty when 0); reserved bits are named by value."""
    return ", ".join(
        ERROR_FLAGS.get(1 << bit, f"reserved bit 0x{1 << bit:02X}")
        for bit in range(8)
        if error & (1 << bit)
    )


#: The servo's health in one read: Present_Voltage (62), Present_Temperature (63), the
#: asynchronous-write flag (64, unused) and Status (65).
HEALTH_ADDRESS = 62
HEALTH_LENGTH = 4
#: Its limits, also contiguous: Max_Temperature_Limit (13), Max_Voltage_Limit (14),
#: Min_Voltage_Limit (15).
LIMITS_ADDRESS = 13
LIMITS_LENGTH = 3


@dataclass(frozen=True)
class ServoHealthBlock:
    """``HEALTH_LENGTH`` bytes read from ``HEALTH_ADDRESS``, decoded."""

    voltage: float  # V
    temperature: int  # degC
    status: int  # ERROR_FLAGS bits


def decode_health(data: bytes) -> ServoHealthBlock:
    if len(data) < HEALTH_LENGTH:
        raise PacketError(f"health block needs {HEALTH_LENGTH} bytes, got {len(data)}")
    return ServoHealthBlock(
        voltage=data[0] * VOLTS_PER_COUNT, temperature=int(data[1]), status=int(data[3])
    )


def packet_bytes(params: int) -> int:
    """Bytes on the wire of a packet with ``params`` parameter bytes."""
    return PACKET_OVERHEAD + int(params)
