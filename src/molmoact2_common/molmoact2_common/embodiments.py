"""What the released MolmoAct2 checkpoints expect of each embodiment (model facts, no ROS).

Robot facts (joint names, limits, topics, control rates) live in ``config/<robot>.yaml``; this
table holds only what the model was trained with: chunk length, action rate, action/state size,
camera order, norm-stats tag and the prompt's control-mode text.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EmbodimentSpec:
    """The model-side description of one embodiment."""

    name: str
    horizon: int  # actions per chunk
    rate_hz: float  # action rate the chunk was trained at; step_dt = 1 / rate_hz
    action_dim: int
    state_dim: int
    camera_names: tuple[str, ...]  # order of the images in the prompt
    norm_tag: str  # key into norm_stats.json's metadata_by_tag
    control_mode: str  # text between <control_start> and <control_end>
    setup: str  # text between <setup_start> and <setup_end>
    gripper_dims: tuple[int, ...]  # gripper action/state dims (normalised unless a mask says not)

    @property
    def step_dt(self) -> float:
        return 1.0 / self.rate_hz


ABSOLUTE_JOINTS = "absolute joint pose"

EMBODIMENTS: dict[str, EmbodimentSpec] = {
    "yam_bimanual": EmbodimentSpec(
        name="yam_bimanual",
        horizon=30,
        rate_hz=30.0,
        action_dim=14,
        state_dim=14,
        camera_names=("top", "left_wrist", "right_wrist"),
        norm_tag="yam_bimanual",
        control_mode=ABSOLUTE_JOINTS,
        setup="bimanual YAM arms",
        gripper_dims=(6, 13),
    ),
    "droid": EmbodimentSpec(
        name="droid",
        horizon=15,
        rate_hz=15.0,
        action_dim=8,
        state_dim=8,
        camera_names=("exterior_1", "wrist"),
        norm_tag="droid",
        control_mode=ABSOLUTE_JOINTS,
        setup="single Franka arm",
        gripper_dims=(7,),
    ),
    "so100_101": EmbodimentSpec(
        name="so100_101",
        horizon=30,
        rate_hz=30.0,
        action_dim=6,
        state_dim=6,
        camera_names=("front", "wrist"),
        norm_tag="so100_101",
        control_mode=ABSOLUTE_JOINTS,
        setup="single SO-101 arm",
        gripper_dims=(5,),
    ),
    "libero": EmbodimentSpec(
        name="libero",
        horizon=10,
        rate_hz=10.0,
        action_dim=7,
        state_dim=8,
        camera_names=("agentview", "wrist"),
        norm_tag="libero",
        control_mode="delta end effector",
        setup="simulated Franka arm",
        gripper_dims=(6,),
    ),
}


def get_embodiment(name: str) -> EmbodimentSpec:
    """Look up an embodiment by name, with an error that lists the known ones."""
    try:
        return EMBODIMENTS[name]
    except KeyError:
        known = ", ".join(sorted(EMBODIMENTS))
        raise ValueError(f"unknown embodiment {name!r}; known: {known}") from None
