"""Console scripts of the bringup's nodes (see ``molmoact2_common.node_entry``): a stop signal
before the node runs ends the process quietly, not with a traceback from inside an import."""

from molmoact2_common.node_entry import entry

sim_camera_node = entry("molmoact2.sim_camera_node")
recorder_node = entry("molmoact2.recorder_node")
foxglove_node = entry("molmoact2.foxglove_node")
tf_node = entry("molmoact2.tf_node")
