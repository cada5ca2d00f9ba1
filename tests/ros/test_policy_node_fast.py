"""The policy node with ``mode: fast`` (OpenFAST tokens) publishes the FastPolicy's chunks."""

from __future__ import annotations

import numpy as np
import pytest

from tests.ros.policy_node_harness import (
    chunk_stamp_ns,
    running_robot,
    yam_params,
)

pytestmark = pytest.mark.ros


def test_fast_mode_node_publishes_the_fast_policys_chunks(tmp_path):
    import torch

    from molmoact2_policy.model.fast_policy import FastPolicy
    from molmoact2_policy.model.loader import load_policy

    params = yam_params(mode="fast")
    # Cold start (process, model, discovery) plus one token run of the tiny model.
    with running_robot(params, tmp_path, first_chunk_s=90.0) as robot:
        pass

    chunk = robot.chunks[0]
    joints = list(params["joint_names"])
    assert chunk.mode == "fast" and list(chunk.joint_names) == joints
    assert chunk.horizon == 30 and len(chunk.positions) == 30 * len(joints)
    positions = np.asarray(chunk.positions).reshape(30, len(joints))

    torch.set_num_threads(1)
    reference = load_policy(
        "tiny", params["embodiment"], mode="fast", seed=params["seed"], joint_names=joints
    )
    assert isinstance(reference, FastPolicy)
    frame = robot.frames[chunk_stamp_ns(chunk)]
    # The joint state paired with these images was published at most a few frames away.
    nearby = sorted(
        (i for i in range(frame.index - 3, frame.index + 4) if i in robot.states),
        key=lambda i: abs(i - frame.index),
    )
    errors = []
    for index in nearby:
        expected = reference.act(frame.images, robot.states[index], params["instruction"])
        errors.append(float(np.abs(expected.positions - positions).max()))
        if errors[-1] <= 1e-9:
            break
    assert min(errors) <= 1e-9, f"no nearby state reproduces the fast chunk: {errors}"
