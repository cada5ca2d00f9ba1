"""The YAM gripper against i2rt (i2rt-robotics/i2rt, commit 10a84fc).

Golden values are computed here from i2rt's formulas, not from ours:

* ``i2rt/robots/utils.py`` ``JointMapper.to_command_joint_pos_space``:
  ``(q - limits[0]) / (limits[1] - limits[0])``; ``linear_gripper_force_torque_map``:
  ``force * gripper_stroke / motor_stroke``; ``zero_linkage_crank_gripper_force_torque_map``:
  ``r = stroke / (2 (cos(close) - cos(open)))``, ``torque = force * r * sin(-q + offset)``;
  ``GripperForceLimiter``: clogged target effort = map + 0.3.
* ``i2rt/robots/config/{linear_4310,linear_3507,flexible_4310,crank_4310}.yml``.
* ``i2rt/robots/get_robot.py``: ``limit_gripper_force=50.0``.

The backend tests run the real backend against ``TimedDamiaoBus`` motors whose gripper has the
physics (end stops, an object, the stall torque), on the bus's virtual clock.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hw_drivers import damiao_protocol as dm
from hw_drivers import yam_gripper as yg
from hw_drivers.backends.base import BackendError
from hw_drivers.backends.damiao import DamiaoBackend, yam_arm
from hw_drivers.emulators.damiao_emulator import TimedDamiaoBus
from tests.virtual_bus import VIRTUAL_TIME_IO_TIMEOUT

NAMES = [f"left_joint{i}" for i in range(1, 7)] + ["left_gripper"]
ARM_START = [0.1, 1.0, 1.2, -0.2, 0.3, -0.4]
# A linear_4310 gripper whose motor powered up mid-stroke: closed end stop (the larger angle)
# 2.0 rad above, open end stop 6.57 rad below that.
CLOSED, OPEN = 2.0, 2.0 - 6.57
GRIP_START = -1.0


# -- i2rt's numbers ------------------------------------------------------------------------
def test_types_match_i2rts_configs():
    linear = yg.gripper_type("linear_4310")
    assert (linear.motor_type, linear.kp, linear.kd, linear.limits) == ("DM4310", 20.0, 0.5, None)
    assert (linear.clog_effort, linear.clog_speed) == (0.5, 0.3)
    assert (linear.motor_stroke, linear.gripper_stroke) == (6.57, 0.096)
    l3507 = yg.gripper_type("linear_3507")
    assert (l3507.motor_type, l3507.kp, l3507.kd, l3507.needs_calibration) == (
        "DM3507",
        10.0,
        0.3,
        True,
    )
    assert yg.gripper_type("flexible_4310").direction == -1
    crank = yg.gripper_type("crank_4310")
    assert crank.limits == (0.0, -2.7) and not crank.needs_calibration
    assert crank.clog_speed == 0.2
    with pytest.raises(ValueError, match=r"unknown gripper_type 'parallel'.*crank_4310"):
        yg.gripper_type("parallel")


def test_opening_mapping_is_i2rts_joint_mapper():
    def i2rt_opening(q, limits):  # JointMapper.to_command_joint_pos_space
        return (q - limits[0]) / (limits[1] - limits[0])

    for limits in [(0.0, -2.7), (CLOSED, OPEN), (-3.0, 3.57)]:
        for q in np.linspace(min(limits) - 0.2, max(limits) + 0.2, 9):
            assert dm.motor_to_gripper(q, *limits) == pytest.approx(i2rt_opening(q, limits))
    # Commands: i2rt's inverse (to_robot_joint_pos_space) then its clip to the limits.
    assert dm.gripper_to_motor(0.0, CLOSED, OPEN) == pytest.approx(CLOSED)
    assert dm.gripper_to_motor(1.0, CLOSED, OPEN) == pytest.approx(OPEN)
    assert dm.gripper_to_motor(1.3, CLOSED, OPEN) == pytest.approx(OPEN)
    assert dm.gripper_to_motor(0.25, CLOSED, OPEN) == pytest.approx(CLOSED - 0.25 * 6.57)


def test_limit_torque_is_i2rts_force_map_plus_friction():
    linear = yg.gripper_type("linear_4310")
    assert linear.limit_torque(50.0, 0.3) == pytest.approx(50.0 * 0.096 / 6.57 + 0.3)
    assert linear.limit_torque(50.0, 0.3) == pytest.approx(1.030593607, abs=1e-9)
    crank = yg.gripper_type("crank_4310")
    radius = 0.071 / (2 * (math.cos(8 / 180 * math.pi) - math.cos(170 / 180 * math.pi)))
    for q in (0.0, -1.35, -2.7):
        golden = 50.0 * radius * math.sin(-q + 0.174) + 0.3
        assert crank.limit_torque(50.0, q) == pytest.approx(golden, rel=1e-6)


# -- the limiter alone -----------------------------------------------------------------------
LIMITS = (CLOSED, OPEN)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(OPEN - 0.5, CLOSED + 0.5),  # measured angle
            st.floats(-20.0, 20.0),  # measured velocity [rad/s]
            st.floats(-10.0, 10.0),  # measured effort [N*m]
            st.floats(OPEN, CLOSED),  # wanted target angle
        ),
        min_size=1,
        max_size=80,
    )
)
def test_clogged_command_never_asks_more_than_the_limit_torque(ticks):
    spec = yg.gripper_type("linear_4310")
    limiter = yg.GripForceLimiter(spec, 50.0, kp=20.0)
    for k, (angle, velocity, effort, target) in enumerate(ticks):
        out = limiter.limit(
            stamp=k * 0.004,
            angle=angle,
            velocity=velocity,
            effort=effort,
            target=target,
            limits=LIMITS,
        )
        if limiter.clogged:
            assert abs(20.0 * (out - angle)) <= spec.limit_torque(50.0, angle) + 1e-9
        else:
            assert out == target


def test_clog_detected_from_effort_and_speed_and_released_by_an_opening_command():
    spec = yg.gripper_type("linear_4310")
    limiter = yg.GripForceLimiter(spec, 50.0, kp=20.0)
    kw = dict(angle=0.0, limits=LIMITS)
    # Moving fast with effort: not clogged (normalised speed 3/6.57 > 0.3).
    for k in range(40):
        limiter.limit(stamp=k * 0.004, velocity=3.0, effort=2.0, target=CLOSED, **kw)
    assert not limiter.clogged
    # Stalled with 2 N*m for longer than the 0.1 s window: clogged, target held near.
    for k in range(40, 80):
        out = limiter.limit(stamp=k * 0.004, velocity=0.0, effort=2.0, target=CLOSED, **kw)
    assert limiter.clogged
    assert out == pytest.approx(spec.limit_torque(50.0, 0.0) / 20.0)
    # A command more open than the measured opening releases it.
    out = limiter.limit(stamp=0.4, velocity=0.0, effort=2.0, target=-1.0, **kw)
    assert not limiter.clogged and out == -1.0
    with pytest.raises(ValueError, match="positive force"):
        yg.GripForceLimiter(spec, 0.0, kp=20.0)


# -- the backend against emulated physics ---------------------------------------------------
def rig(obstacle: float | None = None, gripper_type: str = "linear_4310"):
    bus = TimedDamiaoBus("can0", initial_positions=[*ARM_START, GRIP_START])
    bus.attach_gripper(0x07, CLOSED, OPEN)
    bus.place_object(0x07, obstacle)

    def reopen(_channel: str) -> TimedDamiaoBus:  # the adapter opened again after a disconnect
        bus.closed = False
        return bus

    backend = DamiaoBackend(
        [yam_arm("can0", NAMES, gripper_type=gripper_type)],
        control_rate=250.0,
        link_factory=reopen,
        io_timeout=VIRTUAL_TIME_IO_TIMEOUT,
    )
    backend.connect()
    return backend, bus


def test_gripper_limits_are_calibrated_at_enable_against_the_end_stops():
    backend, bus = rig()
    assert backend.uncalibrated_joints() == ["left_gripper"]
    assert math.isnan(backend.read_state().positions[6])
    with pytest.raises(BackendError, match="not calibrated yet"):
        backend.write_command(np.array([*ARM_START, 0.5]))
    start = bus.now()
    backend.enable()
    closed, opened = backend.gripper_limits[0]
    q = dm.quantum(-12.5, 12.5, 16)
    assert closed == pytest.approx(CLOSED, abs=3 * q) and opened == pytest.approx(OPEN, abs=3 * q)
    # i2rt's sweep: 0.5 N*m with kp = kd = 0, closing first (the larger angle).
    sweep = [c for c in bus.snapshot(0x07).received if c.kp == 0.0]
    assert sweep[0].torque == pytest.approx(0.5, abs=0.01) and sweep[-1].torque < 0
    assert bus.now() - start < 2 * (yg.CALIBRATION_MAX_DURATION + yg.CALIBRATION_PAUSE)
    # The arm held still meanwhile.
    for k in range(6):
        angles = [c.position for c in bus.snapshot(k + 1).received]
        assert max(abs(a - ARM_START[k]) for a in angles) < 1e-3
    # Calibrated: the gripper reads its opening (left at the open stop), and follows commands.
    assert backend.read_state().positions[6] == pytest.approx(1.0, abs=1e-3)
    for _ in range(250):
        backend.write_command(np.array([*ARM_START, 0.5]))
        bus.sleep_until(bus.now() + 0.004)
    assert backend.read_state().positions[6] == pytest.approx(0.5, abs=0.01)
    entry = next(e for e in backend.health() if "left_gripper" in e.name)
    assert entry.values["gripper_type"] == "linear_4310"
    assert entry.values["gripper_calibration"].startswith("closed 2.00")
    # Held until disconnect, found again at the next enable.
    backend.disconnect()
    assert backend.gripper_limits == [None]


def test_calibration_refuses_a_short_stroke_and_leaves_the_torque_off():
    # An object in the gripper (it closes on it at -0.5 rad): the stroke is 4.07 rad.
    backend, bus = rig(obstacle=-0.5)
    with pytest.raises(BackendError, match=r"stroke 4\.07\d rad .*linear_4310 has 6.57"):
        backend.enable()
    bus.sleep_until(bus.now() + 0.01)  # the disable frames cross the bus
    assert not any(bus.snapshot(i).enabled for i in range(1, 8))
    assert backend.gripper_limits == [None]
    with pytest.raises(BackendError, match="not calibrated yet"):
        backend.write_command(np.array([*ARM_START, 0.5]))


def test_crank_gripper_keeps_its_fixed_limits_without_calibration():
    bus = TimedDamiaoBus("can0", initial_positions=[*ARM_START, -1.35])
    backend = DamiaoBackend(
        [yam_arm("can0", NAMES, gripper_type="crank_4310")],
        control_rate=250.0,
        link_factory=lambda ch: bus,
    )
    backend.connect()
    backend.enable()
    assert backend.gripper_limits == [(0.0, -2.7)]
    assert all(c.kp > 0 for c in bus.snapshot(0x07).received)
    assert backend.read_state().positions[6] == pytest.approx(0.5, abs=1e-3)


_CLOGGED_RIG: dict = {}


def clogged_rig():
    """One calibrated arm whose gripper holds an object 2 rad from the closed stop."""
    if not _CLOGGED_RIG:
        backend, bus = rig()
        backend.enable()
        _CLOGGED_RIG.update(backend=backend, bus=bus)
    return _CLOGGED_RIG["backend"], _CLOGGED_RIG["bus"]


@settings(
    max_examples=12,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    st.lists(
        st.tuples(st.floats(0.0, 1.0), st.floats(-5.0, 5.0), st.integers(1, 30)),
        min_size=1,
        max_size=12,
    )
)
def test_grip_torque_stays_under_the_limit_for_any_command_sequence_while_clogged(commands):
    backend, bus = clogged_rig()
    spec, limiter = backend.arms[0].gripper, backend.grip_limiters[0]
    obstacle = CLOSED - 2.0
    bus.place_object(0x07, obstacle)

    def tick(opening: float, speed: float) -> None:
        backend.write_command(np.array([*ARM_START, opening]), np.array([0.0] * 6 + [speed]))
        bus.sleep_until(bus.now() + 0.004)
        backend.read_state()

    # Close on the object until the limiter calls it clogged.
    for _ in range(200):
        tick(0.0, 0.0)
        if limiter.clogged:
            break
    assert limiter.clogged
    q = dm.quantum(-12.5, 12.5, 16)
    for opening, speed, repeat in commands:
        for _ in range(repeat):
            tick(opening, speed)
            motor = bus.snapshot(0x07)
            in_contact = abs(motor.joint_angle - obstacle) < 1e-9
            if limiter.clogged and in_contact:
                # The motor's own torque, stalled on the object: at most the limit (plus the
                # 16-bit quantum of the position it was measured at, times kp).
                bound = spec.limit_torque(backend.gripper_max_force, obstacle) + 20.0 * 2 * q
                assert abs(motor.torque) <= bound, (motor.torque, bound)
    # Let go: open fully, and the next test example starts from an open gripper.
    for _ in range(200):
        tick(1.0, 0.0)
    assert not limiter.clogged


def test_from_params_takes_the_gripper_type_its_motor_and_the_force_limit():
    import types

    def params(**kw):
        return types.SimpleNamespace(can_channels=("can0",), joint_names=tuple(NAMES), **kw)

    backend = DamiaoBackend.from_params(params(gripper_type="linear_3507"))
    gripper = backend.arms[0].motors[6]
    assert (gripper.mtype.name, gripper.kp, gripper.kd) == ("DM3507", 10.0, 0.3)
    assert backend.gripper_limits == [None] and backend.gripper_max_force == 50.0
    # Different closed/open angles fix the limits (no calibration); equal ones mean the type's.
    fixed = DamiaoBackend.from_params(params(gripper_closed_rad=0.2, gripper_open_rad=-6.0))
    assert fixed.gripper_limits == [(0.2, -6.0)] and not fixed.uncalibrated_joints()
    with pytest.raises(BackendError, match="unknown gripper_type 'parallel'"):
        DamiaoBackend.from_params(params(gripper_type="parallel"))
    with pytest.raises(BackendError, match="gripper_max_force must be a positive force"):
        DamiaoBackend.from_params(params(gripper_max_force=-1.0))


def test_configure_refuses_a_dry_run_that_would_have_to_move_the_gripper_to_calibrate():
    from tests.driver_config import config_driver_params

    def problems(**overrides) -> list[str]:
        params = config_driver_params(
            "yam", backend="damiao", can_channels=("can0", "can1"),
            frame_prefixes=("left_", "right_"), **overrides,
        )
        return params.validate()

    assert problems() == []  # the shipped default: linear_4310, calibrated at torque enable
    refused = problems(dry_run=True)
    assert len(refused) == 1 and "dry_run cannot calibrate the linear_4310 gripper" in refused[0]
    # A dry run with nothing to calibrate: measured limits given, or a fixed-limit type.
    assert problems(dry_run=True, gripper_closed_rad=0.0, gripper_open_rad=-6.5) == []
    assert problems(dry_run=True, gripper_type="crank_4310") == []
    assert any("unknown gripper_type 'parallel'" in p for p in problems(gripper_type="parallel"))


def test_a_failed_calibration_is_not_retried_until_an_operator_clears_it():
    backend, bus = rig(obstacle=-0.5)
    with pytest.raises(BackendError, match="calibration failed"):
        backend.enable()
    # The driver's reconnect loop enables again: refused at once, the gripper does not move.
    backend.disconnect()
    # Its reconnect_period passes first (the disable frames of the failed enable leave the
    # transmit queue meanwhile; a reconnect within the same instant would overflow it).
    bus.sleep_until(bus.now() + 0.3)
    backend.connect()
    frames_before = len(bus.snapshot(0x07).received)
    with pytest.raises(BackendError, match=r"not retried on its own.*~/clear_motor_faults"):
        backend.enable()
    bus.sleep_until(bus.now() + 0.01)
    assert not any(c.kp == 0.0 for c in bus.snapshot(0x07).received[frames_before:])
    assert not any(bus.snapshot(i).enabled for i in range(1, 8))
    # The operator empties the gripper and clears the failure: the next enable calibrates.
    bus.place_object(0x07, None)
    cleared = backend.clear_faults()
    assert len(cleared) == 1 and "runs again at the next enable" in cleared[0]
    assert backend.clear_faults() == []
    backend.enable()
    assert backend.gripper_limits[0] is not None and not backend.uncalibrated_joints()
