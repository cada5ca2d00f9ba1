"""ROS 2 launch glue: maps ``graph.build_graph`` onto launch / launch_ros actions.

Imported only by the files in ``launch/`` on machines with a ROS 2 install; everything it
decides comes from the pure graph layer, which the tests exercise without ``launch``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from pathlib import Path

from molmoact2 import graph
from molmoact2_common import fastdds_shm

LAUNCH_ARGUMENTS: dict[str, tuple[str, str]] = {
    "sim": ("true", "true: simulated arm and cameras; false: the config's hardware backend"),
    "checkpoint": (
        "",
        "checkpoint directory (HF layout), 'demo' (made on first use and cached) or 'tiny' "
        "(random, for tests); empty: the config's (demo)",
    ),
    "think": ("false", "MolmoAct2-Think: adaptive depth tokens and the depth-cache node"),
    "rviz": (
        "false",
        "start RViz2 with this robot's cameras, chunk and depth topics in its namespace "
        "(molmoact2.rviz_config); without rviz2 installed: a warning, the rest runs",
    ),
    "record": ("false", "record cameras, joints, chunks, depth tokens and status to MCAP"),
    "foxglove": ("false", "serve the live view over Foxglove WebSocket (ws://127.0.0.1:8765)"),
    "namespace": ("", "namespace of this robot instance"),
    "use_sim_time": ("false", "use /clock instead of the wall clock"),
    "publish_tf": (
        "",
        "true/false: publish the config's frames (and URDF links); empty: in sim only, or "
        "as the config's molmoact2_tf.publish_tf says",
    ),
    "calibration_file": (
        "",
        "LeRobot calibration JSON of the arm (feetech backend, sim:=false), e.g. "
        "~/.cache/huggingface/lerobot/calibration/robots/so101_follower/<id>.json; "
        "empty: the config's",
    ),
    "serial_port": (
        "",
        "serial device of the arm's servo bus (feetech backend, sim:=false), e.g. "
        "/dev/ttyACM1 or /dev/serial/by-id/...; empty: the config's",
    ),
}


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def flag(name: str, value: str) -> bool:
    """A boolean launch argument. Anything but a true/false word is an error: ``sim:=ture``
    read as false started the real arm's backend."""
    word = value.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"launch argument {name}:={value!r}: expected true or false")


def misspelled_arguments(names: Iterable[str]) -> list[str]:
    """One sentence per launch argument in ``names`` that is not declared but close to one
    that is. ros2 launch takes any ``name:=value`` silently, so ``serial_prot:=/dev/ttyACM1``
    ran the arm on the config's port; an unrelated name may be a parent launch file's own."""
    problems = []
    for name in sorted(set(names) - set(LAUNCH_ARGUMENTS)):
        close = difflib.get_close_matches(name, list(LAUNCH_ARGUMENTS), n=1, cutoff=0.75)
        if close:
            problems.append(f"unknown launch argument {name}:= (did you mean {close[0]}:=?)")
    return problems


def options_from_values(value: Callable[[str], str]) -> graph.LaunchOptions:
    """The launch options from ``value(name) -> str`` of each launch argument."""
    return graph.LaunchOptions(
        sim=flag("sim", value("sim")),
        checkpoint=value("checkpoint"),
        think=flag("think", value("think")),
        rviz=flag("rviz", value("rviz")),
        record=flag("record", value("record")),
        foxglove=flag("foxglove", value("foxglove")),
        namespace=value("namespace"),
        use_sim_time=flag("use_sim_time", value("use_sim_time")),
        publish_tf=flag("publish_tf", value("publish_tf")) if value("publish_tf").strip() else None,
        calibration_file=value("calibration_file").strip(),
        serial_port=value("serial_port").strip(),
    )


def options_from_context(context) -> graph.LaunchOptions:
    from launch.substitutions import LaunchConfiguration

    def value(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    return options_from_values(value)


def generate_robot_launch_description(robot: str):
    """The whole LaunchDescription of one robot: arguments plus the config's nodes."""
    import os

    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable

    arguments = [
        DeclareLaunchArgument(name, default_value=default, description=text)
        for name, (default, text) in LAUNCH_ARGUMENTS.items()
    ]

    def setup(context, *args, **kwargs):
        problems = misspelled_arguments(context.launch_configurations)
        if problems:
            raise ValueError("; ".join(problems))
        return launch_actions(robot, options_from_context(context))

    from molmoact2_common.ros_runtime import ENV_LAUNCHER_PID

    # Each node stops when this launch process is gone, even where it is not the node's parent
    # (a --launch-prefix wrapper): PR_SET_PDEATHSIG only follows the parent.
    actions = [*arguments, SetEnvironmentVariable(ENV_LAUNCHER_PID, str(os.getpid()))]
    if "FASTDDS_DEFAULT_PROFILES_FILE" not in os.environ:
        # Large shared-memory segment for raw camera frames (see config/fastdds.xml).
        actions.append(
            SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", str(graph.fastdds_profile()))
        )
    return LaunchDescription([*actions, OpaqueFunction(function=setup)])


def launch_actions(robot: str, options: graph.LaunchOptions) -> list:
    import launch.logging
    from launch_ros.actions import Node

    from molmoact2.demo_checkpoint import ensure_in_child_process, resolve_checkpoint
    from molmoact2.tf_node import without_unavailable_tf

    log = launch.logging.get_logger("molmoact2")
    config = graph.load_robot_config(robot)
    nodes = graph.build_graph(config, options)
    # A ConfigError here ends the launch before any node starts, as a malformed flag does.
    graph.check_graph(config, nodes)
    nodes = without_unavailable_tf(nodes, log.warning)
    nodes = resolve_checkpoint(robot, nodes, log=log.info, make=ensure_in_child_process)
    # Shared memory a crashed or killed graph left: the nodes would reopen its ports.
    stale = fastdds_shm.clean_zombies()
    if stale:
        log.info(f"removed {len(stale)} stale Fast DDS shared-memory files")
    actions = []
    for spec in nodes:
        if spec.name == graph.TF_NODE:
            spec, state_publisher = _robot_state_publisher(robot, spec, options)
            actions += state_publisher
        actions.append(
            Node(
                package=spec.package,
                executable=spec.executable,
                name=spec.name,
                namespace=options.namespace,
                parameters=[*spec.param_files, dict(spec.overrides)],
                remappings=list(spec.remappings),
                output="screen",
                emulate_tty=True,
            )
        )
    if options.rviz:
        actions += _rviz(robot, options, log)
    return actions


def _rviz(robot: str, options: graph.LaunchOptions, log) -> list:
    """RViz2 with the config written for this robot and namespace; without rviz2 installed a
    warning only (a missing package would abort the whole launch, drivers included)."""
    import tempfile

    from launch_ros.actions import Node

    from molmoact2.rviz_config import write_rviz_config

    path = write_rviz_config(robot, options, Path(tempfile.mkdtemp(prefix="molmoact2-rviz-")))
    try:
        from ament_index_python.packages import get_package_share_directory

        get_package_share_directory("rviz2")
    except Exception:  # not installed (or no ament index): the graph runs without it
        log.warning(f"rviz:=true but rviz2 is not installed; start it elsewhere: rviz2 -d {path}")
        return []
    return [
        Node(
            package="rviz2",
            executable="rviz2",
            name="rviz2",
            namespace=options.namespace,
            arguments=["-d", str(path)],
            parameters=[{"use_sim_time": options.use_sim_time}],
            output="screen",
        )
    ]


def _robot_state_publisher(robot: str, spec: graph.NodeSpec, options: graph.LaunchOptions):
    """With a URDF in the config and robot_state_publisher installed, it publishes the link
    frames (molmoact2_tf keeps the static ones); without it, molmoact2_tf computes them."""
    import dataclasses

    from launch_ros.actions import Node

    urdf = graph.urdf_path(graph.load_robot_config(robot))
    if urdf is None:
        return spec, []
    try:
        from ament_index_python.packages import get_package_share_directory

        get_package_share_directory("robot_state_publisher")
    except Exception:  # not installed: our own FK publisher stays on
        return spec, []
    state_publisher = Node(
        package="robot_state_publisher",
        executable="robot_state_publisher",
        name="robot_state_publisher",
        namespace=options.namespace,
        parameters=[
            {"robot_description": urdf.read_text(), "use_sim_time": options.use_sim_time}
        ],
        output="screen",
    )
    spec = dataclasses.replace(spec, overrides={**spec.overrides, "urdf_fk": False})
    return spec, [state_publisher]
