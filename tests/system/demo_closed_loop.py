"""The demo checkpoint driving the real chunk executor and sim arm, in simulated time (no ROS).

What the demo graph does, without processes or wall clock: every ``period`` seconds the policy
sees the sim scene rendered at the measured pose, and its chunk reaches the driver ``latency``
seconds later, where ``ChunkExecutor.submit`` (the driver's own safety checks, start deviation
included) accepts or rejects it; ``ControlLoop.step`` ticks the executor and the sim arm.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

from hw_drivers.backends.sim import SimBackend
from hw_drivers.chunk import Chunk
from hw_drivers.control_loop import ControlLoop
from hw_drivers.driver_params import DriverParams
from hw_drivers.executor import ChunkExecutor
from molmoact2 import graph
from molmoact2.sim_world import SimWorld

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


def driver_params(robot: str, **changes) -> DriverParams:
    """The robot config's driver parameters, as the driver node reads them."""
    config = graph.load_robot_config(robot)
    data = yaml.safe_load((CONFIG_DIR / f"{robot}.yaml").read_text())
    values = {
        **data["/**"]["ros__parameters"],
        **data[f"/**/{config.driver_name}"]["ros__parameters"],
    }
    names = {f.name for f in dataclasses.fields(DriverParams)}
    kept = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names}
    return dataclasses.replace(DriverParams(**kept), **changes)


@dataclasses.dataclass
class ClosedLoopRun:
    accepted: int
    rejected: Counter  # by reason code
    positions: np.ndarray  # measured pose at each observation, (observations, joints)
    first_rejection: str
    rejected_at: list[float]  # simulated time of each rejection [s]


def run_closed_loop(
    policy,
    params: DriverParams,
    instruction: str,
    *,
    seconds: float = 3.0,
    period: float = 0.2,
    latency: float | Callable[[int], float] = 0.15,
    control_rate: float = 100.0,
) -> ClosedLoopRun:
    """Run ``policy`` on the sim arm of ``params`` for ``seconds`` of simulated time.

    ``latency`` is observation -> chunk at the driver [s], or a function of the observation's
    index (a load spike); ``period`` is the time between observations, which are taken one
    inference at a time.
    """
    delay = latency if callable(latency) else (lambda _index: latency)
    now = [0.0]
    backend = SimBackend(
        params.joint_names, params.initial_pose(), np.array(params.position_lower),
        np.array(params.position_upper), time_constant=params.sim_time_constant,
        rate=1000.0, clock=lambda: now[0],
    )
    executor = ChunkExecutor(
        params.joint_names, params.limits(), params.safety_config(), params.executor_config()
    )
    loop = ControlLoop(backend, executor)
    loop.start()
    spec = policy.embodiment
    world = SimWorld(params.joint_names, spec.camera_names, width=320, height=240)
    pending: list[tuple[float, Chunk]] = []
    observed = []
    next_observation = 0.0
    accepted, rejected, first_rejection, rejected_at = 0, Counter(), "", []
    for tick in range(round(seconds * control_rate) + 1):
        now[0] = tick / control_rate
        loop.step(now[0])
        measured = loop.last_reading.positions
        while pending and pending[0][0] <= now[0] + 1e-9:
            _, chunk = pending.pop(0)
            result = executor.submit(chunk, now[0], measured)
            if result.accepted:
                accepted += 1
            else:
                rejected[result.reason.split(":", 1)[0]] += 1
                rejected_at.append(now[0])
                first_rejection = first_rejection or result.reason
        if now[0] + 1e-9 >= next_observation:
            observed.append(measured.copy())
            images = {name: world.render(name, measured) for name in spec.camera_names}
            out = policy.act(images, measured, instruction, seed=len(observed))
            chunk = Chunk(now[0], 0.0, out.step_dt, out.joint_names, out.positions)
            arrives = now[0] + delay(len(observed) - 1)
            pending.append((arrives, chunk))
            # One inference at a time, as the policy node: a slow one delays the next.
            next_observation = max(next_observation + period, arrives)
    return ClosedLoopRun(accepted, rejected, np.array(observed), first_rejection, rejected_at)
