"""The RViz config of one launch: that robot's cameras, chunk markers and depth topics in its
namespace, in the fixed frame its frames hang off (no ROS imports).

``config/molmoact2.rviz`` gives the layout (panels, tools, view); the displays and the fixed
frame are written here from the robot config and the launch options, so ``rviz:=true`` (both
launch paths) shows the topics of the robot that was launched, in its namespace. The shipped
file itself holds YAM's displays without a namespace (tests/unit/test_rviz_config.py keeps it
equal to ``rviz_config("yam")``) for users who open it by hand.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from molmoact2 import graph

TEMPLATE = "molmoact2.rviz"
DEFAULT_FIXED_FRAME = "world"


def fixed_frame(config: graph.RobotConfig) -> str:
    """The frame every published frame of the robot hangs off (``molmoact2_tf.world_frame``)."""
    return str(config.params_for(graph.TF_NODE).get("world_frame") or DEFAULT_FIXED_FRAME)


def _topic(value: str, *, depth: int, reliable: bool) -> dict[str, Any]:
    return {
        "Depth": depth,
        "Durability Policy": "Volatile",
        "History Policy": "Keep Last",
        "Reliability Policy": "Reliable" if reliable else "Best Effort",
        "Value": value,
    }


def _image(name: str, topic: str, *, depth: int, reliable: bool, normalize: bool) -> dict:
    return {
        "Class": "rviz_default_plugins/Image",
        "Enabled": True,
        "Max Value": 1,
        "Median window": 5,
        "Min Value": 0,
        "Name": name,
        "Normalize Range": normalize,
        "Topic": _topic(topic, depth=depth, reliable=reliable),
        "Value": True,
    }


def _markers(name: str, topic: str, *, depth: int) -> dict:
    return {
        "Class": "rviz_default_plugins/MarkerArray",
        "Enabled": True,
        "Name": name,
        "Namespaces": {},
        "Topic": _topic(topic, depth=depth, reliable=True),
        "Value": True,
    }


def camera_display_name(camera: str) -> str:
    return f"{camera.replace('_', ' ')} camera"


def rviz_config(
    robot: str | graph.RobotConfig, options: graph.LaunchOptions | None = None
) -> dict[str, Any]:
    """The RViz config (as the YAML mapping RViz reads) for ``robot`` launched with
    ``options``: every topic resolved in ``options.namespace``."""
    config = robot if isinstance(robot, graph.RobotConfig) else graph.load_robot_config(robot)
    options = options or graph.LaunchOptions()
    ns = options.namespace

    def resolve(topic: str) -> str:
        return graph.resolve_topic(ns, topic)

    template = yaml.safe_load((graph.config_dir() / TEMPLATE).read_text())
    out = copy.deepcopy(template)
    manager = out["Visualization Manager"]
    displays = [d for d in manager["Displays"] if d.get("Class") in _KEPT_CLASSES]
    cameras = list(config.shared["camera_names"])
    for camera, topic in zip(cameras, config.shared["camera_topics"], strict=True):
        # Sensor data: the cameras publish best effort (a reliable subscriber gets nothing).
        displays.append(
            _image(
                camera_display_name(camera), resolve(topic), depth=5, reliable=False, normalize=True
            )
        )
    displays.append(
        _markers(
            "predicted chunk", resolve(f"{graph.POLICY_NODE}/predicted_chunk_markers"), depth=5
        )
    )
    depth_image = _image(
        "depth tokens (image)",
        resolve(f"{graph.DEPTH_CACHE_NODE}/depth_image"),
        depth=1,
        reliable=True,
        normalize=False,
    )
    displays.append(
        {
            "Class": "rviz_common/Group",
            "Displays": [
                depth_image,
                _markers(
                    "depth tokens (cells)",
                    resolve(f"{graph.DEPTH_CACHE_NODE}/depth_markers"),
                    depth=1,
                ),
            ],
            # Only Think mode publishes them; the group is there to switch on by hand.
            "Enabled": options.think,
            "Name": "Think",
        }
    )
    manager["Displays"] = displays
    manager["Global Options"]["Fixed Frame"] = fixed_frame(config)
    for panel in out.get("Panels", []):
        if panel.get("Class") == "rviz_common/Time":
            panel["SyncSource"] = camera_display_name(cameras[0]) if cameras else ""
    geometry = {k: v for k, v in out["Window Geometry"].items() if not isinstance(v, dict)}
    geometry["Displays"] = out["Window Geometry"].get("Displays", {"collapsed": False})
    for camera in cameras:
        geometry[camera_display_name(camera)] = {"collapsed": False}
    geometry[depth_image["Name"]] = {"collapsed": False}
    out["Window Geometry"] = geometry
    return out


# Displays of the template that name no topic of the robot (the grid, TF) are kept as they are.
_KEPT_CLASSES = ("rviz_default_plugins/Grid", "rviz_default_plugins/TF")


def rviz_config_text(
    robot: str | graph.RobotConfig, options: graph.LaunchOptions | None = None
) -> str:
    return yaml.safe_dump(rviz_config(robot, options), sort_keys=False)


def write_rviz_config(
    robot: str | graph.RobotConfig, options: graph.LaunchOptions, directory: Path
) -> Path:
    """Write the launch's RViz config into ``directory``; its path (for ``rviz2 -d``)."""
    config = robot if isinstance(robot, graph.RobotConfig) else graph.load_robot_config(robot)
    ns = re.sub(r"[^A-Za-z0-9_]+", "_", options.namespace.strip("/"))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"molmoact2-{config.robot}{'-' + ns if ns else ''}.rviz"
    path.write_text(rviz_config_text(config, options))
    return path
