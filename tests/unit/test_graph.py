"""The config layer both launch paths read: graphs, consistency, and config errors."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import importlib.util
from pathlib import Path

import pytest
import yaml

from molmoact2 import graph
from molmoact2.launch_support import LAUNCH_ARGUMENTS

REPO = Path(__file__).resolve().parents[2]
LAUNCH_FILES = sorted((REPO / "launch").glob("*.launch.py"))


def launch_file_robot(path: Path) -> str:
    """The ROBOT constant a launch file passes to the graph layer (read without importing)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and node.targets[0].id == "ROBOT":
            return node.value.value
    raise AssertionError(f"{path} defines no ROBOT")


def console_scripts() -> dict[str, str]:
    return {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}


def test_every_robot_has_a_launch_file_and_config():
    robots = {launch_file_robot(p) for p in LAUNCH_FILES}
    assert robots == {"yam", "droid", "so101"}
    assert set(graph.known_robots()) == robots
    for path in LAUNCH_FILES:
        text = path.read_text()
        assert "generate_launch_description" in text
        assert "generate_robot_launch_description(ROBOT)" in text


def test_launch_arguments_are_the_documented_ones():
    assert set(LAUNCH_ARGUMENTS) == {
        "sim", "checkpoint", "think", "rviz", "record", "foxglove", "namespace", "use_sim_time",
        "publish_tf", "calibration_file", "serial_port",
    }


def test_boolean_launch_arguments_refuse_anything_but_true_or_false():
    from molmoact2.launch_support import options_from_values

    values = {name: default for name, (default, _text) in LAUNCH_ARGUMENTS.items()}
    assert options_from_values(values.__getitem__) == graph.LaunchOptions()
    on = options_from_values({**values, "sim": "False", "rviz": " TRUE ", "publish_tf": "1"}.get)
    assert (on.sim, on.rviz, on.publish_tf) == (False, True, True)
    # A typo must not pick the hardware backend (it read as false).
    with pytest.raises(ValueError, match="sim:='ture': expected true or false"):
        options_from_values({**values, "sim": "ture"}.get)


def test_readme_and_every_launch_file_document_every_launch_argument():
    import re

    readme = (REPO / "README.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \| ([^|]+) \| [^|]+ \|$", readme, re.M)
    table = {name: (default.strip(), flags) for name, default, flags in rows}
    table = {k: v for k, v in table.items() if k in LAUNCH_ARGUMENTS or "--" in v[1]}
    assert set(table) == set(LAUNCH_ARGUMENTS), set(table) ^ set(LAUNCH_ARGUMENTS)
    for name, (default, _flags) in table.items():
        declared = LAUNCH_ARGUMENTS[name][0]
        if declared:
            assert default == f"`{declared}`", (name, default)
    for launch_file in sorted((REPO / "launch").glob("*.launch.py")):
        doc = launch_file.read_text().split('"""')[1]
        listed = doc.rsplit("):", 1)[1]
        named = {w.strip(" .\n") for w in listed.split(",")}
        assert named == set(LAUNCH_ARGUMENTS), (launch_file.name, named)


def hardware_options(robot: str, tmp_path: Path, **kwargs) -> graph.LaunchOptions:
    """``sim:=false``, with a LeRobot calibration file where the backend needs one (feetech:
    the launch refuses the graph without it, test_launch_calibration)."""
    config = graph.load_robot_config(robot)
    if config.bringup["hardware_backend"] in graph.CALIBRATED_BACKENDS:
        from tests.unit.test_launch_calibration import LEROBOT_SO101_CALIBRATION

        path = tmp_path / "calibration.json"
        path.write_text(LEROBOT_SO101_CALIBRATION)
        kwargs["calibration_file"] = str(path)
    return graph.LaunchOptions(sim=False, **kwargs)


@pytest.mark.parametrize("robot", ["yam", "droid", "so101"])
def test_tf_node_runs_in_sim_and_on_hardware_only_when_asked(robot, tmp_path):
    def names(**kwargs):
        return [n.name for n in graph.build_graph(robot, graph.LaunchOptions(**kwargs))]

    assert graph.TF_NODE in names(sim=True)
    assert graph.TF_NODE not in names(sim=True, publish_tf=False)
    # Hardware: the configs ship publish_tf: false (the user's stack usually owns TF).
    assert graph.TF_NODE not in names(sim=False)
    assert graph.TF_NODE in names(sim=False, publish_tf=True)
    text = graph.config_path(robot).read_text()
    assert "    publish_tf: false" in text
    mine = tmp_path / f"{robot}.yaml"
    mine.write_text(text.replace("    publish_tf: false", "    publish_tf: true", 1))
    for urdf in graph.config_dir().glob("*.urdf"):  # the config names its URDF relatively
        (tmp_path / urdf.name).write_text(urdf.read_text())
    config = graph.load_robot_config(mine)
    hardware = graph.build_graph(config, hardware_options(robot, tmp_path))
    assert graph.TF_NODE in [n.name for n in hardware]
    assert not graph.validate_graph_params(config, hardware)


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("think", [False, True])
@pytest.mark.parametrize("sim", [True, False])
def test_launch_graph_references_real_executables_files_and_topics(path, think, sim):
    robot = launch_file_robot(path)
    options = graph.LaunchOptions(sim=sim, think=think, record=True, namespace="robot1")
    nodes = graph.build_graph(robot, options)
    scripts = console_scripts()
    names = [n.name for n in nodes]
    assert graph.POLICY_NODE in names
    assert len(names) == len(set(names))
    for spec in nodes:
        # ros2 launch runs the console script; molmoact2 launch runs the module; both through
        # molmoact2_common.node_entry.
        assert spec.executable in scripts, f"{spec.executable} is not a console script"
        script_module, _, script_name = scripts[spec.executable].partition(":")
        script = getattr(importlib.import_module(script_module), script_name)
        assert script.module == spec.module
        assert importlib.util.find_spec(spec.module) is not None, spec.module
        for file in spec.param_files:
            assert Path(file).is_file()
            assert yaml.safe_load(Path(file).read_text())
    config = graph.load_robot_config(robot)
    driver = next(n for n in nodes if n.name == config.driver_name)
    assert driver.overrides["backend"] == ("sim" if sim else config.bringup["hardware_backend"])
    # The driver listens where the policy publishes (~/action_chunk) in the same namespace.
    chunk_topic = config.params_for(config.driver_name)["chunk_topic"]
    assert graph.resolve_topic("robot1", chunk_topic) == "/robot1/molmoact2_policy/action_chunk"
    # Sim cameras publish exactly the topics the policy subscribes (one shared key).
    assert "camera_topics" in config.shared
    assert ("sim_cameras" in names) == sim
    policy = next(n for n in nodes if n.name == graph.POLICY_NODE)
    assert (policy.overrides.get("mode") == "think") == think
    recorder = next(n for n in nodes if n.name == graph.RECORDER_NODE)
    topics = recorder.overrides["topics"]
    assert set(config.shared["camera_topics"]) <= set(topics)
    assert "molmoact2_policy/action_chunk" in topics
    assert ("molmoact2_depth_cache/depth_tokens" in topics) == think


def test_checkpoint_argument_overrides_the_config():
    nodes = graph.build_graph("yam", graph.LaunchOptions(checkpoint="/models/molmoact2-yam"))
    policy = next(n for n in nodes if n.name == graph.POLICY_NODE)
    assert policy.overrides["checkpoint"] == "/models/molmoact2-yam"


def test_configs_use_namespace_wildcards_and_shared_keys():
    for robot in graph.known_robots():
        raw = yaml.safe_load(graph.config_path(robot).read_text())
        for key in raw:
            assert key == "/**" or key.startswith("/**/"), (robot, key)
        config = graph.load_robot_config(robot)
        assert len(config.shared["joint_names"]) == len(
            config.params_for(config.driver_name)["position_lower"]
        )


def write_config(tmp_path: Path, mutate) -> Path:
    raw = yaml.safe_load(graph.config_path("so101").read_text())
    mutate(raw)
    path = tmp_path / "robot.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_unknown_robot_is_named():
    with pytest.raises(graph.ConfigError, match=r"unknown robot .r2d2.*known: droid, so101, yam"):
        graph.load_robot_config("r2d2")


def test_malformed_yaml_is_refused_with_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("/**:\n  ros__parameters: [unclosed\n")
    with pytest.raises(graph.ConfigError, match=r"bad\.yaml: malformed YAML"):
        graph.load_robot_config(path)


def test_section_without_ros_parameters_is_refused(tmp_path):
    path = write_config(tmp_path, lambda raw: raw.update({"/**/extra": {"x": 1}}))
    with pytest.raises(graph.ConfigError, match="'/\\*\\*/extra' has no 'ros__parameters'"):
        graph.load_robot_config(path)


def test_missing_joint_is_refused(tmp_path):
    path = write_config(
        tmp_path, lambda raw: raw["/**"]["ros__parameters"]["joint_names"].pop()
    )
    with pytest.raises(graph.ConfigError, match="position_lower has 6 entries for 5 joints"):
        graph.load_robot_config(path)


def test_joint_count_must_match_the_embodiment(tmp_path):
    def mutate(raw):
        raw["/**"]["ros__parameters"]["embodiment"] = "droid"

    with pytest.raises(graph.ConfigError, match="droid has 8 action dims but joint_names lists 6"):
        graph.load_robot_config(write_config(tmp_path, mutate))


def test_unknown_embodiment_is_named(tmp_path):
    def mutate(raw):
        raw["/**"]["ros__parameters"]["embodiment"] = "marsrover"

    with pytest.raises(graph.ConfigError, match="unknown embodiment 'marsrover'"):
        graph.load_robot_config(write_config(tmp_path, mutate))


def test_camera_arrays_must_line_up(tmp_path):
    def mutate(raw):
        raw["/**"]["ros__parameters"]["camera_frames"] = ["front_optical_frame"]

    with pytest.raises(graph.ConfigError, match="camera_frames has 1 entries for 2 cameras"):
        graph.load_robot_config(write_config(tmp_path, mutate))


def test_duplicate_joint_names_are_refused(tmp_path):
    def mutate(raw):
        raw["/**"]["ros__parameters"]["joint_names"][1] = "shoulder_pan"

    with pytest.raises(graph.ConfigError, match="duplicates"):
        graph.load_robot_config(write_config(tmp_path, mutate))


def test_resolve_topic():
    assert graph.resolve_topic("", "joint_states") == "/joint_states"
    assert graph.resolve_topic("/arm2/", "joint_states") == "/arm2/joint_states"
    assert graph.resolve_topic("arm2", "/clock") == "/clock"


@pytest.mark.parametrize("robot", ["yam", "droid", "so101"])
@pytest.mark.parametrize("sim", [True, False])
def test_shipped_configs_match_every_nodes_parameter_declaration(robot, sim, tmp_path):
    config = graph.load_robot_config(robot)
    options = (
        graph.LaunchOptions(sim=True, think=True, record=True)
        if sim
        else hardware_options(robot, tmp_path, think=True, record=True)
    )
    assert graph.validate_graph_params(config, graph.build_graph(config, options)) == []


def test_unknown_parameter_and_bad_values_are_named(tmp_path):
    def mutate(raw):
        raw["/**/so101_driver"]["ros__parameters"]["control_rat"] = 100.0
        raw["/**/molmoact2_policy"]["ros__parameters"]["camera_skew"] = 0.1
        raw["/**/molmoact2_depth_cache"]["ros__parameters"]["threshold"] = 0.99

    config = graph.load_robot_config(write_config(tmp_path, mutate))
    problems = graph.validate_graph_params(config, graph.build_graph(config))
    assert any("so101_driver: unknown parameter 'control_rat'" in p for p in problems)
    assert any("molmoact2_policy: unknown parameter 'camera_skew'" in p for p in problems)
    assert any("molmoact2_depth_cache: unknown parameter 'threshold'" in p for p in problems)


@pytest.mark.parametrize("think", [False, True])
def test_foxglove_serves_what_rviz_shows(think):
    """foxglove:=true adds one node serving the cameras, chunk, joints, status, TF, depth."""
    config = graph.load_robot_config("yam")
    nodes = graph.build_graph(config, graph.LaunchOptions(foxglove=True, think=think))
    [foxglove] = [n for n in nodes if n.name == graph.FOXGLOVE_NODE]
    topics = set(foxglove.overrides["topics"])
    assert set(config.shared["camera_topics"]) <= topics
    expected = {"joint_states", "molmoact2_policy/predicted_chunk_markers", "/tf", "/tf_static"}
    assert expected <= topics
    assert ("molmoact2_depth_cache/depth_image" in topics) == think
    assert graph.FOXGLOVE_NODE not in [n.name for n in graph.build_graph(config)]
    assert graph.validate_graph_params(config, nodes) == []


def test_foxglove_layout_opens_the_rviz_views_in_the_rviz_fixed_frame():
    import json

    layout = json.loads((graph.config_dir() / "molmoact2.foxglove.json").read_text())
    rviz = yaml.safe_load((graph.config_dir() / "molmoact2.rviz").read_text())
    fixed_frame = rviz["Visualization Manager"]["Global Options"]["Fixed Frame"]

    def rviz_topics(displays):
        for display in displays:
            yield from rviz_topics(display.get("Displays", []))
            if "Topic" in display:
                yield display["Topic"]["Value"]

    shown = set(rviz_topics(rviz["Visualization Manager"]["Displays"]))
    panels = layout["configById"]
    in_layout = {p["imageMode"]["imageTopic"] for k, p in panels.items() if k.startswith("Image!")}
    scenes = [p for k, p in panels.items() if k.startswith("3D!")]
    for scene in scenes:
        in_layout |= set(scene["topics"])
        assert scene["followTf"] == fixed_frame
    assert shown <= in_layout, shown - in_layout
    config = graph.load_robot_config("yam")
    served = {
        graph.resolve_topic("", t)
        for t in graph.viewed_topics(config, graph.LaunchOptions(think=True))
    }
    assert in_layout <= served, in_layout - served


def test_a_config_urdf_reaches_the_tf_node_and_policy_as_an_absolute_path(tmp_path):
    fixture = REPO / "tests" / "fixtures" / "pan_slide_tilt.urdf"
    (tmp_path / "robots").mkdir()
    (tmp_path / "robots" / "arm.urdf").write_text(fixture.read_text())
    text = graph.config_path("so101").read_text().replace('urdf: ""', "urdf: robots/arm.urdf", 1)
    mine = tmp_path / "so101.yaml"
    mine.write_text(text)
    nodes = {n.name: n for n in graph.build_graph(graph.load_robot_config(mine))}
    expected = str((tmp_path / "robots" / "arm.urdf").resolve())
    assert nodes[graph.TF_NODE].overrides["urdf"] == expected
    assert nodes[graph.POLICY_NODE].overrides["urdf"] == expected
    mine.write_text(text.replace("robots/arm.urdf", "robots/missing.urdf"))
    with pytest.raises(graph.ConfigError, match=r"missing\.urdf"):
        graph.build_graph(graph.load_robot_config(mine))


def test_an_unknown_robot_is_answered_whatever_else_lies_in_config(tmp_path, monkeypatch):
    """A directory named *.yaml, a binary file: not robots, and the answer is still one line."""
    import shutil

    for robot in ("yam", "so101"):
        shutil.copy(graph.config_dir() / f"{robot}.yaml", tmp_path / f"{robot}.yaml")
    (tmp_path / "backup.yaml").mkdir()
    (tmp_path / "blob.yaml").write_bytes(b"\xff\xfe\x00molmoact2_bringup\x80")
    monkeypatch.setattr(graph, "config_dir", lambda: tmp_path)
    with pytest.raises(graph.ConfigError, match=r"unknown robot 'yamm'; known: blob, so101, yam"):
        graph.load_robot_config("yamm")
