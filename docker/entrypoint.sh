#!/usr/bin/env bash
# Source ROS 2 and the workspace, then run the given command (default: the YAM launch).
set -e
source /opt/ros/jazzy/setup.bash
source /opt/molmoact2/ros2_ws/install/setup.bash
exec "$@"
