"""The ``molmoact2_policy`` lifecycle node: cameras and joint states in, action chunks out.

A thin ROS shell over pure parts: ``image_conversion`` (messages -> RGB), ``observation``
(sync by capture stamps), ``inference_worker`` (one thread, newest observation only) and
``chunk_msgs`` (result -> messages). Subscription callbacks only convert and store; inference
runs on the worker thread, so sensors are never blocked by the model.

Lifecycle: configure builds the policy (a load failure leaves the node unconfigured and alive,
with the reason on ``~/status``); activate subscribes and starts the worker; deactivate stops
both. ``main()`` configures and activates at start when ``autostart`` is true.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from typing import Any

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import (
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)

from molmoact2_common.allocator import keep_freed_memory
from molmoact2_common.chunk_execution import ChunkExecution, chunk_execution_qos
from molmoact2_common.lifecycle_errors import log_transition_errors
from molmoact2_common.ros_params import declare_dataclass_params
from molmoact2_common.ros_runtime import run_lifecycle_node
from molmoact2_policy import chunk_msgs
from molmoact2_policy.chunk_rate import ChunkRateMeter
from molmoact2_policy.decode_pool import DecodePool
from molmoact2_policy.image_conversion import (
    ImageConversionError,
    compressed_msg_to_rgb,
    image_msg_to_rgb,
)
from molmoact2_policy.inference_worker import InferenceOutcome, InferenceRequest, InferenceWorker
from molmoact2_policy.log_throttle import LogThrottle
from molmoact2_policy.observation import (
    ERROR,
    NS_PER_S,
    STALE,
    Observation,
    ObservationAssembler,
    Rejection,
    is_new_camera_set,
    ns_to_stamp,
    stamp_to_ns,
)
from molmoact2_policy.policy_api import Policy, PolicyInputError
from molmoact2_policy.policy_factory import TEST_POLICY_ENV, PolicyLoadError, make_policy
from molmoact2_policy.policy_node_params import (
    PolicyNodeParams,
    instruction_text_problem,
    live_param_problem,
)
from molmoact2_policy.rtc_feed import RtcFeed
from molmoact2_policy.stage_times import StageTimes
from molmoact2_policy.task_action import RunTaskServer

NODE_NAME = "molmoact2_policy"
MAX_DECODE_WORKERS = 8  # threads decoding compressed camera frames (one per camera up to this)
NO_INSTRUCTION = "no instruction: publish one on ~/instruction or call ~/set_instruction"


def _stamp_ns(header: Any) -> int:
    return stamp_to_ns(header.stamp.sec, header.stamp.nanosec)


@log_transition_errors
class PolicyNode(LifecycleNode):
    """See the module docstring; topics and parameters are listed in docs/architecture.md."""

    def __init__(self, *, node_name: str = NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self._param_problems: list[str] = []  # wrong types at start: configure fails
        self.params: PolicyNodeParams = declare_dataclass_params(
            self, PolicyNodeParams, self._param_problems
        )
        self._log_throttle = LogThrottle()
        self._lock = threading.RLock()
        self._lifecycle_state = "unconfigured"
        self._policy: Policy | None = None
        self._worker: InferenceWorker | None = None
        self._decoder: DecodePool | None = None  # compressed cameras, while active
        self._assembler: ObservationAssembler | None = None
        self._depth_node: Any = None
        # Not `_subscriptions`: that is rclpy.Node's own list of every subscription.
        self._input_subscriptions: list[Any] = []
        self._instruction = self.params.instruction.strip()
        self._epoch = 0  # bumped on reset/instruction change: older outcomes are dropped
        # Set while this thread is setting the node's own `instruction` parameter (a run_task
        # goal runs on another thread than the parameter service).
        self._showing_instruction = threading.local()
        self._last_key: tuple[int, ...] | None = None
        self._rejection: Rejection | None = None
        self._last_error = ""
        self._inference_error = False
        self._sequence = 0
        self._chunk_count = 0
        self._rejected_count = 0
        self._chunk_rate = ChunkRateMeter()
        self._last_latency = float("nan")
        self._stages = StageTimes()  # of the last published chunk
        self._convert_time: dict[str, float] = {}
        self._rtc: RtcFeed | None = None  # real-time chunking inputs (``rtc: true``)

        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import JointState
        from std_msgs.msg import String
        from std_srvs.srv import Trigger
        from visualization_msgs.msg import MarkerArray

        from molmoact2_msgs.msg import ActionChunk, PolicyStatus
        from molmoact2_msgs.srv import SetInstruction

        # Inputs in one group (callbacks only store), control in another: neither waits for
        # the model, which runs on the worker thread.
        self._input_group = MutuallyExclusiveCallbackGroup()
        self._control_group = MutuallyExclusiveCallbackGroup()
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self._chunk_pub = self.create_publisher(ActionChunk, "~/action_chunk", reliable)
        self._predicted_pub = self.create_publisher(JointState, "~/predicted_joint_states", 10)
        self._markers_pub = self.create_publisher(MarkerArray, "~/predicted_chunk_markers", 1)
        # Status and diagnostics exist from construction so a failed configure is visible.
        self._status_pub = self.create_publisher(PolicyStatus, "~/status", reliable)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_subscription(
            String,
            "~/instruction",
            self._on_instruction_msg,
            reliable,
            callback_group=self._control_group,
        )
        self.create_service(
            SetInstruction,
            "~/set_instruction",
            self._on_set_instruction,
            callback_group=self._control_group,
        )
        self.create_service(Trigger, "~/reset", self._on_reset, callback_group=self._control_group)
        self.create_timer(
            self.params.status_period(), self._publish_status, callback_group=self._control_group
        )
        self._task_server = RunTaskServer(
            self, self.params.hold_driver(), self.params.task_input_grace
        )
        self.add_on_set_parameters_callback(self._check_live_params)
        self.add_post_set_parameters_callback(self._apply_live_params)
        if os.environ.get(TEST_POLICY_ENV):
            self.get_logger().warning(
                f"{TEST_POLICY_ENV} is set: using a test policy, not the configured model"
            )

    # ---- lifecycle ----------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        problems = self._param_problems + self.params.validate()
        if problems:
            return self._configure_failed("invalid parameters: " + "; ".join(problems))
        try:
            policy = make_policy(self.params)
        except PolicyLoadError as exc:
            return self._configure_failed(str(exc))
        with self._lock:
            self._policy = policy
            # Set before a policy could judge it (the config, a topic, the service, the
            # parameter): refused now as it would have been then, and inference stays paused.
            problem = self.instruction_problem(self._instruction)
            if problem:
                self.get_logger().error(
                    f"instruction {self._instruction!r} dropped: {problem}; set another one"
                )
                self._instruction = ""
                dropped = True
            else:
                dropped = False
            self._assembler = ObservationAssembler(
                camera_names=self.params.camera_names,
                joint_names=self.params.joint_names,
                joint_topics=self.params.joint_state_topics,
                max_age=self.params.max_observation_age,
                max_skew=self.params.max_camera_skew,
            )
            self._last_error = ""
            self._lifecycle_state = "inactive"
            self._rtc = self._make_rtc_feed()
        if dropped:
            self._show_instruction_param("")
        if self.params.mode == "think":
            self._create_depth_node(policy)
        self.get_logger().info(
            f"configured: {self.params.inference} policy, checkpoint {self.params.checkpoint!r}, "
            f"embodiment {self.params.embodiment}, mode {self.params.mode}"
        )
        return TransitionCallbackReturn.SUCCESS

    def _make_rtc_feed(self) -> RtcFeed | None:
        if not self.params.rtc:
            return None
        from molmoact2_common.embodiments import get_embodiment

        spec = get_embodiment(self.params.embodiment)
        return RtcFeed(
            self.params.joint_names,
            spec.step_dt,
            spec.horizon,
            max_deviation=self.params.rtc_max_deviation,
            verdict_timeout=self.params.rtc_verdict_timeout,
        )

    def _rtc_request(self, request: InferenceRequest) -> Any:
        feed = self._rtc
        return None if feed is None else feed.request_for(request.observation.stamp_ns)

    def _on_commanded(self, msg: Any) -> None:
        feed = self._rtc
        if feed is None:
            return
        problem = feed.record_commanded(_stamp_ns(msg.header), msg.name, msg.position)
        if problem:
            message = (
                f"{self.params.rtc_commanded_topic}: {problem}; not compared with the chunks "
                "(RTC cannot tell whether the driver follows them)"
            )
            if self._log_throttle.allow(message):
                self.get_logger().warning(message)

    def _on_execution(self, msg: Any) -> None:
        feed = self._rtc
        if feed is not None:
            feed.record_execution(ChunkExecution.from_msg(msg))

    def _chunk_markers(
        self, result: Any, stamp_ns: int, offset: float, joint_names: Any
    ) -> Any:
        """End-effector paths with a URDF, else the joint-space plot."""
        fk = self._end_effector_model(tuple(joint_names))
        if fk is not None:
            try:
                paths = chunk_msgs.end_effector_paths(
                    fk, result.positions, self.params.end_effector_links
                )
                return chunk_msgs.end_effector_markers_msg(
                    paths,
                    stamp_ns=stamp_ns,
                    links=self.params.end_effector_links,
                    frame_id=fk.root_frame,
                )
            except (KeyError, ValueError, RuntimeError) as exc:
                self._log_error(f"end-effector path unavailable, plotting joints: {exc}")
        return chunk_msgs.chunk_markers_msg(
            result,
            stamp_ns=stamp_ns,
            start_offset=offset,
            joint_names=joint_names,
            frame_id=self.params.marker_frame,
        )

    def _end_effector_model(self, joint_names: tuple[str, ...]) -> Any:
        """The URDF model for end-effector paths (built once), or None without one."""
        if not (self.params.urdf and self.params.end_effector_links):
            return None
        cached = getattr(self, "_fk_model", None)
        if cached is not None and cached[0] == joint_names:
            return cached[1]
        model = None
        try:
            from molmoact2_common.rigid_body import RigidBodyModel

            # Chunk joints the URDF lacks (a normalised gripper) do not move any link.
            model = RigidBodyModel.from_urdf(self.params.urdf, joint_names, allow_missing=True)
            missing = [k for k in self.params.end_effector_links if k not in model.link_names]
            if missing:
                raise ValueError(f"URDF {self.params.urdf} has no link(s) {missing}")
        except (RuntimeError, ValueError) as exc:
            self._log_error(f"end-effector paths off: {exc}")
            model = None
        self._fk_model = (joint_names, model)
        return model

    def _configure_failed(self, message: str) -> TransitionCallbackReturn:
        self.get_logger().error(f"configure failed: {message}")
        with self._lock:
            self._last_error = message
            self._inference_error = True
        if self.context.ok():  # a SIGTERM during a long model load has shut the context down
            self._publish_status()
        return TransitionCallbackReturn.FAILURE

    def _create_depth_node(self, policy: Policy) -> None:
        try:
            from molmoact2_policy.depth_cache_node import DepthCacheNode, second_node_ros_args

            self._depth_node = DepthCacheNode(
                policy_reset=policy.reset,
                namespace=self.get_namespace(),
                context=self.context,
                cli_args=second_node_ros_args(sys.argv),
                use_global_arguments=False,
            )
        except Exception as exc:  # Think still drives the robot without its depth topics
            self.get_logger().error(f"think mode: depth cache node unavailable ({exc})")
            self._depth_node = None
            return
        if self.executor is not None:
            self.executor.add_node(self._depth_node)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        from sensor_msgs.msg import CompressedImage, Image, JointState

        with self._lock:
            self._assembler.clear()
            self._last_key = None
            self._chunk_rate.start(time.monotonic())
            self._chunk_count = self._rejected_count = 0
            self._worker = InferenceWorker(
                self._policy,
                self._on_outcome,
                max_rate=self.params.max_inference_rate,
                on_callback_error=lambda exc: self._log_error(f"publishing a chunk failed: {exc}"),
                rtc_source=self._rtc_request if self._rtc is not None else None,
                on_start=self._before_think if self._depth_node is not None else None,
            )
            self._worker.start()
        compressed = sum(t == "compressed" for t in self.params.camera_transports)
        if compressed:
            # A worker per compressed camera, not per core: an observation is complete when
            # its last frame is decoded, and with fewer workers that frame waits for a free
            # one instead of sharing the cores with the others (measured on 2 cores).
            self._decoder = DecodePool(
                min(compressed, MAX_DECODE_WORKERS),
                self._store_image,
                lambda exc: self._log_error(f"storing a decoded frame failed: {exc}"),
            )
        for name, topic, transport in zip(
            self.params.camera_names,
            self.params.camera_topics,
            self.params.camera_transports,
            strict=True,
        ):
            msg_type = CompressedImage if transport == "compressed" else Image
            self._input_subscriptions.append(
                self.create_subscription(
                    msg_type,
                    topic,
                    lambda msg, camera=name: self._on_image(camera, msg),
                    qos_profile_sensor_data,
                    callback_group=self._input_group,
                )
            )
        for topic in self.params.joint_state_topics:
            self._input_subscriptions.append(
                self.create_subscription(
                    JointState,
                    topic,
                    lambda msg, source=topic: self._on_joint_state(source, msg),
                    qos_profile_sensor_data,
                    callback_group=self._input_group,
                )
            )
        if self._rtc is not None and self.params.rtc_execution_topic:
            from molmoact2_msgs.msg import ChunkExecution as ChunkExecutionMsg

            # The driver latches its report (transient local): the current one arrives at once.
            self._input_subscriptions.append(
                self.create_subscription(
                    ChunkExecutionMsg,
                    self.params.rtc_execution_topic,
                    self._on_execution,
                    chunk_execution_qos(),
                    # The worker thread may be waiting for it (RtcFeed.verdict_timeout); this
                    # callback takes no lock the worker holds meanwhile.
                    callback_group=self._input_group,
                )
            )
        if self._rtc is not None and self.params.rtc_commanded_topic:
            self._input_subscriptions.append(
                self.create_subscription(
                    JointState,
                    self.params.rtc_commanded_topic,
                    self._on_commanded,
                    qos_profile_sensor_data,
                    callback_group=self._input_group,
                )
            )
        with self._lock:
            self._lifecycle_state = "active"
        self.get_logger().info("active: waiting for cameras and joint states")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop_inputs()
        with self._lock:
            self._lifecycle_state = "inactive"
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop_inputs()
        self._drop_policy()
        with self._lock:
            self._lifecycle_state = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.stop_inputs()
        self._drop_policy()
        with self._lock:
            self._lifecycle_state = "finalized"
        return TransitionCallbackReturn.SUCCESS

    @property
    def lifecycle_state(self) -> str:
        """ "unconfigured", "inactive", "active" or "finalized"."""
        with self._lock:
            return self._lifecycle_state

    def stop_inputs(self, timeout: float = 5.0) -> None:
        """Unsubscribe and stop the inference thread (deactivate, cleanup, process exit).

        Waits at most ``timeout`` for an inference in flight; its outcome is dropped either way.
        """
        for subscription in self._input_subscriptions:
            self.destroy_subscription(subscription)
        self._input_subscriptions.clear()
        with self._lock:
            worker, self._worker = self._worker, None
            decoder, self._decoder = self._decoder, None
            self._epoch += 1
        if decoder is not None:
            decoder.close()
        if worker is not None and not worker.stop(timeout=timeout):
            self.get_logger().warning(
                f"inference still running after {timeout:g} s; its result will be dropped"
            )

    def _drop_policy(self) -> None:
        with self._lock:
            self._policy = None
            depth, self._depth_node = self._depth_node, None
        if depth is not None:
            if self.executor is not None:
                self.executor.remove_node(depth)
            depth.destroy_node()

    # ---- inputs -------------------------------------------------------------------------

    def _on_image(self, camera: str, msg: Any) -> None:
        stamp_ns = _stamp_ns(msg.header)
        decoder = self._decoder
        if decoder is not None and not hasattr(msg, "encoding"):
            decoder.submit(camera, stamp_ns, msg.format, msg.data)  # -> _store_image
            return
        started = time.perf_counter()
        image, error = None, ""
        try:
            if hasattr(msg, "encoding"):
                image = image_msg_to_rgb(msg)
            else:
                image = compressed_msg_to_rgb(msg)
        except ImageConversionError as exc:
            error = str(exc)
        self._store_image(camera, stamp_ns, image, error, time.perf_counter() - started)

    def _store_image(
        self, camera: str, stamp_ns: int, image: Any, error: str, convert_time: float
    ) -> None:
        """A converted frame (or why it could not be converted); executor or decode thread."""
        if error:
            with self._lock:
                if self._assembler is not None:
                    self._assembler.add_image_error(camera, stamp_ns, error)
            self._log_error(f"camera {camera!r}: {error}")
            self._try_infer()
            return
        with self._lock:
            self._convert_time[camera] = convert_time
            if self._assembler is not None:
                self._assembler.add_image(camera, stamp_ns, image)
        self._try_infer()

    def _on_joint_state(self, topic: str, msg: Any) -> None:
        with self._lock:
            if self._assembler is None:
                return
            error = self._assembler.add_joint_state(
                topic, _stamp_ns(msg.header), msg.name, msg.position, msg.velocity, msg.effort
            )
        if error:
            self._log_error(error)
        self._try_infer()

    def _try_infer(self) -> None:
        """Build the observation for now; hand it to the worker if it is new and complete."""
        started = time.perf_counter()
        now_ns = self.get_clock().now().nanoseconds
        with self._lock:
            if self._assembler is None or self._worker is None:
                return
            if not self._instruction:
                self._rejection = Rejection("no_instruction", NO_INSTRUCTION)
                return
            built = self._assembler.build(now_ns)
            if isinstance(built, Rejection):
                if built != self._rejection and built.kind in (STALE, ERROR):
                    self._rejected_count += 1
                self._rejection = built
                self._last_key = None
                return
            self._rejection = None
            # _last_key: the camera stamps of the last observation handed to the worker.
            if not is_new_camera_set(built.camera_key, self._last_key):
                return
            self._last_key = built.camera_key
            stages = StageTimes(
                convert=sum(self._convert_time.get(c, 0.0) for c in self.params.camera_names),
                assemble=time.perf_counter() - started,
            )
            seed = self.params.seed if self.params.seed >= 0 else None
            self._worker.submit(
                InferenceRequest(built, self._instruction, seed, self._epoch, stages)
            )

    # ---- outputs ------------------------------------------------------------------------

    def _on_outcome(self, outcome: InferenceOutcome) -> None:
        """Worker thread: publish a successful chunk; record and log a failure."""
        with self._lock:
            if outcome.request.epoch != self._epoch:
                return  # computed for an instruction or episode that no longer applies
        if not outcome.ok:
            self._set_inference_error(outcome.error)
            return
        result = outcome.result
        joint_names = self.params.joint_names
        problem = chunk_msgs.check_result(result, joint_names)
        if problem:
            self._set_inference_error(problem)
            return
        observation: Observation = outcome.request.observation
        stamp_ns = observation.stamp_ns
        offset = self.params.action_start_offset
        publish_started = time.perf_counter()
        now_ns = self.get_clock().now().nanoseconds
        latency = (now_ns - stamp_ns) / NS_PER_S
        msg = chunk_msgs.action_chunk_msg(
            result,
            stamp_ns=stamp_ns,
            start_offset=offset,
            joint_names=joint_names,
            sequence=0,
            inference_latency=latency,
            instruction=outcome.request.instruction,
        )
        with self._lock:
            # Checked again together with the publish: a new instruction or ~/reset bumps the
            # epoch and clears the RTC feed under this lock, so the chunk is either dropped or
            # published and recorded before that. Checked only above, a chunk of the old
            # instruction went out after the change was accepted and, recorded in the cleared
            # feed, was continued by the new instruction's first chunk.
            if outcome.request.epoch != self._epoch:
                return
            msg.sequence = sequence = self._sequence
            self._sequence += 1
            self._chunk_pub.publish(msg)
            if self._rtc is not None:
                self._rtc.record_chunk(stamp_ns, offset, result.positions, latency, sequence)
        chunk_out = time.perf_counter()  # what follows (visualisation) is off the chunk's path
        with self._lock:
            self._chunk_count += 1
            self._chunk_rate.record(time.monotonic())
            self._last_latency = latency
            self._last_error = ""
            self._inference_error = False
        # Visualisation only: not built (a cost in the inference thread) when nobody listens.
        if self._predicted_pub.get_subscription_count() > 0:
            self._predicted_pub.publish(
                chunk_msgs.predicted_joint_state_msg(
                    result,
                    stamp_ns=stamp_ns,
                    start_offset=offset,
                    joint_names=joint_names,
                    now_ns=now_ns,
                )
            )
        if self._markers_pub.get_subscription_count() > 0:
            self._markers_pub.publish(self._chunk_markers(result, stamp_ns, offset, joint_names))
        stages = dataclasses.replace(
            outcome.request.stages,
            queue_wait=outcome.queue_wait,
            model=outcome.model_time,
            publish=chunk_out - publish_started,
        )
        with self._lock:
            self._stages = stages
        depth = self._depth_node
        if depth is not None and result.depth_codes is not None:
            image = observation.images.get(depth.params.camera_name)
            if image is not None:
                depth.on_think_result(
                    self._depth_camera_stamp(depth, observation),
                    image,
                    result,
                    started=outcome.start_token,
                )

    @staticmethod
    def _depth_camera_stamp(depth: Any, observation: Observation) -> Any:
        """Capture time of the frame of the depth cache's camera (the observation's stamp when
        that camera is not in it)."""
        from builtin_interfaces.msg import Time

        stamp_ns = observation.camera_stamps_ns.get(depth.params.camera_name, observation.stamp_ns)
        sec, nanosec = ns_to_stamp(stamp_ns)
        return Time(sec=sec, nanosec=nanosec)

    def _before_think(self, request: InferenceRequest) -> object:
        """Right before a Think inference, on the worker's thread: a jump in the camera's
        stamps (a pause, a new episode, a replayed bag) drops the depth cache now, so that this
        inference reads the scene it sees, not the cached one from before the jump; then the
        token that tells its result apart from those begun before a later reset."""
        depth = self._depth_node
        if depth is None:
            return None
        depth.check_stamp(self._depth_camera_stamp(depth, request.observation))
        return depth.inference_token()

    def _set_inference_error(self, message: str) -> None:
        with self._lock:
            self._last_error = message
            self._inference_error = True
        self._log_error(message)

    def _log_error(self, message: str) -> None:
        if self._log_throttle.allow(message):
            self.get_logger().error(message)

    # ---- control ------------------------------------------------------------------------

    def instruction_problem(self, instruction: str) -> str:
        """Why ``instruction`` is refused ('' when accepted): too long or characters that are not
        words (``instruction_text_problem``), or the policy refuses its words
        (``Policy.check_instruction``: it spells a control token of the model).

        Without a policy (before configure) only the text is checked; configure checks the
        rest. Empty is accepted: it pauses inference.
        """
        instruction = instruction.strip()
        problem = instruction_text_problem(instruction)
        if problem:
            return problem
        with self._lock:
            policy = self._policy
        if not instruction or policy is None:
            return ""
        try:
            policy.check_instruction(instruction)
        except PolicyInputError as exc:
            return str(exc)
        except Exception as exc:  # a broken check must refuse, not kill a service callback
            return f"the policy's instruction check failed: {type(exc).__name__}: {exc}"
        return ""

    def set_instruction(self, instruction: str) -> tuple[bool, str]:
        """Replace the instruction (empty pauses inference); (accepted, message)."""
        instruction = instruction.strip()
        with self._lock:  # one policy for the check and the change (configure swaps it)
            problem = self.instruction_problem(instruction)
            if problem:
                return False, problem
            changed = instruction != self._instruction
            self._instruction = instruction
            if changed:
                self._epoch += 1
                self._last_key = None
                if self._rtc is not None:
                    self._rtc.clear()
                if self._worker is not None:
                    self._worker.clear_pending()
        if changed:
            self.get_logger().info(
                f"instruction: {instruction!r}"
                if instruction
                else "instruction cleared: inference paused"
            )
            self._show_instruction_param(instruction)
        self._try_infer()
        return True, ("instruction set" if instruction else "instruction cleared")

    def _show_instruction_param(self, instruction: str) -> None:
        """Keep the ``instruction`` parameter equal to the instruction in use, however it was
        set (topic, service, run_task goal, dropped at configure): ``ros2 param get`` and
        ``ros2 param dump`` answered the start-up value while another instruction ran."""
        from rclpy.parameter import Parameter

        if getattr(self._showing_instruction, "active", False):
            return
        self._showing_instruction.active = True
        try:
            self.set_parameters([Parameter("instruction", value=instruction)])
        except Exception as exc:  # showing the value must never lose the change itself
            self.get_logger().warning(f"instruction parameter not updated: {exc}")
        finally:
            self._showing_instruction.active = False

    def _on_instruction_msg(self, msg: Any) -> None:
        accepted, message = self.set_instruction(msg.data)
        if not accepted:  # a topic has no answer: the log says it, the old instruction stays
            self.get_logger().warning(
                f"~/instruction refused, keeping {self._instruction!r}: {message}"
            )

    def _on_set_instruction(self, request: Any, response: Any) -> Any:
        response.accepted, response.message = self.set_instruction(request.instruction)
        return response

    def _on_reset(self, request: Any, response: Any) -> Any:
        with self._lock:
            self._epoch += 1
            self._last_key = None
            if self._assembler is not None:
                self._assembler.clear()
            if self._worker is not None:
                self._worker.clear_pending()
            if self._rtc is not None:
                self._rtc.clear()
            policy = self._policy
        depth = self._depth_node
        if depth is not None:
            # Through the depth cache node: a Think result still being computed is dropped and
            # the cubes of the dropped cache leave RViz, as on its own ~/reset.
            if not depth.reset_cache("policy node ~/reset"):
                response.success, response.message = False, "policy reset failed (see the log)"
                return response
        else:
            try:
                if policy is not None:
                    policy.reset()
            except Exception as exc:
                response.success, response.message = False, f"policy reset failed: {exc}"
                self._log_error(response.message)
                return response
        response.success = True
        response.message = "reset: inputs cleared, policy state forgotten"
        self.get_logger().info(response.message)
        return response

    def _check_live_params(self, params: list[Any]) -> Any:
        from rcl_interfaces.msg import SetParametersResult

        fields = set(PolicyNodeParams.__dataclass_fields__)
        for param in params:
            if param.name in fields:
                problem = live_param_problem(param.name, param.value)
                if not problem and param.name == "instruction":
                    problem = self.instruction_problem(param.value)
                if problem:
                    return SetParametersResult(successful=False, reason=problem)
        return SetParametersResult(successful=True)

    def _apply_live_params(self, params: list[Any]) -> None:
        for param in params:
            if param.name == "instruction":
                if not getattr(self._showing_instruction, "active", False):  # else our own
                    self.set_instruction(param.value)
            elif param.name == "max_inference_rate":
                with self._lock:
                    worker = self._worker
                    self.params = dataclasses.replace(
                        self.params, max_inference_rate=float(param.value)
                    )
                if worker is not None:
                    worker.set_max_rate(float(param.value))
                self.get_logger().info(f"max_inference_rate: {float(param.value):g} Hz")

    # ---- status -------------------------------------------------------------------------

    @property
    def chunk_count(self) -> int:
        """Chunks published since activation."""
        with self._lock:
            return self._chunk_count

    @property
    def last_latency(self) -> float:
        """Capture-to-publish latency of the last chunk [s] (NaN before the first)."""
        with self._lock:
            return self._last_latency

    @property
    def last_error(self) -> str:
        with self._lock:
            return self._last_error or (self._rejection.reason if self._rejection else "")

    def status_state(self) -> str:
        """PolicyStatus.state for the current situation."""
        with self._lock:
            if self._lifecycle_state != "active":
                return "error" if self._inference_error else "idle"
            if not self._instruction:
                return "no_instruction"
            if self._rejection is not None:
                return self._rejection.kind
            if self._inference_error:
                return "error"
            if self._chunk_count == 0:
                return "waiting_for_inputs"
            return "running"

    def _judge_inputs_now(self, now_ns: int) -> None:
        """Re-judge the inputs at status time: when every input stops no callback runs to notice,
        and the status must not go on saying ``running``."""
        with self._lock:
            if self._assembler is None or self._lifecycle_state != "active":
                return
            if not self._instruction:
                return
            built = self._assembler.build(now_ns)
            if isinstance(built, Rejection):
                self._rejection = built

    def _publish_status(self) -> None:
        from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

        from molmoact2_msgs.msg import InputAge, PolicyStatus

        now = self.get_clock().now()
        now_ns = now.nanoseconds
        self._judge_inputs_now(now_ns)
        state = self.status_state()
        with self._lock:
            msg = PolicyStatus()
            msg.header.stamp = now.to_msg()
            msg.lifecycle_state = self._lifecycle_state
            msg.state = state
            rejection = self._rejection
            if self._lifecycle_state == "active" and not self._instruction:
                msg.last_error = NO_INSTRUCTION
            elif self._lifecycle_state == "active" and rejection is not None:
                msg.last_error = rejection.reason
            else:
                msg.last_error = self._last_error
            msg.instruction = self._instruction
            msg.backend = self.params.inference
            msg.checkpoint = self.params.checkpoint
            msg.device = self.params.device
            msg.last_latency = self._last_latency
            self._stages.fill_status(msg)
            msg.chunk_rate = self._chunk_rate.rate(time.monotonic())
            msg.chunk_count = self._chunk_count
            msg.rejected_count = self._rejected_count
            if self._assembler is not None:
                msg.inputs = [
                    InputAge(name=s.name, age=s.age, ok=s.ok)
                    for s in self._assembler.input_status(now_ns)
                ]
        self._status_pub.publish(msg)

        level = {
            "running": DiagnosticStatus.OK,
            "error": DiagnosticStatus.ERROR,
        }.get(state, DiagnosticStatus.WARN)
        diag = DiagnosticStatus(
            level=level,
            name=f"{self.get_fully_qualified_name()}: policy",
            message=msg.last_error or state,
            hardware_id=self.params.robot,
        )
        values = {
            "lifecycle_state": msg.lifecycle_state,
            "state": state,
            "instruction": msg.instruction,
            "backend": msg.backend,
            "checkpoint": msg.checkpoint,
            "last_latency_s": f"{msg.last_latency:.4f}",
            "preprocess_time_s": f"{msg.preprocess_time:.4f}",
            **self._stages.diagnostic_values(),
            "chunk_rate_hz": f"{msg.chunk_rate:.2f}",
            "chunk_count": str(msg.chunk_count),
            "rejected_count": str(msg.rejected_count),
        }
        values.update({f"age/{i.name}": f"{i.age:.3f}" for i in msg.inputs})
        if self._rtc is not None:
            values.update(self._rtc.diagnostics())
        depth = self._depth_node
        if depth is not None:
            values["depth_results_dropped_after_reset"] = str(depth.dropped_after_reset)
            values["depth_cache_resets"] = str(depth.resets)
        diag.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        array = DiagnosticArray()
        array.header.stamp = msg.header.stamp
        array.status = [diag]
        self._diag_pub.publish(array)


def main(args: list[str] | None = None) -> None:
    """Console script ``molmoact2_policy_node``."""
    keep_freed_memory()  # before the model allocates anything (molmoact2_common.allocator)
    # An inference in flight may not hold up the stop past the runtime's exit deadline.
    run_lifecycle_node(PolicyNode, args, on_exit=lambda node: node.stop_inputs(timeout=2.0))


if __name__ == "__main__":
    main()
