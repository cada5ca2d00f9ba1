"""DaMiao motors answering like the real ones, on two transports.

``MotorBank`` is the motors: each keeps an enable state, a position, temperatures, an error
code and its own PMAX/VMAX/TMAX registers (``mtype``: a type name, or a ``MotorType`` holding
register values a test sets apart from what the host assumes), with which it decodes commands
and encodes feedback, as the firmware does. Control frames (enable/disable/zero/clear error)
and refresh requests are answered with a feedback frame; an MIT command to an enabled motor
moves it to the commanded position (ideal tracking: the emulator checks the link, not the
dynamics) and is answered with feedback. Every command a motor accepted is recorded decoded, so
tests compare what arrived with what was sent.
A motor in a fault state (over-temperature, ...) answers with that error code and ignores MIT
commands until a clear-error frame (0xFB) and a new enable, as the real firmware does.

Transports:

* ``DamiaoEmulator``: a thread on python-can's ``virtual`` bus (wall clock, no bus time), for
  end-to-end tests of the python-can path and the driver node.
* ``TimedDamiaoBus``: a discrete-event model of one CAN bus on an injected virtual clock. Every
  frame occupies the bus for its worst-case bit time at the configured bitrate
  (``hw_drivers.can_budget``), frames wait for the bus and win arbitration by lowest
  identifier, and each motor answers after a (seeded, jittered) turnaround. The backend talks
  to it through the same link interface as to python-can, so tests measure the bus time a real
  bus would take, deterministically, whatever the load of the machine running them.

Power-up turn: a real motor's absolute encoder is single-turn, so a motor may power up
reporting its angle a whole turn off (``power_up_turns`` per motor, or ``power_cycle(id,
turns)``). Each motor keeps its physical joint angle and the offset its reports carry
(``encoder_offset``: reported = physical + offset); it keeps counting in that turn while powered,
as the firmware does, so a host that commands the reported angle holds the joint still.

Gripper physics (``attach_gripper(id, closed, opened)``): that motor is no longer ideal. It
runs its last MIT command continuously, as the firmware does, on the bank's clock (the timed
bus's virtual time, or the wall clock): torque ``kp*(p - q) + kd*(v - dq) + t`` clipped to the
motor's peak, against viscous damping, between hard end stops at the closed and open angles and
an object (``place_object``) that blocks closing. At a stop the motor stalls: velocity 0 and
the full commanded torque (the current rises), which is what the feedback then reports.

Faults: ``drop_replies(n)`` swallows the next n replies, ``garble_replies(n)`` replaces them
with frames that cannot be valid feedback, ``silent = True`` stops the whole bank answering,
``silence(motor_id)`` one motor, ``set_fault(motor_id, code)`` latches a DaMiao error code.
"""

from __future__ import annotations

import dataclasses
import errno
import heapq
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from hw_drivers import damiao_protocol as dm
from hw_drivers.backends.damiao import YAM_MOTOR_IDS, YAM_MOTOR_TYPES
from hw_drivers.can_budget import can_frame_bits


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
    error_code: int | None = None  # latched fault (0x8..0xE), None when healthy
    temperature_mos: int = 35
    temperature_rotor: int = 35
    silent: bool = False
    #: What the motor's reports add to the physical angle [rad]: whole turns after a power-up on
    #: the other side of the encoder's wrap point, anything after a set-zero.
    encoder_offset: float = 0.0
    #: Gripper physics: (closed, open) end stops in joint angles [rad]; None: ideal tracking.
    stops: tuple[float, float] | None = None
    obstacle: float | None = None  # joint angle where an object stops the closing
    damping: float = 0.1  # [N*m*s/rad] viscous, rotor and mechanism
    command: dm.MitCommand | None = None  # the MIT command it is running
    updated_at: float | None = None

    @property
    def joint_angle(self) -> float:
        """Where the joint physically is [rad] (``position`` is what the motor reports)."""
        return self.position - self.encoder_offset


class MotorBank:
    """The motors of one bus and what they answer to each frame (no transport)."""

    def __init__(
        self,
        motors: list[tuple[int, str | dm.MotorType]] | None = None,
        master_id_offset: int = 0x10,
        initial_positions: list[float] | None = None,
        power_up_turns: list[int] | None = None,
    ) -> None:
        if motors is None:
            motors = list(zip(YAM_MOTOR_IDS, YAM_MOTOR_TYPES, strict=True))
        self.motors: dict[int, EmulatedMotor] = {}
        for index, (motor_id, registers) in enumerate(motors):
            mtype = dm.motor_type(registers) if isinstance(registers, str) else registers
            motor = EmulatedMotor(motor_id, mtype, motor_id + master_id_offset)
            if initial_positions is not None:
                motor.position = float(initial_positions[index])
            if power_up_turns is not None:
                motor.encoder_offset = 2.0 * np.pi * int(power_up_turns[index])
                motor.position += motor.encoder_offset
            self.motors[motor_id] = motor
        self._lock = threading.RLock()
        #: What the gripper physics integrates over [s]; the timed bus sets its virtual clock.
        self.clock: Callable[[], float] = time.monotonic
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

    def silence(self, motor_id: int, silent: bool = True) -> None:
        with self._lock:
            self.motors[motor_id].silent = silent

    def set_fault(self, motor_id: int, code: int | None) -> None:
        """Latch a DaMiao error code (e.g. 0xC rotor over-temperature); the motor drops out of
        its enabled state, as the firmware does when it trips."""
        if code is not None and code not in dm.ERROR_CODES:
            raise ValueError(f"0x{code:X} is not a DaMiao error code")
        with self._lock:
            motor = self.motors[motor_id]
            motor.error_code = code
            if code is not None:
                motor.enabled = False

    def power_cycle(self, motor_id: int, turns: int = 0) -> None:
        """Power the motor off and on where it stands: torque off, latched fault cleared, and
        its reports ``turns`` more whole turns off the physical angle than before (the encoder
        came up on the other side of its wrap point)."""
        with self._lock:
            motor = self.motors[motor_id]
            motor.enabled = False
            motor.error_code = None
            motor.velocity = motor.torque = 0.0
            motor.encoder_offset += 2.0 * np.pi * int(turns)
            motor.position += 2.0 * np.pi * int(turns)

    def attach_gripper(
        self, motor_id: int, closed: float, opened: float, damping: float = 0.1
    ) -> None:
        """Give the motor a gripper's physics: end stops at the ``closed`` and ``opened`` joint
        angles [rad] (i2rt: closed is the larger angle)."""
        with self._lock:
            motor = self.motors[motor_id]
            motor.stops = (float(closed), float(opened))
            motor.damping = float(damping)
            motor.updated_at = None

    def place_object(self, motor_id: int, angle: float | None) -> None:
        """An object the gripper closes on at joint ``angle`` (None: take it out)."""
        with self._lock:
            self._advance(self.motors[motor_id])
            self.motors[motor_id].obstacle = None if angle is None else float(angle)

    def _advance(self, motor: EmulatedMotor) -> None:
        """Run a gripper motor's last command from its last update to now."""
        if motor.stops is None:
            return
        now = self.clock()
        last, motor.updated_at = motor.updated_at, now
        if last is None:
            return
        if not motor.enabled or motor.command is None:
            motor.velocity = motor.torque = 0.0
            return
        c, peak = motor.command, motor.mtype.t_max
        closing_stop = max(motor.stops)
        if motor.obstacle is not None:
            closing_stop = min(closing_stop, motor.obstacle)
        lower = min(motor.stops)
        q = motor.joint_angle
        remaining = min(max(now - last, 0.0), 1.0)
        steps = max(1, math.ceil(remaining / 0.0005))
        h = remaining / steps
        for _ in range(steps):
            p_des = c.position - motor.encoder_offset
            # Overdamped: damping * dq = clip(kp*(p - q) + kd*(v - dq) + t).
            drive = c.kp * (p_des - q) + c.kd * c.velocity + c.torque
            dq = drive / (motor.damping + c.kd)
            if abs(motor.damping * dq) > peak:
                dq = math.copysign(peak / motor.damping, dq)
            tau = motor.damping * dq
            q_next = q + dq * h
            if q_next >= closing_stop or q_next <= lower:
                # Stalled against a stop: no motion, the full commanded torque.
                q_next = min(max(q_next, lower), closing_stop)
                dq = 0.0
                tau = max(-peak, min(peak, c.kp * (p_des - q_next) + c.kd * c.velocity + c.torque))
            q = q_next
        motor.position = q + motor.encoder_offset
        motor.velocity = dq if remaining > 0 else motor.velocity
        motor.torque = tau

    def set_temperature(self, motor_id: int, mos: int, rotor: int) -> None:
        with self._lock:
            motor = self.motors[motor_id]
            motor.temperature_mos, motor.temperature_rotor = int(mos), int(rotor)

    def snapshot(self, motor_id: int) -> EmulatedMotor:
        """A copy of one motor's state (safe to read while a transport runs)."""
        with self._lock:
            m = self.motors[motor_id]
            self._advance(m)
            return dataclasses.replace(
                m, received=list(m.received), control_log=list(m.control_log)
            )

    # -- protocol --------------------------------------------------------------------------
    def answer(self, frame: dm.CanFrame) -> dm.CanFrame | None:
        """What the bus carries back after ``frame`` (None: nobody answers)."""
        with self._lock:
            self.frames_seen += 1
            motor = self._handle(frame)
            if motor is None or motor.silent or self.silent:
                return None
            if self._drop > 0:
                self._drop -= 1
                return None
            if self._garble > 0:
                self._garble -= 1
                # An impossible error nibble (0x3) and a wrong id nibble: never valid feedback.
                data = bytes([0x30 | ((motor.motor_id + 1) & 0xF), 0xDE, 0xAD, 0xBE, 0xEF, 0, 0, 0])
                return dm.CanFrame(motor.master_id, data)
            request = dm.param_request(frame)
            if request is not None and request[1] == dm.PARAM_READ:
                rid = frame.data[3]
                value = self._register(motor, rid)
                if value is None:
                    return None
                return dm.encode_register_reply(motor.master_id, motor.motor_id, rid, value)
            if motor.error_code is not None:
                state = motor.error_code
            else:
                state = dm.STATE_ENABLED if motor.enabled else dm.STATE_DISABLED
            return dm.encode_feedback(
                motor.master_id,
                motor.motor_id,
                state,
                motor.position,
                motor.velocity,
                motor.torque,
                motor.mtype,
                motor.temperature_mos,
                motor.temperature_rotor,
            )

    @staticmethod
    def _register(motor: EmulatedMotor, rid: int) -> float | None:
        """The value of a float register the emulator keeps (None: not modelled)."""
        return {
            dm.REG_PMAX: motor.mtype.p_max,
            dm.REG_VMAX: motor.mtype.v_max,
            dm.REG_TMAX: motor.mtype.t_max,
        }.get(rid)

    def _handle(self, frame: dm.CanFrame) -> EmulatedMotor | None:
        request = dm.param_request(frame)
        if request is not None:
            motor = self.motors.get(request[0])
            if motor is not None:
                self._advance(motor)
            answered = request[1] == dm.PARAM_REFRESH or (
                request[1] == dm.PARAM_READ and len(frame.data) >= 4
            )
            return motor if motor is not None and answered else None
        motor = self.motors.get(frame.arbitration_id)
        if motor is None:
            return None
        self._advance(motor)
        command = dm.control_command(frame)
        if command is not None:
            motor.control_log.append(command)
            if command in (dm.CMD_ENABLE, dm.CMD_DISABLE):
                motor.command = None  # torque comes back with the next MIT command
            if command == dm.CMD_CLEAR_ERROR:
                motor.error_code = None
            elif command == dm.CMD_ENABLE and motor.error_code is None:
                motor.enabled = True
            elif command == dm.CMD_DISABLE:
                motor.enabled = False
            elif command == dm.CMD_SET_ZERO and not motor.enabled:
                # The pose it stands in becomes the motor's zero.
                motor.encoder_offset = -motor.joint_angle
                motor.position = 0.0
            return motor
        try:
            mit = dm.decode_mit(frame.data, motor.mtype)
        except dm.FrameError:
            return None
        if motor.enabled:
            motor.received.append(mit)
            if motor.stops is not None:
                motor.command = mit  # runs from now on; the reply reports the state it is in
            else:
                motor.position = mit.position
                motor.velocity = mit.velocity
                motor.torque = mit.torque
        return motor


class DamiaoEmulator(MotorBank):
    """Motors on one python-can virtual channel; use as a context manager or start()/stop()."""

    def __init__(
        self,
        channel: str,
        motors: list[tuple[int, str | dm.MotorType]] | None = None,
        master_id_offset: int = 0x10,
        initial_positions: list[float] | None = None,
        power_up_turns: list[int] | None = None,
    ) -> None:
        import can

        super().__init__(motors, master_id_offset, initial_positions, power_up_turns)
        self.channel = channel
        self._bus = can.Bus(interface="virtual", channel=channel, receive_own_messages=False)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, name=f"damiao-emu-{channel}", daemon=True
        )

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

    def _serve(self) -> None:
        import can

        while not self._stop.is_set():
            msg = self._bus.recv(timeout=0.02)
            if msg is None:
                continue
            reply = self.answer(dm.CanFrame(msg.arbitration_id, bytes(msg.data)))
            if reply is not None:
                self._bus.send(
                    can.Message(
                        arbitration_id=reply.arbitration_id, data=reply.data, is_extended_id=False
                    )
                )


class TimedDamiaoBus(MotorBank):
    """One CAN bus with bus time, as the host's link: ``send``, ``recv``, ``now``.

    Time is virtual and only moves when the host waits (``recv``, ``sleep_until``): host CPU
    time is free, bus time is exact. ``reply_latency`` is each motor's turnaround from the end
    of a command frame to its feedback being ready to send, drawn uniformly from
    ``[low, high]`` with ``seed``.

    The host's transmit queue holds ``tx_queue_len`` frames that have not reached the wire yet
    (Linux's ``can_setup`` gives every CAN device ``tx_queue_len = 10`` unless ``ip link set
    ... txqueuelen`` changes it); one more and ``send`` fails with ``ENOBUFS`` (SocketCAN does
    not block on a full queue), as python-can's send does on a real interface.
    """

    def __init__(
        self,
        channel: str,
        bitrate: int = 1_000_000,
        motors: list[tuple[int, str | dm.MotorType]] | None = None,
        master_id_offset: int = 0x10,
        initial_positions: list[float] | None = None,
        reply_latency: tuple[float, float] = (40e-6, 150e-6),
        seed: int = 0,
        power_up_turns: list[int] | None = None,
        tx_queue_len: int = 10,
        adapter_latency: float = 0.0,
    ) -> None:
        super().__init__(motors, master_id_offset, initial_positions, power_up_turns)
        self.channel = channel
        self.bitrate = int(bitrate)
        self.tx_queue_len = int(tx_queue_len)
        self.adapter_latency = float(adapter_latency)
        self.reply_latency = reply_latency
        self._rng = np.random.default_rng(seed)
        self._now = 0.0
        self.clock = self.now
        self._bus_free_at = 0.0
        self._host_queue: list[tuple[float, int, dm.CanFrame]] = []  # FIFO (ready, seq, frame)
        self._motor_queue: list[tuple[float, int, dm.CanFrame]] = []  # heap by ready time
        self._delivered: list[tuple[float, dm.CanFrame]] = []  # host inbox, in arrival order
        self._seq = 0
        self.bus_busy_time = 0.0  # total seconds the wire carried frames
        self.frames_on_wire = 0
        self.closed = False

    # -- link interface (what the backend calls) -------------------------------------------
    def now(self) -> float:
        return self._now

    def send(self, frame: dm.CanFrame) -> None:
        if self.closed:
            raise OSError(f"{self.channel} is closed")
        # Frames that started before now have left the queue.
        self._simulate(until=self._now, stop_at_delivery=False)
        if len(self._host_queue) >= self.tx_queue_len:
            raise OSError(errno.ENOBUFS, f"{self.channel}: No buffer space available")
        self._seq += 1
        self._host_queue.append((self._now + self.adapter_latency / 2, self._seq, frame))

    def recv(self, timeout: float) -> tuple[dm.CanFrame, float] | None:
        """The next frame for the host within ``timeout`` of virtual time, with its arrival
        stamp; the clock moves to the arrival (or to the timeout when nothing comes)."""
        deadline = self._now + max(0.0, float(timeout))
        self._simulate(until=deadline, stop_at_delivery=True)
        if self._delivered and self._delivered[0][0] <= deadline:
            stamp, frame = self._delivered.pop(0)
            self._now = max(self._now, stamp)
            return frame, stamp
        self._now = deadline
        return None

    def sleep_until(self, t: float) -> None:
        """Let virtual time pass (the host idles until its next tick)."""
        if t > self._now:
            self._simulate(until=t, stop_at_delivery=False)
            self._now = t

    def close(self) -> None:
        self.closed = True

    # -- the wire --------------------------------------------------------------------------
    def _frame_time(self) -> float:
        return can_frame_bits(8) / float(self.bitrate)

    def _simulate(self, until: float, stop_at_delivery: bool) -> None:
        """Run the bus from its current state up to ``until``; a frame that starts before
        ``until`` completes (a transmission cannot be cut)."""
        while True:
            if stop_at_delivery and self._delivered:
                return
            t = self._bus_free_at  # frames are never ready before they were sent
            candidates = []
            if self._host_queue:
                candidates.append(("host", max(self._host_queue[0][0], t)))
            if self._motor_queue:
                candidates.append(("motor", max(self._motor_queue[0][0], t)))
            if not candidates:
                return
            start = min(c[1] for c in candidates)
            if start > until:
                return
            # Arbitration among the frames ready at ``start``: lowest identifier wins.
            ready = []
            if self._host_queue and self._host_queue[0][0] <= start:
                ready.append((self._host_queue[0][2].arbitration_id, "host"))
            for ready_at, _, frame in self._motor_queue:
                if ready_at <= start:
                    ready.append((frame.arbitration_id, "motor"))
            _, source = min(ready)
            if source == "host":
                _, _, frame = self._host_queue.pop(0)
            else:
                winner = min(
                    (entry for entry in self._motor_queue if entry[0] <= start),
                    key=lambda entry: (entry[2].arbitration_id, entry[1]),
                )
                self._motor_queue.remove(winner)
                heapq.heapify(self._motor_queue)
                frame = winner[2]
            end = start + self._frame_time()
            self._bus_free_at = end
            self.bus_busy_time += end - start
            self.frames_on_wire += 1
            if source == "host":
                reply = self.answer(frame)
                if reply is not None:
                    low, high = self.reply_latency
                    ready_at = end + float(self._rng.uniform(low, high))
                    self._seq += 1
                    heapq.heappush(self._motor_queue, (ready_at, self._seq, reply))
            else:
                self._delivered.append((end + self.adapter_latency / 2, frame))
