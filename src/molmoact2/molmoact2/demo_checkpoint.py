"""A tiny demo checkpoint that moves the simulated robot smoothly (no real weights here).

A freshly initialised tiny model outputs near-white noise, which the driver's safety layer
rightly rejects, so the demo would show a robot standing still. This writes the tiny
checkpoint in the released layout, gives it norm stats centred on the robot's start pose (from
the robot config), and fine-tunes only its action expert with the flow-matching loss so that,
for observations of the sim scene around that pose, it predicts a smooth one-second motion of
every joint. The result is an ordinary checkpoint directory: the policy node loads it like any
other, through the same key map.

Recovery. The driver refuses a chunk whose first executed point is more than
``max_start_deviation`` (0.5 rad) from the measured pose, so a demo chunk that ignored the
arm's state and started anywhere else would stall the demo for good once the arm was off
(seen with recipe 5 after a load spike: every later chunk refused). A tiny expert fine-tuned
for a minute does not learn to read the state: its state tokens are random embeddings, one per
bin, so it can memorise the states it was trained on but says nothing sensible about the
others (measured: first point 0.57 rad mean off held-out states after 800 steps, as far as a
state-blind chunk). So the demo chunk is one state-blind chunk that is acceptable from wherever
the arm can be: every joint starts at the start pose and returns there, no more than 0.1 rad
off it (``demo_target``; grippers hold their opening), the action stats clip every output to
within ``DEMO_ACTION_SPREAD`` of the start pose, and the expert is trained to give it for
observations anywhere around that pose (``observation_poses``). The driver accepts it from
any pose within ``RECOVERY_REACH`` of the start pose, at any latency; the arm, moved only by
the demo, stays well inside that.

It is the default of every robot config (``checkpoint: demo``), so the first thing a user runs,
``ros2 launch molmoact2 yam.launch.py``, moves the simulated arm. Both launch paths resolve
``demo`` to a per-robot directory in the user cache (``$XDG_CACHE_HOME/molmoact2`` or
``~/.cache/molmoact2``), made on first use (about a minute on two cores) and reused after.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from molmoact2 import graph

# Bumped whenever what the demo model learns changes, so cached demo checkpoints are rebuilt.
# 3: released prompt, stats and Think span; 4: released image tokens; 5: gripper mask in stats;
# 6: a chunk anchored at the start pose, off-path observations, actions within 0.15 rad
DEMO_RECIPE = 6
MARKER_FILE = "DEMO_CHECKPOINT.txt"
# The ``checkpoint`` value that asks the launch layer for this robot's demo checkpoint.
DEMO_CHECKPOINT = "demo"
# Half-width [rad] of the action range of the demo's norm stats, which un-normalising clips
# every output to: the model can command no joint further than this from the start pose, so
# two points it commands are at most 0.3 rad apart, 0.2 rad inside the drivers' default
# max_start_deviation (0.5). (The margin was sized when the executor's ramp-in still swung the
# arm past the chunks under load: 0.42 rad off with chunks within 0.15 rad. Its ramp-in is a
# convex blend now, which stays between the held point and the chunks.)
DEMO_ACTION_SPREAD = 0.15
# Normalised peak of the demo motion: 0.1 rad with DEMO_ACTION_SPREAD.
DEMO_AMPLITUDE = 2 / 3
# How far from the start pose [rad] each joint of the arm may be for the demo chunk to be
# accepted at any latency: no row of it is more than 0.1 rad off the start pose.
RECOVERY_REACH = 0.4
# Peak of the grippers' motion around their start opening (robot units, 0..1). Zero: grippers
# are not normalised, so nothing clips them near the start, and their range (1.0) is twice the
# start-deviation limit. With 0.1 a loaded 45 s demo (1-2 s inference, the executor's old
# ramp-in) swung a gripper to its limit (1.0), 0.55 from every chunk: refused from then on.
# Held at their opening they are only ever moved by the model's noise.
GRIPPER_AMPLITUDE = 0.0
# Half-width [rad] of the state stats, and how far off-path training observations reach.
STATE_SPREAD = 0.5


def _pose_stats(centre: np.ndarray, spread: float, passthrough: tuple[int, ...] = ()):
    """Stats centred on ``centre``; ``passthrough`` dims get ``mask`` false (not normalised).

    Without a mask the released loader normalises every dim, grippers included, so the mask is
    how a checkpoint says its grippers are used in robot units.
    """
    from molmoact2_policy.model.normalize import GroupStats

    spread_v = np.full_like(centre, spread)
    stats = {
        "mean": centre,
        "std": spread_v / 2,
        "min": centre - 1.2 * spread_v,
        "max": centre + 1.2 * spread_v,
        "q01": centre - spread_v,
        "q99": centre + spread_v,
        "q10": centre - 0.6 * spread_v,
        "q90": centre + 0.6 * spread_v,
    }
    mask = np.ones(centre.shape[0], dtype=bool)
    mask[list(passthrough)] = False
    return GroupStats({k: np.round(v.astype(float), 6) for k, v in stats.items()}, mask=mask)


def demo_target(
    horizon: int,
    action_dim: int,
    gripper_dims: tuple[int, ...],
    gripper_centres: np.ndarray | None = None,
    amplitude: float = DEMO_AMPLITUDE,
    gripper_amplitude: float = GRIPPER_AMPLITUDE,
) -> np.ndarray:
    """The chunk the demo model learns, in the model's normalised action space.

    Every joint leaves the start pose (normalised 0) and comes back within the one-second
    chunk: ``amplitude * sin(pi u)^2 * cos(2 pi u + phase)`` with ``u = k / horizon`` and its
    own phase per joint. The chunk is the same whatever the model sees (see the module's
    notes on recovery), so it is anchored where every chunk must be acceptable from: its first
    rows stay near the start pose (row k is at most ``amplitude * sin(pi k / horizon)^2`` off)
    and its last rows lead back there. Grippers are not normalised: they move by
    ``gripper_amplitude`` around their start opening, kept inside 0.2..0.8 (by default they
    hold it).
    """
    u = np.arange(horizon)[:, None] / horizon
    phase = np.arange(action_dim)[None, :] * (2 * np.pi / 7)
    envelope = np.sin(np.pi * u) ** 2
    target = amplitude * envelope * np.cos(2 * np.pi * u + phase)
    for index, dim in enumerate(gripper_dims):
        centre = 0.5 if gripper_centres is None else float(gripper_centres[index])
        centre = min(max(centre, 0.2), 0.8)
        motion = envelope[:, 0] * np.cos(2 * np.pi * u[:, 0] + phase[0, dim])
        target[:, dim] = centre + gripper_amplitude * motion
    return target


def observation_poses(
    target_pose: np.ndarray,
    start: np.ndarray,
    gripper_dims: tuple[int, ...],
    rng: np.random.Generator,
    *,
    on_path: int = 10,
    off_path: int = 20,
    reach: float = STATE_SPREAD,
) -> list[np.ndarray]:
    """Poses the demo model is trained to see, all mapped to the same chunk.

    ``on_path`` poses along ``target_pose`` (the chunk in robot units) with 0.02 rad jitter,
    as the arm executes it, and ``off_path`` poses with every joint anywhere within ``reach``
    of ``start`` (grippers anywhere in 0..1): where a stall, a push or a late chunk may leave
    the arm. The model then answers those observations with its chunk, which the driver
    accepts from there when it is within ``RECOVERY_REACH``.
    """
    poses = []
    for index in np.linspace(0, len(target_pose) - 1, on_path).round().astype(int):
        poses.append(target_pose[index] + rng.normal(0.0, 0.02, target_pose.shape[1]))
    grippers = list(gripper_dims)
    for _ in range(off_path):
        pose = start + rng.uniform(-reach, reach, start.shape)
        pose[grippers] = rng.uniform(0.0, 1.0, len(grippers))
        poses.append(pose)
    return poses


@dataclasses.dataclass
class StartPoseCheckpoint:
    """A tiny checkpoint whose norm stats are centred on a robot's sim start pose, loaded."""

    path: Path
    policy: Any  # molmoact2_policy.model.policy.MolmoAct2Policy over ``path``
    config: graph.RobotConfig
    joint_names: list[str]
    start: np.ndarray  # the driver's initial_positions, in the config's joint order


def tiny_checkpoint_at_start_pose(
    path: str | Path,
    robot: str,
    *,
    seed: int = 0,
    spread: float = 0.25,
    action_spread: float | None = None,
) -> StartPoseCheckpoint:
    """The tiny random checkpoint for ``robot``'s embodiment, in the released layout, with
    state stats spanning ``start +- spread`` and action stats ``start +- action_spread``
    (default ``spread``; grippers in robot units), loaded.

    The first step of every model made to move a sim robot without real weights (the demo
    checkpoint, ``bench/rtc.py``): normalised targets then mean motions around the start pose.
    """
    from molmoact2_policy.model.checkpoint import write_tiny_checkpoint
    from molmoact2_policy.model.loader import load_policy
    from molmoact2_policy.model.normalize import NormStats

    config = graph.load_robot_config(robot)
    spec_name = str(config.shared["embodiment"])
    joint_names = list(config.shared["joint_names"])
    start = np.asarray(config.params_for(config.driver_name)["initial_positions"], dtype=float)
    path = Path(path)
    write_tiny_checkpoint(path, seed=seed, embodiments=[spec_name])
    policy = load_policy(str(path), spec_name, seed=seed, joint_names=joint_names)
    spec = policy.embodiment
    norm_path = path / policy.config.norm_stats_filename
    norm = NormStats.from_file(norm_path)
    norm.tags[spec.norm_tag] = {
        "state": _pose_stats(start, spread, spec.gripper_dims),
        "action": _pose_stats(
            start, spread if action_spread is None else action_spread, spec.gripper_dims
        ),
    }
    norm.save(norm_path)
    policy.norm_stats = norm
    return StartPoseCheckpoint(path, policy, config, joint_names, start)


def scene_contexts(policy: Any, world: Any, poses: list[np.ndarray], instruction: str):
    """The VLM prefix of the sim scene at each pose, as a batch the action expert trains on.

    Returns per-layer keys and values and the context mask, concatenated over ``poses`` in
    order (``world`` is a ``molmoact2.sim_world.SimWorld`` with the embodiment's cameras).
    """
    import torch

    keys, values, masks = [], [], []
    with torch.no_grad():
        for pose in poses:
            images = {name: world.render(name, pose) for name in policy.embodiment.camera_names}
            prefix = policy.run_prefix(policy.prepare_inputs(images, pose, instruction))
            keys.append(prefix.keys)
            values.append(prefix.values)
            masks.append(prefix.mask)
    context_k = [torch.cat([k[layer] for k in keys]) for layer in range(len(keys[0]))]
    context_v = [torch.cat([v[layer] for v in values]) for layer in range(len(values[0]))]
    return context_k, context_v, torch.cat(masks)


def write_demo_checkpoint(
    path: str | Path,
    robot: str = "yam",
    *,
    seed: int = 0,
    steps: int = 250,
    batch: int = 10,
    log: Callable[[str], None] = print,
) -> Path:
    """Write and fine-tune the demo checkpoint for ``robot``; returns its directory."""
    import torch

    from molmoact2.sim_world import SimWorld
    from molmoact2_policy.model.checkpoint import save_checkpoint
    from molmoact2_policy.model.training import flow_matching_loss

    made = tiny_checkpoint_at_start_pose(
        path, robot, seed=seed, spread=STATE_SPREAD, action_spread=DEMO_ACTION_SPREAD
    )
    path, policy, config, joint_names, start = (
        made.path, made.policy, made.config, made.joint_names, made.start
    )
    spec = policy.embodiment
    norm = policy.norm_stats

    # Observations along the chunk and anywhere the arm may end up off it, all answered with
    # the same chunk, so the answer does not hinge on one exact image or state.
    world = SimWorld(joint_names, spec.camera_names, width=320, height=240)
    target = demo_target(
        spec.horizon, spec.action_dim, spec.gripper_dims, start[list(spec.gripper_dims)]
    )
    instruction = str(config.params_for(graph.POLICY_NODE).get("instruction", "move"))
    rng = np.random.default_rng(seed)
    poses = observation_poses(
        norm.unnormalize_action(spec.norm_tag, target), start, spec.gripper_dims, rng
    )
    context_k, context_v, context_mask = scene_contexts(policy, world, poses, instruction)
    batch = min(batch, len(poses))
    actions = torch.zeros(batch, spec.horizon, policy.config.max_action_dim)
    actions[:, :, : spec.action_dim] = torch.from_numpy(target).float()

    expert = policy.model.action_expert
    expert.train()
    optimizer = torch.optim.AdamW(expert.parameters(), lr=5e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    log(
        f"fine-tuning the tiny expert on a smooth {spec.horizon}-step chunk from "
        f"{len(poses)} observations ({steps} steps)"
    )
    for step in range(steps):
        # Ten observations per step, as recipe 5 trained on: the same cost per step.
        rows = torch.from_numpy(rng.choice(len(poses), batch, replace=False))
        loss = flow_matching_loss(
            expert, [k[rows] for k in context_k], [v[rows] for v in context_v],
            context_mask[rows], actions, policy.action_dim_mask,
            num_noise_samples=4, generator=generator,
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for group in optimizer.param_groups:  # cosine decay settles the single-target loss
            group["lr"] = 5e-3 * 0.5 * (1 + np.cos(np.pi * (step + 1) / steps))
    expert.eval()
    log(f"final flow-matching loss {loss.item():.4f}")
    save_checkpoint(path, policy.model, norm, policy.tokenizer)
    (path / MARKER_FILE).write_text(
        f"Tiny random MolmoAct2 fine-tuned to a demo motion for the {robot} sim "
        f"(molmoact2.demo_checkpoint recipe {DEMO_RECIPE}, seed {seed}). Not a trained policy.\n"
    )
    return path


def is_current_demo_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` holds a demo checkpoint written by this recipe."""
    marker = Path(path) / MARKER_FILE
    return marker.is_file() and f"recipe {DEMO_RECIPE}," in marker.read_text()


def cache_root() -> Path:
    """Where demo checkpoints are kept (XDG cache; CI points it into the clone)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "molmoact2" / "demo_checkpoints"


def demo_checkpoint_dir(robot: str) -> Path:
    """``robot`` is a config name or a config file path (named by its stem)."""
    return cache_root() / f"{Path(robot).stem}-recipe{DEMO_RECIPE}"


def ensure_demo_checkpoint(robot: str, log: Callable[[str], None] = print) -> Path:
    """The cached demo checkpoint of ``robot``, made first if missing or from an old recipe.

    Safe when several launches race for it: one makes it under a file lock, in a temporary
    directory renamed into place when complete; the others wait and reuse it.
    """
    import fcntl

    path = demo_checkpoint_dir(robot)
    if is_current_demo_checkpoint(path):
        log(f"demo checkpoint for {robot}: {path} (cached)")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_current_demo_checkpoint(path):
            log(f"demo checkpoint for {robot}: {path} (cached)")
            return path
        log(
            f"making the demo checkpoint for {robot} on first use (about a minute; cached in "
            f"{path}). Pass checkpoint:=<dir> for a real one."
        )
        # Under the lock no one else is writing: partial directories are from killed runs.
        for stale in path.parent.glob(f".{path.name}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = path.parent / f".{path.name}.partial-{os.getpid()}"
        try:
            write_demo_checkpoint(staging, robot, log=log)
            shutil.rmtree(path, ignore_errors=True)  # an older recipe's
            os.replace(staging, path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    log(f"demo checkpoint for {robot} ready: {path}")
    return path


def resolve_checkpoint(
    robot: str,
    nodes: list[graph.NodeSpec],
    log: Callable[[str], None] = print,
    make: Callable[[str, Callable[[str], None]], Path] | None = None,
) -> list[graph.NodeSpec]:
    """``nodes`` with the policy's ``checkpoint: demo`` replaced by the cached directory.

    ``make(robot, log)`` finds or makes it (default ``ensure_demo_checkpoint``).
    """
    make = make or ensure_demo_checkpoint
    config = graph.load_robot_config(robot)
    resolved = []
    for node in nodes:
        if node.name == graph.POLICY_NODE:
            value = node.overrides.get(
                "checkpoint", config.params_for(graph.POLICY_NODE).get("checkpoint", "")
            )
            if value == DEMO_CHECKPOINT:
                path = make(robot, log)
                node = dataclasses.replace(
                    node, overrides={**node.overrides, "checkpoint": str(path)}
                )
        resolved.append(node)
    return resolved


def ensure_in_child_process(robot: str, log: Callable[[str], None] = print) -> Path:
    """``ensure_demo_checkpoint`` for ``ros2 launch``: the minute of training runs in a child.

    Launch acts on Ctrl-C only between its actions; the child is in the terminal's process
    group, so Ctrl-C stops the training at once and launch right after.
    """
    import subprocess

    path = demo_checkpoint_dir(robot)
    if is_current_demo_checkpoint(path):
        log(f"demo checkpoint for {robot}: {path} (cached)")
        return path
    result = subprocess.run(
        [sys.executable, "-m", "molmoact2.demo_checkpoint", robot],
        stdout=subprocess.PIPE, text=True, check=False,
        env={**os.environ, ENV_PARENT: str(os.getpid())},
    )  # its progress lines go to stderr, i.e. the user's terminal
    if result.returncode != 0 or not is_current_demo_checkpoint(path):
        raise RuntimeError(
            f"the demo checkpoint for {robot} was not made (exit status {result.returncode})"
        )
    return path


# Set by ensure_in_child_process: the launch process the child must not outlive.
ENV_PARENT = "MOLMOACT2_CHECKPOINT_PARENT"


def _exit_with_parent(parent: int) -> None:
    """Exit (the staging directory removed on the way out) once ``parent`` is gone. A
    ``ros2 launch`` ended by SIGTERM (or killed) while the child made the demo checkpoint left
    that minute of training running on as an orphan: only Ctrl-C reached it (same group)."""
    import signal

    from molmoact2_common.ros_runtime import PARENT_DEATH_SIGNAL, _set_parent_death_signal

    def parent_gone(*_args: object) -> None:
        # The kernel also sends it when the parent's starting *thread* ends: check.
        if os.getppid() != parent:
            raise SystemExit(143)

    signal.signal(PARENT_DEATH_SIGNAL, parent_gone)
    _set_parent_death_signal(PARENT_DEATH_SIGNAL)
    parent_gone()  # gone before the kernel was asked


def main(argv: list[str] | None = None) -> int:
    """``python -m molmoact2.demo_checkpoint ROBOT``: make (or find) it and print its path."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m molmoact2.demo_checkpoint")
    parser.add_argument("robot", help=f"robot config ({', '.join(graph.known_robots())})")
    args = parser.parse_args(argv)
    parent = os.environ.get(ENV_PARENT, "")
    if parent.isdigit():
        _exit_with_parent(int(parent))
    try:
        path = ensure_demo_checkpoint(args.robot, log=lambda t: print(t, file=sys.stderr))
    except KeyboardInterrupt:
        return 130
    print(path)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
