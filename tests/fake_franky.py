"""A stand-in for the ``franky`` module (pip ``franky-control``), which needs libfranka and a
robot and cannot run here.

It mirrors the Python surface franky exposes (python/bind_robot.cpp, python/bind_errors.cpp and
the README of TimSchneider42/franky): ``Robot(fci_hostname, relative_dynamics_factor=...)``
with ``relative_dynamics_factor``, ``recover_from_errors()``, ``move(motion,
asynchronous=False)``, ``join_motion(timeout=None)``, ``poll_motion()``, ``stop()``,
``has_errors``, ``state`` (``q``, ``dq``, ``tau_J``) and ``current_joint_state`` (``position``,
``velocity``); ``JointState(position, velocity)``, ``JointWaypoint(target)``,
``JointWaypointMotion(waypoints)``, ``JointMotion(target)``, ``JointVelocityMotion(velocity,
duration)``, ``Duration(ms)``; ``Gripper(fci_hostname)`` with ``width`` and ``max_width``
properties, ``move(width, speed)``, ``move_async(width, speed)`` returning a future with
``wait(timeout)`` / ``get()``, and ``stop()``; the exception classes.

Like franky, an error of an asynchronous motion is not raised where it happens but by the next
``move`` (or ``join_motion``). The robot tracks ideally: ``move`` puts the joints at the
motion's first waypoint (a JointMotion's target).
"""

# ruff: noqa: N815, N818 - the names are franky's own (tau_J, ControlException, ...)
from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import ClassVar


class Exception(RuntimeError):  # franky's name for franka::Exception
    pass


class CommandException(Exception):
    pass


class ControlException(Exception):
    pass


class InvalidOperationException(Exception):
    pass


class NetworkException(Exception):
    pass


class GripperException(Exception):
    pass


@dataclass
class Duration:
    milliseconds: int


class JointState:
    def __init__(self, position, velocity=None):
        self.position = list(position)
        self.velocity = [0.0] * len(self.position) if velocity is None else list(velocity)


class JointWaypoint:
    def __init__(
        self, target, relative_dynamics_factor=1.0, minimum_time=None, hold_target_duration=None
    ):
        self.target = target if isinstance(target, JointState) else JointState(target)
        self.relative_dynamics_factor = relative_dynamics_factor


class JointWaypointMotion:
    def __init__(self, waypoints, relative_dynamics_factor=1.0, return_when_finished=True):
        self.waypoints = list(waypoints)
        self.relative_dynamics_factor = relative_dynamics_factor


class JointMotion:
    def __init__(self, target, relative_dynamics_factor=1.0, return_when_finished=True):
        self.target = target if isinstance(target, JointState) else JointState(target)


class JointVelocityMotion:
    def __init__(self, target, duration=None, relative_dynamics_factor=1.0):
        self.target = list(target)
        self.duration = duration


@dataclass
class RobotState:
    q: list
    dq: list
    tau_J: list


@dataclass
class _Calls:
    moves: list = field(default_factory=list)  # (motion, asynchronous)
    stops: int = 0
    recovers: int = 0


class Robot:
    instances: ClassVar[list[Robot]] = []

    def __init__(self, fci_hostname, relative_dynamics_factor=1.0, **kwargs):
        self.fci_hostname = fci_hostname
        self.relative_dynamics_factor = relative_dynamics_factor
        self.q = [0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785]
        self.dq = [0.0] * 7
        self.calls = _Calls()
        self._async_error: Exception | None = None
        self.stop_error: Exception | None = None
        Robot.instances.append(self)

    # -- what tests inject ----------------------------------------------------------------
    def fail_motion(self, error: Exception) -> None:
        """The running asynchronous motion stops with ``error`` (raised on the next move)."""
        self._async_error = error

    # -- franky's API -----------------------------------------------------------------------
    @property
    def has_errors(self) -> bool:
        return self._async_error is not None

    def recover_from_errors(self) -> None:
        self.calls.recovers += 1

    def move(self, motion, asynchronous=False):
        if self._async_error is not None:
            error, self._async_error = self._async_error, None
            raise error
        self.calls.moves.append((motion, asynchronous))
        target = motion.waypoints[0].target if hasattr(motion, "waypoints") else motion.target
        self.q, self.dq = list(target.position), list(target.velocity)

    def join_motion(self, timeout=None):
        if self._async_error is not None:
            error, self._async_error = self._async_error, None
            raise error
        return True

    def poll_motion(self):
        return self.join_motion(0.0)

    def stop(self):
        self.calls.stops += 1
        if self.stop_error is not None:
            raise self.stop_error

    @property
    def state(self) -> RobotState:
        return RobotState(list(self.q), list(self.dq), [0.5] * 7)

    @property
    def current_joint_state(self) -> JointState:
        return JointState(self.q, self.dq)


class _Future:
    def __init__(self, done=True, result=True):
        self.done, self.result = done, result

    def wait(self, timeout=None):
        return self.done

    def get(self):
        return self.result


class Gripper:
    instances: ClassVar[list[Gripper]] = []

    def __init__(self, fci_hostname):
        self.fci_hostname = fci_hostname
        self._width = 0.08
        self.width_reads = 0
        self.moves: list[tuple[float, float]] = []
        self.futures: list[_Future] = []
        self.finish_moves = True
        self.stop_error: Exception | None = None
        Gripper.instances.append(self)

    @property
    def max_width(self) -> float:
        return 0.08

    @property
    def width(self) -> float:
        self.width_reads += 1  # a blocking round trip to the gripper server on the real one
        return self._width

    def move(self, width, speed):
        self._width = width
        return True

    def move_async(self, width, speed):
        self.moves.append((width, speed))
        self._width = width
        future = _Future(done=self.finish_moves)
        self.futures.append(future)
        return future

    def stop(self):
        if self.stop_error is not None:
            raise self.stop_error
        return True


def module() -> types.ModuleType:
    """A fresh ``franky`` module object built from this file's classes."""
    franky = types.ModuleType("franky")
    for name in (
        "Exception",
        "CommandException",
        "ControlException",
        "InvalidOperationException",
        "NetworkException",
        "GripperException",
        "Duration",
        "JointState",
        "JointWaypoint",
        "JointWaypointMotion",
        "JointMotion",
        "JointVelocityMotion",
        "RobotState",
        "Robot",
        "Gripper",
    ):
        setattr(franky, name, globals()[name])
    Robot.instances.clear()
    Gripper.instances.clear()
    return franky
