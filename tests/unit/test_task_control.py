"""When a ~/run_task goal ends (pure TaskMonitor) and which goals cannot start."""

from __future__ import annotations

import math

import pytest

from molmoact2_policy.task_control import OUTCOMES, TaskGoal, TaskMonitor, outcome_code


def test_outcome_codes_match_the_action_constants():
    from molmoact2_msgs.action import RunTask

    for name in OUTCOMES:
        assert getattr(RunTask.Result, f"OUTCOME_{name.upper()}") == outcome_code(name)


@pytest.mark.parametrize(
    ("goal", "expected"),
    [
        (TaskGoal("pick up the cup", 10.0), ""),
        (TaskGoal("   ", 10.0), "instruction is empty"),
        (TaskGoal("x" * 2001, 10.0), "at most 2000"),
        (TaskGoal("go", -1.0), "max_duration"),
        (TaskGoal("go", math.nan), "max_duration"),
        (TaskGoal("go", math.inf), "max_duration"),
    ],
)
def test_goal_problems(goal, expected):
    problem = goal.problem()
    assert (expected in problem) if expected else problem == ""


def run(monitor, now, **kw):
    kw.setdefault("policy_state", "running")
    kw.setdefault("chunk_count", 0)
    return monitor.update(now, **kw)


def test_times_out_at_max_duration_and_counts_chunks_of_this_goal_only():
    monitor = TaskMonitor(TaskGoal("go", 2.0), start_s=100.0, chunk_count_at_start=7)
    assert run(monitor, 101.0, chunk_count=9) is None
    assert monitor.chunks_executed == 2 and monitor.elapsed == pytest.approx(1.0)
    end = run(monitor, 102.0, chunk_count=12)
    assert end.outcome == "timed_out" and "2 s" in end.message
    assert monitor.chunks_executed == 5


def test_zero_duration_never_times_out():
    monitor = TaskMonitor(TaskGoal("go", 0.0), start_s=0.0, chunk_count_at_start=0)
    assert run(monitor, 1e6) is None


def test_success_ends_the_goal_and_safety_stop_wins_over_it():
    goal = TaskGoal("go", 5.0, "/done")
    assert run(TaskMonitor(goal, 0.0, 0), 1.0, succeeded=True).outcome == "succeeded"
    end = run(TaskMonitor(goal, 0.0, 0), 6.0, succeeded=True, safety_stop="e-stop latched")
    assert end.outcome == "safety_stop" and end.message == "e-stop latched"


def test_failing_inputs_end_the_goal_only_after_the_grace_period_without_recovery():
    monitor = TaskMonitor(TaskGoal("go", 0.0), 0.0, 0, input_error_grace=3.0)
    assert run(monitor, 1.0, policy_state="stale_input") is None
    assert run(monitor, 3.5, policy_state="stale_input") is None  # 2.5 s failing
    assert run(monitor, 3.6, policy_state="running") is None  # recovered: the clock restarts
    assert run(monitor, 4.0, policy_state="error") is None
    end = run(monitor, 7.0, policy_state="error", last_error="camera 'top': bad encoding")
    assert end.outcome == "input_error" and "bad encoding" in end.message


def test_waiting_for_inputs_is_not_a_failure():
    monitor = TaskMonitor(TaskGoal("go", 0.0), 0.0, 0, input_error_grace=1.0)
    assert run(monitor, 0.5, policy_state="waiting_for_inputs") is None
    assert run(monitor, 50.0, policy_state="waiting_for_inputs") is None


def test_a_deactivated_policy_ends_the_goal():
    # PolicyStatus "idle" means the node is not active: no chunk will come (outside-in probe:
    # the goal ran on with the driver released until its time-out, or for ever with 0).
    monitor = TaskMonitor(TaskGoal("go", 0.0), start_s=0.0, chunk_count_at_start=0)
    assert monitor.update(1.0, policy_state="running", chunk_count=3) is None
    end = monitor.update(1.1, policy_state="idle", chunk_count=3)
    assert end.outcome == "cancelled" and "deactivated" in end.message
