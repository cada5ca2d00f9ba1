"""Which decoder notices a damaged JPEG, and what noticing costs per 640x480 frame (not CI).

Damaged frames are made from real encoder output (cv2.imencode, the encoder that ROS
image_transport's compressed publisher calls) of a synthetic 640x480 scene: cut, cut and closed
with an EOI marker, or with bytes dropped, a bit flipped or bytes zeroed inside the
entropy-coded scan. For each decoder the table says how many it refused and how far the
accepted ones are from the intact frame (mean absolute pixel error). Timing: the same intact
frames on one thread, the decoders interleaved frame by frame (their order rotating each
round), the median per frame of each round, then the median over rounds. GIL: how far a
pure-Python thread counts while the main thread decodes for a second, against a main thread
that only sleeps (the decode pool runs cameras in parallel only if the decoder releases it).

    .venv/bin/python bench/jpeg_integrity.py [--frames 20] [--rounds 5] [--cases 400]
"""

from __future__ import annotations

import argparse
import io
import logging
import statistics
import sys
import threading
import time
from collections.abc import Callable

import cv2
import numpy as np
import simplejpeg
from PIL import Image

LOG = logging.getLogger("jpeg_integrity")


def scene(seed: int, height: int = 480, width: int = 640) -> np.ndarray:
    """A BGR frame with gradients, filled discs and sensor-like noise (compresses like a
    camera frame: about 80 KB at quality 90, not like pure noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack(
        [x * 255 // width, y * 255 // height, (x + y) * 127 // (width + height) + 64], -1
    ).astype(np.uint8)
    for _ in range(30):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        cv2.circle(img, centre, int(rng.integers(5, 80)), colour, -1)
    return cv2.add(img, rng.integers(0, 20, img.shape, dtype=np.uint8))


def cv2_decode(data: bytes) -> np.ndarray | None:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)


def simplejpeg_strict(data: bytes) -> np.ndarray | None:
    try:
        return simplejpeg.decode_jpeg(data, "rgb", strict=True)
    except ValueError:
        return None


def pil_decode(data: bytes) -> np.ndarray | None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))
    except OSError:
        return None


DECODERS: dict[str, Callable[[bytes], np.ndarray | None]] = {
    "cv2.imdecode": cv2_decode,
    "simplejpeg strict": simplejpeg_strict,
    "PIL": pil_decode,
}


def damaged(jpg: bytes, rng: np.random.Generator, kind: str) -> bytes:
    """One damaged copy of ``jpg``, damage placed inside the entropy-coded scan."""
    scan = jpg.find(b"\xff\xda") + 20
    at = int(rng.integers(scan, len(jpg) - 2))
    data = bytearray(jpg)
    if kind == "cut":
        return bytes(data[:at])
    if kind == "cut + EOI":
        return bytes(data[:at]) + b"\xff\xd9"
    if kind == "cut, zero-padded to size":
        return bytes(data[:at]) + bytes(len(jpg) - at)
    if kind == "100 bytes dropped":
        return bytes(data[:at] + data[at + 100 :])
    if kind == "1 bit flipped":
        data[at] ^= 1 << int(rng.integers(0, 8))
    elif kind == "16 bytes zeroed":
        data[at : at + 16] = bytes(16)
    return bytes(data)


def detection(frames: list[bytes], cases: int) -> list[str]:
    rng = np.random.default_rng(0)
    kinds = [
        "cut",
        "cut, zero-padded to size",
        "cut + EOI",
        "100 bytes dropped",
        "1 bit flipped",
        "16 bytes zeroed",
    ]
    lines = [
        "| damage | cases | "
        + " | ".join(f"{n}: refused / accepted err p50 max" for n in DECODERS)
        + " |",
        "| --- | --- |" + " --- |" * len(DECODERS),
    ]
    for kind in kinds:
        refused = dict.fromkeys(DECODERS, 0)
        errors: dict[str, list[float]] = {name: [] for name in DECODERS}
        for i in range(cases):
            jpg = frames[i % len(frames)]
            intact = cv2_decode(jpg).astype(np.int16)
            data = damaged(jpg, rng, kind)
            for name, decode in DECODERS.items():
                out = decode(data)
                if out is None or out.shape != intact.shape:
                    refused[name] += 1
                else:
                    errors[name].append(float(np.abs(out - intact).mean()))
        cells = []
        for name in DECODERS:
            errs = errors[name]
            accepted = f"{statistics.median(errs):.2f} {max(errs):.1f}" if errs else "-"
            cells.append(f"{refused[name]} / {accepted}")
        lines.append(f"| {kind} | {cases} | " + " | ".join(cells) + " |")
    return lines


def timing(frames: list[bytes], rounds: int) -> list[str]:
    names = list(DECODERS)
    per_round: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        times: dict[str, list[float]] = {name: [] for name in names}
        for jpg in frames:
            for name in order:
                start = time.perf_counter()
                DECODERS[name](jpg)
                times[name].append(time.perf_counter() - start)
        for name in names:
            per_round[name].append(statistics.median(times[name]) * 1e3)
    lines = [
        "| decoder | ms per 640x480 frame (median over rounds) | fastest round |",
        "| --- | --- | --- |",
    ]
    for name in names:
        lines.append(
            f"| {name} | {statistics.median(per_round[name]):.3f} | {min(per_round[name]):.3f} |"
        )
    return lines


def gil_share(frames: list[bytes], seconds: float = 1.0) -> list[str]:
    def idle(_data: bytes) -> None:
        time.sleep(0.001)

    lines = [
        "| main thread | decodes | Python thread's count (share of the sleeping run) |",
        "| --- | --- | --- |",
    ]
    baseline = 0
    sys.setswitchinterval(0.0005)
    for name, decode in {"sleeps 1 ms": idle, **DECODERS}.items():
        stop = threading.Event()
        count = [0]

        def spin(count: list[int] = count, stop: threading.Event = stop) -> None:
            while not stop.is_set():
                count[0] += 1

        thread = threading.Thread(target=spin)
        thread.start()
        start, done = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            decode(frames[done % len(frames)])
            done += 1
        stop.set()
        thread.join()
        baseline = baseline or count[0]
        lines.append(f"| {name} | {done} | {count[0]} ({count[0] / baseline:.0%}) |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cases", type=int, default=400, help="damaged frames per kind")
    parser.add_argument("--quality", type=int, default=90)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cv2.setNumThreads(1)  # the decode pool gives each frame one thread
    frames = [
        cv2.imencode(".jpg", scene(i), [cv2.IMWRITE_JPEG_QUALITY, args.quality])[1].tobytes()
        for i in range(args.frames)
    ]
    LOG.info(
        "cv2 %s, simplejpeg %s, Pillow %s; %d frames, %d..%d bytes, quality %d",
        cv2.__version__,
        simplejpeg.__version__,
        Image.__version__,
        len(frames),
        min(map(len, frames)),
        max(map(len, frames)),
        args.quality,
    )
    for line in detection(frames, args.cases):
        LOG.info("%s", line)
    for line in timing(frames, args.rounds):
        LOG.info("%s", line)
    for line in gil_share(frames):
        LOG.info("%s", line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
