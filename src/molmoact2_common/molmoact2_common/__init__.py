"""molmoact2_common: what the node packages (molmoact2_policy, hw_drivers, molmoact2) share.

``ros_runtime`` runs a node process from start to a clean stop, ``ros_params`` declares a node's
parameters from its dataclass, ``rigid_body`` loads an arm's URDF into pinocchio and
``embodiments`` holds the model facts per embodiment (horizon, rate, cameras) that the policy
and the driver both use; ``allocator`` keeps freed memory in the processes that run the model.
It depends on no other package of the suite, so a GPU inference machine needs neither the
drivers nor the bringup.
"""
