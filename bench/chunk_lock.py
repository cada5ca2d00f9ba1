"""How long an ActionChunk message holds the driver's lock (which the 250 Hz control tick takes).

The driver handles a message in two halves: ``ControlLoop.prepare_msg`` (conversion, the checks
and the work that need no state) outside its lock, ``submit_prepared`` (state, time and measured
pose, then the swap-in) under it. This times both halves for messages of the YAM bimanual
config (14 joints): a normal 30-step chunk, the longest ones accepted (10 s at 30 Hz and at the
shortest step_dt the driver takes) and a hostile 100k-step one (refused by the timing check).
"whole" is ``submit_msg``, both halves, i.e. what used to run under the lock. Median of
``--repeat`` runs on a started sim loop; wall time, so other load on the machine shows.

    .venv/bin/python bench/chunk_lock.py [--repeat 200]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import numpy as np
import yaml

from hw_drivers.backends.registry import make_backend
from hw_drivers.chunk import Chunk
from hw_drivers.control_loop import ControlLoop
from hw_drivers.conversions import chunk_to_msg
from hw_drivers.driver_params import DriverParams
from hw_drivers.executor import ChunkExecutor
from molmoact2_common.ros_params import coerce_param

LOG = logging.getLogger("chunk_lock")
CONFIG = "config/yam.yaml"


def yam_params() -> DriverParams:
    data = yaml.safe_load(open(CONFIG))
    values = {}
    for section in (data["/**"], data["/**/yam_driver"]):
        for key, value in section["ros__parameters"].items():
            if key in DriverParams.__dataclass_fields__:
                values[key] = coerce_param(DriverParams, key, value)
    return DriverParams(**{**values, "backend": "sim"})


def median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = yam_params()
    executor = ChunkExecutor(p.joint_names, p.limits(), p.safety_config(), p.executor_config())
    loop = ControlLoop(make_backend(p), executor)
    loop.start()
    pose = loop.last_reading.positions
    now = 100.0
    LOG.info(
        "| message | whole (old, under the lock) | prepare (outside) | submit (under) | verdict |"
    )
    LOG.info("| --- | --- | --- | --- | --- |")
    safety = executor.safety
    fine = safety.min_step_dt
    longest = int(safety.max_chunk_duration / fine + 1e-9)
    cases = (
        ("30 steps", 30, 1 / 30),
        ("300 steps (10 s at 30 Hz)", 300, 1 / 30),
        (f"{longest} steps (10 s at the shortest step_dt)", longest, fine),
        ("100k steps", 100_000, 1 / 30),
    )
    for name, horizon, step_dt in cases:
        positions = np.tile(pose, (horizon, 1)) + 1e-6 * np.arange(horizon)[:, None]
        msg = chunk_to_msg(Chunk(now, 0.0, step_dt, p.joint_names, positions))
        prepared = loop.prepare_msg(msg)
        whole = median_ms(lambda msg=msg: loop.submit_msg(msg, now), args.repeat)
        prep = median_ms(lambda msg=msg: loop.prepare_msg(msg), args.repeat)
        sub = median_ms(lambda pr=prepared: loop.submit_prepared(pr, now), args.repeat)
        verdict = loop.submit_prepared(prepared, now)
        said = "accepted" if verdict.accepted else verdict.reason.split(":")[0]
        LOG.info(f"| {name} | {whole:.3f} ms | {prep:.3f} ms | {sub:.3f} ms | {said} |")


if __name__ == "__main__":
    main()
