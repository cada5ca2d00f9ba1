"""Remote inference: the policy node refuses an instruction spelling one of the server's
control tokens where it enters (``~/set_instruction``), with the reason, and keeps running
the previous instruction.

Before, the remote client accepted every instruction (the tokenizer is the server's): the node
took it and every inference after it failed with the server's 400. Our server now states the
tokens in ``/healthz`` and the client checks against them (tests/unit/test_instruction_check.py
covers the client on its own; this is the node's entry point over a real server).

One policy-node process with ``inference: remote`` against our server (``create_app``) over
the fake policy, which states and refuses what the tiny model does.
"""

from __future__ import annotations

import pytest

from molmoact2_common.embodiments import get_embodiment
from tests.ros.policy_node_harness import running_robot, wait_chunks, yam_params
from tests.ros.test_instruction_refusal import BAD, TOKEN, _set_instruction_service

pytestmark = pytest.mark.ros


def test_set_instruction_refuses_what_the_server_would(tmp_path):
    from molmoact2_policy.remote.server import create_app
    from tests.remote_fakes import FakePolicy, ServerThread

    fake = FakePolicy(get_embodiment("yam_bimanual"))
    with ServerThread(create_app(fake, warmup=False)) as server:
        params = yam_params(
            inference="remote",
            server_url=server.url,
            request_timeout=5.0,
            instruction="stack the cups",
        )
        with running_robot(params, tmp_path) as robot:
            served = fake.calls
            answer = _set_instruction_service(robot, BAD)
            assert not answer.accepted and TOKEN in answer.message, answer
            chunks = wait_chunks(robot, 2, robot.now_ns())
            assert chunks[-1].instruction == "stack the cups"  # the previous one still runs
            assert fake.calls > served  # and inference goes on: no 400s in between
            answer = _set_instruction_service(robot, "pour the water")
            assert answer.accepted, answer
            chunks = wait_chunks(robot, 2, robot.now_ns())
            assert chunks[-1].instruction == "pour the water"
