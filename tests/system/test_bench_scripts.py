"""The benchmark scripts still run against the current code (tiny presets, one repeat each).

They import model internals that refactors move; without this a speed claim could rest on a
script that no longer starts. Only what they print is checked, never how fast anything was.
"""

from __future__ import annotations

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
        ["idle ticks", "ratios sync/ours:", "real-time loop"],
    ),
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_bench_script_runs_and_reports(name):
    args, expected = SCRIPTS[name]
    result = subprocess.run(
        [sys.executable, str(REPO / "bench" / f"{name}.py"), *args],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for line in expected:
        assert line in output, f"{name}: {line!r} missing from\n{output}"
