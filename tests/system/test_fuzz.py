"""Bad-input fuzzing of the running graph: nothing crashes and no unsafe command reaches a backend.

Randomised malformed Image, CompressedImage, JointState, ActionChunk and instruction messages are
published at rate next to a healthy graph (policy node with the smooth test policy, driver in
this process, cameras from the test). Every command the driver's backend was sent during the run
is checked against the joint limits and the per-tick step clamp.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from tests.system.reliability_util import (
    RosHarness,
    command_violations,
    jpeg_msg,
    robot_section,
    smooth_policy_process,
    unique_namespace,
    wait_until,
)

pytestmark = pytest.mark.ros

ROBOT = "so101"
FUZZ_SECONDS = 20.0
FUZZ_RATE = 80.0  # malformed messages per second, all kinds together
TRANSPORTS = ("raw", "compressed")  # front: Image, wrist: CompressedImage
BAD_FLOATS = (math.nan, math.inf, -math.inf, 1e300, -1e300)


def _stamp(seconds: float) -> Any:
    from hw_drivers.conversions import seconds_to_time_msg

    return seconds_to_time_msg(max(seconds, 0.0))


def _odd_stamp(rng: np.random.Generator, now: float) -> Any:
    """Now, the past (out of order), slightly in the future, or zero."""
    return _stamp(rng.choice([now, now - rng.uniform(0.05, 5.0), now + rng.uniform(0.0, 0.3), 0.0]))


def fuzz_image(rng: np.random.Generator, now: float) -> Any:
    from sensor_msgs.msg import Image

    msg = Image()
    msg.header.stamp = _odd_stamp(rng, now)
    h, w = int(rng.integers(0, 64)), int(rng.integers(0, 64))
    msg.height, msg.width = h, w
    msg.encoding = str(rng.choice(["rgb8", "bgr8", "mono8", "16UC1", "32FC1", "bayer_rggb8",
                                   "bayer_gbrg16", "mono16", "rgba16", "yuv422", "yuyv",
                                   "", "rgb8\x00", "nonsense"]))
    msg.step = int(rng.choice([w * 3, w, 0, w * 3 + 1, 2**31]))
    size = int(rng.choice([h * w * 3, 0, h * w * 3 - 1, h * w * 3 + 7, 10]))
    case = rng.integers(0, 6)
    if case == 0:  # dimensions that promise gigabytes
        msg.height, msg.width, msg.step = 100_000, 100_000, 300_000
    elif case == 1:  # a large but genuine frame with the wrong step
        msg.height, msg.width, msg.encoding, msg.step = 1000, 1000, "rgb8", 2999
        size = 3_000_000
    msg.data = rng.integers(0, 256, max(size, 0), dtype=np.uint8).tobytes()
    return msg


def fuzz_compressed(rng: np.random.Generator, now: float) -> Any:
    from sensor_msgs.msg import CompressedImage

    case = int(rng.integers(0, 6))
    if case == 0:
        good = jpeg_msg(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), _stamp(now), "x")
        msg = good
        msg.data = bytes(msg.data)[: len(msg.data) // 2]  # truncated jpeg
    elif case == 1:
        msg = jpeg_msg(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), _stamp(now), "x")
        msg.format = str(rng.choice(["png", "16UC1; compressedDepth", "", "tiff"]))
    elif case == 2:
        # A decodable image of the wrong kind: single channel, tiny.
        import cv2

        _ok, data = cv2.imencode(".png", rng.integers(0, 256, (4, 4), dtype=np.uint8))
        msg = CompressedImage(format="png", data=data.tobytes())
    elif case == 3:
        # A decompression bomb: a tiny JPEG whose header declares 20000x20000 (1.2 GB and
        # seconds of CPU were it decoded).
        msg = jpeg_msg(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), _stamp(now), "x")
        data = bytearray(msg.data)
        sof = data.index(b"\xff\xc0")
        data[sof + 5 : sof + 9] = (20000).to_bytes(2, "big") * 2
        msg.data = bytes(data)
    elif case == 4:
        # Another format cv2 would sniff and decode, labelled jpeg.
        import cv2

        _ok, data = cv2.imencode(".bmp", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        msg = CompressedImage(format="jpeg", data=data.tobytes())
    else:
        msg = CompressedImage(format="jpeg")
        msg.data = rng.integers(0, 256, int(rng.choice([0, 3, 1000, 200_000])),
                                dtype=np.uint8).tobytes()
    msg.header.stamp = _odd_stamp(rng, now)
    return msg


def fuzz_joint_state(rng: np.random.Generator, now: float, joints: list[str]) -> Any:
    from sensor_msgs.msg import JointState

    msg = JointState()
    msg.header.stamp = _odd_stamp(rng, now)
    names = list(joints)
    positions = list(rng.uniform(-1, 1, len(names)))
    case = int(rng.integers(0, 7))
    if case == 0:
        positions[int(rng.integers(0, len(names)))] = float(rng.choice(BAD_FLOATS))
    elif case == 1:
        names = [f"unknown_{i}" for i in range(len(names))]
    elif case == 2:
        positions = positions[:-2]  # names and positions disagree
    elif case == 3:
        names, positions = [], []
    elif case == 4:
        names = [f"j{i}" for i in range(5000)]
        positions = list(rng.uniform(-1, 1, 5000))
    elif case == 5:
        names = names[:3]
        positions = positions[:3]  # a partial state (a second arm's message, say)
    else:
        names = names + names  # duplicated names with different values
        positions = positions + list(rng.uniform(-3, 3, len(joints)))
    msg.name = names
    msg.position = [float(p) for p in positions]
    return msg


def fuzz_chunk(rng: np.random.Generator, now: float, joints: list[str], limits: dict) -> Any:
    from builtin_interfaces.msg import Duration

    from molmoact2_msgs.msg import ActionChunk

    lower, upper = np.array(limits["position_lower"]), np.array(limits["position_upper"])
    horizon = 30
    positions = rng.uniform(lower, upper, (horizon, len(joints)))
    msg = ActionChunk()
    msg.header.stamp = _odd_stamp(rng, now)
    msg.step_dt = 1 / 30
    msg.joint_names = list(joints)
    msg.horizon = horizon
    case = int(rng.integers(0, 10))
    if case == 0:
        positions[int(rng.integers(horizon)), int(rng.integers(len(joints)))] = float(
            rng.choice(BAD_FLOATS))
    elif case == 1:
        positions = positions + (upper - lower) * 2  # all off limits
    elif case == 2:
        msg.horizon = horizon + 3  # size disagrees with horizon x joints
    elif case == 3:
        msg.joint_names = [*joints[:-1], "elbow_twist"]  # unknown joint
    elif case == 4:
        msg.step_dt = float(rng.choice([0.0, -0.1, math.nan, math.inf, 1e-12]))
    elif case == 5:
        msg.joint_names, msg.horizon, positions = [], 0, positions[:0]
    elif case == 6:
        msg.horizon = 20_000  # huge chunk, consistent size, random (too fast) values
        positions = rng.uniform(lower, upper, (20_000, len(joints)))
    elif case == 7:
        msg.joint_names = list(joints[:3])  # a subset of the joints
        positions = positions[:, :3]
    elif case == 8:
        msg.start_offset = Duration(sec=-5, nanosec=0)
    # case 9: in limits but jumping between random poses (velocity / start deviation)
    msg.positions = [float(v) for v in np.asarray(positions).reshape(-1)]
    return msg


def fuzz_instruction(rng: np.random.Generator) -> Any:
    from std_msgs.msg import String

    choices = ["", " ", "x" * 100_000, "\x00\x01\x02", "pick up the ✨ block" * 3,
               "fold the towel", "\ud7ff" * 10, "\n\t"]
    return String(data=str(rng.choice(choices)))


def test_fuzzed_inputs_never_crash_and_never_reach_the_backend_unsafely(reliability):
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage, Image, JointState
    from std_msgs.msg import String

    from molmoact2_msgs.msg import ActionChunk

    driver = robot_section(ROBOT, "so101_driver")
    joints = list(driver["joint_names"])
    namespace = unique_namespace("fuzz")
    h = RosHarness(ROBOT, namespace)
    policy = None
    try:
        h.add_driver({"watchdog_timeout": 0.5, "ramp_in_time": 0.5})
        h.add_camera_feed(transports=TRANSPORTS)
        h.start()
        policy = smooth_policy_process(
            ROBOT, namespace, camera_transports=list(TRANSPORTS)
        ).start()
        assert wait_until(lambda: h.executor_stats().accepted >= 3, 60.0), policy.text()

        node = h.probe
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        topics = h.shared["camera_topics"]
        publishers: dict[str, tuple[Any, Callable[[np.random.Generator, float], Any]]] = {
            "image": (node.create_publisher(Image, topics[0], qos_profile_sensor_data),
                      fuzz_image),
            "compressed": (node.create_publisher(CompressedImage, topics[1],
                                                 qos_profile_sensor_data), fuzz_compressed),
            "joint_state": (node.create_publisher(JointState, "joint_states",
                                                  qos_profile_sensor_data),
                            lambda r, t: fuzz_joint_state(r, t, joints)),
            "chunk": (node.create_publisher(ActionChunk, "molmoact2_policy/action_chunk",
                                            reliable),
                      lambda r, t: fuzz_chunk(r, t, joints, driver)),
            "instruction": (node.create_publisher(String, "molmoact2_policy/instruction",
                                                  reliable),
                            lambda r, t: fuzz_instruction(r)),
        }
        kinds = list(publishers)
        rng = np.random.default_rng(1234)
        sent: Counter[str] = Counter()
        errors_seen: set[str] = set()
        start = time.monotonic()
        next_send = start
        while time.monotonic() - start < FUZZ_SECONDS:
            kind = kinds[int(rng.integers(len(kinds)))]
            publisher, make = publishers[kind]
            publisher.publish(make(rng, h.now()))
            sent[kind] += 1
            status = h.received.latest_status()
            if status is not None and status.last_error:
                errors_seen.add(status.last_error.split(":")[0][:40])
            next_send += 1.0 / FUZZ_RATE
            time.sleep(max(0.0, next_send - time.monotonic()))
            assert policy.alive(), policy.text()[-3000:]

        total = sum(sent.values())
        reliability.fuzz_messages += total
        # The graph is still up and answers.
        assert policy.alive(), policy.text()[-3000:]
        assert h._thread is not None and h._thread.is_alive(), "the driver's executor died"
        # Recovery: a good instruction again, and the policy's chunks drive the arm.
        instruction_pub = publishers["instruction"][0]
        accepted = h.executor_stats().accepted

        def recovered() -> bool:
            instruction_pub.publish(String(data="put the red block in the bowl"))
            return h.executor_stats().accepted >= accepted + 3

        assert wait_until(recovered, 30.0, period=0.3), (
            h.executor_stats(), h.received.latest_status())

        log = h.command_log()
        assert 0 < len(log) < h.backend.COMMAND_LOG_LENGTH, "command log incomplete"
        problems = command_violations(
            [c for _, c in log], driver["position_lower"], driver["position_upper"],
            float(driver["max_step_per_tick"]),
        )
        reliability.fuzz_commands_checked += len(log)
        reliability.fuzz_unsafe_commands += len(problems)
        assert not problems, problems[:5]

        # Errors were reported, not swallowed: the driver counted rejections by reason and
        # the policy's status named bad inputs.
        stats = h.executor_stats()
        for code in ("shape", "non_finite", "position_limit", "joint_set"):
            assert stats.rejected.get(code, 0) > 0, (code, dict(stats.rejected))
        diag = h.received.driver_diag(h.driver_node_name)
        assert diag is not None and int(diag["rejected_chunks"]) > 0, diag
        assert diag["last_reject_reason"], diag
        assert any("camera" in e or "joint" in e for e in errors_seen), errors_seen
        reliability.figures["fuzz: chunks rejected by reason"] = ", ".join(
            f"{k}={v}" for k, v in sorted(stats.rejected.items()))
        reliability.figures["fuzz: messages by kind"] = ", ".join(
            f"{k}={v}" for k, v in sorted(sent.items()))
    finally:
        if policy is not None:
            policy.stop()
        h.close()
