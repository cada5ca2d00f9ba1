"""Every parameter of every node of each robot's graph has a value over the parameter services.

``ros2 param get``/``dump`` read ``~/get_parameters``; a parameter declared by type only (an
empty-list default) answered NOT_SET there, which ``ros2 param dump`` could not write. Each
node's parameters are declared here exactly as the node does (``declare_dataclass_params`` with
the robot config and the launch's overrides file) and read back through the services.
"""

from __future__ import annotations

import dataclasses
import tempfile
import typing
from pathlib import Path

import pytest

from molmoact2 import graph
from molmoact2.supervisor import write_overrides
from molmoact2_common.ros_params import declare_dataclass_params

pytestmark = pytest.mark.ros

DEPTH_CACHE_PARAMS = "molmoact2_policy.depth_cache_params:DepthCacheParams"


def _expected_type(hint: typing.Any) -> int:
    from rcl_interfaces.msg import ParameterType as T

    if typing.get_origin(hint) is tuple:
        kind = (typing.get_args(hint) or (str,))[0]
        return {
            str: T.PARAMETER_STRING_ARRAY,
            float: T.PARAMETER_DOUBLE_ARRAY,
            int: T.PARAMETER_INTEGER_ARRAY,
            bool: T.PARAMETER_BOOL_ARRAY,
        }[kind]
    return {
        str: T.PARAMETER_STRING,
        float: T.PARAMETER_DOUBLE,
        int: T.PARAMETER_INTEGER,
        bool: T.PARAMETER_BOOL,
    }[hint]


def _graph_nodes(robot: str) -> list[tuple[str, tuple[str, ...], str]]:
    """(node name, params files, params class) of every node that declares parameters, with
    the hardware graph's driver (the ros2_control bridge for DROID) and the sim graph's."""
    out = []
    directory = Path(tempfile.mkdtemp(prefix="param-services-"))
    seen = set()
    for sim in (True, False):
        options = graph.LaunchOptions(sim=sim, record=True, foxglove=True, think=True)
        for spec in graph.build_graph(robot, options):
            key = (spec.name, spec.params_class)
            if key in seen:
                continue
            seen.add(key)
            files = (*spec.param_files, str(write_overrides(spec, directory)))
            out.append((spec.name, files, spec.params_class))
    config = graph.load_robot_config(robot)
    out.append((graph.DEPTH_CACHE_NODE, (str(config.path),), DEPTH_CACHE_PARAMS))
    return out


@pytest.mark.parametrize("robot", ["yam", "so101", "droid"])
def test_every_parameter_has_a_typed_value_over_the_services(robot):
    import rclpy
    from rcl_interfaces.msg import ParameterType
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter_client import AsyncParameterClient

    rclpy.init()
    try:
        executor = SingleThreadedExecutor()
        client_node = rclpy.create_node(f"param_reader_{robot}")
        executor.add_node(client_node)
        checked = 0
        for name, files, params_class in _graph_nodes(robot):
            args = ["--ros-args", "-r", f"__node:={name}"]
            for path in files:
                args += ["--params-file", path]
            node = rclpy.create_node(name, cli_args=args, use_global_arguments=False)
            cls = graph.load_params_class(params_class)
            problems: list[str] = []
            declare_dataclass_params(node, cls, problems)
            assert problems == [], (name, problems)
            executor.add_node(node)
            client = AsyncParameterClient(client_node, node.get_fully_qualified_name())
            assert client.wait_for_services(timeout_sec=10.0)
            fields = dataclasses.fields(cls)
            hints = typing.get_type_hints(cls)
            listed = client.list_parameters()
            executor.spin_until_future_complete(listed, timeout_sec=10.0)
            assert set(f.name for f in fields) <= set(listed.result().result.names)
            got = client.get_parameters([f.name for f in fields])
            executor.spin_until_future_complete(got, timeout_sec=10.0)
            values = got.result().values
            # The service leaves out a parameter that has no value.
            assert len(values) == len(fields), (name, len(values), len(fields))
            for f, value in zip(fields, values, strict=True):
                assert value.type != ParameterType.PARAMETER_NOT_SET, (name, f.name)
                assert value.type == _expected_type(hints[f.name]), (name, f.name, value.type)
            checked += len(fields)
            executor.remove_node(node)
            node.destroy_node()
        assert checked > 0
        client_node.destroy_node()
    finally:
        rclpy.shutdown()
