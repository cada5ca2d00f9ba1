"""A bank of DaMiao motors on python-can's ``virtual`` bus, answering like the real ones.

Each motor keeps an enable state and a position. Control frames (enable/disable/zero/clear)
and refresh requests are answered with a feedback frame; an MIT command to an enabled motor
moves it to the commanded position (ideal tracking: the emulator checks the link, not the
dynamics) and is answered with feedback. Every command a motor accepted is recorded decoded,
so tests compare what arrived with what was sent.

Faults: ``drop_replies(n)`` swallows the next n replies, ``garble_replies(n)`` replaces them
with frames that cannot be valid feedback, ``silent = True`` stops answering altogether.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from hw_drivers import damiao_protocol as dm
from hw_drivers.backends.damiao import YAM_MOTOR_IDS, YAM_MOTOR_TYPES


@dataclass
class EmulatedMotor:
    """State of one emulated motor."""

    motor_id: int
    mtype: dm.MotorType
    master_id: int
    enabled: bool = False
    position: float = 0.0
    velocity: float = 0.0
    torque: float = 0.0
    received: list[dm.MitCommand] = field(default_factory=list)
    control_log: list[int] = field(default_factory=list)


class DamiaoEmulator:
    """Motors on one virtual CAN channel; use as a context manager or call start()/stop()."""

    def __init__(
        self,
        channel: str,
        motors: list[tuple[int, str]] | None = None,
        master_id_offset: int = 0x10,
        initial_positions: list[float] | None = None,
    ) -> None:
        import can

        if motors is None:
            motors = list(zip(YAM_MOTOR_IDS, YAM_MOTOR_TYPES, strict=True))
        self.channel = channel
        self.motors: dict[int, EmulatedMotor] = {}
        for index, (motor_id, type_name) in enumerate(motors):
            motor = EmulatedMotor(motor_id, dm.motor_type(type_name), motor_id + master_id_offset)
            if initial_positions is not None:
                motor.position = float(initial_positions[index])
            self.motors[motor_id] = motor
        self._bus = can.Bus(interface="virtual", channel=channel, receive_own_messages=False)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"damiao-emu-{channel}")
        self._drop = 0
        self._garble = 0
        self.silent = False
        self.frames_seen = 0

    # -- fault injection -------------------------------------------------------------------
    def drop_replies(self, count: int) -> None:
        with self._lock:
            self._drop += count

    def garble_replies(self, count: int) -> None:
        with self._lock:
            self._garble += count

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> DamiaoEmulator:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        self._bus.shutdown()

    def __enter__(self) -> DamiaoEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def snapshot(self, motor_id: int) -> EmulatedMotor:
        """A copy of one motor's state (safe to read while the emulator runs)."""
        with self._lock:
            m = self.motors[motor_id]
            return EmulatedMotor(
                m.motor_id,
                m.mtype,
                m.master_id,
                m.enabled,
                m.position,
                m.velocity,
                m.torque,
                list(m.received),
                list(m.control_log),
            )

    # -- protocol --------------------------------------------------------------------------
    def _serve(self) -> None:
        while not self._stop.is_set():
            msg = self._bus.recv(timeout=0.02)
            if msg is None:
                continue
            self.frames_seen += 1
            reply = self._handle(dm.CanFrame(msg.arbitration_id, bytes(msg.data)))
            if reply is not None:
                self._send(reply)

    def _handle(self, frame: dm.CanFrame) -> EmulatedMotor | None:
        with self._lock:
            request = dm.param_request(frame)
            if request is not None:
                motor = self.motors.get(request[0])
                return motor if motor is not None and request[1] == dm.PARAM_REFRESH else None
            motor = self.motors.get(frame.arbitration_id)
            if motor is None:
                return None
            command = dm.control_command(frame)
            if command is not None:
                motor.control_log.append(command)
                if command == dm.CMD_ENABLE:
                    motor.enabled = True
                elif command == dm.CMD_DISABLE:
                    motor.enabled = False
                elif command == dm.CMD_SET_ZERO and not motor.enabled:
                    motor.position = 0.0
                return motor
            try:
                mit = dm.decode_mit(frame.data, motor.mtype)
            except dm.FrameError:
                return None
            if motor.enabled:
                motor.received.append(mit)
                motor.position = mit.position
                motor.velocity = mit.velocity
                motor.torque = mit.torque
            return motor

    def _send(self, motor: EmulatedMotor) -> None:
        import can

        with self._lock:
            if self.silent:
                return
            if self._drop > 0:
                self._drop -= 1
                return
            if self._garble > 0:
                self._garble -= 1
                # An impossible error nibble (0x3) and a wrong id nibble: never valid feedback.
                data = bytes([0x30 | ((motor.motor_id + 1) & 0xF), 0xDE, 0xAD, 0xBE, 0xEF, 0, 0, 0])
                frame = dm.CanFrame(motor.master_id, data)
            else:
                frame = dm.encode_feedback(
                    motor.master_id,
                    motor.motor_id,
                    dm.STATE_ENABLED if motor.enabled else dm.STATE_DISABLED,
                    motor.position,
                    motor.velocity,
                    motor.torque,
                    motor.mtype,
                )
        self._bus.send(
            can.Message(arbitration_id=frame.arbitration_id, data=frame.data, is_extended_id=False)
        )
