"""A node module that is still importing when the test stops it (stands in for torch & co).

On import it writes ``MOLMOACT2_TEST_IMPORTING`` (a path) and then waits, up to a minute, as
an import of heavy modules would; a test signals it while it waits. ``main`` is reached only
if nothing stopped it: it says so and returns 3, which no test expects.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

Path(os.environ["MOLMOACT2_TEST_IMPORTING"]).write_text(str(os.getpid()))
_deadline = time.monotonic() + 60.0
while time.monotonic() < _deadline:
    time.sleep(0.01)


def main() -> int:
    sys.stderr.write("slow_import_node: main() reached\n")
    return 3
