"""Feetech STS3215 servos over a serial bus (SO-100/101), LeRobot-calibration compatible.

Settings follow LeRobot's SO-101 follower: 1 Mbaud, position P=16, D=32, I=0, the gripper's
torque limited to 50 %, calibration (homing offset, position limits) written to the servos'
EEPROM when it differs from the calibration file. Reads are SYNC_READs of position and
velocity, retried on a missing or corrupt reply; goals are one SYNC_WRITE per tick.

Servo health: every status packet carries the servo's hardware error bits (the Status
register: voltage, angle sensor, overheat, over-current, overload), so the position SYNC_READ
checks every servo every tick. Temperature and voltage are read interleaved, one servo per
tick (a 4-byte READ; ``hw_drivers.serial_budget`` counts its bus time, and ``from_params``
refuses a control rate the bus cannot carry). A servo that stops replying, reports an error
bit, or reads at or above its own ``Max_Temperature_Limit`` or outside its voltage limits
makes the read raise ``BackendError`` naming it while the torque is on, so the driver holds on
that tick. Every such fault is latched, also one present at connect: ``enable`` refuses until
``clear_faults`` (the driver's ``~/clear_motor_faults``), which re-reads the servos and clears
only those whose condition is gone; the STS protocol has no command that clears a condition.

Values on the ROS side: radians in the model's joint convention (the released SO-101 signs and
offsets applied to LeRobot's degrees, see ``hw_drivers.calibration``) and a 0..1 gripper
opening. pyserial is imported on ``connect()`` only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hw_drivers import feetech_protocol as ft
from hw_drivers import health as hl
from hw_drivers.backends.base import Backend, BackendError, JointReading
from hw_drivers.calibration import (
    SO101_MODEL_OFFSETS_DEG,
    SO101_MODEL_SIGNS,
    CalibrationError,
    MotorCalibration,
    load_arm_calibration,
    so101_conventions,
)
from hw_drivers.can_budget import DEFAULT_MAX_BUS_LOAD
from hw_drivers.serial_budget import SerialBudget

_R = ft.STS_REGISTERS
LEROBOT_P = 16
LEROBOT_D = 32
GRIPPER_TORQUE_LIMIT = 500  # of 1000: LeRobot's 50 %
GRIPPER_PROTECTION_CURRENT = 250
GRIPPER_OVERLOAD_TORQUE = 25
#: Default temperature [degC] from which a servo is reported as running hot (WARN); never
#: closer than ``HOT_MARGIN`` below the servo's own limit, where the driver holds.
TEMPERATURE_WARN_C = 70.0
HOT_MARGIN = 5.0


@dataclass
class ServoHealth(hl.MotorHealth):
    """What the backend knows about one servo: the link (``hl.MotorHealth``) and its health."""

    status: int | None = None  # error bits of its last status packet (the Status register)
    temperature: int | None = None  # degC, from the interleaved health read
    voltage: float | None = None  # V
    temperature_limit: int | None = None  # its Max_Temperature_Limit [degC]
    voltage_limits: tuple[float, float] | None = None  # its Min/Max_Voltage_Limit [V]
    latched: str = ""  # the last fault seen since the last clear ("" when none)

    def condition(self) -> str:
        """What the servo's last readings say is wrong now ("" when nothing)."""
        parts = []
        if self.status:
            parts.append(f"{ft.error_text(self.status)} (status 0x{self.status:02X})")
        if (
            self.temperature is not None
            and self.temperature_limit
            and self.temperature >= self.temperature_limit
        ):
            parts.append(
                f"over-temperature {self.temperature} degC (limit {self.temperature_limit} degC)"
            )
        if self.voltage is not None and self.voltage_limits is not None:
            low, high = self.voltage_limits
            if not low <= self.voltage <= high:
                parts.append(f"voltage {self.voltage:.1f} V outside [{low:.1f}, {high:.1f}] V")
        return "; ".join(parts)

    @property
    def fault(self) -> str | None:
        if not self.latched:
            return None
        if self.condition():
            return self.latched
        return f"{self.latched} (gone now; latched until ~/clear_motor_faults)"


@dataclass
class SerialBusHealth:
    reads: int = 0  # control-tick reads (health + position)
    last_read_time: float = 0.0  # [s] of the last one, on the port's clock
    max_read_time: float = 0.0
    overruns: int = 0  # reads longer than one control period
    problem: str = ""


class FeetechBackend(Backend):
    """Position control of an STS3215 chain."""

    def __init__(
        self,
        joint_names: Sequence[str],
        port: str,
        calibration: Mapping[str, MotorCalibration],
        baudrate: int = 1_000_000,
        reply_timeout: float = 0.02,
        retries: int = 3,
        signs: Sequence[float] = SO101_MODEL_SIGNS,
        offsets_deg: Sequence[float] = SO101_MODEL_OFFSETS_DEG,
        write_calibration: bool = True,
        *,
        control_rate: float | None = None,
        max_bus_load: float = DEFAULT_MAX_BUS_LOAD,
        temperature_warn: float = TEMPERATURE_WARN_C,
        port_factory: Callable[[str, int], Any] | None = None,
    ) -> None:
        super().__init__(joint_names)
        try:
            self.conventions = so101_conventions(calibration, self.joint_names, signs, offsets_deg)
        except CalibrationError as exc:
            raise BackendError(f"feetech backend: {exc}") from exc
        self.servo_ids = [c.calibration.id for c in self.conventions]
        self.port = port
        self.baudrate = int(baudrate)
        self.reply_timeout = float(reply_timeout)
        self.retries = int(retries)
        self.write_calibration = write_calibration
        self.budget = SerialBudget(self.baudrate, len(self.servo_ids), max_bus_load=max_bus_load)
        self.control_rate = control_rate
        if control_rate is not None:
            problem = self.budget.check(control_rate)
            if problem is not None:
                raise BackendError(problem)
        self.temperature_warn = float(temperature_warn)
        #: Opens the port (path, baud rate) -> a pyserial-like object; None: pyserial. An
        #: object with ``now()`` is also the clock (an emulated bus with virtual time).
        self.port_factory = port_factory
        self.servo_health: dict[int, ServoHealth] = {sid: ServoHealth() for sid in self.servo_ids}
        self.bus_health = SerialBusHealth()
        self._serial: Any = None
        self._now: Callable[[], float] = time.monotonic
        self._enabled = False
        self._next_health = 0  # index of the servo whose health the next tick reads

    @classmethod
    def from_params(cls, params: Any) -> FeetechBackend:
        if not params.serial_port:
            raise BackendError("feetech backend needs serial_port (e.g. /dev/ttyACM0)")
        try:
            calibration = load_arm_calibration(params.calibration_file, params.joint_names)
        except CalibrationError as exc:
            raise BackendError(str(exc)) from exc
        return cls(
            params.joint_names,
            params.serial_port,
            calibration,
            baudrate=int(getattr(params, "serial_baudrate", None) or 1_000_000),
            reply_timeout=float(getattr(params, "read_timeout", None) or 0.02),
            retries=int(getattr(params, "read_retries", None) or 3),
            control_rate=float(getattr(params, "control_rate", None) or 0.0) or None,
            max_bus_load=float(getattr(params, "max_bus_load", None) or DEFAULT_MAX_BUS_LOAD),
            temperature_warn=float(
                getattr(params, "motor_temperature_warn", None) or TEMPERATURE_WARN_C
            ),
        )

    # -- Backend ---------------------------------------------------------------------------
    @property
    def is_connected(self) -> bool:
        return self._serial is not None

    def connect(self) -> None:
        if self._serial is not None:
            return
        self._serial = self._open()
        self._now = getattr(self._serial, "now", time.monotonic)
        self._enabled = False
        try:
            for servo_id in self.servo_ids:
                self._transact(ft.build_ping(servo_id), [servo_id], 0)
            self._configure()
            # Faults present at power-up are kept (health, enable refuses) rather than failing
            # the connection, so the operator sees them named.
            self._read_all_health()
            self.bus_health.problem = ""
        except BackendError as err:
            self.bus_health.problem = str(err)
            self.disconnect()
            raise

    def _open(self) -> Any:
        if self.port_factory is not None:
            try:
                return self.port_factory(self.port, self.baudrate)
            except (OSError, ValueError) as exc:
                raise BackendError(f"cannot open serial port {self.port}: {exc}") from exc
        try:
            import serial
        except ImportError as exc:  # pragma: no cover - pyserial is a project dependency
            raise BackendError("pyserial is not installed: pip install pyserial") from exc
        try:
            # Exclusive: a second driver (or a leftover process) on the same servo bus would
            # interleave its packets with ours and read our replies.
            return serial.Serial(self.port, self.baudrate, timeout=0.001, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise BackendError(
                f"cannot open serial port {self.port} (is another driver using it?): {exc}"
            ) from exc

    def disconnect(self) -> None:
        if self._serial is not None:
            try:
                self._serial.close()
            except Exception:
                pass
        self._serial = None
        self._enabled = False

    def enable(self) -> None:
        self._require_connected()
        faulted = self._faulted_servos()
        if faulted:
            raise BackendError(
                "servo faults present, torque not enabled: "
                + "; ".join(faulted)
                + ". Remove the cause (let the servo cool, check the supply and the load), then "
                "call the driver service ~/clear_motor_faults: Feetech servos have no clear "
                "command, it re-reads each servo and clears those that report no fault."
            )
        # A servo that gets torque moves to its goal register at once: make that where it is.
        present = self._read_ticks()
        self._sync_write("Goal_Position", dict(zip(self.servo_ids, present[:, 0], strict=True)))
        for servo_id, conv in zip(self.servo_ids, self.conventions, strict=True):
            self._write(servo_id, "Torque_Enable", 1)
            if conv.is_gripper:
                self._write(servo_id, "Torque_Limit", GRIPPER_TORQUE_LIMIT)
        faulted = self._faulted_servos()
        if faulted:
            self.disable()
            raise BackendError("servo fault while enabling, torque off: " + "; ".join(faulted))
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False
        if self._serial is None:
            return
        # One broadcast packet, no replies to wait for: works even with a silent servo.
        try:
            self._sync_write("Torque_Enable", dict.fromkeys(self.servo_ids, 0))
        except BackendError:
            pass

    def clear_faults(self) -> list[str]:
        """Re-read every servo with a latched fault; clear the ones whose condition is gone.
        Raises ``BackendError`` (with every servo's line) when a condition is still present:
        the STS protocol cannot clear it, only its cause going away does."""
        self._require_connected()
        latched = {sid: h.latched for sid, h in self.servo_health.items() if h.latched}
        if not latched:
            return []
        lines, still = [], False
        for sid, fault in latched.items():
            self._read_health(sid)
            h = self.servo_health[sid]
            now = h.condition()
            if now:
                h.latched = now
                still = True
                lines.append(f"{self._label(sid)}: {fault} -> still present: {now}, not cleared")
            else:
                h.latched = ""
                lines.append(f"{self._label(sid)}: {fault} -> cleared")
        if still:
            raise BackendError("; ".join(lines))
        return lines

    def read_state(self) -> JointReading:
        self._require_connected()
        start = self._now()
        # Health first, position last: the measurement is as fresh as it can be.
        sid = self.servo_ids[self._next_health]
        self._next_health = (self._next_health + 1) % len(self.servo_ids)
        self._read_health(sid)
        ticks = self._read_ticks()
        elapsed = self._now() - start
        bus = self.bus_health
        bus.reads += 1
        bus.last_read_time = elapsed
        bus.max_read_time = max(bus.max_read_time, elapsed)
        if self.control_rate and elapsed > 1.0 / self.control_rate:
            bus.overruns += 1
        if self._enabled:
            faulted = [f"{self._label(s)}: {h.condition()}" for s, h in self._conditions()]
            if faulted:
                raise BackendError("servo fault, holding: " + "; ".join(faulted))
        positions = np.array(
            [c.ticks_to_value(t) for c, t in zip(self.conventions, ticks[:, 0], strict=True)]
        )
        velocities = np.array(
            [v / c.ticks_per_unit() for c, v in zip(self.conventions, ticks[:, 1], strict=True)]
        )
        return JointReading(positions, velocities, np.zeros(self.num_joints), self._now())

    def write_command(self, positions: np.ndarray, velocities: np.ndarray | None = None) -> None:
        self._require_connected()
        positions = np.asarray(positions, dtype=float)
        if positions.shape != (self.num_joints,) or not np.all(np.isfinite(positions)):
            raise BackendError(
                f"feetech backend: command must be {self.num_joints} finite positions, got "
                f"{positions!r}"
            )
        goals = {
            servo_id: conv.value_to_ticks(value)
            for servo_id, conv, value in zip(
                self.servo_ids, self.conventions, positions, strict=True
            )
        }
        self._sync_write("Goal_Position", goals)
        self._log_command(self._now(), positions)

    # -- health ----------------------------------------------------------------------------
    def health(self) -> list[hl.HealthEntry]:
        bus = self.bus_health
        level, message = hl.OK, "ok"
        if bus.problem:
            level, message = hl.ERROR, bus.problem
        elif self._serial is None:
            level, message = hl.WARN, "not connected"
        elif bus.overruns:
            level, message = hl.WARN, f"{bus.overruns} reads longer than a control period"
        entries = [
            hl.HealthEntry(
                name=f"feetech bus {self.port}",
                level=level,
                message=message,
                hardware_id=self.port,
                values={
                    "baudrate": str(self.baudrate),
                    "reads": str(bus.reads),
                    "last_read_ms": f"{bus.last_read_time * 1e3:.3f}",
                    "max_read_ms": f"{bus.max_read_time * 1e3:.3f}",
                    "overruns": str(bus.overruns),
                    "budget": self.budget.describe(self.control_rate)
                    if self.control_rate
                    else f"{self.budget.tick_bus_time * 1e3:.2f} ms per tick",
                },
            )
        ]
        now = self._now() if self._serial is not None else None
        for sid, name in zip(self.servo_ids, self.joint_names, strict=True):
            h = self.servo_health[sid]
            warn = self.temperature_warn
            if h.temperature_limit:
                warn = min(warn, h.temperature_limit - HOT_MARGIN)
            limits = h.voltage_limits
            entries.append(
                hl.motor_entry(
                    f"feetech servo {name} (id {sid}, {self.port})",
                    f"{self.port}:{sid}",
                    h,
                    temperatures={"temperature_c": h.temperature},
                    temperature_warn=warn,
                    now=now,
                    values={
                        "status": "no reply yet"
                        if h.status is None
                        else (ft.error_text(h.status) or "ok"),
                        "voltage_v": "" if h.voltage is None else f"{h.voltage:.1f}",
                        "temperature_limit_c": ""
                        if h.temperature_limit is None
                        else str(h.temperature_limit),
                        "voltage_limits_v": ""
                        if limits is None
                        else f"{limits[0]:.1f}..{limits[1]:.1f}",
                    },
                )
            )
        return entries

    def _label(self, servo_id: int) -> str:
        return f"{self._name(servo_id)} (id {servo_id})"

    def _conditions(self) -> list[tuple[int, ServoHealth]]:
        return [(sid, h) for sid, h in self.servo_health.items() if h.condition()]

    def _faulted_servos(self) -> list[str]:
        return [
            f"{self._label(sid)}: {h.latched}" for sid, h in self.servo_health.items() if h.latched
        ]

    def _latch(self, servo_id: int) -> None:
        condition = self.servo_health[servo_id].condition()
        if condition:
            self.servo_health[servo_id].latched = condition

    def _read_health(self, servo_id: int) -> None:
        reply = self._transact(
            ft.build_read(servo_id, ft.HEALTH_ADDRESS, ft.HEALTH_LENGTH),
            [servo_id],
            ft.HEALTH_LENGTH,
        )
        self._take_health(servo_id, reply[servo_id])

    def _read_all_health(self) -> None:
        replies = self._transact(
            ft.build_sync_read(ft.HEALTH_ADDRESS, ft.HEALTH_LENGTH, self.servo_ids),
            self.servo_ids,
            ft.HEALTH_LENGTH,
        )
        for sid, data in replies.items():
            self._take_health(sid, data)

    def _take_health(self, servo_id: int, data: bytes) -> None:
        block = ft.decode_health(data)
        h = self.servo_health[servo_id]
        h.voltage, h.temperature, h.status = block.voltage, block.temperature, block.status
        self._latch(servo_id)

    # -- configuration ---------------------------------------------------------------------
    def _configure(self) -> None:
        """LeRobot's follower settings, and the calibration in EEPROM where it differs."""
        self._sync_write("Torque_Enable", dict.fromkeys(self.servo_ids, 0))
        for servo_id, conv in zip(self.servo_ids, self.conventions, strict=True):
            cal = conv.calibration
            wanted = {
                "P_Coefficient": LEROBOT_P,
                "D_Coefficient": LEROBOT_D,
                "I_Coefficient": 0,
                "Return_Delay_Time": 0,
            }
            if conv.is_gripper:
                wanted.update(
                    Max_Torque_Limit=GRIPPER_TORQUE_LIMIT,
                    Protection_Current=GRIPPER_PROTECTION_CURRENT,
                    Overload_Torque=GRIPPER_OVERLOAD_TORQUE,
                )
            if self.write_calibration:
                wanted.update(
                    Homing_Offset=cal.homing_offset,
                    Min_Position_Limit=cal.range_min,
                    Max_Position_Limit=cal.range_max,
                )
            changes = {k: v for k, v in wanted.items() if self._read(servo_id, k) != v}
            if changes:
                # EEPROM fields are write-protected while Lock is set; unlock only for the change.
                self._write(servo_id, "Lock", 0)
                for name, value in changes.items():
                    self._write(servo_id, name, value)
                self._write(servo_id, "Lock", 1)
            limits = self._transact(
                ft.build_read(servo_id, ft.LIMITS_ADDRESS, ft.LIMITS_LENGTH),
                [servo_id],
                ft.LIMITS_LENGTH,
            )[servo_id]
            h = self.servo_health[servo_id]
            h.temperature_limit = int(limits[0])
            # Max_Voltage_Limit (14) comes before Min_Voltage_Limit (15).
            h.voltage_limits = (limits[2] * ft.VOLTS_PER_COUNT, limits[1] * ft.VOLTS_PER_COUNT)

    # -- transactions ----------------------------------------------------------------------
    def _require_connected(self) -> None:
        if self._serial is None:
            raise BackendError("feetech backend is not connected")

    def _name(self, servo_id: int) -> str:
        return self.joint_names[self.servo_ids.index(servo_id)]

    def _send(self, packet: bytes) -> None:
        try:
            self._serial.reset_input_buffer()
            self._serial.write(packet)
        except _io_errors() as exc:
            self.bus_health.problem = f"serial write failed: {exc}"
            raise BackendError(f"serial write to {self.port} failed: {exc}") from exc

    def _transact(self, packet: bytes, servo_ids: Sequence[int], length: int) -> dict[int, bytes]:
        """Send ``packet``; expect one status with ``length`` params from each id, in order.
        Retried as a whole; ``BackendError`` names the first servo that never answered right.
        Each try waits for the bytes' wire time plus ``reply_timeout`` per reply."""
        problem: dict[int, str] = {}
        wire = (len(packet) + len(servo_ids) * ft.packet_bytes(length)) * self.budget.byte_time
        for _attempt in range(self.retries + 1):
            self._send(packet)
            replies: dict[int, bytes] = {}
            buffer = bytearray()
            deadline = self._now() + wire + self.reply_timeout * max(1, len(servo_ids))
            while len(replies) < len(servo_ids) and self._now() < deadline:
                try:
                    data = self._serial.read(max(1, self._serial.in_waiting))
                except _io_errors() as exc:
                    self.bus_health.problem = f"serial read failed: {exc}"
                    raise BackendError(f"serial read from {self.port} failed: {exc}") from exc
                if not data:
                    continue
                buffer.extend(data)
                for item in ft.split_packets(buffer):
                    if isinstance(item, ft.PacketError):
                        for sid in servo_ids:
                            if sid not in replies:
                                problem[sid] = f"corrupt reply ({item})"
                                self.servo_health[sid].garbled += 1
                                break
                        continue
                    status = ft.parse_packet(item)
                    if status.servo_id in servo_ids and len(status.params) == length:
                        replies[status.servo_id] = status.params
                        self._note_reply(status.servo_id, status.code)
            if len(replies) == len(servo_ids):
                return replies
            for sid in servo_ids:
                if sid not in replies:
                    problem.setdefault(sid, "no reply")
                    self.servo_health[sid].missed += 1
        missing = [s for s in servo_ids if s in problem and s not in replies]
        for sid in missing:
            h = self.servo_health[sid]
            age = (
                "never answered"
                if h.last_reply is None
                else f"last reply {self._now() - h.last_reply:.3f} s ago"
            )
            h.problem = f"{problem[sid]} after {self.retries + 1} tries ({age})"
        sid = missing[0]
        others = len(missing) - 1
        raise BackendError(
            f"Feetech servo {self._label(sid)} on {self.port}: {problem[sid]} after "
            f"{self.retries + 1} tries" + (f" (and {others} more servos)" if others else "")
        )

    def _note_reply(self, servo_id: int, error: int) -> None:
        h = self.servo_health[servo_id]
        h.status = error
        h.replies += 1
        h.last_reply = self._now()
        h.problem = ""
        if error:
            self._latch(servo_id)

    def _read(self, servo_id: int, name: str) -> int:
        reg = _R[name]
        reply = self._transact(ft.build_read(servo_id, reg.address, reg.size), [servo_id], reg.size)
        return ft.decode_value(reg, reply[servo_id])

    def _write(self, servo_id: int, name: str, value: int) -> None:
        # The error byte of the reply is the servo's condition, not a refused write: it is
        # noted (and latched) by ``_transact``, and ``enable`` refuses on it.
        reg = _R[name]
        packet = ft.build_write(servo_id, reg.address, ft.encode_value(reg, value))
        self._transact(packet, [servo_id], 0)

    def _sync_write(self, name: str, values: Mapping[int, int]) -> None:
        reg = _R[name]
        data = {sid: ft.encode_value(reg, int(v)) for sid, v in values.items()}
        self._send(ft.build_sync_write(reg.address, reg.size, data))

    def _read_ticks(self) -> np.ndarray:
        """(joints, 2) present position and velocity in ticks and ticks/s."""
        pos, vel = _R["Present_Position"], _R["Present_Velocity"]
        length = pos.size + vel.size
        replies = self._transact(
            ft.build_sync_read(pos.address, length, self.servo_ids), self.servo_ids, length
        )
        return np.array(
            [
                [ft.decode_value(pos, replies[sid][:2]), ft.decode_value(vel, replies[sid][2:])]
                for sid in self.servo_ids
            ],
            dtype=float,
        )


def _io_errors() -> tuple[type[BaseException], ...]:
    """What a vanished serial device raises (pyserial's own, the OS's, termios' on flush)."""
    import serial

    errors: tuple[type[BaseException], ...] = (serial.SerialException, OSError)
    try:
        import termios

        errors += (termios.error,)
    except ImportError:  # pragma: no cover - not POSIX
        pass
    return errors
