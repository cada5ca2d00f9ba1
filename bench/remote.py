"""Remote inference overhead: local act() vs RemotePolicy over localhost, raw vs JPEG, HTTP vs ws.

Three 640x480 cameras (yam_bimanual). The server runs in a subprocess (its own interpreter, as
on a real GPU host) so client and server do not share a GIL. Prints per-configuration latency
(median, p90), sequential throughput, request size, the overhead over local inference and the
remote/local ratio, all measured in this one run.

    .venv/bin/python bench/remote.py                 # null policy: pure transport overhead
    .venv/bin/python bench/remote.py --policy tiny   # the tiny random MolmoAct2 model
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
EMBODIMENT = "yam_bimanual"
IMAGE_SHAPE = (480, 640, 3)


def make_policy(kind: str) -> Any:
    from molmoact2_common.embodiments import get_embodiment

    spec = get_embodiment(EMBODIMENT)
    if kind == "null":
        # bench/ is sys.path[0] of this script and of its server subprocess.
        from zero_cost_policy import ZeroCostPolicy

        return ZeroCostPolicy(spec.name, tuple(f"j{i}" for i in range(spec.action_dim)))
    import torch

    torch.set_num_threads(1)
    from molmoact2_policy.model.loader import load_policy

    return load_policy(
        "tiny",
        spec.name,
        device="cpu",
        dtype="float32",
        cuda_graph=False,
        mode="flow",
        seed=0,
        joint_names=None,
    )


def camera_images(spec: Any) -> dict[str, np.ndarray]:
    """Camera-like frames: smooth shading, a few objects and sensor noise (pure noise would
    make JPEG look far worse than on real scenes)."""
    import cv2

    rng = np.random.default_rng(0)
    h, w, _ = IMAGE_SHAPE
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    images = {}
    for i, name in enumerate(spec.camera_names):
        frame = np.stack([90 + xx / 8 + 10 * i, 110 + yy / 6, 100 + (xx + yy) / 12], axis=-1)
        for _ in range(6):
            x, y = rng.integers(0, w - 120), rng.integers(0, h - 100)
            color = rng.integers(0, 256, 3).tolist()
            cv2.rectangle(frame, (int(x), int(y)), (int(x) + 110, int(y) + 90), color, -1)
            cv2.circle(frame, (int(x) + 55, int(y) + 45), 30, color[::-1], 3)
        frame += rng.normal(0, 2.0, frame.shape)
        images[name] = np.clip(frame, 0, 255).astype(np.uint8)
    return images


def serve(port: int, kind: str) -> None:
    import uvicorn

    from molmoact2_policy.remote.server import create_app, uvicorn_config

    app = create_app(make_policy(kind), max_queue=4)
    # As `molmoact2 serve` runs it: the guarded h11 protocol, so its cost is in the figures.
    config = uvicorn_config(
        app, host="127.0.0.1", port=port, log_level="warning", ws_max_size=64 << 20
    )
    uvicorn.Server(config).run()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, timeout: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).json()["warmup"]["state"] == "ready":
                return
        except (httpx.HTTPError, KeyError, ValueError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server at {url} did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", choices=("null", "tiny"), default="null")
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--jpeg-quality", type=int, default=90)
    parser.add_argument("--port", type=int, default=0, help="internal: serve on this port")
    args = parser.parse_args()
    if args.port:
        serve(args.port, args.policy)
        return

    from molmoact2_common.embodiments import get_embodiment
    from molmoact2_policy.model.preprocess import IMAGE_SIZE, resize_image
    from molmoact2_policy.remote.client import RemotePolicy
    from molmoact2_policy.remote.protocol import build_act_request, encode_json, encode_msgpack

    spec = get_embodiment(EMBODIMENT)
    images, state = camera_images(spec), np.zeros(spec.state_dim)
    policy = make_policy(args.policy)
    instruction = "fold the towel"

    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [sys.executable, __file__, "--port", str(port), "--policy", args.policy],
        cwd=REPO_ROOT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    names = ["local"]
    calls = [lambda: policy.act(images, state, instruction, seed=0)]
    sizes = {}
    clients = []
    try:
        wait_for(url)
        variants = [(t, e, 0) for t in ("http", "ws") for e in ("raw", "jpeg")]
        # Opt-in: cameras resized to the model's 378x378 input on the robot side with the
        # processor's kernel (the default, as released, sends camera resolution).
        variants += [("http", "jpeg", IMAGE_SIZE), ("ws", "jpeg", IMAGE_SIZE)]
        for transport, encoding, image_size in variants:
            remote = RemotePolicy(
                url,
                spec,
                [f"j{i}" for i in range(spec.action_dim)],
                timeout=30.0,
                image_encoding=encoding,
                jpeg_quality=args.jpeg_quality,
                transport=transport,
                image_size=image_size,
            )
            clients.append(remote)
            names.append(f"{transport:4} {encoding}" + (f"@{image_size}" if image_size else ""))
            calls.append(lambda remote=remote: remote.act(images, state, instruction, seed=0))
            sent = (
                {n: resize_image(im, image_size, exact=True) for n, im in images.items()}
                if image_size
                else images
            )
            request = build_act_request(
                spec,
                sent,
                state,
                instruction,
                image_encoding=encoding,
                jpeg_quality=args.jpeg_quality,
                binary=transport == "ws",
            )
            encode = encode_json if transport == "http" else encode_msgpack
            sizes[names[-1]] = len(encode(request))
        # Interleaved rounds: load from other processes drifts over a run, and must hit local
        # and remote alike for the ratios to mean anything.
        for call in calls:
            for _ in range(3):
                call()
        seconds: dict[str, list[float]] = {name: [] for name in names}
        results: dict[str, list[Any]] = {name: [] for name in names}
        for _ in range(args.iterations):
            for name, call in zip(names, calls, strict=True):
                start = time.perf_counter()
                results[name].append(call())
                seconds[name].append(time.perf_counter() - start)
    finally:
        for remote in clients:
            remote.close()
        server.terminate()
        server.wait(timeout=10)

    def median_ms(values: list[float]) -> float:
        return float(np.median(values)) * 1e3

    local_ms = median_ms(seconds["local"])
    print(
        f"policy={args.policy}  embodiment={EMBODIMENT}  cameras={len(spec.camera_names)}x"
        f"{IMAGE_SHAPE[1]}x{IMAGE_SHAPE[0]}  jpeg_quality={args.jpeg_quality}  "
        f"iterations={args.iterations} (interleaved)  cpus={os.cpu_count()}"
    )
    print(
        f"{'backend':10} {'median ms':>9} {'p90 ms':>8} {'Hz':>7} {'ratio':>6} "
        f"{'overhead ms':>11} {'request KB':>10} {'enc ms':>7} {'dec ms':>7} {'net ms':>7}"
    )
    for name in names:
        values = np.asarray(seconds[name])
        med = median_ms(seconds[name])
        ratio = f"{med / local_ms:.2f}" if local_ms > 0.05 else "n/a"
        if name == "local":
            print(
                f"{name:10} {med:9.2f} {np.percentile(values, 90) * 1e3:8.2f} "
                f"{1 / values.mean():7.1f} {'1.00':>6}"
            )
            continue
        # Overhead per request: everything in the round trip except the server's inference.
        overhead = median_ms(
            [r.timings["total"] - r.timings["server_infer"] for r in results[name]]
        )

        def stage(key: str, name: str = name) -> float:
            return median_ms([r.timings.get(key, 0.0) for r in results[name]])

        print(
            f"{name:10} {med:9.2f} {np.percentile(values, 90) * 1e3:8.2f} "
            f"{1 / values.mean():7.1f} {ratio:>6} {overhead:11.2f} {sizes[name] / 1024:10.0f} "
            f"{stage('client_encode'):7.2f} {stage('server_decode'):7.2f} {stage('network'):7.2f}"
        )
    per_camera = IMAGE_SHAPE[0] * IMAGE_SHAPE[1] * 3
    print(
        f"raw bandwidth per camera at 30 Hz: {per_camera * 30 * 8 / 1e6:.0f} Mbit/s "
        f"(+33% as base64 JSON); JPEG q{args.jpeg_quality} here: "
        f"{sizes['ws   jpeg'] / len(spec.camera_names) * 30 * 8 / 1e6:.1f} Mbit/s per camera"
    )


if __name__ == "__main__":
    main()
