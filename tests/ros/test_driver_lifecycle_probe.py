"""Lifecycle transitions in odd orders from outside (lifecycle_msgs ChangeState, as a
lifecycle manager or ``ros2 lifecycle set`` sends them) against a sim driver, with its
services called in each state.

Found by the outside-in probe: a latched e-stop was silently cleared by deactivate -> cleanup
-> configure -> activate (a lifecycle manager's reset cycle); only ``~/reset`` may clear it.
An operator's ``~/hold(true)`` was dropped the same way (and by a reconnect:
tests/unit/test_hold_outlives_faults.py).
"""

from __future__ import annotations

import time
import uuid

import pytest

from tests.ros.driver_harness import running_driver

pytestmark = pytest.mark.ros


def _call(probe, client, request, timeout: float = 20.0):
    assert client.wait_for_service(timeout_sec=timeout)
    future = client.call_async(request)
    deadline = time.monotonic() + timeout
    while not future.done() and time.monotonic() < deadline:
        time.sleep(0.01)  # the rig's executor thread spins the probe
    assert future.done(), "service call timed out"
    return future.result()


def test_odd_transitions_are_refused_and_a_latched_estop_survives_cleanup(tmp_path):
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState
    from std_srvs.srv import SetBool, Trigger

    ns = f"/lc_{uuid.uuid4().hex[:8]}"
    with running_driver("so101", "so101_driver", {}, tmp_path, ns) as rig:
        probe = rig.probe
        change = probe.create_client(ChangeState, "so101_driver/change_state")
        state = probe.create_client(GetState, "so101_driver/get_state")
        estop = probe.create_client(Trigger, "so101_driver/estop")
        reset = probe.create_client(Trigger, "so101_driver/reset")
        hold = probe.create_client(SetBool, "so101_driver/hold")

        def transition(transition_id: int) -> bool:
            request = ChangeState.Request()
            request.transition.id = transition_id
            return _call(probe, change, request).success

        def label() -> str:
            return _call(probe, state, GetState.Request()).current_state.label

        # Transitions that do not exist from the current state: refused, nothing changes.
        for odd in (
            Transition.TRANSITION_ACTIVATE,
            Transition.TRANSITION_CONFIGURE,
            Transition.TRANSITION_CLEANUP,
        ):
            assert not transition(odd)
            assert label() == "active"
        assert _call(probe, estop, Trigger.Request()).success
        assert transition(Transition.TRANSITION_DEACTIVATE)
        assert not transition(Transition.TRANSITION_DEACTIVATE)
        assert transition(Transition.TRANSITION_CLEANUP)
        assert label() == "unconfigured"
        assert not transition(Transition.TRANSITION_ACTIVATE)
        assert not transition(Transition.TRANSITION_CLEANUP)
        assert transition(Transition.TRANSITION_CONFIGURE)
        assert transition(Transition.TRANSITION_ACTIVATE)
        assert label() == "active"
        # Still latched: the executor holds, hold(false) says why, only ~/reset clears it.
        assert rig.node._loop.executor.estopped
        answer = _call(probe, hold, SetBool.Request(data=False))
        assert not answer.success and "e-stop" in answer.message
        assert _call(probe, reset, Trigger.Request()).success
        assert not rig.node._loop.executor.estopped
        assert _call(probe, hold, SetBool.Request(data=False)).success


def test_a_requested_hold_survives_deactivate_and_activate(tmp_path):
    """~/hold(true) answered "holding"; a lifecycle manager's deactivate -> activate (or a
    cleanup cycle) then dropped it silently and the driver followed chunks again."""
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState
    from std_srvs.srv import SetBool

    ns = f"/lh_{uuid.uuid4().hex[:8]}"
    with running_driver("so101", "so101_driver", {}, tmp_path, ns) as rig:
        probe = rig.probe
        change = probe.create_client(ChangeState, "so101_driver/change_state")
        hold = probe.create_client(SetBool, "so101_driver/hold")

        def transition(transition_id: int) -> bool:
            request = ChangeState.Request()
            request.transition.id = transition_id
            return _call(probe, change, request).success

        # Without a hold request, reactivation follows chunks as before.
        assert transition(Transition.TRANSITION_DEACTIVATE)
        assert transition(Transition.TRANSITION_ACTIVATE)
        assert not rig.node._loop.executor.hold_requested
        assert _call(probe, hold, SetBool.Request(data=True)).success
        for cycle in (
            (Transition.TRANSITION_DEACTIVATE, Transition.TRANSITION_ACTIVATE),
            (
                Transition.TRANSITION_DEACTIVATE,
                Transition.TRANSITION_CLEANUP,
                Transition.TRANSITION_CONFIGURE,
                Transition.TRANSITION_ACTIVATE,
            ),
        ):
            for step in cycle:
                assert transition(step)
            assert rig.node._loop.executor.hold_requested, cycle
        answer = _call(probe, hold, SetBool.Request(data=False))
        assert answer.success and not rig.node._loop.executor.hold_requested


def test_hold_and_reset_while_inactive_mean_what_they_answered(tmp_path):
    """Outside-in probe finding: ~/hold(true) on an inactive driver answered "holding" and the
    activation dropped it (the arm followed chunks); hold(false) or ~/reset while inactive
    answered "following chunks" and the activation put the old hold back. Chunks sent while
    inactive are refused as such, with the reason on ~/chunk_execution."""
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState
    from std_srvs.srv import SetBool, Trigger

    from molmoact2_common.chunk_execution import chunk_execution_qos
    from molmoact2_msgs.msg import ActionChunk, ChunkExecution

    ns = f"/li_{uuid.uuid4().hex[:8]}"
    with running_driver("so101", "so101_driver", {}, tmp_path, ns) as rig:
        probe = rig.probe
        change = probe.create_client(ChangeState, "so101_driver/change_state")
        hold = probe.create_client(SetBool, "so101_driver/hold")
        reset = probe.create_client(Trigger, "so101_driver/reset")
        reports: list = []
        probe.create_subscription(
            ChunkExecution, "so101_driver/chunk_execution", reports.append, chunk_execution_qos()
        )
        chunks = probe.create_publisher(ActionChunk, "molmoact2_policy/action_chunk", 10)

        def transition(transition_id: int) -> bool:
            request = ChangeState.Request()
            request.transition.id = transition_id
            return _call(probe, change, request).success

        assert transition(Transition.TRANSITION_DEACTIVATE)
        assert _call(probe, hold, SetBool.Request(data=True)).success
        assert transition(Transition.TRANSITION_ACTIVATE)
        assert rig.node._loop.executor.hold_requested  # was dropped

        for release in (
            lambda: _call(probe, hold, SetBool.Request(data=False)),
            lambda: _call(probe, reset, Trigger.Request()),
        ):
            assert transition(Transition.TRANSITION_DEACTIVATE)
            answer = release()
            assert answer.success and "inactive" in answer.message, answer.message
            assert "following" not in answer.message, answer.message
            msg = ActionChunk()
            msg.sequence = 7
            msg.joint_names = list(rig.node.params.joint_names)
            stamp = probe.get_clock().now()
            msg.header.stamp = stamp.to_msg()
            msg.step_dt = 1.0 / 30.0
            msg.horizon = 2
            msg.positions = list(rig.node._loop.executor.last_command) * 2
            before = len(reports)
            chunks.publish(msg)
            deadline = time.monotonic() + 20.0
            while time.monotonic() < deadline and not any(
                r.has_last and r.last_sequence == 7 for r in reports[before:]
            ):
                time.sleep(0.01)
            verdict = [r for r in reports[before:] if r.has_last and r.last_sequence == 7][-1]
            assert not verdict.last_accepted
            assert verdict.last_reject_reason.startswith("inactive:"), verdict.last_reject_reason
            assert transition(Transition.TRANSITION_ACTIVATE)
            assert not rig.node._loop.executor.hold_requested  # was put back
            assert _call(probe, hold, SetBool.Request(data=True)).success
