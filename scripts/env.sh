# Source this file (". scripts/env.sh") for a shell that can import everything: the venv's
# ROS 2 wheels, the built molmoact2_msgs, torch and the project's packages.
_molmoact2_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
if [[ ! -x "$_molmoact2_root/.venv/bin/python" ]]; then
  echo "molmoact2: no .venv yet; run 'make setup' first" >&2
  return 1 2>/dev/null || exit 1
fi
# shellcheck disable=SC1091
source "$_molmoact2_root/.venv/bin/activate"
export MOLMOACT2_ROOT="$_molmoact2_root"
export LD_LIBRARY_PATH="$_molmoact2_root/ros2_ws/install/molmoact2_msgs/lib:$VIRTUAL_ENV/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export AMENT_PREFIX_PATH="$_molmoact2_root/ros2_ws/install/molmoact2_msgs:$VIRTUAL_ENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
# The tf2_msgs stand-in, when setup built one (no tf2_msgs was importable).
if [[ -d "$_molmoact2_root/ros2_ws/install/tf2_msgs" ]]; then
  export LD_LIBRARY_PATH="$_molmoact2_root/ros2_ws/install/tf2_msgs/lib:$LD_LIBRARY_PATH"
  export AMENT_PREFIX_PATH="$_molmoact2_root/ros2_ws/install/tf2_msgs:$AMENT_PREFIX_PATH"
fi
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
unset _molmoact2_root
