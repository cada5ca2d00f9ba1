"""The policy node with ``rtc: true``: each chunk starts with the previous one's executing rows.

A node process on the tiny checkpoint (config/yam.yaml values) and the synthetic robot. With
RTC the first ``delay_steps`` rows of chunk n+1 (at least one: the latency is never zero) are
chunk n resampled at chunk n+1's capture time, exactly.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from tests.ros.policy_node_harness import chunk_stamp_ns, running_robot, wait_chunks, yam_params

pytestmark = pytest.mark.ros


def _aligned(previous, stamp_ns: int) -> np.ndarray | None:
    """``previous`` sampled at the rows of a chunk captured at ``stamp_ns`` (None: ran out)."""
    joints = len(previous.joint_names)
    positions = np.asarray(previous.positions).reshape(previous.horizon, joints)
    start = chunk_stamp_ns(previous) / 1e9
    knots = start + previous.step_dt * np.arange(previous.horizon)
    new_start = stamp_ns / 1e9
    rows = int(np.floor((knots[-1] - new_start) / previous.step_dt + 1e-6)) + 1
    if rows <= 0:
        return None
    times = new_start + previous.step_dt * np.arange(min(rows, previous.horizon))
    return np.stack([np.interp(times, knots, positions[:, j]) for j in range(joints)], axis=-1)


def test_chunks_continue_the_previous_chunk_through_the_inference_delay(tmp_path):
    params = yam_params(rtc=True)
    with running_robot(params, tmp_path) as robot:
        chunks = wait_chunks(robot, 5, robot.now_ns(), seconds=60.0)
    # A chunk may legitimately be sampled free (the first one, or after the feed was cleared by
    # an instruction or reset), so not every pair must continue. A free chunk differs by orders
    # of 0.1; a continued one matched to 1e-9 on the developer machine but by 1e-5 in one CI
    # run (every pair alike: the resampling time, not the sampler; see the issue-19 note), so
    # 1e-4 still tells the two apart.
    errors = []
    for previous, chunk in itertools.pairwise(chunks):
        if chunk.sequence != previous.sequence + 1:
            continue
        expected = _aligned(previous, chunk_stamp_ns(chunk))
        if expected is None:
            continue  # inference took longer than a whole chunk: nothing to continue
        positions = np.asarray(chunk.positions).reshape(chunk.horizon, -1)
        errors.append(float(np.abs(positions[0] - expected[0]).max()))
    assert errors and min(errors) <= 1e-4, f"no chunk continued the previous one: {errors}"
