"""The driver's teardown against a chunk callback that reports meanwhile (no ROS graph).

``_teardown`` destroyed ``~/chunk_execution``'s publisher and only then set the attribute to
None, outside ``self._lock``; the chunk callback publishes its verdict under that lock. A
callback that ran between the two published on a destroyed publisher (rclpy raises). The
probe-driver flood never hit it; this runs exactly that interleaving, deterministically: the
"other thread" reports from inside ``destroy_publisher``, the moment the old order left open.
Now the attribute is set to None under the lock first, then the publisher is destroyed.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.ros

PUBLISHERS = ("_joint_pub", "_command_pub", "_diag_pub", "_execution_pub")


class FakePublisher:
    def __init__(self, name: str) -> None:
        self.name = name
        self.destroyed = False
        self.published: list = []

    def publish(self, msg) -> None:
        if self.destroyed:  # what rclpy raises (InvalidHandle) on a destroyed publisher
            raise RuntimeError(f"{self.name}: publish on a destroyed publisher")
        self.published.append(msg)


def test_a_report_during_teardown_never_reaches_a_destroyed_publisher():
    from hw_drivers.driver_node import DriverNode

    report = SimpleNamespace(fill_msg=lambda msg: msg)
    node = SimpleNamespace(
        _lock=threading.Lock(),
        _loop=None,
        _driver_services=[],
        _camera_subs=[],
        _chunk_sub=None,
        _stop_control=lambda: None,
        _stop_timers=lambda: None,
        **{name: FakePublisher(name) for name in PUBLISHERS},
    )
    destroyed: list[str] = []

    def destroy_publisher(pub: FakePublisher) -> None:
        pub.destroyed = True
        destroyed.append(pub.name)
        # The chunk callback (executor thread) reports its verdict right now, as it does:
        # under the lock, on whatever publisher the attribute holds.
        with node._lock:
            DriverNode._publish_execution(node, report)

    node.destroy_publisher = destroy_publisher
    DriverNode._teardown(node)
    assert sorted(destroyed) == sorted(PUBLISHERS)
    assert all(getattr(node, name) is None for name in PUBLISHERS)
