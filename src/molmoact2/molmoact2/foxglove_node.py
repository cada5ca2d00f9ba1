"""Live web view without RViz (``foxglove:=true``): the graph's topics over Foxglove WebSocket.

A user on the pip path has no RViz; Foxglove (app or browser) connects to this node's
WebSocket server (``foxglove.websocket.v1``, served by the ``foxglove-sdk`` package) and shows
the cameras, depth image and markers, predicted chunk, joint states and status with the layout
in ``config/molmoact2.foxglove.json``.

Messages travel exactly as they arrived on the wire: each topic is subscribed raw (CDR bytes)
and forwarded on a channel with ``cdr`` encoding and the ``ros2msg`` schema text the recorder
writes to MCAP, so Foxglove decodes every ROS type itself and nothing is deserialized here.
Topics are picked up as soon as they appear in the graph, with a QoS that matches their
publishers (see ``topic_tap``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from molmoact2.topic_tap import TopicTap
from molmoact2_common.ros_params import field_problems


@dataclass(frozen=True)
class FoxgloveParams:
    """Parameters of the Foxglove bridge node (config: the `foxglove` section)."""

    host: str = field(
        default="127.0.0.1",
        metadata={
            "description": "address the WebSocket server binds to; 0.0.0.0 serves other machines"
        },
    )
    port: int = field(default=8765, metadata={"description": "WebSocket port (0: any free port)"})
    topics: tuple[str, ...] = field(
        default=(), metadata={"description": "topics to serve, relative to the namespace"}
    )
    discovery_period: float = field(
        default=0.5, metadata={"description": "how often to look for served topics [s]"}
    )

    def validate(self) -> list[str]:
        problems = field_problems(self)  # NaN passes `x <= 0` checks; topic names
        if not self.topics:
            problems.append("topics is empty: nothing to serve")
        if not 0 <= self.port <= 65535:
            problems.append(f"port {self.port} is not in 0..65535")
        if self.discovery_period <= 0:
            problems.append("discovery_period must be positive")
        return problems


def main(args: list[str] | None = None) -> int:
    from rclpy.clock import Clock, ClockType
    from rclpy.node import Node

    from molmoact2_common.ros_params import declare_dataclass_params, refuse_param_changes
    from molmoact2_common.ros_runtime import run_node

    class FoxgloveNode(Node):
        def __init__(self) -> None:
            super().__init__("foxglove")
            import foxglove

            self.params = declare_dataclass_params(self, FoxgloveParams)
            refuse_param_changes(self, FoxgloveParams)
            problems = self.params.validate()
            if problems:
                raise ValueError("; ".join(problems))
            self._foxglove = foxglove
            try:
                self.server = foxglove.start_server(
                    name="molmoact2", host=self.params.host, port=self.params.port
                )
            except RuntimeError as err:  # FoxgloveError: a host that does not resolve, port in use
                raise ValueError(
                    f"cannot serve on {self.params.host}:{self.params.port}: {err}"
                ) from err
            self.channels: dict[str, Any] = {}
            self.tap = TopicTap(self, self.params.topics, self._on_topic, self._on_message)
            # Discovery on wall time: on the node's clock, with use_sim_time and no /clock yet
            # (or a paused simulator), no topic was ever served.
            steady = Clock(clock_type=ClockType.STEADY_TIME)
            self.create_timer(self.params.discovery_period, self.tap.discover, clock=steady)
            self.get_logger().info(
                f"Foxglove WebSocket on ws://{self.params.host}:{self.server.port} "
                f"({len(self.params.topics)} topics); open it in Foxglove with "
                "config/molmoact2.foxglove.json"
            )

        def _on_topic(self, topic: str, type_name: str, definition: str) -> None:
            fg = self._foxglove
            self.channels[topic] = fg.Channel(
                topic,
                schema=fg.Schema(name=type_name, encoding="ros2msg", data=definition.encode()),
                message_encoding="cdr",
            )
            self.get_logger().info(f"serving {topic} ({type_name})")

        def _on_message(self, topic: str, data: bytes, receive_ns: int) -> None:
            self.channels[topic].log(data, log_time=receive_ns)

    def stop(node: Any) -> None:
        node.server.stop()

    return run_node(FoxgloveNode, args, on_exit=stop)


if __name__ == "__main__":
    sys.exit(main())
