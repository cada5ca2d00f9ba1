"""Outside-in probes of the policy node's and the driver node's topic inputs (not part of CI).

Starts the real policy node (fake policy, YAM config, the right wrist camera on the compressed
transport) and the real SO-101 sim driver as separate processes, publishes hostile inputs to
them from this process case by case, and prints one table row per case: what was expected,
what the node said (~/status, the driver's ~/chunk_execution verdict, a log line), whether it
kept running, whether anything moved (a chunk came from the bad input / the driver's command
changed) and whether it recovered once good input came back.

    ROS_DOMAIN_ID=44 .venv/bin/python bench/probe_inputs.py [--only policy|driver] [--out f.md]

The fake policy's chunk is a pure function of the images and the state
(``tests.fake_policy.expected_positions``), so an accepted frame's chunk is compared with the
one computed from the pixels and joint order the probe meant: a conversion that reads row
padding, swaps channels or mixes up joint order shows up as a wrong chunk, not only as "ok".
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import struct
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from molmoact2_policy.image_conversion import SUPPORTED_ENCODINGS  # noqa: E402
from tests.fake_policy import expected_positions  # noqa: E402
from tests.ros.policy_node_harness import write_params, yam_params  # noqa: E402
from tests.rostest_util import start_python, stop_process  # noqa: E402

LOG = logging.getLogger("probe_inputs")
NS = 10**9
SHAPE = (48, 64, 3)
FRAME_DT = 1 / 30
CASE_FILTER = ""  # --cases: run only the cases whose name matches it (regex)
FAKE_ENV = {"MOLMOACT2_TEST_POLICY_FACTORY": "tests.fake_policy:make_fake_policy"}


def call_reset(client, spin) -> bool:
    """Call a node's ``~/reset`` (std_srvs/Trigger) through ``client``, spinning with ``spin``
    until answered (10 s at most); whether it succeeded."""
    from std_srvs.srv import Trigger

    if not client.wait_for_service(timeout_sec=5):
        return False
    future = client.call_async(Trigger.Request())
    end = time.monotonic() + 10
    while not future.done() and time.monotonic() < end:
        spin(0.02)
    return future.done() and future.result().success


@dataclass
class Row:
    case: str
    expected: str
    said: str = ""
    alive: bool = True
    moved: str = ""
    recovered: str = ""
    verdict: str = ""  # PASS / FAIL against the rule

    def line(self) -> str:
        cells = [self.case, self.expected, self.said, "yes" if self.alive else "NO", self.moved,
                 self.recovered, self.verdict]
        return "| " + " | ".join(c.replace("|", "/").replace("\n", " ")[:160] for c in cells) + " |"


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def stamp(ns: int):
    from builtin_interfaces.msg import Time

    return Time(sec=ns // NS, nanosec=ns % NS)


def tail_log(path: Path, offset: int) -> tuple[str, int]:
    text = path.read_text(errors="replace")
    return text[offset:], len(text)


def first_problem_line(text: str) -> str:
    for line in text.splitlines():
        if "[ERROR]" in line or "[WARN]" in line or "Traceback" in line:
            return line.split("]: ", 1)[-1].strip()
    return ""


# ---- policy node ------------------------------------------------------------------------


@dataclass
class Frame:
    images: dict[str, np.ndarray]  # what the node should see per camera (RGB)
    state: np.ndarray  # model order
    bad: bool


@dataclass
class PolicyProbe:
    params: dict[str, Any]
    proc: Any
    log_path: Path
    node: Any = None
    chunks: list = field(default_factory=list)
    statuses: list = field(default_factory=list)
    frames: dict[int, Frame] = field(default_factory=dict)  # chunk stamp -> frame
    index: int = 0
    log_offset: int = 0

    def __post_init__(self) -> None:
        import rclpy
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import CompressedImage, Image, JointState
        from std_srvs.srv import Trigger

        from molmoact2_msgs.msg import ActionChunk, PolicyStatus

        self.node = rclpy.create_node("nodeprobe_policy_probe")
        self.cameras = tuple(self.params["camera_names"])
        self.joints = tuple(self.params["joint_names"])
        self.transports = tuple(self.params["camera_transports"])
        self.pubs = {
            name: self.node.create_publisher(
                CompressedImage if transport == "compressed" else Image, topic,
                qos_profile_sensor_data,
            )
            for name, topic, transport in zip(
                self.cameras, self.params["camera_topics"], self.transports, strict=True
            )
        }
        self.joint_pub = self.node.create_publisher(
            JointState, self.params["joint_state_topics"][0], qos_profile_sensor_data
        )
        self.node.create_subscription(
            ActionChunk, "molmoact2_policy/action_chunk", self.chunks.append, 100
        )
        self.node.create_subscription(
            PolicyStatus, "molmoact2_policy/status", self.statuses.append, 100
        )
        self.reset_client = self.node.create_client(Trigger, "molmoact2_policy/reset")
        from tests.fake_policy import FakePolicy

        self.spec = FakePolicy(self.params["embodiment"]).embodiment

    def now_ns(self) -> int:
        return self.node.get_clock().now().nanoseconds

    def spin(self, seconds: float) -> None:
        import rclpy

        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rclpy.spin_once(self.node, timeout_sec=0.005)

    # A frame: good messages built, then the case's mutation applied to them.
    def publish_frame(self, mutate: Callable | None = None, bad: bool = False) -> None:
        from sensor_msgs.msg import CompressedImage, JointState

        from molmoact2_policy.image_conversion import encode_compressed, make_image_msg

        i = self.index
        self.index += 1
        now = self.now_ns()
        rng = np.random.default_rng(i)
        images = {c: rng.integers(0, 256, SHAPE, dtype=np.uint8) for c in self.cameras}
        state = 0.3 + 0.2 * np.sin(0.1 * i + np.arange(len(self.joints)))
        joint = JointState()
        joint.header.stamp = stamp(now)
        joint.name = list(self.joints)
        joint.position = state.tolist()
        msgs = {}
        for c, transport in zip(self.cameras, self.transports, strict=True):
            if transport == "compressed":
                msg = CompressedImage()
                msg.header.stamp = stamp(now)
                msg.format = "rgb8; png compressed bgr8"
                msg.data = encode_compressed(images[c], "png")
            else:
                msg = make_image_msg(images[c], stamp=stamp(now))
            msgs[c] = msg
        ctx = {"images": images, "state": state, "now": now, "index": i, "probe": self}
        if mutate is not None:
            mutate(ctx, msgs, joint)
        self.joint_pub.publish(joint)
        for c in self.cameras:
            if msgs[c] is not None:
                self.pubs[c].publish(msgs[c])
        stamps = [m.header.stamp.sec * NS + m.header.stamp.nanosec
                  for m in msgs.values() if m is not None]
        if stamps:
            self.frames[min(stamps)] = Frame(ctx["images"], ctx["state"], bad)

    def run(self, seconds: float, mutate=None, bad=False, rate=30.0, until=None) -> bool:
        import rclpy

        end = time.monotonic() + seconds
        next_pub = time.monotonic()
        while time.monotonic() < end:
            if time.monotonic() >= next_pub:
                next_pub = max(next_pub + 1 / rate, time.monotonic() - 1 / rate)
                self.publish_frame(mutate, bad)
            rclpy.spin_once(self.node, timeout_sec=0.003)
            if until is not None and until():
                return True
        return until() if until is not None else True

    def chunk_check(self, chunk) -> str:
        """'' when ``chunk`` is what the fake computes from the frame it is stamped with, or
        from a mix the node may legitimately build: each camera and the joint state from that
        frame or one of the next two (cameras within max_camera_skew; a compressed camera
        whose decode lags pairs an older frame with the others' newer ones)."""
        import itertools

        key = chunk.header.stamp.sec * NS + chunk.header.stamp.nanosec
        if key not in self.frames:
            return "unknown stamp"
        later = sorted(s for s in self.frames if key <= s <= key + 3 * NS // 30)[:3]
        got = np.asarray(chunk.positions).reshape(chunk.horizon, len(chunk.joint_names))
        best = math.inf
        for pick in itertools.product(later, repeat=len(self.cameras) + 1):
            if min(pick[1:]) != key:
                continue  # the chunk's stamp is the oldest camera's
            images = {c: self.frames[s].images[c] for c, s in zip(self.cameras, pick[1:],
                                                                   strict=True)}
            want = expected_positions(self.spec, images, self.frames[pick[0]].state,
                                      chunk.instruction, 0)
            if got.shape != want.shape:
                return f"shape {got.shape} != {want.shape}"
            err = float(np.abs(got - want).max())
            if err <= 1e-9:
                return ""
            best = min(best, err)
        return f"chunk differs from every frame mix by >= {best:.4g}"

    def latest_status(self):
        return self.statuses[-1] if self.statuses else None

    def reset(self) -> bool:
        return call_reset(self.reset_client, self.spin)

    def recover(self, timeout: float = 8.0) -> tuple[bool, float]:
        start_ns, t0 = self.now_ns(), time.monotonic()
        ok = self.run(timeout, until=lambda: any(
            c.header.stamp.sec * NS + c.header.stamp.nanosec >= start_ns
            and not self.chunk_check(c) for c in self.chunks[-5:]))
        return ok, time.monotonic() - t0

    def case(self, name: str, expected: str, mutate, *, accept: bool = False,
             seconds: float = 1.5, rate: float = 30.0, grace_s: float = 0.0,
             names: str = "") -> Row | None:
        """``grace_s``: chunks from bad frames this soon after the case starts are excused
        (an input that stopped is used until it is older than max_observation_age).
        ``names``: text the status or log must contain for a refused case to pass."""
        if CASE_FILTER and not re.search(CASE_FILTER, name):
            return None
        row = Row(name, expected)
        ok, _ = self.recover()
        if not ok:
            row.said = "precondition: no good chunk before the case"
        _, self.log_offset = tail_log(self.log_path, 0)
        first_index = self.index
        n_chunks, n_status = len(self.chunks), len(self.statuses)
        self.run(seconds, mutate, bad=not accept, rate=rate)
        self.spin(0.4)
        bad_stamps = {s for s, f in self.frames.items() if f.bad and s >= 0}
        frames_in_case = {s for s, f in self.frames.items()}
        new_chunks = self.chunks[n_chunks:]
        case_chunks = [c for c in new_chunks
                       if c.header.stamp.sec * NS + c.header.stamp.nanosec in frames_in_case]
        statuses = self.statuses[n_status:]
        errors = [s.last_error for s in statuses if s.last_error]
        log, _ = tail_log(self.log_path, self.log_offset)
        line = first_problem_line(log)
        said = errors[-1] if errors else "(status: no error)"
        if line and line not in said:
            said += f" / log: {line}"
        row.said = said[:200]
        row.alive = self.proc.poll() is None
        del first_index
        if accept:
            checks = [self.chunk_check(c) for c in case_chunks]
            good = [c for c in checks if not c]
            wrong = [c for c in checks if c]
            row.moved = f"{len(good)} correct chunks" + (f", {len(wrong)} WRONG: {wrong[0]}"
                                                         if wrong else "")
            ok = bool(good) and not wrong
        else:
            # The first two frames race the previous good ones (topics arrive independently).
            early = set(sorted(bad_stamps)[:2])
            if bad_stamps and grace_s:
                early |= {s for s in bad_stamps if s < min(bad_stamps) + grace_s * NS}
            leaked = [c.sequence for c in case_chunks
                      if (s := c.header.stamp.sec * NS + c.header.stamp.nanosec) in bad_stamps
                      and s not in early]
            row.moved = f"LEAKED chunks {leaked[:5]}" if leaked else "no chunk"
            ok = not leaked and bool(errors or line)
            if names and not any(names in text for text in [*errors, line]):
                ok = False
                row.moved += f"; reason lacks {names!r}"
        for s in list(self.frames):
            self.frames[s].bad = False  # later cases judge only their own frames
        rec, took = self.recover()
        if rec:
            row.recovered = f"yes ({took:.1f} s)"
        else:
            reset = self.reset()
            rec, took = self.recover()
            row.recovered = f"after ~/reset ({took:.1f} s)" if rec else f"NO (reset {reset})"
        row.verdict = "PASS" if ok and row.alive and rec else "FAIL"
        return row


def encoding_layout(encoding: str) -> tuple[int, int]:
    """(channels, bytes per channel) per sensor_msgs/image_encodings.hpp (2 for unknown)."""
    if encoding in ("mono8",) or (encoding.startswith("bayer_") and encoding.endswith("8")):
        return 1, 1
    if encoding in ("mono16",) or encoding.startswith("bayer_"):
        return 1, 2
    if encoding in ("rgb8", "bgr8"):
        return 3, 1
    if encoding in ("rgba8", "bgra8"):
        return 4, 1
    if encoding in ("rgb16", "bgr16"):
        return 3, 2
    if encoding in ("rgba16", "bgra16"):
        return 4, 2
    m = re.fullmatch(r"(8|16|32|64)(U|S|F)C([0-9]*)", encoding)
    if m:
        return int(m[3] or 1), int(m[1]) // 8
    if encoding in ("uyvy", "yuyv", "yuv422", "yuv422_yuy2", "nv24"):
        return 2, 1
    if encoding in ("nv12", "nv21"):
        return 1, 1  # plus half a plane of chroma: height * 1.5
    return 3, 1


ALL_ENCODINGS = (
    "rgb8 rgba8 rgb16 rgba16 bgr8 bgra8 bgr16 bgra16 mono8 mono16 8UC1 8UC2 8UC3 8UC4 8SC1 "
    "16UC1 16UC3 16SC1 32SC1 32FC1 32FC3 64FC1 bayer_rggb8 bayer_bggr8 bayer_gbrg8 bayer_grbg8 "
    "bayer_rggb16 bayer_bggr16 bayer_gbrg16 bayer_grbg16 uyvy yuv422 yuyv yuv422_yuy2 nv12 nv21 "
    "nv24"
).split()
# What the node accepts comes from the conversion module (one list); the rest must be refused.
SUPPORTED = set(SUPPORTED_ENCODINGS)
# Encodings whose frames carry the picture exactly (8 or 16 bits per R, G, B sample).
EXACT = {"rgb8", "bgr8", "rgba8", "bgra8", "rgb16", "bgr16", "rgba16", "bgra16"}


def raw_image(encoding: str, rgb: np.ndarray, padding: int = 0, pad_value: int = 255):
    """(fields, what the node should see) for ``rgb`` as ``encoding`` (zeros when unsupported)."""
    from molmoact2_policy.image_conversion import image_to_rgb, rgb_to_image_fields

    if encoding in SUPPORTED:
        fields = rgb_to_image_fields(rgb, encoding, padding)
        if padding:
            data = bytearray(fields["data"])
            row = fields["step"]
            for r in range(fields["height"]):
                data[r * row + row - padding:(r + 1) * row] = bytes([pad_value]) * padding
            fields["data"] = bytes(data)
        if encoding in EXACT:
            seen = rgb
        elif encoding in ("mono8", "mono16"):
            grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
            seen = np.repeat(grey[:, :, None], 3, axis=2)
        else:
            # Bayer and YUV 4:2:2 lose detail; the unit tests pin this conversion to cv_bridge's,
            # the probe checks that the node feeds the model what it gives.
            seen = image_to_rgb(**rgb_to_image_fields(rgb, encoding))
        return fields, seen
    channels, depth = encoding_layout(encoding)
    height, width = rgb.shape[:2]
    step = width * channels * depth + padding
    rows = int(height * 1.5) if encoding in ("nv12", "nv21") else height
    return {"encoding": encoding, "height": height, "width": width, "step": step,
            "data": bytes(step * rows), "is_bigendian": 0}, None


def set_fields(msg, fields: dict) -> None:
    for key, value in fields.items():
        setattr(msg, key, value)


def compressed_depth_payload(depth: np.ndarray) -> bytes:
    """compressed_depth_image_transport's layout: a 12-byte ConfigHeader, then a 16-bit PNG."""
    ok, png = cv2.imencode(".png", depth)
    assert ok
    return struct.pack("<iff", 0, 0.0, 0.0) + png.tobytes()


def jpeg_bomb(side: int = 65000) -> bytes:
    _ok, jpg = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    data = bytearray(jpg.tobytes())
    i = data.find(b"\xff\xc0")
    data[i + 5:i + 9] = struct.pack(">HH", side, side)
    return bytes(data)


def png_bytes(array: np.ndarray) -> bytes:
    ok, png = cv2.imencode(".png", array)
    assert ok
    return png.tobytes()


def jpeg_bytes(array: np.ndarray) -> bytes:
    ok, jpg = cv2.imencode(".jpg", array, [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert ok
    return jpg.tobytes()


def policy_cases(probe: PolicyProbe) -> list[Row]:
    rows: list[Row] = []
    top, comp = probe.cameras[0], probe.cameras[2]

    def run(name, expected, mutate, **kw):
        row = probe.case(name, expected, mutate, **kw)
        if row is not None:
            LOG.info("%s", row.line())
            rows.append(row)

    # -- raw encodings on `top`
    for enc in [*ALL_ENCODINGS, "RGB8", "", "rgb8 ", "ŕǵб8\u202e"]:
        def mut(ctx, msgs, joint, enc=enc):
            fields, seen = raw_image(enc, ctx["images"][top])
            set_fields(msgs[top], fields)
            if seen is not None:
                ctx["images"][top] = seen
        supported = enc in SUPPORTED
        run(f"Image encoding {enc!r}", "accepted, exact pixels" if supported else
            "refused, names the encoding", mut, accept=supported)

    for enc in sorted(SUPPORTED):
        def mut(ctx, msgs, joint, enc=enc):
            fields, seen = raw_image(enc, ctx["images"][top], padding=7)
            set_fields(msgs[top], fields)
            ctx["images"][top] = seen
        run(f"{enc} step > width*channels (7 pad bytes of 255)", "accepted, exact pixels", mut,
            accept=True)

    def odd(ctx, msgs, joint):
        rgb = np.random.default_rng(ctx["index"]).integers(0, 256, (31, 63, 3), dtype=np.uint8)
        fields, seen = raw_image("bgr8", rgb, padding=1)
        set_fields(msgs[top], fields)
        ctx["images"][top] = seen
    run("bgr8 odd 63x31 with 1 pad byte", "accepted, exact pixels", odd, accept=True)

    def bigger(ctx, msgs, joint):
        rgb = np.random.default_rng(ctx["index"]).integers(0, 256, (96, 128, 3), dtype=np.uint8)
        fields, seen = raw_image("rgb8", rgb)
        set_fields(msgs[top], fields)
        ctx["images"][top] = seen
    run("frame size differs from the previous frames (96x128 after 48x64)",
        "accepted (model resizes) or refused with a reason", bigger, accept=True)

    def edit(fn):
        def mut(ctx, msgs, joint):
            fn(msgs[top])
        return mut

    run("step smaller than width*3", "refused", edit(lambda m: setattr(m, "step", m.step - 1)))
    run("data shorter than step*height", "refused",
        edit(lambda m: setattr(m, "data", bytes(m.data)[:-1])))
    run("data longer than step*height", "refused",
        edit(lambda m: setattr(m, "data", bytes(m.data) + b"\0")))
    run("height 0", "refused", edit(lambda m: setattr(m, "height", 0)))
    run("width 0", "refused", edit(lambda m: setattr(m, "width", 0)))
    run("4096x4096 declared, 9 KB data", "refused, no big allocation",
        edit(lambda m: (setattr(m, "height", 4096), setattr(m, "width", 4096),
                        setattr(m, "step", 4096 * 3))))
    run("65535x65535 declared, 9 KB data", "refused, no big allocation",
        edit(lambda m: (setattr(m, "height", 65535), setattr(m, "width", 65535),
                        setattr(m, "step", 65535 * 3))))
    run("step 2^32-1", "refused", edit(lambda m: setattr(m, "step", 2**32 - 1)))
    run("rgb8 is_bigendian=1 (irrelevant for 8 bit)", "accepted, exact pixels",
        edit(lambda m: setattr(m, "is_bigendian", 1)), accept=True)

    def mono16_be(ctx, msgs, joint):
        from molmoact2_policy.image_conversion import rgb_to_image_fields

        # Big-endian samples: read as little-endian, every pixel's two bytes would swap.
        set_fields(msgs[top], rgb_to_image_fields(ctx["images"][top], "mono16", 0, True))
        grey = cv2.cvtColor(ctx["images"][top], cv2.COLOR_RGB2GRAY)
        ctx["images"][top] = np.repeat(grey[:, :, None], 3, axis=2)
    run("mono16 is_bigendian=1", "accepted, exact pixels", mono16_be, accept=True)
    run("7x5 rgb8 (smaller than the model minimum)", "refused",
        edit(lambda m: set_fields(m, raw_image("rgb8", np.zeros((5, 7, 3), np.uint8))[0])))

    # -- compressed on `comp`
    def comp_mut(fmt: str, data_fn, seen_fn=None):
        def mut(ctx, msgs, joint):
            msgs[comp].format = fmt
            msgs[comp].data = data_fn(ctx["images"][comp])
            if seen_fn is not None:
                ctx["images"][comp] = seen_fn(ctx["images"][comp])
        return mut

    def bgr(rgb):
        return np.ascontiguousarray(rgb[:, :, ::-1])

    def decoded(fn):
        def seen(rgb):
            from molmoact2_policy.image_conversion import decode_compressed

            return decode_compressed(fn(rgb))
        return seen

    for fmt in ("jpeg", "rgb8; jpeg compressed bgr8", "bgr8; jpeg compressed bgr8"):
        run(f"CompressedImage format {fmt!r}", "accepted",
            comp_mut(fmt, lambda rgb: jpeg_bytes(bgr(rgb)),
                     decoded(lambda rgb: jpeg_bytes(bgr(rgb)))), accept=True)
    for fmt in ("png", "bgr8; png compressed bgr8", "rgba8; png compressed bgra8"):
        run(f"CompressedImage format {fmt!r}", "accepted, exact pixels",
            comp_mut(fmt, lambda rgb: png_bytes(bgr(rgb))), accept=True)
    run("'16UC1; compressedDepth png' (depth payload)", "refused: a depth stream",
        comp_mut("16UC1; compressedDepth png",
                 lambda rgb: compressed_depth_payload(rgb[:, :, 0].astype(np.uint16) * 100)))
    run("'32FC1; compressedDepth rvl'", "refused",
        comp_mut("32FC1; compressedDepth rvl", lambda rgb: b"\0" * 64))
    run("'rgb8; qoi compressed bgr8'", "refused",
        comp_mut("rgb8; qoi compressed bgr8", lambda rgb: b"qoif" + bytes(60)))
    run("compressed empty data", "refused", comp_mut("jpeg", lambda rgb: b""))
    damaged = "damaged JPEG data"
    run("truncated JPEG (first 60%)", "refused: damaged JPEG (premature end)",
        comp_mut("jpeg", lambda rgb: jpeg_bytes(bgr(rgb))[: int(len(jpeg_bytes(bgr(rgb))) * .6)]),
        names=damaged)
    run("corrupt bytes", "refused",
        comp_mut("jpeg", lambda rgb: np.random.default_rng(1).bytes(2000)))
    run("JPEG header + random body", "refused",
        comp_mut("jpeg", lambda rgb: jpeg_bytes(bgr(rgb))[:600] + bytes(3000)))
    run("PNG with alpha (bgra)", "accepted, alpha dropped, exact pixels",
        comp_mut("bgra8; png compressed bgra8",
                 lambda rgb: png_bytes(np.dstack([bgr(rgb), np.full(rgb.shape[:2], 9, np.uint8)]))),
        accept=True)
    run("16-bit PNG (rgb16; png compressed bgr16)", "accepted, top byte, exact pixels",
        comp_mut("rgb16; png compressed bgr16",
                 lambda rgb: png_bytes(bgr(rgb).astype(np.uint16) * 257)), accept=True)
    run("grayscale JPEG (mono8; jpeg compressed )", "accepted as grey RGB",
        comp_mut("mono8; jpeg compressed ", lambda rgb: jpeg_bytes(rgb[:, :, 0]),
                 decoded(lambda rgb: jpeg_bytes(rgb[:, :, 0]))), accept=True)
    run("JPEG bomb (600 B declaring 65000x65000)", "refused before decoding",
        comp_mut("jpeg", lambda rgb: jpeg_bomb()))
    run("600 B JPEG declaring 4000x4000 (under the side limit)", "refused (too short)",
        comp_mut("jpeg", lambda rgb: jpeg_bomb(4000)))
    big = np.random.default_rng(5).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    run("valid JPEG 160x120 (raw frames 64x48)", "accepted",
        comp_mut("jpeg", lambda rgb: jpeg_bytes(bgr(big)),
                 decoded(lambda rgb: jpeg_bytes(bgr(big)))),
        accept=True)
    def mid_zero(rgb):
        data = bytearray(jpeg_bytes(bgr(rgb)))
        data[len(data) // 2:len(data) // 2 + 40] = bytes(40)
        return bytes(data)
    # libjpeg notices these (0 of 500 probe frames got through strict decoding); JPEG has no
    # checksum, so damage after which the scan falls back in step cannot be refused.
    run("JPEG with 40 zeroed bytes mid-scan", "refused: damaged JPEG (libjpeg warning)",
        comp_mut("jpeg", mid_zero), names=damaged)

    def cut_closed(rgb):
        data = jpeg_bytes(bgr(rgb))
        return data[: len(data) * 6 // 10] + b"\xff\xd9"
    run("JPEG cut mid-scan, closed with EOI (first 60% + FFD9)",
        "refused: damaged JPEG (was decoded with its lower part grey)",
        comp_mut("jpeg", cut_closed), names=damaged)
    # (a few junk bytes can hide in libjpeg's read-ahead: 5 were missed in some frames)
    run("JPEG with 64 junk bytes before EOI", "refused: damaged JPEG (extraneous bytes)",
        comp_mut("jpeg", lambda rgb: (lambda d: d[:-2] + bytes(range(1, 65)) + d[-2:])(
            jpeg_bytes(bgr(rgb)))), names=damaged)
    run("JPEG + 64 zero bytes after EOI (V4L2 buffer padding)", "accepted, same pixels",
        comp_mut("jpeg", lambda rgb: jpeg_bytes(bgr(rgb)) + bytes(64),
                 decoded(lambda rgb: jpeg_bytes(bgr(rgb)))), accept=True)
    run("PNG with a corrupted IDAT CRC", "refused",
        comp_mut("png", lambda rgb: (lambda b: b[:-20] + bytes(8) + b[-12:])(png_bytes(bgr(rgb)))))

    # -- stamps
    def stamps(fn):
        def mut(ctx, msgs, joint):
            fn(ctx, msgs, joint)
        return mut

    def all_stamps(ns_fn):
        def f(ctx, msgs, joint):
            for m in (*msgs.values(), joint):
                m.header.stamp = stamp(ns_fn(ctx["now"]))
        return f

    run("all stamps zero", "refused (stale)", stamps(all_stamps(lambda now: 0)))
    run("all stamps +1 h", "refused (future)", stamps(all_stamps(lambda now: now + 3600 * NS)))
    run("all stamps 10 s old", "refused (stale)", stamps(all_stamps(lambda now: now - 10 * NS)))
    run("all stamps 0.2 s old (within max_age 0.5)", "accepted", stamps(all_stamps(
        lambda now: now - NS // 5)), accept=True)

    def top_only(ns_fn):
        def f(ctx, msgs, joint):
            msgs[top].header.stamp = stamp(ns_fn(ctx))
        return f

    base = {}

    def backwards(ctx):
        base.setdefault("t", ctx["now"])
        return base["t"] - (ctx["index"] % 1000) * int(FRAME_DT * NS)
    run("camera top stamp goes backwards frame by frame", "refused (skew/stale)",
        stamps(top_only(backwards)))
    run("camera top 1 s behind the others", "refused (stale/skew)",
        stamps(top_only(lambda ctx: ctx["now"] - NS)))

    def split(ctx, msgs, joint):
        for c, m in msgs.items():
            m.header.stamp = stamp(ctx["now"] + (4 if c == top else -4) * NS // 10)
    run("cameras 0.8 s apart, each within max_age", "refused (skew)", split)

    def jump_back(ctx, msgs, joint):
        for m in (*msgs.values(), joint):
            m.header.stamp = stamp(ctx["now"] - (ctx["index"] % 2) * 3 * NS // 10)
    run("all stamps jump 0.3 s back every other frame", "accepted (a clock that jumps back "
        "must not stop inference); the driver refuses the older chunk", jump_back, accept=True)

    # -- joint states
    def joints(fn):
        def mut(ctx, msgs, joint):
            fn(ctx, joint)
        return mut

    def missing(ctx, j):
        j.name, j.position = list(j.name[1:]), list(j.position[1:])
    stale_grace = probe.params["max_observation_age"] + 0.15
    run("JointState missing a joint", "refused once its last value is older than max_age "
        "(partial states from several publishers merge by name)", joints(missing),
        grace_s=stale_grace)

    def extra(ctx, j):
        j.name, j.position = [*j.name, "torso", "head"], [*j.position, 9.0, float("nan")]
    run("JointState extra joints (one NaN)", "accepted", joints(extra), accept=True)

    def dup(ctx, j):
        j.name, j.position = [*j.name, j.name[0]], [*j.position, j.position[0] + 1.0]
    run("JointState duplicate name, different value", "refused (ambiguous)", joints(dup))

    def reorder(ctx, j):
        order = np.random.default_rng(ctx["index"]).permutation(len(j.name))
        j.name = [j.name[k] for k in order]
        j.position = [j.position[k] for k in order]
    run("JointState names shuffled", "accepted, reordered by name", joints(reorder), accept=True)
    for val in (float("nan"), float("inf"), -float("inf")):
        def bad(ctx, j, val=val):
            p = list(j.position)
            p[3] = val
            j.position = p
        run(f"JointState position {val}", "refused", joints(bad))

    def short(ctx, j):
        j.position = list(j.position)[:-1]
    run("JointState position shorter than names", "refused", joints(short))

    def vel_wrong(ctx, j):
        j.velocity = [0.0] * (len(j.name) - 3)
    run("JointState velocity of wrong length", "refused (malformed per JointState.msg)",
        joints(vel_wrong))

    def eff_wrong(ctx, j):
        j.effort = [0.0] * (len(j.name) + 2)
    run("JointState effort of wrong length", "refused (malformed per JointState.msg)",
        joints(eff_wrong))

    def vel_empty(ctx, j):
        j.velocity, j.effort = [], []
    run("JointState velocity/effort empty", "accepted", joints(vel_empty), accept=True)

    def empty(ctx, j):
        j.name, j.position = [], []
    run("JointState empty message", "refused (stale after max_age)", joints(empty),
        grace_s=stale_grace)

    def gripper(ctx, j):
        p = list(j.position)
        p[list(j.name).index("left_gripper")] = 5.0
        j.position = p
        ctx["state"] = ctx["state"].copy()
        ctx["state"][6] = 5.0
    run("JointState gripper 5.0 (range 0..1)", "accepted or refused with a reason",
        joints(gripper), accept=True)

    def unicode_names(ctx, j):
        j.name = [n + "\u202e\u0301б" for n in j.name]
    run("JointState unicode garbage names", "refused (missing, then stale)",
        joints(unicode_names), grace_s=stale_grace)

    def nul_names(ctx, j):
        j.name = [n + "\u0000garbage" for n in j.name]
    run("JointState names with NUL + garbage", "rmw cuts a string at NUL: reads as valid",
        joints(nul_names), accept=True)

    rows.extend(policy_floods(probe))
    return rows


def policy_floods(probe: PolicyProbe) -> list[Row]:
    from sensor_msgs.msg import JointState

    from molmoact2_policy.image_conversion import make_compressed_msg, make_image_msg

    rows = []
    top, comp = probe.cameras[0], probe.cameras[2]
    pid = probe.proc.pid
    for bad in (False, True, "compressed", "bomb"):
        if CASE_FILTER and "flood" not in CASE_FILTER:
            break
        probe.recover()
        rss0 = rss_kb(pid)
        n_status = len(probe.statuses)
        start = time.monotonic()
        sent = 0
        rgb = np.random.default_rng(0).integers(0, 256, SHAPE, dtype=np.uint8)
        _, log_offset = tail_log(probe.log_path, 0)
        import rclpy

        next_frame = time.monotonic()
        while time.monotonic() - start < 5.0:
            camera = top
            if bad in ("compressed", "bomb"):
                camera = comp
                msg = make_compressed_msg(rgb, stamp=stamp(probe.now_ns()), fmt="png")
                if bad == "bomb":
                    msg.format, msg.data = "jpeg", jpeg_bomb(4000 + sent % 96)
            else:
                msg = make_image_msg(rgb, stamp=stamp(probe.now_ns()))
            if bad is True:
                msg.data = bytes(msg.data)[: -1 - (sent % 500)]  # a new size every frame
            probe.pubs[camera].publish(msg)
            sent += 1
            if time.monotonic() >= next_frame:
                next_frame += FRAME_DT
                probe.publish_frame()
            rclpy.spin_once(probe.node, timeout_sec=0)
            time.sleep(0.0008)
        elapsed = time.monotonic() - start
        statuses = len(probe.statuses) - n_status
        probe.spin(1.0)
        rss1 = rss_kb(pid)
        log, _ = tail_log(probe.log_path, log_offset)
        log_lines = sum(1 for line in log.splitlines() if "[ERROR]" in line)
        rec, took = probe.recover()
        row = Row(
            f"flood {dict([(False, 'good'), (True, 'truncated')]).get(bad, bad)} images on "
            f"{camera}: {sent / elapsed:.0f} Hz for 5 s",
            "status keeps publishing (5 Hz), RSS bounded, logs throttled",
            f"{statuses} statuses in {elapsed:.1f} s; RSS {rss0 / 1024:.0f} -> "
            f"{rss1 / 1024:.0f} MB; {log_lines} ERROR log lines",
            probe.proc.poll() is None, "", f"yes ({took:.1f} s)" if rec else "NO",
        )
        row.verdict = "PASS" if (statuses >= 15 and rss1 - rss0 < 200_000 and rec
                                 and log_lines < 50) else "FAIL"
        LOG.info("%s", row.line())
        rows.append(row)
    # joint states as fast as this process can publish
    if CASE_FILTER and "flood" not in CASE_FILTER:
        return rows
    probe.recover()
    msg = JointState()
    msg.name = list(probe.joints)
    msg.position = [0.1] * len(probe.joints)
    n_status = len(probe.statuses)
    rss0 = rss_kb(pid)
    start, sent = time.monotonic(), 0
    while time.monotonic() - start < 3.0:
        msg.header.stamp = stamp(probe.now_ns())
        probe.joint_pub.publish(msg)
        sent += 1
        if sent % 50 == 0:
            import rclpy

            rclpy.spin_once(probe.node, timeout_sec=0)
    elapsed = time.monotonic() - start
    probe.spin(1.0)
    rec, took = probe.recover()
    row = Row(f"flood joint states {sent / elapsed:.0f} Hz for 3 s", "responsive, bounded",
              f"{len(probe.statuses) - n_status} statuses; RSS {rss0 / 1024:.0f} -> "
              f"{rss_kb(pid) / 1024:.0f} MB", probe.proc.poll() is None, "",
              f"yes ({took:.1f} s)" if rec else "NO")
    row.verdict = "PASS" if rec and row.alive else "FAIL"
    LOG.info("%s", row.line())
    rows.append(row)
    return rows


# ---- driver node ------------------------------------------------------------------------


DRIVER_CONFIG = REPO_ROOT / "config" / "so101.yaml"


def driver_section() -> dict:
    data = yaml.safe_load(DRIVER_CONFIG.read_text())
    params = dict(data["/**"]["ros__parameters"])
    params.update(data["/**/so101_driver"]["ros__parameters"])
    return params


@dataclass
class DriverProbe:
    proc: Any
    namespace: str
    log_path: Path
    node: Any = None
    commands: list = field(default_factory=list)
    verdicts: list = field(default_factory=list)
    diagnostics: list = field(default_factory=list)
    seq: int = 1000

    def __post_init__(self) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import (
            DurabilityPolicy,
            QoSProfile,
            ReliabilityPolicy,
            qos_profile_sensor_data,
        )
        from sensor_msgs.msg import JointState
        from std_srvs.srv import Trigger

        from molmoact2_msgs.msg import ActionChunk, ChunkExecution

        p = driver_section()
        self.names = tuple(p["joint_names"])
        self.home = np.array(p["initial_positions"], dtype=float)
        self.node = rclpy.create_node("nodeprobe_driver_probe", namespace=self.namespace)
        self.node.create_subscription(
            JointState, "so101_driver/commanded_joint_states",
            lambda m: self.commands.append((time.monotonic(), np.array(m.position))),
            qos_profile_sensor_data)
        self.node.create_subscription(
            ChunkExecution, "so101_driver/chunk_execution", self.verdicts.append,
            QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                       durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.node.create_subscription(
            DiagnosticArray, "/diagnostics", lambda m: self.diagnostics.extend(
                s for s in m.status if "so101_driver" in s.name and self.namespace in s.name), 50)
        self.pub = self.node.create_publisher(
            ActionChunk, "molmoact2_policy/action_chunk",
            QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE))
        self.reset_client = self.node.create_client(Trigger, "so101_driver/reset")

    def now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    def spin(self, seconds: float) -> None:
        import rclpy

        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rclpy.spin_once(self.node, timeout_sec=0.005)

    def chunk(self, positions=None, *, stamp_s=None, step_dt=1 / 30, offset=1 / 30,
              names=None, horizon=None, seq=None):
        from builtin_interfaces.msg import Duration

        from molmoact2_msgs.msg import ActionChunk

        t = self.now() - 0.03 if stamp_s is None else stamp_s
        if positions is None:
            k = np.arange(30)[:, None]
            positions = self.home + 0.002 * k * np.ones(len(self.names))
        positions = np.asarray(positions, dtype=float)
        msg = ActionChunk()
        sec = math.floor(t)
        msg.header.stamp.sec = int(sec)
        msg.header.stamp.nanosec = int((t - sec) * 1e9)
        off_sec = math.floor(offset) if math.isfinite(offset) else 0
        msg.start_offset = Duration(sec=int(off_sec), nanosec=int((offset - off_sec) * 1e9)
                                    if math.isfinite(offset) else 0)
        msg.step_dt = float(step_dt)
        msg.joint_names = list(names if names is not None else self.names)
        msg.horizon = int(horizon if horizon is not None else positions.shape[0])
        msg.positions = positions.reshape(-1).tolist()
        if seq is None:
            self.seq += 1
            seq = self.seq
        msg.sequence = seq
        msg.mode = "flow"
        return msg

    def motion(self, since: float) -> float:
        cmds = [c for t, c in self.commands if t >= since]
        if len(cmds) < 2:
            return math.nan
        arr = np.array(cmds)
        return float(np.abs(arr - arr[0]).max())

    def reset(self) -> bool:
        return call_reset(self.reset_client, self.spin)

    def verdict_for(self, seq: int) -> str:
        for v in reversed(self.verdicts):
            if v.has_last and v.last_sequence == seq:
                return "accepted" if v.last_accepted else v.last_reject_reason
        return ""

    def good_chunk_moves(self) -> tuple[bool, float]:
        t0 = time.monotonic()
        for _ in range(40):
            msg = self.chunk()
            self.pub.publish(msg)
            self.spin(0.1)
            if self.verdict_for(msg.sequence) == "accepted":
                self.spin(0.4)
                return True, time.monotonic() - t0
        return False, time.monotonic() - t0

    def case(self, name: str, expected: str, make, *, accept=False, repeat=1, rate=0.0,
             allow_motion=False) -> Row:
        row = Row(name, expected)
        self.reset()
        self.spin(0.6)  # settle: holding still
        _, log_offset = tail_log(self.log_path, 0)
        t0 = time.monotonic()
        seqs = []
        for _ in range(repeat):
            msg = make(self)
            seqs.append(msg.sequence)
            self.pub.publish(msg)
            if rate:
                time.sleep(1 / rate)
                import rclpy

                rclpy.spin_once(self.node, timeout_sec=0)
        self.spin(1.0)
        moved = self.motion(t0)
        verdicts = [self.verdict_for(s) for s in seqs]
        log, _ = tail_log(self.log_path, log_offset)
        said = verdicts[-1] or "(no verdict seen)"
        line = first_problem_line(log)
        if line and line[:40] not in said:
            said += f" / log: {line}"
        row.said = said
        row.alive = self.proc.poll() is None
        row.moved = f"max command change {moved:.4f} rad"
        accepted = [v for v in verdicts if v == "accepted"]
        if accept:
            ok = bool(accepted)
        else:
            ok = not accepted and (allow_motion or math.isnan(moved) or moved < 1e-6)
        self.reset()
        rec, took = self.good_chunk_moves()
        row.recovered = f"yes ({took:.1f} s)" if rec else "NO"
        row.verdict = "PASS" if ok and row.alive and rec else "FAIL"
        if repeat > 1:
            row.said = f"{len(accepted)}/{repeat} accepted; last: {said}"
        LOG.info("%s", row.line())
        return row


def driver_cases(d: DriverProbe) -> list[Row]:
    rows = []
    names = list(d.names)
    k = np.arange(30)[:, None]
    base = d.home + 0.002 * k * np.ones(len(names))

    def add(name, *a, **kw):
        if not CASE_FILTER or re.search(CASE_FILTER, name):
            rows.append(d.case(name, *a, **kw))

    add("valid chunk (control)", "accepted, moves", lambda d: d.chunk(), accept=True)
    add("joint_names reversed, columns reversed to match", "accepted (reordered by name)",
        lambda d: d.chunk(base[:, ::-1], names=names[::-1]), accept=True)
    add("joint_names subset (one missing)", "refused",
        lambda d: d.chunk(base[:, 1:], names=names[1:]))
    add("joint_names with an unknown extra joint", "refused",
        lambda d: d.chunk(np.hstack([base, base[:, :1]]), names=[*names, "torso"]))
    add("joint_names duplicate", "refused",
        lambda d: d.chunk(base, names=[names[0], *names[:-1]]))
    add("joint_names empty", "refused", lambda d: d.chunk(base, names=[]))
    add("horizon 31 for 30 rows", "refused", lambda d: d.chunk(base, horizon=31))
    add("horizon 0, positions empty", "refused",
        lambda d: d.chunk(np.zeros((0, len(names))), horizon=0))
    add("horizon 2^32-1", "refused", lambda d: d.chunk(base, horizon=2**32 - 1))
    for dt in (0.0, -1 / 30, float("nan"), float("inf"), 1e-9, 1e9):
        add(f"step_dt {dt}", "refused", lambda d, dt=dt: d.chunk(base, step_dt=dt))
    bad = base.copy()
    bad[5, 2] = np.nan
    add("NaN in positions", "refused", lambda d: d.chunk(bad))
    bad2 = base.copy()
    bad2[5, 2] = np.inf
    add("inf in positions", "refused", lambda d: d.chunk(bad2))
    add("stamp +10 s (future)", "refused", lambda d: d.chunk(base, stamp_s=d.now() + 10))
    add("stamp -10 s (past)", "refused", lambda d: d.chunk(base, stamp_s=d.now() - 10))
    add("stamp 0", "refused", lambda d: d.chunk(base, stamp_s=0.0))
    add("start_offset 1000 s", "refused", lambda d: d.chunk(base, offset=1000.0))
    add("start_offset -1 s", "refused", lambda d: d.chunk(base, offset=-1.0))

    def nanosec_max(d):
        msg = d.chunk(base)
        msg.header.stamp.nanosec = 2**32 - 1  # 4.29 s ahead: not normalised on the wire
        return msg
    add("stamp nanosec 2^32-1", "refused (future)", nanosec_max)

    def velocities(d, values):
        msg = d.chunk(base)
        msg.velocities = values
        return msg
    add("velocities of the wrong length", "refused (shape)",
        lambda d: velocities(d, [0.0] * 7))
    add("velocities all NaN", "refused (non_finite)",
        lambda d: velocities(d, [float("nan")] * base.size))
    add("velocities empty (unknown)", "accepted", lambda d: velocities(d, []), accept=True)
    add("joint_names unicode garbage", "refused",
        lambda d: d.chunk(base, names=[n + "\u202e" for n in names]))
    jump = base.copy()
    jump[10:] += 3.0
    add("a 3 rad jump at step 10", "refused", lambda d: d.chunk(jump))
    add("whole chunk 3 rad from the measured pose", "refused", lambda d: d.chunk(base + 3.0))
    p = driver_section()
    lower, upper = np.array(p["position_lower"]), np.array(p["position_upper"])
    far = np.clip(d.home + np.where(d.home < 0, 1.5, -1.5), lower + 0.05, upper - 0.05)
    add("whole chunk ~1.5 rad away, inside the limits", "refused (start deviation)",
        lambda d: d.chunk(np.tile(far, (30, 1))))
    inside_jump = base.copy()
    inside_jump[10:] = far
    add("~1.5 rad jump at step 10, inside the limits", "refused (velocity)",
        lambda d: d.chunk(inside_jump))

    def seq_back(d):
        d.pub.publish(d.chunk(seq=5000))
        d.spin(0.05)
        return d.chunk(seq=10)
    add("sequence going backwards (5000 then 10)", "accepted (sequence is informative)",
        seq_back, accept=True)

    def older_stamp(d):
        d.pub.publish(d.chunk(stamp_s=d.now() - 0.02))
        d.spin(0.05)
        return d.chunk(stamp_s=d.now() - 0.2)
    add("chunk older than the active one", "refused (out_of_order); the first one moves",
        older_stamp, allow_motion=True)
    huge = np.tile(d.home, (100_000, 1))
    add("100k-step horizon", "refused, driver keeps ticking", lambda d: d.chunk(huge))
    add("1 kHz flood of valid chunks (2 s)", "followed, nothing breaks",
        lambda d: d.chunk(), accept=True, repeat=2000, rate=1000)
    add("1 kHz flood of NaN chunks (2 s)", "all refused, nothing moves",
        lambda d: d.chunk(bad), repeat=2000, rate=1000)
    return rows


# ---- main -------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("policy", "driver"))
    parser.add_argument("--out", type=Path)
    parser.add_argument("--cases", default="", help="only cases whose name matches this regex")
    args = parser.parse_args()
    global CASE_FILTER
    CASE_FILTER = args.cases
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("ROS_DOMAIN_ID", "44")
    import rclpy

    workdir = Path(tempfile.mkdtemp(prefix="nodeprobe_"))
    rows: list[Row] = []
    rclpy.init()
    try:
        if args.only in (None, "policy"):
            params = yam_params(
                camera_transports=["raw", "raw", "compressed"],
                camera_topics=["cameras/top/image_raw", "cameras/left_wrist/image_raw",
                               "cameras/right_wrist/image_raw/compressed"],
            )
            log_path = workdir / "policy.log"
            proc = start_python(
                ["-m", "molmoact2_policy.policy_node", "--ros-args", "--params-file",
                 str(write_params(workdir / "params.yaml", params))],
                env=FAKE_ENV, stdout=open(log_path, "w"), stderr=-2,
            )
            rows += _run_policy(params, proc, log_path)
        if args.only in (None, "driver"):
            ns = f"/np_{uuid.uuid4().hex[:6]}"
            log_path = workdir / "driver.log"
            proc = start_python([
                "-m", "hw_drivers.driver_node", "--ros-args", "--params-file",
                str(DRIVER_CONFIG), "-r", "__node:=so101_driver", "-r", f"__ns:={ns}",
                "-p", "watchdog_timeout:=1.0", "-p", "rejection_window:=2.0",
            ], stdout=open(log_path, "w"), stderr=-2)
            rows += _run_driver(proc, ns, log_path)
    finally:
        rclpy.shutdown()
    table = ["| case | expected | node said | kept running | moved | recovered | rule |",
             "| --- | --- | --- | --- | --- | --- | --- |", *(r.line() for r in rows)]
    text = "\n".join(table)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)
    fails = [r.case for r in rows if r.verdict != "PASS"]
    LOG.info("%d cases, %d FAIL: %s", len(rows), len(fails), fails)
    return 1 if fails else 0


def _run_policy(params, proc, log_path: Path) -> list[Row]:
    probe = PolicyProbe(params, proc, log_path)
    try:
        if not probe.run(60.0, until=lambda: bool(probe.chunks)):
            raise RuntimeError(f"policy node gave no chunk: {log_path.read_text()[-3000:]}")
        return policy_cases(probe)
    finally:
        probe.node.destroy_node()
        stop_process(proc)
        LOG.info("policy node exit code %s; log %s", proc.returncode, log_path)


def _run_driver(proc, ns: str, log_path: Path) -> list[Row]:
    probe = DriverProbe(proc, ns, log_path)
    try:
        end = time.monotonic() + 30
        while time.monotonic() < end and (len(probe.commands) < 10
                                          or probe.pub.get_subscription_count() == 0):
            probe.spin(0.1)
        return driver_cases(probe)
    finally:
        probe.node.destroy_node()
        out = stop_process(proc)
        del out
        LOG.info("driver exit code %s", proc.returncode)


if __name__ == "__main__":
    sys.exit(main())
