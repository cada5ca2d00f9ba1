"""The bridge's last check on every message it sends (``bridge_guard.outgoing_problem``).

The driver node sends every command through one ``CommandGuard``; the bridge relied on the
chunk guard and the stop's construction each keeping the limits, with nothing between them
and the controller. Now every trajectory and gripper command passes ``outgoing_problem``:
a hypothesis property over well-formed messages broken in one field each.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hw_drivers.bridge_guard import OutgoingLimits, outgoing_problem
from hw_drivers.trajectory import BridgeOutput, GripperCommand, JointTrajectoryData, TrajectoryPoint

JOINTS = ("c1", "c2", "c3")
LOWER = np.array([-1.0, -2.0, 0.0])
UPPER = np.array([1.0, 2.0, 3.0])
VMAX = np.array([1.0, 2.0, 0.5])
LIMITS = OutgoingLimits(JOINTS, LOWER, UPPER, VMAX, ("g",), np.array([0.0]), np.array([1.0]))
BREAKS = (
    "nan_position",
    "inf_velocity",
    "below",
    "above",
    "too_fast",
    "moving_end",
    "time_order",
    "time_zero",
    "time_nan",
    "renamed",
    "reordered",
    "short_row",
    "no_points",
    "grip_nan",
    "grip_outside",
    "grip_renamed",
)


@st.composite
def outputs(draw):
    n = draw(st.integers(1, 6))
    times = np.cumsum(draw(st.lists(st.floats(0.01, 0.3), min_size=n, max_size=n)))
    unit = st.floats(0.0, 1.0)
    points = []
    for k in range(n):
        p = LOWER + np.array([draw(unit) for _ in JOINTS]) * (UPPER - LOWER)
        v = None
        if draw(st.booleans()) or k == n - 1:
            v = (
                np.zeros(3)
                if k == n - 1
                else np.array([draw(st.floats(-1, 1)) for _ in JOINTS]) * VMAX
            )
        points.append([p, v, float(times[k])])
    if any(v is None for _, v, _ in points):
        for point in points:
            point[1] = None  # the bridge sends velocities on every point or on none
    grip = GripperCommand(("g",), np.array([draw(unit)]), float(times[0]))
    return points, grip


def build(points, grip, names=JOINTS):
    traj = JointTrajectoryData(
        tuple(names), tuple(TrajectoryPoint(np.asarray(p), v, t) for p, v, t in points)
    )
    return BridgeOutput(traj, grip, 0)


@settings(max_examples=400, derandomize=True, database=None, deadline=None)
@given(out=outputs(), broken=st.sampled_from(BREAKS), at=st.integers(0, 5), joint=st.integers(0, 2))
def test_a_message_broken_in_any_field_is_never_sent_and_a_whole_one_always_is(
    out, broken, at, joint
):
    points, grip = out
    assert outgoing_problem(build(points, grip), LIMITS) == ""
    k = at % len(points)
    p = [[np.array(q, dtype=float), None if v is None else np.array(v), t] for q, v, t in points]
    names = JOINTS
    if broken == "nan_position":
        p[k][0][joint] = math.nan
    elif broken == "inf_velocity":
        p[k][1] = np.zeros(3) if p[k][1] is None else p[k][1]
        p[k][1][joint] = math.inf
    elif broken == "below":
        p[k][0][joint] = LOWER[joint] - 1e-3
    elif broken == "above":
        p[k][0][joint] = UPPER[joint] + 1e-3
    elif broken == "too_fast":
        p[k][1] = np.zeros(3)
        p[k][1][joint] = -VMAX[joint] * 1.01
    elif broken == "moving_end":
        p[-1][1] = np.zeros(3)
        p[-1][1][joint] = 0.1
    elif broken == "time_order":
        if len(p) < 2:
            p.append([p[0][0], p[0][1], p[0][2]])
        else:
            p[k][2] = p[k - 1][2] if k > 0 else p[1][2]
    elif broken == "time_zero":
        p[0][2] = 0.0
    elif broken == "time_nan":
        p[k][2] = math.nan
    elif broken == "renamed":
        names = (*JOINTS[:joint], "other", *JOINTS[joint + 1 :])
    elif broken == "reordered":
        names = (JOINTS[1], JOINTS[0], JOINTS[2])
    elif broken == "short_row":
        p[k][0] = p[k][0][:2]
    elif broken == "no_points":
        p = []
    elif broken == "grip_nan":
        grip = GripperCommand(("g",), np.array([math.nan]), grip.time_from_start)
    elif broken == "grip_outside":
        grip = GripperCommand(("g",), np.array([1.01]), grip.time_from_start)
    elif broken == "grip_renamed":
        grip = GripperCommand(("h",), grip.positions, grip.time_from_start)
    assert outgoing_problem(build(p, grip, names), LIMITS) != "", broken


def test_a_ramp_in_from_outside_the_limits_may_lead_back_but_never_further_out():
    here = np.array([1.2, 0.0, 0.0])  # the arm measured past c1's upper limit
    back = [[np.array([1.1, 0.0, 0.0]), None, 0.1], [np.array([0.9, 0.0, 0.0]), None, 0.2]]
    assert outgoing_problem(build(back, None), LIMITS, here) == ""
    assert outgoing_problem(build(back, None), LIMITS) != ""  # no measured pose: the limits
    out = [[np.array([1.3, 0.0, 0.0]), None, 0.1]]
    assert outgoing_problem(build(out, None), LIMITS, here) != ""
