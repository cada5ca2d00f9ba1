"""The stop tests' small node, run through ``molmoact2_common.ros_runtime`` (a script, not a test).

``python tests/ros/stop_probe_node.py MODE``: publishes a counter at 20 Hz; logs ``ready pid=N``
once spinning (``stop_requested()`` false until then), and a line through Python ``logging``
(which the runtime forwards to the node's ROS log). On exit it logs ``on_exit ran`` with
``stop_requested()`` and, by MODE: ``quick`` returns at once;
``busy`` first joins a worker thread stuck in a long call for at most 0.5 s (an inference in
flight); ``hang`` never returns (the runtime's deadline must end the process); ``segv`` dies of
SIGSEGV while its node is being built (a native fault in rclpy or the middleware). An optional
second argument names the executor (``single`` or ``events``, as a node's ``params.executor``).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from types import SimpleNamespace


def main() -> int:
    from rclpy.node import Node
    from std_msgs.msg import Int32

    from molmoact2_common.ros_runtime import run_node, stop_requested

    mode = sys.argv[1]
    executor = sys.argv[2] if len(sys.argv) > 2 else "single"
    stuck = threading.Thread(target=time.sleep, args=(3600.0,), daemon=True)

    class Probe(Node):
        def __init__(self) -> None:
            super().__init__("stop_probe")
            if mode == "segv":
                import faulthandler

                faulthandler._sigsegv()
            self.params = SimpleNamespace(executor=executor)  # read by the runtime helper
            self.count = 0
            self.pub = self.create_publisher(Int32, "stop_probe/count", 10)
            self.create_timer(0.05, self._tick)
            if mode == "busy":
                stuck.start()

        def _tick(self) -> None:
            if self.count == 0:
                assert not stop_requested()
                logging.getLogger("molmoact2_common.stop_probe").info("python logging bridged")
                self.get_logger().info(f"ready pid={os.getpid()}")
            self.count += 1
            self.pub.publish(Int32(data=self.count))

    def on_exit(node: Probe) -> None:
        node.get_logger().info(f"on_exit ran (stop_requested={stop_requested()})")
        if mode == "busy":
            stuck.join(timeout=0.5)
        elif mode == "hang":
            threading.Event().wait()

    return run_node(Probe, ["stop_probe"], on_exit=on_exit, exit_timeout=3.0)


if __name__ == "__main__":
    sys.exit(main())
