"""molmoact2_tf on the wire: each robot config's frames arrive on /tf_static (late joiners too)
and connect every camera and marker frame to the world; with a URDF, link frames follow the
measured joint states on /tf, stamped with their measurement time (issue 20)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.rostest_util import REPO_ROOT, spin_until
from tests.tf_listener import TfBuffer

pytestmark = pytest.mark.ros

URDF = REPO_ROOT / "tests" / "fixtures" / "pan_slide_tilt.urdf"


@pytest.fixture
def ros():
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    context = rclpy.Context()
    rclpy.init(context=context)
    executor = SingleThreadedExecutor(context=context)
    nodes = []

    def add(node):
        nodes.append(node)
        executor.add_node(node)
        return node

    try:
        yield context, executor, add
    finally:
        executor.shutdown()
        for node in nodes:
            node.destroy_node()
        rclpy.shutdown(context=context)


def tf_node(context, params_file: Path | None = None, overrides: list | None = None):
    from molmoact2.tf_node import make_node

    args = ["--ros-args"]
    if params_file is not None:
        args += ["--params-file", str(params_file)]
    return make_node(
        context=context,
        cli_args=args,
        parameter_overrides=overrides or [],
        use_global_arguments=False,
    )


def stamped_frames(config: dict) -> dict[str, str]:
    """Every frame id a node of this robot's graph stamps on an image or marker."""
    shared = config["/**"]["ros__parameters"]
    frames = {f: f"camera image ({c})" for c, f in zip(
        shared["camera_names"], shared["camera_frames"], strict=True)}
    policy = config["/**/molmoact2_policy"]["ros__parameters"]
    frames[policy["marker_frame"]] = "predicted_chunk_markers"
    depth = config["/**/molmoact2_depth_cache"]["ros__parameters"]
    frames[depth["marker_frame"]] = "depth_markers"
    return frames


@pytest.mark.parametrize("robot", ["yam", "droid", "so101"])
def test_config_frames_reach_a_late_listener_and_connect_to_the_fixed_frame(ros, robot):
    import rclpy

    context, executor, add = ros
    config_path = REPO_ROOT / "config" / f"{robot}.yaml"
    config = yaml.safe_load(config_path.read_text())
    node = add(tf_node(context, config_path))
    # The listener starts after the one and only /tf_static message went out (in __init__).
    probe = add(rclpy.create_node("tf_probe", context=context))
    buffer = TfBuffer()
    buffer.subscribe(probe)
    tf = config["/**/molmoact2_tf"]["ros__parameters"]
    if config["/**"]["ros__parameters"].get("urdf"):
        # Link frames need measured joints: the driver's initial pose, as the sim publishes it.
        from sensor_msgs.msg import JointState

        driver = next(v["ros__parameters"] for k, v in config.items() if k.endswith("_driver"))
        joints = probe.create_publisher(JointState, "joint_states", 10)
        state = JointState(
            name=config["/**"]["ros__parameters"]["joint_names"],
            position=[float(v) for v in driver["initial_positions"]],
        )
        probe.create_timer(0.05, lambda: joints.publish(state))
    assert spin_until(
        probe,
        lambda: set(tf["frame_ids"]) <= buffer.frames and all(
            buffer.lookup(tf["world_frame"], f) is not None for f in stamped_frames(config)
        ),
        15.0,
        executor=executor,
    ), buffer.frames
    rviz = yaml.safe_load((REPO_ROOT / "config" / "molmoact2.rviz").read_text())
    fixed = rviz["Visualization Manager"]["Global Options"]["Fixed Frame"]
    missing = {f: w for f, w in stamped_frames(config).items() if buffer.lookup(fixed, f) is None}
    assert not missing, f"{robot}: no transform to {fixed!r} for {missing}"
    # Optical frames follow REP-103: z forward = the camera link's x axis.
    for camera in config["/**"]["ros__parameters"]["camera_names"]:
        link_to_optical = buffer.lookup(f"{camera}_camera_link", f"{camera}_optical_frame")
        np.testing.assert_allclose(link_to_optical[:3, 2], [1, 0, 0], atol=1e-12)
        np.testing.assert_allclose(link_to_optical[:3, 0], [0, -1, 0], atol=1e-12)
    assert buffer.messages["/tf_static"] == 1 and node.fk_errors == 0
    if node.urdf is not None:  # the wrist camera rides on the arm: it moved with FK
        assert buffer.messages["/tf"] > 0


def tool_position(theta: float, d: float, phi: float) -> np.ndarray:
    px, py = 0.4 + d + 0.15 * math.sin(phi), -0.15 * math.cos(phi)
    return np.array(
        [math.cos(theta) * px - math.sin(theta) * py, math.sin(theta) * px + math.cos(theta) * py,
         0.2]
    )


def test_urdf_link_frames_follow_joint_states_with_their_stamp(ros):
    import rclpy
    from builtin_interfaces.msg import Time
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import JointState

    context, executor, add = ros
    node = add(
        tf_node(
            context,
            overrides=[
                Parameter("urdf", Parameter.Type.STRING, str(URDF)),
                Parameter("frame_ids", Parameter.Type.STRING_ARRAY, ["base_link"]),
                Parameter("frame_parents", Parameter.Type.STRING_ARRAY, ["world"]),
                Parameter("frame_xyz", Parameter.Type.DOUBLE_ARRAY, [1.0, 0.0, 0.0]),
                Parameter("frame_rpy", Parameter.Type.DOUBLE_ARRAY, [0.0, 0.0, math.pi]),
            ],
        )
    )
    probe = add(rclpy.create_node("fk_probe", context=context))
    buffer = TfBuffer()
    stamps = []

    def on_tf(msg):
        stamps.extend((t.header.stamp.sec, t.header.stamp.nanosec) for t in msg.transforms)
        buffer.add(msg, static=False)

    from rclpy.qos import DurabilityPolicy, QoSProfile
    from tf2_msgs.msg import TFMessage

    probe.create_subscription(TFMessage, "/tf", on_tf, 100)
    probe.create_subscription(
        TFMessage, "/tf_static", lambda m: buffer.add(m, True),
        QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL),
    )
    joints = probe.create_publisher(JointState, "joint_states", 10)
    q = {"pan": 0.4, "slide": 0.25, "tilt": -2.0}
    state = JointState(name=list(q), position=list(q.values()))
    state.header.stamp = Time(sec=42, nanosec=5)
    broken = JointState(name=["pan", "slide"], position=[0.0, 0.0])  # lacks tilt
    # Keep publishing until discovery has matched and the frames arrived (no sleeps).
    probe.create_timer(0.05, lambda: (joints.publish(broken), joints.publish(state)))
    assert spin_until(
        probe, lambda: buffer.lookup("world", "tool") is not None, 15.0, executor=executor
    ), buffer.frames
    tool_in_base = buffer.lookup("base_link", "tool")
    np.testing.assert_allclose(tool_in_base[:3, 3], tool_position(0.4, 0.25, -2.0), atol=1e-9)
    # world -> base_link is the configured static frame: 1 m ahead, turned half a turn.
    tool_in_world = buffer.lookup("world", "tool")
    expected = tool_position(0.4, 0.25, -2.0) * [-1, -1, 1] + [1.0, 0.0, 0.0]
    np.testing.assert_allclose(tool_in_world[:3, 3], expected, atol=1e-9)
    assert set(stamps) == {(42, 5)}  # every /tf transform carries the measurement's stamp
    assert node.fk_errors > 0  # the broken joint state was refused, the node went on
