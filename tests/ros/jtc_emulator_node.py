"""A joint_trajectory_controller + arm for ROS tests: ``hw_drivers.emulators.jtc_emulator`` on a
node (tests only; the controller's logic is all in the pure emulator).

It subscribes the trajectory topic as the controller does (``rclcpp::SystemDefaultsQoS()``:
reliable, volatile), runs the emulator's update on a timer at the control rate on the node's
clock, and publishes the arm's measured ``sensor_msgs/JointState`` (name, position, velocity)
as joint_state_broadcaster does (reliable). Every update and every refusal is recorded for the
test to check.

A real controller never stalls; a test's executor on a loaded machine does. The updates run at
fixed times ``period`` apart: a late timer callback runs the ones it missed (and a message is
taken only by updates after its receipt), so a stall delays messages as a slow transport would
but never makes the reference or the arm jump.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_system_default
from sensor_msgs.msg import JointState
from trajectory_msgs.msg import JointTrajectory

from hw_drivers.emulators.jtc_emulator import JtcConfig, JtcEmulator, JtcSample
from hw_drivers.trajectory import JointTrajectoryData, TrajectoryPoint

logger = logging.getLogger(__name__)


def trajectory_from_msg(msg: JointTrajectory) -> JointTrajectoryData:
    """The message as data, field for field (empty velocities: None, as the controller reads)."""
    stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
    return JointTrajectoryData(
        tuple(msg.joint_names),
        tuple(
            TrajectoryPoint(
                positions=list(p.positions),
                velocities=list(p.velocities) or None,
                time_from_start=p.time_from_start.sec + p.time_from_start.nanosec * 1e-9,
            )
            for p in msg.points
        ),
        stamp,
    )


class JtcEmulatorNode(Node):
    def __init__(
        self,
        *,
        context,
        joint_names: Sequence[str],
        initial_positions: Sequence[float],
        trajectory_topic: str,
        joint_state_topic: str,
        rate: float = 100.0,
        lag: float = 0.02,
        interpolate_from_desired_state: bool = False,
        name: str = "jtc_emulator",
    ) -> None:
        super().__init__(name, context=context)
        self.emulator = JtcEmulator(
            JtcConfig(
                tuple(joint_names),
                interpolate_from_desired_state=interpolate_from_desired_state,
                lag=lag,
            ),
            list(initial_positions),
        )
        self.samples: list[JtcSample] = []
        self.received = 0
        self.publish_states = True  # False: the joint-state topic goes silent, the arm runs on
        self.create_subscription(
            JointTrajectory, trajectory_topic, self._on_trajectory, qos_profile_system_default
        )
        self._states = self.create_publisher(
            JointState,
            joint_state_topic,
            QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE),
        )
        self._period = 1.0 / rate
        self._next_update: float | None = None
        self.create_timer(self._period, self._tick)

    def now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    @property
    def refusals(self) -> list[tuple[float, str]]:
        return self.emulator.refusals

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        self.received += 1
        now = self.now()
        self._catch_up(now)  # updates due before the message arrived do not see it
        reason = self.emulator.receive(now, trajectory_from_msg(msg))
        if reason is not None:
            logger.error("trajectory refused: %s", reason)

    def _catch_up(self, now: float) -> JtcSample | None:
        """Run every update due by ``now``; the last one, or None when none was due."""
        if self._next_update is None:
            self._next_update = now
        sample = None
        while self._next_update <= now:
            sample = self.emulator.update(self._next_update)
            self.samples.append(sample)
            self._next_update += self._period
        return sample

    def _tick(self) -> None:
        sample = self._catch_up(self.now())
        if sample is None or not self.publish_states:
            return
        msg = JointState()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.name = list(self.emulator.config.joint_names)
        msg.position = [float(v) for v in sample.measured_positions]
        msg.velocity = [float(v) for v in sample.measured_velocities]
        self._states.publish(msg)
