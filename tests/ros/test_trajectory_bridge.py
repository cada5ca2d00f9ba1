"""The trajectory bridge node: ActionChunk in, JointTrajectory + gripper command out."""

from __future__ import annotations

import itertools
import math
from collections import deque

import numpy as np
import pytest

from tests.rostest_util import call_service, spin_until, start_python, stop_process

pytestmark = pytest.mark.ros

ARM = [f"panda_joint{i}" for i in range(1, 8)]
NAMES = [*ARM, "panda_gripper"]
LOWER = [-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973, 0.0]
UPPER = [2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973, 1.0]
HOME = [0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785, 0.2]
FR3 = [f"fr3_joint{i}" for i in range(1, 8)]


def make_chunk(stamp_ns: int, horizon: int = 8, step_dt: float = 1 / 15, nan: bool = False):
    from molmoact2_msgs.msg import ActionChunk

    msg = ActionChunk()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    msg.start_offset.nanosec = round(step_dt * 1e9)
    msg.step_dt = step_dt
    msg.joint_names = NAMES
    msg.horizon = horizon
    rows = []
    for k in range(horizon):
        rows.extend(h + 0.01 * k for h in HOME)
    if nan:
        rows[3 * len(NAMES) + 2] = math.nan
    msg.positions = rows
    msg.sequence = 7
    return msg


@pytest.fixture
def graph(request):
    """The bridge and a probe; ``parametrize("graph", [{param: value}], indirect=True)`` sets
    more of the bridge's parameters."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import JointState
    from trajectory_msgs.msg import JointTrajectory

    from hw_drivers.trajectory_bridge_node import TrajectoryBridgeNode
    from molmoact2_msgs.msg import ActionChunk

    context = rclpy.Context()
    rclpy.init(context=context)
    overrides = [
        Parameter("joint_names", Parameter.Type.STRING_ARRAY, NAMES),
        Parameter("position_lower", Parameter.Type.DOUBLE_ARRAY, LOWER),
        Parameter("position_upper", Parameter.Type.DOUBLE_ARRAY, UPPER),
        Parameter("max_velocity", Parameter.Type.DOUBLE_ARRAY, [2.0] * 8),
        Parameter("max_acceleration", Parameter.Type.DOUBLE_ARRAY, [10.0] * 8),
        Parameter("chunk_topic", Parameter.Type.STRING, "bridge_test/action_chunk"),
        Parameter("trajectory_topic", Parameter.Type.STRING, "bridge_test/joint_trajectory"),
        Parameter("joint_state_topic", Parameter.Type.STRING, "bridge_test/joint_states"),
        # Points due within 0.05 s would be skipped by default; keep the timing test's first.
        Parameter("min_lead_time", Parameter.Type.DOUBLE, 0.0),
        # Generous for a loaded test machine; the one-off joint states must still count.
        Parameter("max_state_age", Parameter.Type.DOUBLE, 5.0),
        Parameter("rejection_window", Parameter.Type.DOUBLE, 3.0),  # recovery within the test
        Parameter(
            "controller_joint_names",
            Parameter.Type.STRING_ARRAY,
            [f"fr3_joint{i}" for i in range(1, 8)],
        ),
        *(Parameter(k, value=v) for k, v in getattr(request, "param", {}).items()),
    ]
    bridge = TrajectoryBridgeNode(context=context, parameter_overrides=overrides)
    probe = rclpy.create_node("bridge_probe", context=context)
    received: dict[str, list] = {"trajectory": [], "gripper": []}
    probe.create_subscription(
        JointTrajectory, "bridge_test/joint_trajectory", received["trajectory"].append, 10
    )
    probe.create_subscription(
        JointState, "trajectory_bridge/gripper_command", received["gripper"].append, 10
    )
    publisher = probe.create_publisher(ActionChunk, "bridge_test/action_chunk", 10)
    states = probe.create_publisher(JointState, "bridge_test/joint_states", 10)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(bridge)
    executor.add_node(probe)
    assert bridge.trigger_configure().name == "SUCCESS"
    bridge.trigger_activate()
    spin_until(probe, lambda: publisher.get_subscription_count() > 0, 5.0, executor)
    spin_until(probe, lambda: states.get_subscription_count() > 0, 5.0, executor)

    def measured(arm=HOME[:7]):
        """Publish the arm's joint states (controller names) and wait until the bridge has them."""
        msg = JointState()
        msg.name = [f"fr3_joint{i}" for i in range(1, 8)]
        msg.position = [float(v) for v in arm]
        bridge._measured = None
        for _ in range(50):
            states.publish(msg)
            if spin_until(probe, lambda: bridge._measured is not None, 0.1, executor):
                break
        assert bridge._measured is not None

    measured()
    yield bridge, probe, publisher, received, executor, measured
    executor.shutdown()
    bridge.destroy_node()
    probe.destroy_node()
    rclpy.shutdown(context=context)


def test_chunk_becomes_a_timed_trajectory_and_gripper_command(graph):
    bridge, probe, publisher, received, executor, _ = graph
    step = 1 / 15
    # Captured 0.1 s ago, action k at capture + (k + 1)/15: action 0 is 0.033 s overdue.
    stamp_ns = bridge.get_clock().now().nanoseconds - 100_000_000
    publisher.publish(make_chunk(stamp_ns))
    assert spin_until(probe, lambda: received["trajectory"] and received["gripper"], 5.0, executor)
    traj = received["trajectory"][0]
    assert list(traj.joint_names) == [f"fr3_joint{i}" for i in range(1, 8)]
    assert traj.header.stamp.sec == 0 and traj.header.stamp.nanosec == 0
    times = [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in traj.points]
    # Action 0 was skipped; action 1 is due about 0.033 s from when the bridge got the chunk.
    assert len(times) == 7
    assert 0.0 < times[0] <= 2 * step - 0.1 + 1e-6
    for a, b in itertools.pairwise(times[:-1]):
        assert b - a == pytest.approx(step, abs=1e-6)
    # The last point settles into rest (trajectory.settling_time): 1.5 steps at constant speed.
    assert times[-1] - times[-2] == pytest.approx(1.5 * step, abs=1e-6)
    assert list(traj.points[0].positions) == pytest.approx([h + 0.01 for h in HOME[:7]])
    assert len(traj.points[0].velocities) == 7
    grip = received["gripper"][0]
    assert list(grip.name) == ["panda_gripper"]
    assert list(grip.position) == pytest.approx([HOME[7] + 0.01])
    assert bridge.accepted == 1


FORWARD_COMMAND = {
    "gripper_command_type": "forward_command",
    "gripper_topic": "bridge_test/gripper_controller/commands",
}


@pytest.mark.parametrize("graph", [FORWARD_COMMAND], indirect=True)
def test_gripper_as_forward_command_controller_commands(graph):
    # Before: the gripper went out only as a sensor_msgs/JointState, which no ros2_control
    # controller takes; a forward_command_controller takes std_msgs/Float64MultiArray on
    # ~/commands, one value per joint of its `joints`, in that order.
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy, qos_profile_system_default
    from std_msgs.msg import Float64MultiArray

    bridge, probe, publisher, received, executor, _ = graph
    topic = FORWARD_COMMAND["gripper_topic"]
    commands: list = []
    # The controller subscribes with rclcpp::SystemDefaultsQoS().
    probe.create_subscription(Float64MultiArray, topic, commands.append, qos_profile_system_default)
    assert spin_until(
        probe, lambda: bridge._gripper_pub.get_subscription_count() > 0, 5.0, executor
    )
    [info] = probe.get_publishers_info_by_topic(topic)
    assert info.topic_type == "std_msgs/msg/Float64MultiArray"
    assert info.qos_profile.reliability == ReliabilityPolicy.RELIABLE
    assert info.qos_profile.durability == DurabilityPolicy.VOLATILE
    stamp_ns = bridge.get_clock().now().nanoseconds - 100_000_000  # action 0 is overdue
    publisher.publish(make_chunk(stamp_ns))
    assert spin_until(probe, lambda: received["trajectory"] and commands, 5.0, executor)
    [command] = commands
    # The chunk's gripper value at the first kept action, unchanged (robot-config units).
    assert list(command.data) == pytest.approx([HOME[7] + 0.01])
    assert list(received["trajectory"][0].joint_names) == [f"fr3_joint{i}" for i in range(1, 8)]
    assert received["gripper"] == []  # nothing on the JointState topic
    assert bridge.accepted == 1


def _gripper_overshooting(stamp_ns: int, gripper: float):
    """A chunk whose gripper sits at ``gripper`` (below its 0..1 limits: a full grasp)."""
    msg = make_chunk(stamp_ns)
    rows = list(msg.positions)
    for k in range(msg.horizon):
        rows[k * len(NAMES) + 7] = gripper
    msg.positions = rows
    return msg


@pytest.mark.parametrize("graph", [{"position_margin": [0.0] * 7 + [0.05]}], indirect=True)
def test_gripper_overshoot_within_the_margin_goes_out_at_the_limit(graph):
    bridge, probe, publisher, received, executor, measured = graph
    stamp_ns = bridge.get_clock().now().nanoseconds - 100_000_000
    publisher.publish(_gripper_overshooting(stamp_ns, -0.03))
    assert spin_until(probe, lambda: received["trajectory"] and received["gripper"], 5.0, executor)
    assert list(received["gripper"][0].position) == [0.0]
    assert bridge.accepted == 1
    # Beyond the margin: refused whole, as without one.
    measured()
    publisher.publish(_gripper_overshooting(bridge.get_clock().now().nanoseconds, -0.06))
    assert spin_until(probe, lambda: bridge.rejected == 1, 5.0, executor)
    assert bridge.last_rejection.startswith("position_limit: joint panda_gripper")
    assert len(received["gripper"]) == 1


def test_gripper_overshoot_without_a_margin_refuses_the_chunk(graph):
    bridge, probe, publisher, received, executor, _ = graph
    publisher.publish(_gripper_overshooting(bridge.get_clock().now().nanoseconds, -0.03))
    assert spin_until(probe, lambda: bridge.rejected == 1, 5.0, executor)
    assert bridge.last_rejection.startswith("position_limit: joint panda_gripper")
    assert received["trajectory"] == [] and received["gripper"] == []


def test_nan_chunk_produces_no_trajectory(graph):
    bridge, probe, publisher, received, executor, measured = graph
    publisher.publish(make_chunk(bridge.get_clock().now().nanoseconds, nan=True))
    assert spin_until(probe, lambda: bridge.rejected == 1, 5.0, executor)
    spin_until(probe, lambda: bool(received["trajectory"]), 0.5, executor)
    assert received["trajectory"] == [] and received["gripper"] == []
    assert bridge.last_rejection.startswith("non_finite:")
    # A good chunk afterwards goes through: one bad chunk does not stop the bridge.
    measured()  # joint states stream; the test's are one-off, so send a fresh one
    publisher.publish(make_chunk(bridge.get_clock().now().nanoseconds))
    assert spin_until(probe, lambda: bool(received["trajectory"]), 5.0, executor)


def test_diagnostics_warn_while_rejections_are_recent_then_recover(graph):
    # Before: one refused chunk kept the bridge WARN for the rest of its life, so a monitor
    # learnt to ignore it; the driver's WARN has always ended with its rejection window.
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

    bridge, probe, publisher, _received, executor, _measured = graph
    mine = f"{bridge.get_fully_qualified_name()}: driver"
    statuses: list = []
    probe.create_subscription(
        DiagnosticArray,
        "/diagnostics",
        lambda a: statuses.extend(s for s in a.status if s.name == mine),
        10,
    )
    publisher.publish(make_chunk(bridge.get_clock().now().nanoseconds, nan=True))
    assert spin_until(
        probe, lambda: statuses and statuses[-1].level == DiagnosticStatus.WARN, 5.0, executor
    ), [(s.level, s.message) for s in statuses]
    warned = statuses[-1]
    values = {kv.key: kv.value for kv in warned.values}
    assert "1 chunks rejected in the last 3 s; last: non_finite" in warned.message
    assert values["rejected_recently"] == "1" and values["last_reject_reason"].startswith(
        "non_finite"
    )
    assert spin_until(
        probe, lambda: statuses[-1].level == DiagnosticStatus.OK, 8.0, executor
    ), statuses[-1].message
    values = {kv.key: kv.value for kv in statuses[-1].values}
    assert values["rejected"] == "1" and values["rejected_recently"] == "0"


def test_chunk_far_from_the_measured_pose_is_ramped_in_never_sent_as_is(graph):
    bridge, probe, publisher, received, executor, measured = graph
    away = list(HOME[:7])
    away[1] -= 0.4  # the arm is 0.4 rad from where the chunk starts
    measured(away)
    stamp_ns = bridge.get_clock().now().nanoseconds
    publisher.publish(make_chunk(stamp_ns))
    assert spin_until(probe, lambda: bool(received["trajectory"]), 5.0, executor)
    traj = _as_data(received["trajectory"][0])
    # As sent the first point was due in about 1/15 s: 6 rad/s. Ramped in, it is blended from
    # the measured pose onto the chunk over the ramp-in time (1 s), the chunk's schedule kept:
    # as the controller runs it, within 2 rad/s and never outside the span between the two.
    from hw_drivers.jtc_model import bounds, check_trajectory

    assert check_trajectory(traj, FR3) is None
    assert traj.points[0].time_from_start < 0.1  # not delayed
    assert traj.points[-1].time_from_start >= 1.0 - 1e-6
    lowest, highest, fastest = bounds(traj, away, np.zeros(7))
    assert np.all(fastest <= 2.0 + 1e-9)
    assert lowest[:, 1].min() >= away[1] - 1e-9 and highest[:, 1].max() <= HOME[1] + 0.3
    assert bridge.ramped == 1


def test_chunk_too_far_or_without_measurement_is_refused(graph):
    bridge, probe, publisher, received, executor, measured = graph
    away = list(HOME[:7])
    away[0] += 0.6
    measured(away)
    publisher.publish(make_chunk(bridge.get_clock().now().nanoseconds))
    assert spin_until(probe, lambda: bridge.rejected == 1, 5.0, executor)
    assert bridge.last_rejection.startswith("start_deviation: joint panda_joint1")
    bridge._measured = None  # the joint states stopped
    publisher.publish(make_chunk(bridge.get_clock().now().nanoseconds))
    assert spin_until(probe, lambda: bridge.rejected == 2, 5.0, executor)
    assert bridge.last_rejection.startswith("start_pose: no recent measured joint state")
    spin_until(probe, lambda: bool(received["trajectory"]), 0.3, executor)
    assert received["trajectory"] == []


def test_console_script_autostarts_with_the_robot_config(tmp_path):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import JointState
    from trajectory_msgs.msg import JointTrajectory

    from molmoact2_msgs.msg import ActionChunk

    # Node-specific keys of a later params file beat droid.yaml's (a plain -p would not).
    topics = tmp_path / "topics.yaml"
    topics.write_text(
        "franka_driver:\n  ros__parameters:\n"
        "    trajectory_topic: bridge_cli/joint_trajectory\n"
        "    chunk_topic: bridge_cli/action_chunk\n"
        "    joint_state_topic: bridge_cli/joint_states\n"
    )
    proc = start_python(
        [
            "-m",
            "hw_drivers.trajectory_bridge_node",
            "--ros-args",
            "--params-file",
            "config/droid.yaml",
            "--params-file",
            str(topics),
            "-r",
            "__node:=franka_driver",
        ]
    )
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node("bridge_cli_probe", context=context)
        got: list = []
        node.create_subscription(JointTrajectory, "bridge_cli/joint_trajectory", got.append, 10)
        pub = node.create_publisher(ActionChunk, "bridge_cli/action_chunk", 10)
        states = node.create_publisher(JointState, "bridge_cli/joint_states", 10)
        state = JointState()
        state.name, state.position = ARM, [float(v) for v in HOME[:7]]
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        ready = spin_until(node, lambda: pub.get_subscription_count() > 0, 20.0, executor)
        assert ready, stop_process(proc)
        for _ in range(20):
            states.publish(state)  # the start pose is checked against the measured arm
            spin_until(node, lambda: False, 0.05, executor)
            pub.publish(make_chunk(node.get_clock().now().nanoseconds))
            if spin_until(node, lambda: bool(got), 0.5, executor):
                break
        assert got, stop_process(proc)
        assert list(got[0].joint_names) == ARM  # droid.yaml joint names, gripper split off
        executor.shutdown()
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
        stop_process(proc)


def _execution_reports(probe) -> list:
    """The bridge's ~/chunk_execution reports, decoded, as they arrive (latched QoS, as the
    policy's RTC feed subscribes)."""
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    from molmoact2_common.chunk_execution import ChunkExecution
    from molmoact2_msgs.msg import ChunkExecution as ChunkExecutionMsg

    reports: list = []
    probe.create_subscription(
        ChunkExecutionMsg,
        "trajectory_bridge/chunk_execution",
        lambda m: reports.append(ChunkExecution.from_msg(m)),
        QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE,
                   durability=DurabilityPolicy.TRANSIENT_LOCAL),
    )
    return reports


def test_chunk_execution_names_the_sent_chunk_and_the_verdict_on_a_dropped_one(graph):


    bridge, probe, publisher, _received, executor, measured = graph
    reports = _execution_reports(probe)
    sent_ns = bridge.get_clock().now().nanoseconds
    sent = make_chunk(sent_ns, horizon=30)  # 2 s of trajectory: still running below
    publisher.publish(sent)
    assert spin_until(probe, lambda: any(r.last_accepted for r in reports), 5.0, executor)
    report = reports[-1]
    assert report.state == "tracking" and report.running.same_as(7, sent_ns)
    # The arm moved away: the next chunk is refused and the controller keeps the first one.
    away = list(HOME[:7])
    away[0] += 0.6
    measured(away)
    dropped = make_chunk(bridge.get_clock().now().nanoseconds)
    dropped.sequence = 8
    publisher.publish(dropped)
    assert spin_until(
        probe, lambda: reports[-1].last is not None and reports[-1].last.sequence == 8, 5.0,
        executor,
    )
    report = reports[-1]
    assert not report.last_accepted and report.last_reject_reason.startswith("start_deviation")
    assert report.following().same_as(7, sent_ns)


def _call(probe, executor, srv_type, name, request):
    return call_service(probe, executor, srv_type, name, request, timeout=5.0)


def test_estop_latches_stops_the_arm_and_only_reset_with_a_measured_pose_clears_it(graph):
    from std_srvs.srv import SetBool, Trigger

    from hw_drivers.executor import ESTOP_LATCHED, HOLD_RELEASED_IN_ESTOP, REJECT_ESTOP

    bridge, probe, publisher, received, executor, measured = graph
    publisher.publish(make_chunk(bridge.get_clock().now().nanoseconds))
    assert spin_until(probe, lambda: len(received["trajectory"]) == 1, 5.0, executor)
    sent = 1

    answer = _call(probe, executor, Trigger, "trajectory_bridge/estop", Trigger.Request())
    assert answer.success and answer.message == ESTOP_LATCHED
    # The controller's trajectory is replaced by a stop at the measured pose (at rest here).
    assert spin_until(probe, lambda: len(received["trajectory"]) > sent, 5.0, executor)
    [stop] = received["trajectory"][sent:]
    assert list(stop.joint_names) == [f"fr3_joint{i}" for i in range(1, 8)]
    assert len(stop.points) == 1
    assert list(stop.points[0].positions) == pytest.approx(HOME[:7])
    assert list(stop.points[0].velocities) == [0.0] * 7

    # Latched: chunks are refused with the driver's reason, across a lifecycle cycle too.
    measured()
    publisher.publish(make_chunk(bridge.get_clock().now().nanoseconds))
    assert spin_until(probe, lambda: bridge.rejected == 1, 5.0, executor)
    assert bridge.last_rejection == REJECT_ESTOP
    for transition in ("deactivate", "cleanup", "configure", "activate"):
        assert getattr(bridge, f"trigger_{transition}")().name == "SUCCESS"
    measured()
    publisher.publish(make_chunk(bridge.get_clock().now().nanoseconds))
    assert spin_until(probe, lambda: bridge.rejected == 2, 5.0, executor)
    assert bridge.last_rejection == REJECT_ESTOP
    assert len(received["trajectory"]) == sent + 1
    answer = _call(probe, executor, SetBool, "trajectory_bridge/hold", SetBool.Request(data=False))
    assert not answer.success and answer.message == HOLD_RELEASED_IN_ESTOP

    # No recent measurement: the reset is refused and the e-stop stays.
    bridge._measured = None
    answer = _call(probe, executor, Trigger, "trajectory_bridge/reset", Trigger.Request())
    assert not answer.success and "no recent joint state" in answer.message
    measured()
    publisher.publish(make_chunk(bridge.get_clock().now().nanoseconds))
    assert spin_until(probe, lambda: bridge.rejected == 3, 5.0, executor)

    measured()
    answer = _call(probe, executor, Trigger, "trajectory_bridge/reset", Trigger.Request())
    assert answer.success and "cleared e-stop" in answer.message, answer.message
    publisher.publish(make_chunk(bridge.get_clock().now().nanoseconds))
    assert spin_until(probe, lambda: bridge.accepted == 2, 5.0, executor)
    assert bridge.rejected == 3


def _as_data(msg):
    """A received JointTrajectory as the bridge's data type, for the controller's rules."""
    from tests.ros.jtc_emulator_node import trajectory_from_msg

    return trajectory_from_msg(msg)


def test_estop_without_a_measured_pose_stops_from_the_controllers_reference(graph):
    # Before: no recent joint state -> an empty trajectory, which current
    # joint_trajectory_controller releases refuse ("Empty trajectory received.") and then play
    # the running trajectory to its end. Now: a stop the controller takes, from where its
    # reference is on the trajectory it runs.
    from std_srvs.srv import Trigger

    from hw_drivers.executor import ESTOP_LATCHED
    from hw_drivers.jtc_model import check_trajectory

    bridge, probe, publisher, received, executor, _measured = graph
    publisher.publish(make_chunk(bridge.get_clock().now().nanoseconds, horizon=30))
    assert spin_until(probe, lambda: len(received["trajectory"]) == 1, 5.0, executor)
    running = _as_data(received["trajectory"][0])
    assert check_trajectory(running, FR3) is None
    bridge._measured = None  # the joint states stopped coming
    answer = _call(probe, executor, Trigger, "trajectory_bridge/estop", Trigger.Request())
    assert answer.success and answer.message == ESTOP_LATCHED
    assert spin_until(probe, lambda: len(received["trajectory"]) == 2, 5.0, executor)
    stop = _as_data(received["trajectory"][1])
    assert check_trajectory(stop, FR3) is None, stop
    assert stop.joint_names == tuple(FR3)
    [point] = stop.points
    assert list(point.velocities) == [0.0] * 7
    # From the path the controller runs, the deceleration included: within the path's bounds
    # (the first segment from the arm at rest to a first point already moving dips back
    # first: jtc_model, a start without velocities is at rest) plus the distance v T / 2 a
    # stop at the path's fastest speed covers.
    from hw_drivers.jtc_model import bounds

    lowest, highest, fastest = bounds(running, np.asarray(HOME[:7]), np.zeros(7))
    reach = fastest.max(axis=0) * point.time_from_start / 2.0
    for j in range(7):
        low, high = lowest[:, j].min() - reach[j], highest[:, j].max() + reach[j]
        assert low - 1e-9 <= point.positions[j] <= high + 1e-9, (j, point.positions)


def test_estop_stops_from_where_the_arm_is_now_not_where_its_last_joint_state_was(graph):
    # Joint states count for max_state_age (5 s in this fixture, 0.5 s by default): planned
    # from a pose the arm has left, the stop pulled a moving arm back to it.
    from std_srvs.srv import Trigger

    bridge, probe, _publisher, received, executor, _measured = graph
    # No joint state may overwrite the one set below (the fixture's may still be queued).
    bridge.destroy_subscription(bridge._joint_sub)
    bridge._joint_sub = None
    velocity = np.full(7, 0.5)
    age = 0.3
    now = bridge.get_clock().now().nanoseconds * 1e-9
    bridge._measured = np.array(HOME[:7])
    bridge._measured_at = now - age
    bridge._velocity = velocity
    bridge._recent_velocities = deque([(now - age, velocity)])  # the stop plans with these
    answer = _call(probe, executor, Trigger, "trajectory_bridge/estop", Trigger.Request())
    assert answer.success
    assert spin_until(probe, lambda: bool(received["trajectory"]), 5.0, executor)
    [point] = _as_data(received["trajectory"][-1]).points
    moved = np.asarray(point.positions) - np.array(HOME[:7])
    # Ahead by at least what the arm covered since (age x 0.5 rad/s), then the stop's half.
    assert np.all(moved >= velocity * age - 1e-6), moved
    assert np.all(moved <= velocity * (age + 0.2) + velocity * point.time_from_start / 2), moved
    # A 0.3 s old joint state: the error budget alone would make this a 1.5 s stop; it adds at
    # most max_stop_extension to the 0.1 s the limit (10 rad/s^2) needs at 0.5 rad/s.
    extension = bridge.params.max_stop_extension
    assert extension == 0.25
    assert 0.1 < point.time_from_start <= 0.1 + extension + 1e-9, point.time_from_start


def test_estop_with_neither_a_measured_pose_nor_a_running_trajectory_sends_nothing(graph):
    from std_srvs.srv import Trigger

    bridge, probe, _publisher, received, executor, _measured = graph
    bridge._measured = None
    answer = _call(probe, executor, Trigger, "trajectory_bridge/estop", Trigger.Request())
    assert answer.success
    # An empty trajectory would be refused by the controller; nothing of ours is running.
    spin_until(probe, lambda: bool(received["trajectory"]), 0.5, executor)
    assert received["trajectory"] == []
    assert bridge._control.estopped


def test_hold_stops_forwarding_until_released_and_diagnostics_name_it_as_a_driver(graph):
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from std_srvs.srv import SetBool, Trigger

    from hw_drivers.executor import HOLD_RELEASED, HOLDING, REJECT_HOLD

    bridge, probe, publisher, received, executor, measured = graph
    diagnostics: list = []
    probe.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
    answer = _call(probe, executor, SetBool, "trajectory_bridge/hold", SetBool.Request(data=True))
    assert answer.success and answer.message == HOLDING
    assert spin_until(probe, lambda: len(received["trajectory"]) == 1, 5.0, executor)  # the stop
    publisher.publish(make_chunk(bridge.get_clock().now().nanoseconds))
    assert spin_until(probe, lambda: bridge.rejected == 1, 5.0, executor)
    assert bridge.last_rejection == REJECT_HOLD and len(received["trajectory"]) == 1

    answer = _call(probe, executor, SetBool, "trajectory_bridge/hold", SetBool.Request(data=False))
    assert answer.success and answer.message == HOLD_RELEASED
    measured()
    publisher.publish(make_chunk(bridge.get_clock().now().nanoseconds))
    assert spin_until(probe, lambda: bridge.accepted == 1, 5.0, executor)

    # An e-stop is an ERROR under the name ~/run_task watches ("<node>: driver").
    assert _call(probe, executor, Trigger, "trajectory_bridge/estop", Trigger.Request()).success

    def error_status():
        return [
            s for a in diagnostics for s in a.status
            if s.name == "/trajectory_bridge: driver" and s.level == DiagnosticStatus.ERROR
        ]

    assert spin_until(probe, lambda: bool(error_status()), 5.0, executor)
    # Why it latched, as the driver's status says it, until ~/reset.
    assert error_status()[0].message == "e-stop latched: operator e-stop via ~/estop; call ~/reset"
    values = {kv.key: kv.value for kv in error_status()[0].values}
    assert values["estop_reason"] == "operator e-stop via ~/estop"
    measured()
    assert _call(probe, executor, Trigger, "trajectory_bridge/reset", Trigger.Request()).success
    seen = len(diagnostics)

    def cleared():
        return [
            s for a in diagnostics[seen:] for s in a.status
            if s.name == "/trajectory_bridge: driver" and s.level != DiagnosticStatus.ERROR
        ]

    assert spin_until(probe, lambda: bool(cleared()), 5.0, executor)
    assert {kv.key: kv.value for kv in cleared()[0].values}["estop_reason"] == ""


def test_lifecycle_set_deactivate_stops_our_trajectory_and_an_inactive_bridge_says_so(graph):
    """Through lifecycle_msgs ChangeState, as ``ros2 lifecycle set`` sends it. Before: the
    controller played the last chunk on after deactivate, a chunk sent meanwhile got no
    verdict, and ~/hold false and ~/reset answered that chunks were followed."""
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState
    from std_srvs.srv import SetBool, Trigger

    from hw_drivers.control_loop import REJECT_STOPPED
    from hw_drivers.executor import HOLDING, REJECT_HOLD
    from molmoact2_common.chunk_execution import ChunkExecution

    bridge, probe, publisher, received, executor, measured = graph
    reports = _execution_reports(probe)

    def transition(id_: int) -> None:
        request = ChangeState.Request()
        request.transition.id = id_
        name = "trajectory_bridge/change_state"
        assert _call(probe, executor, ChangeState, name, request).success

    def verdict(sequence: int) -> ChunkExecution:
        assert spin_until(
            probe, lambda: reports and reports[-1].last is not None
            and reports[-1].last.sequence == sequence, 5.0, executor,
        ), f"no verdict on chunk {sequence}"
        return reports[-1]

    publisher.publish(make_chunk(bridge.get_clock().now().nanoseconds, horizon=60))  # 4 s
    assert spin_until(probe, lambda: len(received["trajectory"]) == 1, 5.0, executor)
    transition(Transition.TRANSITION_DEACTIVATE)
    # Our trajectory is replaced by a stop (at rest here: at the measured pose).
    assert spin_until(probe, lambda: len(received["trajectory"]) == 2, 5.0, executor)
    [stop] = received["trajectory"][1].points
    assert list(stop.velocities) == [0.0] * 7
    assert list(stop.positions) == pytest.approx(HOME[:7])

    chunk = make_chunk(bridge.get_clock().now().nanoseconds)
    chunk.sequence = 8
    publisher.publish(chunk)
    assert verdict(8).last_reject_reason == REJECT_STOPPED
    answer = _call(probe, executor, SetBool, "trajectory_bridge/hold", SetBool.Request(data=True))
    assert answer.success and answer.message == HOLDING
    answer = _call(probe, executor, SetBool, "trajectory_bridge/hold", SetBool.Request(data=False))
    assert answer.success and "following" not in answer.message and "inactive" in answer.message
    answer = _call(probe, executor, SetBool, "trajectory_bridge/hold", SetBool.Request(data=True))
    measured()
    answer = _call(probe, executor, Trigger, "trajectory_bridge/reset", Trigger.Request())
    assert answer.success and "ramps in" not in answer.message, answer.message
    answer = _call(probe, executor, SetBool, "trajectory_bridge/hold", SetBool.Request(data=True))

    # The hold set while inactive is in force after activation.
    transition(Transition.TRANSITION_ACTIVATE)
    measured()
    chunk = make_chunk(bridge.get_clock().now().nanoseconds)
    chunk.sequence = 9
    publisher.publish(chunk)
    assert verdict(9).last_reject_reason == REJECT_HOLD
    _call(probe, executor, SetBool, "trajectory_bridge/hold", SetBool.Request(data=False))
    measured()
    chunk = make_chunk(bridge.get_clock().now().nanoseconds)
    chunk.sequence = 10
    publisher.publish(chunk)
    assert verdict(10).last_accepted
