"""The YAM gripper as the real YAM stack (i2rt) runs it: types, calibration, grip-force limit.

Facts from i2rt-robotics/i2rt (commit 10a84fc): ``i2rt/robots/config/<type>.yml``,
``i2rt/robots/utils.py`` (``GripperType``, ``JointMapper``, ``GripperForceLimiter``,
``detect_gripper_limits``, the force/torque maps), ``i2rt/robots/motor_chain_robot.py`` and
``i2rt/robots/get_robot.py``:

* The opening is normalised: ``(motor - closed) / (open - closed)``, 0 closed, 1 open, where
  ``(closed, open)`` are the gripper limits in motor radians; commands are clipped to the limits.
  On every type the closed end is the larger motor angle (crank: ``[0.0, -2.7]``; calibrated
  types: ``(max, min)`` of the sweep, the same in raw motor angles whatever the motor direction).
* ``crank_4310`` has fixed limits; ``linear_4310``, ``linear_3507`` and ``flexible_4310`` have
  ``gripper_limits: null, needs_calibration: true``: every start-up drives the gripper with a
  constant 0.5 N*m (kp = kd = 0) one way, then the other, at most 2 s each, and takes an end
  stop as reached when the angle moved less than 0.01 rad in 3 checks 50 ms apart; the limits
  are the extremes seen, kept in memory only. Their motor stroke (6.57 rad) is more than a
  turn, so a limit stored across power cycles would not survive the single-turn encoder.
* Grip force: ``get_yam_robot`` limits it to 50 N. The gripper counts as clogged when the mean
  |effort| over 0.1 s exceeds ``clog_force_threshold`` (0.5 N*m) while its normalised speed is
  under ``clog_speed_threshold``; clogged, the position target is set so that kp * error gives
  the torque that makes the limit force (linear: ``F * gripper_stroke / motor_stroke``; crank:
  ``F * r * sin(crank angle)``) plus 0.3 N*m for friction; it unclogs when the command opens
  past the measured opening or the mean |effort| falls under 0.2 N*m.

Ours differs in one place, on purpose: clogged, the target is clamped to within
``limit_torque / kp`` of the measured angle on every command, so the commanded torque is bounded
on each tick (i2rt low-pass filters an estimate of the zero-effort point towards that target).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from hw_drivers import damiao_protocol as dm

#: i2rt's friction allowance added to the limit torque while clogged [N*m].
FRICTION_COMPENSATION = 0.3
#: Mean |effort| [N*m] under which a clogged gripper counts as released (i2rt).
UNCLOG_EFFORT = 0.2
#: Window [s] of the mean effort (i2rt ``average_torque_window``).
EFFORT_WINDOW = 0.1
#: i2rt's ``limit_gripper_force`` for the YAM (get_robot.py) [N].
DEFAULT_MAX_FORCE = 50.0

# Calibration (i2rt MotorChainRobot defaults, used by get_yam_robot).
CALIBRATION_TORQUE = 0.5  # [N*m]
CALIBRATION_MAX_DURATION = 2.0  # [s] per direction
CALIBRATION_POSITION_THRESHOLD = 0.01  # [rad]
CALIBRATION_CHECK_INTERVAL = 0.05  # [s]
CALIBRATION_STABLE_CHECKS = 3
CALIBRATION_PAUSE = 0.3  # [s] after each direction
#: Ours: a calibrated stroke further than this fraction from the type's motor stroke is refused
#: (an object in the gripper, a slipping belt, the wrong ``gripper_type``); i2rt accepts any.
STROKE_TOLERANCE = 0.3


@dataclass(frozen=True)
class GripperType:
    """One of i2rt's YAM gripper types (``i2rt/robots/config/<name>.yml``)."""

    name: str
    motor_type: str
    kp: float
    kd: float
    #: (closed, open) motor angles [rad]; None: calibrated at start-up.
    limits: tuple[float, float] | None
    #: Motor polarity in i2rt (only its order of calibration sweeps depends on it here: we work
    #: in raw motor angles, where the closed end is the larger angle on every type).
    direction: int
    clog_effort: float  # [N*m] clog_force_threshold (an effort, despite i2rt's name)
    clog_speed: float  # [normalised opening / s] clog_speed_threshold
    torque_map: str  # "linear" | "crank"
    gripper_stroke: float  # [m]
    motor_stroke: float = 0.0  # [rad] linear map
    crank_close_angle: float = 0.0  # [rad] crank map
    crank_open_angle: float = 0.0
    crank_reading_offset: float = 0.0

    @property
    def needs_calibration(self) -> bool:
        return self.limits is None

    @property
    def nominal_stroke(self) -> float:
        """The motor stroke [rad] closed to open."""
        if self.limits is not None:
            return abs(self.limits[1] - self.limits[0])
        return self.motor_stroke

    def grip_torque(self, force: float, motor_angle: float) -> float:
        """Motor torque [N*m] that makes ``force`` [N] at the fingers at ``motor_angle``."""
        if self.torque_map == "linear":
            return force * self.gripper_stroke / self.motor_stroke
        radius = self.gripper_stroke / (
            2.0 * (math.cos(self.crank_close_angle) - math.cos(self.crank_open_angle))
        )
        crank = -motor_angle + self.crank_reading_offset
        return force * radius * math.sin(crank)

    def limit_torque(self, force: float, motor_angle: float) -> float:
        """The torque [N*m] a clogged gripper may push with (i2rt: map + friction)."""
        return abs(self.grip_torque(force, motor_angle)) + FRICTION_COMPENSATION


_LINEAR = dict(
    clog_effort=0.5, clog_speed=0.3, torque_map="linear", motor_stroke=6.57, gripper_stroke=0.096
)
GRIPPER_TYPES: dict[str, GripperType] = {
    "linear_4310": GripperType("linear_4310", "DM4310", 20.0, 0.5, None, 1, **_LINEAR),
    "linear_3507": GripperType("linear_3507", "DM3507", 10.0, 0.3, None, 1, **_LINEAR),
    "flexible_4310": GripperType("flexible_4310", "DM4310", 20.0, 0.5, None, -1, **_LINEAR),
    "crank_4310": GripperType(
        "crank_4310",
        "DM4310",
        20.0,
        0.5,
        (0.0, -2.7),
        1,
        clog_effort=0.5,
        clog_speed=0.2,
        torque_map="crank",
        gripper_stroke=0.071,
        crank_close_angle=0.13962634,
        crank_open_angle=2.96705973,
        crank_reading_offset=0.174,
    ),
}
DEFAULT_GRIPPER_TYPE = "linear_4310"  # i2rt get_yam_robot's default


def gripper_type(name: str) -> GripperType:
    try:
        return GRIPPER_TYPES[name]
    except KeyError:
        raise ValueError(
            f"unknown gripper_type {name!r}: one of {sorted(GRIPPER_TYPES)} (i2rt's YAM grippers)"
        ) from None


class StallDetector:
    """One calibration sweep: done when the angle moved less than the threshold in
    ``CALIBRATION_STABLE_CHECKS`` consecutive checks, or after the longest duration."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.next_check = start + CALIBRATION_CHECK_INTERVAL
        self.last: float | None = None
        self.stable = 0
        self.stalled = False

    def update(self, now: float, angle: float) -> bool:
        """Feed one reading; True when the sweep is over (``stalled`` says how)."""
        if now - self.start >= CALIBRATION_MAX_DURATION:
            return True
        if now < self.next_check:
            return False
        self.next_check = now + CALIBRATION_CHECK_INTERVAL
        if self.last is not None:
            moved = abs(angle - self.last)
            self.stable = self.stable + 1 if moved < CALIBRATION_POSITION_THRESHOLD else 0
        self.last = angle
        if self.stable >= CALIBRATION_STABLE_CHECKS:
            self.stalled = True
            return True
        return False


def calibrated_limits(
    spec: GripperType, seen: list[float], stalled: tuple[bool, bool]
) -> tuple[tuple[float, float] | None, str]:
    """(closed, open) from the angles seen in both sweeps, or (None, why not)."""
    closed, opened = max(seen), min(seen)
    stroke = closed - opened
    nominal = spec.nominal_stroke
    if not all(stalled):
        which = " and ".join(
            end for end, ok in zip(("closed", "open"), stalled, strict=True) if not ok
        )
        return None, (
            f"no {which} end stop within {CALIBRATION_MAX_DURATION:g} s at "
            f"{CALIBRATION_TORQUE:g} N*m (stroke seen {stroke:.3f} rad)"
        )
    if abs(stroke - nominal) > STROKE_TOLERANCE * nominal:
        return None, (
            f"stroke {stroke:.3f} rad between the end stops, {spec.name} has {nominal:g} rad "
            f"(+-{STROKE_TOLERANCE:.0%}): something in the gripper, or the wrong gripper_type"
        )
    return (closed, opened), ""


class GripForceLimiter:
    """The grip-force limit of one gripper, applied to every gripper command (motor angles)."""

    def __init__(self, spec: GripperType, max_force: float, kp: float) -> None:
        if not (math.isfinite(max_force) and max_force > 0.0):
            raise ValueError(f"gripper_max_force must be a positive force [N], got {max_force}")
        if not kp > 0.0:
            raise ValueError(f"the gripper's kp must be positive to limit its force, got {kp}")
        self.spec = spec
        self.max_force = float(max_force)
        self.kp = float(kp)
        self.clogged = False
        self._efforts: deque[tuple[float, float]] = deque()

    def reset(self) -> None:
        self.clogged = False
        self._efforts.clear()

    def mean_effort(self) -> float:
        if not self._efforts:
            return 0.0
        return abs(sum(e for _, e in self._efforts) / len(self._efforts))

    def limit(
        self,
        *,
        stamp: float,
        angle: float,
        velocity: float,
        effort: float,
        target: float,
        limits: tuple[float, float],
    ) -> float:
        """The motor target to send for ``target`` given the measured ``angle`` [rad],
        ``velocity`` [rad/s] and ``effort`` [N*m] at ``stamp`` [s]. While clogged, the result
        is within ``limit_torque / kp`` of ``angle``."""
        self._efforts.append((stamp, effort))
        while self._efforts and self._efforts[0][0] <= stamp - EFFORT_WINDOW:
            self._efforts.popleft()
        mean = self.mean_effort()
        span = limits[1] - limits[0]
        if self.clogged:
            # 0 closed, 1 open: a command more open than the measurement releases the grip.
            opens = dm.motor_to_gripper(angle, *limits) < dm.motor_to_gripper(target, *limits)
            if opens or mean < UNCLOG_EFFORT:
                self.clogged = False
        elif mean > self.spec.clog_effort and abs(velocity / span) < self.spec.clog_speed:
            self.clogged = True
        if not self.clogged:
            return target
        band = self.spec.limit_torque(self.max_force, angle) / self.kp
        return angle + min(max(target - angle, -band), band)
