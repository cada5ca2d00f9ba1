"""A take() that races rclpy's shutdown ends a node cleanly; the same error while running
does not go unnoticed."""

from __future__ import annotations

import pytest

from hw_drivers.ros_runtime import spin_until_shutdown

pytestmark = pytest.mark.ros


class RaisingExecutor:
    def __init__(self, context, shutdown_first: bool) -> None:
        self.context = context
        self.shutdown_first = shutdown_first

    def spin(self) -> None:
        import rclpy

        if self.shutdown_first:
            rclpy.shutdown(context=self.context)
        raise RuntimeError("Unable to convert call argument '0' to Python object")


def test_runtime_error_after_shutdown_is_a_clean_stop():
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context)
    spin_until_shutdown(RaisingExecutor(context, shutdown_first=True))
    assert not rclpy.ok(context=context)


def test_runtime_error_while_running_propagates():
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context)
    try:
        with pytest.raises(RuntimeError, match="Unable to convert"):
            spin_until_shutdown(RaisingExecutor(context, shutdown_first=False))
    finally:
        rclpy.shutdown(context=context)
