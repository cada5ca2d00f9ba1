"""The benchmark scripts still run against the current code (tiny presets, one repeat each).

They import model internals that refactors move; without this a speed claim could rest on a
script that no longer starts. Only what they print is checked, never how fast anything was.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SCRIPTS = {
    "model": (
        ["--preset", "tiny", "--repeats", "1"],
        ["prefix", "flow loop uncached", "flow loop cached", "max |uncached - cached|"],
    ),
    "think": (
        ["--preset", "tiny", "--repeats", "1"],
        ["forwards, token by token)", "step rate: flow", "adaptive step speedup"],
    ),
    "fast": (["--preset", "tiny", "--repeats", "1"], ["decoding cost:", "ratios:"]),
    "executor": (
        ["--duration", "1", "--sim-duration", "2"],
        ["idle ticks", "ratios sync/ours:", "driver node control loop", "tick lateness p50"],
    ),
    "remote": (["--policy", "null", "--iterations", "2"], ["ws   jpeg", "raw bandwidth"]),
    # The policy node in its own process, fed over ROS: the zero-cost policy on one small run
    # per transport, then the tiny model against bare Policy.act.
    "policy_node": (
        [
            "--policy",
            "zero",
            "--frames",
            "2",
            "--warmup",
            "1",
            "--stream-seconds",
            "0.5",
            "--no-conversion-cost",
        ],
        ["zero-cost policy", "raw   one at a time", "jpeg  30 Hz stream", "node stages"],
    ),
    "policy_node_tiny": (
        ["--preset", "tiny", "--frames", "2", "--warmup", "1", "--no-conversion-cost"],
        [
            "bare Policy.act",
            "bare, on a worker thread",
            "camera publish -> chunk",
            "overhead ratio",
            "paired ratio",
            "chunks the node",
        ],
    ),
    # A GPU model's launch-bound time on the CPU: many tiny torch ops, in the node and bare.
    "policy_node_launch_bound": (
        [
            "--policy",
            "launch-bound",
            "--launches",
            "300",
            "--frames",
            "2",
            "--warmup",
            "1",
            "--stream-seconds",
            "0",
            "--no-conversion-cost",
        ],
        [
            "launch-bound policy (300 torch ops per act)",
            "bare, on a worker thread",
            "overhead ratio",
            "chunks the node",
        ],
    ),
}
# Entries that run another entry's script with other settings.
SCRIPT_OF = {"policy_node_tiny": "policy_node", "policy_node_launch_bound": "policy_node"}

# These start ROS nodes (the driver node, the policy node) in subprocesses.
ROS_SCRIPTS = {"executor", "policy_node", "policy_node_tiny", "policy_node_launch_bound"}


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.ros) if n in ROS_SCRIPTS else n for n in sorted(SCRIPTS)],
)
def test_bench_script_runs_and_reports(name):
    args, expected = SCRIPTS[name]
    script = SCRIPT_OF.get(name, name)
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / f"{script}.py"), *args],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for line in expected:
        assert line in output, f"{name}: {line!r} missing from\n{output}"


def test_rtc_bench_runs_and_reports(tmp_path):
    """bench/rtc.py on tiny settings: a model trained for two steps (cached under tmp_path) and
    one delay. Such a model is noise, so the driver may reject most chunks (the bench says
    which and why); the figures come from the real runs (``--train-steps 400`` or more)."""
    result = subprocess.run(
        [
            sys.executable, str(REPO / "bench" / "rtc.py"), "--train-steps", "2",
            "--duration", "1.8", "--delays", "0.2", "--threads", "1",
            "--checkpoint-dir", str(tmp_path),
        ],
        capture_output=True, text=True, timeout=240, cwd=REPO,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for line in (
        "200ms  blend     all", "200ms  blend     arm", "200ms    rtc     all",
        "200ms    rtc     arm", "ratios blend/rtc at 200 ms (all joints): cmd vel jump",
        "ratios blend/rtc at 200 ms (arm joints): cmd vel jump",
    ):
        assert line in output, f"{line!r} missing from\n{output}"
    runs = re.findall(r"(\d+) chunks, \d+ splices measured .* rtc requests (\d+)", output)
    assert len(runs) == 2, output
    (blend_chunks, blend_rtc), (rtc_chunks, rtc_used) = runs
    # Same seeds, same model: both runs see as many chunks; blend-only never asks for RTC,
    # and the RTC run cannot for the first chunk.
    assert blend_chunks == rtc_chunks and int(blend_chunks) >= 2, output
    assert blend_rtc == "0" and int(rtc_used) < int(rtc_chunks), output
    assert (tmp_path / "so101_phase_loops_2" / "BENCH_RTC_CHECKPOINT.txt").is_file()
