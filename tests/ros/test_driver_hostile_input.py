"""Issue 14's six unsafe cases against a running driver process, checked on its output.

One SO-101 sim driver runs for the module; the test publishes ActionChunks with rclpy as an
outside probe would and calls the driver's services. Every sample of
``~/commanded_joint_states`` over the whole module goes through the independent invariant
checker (finite, inside the limits, step / velocity / acceleration bounded relative to the
previous command; samples lost on the best-effort topic are allowed for, see
``tests.command_invariants``), and each case asserts what it is about on top.
"""

from __future__ import annotations

import itertools
import math
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.command_invariants import CommandChecker
from tests.rostest_util import REPO_ROOT, start_python, stop_process

pytestmark = pytest.mark.ros

CONFIG = REPO_ROOT / "config" / "so101.yaml"
RATE = 100.0
STEP = 1.0 / 30.0
WINDOW = 2.0  # rejection_window for the diagnostics case


def _driver_section() -> dict:
    data = yaml.safe_load(Path(CONFIG).read_text())
    params = dict(data["/**"]["ros__parameters"])
    params.update(data["/**/so101_driver"]["ros__parameters"])
    return params


P = _driver_section()
NAMES = tuple(P["joint_names"])
LOWER, UPPER = np.array(P["position_lower"]), np.array(P["position_upper"])
VMAX, AMAX = np.array(P["max_velocity"]), np.array(P["max_acceleration"])
MAX_STEP = float(P["max_step_per_tick"])
HOME = np.array(P["initial_positions"])


def wave(t, origin: float, amplitude=0.2, omega=2.0) -> np.ndarray:
    """One smooth in-limit trajectory around HOME (rows: times)."""
    t = np.atleast_1d(np.asarray(t, dtype=float))[:, None] - origin
    phase = np.arange(len(NAMES))
    return HOME + amplitude * (np.sin(omega * t + phase) - np.sin(phase))


class Probe:
    def __init__(self, namespace: str, proc) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import JointState
        from std_srvs.srv import SetBool, Trigger

        from molmoact2_msgs.msg import ActionChunk

        self.proc = proc
        self.node = rclpy.create_node("hostile_probe", namespace=namespace)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.check = CommandChecker(
            LOWER, UPPER, VMAX, AMAX, MAX_STEP, stamp_tolerance=2e-9, nominal_tick=1.0 / RATE
        )
        self.commands: list[tuple[float, np.ndarray]] = []
        self.violations: list[str] = []
        self.diagnostics: list = []
        self.node.create_subscription(
            JointState, "so101_driver/commanded_joint_states", self._on_command,
            qos_profile_sensor_data,
        )
        self.node.create_subscription(
            DiagnosticArray, "/diagnostics", self._on_diagnostics,
            QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE),
        )
        self.chunk_pub = self.node.create_publisher(
            ActionChunk, "molmoact2_policy/action_chunk",
            QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE),
        )
        self.estop = self.node.create_client(Trigger, "so101_driver/estop")
        self.reset = self.node.create_client(Trigger, "so101_driver/reset")
        self.hold = self.node.create_client(SetBool, "so101_driver/hold")
        self.namespace = namespace

    def _on_command(self, msg) -> None:
        t = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        positions = np.array(msg.position)
        self.violations += self.check.check(t, positions)
        self.commands.append((t, positions))

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name.startswith(f"{self.namespace}/so101_driver"):
                self.diagnostics.append((time.monotonic(), status))

    def now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    def spin(self, seconds: float, publish=None, until=None) -> bool:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if publish is not None:
                publish(self.now())
            self.executor.spin_once(timeout_sec=0.002 if publish is not None else 0.01)
            assert self.proc.poll() is None, stop_process(self.proc)
            if until is not None and until():
                return True
        return until() if until is not None else True

    def publish(self, stamp, positions, step_dt=STEP, offset=STEP, sequence=0) -> None:
        from hw_drivers.chunk import Chunk
        from hw_drivers.conversions import chunk_to_msg

        positions = np.asarray(positions, dtype=float)
        msg = chunk_to_msg(Chunk(stamp, offset, 1.0, NAMES, positions, sequence=sequence))
        msg.step_dt = float(step_dt)  # the wire value, whatever it is
        self.chunk_pub.publish(msg)

    def wave_chunk(self, origin: float, capture_delay=0.03, shift=0.0, **kwargs) -> None:
        stamp = self.now() - capture_delay
        times = stamp + STEP * (1 + np.arange(30))
        self.publish(stamp, wave(times, origin, **kwargs) + shift)

    def call(self, client, request):
        assert client.wait_for_service(timeout_sec=20.0)
        future = client.call_async(request)
        self.executor.spin_until_future_complete(future, timeout_sec=20.0)
        assert future.done(), "service call timed out"
        return future.result()

    def trigger(self, client):
        from std_srvs.srv import Trigger

        return self.call(client, Trigger.Request())

    def since(self, t0: float) -> np.ndarray:
        return np.array([c for t, c in self.commands if t >= t0])

    def tracking_error(self, t0: float, t1: float, origin: float, **kwargs) -> float:
        """Median over the samples in [t0, t1] of the largest joint error to the trajectory.

        The median, because on a loaded machine the probe's own publishing can stall long
        enough for a short hold; every bug this guards against (a lurch to a limit, NaN, dead
        reckoning 0.4 rad off) moves the median by far more than the threshold.
        """
        samples = [(t, c) for t, c in self.commands if t0 <= t <= t1]
        assert len(samples) > 10, len(samples)
        return float(np.median([np.abs(c - wave(t, origin, **kwargs)[0]).max()
                                for t, c in samples]))

    def latest_diagnostic(self, after: float):
        fresh = [s for t, s in self.diagnostics if t >= after]
        return fresh[-1] if fresh else None

    def back_to_idle(self) -> None:
        """Reset and let the command settle (the next case starts from a still arm)."""
        assert self.trigger(self.reset).success
        self.spin(0.6)


@pytest.fixture(scope="module")
def probe():
    import rclpy

    namespace = f"/h_{uuid.uuid4().hex[:8]}"
    proc = start_python(
        [
            "-m", "hw_drivers.driver_node", "--ros-args",
            "--params-file", str(CONFIG),
            "-r", "__node:=so101_driver", "-r", f"__ns:={namespace}",
            "-p", f"control_rate:={RATE}",
            "-p", "ramp_in_time:=0.3",
            # Generous: the probe publishes from a test process that a loaded machine stalls.
            "-p", "watchdog_timeout:=1.0",
            "-p", f"rejection_window:={WINDOW}",
        ]
    )
    rclpy.init()
    probe = Probe(namespace, proc)
    try:
        assert probe.spin(30.0, until=lambda: len(probe.commands) > 10), stop_process(proc)
        assert probe.spin(30.0, until=lambda: probe.chunk_pub.get_subscription_count() > 0)
        yield probe
    finally:
        probe.node.destroy_node()
        rclpy.shutdown()
        output = stop_process(proc)
    assert "Traceback" not in output, output
    # Over the whole module, every command the driver produced obeyed the invariants.
    assert probe.check.count > 100
    assert not probe.violations, probe.violations[:5]


@pytest.fixture(autouse=True)
def invariants_hold(probe):
    """Each case: no command during it broke an invariant (checked sample by sample)."""
    before, samples = len(probe.violations), probe.check.count
    yield
    assert probe.check.count > samples + 10, "too few commanded_joint_states samples"
    assert not probe.violations[before:], probe.violations[before:][:5]


def test_case1_future_stamped_chunk_is_refused_idle_and_moving(probe):
    # Idle arm: a smooth in-limit chunk stamped 10 s ahead moves nothing.
    t0 = probe.now()
    origin = t0
    for _ in range(5):
        stamp = probe.now() + 10.0
        probe.publish(stamp, wave(stamp + STEP * (1 + np.arange(30)), origin))
        probe.spin(0.1)
    probe.spin(0.5)
    idle = probe.since(t0)
    assert len(idle) > 10 and np.ptp(idle, axis=0).max() == 0.0
    probe.spin(2.0, until=lambda: probe.latest_diagnostic(time.monotonic() - 0.5) is not None)
    diag = probe.latest_diagnostic(time.monotonic() - 1.5)
    values = {kv.key: kv.value for kv in diag.values}
    assert values["last_reject_reason"].startswith("future:"), values

    # Moving arm: the same chunk between good ones changes nothing either.
    origin = probe.now()
    last = [0.0]

    def stream(now: float) -> None:
        if now - last[0] >= 0.1:
            last[0] = now
            probe.wave_chunk(origin)
            stamp = now + 10.0
            lurch = wave(stamp + STEP * (1 + np.arange(30)), origin)
            lurch[:, :4] = np.clip(lurch[:, :4] + 1.0, LOWER[:4], UPPER[:4])
            probe.publish(stamp, lurch)

    probe.spin(2.5, publish=stream)
    assert probe.tracking_error(origin + 0.6, origin + 2.5, origin) < 0.03
    probe.back_to_idle()


@pytest.mark.parametrize("step_dt", [1e308, 1e-9])
def test_cases2_3_absurd_step_dt_is_refused_and_the_driver_keeps_following(probe, step_dt):
    origin = probe.now()
    # In limits and still (so no velocity rule can catch it): only its times are absurd.
    here = probe.commands[-1][1]
    probe.publish(probe.now(), np.tile(here, (30, 1)), step_dt=step_dt)
    probe.spin(0.3)
    last = [0.0]

    def stream(now: float) -> None:
        if now - last[0] >= 0.1:
            last[0] = now
            probe.wave_chunk(origin)

    probe.spin(2.0, publish=stream)
    # Finite (the checker) and following the good chunks after it.
    assert probe.tracking_error(origin + 1.0, origin + 2.3, origin) < 0.03
    probe.spin(1.5, until=lambda: probe.latest_diagnostic(time.monotonic() - 1.0) is not None)
    values = {kv.key: kv.value for kv in probe.latest_diagnostic(time.monotonic() - 1.5).values}
    assert values["last_reject_reason"].startswith("timing: step_dt"), values
    assert values["state"] != "fault" and not values["command_fault"], values
    probe.back_to_idle()


def test_case4_flood_faster_than_the_control_rate_follows_the_content(probe):
    origin = probe.now()
    sent = [0]

    def flood(now: float) -> None:
        # Three chunks per spin round: well above the 100 Hz control rate on any machine.
        for _ in range(3):
            probe.wave_chunk(origin)
            sent[0] += 1

    started = time.monotonic()
    probe.spin(2.0, publish=flood)
    rate = sent[0] / (time.monotonic() - started)
    assert rate > 1.2 * RATE, rate
    end = probe.now()
    # Dead reckoning drifted 0.5 rad from the trajectory in 2 s; content stays on it.
    assert probe.tracking_error(origin + 0.6, end - 0.05, origin) < 0.03
    probe.spin(1.6)  # the flood ends: hold, and no snap (the checker sees every step)
    # The last 0.3 s the driver commanded (not of the probe's clock: a stall of this process at
    # the end of the spin would leave that window empty).
    held = probe.since(probe.commands[-1][0] - 0.3)
    assert len(held) > 3
    assert np.ptp(held, axis=0).max() < 1e-9
    probe.back_to_idle()


def test_case5_reset_right_after_estop_while_moving_never_jumps(probe):
    origin = probe.now()
    last = [0.0]
    # Up to 2 rad/s: the sim arm lags ~0.1 rad behind its command (the gripper moves less, to
    # stay inside its 0..1 range).
    fast = {"amplitude": np.array([0.5, 0.5, 0.5, 0.5, 0.5, 0.1]), "omega": 4.0}

    def stream(now: float) -> None:
        if now - last[0] >= 0.1:
            last[0] = now
            probe.wave_chunk(origin, **fast)

    probe.spin(1.6, publish=stream)
    assert probe.tracking_error(origin + 0.8, origin + 1.6, origin, **fast) < 0.05
    before = len(probe.violations)
    mark = probe.now()
    assert probe.trigger(probe.estop).success
    reset = probe.trigger(probe.reset)
    probe.spin(1.0)
    samples = [(t, c) for t, c in probe.commands if t >= mark]
    assert len(samples) > 30
    # Steps between consecutive ticks (pairs with a lost sample between them are the
    # checker's, which allows for the ticks they span).
    steps = [np.abs(c1 - c0).max() for (t0, c0), (t1, c1) in itertools.pairwise(samples)
             if t1 - t0 < 1.5 / RATE]
    assert steps and max(steps) <= MAX_STEP + 1e-9, max(steps)
    assert len(probe.violations) == before, probe.violations[before:]
    assert reset.success and "e-stop" in reset.message, reset.message
    probe.back_to_idle()


def test_case6_hold_release_during_estop_tells_the_truth(probe):
    from std_srvs.srv import SetBool

    assert probe.trigger(probe.estop).success
    answer = probe.call(probe.hold, SetBool.Request(data=False))
    assert not answer.success and "e-stop" in answer.message, answer.message
    assert "following" not in answer.message
    probe.back_to_idle()
    answer = probe.call(probe.hold, SetBool.Request(data=False))
    assert answer.success and "following" in answer.message, answer.message


def test_case6_diagnostics_recover_after_rejections(probe):
    probe.publish(probe.now(), np.full((30, len(NAMES)), math.nan))
    warned = probe.spin(
        5.0,
        until=lambda: (d := probe.latest_diagnostic(time.monotonic() - 1.5)) is not None
        and {kv.key: kv.value for kv in d.values}.get("rejected_recently", "0") != "0",
    )
    assert warned
    status = probe.latest_diagnostic(time.monotonic() - 1.5)
    from diagnostic_msgs.msg import DiagnosticStatus

    assert status.level == DiagnosticStatus.WARN and "rejected" in status.message, status.message

    def recovered() -> bool:
        d = probe.latest_diagnostic(time.monotonic() - 1.0)
        if d is None:
            return False
        values = {kv.key: kv.value for kv in d.values}
        return values["rejected_recently"] == "0" and "rejected" not in d.message

    assert probe.spin(WINDOW + 6.0, until=recovered)
    status = probe.latest_diagnostic(time.monotonic() - 1.0)
    values = {kv.key: kv.value for kv in status.values}
    assert int(values["rejected_chunks"]) >= 1  # the record since start stays
