"""Lifecycle node: ActionChunk -> trajectory_msgs/JointTrajectory for a ros2_control arm.

For arms already driven by ros2_control (franka_ros2's joint_trajectory_controller, or any
other JTC): each validated chunk becomes one JointTrajectory whose points keep the chunk's
schedule (see ``hw_drivers.trajectory`` for the timing rules), and grippers go out separately
as a ``sensor_msgs/JointState`` with the target of each gripper joint. A chunk that fails
``hw_drivers.safety.validate_chunk`` is dropped whole, with the reason logged; nothing is sent,
so the controller keeps holding its last goal. Before sending, ``hw_drivers.bridge_guard``
checks the trajectory against the arm's measured joint states (``joint_state_topic``): a start
too far from the measured pose is refused, one far enough to need it is ramped in, and every
segment must respect the velocity and acceleration limits; without a recent measurement
nothing is sent.

On ``~/chunk_execution`` (molmoact2_msgs/ChunkExecution, as the driver node) it reports the
chunk it last sent while the controller's trajectory lasts (``tracking``; ``holding`` after
it) and its verdict on each chunk, so the policy node's real-time chunking continues the
chunk the controller runs, not one the bridge dropped. What it cannot see: a trajectory the
controller itself refuses or aborts (tolerances, preemption by another client).

``~/estop``, ``~/hold`` (std_srvs/SetBool) and ``~/reset`` (std_srvs/Trigger) answer as the
driver node's do (``hw_drivers.bridge_control``): an e-stop or hold stops forwarding chunks and
replaces the controller's trajectory with a stop at the acceleration limits; ``~/reset`` clears
them when the arm's joint states are recent. The status on ``/diagnostics`` is named
``<node>: driver`` as the driver node's, so the policy's ``~/run_task`` ends on its e-stop.

With ``gripper_command_type: forward_command`` the grippers go out instead as the
``std_msgs/Float64MultiArray`` a forward_command_controller takes on its ``~/commands``.

Usage: ``docs/ros2_control_bridge.md``.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.duration import Duration
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import (
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from hw_drivers.bridge_control import (
    BridgeControl,
    SentTrajectory,
    StopBudget,
    budget_acceleration,
    recent_velocity,
    reference_budget,
    stop_from_reference,
    stop_trajectory,
)
from hw_drivers.bridge_guard import (
    GuardConfig,
    OutgoingLimits,
    RampInProgress,
    guard,
    outgoing_problem,
)
from hw_drivers.chunk import Chunk
from hw_drivers.execution_report import ExecutionReporter
from hw_drivers.executor import EventWindow
from hw_drivers.health import estop_message
from hw_drivers.safety import (
    JointLimits,
    SafetyConfig,
    clip_into,
    validate_chunk,
    validate_timing,
)
from hw_drivers.trajectory import (
    BridgeOutput,
    JointTrajectoryData,
    chunk_to_trajectory,
    forward_command_data,
    seconds_to_duration,
)
from hw_drivers.trajectory_bridge_params import FORWARD_COMMAND, TrajectoryBridgeParams
from molmoact2_common.chunk_execution import chunk_execution_qos
from molmoact2_common.lifecycle_errors import log_transition_errors
from molmoact2_common.ros_params import declare_dataclass_params, refuse_param_changes
from molmoact2_common.ros_runtime import run_lifecycle_node
from molmoact2_msgs.msg import ActionChunk, ChunkExecution

NODE_NAME = "trajectory_bridge"
LOG_THROTTLE_S = 2.0


def chunk_from_msg(msg: ActionChunk) -> Chunk:
    """The message as a ``Chunk`` (not validated)."""
    return Chunk(
        stamp=msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9,
        start_offset=msg.start_offset.sec + msg.start_offset.nanosec * 1e-9,
        step_dt=float(msg.step_dt),
        joint_names=tuple(msg.joint_names),
        positions=list(msg.positions),
        sequence=int(msg.sequence),
        latency=float(msg.inference_latency),
    )


@log_transition_errors
class TrajectoryBridgeNode(LifecycleNode):
    def __init__(self, node_name: str = NODE_NAME, **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self._param_problems: list[str] = []  # wrong types at start: configure fails
        self.params = declare_dataclass_params(
            self, TrajectoryBridgeParams, self._param_problems
        )
        refuse_param_changes(self, TrajectoryBridgeParams)
        self._active = False
        self._chunk_sub = None
        self._trajectory_pub = None
        self._gripper_pub = None
        self._forward_gripper = False  # gripper_command_type forward_command, set at configure
        self._diag_pub = None
        self._diag_timer = None
        self.accepted = 0
        self.rejected = 0
        self.stale = 0
        self.ramped = 0
        self.last_rejection = ""
        # WARN while rejections are recent, as the driver does: one refused chunk an hour ago
        # must not keep the bridge WARN for good (a monitor would stop reading it).
        self._recent_rejections = EventWindow()  # sized at configure, once params are valid
        self._joint_sub = None
        self._measured: np.ndarray | None = None
        self._measured_at = float("-inf")
        self._busy_until = float("-inf")
        # The ramp-in the controller runs (pose it started from, when [bridge clock], how
        # long): chunks that come before it is over are blended on the same schedule.
        self._ramp: tuple[np.ndarray, float, float] | None = None
        self._execution = ExecutionReporter()
        self._execution_pub = None
        self._sent: Chunk | None = None  # the chunk whose trajectory the controller runs
        # The arm trajectory the controller last took from us (chunks and stops): where its
        # reference is when no joint state says where the arm is.
        self._controller_trajectory: SentTrajectory | None = None
        self._velocity: np.ndarray | None = None  # the arm's measured joint velocities
        # (receipt time, velocity) of the joint states of the last stop_velocity_window.
        self._recent_velocities: deque[tuple[float, np.ndarray]] = deque()
        # |reference - measured| at the last joint state read while a trajectory of ours ran:
        # how far the arm trails the reference a stop without joint states starts from.
        self._tracking_error: np.ndarray | float = 0.0
        # The operator's e-stop and hold: on the node, so they outlive deactivate/activate and
        # cleanup/configure as the driver node's do (only ~/reset, or ~/hold false, ends them).
        # Stopped until activated: chunks are refused as "inactive", and hold/reset answer so.
        self._control = BridgeControl(stopped=True)
        self._bridge_services: list = []

    # -- lifecycle -------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        problems = self._param_problems + self.params.validate()
        if problems:
            self.get_logger().error("invalid parameters: " + "; ".join(problems))
            return TransitionCallbackReturn.FAILURE
        p = self.params
        self._limits = JointLimits(
            lower=p.position_lower,
            upper=p.position_upper,
            max_velocity=p.max_velocity,
            max_acceleration=p.max_acceleration,
            margin=p.position_margin or None,
        )
        self._safety = SafetyConfig()
        self._recent_rejections = EventWindow(p.rejection_window)
        self._gripper_joints = p.resolved_gripper_joints()
        arm = [j for j, n in enumerate(p.joint_names) if n not in self._gripper_joints]
        self._arm_names = tuple(p.joint_names[j] for j in arm)
        self._arm_vmax = np.asarray(p.max_velocity, dtype=float)[arm]
        self._arm_amax = np.asarray(p.max_acceleration, dtype=float)[arm]
        self._arm_lower = np.asarray(p.position_lower, dtype=float)[arm]
        self._arm_upper = np.asarray(p.position_upper, dtype=float)[arm]
        # Joint states carry the controller's names.
        self._state_names = p.resolved_controller_joint_names() or self._arm_names
        grip = [p.joint_names.index(g) for g in self._gripper_joints]
        self._outgoing = OutgoingLimits(
            tuple(self._state_names),
            self._arm_lower,
            self._arm_upper,
            self._arm_vmax,
            tuple(self._gripper_joints),
            np.asarray(p.position_lower, dtype=float)[grip],
            np.asarray(p.position_upper, dtype=float)[grip],
        )
        self._guard = GuardConfig(
            max_start_deviation=p.max_start_deviation,
            ramp_threshold=p.ramp_in_threshold,
            ramp_in_time=p.ramp_in_time,
            max_state_age=p.max_state_age,
        )
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self._trajectory_pub = self.create_publisher(JointTrajectory, p.trajectory_topic, reliable)
        # forward_command_controller subscribes its ~/commands with rclcpp::SystemDefaultsQoS
        # (reliable, volatile): a reliable publisher reaches it, a best-effort one would not.
        self._forward_gripper = p.gripper_command_type == FORWARD_COMMAND
        gripper_msg = Float64MultiArray if self._forward_gripper else JointState
        self._gripper_pub = self.create_publisher(gripper_msg, p.gripper_topic, reliable)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._execution_pub = self.create_publisher(
            ChunkExecution,
            "~/chunk_execution",
            chunk_execution_qos(),
        )
        self._chunk_sub = self.create_subscription(
            ActionChunk, p.chunk_topic, self._on_chunk, reliable
        )
        self._joint_sub = self.create_subscription(
            JointState, p.joint_state_topic, self._on_joint_state, qos_profile_sensor_data
        )
        self._diag_timer = self.create_timer(1.0, self._publish_diagnostics)
        self._bridge_services = [
            self.create_service(Trigger, "~/estop", self._on_estop),
            self.create_service(Trigger, "~/reset", self._on_reset),
            self.create_service(SetBool, "~/hold", self._on_hold),
        ]
        if self._control.estopped:
            self.get_logger().warning(
                "the e-stop latched before cleanup is still latched "
                f"({self._control.estop_reason}): no chunk is forwarded until ~/reset"
            )
        self.get_logger().info(
            f"bridging {p.chunk_topic} -> {p.trajectory_topic} (arm), {p.gripper_topic} "
            f"(grippers {list(self._gripper_joints)}, {gripper_msg.__name__})"
        )
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = True
        self._control.start()
        if self._control.refusal():
            self.get_logger().warning(
                f"activated, but {self._control.refusal()}: call ~/reset (or ~/hold false) "
                "to forward chunks"
            )
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_following("deactivated")
        return super().on_deactivate(state)

    def _stop_following(self, why: str) -> None:
        """Refuse chunks from now on and stop a trajectory of ours the controller still runs,
        as the driver holds when it stops following: the controller would otherwise play the
        rest of the last chunk (up to max_chunk_duration) after the node stopped following."""
        self._active = False
        self._control.stop()
        now = self.get_clock().now().nanoseconds * 1e-9
        if now < self._busy_until:
            self.get_logger().info(f"{why}: {self._stop_motion()}")
        self._report_execution(now)

    def finish_on_exit(self) -> None:
        """Process exit (any signal, the launcher gone) or shutdown: stop following, and stop
        what of ours still runs (best effort at exit: the process ends right after)."""
        if self._trajectory_pub is not None:
            self._stop_following("stopping")

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.finish_on_exit()
        self._control.stop()
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def _teardown(self) -> None:
        for sub in (self._chunk_sub, self._joint_sub):
            if sub is not None:
                self.destroy_subscription(sub)
        for pub in (self._trajectory_pub, self._gripper_pub, self._diag_pub, self._execution_pub):
            if pub is not None:
                self.destroy_publisher(pub)
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
        for service in self._bridge_services:
            self.destroy_service(service)
        self._bridge_services = []
        self._chunk_sub = self._joint_sub = self._trajectory_pub = self._gripper_pub = None
        self._diag_pub = self._diag_timer = self._execution_pub = None

    # -- measured state ---------------------------------------------------------------------
    def _on_joint_state(self, msg: JointState) -> None:
        index = {name: k for k, name in enumerate(msg.name)}
        if any(n not in index for n in self._state_names) or len(msg.position) != len(msg.name):
            return  # another arm's or the gripper's joint states on the same topic
        values = np.array([msg.position[index[n]] for n in self._state_names], dtype=float)
        if np.all(np.isfinite(values)):
            now = self.get_clock().now().nanoseconds * 1e-9
            if len(msg.velocity) == len(msg.name):
                self._velocity = np.array(
                    [msg.velocity[index[n]] for n in self._state_names], dtype=float
                )
            elif self._measured is not None and 0 < now - self._measured_at <= 0.1:
                # No velocities in the message: from the last two poses.
                self._velocity = (values - self._measured) / (now - self._measured_at)
            else:
                self._velocity = None
            if self._velocity is not None and not np.all(np.isfinite(self._velocity)):
                self._velocity = None  # unknown: the guard and the stops take it as at rest
            if self._velocity is None:
                self._recent_velocities.clear()
            else:
                self._recent_velocities.append((now, self._velocity))
            while self._recent_velocities and (
                self._recent_velocities[0][0] < now - self.params.stop_velocity_window
            ):
                self._recent_velocities.popleft()
            self._measured = values
            self._measured_at = now
            sent = self._controller_trajectory
            if sent is not None and sent.sent_at <= now < sent.ends_at:
                self._tracking_error = np.abs(sent.reference(now)[0] - values)

    def _measured_pose(self, now: float) -> np.ndarray | None:
        if self._measured is None or now - self._measured_at > self.params.max_state_age:
            return None
        return self._measured

    # -- chunks ----------------------------------------------------------------------------
    def _on_chunk(self, msg: ActionChunk) -> None:
        # Every chunk passes here: inactive, e-stop and hold refuse it with a verdict (an
        # inactive bridge used to drop it silently: no verdict on ~/chunk_execution).
        refusal = self._control.refusal()
        if refusal:
            self._reject(refusal, msg)
            return
        now = self.get_clock().now().nanoseconds * 1e-9
        try:
            chunk = chunk_from_msg(msg)
        except (ValueError, TypeError) as exc:
            self._reject(f"malformed: {exc}", msg)
            return
        # The same time-domain rules as the driver: a chunk stamped far ahead or with absurd
        # step_dt would otherwise reach the controller as a trajectory of absurd durations.
        reason = validate_timing(chunk, now, self._safety) or validate_chunk(
            chunk, self.params.joint_names, self._limits, None, self._safety
        )
        if reason is not None:
            self._reject(reason, msg)
            return
        # Points accepted within position_margin reach the controller at the limit.
        chunk = clip_into(chunk.reordered(self.params.joint_names), self._limits)
        out = chunk_to_trajectory(
            chunk,
            now,
            joint_names=self.params.joint_names,
            gripper_joints=self._gripper_joints,
            controller_joint_names=self.params.resolved_controller_joint_names(),
            min_lead_time=self.params.min_lead_time,
            compute_velocities=self.params.compute_velocities,
        )
        if out.trajectory is None and out.gripper is None:
            self.stale += 1
            self._verdict(msg, now, f"stale: all {chunk.horizon} actions are in the past")
            self.get_logger().warning(
                f"chunk {msg.sequence} is entirely in the past ({out.skipped} actions, "
                f"{now - chunk.end_time:.3f} s after its last one): nothing sent",
                throttle_duration_sec=LOG_THROTTLE_S,
            )
            return
        ongoing = None
        if self._ramp is not None and now < self._ramp[1] + self._ramp[2]:
            home, started, duration = self._ramp
            ongoing = RampInProgress(home, now - started, duration)
        checked = guard(
            out,
            self._arm_names,
            self._measured_pose(now),
            self._arm_vmax,
            self._arm_amax,
            self._guard,
            lower=self._arm_lower,
            upper=self._arm_upper,
            idle=now >= self._busy_until,
            measured_velocity=self._velocity,
            ramp_in_progress=ongoing,
        )
        if checked.output is None:
            self._reject(checked.reason, msg)
            return
        out = checked.output
        problem = self._send(out, self._measured_pose(now))
        if problem:
            self._reject(f"outgoing: {problem}", msg)
            return
        if checked.ramp > 0 and ongoing is None:
            self._ramp = (self._measured_pose(now), now, checked.ramp)
            self.ramped += 1
            self.get_logger().info(
                f"chunk {msg.sequence} ramped in: blended from the measured pose onto the "
                f"chunk over {checked.ramp:.2f} s, within the limits",
                throttle_duration_sec=LOG_THROTTLE_S,
            )
        if out.trajectory is not None and out.trajectory.points:
            self._busy_until = now + out.trajectory.points[-1].time_from_start
            # The guard sent it only with a recent measured pose: the controller's start.
            self._controller_trajectory = SentTrajectory(
                out.trajectory, now, self._measured_pose(now), self._velocity
            )
        self.accepted += 1
        self._sent = chunk
        self._verdict(msg, now)

    def _execution_state(self, now: float) -> tuple[str, Chunk | None]:
        if self._control.refusal():
            return self._control.state("holding"), None
        if now < self._busy_until:
            return "tracking", self._sent
        return ("holding" if self._sent is not None else "idle"), None

    def _verdict(self, msg: ActionChunk, now: float, reason: str = "") -> None:
        """Record the verdict on ``msg`` ("" reason: sent) and report it."""
        stamp = msg.header.stamp
        self._execution.on_verdict(
            msg.sequence, stamp.sec * 1_000_000_000 + stamp.nanosec, not reason, reason
        )
        self._report_execution(now)

    def _report_execution(self, now: float) -> None:
        state, running = self._execution_state(now)
        report = self._execution.publishable(self._execution.report(now, state, running), now)
        if report is not None and self._execution_pub is not None:
            self._execution_pub.publish(report.fill_msg(ChunkExecution()))

    def _reject(self, reason: str, msg: ActionChunk) -> None:
        self.rejected += 1
        sequence = msg.sequence
        now = self.get_clock().now().nanoseconds * 1e-9
        self._recent_rejections.add(now)
        self._verdict(msg, now, reason)
        self.last_rejection = reason
        self.get_logger().warning(
            f"chunk {sequence} rejected, nothing sent: {reason}",
            throttle_duration_sec=LOG_THROTTLE_S,
        )

    def _send(self, out: BridgeOutput, measured: np.ndarray | None) -> str:
        """Every message to the controller and the gripper passes here, chunk or stop: sent
        only if ``bridge_guard.outgoing_problem`` finds nothing. Returns the problem ("" when
        sent)."""
        problem = outgoing_problem(out, self._outgoing, measured)
        if problem:
            self.get_logger().error(f"nothing sent to the controller: {problem}")
            return problem
        self._publish(out)
        return ""

    def _publish(self, out: BridgeOutput) -> None:
        if out.trajectory is not None:
            msg = JointTrajectory()
            # Zero stamp: the controller starts the trajectory on receipt; times are from now.
            msg.joint_names = list(out.trajectory.joint_names)
            for point in out.trajectory.points:
                p = JointTrajectoryPoint()
                p.positions = [float(v) for v in point.positions]
                if point.velocities is not None:
                    p.velocities = [float(v) for v in point.velocities]
                sec, nanosec = seconds_to_duration(point.time_from_start)
                p.time_from_start.sec, p.time_from_start.nanosec = sec, nanosec
                msg.points.append(p)
            self._trajectory_pub.publish(msg)
        if out.gripper is not None and self._forward_gripper:
            self._gripper_pub.publish(Float64MultiArray(data=forward_command_data(out.gripper)))
        elif out.gripper is not None:
            grip = JointState()
            grip.header.stamp = (
                self.get_clock().now() + Duration(seconds=out.gripper.time_from_start)
            ).to_msg()  # when the gripper should be there
            grip.name = list(out.gripper.joint_names)
            grip.position = [float(v) for v in out.gripper.positions]
            self._gripper_pub.publish(grip)

    # -- the operator's services (as the driver node's) ---------------------------------------
    def _stop_motion(self) -> str:
        """Replace the controller's trajectory with a stop; what happened."""
        now = self.get_clock().now().nanoseconds * 1e-9
        measured = self._measured_pose(now)
        self._busy_until = float("-inf")  # the next chunk ramps in from idle
        self._ramp = None
        if self._trajectory_pub is None:
            return "inactive: nothing was sent to the controller"
        if measured is None:
            # No pose to stop from. Not an empty trajectory: current joint_trajectory_controller
            # releases refuse one ("Empty trajectory received.") and play on what they run.
            stop, start, velocity = stop_from_reference(
                self._controller_trajectory,
                now,
                self._arm_amax,
                self._arm_lower,
                self._arm_upper,
                self.params.min_lead_time,
                self.params.stop_start_delay,
                self._tracking_error,
                self.params.max_stop_extension,
            )
            if stop is None:
                self._controller_trajectory = None
                return (
                    "no recent joint state of the arm, and no trajectory of ours is running: "
                    "nothing sent (the controller holds the last point it was sent)"
                )
            problem = self._send_stop(stop, now, start, velocity)
            if problem:
                return f"no stop sent: {problem}"
            budget = reference_budget(self.params.stop_start_delay, self._tracking_error)
            return (
                "no recent joint state of the arm: stop sent from the controller's reference on "
                f"the trajectory it runs ({self._stop_figures(stop, velocity, budget)})"
            )
        # The arm has moved on since its joint state, and moves on until the controller takes
        # the stop (from where the arm is then): planned from the old pose, the stop's spline
        # must first make up the difference, decelerating harder than the limit (6 e / T^2
        # more). The start is carried forward to when the controller takes it (only while a
        # trajectory of ours ran: after its end the controller holds still), and the stop is
        # lengthened over what is not known (StopBudget).
        # The velocity: the mean of the last moments' (a replacement's dip averages out), the
        # stop lengthened over their spread.
        velocity, spread = recent_velocity([v for _t, v in self._recent_velocities])
        budget = StopBudget(
            now - self._measured_at,
            self.params.stop_start_delay,
            spread if velocity is not None else 0.0,
        )
        start = measured
        if velocity is not None:
            until = self._measured_at + budget.planning_lead()
            if self._controller_trajectory is not None:
                until = min(until, self._controller_trajectory.ends_at)
            start = measured + velocity * max(0.0, until - self._measured_at)
        # Joint states and the controller use the controller's joint names.
        stop = stop_trajectory(
            self._state_names,
            start,
            velocity,
            self._arm_amax,
            self._arm_lower,
            self._arm_upper,
            self.params.min_lead_time,
            budget,
            self.params.max_stop_extension,
        )
        problem = self._send_stop(stop, now, start, velocity)
        if problem:
            return f"no stop sent: {problem}"
        return f"stop sent to the controller ({self._stop_figures(stop, velocity, budget)})"

    def _stop_figures(
        self, stop: JointTrajectoryData, velocity: np.ndarray | None, budget: StopBudget
    ) -> str:
        """The stop's duration, and what a start at the edge of its error budget needs when
        max_stop_extension cut it short (the operator sees why it may decelerate harder)."""
        duration = stop.points[0].time_from_start
        needs = budget_acceleration(velocity, self._arm_amax, budget, duration)
        joint = int(np.argmax(needs / self._arm_amax))
        if needs[joint] <= self._arm_amax[joint] * (1.0 + 1e-9):
            return f"{duration:.2f} s"
        return (
            f"{duration:.2f} s, cut short by max_stop_extension: a controller start at the edge "
            f"of its error budget needs up to {needs[joint]:.2f} rad/s^2 on "
            f"{self._state_names[joint]} (max_acceleration {self._arm_amax[joint]:g})"
        )

    def _send_stop(
        self,
        stop: JointTrajectoryData,
        now: float,
        start: np.ndarray,
        velocity: np.ndarray | None,
    ) -> str:
        """Send ``stop``; why it was not sent ("" when it was)."""
        problem = self._send(BridgeOutput(stop, None, 0), start)
        if not problem:
            self._controller_trajectory = SentTrajectory(stop, now, start, velocity)
        return problem

    def _on_estop(self, request: Trigger.Request, response: Trigger.Response):
        message = self._control.estop()
        stopped = self._stop_motion()
        self.get_logger().warning(
            f"E-STOP latched ({self._control.estop_reason}): no chunk is forwarded until "
            f"~/reset; {stopped}"
        )
        self._report_execution(self.get_clock().now().nanoseconds * 1e-9)
        response.success, response.message = True, message
        return response

    def _on_hold(self, request: SetBool.Request, response: SetBool.Response):
        response.success, response.message = self._control.hold(bool(request.data))
        if request.data:
            self.get_logger().info(f"~/hold: {self._stop_motion()}")
        self._report_execution(self.get_clock().now().nanoseconds * 1e-9)
        return response

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response):
        now = self.get_clock().now().nanoseconds * 1e-9
        response.success, response.message = self._control.reset(
            self._measured_pose(now) is not None
        )
        if response.success:
            self._busy_until = float("-inf")
            self._ramp = None
        self.get_logger().info(response.message)
        self._report_execution(now)
        return response

    def _publish_diagnostics(self) -> None:
        # The 1 Hz heartbeat of ~/chunk_execution, and its "holding" once a trajectory is over.
        self._report_execution(self.get_clock().now().nanoseconds * 1e-9)
        status = DiagnosticStatus()
        # Named as the driver node's status: the policy's ~/run_task ends on its ERROR.
        status.name = f"{self.get_fully_qualified_name()}: driver"
        status.hardware_id = self.params.robot
        recent = self._recent_rejections.count(self.get_clock().now().nanoseconds * 1e-9)
        if self._control.estopped:
            status.level = DiagnosticStatus.ERROR
            status.message = estop_message(self._control.estop_reason)
        elif recent:
            status.level = DiagnosticStatus.WARN
            status.message = (
                f"{recent} chunks rejected in the last {self.params.rejection_window:g} s; "
                f"last: {self.last_rejection}"
            )
        else:
            status.level = DiagnosticStatus.OK
            status.message = self._control.state("active" if self._active else "inactive")
        values = {
            "state": self._control.state("active" if self._active else "inactive"),
            "estop_reason": self._control.estop_reason,
            "backend": "ros2_control (trajectory bridge)",
            "accepted": self.accepted,
            "rejected": self.rejected,
            "rejected_recently": recent,
            "rejection_window_s": f"{self.params.rejection_window:g}",
            "last_reject_reason": self.last_rejection,
            "stale": self.stale,
            "ramped_in": self.ramped,
            "measured_state_age": (
                f"{self.get_clock().now().nanoseconds * 1e-9 - self._measured_at:.3f}"
                if self._measured is not None
                else "none"
            ),
            "trajectory_topic": self.params.trajectory_topic,
        }
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [status]
        self._diag_pub.publish(array)


def main(args: list[str] | None = None) -> None:
    """Console script ``trajectory_bridge_node``."""
    run_lifecycle_node(TrajectoryBridgeNode, args, on_exit=lambda node: node.finish_on_exit())


if __name__ == "__main__":
    main()
