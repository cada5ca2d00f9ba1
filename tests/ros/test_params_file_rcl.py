"""``molmoact2.params_file`` types every scalar as rcl's parameter-file parser does: one rcl
parse of a file with many spellings, compared value by value (the launch's config check must
check what the nodes get, not what PyYAML makes of the file)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from molmoact2.params_file import read_params_file

pytestmark = pytest.mark.ros

SPELLINGS = [
    "y",
    "Y",
    "n",
    "N",
    "yes",
    "No",
    "on",
    "OFF",
    "true",
    "False",
    "TRUE",
    "'true'",
    '"on"',
    "0",
    "-0",
    "+5",
    "017",
    "08",
    "0x1f",
    "-0x10",
    "0X1F",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775809",
    "99999999999999999999",
    "1_000",
    "10:40",
    "1e3",
    "1E3",
    "1e+3",
    "1.5e-3",
    "1e400",
    "1e-400",
    "5.",
    ".5",
    "-.5",
    "0x1p3",
    "nan",
    "NaN",
    ".nan",
    ".NaN",
    ".inf",
    "-.Inf",
    "+.inf",
    "inf",
    "-infinity",
    "~",
    "null",
    "Null",
    "2001-12-14",
    "0o17",
    "0b101",
    "abc",
    "'5'",
    '"5.0"',
    "!!str 5",
    "!!str true",
    "!!float 5",
    "|\n      5",
    ">-\n      5",
    "a b",
    "' 5'",
    "5 ",
    "1,000",
    "$5",
    "+",
    ".",
    "0x",
]


def test_scalars_read_as_rcl_reads_them(tmp_path):
    path = tmp_path / "spellings.yaml"
    body = "".join(f"    p{i}: {s}\n" for i, s in enumerate(SPELLINGS))
    path.write_text(f"/**:\n  ros__parameters:\n{body}")
    script = (
        "import json, math, sys, rclpy\n"
        "from rclpy.node import Node\n"
        "rclpy.init(args=['--ros-args', '--params-file', sys.argv[1]])\n"
        "node = Node('spellings', start_parameter_services=False)\n"
        "out = {}\n"
        "for name, p in node._parameter_overrides.items():\n"
        "    v = p.value\n"
        "    out[name] = [type(v).__name__, repr(v)]\n"
        "print(json.dumps(out))\n"
        "node.destroy_node(); rclpy.shutdown()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    rcl = json.loads(result.stdout.strip().splitlines()[-1])
    ours = read_params_file(path)["/**"]
    wrong = {}
    for i, spelling in enumerate(SPELLINGS):
        name = f"p{i}"
        value = ours[name]
        mine = [type(value).__name__, repr(value)]
        if isinstance(value, float) and math.isnan(value):
            mine = ["float", "nan"]
        if mine != rcl[name]:
            wrong[spelling] = (mine, rcl[name])
    assert not wrong, wrong
