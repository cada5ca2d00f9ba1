"""The trajectory bridge's message path under the driver's chunk fuzz (one field broken at a
time: stamps, offsets, step_dt, names, horizons, rows, NaN/huge values, jumps): never an
exception in the callback, and every trajectory it sends passes joint_trajectory_controller's
validation and stays inside the position limits with point-to-point speeds inside the velocity
limits. Outside-in probe: 3000 examples, no finding; CI runs a bounded derandomized share.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from hw_drivers.jtc_model import bounds, check_trajectory
from tests.unit.test_driver_message_properties import build_msg, msgs
from tests.unit.test_executor_properties import AMAX, LOWER, NAMES, UPPER, VMAX

pytestmark = pytest.mark.ros


def test_fuzzed_chunks_never_raise_and_never_leave_the_limits():
    import rclpy
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter
    from sensor_msgs.msg import JointState

    from hw_drivers.trajectory_bridge_node import TrajectoryBridgeNode

    context = rclpy.Context()
    rclpy.init(context=context)
    overrides = [
        Parameter("joint_names", value=list(NAMES)),
        Parameter("position_lower", value=list(LOWER)),
        Parameter("position_upper", value=list(UPPER)),
        Parameter("max_velocity", value=list(VMAX)),
        Parameter("max_acceleration", value=list(AMAX)),
        Parameter("trajectory_topic", value="fuzz/joint_trajectory"),
        Parameter("chunk_rate", value=30.0),
    ]
    bridge = TrajectoryBridgeNode(context=context, parameter_overrides=overrides)
    sent: list = []
    bridge._publish = sent.append  # what would go to the controller
    pose = 0.5 * (LOWER + UPPER)
    try:
        assert bridge.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert bridge.trigger_activate() == TransitionCallbackReturn.SUCCESS

        @settings(
            max_examples=300,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(spec=msgs)
        def feed(spec) -> None:
            now = bridge.get_clock().now().nanoseconds * 1e-9
            bridge._on_joint_state(JointState(name=list(NAMES), position=list(pose)))
            bridge._on_chunk(build_msg(spec, now, pose))  # raises = test failure

        feed()
    finally:
        bridge.destroy_node()
        rclpy.shutdown(context=context)
    assert bridge.accepted > 20 and bridge.rejected > 20, (bridge.accepted, bridge.rejected)
    for out in sent:
        if out.trajectory is None:
            continue
        # joint_trajectory_controller's own checks: a refused trajectory would be dropped with
        # an error while the controller plays on what it runs.
        assert check_trajectory(out.trajectory, bridge._state_names) is None, out.trajectory
        # And between the points, as the controller's splines run it from the measured pose.
        lowest, highest, fastest = bounds(out.trajectory, pose, np.zeros_like(pose))
        assert np.all(lowest >= LOWER - 1e-9) and np.all(highest <= UPPER + 1e-9)
        assert np.all(fastest <= VMAX * (1 + 1e-6)), fastest.max(axis=0)
        seconds = np.array([p.time_from_start for p in out.trajectory.points])  # [s]
        points = np.array([p.positions for p in out.trajectory.points])
        assert np.all(np.isfinite(points))
        assert np.all(points >= LOWER - 1e-9) and np.all(points <= UPPER + 1e-9)
        dt = np.diff(seconds)
        assert np.all(dt > 0)
        speed = np.abs(np.diff(points, axis=0)) / dt[:, None]
        assert np.all(speed <= VMAX * (1 + 1e-6)), speed.max(axis=0)
