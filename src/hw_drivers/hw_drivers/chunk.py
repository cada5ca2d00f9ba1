"""A timed chunk of joint targets, as the executor sees it (no ROS).

Action ``k`` of a chunk applies at ``stamp + start_offset + k * step_dt`` on the driver's clock
(the same time base as the ``ActionChunk`` message header), so a late chunk is executed at the
right phase instead of late.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Chunk:
    """``positions`` is (horizon, joints), one column per name in ``joint_names``.

    The constructor does not validate: a malformed chunk must still be representable so the
    safety layer can reject it with a reason (see ``hw_drivers.safety.validate_chunk``).
    """

    stamp: float  # observation capture time [s] on the driver's clock
    start_offset: float  # time of action 0 after ``stamp`` [s]
    step_dt: float  # time between consecutive actions [s]
    joint_names: tuple[str, ...]
    positions: np.ndarray = field(repr=False)
    sequence: int = 0
    latency: float = 0.0  # capture -> publish [s], as reported by the policy
    # Joint velocities in the layout of ``positions``, or empty (the message's "unknown").
    # Kept as given when they do not fit ``positions``, for the safety layer to refuse.
    velocities: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "joint_names", tuple(self.joint_names))
        positions = np.array(self.positions, dtype=float, copy=True)
        if positions.ndim == 1 and len(self.joint_names) > 0 and positions.size % len(
            self.joint_names
        ) == 0:
            # Row-major flat array as in the message: horizon x joints.
            positions = positions.reshape(-1, len(self.joint_names))
        positions.flags.writeable = False
        object.__setattr__(self, "positions", positions)
        velocities = np.array(
            () if self.velocities is None else self.velocities, dtype=float, copy=True
        )
        if velocities.size and velocities.size == positions.size:
            velocities = velocities.reshape(positions.shape)
        velocities.flags.writeable = False
        object.__setattr__(self, "velocities", velocities)

    @property
    def horizon(self) -> int:
        return int(self.positions.shape[0]) if self.positions.ndim >= 1 else 0

    def time_of(self, k: int) -> float:
        """When action ``k`` applies [s]."""
        return self.stamp + self.start_offset + k * self.step_dt

    @property
    def end_time(self) -> float:
        """When the last action applies [s]."""
        return self.time_of(self.horizon - 1)

    def times(self) -> np.ndarray:
        """Application time of every action [s], shape (horizon,)."""
        return self.time_of(0) + self.step_dt * np.arange(self.horizon, dtype=float)

    def reordered(self, joint_names: Sequence[str]) -> Chunk:
        """The same chunk with columns in the order of ``joint_names``.

        Raises ``ValueError`` naming the joints that are missing from the chunk or that the
        chunk has but ``joint_names`` does not.
        """
        wanted = tuple(joint_names)
        if wanted == self.joint_names:
            return self
        if len(set(self.joint_names)) != len(self.joint_names):
            dupes = sorted({n for n in self.joint_names if self.joint_names.count(n) > 1})
            raise ValueError(f"chunk names joints more than once: {dupes}")
        missing = [n for n in wanted if n not in self.joint_names]
        unknown = [n for n in self.joint_names if n not in wanted]
        if missing or unknown:
            raise ValueError(f"chunk joints do not match: missing {missing}, unknown {unknown}")
        index = [self.joint_names.index(n) for n in wanted]
        return Chunk(
            stamp=self.stamp,
            start_offset=self.start_offset,
            step_dt=self.step_dt,
            joint_names=wanted,
            positions=self.positions[:, index],
            sequence=self.sequence,
            latency=self.latency,
            velocities=(
                self.velocities[:, index]
                if self.velocities.shape == self.positions.shape
                else self.velocities
            ),
        )
