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
