"""Which ActionChunk a driver executes: the content of ``molmoact2_msgs/ChunkExecution`` (no ROS).

The driver builds a ``ChunkExecution`` from its executor and publishes it on
``~/chunk_execution``; the policy node reads it to condition real-time chunking on the chunk
the robot follows (``molmoact2_policy.rtc_feed``). Both sides share this one definition; the
message is filled and read by attribute (``fill_msg``, ``from_msg``), so this module imports no
message package.

A chunk is named by ``(sequence, stamp_ns)``: the sequence restarts with the policy node, the
capture stamp does not repeat. The driver's executor keeps chunk times as float seconds (good to
~0.24 us at today's epoch), so stamps are compared within ``STAMP_TOLERANCE_NS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NS_PER_S = 1_000_000_000
#: Stamps of the same chunk agree to within this after a float-seconds round trip [ns].
STAMP_TOLERANCE_NS = 1_000


def chunk_execution_qos() -> Any:
    """QoS of ``~/chunk_execution`` for its publishers and subscribers: reliable, transient
    local, depth 1. A state topic, latched as robot_state_publisher latches
    ``robot_description``: a subscriber starting late gets the current report at once."""
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(
        depth=1,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )


@dataclass(frozen=True)
class ChunkRef:
    """One ActionChunk, by its ``sequence`` and header stamp [ns]."""

    sequence: int
    stamp_ns: int

    def same_as(self, sequence: int, stamp_ns: int) -> bool:
        return self.sequence == int(sequence) and abs(self.stamp_ns - int(stamp_ns)) <= (
            STAMP_TOLERANCE_NS
        )

    @classmethod
    def from_seconds(cls, sequence: int, stamp: float) -> ChunkRef:
        return cls(int(sequence), round(stamp * NS_PER_S))


@dataclass(frozen=True)
class ChunkExecution:
    """The driver's report: its state, the chunk it runs, the one waiting, the last verdict."""

    stamp_ns: int  # driver time of the report
    state: str
    running: ChunkRef | None = None
    pending: ChunkRef | None = None
    last: ChunkRef | None = None  # the newest chunk received
    last_accepted: bool = False
    last_reject_reason: str = ""

    def following(self) -> ChunkRef | None:
        """The chunk the robot follows from its next action on: the pending one (it takes over
        at its first action) or else the running one; None while the driver runs no chunk."""
        return self.pending or self.running

    def same_content(self, other: ChunkExecution | None) -> bool:
        """Equal but for the report time (whether a new report says anything new)."""
        return other is not None and (
            self.state,
            self.running,
            self.pending,
            self.last,
            self.last_accepted,
            self.last_reject_reason,
        ) == (
            other.state,
            other.running,
            other.pending,
            other.last,
            other.last_accepted,
            other.last_reject_reason,
        )

    def fill_msg(self, msg: Any) -> Any:
        """Write into a ``molmoact2_msgs/ChunkExecution`` message; returns it."""
        _set_time(msg.header.stamp, self.stamp_ns)
        msg.state = self.state
        for prefix, ref in (("running", self.running), ("pending", self.pending)):
            setattr(msg, prefix, ref is not None)
            setattr(msg, f"{prefix}_sequence", ref.sequence if ref else 0)
            _set_time(getattr(msg, f"{prefix}_stamp"), ref.stamp_ns if ref else 0)
        msg.has_last = self.last is not None
        msg.last_sequence = self.last.sequence if self.last else 0
        _set_time(msg.last_stamp, self.last.stamp_ns if self.last else 0)
        msg.last_accepted = bool(self.last_accepted)
        msg.last_reject_reason = self.last_reject_reason
        return msg

    @classmethod
    def from_msg(cls, msg: Any) -> ChunkExecution:
        def ref(flag: bool, sequence: int, stamp: Any) -> ChunkRef | None:
            return ChunkRef(int(sequence), _time_ns(stamp)) if flag else None

        return cls(
            stamp_ns=_time_ns(msg.header.stamp),
            state=str(msg.state),
            running=ref(msg.running, msg.running_sequence, msg.running_stamp),
            pending=ref(msg.pending, msg.pending_sequence, msg.pending_stamp),
            last=ref(msg.has_last, msg.last_sequence, msg.last_stamp),
            last_accepted=bool(msg.last_accepted),
            last_reject_reason=str(msg.last_reject_reason),
        )


#: The latest time builtin_interfaces/Time holds (``int32 sec``, ``uint32 nanosec``).
MAX_TIME_NS = (2**31 - 1) * NS_PER_S + NS_PER_S - 1


def _set_time(stamp: Any, ns: int) -> None:
    # Clamped, not wrapped: a chunk stamped at the very end of int32 seconds comes back from the
    # executor's float seconds rounded up to 2**31 s, which the serializer would wrap to 1901
    # (and field checks, when enabled, refuse). Before the epoch reads as 0, as ROS time has none.
    ns = min(max(int(ns), 0), MAX_TIME_NS)
    stamp.sec, stamp.nanosec = ns // NS_PER_S, ns % NS_PER_S


def _time_ns(stamp: Any) -> int:
    return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)
