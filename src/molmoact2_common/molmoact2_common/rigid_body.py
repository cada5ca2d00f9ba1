"""Rigid-body model of an arm loaded from its URDF: gravity torques and link poses.

A thin layer over pinocchio (PyPI package ``pin``) so no package carries hand-written
dynamics: the drivers' gravity feed-forward, the TF of every link and the policy node's
end-effector paths all come from the robot's own URDF through one kept library.

The caller names the joints it speaks (``joint_names``, e.g. the driver's joint order); the
URDF may hold more joints (fixed ones, a gripper's mimic joints): those stay at pinocchio's
neutral configuration. Joint values are REP-103: radians for revolute and continuous joints,
metres for prismatic ones. pinocchio is imported on first use, so importing this module is
cheap and a machine without ``pin`` gets a clear error only when a model is actually loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


class RigidBodyError(RuntimeError):
    """The model cannot be loaded or does not match the joints it is asked about."""


def _pinocchio() -> Any:
    try:
        import pinocchio
    except ImportError as exc:
        raise RigidBodyError(
            "rigid-body models need pinocchio: pip install pin (see requirements.txt)"
        ) from exc
    return pinocchio


class RigidBodyModel:
    """One fixed-base kinematic tree; all poses are in the URDF's root frame."""

    def __init__(
        self,
        model: Any,
        joint_names: Sequence[str],
        missing: Sequence[str] = (),
    ) -> None:
        pin = _pinocchio()
        self._pin = pin
        self._model = model
        self._data = model.createData()
        self.joint_names = tuple(joint_names)
        self.missing_joints = tuple(missing)
        # Per requested joint: (index into q, index into v, number of q entries) or None when
        # the URDF does not hold that joint (allowed only through ``allow_missing``).
        self._slots: list[tuple[int, int, int] | None] = []
        for name in self.joint_names:
            if name in self.missing_joints:
                self._slots.append(None)
                continue
            joint_id = model.getJointId(name)
            joint = model.joints[joint_id]
            if joint.nv != 1 or joint.nq not in (1, 2):
                raise RigidBodyError(
                    f"joint {name!r} has {joint.nq} position / {joint.nv} velocity coordinates; "
                    "only revolute, continuous and prismatic joints are supported"
                )
            self._slots.append((joint.idx_q, joint.idx_v, joint.nq))
        self._q0 = np.asarray(pin.neutral(model), dtype=float)
        self._limits: tuple[np.ndarray, np.ndarray] | None = None
        self._bounds: np.ndarray | None = None
        self._body_frames = [
            (frame.name, frame_id)
            for frame_id, frame in enumerate(model.frames)
            if frame.type == pin.FrameType.BODY
        ]

    @classmethod
    def from_urdf(
        cls,
        path: str,
        joint_names: Sequence[str],
        allow_missing: bool = False,
    ) -> RigidBodyModel:
        """Load the URDF file ``path``; every name in ``joint_names`` must be a movable URDF
        joint unless ``allow_missing`` (then the absent ones get zero torque and are ignored in
        poses)."""
        pin = _pinocchio()
        path = str(Path(path).expanduser())
        if not Path(path).is_file():
            raise RigidBodyError(f"URDF {path!r} does not exist")
        try:
            model = pin.buildModelFromUrdf(str(path))
        except (RuntimeError, ValueError) as exc:
            raise RigidBodyError(f"cannot load URDF {path!r}: {exc}") from exc
        movable = {model.names[i] for i in range(1, model.njoints)}
        missing = [name for name in joint_names if name not in movable]
        if missing and not allow_missing:
            raise RigidBodyError(
                f"URDF {path!r} has no movable joint(s) {missing}; it has {sorted(movable)}"
            )
        return cls(model, joint_names, missing)

    @property
    def root_frame(self) -> str:
        """Name of the URDF's root link (the frame every pose is expressed in)."""
        for name, frame_id in self._body_frames:
            if self._model.frames[frame_id].parentJoint == 0:
                return name
        return "universe"

    @property
    def link_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self._body_frames)

    def _configuration(self, q: Sequence[float] | np.ndarray) -> np.ndarray:
        values = np.asarray(q, dtype=float).reshape(-1)
        if values.shape != (len(self.joint_names),):
            raise RigidBodyError(
                f"expected {len(self.joint_names)} joint values for {list(self.joint_names)}, "
                f"got shape {np.shape(q)}"
            )
        if not np.all(np.isfinite(values)):
            raise RigidBodyError(f"joint values must be finite, got {values.tolist()}")
        config = self._q0.copy()
        for value, slot in zip(values, self._slots, strict=True):
            if slot is None:
                continue
            idx_q, _, nq = slot
            if nq == 1:
                config[idx_q] = value
            else:  # continuous joint: pinocchio stores (cos, sin)
                config[idx_q] = np.cos(value)
                config[idx_q + 1] = np.sin(value)
        return config

    def gravity_torques(self, q: Sequence[float] | np.ndarray) -> np.ndarray:
        """Torque (N*m; N for prismatic joints) each joint must apply to hold ``q`` still
        against gravity, in ``joint_names`` order; zero for joints the URDF does not hold."""
        tau = np.asarray(
            self._pin.computeGeneralizedGravity(self._model, self._data, self._configuration(q)),
            dtype=float,
        )
        return np.array([0.0 if slot is None else tau[slot[1]] for slot in self._slots])

    def position_limits(self) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) of each joint in ``joint_names`` order as the URDF states them;
        -inf/+inf for joints the URDF does not hold or does not limit (continuous)."""
        if self._limits is not None:
            return self._limits
        lower = np.full(len(self.joint_names), -np.inf)
        upper = np.full(len(self.joint_names), np.inf)
        for k, slot in enumerate(self._slots):
            if slot is None or slot[2] != 1:
                continue
            lo = float(self._model.lowerPositionLimit[slot[0]])
            hi = float(self._model.upperPositionLimit[slot[0]])
            if lo < hi:
                lower[k], upper[k] = lo, hi
        self._limits = (lower, upper)
        return lower, upper

    def gravity_torque_bounds(self) -> np.ndarray:
        """Per joint in ``joint_names`` order, a bound on |gravity torque| that holds at every
        configuration: g times the sum over the bodies the joint carries of mass times the
        longest the lever from the joint to that body's centre of mass can be (joint offsets
        along the chain plus the body's own centre-of-mass offset); for a prismatic joint the
        weight it carries [N]. Nothing the model computes for that joint can exceed it,
        whatever pose it is given."""
        if self._bounds is not None:
            return self._bounds
        model = self._model
        g = float(np.linalg.norm(model.gravity.linear))
        bounds = []
        for slot, name in zip(self._slots, self.joint_names, strict=True):
            if slot is None:
                bounds.append(0.0)
                continue
            joint_id = model.getJointId(name)
            if model.joints[joint_id].shortname().startswith("JointModelP"):
                # Prismatic: a force [N], at most the weight of everything it carries.
                mass = sum(float(model.inertias[b].mass) for b in model.subtrees[joint_id])
                bounds.append(g * mass)
                continue
            total = 0.0
            for body in model.subtrees[joint_id]:
                lever = float(np.linalg.norm(model.inertias[body].lever))
                walk = body
                while walk != joint_id:
                    lever += float(np.linalg.norm(model.jointPlacements[walk].translation))
                    walk = model.parents[walk]
                total += float(model.inertias[body].mass) * lever
            bounds.append(g * total)
        self._bounds = np.array(bounds)
        return self._bounds

    def link_poses(self, q: Sequence[float] | np.ndarray) -> dict[str, np.ndarray]:
        """4x4 homogeneous transform of every URDF link in the root frame at ``q``."""
        self._pin.framesForwardKinematics(self._model, self._data, self._configuration(q))
        return {
            name: np.array(self._data.oMf[frame_id].homogeneous, dtype=float)
            for name, frame_id in self._body_frames
        }
