"""TopicTap (recorder, Foxglove bridge) follows a topic's publishers after it subscribed.

A publisher that joined later offering best effort (or volatile) where the first ones were
reliable (transient local) was never matched by the subscription made for the first ones:
its messages were silently missing from the recording. A publisher of another type on the
same name was not matched either, and nothing said so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

from molmoact2.topic_tap import TopicTap, asks_more, qos_kind

RELIABLE, BEST_EFFORT = ReliabilityPolicy.RELIABLE, ReliabilityPolicy.BEST_EFFORT
LATCHED, VOLATILE = DurabilityPolicy.TRANSIENT_LOCAL, DurabilityPolicy.VOLATILE


def publisher(type_name: str, reliability=RELIABLE, durability=VOLATILE) -> Any:
    return SimpleNamespace(
        topic_type=type_name,
        qos_profile=SimpleNamespace(reliability=reliability, durability=durability),
    )


@dataclass
class FakeNode:
    """The graph queries and subscription calls TopicTap makes, on a graph the test sets."""

    publishers: dict[str, list[Any]] = field(default_factory=dict)
    subscriptions: list[tuple[str, Any]] = field(default_factory=list)
    destroyed: list[Any] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    infos: list[str] = field(default_factory=list)

    def resolve_topic_name(self, topic: str) -> str:
        return "/" + topic.lstrip("/")

    def get_topic_names_and_types(self) -> list[tuple[str, list[str]]]:
        return [
            (topic, sorted({p.topic_type for p in pubs})) for topic, pubs in self.publishers.items()
        ]

    def get_publishers_info_by_topic(self, topic: str) -> list[Any]:
        return list(self.publishers.get(topic, []))

    def create_subscription(self, msg_type, topic, callback, qos, raw=False) -> Any:
        handle = SimpleNamespace(topic=topic, qos=qos, msg_type=msg_type)
        self.subscriptions.append((topic, handle))
        return handle

    def destroy_subscription(self, handle: Any) -> None:
        self.destroyed.append(handle)

    def get_logger(self) -> Any:
        return SimpleNamespace(error=self.errors.append, info=self.infos.append)

    def get_clock(self) -> Any:
        return SimpleNamespace(now=lambda: SimpleNamespace(nanoseconds=0))


def tap_on(node: FakeNode, topics: list[str]) -> tuple[TopicTap, list[str]]:
    registered: list[str] = []
    tap = TopicTap(node, topics, lambda t, ty, d: registered.append(f"{t} {ty}"), lambda *a: None)
    return tap, registered


def test_a_best_effort_publisher_joining_a_reliable_topic_gets_a_matching_subscription():
    node = FakeNode(publishers={"/status": [publisher("std_msgs/msg/String")]})
    tap, registered = tap_on(node, ["status"])
    tap.discover()
    first = tap.subscribed["/status"]
    assert first.qos.reliability == RELIABLE
    tap.discover()  # nothing changed: the subscription stays
    assert tap.subscribed["/status"] is first and not node.destroyed

    node.publishers["/status"].append(publisher("std_msgs/msg/String", BEST_EFFORT))
    tap.discover()
    second = tap.subscribed["/status"]
    assert node.destroyed == [first]
    assert second.qos.reliability == BEST_EFFORT
    assert registered == ["/status std_msgs/msg/String"]  # one channel: same topic, same type
    assert any("best effort" in line for line in node.infos)


def test_a_volatile_publisher_joining_a_latched_topic_gets_a_volatile_subscription():
    node = FakeNode(
        publishers={"/tf_static": [publisher("std_msgs/msg/String", RELIABLE, LATCHED)]}
    )
    tap, _ = tap_on(node, ["tf_static"])
    tap.discover()
    assert tap.subscribed["/tf_static"].qos.durability == LATCHED
    node.publishers["/tf_static"].append(publisher("std_msgs/msg/String", RELIABLE, VOLATILE))
    tap.discover()
    assert tap.subscribed["/tf_static"].qos.durability == VOLATILE


def test_a_publisher_of_another_type_is_an_error_named_once():
    node = FakeNode(publishers={"/x": [publisher("std_msgs/msg/String")]})
    tap, _ = tap_on(node, ["x"])
    tap.discover()
    node.publishers["/x"] = [publisher("std_msgs/msg/Int32", BEST_EFFORT)]
    for _ in range(3):
        tap.discover()
    assert len(node.errors) == 1
    assert "std_msgs/msg/Int32" in node.errors[0] and "std_msgs/msg/String" in node.errors[0]
    # The other type's QoS is not the subscription's business: no resubscription for it.
    assert not node.destroyed


def test_qos_kind_and_asks_more_over_every_mix_of_publishers():
    offers = [(r, d) for r in (RELIABLE, BEST_EFFORT) for d in (LATCHED, VOLATILE)]
    for a in offers:
        for b in offers:
            pubs = [publisher("t", *a), publisher("t", *b)]
            kind = qos_kind(pubs)
            # The kind made for a set of publishers never asks more than any of them offers.
            for offer in (a, b):
                assert not asks_more(kind, qos_kind([publisher("t", *offer)]))
