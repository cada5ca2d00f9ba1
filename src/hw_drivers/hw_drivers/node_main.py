"""Console scripts of the hw_drivers nodes (see ``molmoact2_common.node_entry``): a stop signal
before the node runs ends the process quietly, not with a traceback from inside an import."""

from molmoact2_common.node_entry import entry

driver_node = entry("hw_drivers.driver_node")
trajectory_bridge_node = entry("hw_drivers.trajectory_bridge_node")
