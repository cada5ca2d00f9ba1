"""The node graph of a robot, computed from its one config file (no ROS, no launch imports).

Both launch paths are thin mappings over ``build_graph``: the ROS 2 launch files in
``launch/`` turn each ``NodeSpec`` into a ``launch_ros`` node, and ``molmoact2 launch`` turns it
into a supervised process. They pass the same parameter files and overrides, so the two can
never drift.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from molmoact2.params_file import ParamsFileError, read_params_file
from molmoact2_common.ros_params import (
    ParamTypeError,
    apply_deprecated,
    coerce_param,
    deprecated_params,
)

_log = logging.getLogger(__name__)

ALL_NODES = "/**"
ANY_NAMESPACE = "/**/"
BRINGUP_SECTION = "molmoact2_bringup"
POLICY_NODE = "molmoact2_policy"
DEPTH_CACHE_NODE = "molmoact2_depth_cache"
SIM_CAMERAS_NODE = "sim_cameras"
RECORDER_NODE = "recorder"
FOXGLOVE_NODE = "foxglove"
TF_NODE = "molmoact2_tf"
# A ROS node name (rcl_validate_node_name): letters, digits, underscores, no leading digit.
_NODE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Hardware backends that read the driver's calibration_file and serial_port (launch arguments
# of those names).
CALIBRATED_BACKENDS = ("feetech",)
SERIAL_BACKENDS = ("feetech",)
SHARED_KEYS = (
    "robot",
    "embodiment",
    "joint_names",
    "camera_names",
    "camera_topics",
    "camera_transports",
    "camera_rates",
    "camera_frames",
)


class ConfigError(ValueError):
    """A robot config that cannot describe a graph; the message names the file and problem."""


@dataclass(frozen=True)
class LaunchOptions:
    """The launch arguments both launch paths accept."""

    sim: bool = True
    checkpoint: str = ""  # empty: the config's checkpoint
    think: bool = False
    rviz: bool = False
    record: bool = False
    foxglove: bool = False
    namespace: str = ""
    use_sim_time: bool = False
    # Start molmoact2_tf (the config's static frames, URDF link frames). None: always in sim,
    # on hardware only when the config's molmoact2_tf.publish_tf says so.
    publish_tf: bool | None = None
    # The driver's calibration_file (hardware backends that read one: feetech); empty: the
    # config's. Not the config's directory but the caller's: a path the user typed.
    calibration_file: str = ""
    # The driver's serial_port (hardware backends on a serial bus: feetech); empty: the config's.
    serial_port: str = ""


@dataclass(frozen=True)
class NodeSpec:
    """One node of the graph, as either launch path needs it."""

    name: str  # ROS node name; also the node's section in the config file
    package: str
    executable: str  # console script (ros2 run / ros2 launch)
    module: str  # ``python -m`` module (molmoact2 launch)
    param_files: tuple[str, ...]
    overrides: Mapping[str, Any] = field(default_factory=dict)
    remappings: tuple[tuple[str, str], ...] = ()
    lifecycle: bool = False
    params_class: str = ""  # "module:Class" of the node's parameter dataclass
    # Another node kind's parameter class whose keys may share this node's config section
    # (the trajectory bridge runs under the driver's name and section).
    shares_section_with: str = ""


@dataclass(frozen=True)
class RobotConfig:
    """A parsed ``config/<robot>.yaml``."""

    robot: str
    path: Path
    sections: Mapping[str, Mapping[str, Any]]  # node name -> ros__parameters
    # Sections written `node:` rather than `/**/node:`: rcl applies them at the root
    # namespace only.
    root_only: frozenset[str] = frozenset()

    @property
    def shared(self) -> Mapping[str, Any]:
        return self.sections.get(ALL_NODES, {})

    @property
    def bringup(self) -> Mapping[str, Any]:
        return self.sections.get(BRINGUP_SECTION, {})

    @property
    def driver_name(self) -> str:
        return str(self.bringup["driver_node"])

    def params_for(self, node: str) -> dict[str, Any]:
        """The parameters a node gets from the file: ``/**`` first, then its own section."""
        merged = dict(self.shared)
        merged.update(self.sections.get(node, {}))
        return merged


def package_root() -> Path:
    """The repository (source checkout) or installed share directory holding config/."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "config").is_dir() and (parent / "launch").is_dir():
            return parent
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("molmoact2"))
    except Exception as exc:  # any lookup failure means the same here
        raise ConfigError("cannot find the molmoact2 config directory") from exc


def config_dir() -> Path:
    return package_root() / "config"


def fastdds_profile() -> Path:
    """The Fast DDS transport profile both launch paths give the graph's processes."""
    return config_dir() / "fastdds.xml"


def known_robots() -> list[str]:
    """Robots with a config: the ``config/*.yaml`` files with a bringup section. Anything else
    there (a directory, an unreadable or binary file) is not a robot, and must not turn the
    "unknown robot" answer into a traceback."""
    robots = []
    for path in config_dir().glob("*.yaml"):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:  # a directory named *.yaml, no permission
            continue
        if BRINGUP_SECTION in text:
            robots.append(path.stem)
    return sorted(robots)


def config_path(robot: str) -> Path:
    path = config_dir() / f"{robot}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown robot {robot!r}; known: {', '.join(known_robots())}")
    return path


def load_robot_config(robot_or_path: str | Path) -> RobotConfig:
    """Parse and check a robot config; every problem is a ConfigError naming the file."""
    path = Path(robot_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = config_path(str(robot_or_path))
    try:
        raw = read_params_file(path)
    except ParamsFileError as exc:
        raise ConfigError(str(exc)) from None
    sections: dict[str, dict[str, Any]] = {}
    for key, body in raw.items():
        # `/**/node` matches the node in any namespace; plain `node` only at the root.
        node = key.removeprefix(ANY_NAMESPACE)
        if node != ALL_NODES and not _NODE_NAME.fullmatch(node):
            # rcl applies `/ns/node` or `/**/*_driver` sections too, but nothing here would
            # check what they set: a namespaced section slipped past the whole config check.
            raise ConfigError(
                f"{path}: section {key!r}: write '/**' or '/**/<node name>' (the namespace "
                "comes from the namespace launch argument)"
            )
        if node in sections:
            # rcl merges both into the node's parameters; one dict here would hide one.
            raise ConfigError(f"{path}: node {node!r} has two sections (one with and one "
                              f"without {ANY_NAMESPACE!r}); merge them into one")
        sections[node] = dict(body)
    root_only = frozenset(
        key for key in raw if key != ALL_NODES and not key.startswith(ANY_NAMESPACE)
    )
    config = RobotConfig(robot=path.stem, path=path, sections=sections, root_only=root_only)
    _check_structure(config)
    return config


def _require_list(where: str, owner: str, key: str, value: Any) -> None:
    if not isinstance(value, list):
        raise ConfigError(f"{where}: {owner}.{key} must be a list, got {value!r}")


def _check_structure(config: RobotConfig) -> None:
    where = str(config.path)
    shared = config.shared
    missing = [key for key in SHARED_KEYS if key not in shared]
    if missing:
        raise ConfigError(f"{where}: '/**' is missing {', '.join(missing)}")
    joints = shared["joint_names"]
    if not isinstance(joints, list) or not joints or not all(isinstance(j, str) for j in joints):
        raise ConfigError(f"{where}: joint_names must be a non-empty list of names")
    if len(set(joints)) != len(joints):
        raise ConfigError(f"{where}: joint_names has duplicates")
    # Lists before their lengths are compared: `key:` left empty in YAML is null.
    for key in ("camera_names", "camera_topics", "camera_transports", "camera_rates",
                "camera_frames"):
        _require_list(where, "'/**'", key, shared[key])
    cameras = shared["camera_names"]
    for key in ("camera_topics", "camera_transports", "camera_rates", "camera_frames"):
        if len(shared[key]) != len(cameras):
            raise ConfigError(
                f"{where}: {key} has {len(shared[key])} entries for {len(cameras)} cameras"
            )
    rates = shared["camera_rates"]
    # Floats written as floats: ROS parameters are typed, [30, 30] is an integer array.
    if not all(isinstance(r, float) and 0 < r < float("inf") for r in rates):
        raise ConfigError(
            f"{where}: camera_rates must be frame rates > 0 [Hz] written as floats "
            f"(30.0, not 30), got {rates}"
        )
    bad = [t for t in shared["camera_transports"] if t not in ("raw", "compressed")]
    if bad:
        raise ConfigError(f"{where}: camera_transports must be raw or compressed, got {bad}")
    if "driver_node" not in config.bringup or "hardware_backend" not in config.bringup:
        raise ConfigError(
            f"{where}: section {BRINGUP_SECTION!r} needs driver_node and hardware_backend"
        )
    _check_bringup(config)
    for node in (POLICY_NODE, config.driver_name):
        if node not in config.sections:
            raise ConfigError(f"{where}: no section for node {node!r}")
    # A section no node reads is a typo (`/**/sim_camera`): its values would silently not apply.
    known = {ALL_NODES, BRINGUP_SECTION, config.driver_name, DEPTH_CACHE_NODE} | {
        name for name in _NODE_KINDS if name not in ("driver", "trajectory_bridge")
    }
    for node in config.sections:
        if node not in known:
            hint = _did_you_mean(node, known - {ALL_NODES})
            raise ConfigError(
                f"{where}: section {node!r} is for no node of this graph{hint}; "
                f"sections: {', '.join(sorted(known))}"
            )
    driver = config.params_for(config.driver_name)
    for key in (
        "position_lower",
        "position_upper",
        "position_margin",
        "max_velocity",
        "initial_positions",
    ):
        if key in driver:
            _require_list(where, config.driver_name, key, driver[key])
        if key in driver and len(driver[key]) != len(joints):
            raise ConfigError(
                f"{where}: {config.driver_name}.{key} has {len(driver[key])} entries "
                f"for {len(joints)} joints"
            )
    try:
        from molmoact2_common.embodiments import get_embodiment

        spec = get_embodiment(str(shared["embodiment"]))
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    if spec.action_dim != len(joints):
        raise ConfigError(
            f"{where}: embodiment {spec.name} has {spec.action_dim} action dims but "
            f"joint_names lists {len(joints)} joints"
        )


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` with the closest of ``choices`` to a mistyped ``name``, or ''."""
    close = difflib.get_close_matches(name, sorted(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_bringup(config: RobotConfig) -> None:
    """The launch layer's own section: exactly its two keys, each a name."""
    where = str(config.path)
    bringup = config.bringup
    for key in sorted(set(bringup) - {"driver_node", "hardware_backend"}):
        # No node reads this section, so nothing else would ever name a typo in it.
        hint = _did_you_mean(key, ("driver_node", "hardware_backend"))
        raise ConfigError(f"{where}: {BRINGUP_SECTION}: unknown key {key!r}{hint}; it has "
                          "driver_node and hardware_backend only")
    driver = bringup["driver_node"]
    if not isinstance(driver, str) or not _NODE_NAME.fullmatch(driver) or driver in (
        POLICY_NODE, DEPTH_CACHE_NODE, BRINGUP_SECTION, *_NODE_KINDS
    ):
        raise ConfigError(f"{where}: {BRINGUP_SECTION}.driver_node must be the driver's node "
                          f"name (its section in this file), got {driver!r}")
    backend = bringup["hardware_backend"]
    try:
        from hw_drivers.driver_params import BACKENDS
    except ImportError:  # the driver package is checked with the graph's parameters
        BACKENDS = (backend,)  # noqa: N806 - the imported name's spelling
    if not isinstance(backend, str) or backend not in BACKENDS or backend == "sim":
        # Refused in sim too: the typo would otherwise wait for the first sim:=false.
        raise ConfigError(
            f"{where}: {BRINGUP_SECTION}.hardware_backend must be one of "
            f"{', '.join(b for b in BACKENDS if b != 'sim')}, got {backend!r}"
        )


# Which package/module runs each kind of node, and where its parameter dataclass lives.
_NODE_KINDS: dict[str, tuple[str, str, str, bool, str]] = {
    POLICY_NODE: (
        "molmoact2_policy",
        "molmoact2_policy_node",
        "molmoact2_policy.policy_node",
        True,
        "molmoact2_policy.policy_node_params:PolicyNodeParams",
    ),
    "driver": (
        "hw_drivers",
        "driver_node",
        "hw_drivers.driver_node",
        True,
        "hw_drivers.driver_params:DriverParams",
    ),
    "trajectory_bridge": (
        "hw_drivers",
        "trajectory_bridge_node",
        "hw_drivers.trajectory_bridge_node",
        True,
        "hw_drivers.trajectory_bridge_params:TrajectoryBridgeParams",
    ),
    SIM_CAMERAS_NODE: (
        "molmoact2",
        "sim_camera_node",
        "molmoact2.sim_camera_node",
        False,
        "molmoact2.sim_camera_node:SimCameraParams",
    ),
    RECORDER_NODE: (
        "molmoact2",
        "recorder_node",
        "molmoact2.recorder_node",
        False,
        "molmoact2.recorder_node:RecorderParams",
    ),
    FOXGLOVE_NODE: (
        "molmoact2",
        "foxglove_node",
        "molmoact2.foxglove_node",
        False,
        "molmoact2.foxglove_node:FoxgloveParams",
    ),
    TF_NODE: (
        "molmoact2",
        "tf_node",
        "molmoact2.tf_node",
        False,
        "molmoact2.tf_node:TfParams",
    ),
}


def _spec(kind: str, name: str, files: tuple[str, ...], overrides: dict[str, Any]) -> NodeSpec:
    package, executable, module, lifecycle, params_class = _NODE_KINDS[kind]
    return NodeSpec(
        name=name,
        package=package,
        executable=executable,
        module=module,
        param_files=files,
        overrides=overrides,
        lifecycle=lifecycle,
        params_class=params_class,
        shares_section_with=_NODE_KINDS["driver"][4] if kind == "trajectory_bridge" else "",
    )


def build_graph(robot: str | RobotConfig, options: LaunchOptions | None = None) -> list[NodeSpec]:
    """The nodes to start for ``robot`` with the given launch arguments."""
    config = robot if isinstance(robot, RobotConfig) else load_robot_config(robot)
    options = options or LaunchOptions()
    problem = namespace_problem(options.namespace)
    if problem:
        # Every node got it as `-r __ns:=/...`, and rcl refused it in each: all of them
        # started, then died with an RCLError traceback.
        raise ConfigError(problem)
    if options.namespace.strip("/") and config.root_only:
        # rcl gives a `node:` section to that node at the root only: in a namespace the node
        # ran on its defaults while this check had read the section's values.
        names = ", ".join(sorted(config.root_only))
        raise ConfigError(
            f"{config.path}: section(s) {names} apply at the root namespace only, not in "
            f"namespace:={options.namespace}; write them as '{ANY_NAMESPACE}<node>'"
        )
    files = (str(config.path),)
    common: dict[str, Any] = {"use_sim_time": options.use_sim_time}

    urdf = urdf_path(config)
    policy_overrides = dict(common)
    policy_overrides["driver_node"] = config.driver_name  # held by ~/run_task at its end
    if urdf is not None:
        policy_overrides["urdf"] = str(urdf)
    if options.checkpoint:
        policy_overrides["checkpoint"] = options.checkpoint
    if options.think:
        policy_overrides["mode"] = "think"
    nodes = [_spec(POLICY_NODE, POLICY_NODE, files, policy_overrides)]

    driver_overrides = dict(common)
    backend = "sim" if options.sim else str(config.bringup["hardware_backend"])
    driver_overrides["backend"] = backend
    hardware = str(config.bringup["hardware_backend"])
    for name, backends in (
        ("calibration_file", CALIBRATED_BACKENDS),
        ("serial_port", SERIAL_BACKENDS),
    ):
        if getattr(options, name) and hardware not in backends:
            raise ConfigError(
                f"{config.path}: {name} is for the {', '.join(backends)} backend; "
                f"{config.robot}'s hardware_backend is {hardware}"
            )
    if options.calibration_file:
        path = Path(options.calibration_file).expanduser()
        # Absolute: the nodes need not share the launching shell's working directory.
        driver_overrides["calibration_file"] = str(path.absolute())
    if options.serial_port:
        driver_overrides["serial_port"] = options.serial_port
    if backend == "ros2_control":
        # ros2_control arms are driven by their own controller: forward chunks as trajectories.
        nodes.append(_spec("trajectory_bridge", config.driver_name, files, driver_overrides))
    else:
        nodes.append(_spec("driver", config.driver_name, files, driver_overrides))

    if options.sim:
        nodes.append(_spec(SIM_CAMERAS_NODE, SIM_CAMERAS_NODE, files, dict(common)))
    if publishes_tf(config, options):
        tf_overrides = dict(common)
        if urdf is not None:
            tf_overrides["urdf"] = str(urdf)
        nodes.append(_spec(TF_NODE, TF_NODE, files, tf_overrides))
    if options.record:
        recorder_overrides = dict(common)
        recorder_overrides["topics"] = recorded_topics(config, options)
        nodes.append(_spec(RECORDER_NODE, RECORDER_NODE, files, recorder_overrides))
    if options.foxglove:
        foxglove_overrides = dict(common)
        foxglove_overrides["topics"] = viewed_topics(config, options)
        nodes.append(_spec(FOXGLOVE_NODE, FOXGLOVE_NODE, files, foxglove_overrides))
    return nodes


def namespace_problem(namespace: str) -> str:
    """Why the ``namespace`` launch argument is no ROS namespace (empty: it is one); leading
    and trailing '/' are allowed, as both launch paths strip them."""
    inner = namespace.strip("/")
    if not inner or all(_NODE_NAME.fullmatch(part) for part in inner.split("/")):
        return ""
    return (
        f"launch argument namespace:={namespace!r} (--namespace) is not a ROS namespace: "
        "'/'-separated names of letters, digits and '_', none starting with a digit"
    )


def urdf_path(config: RobotConfig) -> Path | None:
    """The robot's URDF (shared key ``urdf``), absolute; None when the config names none."""
    value = str(config.shared.get("urdf", "") or "")
    if not value:
        return None
    path = Path(value).expanduser()
    path = path if path.is_absolute() else config.path.parent / path
    if not path.is_file():
        raise ConfigError(f"{config.path}: urdf {value!r} is not a file ({path})")
    return path.resolve()


def publishes_tf(config: RobotConfig, options: LaunchOptions) -> bool:
    """Whether the graph starts molmoact2_tf: sim yes, hardware per the config's publish_tf."""
    if TF_NODE not in config.sections:
        return False
    if options.publish_tf is not None:
        return options.publish_tf
    return options.sim or bool(config.params_for(TF_NODE).get("publish_tf", False))


def recorded_topics(config: RobotConfig, options: LaunchOptions) -> list[str]:
    """Topics (relative to the namespace) that ``record:=true`` writes to the MCAP file."""
    topics = list(config.shared["camera_topics"])
    topics += [
        "joint_states",
        f"{config.driver_name}/commanded_joint_states",
        f"{config.driver_name}/chunk_execution",  # which chunk ran: accepted / rejected
        f"{POLICY_NODE}/action_chunk",
        f"{POLICY_NODE}/status",
        f"{POLICY_NODE}/predicted_chunk_markers",
    ]
    if options.think:
        topics.append(f"{DEPTH_CACHE_NODE}/depth_tokens")
        topics.append(f"{DEPTH_CACHE_NODE}/depth_markers")
    if publishes_tf(config, options):
        topics += ["/tf_static", "/tf"]  # absolute, as tf2 names them
    return topics


def viewed_topics(config: RobotConfig, options: LaunchOptions) -> list[str]:
    """Topics (relative to the namespace) that ``foxglove:=true`` serves: what RViz shows,
    which is everything recorded plus the views made only to be looked at."""
    topics = recorded_topics(config, options)
    topics += [f"{POLICY_NODE}/predicted_joint_states", "/diagnostics"]
    if options.think:
        topics.append(f"{DEPTH_CACHE_NODE}/depth_image")
    # TF comes from our TF node or from the user's own stack: served either way.
    topics += [t for t in ("/tf_static", "/tf") if t not in topics]
    return topics


def resolve_topic(namespace: str, topic: str) -> str:
    """ROS name resolution of a relative topic in a namespace (no ``~``)."""
    if topic.startswith("/"):
        return topic
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    return f"{ns}/{topic}"


def load_params_class(target: str) -> type:
    """Import ``module:Class``."""
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def check_graph(config: RobotConfig, nodes: list[NodeSpec]) -> None:
    """``ConfigError`` listing every problem ``validate_graph_params`` finds. Both launch paths
    call it before they start anything, as they refuse a malformed boolean argument: a graph
    with a node that cannot configure (a feetech driver without its calibration) must not run
    on with the policy and cameras up."""
    problems = validate_graph_params(config, nodes)
    if problems:
        raise ConfigError("\n".join(problems))


def _shared_key_problems(config: RobotConfig, specs: list[NodeSpec]) -> list[str]:
    """Keys of ``/**`` that no node declares: every node ignores them, so a typo there
    (``urdff``) silently lost its value."""
    accepted = set(SHARED_KEYS) | {"urdf", "use_sim_time"}
    targets = {spec.params_class for spec in specs} | {_NODE_KINDS["driver"][4],
                                                       _NODE_KINDS["trajectory_bridge"][4]}
    for target in targets:
        try:
            cls = load_params_class(target)
        except (ImportError, AttributeError):
            continue  # named by the per-node check
        accepted |= {f.name for f in dataclasses.fields(cls)} | set(deprecated_params(cls))
    problems = []
    for key in sorted(set(config.shared) - accepted):
        hint = _did_you_mean(key, accepted)
        problems.append(f"{config.path}: '/**': unknown parameter {key!r}{hint}: no node "
                        "declares it")
    return problems


def validate_graph_params(config: RobotConfig, nodes: list[NodeSpec]) -> list[str]:
    """Problems with the parameters each node would get (unknown keys, bad values)."""
    problems: list[str] = []
    checked = list(nodes)
    if DEPTH_CACHE_NODE in config.sections:
        # Runs inside the policy node's process in Think mode: no process of its own, but
        # its config section must still match its parameter declaration.
        checked.append(
            NodeSpec(
                name=DEPTH_CACHE_NODE,
                package="molmoact2_policy",
                executable="molmoact2_policy_node",
                module="molmoact2_policy.policy_node",
                param_files=(str(config.path),),
                params_class="molmoact2_policy.depth_cache_params:DepthCacheParams",
            )
        )
    # Sections of nodes this launch does not start (recorder without record:=true...): a bad
    # value there would wait for the first launch that starts them.
    started = {spec.name for spec in checked}
    for name in (SIM_CAMERAS_NODE, TF_NODE, RECORDER_NODE, FOXGLOVE_NODE):
        if name in config.sections and name not in started:
            overrides: dict[str, Any] = {}
            if name in (RECORDER_NODE, FOXGLOVE_NODE):
                overrides["topics"] = viewed_topics(config, LaunchOptions())
            checked.append(_spec(name, name, (str(config.path),), overrides))
    problems += _shared_key_problems(config, checked)
    for spec in checked:
        try:
            params_cls = load_params_class(spec.params_class)
            sharing = (
                load_params_class(spec.shares_section_with) if spec.shares_section_with else None
            )
        except (ImportError, AttributeError) as exc:
            problems.append(f"{spec.name}: parameter class {spec.params_class} missing: {exc}")
            continue
        known = {f.name for f in dataclasses.fields(params_cls)} | {"use_sim_time"}
        accepted = known | ({f.name for f in dataclasses.fields(sharing)} if sharing else set())
        accepted |= set(deprecated_params(params_cls))
        own = dict(config.sections.get(spec.name, {}))
        own.update({k: v for k, v in spec.overrides.items() if k != "use_sim_time"})
        renamed = getattr(params_cls, "RENAMED", {})
        for key in sorted(set(own) - accepted):
            hint = f" ({renamed[key]})" if key in renamed else ""
            problems.append(f"{config.path}: {spec.name}: unknown parameter {key!r}{hint}")
        # An old name is read as its new one, as the node reads it (with the same warning).
        given, deprecated = apply_deprecated(
            params_cls, {**config.params_for(spec.name), **spec.overrides}
        )
        for warning in deprecated:
            _log.warning("%s: %s: %s", config.path, spec.name, warning)
        values = {k: v for k, v in given.items() if k in known}
        values.pop("use_sim_time", None)
        # Each value as the node's own parameter check will hold it (ints for float fields,
        # lists as tuples), or refused by type here: a `key:` left empty in YAML is null, and
        # reached the validation below as a TypeError ("'NoneType' has no len()").
        wrong_type = []
        for key, value in values.items():
            try:
                values[key] = coerce_param(params_cls, key, value)
            except ParamTypeError as exc:
                wrong_type.append(f"{config.path}: {spec.name}: {exc}")
        if wrong_type:
            problems += wrong_type
            continue
        try:
            instance = params_cls(**values)
        except TypeError as exc:
            problems.append(f"{config.path}: {spec.name}: {exc}")
            continue
        validate = getattr(instance, "validate", None)
        if callable(validate):
            problems += [f"{config.path}: {spec.name}: {p}" for p in validate()]
    return problems
