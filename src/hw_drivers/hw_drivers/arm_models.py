"""The arm models hw_drivers ships (``models/*.urdf``) and how a driver parameter names one.

A parameters file may name a shipped model by its file name (``dynamics_urdf:
yam_arm_i2rt.urdf``), so the same file works whatever directory the driver starts in. Each
model's sources and changes are in its file's header.
"""

from __future__ import annotations

from pathlib import Path

from molmoact2_common.rigid_body import RigidBodyError

MODELS_DIR = Path(__file__).resolve().parent / "models"


def resolve_model_path(name: str) -> Path:
    """``name`` as a file: an absolute path, a path relative to the working directory, or
    the file name of a model hw_drivers ships (``MODELS_DIR``, e.g. ``yam_arm_i2rt.urdf``).
    RigidBodyError (listing the shipped models) when it is none of these."""
    path = Path(name).expanduser()
    if path.is_absolute() or path.is_file():
        return path
    shipped = MODELS_DIR / path
    if shipped.is_file():
        return shipped
    raise RigidBodyError(
        f"URDF {name!r} does not exist (neither relative to {Path.cwd()} nor a model shipped "
        f"in {MODELS_DIR}: {sorted(p.name for p in MODELS_DIR.glob('*.urdf'))})"
    )
