"""MolmoAct2 model core: torch modules, checkpoints and the local Policy (no ROS)."""
