"""The child that makes the demo checkpoint for ``ros2 launch`` does not outlive the launch.

``ros2 launch`` ended by SIGTERM (``kill``, a service manager) or killed while it waited for
the demo checkpoint left the child (about a minute of training) running on as an orphan:
only a terminal's Ctrl-C reached it, through the process group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from molmoact2_common.ros_runtime import _process_start
from tests.rostest_util import REPO_ROOT

LAUNCH = (
    "from molmoact2.demo_checkpoint import ensure_in_child_process\n"
    "ensure_in_child_process('yam', log=print)\n"
)


def _children(pid: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True
    ).stdout
    return [int(p) for p in out.split()]


def test_the_checkpoint_child_exits_when_the_launch_is_killed(tmp_path):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}  # nothing cached: it must train
    launch = subprocess.Popen(
        [sys.executable, "-c", LAUNCH],
        cwd=REPO_ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    child = None
    try:
        for line in launch.stderr:  # the child's progress lines
            if "making the demo checkpoint" in line:
                break
        (child,) = _children(launch.pid)
        launch.send_signal(signal.SIGKILL)  # as a launch gone without stopping its children
        launch.wait()
        deadline = time.monotonic() + 30.0  # a bound, not the expectation (milliseconds)
        while _process_start(child) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _process_start(child) is None, "the checkpoint child outlived the launch"
        staging = list((tmp_path / "molmoact2" / "demo_checkpoints").glob(".*partial-*"))
        assert staging == [], staging  # left the way it exits on Ctrl-C
    finally:
        if launch.poll() is None:
            launch.kill()
        if child is not None and _process_start(child) is not None:
            os.kill(child, signal.SIGKILL)
