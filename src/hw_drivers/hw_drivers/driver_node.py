"""Robot driver node: follows ActionChunks with the chunk executor on one backend.

A thin lifecycle shell over ``ControlLoop`` (backend + ``ChunkExecutor``): configure builds
them from ``DriverParams``, activate connects and starts the control thread, deactivate stops
it and holds, cleanup disconnects. All timing uses the node clock, so ``use_sim_time`` works:
chunk stamps, ticks and published stamps share one time base; the loop is paced by the steady
clock, or under ``use_sim_time`` by the node clock.

The control loop runs on its own thread (``hw_drivers.control_thread``), not on an rclpy
timer: anything else the executor's one thread handles (a parameter request with a million
entries, raw camera frames) held every tick back, and the arm stood still meanwhile. Every
piece of state a tick shares with the executor's callbacks is behind ``self._lock`` (the
loop, the execution reporter) or locks of its own (``TickTiming``, ``RateMeter``); the
control thread is stopped before anything it uses is torn down, and never while ``_lock`` is
held (the tick takes it: joining under it would deadlock).

Run as a plain process (no lifecycle manager) it configures and activates itself
(``autostart``)::

    driver_node --ros-args --params-file config/yam.yaml -r __node:=yam_driver
"""

from __future__ import annotations

import logging
import sys
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import (
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_srvs.srv import SetBool, Trigger

from hw_drivers.backends.base import BackendError
from hw_drivers.backends.registry import BackendUnavailableError, make_backend
from hw_drivers.control_loop import ControlLoop
from hw_drivers.control_thread import ControlThread
from hw_drivers.conversions import joint_state_msg
from hw_drivers.driver_params import LIVE_LIMITS, DriverParams, live_update
from hw_drivers.execution_report import ExecutionReporter
from hw_drivers.executor import ChunkExecutor
from hw_drivers.hardware_status import execution_summary, health_statuses, make_preflight
from hw_drivers.health import driver_summary
from hw_drivers.preflight import RateMeter
from hw_drivers.tick_timing import TickTiming
from molmoact2_common.chunk_execution import chunk_execution_qos
from molmoact2_common.lifecycle_errors import log_transition_errors
from molmoact2_common.ros_params import declare_dataclass_params
from molmoact2_common.ros_runtime import run_lifecycle_node
from molmoact2_msgs.msg import ActionChunk, ChunkExecution

_LOG_EVERY = 2.0  # [s] throttle for repeated warnings (never log every tick)
# How long stopping the control thread waits for the tick in progress (a tick is well under a
# millisecond; a backend call stuck in I/O is what this bounds).
_STOP_WAIT = 1.0  # [s]
_SIM_POLL = 0.001  # [s, wall] how often the loop looks at a sim clock while it waits
_log = logging.getLogger(__name__)
# The driver process's GIL switch interval [s] (None: Python's 5 ms). A thread that wants the
# GIL waits up to this long for the one holding it (the executor converting a big request),
# which at 5 ms is more than the 4 ms control period. Measured with bench/executor.py under
# 1M-entry parameter requests: 219 / 196 Hz achieved at 1 ms vs 139 / 131 Hz at 5 ms (250 Hz
# asked; no load: 250 Hz either way). The bench overrides it to compare.
SWITCH_INTERVAL: float | None = 0.001


@log_transition_errors
class DriverNode(LifecycleNode):
    def __init__(self, node_name: str = "driver", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        self._param_problems: list[str] = []  # wrong types at start: configure fails on them
        self.params: DriverParams = declare_dataclass_params(
            self, DriverParams, self._param_problems
        )
        # The limits in the config are hard: live changes may only tighten them.
        self._hard_limits = self.params
        self._lock = threading.Lock()
        self._loop: ControlLoop | None = None
        self._io_group = MutuallyExclusiveCallbackGroup()
        self._control: ControlThread | None = None
        self._diag_timer = None
        self._entities: list = []
        self._state_period = 0.0
        self._last_state_publish = float("-inf")
        self._tick_timing: TickTiming | None = None
        # A latched e-stop outlives cleanup -> configure (a lifecycle manager's reset cycle),
        # and with it why it latched (the executor's ``estop_reason``, carried here only while
        # no loop exists) and whether the torque is kept off: only ~/reset clears them.
        self._estop_reason = ""
        self._torque_off_latched = False
        self._estop_logged = ""  # the e-stop reason last logged (each new one is, once)
        # Likewise an operator's ~/hold(true) outlives cleanup -> configure, carried here only
        # while no loop exists (the loop's ``operator_hold`` is the one record meanwhile: it
        # outlives deactivate -> activate and reconnects there).
        self._hold_latched = False
        self._execution = ExecutionReporter()
        self.add_on_set_parameters_callback(self._on_set_parameters)

    # -- lifecycle ----------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        params = self.params
        problems = self._param_problems + params.validate()
        if problems:
            self.get_logger().error("invalid driver parameters: " + "; ".join(problems))
            return TransitionCallbackReturn.FAILURE
        try:
            backend = make_backend(params)
            executor = ChunkExecutor(
                params.joint_names,
                params.limits(),
                params.safety_config(),
                params.executor_config(),
            )
        except (BackendUnavailableError, BackendError, ValueError) as err:
            self.get_logger().error(f"cannot build the {params.backend!r} backend: {err}")
            return TransitionCallbackReturn.FAILURE
        self._camera_meters = {name: RateMeter() for name in params.camera_names}
        self._loop = ControlLoop(
            backend,
            executor,
            on_fault=params.on_fault,
            reconnect_period=params.reconnect_period,
            max_tick_errors=params.max_tick_errors,
            fault_window=params.fault_window,
            max_backend_faults=params.max_backend_faults,
            shadow=params.is_shadow(),
            hold_mask=params.hold_mask(),
            preflight=make_preflight(params, backend, self._camera_rates, self._log_preflight)
            if params.runs_preflight()
            else None,
        )
        self._last_preflight_text = ""
        if self._estop_reason:
            self._loop.estop(self._estop_reason)
            self._loop.torque_off_latched = self._torque_off_latched
            self._estop_logged = self._estop_reason
            torque = "torque kept off" if self._torque_off_latched else "holding"
            self.get_logger().warning(
                f"the e-stop latched before cleanup is still latched ({self._estop_reason}): "
                f"{torque} until ~/reset"
            )
            # Handed over: from here the executor is the one record (finish_on_exit takes it
            # back), so a later ~/reset is not undone by a stale copy here.
            self._estop_reason, self._torque_off_latched = "", False
        self._loop.operator_hold, self._hold_latched = self._hold_latched, False
        self._state_period = 1.0 / params.state_publish_rate if params.state_publish_rate else 0
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        # State and commands reliable, as ros2_control's joint_state_broadcaster publishes
        # joint_states: default (reliable) subscribers and best-effort ones both match.
        self._joint_pub = self.create_publisher(JointState, "joint_states", reliable)
        self._command_pub = self.create_publisher(JointState, "~/commanded_joint_states", reliable)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", reliable)
        # Which chunk runs: a state topic, latched so a subscriber starting late gets it.
        self._execution = ExecutionReporter()
        self._execution_pub = self.create_publisher(
            ChunkExecution,
            "~/chunk_execution",
            chunk_execution_qos(),
        )
        self._chunk_sub = self.create_subscription(
            ActionChunk,
            params.chunk_topic,
            self._on_chunk,
            reliable,
            callback_group=self._io_group,
        )
        # Not `_services`: that is rclpy.Node's own list (its parameter services live there).
        self._driver_services = [
            self.create_service(Trigger, "~/estop", self._on_estop, callback_group=self._io_group),
            self.create_service(Trigger, "~/reset", self._on_reset, callback_group=self._io_group),
            self.create_service(SetBool, "~/hold", self._on_hold, callback_group=self._io_group),
            self.create_service(
                Trigger,
                "~/clear_motor_faults",
                self._on_clear_faults,
                callback_group=self._io_group,
            ),
        ]
        self._camera_subs = []
        if params.checks_cameras():
            transports = list(params.camera_transports) or ["raw"] * len(params.camera_names)
            for name, topic, transport in zip(
                params.camera_names, params.camera_topics, transports, strict=False
            ):
                self._camera_subs.append(
                    self.create_subscription(
                        CompressedImage if transport == "compressed" else Image,
                        topic,
                        lambda msg, camera=name: self._camera_meters[camera].tick(self._now()),
                        qos_profile_sensor_data,
                        callback_group=self._io_group,
                    )
                )
        self.get_logger().info(execution_summary(params, backend))
        self.get_logger().info(
            f"configured: backend {params.backend}, {len(params.joint_names)} joints, "
            f"{params.control_rate:g} Hz, chunks from {self._chunk_sub.topic_name}"
            + (" (dry run)" if params.dry_run else "")
        )
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._loop is None:  # lifecycle configures first; not an assert (-O drops those)
            self.get_logger().error("activate before a successful configure")
            return TransitionCallbackReturn.FAILURE
        with self._lock:
            try:
                self._loop.start()
            except BackendError as err:
                # Keep the node up and retry: plugging the robot in should not need a restart.
                self._loop.faulted = True
                self._loop.stats.last_error = f"connect failed: {err}"
                self.get_logger().error(
                    f"backend {self.params.backend} did not connect ({err}); retrying every "
                    f"{self.params.reconnect_period:g} s"
                )
            if self._loop.operator_hold:  # start() kept it (a reconnect does too)
                self.get_logger().warning(
                    "an earlier ~/hold(true) is still in force: call ~/hold false "
                    "to follow chunks"
                )
        period = 1.0 / self.params.control_rate
        # Lateness over the last 10 s of ticks, against the loop's own schedule.
        self._tick_timing = TickTiming(period, window=max(2, round(10.0 / period)))
        pacing = {}
        if self.get_parameter("use_sim_time").value:
            # Under sim time the ticks follow the node clock, as a ROS timer on it does:
            # whoever publishes /clock paces them (a paused clock, no ticks). The clock is
            # polled every millisecond of wall time, so stop() never waits on a paused clock.
            pacing = {"clock": self._now, "sleep": lambda s: time.sleep(min(s, _SIM_POLL))}
        self._control = ControlThread(
            self._on_control_tick,
            period,
            on_error=self._on_tick_error,
            name=f"{self.get_name()}-control",
            **pacing,
        )
        self._control.start()
        self._diag_timer = self.create_timer(
            1.0, self._publish_diagnostics, callback_group=self._io_group
        )
        self.get_logger().info("active")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_control()
        self._stop_timers()
        if self._loop is not None:
            with self._lock:
                self._loop.stop()
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.finish_on_exit()  # the link closes: the arm is left as exit_behavior says
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.finish_on_exit()
        return TransitionCallbackReturn.SUCCESS

    def _stop_control(self) -> None:
        """Stop the control loop first, before what it uses goes. Never under ``self._lock``:
        the tick in progress takes it, and this waits for that tick."""
        control, self._control = self._control, None
        if control is not None and not control.stop(timeout=_STOP_WAIT):
            self.get_logger().error(
                f"the control tick did not end within {_STOP_WAIT:g} s (a backend call stuck?)"
            )

    def _stop_timers(self) -> None:
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
        self._diag_timer = None

    def finish_on_exit(self) -> None:
        """Process exit (any signal, the launcher gone) or cleanup/shutdown: hold, optionally
        return to rest and release, as ``exit_behavior`` says; never torque off mid-motion."""
        self._stop_control()  # first: finish() drives the arm itself from here on
        self._stop_timers()
        release = False
        if self._loop is not None:
            p = self.params
            with self._lock:
                self._estop_reason = self._loop.estop_reason
                self._torque_off_latched = self._loop.torque_off_latched
                self._hold_latched = self._loop.operator_hold
                release, what = self._loop.finish(
                    p.exit_behavior,
                    period=1.0 / p.control_rate,
                    speed=p.exit_speed,
                    timeout=p.exit_timeout,
                )
            self.get_logger().info(f"stopped: {what}")
        self._teardown(release=release)

    def _teardown(self, release: bool = True) -> None:
        self._stop_control()
        self._stop_timers()
        if self._loop is not None:
            with self._lock:
                self._loop.shutdown(release=release)
            self._loop = None
        for service in getattr(self, "_driver_services", []):
            self.destroy_service(service)
        self._driver_services = []
        for sub in getattr(self, "_camera_subs", []):
            self.destroy_subscription(sub)
        self._camera_subs = []
        if getattr(self, "_chunk_sub", None) is not None:
            self.destroy_subscription(self._chunk_sub)
            self._chunk_sub = None
        # Taken out under the lock first, destroyed after: the chunk callback reports on
        # ~/chunk_execution under the lock, and one running between a destroy and the attribute
        # set to None published on a destroyed publisher.
        names = ("_joint_pub", "_command_pub", "_diag_pub", "_execution_pub")
        with self._lock:
            publishers = [getattr(self, name, None) for name in names]
            for name in names:
                setattr(self, name, None)
        for pub in publishers:
            if pub is not None:
                self.destroy_publisher(pub)

    # -- callbacks ----------------------------------------------------------------------------

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_control_tick(self, deadline: float, started: float) -> None:
        """One tick of the control thread; ``deadline``/``started`` on its clock."""
        timing = self._tick_timing
        if timing is not None:
            timing.record(deadline, started)
        self._on_tick()

    def _on_tick_error(self, exc: BaseException) -> bool:
        """A tick raised (a bug, not a backend error: those ``ControlLoop.step`` handles):
        the arm holds through the backend-fault path, which reconnects and starts a fresh
        command stream after ``reconnect_period``. The loop goes on ticking for that; after
        ``max_tick_errors`` errors without a successful tick, or as many within
        ``fault_window``, the e-stop latches."""
        error = f"tick error: {type(exc).__name__}: {exc}"
        loop = self._loop
        if loop is not None:
            with self._lock:
                loop.tick_error(self._now(), error)
            self._log_new_estop(loop)
        control = self._control
        if control is None or control.errors <= 1:  # the traceback once, then throttled lines
            _log.error("control tick failed", exc_info=exc)
        self.get_logger().error(
            f"{error}; holding (on_fault={self.params.on_fault})",
            throttle_duration_sec=_LOG_EVERY,
        )
        return True

    def _on_tick(self) -> None:
        loop = self._loop
        if loop is None:
            return
        now = self._now()
        with self._lock:
            result = loop.step(now)
            report = self._execution.due(loop.executor, now, "fault" if loop.faulted else None)
            self._publish_execution(report)
        if result.error:
            self.get_logger().error(
                f"backend fault: {result.error} (on_fault={self.params.on_fault})",
                throttle_duration_sec=_LOG_EVERY,
            )
            self._log_new_estop(loop)
        names = self.params.joint_names
        if result.reading is not None and now - self._last_state_publish >= self._state_period:
            self._last_state_publish = now
            reading = result.reading
            self._joint_pub.publish(
                joint_state_msg(names, reading.positions, now, reading.velocities, reading.efforts)
            )
        if result.command is not None:
            command = result.command
            self._command_pub.publish(
                joint_state_msg(names, command.positions, now, command.velocities)
            )
            # Only here, at the end: a bug in the publishing above must count as well.
            with self._lock:
                loop.tick_succeeded()

    def _log_new_estop(self, loop: ControlLoop) -> None:
        """Log an e-stop the loop latched itself (recurring tick errors or backend faults),
        once, with its reason; a plain read of one str, so no lock."""
        reason = loop.estop_reason
        if reason and reason != self._estop_logged:
            torque = "torque kept off" if loop.torque_off_latched else "holding"
            self.get_logger().error(f"E-STOP latched: {reason}; {torque} until ~/reset")
        self._estop_logged = reason

    def _on_chunk(self, msg: ActionChunk) -> None:
        loop = self._loop
        if loop is None:
            return
        # Conversion and the stateless checks, O(horizon x joints), outside the lock the control
        # tick takes; under it only what needs the current state and time, then the swap-in.
        prepared = loop.prepare_msg(msg)
        now = self._now()
        with self._lock:
            result = loop.submit_prepared(prepared, now)
            stamp = msg.header.stamp
            self._execution.on_verdict(
                msg.sequence,
                stamp.sec * 1_000_000_000 + stamp.nanosec,
                result.accepted,
                result.reason,
            )
            report = self._execution.due(loop.executor, now, "fault" if loop.faulted else None)
            self._publish_execution(report)
        if not result.accepted:
            self.get_logger().warning(
                f"chunk {msg.sequence} rejected: {result.reason}", throttle_duration_sec=_LOG_EVERY
            )

    def _publish_execution(self, report) -> None:
        # Called under self._lock: the control thread and the chunk callback both report, and
        # one published out of order would leave a stale report latched (transient local).
        pub = getattr(self, "_execution_pub", None)
        if report is not None and pub is not None:
            pub.publish(report.fill_msg(ChunkExecution()))

    def _on_estop(self, request: Trigger.Request, response: Trigger.Response):
        if self._loop is None:
            response.success, response.message = False, "driver is not configured"
            return response
        with self._lock:
            message = self._loop.estop()
            reason = self._loop.estop_reason
        self._estop_logged = reason
        self.get_logger().warning(f"E-STOP latched ({reason}): holding until ~/reset")
        response.success, response.message = True, message
        return response

    def _on_reset(self, request: Trigger.Request, response: Trigger.Response):
        if self._loop is None:
            response.success, response.message = False, "driver is not configured"
            return response
        with self._lock:
            response.success, response.message = self._loop.reset()
            self._estop_logged = self._loop.estop_reason
        self.get_logger().info(response.message)
        return response

    def _on_hold(self, request: SetBool.Request, response: SetBool.Response):
        if self._loop is None:
            response.success, response.message = False, "driver is not configured"
            return response
        with self._lock:
            response.success, response.message = self._loop.hold(bool(request.data))
        return response

    def _on_set_parameters(self, parameters):
        """``execution``, ``active_arms`` and the safety limits (``LIVE_LIMITS``, only inside
        the configured ones) may change while running (``ros2 param set``); every other driver
        parameter is refused with the reason (it is read once, at start)."""
        from rcl_interfaces.msg import SetParametersResult

        params, problems = live_update(
            self._hard_limits, self.params, {p.name: p.value for p in parameters}
        )
        if params is None:
            self.get_logger().warning("parameter change refused: " + "; ".join(problems))
            return SetParametersResult(successful=False, reason="; ".join(problems))
        changed = {
            name
            for name in DriverParams.__dataclass_fields__
            if getattr(params, name) != getattr(self.params, name)
        }
        loop = self._loop
        if loop is not None and changed:
            with self._lock:
                if changed & set(LIVE_LIMITS):
                    loop.executor.set_limits(params.limits(), params.max_step_per_tick)
                if changed & {"execution", "active_arms"}:
                    loop.set_activation(params.is_shadow(), params.hold_mask())
        self.params = params
        if changed & set(LIVE_LIMITS):
            self.get_logger().warning(
                "safety limits changed: "
                + ", ".join(f"{k}={getattr(params, k)}" for k in sorted(changed & set(LIVE_LIMITS)))
            )
        if loop is not None and changed & {"execution", "active_arms"}:
            self.get_logger().warning(execution_summary(params, loop.backend))
        return SetParametersResult(successful=True)

    def _camera_rates(self) -> dict[str, float]:
        now = self._now()
        return {name: meter.rate(now) for name, meter in self._camera_meters.items()}

    def _log_preflight(self, text: str, ok: bool) -> None:
        # One block per outcome: a preflight retried every reconnect_period while a camera
        # comes up must not repeat the same block each time.
        if text == self._last_preflight_text:
            return
        self._last_preflight_text = text
        # rclpy ties a severity to each call site: one call per severity.
        if ok:
            self.get_logger().info(text)
        else:
            self.get_logger().error(text)

    def _on_clear_faults(self, request: Trigger.Request, response: Trigger.Response):
        loop = self._loop
        if loop is None:
            response.success, response.message = False, "driver is not configured"
            return response
        with self._lock:
            try:
                cleared = loop.backend.clear_faults()
            except BackendError as err:
                response.success, response.message = False, f"cannot clear faults: {err}"
                return response
        message = "; ".join(cleared) if cleared else "no motor reports a fault"
        self.get_logger().warning(f"clear_motor_faults: {message}")
        response.success, response.message = True, message
        return response

    def _publish_diagnostics(self) -> None:
        loop = self._loop
        timing = self._tick_timing
        control = self._control
        if loop is None or timing is None or control is None:
            return
        ticks = timing.summary()
        thread_dead = control.died
        with self._lock:
            hardware = health_statuses(loop, self.params)
            stats = loop.executor.stats
            state = loop.executor.state
            fault = loop.executor.fault
            now = self._now()
            recent = stats.rejected_recently(now)
            values = {
                "state": "fault" if loop.faulted else state,
                "state_message": loop.executor.state_message,
                "backend": self.params.backend,
                **ticks.diagnostic_values(),
                "target_rate": f"{self.params.control_rate:g}",
                "control_thread": f"dead: {control.fatal_error}" if thread_dead else "running",
                "tick_errors": str(control.errors),
                "tick_errors_in_a_row": str(loop.tick_errors.count),
                "max_tick_errors": str(loop.tick_errors.limit),
                "fault_window_s": f"{self.params.fault_window:g}",
                "tick_errors_in_window": str(loop.tick_errors.recent_count(now)),
                "max_backend_faults": str(loop.backend_faults.limit),
                "backend_faults_in_window": str(loop.backend_faults.count(now)),
                "estop_reason": loop.estop_reason,
                "torque_off_latched": str(loop.torque_off_latched).lower(),
                "last_tick_error": control.last_error,
                "accepted_chunks": str(stats.accepted),
                "rejected_chunks": str(stats.rejected_total),
                "rejected_recently": str(recent),
                "rejection_window_s": f"{self.params.rejection_window:g}",
                "rejected_by_reason": ", ".join(f"{k}={v}" for k, v in stats.rejected.items()),
                "last_reject_reason": stats.last_reject_reason,
                "command_fault": fault,
                "clamped_ticks": str(stats.clamped_ticks),
                "splices": str(stats.splices),
                "watchdog_holds": str(stats.watchdog_holds),
                "backend_errors": str(loop.stats.backend_errors),
                "last_backend_error": loop.stats.last_error,
                "dry_run": str(self.params.dry_run).lower(),
                "execution": "shadow" if loop.shadow else "live",
                "held_joints": ", ".join(
                    n for n, h in zip(self.params.joint_names, loop.held, strict=True) if h
                ),
            }
            faulted = loop.faulted
            estop_reason = loop.estop_reason
        status = DiagnosticStatus()
        status.name = f"{self.get_fully_qualified_name()}: driver"
        status.hardware_id = f"{self.params.robot or 'robot'}:{self.params.backend}"
        level, status.message = driver_summary(
            state,
            control_stopped=control.fatal_error if thread_dead else None,
            estop_reason=estop_reason,
            backend_fault=loop.stats.last_error if faulted else None,
            command_fault=fault,
            tick_rate=ticks.rate,
            target_rate=self.params.control_rate,
            rejected_recently=recent,
            rejection_window=self.params.rejection_window,
            last_reject_reason=stats.last_reject_reason,
        )
        status.level = bytes([level])
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        array.status = [status]
        for entry in hardware:
            item = DiagnosticStatus()
            item.name = f"{self.get_fully_qualified_name()}: {entry.name}"
            item.hardware_id = entry.hardware_id or status.hardware_id
            item.level = bytes([entry.level])
            item.message = entry.message
            item.values = [KeyValue(key=k, value=v) for k, v in entry.values.items()]
            array.status.append(item)
        self._diag_pub.publish(array)


def main(args: list[str] | None = None) -> None:
    """Console script ``driver_node``."""
    if SWITCH_INTERVAL is not None:
        sys.setswitchinterval(SWITCH_INTERVAL)  # the whole process: set before any thread
    run_lifecycle_node(DriverNode, args, on_exit=lambda node: node.finish_on_exit())


if __name__ == "__main__":
    main()
