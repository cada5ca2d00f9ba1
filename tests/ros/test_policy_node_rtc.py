"""The policy node with ``rtc: true``: each chunk starts with the previous one's executing rows.

A node process on the tiny checkpoint (config/yam.yaml values) and the synthetic robot. With
RTC the first ``delay_steps`` rows of chunk n+1 (at least one: the latency is never zero) are
chunk n resampled at chunk n+1's capture time, exactly.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from tests.ros.policy_node_harness import chunk_stamp_ns, running_robot, wait_chunks, yam_params

pytestmark = pytest.mark.ros


def _aligned(previous, stamp_ns: int) -> np.ndarray | None:
    """Row 0 of a chunk captured at ``stamp_ns``, taken from ``previous`` (None: ran out).

    In exact arithmetic from the stamps' integer difference: absolute times as float seconds
    are only good to 0.24 us, which is ~1e-5 of a step (the tolerance this test once needed).
    """
    joints = len(previous.joint_names)
    positions = np.asarray(previous.positions).reshape(previous.horizon, joints)
    row = Fraction(stamp_ns - chunk_stamp_ns(previous), 10**9) / Fraction(previous.step_dt)
    if row > previous.horizon - 1:
        return None
    low = math.floor(row)
    if row == low:
        return positions[low].copy()
    a = np.array([Fraction(x) for x in positions[low]])
    b = np.array([Fraction(x) for x in positions[low + 1]])
    return np.array([float(x) for x in a + (row - low) * (b - a)])


def test_chunks_continue_the_previous_chunk_through_the_inference_delay(tmp_path):
    params = yam_params(rtc=True)
    with running_robot(params, tmp_path) as robot:
        chunks = wait_chunks(robot, 5, robot.now_ns(), seconds=60.0)
    # A chunk may legitimately be sampled free (the first one, or after the feed was cleared by
    # an instruction or reset), so not every pair must continue; a free chunk differs by orders
    # of 0.1. A continued row is the previous chunk at that time: exact up to float rounding of
    # the interpolation (and bit for bit on the old chunk's grid, tests/unit/test_rtc_feed.py).
    errors = []
    for previous, chunk in itertools.pairwise(chunks):
        if chunk.sequence != previous.sequence + 1:
            continue
        expected = _aligned(previous, chunk_stamp_ns(chunk))
        if expected is None:
            continue  # inference took longer than a whole chunk: nothing to continue
        positions = np.asarray(chunk.positions).reshape(chunk.horizon, -1)
        errors.append(float(np.abs(positions[0] - expected).max()))
    assert errors and min(errors) <= 1e-9, f"no chunk continued the previous one: {errors}"
