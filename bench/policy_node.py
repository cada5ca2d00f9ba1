"""Policy node latency: camera publish -> chunk received, against the model and without one.

    .venv/bin/python bench/policy_node.py --policy zero             # the node's own latency
    .venv/bin/python bench/policy_node.py --preset tiny --frames 8   # node vs bare Policy.act
    .venv/bin/python bench/policy_node.py --preset tiny --frames 8 --device cuda  # on a GPU
    .venv/bin/python bench/policy_node.py --policy launch-bound --frames 60  # GPU-like, on the CPU

``--policy model`` (default) writes a random checkpoint of the preset (``mid_cpu`` by default;
``tiny`` is built in memory), starts the policy node (console entry point) on it in a
subprocess and, one observation at a time (three 640x480 rgb8 cameras and joint states),
publishes it and waits for the chunk stamped with it; before each observation the same
observation runs through a bare ``MolmoAct2Policy.act`` in this process, so load drifts on a
shared machine hit both alike. Prints medians, the ratio (target <= 1.10), how many chunks the
node computed per observation, the node's per-stage times from ``~/status``, and then the model
time inside the node while the cameras stream at 30 Hz (what the executor thread and the
inference thread cost each other). Both sides use the same number of torch threads.

``--policy zero`` runs the node with a zero-cost policy (``bench/zero_cost_policy.py``: a fixed
chunk returned at once) and prints p50/p95 of camera publish -> chunk received for raw rgb8 and
JPEG ``CompressedImage`` cameras, one observation at a time and as a 30 Hz stream (targets: p50
<= 5 ms, p95 <= 10 ms). Messages are built before the clock starts (the camera driver's cost).
``--policy launch-bound`` puts in place of the model a policy that only dispatches many tiny
torch ops (``bench/launch_bound_policy.py``), as a GPU model's time is spent issuing kernels,
and compares it in the node and bare as ``--policy model`` does: torch gives up the GIL around
every op, so what the node's other threads take from a GPU model's inference thread shows here
on a machine without a GPU.
``--device cuda`` runs the model on the GPU in both places (``--cuda-graph``: the flow loop as a
CUDA graph, as the released server runs it; ``--dtype``), where the node's own milliseconds
weigh most against the model's. Timings are machine-dependent; compare ratios, not seconds,
and repeat on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

HEIGHT, WIDTH = 480, 640
# Above this difference between the bench's two bare medians (main thread, worker thread) the
# run says its ratio is within the machine's noise (half the 10% target band).
NOISE_WARNING = 0.05

# Fast DDS's default shared-memory segment (512 KB) is smaller than one 640x480 rgb8 frame
# (900 KB), so raw frames fall back to fragmented UDP, where best-effort delivery of three
# back-to-back frames lost most of them on the development machine. A larger segment keeps
# them in shared memory; robots streaming raw 640x480 locally want the same setting.
FASTDDS_SHM_PROFILE = """<?xml version="1.0" encoding="UTF-8" ?>
<profiles xmlns="http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles">
  <transport_descriptors>
    <transport_descriptor>
      <transport_id>shm_large</transport_id>
      <type>SHM</type>
      <segment_size>33554432</segment_size>
    </transport_descriptor>
  </transport_descriptors>
  <participant profile_name="large_shm" is_default_profile="true">
    <rtps>
      <userTransports><transport_id>shm_large</transport_id></userTransports>
      <useBuiltinTransports>false</useBuiltinTransports>
    </rtps>
  </participant>
</profiles>
"""


def write_checkpoint(preset: str, directory: Path, seed: int) -> str:
    if preset == "tiny":
        return "tiny"
    from molmoact2_common.embodiments import EMBODIMENTS
    from molmoact2_policy.model.checkpoint import save_checkpoint, tiny_norm_stats
    from molmoact2_policy.model.config import MolmoAct2Config
    from molmoact2_policy.model.model import MolmoAct2Model
    from molmoact2_policy.model.tokenizer import MolmoAct2Tokenizer

    config = MolmoAct2Config.mid_cpu()
    model = MolmoAct2Model.random(config, seed)
    tokenizer = MolmoAct2Tokenizer.tiny(config.token_layout())
    save_checkpoint(directory, model, tiny_norm_stats(seed, list(EMBODIMENTS)), tokenizer)
    return str(directory)


def observations(
    count: int, cameras: tuple[str, ...], joints: int
) -> list[tuple[dict, np.ndarray]]:
    out = []
    for index in range(count):
        rng = np.random.default_rng(index)
        images = {c: rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8) for c in cameras}
        out.append((images, 0.3 + 0.1 * np.sin(index + np.arange(joints))))
    return out


def conversion_cost(repeats: int = 50) -> dict[str, float]:
    """Median seconds to turn one 640x480 message into an RGB array, per encoding."""
    from molmoact2_policy.image_conversion import (
        compressed_to_rgb,
        encode_compressed,
        image_to_rgb,
        rgb_to_image_fields,
    )

    rgb = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    costs = {}
    for encoding in ("rgb8", "bgr8", "bgra8", "mono8"):
        fields = rgb_to_image_fields(rgb, encoding)
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            image_to_rgb(**fields)
            samples.append(time.perf_counter() - start)
        costs[encoding] = statistics.median(samples)
    # A camera-like frame, as the JPEG runs send (a noise frame is several times larger and
    # slower to decode than any camera's).
    ((frames, _pose),) = scene_images(1, ("top",), [f"joint_{i}" for i in range(7)])
    jpeg = encode_compressed(frames["top"], "jpeg", 90)
    samples = []
    for _ in range(max(5, repeats // 5)):
        start = time.perf_counter()
        compressed_to_rgb("jpeg", jpeg)
        samples.append(time.perf_counter() - start)
    costs["jpeg (decode)"] = statistics.median(samples)
    return costs


def scene_images(count: int, cameras: tuple[str, ...], joint_names, seed: int = 0) -> list:
    """Camera-like frames for the JPEG runs: the sim scene plus sensor noise.

    Noise-only frames would be an unrealistically hard JPEG (several times a camera frame's
    size and decode time); flat renders an unrealistically easy one. Sigma 4 grey levels puts
    a 640x480 frame at a webcam-like size (printed with the results).
    """
    from molmoact2.sim_world import SimWorld

    world = SimWorld(joint_names, cameras, WIDTH, HEIGHT)
    rng = np.random.default_rng(seed)
    out = []
    for index in range(count):
        pose = 0.3 + 0.2 * np.sin(0.3 * index + np.arange(len(joint_names)))
        frames = {}
        for camera in cameras:
            clean = world.render(camera, pose).astype(np.float32)
            noisy = clean + rng.normal(0.0, 4.0, clean.shape).astype(np.float32)
            frames[camera] = np.clip(noisy, 0, 255).astype(np.uint8)
        out.append((frames, pose))
    return out


class NodeSession:
    """The policy node in a subprocess and a bench-side ROS node that feeds and times it."""

    def __init__(self, params: dict, env: dict, transport: str) -> None:
        import rclpy
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import CompressedImage, Image, JointState

        from molmoact2_msgs.msg import ActionChunk, PolicyStatus
        from tests.ros.policy_node_harness import start_node, stop_node, write_params

        self.params = dict(params)
        self.transport = transport
        if transport == "jpeg":
            self.params["camera_topics"] = [f"{t}/compressed" for t in params["camera_topics"]]
            self.params["camera_transports"] = ["compressed"] * len(params["camera_names"])
        self._tmp = tempfile.TemporaryDirectory()
        params_file = write_params(Path(self._tmp.name) / "params.yaml", self.params)
        self.proc = start_node(params_file, env=env)
        try:
            rclpy.init()
            self.node = rclpy.create_node("policy_node_bench")
        except BaseException:
            stop_node(self.proc)
            raise
        msg_type = CompressedImage if transport == "jpeg" else Image
        self.cams = {
            name: self.node.create_publisher(msg_type, topic, qos_profile_sensor_data)
            for name, topic in zip(
                self.params["camera_names"], self.params["camera_topics"], strict=True
            )
        }
        self.joints = self.node.create_publisher(
            JointState, "joint_states", qos_profile_sensor_data
        )
        # stamp ns -> perf_counter when the chunk for it arrived here.
        self.received: dict[int, float] = {}
        self.statuses: list = []
        self.sent_count = 0
        self.node.create_subscription(
            ActionChunk, "molmoact2_policy/action_chunk", self._on_chunk, 10
        )
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(
            PolicyStatus, "molmoact2_policy/status", self.statuses.append, reliable
        )

    def _on_chunk(self, msg) -> None:
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        self.received.setdefault(stamp, time.perf_counter())

    def messages(self, frames: list) -> list[tuple[dict, object]]:
        """Camera and joint messages per frame, built before any clock starts (the camera
        driver pays that, not the policy node)."""
        from sensor_msgs.msg import JointState

        from molmoact2_policy.image_conversion import make_compressed_msg, make_image_msg

        build = make_compressed_msg if self.transport == "jpeg" else make_image_msg
        out = []
        for images, state in frames:
            joint = JointState(name=list(self.params["joint_names"]), position=state.tolist())
            out.append(({c: build(images[c]) for c in self.cams}, joint))
        return out

    def publish(self, message_set) -> tuple[int, float]:
        """Stamp one frame set with now, publish joints then cameras; (stamp, publish start)."""
        from builtin_interfaces.msg import Time

        images, joint = message_set
        now = self.node.get_clock().now().nanoseconds
        stamp = Time(sec=now // 10**9, nanosec=now % 10**9)
        joint.header.stamp = stamp
        for msg in images.values():
            msg.header.stamp = stamp
        self.joints.publish(joint)
        self.sent_count += 1
        start = time.perf_counter()
        for camera, publisher in self.cams.items():
            publisher.publish(images[camera])
        return now, start

    def spin(self, seconds: float) -> None:
        import rclpy

        # A long timeout: the wait set wakes on the chunk at once, and a bench that polls
        # every millisecond would steal CPU from the node it measures.
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            rclpy.spin_once(self.node, timeout_sec=min(left, 0.05))

    def wait_for(self, stamp: int, timeout: float) -> float | None:
        import rclpy

        deadline = time.monotonic() + timeout
        while stamp not in self.received and time.monotonic() < deadline:
            rclpy.spin_once(self.node, timeout_sec=0.05)
        return self.received.get(stamp)

    def start_up(self, message_set, timeout: float = 180.0) -> None:
        """Keep sending the first frame set until the node answers (model load, discovery)."""
        from tests.ros.policy_node_harness import stop_node

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stamp, _ = self.publish(message_set)
            if self.wait_for(stamp, 2.0) is not None:
                return
        raise RuntimeError("policy node never answered:\n" + stop_node(self.proc))

    def one_at_a_time(
        self, message_sets, warmup: int, lost: list[int], before_each=None
    ) -> list[float]:
        """Publish a frame set, wait for its chunk, repeat: the latency of an idle node.

        ``before_each(index)`` runs before each frame set is sent, off the clock (the bare
        model run of the same observation, interleaved so load drifts hit both alike).
        """
        samples = []
        for index, message_set in enumerate(message_sets[:warmup] + message_sets):
            # Let the node settle (the last chunk's publish, its status timer) before the bare
            # run as well: on a small machine a node still busy would slow the bare run and
            # flatter the ratio.
            self.spin(0.05)
            if before_each is not None:
                before_each(index)
            for attempt in range(5):
                if attempt:
                    self.spin(0.05)
                stamp, start = self.publish(message_set)
                received = self.wait_for(stamp, 15.0)
                if received is not None:
                    break
                # A best-effort camera message was lost (large frames, busy host): the node
                # rightly skips an incomplete observation; send it again.
                lost[0] += 1
            else:
                raise RuntimeError(f"no chunk for observation {index} after 5 tries")
            if index >= warmup:
                samples.append(received - start)
        return samples

    def stream(self, message_sets, rate: float, seconds: float) -> tuple[list[float], int, int]:
        """Publish at ``rate`` Hz like a camera driver; (latencies, frames sent, chunks)."""
        import rclpy

        sent: dict[int, float] = {}
        period = 1.0 / rate
        next_time = time.monotonic()
        end = next_time + seconds
        index = 0
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_time:
                stamp, start = self.publish(message_sets[index % len(message_sets)])
                sent[stamp] = start
                index += 1
                next_time += period
                if next_time < now:  # the bench fell behind: no burst of frames
                    next_time = now + period
            rclpy.spin_once(
                self.node, timeout_sec=max(0.0, min(next_time - time.monotonic(), 0.05))
            )
        self.spin(0.5)  # the last chunks
        latencies = [self.received[s] - t for s, t in sent.items() if s in self.received]
        return latencies, len(sent), sum(1 for s in sent if s in self.received)

    def close(self) -> str:
        import rclpy

        from tests.ros.policy_node_harness import stop_node

        self.node.destroy_node()
        rclpy.shutdown()
        out = stop_node(self.proc)
        self._tmp.cleanup()
        return out


def percentile(samples: list[float], q: float) -> float:
    return float(np.percentile(samples, q)) if samples else float("nan")


def stage_medians(statuses: list) -> dict[str, float]:
    """Median over the status messages of the node's per-stage times of its last chunk [s]."""
    names = ("convert", "assemble", "queue_wait", "model", "publish")
    out = {}
    for name in names:
        values = [getattr(s, f"{name}_time") for s in statuses]
        values = [v for v in values if np.isfinite(v)]
        out[name] = statistics.median(values) if values else float("nan")
    return out


def run_zero_cost(args, params: dict, env: dict) -> None:
    """Zero-cost policy: the node's own latency, raw and JPEG, single and streamed."""
    from molmoact2_policy.policy_factory import TEST_POLICY_ENV

    env = {**env, TEST_POLICY_ENV: "bench.zero_cost_policy:make_zero_cost_policy"}
    cameras, joint_names = tuple(params["camera_names"]), params["joint_names"]
    print(
        f"zero-cost policy (a fixed chunk returned at once), 3 cameras {WIDTH}x{HEIGHT}, "
        f"camera publish -> chunk received; targets p50 <= 5 ms, p95 <= 10 ms"
    )
    rows = []
    for transport in args.transports:
        if transport == "jpeg":
            frames = scene_images(4, cameras, joint_names)
        else:
            frames = observations(4, cameras, len(joint_names))
        session = NodeSession(params, env, transport)
        try:
            message_sets = session.messages(frames)
            if transport == "jpeg":
                size = statistics.mean(len(m.data) for m in message_sets[0][0].values())
                print(f"  jpeg: quality 90, {size / 1024:.0f} KiB per frame")
            session.start_up(message_sets[0])
            lost = [0]
            single = session.one_at_a_time(
                (message_sets * args.frames)[: args.frames], args.warmup, lost
            )
            rows.append((transport, "one at a time", single, len(single), len(single), lost[0]))
            streamed, sent, answered = session.stream(message_sets, args.rate, args.stream_seconds)
            rows.append((transport, f"{args.rate:g} Hz stream", streamed, sent, answered, 0))
            stages = stage_medians(session.statuses)
        finally:
            session.close()
        print(
            f"  {transport}: node stages (median of ~/status): "
            + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in stages.items())
        )
    print(f"{'':6s}{'':16s}{'p50 ms':>8s}{'p95 ms':>8s}{'max ms':>8s}{'chunks':>12s}  target")
    for transport, mode, samples, sent, answered, lost in rows:
        p50, p95 = percentile(samples, 50) * 1e3, percentile(samples, 95) * 1e3
        ok = p50 <= 5.0 and p95 <= 10.0
        extra = f" (re-sent {lost})" if lost else ""
        print(
            f"{transport:6s}{mode:16s}{p50:8.2f}{p95:8.2f}{percentile(samples, 100) * 1e3:8.2f}"
            f"{answered:>6d}/{sent:<5d}  {'met' if ok else 'MISSED'}{extra}"
        )


def run_model(args, params: dict, env: dict, policy_factory) -> None:
    """The tiny/mid model: node end-to-end vs bare Policy.act, same thread count."""
    cameras, joint_names = tuple(params["camera_names"]), params["joint_names"]
    obs = observations(args.frames, cameras, len(joint_names))
    policy = policy_factory()
    sequence = obs[: args.warmup] + obs
    bare: list[float] = []
    # The same act on a worker thread of this process, as the node's inference thread runs it:
    # what a thread costs (its own malloc arena, torch's thread-local state) apart from ROS.
    bare_threaded: list[float] = []
    worker = ThreadPoolExecutor(max_workers=1)  # one long-lived thread, as in the node

    def timed_act(index: int) -> float:
        images, state = sequence[index]
        start = time.perf_counter()
        policy.act(images, state, params["instruction"], seed=params["seed"])
        return time.perf_counter() - start

    def bare_act_of(index: int) -> None:
        main_time = timed_act(index)
        thread_time = worker.submit(timed_act, index).result()
        if index >= args.warmup:
            bare.append(main_time)
            bare_threaded.append(thread_time)

    session = NodeSession(params, env, "raw")
    lost = [0]
    try:
        message_sets = session.messages(obs)
        session.start_up(message_sets[0])
        session.spin(0.5)  # a status with the start-up's chunk count
        counted_from = session.statuses[-1].chunk_count if session.statuses else 0
        sent_from = session.sent_count
        e2e = session.one_at_a_time(message_sets, args.warmup, lost, before_each=bare_act_of)
        session.spin(0.5)  # a status after the last chunk
        status = session.statuses[-1] if session.statuses else None
        sent_single = session.sent_count - sent_from
        stages = stage_medians(session.statuses)
        streamed = None
        if args.stream_seconds > 0:
            # The model while the executor thread keeps taking and converting camera frames:
            # what the two threads cost each other (the GIL) shows in the model stage.
            first = len(session.statuses)
            latencies, sent, answered = session.stream(message_sets, args.rate, args.stream_seconds)
            streamed = (latencies, sent, answered, stage_medians(session.statuses[first + 1 :]))
    finally:
        worker.shutdown()
        session.close()
    bare_median, e2e_median = statistics.median(bare), statistics.median(e2e)
    graph = ", flow loop as a CUDA graph" if args.cuda_graph else ""
    if args.policy == "launch-bound":
        what = f"launch-bound policy ({args.launches} torch ops per act) on cpu"
    else:
        what = f"preset {args.preset} on {args.device} ({args.dtype}{graph})"
    print(
        f"{what}, {args.frames} observations, 3 cameras {WIDTH}x{HEIGHT} rgb8, "
        f"{args.threads} torch thread(s), malloc {args.allocator}"
    )
    print(
        f"bare Policy.act           median {bare_median * 1e3:8.1f} ms "
        "(in this process, interleaved with the node's observations)"
    )
    threaded_median = statistics.median(bare_threaded)
    print(
        f"bare, on a worker thread  median {threaded_median * 1e3:8.1f} ms "
        f"(x{threaded_median / bare_median:.3f} of the main thread's)"
    )
    print(f"camera publish -> chunk   median {e2e_median * 1e3:8.1f} ms")
    print(f"overhead ratio (target <= 1.10): {e2e_median / bare_median:.3f}")
    # The two bare medians time the same act in the same process: what separates them is the
    # machine (a shared VM's vCPU, clocks), and a ratio cannot be read closer than that.
    machine_spread = abs(threaded_median / bare_median - 1.0)
    if machine_spread > NOISE_WARNING:
        print(
            f"noise: the two bare runs of the same act differ by {machine_spread:.1%}, more "
            f"than {NOISE_WARNING:.0%}; this run cannot resolve the 10% target: repeat it, or "
            "give more --frames"
        )
    # Each node observation over the bare run just before it: drift between the two (a GPU's
    # clocks, a neighbour on the host) cancels within a pair.
    paired = statistics.median(n / b for n, b in zip(e2e, bare, strict=True))
    print(f"paired ratio (median over observations of node / bare just before): {paired:.3f}")
    print(f"node overhead per observation: {(e2e_median - bare_median) * 1e3:.1f} ms")
    print(f"observations re-sent after a lost camera message: {lost[0]}")
    if status is not None:
        print(
            f"chunks the node computed: {status.chunk_count - counted_from} for "
            f"{sent_single} observations sent (one each when nothing is "
            "inferred twice)"
        )
    print(
        "node stages (median of ~/status): "
        + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in stages.items())
    )
    if streamed is not None:
        latencies, sent, answered, stream_stages = streamed
        print(
            f"cameras streaming at {args.rate:g} Hz for {args.stream_seconds:g} s: model inside "
            f"the node median {stream_stages['model'] * 1e3:.1f} ms (idle node "
            f"{stages['model'] * 1e3:.1f} ms, bare {bare_median * 1e3:.1f} ms); "
            f"{answered} of {sent} frames got a chunk (newest frame only while busy), "
            f"publish -> chunk p50 {percentile(latencies, 50) * 1e3:.1f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--policy",
        choices=("model", "zero", "launch-bound"),
        default="model",
        help="model: the preset's model vs bare Policy.act; zero: a zero-cost policy (the "
        "node's own latency, raw and JPEG, one at a time and streamed); launch-bound: a "
        "policy of many tiny torch ops (a GPU model's launch-bound time, on the CPU) vs the "
        "same act bare",
    )
    parser.add_argument(
        "--launches",
        type=int,
        default=None,
        help="launch-bound policy: torch ops per act (default: the policy module's "
        "DEFAULT_LAUNCHES, about 20 ms of dispatch on the development machine)",
    )
    parser.add_argument("--preset", choices=("mid", "tiny"), default="mid")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="model: torch device (cpu, cuda)")
    parser.add_argument("--dtype", default="float32", help="model: float32, float16, bfloat16")
    parser.add_argument(
        "--cuda-graph", action="store_true", help="model: the flow loop as a CUDA graph"
    )
    parser.add_argument(
        "--allocator",
        choices=("keep", "default"),
        default="keep",
        help="malloc in the node and here: freed memory kept (as the node runs) or glibc's "
        "defaults (MOLMOACT2_MALLOC_KEEP=0)",
    )
    parser.add_argument(
        "--transports",
        nargs="+",
        choices=("raw", "jpeg"),
        default=["raw", "jpeg"],
        help="zero-cost policy: camera transports to measure",
    )
    parser.add_argument("--rate", type=float, default=30.0, help="camera stream rate [Hz]")
    parser.add_argument(
        "--stream-seconds",
        type=float,
        default=5.0,
        help="length of the camera stream [s] (model: after the one-at-a-time run; 0: none)",
    )
    parser.add_argument(
        "--default-dds",
        action="store_true",
        help="keep Fast DDS's default transports (no large shared-memory segment)",
    )
    parser.add_argument("--no-conversion-cost", action="store_true", help="skip that table")
    parser.add_argument(
        "--executor",
        choices=("events", "single"),
        default="events",
        help="the policy node's executor parameter (events is the node's default)",
    )
    args = parser.parse_args()
    if not args.default_dds:
        profile = Path(tempfile.mkdtemp()) / "fastdds_large_shm.xml"
        profile.write_text(FASTDDS_SHM_PROFILE)
        os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile)

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    # The node keeps freed memory in its process (molmoact2_common.allocator); the bare runs here
    # get the same allocator, and --allocator default gives both glibc's defaults.
    from molmoact2_common.allocator import OPT_OUT_ENV, keep_freed_memory

    os.environ[OPT_OUT_ENV] = "1" if args.allocator == "keep" else "0"
    keep_freed_memory()
    os.environ.setdefault("ROS_DOMAIN_ID", str(70 + os.getpid() % 30))
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    from tests.ros.policy_node_harness import yam_params

    seed = 0
    env = {"OMP_NUM_THREADS": str(args.threads)}
    # Every mode: the node infers on each new camera set at once, and no observation is too old.
    node_settings = dict(
        seed=seed, max_inference_rate=0.0, max_observation_age=5.0, executor=args.executor
    )
    with tempfile.TemporaryDirectory() as ckpt_dir:
        if args.policy == "zero":
            params = yam_params(**node_settings)
            run_zero_cost(args, params, env)
        elif args.policy == "launch-bound":
            import torch

            from bench.launch_bound_policy import (
                DEFAULT_LAUNCHES,
                LAUNCHES_ENV,
                LaunchBoundPolicy,
            )
            from molmoact2_policy.policy_factory import TEST_POLICY_ENV

            torch.set_num_threads(args.threads)
            if args.launches is None:
                args.launches = DEFAULT_LAUNCHES
            params = yam_params(**node_settings)
            env = {
                **env,
                TEST_POLICY_ENV: "bench.launch_bound_policy:make_launch_bound_policy",
                LAUNCHES_ENV: str(args.launches),
            }

            def make_policy():
                return LaunchBoundPolicy(
                    params["embodiment"], tuple(params["joint_names"]), args.launches
                )

            run_model(args, params, env, make_policy)
        else:
            import torch

            from molmoact2_policy.model.loader import load_policy

            torch.set_num_threads(args.threads)
            checkpoint = write_checkpoint(args.preset, Path(ckpt_dir), seed)
            params = yam_params(
                checkpoint=checkpoint,
                **node_settings,
                device=args.device,
                dtype=args.dtype,
                cuda_graph=args.cuda_graph,
            )

            def make_policy():
                return load_policy(
                    checkpoint,
                    params["embodiment"],
                    device=args.device,
                    dtype=args.dtype,
                    cuda_graph=args.cuda_graph,
                    seed=seed,
                    joint_names=tuple(params["joint_names"]),
                )

            run_model(args, params, env, make_policy)
    if not args.no_conversion_cost:
        for name, seconds in conversion_cost().items():
            print(f"image conversion {name:14s} {seconds * 1e3:7.3f} ms per {WIDTH}x{HEIGHT} frame")


if __name__ == "__main__":
    main()
