"""Spinning a node process until it is told to stop (shared by every node's ``main``)."""

from __future__ import annotations

from collections.abc import Callable
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


def run_node(
    make_node: Callable[[], Any],
    args: list[str] | None = None,
    on_exit: Callable[[Any], None] | None = None,
) -> int:
    """``main()`` of a plain (non-lifecycle) node process: init, build, spin, clean up.

    ``on_exit(node)`` runs before the node is destroyed, also after Ctrl-C/SIGTERM: the place
    to flush what must not be lost (recordings).
    """
    import sys

    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    rclpy.init(args=args if args is not None else sys.argv)
    node = None
    try:
        node = make_node()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        spin_until_shutdown(executor)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            if on_exit is not None:
                on_exit(node)
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


def run_lifecycle_node(
    make_node: Callable[[], Any],
    args: list[str] | None = None,
    on_exit: Callable[[Any], None] | None = None,
) -> None:
    """``main()`` of a lifecycle node process (driver, trajectory bridge, policy node).

    With ``params.autostart`` the node configures and activates itself: our bringup has no
    lifecycle manager. One executor thread: rclpy's MultiThreadedExecutor (Kilted) let a busy
    subscription starve timers (a 250 Hz control timer fell to ~5 Hz beside a 250 Hz
    subscription), and every callback of these nodes is short (inference has its own thread).
    ``on_exit(node)`` runs before the node is destroyed, also after Ctrl-C/SIGTERM.
    """
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.lifecycle import TransitionCallbackReturn

    rclpy.init(args=args)
    node = make_node()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        if node.params.autostart:
            if node.trigger_configure() == TransitionCallbackReturn.SUCCESS and rclpy.ok():
                node.trigger_activate()
            elif rclpy.ok():
                node.get_logger().error("configure failed; waiting for a lifecycle manager")
        # A SIGTERM during configure (loading a model takes seconds) has already shut down.
        if rclpy.ok():
            spin_until_shutdown(executor)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if on_exit is not None:
            on_exit(node)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
