"""Does a checkpoint serve the configured embodiment? (pure: no torch, no ROS)

The policy node's ``embodiment`` parameter picks an ``EmbodimentSpec`` (action/state dims,
chunk length, norm-stats tag); its ``checkpoint`` parameter picks the files. When the two
disagree, ``check_embodiment`` raises ``EmbodimentMismatchError`` saying what the embodiment
asks for, what the checkpoint holds, and which parameter to change (naming the embodiments
the checkpoint does serve), so the node's configure failure reads as a configuration mistake,
not as a broken file.
"""

from __future__ import annotations

from molmoact2_common.embodiments import EMBODIMENTS, EmbodimentSpec
from molmoact2_policy.model.normalize import NormStats, NormStatsError

# The node parameters a mismatch is fixed with (policy_node_params.PolicyNodeParams fields).
EMBODIMENT_KEY = "embodiment"
CHECKPOINT_KEY = "checkpoint"


class EmbodimentMismatchError(ValueError):
    """The configured embodiment asks for something the checkpoint does not hold."""


class NormStatsMismatchError(EmbodimentMismatchError, NormStatsError):
    """A norm-stats group's length differs from the embodiment's dims: both a norm-stats
    problem and a configuration mismatch, so either ``except`` catches it."""


def check_embodiment(
    spec: EmbodimentSpec,
    norm_stats: NormStats,
    *,
    max_action_dim: int,
    max_action_horizon: int,
    n_obs_steps: int,
    checkpoint: str,
) -> tuple[int, int]:
    """``(first_step, returned_steps)`` of the chunk for ``spec``, or EmbodimentMismatchError.

    As released, the returned steps start at ``n_obs_steps - 1`` (the chunk is predicted from
    the oldest observation the model was trained to see) and number the tag's
    ``n_action_steps`` (the whole chunk when absent).
    """
    where = f"checkpoint {checkpoint!r}"

    def mismatch(
        asks: str, holds: str, error: type[EmbodimentMismatchError] = EmbodimentMismatchError
    ):
        return error(
            f"embodiment {spec.name!r} (parameter {EMBODIMENT_KEY!r}) needs {asks}; {where} "
            f"has {holds}. {_fix(spec, norm_stats, max_action_dim, max_action_horizon)}"
        )

    if spec.action_dim > max_action_dim:
        raise mismatch(f"{spec.action_dim} action dims", f"max_action_dim {max_action_dim}")
    if spec.horizon > max_action_horizon:
        raise mismatch(
            f"a {spec.horizon}-step chunk", f"expert max_action_horizon {max_action_horizon}"
        )
    if spec.norm_tag not in norm_stats.tags:
        known = ", ".join(sorted(norm_stats.tags)) or "none"
        raise mismatch(f"norm-stats tag {spec.norm_tag!r}", f"tags {known}")
    # A tag without state/action statistics is a malformed file, not a mismatch: NormStatsError.
    state = norm_stats.group(spec.norm_tag, "state")
    action = norm_stats.group(spec.norm_tag, "action")
    if state.dim != spec.state_dim or action.dim != spec.action_dim:
        raise mismatch(
            f"state/action dims {spec.state_dim}/{spec.action_dim}",
            f"{state.dim}/{action.dim} under norm-stats tag {spec.norm_tag!r}",
            NormStatsMismatchError,
        )
    if n_obs_steps < 1:
        raise ValueError(f"{where}: n_obs_steps {n_obs_steps} must be >= 1")
    # Released tags may say how long a chunk the model was trained on and how much of it to
    # return; a horizon other than the embodiment's would mistime every action.
    trained_horizon = norm_stats.action_horizon(spec.norm_tag)
    steps = norm_stats.n_action_steps(spec.norm_tag)
    if trained_horizon is not None and trained_horizon != spec.horizon:
        raise mismatch(
            f"a {spec.horizon}-step chunk",
            f"action_horizon {trained_horizon} under norm-stats tag {spec.norm_tag!r}",
        )
    if steps is not None and steps > spec.horizon:
        raise mismatch(
            f"at most {spec.horizon} steps per chunk",
            f"n_action_steps {steps} under norm-stats tag {spec.norm_tag!r}",
        )
    first_step = n_obs_steps - 1
    returned = steps or spec.horizon
    if first_step + returned > spec.horizon:
        raise mismatch(
            f"a {spec.horizon}-step chunk",
            f"n_obs_steps {n_obs_steps} with {returned} returned steps, which needs steps up "
            f"to {first_step + returned}",
        )
    return first_step, returned


def serving_embodiments(
    norm_stats: NormStats, max_action_dim: int, max_action_horizon: int
) -> list[str]:
    """The known embodiments whose tag, dims and chunk length this checkpoint serves."""
    names = []
    for name, spec in sorted(EMBODIMENTS.items()):
        try:
            state = norm_stats.group(spec.norm_tag, "state")
            action = norm_stats.group(spec.norm_tag, "action")
            horizon = norm_stats.action_horizon(spec.norm_tag)
        except NormStatsError:
            continue
        if (
            state.dim == spec.state_dim
            and action.dim == spec.action_dim
            and spec.action_dim <= max_action_dim
            and spec.horizon <= max_action_horizon
            and horizon in (None, spec.horizon)
        ):
            names.append(name)
    return names


def _fix(
    spec: EmbodimentSpec, norm_stats: NormStats, max_action_dim: int, max_action_horizon: int
) -> str:
    serving = serving_embodiments(norm_stats, max_action_dim, max_action_horizon)
    trained = f"point {CHECKPOINT_KEY!r} at a checkpoint trained for {spec.name!r}"
    if not serving:
        return f"No known embodiment matches this checkpoint: {trained}."
    return f"Set {EMBODIMENT_KEY!r} to one it serves ({', '.join(serving)}), or {trained}."
