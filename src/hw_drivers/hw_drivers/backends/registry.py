"""Backend name -> class, imported lazily so a missing vendor SDK only matters when chosen."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hw_drivers.backends.base import Backend
    from hw_drivers.driver_params import DriverParams

#: name -> "module:Class"; each class has ``from_params(cls, params: DriverParams) -> Backend``.
BACKEND_CLASSES: dict[str, str] = {
    "sim": "hw_drivers.backends.sim:SimBackend",
    "damiao": "hw_drivers.backends.damiao:DamiaoBackend",
    "feetech": "hw_drivers.backends.feetech:FeetechBackend",
    "franky": "hw_drivers.backends.franky_backend:FrankyBackend",
}


class BackendUnavailableError(RuntimeError):
    """The configured backend is unknown or its module (or vendor SDK) cannot be imported."""


def backend_class(name: str) -> type[Backend]:
    """The class registered under ``name``."""
    if name == "ros2_control":
        raise BackendUnavailableError(
            "backend 'ros2_control' is served by trajectory_bridge_node (JointTrajectory to the "
            "controller), not by driver_node"
        )
    try:
        target = BACKEND_CLASSES[name]
    except KeyError:
        raise BackendUnavailableError(
            f"unknown backend {name!r}; known backends: {sorted(BACKEND_CLASSES)}"
        ) from None
    module_name, class_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise BackendUnavailableError(
            f"backend {name!r} needs module {module_name!r}, which failed to import: {err}"
        ) from err
    try:
        return getattr(module, class_name)
    except AttributeError:
        raise BackendUnavailableError(
            f"backend {name!r}: module {module_name!r} has no class {class_name!r}"
        ) from None


def make_backend(params: DriverParams) -> Backend:
    """Build (not connect) the backend that ``params.backend`` names."""
    return backend_class(params.backend).from_params(params)
