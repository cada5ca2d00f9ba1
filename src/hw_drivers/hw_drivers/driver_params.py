"""Parameters of the driver node (one declaration; no ROS imports).

Robot keys come from ``config/<robot>.yaml`` (the driver section and ``/**``); executor and
safety keys have defaults that suit every robot. ``validate()`` lists what is wrong, so the
node can fail its configure transition with one clear message and the bringup can check a
config file without starting ROS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar

import numpy as np

from hw_drivers.safety import JointLimits, margin_problems
from hw_drivers.tick_errors import min_fault_window
from molmoact2_common.ros_params import ParamTypeError, coerce_param, field_problems

BACKENDS = ("sim", "damiao", "feetech", "franky", "ros2_control")
ON_FAULT = ("hold", "disable")
EXIT_BEHAVIORS = ("hold", "rest", "rest_then_release")  # see hw_drivers.control_loop
EXECUTION = ("auto", "shadow", "live")
PREFLIGHT = ("auto", "on", "off")
# The control loop (a Python thread) cannot run faster than this; a typo (250000 for 250)
# would otherwise spin a core and shrink the per-tick step bound to nothing.
MAX_CONTROL_RATE = 2000.0


def _f(default, description: str, **extra):
    if isinstance(default, list | tuple):
        value = tuple(default)
        return field(default_factory=lambda: value, metadata={"description": description, **extra})
    return field(default=default, metadata={"description": description, **extra})


@dataclass(frozen=True)
class DriverParams:
    #: Parameters that were renamed or replaced: an old config naming one is told what to use.
    RENAMED: ClassVar[dict[str, str]] = {
        "preflight_camera_rate": "replaced by each camera's own rate, camera_rates in the /** "
        "section, with preflight_camera_tolerance; preflight_cameras: false skips the check",
    }
    #: Old names still accepted, with a deprecation warning, as the new name (which wins when
    #: both are set): old name -> new name. Not fields, so not in the docs' parameter table.
    DEPRECATED: ClassVar[dict[str, str]] = {
        # Was "torque-offs with on_fault: disable"; the same count now latches under hold too.
        "max_torque_offs": "max_backend_faults",
    }

    # -- robot (config/<robot>.yaml) --
    robot: str = _f("", "robot name (config file stem), e.g. yam")
    embodiment: str = _f("", "model embodiment tag (molmoact2_common.embodiments)")
    joint_names: tuple[str, ...] = _f((), "joints in command order (model order)")
    backend: str = _f("sim", f"hardware backend: one of {BACKENDS}")
    control_rate: float = _f(250.0, "control loop rate [Hz]")
    chunk_topic: str = _f(
        "molmoact2_policy/action_chunk", "ActionChunk topic to follow (relative to namespace)"
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
    max_step_per_tick: float = _f(0.03, "largest change of any joint command per tick [rad]")
    initial_positions: tuple[float, ...] = _f(
        (), "sim start pose per joint (empty: midpoint of the limits)"
    )
    can_channels: tuple[str, ...] = _f((), "damiao: one CAN channel per arm (e.g. can0, can1)")
    frame_prefixes: tuple[str, ...] = _f((), "joint-name prefix per arm, same order as channels")
    serial_port: str = _f("", "feetech: serial port of the servo bus, e.g. /dev/ttyACM0")
    calibration_file: str = _f("", "feetech: LeRobot-style calibration JSON")
    serial_baudrate: int = _f(
        1_000_000, "feetech: baud rate of the servo bus (the servos' Baud_Rate; the budget uses it)"
    )
    trajectory_topic: str = _f("", "ros2_control: JointTrajectory controller topic")
    robot_ip: str = _f("", "franky: robot IP address")
    franky_motion_rate: float = _f(
        50.0, "franky: re-targets of the arm's waypoint motion per second [Hz] (<= control_rate)"
    )
    # -- hardware details (empty / zero: the backend's defaults for the robot) --
    can_interface: str = _f("socketcan", "damiao: python-can interface (socketcan, virtual)")
    damiao_motor_ids: tuple[int, ...] = _f((), "damiao: CAN id per motor of one arm")
    damiao_motor_types: tuple[str, ...] = _f(
        (), "damiao: motor type per motor of one arm (DM4340, DM4310, DM3507)"
    )
    damiao_kp: tuple[float, ...] = _f((), "damiao: MIT-mode position gain per motor")
    damiao_kd: tuple[float, ...] = _f((), "damiao: MIT-mode damping gain per motor")
    gripper_type: str = _f(
        "linear_4310",
        "damiao: the YAM gripper, as i2rt names it: linear_4310 | linear_3507 | flexible_4310 "
        "(limits calibrated at every torque enable: the gripper closes and opens once at 0.5 "
        "N*m) | crank_4310 (fixed limits 0.0 closed, -2.7 open)",
    )
    gripper_closed_rad: float = _f(
        0.0,
        "damiao: gripper motor angle when closed [rad]; equal to gripper_open_rad (default): "
        "the gripper_type's limits; different: fixed limits, no calibration",
    )
    gripper_open_rad: float = _f(0.0, "damiao: gripper motor angle when fully open [rad]")
    gripper_max_force: float = _f(
        50.0,
        "damiao: grip force limit [N] (i2rt's YAM: 50); once the gripper stalls on an object its"
        " command is held to the motor torque that makes this force",
    )
    read_timeout: float = _f(0.0, "damiao/feetech: reply timeout per read [s] (0: default)")
    read_retries: int = _f(0, "damiao/feetech: retries of a failed read (0: default)")
    can_bitrate: int = _f(1_000_000, "damiao: CAN bitrate [bit/s] (the bus budget uses it)")
    max_bus_load: float = _f(
        0.7, "damiao/feetech: largest fraction of the control period one tick's bus exchange "
        "may use"
    )
    dynamics_urdf: str = _f(
        "",
        "damiao: URDF of one arm (joint names without frame_prefixes) for gravity feed-forward,"
        " a path or the name of a model hw_drivers ships (hw_drivers/models, e.g."
        " yam_arm_i2rt.urdf); its joint angles must be the motor angles; empty: no"
        " feed-forward (the arm sags by gravity torque / kp)",
    )
    dynamics_joint_names: tuple[str, ...] = _f(
        (),
        "damiao: the URDF's names of one arm's non-gripper joints, in order (empty: ours "
        "without frame_prefixes); e.g. i2rt's yam.urdf: dof_joint1..dof_joint6",
    )
    gravity_scale: float = _f(1.0, "damiao: factor on the model's gravity torques")
    gravity_joint_factors: tuple[float, ...] = _f(
        (),
        "damiao: factor on the model's gravity torque per non-gripper joint of one arm, in "
        "[0, 2] (empty: 1); i2rt's YAM: 1.3, 1.1, 1.35, 1.3, 1.3, 1.3",
    )
    motor_temperature_warn: float = _f(
        70.0,
        "damiao/feetech: motor temperature reported as a warning [degC] (feetech: at most 5 "
        "below the servo's own Max_Temperature_Limit, at which the driver holds)",
    )
    # -- what runs on the robot (released YAM deployment options) --
    execution: str = _f(
        "auto",
        "auto | shadow | live; shadow: the policy runs and commands are published but the arm "
        "holds at its measured pose; auto: shadow on hardware backends, live on sim",
    )
    active_arms: str = _f(
        "both",
        "bimanual: both, or one arm by its frame prefix without '_' (e.g. left); the inactive "
        "arm holds at its measured pose",
    )
    preflight: str = _f(
        "auto",
        "auto | on | off: before torque enable check joint limits, motor faults and camera "
        "rates; auto: on for hardware backends",
    )
    preflight_cameras: bool = _f(
        True, "preflight: check that every camera streams at its camera_rates entry"
    )
    preflight_camera_tolerance: float = _f(
        0.2,
        "preflight: a camera's measured rate may differ from its camera_rates entry by this "
        "fraction (0.2: 24..36 Hz for 30 Hz)",
    )
    camera_names: tuple[str, ...] = _f((), "cameras the preflight checks (from the /** section)")
    camera_topics: tuple[str, ...] = _f((), "their image topics, same order as camera_names")
    camera_transports: tuple[str, ...] = _f((), "raw | compressed per camera (empty: raw)")
    camera_rates: tuple[float, ...] = _f(
        (), "frames per second each camera streams at (from the /** section)"
    )
    # -- executor --
    interpolation: str = _f("cubic", "interpolation between chunk actions: linear | cubic")
    splice_policy: str = _f("blend", "new chunk takeover: blend | replace | average")
    blend_window: float = _f(0.1, "position+velocity blend when splicing a new chunk [s]")
    average_weight_new: float = _f(0.7, "average policy: weight of the new chunk")
    dry_run: bool = _f(False, "compute and publish commands but never send them to the robot")
    # -- safety --
    max_start_deviation: float = _f(
        0.5, "reject a chunk whose first executed action is this far from measured [rad]"
    )
    ramp_in_time: float = _f(
        1.0, "blend from the held command into the first chunk after start/reset/hold [s]"
    )
    watchdog_timeout: float = _f(0.5, "no accepted chunk for this long -> hold [s]")
    chunk_rate: float = _f(
        0.0,
        "expected action rate of the chunks [Hz] (0: the embodiment's); step_dt must be within "
        "4x of 1/chunk_rate and no shorter than one control tick",
    )
    max_chunk_duration: float = _f(10.0, "reject chunks whose horizon * step_dt is longer [s]")
    max_chunk_lead: float = _f(
        0.25, "reject chunks stamped, or starting, further ahead of the driver's clock [s]"
    )
    max_chunk_age: float = _f(2.0, "reject chunks whose stamp is older than this [s]")
    rejection_window: float = _f(
        10.0, "diagnostics: WARN while chunks were rejected within this many seconds"
    )
    on_fault: str = _f(
        "hold",
        "on a backend fault: hold (keep torque) | disable (torque off; the reconnect turns it on "
        "again); either way the link reconnects and chunks resume with a ramp-in, until "
        "max_backend_faults faults within fault_window latch the e-stop",
    )
    reconnect_period: float = _f(1.0, "seconds between reconnect attempts after a fault")
    max_tick_errors: int = _f(
        3,
        "control ticks that raise (a bug, not a backend fault: each one holds and reconnects "
        "like a fault) without a successful tick between them before the e-stop latches "
        "(until ~/reset); as many within fault_window latch it too",
    )
    fault_window: float = _f(
        60.0,
        "[s] max_tick_errors tick errors (successful ticks between them or not) or "
        "max_backend_faults backend faults within this long latch the e-stop until ~/reset; at "
        "least limit * (reconnect_period + 2 / control_rate), else it could never be reached",
    )
    max_backend_faults: int = _f(
        3,
        "backend faults within fault_window at which the e-stop latches until ~/reset (chunks "
        "refused; on_fault: hold holds the measured pose, torque on; disable keeps the torque "
        "off); 1: from the first fault; formerly max_torque_offs (disable only)",
    )
    exit_behavior: str = _f(
        "hold",
        "when the driver stops: hold (keep holding, torque on) | rest (return slowly to the "
        "pose measured at start, then hold) | rest_then_release (then torque off)",
    )
    exit_speed: float = _f(0.3, "joint speed of the return to the rest pose on exit [rad/s]")
    exit_timeout: float = _f(
        3.0, "at most this long for the return to rest [s]; then it holds where it got to"
    )
    # -- sim backend --
    sim_time_constant: float = _f(0.05, "sim: first-order joint time constant [s]")
    sim_noise_std: float = _f(0.0, "sim: std of Gaussian measurement noise [rad]")
    seed: int = _f(0, "sim: random seed (noise)")
    # -- node --
    state_publish_rate: float = _f(
        0.0, "joint_states publish rate [Hz] (0: every control tick)"
    )
    autostart: bool = _f(True, "configure and activate at start (no lifecycle manager)")

    def validate(self) -> list[str]:
        """Every problem with these values (empty when they are usable)."""
        # NaN passes every `x <= 0` check below (inf makes periods zero); topic names.
        problems: list[str] = field_problems(self)
        n = len(self.joint_names)
        if n == 0:
            problems.append("joint_names is empty")
        if len(set(self.joint_names)) != n:
            problems.append("joint_names has duplicates")
        for name in ("position_lower", "position_upper", "max_velocity", "max_acceleration"):
            values = getattr(self, name)
            if len(values) != n:
                problems.append(f"{name} has {len(values)} values for {n} joints")
            elif not np.all(np.isfinite(values)):
                problems.append(f"{name} has non-finite values")
        if self.position_margin:
            problems += margin_problems(self.position_margin, n)
        if self.initial_positions and len(self.initial_positions) != n:
            problems.append(
                f"initial_positions has {len(self.initial_positions)} values for {n} joints"
            )
        if len(self.position_lower) == n == len(self.position_upper):
            lower, upper = np.array(self.position_lower), np.array(self.position_upper)
            bad = [self.joint_names[j] for j in np.flatnonzero(lower > upper)]
            if bad:
                problems.append(f"position_lower > position_upper for {bad}")
            if self.initial_positions and len(self.initial_positions) == n:
                init = np.array(self.initial_positions)
                out = [self.joint_names[j] for j in np.flatnonzero((init < lower) | (init > upper))]
                if out:
                    problems.append(f"initial_positions outside the limits for {out}")
        for name in ("max_velocity", "max_acceleration"):
            if any(v <= 0 for v in getattr(self, name)):
                problems.append(f"{name} must be > 0 for every joint")
        if self.backend not in BACKENDS:
            problems.append(f"backend {self.backend!r} is not one of {BACKENDS}")
        if not 0 < self.control_rate <= MAX_CONTROL_RATE:
            problems.append(f"control_rate must be in (0, {MAX_CONTROL_RATE:g}] Hz")
        if self.state_publish_rate < 0:
            problems.append("state_publish_rate must be >= 0 (0: every control tick)")
        if self.reconnect_period <= 0:
            problems.append("reconnect_period must be > 0")
        if self.max_tick_errors < 1 or self.max_backend_faults < 1:
            problems.append("max_tick_errors and max_backend_faults must be >= 1")
        if not (self.fault_window > 0 and math.isfinite(self.fault_window)):
            problems.append("fault_window must be > 0")
        elif self.reconnect_period > 0 and 0 < self.control_rate:
            # Each fault costs a reconnect period: a shorter window could never trip.
            limit = max(self.max_tick_errors, self.max_backend_faults)
            needed = min_fault_window(limit, self.reconnect_period, self.control_rate)
            if self.fault_window < needed:
                problems.append(
                    f"fault_window {self.fault_window:g} s is too short to ever hold {limit} "
                    f"faults {self.reconnect_period:g} s (reconnect_period) apart: at least "
                    f"{needed:g} s"
                )
        if self.max_step_per_tick <= 0:
            problems.append("max_step_per_tick must be > 0")
        if self.interpolation not in ("linear", "cubic"):
            problems.append(f"interpolation {self.interpolation!r} is not linear|cubic")
        if self.splice_policy not in ("blend", "replace", "average"):
            problems.append(f"splice_policy {self.splice_policy!r} is not blend|replace|average")
        if self.blend_window < 0 or self.ramp_in_time < 0:
            problems.append("blend_window and ramp_in_time must be >= 0")
        if not 0.0 <= self.average_weight_new <= 1.0:
            problems.append("average_weight_new must be in [0, 1]")
        if self.watchdog_timeout <= 0 or self.max_start_deviation <= 0:
            problems.append("watchdog_timeout and max_start_deviation must be > 0")
        if self.exit_behavior not in EXIT_BEHAVIORS:
            problems.append(f"exit_behavior {self.exit_behavior!r} is not one of {EXIT_BEHAVIORS}")
        if not (self.exit_speed > 0 and 0 <= self.exit_timeout <= 3.5):
            # The process must be gone within launch's 5 s SIGINT -> SIGTERM window.
            problems.append("exit_speed must be > 0 and exit_timeout within 0..3.5 s")
        if self.chunk_rate < 0:
            problems.append("chunk_rate must be >= 0")
        if min(self.max_chunk_duration, self.max_chunk_lead, self.max_chunk_age) <= 0:
            problems.append("max_chunk_duration, max_chunk_lead and max_chunk_age must be > 0")
        if self.rejection_window <= 0:
            problems.append("rejection_window must be > 0")
        if self.on_fault not in ON_FAULT:
            problems.append(f"on_fault {self.on_fault!r} is not one of {ON_FAULT}")
        if self.sim_time_constant <= 0 or self.sim_noise_std < 0:
            problems.append("sim_time_constant must be > 0 and sim_noise_std >= 0")
        if self.execution not in EXECUTION:
            problems.append(f"execution {self.execution!r} is not one of {EXECUTION}")
        if self.preflight not in PREFLIGHT:
            problems.append(f"preflight {self.preflight!r} is not one of {PREFLIGHT}")
        try:
            self.hold_mask()
        except ValueError as err:
            problems.append(str(err))
        if self.camera_transports and len(self.camera_transports) != len(self.camera_names):
            # zip() would drop the cameras past the shorter list from the preflight.
            problems.append(
                f"{len(self.camera_transports)} camera_transports for "
                f"{len(self.camera_names)} camera_names (empty: all raw)"
            )
        bad_transports = sorted(set(self.camera_transports) - {"raw", "compressed"})
        if bad_transports:
            problems.append(f"camera_transports {bad_transports} are not raw | compressed")
        if len(self.camera_topics) != len(self.camera_names):
            problems.append(
                f"{len(self.camera_topics)} camera_topics for {len(self.camera_names)} camera_names"
            )
        if self.checks_cameras() and (
            len(self.camera_rates) != len(self.camera_names)
            or not all(r > 0 for r in self.camera_rates)
        ):
            problems.append(
                f"the preflight needs one camera_rates entry > 0 per camera "
                f"({len(self.camera_names)}), got {list(self.camera_rates)}"
            )
        if not 0.0 <= self.preflight_camera_tolerance < 1.0:
            problems.append("preflight_camera_tolerance must be in [0, 1)")
        # A bitrate <= 0 skipped the bus budget here and divided by it in the backend's reply
        # deadline; a force limit <= 0 leaves the gripper no grip at all.
        if self.can_bitrate <= 0:
            problems.append(f"can_bitrate must be > 0 [bit/s], got {self.can_bitrate}")
        if self.gripper_max_force <= 0:
            problems.append(f"gripper_max_force must be > 0 [N], got {self.gripper_max_force:g}")
        budget = self.bus_budget()
        if budget is not None and self.control_rate > 0:
            problem = budget.check(self.control_rate)
            if problem:
                problems.append(problem)
        if self.backend == "damiao":
            problems += self._gripper_problems()
        if self.backend == "feetech":
            problems += self._feetech_problems()
        if self.can_channels and len(self.frame_prefixes) not in (0, len(self.can_channels)):
            problems.append(
                f"{len(self.frame_prefixes)} frame_prefixes for {len(self.can_channels)} "
                "can_channels"
            )
        return problems

    def _feetech_problems(self) -> list[str]:
        # Without a usable calibration the driver cannot map servo ticks to joint angles: the
        # bringup refuses to start the graph (else policy and cameras ran on, the arm never came).
        from hw_drivers.calibration import CalibrationError, load_arm_calibration

        problems = []
        if not self.serial_port:
            problems.append("the feetech backend needs serial_port (e.g. /dev/ttyACM0)")
        try:
            # Cached by the file's identity: this check runs on every parameter change too.
            load_arm_calibration(self.calibration_file, self.joint_names, cached=True)
        except CalibrationError as err:
            problems.append(
                f"{err}; set calibration_file with the launch argument calibration_file:=<path> "
                "(molmoact2 launch: --calibration-file) or in the driver's config section"
            )
        return problems

    def _gripper_problems(self) -> list[str]:
        from hw_drivers import yam_gripper

        try:
            spec = yam_gripper.gripper_type(self.gripper_type)
        except ValueError as err:
            return [str(err)]
        fixed = self.gripper_closed_rad != self.gripper_open_rad
        if self.dry_run and spec.needs_calibration and not fixed:
            # dry_run promises no motion; finding this gripper's limits drives it to both end
            # stops, and without them its opening cannot be read.
            return [
                f"dry_run cannot calibrate the {spec.name} gripper (calibration drives it to "
                "both end stops): set gripper_closed_rad and gripper_open_rad to its measured "
                "limits, or use execution: shadow (the arm holds, the gripper calibrates once)"
            ]
        return []

    def is_shadow(self) -> bool:
        """Shadow execution: explicit, or by default on every hardware backend."""
        return self.execution == "shadow" or (self.execution == "auto" and self.backend != "sim")

    def runs_preflight(self) -> bool:
        return self.preflight == "on" or (self.preflight == "auto" and self.backend != "sim")

    def checks_cameras(self) -> bool:
        """The preflight measures the cameras' rates (against ``expected_camera_rates``)."""
        return self.runs_preflight() and self.preflight_cameras and bool(self.camera_names)

    def expected_camera_rates(self) -> dict[str, float]:
        """Camera name -> the rate it is configured to stream at [Hz]."""
        return dict(zip(self.camera_names, self.camera_rates, strict=False))

    def hold_mask(self) -> np.ndarray:
        """Joints the ``active_arms`` selection holds (``ValueError`` for an unknown arm)."""
        from hw_drivers.preflight import arm_hold_mask

        return arm_hold_mask(self.joint_names, self.frame_prefixes, self.active_arms)

    def bus_budget(self):
        """The bus budget of a DaMiao (CAN) or Feetech (serial) robot; None for the others."""
        if self.backend == "feetech" and self.serial_baudrate > 0 and self.joint_names:
            from hw_drivers.serial_budget import SerialBudget

            return SerialBudget(
                self.serial_baudrate, len(self.joint_names), max_bus_load=self.max_bus_load
            )
        if self.backend != "damiao" or not self.can_channels or self.can_bitrate <= 0:
            return None
        from hw_drivers.can_budget import BusBudget

        per_bus = -(-len(self.joint_names) // len(self.can_channels))
        return BusBudget(self.can_bitrate, per_bus, max_bus_load=self.max_bus_load)

    def initial_pose(self) -> np.ndarray:
        """Sim start pose: ``initial_positions`` or the middle of the limits."""
        if self.initial_positions:
            return np.array(self.initial_positions, dtype=float)
        return (np.array(self.position_lower) + np.array(self.position_upper)) / 2.0

    def limits(self) -> JointLimits:
        """The ``JointLimits`` these parameters describe."""
        return JointLimits(
            lower=np.array(self.position_lower),
            upper=np.array(self.position_upper),
            max_velocity=np.array(self.max_velocity),
            max_acceleration=np.array(self.max_acceleration),
            margin=np.array(self.position_margin) if self.position_margin else None,
        )

    def expected_chunk_rate(self) -> float:
        """``chunk_rate``, or the embodiment's trained action rate, or 0 when neither is known."""
        if self.chunk_rate > 0:
            return self.chunk_rate
        if not self.embodiment:
            return 0.0
        from molmoact2_common.embodiments import EMBODIMENTS  # the one source of this fact

        spec = EMBODIMENTS.get(self.embodiment)
        return spec.rate_hz if spec is not None else 0.0

    def safety_config(self):
        from hw_drivers.safety import SafetyConfig, step_dt_bounds

        min_step_dt, max_step_dt = step_dt_bounds(self.control_rate, self.expected_chunk_rate())
        return SafetyConfig(
            max_step_per_tick=self.max_step_per_tick,
            max_start_deviation=self.max_start_deviation,
            ramp_in_time=self.ramp_in_time,
            watchdog_timeout=self.watchdog_timeout,
            min_step_dt=min_step_dt,
            max_step_dt=max_step_dt,
            max_chunk_duration=self.max_chunk_duration,
            max_chunk_lead=self.max_chunk_lead,
            max_chunk_age=self.max_chunk_age,
        )

    def executor_config(self):
        from hw_drivers.executor import ExecutorConfig

        return ExecutorConfig(
            interpolation=self.interpolation,
            splice_policy=self.splice_policy,
            blend_window=self.blend_window,
            average_weight_new=self.average_weight_new,
            dry_run=self.dry_run,
            rejection_window=self.rejection_window,
        )


def driver_param_names() -> tuple[str, ...]:
    return tuple(f.name for f in fields(DriverParams))


# Safety limits ``ros2 param set`` may change while the driver runs, only inside the limits the
# driver started with (its config: the hard limits). Tightening takes effect on the next tick.
LIVE_LIMITS = (
    "position_lower",
    "position_upper",
    "max_velocity",
    "max_acceleration",
    "max_step_per_tick",
)


# Everything ``ros2 param set`` may change on a running driver; the rest is read at start.
LIVE_PARAMS = (*LIVE_LIMITS, "execution", "active_arms")


def live_update(
    hard: DriverParams, current: DriverParams, changes: dict[str, Any]
) -> tuple[DriverParams | None, list[str]]:
    """``current`` with ``changes`` (parameter name -> value as ROS delivers it) applied, or
    None and every reason to refuse them: a parameter that is not live, a value of the wrong
    type, limits outside the hard ones, an unknown execution or arm, ``use_sim_time``. Other
    names that are not driver parameters are rclpy's and ignored here."""
    problems: list[str] = []
    converted: dict[str, Any] = {}
    joints = len(hard.joint_names)
    for name, value in changes.items():
        if name == "use_sim_time":
            # The control loop's time is the node clock (and its pacing, under sim time, chosen
            # at activation): switched live, its time jumps (to 0 until a /clock arrives) under
            # a running plan. (On the old rclpy timer a 100x clock ran the loop 8x faster in
            # wall time than its rate, every limit per tick.)
            problems.append(
                "use_sim_time is fixed while the driver runs (the control loop's time source); "
                "restart the driver with it"
            )
            continue
        if name in DriverParams.DEPRECATED:
            # Else rclpy would store it and answer success, while nothing reads it.
            problems.append(
                f"{name} is deprecated ({DriverParams.DEPRECATED[name]} now) and read at start; "
                "edit the config and restart"
            )
            continue
        if name not in DriverParams.__dataclass_fields__:
            continue
        if name not in LIVE_PARAMS:
            problems.append(
                f"{name} is read at start and cannot change while the driver runs (live: "
                f"{', '.join(LIVE_PARAMS)}); edit the config and restart"
            )
            continue
        per_joint = isinstance(getattr(hard, name), tuple)  # the list limits, not the step
        if per_joint and hasattr(value, "__len__") and not isinstance(value, str):
            if len(value) != joints:
                # Before any per-entry work: a million-entry list held the control loop
                # (same executor) for a third of a second.
                problems.append(f"{name} needs {joints} values (one per joint), got {len(value)}")
                continue
        try:
            converted[name] = coerce_param(DriverParams, name, value)
        except ParamTypeError as err:
            problems.append(str(err))
    if problems:
        return None, problems
    changed = replace(current, **converted)
    if any(name in LIVE_LIMITS for name in converted):
        problems += live_limit_problems(hard, changed)
    problems += [p for p in changed.validate() if p.startswith(("execution", "active_arms"))]
    return (None, problems) if problems else (changed, [])


def live_limit_problems(hard: DriverParams, changed: DriverParams) -> list[str]:
    """Why ``changed`` may not replace the running limits of a driver started with ``hard``.

    Empty when every live limit has one finite value per joint inside the hard limits: a
    position range inside the configured one (lower < upper), speeds, accelerations and the
    per-tick step positive and at most the configured ones.
    """
    n = len(hard.joint_names)
    problems = []
    arrays = {}
    for name in ("position_lower", "position_upper", "max_velocity", "max_acceleration"):
        value = np.asarray(getattr(changed, name), dtype=float)
        if value.shape != (n,):
            problems.append(f"{name} needs {n} values (one per joint), got {value.size}")
        elif not np.all(np.isfinite(value)):
            problems.append(f"{name} has non-finite values")
        else:
            arrays[name] = value
    if problems:
        return problems

    def joints(mask: np.ndarray) -> str:
        return ", ".join(hard.joint_names[j] for j in np.flatnonzero(mask))

    lower, upper = arrays["position_lower"], arrays["position_upper"]
    hard_lower, hard_upper = np.asarray(hard.position_lower), np.asarray(hard.position_upper)
    if np.any(lower < hard_lower):
        below = joints(lower < hard_lower)
        problems.append(f"position_lower below the configured hard limit for {below}")
    if np.any(upper > hard_upper):
        above = joints(upper > hard_upper)
        problems.append(f"position_upper above the configured hard limit for {above}")
    if np.any(lower >= upper):
        problems.append(f"position_lower >= position_upper for {joints(lower >= upper)}")
    for name in ("max_velocity", "max_acceleration"):
        value, cap = arrays[name], np.asarray(getattr(hard, name))
        if np.any(value <= 0):
            problems.append(f"{name} must be > 0 for {joints(value <= 0)}")
        if np.any(value > cap):
            problems.append(f"{name} above the configured hard limit for {joints(value > cap)}")
    step = changed.max_step_per_tick
    if not (np.isfinite(step) and 0 < step <= hard.max_step_per_tick):
        problems.append(
            f"max_step_per_tick must be in (0, {hard.max_step_per_tick:g}] (the configured "
            f"hard limit), got {step}"
        )
    return problems
