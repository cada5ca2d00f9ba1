"""Package metadata (ament_python; also pip-installable into the project venv)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "molmoact2"

setup(
    name=PACKAGE,
    version="0.1.0",
    description="MolmoAct2 bringup: robot configs, launch files, sim world, recording, reports.",
    license="Apache-2.0",
    maintainer="MolmoAct2 ROS maintainers",
    maintainer_email="maintainers@molmoact2-ros.dev",
    packages=find_packages(exclude=["test", "test.*"]),
    python_requires=">=3.10",
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (
            f"share/{PACKAGE}/config",
            glob("config/*.yaml") + glob("config/*.rviz") + glob("config/*.xml")
            + glob("config/*.urdf"),
        ),
    ],
    zip_safe=True,
    entry_points={
        "console_scripts": [
            "molmoact2 = molmoact2.cli:main",
            "sim_camera_node = molmoact2.node_main:sim_camera_node",
            "recorder_node = molmoact2.node_main:recorder_node",
            "foxglove_node = molmoact2.node_main:foxglove_node",
            "tf_node = molmoact2.node_main:tf_node",
        ],
    },
)
