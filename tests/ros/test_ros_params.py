"""Node parameters come from one dataclass; ROS overrides reach the instance typed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from molmoact2_common.ros_params import dataclass_defaults, declare_dataclass_params

pytestmark = pytest.mark.ros


@dataclass(frozen=True)
class ExampleParams:
    rate: float = field(default=30.0, metadata={"description": "rate [Hz]"})
    names: tuple[str, ...] = field(default=("a", "b"), metadata={"description": "names"})
    limits: tuple[float, ...] = field(default=(), metadata={"description": "limits [rad]"})
    backend: str = field(default="sim", metadata={"description": "backend"})
    enabled: bool = True


def test_declare_dataclass_params_defaults_and_overrides():
    import rclpy
    from rclpy.parameter import Parameter

    rclpy.init()
    try:
        node = rclpy.create_node(
            "params_test",
            parameter_overrides=[
                Parameter("rate", Parameter.Type.INTEGER, 250),
                Parameter("limits", Parameter.Type.DOUBLE_ARRAY, [1.0, 2.0]),
            ],
        )
        params = declare_dataclass_params(node, ExampleParams)
        assert params.rate == 250.0 and isinstance(params.rate, float)
        assert params.names == ("a", "b")
        assert params.limits == (1.0, 2.0)
        assert params.backend == "sim" and params.enabled is True
        descriptor = node.describe_parameter("rate")
        assert descriptor.description == "rate [Hz]"
        node.destroy_node()
    finally:
        rclpy.shutdown()


def test_dataclass_defaults_lists_every_field():
    defaults = dataclass_defaults(ExampleParams)
    assert defaults == {
        "rate": 30.0,
        "names": ("a", "b"),
        "limits": (),
        "backend": "sim",
        "enabled": True,
    }


def test_integer_yaml_values_for_float_arrays_are_coerced():
    import rclpy
    from rclpy.parameter import Parameter

    @dataclass(frozen=True)
    class ArrayParams:
        lower: tuple[float, ...] = (-1.0, -2.0)

    rclpy.init()
    try:
        node = rclpy.create_node(
            "params_test_arrays",
            parameter_overrides=[Parameter("lower", Parameter.Type.INTEGER_ARRAY, [-3, 4])],
        )
        params = declare_dataclass_params(node, ArrayParams)
        assert params.lower == (-3.0, 4.0)
        assert all(isinstance(v, float) for v in params.lower)
        node.destroy_node()
    finally:
        rclpy.shutdown()


def test_empty_list_default_without_override_stays_empty():
    import rclpy

    @dataclass(frozen=True)
    class EmptyParams:
        channels: tuple[str, ...] = ()
        gains: tuple[float, ...] = ()

    rclpy.init()
    try:
        node = rclpy.create_node("params_test_empty")
        params = declare_dataclass_params(node, EmptyParams)
        assert params.channels == () and params.gains == ()
        node.destroy_node()
    finally:
        rclpy.shutdown()


@dataclass(frozen=True)
class RenamedParams:
    DEPRECATED: ClassVar[dict[str, str]] = {"old_count": "count"}
    count: int = field(default=3, metadata={"description": "count"})


@pytest.mark.parametrize(
    "overrides",
    [
        {"old_count": 5},
        {"old_count": 5, "count": 3},  # the new name set to its default beside the old one
        {"old_count": 5, "count": 2},
        {"count": 3},
        {},
    ],
)
def test_a_deprecated_name_is_read_on_the_node_as_the_launch_check_reads_it(overrides):
    # The launch's config check applies apply_deprecated to the config's values; the node must
    # end up with the same value, or the check validates one number and the robot runs another.
    import rclpy
    from rclpy.parameter import Parameter

    from molmoact2_common.ros_params import apply_deprecated

    expected = {"count": 3, **apply_deprecated(RenamedParams, overrides)[0]}["count"]
    rclpy.init()
    try:
        node = rclpy.create_node(
            "renamed_params_test",
            parameter_overrides=[
                Parameter(name, Parameter.Type.INTEGER, value) for name, value in overrides.items()
            ],
        )
        params = declare_dataclass_params(node, RenamedParams)
        assert params.count == expected
        assert node.get_parameter("count").value == expected
        node.destroy_node()
    finally:
        rclpy.shutdown()
