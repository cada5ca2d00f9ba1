"""Render docs/parameters.md from the nodes' parameter dataclasses (their one declaration).

Run after changing a parameter: `.venv/bin/python scripts/gen_param_docs.py`. A test checks
that the committed page matches the dataclasses.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
import typing
from pathlib import Path

NODES = [
    ("molmoact2_policy", "molmoact2_policy.policy_node_params:PolicyNodeParams"),
    ("molmoact2_depth_cache", "molmoact2_policy.depth_cache_params:DepthCacheParams"),
    ("<robot>_driver, trajectory bridge", "hw_drivers.driver_params:DriverParams"),
    (
        "trajectory_bridge_node (arms under ros2_control)",
        "hw_drivers.trajectory_bridge_params:TrajectoryBridgeParams",
    ),
    ("sim_cameras", "molmoact2.sim_camera_node:SimCameraParams"),
    ("recorder", "molmoact2.recorder_node:RecorderParams"),
    ("molmoact2_tf", "molmoact2.tf_node:TfParams"),
]
OUT = Path(__file__).resolve().parents[1] / "docs" / "parameters.md"


def _type_name(hint) -> str:
    origin = typing.get_origin(hint)
    if origin is tuple:
        return f"{_type_name(typing.get_args(hint)[0])}[]"
    return getattr(hint, "__name__", str(hint))


def _default(field: dataclasses.Field) -> str:
    if field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        value = field.default
    if isinstance(value, tuple):
        value = list(value)
    text = repr(value) if isinstance(value, str) else str(value)
    return text.replace("|", "\\|")


def render() -> str:
    lines = [
        "# Node parameters",
        "",
        "Generated from each node's parameter dataclass by `scripts/gen_param_docs.py`; the",
        "robot configs in `config/` set them (keys under `/**` reach every node).",
        "",
    ]
    for node, target in NODES:
        module_name, _, class_name = target.partition(":")
        cls = getattr(importlib.import_module(module_name), class_name)
        hints = typing.get_type_hints(cls)
        lines += [f"## {node}", "", f"`{target}`", "", "| name | type | default | meaning |",
                  "| --- | --- | --- | --- |"]
        for f in dataclasses.fields(cls):
            description = f.metadata.get("description", "").replace("|", "\\|")
            lines.append(f"| `{f.name}` | {_type_name(hints[f.name])} | `{_default(f)}` | "
                         f"{description} |")
        lines.append("")
        deprecated = getattr(cls, "DEPRECATED", {})
        if deprecated:
            names = ", ".join(f"`{old}` (now `{new}`)" for old, new in deprecated.items())
            lines += [f"Deprecated names, still read with a warning: {names}.", ""]
    return "\n".join(lines)


def main() -> int:
    OUT.write_text(render())
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
