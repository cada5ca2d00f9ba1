"""How every node process starts: a stop signal that arrives before the node runs ends it
quietly.

A terminal's Ctrl-C reaches every process of a graph at once, and ``ros2 launch`` (or
``molmoact2 launch``) sends SIGINT again right after. A node that was still importing its
modules (rclpy, numpy, torch: a second or more on a loaded machine) had Python's default
handler then: a ``KeyboardInterrupt`` traceback on the user's terminal, and launch reported
"process has died ... exit code -2". Nothing has started at that point (no node, no device
opened, no file written), so it is a clean stop: one line and status 0. From
``ros_runtime.ProcessStop.install`` on, the runtime's own stop handling replaces these handlers.

This module imports nothing heavy on purpose: it must be in place before the node's module is
imported. Console scripts name an ``entry(...)`` of their package's ``node_main`` module;
``molmoact2 launch`` runs ``python -m molmoact2_common.node_entry <module> --ros-args ...``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

EARLY_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _stop_before_start(signum: int, frame: Any) -> None:
    name = signal.Signals(signum).name
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "node"
    # os.write and os._exit: the interpreter may be anywhere inside an import.
    os.write(2, f"[{program}] {name} before the node started: exiting\n".encode())
    os._exit(0)


def install_early_stop() -> None:
    """Stop signals end the process at once, with one line, until the runtime takes over.

    As ``ProcessStop.install`` does later: SIGHUP ignored at start (``nohup``) stays ignored;
    SIGINT ignored at start (a launcher run as a background job of a script inherits that
    from the shell) is handled all the same, or a stop during the import was lost."""
    for signum in EARLY_STOP_SIGNALS:
        if signum == signal.SIGHUP and signal.getsignal(signum) == signal.SIG_IGN:
            continue
        signal.signal(signum, _stop_before_start)


def run_module(module: str, *, argv0_is_module_file: bool = False) -> int:
    """Run node module ``module``'s ``main()``; its status.

    ``argv0_is_module_file``: set ``sys.argv[0]`` to the module's file, as ``python -m module``
    would (the ``-m`` path, where argv[0] would otherwise name this module). A console script
    keeps its own argv[0], the executable's name, which log lines and launch show."""
    install_early_stop()
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:  # its package is missing
        spec = None
    if spec is None or spec.origin is None:
        raise SystemExit(f"no node module {module!r}")
    if argv0_is_module_file:
        sys.argv[0] = spec.origin
    main = getattr(importlib.import_module(module), "main", None)
    if main is None:
        raise SystemExit(f"node module {module!r} has no main()")
    code = main()
    return code if isinstance(code, int) else 0


def entry(module: str) -> Callable[[], int]:
    """A console script that runs node module ``module`` (``run_module``)."""

    def console_script() -> int:
        return run_module(module)

    console_script.module = module  # type: ignore[attr-defined]  # what it runs, for checks
    console_script.__qualname__ = console_script.__name__ = f"run_{module.rpartition('.')[2]}"
    return console_script


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m molmoact2_common.node_entry <node module> [args]")
    target = sys.argv.pop(1)
    sys.exit(run_module(target, argv0_is_module_file=True))
