"""Package metadata (ament_python; also pip-installable into the project venv)."""


from setuptools import find_packages, setup

PACKAGE = "hw_drivers"

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Real-time action-chunk executor with safety, and robot driver nodes.",
    license="Apache-2.0",
    maintainer="MolmoAct2 ROS maintainers",
    maintainer_email="maintainers@molmoact2-ros.dev",
    packages=find_packages(exclude=["test", "test.*"]),
    # Arm models the drivers ship (gravity feed-forward): hw_drivers/models/*.urdf.
    package_data={PACKAGE: ["models/*.urdf"]},
    python_requires=">=3.10",
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
    ],
    zip_safe=True,
    entry_points={
        "console_scripts": [
            "driver_node = hw_drivers.node_main:driver_node",
            "trajectory_bridge_node = hw_drivers.node_main:trajectory_bridge_node",
        ],
    },
)
