"""Real-time chunking in closed loop: RTC vs blend-only splicing at 100/200/300 ms delay.

One in-process closed loop per (delay, method), on simulated time so the numbers do not depend
on the machine: the SO-101 sim arm (config/so101.yaml limits, safety and 100 Hz control), the
driver's ChunkExecutor (latency skip + C1 ``blend`` splice), sim camera images of the arm's
measured pose, and the real MolmoAct2Policy. Inference runs back to back as in the policy
node: an observation is taken, ``act`` runs (its wall time is not used), and the chunk reaches
the executor exactly ``delay`` seconds after the capture; then the next observation is taken.
Both methods see the same noise seed for the n-th chunk. RTC inputs come from
``molmoact2_policy.rtc_feed.RtcFeed``, the policy node's own code: the last chunk aligned to
the new capture time, the delay from the recorded latencies, and the driver's commanded state.

The model: the tiny preset with its action expert fine-tuned on a periodic motion whose phase
is not given by the observation (one-second loops of every joint starting at a uniformly random
phase): the action distribution has a continuum of modes, the case RTC exists for. A model
that always predicts the same chunk gives RTC nothing to choose. The checkpoint is written once
to ``out/bench_rtc/`` (``--checkpoint-dir``; about four minutes on 2 cores) and reused. 1500
training steps by default: at 400-700 steps the gripper output is still rough inside every
chunk (as rough as at the splices), a floor no splicing method can go below, which hides what
happens at the boundaries (the "away from splices" column shows that floor).

Metrics, from the first tick the executor is tracking (its ramp-in from the start pose over,
the same rule for both methods: the ramp-in is the driver's start, not a chunk boundary):
  cmd vel jump (the must-show): largest change of the commanded velocity from one 100 Hz tick
      to the next around a splice (from the tick before it to the end of its blend window):
      the velocity jump the motors get at a chunk boundary;
  chunk pos/vel jump: at each splice, |new chunk - previous chunk| in position and velocity at
      the splice time (their cubic trajectories, before the executor's blend): what the splice
      has to hide;
  track rms/max: measured joints vs the newest chunk's trajectory (what the policy asks now);
  away from splices: the cmd vel jump measure on ticks outside every splice window, i.e. what
      the chunks' own roughness gives without any boundary (each run's floor: a splice cannot
      be smoother than the chunks it joins).
Jumps are maxima over joints and splices (means over splices in brackets), once over all joints
and once over the arm joints only (radians; the gripper is an opening, another unit).

Rejected chunks (``--reject-every N``): every N-th chunk is moved ``POISON_OFFSET`` off the
arm so the driver's executor rejects it (start deviation) and keeps running the chunk before.
Three methods then: blend-only; ``rtc-last``, RTC on the chunk published last (the policy node
with a driver that does not report, as before ``~/chunk_execution``); and ``rtc``, RTC on the
chunk the driver reports running (``ExecutionReporter`` -> ``RtcFeed.record_execution``, the
node's own code paths). Without rejections the two RTC variants are the same computation.

    .venv/bin/python bench/rtc.py [--duration 8] [--delays 0.1 0.2 0.3] [--train-steps 1500]
                                  [--reject-every N]
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from hw_drivers.backends.sim import SimBackend
from hw_drivers.chunk import Chunk
from hw_drivers.driver_params import DriverParams
from hw_drivers.execution_report import ExecutionReporter
from hw_drivers.executor import ChunkExecutor, ExecutorConfig
from hw_drivers.interpolation import KnotTrajectory
from molmoact2 import graph
from molmoact2.sim_world import SimWorld
from molmoact2_policy.rtc_feed import NS_PER_S, RtcFeed

ROOT = Path(__file__).resolve().parents[1]
ROBOT = "so101"
RECIPE = 2  # bump when the training below changes: cached checkpoints are rebuilt
# 2: gripper dims marked unnormalised by the stats mask (released stats format)
MARKER = "BENCH_RTC_CHECKPOINT.txt"
INSTRUCTION = "wipe the table"
POISON_OFFSET = 0.8  # [rad] on the arm joints of a chunk meant to be rejected (> 0.5 start check)

log = logging.getLogger("bench.rtc")


def driver_params() -> DriverParams:
    config = graph.load_robot_config(ROBOT)
    values = {**config.shared, **config.params_for(config.driver_name)}
    names = DriverParams.__dataclass_fields__
    return DriverParams(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names}
    )


def loop_chunk(phase: np.ndarray, horizon: int, action_dim: int, gripper_dims) -> np.ndarray:
    """(B, H, A) normalised one-second loops starting at ``phase`` (B,) radians."""
    k = np.arange(horizon)[None, :, None] / horizon
    joint = np.arange(action_dim)[None, None, :] * (2 * np.pi / 7)
    angle = 2 * np.pi * k + joint + phase[:, None, None]
    chunk = 0.6 * np.sin(angle)
    for dim in gripper_dims:  # grippers are not normalised: open and close around 0.5
        chunk[:, :, dim] = 0.5 + 0.2 * np.sin(angle[:, :, dim])
    return chunk


def write_checkpoint(path: Path, steps: int, seed: int = 0) -> Path:
    """The tiny checkpoint with its expert fine-tuned on random-phase loops (see docstring)."""
    from molmoact2.demo_checkpoint import scene_contexts, tiny_checkpoint_at_start_pose
    from molmoact2_policy.model.checkpoint import save_checkpoint
    from molmoact2_policy.model.training import flow_matching_loss

    # The demo checkpoint's first step: tiny weights, stats around the sim start pose.
    made = tiny_checkpoint_at_start_pose(path, ROBOT, seed=seed, spread=0.25)
    policy, joint_names = made.policy, made.joint_names
    spec = policy.embodiment
    norm = policy.norm_stats

    world = SimWorld(joint_names, spec.camera_names, width=160, height=120)
    rng = np.random.default_rng(seed)
    poses = []
    for phase in np.linspace(0, 2 * np.pi, 8, endpoint=False):
        chunk = loop_chunk(np.array([phase]), spec.horizon, spec.action_dim, spec.gripper_dims)
        pose = norm.unnormalize_action(spec.norm_tag, chunk[0, 0])
        poses.append(pose + rng.normal(0.0, 0.02, pose.shape))
    keys, values, mask = scene_contexts(policy, world, poses, INSTRUCTION)
    repeats = 3  # phases per context per step
    context_k = [k.repeat(repeats, 1, 1) for k in keys]
    context_v = [v.repeat(repeats, 1, 1) for v in values]
    context_mask = mask.repeat(repeats, 1)
    batch = context_mask.shape[0]

    expert = policy.model.action_expert
    expert.train()
    optimizer = torch.optim.AdamW(expert.parameters(), lr=3e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    for step in range(steps):
        phases = rng.uniform(0, 2 * np.pi, batch)
        actions = torch.zeros(batch, spec.horizon, policy.config.max_action_dim)
        actions[:, :, : spec.action_dim] = torch.from_numpy(
            loop_chunk(phases, spec.horizon, spec.action_dim, spec.gripper_dims)
        ).float()
        loss = flow_matching_loss(expert, context_k, context_v, context_mask, actions,
                                  policy.action_dim_mask, num_noise_samples=1,
                                  generator=generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for group in optimizer.param_groups:
            group["lr"] = 3e-3 * 0.5 * (1 + math.cos(math.pi * (step + 1) / steps))
        if step % 100 == 0 or step == steps - 1:
            log.info("training step %d/%d: flow-matching loss %.4f", step + 1, steps, loss.item())
    expert.eval()
    save_checkpoint(path, policy.model, norm, policy.tokenizer)
    (path / MARKER).write_text(f"bench/rtc.py recipe {RECIPE}, {steps} steps, seed {seed}\n")
    return path


def checkpoint(steps: int, root: Path = ROOT / "out" / "bench_rtc") -> Path:
    path = root / f"{ROBOT}_phase_loops_{steps}"
    marker = path / MARKER
    if not (marker.is_file() and f"recipe {RECIPE}," in marker.read_text()):
        log.info("writing the bench checkpoint to %s (cached for later runs)", path)
        started = time.perf_counter()
        write_checkpoint(path, steps)
        log.info("checkpoint written in %.0f s", time.perf_counter() - started)
    return path


def _summary(chunk_pos, chunk_vel, cmd_jumps, errors, between, dims: list[int]) -> dict:
    """Maxima over ``dims`` and splices, and means over splices of the per-splice maxima."""

    def per_splice(rows) -> np.ndarray:
        return np.array([row[dims].max() for row in rows]) if rows else np.zeros(0)

    out = {}
    for key, rows in (("chunk_pos_jump", chunk_pos), ("chunk_vel_jump", chunk_vel),
                      ("cmd_vel_jump", cmd_jumps)):
        values = per_splice(rows)
        out[key] = float(values.max()) if values.size else 0.0
        out[f"mean_{key}"] = float(values.mean()) if values.size else 0.0
    # The same tick-to-tick change away from every splice: the chunks' own roughness
    # (nan at 100 ms, where the blend windows touch).
    out["cmd_floor"] = float(between[:, dims].max()) if between.size else math.nan
    err = np.array(errors)[:, dims] if errors else np.full((1, len(dims)), np.nan)
    out["track_rms"] = float(np.sqrt(np.mean(err**2)))
    out["track_max"] = float(np.abs(err).max())
    return out


def closed_loop(policy, params: DriverParams, delay: float, method: str, duration: float,
                seed: int, reject_every: int = 0) -> dict:
    """One run; ``method``: "blend", "rtc-last" or "rtc" (see the module docstring)."""
    use_rtc = method != "blend"
    spec = policy.embodiment
    names = tuple(params.joint_names)
    tick = 1.0 / params.control_rate
    clock = [0.0]
    sim = SimBackend.from_params(params)
    sim._clock = lambda: clock[0]
    sim.connect()
    sim.enable()
    executor = ChunkExecutor(names, params.limits(), params.safety_config(),
                             ExecutorConfig(splice_policy="blend",
                                            blend_window=params.blend_window))
    executor.reset(sim.read_state().positions)
    world = SimWorld(names, spec.camera_names, width=160, height=120)
    # Simulated time: the driver's verdict is in before the next request (no wait needed).
    feed = RtcFeed(names, spec.step_dt, spec.horizon, verdict_timeout=0.0)
    reporter = ExecutionReporter() if method == "rtc" else None
    arm_dims = [d for d in range(len(names)) if d not in spec.gripper_dims]
    policy.reset()

    pending: tuple[float, Chunk] | None = None
    current: KnotTrajectory | None = None
    next_obs, index = 0.0, 0
    chunk_pos, chunk_vel, cmd_jumps, errors = [], [], [], []
    splice_ticks: list[int] = []
    velocities: list[np.ndarray] = []
    rtc_used = 0
    settled_at: float | None = None  # the executor's ramp-in is over: metrics from here
    blend_ticks = round(params.blend_window / tick) + 2
    for i in range(int(duration / tick)):
        now = i * tick
        clock[0] = now
        reading = sim.read_state()
        if pending is None and now >= next_obs:
            images = {c: world.render(c, reading.positions) for c in spec.camera_names}
            stamp_ns = round(now * NS_PER_S)
            rtc = feed.request_for(stamp_ns) if use_rtc else None
            rtc_used += rtc is not None
            extra = {"rtc": rtc} if rtc is not None else {}
            result = policy.act(images, reading.positions, INSTRUCTION, seed=seed + index,
                                **extra)
            positions = np.array(result.positions, dtype=float)
            if reject_every and index % reject_every == reject_every - 1:
                positions[:, arm_dims] += POISON_OFFSET
            chunk = Chunk(now, 0.0, spec.step_dt, names, positions, index, delay)
            index += 1
            pending = (now + delay - 1e-9, chunk)
        if pending is not None and now >= pending[0]:
            chunk = pending[1]
            submitted = executor.submit(chunk, now, reading.positions)
            # The policy node records every chunk it publishes; whether the driver took it
            # only the driver's report says.
            feed.record_chunk(round(chunk.stamp * NS_PER_S), chunk.start_offset,
                              chunk.positions, delay, chunk.sequence)
            if reporter is not None:
                reporter.on_verdict(chunk.sequence, round(chunk.stamp * NS_PER_S),
                                    submitted.accepted, submitted.reason)
                feed.record_execution(reporter.current(executor, now))
            if submitted.accepted:
                new = KnotTrajectory(chunk.times(), chunk.positions, "cubic")
                if current is not None and settled_at is not None:
                    old_p, old_v = current.sample(now)
                    new_p, new_v = new.sample(now)
                    chunk_pos.append(np.abs(new_p - old_p))
                    chunk_vel.append(np.abs(new_v - old_v))
                    splice_ticks.append(i)
                current = new
            else:
                log.info("delay %.1f s %s: chunk %d rejected: %s", delay, method,
                         chunk.sequence, submitted.reason)
            pending, next_obs = None, now
        command = executor.tick(now, reading.positions)
        if reporter is not None:
            report = reporter.due(executor, now)
            if report is not None:
                feed.record_execution(report)
        sim.write_command(command.positions)
        feed.record_commanded(round(now * NS_PER_S), names, command.positions)
        velocities.append(command.velocities.copy())
        if settled_at is None and command.state == "tracking":
            settled_at = now
        if current is not None and settled_at is not None:
            errors.append(reading.positions - current.sample(now)[0])
    velocity = np.array(velocities)
    accel = np.abs(np.diff(velocity, axis=0))  # accel[j]: tick j -> j + 1, per joint
    near_splice = np.zeros(len(accel), dtype=bool)
    for s in splice_ticks:
        cmd_jumps.append(accel[max(s - 1, 0): s + blend_ticks].max(axis=0))
        near_splice[max(s - 1, 0): s + blend_ticks] = True
    first = splice_ticks[0] if splice_ticks else len(accel)
    between = accel[first:][~near_splice[first:]]
    grippers = sorted(spec.gripper_dims)
    arm = [d for d in range(len(names)) if d not in grippers]
    return {
        "chunks": index,
        "splices": len(chunk_pos),
        "rtc_requests": rtc_used,
        "rejected": executor.stats.rejected_total,
        "settled_at": settled_at,
        "feed_skips": dict(feed.skipped),
        "all": _summary(chunk_pos, chunk_vel, cmd_jumps, errors, between,
                        list(range(len(names)))),
        "arm": _summary(chunk_pos, chunk_vel, cmd_jumps, errors, between, arm),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="sim seconds per run")
    parser.add_argument("--delays", type=float, nargs="+", default=[0.1, 0.2, 0.3])
    parser.add_argument("--train-steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reject-every", type=int, default=0,
                        help="move every N-th chunk off the arm so the driver rejects it (0: none)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint-dir", type=Path, default=ROOT / "out" / "bench_rtc",
                        help="where the trained checkpoint is cached")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)


    from molmoact2_policy.model.loader import load_policy

    config = graph.load_robot_config(ROBOT)
    params = driver_params()
    policy = load_policy(
        str(checkpoint(args.train_steps, args.checkpoint_dir)),
        str(config.shared["embodiment"]), seed=args.seed, joint_names=list(params.joint_names),
    )
    log.info("SO-101 sim, %g Hz control, blend window %.2f s, ramp-in %.2f s, chunk %d x %.4f s, "
             "beta %.1f, %.0f s per run", params.control_rate, params.blend_window,
             params.ramp_in_time, policy.embodiment.horizon, policy.embodiment.step_dt,
             policy.rtc_max_guidance_weight, args.duration)
    header = (f"{'delay':>6} {'method':>6} {'joints':>7} {'chunk pos jump':>14} "
              f"{'chunk vel jump':>14} {'cmd vel jump':>12} {'track rms':>9} {'track max':>9}")
    log.info(header)
    results = {}
    methods = ("blend", "rtc-last", "rtc") if args.reject_every > 0 else ("blend", "rtc")
    for delay in args.delays:
        for method in methods:
            started = time.perf_counter()
            out = closed_loop(policy, params, delay, method, args.duration,
                              seed=1000 * args.seed, reject_every=args.reject_every)
            results[(delay, method)] = out
            for group in ("all", "arm"):
                g = out[group]
                log.info(f"{delay * 1e3:>4.0f}ms {method:>6} {group:>7} "
                         f"{g['chunk_pos_jump']:>14.4f} {g['chunk_vel_jump']:>14.3f} "
                         f"{g['cmd_vel_jump']:>12.3f} {g['track_rms']:>9.4f} "
                         f"{g['track_max']:>9.4f}   (mean over splices: pos "
                         f"{g['mean_chunk_pos_jump']:.4f} vel {g['mean_chunk_vel_jump']:.3f} "
                         f"cmd {g['mean_cmd_vel_jump']:.3f}; away from splices: cmd "
                         f"{g['cmd_floor']:.3f})")
            settled = out["settled_at"]
            log.info(f"{'':>14}{out['chunks']} chunks, {out['splices']} splices measured "
                     f"from {settled if settled is not None else float('nan'):.2f} s, rejected "
                     f"{out['rejected']}, rtc requests {out['rtc_requests']}, feed skips "
                     f"{out['feed_skips']}; {time.perf_counter() - started:.0f} s")
    log.info("units: rad and rad/s (the gripper, in 'all' only: opening and opening/s); jumps "
             "are maxima over joints and splices; cmd vel jump: largest change of the commanded "
             "velocity between two control ticks around a splice")
    baselines = ("blend", "rtc-last") if args.reject_every > 0 else ("blend",)
    for delay, base, group in itertools.product(args.delays, baselines, ("all", "arm")):
        blend = results[(delay, base)][group]
        rtc = results[(delay, "rtc")][group]

        def ratio(key: str, blend=blend, rtc=rtc) -> float:
            return blend[key] / rtc[key] if rtc[key] > 0 else math.inf

        log.info(f"ratios {base}/rtc at {delay * 1e3:.0f} ms ({group} joints): cmd vel jump "
                 f"{ratio('cmd_vel_jump'):.2f}x, chunk vel jump "
                 f"{ratio('chunk_vel_jump'):.2f}x, "
                 f"chunk pos jump {ratio('chunk_pos_jump'):.2f}x, track rms "
                 f"{ratio('track_rms'):.2f}x, track max {ratio('track_max'):.2f}x; means over "
                 f"splices: cmd {ratio('mean_cmd_vel_jump'):.2f}x, "
                 f"vel {ratio('mean_chunk_vel_jump'):.2f}x, "
                 f"pos {ratio('mean_chunk_pos_jump'):.2f}x")


if __name__ == "__main__":
    main()
