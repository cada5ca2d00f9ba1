"""Outside-in probe of the trajectory bridge's e-stop, hold and reset across lifecycle
transitions (configure/activate/deactivate/cleanup, as ``ros2 lifecycle set`` sends them).

Found by this probe (the driver node had the same class of bug, probe-driver.md):

* a chunk sent to an inactive bridge was dropped silently: no verdict on ``~/chunk_execution``
  (the driver answers ``inactive: ...``), so the policy's RTC could not tell it was not run;
* ``~/hold(false)`` and ``~/reset`` on an inactive bridge answered "following chunks" / "the next
  chunk ramps in", and nothing was followed;
* deactivate left the controller playing the rest of the last chunk (up to
  ``max_chunk_duration``) after the bridge stopped following: the driver holds at deactivate.

Every input goes through the node's own callbacks on one thread, in order (no spinning, no
sleeps): chunks (``_on_chunk``), joint states (``_on_joint_state``), the services' callbacks and
the lifecycle triggers (rclpy's ChangeState service runs the same transition callbacks). What the
controller would get is recorded at ``_publish``, each output tagged as a stop or not. A model
of what the calls left in force (inactive > e-stop > hold > no recent joint state > sent) gives
every chunk's verdict and every answer; every output passes joint_trajectory_controller's
validation (``jtc_model.check_trajectory``) and stays within the limits as its splines run it.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from hw_drivers.control_loop import REJECT_STOPPED
from hw_drivers.executor import (
    ESTOP_LATCHED,
    HOLD_RELEASED,
    HOLD_RELEASED_IN_ESTOP,
    HOLDING,
    REJECT_ESTOP,
    REJECT_HOLD,
)
from hw_drivers.jtc_model import bounds, check_trajectory

pytestmark = pytest.mark.ros

_log = logging.getLogger(__name__)

NAMES = ["j1", "j2", "j3"]
CONTROLLER = ["arm_joint1", "arm_joint2", "arm_joint3"]
LOWER = np.array([-2.0, -2.0, -2.0])
UPPER = np.array([2.0, 2.0, 2.0])
VMAX = np.array([1.0, 1.0, 1.0])
AMAX = np.array([5.0, 5.0, 5.0])
HOME = np.array([0.1, -0.2, 0.3])
STEP = 1.0 / 15.0
# 8 s of chunk: a trajectory of ours is still running at the next event however slow the
# machine (the verdicts depend on no timing; only "a stop at deactivate" needs this).
HORIZON = 120
CHUNK_KINDS = ("valid", "nan", "names", "limits", "step_dt")
COUNTS: Counter = Counter()


def _chunk(now: float, kind: str, sequence: int):
    from molmoact2_msgs.msg import ActionChunk

    msg = ActionChunk()
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(round(now * 1e9), 1_000_000_000)
    msg.start_offset.nanosec = round(STEP * 1e9)
    msg.step_dt = STEP
    msg.joint_names = list(NAMES)
    msg.horizon = HORIZON
    rows = HOME + 0.002 * np.arange(HORIZON)[:, None]  # 0.03 rad/s, from the measured pose
    if kind == "nan":
        rows[5, 1] = math.nan
    elif kind == "names":
        msg.joint_names = ["j1", "j2", "nope"]
    elif kind == "limits":
        rows[7, 0] = 3.0
    elif kind == "step_dt":
        msg.step_dt = 0.0
    msg.positions = [float(v) for v in rows.ravel()]
    msg.sequence = sequence
    return msg


@dataclass
class Model:
    """What the calls left in force, as the docs say it."""

    lifecycle: str = "active"  # unconfigured | inactive | active
    estop: bool = False
    hold: bool = False
    fresh: bool = True  # a recent joint state of the arm
    running: bool = False  # a chunk's trajectory of ours runs on the controller

    def refusal(self) -> str:
        if self.lifecycle != "active":
            return REJECT_STOPPED
        if self.estop:
            return REJECT_ESTOP
        if self.hold:
            return REJECT_HOLD
        return ""


class Rig:
    """One bridge for every example (a node per example would cost a DDS participant each)."""

    def __init__(self) -> None:
        import rclpy
        from rclpy.parameter import Parameter

        from hw_drivers.trajectory_bridge_node import TrajectoryBridgeNode

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        overrides = [
            Parameter("joint_names", value=NAMES),
            Parameter("position_lower", value=list(LOWER)),
            Parameter("position_upper", value=list(UPPER)),
            Parameter("max_velocity", value=list(VMAX)),
            Parameter("max_acceleration", value=list(AMAX)),
            Parameter("gripper_joints", value=["none"]),
            Parameter("controller_joint_names", value=CONTROLLER),
            Parameter("trajectory_topic", value="lifecycle_probe/joint_trajectory"),
            Parameter("chunk_topic", value="lifecycle_probe/action_chunk"),
            Parameter("joint_state_topic", value="lifecycle_probe/joint_states"),
            # Freshness is the probe's to decide (the "stale" event), not the machine's speed.
            Parameter("max_state_age", value=600.0),
        ]
        self.bridge = TrajectoryBridgeNode(context=self.context, parameter_overrides=overrides)
        self.outputs: list[tuple[object, bool]] = []  # (BridgeOutput, sent by a stop)
        self.verdicts: list[tuple[int, str]] = []
        self._in_stop = False
        self.sequence = 0
        bridge = self.bridge
        bridge._publish = lambda out: self.outputs.append((out, self._in_stop))
        stop_motion, verdict = bridge._stop_motion, bridge._verdict

        def tagged_stop() -> str:
            self._in_stop = True
            try:
                return stop_motion()
            finally:
                self._in_stop = False

        def recorded_verdict(msg, now, reason=""):
            self.verdicts.append((msg.sequence, reason))
            verdict(msg, now, reason)

        bridge._stop_motion = tagged_stop
        bridge._verdict = recorded_verdict
        assert bridge.trigger_configure().name == "SUCCESS"
        assert bridge.trigger_activate().name == "SUCCESS"
        self.model = Model()

    def close(self) -> None:
        import rclpy

        self.bridge.destroy_node()
        rclpy.shutdown(context=self.context)

    def now(self) -> float:
        return self.bridge.get_clock().now().nanoseconds * 1e-9

    def joint_state(self) -> None:
        from sensor_msgs.msg import JointState

        self.bridge._on_joint_state(JointState(name=CONTROLLER, position=list(HOME)))
        self.model.fresh = True

    # -- events ----------------------------------------------------------------------------
    def run(self, event: tuple) -> None:
        before, accepted, rejected = len(self.outputs), self.bridge.accepted, self.bridge.rejected
        kind = event[0]
        getattr(self, f"_{kind}")(*event[1:])
        COUNTS[kind if kind != "chunk" else f"chunk:{event[1]}"] += 1
        COUNTS["sent"] += self.bridge.accepted - accepted
        COUNTS["refused"] += self.bridge.rejected - rejected
        for out, _stop in self.outputs[before:]:
            self._check_output(out)

    def _chunk(self, kind: str) -> None:
        m, b = self.model, self.bridge
        if m.lifecycle == "unconfigured":
            return  # no subscription: nothing reaches the node
        self.sequence += 1
        accepted, outputs = b.accepted, len(self.outputs)
        b._on_chunk(_chunk(self.now(), kind, self.sequence))
        new = self.verdicts[-1:] if self.verdicts and self.verdicts[-1][0] == self.sequence else []
        assert len(new) == 1, f"chunk {kind} in {m}: no verdict on ~/chunk_execution"
        reason = new[0][1]
        expected = m.refusal()
        if expected:
            assert reason == expected, (m, kind, reason)
        elif kind != "valid":
            assert reason and reason not in (REJECT_STOPPED, REJECT_ESTOP, REJECT_HOLD), reason
        elif not m.fresh:
            assert reason.startswith("start_pose:"), reason
        else:
            assert reason == "", (m, reason)
        sent = reason == ""
        assert b.accepted == accepted + sent
        chunk_outputs = [o for o, stop in self.outputs[outputs:] if not stop]
        assert len(chunk_outputs) == int(sent) and len(self.outputs) == outputs + sent
        if sent:
            m.running = True

    def _stale(self) -> None:
        self.bridge._measured_at = -math.inf  # the arm's joint states stopped coming
        self.model.fresh = False

    def _state(self) -> None:
        self.joint_state()

    def _estop(self) -> None:
        from std_srvs.srv import Trigger

        m = self.model
        if m.lifecycle == "unconfigured":
            return  # the services exist from configure to cleanup
        answer = self.bridge._on_estop(Trigger.Request(), Trigger.Response())
        assert answer.success and answer.message == ESTOP_LATCHED
        self._expect_stop_if_running()
        m.estop = True

    def _hold(self, on: bool) -> None:
        from std_srvs.srv import SetBool

        m = self.model
        if m.lifecycle == "unconfigured":
            return
        answer = self.bridge._on_hold(SetBool.Request(data=on), SetBool.Response())
        if on:
            assert answer.success and answer.message == HOLDING
            self._expect_stop_if_running()
        elif m.estop:
            assert not answer.success and answer.message == HOLD_RELEASED_IN_ESTOP
        elif m.lifecycle != "active":
            # Before: "hold released: following chunks", and every chunk was dropped.
            assert answer.success and "following" not in answer.message, answer.message
            assert "inactive" in answer.message, answer.message
        else:
            assert answer.success and answer.message == HOLD_RELEASED
        m.hold = on

    def _reset(self) -> None:
        from std_srvs.srv import Trigger

        m = self.model
        if m.lifecycle == "unconfigured":
            return
        answer = self.bridge._on_reset(Trigger.Request(), Trigger.Response())
        assert answer.success == m.fresh, (m, answer.message)
        if not answer.success:
            return
        if m.lifecycle == "active":
            assert "ramps in" in answer.message, answer.message
        else:
            assert "ramps in" not in answer.message and "inactive" in answer.message, answer
        m.estop = m.hold = False
        m.running = False  # the next chunk ramps in from idle

    def _configure(self) -> None:
        if self.model.lifecycle == "unconfigured":
            assert self.bridge.trigger_configure().name == "SUCCESS"
            self.model.lifecycle = "inactive"

    def _activate(self) -> None:
        if self.model.lifecycle == "inactive":
            assert self.bridge.trigger_activate().name == "SUCCESS"
            self.model.lifecycle = "active"

    def _deactivate(self) -> None:
        if self.model.lifecycle == "active":
            before = len(self.outputs)
            assert self.bridge.trigger_deactivate().name == "SUCCESS"
            if self.model.running:
                # Before: nothing; the controller played the chunk on, up to its end.
                stops = [o for o, stop in self.outputs[before:] if stop]
                assert len(stops) == 1, "deactivate left our trajectory running"
                COUNTS["stop at deactivate"] += 1
            self.model.lifecycle = "inactive"
            self.model.running = False

    def _cleanup(self) -> None:
        if self.model.lifecycle == "inactive":
            assert self.bridge.trigger_cleanup().name == "SUCCESS"
            self.model.lifecycle = "unconfigured"

    def _expect_stop_if_running(self) -> None:
        if self.model.running:
            assert self.outputs and self.outputs[-1][1], "no stop replaced our trajectory"
            self.model.running = False

    # -- invariants ------------------------------------------------------------------------
    def _check_output(self, out) -> None:
        trajectory = out.trajectory
        assert trajectory is not None and out.gripper is None
        assert check_trajectory(trajectory, CONTROLLER) is None, trajectory
        lowest, highest, fastest = bounds(trajectory, HOME, np.zeros(3))
        assert np.all(lowest >= LOWER - 1e-9) and np.all(highest <= UPPER + 1e-9)
        assert np.all(fastest <= VMAX * (1 + 1e-6)), fastest.max(axis=0)

    def restore(self) -> None:
        """Back to active, no latch, a recent joint state; a valid chunk is sent again."""
        self._configure()
        self._activate()
        self.joint_state()
        self._reset()
        self._hold(False)
        self._chunk("valid")
        assert self.verdicts[-1][1] == "", self.verdicts[-1]
        self._estop()  # stop what runs; the next example starts from a latch-free reset
        self._reset()


LIFECYCLE = st.sampled_from(["configure", "activate", "deactivate", "cleanup"]).map(lambda t: (t,))
EVENTS = st.one_of(
    st.sampled_from(CHUNK_KINDS).map(lambda k: ("chunk", k)),
    st.just(("estop",)),
    st.booleans().map(lambda on: ("hold", on)),
    st.just(("reset",)),
    st.sampled_from([("stale",), ("state",)]),
    LIFECYCLE,
    LIFECYCLE,  # twice the weight: the transitions are what this probe is about
)


@pytest.fixture(scope="module")
def rig():
    rig = Rig()
    yield rig
    rig.close()


@settings(
    max_examples=60,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
@given(events=st.lists(EVENTS, min_size=1, max_size=8))
# The driver's bug class, explicitly: a hold set while inactive survives activation; a hold
# released or a reset while inactive does not start following; chunks while inactive are
# answered; deactivate stops our running trajectory.
@example(events=[("deactivate",), ("hold", True), ("activate",), ("chunk", "valid")])
@example(events=[("deactivate",), ("hold", False), ("chunk", "valid"), ("activate",)])
@example(events=[("deactivate",), ("reset",), ("chunk", "valid")])
@example(
    events=[("hold", True), ("deactivate",), ("hold", False), ("activate",), ("chunk", "valid")]
)
@example(events=[("chunk", "valid"), ("deactivate",)])
@example(
    events=[
        ("estop",),
        ("deactivate",),
        ("cleanup",),
        ("configure",),
        ("activate",),
        ("chunk", "valid"),
    ]
)
@example(events=[("deactivate",), ("estop",), ("hold", False), ("activate",), ("chunk", "valid")])
@example(events=[("deactivate",), ("stale",), ("reset",), ("activate",), ("chunk", "nan")])
@example(events=[("chunk", "valid"), ("stale",), ("deactivate",), ("chunk", "valid")])
def test_latches_and_verdicts_hold_for_any_sequence_of_calls_and_transitions(rig, events):
    try:
        for event in events:
            rig.run(event)
    finally:
        rig.restore()


def test_every_event_kind_was_exercised():
    # Runs after the probe in this module (pytest keeps the file's order).
    _log.info("lifecycle probe exercised: %s", dict(sorted(COUNTS.items())))
    expected = {f"chunk:{k}" for k in CHUNK_KINDS} | {
        "estop",
        "hold",
        "reset",
        "stale",
        "state",
        "configure",
        "activate",
        "deactivate",
        "cleanup",
        "sent",
        "refused",
        "stop at deactivate",
    }
    missing = expected - set(COUNTS)
    assert not missing, missing


@pytest.mark.parametrize("how", ["shutdown transition", "process exit"])
def test_shutdown_and_process_exit_stop_our_running_trajectory(how):
    """As deactivate does (and the driver's exit: hold). Before: the controller played the
    last chunk on after the bridge had stopped (process exit: ``run_lifecycle_node``'s
    ``on_exit``; shutdown: lifecycle_msgs' shutdown transition from active)."""
    rig = Rig()
    try:
        rig.joint_state()
        rig.run(("chunk", "valid"))
        [(_, is_stop)] = rig.outputs
        assert not is_stop
        if how == "shutdown transition":
            assert rig.bridge.trigger_shutdown().name == "SUCCESS"
        else:
            rig.bridge.finish_on_exit()
            rig.sequence += 1
            rig.bridge._on_chunk(_chunk(rig.now(), "valid", rig.sequence))
            assert rig.verdicts[-1] == (rig.sequence, REJECT_STOPPED)
        assert len(rig.outputs) == 2 and rig.outputs[1][1], "no stop replaced our trajectory"
        stop = rig.outputs[1][0].trajectory
        assert np.allclose(stop.points[0].positions, HOME, atol=0.02)
    finally:
        rig.close()
