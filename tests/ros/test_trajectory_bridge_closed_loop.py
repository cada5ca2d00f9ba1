"""The trajectory bridge in a closed loop with an emulated joint_trajectory_controller and arm.

A stand-in policy publishes chunks of a smooth motion (a sine per joint, stamped at capture
time); the bridge turns them into trajectories for ``tests/ros/jtc_emulator_node.py`` (the
controller's refusals and reference from ``hw_drivers.jtc_model``, an arm lagging behind it),
whose joint states the bridge reads back. Over the whole run: the controller refuses nothing
the bridge sends, and the reference and the arm stay within the joint limits and the velocity
limit. The arm tracks the chunks; an e-stop while moving brings the reference to rest within
the stop time the acceleration limit and the bridge's error budget allow, the stop's own
acceleration within the limit (up to what a start beyond that budget adds), and no later chunk
moves it; after ``~/reset`` the chunks ramp in. The second test stops the joint states first:
the bridge stops the arm from the controller's reference.

Times are ROS times of the nodes (one process, one clock); waits are ``spin_until`` with wide
margins, so a loaded machine only makes the test slower.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from tests.rostest_util import call_service, spin_until

pytestmark = pytest.mark.ros
logger = logging.getLogger(__name__)

ARM = [f"panda_joint{i}" for i in range(1, 8)]
NAMES = [*ARM, "panda_gripper"]
FR3 = [f"fr3_joint{i}" for i in range(1, 8)]
LOWER = np.array([-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973, 0.0])
UPPER = np.array([2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973, 1.0])
HOME = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785, 0.5])
VMAX = 1.0
AMAX = 2.0
# The policy's motion: HOME + A sin(2 pi F t + phase_j) on the arm joints; at most
# 2 pi F A = 0.28 rad/s and (2 pi F)^2 A = 0.53 rad/s^2, well within the limits.
AMPLITUDE = 0.15
FREQUENCY = 0.3
PHASES = 0.7 * np.arange(7)
PEAK_SPEED = 2 * math.pi * FREQUENCY * AMPLITUDE
STEP = 1 / 15
HORIZON = 30  # 2 s of trajectory: still running when the joint states stop below
LATENCY = 0.05  # the stand-in's "inference": chunks are stamped this long before they leave
RAMP_IN = 1.5
TOPIC = "closed_loop"
SLACK = 1e-6
STALE_STATE = 0.05  # [s] a joint state this old (5 updates) is one the arm has left


def target(t: np.ndarray | float, t0: float) -> np.ndarray:
    """The policy's arm targets at ROS time(s) ``t`` (rows: times)."""
    t = np.atleast_1d(np.asarray(t, dtype=float))[:, None]
    arm = HOME[:7] + AMPLITUDE * np.sin(2 * math.pi * FREQUENCY * (t - t0) + PHASES)
    return arm


@pytest.fixture
def loop(request, monkeypatch):
    """The bridge, the emulated controller and arm, and the stand-in policy;
    ``parametrize("loop", [{emulator option: value}], indirect=True)`` sets the emulator's
    options (``interpolate_from_desired_state``)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from hw_drivers.trajectory_bridge_node import TrajectoryBridgeNode
    from molmoact2_msgs.msg import ActionChunk
    from tests.ros.jtc_emulator_node import JtcEmulatorNode

    context = rclpy.Context()
    rclpy.init(context=context)
    overrides = [
        Parameter("joint_names", Parameter.Type.STRING_ARRAY, NAMES),
        Parameter("position_lower", Parameter.Type.DOUBLE_ARRAY, LOWER.tolist()),
        Parameter("position_upper", Parameter.Type.DOUBLE_ARRAY, UPPER.tolist()),
        Parameter("max_velocity", Parameter.Type.DOUBLE_ARRAY, [VMAX] * 8),
        Parameter("max_acceleration", Parameter.Type.DOUBLE_ARRAY, [AMAX] * 8),
        Parameter("chunk_topic", Parameter.Type.STRING, f"{TOPIC}/action_chunk"),
        Parameter("trajectory_topic", Parameter.Type.STRING, f"{TOPIC}/joint_trajectory"),
        Parameter("joint_state_topic", Parameter.Type.STRING, f"{TOPIC}/joint_states"),
        Parameter("controller_joint_names", Parameter.Type.STRING_ARRAY, FR3),
        Parameter("ramp_in_time", Parameter.Type.DOUBLE, RAMP_IN),
        # The whole error budget, uncut: what this test checks is that it keeps the stop
        # within the limit (the default cuts it at 0.25 s more; test_bridge_control).
        Parameter("max_stop_extension", Parameter.Type.DOUBLE, 10.0),
    ]
    bridge = TrajectoryBridgeNode(context=context, parameter_overrides=overrides)
    # Every reason the bridge refuses a chunk for (it keeps only the last), with the age of the
    # joint state it judged the chunk from.
    bridge.refusal_log = []
    reject = bridge._reject

    def log_reject(reason, msg):
        age = bridge.get_clock().now().nanoseconds * 1e-9 - bridge._measured_at
        bridge.refusal_log.append((reason, age))
        reject(reason, msg)

    bridge._reject = log_reject
    # Every stop the bridge sends: when, from what joint state age, start and velocity, with
    # which error budget (from the joint state, or from the controller's reference).
    import hw_drivers.bridge_control as control_module
    import hw_drivers.trajectory_bridge_node as bridge_module

    bridge.stop_log = []
    planned = {}
    plan_stop = control_module.stop_trajectory

    def log_plan(*args):
        planned["budget"] = args[7]
        return plan_stop(*args)

    for module in (bridge_module, control_module):
        monkeypatch.setattr(module, "stop_trajectory", log_plan)
    send_stop = bridge._send_stop

    def log_stop(stop, now, start, velocity):
        bridge.stop_log.append(
            {
                "sent_at": now,
                "age": now - bridge._measured_at,
                "start": np.array(start),
                "velocity": np.zeros(len(start)) if velocity is None else np.array(velocity),
                "budget": planned.pop("budget"),
            }
        )
        send_stop(stop, now, start, velocity)

    bridge._send_stop = log_stop
    jtc = JtcEmulatorNode(
        context=context,
        joint_names=FR3,
        initial_positions=HOME[:7],
        trajectory_topic=f"{TOPIC}/joint_trajectory",
        joint_state_topic=f"{TOPIC}/joint_states",
        rate=100.0,
        lag=0.02,
        **getattr(request, "param", {}),
    )
    policy = rclpy.create_node("closed_loop_policy", context=context)
    chunks = policy.create_publisher(ActionChunk, f"{TOPIC}/action_chunk", 10)
    state = {"on": False, "t0": 0.0, "sequence": 0}

    def now() -> float:
        return policy.get_clock().now().nanoseconds * 1e-9

    def publish_chunk() -> None:
        if not state["on"]:
            return
        capture = now() - LATENCY
        msg = ActionChunk()
        stamp_ns = round(capture * 1e9)
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
        msg.start_offset.nanosec = round(STEP * 1e9)
        msg.step_dt = STEP
        msg.joint_names = NAMES
        msg.horizon = HORIZON
        due = capture + STEP * (1 + np.arange(HORIZON))
        rows = np.hstack([target(due, state["t0"]), np.full((HORIZON, 1), HOME[7])])
        msg.positions = [float(v) for v in rows.ravel()]
        state["sequence"] += 1
        msg.sequence = state["sequence"]
        chunks.publish(msg)

    policy.create_timer(1 / 12, publish_chunk)  # ~12 Hz, as a policy's inference rate
    executor = SingleThreadedExecutor(context=context)
    for node in (bridge, jtc, policy):
        executor.add_node(node)
    assert bridge.trigger_configure().name == "SUCCESS"
    bridge.trigger_activate()
    assert spin_until(policy, lambda: chunks.get_subscription_count() > 0, 10.0, executor)
    assert spin_until(
        policy, lambda: jtc.received == 0 and bridge._measured is not None, 10.0, executor
    )

    def wait(seconds: float) -> None:
        """Let ``seconds`` of ROS time pass while everything spins (wall-time margin: 10x), and
        the controller run its updates up to then: after a stall of the test host, ``now()``
        is past ``until`` before the controller's timer has fired again, and windows ending
        at ``now()`` would hold none of its updates."""
        until = now() + seconds
        assert spin_until(
            policy,
            lambda: now() >= until and bool(jtc.samples) and jtc.samples[-1].time >= until,
            10 * seconds + 10.0,
            executor,
        )

    def start_policy() -> None:
        state["t0"], state["on"] = now(), True

    yield bridge, jtc, policy, executor, now, wait, start_policy, state
    executor.shutdown()
    for node in (bridge, jtc, policy):
        node.destroy_node()
    rclpy.shutdown(context=context)


def _call(probe, executor, srv_type, name, request):
    return call_service(probe, executor, srv_type, name, request, timeout=10.0)


def _series(samples, start: float = -math.inf, end: float = math.inf):
    """(times, reference positions, reference velocities, arm positions, arm velocities)."""
    chosen = [s for s in samples if start <= s.time <= end]
    return (
        np.array([s.time for s in chosen]),
        np.array([s.positions for s in chosen]),
        np.array([s.velocities for s in chosen]),
        np.array([s.measured_positions for s in chosen]),
        np.array([s.measured_velocities for s in chosen]),
    )


def _assert_no_refusal(jtc) -> None:
    assert jtc.refusals == [], f"the controller refused what the bridge sent: {jtc.refusals}"


def _assert_within_limits(jtc) -> None:
    """The reference and the arm: inside the joint limits and the velocity limit, always."""
    times, ref, ref_v, arm, arm_v = _series(jtc.samples)
    lower, upper = LOWER[:7] - SLACK, UPPER[:7] + SLACK
    for name, values in (("reference", ref), ("arm", arm)):
        outside = np.argwhere((values < lower) | (values > upper))
        assert outside.size == 0, (name, times[outside[0][0]], values[outside[0][0]])
    for name, values in (("reference", ref_v), ("arm", arm_v)):
        fastest = np.abs(values).max(axis=0)
        assert np.all(fastest <= VMAX * (1 + SLACK)), (name, fastest)


def _assert_bridge_refused_only_for_time(bridge) -> None:
    """The bridge forwards most chunks. The e-stop refuses chunks; a chunk judged from an old
    joint state (the joint states stopped) or delivered late (a loaded test machine: its first
    point is due soon and ahead of the lagging arm, and the controller starts from the arm) may
    be refused for the velocity or acceleration its first segment needs: safe, the running
    trajectory plays on. Never a position limit (the chunks stay well inside them), never a
    malformed trajectory, and not most chunks."""
    kinds = ("start_pose", "estop", "velocity_limit", "acceleration_limit")
    others = [(reason, age) for reason, age in bridge.refusal_log if not reason.startswith(kinds)]
    assert others == [], others
    fresh = [
        (reason, age)
        for reason, age in bridge.refusal_log
        if not reason.startswith("estop") and age < STALE_STATE
    ]
    assert len(fresh) * 3 <= bridge.accepted, (bridge.accepted, fresh)


def _assert_tracks(jtc, start: float, end: float, t0: float, bound: float = 0.08) -> None:
    times, ref, _ref_v, arm, _arm_v = _series(jtc.samples, start, end)
    assert times.size > 10, "no control updates in the window"
    want = target(times, t0)
    for name, values in (("reference", ref), ("arm", arm)):
        error = np.abs(values - want).max()
        assert error < bound, (name, error)
    # The arm lags the reference (a real arm does): not the same numbers.
    assert np.abs(arm - ref).max() > 1e-4


def _stop_indices(jtc, bridge) -> list[int]:
    """Where in what the controller took the bridge's last trajectory is, when it is a stop."""
    sent = bridge._controller_trajectory
    if sent is None or len(sent.trajectory.points) != 1:
        return []
    target_pose = np.asarray(sent.trajectory.points[0].positions, dtype=float)
    return [
        k
        for k, (_at, t) in enumerate(jtc.emulator.taken)
        if len(t.points) == 1 and np.array_equal(np.asarray(t.points[0].positions), target_pose)
    ]


def _stop_taken(jtc, bridge) -> bool:
    return bool(_stop_indices(jtc, bridge))


def _assert_stops(jtc, bridge) -> tuple[float, float]:
    """The e-stop's trajectory (the bridge's last): one point at rest, the last the controller
    took, due within the time the acceleration limit needs from the fastest the arm moved in
    the half second before; the reference is at rest from then on. Returns (when taken, when
    at rest)."""
    from hw_drivers.bridge_control import stop_duration

    assert len(bridge._controller_trajectory.trajectory.points) == 1, "the bridge's last is no stop"
    took = _stop_indices(jtc, bridge)
    assert took, ("the controller never took the stop", jtc.refusals)
    later = len(jtc.emulator.taken) - 1 - took[-1]
    assert later == 0, f"the controller took {later} trajectories after the stop"
    taken_at, stop = jtc.emulator.taken[took[-1]]
    _t, _ref, _ref_v, _arm, arm_v = _series(jtc.samples, taken_at - 0.5, taken_at)
    bound_speed = np.abs(arm_v).max()
    [point] = stop.points
    assert np.all(np.asarray(point.velocities) == 0.0)
    duration = point.time_from_start
    # No longer than the budget for the joint state's age needs at that speed (the bridge
    # plans from its last joint state's velocity, which the arm's recent speed bounds).
    budget = bridge.stop_log[-1]["budget"]
    errors = budget.start_error(np.array([bound_speed]), np.array([AMAX]))
    longest = stop_duration(np.array([bound_speed]), np.array([AMAX]), *errors, 0.05)
    assert duration <= longest + SLACK, (duration, longest, bound_speed)
    rest = taken_at + duration
    # From where the arm is, on its way: never back to an old pose (a jump), at most the
    # stopping distance on (plus the tracking lag and the joint state's age).
    _t, _ref, _ref_v, arm_then, _v = _series(jtc.samples, taken_at - 0.05, taken_at)
    travel = np.abs(np.asarray(point.positions, dtype=float) - arm_then[-1]).max()
    assert travel <= bound_speed * duration / 2 + 0.02, (travel, bound_speed, duration)
    times, ref, ref_v, _arm, _arm_v = _series(jtc.samples, taken_at)
    # 1 ms on: times near 1.8e9 s are resolved to 0.24 us, enough to land just before the end.
    after = times >= rest + 1e-3
    assert after.sum() > 10, "no control updates after the stop"
    assert np.all(ref_v[after] == 0.0)
    assert np.all(ref[after] == np.asarray(point.positions, dtype=float))
    _assert_stop_within_the_acceleration_limit(jtc, bridge, taken_at, rest)
    return taken_at, rest


def _stop_accelerations(jtc, taken_at: float, rest: float):
    """(the reference's acceleration at the update that took the stop, its largest after it,
    the arm's largest from the take to rest) [rad/s^2]: finite differences of the velocities
    over the control updates (the cubic's acceleration is linear in time, so they are its
    midpoint values)."""
    times, _ref, ref_v, _arm, arm_v = _series(jtc.samples, taken_at - 0.05, rest + 0.05)
    k = int(np.searchsorted(times, taken_at))
    ref_a = np.diff(ref_v, axis=0) / np.diff(times)[:, None]
    arm_a = np.diff(arm_v, axis=0) / np.diff(times)[:, None]
    end = int(np.searchsorted(times, rest))
    return np.abs(ref_a[k - 1]).max(), np.abs(ref_a[k:end]).max(), np.abs(arm_a[k - 1 : end]).max()


def _assert_stop_within_the_acceleration_limit(jtc, bridge, taken_at: float, rest: float) -> None:
    """The acceleration the stop itself demands: the reference's from the update that took it
    on (with interpolate_from_desired_state also over the update before: the controller
    starts from its last command, already on the stop's cubic) is within max_acceleration, up
    to what the part of the controller's start mismatch beyond the bridge's budget adds
    (``6 e / T^2 + 4 w / T``, ``StopBudget``), computed here from the start the controller
    took. Not the stop's: by default the controller restarts from the measured state, so its
    reference jumps to the arm's velocity at the update that takes any trajectory (logged)."""
    jump, own, arm = _stop_accelerations(jtc, taken_at, rest)
    log = bridge.stop_log[-1]
    running = jtc.emulator._running
    desired = jtc.emulator.config.interpolate_from_desired_state
    if desired:
        own = max(own, jump)
    budget = log["budget"]  # the one the bridge planned the stop with
    position_budget, velocity_budget = budget.start_error(log["velocity"], AMAX)
    # At least the stated budget (docs/ros2_control_bridge.md): the joint state's age (none
    # from the reference, without a recent one) and the delay until the controller takes it.
    delay = bridge.params.stop_start_delay
    tau = (log["age"] if log["age"] <= bridge.params.max_state_age else 0.0) + delay
    stated = (np.abs(log["velocity"]) * delay / 2 + AMAX * tau**2 / 2, AMAX * tau)
    assert np.all(position_budget >= stated[0] - 1e-12), (position_budget, stated)
    assert np.all(velocity_budget >= stated[1] - 1e-12), (velocity_budget, stated)
    duration = running.trajectory.points[0].time_from_start  # from the controller's start
    e = np.abs(running.start_positions - log["start"])
    w = np.abs(running.start_velocities - log["velocity"])
    beyond = (
        6 * np.maximum(0.0, e - position_budget) / duration**2
        + 4 * np.maximum(0.0, w - velocity_budget) / duration
    ).max()
    figures = (
        f"stop T {duration:.3f} s, taken {taken_at - log['sent_at']:.4f} s after it was sent "
        f"from a {log['age']:.4f} s old joint state, planned speed "
        f"{np.abs(log['velocity']).max():.3f} rad/s; start mismatch {e.max():.4f} rad "
        f"(budget {position_budget.max():.4f}), {w.max():.3f} rad/s (budget "
        f"{velocity_budget.max():.3f}); reference acceleration: {own:.2f} rad/s^2 (the stop), "
        f"{jump:.2f} at the replacement; arm {arm:.2f}; allowed {AMAX} + {beyond:.2f}"
    )
    logger.info("closed-loop stop: %s", figures)
    assert own <= AMAX * (1 + 1e-6) + beyond, figures


def _reset_and_ramp_in(bridge, jtc, policy, executor, now, wait, state) -> None:
    from std_srvs.srv import Trigger

    ramped, taken = bridge.ramped, len(jtc.emulator.taken)
    answer = _call(policy, executor, Trigger, "trajectory_bridge/reset", Trigger.Request())
    assert answer.success, answer.message
    assert spin_until(policy, lambda: bridge.ramped > ramped, 10.0, executor), bridge.last_rejection
    assert spin_until(policy, lambda: len(jtc.emulator.taken) > taken, 10.0, executor)
    first_at, first = jtc.emulator.taken[taken]
    # From rest: the blend leaves the stopped pose at rest and meets the chunk on its schedule.
    assert first.points[-1].time_from_start >= RAMP_IN - SLACK
    wait(RAMP_IN + 1.5)
    _assert_no_refusal(jtc)
    _assert_within_limits(jtc)
    _assert_bridge_refused_only_for_time(bridge)
    _assert_tracks(jtc, first_at + RAMP_IN + 0.5, now(), state["t0"])
    _times, _ref, ref_v, _arm, _arm_v = _series(jtc.samples, first_at, first_at + 0.1)
    assert np.abs(ref_v).max() < 0.3 * VMAX, "the ramp-in did not start from rest"


# The controller's default starts each trajectory from the measured state; arms whose servos
# lag set interpolate_from_desired_state (open_loop_control before) to start from the command.
@pytest.mark.parametrize(
    "loop",
    [{}, {"interpolate_from_desired_state": True}],
    ids=["measured", "desired"],
    indirect=True,
)
def test_closed_loop_tracks_estops_at_the_limit_and_ramps_in_after_reset(loop):
    from std_srvs.srv import Trigger

    from hw_drivers.executor import ESTOP_LATCHED, REJECT_ESTOP

    bridge, jtc, policy, executor, now, wait, start_policy, state = loop
    start_policy()
    assert spin_until(policy, lambda: jtc.emulator.taken, 10.0, executor), bridge.last_rejection
    first_at = jtc.emulator.taken[0][0]
    assert bridge.ramped == 1  # the arm stood at HOME, the motion starts elsewhere
    wait(RAMP_IN + 2.5)
    _assert_no_refusal(jtc)
    _assert_within_limits(jtc)
    _assert_bridge_refused_only_for_time(bridge)
    _assert_tracks(jtc, first_at + RAMP_IN + 0.5, now(), state["t0"])

    # E-stop while moving; the policy keeps publishing.
    times, _ref, _ref_v, _arm, arm_v = _series(jtc.samples, now() - 0.3)
    moving = np.abs(arm_v).max()
    assert moving > 0.3 * PEAK_SPEED, (moving, times, arm_v, now(), jtc.emulator.running_until)
    answer = _call(policy, executor, Trigger, "trajectory_bridge/estop", Trigger.Request())
    assert answer.success and answer.message == ESTOP_LATCHED
    assert spin_until(policy, lambda: _stop_taken(jtc, bridge), 10.0, executor), (
        "the bridge sent no stop the controller took",
        jtc.refusals,
    )
    rejected = bridge.rejected
    wait(1.5)
    _assert_stops(jtc, bridge)  # no chunk after the stop reached the arm
    assert bridge.rejected > rejected and bridge.last_rejection == REJECT_ESTOP
    _assert_no_refusal(jtc)
    _assert_within_limits(jtc)

    _reset_and_ramp_in(bridge, jtc, policy, executor, now, wait, state)


def test_estop_after_the_joint_states_stop_stops_from_the_controllers_reference(loop):
    from std_srvs.srv import Trigger

    bridge, jtc, policy, executor, now, wait, start_policy, state = loop
    start_policy()
    assert spin_until(policy, lambda: jtc.emulator.taken, 10.0, executor), bridge.last_rejection
    first_at = jtc.emulator.taken[0][0]
    wait(RAMP_IN + 1.5)
    _assert_tracks(jtc, first_at + RAMP_IN + 0.5, now(), state["t0"])

    # The joint-state topic goes silent; the arm and its controller run on.
    jtc.publish_states = False
    assert spin_until(policy, lambda: bridge._measured_pose(now()) is None, 10.0, executor), (
        "the bridge still counts the joint states as recent"
    )
    running_until = jtc.emulator.running_until
    assert running_until is not None and running_until > now() + 0.3, "nothing left to stop"
    answer = _call(policy, executor, Trigger, "trajectory_bridge/estop", Trigger.Request())
    assert answer.success
    assert spin_until(policy, lambda: _stop_taken(jtc, bridge), 10.0, executor), (
        "the bridge sent no stop the controller took",
        jtc.refusals,
    )
    wait(1.0)
    _assert_no_refusal(jtc)
    _taken_at, rest = _assert_stops(jtc, bridge)
    assert rest < running_until, "the arm only stopped where the running trajectory ended"
    _assert_within_limits(jtc)

    _assert_bridge_refused_only_for_time(bridge)
    jtc.publish_states = True
    assert spin_until(policy, lambda: bridge._measured_pose(now()) is not None, 10.0, executor)
    _reset_and_ramp_in(bridge, jtc, policy, executor, now, wait, state)
