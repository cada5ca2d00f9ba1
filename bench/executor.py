"""Chunk execution benchmark: our executor vs a synchronous chunk broker, then real-time rate.

Part 1 (simulated time, deterministic): the same sim arm (YAM bimanual, 14 joints, from
config/yam.yaml) follows the same reference trajectory through an oracle "policy" that returns
30-action chunks at 30 Hz after a fixed inference latency, with a small per-chunk offset that
stands in for model variation. Compared:
  * ours: ChunkExecutor at 250 Hz; inference runs back to back while the robot moves; each
    chunk is latency-skipped and spliced (policy ``blend``; ``replace`` shown for reference);
  * sync: a synchronous broker as in openpi's runtime: when a chunk runs out the robot waits
    for the next inference, then plays the chunk from action 0, linearly interpolated at 250 Hz
    from the held command (which favours the baseline over sending raw 30 Hz steps).
Metrics: idle ticks (no live plan after the first chunk), largest commanded velocity jump
within 3 ticks of a chunk boundary, and tracking error of the measured joints vs the reference.

Part 2 (wall clock): executor + sim in a real-time loop at 250 Hz; achieved rate / target, and
how late ticks were (on a loaded shared machine, scheduler stalls show up as late ticks that
the loop then catches up).

    .venv/bin/python bench/executor.py [--duration 30] [--latency 0.08]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import yaml

from hw_drivers.backends.sim import SimBackend
from hw_drivers.chunk import Chunk
from hw_drivers.driver_params import DriverParams
from hw_drivers.executor import ChunkExecutor, ExecutorConfig

ROOT = Path(__file__).resolve().parents[1]
RATE = 250.0
TICK = 1.0 / RATE
STEP = 1.0 / 30.0
HORIZON = 30


def yam_params() -> DriverParams:
    data = yaml.safe_load((ROOT / "config" / "yam.yaml").read_text())
    values = {**data["/**"]["ros__parameters"], **data["/**/yam_driver"]["ros__parameters"]}
    names = DriverParams.__dataclass_fields__
    return DriverParams(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names}
    )


class Reference:
    """Smooth per-joint sinusoids around the start pose, inside the YAM limits."""

    def __init__(self, start: np.ndarray, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.start = start
        self.amp = rng.uniform(0.15, 0.3, start.size)
        self.omega = rng.uniform(1.0, 2.5, start.size)
        self.phase = rng.uniform(0, 2 * np.pi, start.size)

    def __call__(self, t) -> np.ndarray:
        t = np.asarray(t, dtype=float)[..., None]
        return self.start + self.amp * (np.sin(self.omega * t + self.phase) - np.sin(self.phase))


class OraclePolicy:
    """Chunk for an observation at ``t_obs``: the reference ahead, plus a per-chunk offset."""

    def __init__(self, reference: Reference, names, noise: float = 0.01, seed: int = 1) -> None:
        self.reference = reference
        self.names = tuple(names)
        self.noise = noise
        self.rng = np.random.default_rng(seed)
        self.sequence = 0

    def infer(self, t_obs: float, latency: float) -> Chunk:
        times = t_obs + STEP * (1 + np.arange(HORIZON))
        offset = self.rng.normal(0.0, self.noise, len(self.names))
        self.sequence += 1
        return Chunk(
            t_obs, STEP, STEP, self.names, self.reference(times) + offset, self.sequence, latency
        )


def _metrics(times, commands, measured, reference, boundaries, idle_ticks) -> dict:
    commands, measured = np.array(commands), np.array(measured)
    velocity = np.diff(commands, axis=0) / TICK
    jump = np.abs(np.diff(velocity, axis=0)).max(axis=1)  # jump[i]: around tick i + 1
    near = [jump[max(b - 4, 0) : b + 3].max() for b in boundaries if 4 <= b < len(jump)]
    settled = np.array(times) > 1.5  # after the first chunk's ramp-in
    error = (measured - reference(np.array(times)))[settled]
    return {
        "idle_ticks": idle_ticks,
        "boundary_jump": max(near) if near else 0.0,
        "track_rms": float(np.sqrt(np.mean(error**2))),
        "track_max": float(np.abs(error).max()),
        "chunks": len(boundaries),
    }


def run_ours(params, latency, duration, policy_name="blend") -> dict:
    clock = [0.0]
    sim = SimBackend.from_params(params)
    sim._clock = lambda: clock[0]
    sim.connect()
    sim.enable()
    reference = Reference(params.initial_pose())
    policy = OraclePolicy(reference, params.joint_names)
    executor = ChunkExecutor(
        params.joint_names,
        params.limits(),
        params.safety_config(),
        ExecutorConfig(splice_policy=policy_name),
    )
    executor.reset(sim.read_state().positions)
    times, commands, measured, boundaries = [], [], [], []
    pending: tuple[float, Chunk] | None = None
    next_obs = 0.0
    idle = 0
    started = False
    for i in range(int(duration * RATE)):
        now = i * TICK
        clock[0] = now
        reading = sim.read_state()
        if pending is None and now >= next_obs:
            # Back-to-back inference: the next observation is taken when the last result lands.
            pending = (now + latency, policy.infer(now, latency))
        if pending is not None and now >= pending[0]:
            result = executor.submit(pending[1], now, reading.positions)
            if result.accepted:
                boundaries.append(len(commands))
                started = True
            next_obs, pending = now, None
        command = executor.tick(now, reading.positions)
        if started and command.state in ("idle", "holding"):
            idle += 1
        sim.write_command(command.positions)
        times.append(now)
        commands.append(command.positions)
        measured.append(reading.positions)
    out = _metrics(times, commands, measured, reference, boundaries, idle)
    out["rejected"] = executor.stats.rejected_total
    out["clamped_ticks"] = executor.stats.clamped_ticks
    return out


def run_sync(params, latency, duration) -> dict:
    clock = [0.0]
    sim = SimBackend.from_params(params)
    sim._clock = lambda: clock[0]
    sim.connect()
    sim.enable()
    reference = Reference(params.initial_pose())
    policy = OraclePolicy(reference, params.joint_names)
    times, commands, measured, boundaries = [], [], [], []
    last = sim.read_state().positions.copy()
    held = last.copy()
    chunk: Chunk | None = None
    chunk_start = 0.0
    waiting_until: float | None = None
    obs_time = 0.0
    idle = 0
    started = False
    for i in range(int(duration * RATE)):
        now = i * TICK
        clock[0] = now
        reading = sim.read_state()
        if chunk is None and waiting_until is None:
            obs_time, waiting_until = now, now + latency  # blocking inference starts
            boundaries.append(len(commands))
        if waiting_until is not None:
            if now >= waiting_until:
                chunk = policy.infer(obs_time, latency)
                chunk_start, waiting_until, started = now, None, True
                held = last.copy()
                boundaries.append(len(commands))
            else:
                if started:
                    idle += 1
                # The robot waits: nothing new is sent, the last command is held.
                times.append(now)
                commands.append(last.copy())
                measured.append(reading.positions)
                continue
        assert chunk is not None
        # Play the chunk at 30 Hz, linearly interpolated from the held command to action 0
        # (one step, as a trajectory controller would), then action to action.
        knots = np.vstack([held, chunk.positions])
        phase = (now - chunk_start) / STEP
        k = int(np.floor(phase))
        if k >= HORIZON:
            target = chunk.positions[-1]
            chunk = None
        else:
            target = knots[k] + (phase - k) * (knots[k + 1] - knots[k])
        sim.write_command(target)
        last = np.asarray(target, dtype=float).copy()
        times.append(now)
        commands.append(last.copy())
        measured.append(reading.positions)
    return _metrics(times, commands, measured, reference, boundaries, idle)


def realtime_rate(params, latency, duration) -> dict:
    sim = SimBackend.from_params(params)
    sim.connect()
    sim.enable()
    reference = Reference(params.initial_pose())
    policy = OraclePolicy(reference, params.joint_names)
    executor = ChunkExecutor(
        params.joint_names, params.limits(), params.safety_config(), params.executor_config()
    )
    t0 = time.monotonic()
    executor.reset(sim.read_state().positions)
    period = 1.0 / params.control_rate
    deadline = t0
    ticks, late, worst_late, work = 0, 0, 0.0, 0.0
    lateness_all: list[float] = []
    pending: tuple[float, Chunk] | None = None
    end = t0 + duration
    while True:
        deadline += period
        now_abs = time.monotonic()
        if now_abs >= end:
            break
        begin = time.perf_counter()
        now = now_abs - t0
        reading = sim.read_state()
        if pending is None:
            pending = (now + latency, policy.infer(now, latency))
        elif now >= pending[0]:
            executor.submit(pending[1], now, reading.positions)
            pending = None
        command = executor.tick(now, reading.positions)
        sim.write_command(command.positions)
        work += time.perf_counter() - begin
        ticks += 1
        remaining = deadline - time.monotonic()
        if remaining > 0.0015:
            time.sleep(remaining - 0.001)
        while time.monotonic() < deadline:
            pass
        lateness = time.monotonic() - deadline
        if lateness > period:
            late += 1
        worst_late = max(worst_late, lateness)
        lateness_all.append(lateness)
    elapsed = time.monotonic() - t0
    return {
        "ticks": ticks,
        "rate": ticks / elapsed,
        "ratio": ticks / elapsed / params.control_rate,
        "late_ticks": late,
        "worst_late_ms": worst_late * 1e3,
        "p99_late_ms": float(np.percentile(lateness_all, 99)) * 1e3 if lateness_all else 0.0,
        "work_us": work / max(ticks, 1) * 1e6,
        "rejected": executor.stats.rejected_total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=30.0, help="real-time loop length [s]")
    parser.add_argument("--sim-duration", type=float, default=20.0, help="simulated run [s]")
    parser.add_argument("--latency", type=float, default=0.08, help="inference latency [s]")
    args = parser.parse_args()
    params = yam_params()
    print(
        f"YAM sim, {len(params.joint_names)} joints, control {RATE:g} Hz, chunks {HORIZON} x "
        f"{1 / STEP:g} Hz, inference latency {args.latency * 1e3:g} ms, "
        f"{args.sim_duration:g} s simulated"
    )
    ours = run_ours(params, args.latency, args.sim_duration)
    replace = run_ours(params, args.latency, args.sim_duration, "replace")
    sync = run_sync(params, args.latency, args.sim_duration)
    header = f"{'':28s}{'idle ticks':>11s}{'bnd jump':>10s}{'track rms':>11s}{'track max':>11s}"
    print(header + f"{'chunks':>8s}")
    for name, m in (("ours (blend)", ours), ("ours (replace)", replace), ("sync broker", sync)):
        print(
            f"{name:28s}{m['idle_ticks']:>11d}{m['boundary_jump']:>10.3f}"
            f"{m['track_rms']:>11.4f}{m['track_max']:>11.4f}{m['chunks']:>8d}"
        )
    print("  (bnd jump: largest commanded velocity change between ticks near a chunk boundary,")
    print("   rad/s; track: measured - reference, rad)")
    print(
        f"ratios sync/ours: idle ticks {sync['idle_ticks']} vs {ours['idle_ticks']}, "
        f"boundary velocity jump x{sync['boundary_jump'] / max(ours['boundary_jump'], 1e-12):.1f}, "
        f"tracking rms x{sync['track_rms'] / ours['track_rms']:.1f}, "
        f"tracking max x{sync['track_max'] / ours['track_max']:.1f}"
    )
    print(f"ours: rejected chunks {ours['rejected']}, clamped ticks {ours['clamped_ticks']}")
    rt = realtime_rate(params, args.latency, args.duration)
    print(
        f"real-time loop {args.duration:g} s at {params.control_rate:g} Hz: {rt['ticks']} ticks, "
        f"achieved {rt['rate']:.2f} Hz, ratio {rt['ratio']:.4f} (target >= 0.99), "
        f"ticks late by > 1 period {rt['late_ticks']}, lateness p99 {rt['p99_late_ms']:.2f} ms, "
        f"worst {rt['worst_late_ms']:.2f} ms, "
        f"executor+sim work {rt['work_us']:.0f} us/tick"
    )


if __name__ == "__main__":
    main()
