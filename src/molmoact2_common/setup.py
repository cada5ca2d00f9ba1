"""Package metadata (ament_python; also pip-installable into the project venv)."""


from setuptools import find_packages, setup

PACKAGE = "molmoact2_common"

setup(
    name=PACKAGE,
    version="0.1.0",
    description="Embodiment facts, node runtime, dataclass ROS parameters and URDF rigid-body"
    " model shared by the MolmoAct2 node packages.",
    license="Apache-2.0",
    maintainer="MolmoAct2 ROS maintainers",
    maintainer_email="maintainers@molmoact2-ros.dev",
    packages=find_packages(exclude=["test", "test.*"]),
    python_requires=">=3.10",
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
    ],
    zip_safe=True,
)
