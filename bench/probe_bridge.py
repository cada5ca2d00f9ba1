"""Outside-in probe of the trajectory bridge through joint_trajectory_controller's own splines.

Random policy-like chunks (30 steps at 30 Hz, speeds up to the limits, some riding a joint
limit) go through what the bridge does (``chunk_to_trajectory``, ``bridge_guard.guard``) from a
measured pose near the chunk's start; every trajectory it would send is run as the controller
runs it (``hw_drivers.jtc_model``: its acceptance rules and interpolation, from ros2_controllers'
source) and sampled densely. Prints what was sent and refused, and the worst the controller
would command: speed over ``max_velocity``, position past a limit. Not a CI test (it prints
figures); the invariants it measures are tested in tests/unit/test_bridge_guard.py.

    .venv/bin/python bench/probe_bridge.py --chunks 3000 --seed 0
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter

import numpy as np

from hw_drivers.bridge_guard import GuardConfig, guard
from hw_drivers.chunk import Chunk
from hw_drivers.jtc_model import check_trajectory, sample
from hw_drivers.trajectory import chunk_to_trajectory

log = logging.getLogger("probe_bridge")

NAMES = ("j0", "j1", "j2")
LOWER = np.array([-1.0, -2.0, 0.0])
UPPER = np.array([1.0, 2.0, 1.0])
VMAX = np.array([2.0, 3.0, 1.0])
AMAX = np.array([20.0, 30.0, 10.0])
STEP = 1 / 30


def random_chunk(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(positions [30 x 3], the measured pose the arm is at)."""
    fraction = rng.uniform(0.3, 1.0)
    start = rng.uniform(LOWER + 0.05, UPPER - 0.05)
    steps = rng.uniform(-1, 1, size=(30, 3)) * VMAX * fraction * STEP
    width = int(rng.integers(1, 6))
    kernel = np.ones(width) / width
    steps = np.stack([np.convolve(steps[:, j], kernel, mode="same") for j in range(3)], 1)
    positions = np.clip(start + np.cumsum(steps, axis=0), LOWER, UPPER)
    return positions, start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=2000, help="per trajectory")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for idle in (True, False):
        rng = np.random.default_rng(args.seed)
        verdicts: Counter[str] = Counter()
        worst_speed = 0.0  # |v| / max_velocity
        worst_past = 0.0  # [rad] past a limit
        refused_by_controller = 0
        for _ in range(args.chunks):
            positions, measured = random_chunk(rng)
            chunk = Chunk(100.0, STEP, STEP, NAMES, positions)
            out = chunk_to_trajectory(chunk, 100.0, min_lead_time=0.0)
            result = guard(
                out,
                NAMES,
                measured,
                VMAX,
                AMAX,
                GuardConfig(),
                lower=LOWER,
                upper=UPPER,
                idle=idle,
            )
            if result.output is None:
                verdicts[result.reason.split(":")[0]] += 1
                continue
            verdicts["sent"] += 1
            trajectory = result.output.trajectory
            if check_trajectory(trajectory, NAMES) is not None:
                refused_by_controller += 1
            times = np.linspace(0.0, trajectory.points[-1].time_from_start, args.samples)
            runs = [sample(trajectory, measured, np.zeros(3), t) for t in times]
            p = np.array([r[0] for r in runs])
            v = np.array([r[1] for r in runs])
            worst_speed = max(worst_speed, float(np.max(np.abs(v) / VMAX)))
            worst_past = max(worst_past, float(np.max(np.maximum(p - UPPER, LOWER - p))))
        log.info(
            "%s: %s; refused by the controller's rules %d; worst speed %.3f of max_velocity; "
            "worst position past a limit %.6f rad",
            "from idle" if idle else "continuing",
            dict(verdicts),
            refused_by_controller,
            worst_speed,
            max(worst_past, 0.0),
        )


if __name__ == "__main__":
    main()
