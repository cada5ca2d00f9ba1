"""Observation synchronisation for the policy node: latest input per source, checked by stamp.

Pure and clock-free: every stamp (capture time from the message header) and ``now`` are passed
in as integer nanoseconds, so a chunk's header can carry a camera's stamp bit for bit and tests
need no clock. Inputs are judged by capture stamps, never by arrival time: a frame that sat in a
queue for 0.3 s is 0.3 s old when it arrives.

The observation's stamp is the *oldest* camera stamp: the chunk cannot reflect anything the
robot did after that moment, so downstream executors that skip already-elapsed rows
(``stamp + start_offset + k * step_dt``) must count from it; choosing a newer stamp would make
stale rows look current.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

NS_PER_S = 1_000_000_000

# Rejection kinds, matching PolicyStatus.state values.
WAITING = "waiting_for_inputs"
STALE = "stale_input"
ERROR = "error"


@dataclass(frozen=True)
class Observation:
    """One synchronised set of inputs, ready for ``Policy.act``."""

    stamp_ns: int  # oldest camera capture stamp
    images: Mapping[str, np.ndarray]  # camera -> HxWx3 uint8 RGB
    state: np.ndarray  # (len(joint_names),) float64 in the configured joint order
    camera_stamps_ns: Mapping[str, int]
    joint_stamps_ns: Mapping[str, int]  # joint -> stamp of the message it came from

    @property
    def stamp(self) -> float:
        return self.stamp_ns / NS_PER_S

    @property
    def input_key(self) -> tuple[int, ...]:
        """Identical for two observations built from exactly the same messages."""
        return tuple(self.camera_stamps_ns.values()) + tuple(self.joint_stamps_ns.values())

    @property
    def camera_key(self) -> tuple[int, ...]:
        """Which frames this observation shows: the camera stamps in camera order."""
        return tuple(self.camera_stamps_ns.values())


def is_new_camera_set(camera_key: Sequence[int], previous: Sequence[int] | None) -> bool:
    """True when every camera shows a different frame than in ``previous`` (or there is none).

    The policy node infers once per new camera set, never on a joint state or on the first
    camera of a set alone: synchronised cameras arrive a few ms apart and joint states arrive
    at the driver's rate, and starting the model on either keeps the (single) inference slot
    busy with frames that are already superseded when the rest of the set lands, which made
    every chunk wait for one extra model run. "Different", not "newer": a clock that jumps
    back (sim time reset, bag loop) must not stop inference.
    """
    if previous is None or len(previous) != len(camera_key):
        return True
    return all(stamp != old for stamp, old in zip(camera_key, previous, strict=True))


@dataclass(frozen=True)
class Rejection:
    """Why no observation can be built now; ``kind`` is WAITING, STALE or ERROR."""

    kind: str
    reason: str


@dataclass(frozen=True)
class InputStatus:
    """Age of one input for status reporting (``age`` NaN when nothing arrived yet)."""

    name: str
    age: float
    ok: bool


@dataclass
class _CameraSlot:
    stamp_ns: int | None = None
    image: np.ndarray | None = None
    error: str = ""  # non-empty: the latest message was unusable


@dataclass
class _JointTopicSlot:
    stamp_ns: int | None = None
    error: str = ""


@dataclass
class _JointValue:
    position: float
    stamp_ns: int
    topic: str


@dataclass
class ObservationAssembler:
    """Keeps the latest message per input and builds an ``Observation`` when all agree."""

    camera_names: Sequence[str]
    joint_names: Sequence[str]
    joint_topics: Sequence[str]
    max_age: float  # seconds
    max_skew: float  # seconds, between camera stamps
    _cameras: dict[str, _CameraSlot] = field(init=False)
    _topics: dict[str, _JointTopicSlot] = field(init=False)
    _joints: dict[str, _JointValue] = field(init=False)
    _joint_set: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        self._joint_set = frozenset(self.joint_names)
        self.clear()

    def clear(self) -> None:
        """Forget every input (after a reset or on deactivation)."""
        self._cameras = {name: _CameraSlot() for name in self.camera_names}
        self._topics = {topic: _JointTopicSlot() for topic in self.joint_topics}
        self._joints = {}

    # ---- inputs -------------------------------------------------------------------------

    def add_image(self, camera: str, stamp_ns: int, image: np.ndarray) -> None:
        """Record a converted RGB frame of ``camera`` captured at ``stamp_ns``."""
        slot = self._cameras[camera]
        slot.stamp_ns, slot.image, slot.error = int(stamp_ns), image, ""

    def add_image_error(self, camera: str, stamp_ns: int, message: str) -> None:
        """Record that the latest frame of ``camera`` was unusable; it blocks inference."""
        slot = self._cameras[camera]
        slot.stamp_ns, slot.image, slot.error = int(stamp_ns), None, message

    def add_joint_state(
        self,
        topic: str,
        stamp_ns: int,
        names: Sequence[str],
        positions: Sequence[float],
        velocities: Sequence[float] = (),
        efforts: Sequence[float] = (),
    ) -> str | None:
        """Merge a JointState by name; returns an error message if the message is malformed.

        Joints not in ``joint_names`` are ignored (a driver may publish more joints than the
        model uses). A malformed message is dropped whole and blocks inference until the topic
        sends a good one: positions, velocities or efforts whose length is not the number of
        names (sensor_msgs/JointState: every array has one entry per name, velocity and effort
        may be empty), or a name given twice (which of its values is the joint's is a guess).
        """
        slot = self._topics.setdefault(topic, _JointTopicSlot())
        stamp_ns = int(stamp_ns)
        slot.stamp_ns = stamp_ns
        slot.error = joint_state_problem(names, positions, velocities, efforts)
        if slot.error:
            slot.error = f"joint states on {topic!r}: {slot.error}"
            return slot.error
        for name, position in zip(names, positions, strict=True):
            if name in self._joint_set:
                self._joints[name] = _JointValue(float(position), stamp_ns, topic)
        return None

    # ---- building -----------------------------------------------------------------------

    def _age_problem(self, what: str, stamp_ns: int, now_ns: int) -> Rejection | None:
        age = (now_ns - stamp_ns) / NS_PER_S
        if age > self.max_age:
            return Rejection(STALE, f"{what} is stale: {age:.2f} s > {self.max_age:g} s")
        if age < -self.max_age:
            return Rejection(
                STALE,
                f"{what} stamp is {-age:.2f} s in the future (clocks out of sync?)",
            )
        return None

    def build(self, now_ns: int) -> Observation | Rejection:
        """The observation at ``now_ns``, or the first reason there is none."""
        now_ns = int(now_ns)
        for name, slot in self._cameras.items():
            if slot.error:
                return Rejection(ERROR, f"camera {name!r}: {slot.error}")
            if slot.image is None or slot.stamp_ns is None:
                return Rejection(WAITING, f"camera {name!r}: no image received yet")
        for slot in self._topics.values():
            if slot.error:
                return Rejection(ERROR, slot.error)
        state = np.empty(len(self.joint_names), dtype=np.float64)
        joint_stamps: dict[str, int] = {}
        for index, name in enumerate(self.joint_names):
            value = self._joints.get(name)
            if value is None:
                return Rejection(
                    WAITING,
                    f"joint {name!r} missing (not in any of {', '.join(self.joint_topics)})",
                )
            if not math.isfinite(value.position):
                label = "NaN" if math.isnan(value.position) else str(value.position)
                return Rejection(ERROR, f"{label} in joint {name!r} (from {value.topic!r})")
            state[index] = value.position
            joint_stamps[name] = value.stamp_ns
        for name, slot in self._cameras.items():
            problem = self._age_problem(f"camera {name!r}", slot.stamp_ns, now_ns)
            if problem:
                return problem
        for name, stamp_ns in joint_stamps.items():
            problem = self._age_problem(f"joint {name!r}", stamp_ns, now_ns)
            if problem:
                return problem
        camera_stamps = {name: slot.stamp_ns for name, slot in self._cameras.items()}
        oldest = min(camera_stamps, key=camera_stamps.__getitem__)
        newest = max(camera_stamps, key=camera_stamps.__getitem__)
        skew = (camera_stamps[newest] - camera_stamps[oldest]) / NS_PER_S
        if skew > self.max_skew:
            return Rejection(
                STALE,
                f"camera skew {skew:.3f} s > {self.max_skew:g} s between {oldest!r} and {newest!r}",
            )
        return Observation(
            stamp_ns=camera_stamps[oldest],
            images={name: slot.image for name, slot in self._cameras.items()},
            state=state,
            camera_stamps_ns=camera_stamps,
            joint_stamps_ns=joint_stamps,
        )

    def input_status(self, now_ns: int) -> list[InputStatus]:
        """Age and health of every camera and joint-state topic, for ~/status (an input is ok
        only while it is fresh: one that stopped reads not ok once older than ``max_age``)."""
        out: list[InputStatus] = []
        slots = [*self._cameras.items(), *self._topics.items()]
        for name, slot in slots:
            age = _age(slot.stamp_ns, now_ns)
            out.append(InputStatus(name, age, _ok(slot) and abs(age) <= self.max_age))
        return out


def joint_state_problem(
    names: Sequence[str],
    positions: Sequence[float],
    velocities: Sequence[float] = (),
    efforts: Sequence[float] = (),
) -> str:
    """Why a sensor_msgs/JointState's layout is unusable ('' when it is fine)."""
    count = len(names)
    if len(positions) != count:
        return f"{count} names but {len(positions)} positions"
    for field_name, values in (("velocities", velocities), ("efforts", efforts)):
        if len(values) not in (0, count):
            return f"{count} names but {len(values)} {field_name} (must be {count} or none)"
    if len(set(names)) != count:
        twice = sorted(name for name, times in Counter(names).items() if times > 1)
        return f"joint names given more than once: {twice}"
    return ""


def _age(stamp_ns: int | None, now_ns: int) -> float:
    return math.nan if stamp_ns is None else (now_ns - stamp_ns) / NS_PER_S


def _ok(slot: _CameraSlot | _JointTopicSlot) -> bool:
    return slot.stamp_ns is not None and not slot.error


def stamp_to_ns(sec: int, nanosec: int) -> int:
    """builtin_interfaces/Time fields -> integer nanoseconds."""
    return int(sec) * NS_PER_S + int(nanosec)


def ns_to_stamp(stamp_ns: int) -> tuple[int, int]:
    """Integer nanoseconds -> (sec, nanosec) for builtin_interfaces/Time."""
    sec, nanosec = divmod(int(stamp_ns), NS_PER_S)
    return sec, nanosec
