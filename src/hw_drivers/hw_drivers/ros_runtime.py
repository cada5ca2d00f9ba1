"""Spinning a node process until it is told to stop (shared by every node's ``main``)."""

from __future__ import annotations

from typing import Any


def spin_until_shutdown(executor: Any) -> None:
    """Spin ``executor`` until Ctrl-C, SIGTERM or an external shutdown.

    rclpy shuts the context down from its signal handler while the executor may be in the
    middle of taking a message; the take then fails with a RuntimeError. That is part of
    stopping, not a fault, so it must not turn a clean stop into a non-zero exit (which the
    supervisor would report as a node failure). The same error while the context is still
    running is a real fault and propagates.
    """
    import rclpy
    from rclpy.executors import ExternalShutdownException

    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RuntimeError:
        if rclpy.ok(context=executor.context):
            raise
