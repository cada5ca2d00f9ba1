"""YAM gravity feed-forward as shipped (config/yam.yaml) against i2rt's own computation.

The golden values are what i2rt computes for its YAM with the linear_4310 gripper, produced by
``tests/fixtures/i2rt_gravity_golden.py`` (MuJoCo ``mj_inverse`` on i2rt's combined arm +
gripper model, i2rt-robotics/i2rt arm/yam/yam.xml at 5d47b35 and gripper/linear_4310/
linear_4310.xml), not by our code. The mapping from our joints to i2rt's is written from i2rt's
source: i2rt/robots/config/yam.yml gives motor directions [1, 1, 1, 1, 1, 1] and get_robot.py
motor offsets 0, so i2rt's joint angle is the motor angle we read and command; i2rt multiplies
the model torque by yam.yml's ``gravity_comp_factor`` and gives the gripper motor 0
(motor_chain_robot.py ``update`` and ``_compute_gravity_compensation``).
"""

from __future__ import annotations

import dataclasses
import math
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hw_drivers import damiao_protocol as dm
from hw_drivers.arm_models import MODELS_DIR
from hw_drivers.backends.damiao import GRAVITY_RANGE_MARGIN, DamiaoBackend
from hw_drivers.emulators.damiao_emulator import TimedDamiaoBus
from molmoact2 import graph
from molmoact2_common.rigid_body import RigidBodyModel
from tests.virtual_bus import VIRTUAL_TIME_IO_TIMEOUT

SHIPPED_URDF = MODELS_DIR / "yam_arm_i2rt.urdf"
URDF_JOINTS = [f"dof_joint{i}" for i in range(1, 7)]
#: i2rt/robots/config/yam.yml ``gravity_comp_factor`` (joints 1-6).
I2RT_FACTORS = np.array([1.3, 1.1, 1.35, 1.3, 1.3, 1.3])
#: A point fixed in the gripper frame, 20 cm out and off joint 6's axis, so its world position
#: depends on the sign of every joint, 5 and 6 included.
POINT = np.array([0.03, 0.04, -0.2])
#: i2rt's base frame is the URDF's root frame turned by +90 deg about z (the heading i2rt's
#: URDF normalisation applied); gravity is along z in both, so torques do not depend on it.
HEADING = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
#: The URDF's finger links (0.0697 kg each) are the exported gripper's, i2rt's linear_4310
#: model has 0.0710 kg fingers a few mm away: at most 0.015 N*m on joint 2 over 500 random
#: poses. Against i2rt's older model (yam.xml db582ea with its 10a84fc gripper mount) the
#: difference is at most 0.07 N*m: i2rt's own model revisions differ by that much.
TORQUE_TOL = 0.02

# (i2rt joint angles = our motor angles, i2rt's gravity torque [N*m], POINT in i2rt's base
# frame [m]). Poses: a rest pose, the arm rows of i2rt's posed URDF/MJCF alignment test
# (i2rt/robots/tests/test_urdf_mjcf_posed_alignment.py) and our sim's start pose.
GOLDEN = [
    (
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        [-0.000000, 1.824154, 6.623949, 1.570860, 0.000003, -0.001353],
        [0.310598, -0.039998, 0.143503],
    ),
    (
        [2.93, 0.05, 0.6, -0.08, 0.15, 2.07],
        [0.000002, 3.612133, 4.825313, 1.277710, -0.034403, 0.000513],
        [-0.220048, 0.037272, 0.429492],
    ),
    (
        [3.06, 1.68, 3.14, 1.58, 1.57, -2.07],
        [-0.000002, 1.045151, -1.967849, -1.080913, -0.051975, -0.000925],
        [0.074454, 0.230302, 0.583628],
    ),
    (
        [0.06, 0.68, 1.14, 0.58, 0.57, 0.07],
        [0.000001, 2.157364, 4.410446, 0.528386, -0.239379, -0.000736],
        [0.172616, -0.148878, 0.642751],
    ),
    (
        [-2.6, 0.0, 0.0, 1.58, -1.57, 1.4],
        [-0.000004, 3.664773, 4.783330, -0.269768, 0.512443, -0.001297],
        [0.082868, -0.225117, 0.225329],
    ),
    (
        [0.12, 0.0, 0.74, 1.58, -1.57, 2.07],
        [0.000001, 6.608491, 1.839612, -0.911108, 0.375242, -0.001263],
        [-0.135316, 0.221028, 0.358157],
    ),
    (
        [0.1, 1.0, 1.2, -0.2, 0.3, -0.4],
        [-0.000000, -1.648126, 6.211044, 1.547667, 0.000002, -0.001171],
        [0.399919, -0.076435, 0.431074],
    ),
]
GRIPPER_OPEN = -1.35  # gripper motor angle of the emulated arms (its open end stop)


@pytest.fixture(scope="module")
def model() -> RigidBodyModel:
    return RigidBodyModel.from_urdf(str(SHIPPED_URDF), URDF_JOINTS)


def shipped_driver_params() -> types.SimpleNamespace:
    """The yam driver's parameters as the launch graph hands them on hardware."""
    config = graph.load_robot_config("yam")
    [driver] = [
        n
        for n in graph.build_graph(config, graph.LaunchOptions(sim=False))
        if n.name == config.driver_name
    ]
    return types.SimpleNamespace(**{**config.params_for(config.driver_name), **driver.overrides})


def shipped_backend(poses: list[list[float]]) -> tuple[DamiaoBackend, dict[str, TimedDamiaoBus]]:
    backend = DamiaoBackend.from_params(shipped_driver_params())
    backend.io_timeout = VIRTUAL_TIME_IO_TIMEOUT
    buses = {
        arm.channel: TimedDamiaoBus(
            arm.channel, initial_positions=[*poses[k], GRIPPER_OPEN], seed=k
        )
        for k, arm in enumerate(backend.arms)
    }
    for bus in buses.values():
        # yam.yaml's linear_4310 gripper, calibrated at enable: resting on its open stop.
        bus.attach_gripper(0x07, GRIPPER_OPEN + 6.57, GRIPPER_OPEN)
    backend.link_factory = buses.__getitem__
    return backend, buses


def sent_torques(buses: dict[str, TimedDamiaoBus]) -> np.ndarray:
    return np.array(
        [bus.snapshot(m).received[-1].torque for bus in buses.values() for m in range(1, 8)]
    )


def i2rt_feed_forward(tau: list[float]) -> np.ndarray:
    """What i2rt sends one arm: model torque times gravity_comp_factor, 0 for the gripper."""
    return np.append(np.asarray(tau) * I2RT_FACTORS, 0.0)


# -- the shipped model is i2rt's --------------------------------------------------------------
@pytest.mark.parametrize(("q", "tau", "point"), GOLDEN)
def test_the_shipped_urdf_moves_like_i2rts_model(model, q, tau, point) -> None:
    pose = model.link_poses(q)["gripper"]
    np.testing.assert_allclose(HEADING @ (pose[:3, :3] @ POINT + pose[:3, 3]), point, atol=2e-6)


def test_the_kinematic_check_tells_a_flipped_joint_apart(model) -> None:
    # The check above would catch a sign error on any joint: flipping joint 5 or 6 alone moves
    # the point by centimetres at a pose where that joint is away from zero.
    q, _, point = GOLDEN[4]  # joint 5 at -1.57, joint 6 at 1.4 rad
    for joint in (4, 5):
        flipped = list(q)
        flipped[joint] = -flipped[joint]
        pose = model.link_poses(flipped)["gripper"]
        moved = HEADING @ (pose[:3, :3] @ POINT + pose[:3, 3]) - point
        assert np.linalg.norm(moved) > 0.01


@pytest.mark.parametrize(("q", "tau", "point"), GOLDEN)
def test_the_shipped_urdf_gives_i2rts_gravity_torques(model, q, tau, point) -> None:
    np.testing.assert_allclose(model.gravity_torques(q), tau, atol=TORQUE_TOL)


# -- the shipped driver config commands i2rt's feed-forward -----------------------------------
def test_the_shipped_config_turns_gravity_feed_forward_on() -> None:
    params = shipped_driver_params()
    # Named as a shipped model, so the driver finds it whichever directory it starts in.
    assert params.dynamics_urdf == SHIPPED_URDF.name
    np.testing.assert_array_equal(params.gravity_joint_factors, I2RT_FACTORS)
    backend = DamiaoBackend.from_params(params)
    assert all(arm.dynamics is not None for arm in backend.arms)
    assert "gravity feed-forward from the arm model (factors 1.3, 1.1, 1.35" in backend.sag_note()


@pytest.mark.parametrize("k", range(len(GOLDEN)))
def test_both_arms_get_i2rts_feed_forward_at_each_pose(k: int) -> None:
    backend, _ = shipped_backend([GOLDEN[0][0], GOLDEN[0][0]])
    left, right = GOLDEN[k], GOLDEN[(k + 1) % len(GOLDEN)]
    positions = np.array([*left[0], 0.5, *right[0], 0.5])
    expected = np.concatenate([i2rt_feed_forward(left[1]), i2rt_feed_forward(right[1])])
    np.testing.assert_allclose(
        backend.gravity_torques(positions), expected, atol=TORQUE_TOL * I2RT_FACTORS.max()
    )


def test_the_mit_frames_carry_i2rts_feed_forward_at_the_measured_pose() -> None:
    (q_left, tau_left, _), (q_right, tau_right, _) = GOLDEN[6], GOLDEN[3]
    backend, buses = shipped_backend([q_left, q_right])
    backend.connect()
    try:
        backend.enable()
        measured = backend.read_state().positions
        backend.write_command(measured)
        expected = np.concatenate([i2rt_feed_forward(tau_left), i2rt_feed_forward(tau_right)])
        # Feedback is 16-bit over +-12.5 rad, the torque field 12-bit over the motor's range.
        quantum = dm.quantum(-28.0, 28.0, 12)
        np.testing.assert_allclose(sent_torques(buses), expected, atol=0.03 + quantum)
        assert backend.gravity_status == ["on", "on"]
    finally:
        backend.disconnect()


# -- it never pushes from a measurement it cannot trust ----------------------------------------
def test_feed_forward_is_off_while_the_feedback_is_stale_and_back_when_fresh() -> None:
    q = GOLDEN[6][0]
    backend, buses = shipped_backend([q, q])
    backend.connect()
    try:
        backend.enable()
        measured = backend.read_state().positions
        backend.write_command(measured)
        assert abs(sent_torques(buses)[2]) > 5.0  # joint 3 carries most of the arm
        # A late tick (older than max_feedback_age, younger than gravity_max_feedback_age)
        # keeps the feed-forward: switching it off for one tick would jolt the arm.
        late = buses["can0"].now() + 2.0 * backend.max_feedback_age
        for bus in buses.values():
            bus.sleep_until(late)
        backend.write_command(measured)
        assert abs(sent_torques(buses)[2]) > 5.0
        # The caller stalls for a dozen ticks: the pose is older than the feed-forward trusts
        # by the time the next command is built; that command carries none.
        stall = buses["can0"].now() + 1.5 * backend.gravity_max_feedback_age
        for bus in buses.values():
            bus.sleep_until(stall)
        backend.write_command(measured)
        np.testing.assert_allclose(sent_torques(buses), 0.0, atol=dm.quantum(-28.0, 28.0, 12))
        assert all("feedback" in s and "s old" in s for s in backend.gravity_status)
        entry = next(e for e in backend.health() if e.name == "damiao bus can0")
        assert entry.values["gravity_feed_forward"].startswith("off: feedback")
        # A fresh reading turns it back on.
        backend.read_state()
        backend.write_command(measured)
        assert abs(sent_torques(buses)[2]) > 5.0
        assert backend.gravity_status == ["on", "on"]
    finally:
        backend.disconnect()


def test_an_arm_measured_outside_its_model_gets_no_feed_forward() -> None:
    q = GOLDEN[6][0]
    backend, buses = shipped_backend([q, q])
    backend.connect()
    try:
        backend.enable()
        # A wrong zero offset or a garbled position: left joint 2 reads 5 rad, far past the
        # model's 3.665 rad. The left arm holds without feed-forward; the right arm keeps it.
        with buses["can0"]._lock:
            buses["can0"].motors[2].position = 5.0
        measured = backend.read_state().positions
        backend.write_command(measured)
        torques = sent_torques(buses)
        np.testing.assert_allclose(torques[:7], 0.0, atol=dm.quantum(-28.0, 28.0, 12))
        assert abs(torques[9]) > 5.0
        assert backend.gravity_status[0].startswith("off: left_joint2 measured at 5.000 rad")
        assert backend.gravity_status[1] == "on"
    finally:
        backend.disconnect()


def test_a_model_that_returns_nonsense_is_clamped_to_what_gravity_can_load(model) -> None:
    class Broken:
        """The real model's limits, but torques a hundred times too large (a model bug)."""

        def __init__(self, real: RigidBodyModel) -> None:
            self.real = real

        def position_limits(self):
            return self.real.position_limits()

        def gravity_torque_bounds(self):
            return self.real.gravity_torque_bounds()

        def gravity_torques(self, q):
            return 100.0 * self.real.gravity_torques(q)

    backend, _ = shipped_backend([GOLDEN[0][0], GOLDEN[0][0]])
    backend.arms = tuple(dataclasses.replace(a, dynamics=Broken(a.dynamics)) for a in backend.arms)
    q = GOLDEN[0][0]
    torques = backend.gravity_torques(np.array([*q, 0.5, *q, 0.5]))
    limits = np.minimum(model.gravity_torque_bounds() * I2RT_FACTORS, [28, 28, 28, 10, 10, 10])
    np.testing.assert_allclose(np.abs(torques[1:4]), limits[1:4])
    # The bound holds the real model too: joint 2 of the YAM can need at most 16.4 N*m.
    assert model.gravity_torque_bounds()[1] == pytest.approx(16.38, abs=0.01)


@settings(max_examples=150, derandomize=True, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(-12.5, 12.5),
            st.floats(allow_nan=True, allow_infinity=True),
        ),
        min_size=14,
        max_size=14,
    )
)
def test_feed_forward_stays_within_bounds_for_any_measurement(values) -> None:
    backend = _PROPERTY_BACKEND
    positions = np.array(values, dtype=float)
    torques = backend.gravity_torques(positions)
    assert np.all(np.isfinite(torques))
    for a, arm in enumerate(backend.arms):
        block = torques[a * 7 : (a + 1) * 7]
        assert block[6] == 0.0  # the gripper gets none, as in i2rt
        bounds = arm.dynamics.gravity_torque_bounds() * np.asarray(arm.gravity_factors)
        assert np.all(np.abs(block[:6]) <= np.minimum(bounds, 28.0) + 1e-12)
        q = positions[a * 7 : a * 7 + 6]
        lower, upper = arm.dynamics.position_limits()
        trusted = np.all(np.isfinite(q)) and np.all(
            (q >= lower - GRAVITY_RANGE_MARGIN) & (q <= upper + GRAVITY_RANGE_MARGIN)
        )
        if not trusted:
            assert np.all(block == 0.0)
        else:
            expected = arm.dynamics.gravity_torques(q) * np.asarray(arm.gravity_factors)
            np.testing.assert_allclose(block[:6], expected, atol=1e-12)


_PROPERTY_BACKEND = DamiaoBackend.from_params(shipped_driver_params())
assert math.isclose(_PROPERTY_BACKEND.gravity_scale, 1.0)


def test_a_model_name_that_is_neither_a_file_nor_shipped_is_refused() -> None:
    from hw_drivers.backends.base import BackendError

    params = shipped_driver_params()
    params.dynamics_urdf = "yam_arm_typo.urdf"
    with pytest.raises(BackendError, match=r"does not exist .*yam_arm_i2rt\.urdf"):
        DamiaoBackend.from_params(params)
