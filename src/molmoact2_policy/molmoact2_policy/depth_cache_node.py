"""The ``molmoact2_depth_cache`` node: publishes what MolmoAct2-Think saw, resets its cache.

The depth cache itself lives beside the model (``ThinkPolicy``). This node runs in the policy
node's process and is handed every Think result (``on_think_result``); it publishes

- ``~/depth_tokens`` (molmoact2_msgs/DepthTokens): the codes and which cells were re-predicted,
- ``~/depth_image`` (sensor_msgs/Image rgb8): the grid colour-mapped, changed cells outlined,
  optionally blended over the main camera frame,
- ``~/depth_markers`` (visualization_msgs/MarkerArray): one cube per cell on its camera ray,
  at the fixed ``marker_distance``, coloured by code (the release defines no code -> metres),

and drops the policy's cache (the ``policy_reset`` callable) on ``~/reset`` or when the main
camera's stamps jump. All picture and geometry logic is in ``depth_viz`` / ``depth_change``.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from builtin_interfaces.msg import Time
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy

from molmoact2_common.ros_params import declare_dataclass_params, refuse_param_changes
from molmoact2_policy.depth_cache_params import DepthCacheParams
from molmoact2_policy.depth_change import ResetGenerations, check_rgb_frame, stamp_jump_reason
from molmoact2_policy.depth_viz import check_code_grid, depth_cell_cubes, render_depth_image
from molmoact2_policy.image_conversion import make_image_msg
from molmoact2_policy.policy_api import ActionChunkResult

NODE_NAME = "molmoact2_depth_cache"
# Seconds between repeats of the same error (a bad result every inference would flood the log).
ERROR_LOG_PERIOD_S = 5.0
# A stamp gap counts as a jump only beyond the slowest of this many recent inferences.
PACE_RESULTS = 5


def _stamp_seconds(stamp: Time) -> float:
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


class DepthCacheNode(Node):
    """Depth topics and cache resets for Think mode; see the module docstring."""

    def __init__(
        self,
        policy_reset: Callable[[], None] | None = None,
        *,
        node_name: str = NODE_NAME,
        namespace: str | None = None,
        context: Any = None,
        parameter_overrides: list | None = None,
        cli_args: list[str] | None = None,
        use_global_arguments: bool = True,
    ) -> None:
        super().__init__(
            node_name,
            namespace=namespace,
            context=context,
            parameter_overrides=parameter_overrides,
            cli_args=cli_args,
            use_global_arguments=use_global_arguments,
        )
        self.params: DepthCacheParams = declare_dataclass_params(self, DepthCacheParams)
        refuse_param_changes(self, DepthCacheParams)
        problems = self.params.validate()
        if problems:
            raise ValueError(f"{node_name}: invalid parameters: " + "; ".join(problems))
        self._policy_reset = policy_reset
        self._lock = threading.Lock()
        self._last_stamp_s: float | None = None
        # Seconds the last few Think inferences took: frames one inference apart are no jump.
        self._inference_times: deque[float] = deque(maxlen=PACE_RESULTS)
        self._results = 0
        self.resets = 0  # cache resets so far (service and stamp jumps), for status and tests
        self._generations = ResetGenerations()
        self.frame_id = self.params.camera_frame()
        self.marker_frame = self.params.marker_frame or self.frame_id

        from sensor_msgs.msg import Image
        from std_srvs.srv import Trigger
        from visualization_msgs.msg import MarkerArray

        from molmoact2_msgs.msg import DepthTokens

        # Reliable: a reliable publisher serves both reliable (RViz, recorder) and best-effort
        # subscribers; depth 1 for the pictures because only the latest one matters.
        reliable = ReliabilityPolicy.RELIABLE
        self._tokens_pub = self.create_publisher(
            DepthTokens, "~/depth_tokens", QoSProfile(depth=10, reliability=reliable)
        )
        self._image_pub = self.create_publisher(
            Image, "~/depth_image", QoSProfile(depth=1, reliability=reliable)
        )
        self._markers_pub = self.create_publisher(
            MarkerArray, "~/depth_markers", QoSProfile(depth=1, reliability=reliable)
        )
        self._reset_srv = self.create_service(Trigger, "~/reset", self._on_reset)
        self._configure_policy(policy_reset)
        self.get_logger().info(
            f"depth cache for camera {self.params.camera_name!r} ({self.frame_id}), "
            f"threshold {self.params.change_threshold}, max stamp gap {self.params.max_stamp_gap} s"
        )

    def _configure_policy(self, policy_reset: Callable[[], None] | None) -> None:
        """Hand camera_name, change_threshold and adaptive_depth to the policy owning the cache.

        The policy node passes only ``policy.reset``; when that is a bound method of a policy
        with ``configure_change_detection`` (ThinkPolicy), this node's parameters reach it here,
        so they are set in one place (this node's section of the robot config).
        """
        owner = getattr(policy_reset, "__self__", None)
        configure = getattr(owner, "configure_change_detection", None)
        if not callable(configure):
            return
        try:
            configure(self.params.camera_name, self.params.change_threshold)
            decoding = getattr(owner, "configure_depth_decoding", None)
            if callable(decoding):
                decoding("adaptive" if self.params.adaptive_depth else "free")
        except ValueError as exc:
            self.get_logger().error(f"policy refused the depth-cache parameters: {exc}")

    # -- cache resets -------------------------------------------------------------------------

    def reset_cache(self, reason: str) -> bool:
        """Drop the policy's depth cache; False (and an error log) when the reset failed."""
        with self._generations.resetting():
            with self._lock:
                self._last_stamp_s = None
            self.resets += 1
            if self._policy_reset is None:
                self.get_logger().warning(
                    f"depth cache reset ({reason}) but no policy is attached"
                )
                self._clear_markers()
                return True
            try:
                self._policy_reset()
            except Exception as exc:  # a failing reset must not kill the node
                self.get_logger().error(f"depth cache reset ({reason}) failed: {exc}")
                return False
        self._clear_markers()
        self.get_logger().info(f"depth cache reset: {reason}")
        return True

    def _clear_markers(self) -> None:
        """Take the cubes of the dropped cache out of RViz (markers live until deleted; the
        last ones would go on showing the scene before the reset, e.g. after the last
        inference of an episode)."""
        from visualization_msgs.msg import Marker, MarkerArray

        marker = Marker()
        marker.header.stamp = self.get_clock().now().to_msg()
        marker.header.frame_id = self.marker_frame
        marker.ns = "depth_cells"
        marker.action = Marker.DELETEALL
        self._markers_pub.publish(MarkerArray(markers=[marker]))

    def inference_token(self) -> int:
        """Take right before a Think inference starts; pass it to ``on_think_result``."""
        return self._generations.token()

    @property
    def dropped_after_reset(self) -> int:
        """Think results not published: their inference started before a cache reset."""
        return self._generations.dropped

    def _on_reset(self, request: Any, response: Any) -> Any:
        response.success = self.reset_cache("~/reset service")
        response.message = "depth cache cleared" if response.success else "policy reset failed"
        return response

    def check_stamp(self, stamp: Time) -> bool:
        """Note the main camera's stamp; reset the cache (True) when it jumped.

        The policy node calls this right before ``act``, so that a jump resets the cache before
        the inference reads it; ``on_think_result`` calls it too, for callers that do not.
        """
        stamp_s = _stamp_seconds(stamp)
        with self._lock:
            pace = max(self._inference_times, default=0.0)
            reason = stamp_jump_reason(
                self._last_stamp_s, stamp_s, self.params.max_stamp_gap, pace
            )
            previous = self._last_stamp_s
        if previous is not None and stamp_s == previous:
            return False
        if reason is not None:
            self.reset_cache(reason)
        with self._lock:
            self._last_stamp_s = stamp_s
        return reason is not None

    # -- publishing ---------------------------------------------------------------------------

    def on_think_result(
        self,
        stamp: Time,
        image: np.ndarray,
        result: ActionChunkResult,
        started: int | None = None,
    ) -> bool:
        """Publish the depth topics for one Think result; False (and a log) when it is unusable
        or stale.

        ``stamp``: capture time of the main camera frame the result was computed from;
        ``image``: that frame (HxWx3 uint8 RGB), used for blending only; ``started``: the
        ``inference_token()`` taken when its inference began (None: not known, published).
        A result whose inference began before the latest cache reset describes the scene
        before it: dropped (counted, logged), and its stamp is not noted either.
        """
        if started is not None and not self._generations.admit(started):
            self.get_logger().info(
                "dropped a Think result computed before the latest depth cache reset "
                f"({self.dropped_after_reset} so far)",
                throttle_duration_sec=ERROR_LOG_PERIOD_S,
            )
            return False
        self.check_stamp(stamp)
        took = float(result.timings.get("total", 0.0))
        if math.isfinite(took) and took > 0.0:
            with self._lock:
                self._inference_times.append(took)
        p = self.params
        if result.depth_codes is None:
            self.get_logger().error(
                f"result of mode {result.mode!r} carries no depth codes; is the policy in "
                "think mode?",
                throttle_duration_sec=ERROR_LOG_PERIOD_S,
            )
            return False
        try:
            codes, changed = check_code_grid(
                np.asarray(result.depth_codes),
                p.grid_rows,
                p.grid_cols,
                p.num_codes,
                None if result.depth_changed is None else np.asarray(result.depth_changed),
            )
        except ValueError as exc:
            self.get_logger().error(
                f"unusable depth result: {exc}", throttle_duration_sec=ERROR_LOG_PERIOD_S
            )
            return False
        if result.depth_changed is None:
            changed = np.ones_like(changed)  # nothing says otherwise: treat all as re-predicted

        self._tokens_pub.publish(self._tokens_msg(stamp, codes, changed))
        self._results += 1
        if (self._results - 1) % p.image_every_n == 0:
            try:
                self._publish_pictures(stamp, image, codes, changed)
            except ValueError as exc:
                # Raised here it ended the policy node's publishing of this inference.
                self.get_logger().error(
                    f"no depth picture or markers for this result: {exc}",
                    throttle_duration_sec=ERROR_LOG_PERIOD_S,
                )
        return True

    def _tokens_msg(self, stamp: Time, codes: np.ndarray, changed: np.ndarray) -> Any:
        from molmoact2_msgs.msg import DepthTokens

        msg = DepthTokens()
        msg.header.stamp = stamp
        msg.header.frame_id = self.frame_id
        msg.rows = self.params.grid_rows
        msg.cols = self.params.grid_cols
        msg.num_codes = self.params.num_codes
        msg.codes = codes.astype(np.uint16).tolist()
        msg.changed = changed.tolist()
        msg.changed_fraction = float(changed.mean())
        return msg

    def _publish_pictures(
        self, stamp: Time, image: np.ndarray, codes: np.ndarray, changed: np.ndarray
    ) -> None:
        p = self.params
        background = None
        if p.blend_alpha < 1.0:
            try:
                background = check_rgb_frame(image, f"camera {p.camera_name!r} frame")
            except ValueError as exc:
                self.get_logger().error(
                    f"not blending the depth image: {exc}",
                    throttle_duration_sec=ERROR_LOG_PERIOD_S,
                )
        picture = render_depth_image(
            codes,
            changed,
            rows=p.grid_rows,
            cols=p.grid_cols,
            num_codes=p.num_codes,
            cell_size=p.cell_size,
            outline_px=p.outline_px,
            background=background,
            blend_alpha=p.blend_alpha if background is not None else 1.0,
        )
        self._image_pub.publish(make_image_msg(picture, stamp=stamp, frame_id=self.frame_id))
        # The cells split the camera frame, so its aspect aims the rays; a frame too broken to
        # blend still has a usable shape, and without one the grid is taken as square.
        shape = np.shape(image)
        size = (int(shape[1]), int(shape[0])) if len(shape) >= 2 and min(shape[:2]) > 0 else (1, 1)
        self._markers_pub.publish(self._markers_msg(stamp, codes, changed, size))

    def _markers_msg(
        self, stamp: Time, codes: np.ndarray, changed: np.ndarray, image_size: tuple[int, int]
    ) -> Any:
        from visualization_msgs.msg import Marker, MarkerArray

        p = self.params
        boxes = depth_cell_cubes(
            codes,
            changed,
            rows=p.grid_rows,
            cols=p.grid_cols,
            num_codes=p.num_codes,
            image_size=image_size,
            hfov=p.camera_hfov,
            distance=p.marker_distance,
        )
        array = MarkerArray()
        for box in boxes:
            marker = Marker()
            marker.header.stamp = stamp
            marker.header.frame_id = self.marker_frame
            marker.ns = "depth_cells"
            marker.id = box.index
            marker.type = Marker.CUBE
            marker.action = Marker.ADD
            marker.pose.position.x, marker.pose.position.y, marker.pose.position.z = box.center
            marker.pose.orientation.w = 1.0
            marker.scale.x, marker.scale.y, marker.scale.z = box.size
            marker.color.r, marker.color.g, marker.color.b, marker.color.a = box.rgba
            array.markers.append(marker)
        return array


NODE_NAME_REMAPS = ("__node:=", "__name:=", "__ns:=")


def second_node_ros_args(argv: Sequence[str]) -> list[str]:
    """The process's ``--ros-args`` for another node living in the same process.

    A process-wide ``-r __node:=molmoact2_policy`` (how launch names the policy node) would
    rename this node too, so its topics would land under the policy's name; parameter files,
    ``-p`` overrides and topic remaps still apply to both.
    """
    kept: list[str] = []
    inside = False
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--ros-args":
            inside = True
        elif arg == "--":
            inside = False
        elif inside and arg in ("--params-file", "-p", "--param") and index + 1 < len(argv):
            kept += [arg, argv[index + 1]]
            index += 1
        elif inside and arg in ("-r", "--remap") and index + 1 < len(argv):
            rule = argv[index + 1]
            # "node:__node:=x" targets one node; strip that prefix before looking at the rule.
            lhs = rule.split(":=", 1)[0]
            target = rule.split(":", 1)[1] if ":" in lhs else rule
            if not target.startswith(NODE_NAME_REMAPS):
                kept += [arg, rule]
            index += 1
        index += 1
    return ["--ros-args", *kept] if kept else []
