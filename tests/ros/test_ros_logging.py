"""Python ``logging`` of the suite's pure modules reaches the node's ROS log (/rosout).

The DaMiao backend, the gripper calibration and model loading log through ``logging`` (they
must not import rclpy). ROS users read a node's log on /rosout (rqt_console, ``ros2 topic echo
/rosout``, launch's log files); before the bridge the INFO lines never got anywhere and the
warnings only to the process's stderr.
"""

from __future__ import annotations

import logging
import time

import pytest

from molmoact2_common.ros_runtime import bridge_python_logging

pytestmark = pytest.mark.ros


def _collect_rosout(node, listener, texts: set[str], timeout: float = 20.0) -> dict[str, object]:
    """Spin until /rosout carried a record of ``node`` containing each of ``texts``.

    Returns every record of ``node`` seen by then, text -> Log message. One publisher's records
    arrive in order, so a record logged before the last awaited one is seen if it was sent.
    """
    import rclpy

    seen: dict[str, object] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(
        any(text in msg for msg in seen) for text in texts
    ):
        rclpy.spin_once(listener.node, timeout_sec=0.05)
        for msg in listener.drain():
            if msg.name == node.get_name():
                seen[msg.msg] = msg
    missing = [t for t in texts if not any(t in m for m in seen)]
    assert not missing, f"not on /rosout: {missing}; seen: {list(seen)}"
    return seen


def _find(seen: dict[str, object], text: str):
    return next(msg for line, msg in seen.items() if text in line)


class _Listener:
    def __init__(self, rclpy) -> None:
        from rcl_interfaces.msg import Log
        from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy

        self.node = rclpy.create_node("rosout_listener")
        self.messages: list = []
        qos = QoSProfile(
            depth=1000,
            reliability=QoSReliabilityPolicy.RELIABLE,
            durability=QoSDurabilityPolicy.TRANSIENT_LOCAL,
        )
        self.node.create_subscription(Log, "/rosout", self.messages.append, qos)

    def drain(self) -> list:
        out, self.messages[:] = list(self.messages), []
        return out


@pytest.fixture
def ros_nodes():
    """(a node whose logger gets the bridge, a /rosout listener), torn down after the test."""
    import rclpy

    rclpy.init()
    try:
        node = rclpy.create_node("logging_bridge_test")
        listener = _Listener(rclpy)
        yield node, listener
        listener.node.destroy_node()
        node.destroy_node()
    finally:
        rclpy.shutdown()


def test_package_logging_reaches_rosout_at_its_severity_and_is_undone(ros_nodes):
    from rcl_interfaces.msg import Log

    node, listener = ros_nodes
    undo = bridge_python_logging(node.get_logger())
    try:
        logging.getLogger("hw_drivers.backends.damiao").info("gripper on can0 calibrated")
        logging.getLogger("molmoact2_policy.model").warning("checkpoint has no stats")
        logging.getLogger("molmoact2_common.x").error("bus frozen")
        logging.getLogger("hw_drivers.backends.damiao").debug("debug stays below INFO")
        seen = _collect_rosout(
            node, listener, {"gripper on can0 calibrated", "checkpoint has no stats", "bus frozen"}
        )
    finally:
        undo()
    assert _find(seen, "gripper on can0 calibrated").level == Log.INFO
    assert _find(seen, "checkpoint has no stats").level == Log.WARN
    assert _find(seen, "bus frozen").level == Log.ERROR
    assert not any("debug stays below INFO" in line for line in seen)
    # The record says which module it came from.
    assert "hw_drivers.backends.damiao: gripper on can0 calibrated" in seen
    # After the undo the package loggers are as they were: nothing more is forwarded.
    drivers = logging.getLogger("hw_drivers")
    assert drivers.handlers == [] and drivers.propagate and drivers.level == logging.NOTSET
    logging.getLogger("hw_drivers.backends.damiao").warning("after the undo")
    node.get_logger().info("sentinel")  # the node's own line, sent after the one above
    seen = _collect_rosout(node, listener, {"sentinel"})
    assert not any("after the undo" in text for text in seen)


def test_other_libraries_logging_is_not_bridged(ros_nodes):
    node, listener = ros_nodes
    undo = bridge_python_logging(node.get_logger())
    try:
        logging.getLogger("urllib3.connectionpool").warning("a library's own chatter")
        logging.getLogger("hw_drivers").warning("ours")
        seen = _collect_rosout(node, listener, {"ours"})
    finally:
        undo()
    assert not any("a library's own chatter" in text for text in seen)
