"""A stop signal while a node process is still importing ends it with one line and status 0.

Before ``molmoact2_common.node_entry``, a Ctrl-C in the first second or so of ``ros2 launch``
(nodes still importing rclpy and torch) printed a ``KeyboardInterrupt`` traceback per node, and
launch reported each as "process has died ... exit code -2". The stand-in
``tests.slow_import_node`` writes a file once its import has begun and then waits inside the
import, so each signal below lands during an import, by construction.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from tests.rostest_util import REPO_ROOT

DEADLINE_S = 30.0
STAND_IN = "tests.slow_import_node"


def _start(tmp_path, how: str, **popen) -> tuple[subprocess.Popen, object]:
    import os

    marker = tmp_path / "importing"
    env = {**os.environ, "MOLMOACT2_TEST_IMPORTING": str(marker)}
    if how == "module":  # molmoact2 launch
        args = ["-m", "molmoact2_common.node_entry", STAND_IN, "--ros-args"]
    else:  # a console script, as ros2 launch runs it
        args = ["-c", f"from molmoact2_common.node_entry import entry; entry({STAND_IN!r})()"]
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **popen,
    )
    deadline = time.monotonic() + DEADLINE_S
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)  # polling a file the child writes: the child's progress, not a delay
    assert marker.exists(), proc.communicate(timeout=5)[0]
    return proc, marker


@pytest.mark.parametrize("how", ["module", "console_script"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_stop_signal_during_the_import_exits_cleanly_with_one_line(tmp_path, how, signum):
    proc, _ = _start(tmp_path, how)
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 0, out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert f"{signal.Signals(signum).name} before the node started: exiting" in out, out
    assert "main() reached" not in out


def test_a_sigint_ignored_at_start_still_stops_the_import(tmp_path):
    """A launcher started as a background job of a script hands its nodes SIGINT ignored; the
    runtime handles SIGINT all the same later, and so must the import, or the stop is lost."""
    proc, _ = _start(
        tmp_path, "module", preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)
    )
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 0, out
    assert "SIGINT before the node started: exiting" in out, out


def test_a_sighup_ignored_at_start_stays_ignored(tmp_path):
    """Under nohup the node must outlive its terminal, also while it imports."""
    proc, _ = _start(
        tmp_path, "module", preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN)
    )
    try:
        proc.send_signal(signal.SIGHUP)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=1.0)  # bounds the check only: still running is the pass
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 0, out
    assert "SIGTERM before the node started" in out, out


def test_without_a_signal_it_is_python_dash_m_of_the_node_module(tmp_path):
    """main() runs, argv is the module's file and the node's arguments (node names and log
    lines read argv[0]), and main()'s status is the process's."""
    import os

    (tmp_path / "probe_node_mod.py").write_text(
        "import sys\n"
        "def main():\n"
        "    print('argv', sys.argv)\n"
        "    return 7\n"
    )
    (tmp_path / "no_main_mod.py").write_text("VALUE = 1\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    def run(module: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "molmoact2_common.node_entry", module, "--ros-args", "-r", "x"],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=DEADLINE_S,
        )  # fmt: skip

    ran = run("probe_node_mod")
    assert ran.returncode == 7, ran.stderr
    expected = [str(tmp_path / "probe_node_mod.py"), "--ros-args", "-r", "x"]
    assert ran.stdout.strip() == f"argv {expected}"
    for module in ("no_main_mod", "no_such_node_module"):
        failed = run(module)
        assert failed.returncode != 0
        assert module in failed.stderr and "Traceback" not in failed.stderr, failed.stderr

    # A console script (what pip and colcon write into bin/) keeps its own name as argv[0]:
    # the node's log lines are prefixed with it, so they say [driver_node], not the module file.
    script = tmp_path / "probe_node"
    script.write_text(
        "import sys\n"
        "from molmoact2_common.node_entry import entry\n"
        "sys.exit(entry('probe_node_mod')())\n"
    )
    ran = subprocess.run(
        [sys.executable, str(script), "--ros-args"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=DEADLINE_S,
    )  # fmt: skip
    assert ran.returncode == 7, ran.stderr
    assert ran.stdout.strip() == f"argv {[str(script), '--ros-args']}"
