"""DaMiao motors over CAN (the YAM arms): one CAN bus per arm, MIT mode, one I/O thread per bus.

Each arm is a chain of motors (YAM: 6 joints + gripper, ids 0x01..0x07, feedback on
``id + 0x10``) on its own bus. A control tick is one MIT exchange per motor: the command frame
goes out and the motor's reply to it *is* the feedback, so the next ``read_state`` returns those
replies without another round trip (a refresh round, 0x7FF/0xCC, is only sent when no MIT
exchange happened since the last read: before enable, in dry run, after a fault). The buses are
served in parallel, each by its own I/O thread, so a tick costs the bus time of one arm, not the
sum; ``hw_drivers.can_budget`` says which control rates fit and ``from_params`` refuses the rest.

Per motor, a reply counts only if it arrived after that motor's request went out (an older one
is a stale reply to an earlier, timed-out request) and decodes as that motor's feedback; a motor
without one by the deadline is asked once more within the same tick, then the call raises
``BackendError`` naming the motor, so the driver holds on the tick the motor fell silent. A
reply carrying a DaMiao fault code (over-temperature, over-current, ...) raises the same way.
Fault codes found at connect are kept and reported; ``enable`` refuses until ``clear_faults``
(the explicit clear-error command) has cleared them. An I/O thread that does not finish its
exchange in ``io_timeout`` is reported as frozen instead of blocking the driver.

Gravity feed-forward: with a rigid-body model per arm (``molmoact2_common.rigid_body``, from the
arm's URDF), each MIT command carries the gravity torque at the measured pose, times a factor
per joint (i2rt's ``gravity_comp_factor``), so the arm does not sag by torque/kp; without one
the feed-forward is zero. It never pushes from a measurement it cannot trust: the feed-forward
is zero while the feedback is older than ``GRAVITY_MAX_FEEDBACK_AGE`` and, per arm, while a measured
joint is further than ``GRAVITY_RANGE_MARGIN`` outside the model's joint range; each torque is
clamped to the most gravity can ever load that joint (``RigidBodyModel.gravity_torque_bounds``
times its factor) and to the motor's torque range.

Turn offsets: a DaMiao motor can power up reporting its angle a whole turn off (its absolute
encoder is single-turn). ``connect`` chooses one offset per motor from its first reading, as the
real YAM stack does at start-up (``hw_drivers.damiao_turns``: joint angles in ``(-pi, pi]``), and
holds it until ``disconnect``: every reading is ``motor - offset`` and every command
``joint + offset``, so limits, preflight, safety, gravity and ``joint_states`` all see joint
angles. A motor whose turn cannot be trusted (ambiguous, outside its limits) is named on its
diagnostics entry and ``enable`` refuses; the next connect chooses again.

The gripper motor is exposed as a normalised opening 0 (closed)..1 (open) between its closed
and open motor angles (after its turn offset), as i2rt does (``hw_drivers.yam_gripper``): fixed
for a crank gripper, found at torque enable for the types i2rt calibrates at every start-up
(``enable`` drives the gripper against both end stops at 0.5 N*m before it returns; held until
``disconnect``). Every gripper command passes the grip-force limit: once the gripper is clogged
(stalled on an object) its target stays within ``limit torque / kp`` of the measured angle.
All other joints are motor radians.

python-can is imported on ``connect()`` only, so importing this module stays cheap.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from hw_drivers import damiao_protocol as dm
from hw_drivers import damiao_turns as turns
from hw_drivers import health as hl
from hw_drivers import yam_gripper as yg
from hw_drivers.backends.base import Backend, BackendError, JointReading
from hw_drivers.can_budget import DEFAULT_MAX_BUS_LOAD, BusBudget

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
#: i2rt's YAM position gains for joints 1-6 and its DM4310 grippers' (linear, crank, flexible).
YAM_KP: tuple[float, ...] = (80.0, 80.0, 80.0, 40.0, 10.0, 10.0, 20.0)
YAM_KD: tuple[float, ...] = (5.0, 5.0, 5.0, 1.5, 1.5, 1.5, 0.5)
MASTER_ID_OFFSET = 0x10

_LOG = logging.getLogger(__name__)


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
    gripper: yg.GripperType = yg.GRIPPER_TYPES[yg.DEFAULT_GRIPPER_TYPE]
    #: (closed, open) motor angles [rad]; None: calibrated at torque enable.
    gripper_limits: tuple[float, float] | None = None
    #: Rigid-body model over the non-gripper joints (``molmoact2_common.rigid_body``) for gravity
    #: feed-forward; None: no feed-forward.
    dynamics: Any = None
    #: Factor on the model's torque per non-gripper joint (i2rt: ``gravity_comp_factor``).
    gravity_factors: tuple[float, ...] = ()


def yam_arm(
    channel: str,
    joint_names: Sequence[str],
    motor_ids: Sequence[int] = YAM_MOTOR_IDS,
    motor_types: Sequence[str] = YAM_MOTOR_TYPES,
    kp: Sequence[float] = YAM_KP,
    kd: Sequence[float] = YAM_KD,
    master_id_offset: int = MASTER_ID_OFFSET,
    gripper_type: str = yg.DEFAULT_GRIPPER_TYPE,
    gripper_limits: tuple[float, float] | None = None,
) -> DamiaoArm:
    """Build one arm; a joint whose name ends in ``gripper`` is the gripper, of i2rt's
    ``gripper_type``: its limits are ``gripper_limits`` (closed, open) [rad] when given, else
    the type's (fixed, or calibrated at torque enable). The motor type and gains of the gripper
    slot default to the type's when ``motor_types``/``kp``/``kd`` are the YAM defaults."""
    spec = yg.gripper_type(gripper_type)
    n = len(joint_names)
    grip = [i for i, name in enumerate(joint_names) if name.endswith("gripper")]
    if motor_types is YAM_MOTOR_TYPES or tuple(motor_types) == YAM_MOTOR_TYPES[:n]:
        motor_types = [spec.motor_type if i in grip else t for i, t in enumerate(motor_types)]
    if kp is YAM_KP or tuple(kp) == YAM_KP[:n]:
        kp = [spec.kp if i in grip else g for i, g in enumerate(kp)]
    if kd is YAM_KD or tuple(kd) == YAM_KD[:n]:
        kd = [spec.kd if i in grip else g for i, g in enumerate(kd)]
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
    for label, values, top in (("kp", kp, dm.KP_MAX), ("kd", kd, dm.KD_MAX)):
        # The MIT frame carries a gain in [0, top] (12 bits; DaMiao's DM_CAN.py controlMIT,
        # i2rt's KP_MAX/KD_MAX): beyond it the encoding saturates and the motor would run a
        # gain nobody configured, a negative one as 0 (a limp joint), without any error.
        bad = [float(g) for g in values if not (math.isfinite(float(g)) and 0.0 <= g <= top)]
        if bad:
            raise ValueError(
                f"arm on {channel}: {label} {bad} outside the MIT range [0, {top:g}] a DaMiao "
                "motor accepts"
            )
    if gripper_limits is None:
        gripper_limits = spec.limits
    if gripper_limits is not None:
        closed, opened = (float(x) for x in gripper_limits)
        if not (math.isfinite(closed) and math.isfinite(opened)) or closed == opened:
            raise ValueError(
                f"arm on {channel}: gripper closed/open angles {closed}, {opened} must be finite"
                " and differ"
            )
        gripper_limits = (closed, opened)
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
    return DamiaoArm(channel, motors, spec, gripper_limits)


#: Wait for replies beyond the bus time of the frames [s]. DaMiao motors answer within a few
#: hundred microseconds; with the 1.9 ms of bus time of a YAM arm, a first try plus one resend
#: to a motor whose reply was lost still fits the 4 ms period at 250 Hz. A reply that comes
#: later than this is discarded as stale when it arrives, and the resend's reply is used.
REPLY_TIMEOUT = 0.001
#: How far [rad] a measured joint may be outside the arm model's joint range before the
#: gravity feed-forward of that arm is switched off as a measurement it cannot trust. i2rt
#: refuses a YAM whose joints are further than 0.15 + 0.1 rad outside its limits
#: (get_robot.py buffer plus motor_chain_robot.py check: a wrong zero offset).
GRAVITY_RANGE_MARGIN = 0.25
#: Age [s] of the measured pose beyond which a command carries no gravity feed-forward: the
#: loop has stalled for a dozen ticks and the pose may be far from where the arm is. Younger
#: poses are good enough for gravity (it changes slowly with the pose), and switching the
#: feed-forward off for one late tick would jolt the arm by a full sag.
GRAVITY_MAX_FEEDBACK_AGE = 0.05
#: Default temperature [degC] (MOS or rotor) from which a motor is reported as running hot. The
#: motor's own over-temperature trip (its OT register) latches fault 0xB/0xC on top of this.
TEMPERATURE_WARN_C = 70.0


class CanLink(Protocol):
    """What the backend needs of one CAN bus (python-can, or an emulator with bus time)."""

    channel: str

    def now(self) -> float: ...

    def send(self, frame: dm.CanFrame) -> None: ...

    def recv(self, timeout: float) -> tuple[dm.CanFrame, float] | None: ...

    def close(self) -> None: ...


class PythonCanLink:
    """A python-can bus as a ``CanLink``; times are python-can's receive stamps (epoch s)."""

    def __init__(self, bus: Any, channel: str) -> None:
        import can

        self._can = can
        self._bus = bus
        self.channel = channel

    def now(self) -> float:
        return time.time()

    def send(self, frame: dm.CanFrame) -> None:
        try:
            self._bus.send(
                self._can.Message(
                    arbitration_id=frame.arbitration_id, data=frame.data, is_extended_id=False
                )
            )
        except (self._can.CanError, OSError) as exc:
            raise OSError(str(exc)) from exc

    def recv(self, timeout: float) -> tuple[dm.CanFrame, float] | None:
        msg = self._bus.recv(timeout=max(0.0, timeout))
        if msg is None:
            return None
        return dm.CanFrame(msg.arbitration_id, bytes(msg.data)), float(msg.timestamp)

    def close(self) -> None:
        try:
            self._bus.shutdown()
        except Exception:  # closing must not fail: the bus may already be gone
            pass


@dataclass
class MotorHealth(hl.MotorHealth):
    """What the backend knows about one motor: the link (``hl.MotorHealth``) and its feedback."""

    error_code: int | None = None  # last reported state nibble
    temperature_mos: int | None = None
    temperature_rotor: int | None = None

    @property
    def fault(self) -> str | None:
        if self.error_code is None or self.error_code in (dm.STATE_DISABLED, dm.STATE_ENABLED):
            return None
        return dm.ERROR_CODES.get(self.error_code, f"code 0x{self.error_code:X}")


@dataclass
class BusHealth:
    exchanges: int = 0
    send_errors: int = 0
    unknown_frames: int = 0
    last_exchange_time: float = 0.0  # [s] of the last exchange, on the bus's clock
    max_exchange_time: float = 0.0
    overruns: int = 0  # exchanges longer than one control period
    problem: str = ""


@dataclass
class ExchangeResult:
    replies: dict[int, dm.Feedback]
    missing: dict[int, str]  # motor index -> why
    elapsed: float
    stamp: float
    send_error: str = ""
    resent: set[int] = field(default_factory=set)


class _BusIO:
    """One bus and the single thread that does all its I/O."""

    def __init__(self, arm: DamiaoArm, link: CanLink) -> None:
        self.arm = arm
        self.link = link
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"can-io-{arm.channel}"
        )
        self.frozen = False

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.link.close()


class DamiaoBackend(Backend):
    """Position control of DaMiao motor chains through MIT-mode frames."""

    def __init__(
        self,
        arms: Sequence[DamiaoArm],
        interface: str = "socketcan",
        reply_timeout: float = REPLY_TIMEOUT,
        retries: int = 1,
        bitrate: int = 1_000_000,
        *,
        control_rate: float | None = None,
        max_bus_load: float = DEFAULT_MAX_BUS_LOAD,
        link_factory: Callable[[str], CanLink] | None = None,
        gravity_scale: float = 1.0,
        temperature_warn: float = TEMPERATURE_WARN_C,
        io_timeout: float = 0.5,
        joint_limits: Sequence[tuple[float, float]] | None = None,
        gripper_max_force: float = yg.DEFAULT_MAX_FORCE,
    ) -> None:
        super().__init__([m.joint_name for arm in arms for m in arm.motors])
        if not arms:
            raise ValueError("DamiaoBackend needs at least one arm")
        self.arms = tuple(arms)
        self.interface = interface
        self.reply_timeout = float(reply_timeout)
        self.retries = int(retries)
        self.bitrate = int(bitrate)
        self.budget = BusBudget(
            self.bitrate, max(len(arm.motors) for arm in self.arms), max_bus_load=max_bus_load
        )
        self.control_rate = control_rate
        if control_rate is not None:
            problem = self.budget.check(control_rate)
            if problem is not None:
                raise BackendError(problem)
        self.link_factory = link_factory
        self.gravity_scale = float(gravity_scale)
        self.temperature_warn = float(temperature_warn)
        self.io_timeout = float(io_timeout)
        self._io: list[_BusIO] = []
        self._enabled = False
        self._feedback: list[dict[int, dm.Feedback]] | None = None
        self._feedback_stamp = 0.0
        self._fresh = False  # feedback from this tick's MIT exchange not yet read
        # Replies of the last command exchange stand for the next read only while they are
        # younger than this; a stalled caller gets a fresh refresh round instead.
        self.max_feedback_age = 2.5 / control_rate if control_rate else 0.02
        self.gravity_max_feedback_age = max(GRAVITY_MAX_FEEDBACK_AGE, self.max_feedback_age)
        self._last_command = np.full(self.num_joints, np.nan)
        self.motor_health = [[MotorHealth() for _ in arm.motors] for arm in self.arms]
        self.bus_health = [BusHealth() for _ in self.arms]
        #: Per arm: whether the last command carried gravity feed-forward, and if not why.
        self.gravity_status = ["off: no arm model" if a.dynamics is None else "" for a in arms]
        if joint_limits is not None and len(joint_limits) != self.num_joints:
            raise ValueError(
                f"damiao backend: {len(joint_limits)} joint_limits for {self.num_joints} joints"
            )
        #: Per joint (lower, upper) in joint units, to check the turn chosen at connect.
        self.joint_limits = None if joint_limits is None else [tuple(lim) for lim in joint_limits]
        #: Per arm, per motor: the turn offset chosen at connect (None while disconnected).
        self.turns: list[list[turns.TurnChoice]] | None = None
        self._turns_trusted = True
        #: Per arm, per motor: the MIT ranges its PMAX/VMAX/TMAX registers hold, read at connect
        #: (None: not answered, or not connected).
        self.held_scales: list[list[dm.MotorType | None]] | None = None
        self._scales_wrong = False
        #: Per arm: the gripper's (closed, open) motor angles in use; None until calibrated.
        self.gripper_limits: list[tuple[float, float] | None] = [a.gripper_limits for a in arms]
        self.gripper_max_force = float(gripper_max_force)
        #: Per arm: the grip-force limit every gripper command passes (None: no gripper).
        self.grip_limiters: list[yg.GripForceLimiter | None] = []
        for arm in self.arms:
            grippers = [m for m in arm.motors if m.is_gripper]
            try:
                self.grip_limiters.append(
                    yg.GripForceLimiter(arm.gripper, self.gripper_max_force, grippers[0].kp)
                    if grippers
                    else None
                )
            except ValueError as exc:
                raise BackendError(f"arm on {arm.channel}: {exc}") from exc
        #: Per arm: what the last gripper calibration found ("" before one).
        self.gripper_calibration = ["" for _ in arms]
        #: Why the last gripper calibration failed; until an operator clears it (clear_faults),
        #: enable refuses instead of trying again: every try drives the gripper to its stops.
        self.calibration_failure = ""

    @classmethod
    def from_params(cls, params: Any) -> DamiaoBackend:
        """Build from the driver's params (``can_channels``, ``joint_names``, optional
        ``damiao_*`` overrides, ``dynamics_urdf``); the joints are split into equal blocks, one
        per channel. Refuses a ``control_rate`` the buses cannot carry."""
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

        prefixes = list(opt("frame_prefixes", [""] * len(channels)))
        urdf = str(opt("dynamics_urdf", ""))
        urdf_names = list(opt("dynamics_joint_names", []))
        factors = [float(f) for f in opt("gravity_joint_factors", [])]
        lower, upper = list(opt("position_lower", [])), list(opt("position_upper", []))
        limits = (
            list(zip(map(float, lower), map(float, upper), strict=True))
            if len(lower) == len(upper) == len(names)
            else None
        )
        gripper = str(opt("gripper_type", yg.DEFAULT_GRIPPER_TYPE))
        closed = float(opt("gripper_closed_rad", 0.0))
        opened = float(opt("gripper_open_rad", 0.0))
        # Equal (the default): the type's limits; different: fixed limits, no calibration.
        fixed = None if closed == opened else (closed, opened)
        arms = []
        for index, channel in enumerate(channels):
            arm_names = names[index * per_arm : (index + 1) * per_arm]
            try:
                arm = yam_arm(
                    channel,
                    arm_names,
                    motor_ids=opt("damiao_motor_ids", YAM_MOTOR_IDS[:per_arm]),
                    motor_types=opt("damiao_motor_types", YAM_MOTOR_TYPES[:per_arm]),
                    kp=opt("damiao_kp", YAM_KP[:per_arm]),
                    kd=opt("damiao_kd", YAM_KD[:per_arm]),
                    gripper_type=gripper,
                    gripper_limits=fixed,
                )
            except ValueError as exc:
                raise BackendError(f"damiao backend: {exc}") from exc
            if urdf:
                prefix = prefixes[index] if index < len(prefixes) else ""
                arm = with_dynamics(arm, urdf, prefix, urdf_names or None, factors or None)
            arms.append(arm)
        return cls(
            arms,
            interface=str(opt("can_interface", "socketcan")),
            reply_timeout=float(opt("read_timeout", 0.0) or REPLY_TIMEOUT),
            retries=int(opt("read_retries", 0) or 1),
            bitrate=int(opt("can_bitrate", 1_000_000)),
            control_rate=float(opt("control_rate", 0.0)) or None,
            max_bus_load=float(opt("max_bus_load", DEFAULT_MAX_BUS_LOAD)),
            gravity_scale=float(opt("gravity_scale", 1.0)),
            temperature_warn=float(opt("motor_temperature_warn", TEMPERATURE_WARN_C)),
            joint_limits=limits,
            gripper_max_force=float(opt("gripper_max_force", yg.DEFAULT_MAX_FORCE)),
        )

    # -- Backend ---------------------------------------------------------------------------
    @property
    def is_connected(self) -> bool:
        return bool(self._io)

    def connect(self) -> None:
        if self._io:
            return
        try:
            for arm in self.arms:
                self._io.append(_BusIO(arm, self._open_link(arm.channel)))
        except BackendError:
            self.disconnect()
            raise
        self._fresh = False
        try:
            # Every motor must answer before we claim to be connected; fault codes it reports
            # are kept (health, ``enable`` refuses) rather than failing the connection, so the
            # operator can see them and clear them.
            self._refresh(raise_on_fault=False)
        except BackendError:
            self.disconnect()
            raise
        # Where i2rt decides too: from the first reading, before any command goes out.
        self._choose_turns()
        try:
            self._read_held_scales()
        except BackendError:
            self.disconnect()
            raise

    def _read_held_scales(self) -> None:
        """Read every motor's PMAX/VMAX/TMAX registers, which the motor decodes each command and
        encodes each reply with: a motor holding other ranges than its type's would run every
        position, velocity and torque rescaled, with no error anywhere (i2rt's register tool
        warns of exactly this), so ``enable`` refuses it. A motor that does not answer the reads
        is only reported: its scale stays unverified, as it is for i2rt's own driver."""
        futures = [io.pool.submit(self._scale_exchange, a) for a, io in enumerate(self._io)]
        held = self._results_per_arm(futures, "reading the motors' registers")
        self.held_scales = held
        for arm, row in zip(self.arms, held, strict=True):
            for motor, scale in zip(arm.motors, row, strict=True):
                if scale is None:
                    _LOG.warning(
                        "DaMiao motor %s (id 0x%02X) on %s did not answer the PMAX/VMAX/TMAX "
                        "register reads; its MIT scale is assumed to be %s's, unverified",
                        motor.joint_name,
                        motor.motor_id,
                        arm.channel,
                        motor.mtype.name,
                    )
        problems = self._scale_problems()
        self._scales_wrong = bool(problems)
        for problem in problems:
            _LOG.error("DaMiao motor %s; torque stays off", problem)

    def _scale_exchange(self, arm_index: int) -> list[dm.MotorType | None]:
        """Read the three range registers of every motor of one arm (in its bus's I/O thread),
        one motor at a time: a burst of every read at once would overflow the CAN device's
        transmit queue (10 frames by Linux's default), and the rest would fail with ENOBUFS.
        A register still unanswered after ``retries`` resends leaves that motor None."""
        arm, link = self.arms[arm_index], self._io[arm_index].link
        rids = (dm.REG_PMAX, dm.REG_VMAX, dm.REG_TMAX)
        row: list[dm.MotorType | None] = []
        for motor in arm.motors:
            values: dict[int, float] = {}
            for _attempt in range(self.retries + 1):
                pending = [rid for rid in rids if rid not in values]
                if not pending:
                    break
                try:
                    for rid in pending:
                        link.send(dm.encode_read_register(motor.motor_id, rid))
                except OSError as exc:
                    self.bus_health[arm_index].send_errors += 1
                    _LOG.warning("register reads on %s not sent: %s", arm.channel, exc)
                    break
                wire = len(pending) * 2 * self.budget.frame_bits / float(self.bitrate)
                deadline = link.now() + wire + self.reply_timeout
                while len(values) < len(rids):
                    got = link.recv(deadline - link.now())
                    if got is None:
                        break
                    # Matched by the echo alone: sources disagree on the id a register reply
                    # comes on (the master id in DaMiao's DM_CAN.py, 0x7FF in i2rt's tool).
                    for rid in pending:
                        value = dm.decode_register_reply(got[0].data, motor.motor_id, rid)
                        if value is not None:
                            values[rid] = value
                            break
            if len(values) == len(rids):
                held = (values[rid] for rid in rids)
                row.append(dm.MotorType(f"{motor.mtype.name} as held", *held))
            else:
                row.append(None)
        return row

    def _scale_problems(self) -> list[str]:
        return [
            f"{m.joint_name} (id 0x{m.motor_id:02X}) on {arm.channel}: {problem}"
            for arm, row in zip(self.arms, self.held_scales or [], strict=False)
            for m, held in zip(arm.motors, row, strict=True)
            if held is not None and (problem := dm.scale_mismatch(held, m.mtype))
        ]

    def _refuse_wrong_scales(self, what: str) -> None:
        problems = self._scale_problems()
        if problems:
            raise BackendError(
                f"MIT scale mismatch, {what}: "
                + "; ".join(problems)
                + ". Set damiao_motor_types to the motors' types, or write the motors' PMAX/VMAX/"
                "TMAX registers (i2rt's dm_motor_registers.py) to their type's values."
            )

    def _motor_limits(
        self, arm: DamiaoArm, joint: int, motor: DamiaoMotor
    ) -> tuple[float, float] | None:
        """The joint's limits in motor radians (the gripper's opening mapped to its motor)."""
        if self.joint_limits is None:
            return None
        lower, upper = self.joint_limits[joint]
        if not motor.is_gripper:
            return lower, upper
        limits = self.gripper_limits[self.arms.index(arm)]
        if limits is None:
            return None
        ends = [dm.gripper_to_motor(x, *limits) for x in (lower, upper)]
        return min(ends), max(ends)

    def _choose_turns(self) -> None:
        """One offset per motor from the power-up readings, held until ``disconnect``."""
        chosen, joint = [], 0
        for arm, replies in zip(self.arms, self._replies, strict=True):
            row = []
            for i, motor in enumerate(arm.motors):
                if motor.is_gripper and self.gripper_limits[len(chosen)] is None:
                    # Calibrated in the turn this session counts in: any turn will do.
                    position = replies[i].position
                    choice = turns.TurnChoice(position, turns.wrap_offset(position))
                else:
                    choice = turns.choose_turn(
                        replies[i].position, self._motor_limits(arm, joint, motor)
                    )
                row.append(choice)
                joint += 1
                if choice.problem:
                    _LOG.error(
                        "DaMiao motor %s (id 0x%02X) on %s: %s; torque stays off",
                        motor.joint_name,
                        motor.motor_id,
                        arm.channel,
                        choice.describe(),
                    )
                elif choice.turns:
                    _LOG.warning(
                        "DaMiao motor %s (id 0x%02X) on %s: %s",
                        motor.joint_name,
                        motor.motor_id,
                        arm.channel,
                        choice.describe(),
                    )
            chosen.append(row)
        self.turns = chosen
        self._turns_trusted = not any(c.problem for row in chosen for c in row)

    def _turn_problems(self) -> list[str]:
        return [
            f"{m.joint_name} (id 0x{m.motor_id:02X}) on {arm.channel}: {choice.describe()}"
            for arm, row in zip(self.arms, self.turns or [], strict=False)
            for m, choice in zip(arm.motors, row, strict=True)
            if choice.problem
        ]

    def _offset(self, arm_index: int, motor_index: int) -> float:
        return 0.0 if self.turns is None else self.turns[arm_index][motor_index].offset

    def _open_link(self, channel: str) -> CanLink:
        if self.link_factory is not None:
            return self.link_factory(channel)
        try:
            import can
        except ImportError as exc:  # pragma: no cover - python-can is a project dependency
            raise BackendError("python-can is not installed: pip install python-can") from exc
        kwargs: dict[str, Any] = {"interface": self.interface, "channel": channel}
        if self.interface != "virtual":
            kwargs["bitrate"] = self.bitrate
        try:
            return PythonCanLink(can.Bus(**kwargs), channel)
        except (OSError, can.CanError, ValueError) as exc:
            raise BackendError(f"cannot open CAN channel {channel}: {exc}") from exc

    def disconnect(self) -> None:
        for io in self._io:
            io.close()
        self._io = []
        self._enabled = False
        self._fresh = False
        self.turns = None
        self._turns_trusted = True
        self.held_scales = None
        self._scales_wrong = False
        # A calibration holds in the turn the motor counted in while this session had it.
        self.gripper_limits = [a.gripper_limits for a in self.arms]
        for limiter in self.grip_limiters:
            if limiter is not None:
                limiter.reset()

    def _refuse_untrusted_turns(self, what: str) -> None:
        untrusted = self._turn_problems()
        if untrusted:
            raise BackendError(
                f"joint angle not trusted, {what}: "
                + "; ".join(untrusted)
                + ". With the torque off, move the joint inside its limits and away from +-pi; "
                "the driver reconnects and chooses again."
            )

    def enable(self) -> None:
        self._require_connected()
        self._refuse_untrusted_turns("torque not enabled")
        self._refuse_wrong_scales("torque not enabled")
        if self.calibration_failure:
            raise BackendError(
                f"torque not enabled: the gripper calibration failed ({self.calibration_failure})"
                " and is not retried on its own, since each try moves the gripper; empty the "
                "gripper, check gripper_type, then clear it with ~/clear_motor_faults"
            )
        faulted = self._faulted_motors()
        if faulted:
            raise BackendError(
                "motor faults present, torque not enabled: "
                + "; ".join(faulted)
                + ". Check the motors, then clear the faults (driver service ~/clear_motor_faults"
                " sends DaMiao's clear-error command) or power-cycle."
            )
        results = self._exchange_all(
            [
                {i: dm.encode_enable(m.motor_id) for i, m in enumerate(arm.motors)}
                for arm in self.arms
            ]
        )
        self._raise_missing(results)
        for arm_index, (arm, result) in enumerate(zip(self.arms, results, strict=True)):
            for i, feedback in result.replies.items():
                if not feedback.enabled:
                    motor = arm.motors[i]
                    state = feedback.fault or "still disabled"
                    self.motor_health[arm_index][i].problem = f"did not enable: {state}"
                    raise BackendError(
                        f"DaMiao motor {motor.joint_name} (id 0x{motor.motor_id:02X}) on "
                        f"{arm.channel} did not enable: {state}"
                    )
        self._enabled = True
        self._fresh = False
        for limiter in self.grip_limiters:
            if limiter is not None:
                limiter.reset()
        if any(
            lim is None and any(m.is_gripper for m in arm.motors)
            for arm, lim in zip(self.arms, self.gripper_limits, strict=True)
        ):
            try:
                self.calibrate_grippers()
            except BaseException:
                try:
                    self.disable()
                except BackendError:
                    pass
                raise

    def uncalibrated_joints(self) -> list[str]:
        """Grippers whose limits ``enable`` has still to find (their opening reads NaN)."""
        return [
            m.joint_name
            for arm, lim in zip(self.arms, self.gripper_limits, strict=True)
            for m in arm.motors
            if m.is_gripper and lim is None
        ]

    def _wait(self, seconds: float) -> None:
        """Let ``seconds`` pass on the buses' clocks (an emulated bus's virtual time)."""
        sleepers = [getattr(io.link, "sleep_until", None) for io in self._io]
        if all(sleepers):
            for io, sleep_until in zip(self._io, sleepers, strict=True):
                sleep_until(io.link.now() + seconds)
        else:
            time.sleep(seconds)

    def calibrate_grippers(self) -> None:
        """Find the limits of every gripper that has none, as i2rt does at start-up: a constant
        ``CALIBRATION_TORQUE`` (kp = kd = 0) towards closed, then towards open, each until the
        angle stops moving or ``CALIBRATION_MAX_DURATION``; the arm joints hold where they are.
        Raises ``BackendError`` (limits left unset) when an end stop is not found or the stroke
        does not match the gripper type."""
        self._require_connected()
        if self._feedback is None:
            self._refresh(raise_on_fault=True)
        todo = [
            a
            for a, arm in enumerate(self.arms)
            if self.gripper_limits[a] is None and any(m.is_gripper for m in arm.motors)
        ]
        hold = [{i: fb.position for i, fb in replies.items()} for replies in self._replies]
        grip = {a: next(i for i, m in enumerate(self.arms[a].motors) if m.is_gripper) for a in todo}
        period = 1.0 / self.control_rate if self.control_rate else 0.004
        # Per arm: sweep index (0 closing: the larger angle on every type; 1 opening; 2 done),
        # the sweep's detector, the pause end, angles seen, which sweeps ended on a stall.
        sweep = dict.fromkeys(todo, 0)
        start = {a: self._io[a].link.now() for a in todo}
        detector = {a: yg.StallDetector(start[a]) for a in todo}
        pause_until: dict[int, float | None] = dict.fromkeys(todo)
        seen = {a: [hold[a][grip[a]] - self._offset(a, grip[a])] for a in todo}
        stalled = {a: [False, False] for a in todo}
        _LOG.info("calibrating gripper limits on %s", ", ".join(self.arms[a].channel for a in todo))
        while any(sweep[a] < 2 for a in todo):
            torques = self.gravity_torques()
            requests, joint = [], 0
            for a, arm in enumerate(self.arms):
                frames = {}
                for i, motor in enumerate(arm.motors):
                    if a in grip and i == grip[a] and sweep[a] < 2:
                        sign = 1.0 if sweep[a] == 0 else -1.0
                        command = dm.MitCommand(
                            self._replies[a][i].position,
                            0.0,
                            0.0,
                            0.0,
                            sign * yg.CALIBRATION_TORQUE,
                        )
                    else:
                        if a in grip and i == grip[a]:
                            hold[a][i] = self._replies[a][i].position
                        command = dm.MitCommand(
                            hold[a][i], 0.0, motor.kp, motor.kd, float(torques[joint])
                        )
                    frames[i] = dm.encode_mit(motor.motor_id, command, motor.mtype)
                    joint += 1
                requests.append(frames)
            self._accept(self._exchange_all(requests), raise_on_fault=True)
            for a in todo:
                if sweep[a] >= 2:
                    continue
                now = self._io[a].link.now()
                angle = self._replies[a][grip[a]].position - self._offset(a, grip[a])
                seen[a].append(angle)
                if pause_until[a] is not None:
                    if now >= pause_until[a]:
                        sweep[a] += 1
                        pause_until[a] = None
                        detector[a] = yg.StallDetector(now)
                elif detector[a].update(now, angle):
                    stalled[a][sweep[a]] = detector[a].stalled
                    pause_until[a] = now + yg.CALIBRATION_PAUSE
            self._wait(period)
        self._fresh = False
        problems = []
        for a in todo:
            arm = self.arms[a]
            limits, why = yg.calibrated_limits(arm.gripper, seen[a], tuple(stalled[a]))
            if limits is None:
                self.gripper_calibration[a] = f"failed: {why}"
                motor = arm.motors[grip[a]]
                problems.append(f"{motor.joint_name} on {arm.channel}: {why}")
                continue
            self.gripper_limits[a] = limits
            self.gripper_calibration[a] = (
                f"closed {limits[0]:.3f} rad, open {limits[1]:.3f} rad "
                f"(stroke {limits[0] - limits[1]:.3f} rad)"
            )
            _LOG.info("gripper on %s calibrated: %s", arm.channel, self.gripper_calibration[a])
        if problems:
            self.calibration_failure = "; ".join(problems)
            raise BackendError(
                "gripper calibration failed, torque off: "
                + self.calibration_failure
                + ". Empty the gripper and check gripper_type, then call ~/clear_motor_faults "
                "to calibrate again at the next enable."
            )

    def disable(self) -> None:
        """Torque off on every motor, best effort: one silent motor or bus must not keep the
        others energised; what failed is raised afterwards as one ``BackendError``."""
        self._enabled = False
        self._fresh = False
        failures = []
        for io in self._io:
            for motor in io.arm.motors:
                try:
                    # Straight from the caller's thread: a frozen I/O thread must not keep the
                    # motors energised.
                    io.link.send(dm.encode_disable(motor.motor_id))
                except OSError as exc:
                    failures.append(f"{motor.joint_name} on {io.arm.channel}: {exc}")
        if failures:
            raise BackendError("disable frames not sent: " + "; ".join(failures))

    def clear_faults(self) -> list[str]:
        """Send DaMiao's clear-error command (0xFB) to every motor with a fault code, then read
        them again; returns one line per motor that had one. Also releases a failed gripper
        calibration, which then runs again at the next enable."""
        lines = []
        if self.calibration_failure:
            lines.append(
                f"gripper calibration ({self.calibration_failure}) -> runs again at the next "
                "enable"
            )
            self.calibration_failure = ""
            if not self.is_connected:
                return lines  # motor fault codes are read and cleared over the bus
        self._require_connected()
        targets = [
            {
                i: dm.encode_clear_error(m.motor_id)
                for i, m in enumerate(arm.motors)
                if self.motor_health[a][i].fault is not None
            }
            for a, arm in enumerate(self.arms)
        ]
        if not any(targets):
            return lines
        before = {
            (a, i): self.motor_health[a][i].fault
            for a, frames in enumerate(targets)
            for i in frames
        }
        self._exchange_all(targets)
        self._refresh(raise_on_fault=False)
        for (a, i), fault in before.items():
            motor = self.arms[a].motors[i]
            after = self.motor_health[a][i].fault
            lines.append(
                f"{motor.joint_name} (id 0x{motor.motor_id:02X}): {fault} -> "
                + (after if after else "cleared")
            )
        return lines

    def read_state(self) -> JointReading:
        self._require_connected()
        if self._fresh and self._feedback_age() > self.max_feedback_age:
            self._fresh = False
        if not self._fresh:
            self._refresh(raise_on_fault=self._enabled)
        self._fresh = False
        return self._reading(self._replies)

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
        if not self._turns_trusted:
            # Also here: a motor left enabled by a previous session would follow the command.
            self._refuse_untrusted_turns("no command sent")
        if self._scales_wrong:
            self._refuse_wrong_scales("no command sent")
        uncalibrated = self.uncalibrated_joints()
        if uncalibrated:
            raise BackendError(
                f"gripper limits not calibrated yet ({', '.join(uncalibrated)}), no command "
                "sent: enable calibrates them"
            )
        torques = self.gravity_torques()
        requests = []
        joint = 0
        for a, arm in enumerate(self.arms):
            frames = {}
            for i, motor in enumerate(arm.motors):
                target, speed = positions[joint], velocities[joint]
                if motor.is_gripper:
                    target, speed = self._gripper_target(a, i, target, speed)
                # The motor counts in its own turn: joint + the offset chosen at connect.
                target = target + self._offset(a, i)
                frames[i] = dm.encode_mit(
                    motor.motor_id,
                    dm.MitCommand(target, speed, motor.kp, motor.kd, float(torques[joint])),
                    motor.mtype,
                )
                joint += 1
            requests.append(frames)
        results = self._exchange_all(requests)
        self._accept(results, raise_on_fault=True)
        self._fresh = True
        self._last_command = positions.copy()
        self._log_command(time.monotonic(), positions)

    def _gripper_target(self, a: int, i: int, opening: float, speed: float) -> tuple[float, float]:
        """The motor angle and speed [joint frame] to command for ``opening``: every gripper
        command passes here, through the arm's grip-force limit."""
        limits = self.gripper_limits[a]
        if limits is None:
            # Gripper commands are only made once its limits are known (calibrated or fixed).
            raise RuntimeError(f"damiao: gripper of arm {a} commanded before its limits are known")
        target = dm.gripper_to_motor(opening, *limits)
        speed = speed * (limits[1] - limits[0])
        limiter = self.grip_limiters[a]
        if limiter is None or self._feedback is None or i not in self._feedback[a]:
            return target, speed
        fb = self._feedback[a][i]
        limited = limiter.limit(
            stamp=self._feedback_stamp,
            angle=fb.position - self._offset(a, i),
            velocity=fb.velocity,
            effort=fb.torque,
            target=target,
            limits=limits,
        )
        # Clogged: no velocity feed-forward either, kd * speed would push on top of the limit.
        return limited, 0.0 if limiter.clogged else speed

    def _feedback_age(self) -> float:
        """Seconds since the last accepted exchange, on the buses' own clock."""
        return max(io.link.now() for io in self._io) - self._feedback_stamp

    # -- gravity ---------------------------------------------------------------------------
    def gravity_torques(self, positions: np.ndarray | None = None) -> np.ndarray:
        """Feed-forward torque per joint [N*m] at ``positions`` (default: the last measured
        pose, the one the next command carries: zero while that feedback is older than
        ``gravity_max_feedback_age``); zero for grippers, for arms without a model and for an arm
        measured outside its model's range; clamped to what gravity can load each joint."""
        torques = np.zeros(self.num_joints)
        if positions is None:
            if self._feedback is None:
                return torques
            age = self._feedback_age() if self._io else 0.0
            if age > self.gravity_max_feedback_age:
                why = f"off: feedback {age:.3f} s old (> {self.gravity_max_feedback_age:g} s)"
                self.gravity_status = [
                    why if arm.dynamics is not None else status
                    for arm, status in zip(self.arms, self.gravity_status, strict=True)
                ]
                return torques
            positions = self._reading(self._feedback).positions
        positions = np.asarray(positions, dtype=float)
        joint = 0
        for a, arm in enumerate(self.arms):
            count = len(arm.motors)
            if arm.dynamics is not None:
                q_arm = positions[joint : joint + count]
                torques[joint : joint + count] = self._arm_gravity(a, q_arm)
            joint += count
        return torques

    def _arm_gravity(self, a: int, q_arm: np.ndarray) -> np.ndarray:
        arm = self.arms[a]
        out = np.zeros(len(arm.motors))
        arm_joints = [k for k, m in enumerate(arm.motors) if not m.is_gripper]
        q = q_arm[arm_joints]
        lower, upper = arm.dynamics.position_limits()
        outside = ~np.isfinite(q) | (q < lower - GRAVITY_RANGE_MARGIN)
        outside |= q > upper + GRAVITY_RANGE_MARGIN
        if np.any(outside):
            i = int(np.argmax(outside))
            self.gravity_status[a] = (
                f"off: {arm.motors[arm_joints[i]].joint_name} measured at {q[i]:.3f} rad, outside "
                f"the model's range [{lower[i]:.3f}, {upper[i]:.3f}] by more than "
                f"{GRAVITY_RANGE_MARGIN} rad"
            )
            return out
        factors = np.asarray(arm.gravity_factors or (1.0,) * len(arm_joints)) * self.gravity_scale
        bounds = arm.dynamics.gravity_torque_bounds() * np.abs(factors)
        tau = arm.dynamics.gravity_torques(q) * factors
        for j, (k, value) in enumerate(zip(arm_joints, tau, strict=True)):
            limit = min(arm.motors[k].mtype.t_max, float(bounds[j]))
            out[k] = float(np.clip(value, -limit, limit))
        self.gravity_status[a] = "on"
        return out

    def sag_note(self) -> str:
        """One log line about gravity compensation: on, or off with the expected sag."""
        lines = []
        for arm in self.arms:
            if arm.dynamics is not None:
                factors = ", ".join(f"{f:g}" for f in arm.gravity_factors) or "1"
                lines.append(
                    f"{arm.channel}: gravity feed-forward from the arm model (factors {factors}"
                    f", scale {self.gravity_scale:g})"
                )
                continue
            per_joint = ", ".join(
                f"{m.joint_name} {1.0 / m.kp:.3f} rad/(N*m)" for m in arm.motors if not m.is_gripper
            )
            lines.append(
                f"{arm.channel}: no arm model (dynamics_urdf), gravity feed-forward off; each "
                f"joint sags by its gravity torque / kp: {per_joint}"
            )
        return "; ".join(lines)

    # -- health ----------------------------------------------------------------------------
    def health(self) -> list[hl.HealthEntry]:
        entries = []
        for a, arm in enumerate(self.arms):
            bus = self.bus_health[a]
            io = self._io[a] if a < len(self._io) else None
            level, message = hl.OK, "ok"
            if io is not None and io.frozen:
                level, message = hl.ERROR, f"I/O thread frozen (no exchange in {self.io_timeout} s)"
            elif bus.problem:
                level, message = hl.ERROR, bus.problem
            elif not self._io:
                level, message = hl.WARN, "not connected"
            elif bus.overruns:
                level, message = hl.WARN, f"{bus.overruns} exchanges longer than a control period"
            entries.append(
                hl.HealthEntry(
                    name=f"damiao bus {arm.channel}",
                    level=level,
                    message=message,
                    hardware_id=arm.channel,
                    values={
                        "exchanges": str(bus.exchanges),
                        "send_errors": str(bus.send_errors),
                        "unknown_frames": str(bus.unknown_frames),
                        "last_exchange_ms": f"{bus.last_exchange_time * 1e3:.3f}",
                        "max_exchange_ms": f"{bus.max_exchange_time * 1e3:.3f}",
                        "overruns": str(bus.overruns),
                        "gravity_feed_forward": self.gravity_status[a] or "not commanded yet",
                        "budget": self.budget.describe(self.control_rate or 0.0)
                        if self.control_rate
                        else f"{self.budget.tick_bus_time * 1e3:.2f} ms per tick",
                    },
                )
            )
            now = self._io[a].link.now() if a < len(self._io) else None
            for i, motor in enumerate(arm.motors):
                h = self.motor_health[a][i]
                choice = self.turns[a][i] if self.turns is not None else None
                entry = hl.motor_entry(
                    f"damiao motor {motor.joint_name} (id 0x{motor.motor_id:02X}, {arm.channel})",
                    f"{arm.channel}:0x{motor.motor_id:02X}",
                    h,
                    temperatures={
                        "temperature_mos_c": h.temperature_mos,
                        "temperature_rotor_c": h.temperature_rotor,
                    },
                    temperature_warn=self.temperature_warn,
                    now=now,
                    values={
                        "state": "no reply yet"
                        if h.error_code is None
                        else dm.ERROR_CODES.get(h.error_code, hex(h.error_code)),
                        "turn_offset_rad": "" if choice is None else f"{choice.offset:.6f}",
                        "turn": "not connected" if choice is None else choice.describe(),
                        "mit_scale": self._scale_text(a, i),
                        **(self._gripper_values(a) if motor.is_gripper else {}),
                    },
                )
                scale_problem = self._scale_problem(a, i)
                if scale_problem and entry.level != hl.ERROR:
                    entry = dataclasses.replace(
                        entry, level=hl.ERROR, message=f"MIT scale mismatch: {scale_problem}"
                    )
                if choice is not None and choice.problem and entry.level != hl.ERROR:
                    entry = dataclasses.replace(
                        entry,
                        level=hl.ERROR,
                        message=f"joint angle not trusted: {choice.describe()}",
                    )
                entries.append(entry)
        return entries

    def _scale_problem(self, a: int, i: int) -> str | None:
        held = self.held_scales[a][i] if self.held_scales is not None else None
        return None if held is None else dm.scale_mismatch(held, self.arms[a].motors[i].mtype)

    def _scale_text(self, a: int, i: int) -> str:
        if self.held_scales is None:
            return "not connected"
        held = self.held_scales[a][i]
        if held is None:
            return f"unverified (registers not read), assumed {self.arms[a].motors[i].mtype.name}"
        return f"PMAX {held.p_max:g}, VMAX {held.v_max:g}, TMAX {held.t_max:g}"

    def _gripper_values(self, a: int) -> dict[str, str]:
        arm, limits, limiter = self.arms[a], self.gripper_limits[a], self.grip_limiters[a]
        return {
            "gripper_type": arm.gripper.name,
            "gripper_limits_rad": "not calibrated (enable calibrates)"
            if limits is None
            else f"closed {limits[0]:.4f}, open {limits[1]:.4f}",
            "gripper_calibration": self.gripper_calibration[a]
            or ("fixed limits" if arm.gripper_limits is not None else "not run"),
            "grip_force_limit_n": f"{self.gripper_max_force:g}",
            "gripper_clogged": str(bool(limiter and limiter.clogged)).lower(),
        }

    def _faulted_motors(self) -> list[str]:
        return [
            f"{m.joint_name} (id 0x{m.motor_id:02X}) on {arm.channel}: "
            f"{self.motor_health[a][i].fault}"
            for a, arm in enumerate(self.arms)
            for i, m in enumerate(arm.motors)
            if self.motor_health[a][i].fault is not None
        ]

    # -- exchanges -------------------------------------------------------------------------
    def _require_connected(self) -> None:
        if not self._io:
            raise BackendError("damiao backend is not connected")

    @property
    def _replies(self) -> list[dict[int, dm.Feedback]]:
        """The feedback the last exchange kept; every caller runs after one. A real check, not
        an ``assert``: ``python -O`` drops those, and a None would fail further on."""
        if self._feedback is None:
            raise RuntimeError("damiao: no motor feedback yet (read before any exchange)")
        return self._feedback

    def _refresh(self, raise_on_fault: bool) -> None:
        results = self._exchange_all(
            [
                {i: dm.encode_refresh(m.motor_id) for i, m in enumerate(arm.motors)}
                for arm in self.arms
            ]
        )
        self._accept(results, raise_on_fault=raise_on_fault)

    def _accept(self, results: list[ExchangeResult], raise_on_fault: bool) -> None:
        """Keep the replies as the latest feedback; raise naming the first silent or faulted
        motor."""
        self._raise_missing(results)
        self._feedback = [r.replies for r in results]
        self._feedback_stamp = max(r.stamp for r in results)
        if raise_on_fault:
            faulted = self._faulted_motors()
            if faulted:
                raise BackendError("motor fault, holding: " + "; ".join(faulted))

    def _raise_missing(self, results: list[ExchangeResult]) -> None:
        for arm, result in zip(self.arms, results, strict=True):
            if result.send_error:
                raise BackendError(f"CAN send failed on {arm.channel}: {result.send_error}")
            if result.missing:
                i = min(result.missing)
                motor = arm.motors[i]
                others = len(result.missing) - 1
                raise BackendError(
                    f"DaMiao motor {motor.joint_name} (id 0x{motor.motor_id:02X}) on "
                    f"{arm.channel}: {result.missing[i]} after {self.retries + 1} tries"
                    + (f" (and {others} more motors on this bus)" if others else "")
                )

    def _exchange_all(self, frames_per_arm: list[dict[int, dm.CanFrame]]) -> list[ExchangeResult]:
        """Run one exchange on every bus at once (each in its bus's I/O thread)."""
        self._require_connected()
        futures = []
        for a, (io, frames) in enumerate(zip(self._io, frames_per_arm, strict=True)):
            if io.frozen:
                raise BackendError(
                    f"CAN I/O thread of {io.arm.channel} is frozen (an exchange did not finish "
                    f"in {self.io_timeout} s); reconnect needed"
                )
            futures.append(io.pool.submit(self._exchange, a, frames))
        return self._results_per_arm(futures, "its exchange")

    def _results_per_arm(self, futures: list[concurrent.futures.Future], what: str) -> list:
        """Each arm's I/O thread's result, in arm order. A thread that does not finish within
        ``io_timeout`` is marked frozen (no exchange goes to it until a reconnect) and the
        whole call fails."""
        results = []
        for io, future in zip(self._io, futures, strict=True):
            try:
                results.append(future.result(timeout=self.io_timeout))
            except concurrent.futures.TimeoutError:
                io.frozen = True
                raise BackendError(
                    f"CAN I/O thread of {io.arm.channel} did not finish {what} in "
                    f"{self.io_timeout} s (frozen)"
                ) from None
        return results

    def _exchange(self, arm_index: int, frames: dict[int, dm.CanFrame]) -> ExchangeResult:
        """Send each motor its frame and gather one valid reply per motor (runs in the bus's
        I/O thread). A motor still silent after the first wait is asked again ``retries``
        times; the whole exchange is bounded by the bus time it needs plus ``reply_timeout``
        per try."""
        arm, link = self.arms[arm_index], self._io[arm_index].link
        health, bus = self.motor_health[arm_index], self.bus_health[arm_index]
        by_master = {arm.motors[i].master_id: i for i in frames}
        replies: dict[int, dm.Feedback] = {}
        problems: dict[int, str] = {}
        sent_at: dict[int, float] = {}
        start = link.now()
        # Replies to an earlier, timed-out exchange must not answer this one.
        while (old := link.recv(0.0)) is not None:
            i = by_master.get(old[0].arbitration_id)
            if i is not None:
                health[i].stale += 1
        pending = set(frames)
        resent: set[int] = set()
        for attempt in range(self.retries + 1):
            try:
                for i in sorted(pending):
                    sent_at[i] = link.now()
                    link.send(frames[i])
            except OSError as exc:
                bus.send_errors += 1
                bus.problem = f"send failed: {exc}"
                return ExchangeResult(replies, {}, link.now() - start, link.now(), str(exc))
            wire = len(pending) * 2 * self.budget.frame_bits / float(self.bitrate)
            deadline = link.now() + wire + self.reply_timeout
            while pending:
                got = link.recv(deadline - link.now())
                if got is None:
                    break
                frame, stamp = got
                i = by_master.get(frame.arbitration_id)
                if i is None:
                    bus.unknown_frames += 1
                    continue
                motor = arm.motors[i]
                # A register reply that came late (the adapter's latency, a resend) is stale,
                # never feedback, though it decodes as one.
                if i not in pending or stamp < sent_at[i] or dm.is_register_reply(
                    frame.data, motor.motor_id
                ):
                    health[i].stale += 1
                    continue
                try:
                    feedback = dm.decode_feedback(frame.data, motor.mtype, motor.motor_id)
                except dm.FrameError as exc:
                    health[i].garbled += 1
                    problems[i] = f"garbled feedback ({exc})"
                    continue
                replies[i] = feedback
                pending.discard(i)
                h = health[i]
                h.error_code = feedback.error_code
                h.temperature_mos = feedback.temperature_mos
                h.temperature_rotor = feedback.temperature_rotor
                h.last_reply = stamp
                h.replies += 1
                h.problem = ""
            for i in pending:
                health[i].missed += 1
                problems.setdefault(i, "no reply")
            if not pending:
                break
            if attempt < self.retries:
                resent |= pending
        elapsed = link.now() - start
        bus.exchanges += 1
        bus.last_exchange_time = elapsed
        bus.max_exchange_time = max(bus.max_exchange_time, elapsed)
        if self.control_rate and elapsed > 1.0 / self.control_rate:
            bus.overruns += 1
        bus.problem = ""
        missing = {i: problems[i] for i in pending}
        for i, why in missing.items():
            age = (
                "never answered"
                if health[i].last_reply is None
                else f"last reply {link.now() - health[i].last_reply:.3f} s ago"
            )
            health[i].problem = f"{why} ({age})"
        return ExchangeResult(replies, missing, elapsed, link.now(), "", resent)

    def _reading(self, feedback: list[dict[int, dm.Feedback]]) -> JointReading:
        positions, velocities, efforts = [], [], []
        for a, (arm, replies) in enumerate(zip(self.arms, feedback, strict=True)):
            for i, motor in enumerate(arm.motors):
                fb = replies[i]
                angle = fb.position - self._offset(a, i)
                if motor.is_gripper:
                    limits = self.gripper_limits[a]
                    if limits is None:  # not calibrated yet: the opening is not known
                        positions.append(math.nan)
                        velocities.append(math.nan)
                        efforts.append(fb.torque)
                        continue
                    positions.append(dm.motor_to_gripper(angle, *limits))
                    velocities.append(fb.velocity / (limits[1] - limits[0]))
                else:
                    positions.append(angle)
                    velocities.append(fb.velocity)
                efforts.append(fb.torque)
        return JointReading(
            positions=np.array(positions),
            velocities=np.array(velocities),
            efforts=np.array(efforts),
            stamp=time.monotonic(),
        )


def with_dynamics(
    arm: DamiaoArm,
    urdf: str,
    prefix: str = "",
    joint_names: Sequence[str] | None = None,
    factors: Sequence[float] | None = None,
) -> DamiaoArm:
    """``arm`` with a rigid-body model from ``urdf`` over its non-gripper joints. The URDF's
    joint names are ``joint_names`` (in the arm's order) or, by default, ours without
    ``prefix``, so one URDF serves both arms of a bimanual robot; its joint angles must be our
    motor angles (same zero, same sign). ``factors``: one per non-gripper joint on the model's
    torque (default 1). The URDF's root frame must have +z up as the arm is mounted
    (pinocchio's gravity is -z)."""
    from dataclasses import replace

    from hw_drivers.arm_models import resolve_model_path
    from molmoact2_common.rigid_body import RigidBodyError, RigidBodyModel

    names = [
        m.joint_name[len(prefix) :] if prefix and m.joint_name.startswith(prefix) else m.joint_name
        for m in arm.motors
        if not m.is_gripper
    ]
    if joint_names:
        if len(joint_names) != len(names):
            raise BackendError(
                f"arm on {arm.channel}: {len(joint_names)} dynamics_joint_names for the "
                f"{len(names)} non-gripper joints {names}"
            )
        names = list(joint_names)
    if factors is not None and len(factors) != len(names):
        raise BackendError(
            f"arm on {arm.channel}: {len(factors)} gravity_joint_factors for the "
            f"{len(names)} non-gripper joints {names}"
        )
    if factors is not None and not all(math.isfinite(f) and 0.0 <= f <= 2.0 for f in factors):
        raise BackendError(
            f"arm on {arm.channel}: gravity_joint_factors must be within [0, 2], got "
            f"{list(factors)}"
        )
    try:
        model = RigidBodyModel.from_urdf(str(resolve_model_path(urdf)), names)
    except RigidBodyError as exc:
        raise BackendError(f"arm on {arm.channel}: gravity model: {exc}") from exc
    return replace(arm, dynamics=model, gravity_factors=tuple(float(f) for f in factors or ()))
