"""Every driver configuration that ``DriverParams.validate()`` accepts keeps the command
invariants, whatever chunks and service calls arrive.

The message-path property (test_driver_message_properties) runs one fixed configuration; an
outside probe also sets parameters: extreme but valid values (a ramp-in of 1e300 s, a 1e-9 s
watchdog, a 2 kHz loop, huge leads and ages, every splice policy) must not open a path around
the guard. Any value validate() lets through is fair game here; NaN/inf/wrong types are
refused before (tests/unit/test_param_update_properties.py).
"""

from __future__ import annotations

import dataclasses

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hw_drivers.backends.sim import SimBackend
from hw_drivers.control_loop import ControlLoop
from hw_drivers.driver_params import DriverParams
from hw_drivers.executor import ChunkExecutor
from tests.command_invariants import CommandChecker
from tests.unit.test_driver_message_properties import Msg, Service, Ticks, build_msg, msgs
from tests.unit.test_executor_properties import AMAX, LOWER, NAMES, T0, UPPER, VMAX

CI = settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TINY, HUGE = 1e-9, 1e300

TYPICAL = {
    "control_rate": 100.0,
    "chunk_rate": 30.0,
    "max_step_per_tick": 0.03,
    "ramp_in_time": 0.3,
    "blend_window": 0.1,
    "watchdog_timeout": 0.5,
    "max_start_deviation": 0.5,
    "max_chunk_duration": 10.0,
    "max_chunk_lead": 0.25,
    "max_chunk_age": 2.0,
    "splice_policy": "blend",
    "interpolation": "cubic",
    "average_weight_new": 0.7,
}
EXTREMES = {
    "control_rate": [1.0, 30.0, 250.0, 2000.0],
    "chunk_rate": [0.0, 1.0, 1000.0],
    "max_step_per_tick": [1e-12, HUGE],
    "ramp_in_time": [0.0, TINY, HUGE],
    "blend_window": [0.0, TINY, HUGE],
    "watchdog_timeout": [TINY, HUGE],
    "max_start_deviation": [TINY, HUGE],
    "max_chunk_duration": [TINY, HUGE],
    "max_chunk_lead": [TINY, HUGE],
    "max_chunk_age": [TINY, HUGE],
    "splice_policy": ["replace", "average"],
    "interpolation": ["linear"],
    "average_weight_new": [0.0, 1.0],
}


@st.composite
def configs(draw) -> dict:
    """The typical configuration with up to three fields at an extreme (all of them at once
    rejects every chunk, which proves nothing)."""
    config = dict(TYPICAL)
    for name in draw(st.lists(st.sampled_from(sorted(EXTREMES)), max_size=3, unique=True)):
        config[name] = draw(st.sampled_from(EXTREMES[name]))
    return config


events = st.lists(
    st.one_of(
        st.builds(Ticks, st.integers(1, 40)),
        msgs,
        msgs,
        msgs,
        st.builds(Ticks, st.integers(1, 40)),
        st.builds(Service, st.sampled_from(["reset", "hold_off", "hold_on", "estop"])),
    ),
    min_size=1,
    max_size=30,
)


ACCEPTED = [0]  # chunks the property run accepted (it proves nothing if it accepts none)


@CI
@given(config=configs(), event_list=events)
def test_every_valid_configuration_keeps_the_invariants(config, event_list):
    params = dataclasses.replace(
        DriverParams(),
        joint_names=NAMES,
        position_lower=tuple(LOWER),
        position_upper=tuple(UPPER),
        max_velocity=tuple(VMAX),
        max_acceleration=tuple(AMAX),
        **config,
    )
    assume(not params.validate())
    tick = 1.0 / params.control_rate
    clock = [T0]
    # The sim stamps its command log with its own stepped time: step it at least as often as
    # the loop ticks, or two ticks share a stamp and the replay below sees a move in dt = 0.
    sim = SimBackend(
        NAMES,
        0.5 * (LOWER + UPPER),
        LOWER,
        UPPER,
        rate=max(1000.0, 2.0 * params.control_rate),
        clock=lambda: clock[0],
    )
    executor = ChunkExecutor(
        NAMES, params.limits(), params.safety_config(), params.executor_config()
    )
    loop = ControlLoop(sim, executor)
    loop.start()
    check = CommandChecker(LOWER, UPPER, VMAX, AMAX, params.max_step_per_tick)
    for event in event_list:
        if isinstance(event, Ticks):
            for _ in range(event.count):
                clock[0] += tick
                result = loop.step(clock[0])
                if result.command is not None:
                    problems = check.check(clock[0], result.command.positions)
                    assert not problems, problems
        elif isinstance(event, Msg):
            outcome = loop.submit_msg(build_msg(event, clock[0], executor.last_command), clock[0])
            assert outcome.accepted or ":" in outcome.reason
            ACCEPTED[0] += outcome.accepted
        elif event.name == "estop":
            loop.estop()
        elif event.name == "reset":
            loop.reset()
        else:
            loop.hold(event.name == "hold_on")
    # What reached the robot, stamped with the sim's stepped time (up to one sim step early).
    robot = CommandChecker(
        LOWER, UPPER, VMAX, AMAX, params.max_step_per_tick, stamp_tolerance=sim.step
    )
    for stamp, positions in sim.command_log:
        problems = robot.check(stamp, positions)
        assert not problems, problems


def test_the_configuration_property_saw_accepted_chunks():
    if not ACCEPTED[0]:  # run alone (-k): run the property here
        test_every_valid_configuration_keeps_the_invariants()
    assert ACCEPTED[0] >= 30, ACCEPTED[0]
