"""Runs a node graph as supervised processes: what ``molmoact2 launch`` does without ros2 launch.

One process per ``NodeSpec``, started with the same parameter files and overrides the ROS 2
launch files pass; every output line is prefixed with the node name. The nodes stay in the
supervisor's process group, as under ``ros2 launch``: a terminal's Ctrl-C or hangup reaches
every node at once, and the supervisor then sends SIGINT to each node again. Stopping (Ctrl-C,
SIGTERM, SIGHUP, or the end of ``--duration``) escalates like launch: SIGINT, SIGTERM after
``sigterm_timeout`` (5 s), SIGKILL after ``sigkill_timeout`` more. Every node stops cleanly
within that (``molmoact2_common.ros_runtime``): status 0, recordings flushed, arms held; anything
else is reported and makes the run fail. If the supervisor itself is killed, the nodes notice
their parent is gone and stop on their own. A node that dies on its own stops the graph with a
non-zero status.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import yaml

from molmoact2.graph import ANY_NAMESPACE, NodeSpec, fastdds_profile
from molmoact2_common import fastdds_shm
from molmoact2_common.ros_runtime import ENV_LAUNCHER_PID

log = logging.getLogger("molmoact2.launch")


def node_command(spec: NodeSpec, namespace: str, overrides_file: Path) -> list[str]:
    """The command line that runs ``spec`` as a process, as ros2 launch would start it."""
    # Through node_entry, as the console scripts ros2 launch runs: a Ctrl-C while the node
    # still imports ends it with one line, not a KeyboardInterrupt traceback.
    cmd = [sys.executable, "-u", "-m", "molmoact2_common.node_entry", spec.module]
    cmd += ["--ros-args", "-r", f"__node:={spec.name}"]
    if namespace.strip("/"):
        cmd += ["-r", f"__ns:=/{namespace.strip('/')}"]
    for path in spec.param_files:
        cmd += ["--params-file", str(path)]
    cmd += ["--params-file", str(overrides_file)]
    return cmd


def write_overrides(spec: NodeSpec, directory: Path) -> Path:
    path = directory / f"{spec.name}.overrides.yaml"
    body = {f"{ANY_NAMESPACE}{spec.name}": {"ros__parameters": dict(spec.overrides)}}
    path.write_text(yaml.safe_dump(body, sort_keys=True))
    return path


def exit_status(code: int) -> str:
    """A child's exit status as a reader wants it: a negative status is the signal's name."""
    if code < 0:
        try:
            return f"status {code} ({signal.Signals(-code).name})"
        except ValueError:
            pass
    return f"status {code}"


@dataclass
class _Child:
    spec: NodeSpec
    process: subprocess.Popen
    reader: threading.Thread
    exit_code: int | None = None


@dataclass
class GraphRun:
    """The outcome of a supervised run."""

    exit_code: int
    node_exit_codes: dict[str, int] = field(default_factory=dict)
    failed_node: str | None = None
    duration: float = 0.0


class Supervisor:
    """Starts, watches and stops the processes of one graph."""

    def __init__(
        self,
        nodes: list[NodeSpec],
        namespace: str = "",
        output: TextIO | None = None,
        env: dict[str, str] | None = None,
        sigterm_timeout: float = 5.0,
        sigkill_timeout: float = 5.0,
        ready: tuple[str, str] | None = None,
        ready_timeout: float = 180.0,
    ) -> None:
        self.nodes = nodes
        self.namespace = namespace
        self.output = output or sys.stdout
        self.env = dict(os.environ if env is None else env)
        # Large shared-memory segment for raw camera frames (see config/fastdds.xml).
        self.env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(fastdds_profile()))
        # A node that dies of a native fault prints every thread's Python stack, also one in
        # an import before its runtime enables that itself (ros_runtime.enable_crash_stacks).
        self.env.setdefault("PYTHONFAULTHANDLER", "1")
        # Nodes stop when this process is gone, also when it is not their parent.
        self.env[ENV_LAUNCHER_PID] = str(os.getpid())
        self.sigterm_timeout = sigterm_timeout
        self.sigkill_timeout = sigkill_timeout
        self._children: list[_Child] = []
        self._stop = threading.Event()
        self._print_lock = threading.Lock()
        self._run_dir = Path(tempfile.mkdtemp(prefix="molmoact2-launch-"))
        # (node, text): ``run(duration)`` counts from the first line of that node containing
        # the text (e.g. the policy saying it is active), at most ``ready_timeout`` after start.
        self.ready = ready
        self.ready_timeout = ready_timeout
        self._ready_at: float | None = None

    def request_stop(self, *_args) -> None:
        self._stop.set()

    def _pump(self, name: str, stream: TextIO) -> None:
        width = max(len(n.name) for n in self.nodes)
        for line in iter(stream.readline, ""):
            if (
                self._ready_at is None
                and self.ready is not None
                and name == self.ready[0]
                and self.ready[1] in line
            ):
                self._ready_at = time.monotonic()
            with self._print_lock:
                self.output.write(f"[{name:<{width}}] {line}")
                self.output.flush()
        stream.close()

    def start(self) -> None:
        # Shared memory a crashed or killed graph left: the nodes would reopen its ports.
        stale = fastdds_shm.clean_zombies()
        if stale:
            log.info("removed %d stale Fast DDS shared-memory files", len(stale))
        for spec in self.nodes:
            if self._stop.is_set():
                # Ctrl-C or SIGTERM while the graph was starting: start no more of it.
                log.info("stop requested while starting: %s not started", spec.name)
                break
            cmd = node_command(spec, self.namespace, write_overrides(spec, self._run_dir))
            process = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=self.env,
                # Same process group as the supervisor (as ros2 launch does): closing the
                # terminal or Ctrl-C reaches every node even if the supervisor is gone.
            )
            reader = threading.Thread(
                target=self._pump, args=(spec.name, process.stdout), daemon=True
            )
            reader.start()
            self._children.append(_Child(spec, process, reader))
            log.info("started %s (pid %d)", spec.name, process.pid)

    def run(
        self,
        duration: float | None = None,
        on_tick: Callable[[], None] | None = None,
        install_signal_handlers: bool = True,
    ) -> GraphRun:
        """Start the graph and supervise it until stopped, a node dies, or ``duration`` ends."""
        if install_signal_handlers:
            signal.signal(signal.SIGINT, self.request_stop)
            signal.signal(signal.SIGTERM, self.request_stop)
            if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:  # not under nohup
                signal.signal(signal.SIGHUP, self.request_stop)
        started = time.monotonic()
        try:
            self.start()
        except BaseException:
            # A node that cannot be started (its overrides file, the exec): those already
            # running are stopped here, not left running without the rest of the graph.
            self.stop()
            raise
        failed: str | None = None
        while not self._stop.is_set():
            if duration is not None:
                origin = started if self.ready is None else self._ready_at
                if origin is None and time.monotonic() - started > self.ready_timeout:
                    self._say(f"{self.ready[0]} did not become ready in {self.ready_timeout:g} s")
                    failed = self.ready[0]
                    break
                if origin is not None and time.monotonic() - origin >= duration:
                    break
            for child in self._children:
                code = child.process.poll()
                if code is not None:
                    failed = child.spec.name
                    self._say(f"node {failed} exited unexpectedly with {exit_status(code)}")
                    break
            if failed:
                break
            if on_tick is not None:
                on_tick()
            self._stop.wait(0.1)
        codes = self.stop()
        exit_code = 1 if failed else 0
        if not failed:
            # A clean stop is status 0 for every node; anything else means a node failed
            # while shutting down (a signal's status means it had to be killed).
            bad = {n: c for n, c in codes.items() if c != 0}
            if bad:
                self._say(f"nodes did not stop cleanly: {bad}")
                exit_code = 1
        self._say("stopped; node exit codes: " + ", ".join(f"{n}={c}" for n, c in codes.items()))
        return GraphRun(exit_code, codes, failed, time.monotonic() - started)

    def stop(self) -> dict[str, int]:
        """SIGINT every node, then SIGTERM, then SIGKILL; returns each node's exit status."""
        for sig, wait in ((signal.SIGINT, self.sigterm_timeout),
                          (signal.SIGTERM, self.sigkill_timeout), (signal.SIGKILL, 5.0)):
            alive = [c for c in self._children if c.process.poll() is None]
            if not alive:
                break
            if sig != signal.SIGINT:
                self._say(f"sending {sig.name} to {', '.join(c.spec.name for c in alive)}")
            for child in alive:
                try:
                    child.process.send_signal(sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            for child in alive:
                try:
                    child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        for child in self._children:
            child.reader.join(timeout=2.0)
            child.exit_code = child.process.poll()
        return {c.spec.name: c.exit_code for c in self._children if c.exit_code is not None}

    def _say(self, text: str) -> None:
        with self._print_lock:
            self.output.write(f"[molmoact2] {text}\n")
            self.output.flush()
