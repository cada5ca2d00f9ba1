"""Which turn a DaMiao motor powered up in: the offset between motor angle and joint angle.

A DaMiao motor reports its angle relative to the zero stored in its flash, in ``+-P_MAX``
(12.5 rad by default). Its absolute encoder is single-turn, so after a power cycle the motor
only knows the shaft angle modulo one turn: a joint whose stored zero lies on the other side of
the encoder's wrap point comes up reporting its angle plus or minus 2*pi. The motor keeps
counting turns while powered, so the offset is constant until the next power cycle.

The real YAM stack (i2rt, ``i2rt/robots/get_robot.py``, ``get_yam_robot``) decides once, when
the chain is opened and before its control thread runs: a motor reading beyond ``+pi`` gets the
offset ``+2*pi``, one beyond ``-pi`` the offset ``-2*pi``, a single shift per motor, gripper
included; joint angle = motor angle - offset, motor target = joint target + offset, for the
whole session. ``choose_turn`` reproduces that choice exactly (joint angles in ``(-pi, pi]``:
both stacks report the same angle for the same pose) and refuses, with a reason naming the
numbers, where i2rt guesses or only notices later:

* a reading more than one shift away (``|angle| > 3*pi``): a single-turn encoder cannot power
  up there (the motor was turned while powered, or counts differently); i2rt shifts once and
  its joint-limit check refuses the arm joints, not the gripper;
* with the joint's limits known: the shifted angle is outside them by more than
  ``LIMIT_BUFFER`` (i2rt refuses this too, arm joints only, after opening the chain), or
  another turn also lies inside them (the turn is then a guess);
* without limits: the shifted angle is within ``AMBIGUITY_MARGIN`` of +-pi, where the same
  pose is one turn from the other candidate and nothing tells them apart (i2rt takes one).

A wrong offset is not a small error: every command is then off by a full turn, and the first
move the policy asks for drives the joint the long way round, through its end stops. Refusing
keeps the torque off and says which motor to move; the operator moves the limp joint into its
range and the driver's next connect chooses again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

TURN = 2.0 * math.pi
#: How far [rad] outside its limits a joint may read at power-up and still count as being in
#: that turn: i2rt pads YAM's XML limits by 0.15 rad (get_robot.py) and refuses beyond a further
#: 0.1 rad (motor_chain_robot.py ``_check_current_qpos_in_joint_limits``). Any real turn error
#: is 2*pi, far beyond it.
LIMIT_BUFFER = 0.25
#: Without limits: how close [rad] to +-pi a power-up reading is refused as ambiguous. A joint
#: resting just past +-pi reads as just inside the other end, a turn off, and only its limits
#: could tell; without them a band around the wrap point is the least we can refuse. (The
#: encoder resolves 0.0004 rad, 16 bit over 25 rad; once chosen, the offset stays right however
#: the joint moves, since the motor counts turns while powered.)
AMBIGUITY_MARGIN = 0.1


@dataclass(frozen=True)
class TurnChoice:
    """The decision for one motor: ``joint = motor - offset``, ``motor = joint + offset``."""

    motor_angle: float  # [rad] the power-up reading
    offset: float  # [rad] a whole number of turns
    problem: str = ""  # why the torque must stay off ("" when the offset is trusted)

    @property
    def joint_angle(self) -> float:
        return self.motor_angle - self.offset

    @property
    def turns(self) -> int:
        return round(self.offset / TURN)

    def describe(self) -> str:
        """One phrase for diagnostics and logs."""
        if self.turns == 0:
            text = f"powered up at {self.motor_angle:.3f} rad, no turn offset"
        else:
            text = (
                f"powered up at {self.motor_angle:.3f} rad, {self.turns:+d} turn "
                f"({self.offset:+.4f} rad) removed: joint {self.joint_angle:.3f} rad"
            )
        return f"{text}; {self.problem}" if self.problem else text


def wrap_offset(motor_angle: float) -> float:
    """The whole turns to remove so that ``motor_angle - offset`` is in ``(-pi, pi]`` (i2rt's
    window; i2rt keeps exactly -pi where we shift, a value no 16-bit DaMiao reading takes)."""
    return TURN * math.ceil((motor_angle - math.pi) / TURN)


def choose_turn(
    motor_angle: float,
    limits: tuple[float, float] | None = None,
    *,
    buffer: float = LIMIT_BUFFER,
    margin: float = AMBIGUITY_MARGIN,
    max_turns: int = 1,
) -> TurnChoice:
    """The offset for a motor that powered up at ``motor_angle`` [rad], with the joint's
    ``(lower, upper)`` limits in motor radians when known. The offset is i2rt's (the joint
    angle lands in ``(-pi, pi]``); ``problem`` is set when that offset cannot be trusted."""
    if not math.isfinite(motor_angle):
        return TurnChoice(float(motor_angle), 0.0, "the motor reported no finite angle")
    offset = wrap_offset(motor_angle)
    choice = TurnChoice(float(motor_angle), offset)
    joint = choice.joint_angle
    if abs(offset) > max_turns * TURN + 1e-9:
        return TurnChoice(
            choice.motor_angle,
            offset,
            f"{abs(choice.turns)} turns from zero: a single-turn encoder cannot power up more "
            f"than {max_turns} turn away (was the motor turned while powered?)",
        )
    if limits is None:
        if math.pi - abs(joint) < margin:
            return TurnChoice(
                choice.motor_angle,
                offset,
                f"within {margin:g} rad of +-pi, where the other turn is as likely and no joint "
                "limits tell them apart",
            )
        return choice
    lower, upper = float(limits[0]) - buffer, float(limits[1]) + buffer
    if not lower <= joint <= upper:
        inside = [joint + k * TURN for k in (-1, 1) if lower <= joint + k * TURN <= upper]
        hint = (
            f"; it is probably at {inside[0]:.3f} rad, outside the (-pi, pi] window the YAM "
            "stack reads joints in: move it back inside"
            if inside
            else ": a turn off, or the motor's stored zero is wrong"
        )
        return TurnChoice(
            choice.motor_angle,
            offset,
            f"joint {joint:.3f} rad is outside its limits [{limits[0]:.3f}, {limits[1]:.3f}] "
            f"(+-{buffer:g}){hint}",
        )
    others = [
        joint + k * TURN
        for k in range(-max_turns - 1, max_turns + 2)
        if k != 0 and lower <= joint + k * TURN <= upper
    ]
    if others:
        return TurnChoice(
            choice.motor_angle,
            offset,
            f"its limits [{limits[0]:.3f}, {limits[1]:.3f}] (+-{buffer:g}) hold both "
            f"{joint:.3f} and {others[0]:.3f} rad: which turn it is in is a guess",
        )
    return choice
