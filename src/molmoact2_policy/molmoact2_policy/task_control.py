"""When a ``~/run_task`` goal ends, and why: pure, clock-injected logic behind the action.

The ROS shell (``task_action``) feeds a ``TaskMonitor`` what it observes on every tick (policy
state, chunks published, the success detector, the driver's safety state) and ends the goal
with the monitor's verdict. Cancel and preemption arrive as ROS events and are decided there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from molmoact2_common.ros_params import topic_name_problem
from molmoact2_policy.policy_node_params import instruction_text_problem

# Names of RunTask.Result.OUTCOME_* in constant order (the constant is the index).
OUTCOMES = (
    "succeeded",
    "timed_out",
    "cancelled",
    "preempted",
    "safety_stop",
    "input_error",
    "rejected",
)
# Policy states that mean "the inputs or the model are failing" (PolicyStatus.state).
FAILING_STATES = frozenset({"stale_input", "error"})


def outcome_code(name: str) -> int:
    """RunTask.Result.OUTCOME_* value of an outcome name."""
    return OUTCOMES.index(name)


@dataclass(frozen=True)
class TaskGoal:
    """A RunTask goal as received (fields of RunTask.Goal)."""

    instruction: str
    max_duration: float = 0.0
    success_topic: str = ""

    def problem(self) -> str:
        """Why this goal cannot run (empty: it can)."""
        text = self.instruction.strip()
        if not text:
            return "instruction is empty"
        if instruction_text_problem(text):
            return instruction_text_problem(text)
        if not math.isfinite(self.max_duration) or self.max_duration < 0.0:
            return f"max_duration must be finite and >= 0 (0: no limit), got {self.max_duration}"
        if self.success_topic and topic_name_problem(self.success_topic):
            return f"success_topic: {topic_name_problem(self.success_topic)}"
        return ""


@dataclass(frozen=True)
class TaskEnd:
    """How a goal ended: an outcome name of ``OUTCOMES`` and a readable reason."""

    outcome: str
    message: str


class TaskMonitor:
    """Decides on each ``update`` whether the goal is over.

    Precedence when several things happen in one tick: a safety stop first (the robot's state
    matters more than the task's), then success, then failing inputs, then the time-out.
    Failing inputs end the goal only after ``input_error_grace`` seconds without recovery, so
    one stale frame does not abort a task.
    """

    def __init__(
        self,
        goal: TaskGoal,
        start_s: float,
        chunk_count_at_start: int,
        input_error_grace: float = 3.0,
    ) -> None:
        self.goal = goal
        self.start_s = start_s
        self._chunks_at_start = chunk_count_at_start
        self._grace = input_error_grace
        self._failing_since: float | None = None
        self.chunks_executed = 0
        self.elapsed = 0.0

    def update(
        self,
        now_s: float,
        *,
        policy_state: str,
        chunk_count: int,
        last_error: str = "",
        succeeded: bool = False,
        safety_stop: str = "",
    ) -> TaskEnd | None:
        """The end of the goal, or None while it runs on."""
        self.elapsed = max(0.0, now_s - self.start_s)
        self.chunks_executed = max(0, chunk_count - self._chunks_at_start)
        if safety_stop:
            return TaskEnd("safety_stop", safety_stop)
        if policy_state == "idle":
            # PolicyStatus "idle": the policy node left the active state (a lifecycle manager
            # deactivated it): no more chunks, so the goal ends and the driver is held,
            # instead of running on released until its time-out, or for ever.
            return TaskEnd("cancelled", "the policy node was deactivated")
        if succeeded:
            return TaskEnd("succeeded", f"{self.goal.success_topic} reported success")
        if policy_state in FAILING_STATES:
            if self._failing_since is None:
                self._failing_since = now_s
            elif now_s - self._failing_since >= self._grace:
                reason = last_error or policy_state
                return TaskEnd(
                    "input_error",
                    f"{policy_state} for {now_s - self._failing_since:.1f} s: {reason}",
                )
        else:
            self._failing_since = None
        if self.goal.max_duration > 0.0 and self.elapsed >= self.goal.max_duration:
            return TaskEnd("timed_out", f"max_duration {self.goal.max_duration:g} s reached")
        return None
