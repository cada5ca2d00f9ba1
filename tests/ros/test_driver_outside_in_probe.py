"""Outside-in hypothesis probe of a running sim driver through its ROS interfaces only.

Hypothesis draws short sequences of what a hostile or careless neighbour sends: ActionChunks
broken in one field (NaN/inf positions or velocities, absurd step_dt, start_offset and stamps
at the ends of their wire types, horizon 0/1/huge or not matching the data, joint names
duplicated, missing, extra, reordered, empty or unicode, values outside the limits, a jump),
floods of them, ~/estop, ~/reset, ~/hold and ~/clear_motor_faults, parameter requests
(several at once, atomically or not, with wrong types, NaN, inf, negative, huge and
wrong-length values) and deactivate -> activate. For every example:

* every command the control loop sends to the backend (recorded at ``ControlLoop.step``, so
  none is lost on a topic) obeys the invariants of ``tests.command_invariants`` against the
  configured limits, and the live ``max_step_per_tick`` once its change was answered;
* a latched e-stop, a fault or a requested hold changes no command;
* every chunk gets a verdict on ``~/chunk_execution``; one broken in a field that must be
  refused is refused, with a ``code: details`` reason; every refused parameter request says why
  and an atomic one changes nothing;
* afterwards (reset, hold released, limits restored) a valid chunk is accepted and executed.

Derandomized with a bounded example count, so it is deterministic and runs in seconds.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.command_invariants import CommandChecker
from tests.ros.driver_harness import running_driver

pytestmark = pytest.mark.ros
_log = logging.getLogger(__name__)

EXAMPLES = 40
NAN, INF = math.nan, math.inf
STEP = 1.0 / 30.0
OVERRIDES = {"control_rate": 100.0, "ramp_in_time": 0.2, "watchdog_timeout": 1.0}

# Chunk variants that must be refused (the reason's code is checked loosely: the first
# failing rule may be another one, e.g. a NaN stamp is non_finite, not timing).
MUST_REFUSE = {
    "nan_position",
    "nan_velocity",
    "velocity_length",
    "step_dt",
    "offset",
    "stamp",
    "horizon_mismatch",
    "horizon_zero",
    "names_duplicate",
    "names_missing",
    "names_extra",
    "names_empty_string",
    "names_unicode",
    "names_none",
    "outside_limits",
    "jump",
}
MAY_ACCEPT = {"valid", "reordered", "horizon_one", "latency", "sequence_max", "text"}
BAD_FLOATS = (NAN, INF, -INF)
BAD_STEP_DT = (NAN, INF, -INF, 0.0, -0.0, -STEP, 5e-324, 1e-9, 1e-4, 1e308, 1e5)
INT32 = (-(2**31), 2**31 - 1)


@dataclass(frozen=True)
class SendChunk:
    kind: str
    pick: int  # which bad value / where it goes


@dataclass(frozen=True)
class Flood:
    kinds: tuple[str, ...]
    pick: int


@dataclass(frozen=True)
class Service:
    name: str  # estop | reset | hold_on | hold_off | clear_faults


@dataclass(frozen=True)
class Params:
    items: tuple[tuple[str, object], ...]
    atomic: bool


@dataclass(frozen=True)
class Cycle:
    """deactivate, a chunk and a service call while inactive, optionally cleanup ->
    configure (a new control loop), activate."""

    pick: int
    service: str  # "" or as Service.name
    cleanup: bool


KINDS = sorted(MUST_REFUSE | MAY_ACCEPT)
_PARAM_VALUES = {
    "max_step_per_tick": st.sampled_from(
        [0.01, 0.02, 0.05, 0.0, -1.0, NAN, INF, 1e308, 0, "x", True, [0.01]]
    ),
    "max_velocity": st.sampled_from(
        [
            [1.0] * 6,
            [0.5] * 6,
            [NAN] * 6,
            [INF] * 6,
            [-1.0] * 6,
            [1.0] * 5,
            [1.0] * 7,
            [],
            [1e308] * 6,
            ["a"] * 6,
        ]
    ),
    "max_acceleration": st.sampled_from([[10.0] * 6, [0.0] * 6, [NAN] * 6, [1.0] * 3]),
    "position_lower": st.sampled_from([[-1.0] * 5 + [0.0], [-1e308] * 6, [NAN] * 6, [2.0] * 6]),
    "position_upper": st.sampled_from([[1.0] * 5 + [1.0], [0.0] * 6, [INF] * 6, [1.0]]),
    "control_rate": st.sampled_from([50.0, -5.0, NAN]),
    "execution": st.sampled_from(["live", "shadow", "nonsense"]),
}
params = st.builds(
    Params,
    st.lists(
        st.sampled_from(sorted(_PARAM_VALUES)).flatmap(
            lambda name: st.tuples(st.just(name), _PARAM_VALUES[name])
        ),
        min_size=1,
        max_size=3,
        unique_by=lambda item: item[0],
    ).map(tuple),
    st.booleans(),
)
events = st.lists(
    st.one_of(
        st.builds(SendChunk, st.sampled_from(KINDS), st.integers(0, 1000)),
        st.builds(SendChunk, st.sampled_from(KINDS), st.integers(0, 1000)),
        st.builds(
            Flood,
            st.lists(st.sampled_from(KINDS), min_size=5, max_size=40).map(tuple),
            st.integers(0, 1000),
        ),
        st.builds(
            Service, st.sampled_from(["estop", "hold_on", "reset", "clear_faults", "hold_off"])
        ),
        params,
        st.builds(
            Cycle,
            st.integers(0, 1000),
            st.sampled_from(["estop", "hold_on", "", "reset", "hold_off"]),
            st.booleans(),
        ),
    ),
    min_size=1,
    max_size=6,
)


class Recorder:
    """Every tick's sent command, recorded where the loop makes it (the control thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: list[tuple] = []  # (now, sent or None, state, reason) or ("restart",)

    def wrap(self, loop) -> None:
        step = loop.step

        def recorded(now: float):
            result = step(now)
            command = result.command
            with self.lock:
                self.records.append(
                    (
                        now,
                        None if not result.wrote else np.array(result.sent, dtype=float),
                        command.state if command is not None else None,
                        command.reason if command is not None else "",
                    )
                )
            return result

        loop.step = recorded

    def mark_restart(self) -> None:
        with self.lock:
            self.records.append(("restart",))

    def __len__(self) -> int:
        with self.lock:
            return len(self.records)


class Rig:
    def __init__(self, rig) -> None:
        from lifecycle_msgs.srv import ChangeState, GetState
        from rcl_interfaces.srv import SetParameters, SetParametersAtomically
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from std_srvs.srv import SetBool, Trigger

        from molmoact2_msgs.msg import ActionChunk, ChunkExecution

        self.rig = rig
        self.node = rig.node
        probe = rig.probe
        self.hard = rig.node.params
        self.names = tuple(self.hard.joint_names)
        self.lower = np.asarray(self.hard.position_lower)
        self.upper = np.asarray(self.hard.position_upper)
        self.recorder = Recorder()
        self.recorder.wrap(rig.node._loop)
        self.checker = CommandChecker(
            self.lower,
            self.upper,
            self.hard.max_velocity,
            self.hard.max_acceleration,
            self.hard.max_step_per_tick,
        )
        self.checked = 0  # records checked so far
        self.previous_sent: np.ndarray | None = None
        self.previous_state: str | None = None
        self.live_step = self.hard.max_step_per_tick
        self.live_step_from = 0  # record index from which live_step is in force
        self.reports: list = []
        self.report_lock = threading.Lock()
        qos = QoSProfile(
            depth=1000,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        probe.create_subscription(
            ChunkExecution, "so101_driver/chunk_execution", self._on_report, qos
        )
        self.chunks = probe.create_publisher(
            ActionChunk,
            "molmoact2_policy/action_chunk",
            QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE),
        )
        self.trigger = {
            name: probe.create_client(Trigger, f"so101_driver/{name}")
            for name in ("estop", "reset", "clear_motor_faults")
        }
        self.hold = probe.create_client(SetBool, "so101_driver/hold")
        self.set_params = probe.create_client(SetParameters, "so101_driver/set_parameters")
        self.set_atomic = probe.create_client(
            SetParametersAtomically, "so101_driver/set_parameters_atomically"
        )
        self.change_state = probe.create_client(ChangeState, "so101_driver/change_state")
        self.get_state = probe.create_client(GetState, "so101_driver/get_state")
        self.sequence = 0
        self.verdicts = 0
        self.seen: Counter = Counter()  # what the examples exercised
        # What the operator's calls leave in force (the model a valid chunk's verdict follows).
        self.estopped = False
        self.held = False
        self.inactive = False

    def transition(self, transition_id: int) -> bool:
        from lifecycle_msgs.srv import ChangeState

        request = ChangeState.Request()
        request.transition.id = transition_id
        return self.call(self.change_state, request).success

    def _on_report(self, msg) -> None:
        with self.report_lock:
            self.reports.append(msg)

    # -- plumbing -----------------------------------------------------------------------------

    def call(self, client, request, timeout: float = 20.0):
        assert client.wait_for_service(timeout_sec=timeout)
        future = client.call_async(request)
        deadline = time.monotonic() + timeout
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.002)  # the rig's executor thread spins the probe
        assert future.done(), "service call timed out"
        return future.result()

    def now(self) -> float:
        return self.rig.probe.get_clock().now().nanoseconds * 1e-9

    def command(self) -> np.ndarray:
        loop = self.node._loop
        last = loop.executor.last_command
        return np.array(last if last is not None else loop.last_reading.positions)

    def verdict(self, sequence: int, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.report_lock:
                for report in reversed(self.reports):
                    if report.has_last and report.last_sequence == sequence:
                        return report
            time.sleep(0.002)
        raise AssertionError(f"no verdict on chunk {sequence} on ~/chunk_execution")

    def ticks(self, count: int, timeout: float = 5.0) -> None:
        target = len(self.recorder) + count
        deadline = time.monotonic() + timeout
        while len(self.recorder) < target and time.monotonic() < deadline:
            time.sleep(0.002)

    # -- chunks -------------------------------------------------------------------------------

    def chunk_msg(self, kind: str, pick: int):
        from builtin_interfaces.msg import Duration

        from hw_drivers.chunk import Chunk
        from hw_drivers.conversions import chunk_to_msg

        names = list(self.names)
        n, horizon = len(names), 30
        start = self.command()
        # A slow smooth move around the current command: valid in every other respect.
        k = np.arange(horizon)[:, None]
        positions = start + 0.02 * np.sin(0.2 * k + np.arange(n))
        positions = np.clip(positions, self.lower, self.upper)
        stamp = self.now() - 0.02
        msg = chunk_to_msg(Chunk(stamp, STEP, STEP, tuple(names), positions))
        flat = list(msg.positions)
        self.sequence += 1
        msg.sequence = self.sequence
        if kind == "nan_position":
            flat[pick % len(flat)] = BAD_FLOATS[pick % 3]
        elif kind == "nan_velocity":
            velocities = [0.0] * len(flat)
            velocities[pick % len(flat)] = BAD_FLOATS[pick % 3]
            msg.velocities = velocities
        elif kind == "velocity_length":
            msg.velocities = [0.0] * (1 + pick % (len(flat) - 1))
        elif kind == "step_dt":
            msg.step_dt = BAD_STEP_DT[pick % len(BAD_STEP_DT)]
        elif kind == "offset":
            choices = [
                Duration(sec=-1, nanosec=0),
                Duration(sec=INT32[0], nanosec=0),
                Duration(sec=INT32[1], nanosec=2**32 - 1),
                Duration(sec=0, nanosec=2**32 - 1),  # 4.3 s: far ahead
                Duration(sec=11, nanosec=0),
            ]
            msg.start_offset = choices[pick % len(choices)]
        elif kind == "stamp":
            sec = int(stamp)
            choices = [
                (0, 0),
                (INT32[0], 0),
                (INT32[1], 2**32 - 1),
                (-1, 0),
                (sec + 1000, 0),
                (sec - 1000, 0),
                (sec, 2**32 - 1),
                (sec + 3, 0),
                (sec - 3, 0),
            ]
            msg.header.stamp.sec, msg.header.stamp.nanosec = choices[pick % len(choices)]
        elif kind == "horizon_mismatch":
            msg.horizon = [2**32 - 1, horizon + 1, horizon - 1, 2**31][pick % 4]
        elif kind == "horizon_zero":
            msg.horizon, flat = 0, [] if pick % 2 else flat
        elif kind == "horizon_one":
            msg.horizon, flat = 1, flat[:n]
        elif kind == "names_duplicate":
            names[(pick + 1) % n] = names[pick % n]
        elif kind == "names_missing":
            del names[pick % n]
            flat = [v for i, v in enumerate(flat) if i % n != pick % n]
        elif kind == "names_extra":
            names.append("extra_joint")
            flat = [v for row in np.reshape(flat, (horizon, n)) for v in (*row, 0.0)]
        elif kind == "names_empty_string":
            names[pick % n] = ""
        elif kind == "names_unicode":
            names[pick % n] = ["épaule", "肘", "wrist\u200b", "🦾", "shoulder_pan "][pick % 5]
        elif kind == "names_none":
            names, flat = [], []
        elif kind == "reordered":
            order = np.random.default_rng(pick).permutation(n)
            names = [names[j] for j in order]
            flat = np.reshape(flat, (horizon, n))[:, order].reshape(-1).tolist()
        elif kind == "outside_limits":
            j = pick % n
            rows = np.reshape(flat, (horizon, n))
            rows[horizon // 2 :, j] = self.upper[j] + 0.1 if pick % 2 else self.lower[j] - 0.1
            flat = rows.reshape(-1).tolist()
        elif kind == "jump":
            j = pick % n
            rows = np.reshape(flat, (horizon, n))
            # The farther limit: at least half the range (> max_start_deviation) away.
            far = start[j] - self.lower[j] > self.upper[j] - start[j]
            target = self.lower[j] if far else self.upper[j]
            rows[:, j] = target  # far from the measured pose from the first action on
            flat = rows.reshape(-1).tolist()
        elif kind == "latency":
            msg.inference_latency = [NAN, INF, -INF, -1.0, 3.4e38][pick % 5]
        elif kind == "sequence_max":
            msg.sequence = 2**64 - self.sequence
        elif kind == "text":
            msg.mode, msg.instruction = "🦾" * 50, "x" * 100_000
        msg.joint_names = names
        msg.positions = flat
        return msg

    def send(self, kind: str, pick: int, wait: bool = True):
        self.seen[kind] += 1
        msg = self.chunk_msg(kind, pick)
        self.chunks.publish(msg)
        if not wait:
            return msg.sequence, None
        report = self.verdict(msg.sequence)
        if kind in MUST_REFUSE:
            assert not report.last_accepted, (kind, pick)
        if kind == "valid":
            reason = report.last_reject_reason
            if self.inactive:
                assert reason.startswith("inactive:"), reason
            elif self.estopped:
                assert reason.startswith("estop:"), reason
            elif self.held:
                assert reason.startswith("hold:"), reason
            else:
                assert report.last_accepted, reason
        if not report.last_accepted:
            self.verdicts += 1
            reason = report.last_reject_reason
            assert ":" in reason and reason.split(":", 1)[0].isidentifier(), (kind, reason)
            assert len(reason.split(":", 1)[1].strip()) > 3, (kind, reason)
        return msg.sequence, report

    # -- parameters ---------------------------------------------------------------------------

    def set_parameters(self, items, atomic: bool) -> list:
        from rcl_interfaces.srv import SetParameters, SetParametersAtomically
        from rclpy.parameter import Parameter

        messages = [Parameter(name, value=value).to_parameter_msg() for name, value in items]
        before = self.node.params
        if atomic:
            request = SetParametersAtomically.Request(parameters=messages)
            results = [self.call(self.set_atomic, request).result]
        else:
            request = SetParameters.Request(parameters=messages)
            results = list(self.call(self.set_params, request).results)
        for result in results:
            if not result.successful:
                assert result.reason, items
        if atomic and not results[0].successful:
            assert self.node.params == before, items  # nothing of it applied
        step = self.node.params.max_step_per_tick
        if step != self.live_step:
            self.live_step, self.live_step_from = step, len(self.recorder)
        return results

    def restore_limits(self) -> None:
        hard = self.hard
        limits = ("position_lower", "position_upper", "max_velocity", "max_acceleration")
        items = (
            *((name, list(getattr(hard, name))) for name in limits),
            ("max_step_per_tick", hard.max_step_per_tick),
            ("execution", hard.execution),
        )
        [result] = self.set_parameters(items, atomic=True)
        assert result.successful, result.reason
        assert self.node.params == hard

    # -- invariants ---------------------------------------------------------------------------

    def check_records(self) -> None:
        with self.recorder.lock:
            new = self.recorder.records[self.checked :]
            first = self.checked
            self.checked += len(new)
        for index, record in enumerate(new, start=first):
            if record[0] == "restart":
                self.checker.restart()
                self.previous_sent, self.previous_state = None, None
                continue
            now, sent, state, reason = record
            if sent is None:
                continue
            problems = self.checker.check(now, sent)
            assert not problems, problems
            previous = self.previous_sent
            if previous is not None and index > self.live_step_from:
                step = np.abs(sent - previous).max()
                assert step <= self.live_step + 1e-9, (step, self.live_step)
            if previous is not None and (state in ("estop", "fault") or reason == "hold requested"):
                np.testing.assert_array_equal(sent, previous, err_msg=f"moved in {state}")
            self.previous_sent, self.previous_state = sent, state

    def begin(self) -> None:
        """Each example from an active driver following nothing, at its configured limits (a
        failed example may have left it otherwise)."""
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import GetState

        state = self.call(self.get_state, GetState.Request()).current_state.label
        if state == "unconfigured":
            assert self.transition(Transition.TRANSITION_CONFIGURE)
            self.recorder.wrap(self.node._loop)
            state = "inactive"
        if state == "inactive":
            self.recorder.mark_restart()
            assert self.transition(Transition.TRANSITION_ACTIVATE)
        self.inactive = False
        self.restore_limits()
        self.service("reset")
        self.service("hold_off")
        self.ticks(1)

    def recover_and_follow(self) -> None:
        """Reset, release, restore the limits: a valid chunk is accepted and executed."""
        self.restore_limits()
        self.service("reset")
        self.service("hold_off")
        self.ticks(3)
        mark = len(self.recorder)
        _, report = self.send("valid", 0)
        assert report.last_accepted, report.last_reject_reason
        deadline = time.monotonic() + 20.0
        while time.monotonic() < deadline:
            with self.recorder.lock:
                states = {r[2] for r in self.recorder.records[mark:] if r[0] != "restart"}
            if states & {"ramp_in", "tracking"}:
                break
            time.sleep(0.005)
        assert states & {"ramp_in", "tracking"}, states

    def service(self, name: str) -> None:
        from std_srvs.srv import SetBool, Trigger

        if name in ("estop", "reset", "clear_faults"):
            service = "clear_motor_faults" if name == "clear_faults" else name
            answer = self.call(self.trigger[service], Trigger.Request())
        else:
            answer = self.call(self.hold, SetBool.Request(data=name == "hold_on"))
        assert answer.message, name
        if name == "estop":
            self.estopped = True
        elif name == "reset":
            assert answer.success, answer.message
            self.estopped = self.held = False
        elif name in ("hold_on", "hold_off"):
            self.held = name == "hold_on"
            assert answer.success == (self.held or not self.estopped), answer.message

    # -- events -------------------------------------------------------------------------------

    def apply(self, event) -> None:
        from lifecycle_msgs.msg import Transition

        self.seen[type(event).__name__] += 1
        if isinstance(event, Cycle):
            self.seen[f"cycle:{event.service or '-'}:{'cleanup' if event.cleanup else '-'}"] += 1
        elif isinstance(event, Service):
            self.seen[f"service:{event.name}"] += 1
        elif isinstance(event, Params):
            self.seen["params:atomic" if event.atomic else "params:each"] += 1
            for name, _ in event.items:
                self.seen[f"param:{name}"] += 1
        if isinstance(event, SendChunk):
            self.send(event.kind, event.pick)
            self.ticks(2)
        elif isinstance(event, Flood):
            sequences = [
                self.send(kind, event.pick + i, wait=False)[0] for i, kind in enumerate(event.kinds)
            ]
            self.verdict(sequences[-1])  # depth 1000 each way: every one arrives, in order
            self.ticks(2)
        elif isinstance(event, Service):
            self.service(event.name)
            self.ticks(2)
            self.send("valid", 0)  # its verdict follows what the call left in force
        elif isinstance(event, Params):
            self.set_parameters(event.items, event.atomic)
            self.ticks(2)
        elif isinstance(event, Cycle):
            assert self.transition(Transition.TRANSITION_DEACTIVATE)
            self.inactive = True
            self.check_records()  # the control thread has stopped: all it sent is in
            _, report = self.send(KINDS[event.pick % len(KINDS)], event.pick)
            assert not report.last_accepted, report
            if not report.last_reject_reason.startswith("shape"):  # malformed: refused first
                assert report.last_reject_reason.startswith("inactive:"), report
            if event.service:
                self.service(event.service)
            if event.cleanup:
                assert self.transition(Transition.TRANSITION_CLEANUP)
                assert self.transition(Transition.TRANSITION_CONFIGURE)
                self.recorder.wrap(self.node._loop)  # configure built a new one
            self.recorder.mark_restart()  # activation starts a new command stream
            assert self.transition(Transition.TRANSITION_ACTIVATE)
            self.inactive = False
            self.ticks(2)
            self.send("valid", 0)  # its verdict follows what the call left in force
        self.check_records()


def _limits_then_flood(atomic: bool) -> list:
    """A bad and a good limit in one request, tighter position limits, every kind of chunk."""
    return [
        Params((("max_step_per_tick", 0.01), ("max_velocity", [NAN] * 6)), atomic),
        Params((("position_lower", [-1.0] * 5 + [0.0]), ("position_upper", [1.0] * 6)), atomic),
        Flood(tuple(KINDS), 7),
    ]


@pytest.fixture(scope="module")
def probe_rig(tmp_path_factory):
    ns = f"/op_{uuid.uuid4().hex[:8]}"
    tmp = tmp_path_factory.mktemp("outside_in")
    with running_driver("so101", "so101_driver", OVERRIDES, tmp, ns) as rig:
        yield Rig(rig)


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(event_list=events)
# The lifecycle and service cases the hold fix is about, whatever the draws cover.
@example(event_list=[Service("estop"), SendChunk("valid", 0), Cycle(1, "", True)])
@example(event_list=[Cycle(2, "hold_on", False)])
@example(event_list=[Cycle(3, "hold_on", True)])
@example(event_list=[Service("hold_on"), Cycle(4, "hold_off", False)])
@example(event_list=[Service("hold_on"), Cycle(5, "reset", True)])
@example(event_list=[Cycle(6, "estop", True), Flood(("valid",) * 20, 0)])
@example(event_list=_limits_then_flood(atomic=True))
@example(event_list=_limits_then_flood(atomic=False))
def test_any_sequence_of_hostile_inputs_keeps_the_invariants(probe_rig, event_list):
    probe_rig.begin()
    for event in event_list:
        probe_rig.apply(event)
    probe_rig.recover_and_follow()
    probe_rig.check_records()
    control = probe_rig.node._control
    assert control is not None and not control.died and control.errors == 0


def test_the_probe_saw_what_it_is_about(probe_rig):
    """Runs after the property test (file order): it refused chunks, checked commands."""
    seen = probe_rig.seen
    _log.info(
        "exercised: %s; %d refusals, %d backend commands checked",
        dict(sorted(seen.items())),
        probe_rig.verdicts,
        probe_rig.checker.count,
    )
    assert not [kind for kind in KINDS if not seen[kind]], seen
    assert seen["Flood"] and seen["params:atomic"] and seen["params:each"], seen
    assert probe_rig.verdicts > 20
    assert probe_rig.checker.count > 500
