"""Log what a lifecycle transition raised instead of losing it.

rclpy's ``LifecycleNode`` catches any exception from ``on_configure`` & co. and returns ERROR
without logging it (rclpy/lifecycle/node.py: "TODO: log sth here"): a bad topic name in a params
file left only "configure failed" behind, with no word of which parameter or why. Decorating the
node class logs the exception with its traceback under the node's logger; the transition still
ends in ERROR (the node stays up, unconfigured), as rclpy does.
"""

from __future__ import annotations

import functools
import traceback
from typing import Any, TypeVar

T = TypeVar("T")

TRANSITIONS = (
    "on_configure",
    "on_activate",
    "on_deactivate",
    "on_cleanup",
    "on_shutdown",
    "on_error",
)


def log_transition_errors(cls: type[T]) -> type[T]:
    """Class decorator: every transition callback ``cls`` defines logs what it raises."""
    for name in TRANSITIONS:
        method = cls.__dict__.get(name)
        if method is not None:
            setattr(cls, name, _logged(name, method))
    return cls


def _logged(name: str, method: Any) -> Any:
    @functools.wraps(method)
    def wrapper(self: Any, state: Any) -> Any:
        try:
            return method(self, state)
        except Exception as err:
            transition = name.removeprefix("on_")
            self.get_logger().error(
                f"{transition} failed: {type(err).__name__}: {err}\n{traceback.format_exc()}"
            )
            from rclpy.lifecycle import TransitionCallbackReturn

            return TransitionCallbackReturn.ERROR

    return wrapper
