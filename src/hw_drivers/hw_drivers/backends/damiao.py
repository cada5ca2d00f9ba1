"""DaMiao motors over CAN (the YAM arms): one SocketCAN channel per arm, MIT mode.

Each arm is a chain of motors (YAM: 6 joints + gripper, ids 0x01..0x07, feedback on
``id + 0x10``) on its own channel. Every exchange sends one frame per motor and waits for each
motor's feedback frame; a motor that does not answer in ``reply_timeout``, or answers with a
frame that cannot be its feedback, gets its frame resent up to ``retries`` times, then the call
raises ``BackendError`` naming the motor. A rejected frame is never used as a measurement.

The gripper motor is exposed as a normalised opening 0 (closed)..1 (open) between two
configurable motor angles; all other joints are motor radians.

python-can is imported on ``connect()`` only, so importing this module stays cheap.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hw_drivers import damiao_protocol as dm
from hw_drivers.backends.base import Backend, BackendError, JointReading

#: One YAM arm as i2rt configures it: joints 1-3 DM4340, joints 4-6 and the gripper DM4310.
YAM_MOTOR_IDS: tuple[int, ...] = (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07)
YAM_MOTOR_TYPES: tuple[str, ...] = (
    "DM4340",
    "DM4340",
    "DM4340",
    "DM4310",
    "DM4310",
    "DM4310",
    "DM4310",
)
#: i2rt's YAM position gains for joints 1-6; the gripper gains are ours (soft grip).
YAM_KP: tuple[float, ...] = (80.0, 80.0, 80.0, 40.0, 10.0, 10.0, 20.0)
YAM_KD: tuple[float, ...] = (5.0, 5.0, 5.0, 1.5, 1.5, 1.5, 0.5)
#: Gripper motor angle when closed and when fully open. Check against your gripper type.
YAM_GRIPPER_CLOSED_RAD = 0.0
YAM_GRIPPER_OPEN_RAD = -2.7
MASTER_ID_OFFSET = 0x10


@dataclass(frozen=True)
class DamiaoMotor:
    """One motor of an arm."""

    joint_name: str
    motor_id: int
    mtype: dm.MotorType
    master_id: int
    kp: float
    kd: float
    is_gripper: bool = False


@dataclass(frozen=True)
class DamiaoArm:
    """The motors on one CAN channel, in joint order."""

    channel: str
    motors: tuple[DamiaoMotor, ...]
    gripper_closed_rad: float = YAM_GRIPPER_CLOSED_RAD
    gripper_open_rad: float = YAM_GRIPPER_OPEN_RAD


def yam_arm(
    channel: str,
    joint_names: Sequence[str],
    motor_ids: Sequence[int] = YAM_MOTOR_IDS,
    motor_types: Sequence[str] = YAM_MOTOR_TYPES,
    kp: Sequence[float] = YAM_KP,
    kd: Sequence[float] = YAM_KD,
    master_id_offset: int = MASTER_ID_OFFSET,
    gripper_closed_rad: float = YAM_GRIPPER_CLOSED_RAD,
    gripper_open_rad: float = YAM_GRIPPER_OPEN_RAD,
) -> DamiaoArm:
    """Build one arm; a joint whose name ends in ``gripper`` is the gripper."""
    n = len(joint_names)
    for label, values in (
        ("motor_ids", motor_ids),
        ("motor_types", motor_types),
        ("kp", kp),
        ("kd", kd),
    ):
        if len(values) != n:
            raise ValueError(
                f"arm on {channel}: {label} has {len(values)} entries for {n} joints "
                f"{list(joint_names)}"
            )
    if gripper_open_rad == gripper_closed_rad:
        raise ValueError(f"arm on {channel}: gripper open and closed angles are equal")
    motors = tuple(
        DamiaoMotor(
            joint_name=name,
            motor_id=int(mid),
            mtype=dm.motor_type(mtype),
            master_id=int(mid) + master_id_offset,
            kp=float(p),
            kd=float(d),
            is_gripper=name.endswith("gripper"),
        )
        for name, mid, mtype, p, d in zip(joint_names, motor_ids, motor_types, kp, kd, strict=True)
    )
    return DamiaoArm(channel, motors, gripper_closed_rad, gripper_open_rad)


class DamiaoBackend(Backend):
    """Position control of DaMiao motor chains through MIT-mode frames."""

    def __init__(
        self,
        arms: Sequence[DamiaoArm],
        interface: str = "socketcan",
        reply_timeout: float = 0.01,
        retries: int = 3,
        bitrate: int = 1_000_000,
    ) -> None:
        super().__init__([m.joint_name for arm in arms for m in arm.motors])
        if not arms:
            raise ValueError("DamiaoBackend needs at least one arm")
        self.arms = tuple(arms)
        self.interface = interface
        self.reply_timeout = float(reply_timeout)
        self.retries = int(retries)
        self.bitrate = int(bitrate)
        self._buses: list[Any] = []
        self._last_command = np.full(self.num_joints, np.nan)

    @classmethod
    def from_params(cls, params: Any) -> DamiaoBackend:
        """Build from the driver's params (``can_channels``, ``joint_names``, optional
        ``damiao_*`` overrides); the joints are split into equal blocks, one per channel."""
        channels = list(params.can_channels)
        names = list(params.joint_names)
        if not channels or len(names) % len(channels):
            raise BackendError(
                f"damiao backend: {len(names)} joint_names cannot be split over can_channels "
                f"{channels}"
            )
        per_arm = len(names) // len(channels)

        def opt(name: str, default: Any) -> Any:
            value = getattr(params, name, None)
            return (
                default
                if value is None or (isinstance(value, tuple | list) and not value)
                else value
            )

        arms = []
        for index, channel in enumerate(channels):
            arm_names = names[index * per_arm : (index + 1) * per_arm]
            arms.append(
                yam_arm(
                    channel,
                    arm_names,
                    motor_ids=opt("damiao_motor_ids", YAM_MOTOR_IDS[:per_arm]),
                    motor_types=opt("damiao_motor_types", YAM_MOTOR_TYPES[:per_arm]),
                    kp=opt("damiao_kp", YAM_KP[:per_arm]),
                    kd=opt("damiao_kd", YAM_KD[:per_arm]),
                    gripper_closed_rad=float(opt("gripper_closed_rad", YAM_GRIPPER_CLOSED_RAD)),
                    gripper_open_rad=float(opt("gripper_open_rad", YAM_GRIPPER_OPEN_RAD)),
                )
            )
        return cls(
            arms,
            interface=str(opt("can_interface", "socketcan")),
            reply_timeout=float(opt("read_timeout", 0.0) or 0.01),
            retries=int(opt("read_retries", 0) or 3),
        )

    # -- Backend ---------------------------------------------------------------------------
    @property
    def is_connected(self) -> bool:
        return bool(self._buses)

    def connect(self) -> None:
        if self._buses:
            return
        try:
            import can
        except ImportError as exc:  # pragma: no cover - python-can is a project dependency
            raise BackendError("python-can is not installed: pip install python-can") from exc
        try:
            for arm in self.arms:
                kwargs: dict[str, Any] = {"interface": self.interface, "channel": arm.channel}
                if self.interface != "virtual":
                    kwargs["bitrate"] = self.bitrate
                self._buses.append(can.Bus(**kwargs))
        except (OSError, can.CanError, ValueError) as exc:
            self.disconnect()
            raise BackendError(f"cannot open CAN channel: {exc}") from exc
        try:
            # Every motor must answer before we claim to be connected.
            self.read_state()
        except BackendError:
            self.disconnect()
            raise

    def disconnect(self) -> None:
        for bus in self._buses:
            try:
                bus.shutdown()
            except Exception:
                pass
        self._buses = []

    def enable(self) -> None:
        self._require_connected()
        for arm_index, arm in enumerate(self.arms):
            replies = self._exchange(
                arm_index, {i: dm.encode_enable(m.motor_id) for i, m in enumerate(arm.motors)}
            )
            for i, feedback in replies.items():
                if not feedback.enabled:
                    motor = arm.motors[i]
                    state = feedback.fault or "still disabled"
                    raise BackendError(
                        f"DaMiao motor {motor.joint_name} (id 0x{motor.motor_id:02X}) on "
                        f"{arm.channel} did not enable: {state}"
                    )

    def disable(self) -> None:
        # Best effort on every motor: one silent motor must not keep the others energised.
        import can

        for bus, arm in zip(self._buses, self.arms, strict=False):
            for motor in arm.motors:
                frame = dm.encode_disable(motor.motor_id)
                try:
                    bus.send(_message(can, frame))
                except (can.CanError, OSError):
                    pass

    def read_state(self) -> JointReading:
        self._require_connected()
        feedback = self._collect(
            {i: dm.encode_refresh(m.motor_id) for i, m in enumerate(arm.motors)}
            for arm in self.arms
        )
        return self._reading(feedback)

    def write_command(self, positions: np.ndarray, velocities: np.ndarray | None = None) -> None:
        self._require_connected()
        positions = np.asarray(positions, dtype=float)
        if positions.shape != (self.num_joints,) or not np.all(np.isfinite(positions)):
            raise BackendError(
                f"damiao backend: command must be {self.num_joints} finite positions, got "
                f"shape {positions.shape}"
            )
        if velocities is None:
            velocities = np.zeros(self.num_joints)
        velocities = np.nan_to_num(np.asarray(velocities, dtype=float))
        requests = []
        joint = 0
        for arm in self.arms:
            frames = {}
            for i, motor in enumerate(arm.motors):
                target, speed = positions[joint], velocities[joint]
                if motor.is_gripper:
                    span = arm.gripper_open_rad - arm.gripper_closed_rad
                    target = dm.gripper_to_motor(
                        target, arm.gripper_closed_rad, arm.gripper_open_rad
                    )
                    speed = speed * span
                frames[i] = dm.encode_mit(
                    motor.motor_id,
                    dm.MitCommand(target, speed, motor.kp, motor.kd, 0.0),
                    motor.mtype,
                )
                joint += 1
            requests.append(frames)
        self._collect(requests)
        self._last_command = positions.copy()
        self._log_command(time.monotonic(), positions)

    # -- helpers ---------------------------------------------------------------------------
    def _require_connected(self) -> None:
        if not self._buses:
            raise BackendError("damiao backend is not connected")

    def _collect(self, requests_per_arm: Any) -> list[dict[int, dm.Feedback]]:
        return [
            self._exchange(arm_index, frames) for arm_index, frames in enumerate(requests_per_arm)
        ]

    def _exchange(self, arm_index: int, frames: dict[int, dm.CanFrame]) -> dict[int, dm.Feedback]:
        """Send each motor's frame and gather one valid feedback per motor, resending to the
        motors that stayed silent or answered garbage."""
        import can

        arm, bus = self.arms[arm_index], self._buses[arm_index]
        by_master = {arm.motors[i].master_id: i for i in frames}
        replies: dict[int, dm.Feedback] = {}
        last_problem: dict[int, str] = {}
        pending = set(frames)
        for _attempt in range(self.retries + 1):
            # Stale replies from an earlier timed-out exchange must not answer this one.
            while bus.recv(timeout=0.0) is not None:
                pass
            for i in sorted(pending):
                try:
                    bus.send(_message(can, frames[i]))
                except (can.CanError, OSError) as exc:
                    raise BackendError(f"CAN send failed on {arm.channel}: {exc}") from exc
            deadline = time.monotonic() + self.reply_timeout
            while pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                msg = bus.recv(timeout=remaining)
                if msg is None:
                    break
                i = by_master.get(msg.arbitration_id)
                if i is None or i not in pending:
                    continue
                motor = arm.motors[i]
                try:
                    replies[i] = dm.decode_feedback(bytes(msg.data), motor.mtype, motor.motor_id)
                    pending.discard(i)
                except dm.FrameError as exc:
                    last_problem[i] = f"garbled feedback ({exc})"
            for i in pending:
                last_problem.setdefault(i, "no reply")
            if not pending:
                return replies
        i = min(pending)
        motor = arm.motors[i]
        raise BackendError(
            f"DaMiao motor {motor.joint_name} (id 0x{motor.motor_id:02X}) on {arm.channel}: "
            f"{last_problem[i]} after {self.retries + 1} tries"
        )

    def _reading(self, feedback: list[dict[int, dm.Feedback]]) -> JointReading:
        positions, velocities, efforts = [], [], []
        for arm, replies in zip(self.arms, feedback, strict=True):
            for i, motor in enumerate(arm.motors):
                fb = replies[i]
                if fb.fault is not None:
                    raise BackendError(
                        f"DaMiao motor {motor.joint_name} (id 0x{motor.motor_id:02X}) on "
                        f"{arm.channel} reports {fb.fault}"
                    )
                if motor.is_gripper:
                    span = arm.gripper_open_rad - arm.gripper_closed_rad
                    positions.append(
                        dm.motor_to_gripper(
                            fb.position, arm.gripper_closed_rad, arm.gripper_open_rad
                        )
                    )
                    velocities.append(fb.velocity / span)
                else:
                    positions.append(fb.position)
                    velocities.append(fb.velocity)
                efforts.append(fb.torque)
        return JointReading(
            positions=np.array(positions),
            velocities=np.array(velocities),
            efforts=np.array(efforts),
            stamp=time.monotonic(),
        )


def _message(can: Any, frame: dm.CanFrame) -> Any:
    return can.Message(arbitration_id=frame.arbitration_id, data=frame.data, is_extended_id=False)
