"""The test harness's node processes never block on their own output.

A node started by ``start_python`` whose output went to a pipe read only at the end blocked
once it had logged a pipe buffer's worth: the test then saw a hung node (an earlier probe hit
this with a Think-mode node that logged freely).
"""

from __future__ import annotations

import subprocess
import time

from tests.rostest_util import process_output, start_python, stop_process

LOUD = "import sys\nfor i in range(4000):\n    print('line', i, 'x' * 60)\nsys.stdout.flush()\n"


def test_a_process_that_logs_more_than_a_pipe_holds_runs_to_its_end():
    proc = start_python(["-c", LOUD])
    try:
        proc.wait(timeout=60)  # a blocked writer never gets here
    except subprocess.TimeoutExpired:
        stop_process(proc)
        raise
    out = stop_process(proc)
    assert proc.returncode == 0
    assert out.count("\n") == 4000 and out.rstrip().endswith("line 3999 " + "x" * 60)


def test_output_can_be_read_while_the_process_runs_and_after_it_stops():
    proc = start_python(["-c", "import time\nprint('ready', flush=True)\ntime.sleep(60)\n"])
    try:
        deadline = time.monotonic() + 30.0
        while "ready" not in process_output(proc) and time.monotonic() < deadline:
            assert proc.poll() is None, process_output(proc)
            time.sleep(0.05)  # polling the child's own progress
        assert "ready" in process_output(proc)
    finally:
        out = stop_process(proc)
    assert out.startswith("ready")
    assert proc.output_path is None  # the file went with the process
