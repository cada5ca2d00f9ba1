"""The interface every robot backend implements: sim, DaMiao CAN, Feetech serial, Franka.

A backend speaks joint space in REP-103 units (radians, metres; grippers in the unit the robot
config names) in the order of ``joint_names``. It knows nothing of chunks, safety or ROS: the
driver node runs the executor and safety layer and hands the backend one command per tick.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass

import numpy as np

from hw_drivers.health import HealthEntry


class BackendError(RuntimeError):
    """The link to the hardware failed (timeout, garbled frame, disconnect)."""


@dataclass(frozen=True)
class JointReading:
    """One measurement of every joint."""

    positions: np.ndarray
    velocities: np.ndarray
    efforts: np.ndarray
    stamp: float  # seconds on the backend's clock when the reading was taken


class Backend(ABC):
    """Connect, read state, write a command, enable, disable."""

    #: Commands actually sent to the hardware, newest last (bounded), for tests and reports.
    COMMAND_LOG_LENGTH = 10_000

    def __init__(self, joint_names: tuple[str, ...] | list[str]) -> None:
        self.joint_names = tuple(joint_names)
        self.command_log: deque[tuple[float, np.ndarray]] = deque(maxlen=self.COMMAND_LOG_LENGTH)

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    @property
    @abstractmethod
    def is_connected(self) -> bool: ...

    @abstractmethod
    def connect(self) -> None:
        """Open the link; raises ``BackendError`` when the hardware does not answer."""

    @abstractmethod
    def disconnect(self) -> None:
        """Close the link (idempotent)."""

    @abstractmethod
    def enable(self) -> None:
        """Energise the motors (torque on)."""

    @abstractmethod
    def disable(self) -> None:
        """De-energise the motors (torque off); safe to call in any state."""

    @abstractmethod
    def read_state(self) -> JointReading:
        """Measure every joint; raises ``BackendError`` when the read fails."""

    @abstractmethod
    def write_command(self, positions: np.ndarray, velocities: np.ndarray | None = None) -> None:
        """Send one position target per joint (already checked by the safety layer)."""

    def health(self) -> list[HealthEntry]:
        """Per-motor and per-bus health for ``/diagnostics`` (empty when the backend has none)."""
        return []

    def clear_faults(self) -> list[str]:
        """Clear fault codes the hardware latched (explicit operator action); returns what was
        cleared, one line per motor. Backends without fault codes have nothing to clear."""
        return []

    def _log_command(self, stamp: float, positions: np.ndarray) -> None:
        self.command_log.append((stamp, np.array(positions, dtype=float, copy=True)))
