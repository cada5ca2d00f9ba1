"""Records the graph's topics to one MCAP file (``record:=true``); flushed on shutdown.

Topics are subscribed as soon as they appear in the graph (their type is taken from the
graph, so any message type records), as raw CDR bytes: nothing is deserialized on the way
to disk. The QoS follows the publishers: reliable when every publisher is reliable (chunks,
status), best effort otherwise (cameras, joint states), so no publisher is left unmatched.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from molmoact2.mcap_io import McapRecorder


@dataclass(frozen=True)
class RecorderParams:
    """Parameters of the recorder node (config: the `recorder` section)."""

    output_dir: str = field(
        default="out/recordings", metadata={"description": "directory for the MCAP file"}
    )
    file_name: str = field(
        default="", metadata={"description": "MCAP file name; empty: molmoact2_<time>.mcap"}
    )
    topics: tuple[str, ...] = field(
        default=(), metadata={"description": "topics to record, relative to the namespace"}
    )
    discovery_period: float = field(
        default=0.5, metadata={"description": "how often to look for recorded topics [s]"}
    )

    def validate(self) -> list[str]:
        problems = []
        if not self.topics:
            problems.append("topics is empty: nothing to record")
        if self.discovery_period <= 0:
            problems.append("discovery_period must be positive")
        return problems

    def output_path(self) -> Path:
        name = self.file_name or time.strftime("molmoact2_%Y%m%d_%H%M%S.mcap")
        return Path(self.output_dir) / name


def main(args: list[str] | None = None) -> int:
    from rclpy.node import Node
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

    from hw_drivers.ros_params import declare_dataclass_params
    from hw_drivers.ros_runtime import run_node

    class RecorderNode(Node):
        def __init__(self) -> None:
            super().__init__("recorder")
            self.params = declare_dataclass_params(self, RecorderParams)
            problems = self.params.validate()
            if problems:
                raise ValueError("; ".join(problems))
            self.recorder = McapRecorder(self.params.output_path())
            self.wanted = {self.resolve_topic_name(t): t for t in self.params.topics}
            self.subscribed: dict[str, object] = {}
            self.create_timer(self.params.discovery_period, self._discover)
            self.get_logger().info(f"recording {len(self.wanted)} topics to {self.recorder.path}")

        def _discover(self) -> None:
            for topic, types in self.get_topic_names_and_types():
                if topic not in self.wanted or topic in self.subscribed or not types:
                    continue
                publishers = self.get_publishers_info_by_topic(topic)
                if not publishers:
                    continue
                reliable = all(
                    p.qos_profile.reliability == ReliabilityPolicy.RELIABLE for p in publishers
                )
                qos = QoSProfile(depth=100) if reliable else qos_profile_sensor_data
                if reliable and all(
                    p.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL
                    for p in publishers
                ):
                    # Latched topics (/tf_static): get what was published before we joined.
                    qos = QoSProfile(depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL)
                msg_type = _import_type(types[0])
                self.recorder.add_topic(topic, types[0])
                self.subscribed[topic] = self.create_subscription(
                    msg_type, topic, self._writer_for(topic), qos, raw=True
                )
                self.get_logger().info(f"recording {topic} ({types[0]})")

        def _writer_for(self, topic: str):
            clock = self.get_clock()

            def write(data: bytes) -> None:
                now = clock.now().nanoseconds
                self.recorder.write(topic, data, now, now)

            return write

    def flush(node: RecorderNode) -> None:
        node.recorder.close()
        counts = ", ".join(f"{t}: {n}" for t, n in sorted(node.recorder.counts.items()))
        # rclpy's logger may already be shut down here; this is the last word of the node.
        sys.stderr.write(f"[recorder] wrote {node.recorder.path} ({counts})\n")

    return run_node(RecorderNode, args, on_exit=flush)


def _import_type(type_name: str):
    """``pkg/msg/Type`` -> the Python message class."""
    import importlib

    package, kind, name = type_name.split("/")
    return getattr(importlib.import_module(f"{package}.{kind}"), name)


if __name__ == "__main__":
    sys.exit(main())
