"""Parameters of the trajectory bridge node: declared once here (no ROS imports).

The limit keys have the driver's names, so the bridge can run under the driver's node name
(``-r __node:=franka_driver``) and read that section of ``config/<robot>.yaml`` unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hw_drivers.safety import margin_problems
from molmoact2_common.ros_params import field_problems


def _f(default, description: str):
    if isinstance(default, list | tuple):
        value = tuple(default)
        return field(default_factory=lambda: value, metadata={"description": description})
    return field(default=default, metadata={"description": description})


AUTO = "auto"
NONE = "none"
SAME = "same"
# What goes out on gripper_topic: a JointState (name, position, stamp: when the target is due)
# for a relay of the user's own, or the std_msgs/Float64MultiArray a forward_command_controller
# (position_controllers/JointGroupPositionController) takes on its ~/commands.
JOINT_STATE = "joint_state"
FORWARD_COMMAND = "forward_command"
GRIPPER_COMMAND_TYPES = (JOINT_STATE, FORWARD_COMMAND)


@dataclass(frozen=True)
class TrajectoryBridgeParams:
    robot: str = _f("", "robot name (config file stem), e.g. droid")
    joint_names: tuple[str, ...] = _f((), "joints in chunk column order (model order)")
    chunk_topic: str = _f(
        "molmoact2_policy/action_chunk", "ActionChunk topic to follow (relative to namespace)"
    )
    trajectory_topic: str = _f(
        "/fr3_arm_controller/joint_trajectory",
        "JointTrajectory topic of the arm's joint_trajectory_controller",
    )
    gripper_topic: str = _f(
        "~/gripper_command",
        "gripper targets, as gripper_command_type; forward_command: the controller's "
        "~/commands, e.g. /gripper_controller/commands",
    )
    gripper_command_type: str = _f(
        JOINT_STATE,
        "message on gripper_topic: joint_state (sensor_msgs/JointState: name, position, stamp "
        "= when due) | forward_command (std_msgs/Float64MultiArray: data = the targets in "
        "gripper_joints order, for a forward_command_controller whose joints are those, in "
        "that order; applied on receipt)",
    )
    # Keyword defaults instead of empty lists: ROS cannot read back an empty array parameter
    # that no config sets.
    gripper_joints: tuple[str, ...] = _f(
        (AUTO,),
        "joints sent on gripper_topic instead of the trajectory; [auto]: names ending "
        "in 'gripper'; [none]: no gripper",
    )
    controller_joint_names: tuple[str, ...] = _f(
        (SAME,), "controller's names for the arm joints, in order; [same]: as in joint_names"
    )
    position_lower: tuple[float, ...] = _f((), "lower position limit per joint [rad or m]")
    position_upper: tuple[float, ...] = _f((), "upper position limit per joint [rad or m]")
    position_margin: tuple[float, ...] = _f(
        (),
        "per joint: how far outside position_lower..position_upper a chunk's point may lie and "
        "still be accepted, then executed at the limit [rad or m] (empty: 0, such a chunk is "
        "refused whole); grippers: a policy's output overshoots 0..1 on a full grasp",
    )
    max_velocity: tuple[float, ...] = _f((), "velocity limit per joint [rad/s or m/s]")
    max_acceleration: tuple[float, ...] = _f((), "acceleration limit per joint [rad/s^2]")
    min_lead_time: float = _f(
        0.05,
        "drop chunk points due sooner than this from now [s]: the controller cannot reach a "
        "point due in less time without a jump (latency skip)",
    )
    stop_start_delay: float = _f(
        0.02,
        "longest time from sending a stop (e-stop, hold) until the controller takes it [s]: "
        "transport + one controller period; the stop is lengthened so the arm moving on "
        "meanwhile keeps its deceleration within max_acceleration",
    )
    max_stop_extension: float = _f(
        0.25,
        "the most the stop's error budget (stop_start_delay, the joint state's age, the "
        "velocities' spread) may lengthen a stop beyond the constant deceleration at "
        "max_acceleration [s]: an e-stop must stop the arm soon; a controller start at the "
        "edge of a budget cut short may need more than max_acceleration (logged)",
    )
    stop_velocity_window: float = _f(
        0.1,
        "a stop plans with the mean of the joint states' velocities over this long [s], and "
        "is lengthened over their spread (a trajectory replacement makes them dip)",
    )
    joint_state_topic: str = _f(
        "/joint_states", "measured joint states of the arm (controller joint names)"
    )
    max_state_age: float = _f(
        0.5, "joint states older than this do not count as measured [s]; nothing is sent"
    )
    max_start_deviation: float = _f(
        0.5, "refuse a chunk whose first sent point is this far from measured [rad]"
    )
    ramp_in_threshold: float = _f(
        0.02, "from idle, ramp in (delay the trajectory) when the first point is this far [rad]"
    )
    ramp_in_time: float = _f(1.0, "shortest ramp from the measured pose when idle [s]")
    compute_velocities: bool = _f(
        True, "send finite-difference velocities (controller uses cubic splines)"
    )
    rejection_window: float = _f(
        10.0, "diagnostics: WARN while chunks were rejected within this many seconds"
    )
    autostart: bool = _f(True, "configure and activate at start (no lifecycle manager)")

    def validate(self) -> list[str]:
        """Every problem with these values (empty when they are usable)."""
        problems: list[str] = field_problems(self)  # NaN passes `x <= 0` checks; topic names
        n = len(self.joint_names)
        if n == 0:
            problems.append("joint_names is empty")
        for name in ("position_lower", "position_upper", "max_velocity", "max_acceleration"):
            values = getattr(self, name)
            if len(values) != n:
                problems.append(f"{name} has {len(values)} values for {n} joints")
            elif not np.all(np.isfinite(values)):
                problems.append(f"{name} has non-finite values")
        if self.position_margin:
            problems += margin_problems(self.position_margin, n)
        grippers = self.resolved_gripper_joints()
        # joint_trajectory_controller takes a message with a name repeated (it checks only the
        # count and that each name is known): the later column wins and the joint left out is
        # commanded a stale value from its buffer (0.0 at first). See jtc_model.local_order.
        for name, names in (
            ("joint_names", self.joint_names),
            ("gripper_joints", grippers),
            ("controller_joint_names", self.resolved_controller_joint_names()),
        ):
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                problems.append(f"{name} repeats {repeated}: each joint must appear once")
        unknown = [g for g in grippers if g not in self.joint_names]
        if unknown:
            problems.append(f"gripper_joints {unknown} are not in joint_names")
        if self.gripper_command_type not in GRIPPER_COMMAND_TYPES:
            problems.append(
                f"gripper_command_type must be one of {list(GRIPPER_COMMAND_TYPES)}, "
                f"got {self.gripper_command_type!r}"
            )
        elif self.gripper_command_type == FORWARD_COMMAND and not grippers:
            # The controller would never get a command: surely a config mistake.
            problems.append(
                "gripper_command_type forward_command needs a gripper joint; gripper_joints "
                f"{list(self.gripper_joints)} resolves to none"
            )
        arm = len([n for n in self.joint_names if n not in grippers])
        renamed = self.resolved_controller_joint_names()
        if renamed and len(renamed) != arm:
            problems.append(f"controller_joint_names has {len(renamed)} names for {arm} arm joints")
        if not self.trajectory_topic:
            problems.append("trajectory_topic is empty")
        if self.min_lead_time < 0:
            problems.append("min_lead_time must be >= 0")
        if min(self.stop_start_delay, self.stop_velocity_window, self.max_stop_extension) < 0:
            problems.append(
                "stop_start_delay, stop_velocity_window and max_stop_extension must be >= 0"
            )
        if min(self.max_state_age, self.max_start_deviation) <= 0:
            problems.append("max_state_age and max_start_deviation must be > 0")
        if min(self.ramp_in_threshold, self.ramp_in_time) < 0:
            problems.append("ramp_in_threshold and ramp_in_time must be >= 0")
        if not self.joint_state_topic:
            problems.append("joint_state_topic is empty: the start pose cannot be checked")
        if not self.rejection_window > 0:
            problems.append("rejection_window must be > 0")
        return problems

    def resolved_gripper_joints(self) -> tuple[str, ...]:
        """The gripper joint names after the auto/none keywords."""
        if self.gripper_joints in ((), (NONE,)):
            return ()
        if self.gripper_joints == (AUTO,):
            return tuple(n for n in self.joint_names if n.endswith("gripper"))
        return self.gripper_joints

    def resolved_controller_joint_names(self) -> tuple[str, ...]:
        """Controller names for the arm joints; empty means keep ours."""
        return () if self.controller_joint_names in ((), (SAME,)) else self.controller_joint_names
