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

    A topic keeps the type it was first subscribed with: a publisher of another type on the
    same name (a type change, a second node's mistake) is logged as an error once, naming
    both types, since its messages are not passed on. A publisher that joins later offering
    less than the subscription asks (best effort where all were reliable, volatile where all
    were transient local) would never be matched: the topic is subscribed again with QoS that
    matches every publisher.
    """

    def __init__(
        self,
        node: Any,
        topics: Iterable[str],
        on_topic: Callable[[str, str, str], None],
        on_message: Callable[[str, bytes, int], None],
    ) -> None:
        self._node = node
        self.wanted = {node.resolve_topic_name(t) for t in topics}
        self._on_topic = on_topic
        self._on_message = on_message
        self.subscribed: dict[str, Any] = {}
        self._kinds: dict[str, tuple[str, QosKind]] = {}
        self._other_types: set[tuple[str, str]] = set()

    def discover(self) -> None:
        for topic, types in self._node.get_topic_names_and_types():
            if topic not in self.wanted or not types:
                continue
            if topic in self.subscribed:
                if self.subscribed[topic] is not None:
                    self._follow(topic, types)
                continue
            publishers = self._node.get_publishers_info_by_topic(topic)
            if not publishers:
                continue
            type_name = types[0]
            try:
                msg_type = import_message_type(type_name)
                definition = message_definition(type_name)
            except (ImportError, AttributeError, OSError, LookupError) as exc:
                self._node.get_logger().error(f"cannot serve {topic} ({type_name}): {exc}")
                self.subscribed[topic] = None  # do not retry every period
                continue
            self._on_topic(topic, type_name, definition)
            kind = qos_kind(_of_type(publishers, type_name) or publishers)
            self._kinds[topic] = (type_name, kind)
            self.subscribed[topic] = self._subscribe(topic, msg_type, kind)
            self._warn_other_types(topic, types)

    def _subscribe(self, topic: str, msg_type: Any, kind: QosKind) -> Any:
        return self._node.create_subscription(
            msg_type, topic, self._forwarder(topic), _qos_profile(kind), raw=True
        )

    def _follow(self, topic: str, types: list[str]) -> None:
        """A subscribed topic: say when a publisher of another type appears; subscribe again
        when a publisher that the subscription's QoS cannot match has joined."""
        self._warn_other_types(topic, types)
        type_name, kind = self._kinds[topic]
        publishers = _of_type(self._node.get_publishers_info_by_topic(topic), type_name)
        if not publishers:
            return
        wanted = qos_kind(publishers)
        if not asks_more(kind, wanted):
            return
        self._node.destroy_subscription(self.subscribed[topic])
        self._kinds[topic] = (type_name, wanted)
        self.subscribed[topic] = self._subscribe(topic, import_message_type(type_name), wanted)
        self._node.get_logger().info(
            f"{topic}: a publisher offers {describe_qos(wanted)} only; subscribed again "
            f"{describe_qos(wanted)} (was {describe_qos(kind)}) so its messages arrive"
        )

    def _warn_other_types(self, topic: str, types: list[str]) -> None:
        kept = self._kinds[topic][0]
        for other in types:
            if other != kept and (topic, other) not in self._other_types:
                self._other_types.add((topic, other))
                self._node.get_logger().error(
                    f"{topic} has a publisher of type {other}, but it is subscribed as {kept} "
                    "(the first type seen; one type per topic): those messages are not passed on"
                )

    def _forwarder(self, topic: str) -> Callable[[bytes], None]:
        clock = self._node.get_clock()

        def forward(data: bytes) -> None:
            self._on_message(topic, data, clock.now().nanoseconds)

        return forward


# (reliable, transient local) of a subscription
QosKind = tuple[bool, bool]


def _of_type(publishers: list[Any], type_name: str) -> list[Any]:
    return [p for p in publishers if getattr(p, "topic_type", type_name) == type_name]


def qos_kind(publishers: list[Any]) -> QosKind:
    """The QoS a subscription needs to match every one of ``publishers``: reliable only when
    all are reliable, transient local only when all are (and reliable)."""
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

    reliable = all(p.qos_profile.reliability == ReliabilityPolicy.RELIABLE for p in publishers)
    latched = all(
        p.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for p in publishers
    )
    return reliable, reliable and latched


def asks_more(subscription: QosKind, publishers: QosKind) -> bool:
    """Whether a subscription of kind ``subscription`` leaves some of those publishers
    unmatched (DDS matches a request only when the offer is at least as strong)."""
    return (subscription[0] and not publishers[0]) or (subscription[1] and not publishers[1])


def describe_qos(kind: QosKind) -> str:
    reliable, latched = kind
    return ("reliable" if reliable else "best effort") + (", transient local" if latched else "")


def _qos_profile(kind: QosKind) -> Any:
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

    reliable, latched = kind
    if not reliable:
        return qos_profile_sensor_data
    return QoSProfile(
        depth=100,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
    )
