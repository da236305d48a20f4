"""Hostile input against ONE running segment_node (real Fast DDS, camera on, fused head, tiny model).

Every case of `docs/reliability.md` is a test id here (`test_hostile_input[<case>]`): the case's
messages are published, then a good camera + LiDAR frame. For each case the test asserts that the
node process is alive, that the case's diagnostics counters moved by exactly the expected amounts
(and nothing was dropped or skipped besides), that a log line naming the problem (`[<counter>]`)
appeared, that the case's own cloud -- when the policy is to segment it -- came back right, and that
the next good frame came back with the same header stamp, per-point labels equal to an in-process
`Segmenter` on the same points and image, and its overlay.

The node runs with the `XKD_TEST_INJECT_OOM=1` test hook, so the CUDA out-of-memory path runs in
the real node on a CPU-only machine (see `xkd_ros.segment_node`).

Start-up refusals (missing / incompatible checkpoint) run the console script itself.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from node_fixtures import (
    IMAGE_HW,
    SEGMENT_NODE,
    Harness,
    K,
    T,
    synthetic_image,
    synthetic_scan,
    tiny_checkpoint,
    topics,
)

from xkd_core.classes import PALETTE_PACKED_RGB
from xkd_core.data.frame import CameraView
from xkd_core.inference import Segmenter
from xkd_ros.image import to_rclpy_camera_info, to_rclpy_image
from xkd_ros.node_process import NodeProcess, write_overrides
from xkd_ros.pointcloud import FLOAT32, INT16, cloud_view, to_rclpy_cloud, xyzi_array
from xkd_ros.segment_node import _LOG_EVERY_S, OOM_HOOK_ENV
from xkd_ros.stamp import NS_PER_S, header_ns, rclpy_header

pytestmark = pytest.mark.ros

NODE = "xkd_hostile"
S = NS_PER_S
WAIT = 90.0  # generous: 2 shared CPU cores, and one case sends 2 million points


# ----------------------------------------------------------------------------- the running node


class SensorClock:
    """The sensors' 10 Hz clock. Stamps only move forward, except when a case jumps it back (a bag
    loop) into a range never used before, so no two frames of the module ever share a stamp."""

    def __init__(self, start_s: int) -> None:
        self.t = start_s * S

    def next(self) -> int:
        self.t += S // 10
        return self.t

    def jump_to(self, seconds: int) -> int:
        self.t = seconds * S
        return self.t


@dataclass
class Expected:
    """An output the case's own messages must produce: the labeled cloud for `stamp`."""

    stamp: int
    points: np.ndarray  # (N, 4) as the node decodes them
    labels: np.ndarray  # (N,) expected labels (confidence is checked where the full scan was segmented)
    confidence: np.ndarray | None
    shape: tuple[int, int] | None = None  # (height, width) of an organised output
    frame_id: str = "velodyne"
    overlay: bool = False


@dataclass
class Sent:
    """What a case published: the number of clouds, outputs it must produce, stamps that must not
    (gain) an output, and the non-finite points the node will count for processed clouds."""

    clouds: int = 1
    outputs: list[Expected] = field(default_factory=list)
    no_output: dict[int, int] = field(default_factory=dict)  # stamp -> outputs it has (0, or 1 for a repeat)
    nonfinite: int = 0


class Hostile:
    """The node, the harness and the reference model shared by every case."""

    def __init__(self, node: NodeProcess, h: Harness, ref: Segmenter) -> None:
        self.node, self.h, self.ref = node, h, ref
        self.clock = SensorClock(500_000)
        self.last_good: int | None = None
        self.warned_at: dict[str, float] = {}  # log key -> last time a case triggered it

    def expect(self, points: np.ndarray, image: np.ndarray | None) -> Any:
        """What the node publishes for this scan (camera view built exactly as the node builds it)."""
        torch.set_num_threads(1)  # the node runs with cpu_threads: 1
        return self.ref.segment(points, None if image is None else [CameraView(image, K, T, "camera")])

    def lidar_only(self, stamp: int, points: np.ndarray, **kw: Any) -> Expected:
        res = self.expect(points, None)
        return Expected(stamp, points, res.labels, res.confidence, **kw)

    def outputs_for(self, stamp: int) -> list[Any]:
        return [r.msg for r in self.h.clouds if header_ns(r.msg.header) == stamp]

    def wait_output(self, stamp: int) -> Any:
        ok = self.h.spin_until(lambda: bool(self.outputs_for(stamp)), WAIT, self.node)
        assert ok, f"no output for stamp {stamp}; alive={self.node.alive()}; log:\n{self.node.log_tail()}"
        return self.outputs_for(stamp)[0]

    def diagnostics(self, at_least: dict[str, int] | None = None) -> dict[str, str]:
        """The node's newest /diagnostics values, published after now and showing `at_least` counts."""
        t = time.monotonic()

        def fresh() -> bool:
            d = self.h.latest_diagnostics(NODE, t)
            return d is not None and all(int(d.get(k, 0)) >= v for k, v in (at_least or {}).items())

        assert self.h.spin_until(fresh, WAIT, self.node), f"no diagnostics; log:\n{self.node.log_tail()}"
        return self.h.latest_diagnostics(NODE, t)

    def good_frame(self, seed: int) -> Expected:
        """A normal camera + LiDAR frame; returns what came back, checked against the reference."""
        stamp = self.clock.next()
        points, image = synthetic_scan(seed), synthetic_image(seed)
        self.h.publish_camera(stamp, image)
        self.h.spin_for(0.3)  # the image is in the node's cache before the cloud asks for it
        self.h.publish_cloud(stamp, points)
        res = self.expect(points, image)
        exp = Expected(stamp, points, res.labels, res.confidence, overlay=True)
        check_output(self, exp)
        self.last_good = stamp
        return exp

    def publish(self, msg: Any) -> None:
        self.h.cloud_pub.publish(msg)

    def wait_out_throttle(self, keys: list[str]) -> None:
        """The node logs one problem at most once per _LOG_EVERY_S: let a repeated problem be shown."""
        last = max((self.warned_at.get(k, -1e9) for k in keys), default=-1e9)
        wait = last + _LOG_EVERY_S + 0.3 - time.monotonic()
        if wait > 0:
            self.h.spin_for(wait)


def check_output(ctx: Hostile, exp: Expected) -> None:
    msg = ctx.wait_output(exp.stamp)
    assert header_ns(msg.header) == exp.stamp and msg.header.frame_id == exp.frame_id
    n = len(exp.points)
    if exp.shape is None:
        assert (msg.height, msg.width) == (1, n)
    else:  # organised in, organised out
        assert (msg.height, msg.width, msg.row_step) == (*exp.shape, exp.shape[1] * msg.point_step)
    out = cloud_view(msg).reshape(-1)
    got = np.stack([out[k] for k in ("x", "y", "z", "intensity")], axis=1)
    np.testing.assert_array_equal(got.view(np.uint32), exp.points.view(np.uint32))  # NaNs in place too
    np.testing.assert_array_equal(out["label"], exp.labels)
    if exp.confidence is not None:
        np.testing.assert_allclose(out["confidence"], exp.confidence, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(out["rgb"].view(np.uint32), PALETTE_PACKED_RGB[exp.labels].view(np.uint32))
    bad = ~np.isfinite(exp.points).all(axis=1)
    assert (out["label"][bad] == 0).all() and (out["confidence"][bad] == 0).all()
    if exp.overlay:
        assert ctx.h.spin_until(lambda: ctx.h.overlay_for(exp.stamp) is not None, WAIT, ctx.node)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("hostile")
    tp = topics(NODE)
    params = {"checkpoint": str(tiny_checkpoint(tmp / "tiny.pt")), "device": "cpu", "cpu_threads": 1,
              "fuse_camera": True, "max_range": 100.0, "diagnostics_period": 0.5,
              "qos.input.reliability": "reliable",  # one 2-million-point message must arrive whole
              **{f"topics.{k}": v for k, v in tp.items()}}
    node = NodeProcess([write_overrides(tmp / "params.yaml", params, NODE)], tmp / "node.log",
                       env={**os.environ, OOM_HOOK_ENV: "1"}, extra_ros_args=["-r", f"__node:={NODE}"])
    h = Harness(f"{NODE}_harness", tp)
    ref = Segmenter.from_checkpoint(params["checkpoint"], "cpu", fuse=True, max_range=100.0)
    ctx = Hostile(node, h, ref)
    try:
        h.wait_connected(node, with_camera=True, timeout=120.0)
        for attempt in range(5):  # the first reliable messages after discovery may still be missed
            stamp = ctx.clock.next()
            h.publish_camera(stamp, synthetic_image(attempt))
            h.spin_for(0.5)
            h.publish_cloud(stamp, synthetic_scan(attempt))
            if h.spin_until(lambda s=stamp: h.overlay_for(s) is not None, 15.0, node):
                break
        else:
            raise AssertionError(f"segment_node never answered; log:\n{node.log_tail()}")
        ctx.good_frame(100)
        yield ctx
    finally:
        h.close()
        rc = node.stop()
    assert rc == 0, f"segment_node exited with {rc} on SIGINT; log:\n{node.log_tail()}"


# ----------------------------------------------------------------------------- message builders


def raw_cloud(stamp: int, fields: list[tuple[str, int, int, int]], point_step: int, width: int, data: bytes,
              height: int = 1, row_step: int | None = None, frame_id: str = "velodyne") -> Any:
    """A PointCloud2 exactly as given, however inconsistent."""
    from sensor_msgs.msg import PointCloud2, PointField

    msg = PointCloud2(header=rclpy_header(stamp, frame_id), height=height, width=width, point_step=point_step,
                      row_step=width * point_step if row_step is None else row_step, is_bigendian=False,
                      fields=[PointField(name=n, offset=o, datatype=d, count=c) for n, o, d, c in fields])
    msg.data = data
    return msg


XYZI = [("x", 0, FLOAT32, 1), ("y", 4, FLOAT32, 1), ("z", 8, FLOAT32, 1), ("intensity", 12, FLOAT32, 1)]


def structured_cloud(stamp: int, points: np.ndarray, formats: list[str], frame_id: str = "velodyne") -> Any:
    """x, y, z, intensity packed with the given numpy formats (e.g. '>f4', '<f8'), no padding."""
    offsets = np.cumsum([0] + [np.dtype(f).itemsize for f in formats[:-1]]).tolist()
    dt = np.dtype({"names": ["x", "y", "z", "intensity"], "formats": formats, "offsets": offsets,
                   "itemsize": sum(np.dtype(f).itemsize for f in formats)})
    arr = np.zeros(len(points), dt)
    for i, name in enumerate(dt.names):
        arr[name] = points[:, i]
    return to_rclpy_cloud(rclpy_header(stamp, frame_id), arr)


def camera_msgs(stamp: int, image: np.ndarray, k: np.ndarray = K, hw: tuple[int, int] = IMAGE_HW,
                **info: Any) -> tuple[Any, Any]:
    header = rclpy_header(stamp, "camera")
    return to_rclpy_camera_info(header, k, hw, **info), to_rclpy_image(header, image)


def raw_image(stamp: int, encoding: str, height: int, width: int, step: int, nbytes: int) -> Any:
    from sensor_msgs.msg import Image

    msg = Image(header=rclpy_header(stamp, "camera"), height=height, width=width, encoding=encoding,
                step=step)
    msg.data = bytes(nbytes)
    return msg


# ----------------------------------------------------------------------------- the cases


def nonfinite(points: np.ndarray) -> int:
    """Points the node counts in `points_nonfinite` (any of x, y, z, intensity NaN or inf)."""
    return int((~np.isfinite(points).all(axis=1)).sum())


def skipped_cloud(make: Callable[[int], Any]) -> Callable[[Hostile], Sent]:
    """A malformed cloud: refused, so no output for its stamp."""
    def send(ctx: Hostile) -> Sent:
        stamp = ctx.clock.next()
        ctx.publish(make(stamp))
        return Sent(no_output={stamp: 0})

    return send


def cloud_float64(ctx: Hostile) -> Sent:
    stamp, points = ctx.clock.next(), synthetic_scan(1)
    ctx.publish(structured_cloud(stamp, points, ["<f8", "<f8", "<f8", "<f4"]))
    return Sent(outputs=[ctx.lidar_only(stamp, points)], nonfinite=nonfinite(points))


def cloud_big_endian(ctx: Hostile) -> Sent:
    stamp, points = ctx.clock.next(), synthetic_scan(2)
    ctx.publish(structured_cloud(stamp, points, [">f4"] * 4))
    return Sent(outputs=[ctx.lidar_only(stamp, points)], nonfinite=nonfinite(points))


def cloud_organised(ctx: Hostile) -> Sent:
    """A 6 x 900 organised cloud (a real driver's), the last 40 columns NaN padding (no return)."""
    stamp, points = ctx.clock.next(), synthetic_scan(3)
    grid = points.reshape(6, 900, 4).copy()
    grid[:, -40:, :3] = np.nan
    points = grid.reshape(-1, 4)
    msg = to_rclpy_cloud(rclpy_header(stamp, "velodyne"), xyzi_array(points))
    msg.height, msg.width, msg.row_step = 6, 900, 900 * 16
    ctx.publish(msg)
    return Sent(outputs=[ctx.lidar_only(stamp, points, shape=(6, 900))], nonfinite=nonfinite(points))


def cloud_nan_inf(ctx: Hostile) -> Sent:
    stamp, points = ctx.clock.next(), synthetic_scan(4)
    finite = np.flatnonzero(np.isfinite(points).all(axis=1))
    rows = np.random.default_rng(4).choice(finite, 60, replace=False)
    points[rows[:20], 0] = np.inf
    points[rows[20:40], 2] = -np.inf
    points[rows[40:], 3] = np.nan  # a NaN intensity alone also makes the point unusable
    ctx.publish(to_rclpy_cloud(rclpy_header(stamp, "velodyne"), xyzi_array(points)))
    assert nonfinite(points) == 67
    return Sent(outputs=[ctx.lidar_only(stamp, points)], nonfinite=67)


def cloud_all_nan(ctx: Hostile) -> Sent:
    stamp = ctx.clock.next()
    points = np.full((500, 4), np.nan, np.float32)
    ctx.publish(to_rclpy_cloud(rclpy_header(stamp, "velodyne"), xyzi_array(points)))
    zeros = np.zeros(500, np.uint16)
    return Sent(outputs=[Expected(stamp, points, zeros, np.zeros(500, np.float32))], nonfinite=500)


def cloud_absurd_coordinates(ctx: Hostile) -> Sent:
    """Finite but absurd coordinates (1e30 m): beyond max_range, label 0; the rest segmented as usual."""
    stamp, points = ctx.clock.next(), synthetic_scan(5)
    points[:10, :3] = 1e30
    points[10:20, :3] = -3e38
    ctx.publish(to_rclpy_cloud(rclpy_header(stamp, "velodyne"), xyzi_array(points)))
    exp = ctx.lidar_only(stamp, points)
    assert (exp.labels[:20] == 0).all()
    return Sent(outputs=[exp], nonfinite=nonfinite(points))


def cloud_2m_points(ctx: Hostile) -> Sent:
    """Two million points in one message (a merged multi-LiDAR cloud): segmented like any other."""
    stamp = ctx.clock.next()
    rng = np.random.default_rng(6)
    n = 2_000_000
    points = np.c_[rng.uniform([-10, -10, -2], [10, 10, 2], (n, 3)), rng.uniform(0, 1, n)].astype(np.float32)
    ctx.publish(to_rclpy_cloud(rclpy_header(stamp, "velodyne"), xyzi_array(points)))
    return Sent(outputs=[ctx.lidar_only(stamp, points)])


def image_case(make_image: Callable[[int], Any]) -> Callable[[Hostile], Sent]:
    """A bad image with the cloud of the same stamp: the cloud is segmented without it."""
    def send(ctx: Hostile) -> Sent:
        stamp, points = ctx.clock.next(), synthetic_scan(7)
        info, _ = camera_msgs(stamp, synthetic_image(7))
        ctx.h.info_pub.publish(info)
        ctx.h.image_pub.publish(make_image(stamp))
        ctx.h.spin_for(0.3)
        ctx.publish(to_rclpy_cloud(rclpy_header(stamp, "velodyne"), xyzi_array(points)))
        return Sent(outputs=[ctx.lidar_only(stamp, points)], nonfinite=nonfinite(points))

    return send


def camera_info_case(**bad_info: Any) -> Callable[[Hostile], Sent]:
    """A refused CameraInfo, then a good image and cloud: the frame is segmented without the image."""
    def send(ctx: Hostile) -> Sent:
        stamp, points, image = ctx.clock.next(), synthetic_scan(8), synthetic_image(8)
        info, img = camera_msgs(stamp, image, **bad_info)
        ctx.h.info_pub.publish(info)
        ctx.h.spin_for(0.3)
        ctx.h.image_pub.publish(img)
        ctx.h.spin_for(0.3)
        ctx.publish(to_rclpy_cloud(rclpy_header(stamp, "velodyne"), xyzi_array(points)))
        return Sent(outputs=[ctx.lidar_only(stamp, points)], nonfinite=nonfinite(points))

    return send


def image_far_future(ctx: Hostile) -> Sent:
    stamp, points = ctx.clock.next(), synthetic_scan(9)
    info, img = camera_msgs(stamp + 3600 * S, synthetic_image(9))
    ctx.h.info_pub.publish(info)
    ctx.h.image_pub.publish(img)
    ctx.h.spin_for(0.3)
    ctx.publish(to_rclpy_cloud(rclpy_header(stamp, "velodyne"), xyzi_array(points)))
    return Sent(outputs=[ctx.lidar_only(stamp, points)], nonfinite=nonfinite(points))


def stamp_duplicate(ctx: Hostile) -> Sent:
    """The previous good frame's stamp again, other points: dropped, that stamp keeps its one output."""
    ctx.publish(to_rclpy_cloud(rclpy_header(ctx.last_good, "velodyne"), xyzi_array(synthetic_scan(10))))
    return Sent(no_output={ctx.last_good: 1})


def stamp_out_of_order(ctx: Hostile) -> Sent:
    stamp = ctx.last_good - S // 4  # never used: the clock ticks in 0.1 s
    ctx.publish(to_rclpy_cloud(rclpy_header(stamp, "velodyne"), xyzi_array(synthetic_scan(11))))
    return Sent(no_output={stamp: 0})


def stamp_loop_jump_back(ctx: Hostile) -> Sent:
    """A bag that loops: camera and LiDAR jump back 400000 s together and go on from there, fused."""
    stamp = ctx.clock.jump_to(100_000)
    points, image = synthetic_scan(12), synthetic_image(12)
    ctx.h.publish_camera(stamp, image)
    ctx.h.spin_for(0.3)
    ctx.h.publish_cloud(stamp, points)
    res = ctx.expect(points, image)
    return Sent(outputs=[Expected(stamp, points, res.labels, res.confidence, overlay=True)],
                nonfinite=nonfinite(points))


def stamp_far_future(ctx: Hostile) -> Sent:
    """A stamp a day ahead of the node's clock: segmented without the camera, and the following good
    frame (back on the sensor clock) is neither a jump back nor out of order."""
    stamp, points = time.time_ns() + 86400 * S, synthetic_scan(13)
    ctx.publish(to_rclpy_cloud(rclpy_header(stamp, "velodyne"), xyzi_array(points)))
    return Sent(outputs=[ctx.lidar_only(stamp, points)], nonfinite=nonfinite(points))


def gpu_oom(k: int) -> Callable[[Hostile], Sent]:
    """A frame that hits CUDA out-of-memory k times (the XKD_TEST_INJECT_OOM hook)."""
    def send(ctx: Hostile) -> Sent:
        stamp, points = ctx.clock.next(), synthetic_scan(14 + k)
        ctx.publish(to_rclpy_cloud(rclpy_header(stamp, f"xkd_test_oom_{k}"), xyzi_array(points)))
        if k >= 2:  # accepted for segmentation (its NaN points counted), then skipped
            return Sent(no_output={stamp: 0}, nonfinite=nonfinite(points))
        half = ctx.expect(np.ascontiguousarray(points[::2]), None)  # the retry: every second point
        labels = np.zeros(len(points), np.uint16)
        labels[::2] = half.labels
        confidence = np.zeros(len(points), np.float32)
        confidence[::2] = half.confidence
        return Sent(outputs=[Expected(stamp, points, labels, confidence, frame_id=f"xkd_test_oom_{k}")],
                    nonfinite=nonfinite(points))

    return send


@dataclass
class Case:
    send: Callable[[Hostile], Sent]
    counters: dict[str, int]  # exact deltas (skipped.* also add up to the `skipped` total)
    log: str | None  # a substring of the log line that names the problem; None: valid input, no warning


def bad(make: Callable[[int], Any], reason: str) -> Case:
    key = f"skipped.cloud_format.{reason}"
    return Case(skipped_cloud(make), {key: 1}, f"[{key}]")


CASES: dict[str, Case] = {
    # --- malformed clouds: skipped
    "cloud_point_step_too_small": bad(lambda s: raw_cloud(s, XYZI, 12, 10, bytes(120)), "bad_point_step"),
    "cloud_row_step_too_small": bad(lambda s: raw_cloud(s, XYZI, 16, 10, bytes(150), row_step=150),
                                    "bad_row_step"),
    "cloud_data_shorter_than_row_step": bad(lambda s: raw_cloud(s, XYZI, 16, 10, bytes(100)),
                                            "bad_data_length"),
    "cloud_missing_z": bad(lambda s: raw_cloud(s, XYZI[:2] + XYZI[3:], 16, 10, bytes(160)), "missing_field"),
    "cloud_int16_xyz": bad(lambda s: raw_cloud(s, [(n, 2 * i, INT16, 1) for i, n in enumerate("xyz")], 6, 10,
                                               bytes(60)), "bad_field_type"),
    "cloud_duplicate_field": bad(lambda s: raw_cloud(s, XYZI + [("x", 0, FLOAT32, 1)], 16, 10, bytes(160)),
                                 "bad_field"),
    "cloud_zero_points": bad(lambda s: raw_cloud(s, XYZI, 16, 0, b""), "empty"),
    # --- valid but unusual clouds: segmented
    "cloud_float64_xyz": Case(cloud_float64, {"cloud_layout_changes": 2}, "x:FLOAT64@0 y:FLOAT64@8"),
    "cloud_big_endian": Case(cloud_big_endian, {"cloud_layout_changes": 2}, "big-endian"),
    "cloud_organised_with_nan_padding": Case(cloud_organised, {"cloud_layout_changes": 2},
                                             "organised 6x900"),
    "cloud_nan_and_inf_points": Case(cloud_nan_inf, {}, None),
    "cloud_all_nan": Case(cloud_all_nan, {"clouds_all_nonfinite": 1}, "[clouds_all_nonfinite]"),
    "cloud_absurd_coordinates": Case(cloud_absurd_coordinates, {}, None),
    "cloud_2m_points": Case(cloud_2m_points, {}, None),
    "cloud_data_longer_than_row_step": bad(lambda s: raw_cloud(s, XYZI, 16, 10, bytes(161)),
                                           "bad_data_length"),
    # --- images and calibration: the cloud is segmented without the image
    "image_unsupported_encoding": Case(image_case(lambda s: raw_image(s, "16UC1", 64, 192, 384, 64 * 384)),
                                       {"image_format.unsupported_encoding": 1},
                                       "[image_format.unsupported_encoding]"),
    "image_step_shorter_than_row": Case(image_case(lambda s: raw_image(s, "rgb8", 64, 192, 500, 64 * 500)),
                                        {"image_format.bad_step": 1}, "[image_format.bad_step]"),
    "image_data_length_wrong": Case(image_case(lambda s: raw_image(s, "rgb8", 64, 192, 576, 64 * 576 - 5)),
                                    {"image_format.bad_data_length": 1}, "[image_format.bad_data_length]"),
    "image_size_not_camera_info": Case(
        image_case(lambda s: camera_msgs(s, np.zeros((2 * IMAGE_HW[0], IMAGE_HW[1], 3), np.uint8))[1]),
        {"camera_info.size_mismatch": 1}, "[camera_info.size_mismatch]"),
    "camera_info_zero_k": Case(camera_info_case(k=np.zeros((3, 3))),
                               {"camera_info.zero_k": 1, "camera_info.unusable": 1}, "[camera_info.zero_k]"),
    "camera_info_unsupported_distortion": Case(
        camera_info_case(distortion_model="fancy_lens", D=(0.1, 0.01)),
        {"camera_info.unsupported_distortion": 1, "camera_info.unusable": 1},
        "[camera_info.unsupported_distortion]"),
    "image_stamp_far_future": Case(image_far_future, {"sync.future": 1}, "[sync.future]"),
    # --- stamps
    "stamp_duplicate": Case(stamp_duplicate, {"skipped.stamp.duplicate": 1}, "[skipped.stamp.duplicate]"),
    "stamp_out_of_order": Case(stamp_out_of_order, {"skipped.stamp.out_of_order": 1},
                               "[skipped.stamp.out_of_order]"),
    "stamp_jump_back_bag_loop": Case(stamp_loop_jump_back, {"stamp.time_jump": 1, "sync.time_jump": 2},
                                     "[stamp.time_jump]"),
    "stamp_far_future": Case(stamp_far_future, {"stamp.future": 1, "stamp.time_jump": 0, "skipped": 0},
                             "[stamp.future]"),
    # --- GPU out of memory (simulated by the test hook)
    "gpu_oom_retried_on_half": Case(gpu_oom(1), {"out_of_memory": 1, "out_of_memory_subsampled": 1},
                                    "[out_of_memory]"),
    "gpu_oom_twice_skipped": Case(gpu_oom(2), {"out_of_memory": 1, "skipped.out_of_memory": 1},
                                  "[skipped.out_of_memory]"),
}


@pytest.mark.parametrize("case_id", list(CASES))
def test_hostile_input(hostile: Hostile, case_id: str) -> None:
    ctx, case = hostile, CASES[case_id]
    assert ctx.node.alive(), f"the node died before this case; log:\n{ctx.node.log_tail()}"
    ctx.wait_out_throttle([k for k in case.counters if k != "skipped"])
    # every output received so far is counted (the node counts a frame just after publishing it)
    before = ctx.diagnostics(at_least={"frames_out": len(ctx.h.clouds)})
    log_start = len(ctx.node.log_text())

    sent = case.send(ctx)
    for exp in sent.outputs:
        check_output(ctx, exp)
    good = ctx.good_frame(200 + list(CASES).index(case_id))
    for stamp, count in sent.no_output.items():  # the good frame came after: these were handled
        assert len(ctx.outputs_for(stamp)) == count, stamp
    for k in case.counters:
        ctx.warned_at[k] = time.monotonic()

    frames_out = int(before["frames_out"]) + len(sent.outputs) + 1
    after = ctx.diagnostics(at_least={"frames_out": frames_out})
    assert ctx.node.alive()

    def delta(key: str) -> int:
        return int(after.get(key, 0)) - int(before.get(key, 0))

    assert delta("frames_in") == sent.clouds + 1
    assert delta("frames_out") == len(sent.outputs) + 1
    assert delta("dropped") == 0
    assert delta("points_nonfinite") == sent.nonfinite + nonfinite(good.points)
    skipped = {k: v for k, v in case.counters.items() if k.startswith("skipped.")}
    assert delta("skipped") == sum(skipped.values())
    for key, want in case.counters.items():
        assert delta(key) == want, (key, before.get(key), after.get(key))
    if case.log is not None:
        def logged() -> bool:
            return case.log in ctx.node.log_text()[log_start:]

        assert ctx.h.spin_until(logged, 10.0, ctx.node), f"no log line with {case.log!r}:\n" \
                                                         f"{ctx.node.log_text()[log_start:]}"


# ----------------------------------------------------------------------------- start-up refusals


KINDS = ["missing", "truncated", "not_a_checkpoint", "bare_state_dict", "unknown_model_config_key",
         "weights_do_not_fit_config", "newer_format_version", "fewer_classes", "reordered_class_map"]


def run_node(tmp: Path, checkpoint: Path) -> subprocess.CompletedProcess:
    """The console script with this checkpoint; it must refuse to start."""
    params = write_overrides(tmp / "params.yaml", {"device": "cpu", "checkpoint": str(checkpoint)})
    return subprocess.run([SEGMENT_NODE, "--ros-args", "--params-file", str(params)], capture_output=True,
                          text=True, timeout=180)


def broken_checkpoints(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, words the refusal must contain besides the path)."""
    from model_fixtures import tiny_config

    from xkd_core.models.checkpoint import save_checkpoint
    from xkd_core.models.xmodel_kd import XModelKD

    good = tiny_checkpoint(tmp / "good.pt")
    ckpt = torch.load(good, weights_only=True)
    out: dict[str, tuple[Path, str]] = {"missing": (tmp / "missing.pt", "file not found")}

    truncated = tmp / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    out["truncated"] = (truncated, "cannot be read")
    text = tmp / "notes.pt"
    text.write_text("not a checkpoint\n")
    out["not_a_checkpoint"] = (text, "cannot be read")
    plain = tmp / "state_dict.pt"
    torch.save(ckpt["model"], plain)  # a bare state_dict: readable, but not an xkd checkpoint
    out["bare_state_dict"] = (plain, "missing keys")

    unknown = dict(ckpt, config={**ckpt["config"], "model": {**ckpt["config"]["model"], "voxel_sise": 0.1}})
    torch.save(unknown, tmp / "unknown_key.pt")
    out["unknown_model_config_key"] = (tmp / "unknown_key.pt", "incompatible model config")
    wrong = dict(ckpt, config={**ckpt["config"], "model": {**ckpt["config"]["model"], "fpn_dim": 16}})
    torch.save(wrong, tmp / "wrong_shapes.pt")
    out["weights_do_not_fit_config"] = (tmp / "wrong_shapes.pt", "weights do not fit")
    newer = dict(ckpt, format_version=99)
    torch.save(newer, tmp / "newer.pt")
    out["newer_format_version"] = (tmp / "newer.pt", "format_version 99")

    torch.manual_seed(0)
    cfg = tiny_config(num_classes=10)
    out["fewer_classes"] = (save_checkpoint(tmp / "ten_classes.pt", XModelKD.from_config(cfg), cfg,
                                            image_hw=IMAGE_HW), "another class map")
    swapped = list(ckpt["class_names"])
    swapped[1], swapped[2] = swapped[2], swapped[1]
    torch.save(dict(ckpt, class_names=swapped), tmp / "swapped.pt")
    out["reordered_class_map"] = (tmp / "swapped.pt", "another class map")
    return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    return broken_checkpoints(tmp_path_factory.mktemp("checkpoints"))


@pytest.mark.parametrize("kind", KINDS)
def test_bad_checkpoint_refused_at_start(tmp_path: Path, checkpoints: dict, kind: str) -> None:
    path, words = checkpoints[kind]
    result = run_node(tmp_path, path)
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if "refusing to start" in line]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "parameter 'checkpoint'" in lines[0] and str(path) in lines[0] and words in lines[0], lines[0]


# ----------------------------------------------------------------------------- the net under the checks


def test_unforeseen_exception_in_a_callback_is_contained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capfd: pytest.CaptureFixture) -> None:
    """An exception no check foresaw (here: forced inside the decoders) must not escape a subscription
    callback -- in rclpy that stops the executor, i.e. the node. It is counted and logged, and the
    next message is handled normally. (In-process node: the failure is injected with monkeypatch.)"""
    import rclpy

    from xkd_ros import segment_node
    from xkd_ros.node_process import ros_args

    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    params = write_overrides(tmp_path / "params.yaml", {"checkpoint": str(ckpt), "device": "cpu",
                                                        "cpu_threads": 1, "fuse_camera": True})
    context = rclpy.Context()
    rclpy.init(args=["test"], context=context)
    node = segment_node.SegmentNode(context=context, cli_args=ros_args([params]))
    published: list[Any] = []
    node.cloud_pub = type("Capture", (), {"publish": staticmethod(published.append)})()
    try:
        def boom(msg: Any) -> Any:
            raise RuntimeError("decoder bug")

        stamp, points = 7 * S, synthetic_scan(1)
        cloud = to_rclpy_cloud(rclpy_header(stamp, "velodyne"), xyzi_array(points))
        info, image = camera_msgs(stamp, synthetic_image(1))
        with monkeypatch.context() as m:
            for name in ("cloud_to_xyzi", "image_to_rgb", "camera_info_to_model"):
                m.setattr(segment_node, name, boom)
            node._on_camera_info(info)
            node._on_image(image)
            node._on_cloud(cloud)
        counts = node.stats.snapshot().counts
        assert counts["skipped.callback_error"] == 1 and counts["callback_error.image"] == 1
        assert counts["callback_error.camera_info"] == 1 and node.slot.take(timeout=0) is None
        err = capfd.readouterr().err
        assert "[skipped.callback_error] unexpected RuntimeError handling a cloud on /velodyne_points: " \
               "decoder bug" in err and "[callback_error.image]" in err

        node._on_cloud(to_rclpy_cloud(rclpy_header(stamp + S // 10, "velodyne"), xyzi_array(points)))
        node._process(node.slot.take(timeout=0))
        torch.set_num_threads(1)
        ref = Segmenter.from_checkpoint(ckpt, "cpu", fuse=True, max_range=100.0).segment(points)
        assert len(published) == 1 and header_ns(published[0].header) == stamp + S // 10
        np.testing.assert_array_equal(cloud_view(published[0]).reshape(-1)["label"], ref.labels)
    finally:
        node.close()
        node.destroy_node()
        context.try_shutdown()
