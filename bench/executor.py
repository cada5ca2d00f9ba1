"""Chunk execution benchmark: our executor vs a synchronous chunk broker, then real-time rate.

Part 1 (simulated time, deterministic): the same sim arm (YAM bimanual, 14 joints, from
config/yam.yaml) follows the same reference trajectory through an oracle "policy" that returns
30-action chunks at 30 Hz after a fixed inference latency, with a small per-chunk offset that
stands in for model variation. Compared:
  * ours: ChunkExecutor at 250 Hz; inference runs back to back while the robot moves; each
    chunk is latency-skipped and spliced (policy ``blend``; ``replace`` shown for reference);
  * sync: a synchronous broker as in openpi's runtime: when a chunk runs out the robot waits
    for the next inference, then plays the chunk from action 0, linearly interpolated at 250 Hz
    from the held command (which favours the baseline over sending raw 30 Hz steps). Its
    targets pass through the same per-tick safety guard as ours (``CommandGuard``: position,
    step, velocity and acceleration limits of config/yam.yaml), so boundary jumps compare what
    each would actually command, not one clamped and one raw.
Metrics: idle ticks (no live plan after the first chunk), largest commanded velocity jump
within 3 ticks of a chunk boundary, and tracking error of the measured joints vs the reference.

Part 2 (wall clock): the real driver node (``hw_drivers.driver_node``, sim backend, YAM
params) in its own process, following chunks published at the inference rate; its 250 Hz
control loop reports, on /diagnostics, the achieved rate and how late each tick started
against the loop's own schedule (p50/p99/max over its last 10 s) and how many deadlines it
skipped. Nothing catches up: a late tick is late, a skipped one is missed.

``--load`` keeps the driver's rclpy executor busy meanwhile, from another process:
  * ``params``: back-to-back ``set_parameters`` requests to the driver, each one parameter
    with ``--param-entries`` (1M) doubles (refused, after rclpy has converted it);
  * ``camera``: three raw 640x480 rgb8 streams at 30 Hz on the YAM camera topics, which the
    driver subscribes to (``preflight:=on``, as on hardware, so it checks their rates).
``--driver-python`` runs the driver node with another checkout's interpreter (its own code),
e.g. /work/main/.venv/bin/python, to compare the same load on both. ``--switch-interval``
sets the driver's ``sys.setswitchinterval`` (``default``: leave Python's 5 ms).

    .venv/bin/python bench/executor.py [--duration 12] [--latency 0.08] [--load params]
    .venv/bin/python bench/executor.py --driver-only --load camera --driver-python PY
"""

from __future__ import annotations

import argparse
import array
import os
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import yaml

from hw_drivers.backends.sim import SimBackend
from hw_drivers.chunk import Chunk
from hw_drivers.driver_params import DriverParams
from hw_drivers.executor import ChunkExecutor, ExecutorConfig
from hw_drivers.safety import CommandGuard

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
    executor.start(sim.read_state().positions)
    times, commands, measured, boundaries = [], [], [], []
    pending: tuple[float, Chunk] | None = None
    next_obs = 0.0
    idle = 0
    started = False
    work = 0.0
    for i in range(int(duration * RATE)):
        now = i * TICK
        clock[0] = now
        begin = time.perf_counter()
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
        sim.write_command(command.positions)
        work += time.perf_counter() - begin
        if started and command.state in ("idle", "holding"):
            idle += 1
        times.append(now)
        commands.append(command.positions)
        measured.append(reading.positions)
    out = _metrics(times, commands, measured, reference, boundaries, idle)
    out["rejected"] = executor.stats.rejected_total
    out["clamped_ticks"] = executor.stats.clamped_ticks
    out["work_us"] = work / max(len(times), 1) * 1e6
    return out


def run_sync(params, latency, duration) -> dict:
    clock = [0.0]
    sim = SimBackend.from_params(params)
    sim._clock = lambda: clock[0]
    sim.connect()
    sim.enable()
    reference = Reference(params.initial_pose())
    policy = OraclePolicy(reference, params.joint_names)
    limits, safety = params.limits(), params.safety_config()
    times, commands, measured, boundaries = [], [], [], []
    last = sim.read_state().positions.copy()
    guard = CommandGuard(limits, safety)
    guard.start(last, now=0.0)
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
                guard.hold(now)
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
        # The same per-tick guard our executor applies to every command it sends.
        command = guard.apply(target, np.zeros_like(target), now).positions
        sim.write_command(command)
        last = command.copy()
        times.append(now)
        commands.append(last.copy())
        measured.append(reading.positions)
    return _metrics(times, commands, measured, reference, boundaries, idle)


LOADS = ("none", "params", "camera")
CAMERA_SHAPE = (480, 640, 3)
CAMERA_RATE = 30.0


def load_worker(kind: str, namespace: str, driver: str, param_entries: int) -> None:
    """Keep the driver's executor busy (``--load``) until terminated; prints what it sent."""
    import rclpy
    from rclpy.qos import qos_profile_sensor_data

    rclpy.init()
    node = rclpy.create_node("executor_bench_load", namespace=namespace)
    sent = 0
    if kind == "params":
        from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
        from rcl_interfaces.srv import SetParameters

        client = node.create_client(SetParameters, f"{driver}/set_parameters")
        client.wait_for_service(timeout_sec=30.0)
        value = ParameterValue(
            type=ParameterType.PARAMETER_DOUBLE_ARRAY,
            double_array_value=array.array("d", bytes(8 * param_entries)),
        )
        request = SetParameters.Request(parameters=[Parameter(name="position_lower", value=value)])
        while True:
            future = client.call_async(request)
            rclpy.spin_until_future_complete(node, future, timeout_sec=30.0)
            sent += 1
            print(f"load: {sent} requests of {param_entries} entries answered", flush=True)
    elif kind == "camera":
        from sensor_msgs.msg import Image

        data = yam_params()
        pubs = [
            node.create_publisher(Image, topic, qos_profile_sensor_data)
            for topic in data.camera_topics
        ]
        msg = Image(height=CAMERA_SHAPE[0], width=CAMERA_SHAPE[1], encoding="rgb8")
        msg.step = CAMERA_SHAPE[1] * 3
        msg.data = bytes(int(np.prod(CAMERA_SHAPE)))
        next_frame = time.monotonic()
        while True:
            msg.header.stamp = node.get_clock().now().to_msg()
            for pub in pubs:
                pub.publish(msg)
            sent += 1
            if sent % 300 == 0:
                print(f"load: {sent} frames per camera", flush=True)
            next_frame += 1.0 / CAMERA_RATE
            time.sleep(max(0.0, next_frame - time.monotonic()))
    raise ValueError(f"unknown load {kind!r}")


def driver_node_timing(
    params,
    latency: float,
    duration: float,
    load: str = "none",
    driver_python: str | None = None,
    switch_interval: str | None = None,
    param_entries: int = 1_000_000,
) -> dict:
    """The driver node's own 250 Hz loop, following chunks, measured by the node itself."""
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import JointState

    from hw_drivers.conversions import chunk_to_msg
    from molmoact2_msgs.msg import ActionChunk

    sys.path.insert(0, str(ROOT))  # tests.rostest_util: the node-process helpers
    from tests.rostest_util import start_python, stop_process

    os.environ.setdefault("ROS_DOMAIN_ID", str(70 + os.getpid() % 30))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    # As both launch paths do: raw 640x480 frames need Fast DDS's larger shared-memory segment
    # (over UDP fragments most of them were lost between processes).
    os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(ROOT / "config" / "fastdds.xml"))
    namespace = f"/bench_{uuid.uuid4().hex[:8]}"
    if switch_interval is None:
        entry = ["-m", "hw_drivers.driver_node"]
    else:
        # The driver's own main(), with its switch interval replaced (None: Python's default).
        value = None if switch_interval == "default" else float(switch_interval)
        entry = [
            "-c",
            "import sys; from hw_drivers import driver_node as d; "
            f"d.SWITCH_INTERVAL = {value!r}; sys.argv[0] = 'driver_node'; d.main(sys.argv[1:])",
        ]
    extra = ["-p", "preflight:='on'"] if load == "camera" else []  # quoted: YAML's on is true
    driver_cmd = [
            *entry,
            "--ros-args",
            "--params-file",
            str(ROOT / "config" / "yam.yaml"),
            "-r",
            "__node:=yam_driver",
            "-r",
            f"__ns:={namespace}",
            *extra,
        ]
    loader = None
    if load != "none":
        loader = start_python(
            [str(Path(__file__).resolve()), "--load-worker", load, "--namespace", namespace,
             "--param-entries", str(param_entries)]
        )
    if driver_python is None:
        proc = start_python(driver_cmd)
    else:
        import subprocess

        proc = subprocess.Popen(
            [driver_python, *driver_cmd],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    rclpy.init()
    node = rclpy.create_node("executor_bench", namespace=namespace)
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    chunk_pub = node.create_publisher(ActionChunk, params.chunk_topic, reliable)
    measured: list[np.ndarray] = []
    node.create_subscription(
        JointState,
        "joint_states",
        lambda m: measured.append(np.array(m.position)),
        qos_profile_sensor_data,
    )
    reports: list[dict[str, str]] = []

    def on_diagnostics(msg) -> None:
        for status in msg.status:
            if status.name == f"{namespace}/yam_driver: driver":
                reports.append({kv.key: kv.value for kv in status.values})

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, reliable)
    try:
        deadline = time.monotonic() + 60.0
        while (not measured or chunk_pub.get_subscription_count() == 0) and (
            time.monotonic() < deadline
        ):
            rclpy.spin_once(node, timeout_sec=0.1)
            if proc.poll() is not None:
                raise RuntimeError("driver node exited:\n" + stop_process(proc))
        if not measured:
            raise RuntimeError("driver node published no joint_states:\n" + stop_process(proc))
        reference = Reference(measured[-1])
        t0 = node.get_clock().now().nanoseconds * 1e-9
        end = time.monotonic() + duration
        next_chunk = time.monotonic()
        while time.monotonic() < end:
            if time.monotonic() >= next_chunk:
                next_chunk += latency
                # A chunk for an observation taken ``latency`` ago, as a policy would send it.
                stamp = node.get_clock().now().nanoseconds * 1e-9 - latency
                times = (stamp - t0) + STEP * (1 + np.arange(HORIZON))
                chunk = Chunk(
                    stamp, STEP, STEP, tuple(params.joint_names), reference(np.maximum(times, 0))
                )
                chunk_pub.publish(chunk_to_msg(chunk))
            rclpy.spin_once(node, timeout_sec=max(0.0, min(next_chunk - time.monotonic(), 0.05)))
        count = len(reports)
        while len(reports) == count and time.monotonic() < end + 3.0:
            rclpy.spin_once(node, timeout_sec=0.1)  # one report that covers the whole run
    finally:
        node.destroy_node()
        rclpy.shutdown()
        stop_process(proc)
        if loader is not None:
            lines = [line for line in stop_process(loader).splitlines() if line.startswith("load:")]
            print(f"  {lines[-1] if lines else 'load: nothing sent'}")
    if not reports:
        raise RuntimeError("no diagnostics from the driver node")
    return reports[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=12.0, help="driver node run [s]")
    parser.add_argument("--sim-duration", type=float, default=20.0, help="simulated run [s]")
    parser.add_argument("--latency", type=float, default=0.08, help="inference latency [s]")
    parser.add_argument("--load", choices=LOADS, default="none", help="driver executor load")
    parser.add_argument("--param-entries", type=int, default=1_000_000)
    parser.add_argument("--driver-python", help="interpreter (checkout) running the driver")
    parser.add_argument(
        "--switch-interval", help="driver's sys.setswitchinterval [s] or 'default'"
    )
    parser.add_argument("--driver-only", action="store_true", help="skip the simulated part")
    parser.add_argument("--load-worker", choices=LOADS, help=argparse.SUPPRESS)
    parser.add_argument("--namespace", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load_worker:
        load_worker(args.load_worker, args.namespace, "yam_driver", args.param_entries)
        return
    params = yam_params()
    if args.driver_only:
        report_driver(params, args)
        return
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
    print(
        f"ours: rejected chunks {ours['rejected']}, clamped ticks {ours['clamped_ticks']}, "
        f"executor+sim work {ours['work_us']:.0f} us per tick (CPU time, no waiting)"
    )
    report_driver(params, args)


def report_driver(params, args) -> None:
    report = driver_node_timing(
        params,
        args.latency,
        args.duration,
        args.load,
        args.driver_python,
        args.switch_interval,
        args.param_entries,
    )
    print(
        f"driver node control loop {args.duration:g} s at {params.control_rate:g} Hz "
        f"(hw_drivers.driver_node, sim backend, following chunks every "
        f"{args.latency * 1e3:g} ms; load {args.load}; driver "
        f"{args.driver_python or 'this checkout'}, switch interval "
        f"{args.switch_interval or 'as its main() sets'}; its last {report['tick_window']} ticks): "
        f"achieved {report['tick_rate']} Hz "
        f"(ratio {float(report['tick_rate']) / params.control_rate:.4f}, target >= 0.99), "
        f"tick lateness p50 {report['tick_late_p50_ms']} ms, p99 {report['tick_late_p99_ms']} ms, "
        f"max {report['tick_late_max_ms']} ms, missed ticks {report['missed_ticks']}, "
        f"chunks accepted {report['accepted_chunks']} rejected {report['rejected_chunks']}"
        + (f", tick errors {report['tick_errors']}" if "tick_errors" in report else "")
    )


if __name__ == "__main__":
    main()
