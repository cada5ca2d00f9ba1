"""Feetech STS3215 servos answering like real ones, on two transports.

``ServoBank`` is the servos: each has a 256-byte register file (STS3215 defaults) and an encoder
angle; ``Present_Position`` is the encoder minus ``Homing_Offset`` (mod one turn, as the servo
reports it), and a ``Goal_Position`` write to a servo with torque on moves the encoder there at
once (ideal tracking). Enabling torque moves to the current goal register, as a real servo does,
so a stale goal is a visible hazard in tests. Packets with a bad checksum are counted and
ignored (never written). EEPROM fields are only written while ``Lock`` is 0.

Health, as the servo keeps it: ``Present_Voltage`` (0.1 V), ``Present_Temperature`` (degC) and
``Status`` (65), whose bits the servo sets itself while a condition lasts: overheat above its
``Max_Temperature_Limit``, input voltage outside ``Min/Max_Voltage_Limit``, plus any bits a test
injects (angle sensor, over-current, overload). The error byte of every status packet is the
Status register (Feetech SDK: the same ``ERRBIT_*``). Torque unloading on a protection trip
(``Unloading_Condition``) is not modelled: the emulated servo keeps its torque.

Transports:

* ``FeetechEmulator``: a pseudo-terminal served by a thread on the wall clock. ``port`` is the
  pty's slave path: the backend opens it with pyserial exactly as it would ``/dev/ttyACM0``.
  Each packet holds the line for its bytes at ``baudrate`` (10 bit times per byte) and each
  reply waits for the servo's turnaround, so a tick takes at least the time the wire would.
* ``TimedFeetechBus``: the serial port as a discrete-event model on a virtual clock (the
  pyserial calls the backend makes: ``write``, ``read``, ``in_waiting``,
  ``reset_input_buffer``, ``close``). The half-duplex line carries one byte per 10 bit times;
  servos answer after a seeded turnaround, one after the other; the USB adapter adds its latency
  to each direction. Tests measure the bus time a real bus would take, deterministically.

Faults: ``drop_replies(n)``, ``corrupt_replies(n)`` (bad checksum), ``glitch_replies(n)`` (a
stray 0xFF before the reply), ``silence(id)`` (the servo stops answering),
``set_temperature``, ``set_voltage``, ``set_status_bits``; for the pty also ``disconnect()``.
"""

from __future__ import annotations

import os
import select
import threading
import time
import tty
from collections.abc import Iterable

import numpy as np

from hw_drivers import feetech_protocol as ft

_R = ft.STS_REGISTERS
#: Emulated supply and temperature at power-up (an SO-101 follower runs its 12 V servos at
#: about 11.9 V).
DEFAULT_VOLTAGE = 12.0
DEFAULT_TEMPERATURE = 35
#: STS defaults for the protection limits: 70 degC; voltage window ours (4.0 .. 14.0 V).
DEFAULT_MAX_TEMPERATURE = 70
DEFAULT_VOLTAGE_LIMITS = (4.0, 14.0)


class ServoBank:
    """The servos of one bus and what they answer (no transport)."""

    def __init__(
        self,
        servo_ids: Iterable[int] = (1, 2, 3, 4, 5, 6),
        initial_ticks: Iterable[int] | None = None,
    ) -> None:
        self.servo_ids = tuple(servo_ids)
        ticks = list(initial_ticks) if initial_ticks is not None else [2048] * len(self.servo_ids)
        self.registers: dict[int, bytearray] = {}
        self.encoder: dict[int, int] = {}
        self.injected_status: dict[int, int] = dict.fromkeys(self.servo_ids, 0)
        self.silent: set[int] = set()
        for servo_id, tick in zip(self.servo_ids, ticks, strict=True):
            regs = bytearray(256)
            self.registers[servo_id] = regs
            self.encoder[servo_id] = int(tick) % ft.TICKS_PER_TURN
            self._set(servo_id, "Model_Number", ft.STS3215_MODEL_NUMBER)
            self._set(servo_id, "ID", servo_id)
            self._set(servo_id, "Return_Delay_Time", 250)  # factory: 500 us (LeRobot sets 0)
            self._set(servo_id, "Max_Position_Limit", 4095)
            self._set(servo_id, "Max_Temperature_Limit", DEFAULT_MAX_TEMPERATURE)
            self._set(servo_id, "Min_Voltage_Limit", round(DEFAULT_VOLTAGE_LIMITS[0] * 10))
            self._set(servo_id, "Max_Voltage_Limit", round(DEFAULT_VOLTAGE_LIMITS[1] * 10))
            self._set(servo_id, "Max_Torque_Limit", 1000)
            self._set(servo_id, "Torque_Limit", 1000)
            self._set(servo_id, "P_Coefficient", 32)
            self._set(servo_id, "D_Coefficient", 32)
            self._set(servo_id, "Lock", 1)
            self._set(servo_id, "Goal_Position", self.present_position(servo_id))
            self._set(servo_id, "Present_Voltage", round(DEFAULT_VOLTAGE * 10))
            self._set(servo_id, "Present_Temperature", DEFAULT_TEMPERATURE)
        self._lock = threading.RLock()
        self._drop = 0
        self._corrupt = 0
        self._glitch = 0
        self.rejected_packets = 0
        #: Every accepted register write: (servo id, address, data), in order.
        self.writes: list[tuple[int, int, bytes]] = []

    # -- registers -------------------------------------------------------------------------
    def _set(self, servo_id: int, name: str, value: int) -> None:
        reg = _R[name]
        self.registers[servo_id][reg.address : reg.address + reg.size] = ft.encode_value(reg, value)

    def _raw(self, servo_id: int, name: str) -> int:
        reg = _R[name]
        return ft.decode_value(reg, bytes(self.registers[servo_id][reg.address :]))

    def get(self, servo_id: int, name: str) -> int:
        """Current value of a register (present position and status computed, as on the servo)."""
        with self._lock:
            if name == "Present_Position":
                return self.present_position(servo_id)
            if name == "Status":
                return self.status(servo_id)
            return self._raw(servo_id, name)

    def present_position(self, servo_id: int) -> int:
        homing = ft.decode_value(_R["Homing_Offset"], bytes(self.registers[servo_id][31:33]))
        return (self.encoder[servo_id] - homing) % ft.TICKS_PER_TURN

    def status(self, servo_id: int) -> int:
        """The Status bits the servo reports now: its own protections and injected ones."""
        bits = self.injected_status[servo_id]
        if self._raw(servo_id, "Present_Temperature") > self._raw(
            servo_id, "Max_Temperature_Limit"
        ):
            bits |= 0x04
        volts = self._raw(servo_id, "Present_Voltage")
        if not (
            self._raw(servo_id, "Min_Voltage_Limit")
            <= volts
            <= self._raw(servo_id, "Max_Voltage_Limit")
        ):
            bits |= 0x01
        return bits

    def _refresh(self, servo_id: int) -> None:
        self._set(servo_id, "Present_Position", self.present_position(servo_id))
        self._set(servo_id, "Status", self.status(servo_id))

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

    def glitch_replies(self, count: int) -> None:
        """The next ``count`` replies reach the line behind one stray 0xFF byte, what the
        transceiver's direction switch leaves on a half-duplex bus (and Feetech's SDK skips)."""
        with self._lock:
            self._glitch += count

    def silence(self, servo_id: int, silent: bool = True) -> None:
        """The servo stops answering (and hearing) anything: a cut cable, a dead servo."""
        with self._lock:
            if silent:
                self.silent.add(servo_id)
            else:
                self.silent.discard(servo_id)

    def set_temperature(self, servo_id: int, celsius: int) -> None:
        with self._lock:
            self._set(servo_id, "Present_Temperature", int(celsius))

    def set_voltage(self, servo_id: int, volts: float) -> None:
        with self._lock:
            self._set(servo_id, "Present_Voltage", round(volts / ft.VOLTS_PER_COUNT))

    def set_status_bits(self, servo_id: int, bits: int) -> None:
        """Status bits the servo reports on top of its own protections (0 clears them)."""
        with self._lock:
            self.injected_status[servo_id] = int(bits) & 0xFF

    # -- protocol --------------------------------------------------------------------------
    def _status_packet(self, servo_id: int, params: bytes = b"") -> bytes:
        return ft.build_packet(servo_id, self.status(servo_id), params)

    def _read(self, servo_id: int, address: int, length: int) -> bytes:
        self._refresh(servo_id)
        return bytes(self.registers[servo_id][address : address + length])

    def handle(self, packet: ft.Packet) -> list[bytes]:
        """What the servos answer to one host packet, in order on the wire (before faults)."""
        with self._lock:
            sid, code, params = packet.servo_id, packet.code, packet.params
            known = sid in self.registers and sid not in self.silent
            if code == ft.PING and known:
                return [self._status_packet(sid)]
            if code == ft.READ and known and len(params) == 2:
                return [self._status_packet(sid, self._read(sid, params[0], params[1]))]
            if code == ft.WRITE and len(params) >= 2:
                targets = (
                    [i for i in self.servo_ids if i not in self.silent]
                    if sid == ft.BROADCAST_ID
                    else ([sid] if known else [])
                )
                for target in targets:
                    self._apply_write(target, params[0], params[1:])
                return [self._status_packet(sid)] if known else []
            if code == ft.SYNC_READ and sid == ft.BROADCAST_ID and len(params) >= 2:
                address, length = params[0], params[1]
                return [
                    self._status_packet(i, self._read(i, address, length))
                    for i in params[2:]
                    if i in self.registers and i not in self.silent
                ]
            if code == ft.SYNC_WRITE and sid == ft.BROADCAST_ID and len(params) >= 2:
                address, length = params[0], params[1]
                body = params[2:]
                step = length + 1
                if length == 0 or len(body) % step:
                    return []
                for start in range(0, len(body), step):
                    target = body[start]
                    if target in self.registers and target not in self.silent:
                        self._apply_write(target, address, body[start + 1 : start + step])
            return []

    def _on_wire(self, packet: bytes) -> bytes | None:
        """A reply as it reaches the line: dropped (None) or corrupted when asked to."""
        with self._lock:
            if self._drop > 0:
                self._drop -= 1
                return None
            if self._corrupt > 0:
                self._corrupt -= 1
                return packet[:-1] + bytes([packet[-1] ^ 0x5A])
            if self._glitch > 0:
                self._glitch -= 1
                return b"\xff" + packet
        return packet

    def _turnaround_delay(self, servo_id: int) -> float:
        """Return_Delay_Time: 2 us per count (LeRobot's ``configure_motors``)."""
        return 2e-6 * self.registers[servo_id][_R["Return_Delay_Time"].address]


class FeetechEmulator(ServoBank):
    """Servos on one pty, wall clock; use as a context manager or call start()/stop()."""

    def __init__(
        self,
        servo_ids: Iterable[int] = (1, 2, 3, 4, 5, 6),
        initial_ticks: Iterable[int] | None = None,
        baudrate: int = 1_000_000,
        turnaround: float = 50e-6,
    ) -> None:
        super().__init__(servo_ids, initial_ticks)
        self.byte_time = ft.BITS_PER_BYTE / float(baudrate)
        self.turnaround = float(turnaround)
        self._master, slave = os.openpty()
        tty.setraw(slave)
        self._slave = slave
        self.port = os.ttyname(slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="feetech-emu", daemon=True)
        self._connected = True

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
                packet = ft.parse_packet(item)
                replies = self.handle(packet)
                # The line is busy for the request, each servo's turnaround and each reply.
                busy = len(item) * self.byte_time + sum(
                    self.turnaround
                    + self._turnaround_delay(ft.parse_packet(r).servo_id)
                    + len(r) * self.byte_time
                    for r in replies
                )
                time.sleep(busy)
                for reply in replies:
                    out = self._on_wire(reply)
                    if out is None:
                        continue
                    try:
                        os.write(self._master, out)
                    except OSError:
                        pass


class TimedFeetechBus(ServoBank):
    """The servo bus as the host's serial port, on a virtual clock.

    Time only moves when the host waits (``read``, ``sleep_until``): host CPU time is free,
    bus time is exact. A host write reaches the line ``adapter_latency / 2`` after the call
    (USB frame), occupies it 10 bit times per byte, after the line is free; each addressed
    servo answers ``turnaround`` (uniform in ``[low, high]``, seeded, plus its
    Return_Delay_Time) after the end of the request or of the previous reply, and the host can
    read the reply ``adapter_latency / 2`` after its last byte.
    """

    def __init__(
        self,
        servo_ids: Iterable[int] = (1, 2, 3, 4, 5, 6),
        initial_ticks: Iterable[int] | None = None,
        baudrate: int = 1_000_000,
        turnaround: tuple[float, float] = (20e-6, 100e-6),
        adapter_latency: float = 1e-3,
        seed: int = 0,
        read_timeout: float = 1e-4,
    ) -> None:
        super().__init__(servo_ids, initial_ticks)
        self.baudrate = int(baudrate)
        self.byte_time = ft.BITS_PER_BYTE / float(self.baudrate)
        self.turnaround = turnaround
        self.adapter_latency = float(adapter_latency)
        self.timeout = float(read_timeout)  # pyserial's: the longest one read() waits
        self._rng = np.random.default_rng(seed)
        self._now = 0.0
        self._line_free_at = 0.0
        self._host_buffer = bytearray()
        self._inbox: list[tuple[float, bytes]] = []  # (readable at, bytes), in order
        self.closed = False
        self.busy_time = 0.0  # seconds the line carried bytes
        self.bytes_on_wire = 0

    # -- what the backend calls (pyserial's surface) -----------------------------------------
    def now(self) -> float:
        return self._now

    def write(self, data: bytes) -> int:
        if self.closed:
            raise OSError("serial port is closed")
        self._host_buffer.extend(data)
        start = max(self._now + self.adapter_latency / 2, self._line_free_at)
        for item in ft.split_packets(self._host_buffer):
            if isinstance(item, ft.PacketError):
                with self._lock:
                    self.rejected_packets += 1
                continue
            end = self._occupy(start, len(item))
            for reply in self.handle(ft.parse_packet(item)):
                servo_id = ft.parse_packet(reply).servo_id
                low, high = self.turnaround
                ready = end + float(self._rng.uniform(low, high))
                ready += self._turnaround_delay(servo_id)
                end = self._occupy(max(ready, self._line_free_at), len(reply))
                out = self._on_wire(reply)
                if out is not None:
                    self._inbox.append((end + self.adapter_latency / 2, out))
            start = self._line_free_at
        return len(data)

    @property
    def in_waiting(self) -> int:
        return sum(len(data) for at, data in self._inbox if at <= self._now)

    def read(self, size: int = 1) -> bytes:
        """Bytes readable now, else wait up to ``timeout`` for the next ones."""
        if self.closed:
            raise OSError("serial port is closed")
        if not any(at <= self._now for at, _ in self._inbox):
            deadline = self._now + self.timeout
            upcoming = [at for at, _ in self._inbox if at <= deadline]
            self._now = min(upcoming) if upcoming else deadline
        out = bytearray()
        while self._inbox and self._inbox[0][0] <= self._now and len(out) < size:
            at, data = self._inbox.pop(0)
            take = data[: size - len(out)]
            out.extend(take)
            if len(take) < len(data):
                self._inbox.insert(0, (at, data[len(take) :]))
        return bytes(out)

    def reset_input_buffer(self) -> None:
        """Drops what has arrived; replies still on their way arrive later, as on a real port."""
        self._inbox = [(at, data) for at, data in self._inbox if at > self._now]

    def close(self) -> None:
        self.closed = True

    def reopen(self) -> TimedFeetechBus:
        """The port opened again (the backend reconnecting): same servos, same clock."""
        self.closed = False
        self._inbox.clear()
        return self

    # -- test side ---------------------------------------------------------------------------
    def sleep_until(self, t: float) -> None:
        """Let virtual time pass (the host idles until its next tick)."""
        self._now = max(self._now, float(t))

    def _occupy(self, start: float, nbytes: int) -> float:
        end = start + nbytes * self.byte_time
        self._line_free_at = end
        self.busy_time += end - start
        self.bytes_on_wire += nbytes
        return end
