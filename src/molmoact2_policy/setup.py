"""Package metadata (ament_python; also pip-installable into the project venv)."""


from setuptools import find_packages, setup

PACKAGE = "molmoact2_policy"

setup(
    name=PACKAGE,
    version="0.1.0",
    description="MolmoAct2 model core (no ROS) and the policy and depth-cache ROS 2 nodes.",
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
    entry_points={
        "console_scripts": [
            "molmoact2_policy_node = molmoact2_policy.node_main:molmoact2_policy_node",
            "molmoact2-checkpoint = molmoact2_policy.model.checkpoint:main",
        ],
    },
)
