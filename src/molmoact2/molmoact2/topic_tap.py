"""Subscribe a list of topics as raw CDR bytes as soon as they appear in the graph.

Used by the nodes that pass messages on without reading them (the recorder, the Foxglove
bridge): a topic's type is taken from the graph, so any message type works, and nothing is
deserialized. The
subscription's QoS follows the publishers: reliable when every publisher is reliable (chunks,
status), best effort otherwise (cameras), so no publisher is left unmatched; transient-local
when every publisher keeps its last message for late joiners (``/tf_static``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any

from molmoact2.mcap_io import message_definition


def import_message_type(type_name: str) -> Any:
    """``pkg/msg/Type`` -> the Python message class."""
    package, kind, name = type_name.split("/")
    return getattr(importlib.import_module(f"{package}.{kind}"), name)


class TopicTap:
    """``discover()`` (call it from a timer) subscribes each wanted topic once it has a publisher.

    ``on_topic(topic, type_name, definition)`` runs once per topic before its first message;
    ``on_message(topic, cdr_bytes, receive_time_ns)`` for every message.
    """

    def __init__(
        self,
        node: Any,
        topics: Iterable[str],
        on_topic: Callable[[str, str, str], None],
        on_message: Callable[[str, bytes, int], None],
    ) -> None:
        self._node = node
        self._wanted = {node.resolve_topic_name(t) for t in topics}
        self._on_topic = on_topic
        self._on_message = on_message
        self.subscribed: dict[str, Any] = {}

    def discover(self) -> None:
        for topic, types in self._node.get_topic_names_and_types():
            if topic not in self._wanted or topic in self.subscribed or not types:
                continue
            publishers = self._node.get_publishers_info_by_topic(topic)
            if not publishers:
                continue
            try:
                msg_type = import_message_type(types[0])
                definition = message_definition(types[0])
            except (ImportError, AttributeError, OSError, LookupError) as exc:
                self._node.get_logger().error(f"cannot serve {topic} ({types[0]}): {exc}")
                self.subscribed[topic] = None  # do not retry every period
                continue
            self._on_topic(topic, types[0], definition)
            self.subscribed[topic] = self._node.create_subscription(
                msg_type, topic, self._forwarder(topic), _matching_qos(publishers), raw=True
            )

    def _forwarder(self, topic: str) -> Callable[[bytes], None]:
        clock = self._node.get_clock()

        def forward(data: bytes) -> None:
            self._on_message(topic, data, clock.now().nanoseconds)

        return forward


def _matching_qos(publishers: list[Any]) -> Any:
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

    reliable = all(p.qos_profile.reliability == ReliabilityPolicy.RELIABLE for p in publishers)
    latched = all(
        p.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for p in publishers
    )
    if not reliable:
        return qos_profile_sensor_data
    return QoSProfile(
        depth=100,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
    )
