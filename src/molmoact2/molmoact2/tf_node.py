"""The ``molmoact2_tf`` node: the config's frames on ``/tf_static`` and, with a URDF on the pip
path, the arm's link frames on ``/tf`` from the measured joint states.

- Static frames (arm bases in the world, camera links and optical frames) come from the
  ``molmoact2_tf`` section of the robot config (``molmoact2.frames``) and go out once on
  ``/tf_static`` with tf2's static-broadcaster QoS (reliable, transient local, depth 1: one
  message holding every static transform, so a late RViz still gets all of them).
- With ``urdf`` set and ``urdf_fk`` on, each URDF joint becomes a transform as
  robot_state_publisher makes it: fixed joints join ``/tf_static``, movable joints go to
  ``/tf`` for every ``joint_states`` message, stamped with its measurement time. On a system
  ROS install the launch file starts robot_state_publisher instead and sets ``urdf_fk`` off.

The graph starts this node only when ``publish_tf`` is on (sim by default; off when the user's
stack already publishes these frames). It needs ``tf2_msgs``; where that is not importable (a ROS
install without it) both launch paths leave the node out with one warning and run the rest of
the graph: the frames are for viewing, and neither RViz nor any tf2 listener can run there
either. Started anyway (``ros2 run``), the node exits with status 1 and that one line.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import transforms3d

from molmoact2.frames import FrameTree, StaticFrame, static_frames_from_params
from molmoact2_common.ros_params import field_problems

NODE_NAME = "molmoact2_tf"
ERROR_LOG_PERIOD_S = 5.0
TF2_MSGS_MISSING = (
    "tf2_msgs is not importable, so no /tf or /tf_static can be published: with a ROS "
    "install, install tf2_msgs (ros-<distro>-tf2-msgs); on the pip path, `make setup` builds "
    "a stand-in"
)


def tf2_msgs_missing() -> str | None:
    """Why this node cannot run here (``TF2_MSGS_MISSING``), or None when it can."""
    try:
        import tf2_msgs.msg  # noqa: F401
    except ImportError:
        return TF2_MSGS_MISSING
    return None


def without_unavailable_tf(nodes: Sequence[Any], warn: Callable[[str], None]) -> list[Any]:
    """``nodes`` (graph ``NodeSpec``s) less this node when it cannot run here, said once through
    ``warn``: a launch keeps the robot running without frames rather than stop for a viewer's
    helper (our supervisor stops the whole graph when a node dies)."""
    nodes = list(nodes)
    if not any(n.name == NODE_NAME for n in nodes):
        return nodes
    problem = tf2_msgs_missing()
    if problem is None:
        return nodes
    warn(f"{NODE_NAME} not started: {problem}. The rest of the graph runs without its frames.")
    return [n for n in nodes if n.name != NODE_NAME]


def _doc(text: str) -> dict[str, str]:
    return {"description": text}


# How far ahead of this node's clock a joint state's stamp may lie (clock skew between machines).
MAX_STAMP_AHEAD_S = 1.0


def joint_stamp_problem(stamp_ns: int, now_ns: int, max_ahead_s: float = MAX_STAMP_AHEAD_S) -> str:
    """Why link frames must not go out on /tf with this joint state's stamp ('' when they may).

    tf2's TimeCache refuses data older than its newest entry by more than the cache time (10 s):
    one transform stamped an hour ahead made every listener (RViz) drop that link's correctly
    stamped transforms as TF_OLD_DATA for the next hour. ``now_ns`` 0 is a sim clock that has
    not started yet: nothing to compare with.
    """
    if stamp_ns < 0:
        return f"joint state stamp is negative ({stamp_ns * 1e-9:.3f} s)"
    if now_ns > 0 and stamp_ns - now_ns > max_ahead_s * 1e9:
        return (
            f"joint state stamped {(stamp_ns - now_ns) * 1e-9:.3f} s ahead of this node's clock "
            f"(more than {max_ahead_s:g} s: unsynchronised clocks?)"
        )
    return ""


@dataclass(frozen=True)
class TfParams:
    """Parameters of the ``molmoact2_tf`` node (config section ``molmoact2_tf``)."""

    publish_tf: bool = field(
        default=False,
        metadata=_doc(
            "Start this node on hardware too (the sim graph starts it unless the launch "
            "argument publish_tf:=false). Leave false when your stack (robot_state_publisher, "
            "camera drivers, a calibration publisher) already publishes these frames."
        ),
    )
    world_frame: str = field(
        default="world",
        metadata=_doc("Root frame every other frame hangs off; RViz's fixed frame."),
    )
    frame_ids: tuple[str, ...] = field(
        default=(),
        metadata=_doc("Static frames to publish, one transform each (child frame ids)."),
    )
    frame_parents: tuple[str, ...] = field(
        default=(), metadata=_doc("Parent frame of each entry of frame_ids.")
    )
    frame_xyz: tuple[float, ...] = field(
        default=(),
        metadata=_doc("Translation x, y, z [m] of each frame in its parent (3 per frame)."),
    )
    frame_rpy: tuple[float, ...] = field(
        default=(),
        metadata=_doc(
            "Rotation of each frame in its parent: roll, pitch, yaw [rad] about the parent's "
            "fixed x, y, z axes, as URDF rpy (3 per frame)."
        ),
    )
    urdf: str = field(
        default="",
        metadata=_doc(
            "Robot URDF (the shared `/**` key; the launch layer makes it absolute); empty: no "
            "link frames. Its root link must be one of the static frames or world_frame."
        ),
    )
    urdf_fk: bool = field(
        default=True,
        metadata=_doc(
            "Compute the URDF's link frames here (pip path). The ROS launch file sets it "
            "false and starts robot_state_publisher when that is installed."
        ),
    )
    joint_states_topic: str = field(
        default="joint_states", metadata=_doc("Measured joint states for the link frames.")
    )

    def static_frames(self) -> list[StaticFrame]:
        return static_frames_from_params(
            self.frame_ids, self.frame_parents, self.frame_xyz, self.frame_rpy
        )

    def urdf_path(self, config_dir: Path) -> Path | None:
        if not self.urdf:
            return None
        path = Path(self.urdf).expanduser()
        return path if path.is_absolute() else config_dir / path

    def validate(self) -> list[str]:
        # NaN in frame_xyz/frame_rpy would go out on /tf; a bad joint_states_topic raised
        # from inside rclpy.
        problems = field_problems(self)
        if problems:
            return problems
        try:
            frames = self.static_frames()
        except ValueError as exc:
            return [str(exc)]
        tree = FrameTree.from_frames(frames)
        if self.urdf:
            # Static frames may hang off URDF links (a wrist camera on the hand): count the
            # URDF's joints as edges for connectivity (their poses come later, from FK).
            from molmoact2.graph import config_dir
            from molmoact2.urdf_frames import parse_urdf_joints

            try:
                for joint in parse_urdf_joints(self.urdf_path(config_dir())):
                    if joint.child not in tree.frames or tree.root_of(joint.child) == joint.child:
                        tree.set(joint.parent, joint.child, np.eye(4))
            except ValueError as exc:
                return [str(exc)]
        loose = sorted(f for f in tree.frames if tree.lookup(self.world_frame, f) is None)
        if loose:
            problems.append(
                f"frames {', '.join(loose)} do not connect to world_frame {self.world_frame!r}"
            )
        return problems


def transform_msg(parent: str, child: str, child_in_parent: np.ndarray, stamp: Any) -> Any:
    """geometry_msgs/TransformStamped of a 4x4 pose."""
    from geometry_msgs.msg import TransformStamped

    msg = TransformStamped()
    msg.header.stamp = stamp
    msg.header.frame_id = parent
    msg.child_frame_id = child
    t = msg.transform.translation
    t.x, t.y, t.z = (float(v) for v in child_in_parent[:3, 3])
    w, x, y, z = transforms3d.quaternions.mat2quat(child_in_parent[:3, :3])
    r = msg.transform.rotation
    r.x, r.y, r.z, r.w = float(x), float(y), float(z), float(w)
    return msg


def static_tf_qos() -> Any:
    """tf2_ros StaticTransformBroadcaster's QoS: latched for late joiners."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(
        depth=1,
        history=HistoryPolicy.KEEP_LAST,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )


def make_node(context: Any = None, cli_args: list[str] | None = None, **kwargs: Any) -> Any:
    """Build the node (ROS imports happen here so the params above stay importable)."""
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import JointState

    try:
        from tf2_msgs.msg import TFMessage
    except ImportError as exc:
        raise RuntimeError(TF2_MSGS_MISSING) from exc

    from molmoact2.graph import config_dir
    from molmoact2.urdf_frames import UrdfFrames
    from molmoact2_common.ros_params import declare_dataclass_params, refuse_param_changes

    class TfNode(Node):
        def __init__(self) -> None:
            super().__init__(NODE_NAME, context=context, cli_args=cli_args, **kwargs)
            self.params: TfParams = declare_dataclass_params(self, TfParams)
            refuse_param_changes(self, TfParams)
            problems = self.params.validate()
            if problems:
                raise ValueError(f"{NODE_NAME}: invalid parameters: " + "; ".join(problems))
            self.urdf: UrdfFrames | None = None
            urdf_path = self.params.urdf_path(config_dir())
            if urdf_path is not None and self.params.urdf_fk:
                self.urdf = UrdfFrames(urdf_path)
                self._check_urdf_against_config(self.urdf)
            self.static_pub = self.create_publisher(TFMessage, "/tf_static", static_tf_qos())
            # tf2_ros TransformBroadcaster's default: reliable, volatile, depth 100.
            self.tf_pub = self.create_publisher(
                TFMessage, "/tf", QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
            )
            self.fk_errors = 0
            self.publish_static()
            if self.urdf is not None:
                # Best effort matches reliable and best-effort publishers alike; a lost joint
                # state is superseded by the next one anyway.
                self.create_subscription(
                    JointState,
                    self.params.joint_states_topic,
                    self._on_joint_state,
                    QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT),
                )
            self.get_logger().info(
                f"publishing {len(self.params.frame_ids)} static frames under "
                f"{self.params.world_frame!r}"
                + (f" and the link frames of {urdf_path}" if self.urdf else "")
            )

        def _check_urdf_against_config(self, urdf: UrdfFrames) -> None:
            tree = FrameTree.from_frames(self.params.static_frames())
            doubled = sorted({j.child for j in urdf.joints} & set(self.params.frame_ids))
            if doubled:
                raise ValueError(
                    f"{NODE_NAME}: frames {', '.join(doubled)} are both in the config and "
                    f"children in {urdf.path} (a frame has one parent)"
                )
            root = urdf.root_link
            if root != self.params.world_frame and root not in tree.frames:
                raise ValueError(
                    f"{NODE_NAME}: URDF root link {root!r} is not a configured frame; add it "
                    f"to frame_ids so the arm connects to {self.params.world_frame!r}"
                )

        def publish_static(self) -> None:
            stamp = self.get_clock().now().to_msg()
            transforms = [
                transform_msg(f.parent, f.child, f.matrix, stamp)
                for f in self.params.static_frames()
            ]
            if self.urdf is not None:
                transforms += [
                    transform_msg(parent, child, pose, stamp)
                    for parent, child, pose in self.urdf.fixed_transforms()
                ]
            self.static_pub.publish(TFMessage(transforms=transforms))

        def _on_joint_state(self, msg: Any) -> None:
            assert self.urdf is not None
            stamp = msg.header.stamp
            stamp_ns = int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
            now = self.get_clock().now()
            try:
                if stamp_ns == 0:
                    stamp = now.to_msg()
                else:
                    problem = joint_stamp_problem(stamp_ns, now.nanoseconds)
                    if problem:
                        raise ValueError(problem)
                edges = self.urdf.joint_state_transforms(list(msg.name), list(msg.position))
            except ValueError as exc:
                self.fk_errors += 1
                self.get_logger().error(
                    f"no link frames for this joint state: {exc}",
                    throttle_duration_sec=ERROR_LOG_PERIOD_S,
                )
                return
            self.tf_pub.publish(
                TFMessage(
                    transforms=[
                        transform_msg(parent, child, pose, stamp) for parent, child, pose in edges
                    ]
                )
            )

    return TfNode()


def main(args: list[str] | None = None) -> int:
    problem = tf2_msgs_missing()
    if problem is not None:
        # A missing package is not a bug in this node: the one line says what to install.
        sys.stderr.write(f"[{NODE_NAME}] {problem}\n")
        return 1
    from molmoact2_common.ros_runtime import run_node

    return run_node(make_node, args)


if __name__ == "__main__":
    sys.exit(main())
