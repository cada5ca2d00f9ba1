"""A Feetech STS3215 servo bus on a pseudo-terminal, answering like real servos.

``port`` is the pty's slave path: the backend opens it with pyserial exactly as it would open
``/dev/ttyACM0``. Each servo has a 256-byte register file (STS3215 defaults) and an encoder
angle; ``Present_Position`` is the encoder minus ``Homing_Offset`` (mod one turn, as the servo
reports it), and a ``Goal_Position`` write to a servo with torque on moves the encoder there at
once (ideal tracking). Enabling torque moves to the current goal register, as a real servo does,
so a stale goal is a visible hazard in tests.

Packets with a bad checksum are counted and ignored (never written). EEPROM fields are only
written while ``Lock`` is 0.

Faults: ``drop_replies(n)``, ``corrupt_replies(n)`` (bad checksum), ``disconnect()``.
"""

from __future__ import annotations

import os
import select
import threading
import tty
from collections.abc import Iterable

from hw_drivers import feetech_protocol as ft

_R = ft.STS_REGISTERS


class FeetechEmulator:
    """Servos on one pty; use as a context manager or call start()/stop()."""

    def __init__(
        self,
        servo_ids: Iterable[int] = (1, 2, 3, 4, 5, 6),
        initial_ticks: Iterable[int] | None = None,
    ) -> None:
        self.servo_ids = tuple(servo_ids)
        ticks = list(initial_ticks) if initial_ticks is not None else [2048] * len(self.servo_ids)
        self.registers: dict[int, bytearray] = {}
        self.encoder: dict[int, int] = {}
        for servo_id, tick in zip(self.servo_ids, ticks, strict=True):
            regs = bytearray(256)
            self.registers[servo_id] = regs
            self.encoder[servo_id] = int(tick) % ft.TICKS_PER_TURN
            self._set(servo_id, "Model_Number", ft.STS3215_MODEL_NUMBER)
            self._set(servo_id, "ID", servo_id)
            self._set(servo_id, "Max_Position_Limit", 4095)
            self._set(servo_id, "Max_Torque_Limit", 1000)
            self._set(servo_id, "Torque_Limit", 1000)
            self._set(servo_id, "P_Coefficient", 32)
            self._set(servo_id, "D_Coefficient", 32)
            self._set(servo_id, "Lock", 1)
            self._set(servo_id, "Goal_Position", self.present_position(servo_id))
        self._master, slave = os.openpty()
        tty.setraw(slave)
        self._slave = slave
        self.port = os.ttyname(slave)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="feetech-emu", daemon=True)
        self._drop = 0
        self._corrupt = 0
        self._connected = True
        self.rejected_packets = 0
        #: Every accepted register write: (servo id, address, data), in order.
        self.writes: list[tuple[int, int, bytes]] = []

    # -- registers -------------------------------------------------------------------------
    def _set(self, servo_id: int, name: str, value: int) -> None:
        reg = _R[name]
        self.registers[servo_id][reg.address : reg.address + reg.size] = ft.encode_value(reg, value)

    def get(self, servo_id: int, name: str) -> int:
        """Current value of a register (the present position is computed, as on the servo)."""
        with self._lock:
            if name == "Present_Position":
                return self.present_position(servo_id)
            reg = _R[name]
            return ft.decode_value(reg, bytes(self.registers[servo_id][reg.address :]))

    def present_position(self, servo_id: int) -> int:
        homing = ft.decode_value(_R["Homing_Offset"], bytes(self.registers[servo_id][31:33]))
        return (self.encoder[servo_id] - homing) % ft.TICKS_PER_TURN

    def _refresh_present(self, servo_id: int) -> None:
        self._set(servo_id, "Present_Position", self.present_position(servo_id))

    def _apply_write(self, servo_id: int, address: int, data: bytes) -> None:
        regs = self.registers[servo_id]
        locked = regs[_R["Lock"].address] != 0
        for offset, byte in enumerate(data):
            addr = address + offset
            if addr < 40 and locked:
                continue  # EEPROM is write-protected while locked
            regs[addr] = byte
        self.writes.append((servo_id, address, bytes(data)))
        goal = _R["Goal_Position"]
        touched_goal = address <= goal.address < address + len(data)
        touched_torque = address <= 40 < address + len(data)
        if regs[40] and (touched_goal or touched_torque):
            target = ft.decode_value(goal, bytes(regs[goal.address : goal.address + 2]))
            homing = ft.decode_value(_R["Homing_Offset"], bytes(regs[31:33]))
            self.encoder[servo_id] = (target + homing) % ft.TICKS_PER_TURN

    # -- fault injection -------------------------------------------------------------------
    def drop_replies(self, count: int) -> None:
        with self._lock:
            self._drop += count

    def corrupt_replies(self, count: int) -> None:
        with self._lock:
            self._corrupt += count

    def disconnect(self) -> None:
        """Unplug the adapter: the pty goes away; the backend's next I/O fails."""
        self._connected = False
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> FeetechEmulator:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._connected:
            self.disconnect()

    def __enter__(self) -> FeetechEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- protocol --------------------------------------------------------------------------
    def _serve(self) -> None:
        buffer = bytearray()
        while not self._stop.is_set():
            ready, _, _ = select.select([self._master], [], [], 0.02)
            if not ready:
                continue
            try:
                chunk = os.read(self._master, 4096)
            except OSError:
                return
            buffer.extend(chunk)
            for item in ft.split_packets(buffer):
                if isinstance(item, ft.PacketError):
                    with self._lock:
                        self.rejected_packets += 1
                    continue
                for reply in self._handle(ft.parse_packet(item)):
                    self._reply(reply)

    def _status(self, servo_id: int, params: bytes = b"") -> bytes:
        return ft.build_packet(servo_id, 0, params)

    def _read(self, servo_id: int, address: int, length: int) -> bytes:
        self._refresh_present(servo_id)
        return bytes(self.registers[servo_id][address : address + length])

    def _handle(self, packet: ft.Packet) -> list[bytes]:
        with self._lock:
            sid, code, params = packet.servo_id, packet.code, packet.params
            known = sid in self.registers
            if code == ft.PING and known:
                return [self._status(sid)]
            if code == ft.READ and known and len(params) == 2:
                return [self._status(sid, self._read(sid, params[0], params[1]))]
            if code == ft.WRITE and len(params) >= 2:
                targets = self.servo_ids if sid == ft.BROADCAST_ID else ([sid] if known else [])
                for target in targets:
                    self._apply_write(target, params[0], params[1:])
                return [self._status(sid)] if known else []
            if code == ft.SYNC_READ and sid == ft.BROADCAST_ID and len(params) >= 2:
                address, length = params[0], params[1]
                return [
                    self._status(i, self._read(i, address, length))
                    for i in params[2:]
                    if i in self.registers
                ]
            if code == ft.SYNC_WRITE and sid == ft.BROADCAST_ID and len(params) >= 2:
                address, length = params[0], params[1]
                body = params[2:]
                step = length + 1
                if length == 0 or len(body) % step:
                    return []
                for start in range(0, len(body), step):
                    target = body[start]
                    if target in self.registers:
                        self._apply_write(target, address, body[start + 1 : start + step])
            return []

    def _reply(self, packet: bytes) -> None:
        with self._lock:
            if self._drop > 0:
                self._drop -= 1
                return
            if self._corrupt > 0:
                self._corrupt -= 1
                packet = packet[:-1] + bytes([packet[-1] ^ 0x5A])
        try:
            os.write(self._master, packet)
        except OSError:
            pass
