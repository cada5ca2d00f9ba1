"""A driver node in this process on an emulated bus, with a probe node that collects
/diagnostics: the rig of the hardware-backend ROS tests (DaMiao and Feetech)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.rostest_util import REPO_ROOT


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def latest(diagnostics: list, suffix: str) -> Any:
    """The newest /diagnostics status whose name ends with ``suffix`` (None if none yet)."""
    for array in reversed(diagnostics):
        for status in array.status:
            if status.name.endswith(suffix):
                return status
    return None


@dataclass
class DriverRig:
    node: Any  # hw_drivers.driver_node.DriverNode, configured and activated
    probe: Any  # a plain node in the same namespace, for clients and subscriptions
    diagnostics: list  # every DiagnosticArray seen, oldest first
    executor: Any


@contextlib.contextmanager
def running_driver(
    robot: str, node_name: str, overrides: dict[str, Any], tmp_path: Path, namespace: str
) -> Iterator[DriverRig]:
    """``node_name`` on ``config/<robot>.yaml`` plus ``overrides`` (its ros__parameters),
    configured and activated; torn down in order on exit."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.lifecycle import TransitionCallbackReturn

    from hw_drivers.driver_node import DriverNode

    params = tmp_path / "overrides.yaml"
    params.write_text(
        yaml.safe_dump({f"/**/{node_name}": {"ros__parameters": {**overrides, "autostart": False}}})
    )
    context = rclpy.Context()
    rclpy.init(context=context)
    node = DriverNode(
        node_name,
        namespace=namespace,
        context=context,
        cli_args=[
            "--ros-args",
            "--params-file",
            str(REPO_ROOT / "config" / f"{robot}.yaml"),
            "--params-file",
            str(params),
        ],
    )
    probe = rclpy.create_node(f"{node_name}_probe", namespace=namespace, context=context)
    diagnostics: list = []
    probe.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 50)
    executor = MultiThreadedExecutor(num_threads=3, context=context)
    executor.add_node(node)
    executor.add_node(probe)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        node.trigger_activate()
        yield DriverRig(node, probe, diagnostics, executor)
    finally:
        executor.shutdown()
        # The spin thread must be out of its wait before the context goes: a wait on a shut
        # down context raises in that thread ("context is not valid").
        spinner.join(timeout=5.0)
        node._teardown()
        node.destroy_node()
        probe.destroy_node()
        rclpy.shutdown(context=context)
