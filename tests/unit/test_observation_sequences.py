"""Any sequence of hostile inputs through ``ObservationAssembler`` against a reference model.

Cameras and joint-state topics as a user's own robot could feed them: bad frames, zero, past,
future and out-of-order stamps, joint states with missing, extra, repeated names, NaN/inf and
arrays of the wrong length, on two topics, interleaved in any order. After every input the
assembler's answer is compared with what the inputs allow: an observation only from each
camera's latest frame when it was good, every model joint's latest value from a topic whose
latest message was well formed, finite, fresh, within the skew; otherwise a rejection that
names the camera, joint or topic at fault.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from molmoact2_policy.observation import (
    NS_PER_S,
    Observation,
    ObservationAssembler,
    Rejection,
    joint_state_problem,
)

NOW = 1_700_000_000 * NS_PER_S + 123_456_789
MAX_AGE, MAX_SKEW = 0.5, 0.05
CAMERAS = ("top", "wrist")
JOINTS = ("j1", "j2", "gripper")
TOPICS = ("arm/joint_states", "gripper/joint_states")

# Capture stamps relative to NOW: fresh, just inside and outside the limits, zero, far off.
_OFFSETS_S = (0.0, -0.01, -0.04, -0.06, -0.49, -0.51, 0.3, 0.6, -1e6, 1e6)
_stamps = st.one_of(st.sampled_from([NOW + int(s * NS_PER_S) for s in _OFFSETS_S]), st.just(0))
_positions = st.one_of(
    st.floats(-4, 4),
    st.floats(-4, 4),
    st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1e308]),
)
_image_event = st.tuples(
    st.just("image"),
    st.sampled_from(CAMERAS),
    _stamps,
    st.sampled_from([True, True, True, False]),
    st.integers(0, 255),
)


@st.composite
def _joint_event(draw: st.DrawFn) -> tuple:
    """Mostly well-formed joint states (so observations get built), some of them broken."""
    names = draw(st.permutations([*JOINTS, "extra"]))[: draw(st.integers(0, 4))]
    positions = [draw(_positions) for _ in names]
    fault = draw(st.sampled_from(["", "", "", "short", "long", "repeat", "empty name"]))
    if fault == "short":
        positions = positions[:-1]
    elif fault == "long":
        positions.append(0.0)
    elif fault == "repeat" and names:
        names, positions = [*names, names[0]], [*positions, 1.0]
    elif fault == "empty name":
        names, positions = [*names, ""], [*positions, 2.0]
    vel_delta = draw(st.sampled_from([-1, 0, 0, 1]))
    return ("joints", draw(st.sampled_from(TOPICS)), draw(_stamps), names, positions, vel_delta)


_events = st.lists(st.one_of(_image_event, _joint_event()), max_size=25)


class _Reference:
    """What the inputs so far allow, computed without the assembler's code."""

    def __init__(self) -> None:
        self.frames: dict[str, tuple[int, bool, np.ndarray | None]] = {}
        self.topic_ok: dict[str, bool] = {}
        self.joints: dict[str, tuple[float, int]] = {}

    def image(self, camera: str, stamp: int, good: bool, image: np.ndarray) -> None:
        self.frames[camera] = (stamp, good, image if good else None)

    def joint_state(self, topic: str, stamp: int, names: list, positions: list, vel: list) -> None:
        ok = (
            len(positions) == len(names)
            and len(vel) in (0, len(names))
            and len(set(names)) == len(names)
        )
        self.topic_ok[topic] = ok
        if ok:
            for name, position in zip(names, positions, strict=True):
                if name in JOINTS:
                    self.joints[name] = (position, stamp)

    def fresh(self, stamp: int) -> bool:
        return abs(NOW - stamp) / NS_PER_S <= MAX_AGE

    def allows(self) -> bool:
        if set(self.frames) != set(CAMERAS) or not all(f[1] for f in self.frames.values()):
            return False
        if not all(self.topic_ok.values()) or set(self.joints) != set(JOINTS):
            return False
        if not all(math.isfinite(p) and self.fresh(s) for p, s in self.joints.values()):
            return False
        stamps = [f[0] for f in self.frames.values()]
        if not all(self.fresh(s) for s in stamps):
            return False
        return (max(stamps) - min(stamps)) / NS_PER_S <= MAX_SKEW


def _culprits(reference: _Reference) -> set[str]:
    """Names a rejection may give: every camera, joint and topic that is not as it should be."""
    names = {c for c in CAMERAS if c not in reference.frames or not reference.frames[c][1]}
    names |= {t for t, ok in reference.topic_ok.items() if not ok}
    names |= {j for j in JOINTS if j not in reference.joints}
    names |= {
        j
        for j, (p, s) in reference.joints.items()
        if not math.isfinite(p) or not reference.fresh(s)
    }
    names |= {c for c, f in reference.frames.items() if not reference.fresh(f[0])}
    if not names:  # only the skew is wrong: the reason names the cameras it is between
        names = set(CAMERAS)
    return names


@settings(max_examples=400, derandomize=True, deadline=None)
@given(events=_events)
def test_any_input_sequence_builds_only_what_its_latest_good_inputs_allow(events):
    assembler = ObservationAssembler(CAMERAS, JOINTS, TOPICS, MAX_AGE, MAX_SKEW)
    reference = _Reference()
    # From a complete, good observation: each hostile input may break it, a later one mend it.
    baseline = [
        ("image", "top", NOW, True, 1),
        ("image", "wrist", NOW, True, 2),
        ("joints", "arm/joint_states", NOW, ["j2", "j1"], [0.2, 0.1], 0),
        ("joints", "gripper/joint_states", NOW, ["gripper"], [0.5], -1),
    ]
    for event in baseline + events:
        if event[0] == "image":
            _, camera, stamp, good, value = event
            image = np.full((8, 8, 3), value, np.uint8)
            if good:
                assembler.add_image(camera, stamp, image)
            else:
                assembler.add_image_error(camera, stamp, "unsupported image encoding 'x'")
            reference.image(camera, stamp, good, image)
        else:
            _, topic, stamp, names, positions, vel_delta = event
            velocities = [] if vel_delta < 0 else [0.0] * (len(names) + vel_delta)
            error = assembler.add_joint_state(topic, stamp, names, positions, velocities)
            assert (error is None) == (joint_state_problem(names, positions, velocities) == "")
            assert error is None or topic in error
            reference.joint_state(topic, stamp, names, positions, velocities)

        built = assembler.build(NOW)
        if reference.allows():
            assert isinstance(built, Observation), built
            for camera in CAMERAS:
                stamp, _, image = reference.frames[camera]
                assert built.camera_stamps_ns[camera] == stamp
                assert built.images[camera] is image
            expected = [reference.joints[j][0] for j in JOINTS]
            assert built.state.tolist() == expected
            assert built.stamp_ns == min(f[0] for f in reference.frames.values())
        else:
            assert isinstance(built, Rejection), "an observation the inputs do not allow"
            assert any(repr(name) in built.reason for name in _culprits(reference)), built
