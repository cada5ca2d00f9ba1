"""The ROS packages build with colcon as a system-ROS user would build them (ament_python)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_colcon_builds_the_python_packages_and_installs_launch_and_config(tmp_path):
    venv = Path(sys.prefix)
    env = dict(os.environ)
    env.update(
        VIRTUAL_ENV=str(venv),
        PATH=f"{venv / 'bin'}:{env.get('PATH', '')}",
        CMAKE_PREFIX_PATH=str(venv),
        AMENT_PREFIX_PATH=str(venv),
    )
    result = subprocess.run(
        [
            str(venv / "bin" / "colcon"), "--log-base", str(tmp_path / "log"), "build",
            "--build-base", str(tmp_path / "build"), "--install-base", str(tmp_path / "install"),
            "--packages-select", "molmoact2", "hw_drivers", "molmoact2_policy", "molmoact2_common",
            "--event-handlers", "console_direct-",
        ],
        cwd=REPO / "ros2_ws", env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    share = tmp_path / "install" / "molmoact2" / "share" / "molmoact2"
    assert sorted(p.name for p in (share / "launch").iterdir()) == [
        "droid.launch.py", "so101.launch.py", "yam.launch.py"
    ]
    configs = {p.name for p in (share / "config").iterdir()}
    assert {"yam.yaml", "droid.yaml", "so101.yaml", "droid_panda.urdf"} <= configs
    # `ros2 run <pkg> <executable>` looks in lib/<pkg>.
    assert (tmp_path / "install" / "hw_drivers" / "lib" / "hw_drivers" / "driver_node").exists()
    # The arm models the drivers name by file (config/yam.yaml: dynamics_urdf) ship with them.
    assert list((tmp_path / "install" / "hw_drivers").rglob("hw_drivers/models/yam_arm_i2rt.urdf"))
    policy_lib = tmp_path / "install" / "molmoact2_policy" / "lib" / "molmoact2_policy"
    assert (policy_lib / "molmoact2_policy_node").exists()
    index = tmp_path / "install" / "molmoact2" / "share" / "ament_index" / "resource_index"
    assert (index / "packages" / "molmoact2").exists()
    # The helpers every node package imports are installed as their own package.
    common = tmp_path / "install" / "molmoact2_common"
    common_index = common / "share" / "ament_index" / "resource_index"
    assert (common_index / "packages" / "molmoact2_common").exists()
    assert list(common.rglob("molmoact2_common/ros_runtime.py"))


PACKAGES = ["molmoact2_msgs", "molmoact2_common", "molmoact2_policy", "hw_drivers", "molmoact2"]


@pytest.mark.parametrize("package", PACKAGES)
def test_package_xml_is_format_3_with_license_and_valid_maintainer(package):
    import xml.etree.ElementTree as ET

    root = ET.parse(REPO / "src" / package / "package.xml").getroot()
    assert root.get("format") == "3"
    assert root.findtext("name") == package
    assert root.findtext("license")
    email = root.find("maintainer").get("email")
    assert "@" in email and "." in email.split("@")[1]
    assert (REPO / "ros2_ws" / "src" / package).resolve() == (REPO / "src" / package).resolve()
