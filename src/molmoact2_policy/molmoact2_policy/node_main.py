"""Console script of the policy node (see ``molmoact2_common.node_entry``): a stop signal
before the node runs ends the process quietly, not with a traceback from inside an import
(torch takes a while)."""

from molmoact2_common.node_entry import entry

molmoact2_policy_node = entry("molmoact2_policy.policy_node")
