"""A DaMiao motor that powers up a turn off: the offset chosen at connect, as the YAM stack does.

Reference: i2rt (github.com/i2rt-robotics/i2rt) ``i2rt/robots/get_robot.py`` at commit
10a84fc741793de2c6fb62908b33f237206e0573, ``get_yam_robot``: the chain is opened with
``start_thread=False``, its motors are read once, and a motor whose position is ``< -pi`` gets
``motor_offset -= 2*pi``, one ``> pi`` gets ``motor_offset += 2*pi`` (one shift, gripper
included), before the control thread starts; ``i2rt/motor_drivers/dm_driver.py``
(``DMChainCanInterface``) then reads ``(motor - offset) * direction`` and commands
``joint * direction + offset`` (YAM's directions are all 1, ``config/yam.yml``). ``i2rt_offset``
below is that rule, written from the source, as the golden reference.

The backend tests run the real backend against ``TimedDamiaoBus`` motors that power up reporting
their physical angle plus whole turns, as a single-turn absolute encoder does.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hw_drivers import damiao_protocol as dm
from hw_drivers import health as hl
from hw_drivers.backends.base import BackendError
from hw_drivers.backends.damiao import DamiaoBackend
from hw_drivers.chunk import Chunk
from hw_drivers.control_loop import ControlLoop
from hw_drivers.damiao_turns import AMBIGUITY_MARGIN, LIMIT_BUFFER, TURN, choose_turn
from hw_drivers.driver_params import DriverParams
from hw_drivers.emulators.damiao_emulator import TimedDamiaoBus
from hw_drivers.executor import ChunkExecutor
from hw_drivers.hardware_status import make_preflight
from tests.driver_config import config_driver_params, driver_section, joint_names
from tests.virtual_bus import VIRTUAL_TIME_IO_TIMEOUT

SECTION = driver_section("yam")
NAMES = joint_names("yam")
RATE = float(SECTION["control_rate"])
PERIOD = 1.0 / RATE
ARM_START = [0.1, 1.0, 1.2, -0.2, 0.3, -0.4]
GRIPPER_MOTOR = -1.35  # half open (of -2.7)
MOTOR_START = [*ARM_START, GRIPPER_MOTOR]
START = np.array([*ARM_START, 0.5] * 2)
P_MAX = 12.5
CI = settings(max_examples=80, deadline=None, derandomize=True)


def i2rt_offset(position: float) -> float:
    """i2rt get_robot.py: the extra offset for a motor read at ``position`` (offset 0, dir 1)."""
    if position < -np.pi:
        return -2 * np.pi
    if position > np.pi:
        return 2 * np.pi
    return 0.0


# -- the choice --------------------------------------------------------------------------------
@CI
@given(
    raw=st.integers(0, 0xFFFF).map(lambda n: dm.uint_to_float(n, -P_MAX, P_MAX, 16)),
    limits=st.one_of(
        st.none(),
        st.tuples(st.floats(-4.0, 4.0), st.floats(0.0, 7.0)).map(lambda t: (t[0], t[0] + t[1])),
    ),
)
def test_any_power_up_reading_gives_i2rts_joint_angle_or_a_refusal(raw, limits):
    choice = choose_turn(raw, limits)
    joint = choice.joint_angle
    # Whatever is decided, the reported angle is in i2rt's window and is the motor's reading
    # minus whole turns; the command for that joint angle is the reading again, bit for bit.
    assert -math.pi < joint <= math.pi
    assert choice.offset == pytest.approx(TURN * choice.turns, abs=1e-12)
    assert dm.float_to_uint(joint + choice.offset, -P_MAX, P_MAX, 16) == dm.float_to_uint(
        raw, -P_MAX, P_MAX, 16
    )
    if abs(raw) <= 3 * math.pi:
        assert choice.offset == i2rt_offset(raw)
    else:  # i2rt shifts once and leaves it outside (-pi, pi]; we refuse
        assert "turns from zero" in choice.problem
    if choice.problem:
        return
    # Trusted: one turn at most, and no other turn is plausible.
    assert abs(choice.turns) <= 1
    if limits is None:
        assert abs(joint) < math.pi - AMBIGUITY_MARGIN
    else:
        lower, upper = limits[0] - LIMIT_BUFFER, limits[1] + LIMIT_BUFFER
        assert lower <= joint <= upper
        assert not any(lower <= joint + k * TURN <= upper for k in (-3, -2, -1, 1, 2, 3))


@pytest.mark.parametrize(
    ("raw", "limits", "joint", "problem"),
    [
        (1.0 + TURN, None, 1.0, ""),  # a turn up: shifted, as i2rt does
        (-0.5 - TURN, (-2.6, 3.1), -0.5, ""),  # a turn down
        (0.3, (-1.6, 1.6), 0.3, ""),
        # Near +-pi: without limits the other turn is as likely; with YAM's joint 1 limits the
        # other turn (-3.18) is outside them, so the reading is trusted.
        (3.1, None, 3.1, "within 0.1 rad of +-pi"),
        (3.1, (-2.6, 3.1), 3.1, ""),
        # Joint 2 of a YAM at 3.3 rad, inside its limits [0, 3.6] but past pi: i2rt reads
        # -2.98 and its joint-limit check refuses; so do we, saying where the joint probably is.
        (3.3, (0.0, 3.6), 3.3 - TURN, "probably at 3.300 rad"),
        # Two turns off: a single-turn encoder cannot power up there (i2rt shifts once).
        (12.0, None, 12.0 - 2 * TURN, "2 turns from zero"),
        # Limits wider than a turn: both turns fit, so the turn is a guess.
        (3.0, (-4.0, 4.0), 3.0, "which turn it is in is a guess"),
        (float("nan"), None, float("nan"), "no finite angle"),
    ],
)
def test_the_choice_on_named_cases(raw, limits, joint, problem):
    choice = choose_turn(raw, limits)
    if math.isnan(raw):
        assert math.isnan(choice.joint_angle)
    else:
        assert choice.joint_angle == pytest.approx(joint, abs=1e-9)
    assert (problem in choice.problem) if problem else choice.problem == ""


# -- the backend on emulated motors ------------------------------------------------------------
def driver_params(**overrides) -> DriverParams:
    # The fixed-limit gripper these tests were written for (i2rt's crank_4310).
    values = dict(backend="damiao", can_channels=("can0", "can1"),
                  frame_prefixes=("left_", "right_"), gripper_type="crank_4310")
    return config_driver_params("yam", **{**values, **overrides})


class Robot:
    """The driver's control loop on the DaMiao backend and two timed buses (virtual clock)."""

    def __init__(self, turns: dict[str, list[int]], start=None, **overrides):
        self.p = driver_params(**overrides)
        start = start or {}
        self.buses = {
            ch: TimedDamiaoBus(
                ch,
                initial_positions=start.get(ch, MOTOR_START),
                power_up_turns=turns.get(ch, [0] * 7),
                seed=k,
            )
            for k, ch in enumerate(("can0", "can1"))
        }
        self.backend = DamiaoBackend.from_params(self.p)
        self.backend.link_factory = self.open
        self.backend.io_timeout = VIRTUAL_TIME_IO_TIMEOUT
        executor = ChunkExecutor(
            self.p.joint_names, self.p.limits(), self.p.safety_config(), self.p.executor_config()
        )
        self.loop = ControlLoop(
            self.backend,
            executor,
            on_fault=self.p.on_fault,
            reconnect_period=0.5,
            shadow=self.p.is_shadow(),
            hold_mask=self.p.hold_mask(),
            preflight=make_preflight(self.p, self.backend, dict),
        )
        self.now = 0.0

    def open(self, channel: str) -> TimedDamiaoBus:
        """Open the channel (again, after a disconnect): the motors stay powered meanwhile."""
        bus = self.buses[channel]
        bus.closed = False
        return bus

    def step(self, count: int = 1):
        result = None
        for _ in range(count):
            self.now += PERIOD
            for bus in self.buses.values():
                bus.sleep_until(self.now)
            result = self.loop.step(self.now)
        return result

    def physical(self, channel: str, motor_id: int) -> float:
        return self.buses[channel].snapshot(motor_id).joint_angle

    def motor_entry(self, joint: str) -> hl.HealthEntry:
        [entry] = [e for e in self.backend.health() if f"damiao motor {joint} " in e.name]
        return entry


def test_a_joint_powered_up_a_turn_off_reads_its_joint_angle_and_holds_still(caplog):
    robot = Robot({"can0": [0, 1, 0, 0, 0, 0, 0], "can1": [0, 0, 0, 0, 0, -1, -1]})
    assert robot.buses["can0"].snapshot(2).position == pytest.approx(1.0 + TURN)
    with caplog.at_level(logging.WARNING, logger="hw_drivers.backends.damiao"):
        reading = robot.loop.start()
    # Every consumer (preflight, executor, gravity, joint_states) gets the joint angle.
    np.testing.assert_allclose(reading.positions, START, atol=dm.quantum(-P_MAX, P_MAX, 16))
    assert robot.loop.last_preflight is not None and robot.loop.last_preflight.ok
    # The offset is said once, per motor, in the log and on /diagnostics.
    shifted = [r.getMessage() for r in caplog.records]
    assert any("left_joint2 (id 0x02) on can0" in m and "+1 turn" in m for m in shifted)
    assert any("right_joint6 (id 0x06) on can1" in m and "-1 turn" in m for m in shifted)
    assert any("right_gripper (id 0x07) on can1" in m and "-1 turn" in m for m in shifted)
    assert len(shifted) == 3
    entry = robot.motor_entry("left_joint2")
    assert entry.level == hl.OK
    assert entry.values["turn_offset_rad"] == f"{TURN:.6f}"
    assert "+1 turn" in entry.values["turn"]
    assert robot.motor_entry("left_joint1").values["turn_offset_rad"] == "0.000000"
    # Held for a second (shadow: the default on hardware): every command keeps each joint where
    # it is; none asks a motor for the angle one turn away.
    robot.step(int(RATE))
    for ch, arm_turns in (("can0", [0, 1, 0, 0, 0, 0, 0]), ("can1", [0, 0, 0, 0, 0, -1, -1])):
        for motor_id in range(1, 8):
            snap = robot.buses[ch].snapshot(motor_id)
            assert snap.received, (ch, motor_id)
            sent = np.array([c.position for c in snap.received])
            expected = MOTOR_START[motor_id - 1] + TURN * arm_turns[motor_id - 1]
            assert np.max(np.abs(sent - expected)) < 0.01, (ch, motor_id)
            assert snap.joint_angle == pytest.approx(MOTOR_START[motor_id - 1], abs=0.01)
    assert robot.loop.last_reading is not None
    np.testing.assert_allclose(robot.loop.last_reading.positions, START, atol=0.01)


def test_commands_in_joint_angles_reach_the_motor_in_its_own_turn():
    robot = Robot({"can0": [0, 1, 0, 0, 0, 0, -1]}, execution="live")
    robot.loop.start()
    robot.step(int(0.3 * RATE))  # ramp-in done
    measured = robot.loop.last_reading.positions
    target = measured.copy()
    target[1] += 0.2  # left_joint2: +0.2 rad, on the motor a turn up
    target[6] = 0.8  # left gripper opening
    steps = np.linspace(0.0, 1.0, 11)[:, None]
    chunk = Chunk(
        stamp=robot.now,
        start_offset=0.0,
        step_dt=0.1,
        joint_names=tuple(NAMES),
        positions=measured + steps * (target - measured),
    )
    assert robot.loop.executor.submit(chunk, robot.now, measured).accepted
    robot.step(int(1.5 * RATE))
    # The joint moved 0.2 rad, not a turn; the motor was commanded in its own turn.
    assert robot.physical("can0", 2) == pytest.approx(1.2, abs=0.01)
    assert robot.buses["can0"].snapshot(2).position == pytest.approx(1.2 + TURN, abs=0.01)
    assert robot.physical("can0", 7) == pytest.approx(0.8 * -2.7, abs=0.01)
    np.testing.assert_allclose(robot.loop.last_reading.positions[[1, 6]], [1.2, 0.8], atol=0.01)


def test_an_untrusted_turn_keeps_the_torque_off_and_names_the_motor_until_moved():
    # Left joint 2 rests at 3.3 rad: inside its limits [0, 3.6] but past pi, so the YAM
    # stack's window reads -2.98 rad, outside the limits. Nothing may be energised.
    start = {"can0": [0.1, 3.3, 1.2, -0.2, 0.3, -0.4, GRIPPER_MOTOR]}
    robot = Robot({}, start=start)
    with pytest.raises(BackendError) as err:
        robot.loop.start()
    text = str(err.value)
    assert "left_joint2" in text and "probably at 3.300 rad" in text
    assert robot.loop.last_preflight is not None and not robot.loop.last_preflight.ok
    assert "left_joint2" in " ".join(robot.loop.last_preflight.failures())
    entry = robot.motor_entry("left_joint2")
    assert entry.level == hl.ERROR and "joint angle not trusted" in entry.message
    for bus in robot.buses.values():
        for motor_id in range(1, 8):
            snap = bus.snapshot(motor_id)
            assert dm.CMD_ENABLE not in snap.control_log and not snap.received
            assert not snap.enabled
    # The refusal holds on its own, with or without a preflight, and for commands too (a motor
    # left enabled by an earlier session would follow them).
    with pytest.raises(BackendError, match=r"torque not enabled: left_joint2 \(id 0x02\)"):
        robot.backend.enable()
    with pytest.raises(BackendError, match=r"no command sent: left_joint2 \(id 0x02\)"):
        robot.backend.write_command(robot.backend.read_state().positions)
    assert not any(bus.snapshot(m).received for bus in robot.buses.values() for m in range(1, 8))
    # The operator lowers the limp joint to 3.0 rad; the driver's next reconnect trusts it.
    robot.loop.faulted = True
    with robot.buses["can0"]._lock:
        robot.buses["can0"].motors[2].position = 3.0
    robot.step(int(0.6 * RATE))
    assert not robot.loop.faulted
    assert robot.loop.last_reading.positions[1] == pytest.approx(3.0, abs=0.01)
    assert robot.buses["can0"].snapshot(2).enabled


def test_the_offset_is_held_for_the_session_and_chosen_again_on_reconnect():
    start = {"can0": [2.9, 1.0, 1.2, -0.2, 0.3, -0.4, GRIPPER_MOTOR]}
    robot = Robot({}, start=start)
    backend = robot.backend
    backend.connect()
    backend.enable()
    # Turned past pi while powered: the motor keeps counting, and so do we (no re-wrap).
    with robot.buses["can0"]._lock:
        robot.buses["can0"].motors[1].position = 3.2
    assert backend.read_state().positions[0] == pytest.approx(3.2, abs=1e-3)
    # Power-cycled back at 2.9 rad, coming up a turn down: the next connect shifts it.
    with robot.buses["can0"]._lock:
        robot.buses["can0"].motors[1].position = 2.9
    robot.buses["can0"].power_cycle(1, turns=-1)
    backend.disconnect()
    backend.connect()
    assert backend.turns is not None and backend.turns[0][0].turns == -1
    assert backend.read_state().positions[0] == pytest.approx(2.9, abs=1e-3)
    backend.enable()
    backend.write_command(backend.read_state().positions)
    assert robot.buses["can0"].snapshot(1).received[-1].position == pytest.approx(
        2.9 - TURN, abs=1e-3
    )
    backend.disconnect()
    assert backend.turns is None  # disconnect forgets the offsets


@settings(max_examples=40, deadline=None, derandomize=True)
@given(raw=st.integers(0, 0xFFFF).map(lambda n: dm.uint_to_float(n, -P_MAX, P_MAX, 16)))
def test_any_power_up_angle_of_a_joint_is_read_and_commanded_back_or_refused(raw):
    """Left joint 1 (limits [-2.6, 3.1]) powered up anywhere in the motor's range."""
    start = {"can0": [raw, 1.0, 1.2, -0.2, 0.3, -0.4, GRIPPER_MOTOR]}
    robot = Robot({}, start=start)
    backend = robot.backend
    backend.connect()
    try:
        reading = backend.read_state().positions
        assert -math.pi < reading[0] <= math.pi
        try:
            backend.enable()
        except BackendError as err:
            assert "left_joint1 (id 0x01) on can0" in str(err)
            assert not robot.buses["can0"].snapshot(1).enabled
            return
        lower, upper = SECTION["position_lower"][0], SECTION["position_upper"][0]
        assert lower - LIMIT_BUFFER <= reading[0] <= upper + LIMIT_BUFFER
        backend.write_command(reading)
        sent = robot.buses["can0"].snapshot(1).received[-1].position
        assert abs(sent - raw) <= dm.quantum(-P_MAX, P_MAX, 16)
    finally:
        backend.disconnect()
