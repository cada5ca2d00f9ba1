"""``ros2 param set`` and lifecycle transitions from a hostile or buggy neighbour, against a
running driver process that is following chunks.

Every parameter call below is what ``ros2 param set`` sends (rcl_interfaces SetParameters);
every one must come back refused with a reason that names the problem, the driver must keep
running and keep following, and every command over the whole test obeys the invariants
(``tests.command_invariants`` via the hostile-input probe). Before the fix the first call (a
string for the float ``max_step_per_tick``) raised in the parameter callback and killed the
driver; non-live parameters (``control_rate: -5``) were answered "successful" and ignored.
"""

from __future__ import annotations

import math
import uuid

import pytest

from tests.ros.test_driver_hostile_input import CONFIG, RATE, Probe
from tests.rostest_util import start_python, stop_process

pytestmark = pytest.mark.ros

NAN, INF = math.nan, math.inf
# (parameter, value, a word the refusal must contain)
HOSTILE = [
    ("max_step_per_tick", "abc", "must be a number"),
    ("max_step_per_tick", NAN, "max_step_per_tick"),
    ("max_step_per_tick", INF, "max_step_per_tick"),
    ("max_step_per_tick", -1.0, "max_step_per_tick"),
    ("max_step_per_tick", 0.0, "max_step_per_tick"),
    ("max_step_per_tick", True, "must be a number"),
    ("max_step_per_tick", [0.01], "must be a number"),
    ("max_step_per_tick", 1.0, "hard limit"),
    ("max_velocity", [1.0], "6 values"),
    ("max_velocity", [NAN] * 6, "non-finite"),
    ("max_velocity", [-1.0] * 6, "> 0"),
    ("max_velocity", [1e9] * 6, "hard limit"),
    ("max_velocity", ["a"] * 6, "number"),
    ("max_acceleration", [INF] * 6, "non-finite"),
    ("position_lower", [-1e308] * 6, "hard limit"),
    ("position_upper", [0.0] * 6, "position_lower >= position_upper"),
    ("control_rate", "abc", "read at start"),
    ("control_rate", -5.0, "read at start"),
    ("watchdog_timeout", NAN, "read at start"),
    ("ramp_in_time", 0.0, "read at start"),
    ("execution", "weird\x00", "not one of"),
    ("execution", 5, None),  # rclpy refuses the type itself
    ("active_arms", "left", "not 'both'"),
    ("dry_run", "yes", None),
    # Live, it stopped the control loop until a /clock came, and a fast /clock then ran the
    # loop faster than its rate in wall time.
    ("use_sim_time", True, "use_sim_time is fixed"),
]


def test_hostile_parameter_sets_are_refused_while_the_arm_follows_its_chunks():
    import rclpy
    from lifecycle_msgs.srv import GetState
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    namespace = f"/pp_{uuid.uuid4().hex[:8]}"
    proc = start_python(
        [
            "-m", "hw_drivers.driver_node", "--ros-args", "--params-file", str(CONFIG),
            "-r", "__node:=so101_driver", "-r", f"__ns:={namespace}",
            "-p", f"control_rate:={RATE}", "-p", "ramp_in_time:=0.3",
            "-p", "watchdog_timeout:=1.0",
        ]
    )  # fmt: skip
    rclpy.init()
    probe = Probe(namespace, proc)
    try:
        assert probe.spin(30.0, until=lambda: len(probe.commands) > 10), stop_process(proc)
        assert probe.spin(30.0, until=lambda: probe.chunk_pub.get_subscription_count() > 0)
        set_params = probe.node.create_client(SetParameters, "so101_driver/set_parameters")
        origin = probe.now()
        next_chunk = [0.0]

        def publish(now: float) -> None:
            if now >= next_chunk[0]:
                next_chunk[0] = now + 0.1
                probe.wave_chunk(origin)

        probe.spin(1.0, publish=publish)  # ramped in and following
        for name, value, word in HOSTILE:
            request = SetParameters.Request(
                parameters=[Parameter(name, value=value).to_parameter_msg()]
            )
            [result] = probe.call(set_params, request).results
            assert not result.successful, (name, value)
            assert result.reason, (name, value)
            if word is not None:
                assert word in result.reason, (name, value, result.reason)
            probe.spin(0.02, publish=publish)
        # Still following the same trajectory after all of it.
        t0 = probe.now()
        probe.spin(1.0, publish=publish)
        assert probe.tracking_error(t0 + 0.3, probe.now(), origin) < 0.05
        get_state = probe.node.create_client(GetState, "so101_driver/get_state")
        assert probe.call(get_state, GetState.Request()).current_state.label == "active"
    finally:
        probe.node.destroy_node()
        rclpy.shutdown()
        output = stop_process(proc)
    assert proc.returncode is not None
    assert "Traceback" not in output, output
    assert "parameter change refused: max_step_per_tick must be a number" in output
    assert probe.check.count > 100
    assert not probe.violations, probe.violations[:5]
