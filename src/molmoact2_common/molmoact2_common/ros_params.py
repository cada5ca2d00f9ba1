"""Declare a node's ROS parameters from one typed dataclass (the single declaration).

Each node keeps its parameters in a frozen dataclass (no ROS imports) with defaults and a
``description`` in each field's metadata; the node, the bringup config validation and the docs
all read that dataclass. This module is the only place that turns it into ROS parameters.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def _descriptor(description: str, read_only: bool, dynamic: bool = False):
    from rcl_interfaces.msg import ParameterDescriptor

    return ParameterDescriptor(
        description=description, read_only=read_only, dynamic_typing=dynamic
    )


def declare_dataclass_params(node: Any, cls: type[T]) -> T:
    """Declare every field of ``cls`` on ``node`` and return an instance with the values."""
    from rclpy.exceptions import ParameterUninitializedException
    from rclpy.parameter import Parameter

    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        default = (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        )
        description = f.metadata.get("description", "")
        if isinstance(default, tuple):
            default = list(default)
        if isinstance(default, list) and not default:
            # An empty list has no element type: tell rclpy the intended array type.
            element = typing.get_args(hints[f.name])
            array_type = {
                str: Parameter.Type.STRING_ARRAY,
                float: Parameter.Type.DOUBLE_ARRAY,
                int: Parameter.Type.INTEGER_ARRAY,
                bool: Parameter.Type.BOOL_ARRAY,
            }[element[0] if element else str]
            node.declare_parameter(
                f.name, array_type, _descriptor(description, f.metadata.get("read_only", False))
            )
            try:
                value = node.get_parameter(f.name).value
            except ParameterUninitializedException:
                value = None  # declared by type only and not set anywhere: the empty default
            values[f.name] = list(value) if value is not None else []
        else:
            # YAML writes 250 for 250.0: let float parameters accept integers (and integer
            # arrays for float arrays), then coerce below.
            dynamic = isinstance(default, float) or (
                isinstance(default, list) and any(isinstance(v, float) for v in default)
            )
            value = node.declare_parameter(
                f.name,
                default,
                _descriptor(description, f.metadata.get("read_only", False), dynamic),
            ).value
            values[f.name] = value
        element = typing.get_args(hints[f.name])
        if isinstance(default, list):
            if element and element[0] is float:
                values[f.name] = tuple(float(v) for v in values[f.name])
            else:
                values[f.name] = tuple(values[f.name])
        elif hints[f.name] is float and isinstance(values[f.name], int):
            values[f.name] = float(values[f.name])
    return cls(**values)


def dataclass_defaults(cls: type) -> dict[str, Any]:
    """Field name -> default value, for config validation and docs (no ROS needed)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = f.default
    return out
