"""The policy node's factory: remote settings reach the client, bad settings are named."""

from __future__ import annotations

import pytest

from molmoact2_policy.policy_factory import PolicyLoadError, make_policy
from molmoact2_policy.policy_node_params import PolicyNodeParams

SO101 = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")


@pytest.mark.parametrize("transport", ["http", "ws"])
def test_remote_params_reach_the_client(transport):
    params = PolicyNodeParams(
        embodiment="so100_101", joint_names=SO101, inference="remote",
        server_url="http://127.0.0.1:9", server_token="secret", request_timeout=0.3,
        image_encoding="raw", server_transport=transport, remote_image_size=224,
    )
    policy = make_policy(params, allow_test_override=False)
    try:
        assert policy.transport == transport and policy.image_size == 224
        assert policy.metadata()["transport"] == transport
        assert policy.joint_names == SO101
    finally:
        policy.close()


def test_unknown_embodiment_is_a_load_error():
    params = PolicyNodeParams(embodiment="ur5", joint_names=SO101)
    with pytest.raises(PolicyLoadError, match="unknown embodiment 'ur5'"):
        make_policy(params, allow_test_override=False)


def test_executor_param_is_checked():
    base = PolicyNodeParams(embodiment="so100_101", joint_names=SO101)
    assert not [p for p in base.validate() if "executor" in p]  # default 'events'
    problems = PolicyNodeParams(embodiment="so100_101", joint_names=SO101, executor="multi")
    assert "executor 'multi' is not one of events, single" in problems.validate()


@pytest.mark.parametrize("device", ["tpu", "cuda:", "cuda:x", "CPU", "", " cpu"])
def test_a_device_torch_would_refuse_is_a_parameter_problem(device):
    """Refused with the other parameters (the launch's config check), not at configure once
    the graph runs; a remote policy has no local device to check."""
    local = PolicyNodeParams(embodiment="so100_101", joint_names=SO101, device=device)
    assert f"device {device!r} is not cpu, cuda or cuda:<index>" in local.validate()
    remote = PolicyNodeParams(
        embodiment="so100_101", joint_names=SO101, device=device, inference="remote",
        server_url="http://127.0.0.1:9",
    )  # fmt: skip
    assert not [p for p in remote.validate() if "device" in p]
    for fine in ("cpu", "cuda", "cuda:1"):
        fine_params = PolicyNodeParams(embodiment="so100_101", joint_names=SO101, device=fine)
        assert not [p for p in fine_params.validate() if "device" in p]
