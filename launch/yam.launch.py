"""YAM bimanual with MolmoAct2: `ros2 launch molmoact2 yam.launch.py [name:=value ...]`.

The nodes and their parameters come from config/yam.yaml through molmoact2.graph, the same
layer `molmoact2 launch yam` uses. Arguments (`--show-args`; declared once in
molmoact2.launch_support.LAUNCH_ARGUMENTS, explained in the README's table): sim, checkpoint,
think, rviz, record, foxglove, namespace, use_sim_time, publish_tf,
calibration_file, serial_port.
"""

from molmoact2.launch_support import generate_robot_launch_description

ROBOT = "yam"


def generate_launch_description():
    return generate_robot_launch_description(ROBOT)
