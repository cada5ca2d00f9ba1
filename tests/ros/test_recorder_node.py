"""The recorder node with use_sim_time and no /clock: it still finds its topics and flushes.

Its discovery and flush timers ran on the node's clock: with use_sim_time and no /clock yet
(a simulator not started, a paused one) they never fired, so no topic was subscribed and the
recording stayed empty while the topics flowed.
"""

from __future__ import annotations

import logging
import shutil
import time

import pytest

from molmoact2.mcap_io import read_messages
from tests.rostest_util import spin_until, start_python, stop_process

pytestmark = pytest.mark.ros
TOPIC = "/recorder_probe/notes"


def _messages(path, scratch) -> int:
    """Messages in the recorder's file as it is now (a copy: it is still being written)."""
    if not path.is_file():
        return 0
    shutil.copyfile(path, scratch)
    logging.getLogger("molmoact2.recording").disabled = True  # "incomplete": expected here
    try:
        return sum(1 for _ in read_messages(scratch))
    finally:
        logging.getLogger("molmoact2.recording").disabled = False


def test_recorder_with_sim_time_and_no_clock_records_and_flushes(tmp_path):
    import rclpy
    from std_msgs.msg import String

    out = tmp_path / "rec"
    proc = start_python(
        ["-m", "molmoact2.recorder_node", "--ros-args",
         "-p", f"topics:=[{TOPIC}]", "-p", f"output_dir:={out}", "-p", "file_name:=sim.mcap",
         "-p", "discovery_period:=0.2", "-p", "use_sim_time:=true"],
        start_new_session=True,
    )  # fmt: skip
    rclpy.init()
    node = rclpy.create_node("recorder_probe_source")
    try:
        pub = node.create_publisher(String, TOPIC, 10)
        node.create_timer(0.05, lambda: pub.publish(String(data="note")))
        last_check = [0.0]

        def flushed() -> bool:
            # The file is read a few times a second, not on every spin.
            if time.monotonic() - last_check[0] < 0.25:
                return False
            last_check[0] = time.monotonic()
            return _messages(out / "sim.mcap", tmp_path / "copy.mcap") > 0

        assert spin_until(node, flushed, timeout=30.0), stop_process(proc)
    finally:
        log = stop_process(proc)
        node.destroy_node()
        rclpy.shutdown()
    assert proc.returncode == 0, log
    assert _messages(out / "sim.mcap", tmp_path / "final.mcap") > 0, log
