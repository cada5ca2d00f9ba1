"""Feetech STS3215 servos over a serial bus (SO-100/101), LeRobot-calibration compatible.

Settings follow LeRobot's SO-101 follower: 1 Mbaud, position P=16, D=32, I=0, the gripper's
torque limited to 50 %, calibration (homing offset, position limits) written to the servos'
EEPROM when it differs from the calibration file. Reads are SYNC_READs of position and
velocity, retried on a missing or corrupt reply; goals are one SYNC_WRITE per tick.

Values on the ROS side: radians in the model's joint convention (the released SO-101 signs and
offsets applied to LeRobot's degrees, see ``hw_drivers.calibration``) and a 0..1 gripper
opening. pyserial is imported on ``connect()`` only.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hw_drivers import feetech_protocol as ft
from hw_drivers.backends.base import Backend, BackendError, JointReading
from hw_drivers.calibration import (
    SO101_MODEL_OFFSETS_DEG,
    SO101_MODEL_SIGNS,
    CalibrationError,
    MotorCalibration,
    load_calibration,
    so101_conventions,
)

_R = ft.STS_REGISTERS
LEROBOT_P = 16
LEROBOT_D = 32
GRIPPER_TORQUE_LIMIT = 500  # of 1000: LeRobot's 50 %
GRIPPER_PROTECTION_CURRENT = 250
GRIPPER_OVERLOAD_TORQUE = 25


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
        #: Last error flags each servo reported (0 = fine), for diagnostics.
        self.servo_errors: dict[int, int] = dict.fromkeys(self.servo_ids, 0)
        self._serial: Any = None

    @classmethod
    def from_params(cls, params: Any) -> FeetechBackend:
        if not params.serial_port:
            raise BackendError("feetech backend needs serial_port (e.g. /dev/ttyACM0)")
        if not params.calibration_file:
            raise BackendError(
                "feetech backend needs calibration_file: the LeRobot calibration JSON of this "
                "arm (e.g. ~/.cache/huggingface/lerobot/calibration/robots/so101_follower/"
                "<id>.json)"
            )
        try:
            calibration = load_calibration(params.calibration_file)
        except CalibrationError as exc:
            raise BackendError(str(exc)) from exc
        return cls(
            params.joint_names,
            params.serial_port,
            calibration,
            reply_timeout=float(getattr(params, "read_timeout", None) or 0.02),
            retries=int(getattr(params, "read_retries", None) or 3),
        )

    # -- Backend ---------------------------------------------------------------------------
    @property
    def is_connected(self) -> bool:
        return self._serial is not None

    def connect(self) -> None:
        if self._serial is not None:
            return
        try:
            import serial
        except ImportError as exc:  # pragma: no cover - pyserial is a project dependency
            raise BackendError("pyserial is not installed: pip install pyserial") from exc
        try:
            self._serial = serial.Serial(self.port, self.baudrate, timeout=0.001)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise BackendError(f"cannot open serial port {self.port}: {exc}") from exc
        try:
            for servo_id in self.servo_ids:
                self._transact(ft.build_ping(servo_id), [servo_id], 0)
            self._configure()
        except BackendError:
            self.disconnect()
            raise

    def disconnect(self) -> None:
        if self._serial is not None:
            try:
                self._serial.close()
            except Exception:
                pass
        self._serial = None

    def enable(self) -> None:
        self._require_connected()
        # A servo that gets torque moves to its goal register at once: make that where it is.
        present = self._read_ticks()
        self._sync_write("Goal_Position", dict(zip(self.servo_ids, present[:, 0], strict=True)))
        for servo_id, conv in zip(self.servo_ids, self.conventions, strict=True):
            self._write(servo_id, "Torque_Enable", 1)
            if conv.is_gripper:
                self._write(servo_id, "Torque_Limit", GRIPPER_TORQUE_LIMIT)

    def disable(self) -> None:
        if self._serial is None:
            return
        # One broadcast packet, no replies to wait for: works even with a silent servo.
        try:
            self._sync_write("Torque_Enable", dict.fromkeys(self.servo_ids, 0))
        except BackendError:
            pass

    def read_state(self) -> JointReading:
        self._require_connected()
        ticks = self._read_ticks()
        positions = np.array(
            [c.ticks_to_value(t) for c, t in zip(self.conventions, ticks[:, 0], strict=True)]
        )
        velocities = np.array(
            [v / c.ticks_per_unit() for c, v in zip(self.conventions, ticks[:, 1], strict=True)]
        )
        return JointReading(positions, velocities, np.zeros(self.num_joints), time.monotonic())

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
        self._log_command(time.monotonic(), positions)

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
            if not changes:
                continue
            # EEPROM fields are write-protected while Lock is set; unlock only for the change.
            self._write(servo_id, "Lock", 0)
            for name, value in changes.items():
                self._write(servo_id, name, value)
            self._write(servo_id, "Lock", 1)

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
            raise BackendError(f"serial write to {self.port} failed: {exc}") from exc

    def _transact(self, packet: bytes, servo_ids: Sequence[int], length: int) -> dict[int, bytes]:
        """Send ``packet``; expect one status with ``length`` params from each id, in order.
        Retried as a whole; ``BackendError`` names the first servo that never answered right."""
        problem: dict[int, str] = {}
        for _attempt in range(self.retries + 1):
            self._send(packet)
            replies: dict[int, bytes] = {}
            buffer = bytearray()
            deadline = time.monotonic() + self.reply_timeout * max(1, len(servo_ids))
            while len(replies) < len(servo_ids) and time.monotonic() < deadline:
                try:
                    data = self._serial.read(max(1, self._serial.in_waiting))
                except _io_errors() as exc:
                    raise BackendError(f"serial read from {self.port} failed: {exc}") from exc
                if not data:
                    continue
                buffer.extend(data)
                for item in ft.split_packets(buffer):
                    if isinstance(item, ft.PacketError):
                        for sid in servo_ids:
                            if sid not in replies:
                                problem[sid] = f"corrupt reply ({item})"
                                break
                        continue
                    status = ft.parse_packet(item)
                    if status.servo_id in servo_ids and len(status.params) == length:
                        replies[status.servo_id] = status.params
                        self.servo_errors[status.servo_id] = status.code
            if len(replies) == len(servo_ids):
                return replies
            for sid in servo_ids:
                if sid not in replies:
                    problem.setdefault(sid, "no reply")
        sid = next(s for s in servo_ids if s in problem)
        raise BackendError(
            f"Feetech servo {self._name(sid)} (id {sid}) on {self.port}: {problem[sid]} after "
            f"{self.retries + 1} tries"
        )

    def _read(self, servo_id: int, name: str) -> int:
        reg = _R[name]
        reply = self._transact(ft.build_read(servo_id, reg.address, reg.size), [servo_id], reg.size)
        return ft.decode_value(reg, reply[servo_id])

    def _write(self, servo_id: int, name: str, value: int) -> None:
        reg = _R[name]
        packet = ft.build_write(servo_id, reg.address, ft.encode_value(reg, value))
        self._transact(packet, [servo_id], 0)
        if self.servo_errors[servo_id]:
            raise BackendError(
                f"Feetech servo {self._name(servo_id)} (id {servo_id}) reports "
                f"{ft.error_text(self.servo_errors[servo_id])} while writing {name}"
            )

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
