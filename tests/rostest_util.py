"""Helpers for tests that run real ROS 2 nodes: spin until a condition, run helper processes."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def spin_until(node, condition: Callable[[], bool], timeout: float, executor=None) -> bool:
    """Spin ``node`` (or ``executor``) until ``condition()`` holds or ``timeout`` seconds pass."""
    import rclpy

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if executor is not None:
            executor.spin_once(timeout_sec=0.02)
        else:
            rclpy.spin_once(node, timeout_sec=0.02)
        if condition():
            return True
    return condition()


def start_python(code_or_args: list[str], **kwargs) -> subprocess.Popen:
    """Start ``python <args>`` with this interpreter and the test session's ROS environment.

    Unless the caller passes ``stdout``, the process writes its output (stderr too) to a file,
    not a pipe: a pipe read only at the end blocks a node once it has logged a pipe buffer's
    worth (64 KiB), and a test would see a hung node. ``process_output`` reads it at any time.
    """
    env = dict(os.environ)
    env.update(kwargs.pop("env", {}))
    output_path = None
    if "stdout" not in kwargs:
        fd, output_path = tempfile.mkstemp(prefix="molmoact2-test-", suffix=".log")
        os.close(fd)
        # Append mode: the child's writes land at the end whatever the reader's offset.
        kwargs["stdout"] = open(output_path, "ab")  # closed right after Popen
    stdout = kwargs.pop("stdout")
    try:
        proc = subprocess.Popen(
            [sys.executable, *code_or_args],
            env=env,
            cwd=kwargs.pop("cwd", REPO_ROOT),
            stdout=stdout,
            stderr=kwargs.pop("stderr", subprocess.STDOUT),
            text=True,
            **kwargs,
        )
    finally:
        if output_path is not None:
            stdout.close()  # the child holds its own descriptor
    proc.output_path = output_path  # type: ignore[attr-defined]
    return proc


def process_output(proc: subprocess.Popen) -> str:
    """What a process from ``start_python`` has printed so far."""
    path = getattr(proc, "output_path", None)
    if path is not None:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    return (proc.stdout.read() or "") if proc.stdout else ""


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> str:
    """SIGTERM, then SIGKILL after ``timeout``; returns what the process printed."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    out = process_output(proc)
    path = getattr(proc, "output_path", None)
    if path is not None:
        Path(path).unlink(missing_ok=True)
        proc.output_path = None  # type: ignore[attr-defined]
    return out


def call_service(node, executor, srv_type, name: str, request, timeout: float = 5.0):
    """Call service ``name`` from ``node`` spun by ``executor``; the response (asserts it came)."""
    client = node.create_client(srv_type, name)
    assert spin_until(node, client.service_is_ready, timeout, executor), name
    future = client.call_async(request)
    assert spin_until(node, future.done, timeout, executor), name
    node.destroy_client(client)
    return future.result()


class RecordingPublisher:
    """Stands in for a node's publisher: keeps what the node publishes, in order."""

    def __init__(self) -> None:
        self.messages: list = []

    def publish(self, msg) -> None:
        self.messages.append(msg)
