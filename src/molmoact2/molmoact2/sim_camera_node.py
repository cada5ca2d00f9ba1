"""Synthetic cameras for the sim graph: images of ``SimWorld`` at the measured joint state.

Subscribes ``joint_states`` (the sim driver's measurement) and publishes one
``sensor_msgs/Image`` (rgb8) or ``CompressedImage`` (jpeg) per configured camera at its
``camera_rates`` entry (the robot's one statement of each camera's rate, which the driver's
preflight also expects), with sensor-data QoS and the capture time as stamp, like a real camera
driver would. Cameras of equal rate share a timer, so their frames carry one stamp.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np

from molmoact2.sim_world import SimWorld
from molmoact2_common.ros_params import field_problems

# Frame rates a synthetic camera can keep: one frame an hour to 1 kHz (its timer period must
# be a finite number of nanoseconds, and a faster timer only floods the graph).
MIN_RATE_HZ = 1.0 / 3600.0
MAX_RATE_HZ = 1000.0


@dataclass(frozen=True)
class SimCameraParams:
    """Parameters of the sim camera node (config: `/**` keys and the `sim_cameras` section)."""

    joint_names: tuple[str, ...] = field(
        default=(), metadata={"description": "joints in the order of the rendered state"}
    )
    camera_names: tuple[str, ...] = field(default=(), metadata={"description": "cameras"})
    camera_topics: tuple[str, ...] = field(
        default=(), metadata={"description": "image topic per camera"}
    )
    camera_transports: tuple[str, ...] = field(
        default=(), metadata={"description": "raw (Image) or compressed (CompressedImage, jpeg)"}
    )
    camera_frames: tuple[str, ...] = field(
        default=(), metadata={"description": "optical frame id per camera"}
    )
    camera_rates: tuple[float, ...] = field(
        default=(), metadata={"description": "frames per second per camera (from the /** section)"}
    )
    width: int = field(default=640, metadata={"description": "image width [px]"})
    height: int = field(default=480, metadata={"description": "image height [px]"})
    rate: float = field(
        default=0.0,
        metadata={
            "description": "0: each camera at its camera_rates entry; > 0: every camera at this "
            "rate [Hz] (tests, benches)"
        },
    )
    joint_states_topic: str = field(
        default="joint_states", metadata={"description": "measured joint states to render"}
    )
    robot: str = field(default="", metadata={"description": "robot name (informational)"})
    embodiment: str = field(default="", metadata={"description": "unused here"})

    def rates(self) -> tuple[float, ...]:
        """The rate each camera publishes at [Hz]."""
        return (self.rate,) * len(self.camera_names) if self.rate > 0 else self.camera_rates

    def validate(self) -> list[str]:
        problems = field_problems(self)  # NaN passes `x <= 0` checks; topic names
        if not (0 < self.width <= 8192 and 0 < self.height <= 8192):
            problems.append(
                f"width and height must be in 1..8192 px, got {self.width}x{self.height}"
            )
        n = len(self.camera_names)
        for key in ("camera_topics", "camera_frames"):
            if len(getattr(self, key)) != n:
                problems.append(f"{key} needs one entry per camera ({n})")
        if self.camera_transports and len(self.camera_transports) != n:
            problems.append(f"camera_transports needs one entry per camera ({n})")
        # Anything else went out as raw Image on a topic whose readers expect its transport.
        bad = [t for t in self.camera_transports if t not in ("raw", "compressed")]
        if bad:
            problems.append(f"camera_transports must be raw or compressed, got {bad}")
        if "" in self.camera_frames:
            # An image stamped "" cannot be placed by RViz or any tf2 listener.
            problems.append("camera_frames has an empty frame id")
        if not self.rate >= 0:
            problems.append("rate must be >= 0")
        elif self.rate > MAX_RATE_HZ:
            problems.append(f"rate must be at most {MAX_RATE_HZ:g} Hz, got {self.rate}")
        elif self.rate == 0 and (
            len(self.camera_rates) != n or not all(r > 0 for r in self.camera_rates)
        ):
            problems.append(f"camera_rates needs one rate > 0 per camera ({n})")
        elif self.rate == 0 and not all(
            MIN_RATE_HZ <= r <= MAX_RATE_HZ for r in self.camera_rates
        ):
            # 1 / 1e-320 Hz is an infinite timer period: rclpy raised mid-start.
            problems.append(
                f"camera_rates must lie in [{MIN_RATE_HZ:g}, {MAX_RATE_HZ:g}] Hz, got "
                f"{list(self.camera_rates)}"
            )
        if not self.joint_names:
            problems.append("joint_names is empty")
        return problems


def main(args: list[str] | None = None) -> int:
    import cv2
    from rclpy.node import Node
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage, Image, JointState

    from molmoact2_common.ros_params import declare_dataclass_params, refuse_param_changes
    from molmoact2_common.ros_runtime import run_node, stop_requested

    class SimCameraNode(Node):
        def __init__(self) -> None:
            super().__init__("sim_cameras")
            self.params = declare_dataclass_params(self, SimCameraParams)
            refuse_param_changes(self, SimCameraParams)
            problems = self.params.validate()
            if problems:
                raise ValueError("; ".join(problems))
            p = self.params
            self.world = SimWorld(p.joint_names, p.camera_names, p.width, p.height)
            self.positions = np.zeros(len(p.joint_names))
            self.have_state = False
            transports = p.camera_transports or ("raw",) * len(p.camera_names)
            groups: dict[float, list] = {}
            for name, topic, frame, transport, rate in zip(
                p.camera_names,
                p.camera_topics,
                p.camera_frames,
                transports,
                p.rates(),
                strict=True,
            ):
                msg_type = CompressedImage if transport == "compressed" else Image
                pub = self.create_publisher(msg_type, topic, qos_profile_sensor_data)
                groups.setdefault(float(rate), []).append((name, frame, transport, pub))
            self._index = {name: i for i, name in enumerate(p.joint_names)}
            self.create_subscription(
                JointState, p.joint_states_topic, self._on_joints, qos_profile_sensor_data
            )
            for rate, outputs in groups.items():
                self.create_timer(1.0 / rate, lambda outputs=outputs: self._publish(outputs))
            self.get_logger().info(
                "publishing "
                + ", ".join(
                    f"{n} at {r:g} Hz" for n, r in zip(p.camera_names, p.rates(), strict=True)
                )
                + f", {p.width}x{p.height}"
            )

        def _on_joints(self, msg: JointState) -> None:
            for name, position in zip(msg.name, msg.position, strict=False):
                index = self._index.get(name)
                if index is not None and np.isfinite(position):
                    self.positions[index] = position
            self.have_state = True

        def _publish(self, outputs: list) -> None:
            stamp = self.get_clock().now().to_msg()
            for name, frame, transport, pub in outputs:
                if stop_requested():
                    # The graph is stopping: its subscribers exit now, and a frame written
                    # to one that just exited can hold this callback in the middleware past
                    # the stop deadline (seen once in CI: 4 s, exit status 1).
                    return
                rgb = self.world.render(name, self.positions)
                if transport == "compressed":
                    ok, data = cv2.imencode(".jpg", rgb[:, :, ::-1])
                    if not ok:
                        continue
                    msg = CompressedImage(format="jpeg", data=data.tobytes())
                else:
                    msg = Image(
                        height=rgb.shape[0],
                        width=rgb.shape[1],
                        encoding="rgb8",
                        step=rgb.shape[1] * 3,
                        data=rgb.tobytes(),
                    )
                msg.header.stamp = stamp
                msg.header.frame_id = frame
                pub.publish(msg)

    return run_node(SimCameraNode, args)


if __name__ == "__main__":
    sys.exit(main())
