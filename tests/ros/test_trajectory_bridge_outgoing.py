"""Every message the bridge sends passes one last check (``bridge_guard.outgoing_problem``),
whatever produced it: a chunk's trajectory after ``guard``, an e-stop's or hold's stop.

Each test breaks one producer on purpose (as a bug would) and sends through the node's own
callbacks, in order, no spinning: before, the broken message reached the controller.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.ros.test_trajectory_bridge_lifecycle_probe import CONTROLLER, HOME, Rig
from tests.ros.test_trajectory_bridge_lifecycle_probe import _chunk as chunk_msg

pytestmark = pytest.mark.ros


@pytest.fixture
def rig():
    rig = Rig()
    rig.joint_state()
    yield rig
    rig.close()


def _nan_first(trajectory):
    from hw_drivers.trajectory import JointTrajectoryData, TrajectoryPoint

    first, *rest = trajectory.points
    broken = np.array(first.positions, dtype=float)
    broken[1] = math.nan
    point = TrajectoryPoint(broken, first.velocities, first.time_from_start)
    return JointTrajectoryData(trajectory.joint_names, (point, *rest), trajectory.stamp)


def test_a_chunk_trajectory_the_guard_let_through_broken_is_refused_not_sent(rig, monkeypatch):
    from hw_drivers import trajectory_bridge_node as node_module
    from hw_drivers.bridge_guard import GuardResult
    from hw_drivers.trajectory import BridgeOutput

    real_guard = node_module.guard

    def broken_guard(out, *args, **kwargs):
        checked = real_guard(out, *args, **kwargs)
        traj = _nan_first(checked.output.trajectory)
        return GuardResult(BridgeOutput(traj, checked.output.gripper, 0), "", checked.ramp)

    monkeypatch.setattr(node_module, "guard", broken_guard)
    rig.sequence += 1
    rig.bridge._on_chunk(chunk_msg(rig.now(), "valid", rig.sequence))
    assert rig.outputs == [], "a trajectory with NaN reached the controller"
    [(sequence, reason)] = rig.verdicts
    assert sequence == rig.sequence and reason.startswith("outgoing: point 0 has a non-finite")
    assert rig.bridge.accepted == 0 and rig.bridge.rejected == 1
    # Nothing of it counts as running: a deactivate has nothing to stop.
    assert rig.bridge._controller_trajectory is None


def test_a_broken_stop_is_not_sent_and_the_answer_says_so(rig, monkeypatch):
    from std_srvs.srv import SetBool

    from hw_drivers import trajectory_bridge_node as node_module

    real_stop = node_module.stop_trajectory
    monkeypatch.setattr(
        node_module, "stop_trajectory", lambda *a, **k: _nan_first(real_stop(*a, **k))
    )
    answer = rig.bridge._on_hold(SetBool.Request(data=True), SetBool.Response())
    assert answer.success  # the hold is latched all the same: no chunk is forwarded
    assert rig.outputs == [], "a stop with NaN reached the controller"
    assert rig.bridge._control.hold_requested
    said = rig.bridge._stop_motion()
    assert said.startswith("no stop sent: point 0 has a non-finite position"), said
    # A whole stop goes out again once the producer is right.
    monkeypatch.setattr(node_module, "stop_trajectory", real_stop)
    assert rig.bridge._stop_motion().startswith("stop sent")
    [(out, is_stop)] = rig.outputs
    assert is_stop and list(out.trajectory.joint_names) == CONTROLLER
    assert np.allclose(out.trajectory.points[0].positions, HOME)
