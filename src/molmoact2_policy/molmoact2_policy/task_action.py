"""``~/run_task`` (molmoact2_msgs/action/RunTask) on the policy node: a task as a ROS action.

A goal sets the instruction, releases the driver's hold and lets the policy run until the
``TaskMonitor`` (pure, ``task_control``) ends it, or the client cancels, or a newer goal
preempts it. On every end but preemption the node stops inferring (instruction cleared) and
asks the driver to hold (``<driver_node>/hold``, std_srvs/SetBool) before the result is sent,
so a client that has its result knows the arm is holding. The topic/service interface
(``~/instruction``, ``~/set_instruction``) is unchanged for simple use.

A goal that cannot start (empty instruction or one the policy refuses, e-stop latched, driver
refusing to resume) is accepted and ends at once with ``OUTCOME_REJECTED`` and the reason: a
plain ROS goal rejection carries no reason for the client.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.task import Future

from molmoact2_policy.task_control import TaskEnd, TaskGoal, TaskMonitor, outcome_code

TICK_RATE_HZ = 20.0  # end conditions are checked and feedback published this often
FEEDBACK_EVERY = 4  # ticks between feedback messages (5 Hz)
HOLD_TIMEOUT_S = 2.0  # a driver that does not answer ~/hold in this time is reported


@dataclass
class _Goal:
    handle: Any
    goal: TaskGoal
    monitor: TaskMonitor | None = None
    end: TaskEnd | None = None
    done: Future = field(default_factory=Future)
    succeeded: bool = False
    success_sub: Any = None
    ticks: int = 0

    def finish(self, end: TaskEnd) -> None:
        if self.end is None:
            self.end = end
        if not self.done.done():
            self.done.set_result(True)


class RunTaskServer:
    """The action server, attached to a ``PolicyNode`` (composition: the node stays thin)."""

    def __init__(self, node: Any, driver_node: str, input_error_grace: float = 3.0) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from std_srvs.srv import SetBool

        from molmoact2_msgs.action import RunTask

        self._node = node
        self._grace = input_error_grace
        self._active: _Goal | None = None
        self._driver_stop = ""
        group = ReentrantCallbackGroup()  # the execute coroutines and the tick interleave
        self._group = group
        self._hold = (
            node.create_client(SetBool, f"{driver_node}/hold", callback_group=group)
            if driver_node
            else None
        )
        namespace = node.get_namespace().rstrip("/")
        self._driver_diag_name = (
            f"{driver_node if driver_node.startswith('/') else namespace + '/' + driver_node}: "
            "driver"
        )
        if driver_node:
            node.create_subscription(
                DiagnosticArray, "/diagnostics", self._on_diagnostics, 10, callback_group=group
            )
        self._server = ActionServer(
            node,
            RunTask,
            "~/run_task",
            execute_callback=self._execute,
            goal_callback=lambda _request: GoalResponse.ACCEPT,
            handle_accepted_callback=self._on_accepted,
            cancel_callback=self._on_cancel,
            callback_group=group,
        )
        node.create_timer(1.0 / TICK_RATE_HZ, self._tick, callback_group=group)

    def destroy(self) -> None:
        active = self._active
        if active is not None:
            active.finish(TaskEnd("cancelled", "policy node shutting down"))
        self._server.destroy()

    # ---- goal lifecycle -----------------------------------------------------------------

    def _on_accepted(self, handle: Any) -> None:
        previous, self._active = self._active, None
        if previous is not None:
            previous.finish(TaskEnd("preempted", "preempted by a newer goal"))
        request = handle.request
        self._active = _Goal(
            handle, TaskGoal(request.instruction, request.max_duration, request.success_topic)
        )
        handle.execute()

    def _on_cancel(self, handle: Any) -> CancelResponse:
        active = self._active
        if active is not None and active.handle is handle:
            active.finish(TaskEnd("cancelled", "cancelled by the client"))
        return CancelResponse.ACCEPT

    async def _execute(self, handle: Any) -> Any:
        active = self._active
        if active is None or active.handle is not handle:  # preempted before it started
            return self._result(handle, TaskEnd("preempted", "preempted by a newer goal"), 0, 0.0)
        state = self._node.lifecycle_state
        problem = active.goal.problem() or (
            # Before the driver is released: set_instruction below would refuse it too, but
            # only after the arm was let go.
            self._node.instruction_problem(active.goal.instruction)
        ) or (
            f"driver safety stop: {self._driver_stop}" if self._driver_stop else ""
        ) or (
            # An inactive policy publishes no chunk: releasing the driver for a goal that
            # cannot run would only report a time-out later.
            f"the policy node is {state}, not active" if state != "active" else ""
        )
        if not problem and active.goal.success_topic:
            # Before the driver is released: a subscription that cannot be made must end the
            # goal here, not raise after the arm was set moving (rclpy would abort the goal
            # and nothing would stop the policy or hold the arm).
            problem = self._subscribe_success(active)
        released = False
        if not problem and self._hold is not None:
            problem = await self._set_hold(False)
            released = not problem
            if problem.endswith("is not available"):
                # A driver without ~/hold (a user's own stack): the task still runs, but
                # its end can only stop new chunks, not the one being executed.
                self._node.get_logger().warning(f"run_task: {problem}; the arm cannot be held")
                problem = ""
        if not problem:
            accepted, message = self._node.set_instruction(active.goal.instruction)
            problem = "" if accepted else message
        if problem:
            if active.success_sub is not None:
                self._node.destroy_subscription(active.success_sub)
            if released:  # refused after the driver was let go: hold it again
                await self._set_hold(True)
            active.finish(TaskEnd("rejected", problem))
            self._forget(active)
            return self._result(handle, active.end, 0, 0.0)

        active.monitor = TaskMonitor(
            active.goal, time.monotonic(), self._node.chunk_count, self._grace
        )
        self._node.get_logger().info(
            f"run_task: {active.goal.instruction!r} (max {active.goal.max_duration:g} s)"
        )
        if active.end is None:
            await active.done
        end = active.end
        if active.success_sub is not None:
            self._node.destroy_subscription(active.success_sub)
        if end.outcome != "preempted":
            # The task is over: no more chunks, and the arm holds where it is.
            self._node.set_instruction("")
            if self._hold is not None:
                hold_problem = await self._set_hold(True)
                if hold_problem:
                    self._node.get_logger().error(f"run_task ended but {hold_problem}")
        self._forget(active)
        monitor = active.monitor
        self._node.get_logger().info(f"run_task ended: {end.outcome}: {end.message}")
        return self._result(handle, end, monitor.chunks_executed, monitor.elapsed)

    def _subscribe_success(self, active: _Goal) -> str:
        from std_msgs.msg import Bool

        def on_success(msg: Any, goal: _Goal = active) -> None:
            if msg.data:
                goal.succeeded = True

        try:
            active.success_sub = self._node.create_subscription(
                Bool, active.goal.success_topic, on_success, 10, callback_group=self._group
            )
        except Exception as err:  # rclpy's name/QoS errors have no common base class
            return f"cannot subscribe to success_topic {active.goal.success_topic!r}: {err}"
        return ""

    def _forget(self, goal: _Goal) -> None:
        if self._active is goal:
            self._active = None

    def _result(self, handle: Any, end: TaskEnd, chunks: int, elapsed: float) -> Any:
        from molmoact2_msgs.action import RunTask

        if end.outcome == "succeeded":
            handle.succeed()
        elif end.outcome == "cancelled" and handle.is_cancel_requested:
            handle.canceled()
        else:
            handle.abort()
        return RunTask.Result(
            outcome=outcome_code(end.outcome),
            outcome_name=end.outcome,
            message=end.message,
            chunks_executed=chunks,
            elapsed=elapsed,
        )

    # ---- monitoring ---------------------------------------------------------------------

    def _tick(self) -> None:
        active = self._active
        if active is None or active.monitor is None or active.end is not None:
            return
        node = self._node
        end = active.monitor.update(
            time.monotonic(),
            policy_state=node.status_state(),
            chunk_count=node.chunk_count,
            last_error=node.last_error,
            succeeded=active.succeeded,
            safety_stop=self._driver_stop,
        )
        if end is not None:
            active.finish(end)
            return
        active.ticks += 1
        if active.ticks % FEEDBACK_EVERY == 0:
            from molmoact2_msgs.action import RunTask

            active.handle.publish_feedback(
                RunTask.Feedback(
                    state=node.status_state(),
                    chunks_executed=active.monitor.chunks_executed,
                    last_latency=node.last_latency,
                    elapsed=active.monitor.elapsed,
                )
            )

    def _on_diagnostics(self, msg: Any) -> None:
        from diagnostic_msgs.msg import DiagnosticStatus

        for status in msg.status:
            if status.name == self._driver_diag_name:
                if _level(status.level) >= _level(DiagnosticStatus.ERROR):
                    self._driver_stop = status.message or "driver error"
                else:
                    self._driver_stop = ""

    async def _set_hold(self, hold: bool) -> str:
        """Ask the driver to hold (True) or follow chunks (False); a problem, or ''."""
        from std_srvs.srv import SetBool

        client = self._hold
        if not client.service_is_ready():
            return f"driver service {client.srv_name} is not available"
        answer: Future = Future()

        def on_response(call: Future) -> None:
            if not answer.done():
                answer.set_result(None if call.cancelled() else call.result())

        def give_up() -> None:
            if not answer.done():
                answer.set_result(None)

        client.call_async(SetBool.Request(data=hold)).add_done_callback(on_response)
        timer = self._node.create_timer(HOLD_TIMEOUT_S, give_up, callback_group=self._group)
        response = await answer
        self._node.destroy_timer(timer)
        if response is None:
            return f"driver service {client.srv_name} did not answer in {HOLD_TIMEOUT_S:g} s"
        if not response.success:
            return f"driver refused to {'hold' if hold else 'resume'}: {response.message}"
        return ""


def _level(value: Any) -> int:
    """DiagnosticStatus levels are ``byte`` fields: bytes of length 1 in rclpy."""
    return int.from_bytes(value, "little") if isinstance(value, bytes) else int(value)
