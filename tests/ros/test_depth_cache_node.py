"""DepthCacheNode publishes what Think saw and resets the policy's cache when it must."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from molmoact2_policy.depth_change import CellChanges, compare_frames
from molmoact2_policy.depth_viz import OUTLINE_RGB, depth_colormap
from molmoact2_policy.policy_api import ActionChunkResult
from tests.rostest_util import spin_until

pytestmark = pytest.mark.ros


class ChangeOnlyThink:
    """The cache half of a Think policy: real change detection, codes from the image brightness.

    Enough to drive the node the way the policy node does, without loading a model.
    """

    def __init__(self) -> None:
        self.previous: np.ndarray | None = None
        self.codes = np.zeros(100, dtype=np.int64)
        self.resets = 0
        self.configured: tuple[str, float] | None = None

    def configure_change_detection(self, camera_name: str, threshold: float) -> None:
        self.configured = (camera_name, threshold)

    def configure_depth_decoding(self, decoding: str) -> None:
        self.decoding = decoding

    def act(self, frame: np.ndarray) -> ActionChunkResult:
        changes: CellChanges = compare_frames(self.previous, frame)
        cells = frame.reshape(10, frame.shape[0] // 10, 10, frame.shape[1] // 10, 3)
        brightness = cells.mean(axis=(1, 3, 4)).reshape(100)
        fresh = np.minimum((brightness / 2).astype(np.int64), 127)
        self.codes = np.where(changes.changed, fresh, self.codes)
        self.previous = frame
        return ActionChunkResult(
            positions=np.zeros((2, 14)),
            step_dt=1 / 30,
            joint_names=tuple(f"j{i}" for i in range(14)),
            mode="think",
            depth_codes=self.codes.copy(),
            depth_changed=changes.changed,
        )

    def reset(self) -> None:
        self.previous = None
        self.resets += 1


class TinyThink:
    """The real ThinkPolicy (tiny random model) behind the same two calls."""

    def __init__(self) -> None:
        import torch

        from molmoact2_policy.model.loader import load_policy

        torch.set_num_threads(1)
        self.policy = load_policy("tiny", "yam_bimanual", mode="think")
        rng = np.random.default_rng(1)
        self.wrists = {
            name: rng.integers(0, 256, (360, 640, 3), dtype=np.uint8)
            for name in ("left_wrist", "right_wrist")
        }
        self.resets = 0
        self.configured = None

    def act(self, frame: np.ndarray) -> ActionChunkResult:
        images = {"top": frame, **self.wrists}
        return self.policy.act(images, np.zeros(14), "stack the blocks", seed=0)

    def reset(self) -> None:
        self.policy.reset()
        self.resets += 1

    def configure_change_detection(self, camera_name: str, threshold: float) -> None:
        self.policy.configure_change_detection(camera_name, threshold)
        self.configured = (camera_name, threshold)

    def configure_depth_decoding(self, decoding: str) -> None:
        self.policy.configure_depth_decoding(decoding)
        self.decoding = self.policy.depth_decoding


def scene(block_col: int) -> np.ndarray:
    """A 480x640 textured table with a bright block 2x2 cells wide at row 4, column block_col."""
    rng = np.random.default_rng(0)
    frame = rng.integers(40, 120, size=(480, 640, 3), dtype=np.uint8)
    frame[4 * 48 : 6 * 48, block_col * 64 : (block_col + 2) * 64] = (250, 240, 230)
    return frame


def stamp(seconds: float):
    from builtin_interfaces.msg import Time

    return Time(sec=int(seconds), nanosec=round((seconds % 1) * 1e9))


@pytest.fixture(params=["change_only"])
def ros_nodes(request):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    from molmoact2_policy.depth_cache_node import DepthCacheNode

    rclpy.init()
    policy = ChangeOnlyThink() if request.param == "change_only" else TinyThink()
    node = DepthCacheNode(
        policy_reset=policy.reset,
        parameter_overrides=[
            Parameter("camera_names", Parameter.Type.STRING_ARRAY, ["top", "left_wrist"]),
            Parameter("camera_frames", Parameter.Type.STRING_ARRAY, ["top_cam", "lw_cam"]),
            Parameter("cell_size", Parameter.Type.INTEGER, 8),
            Parameter("max_stamp_gap", Parameter.Type.DOUBLE, 1.0),
        ],
    )
    probe = rclpy.create_node("depth_probe")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    executor.add_node(probe)
    try:
        yield policy, node, probe, executor
    finally:
        executor.shutdown()
        node.destroy_node()
        probe.destroy_node()
        rclpy.shutdown()


def subscribe(probe, executor):
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import Image
    from visualization_msgs.msg import MarkerArray

    from molmoact2_msgs.msg import DepthTokens

    got: dict[str, list] = {"tokens": [], "image": [], "markers": []}
    qos = QoSProfile(depth=10)
    base = "/molmoact2_depth_cache/"
    probe.create_subscription(DepthTokens, base + "depth_tokens", got["tokens"].append, qos)
    probe.create_subscription(Image, base + "depth_image", got["image"].append, qos)
    probe.create_subscription(MarkerArray, base + "depth_markers", got["markers"].append, qos)
    # Let discovery match publishers and subscriptions before anything is published.
    spin_until(probe, lambda: False, 0.5, executor=executor)
    return got


@pytest.mark.parametrize("ros_nodes", ["change_only", "tiny_model"], indirect=True)
def test_changed_mask_matches_the_moved_block_and_image_shows_codes(ros_nodes):
    policy, node, probe, executor = ros_nodes
    assert policy.configured == ("top", 0.996)  # the node's parameters reached the policy
    assert policy.decoding == "adaptive"
    got = subscribe(probe, executor)

    first, second = scene(block_col=2), scene(block_col=3)
    assert node.on_think_result(stamp(10.0), first, policy.act(first))
    result = policy.act(second)
    assert node.on_think_result(stamp(10.1), second, result)
    assert spin_until(
        probe,
        lambda: min(len(got["tokens"]), len(got["image"]), len(got["markers"])) >= 2,
        5.0,
        executor=executor,
    )

    # The block moved one column right: it left column 2 and entered column 4 (rows 4 and 5);
    # column 3 stays bright and must not be re-predicted.
    expected = np.zeros((10, 10), dtype=bool)
    expected[4:6, 2] = True
    expected[4:6, 4] = True
    tokens = got["tokens"][1]
    assert (tokens.rows, tokens.cols, tokens.num_codes) == (10, 10, 128)
    assert tokens.header.frame_id == "top_cam"
    assert (tokens.header.stamp.sec, tokens.header.stamp.nanosec) == (10, 100_000_000)
    np.testing.assert_array_equal(np.array(tokens.changed).reshape(10, 10), expected)
    assert tokens.changed_fraction == pytest.approx(0.04)
    np.testing.assert_array_equal(np.array(tokens.codes), result.depth_codes)
    assert list(got["tokens"][0].changed) == [True] * 100

    image_msg = got["image"][1]
    assert (image_msg.height, image_msg.width, image_msg.encoding) == (80, 80, "rgb8")
    image = np.frombuffer(bytes(image_msg.data), np.uint8).reshape(80, 80, 3)
    colours = depth_colormap(128)
    for index in range(100):
        r, c = divmod(index, 10)
        cell = image[r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8]
        np.testing.assert_array_equal(cell[4, 4], colours[result.depth_codes[index]])
        outlined = bool(np.all(cell[0, :] == OUTLINE_RGB))
        assert outlined == expected[r, c], f"cell {r},{c}"

    markers = got["markers"][-1].markers
    assert len(markers) == 100 and markers[0].header.frame_id == "top_cam"
    assert markers[42].color.a == 1.0 and markers[0].color.a < 1.0


def test_reset_service_and_stamp_jumps_reset_the_policy_cache(ros_nodes):
    from std_srvs.srv import Trigger

    policy, node, probe, executor = ros_nodes
    frame = scene(block_col=2)
    node.on_think_result(stamp(5.0), frame, policy.act(frame))
    node.on_think_result(stamp(5.5), frame, policy.act(frame))
    assert policy.resets == 0

    client = probe.create_client(Trigger, "/molmoact2_depth_cache/reset")
    assert client.wait_for_service(timeout_sec=5.0)
    future = client.call_async(Trigger.Request())
    assert spin_until(probe, future.done, 5.0, executor=executor)
    assert future.result().success and policy.resets == 1

    node.on_think_result(stamp(6.0), frame, policy.act(frame))
    assert policy.resets == 1  # the first stamp after a reset has nothing to jump from
    assert node.check_stamp(stamp(7.5))  # gap 1.5 s > max_stamp_gap 1.0 s
    assert policy.resets == 2
    node.on_think_result(stamp(7.6), frame, policy.act(frame))
    node.on_think_result(stamp(7.0), frame, policy.act(frame))  # backwards
    assert policy.resets == 3 and node.resets == 3


def test_a_model_slower_than_max_stamp_gap_keeps_its_cache(ros_nodes):
    """Think results 4 s apart (a CPU model taking 4 s per inference) are no stamp jump."""
    policy, node, _probe, _executor = ros_nodes
    frame = scene(block_col=2)

    def slow(result: ActionChunkResult) -> ActionChunkResult:
        return dataclasses.replace(result, timings={"total": 4.0})

    node.on_think_result(stamp(10.0), frame, slow(policy.act(frame)))
    node.on_think_result(stamp(14.2), frame, slow(policy.act(frame)))
    node.on_think_result(stamp(18.5), frame, slow(policy.act(frame)))
    assert policy.resets == 0
    node.on_think_result(stamp(30.0), frame, slow(policy.act(frame)))  # a paused camera
    assert policy.resets == 1


def test_unusable_results_are_refused_without_publishing(ros_nodes):
    policy, node, probe, executor = ros_nodes
    got = subscribe(probe, executor)
    frame = scene(block_col=2)
    flow = ActionChunkResult(
        positions=np.zeros((2, 14)), step_dt=0.1, joint_names=("a",) * 14, mode="flow"
    )
    assert not node.on_think_result(stamp(1.0), frame, flow)
    bad = ActionChunkResult(
        positions=np.zeros((2, 14)),
        step_dt=0.1,
        joint_names=("a",) * 14,
        mode="think",
        depth_codes=np.full(100, 500),
        depth_changed=np.ones(100, dtype=bool),
    )
    assert not node.on_think_result(stamp(1.1), frame, bad)
    # A broken camera frame only costs the blend; the tokens still go out.
    good = policy.act(frame)
    assert node.on_think_result(stamp(1.2), np.zeros((4, 4), np.float32), good)
    assert spin_until(probe, lambda: len(got["tokens"]) == 1, 5.0, executor=executor)
    spin_until(probe, lambda: False, 0.2, executor=executor)
    assert len(got["tokens"]) == 1


def test_invalid_parameters_are_named():
    import rclpy
    from rclpy.parameter import Parameter

    from molmoact2_policy.depth_cache_node import DepthCacheNode

    rclpy.init()
    try:
        with pytest.raises(ValueError, match="blend_alpha"):
            DepthCacheNode(
                parameter_overrides=[Parameter("blend_alpha", Parameter.Type.DOUBLE, 2.0)]
            )
    finally:
        rclpy.shutdown()


def test_a_result_whose_inference_began_before_a_reset_is_dropped(ros_nodes):
    """``~/reset`` while a Think inference runs: its result comes from the cache the reset
    dropped. It is not published, its stamp is not noted (no stamp jump from it), and it is
    counted; the next inference's result goes out."""
    from std_srvs.srv import Trigger

    policy, node, probe, executor = ros_nodes
    got = subscribe(probe, executor)
    frame = scene(block_col=2)
    started = node.inference_token()  # the policy node takes it right before act()
    stale = policy.act(frame)
    client = probe.create_client(Trigger, "/molmoact2_depth_cache/reset")
    assert client.wait_for_service(timeout_sec=5.0)
    future = client.call_async(Trigger.Request())
    assert spin_until(probe, future.done, 5.0, executor=executor)
    assert future.result().success

    assert not node.on_think_result(stamp(20.0), frame, stale, started=started)
    assert node.dropped_after_reset == 1
    fresh_token = node.inference_token()
    fresh = policy.act(frame)
    # 30 s after the dropped result's stamp: had that stamp been noted, a stamp-jump reset.
    assert node.on_think_result(stamp(50.0), frame, fresh, started=fresh_token)
    assert node.resets == 1 and node.dropped_after_reset == 1
    assert spin_until(probe, lambda: len(got["tokens"]) >= 1, 5.0, executor=executor)
    spin_until(probe, lambda: False, 0.2, executor=executor)
    assert [(t.header.stamp.sec) for t in got["tokens"]] == [50]
