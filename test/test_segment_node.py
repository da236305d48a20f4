"""segment_node end to end over real Fast DDS: the node runs as its console script in a child process.

The labeled output is checked point by point against `Segmenter` run here on the same scan with the
same checkpoint (same thread count, so the floating-point work is identical).
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from node_fixtures import (
    IMAGE_HW,
    Harness,
    K,
    NodeProcess,
    T,
    node_params,
    synthetic_image,
    synthetic_scan,
    tiny_checkpoint,
    topics,
)

from xkd_core.classes import PALETTE_PACKED_RGB
from xkd_core.config import ConfigError
from xkd_core.data.frame import CameraView
from xkd_core.data.pairlog import list_pair_files, read_pair_file
from xkd_core.device import resolve_device
from xkd_core.inference import Segmenter, SegmentResult
from xkd_ros.image import image_to_rgb, to_rclpy_camera_info, to_rclpy_image
from xkd_ros.node_process import write_overrides
from xkd_ros.node_stats import NodeStats
from xkd_ros.pipeline import Reporter, segment_with_oom_retry
from xkd_ros.pointcloud import FLOAT32, UINT16, cloud_view, to_rclpy_cloud, xyzi_array
from xkd_ros.segment_node import LatestFrameSlot
from xkd_ros.stamp import header_ns, rclpy_header

pytestmark = pytest.mark.ros

S = 1_000_000_000  # ns per second
WAIT = 60.0  # generous: 2 shared CPU cores
_clock = iter(range(1000 * S, 10**6 * S, S // 10))


def next_stamp() -> int:
    """A 10 Hz sensor clock shared by the tests of one node: stamps only move forward, as live."""
    return next(_clock)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="module")
def reference(checkpoint: Path) -> Segmenter:
    return Segmenter.from_checkpoint(checkpoint, "cpu", fuse=True, max_range=100.0)


def expected(seg: Segmenter, points: np.ndarray, image: np.ndarray | None):
    """What the node must publish for this scan (camera view built exactly as the node builds it)."""
    torch.set_num_threads(1)  # the node runs with cpu_threads: 1
    views = None if image is None else [CameraView(image, K, T, "camera")]
    return seg.segment(points, views)


def prime(h: Harness, node: NodeProcess, with_camera: bool) -> dict[int, np.ndarray]:
    """Send frames until one comes back (with its overlay when the camera is on).

    A publisher seeing its subscriber does not mean the subscriber already sees the publisher: the
    first best-effort messages after discovery may be lost. Returns the scans sent, by stamp.
    """
    sent = {}
    for attempt in range(5):
        stamp, points = next_stamp(), synthetic_scan(900 + attempt)
        sent[stamp] = points
        if with_camera:
            h.publish_camera(stamp, synthetic_image(900 + attempt))
            h.spin_for(0.5)
        h.publish_cloud(stamp, points)
        def answered(stamp: int = stamp) -> bool:
            return h.output_for(stamp) is not None and (not with_camera or h.overlay_for(stamp) is not None)

        if h.spin_until(answered, 10.0, node):
            return sent
    raise AssertionError(f"segment_node never answered a frame; log:\n{node.log()}")


def start_node(tmp: Path, name: str, checkpoint: Path, remaps: dict[str, str] | None = None,
               overrides: dict | None = None) -> tuple[NodeProcess, Harness]:
    """The node with per-node topics; `remaps` (`-r from:=to`) also apply to the harness's topics."""
    tp = topics(name)
    params = {"checkpoint": str(checkpoint), "device": "cpu", "cpu_threads": 1, "fuse_camera": True,
              "max_range": 100.0, "diagnostics.period": 0.5, **node_params(name)}
    params.update(overrides or {})
    node = NodeProcess(write_overrides(tmp / f"{name}.yaml", params, name), tmp / f"{name}.log", name,
                       remaps)
    harness = Harness(f"{name}_harness", {k: (remaps or {}).get(v, v) for k, v in tp.items()})
    try:
        harness.wait_connected(node, with_camera=params.get("use_camera", True))
        harness.primed = prime(harness, node, with_camera=params.get("use_camera", True))
    except BaseException:
        harness.close()
        node.stop()
        raise
    return node, harness


@pytest.fixture(scope="module")
def camera_node(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path):
    node, harness = start_node(tmp_path_factory.mktemp("camera_node"), "xkd_cam", checkpoint)
    yield node, harness
    harness.close()
    rc = node.stop()
    assert rc == 0, f"segment_node exited with {rc} on SIGINT; log:\n{node.log()}"


def send_frame(h: Harness, node: NodeProcess, stamp: int, points: np.ndarray,
               image: np.ndarray | None) -> object:
    """Publish (image + info, then) the cloud and return the labeled cloud for that stamp."""
    if image is not None:
        h.publish_camera(stamp, image)
        h.spin_for(0.5)  # the image must be in the node's cache before the cloud asks for it
    h.publish_cloud(stamp, points)
    assert h.spin_until(lambda: h.output_for(stamp) is not None, WAIT, node), (
        f"no labeled cloud for stamp {stamp}; node alive={node.alive()}; log:\n{node.log()}")
    return h.output_for(stamp)


def assert_cloud_matches(msg, points: np.ndarray, ref, stamp: int) -> None:
    assert header_ns(msg.header) == stamp and msg.header.frame_id == "velodyne"
    assert msg.height == 1 and msg.width == len(points)
    fields = {f.name: (f.datatype, f.count) for f in msg.fields}
    assert fields["label"] == (UINT16, 1) and fields["rgb"] == (FLOAT32, 1)
    assert fields["confidence"] == (FLOAT32, 1)
    out = cloud_view(msg).reshape(-1)
    got_xyzi = np.stack([out[k] for k in ("x", "y", "z", "intensity")], axis=1)
    np.testing.assert_array_equal(got_xyzi, points)  # same points, same order, NaNs in place
    np.testing.assert_array_equal(out["label"], ref.labels)
    np.testing.assert_allclose(out["confidence"], ref.confidence, rtol=0, atol=1e-5)
    nan = ~np.isfinite(points[:, :3]).all(axis=1)
    assert nan.sum() > 0 and (out["label"][nan] == 0).all() and (out["confidence"][nan] == 0).all()
    assert (out["label"][~nan] > 0).all()  # every finite point in range got a real class
    np.testing.assert_array_equal(out["rgb"].view(np.uint32), PALETTE_PACKED_RGB[ref.labels].view(np.uint32))


def test_labels_per_point_match_in_process_segmenter(camera_node, reference: Segmenter) -> None:
    node, h = camera_node
    points, image = synthetic_scan(1), synthetic_image(1)
    stamp = next_stamp()
    msg = send_frame(h, node, stamp, points, image)
    ref = expected(reference, points, image)
    assert_cloud_matches(msg, points, ref, stamp)
    # The image was really used: the fused result differs from the LiDAR-only one on this scan ...
    lidar_only = expected(reference, points, None)
    assert (ref.labels != lidar_only.labels).any()
    # ... and the overlay for this frame shows label colours drawn over the camera image.
    assert h.spin_until(lambda: h.overlay_for(stamp) is not None, WAIT, node)
    overlay = image_to_rgb(h.overlay_for(stamp))
    assert overlay.shape == (*IMAGE_HW, 3)
    changed = (overlay != image).any(axis=2)
    assert 0.01 < changed.mean() < 0.99


def test_camera_stall_keeps_lidar_output(camera_node, reference: Segmenter) -> None:
    node, h = camera_node
    stamps = [next_stamp() for _ in range(7)]
    for i, stamp in enumerate(stamps):
        points = synthetic_scan(10 + i)
        image = synthetic_image(i) if i < 3 else None  # the camera goes silent after frame 2
        msg = send_frame(h, node, stamp, points, image)
        assert_cloud_matches(msg, points, expected(reference, points, image), stamp)
    h.spin_for(0.5)
    assert [h.overlay_for(s) is not None for s in stamps] == [True] * 3 + [False] * 4
    assert node.alive()


def test_bad_input_is_counted_and_next_frame_processed(camera_node, reference: Segmenter) -> None:
    from sensor_msgs.msg import Image, PointCloud2, PointField

    node, h = camera_node
    stamp = next_stamp()
    no_z = PointCloud2(header=rclpy_header(stamp, "velodyne"), height=1, width=2, point_step=8, row_step=16,
                       fields=[PointField(name="x", offset=0, datatype=FLOAT32, count=1),
                               PointField(name="y", offset=4, datatype=FLOAT32, count=1)])
    no_z.data = bytes(16)
    h.cloud_pub.publish(no_z)
    short = PointCloud2(header=rclpy_header(stamp + 1, "velodyne"), height=1, width=10, point_step=12,
                        row_step=120, fields=[PointField(name=n, offset=4 * i, datatype=FLOAT32, count=1)
                                              for i, n in enumerate("xyz")])
    short.data = bytes(60)  # half the promised bytes
    h.cloud_pub.publish(short)
    empty = to_rclpy_cloud(rclpy_header(stamp + 3, "velodyne"), xyzi_array(np.zeros((0, 4), np.float32)))
    h.cloud_pub.publish(empty)

    # An image in an encoding the node cannot decode (a depth image): found when the cloud of its stamp
    # wants it; the cloud is segmented without it.
    points = synthetic_scan(30)
    good = next_stamp()
    depth = Image(header=rclpy_header(good, "camera"), height=2, width=2, encoding="32FC1", step=8)
    depth.data = bytes(16)
    h.image_pub.publish(depth)
    h.spin_for(0.5)
    msg = send_frame(h, node, good, points, None)
    assert_cloud_matches(msg, points, expected(reference, points, None), good)
    assert h.output_for(stamp) is None and h.output_for(stamp + 1) is None and h.output_for(stamp + 3) is None

    # Calibration for another image size: the image cannot be used, the cloud is segmented without it.
    wrong = next_stamp()
    h.info_pub.publish(to_rclpy_camera_info(rclpy_header(wrong, "camera"), K, (2 * IMAGE_HW[0], IMAGE_HW[1])))
    h.spin_for(0.5)
    h.image_pub.publish(to_rclpy_image(rclpy_header(wrong, "camera"), synthetic_image(31)))
    points = synthetic_scan(31)
    msg = send_frame(h, node, wrong, points, None)
    assert_cloud_matches(msg, points, expected(reference, points, None), wrong)
    # Only NaN returns: still one labeled point each, all label 0.
    nans = np.full((50, 4), np.nan, np.float32)
    msg = send_frame(h, node, next_stamp(), nans, None)
    assert msg.width == 50 and (cloud_view(msg).reshape(-1)["label"] == 0).all()

    t = time.monotonic()
    assert h.spin_until(lambda: h.latest_diagnostics(node.name, t) is not None, WAIT, node)
    diag = h.latest_diagnostics(node.name, t)
    assert int(diag["skipped.cloud_format.missing_field"]) == 1
    assert int(diag["skipped.cloud_format.bad_data_length"]) == 1
    assert int(diag["skipped.cloud_format.empty"]) == 1
    assert int(diag["skipped"]) == 3
    cam = h.latest_diagnostics(node.name, t, status="camera cam")
    assert int(cam["image_format.unsupported_encoding"]) == 1
    assert int(cam["camera_info.size_mismatch"]) == 1
    assert cam["_level"] == "1"  # WARN: the camera had problems this period
    assert node.alive()
    assert "missing_field" in node.log() or "no 'z' field" in node.log()  # the skip was logged


def test_diagnostics_report_latency_rates_and_counters(camera_node) -> None:
    node, h = camera_node
    t0 = time.monotonic()
    assert h.spin_until(lambda: h.latest_diagnostics(node.name, t0) is not None, WAIT, node)
    before = h.latest_diagnostics(node.name, t0)
    cam_before = h.latest_diagnostics(node.name, t0, status="camera cam")
    for i in range(4):
        send_frame(h, node, next_stamp(), synthetic_scan(40 + i), synthetic_image(i))
    t1 = time.monotonic()
    assert h.spin_until(lambda: h.latest_diagnostics(node.name, t1) is not None, WAIT, node)
    diag = h.latest_diagnostics(node.name, t1)
    assert int(diag["frames_out"]) - int(before["frames_out"]) == 4
    assert int(diag["frames_in"]) - int(before["frames_in"]) == 4
    cam = h.latest_diagnostics(node.name, t1, status="camera cam")
    assert int(cam["sync.matched"]) - int(cam_before["sync.matched"]) == 4
    assert int(cam["used"]) - int(cam_before["used"]) == 4
    assert cam["extrinsics"] == "parameter"
    assert int(diag["dropped"]) == 0  # one frame at a time: the worker never had to drop one
    p50, p99 = float(diag["latency_p50_ms"]), float(diag["latency_p99_ms"])
    assert 0 < p50 <= p99 <= float(diag["latency_max_ms"])
    assert int(diag["latency_samples"]) == int(diag["frames_out"])
    assert float(diag["input_rate_hz"]) > 0 and float(diag["output_rate_hz"]) > 0
    assert diag["device"] == "cpu"

    # A burst faster than inference: every cloud is either segmented or dropped (counted), and the
    # newest one is always segmented. (5 = the node's input history depth: DDS keeps them all.)
    burst = [next_stamp() for _ in range(5)]
    for i, stamp in enumerate(burst):
        h.publish_cloud(stamp, synthetic_scan(45 + i))
    assert h.spin_until(lambda: h.output_for(burst[-1]) is not None, WAIT, node)
    t2 = time.monotonic()
    assert h.spin_until(lambda: h.latest_diagnostics(node.name, t2) is not None, WAIT, node)
    after = h.latest_diagnostics(node.name, t2)
    outputs = sum(h.output_for(s) is not None for s in burst)
    assert int(after["frames_in"]) - int(diag["frames_in"]) == 5
    assert int(after["frames_out"]) - int(diag["frames_out"]) == outputs
    assert int(after["dropped"]) - int(diag["dropped"]) == 5 - outputs


def test_max_range_changes_at_run_time(camera_node, checkpoint: Path) -> None:
    node, h = camera_node

    def set_double(name: str, value: float):
        return set_parameter(h, node, name, value)

    assert set_double("max_range", 15.0).successful
    refused = set_double("sync.slop", 0.1)
    assert not refused.successful and "read-only" in refused.reason
    assert not set_double("max_range", -1.0).successful  # out of range

    points = synthetic_scan(50)
    stamp = next_stamp()
    msg = send_frame(h, node, stamp, points, None)
    near = Segmenter.from_checkpoint(checkpoint, "cpu", fuse=True, max_range=15.0)
    ref = expected(near, points, None)
    labels = cloud_view(msg).reshape(-1)["label"]
    np.testing.assert_array_equal(labels, ref.labels)
    far = np.linalg.norm(np.nan_to_num(points[:, :3], nan=0.0), axis=1) > 15.0
    assert far.sum() > 100 and (labels[far] == 0).all()
    assert set_double("max_range", 100.0).successful


def test_filtered_cloud_and_latched_class_map(camera_node, reference: Segmenter) -> None:
    """Downstream outputs: the cloud without the ground classes, and the class map for late subscribers."""
    import json

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import String

    from xkd_core.classes import CLASS_NAMES, PALETTE_RGB

    node, h = camera_node
    points = synthetic_scan(90)
    stamp = next_stamp()
    labeled = cloud_view(send_frame(h, node, stamp, points, None)).reshape(-1)
    assert h.spin_until(lambda: h.output_for(stamp, h.filtered) is not None, WAIT, node)
    filtered = cloud_view(h.output_for(stamp, h.filtered)).reshape(-1)
    drop = [CLASS_NAMES.index(c) for c in ("unlabeled", "road", "parking", "sidewalk", "other-ground",
                                           "terrain")]
    keep = ~np.isin(labeled["label"], drop)
    assert 0 < keep.sum() < len(labeled)  # this scan has ground and obstacles
    np.testing.assert_array_equal(filtered, labeled[keep])  # the same records, in input order

    # The class map: published once at start, transient local, so a subscriber that comes late gets it.
    context = rclpy.Context()
    rclpy.init(context=context)
    late = rclpy.create_node("xkd_late_class_map", context=context)
    got: list[str] = []
    qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
    late.create_subscription(String, h.topics["class_map_out"], lambda m: got.append(m.data), qos)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(late)
    try:
        deadline = time.monotonic() + WAIT
        while not got and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
    finally:
        executor.shutdown()
        late.destroy_node()
        context.try_shutdown()
    assert got, "a late subscriber did not get the latched class map"
    classes = json.loads(got[0])["classes"]
    assert [c["name"] for c in classes] == list(CLASS_NAMES)
    assert [c["id"] for c in classes] == list(range(len(CLASS_NAMES)))
    assert [c["rgb"] for c in classes] == PALETTE_RGB.tolist()


def set_parameter(h: Harness, node: NodeProcess, name: str, value: float):
    from rcl_interfaces.msg import Parameter as ParameterMsg
    from rcl_interfaces.msg import ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    client = h.node.create_client(SetParameters, f"/{node.name}/set_parameters")
    assert client.wait_for_service(timeout_sec=WAIT)
    param = ParameterMsg(name=name, value=ParameterValue(type=ParameterType.PARAMETER_DOUBLE,
                                                         double_value=value))
    future = client.call_async(SetParameters.Request(parameters=[param]))
    assert h.spin_until(future.done, WAIT, node)
    h.node.destroy_client(client)
    return future.result().results[0]


def test_processing_time_goes_warn_then_error_while_it_stays_above(camera_node) -> None:
    node, h = camera_node
    defaults = {"diagnostics.processing_time_warn_ms": 100.0, "diagnostics.processing_time_error_s": 5.0}
    try:
        # every frame takes longer than 1 ms on this machine: a slow period is WARN ...
        assert set_parameter(h, node, "diagnostics.processing_time_warn_ms", 1.0).successful
        send_frame(h, node, next_stamp(), synthetic_scan(91), None)
        t = time.monotonic()
        assert h.spin_until(lambda: h.latest_diagnostics(node.name, t) is not None, WAIT, node)
        diag = h.latest_diagnostics(node.name, t)
        assert diag["_level"] == "1" and "processing time" in diag["_message"], diag
        assert float(diag["processing_time_max_ms_period"]) > 1.0
        # ... and ERROR once it has stayed above for processing_time_error_s
        assert set_parameter(h, node, "diagnostics.processing_time_error_s", 0.1).successful
        for i in range(3):
            send_frame(h, node, next_stamp(), synthetic_scan(92 + i), None)
        t = time.monotonic()
        assert h.spin_until(lambda: h.latest_diagnostics(node.name, t) is not None, WAIT, node)
        diag = h.latest_diagnostics(node.name, t)
        assert diag["_level"] == "2" and "processing time above 1 ms for" in diag["_message"], diag
    finally:
        for name, value in defaults.items():
            assert set_parameter(h, node, name, value).successful
    # back under the threshold: the next period with a frame is OK again
    send_frame(h, node, next_stamp(), synthetic_scan(95), None)
    t = time.monotonic()
    assert h.spin_until(lambda: (h.latest_diagnostics(node.name, t) or {}).get("_level") == "0", WAIT, node)


def test_lidar_only_mode_with_remapped_topics(tmp_path: Path, checkpoint: Path, reference: Segmenter) -> None:
    remaps = {"/xkd_lidar/cloud_in": "/remapped/points", "/xkd_lidar/cloud_out": "/remapped/labeled"}
    node, h = start_node(tmp_path, "xkd_lidar", checkpoint, remaps=remaps, overrides={"use_camera": False})
    try:
        assert h.topics["cloud_in"] == "/remapped/points"  # and the node answered there (start_node)
        assert h.image_pub.get_subscription_count() == 0  # the node does not even subscribe
        assert h.node.count_publishers(h.topics["overlay_out"]) == 0
        t = time.monotonic()
        assert h.spin_until(lambda: h.latest_diagnostics(node.name, t) is not None, WAIT, node)
        before = int(h.latest_diagnostics(node.name, t)["frames_out"])
        for i in range(2):
            stamp = next_stamp()
            points = synthetic_scan(60 + i)
            h.publish_camera(stamp, synthetic_image(i))  # ignored
            msg = send_frame(h, node, stamp, points, None)
            assert_cloud_matches(msg, points, expected(reference, points, None), stamp)
        t = time.monotonic()
        assert h.spin_until(lambda: h.latest_diagnostics(node.name, t) is not None, WAIT, node)
        diag = h.latest_diagnostics(node.name, t)
        assert int(diag["frames_out"]) == before + 2 and not any(k.startswith("sync.") for k in diag)
    finally:
        h.close()
        assert node.stop() == 0


def test_sigterm_flushes_pair_log(tmp_path: Path, checkpoint: Path, reference: Segmenter) -> None:
    log_dir = tmp_path / "pairs"
    node, h = start_node(tmp_path, "xkd_pairs", checkpoint, overrides={
        "log_pairs": True, "pair_log.dir": str(log_dir), "pair_log.every_n": 1, "pair_log.queue": 8})
    try:
        sent = {}
        for i in range(3):
            stamp = next_stamp()
            points, image = synthetic_scan(70 + i), synthetic_image(70 + i)
            msg = send_frame(h, node, stamp, points, image)
            ref = expected(reference, points, image)
            assert_cloud_matches(msg, points, ref, stamp)
            sent[stamp] = (points, ref.labels)
        assert h.spin_until(lambda: all(h.overlay_for(s) is not None for s in sent), WAIT, node)
    finally:
        h.close()
        node.signal(signal.SIGTERM)
    node.proc.wait(30)
    assert node.stop() == 0, node.log()
    samples = {s.stamp_ns: s for s in map(read_pair_file, list_pair_files(log_dir))}
    assert not list(log_dir.glob("*.tmp"))
    # Every frame segmented with its image is logged (pair_log_every_n: 1): the frames sent here and
    # the priming frame that came back with its overlay; earlier priming attempts may or may not have
    # reached the node.
    answered = max(h.primed)
    assert set(sent) | {answered} <= set(samples) <= set(sent) | set(h.primed)
    for stamp, (points, labels) in sent.items():
        sample = samples[stamp]
        np.testing.assert_array_equal(sample.points, points)
        np.testing.assert_array_equal(sample.pred_labels, labels)
        assert len(sample.pairs.point) > 0 and sample.views[0].image.shape == (*IMAGE_HW, 3)


# ----------------------------------------------------------------------------- in-process pieces


class FakeSegmenter:
    """Raises CUDA out-of-memory for its first `ooms` calls, then labels every point 3."""

    def __init__(self, ooms: int) -> None:
        self.ooms = ooms
        self.calls: list[int] = []

    def segment(self, points: np.ndarray, views=None, exclude=None) -> SegmentResult:
        self.calls.append(len(points))
        if self.ooms:
            self.ooms -= 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return SegmentResult(np.full(len(points), 3, np.uint16), np.full(len(points), 0.5, np.float32))


def test_out_of_memory_retries_once_on_every_second_point_then_skips() -> None:
    points = synthetic_scan(80)
    stats = NodeStats()
    lines: list[str] = []
    report = Reporter(stats, lambda level, line: lines.append(line))
    labels, conf = segment_with_oom_retry(FakeSegmenter(0), points, None, None, report)
    assert (labels == 3).all() and stats.snapshot().counts == {}

    seg = FakeSegmenter(1)
    labels, conf = segment_with_oom_retry(seg, points, None, None, report)
    assert seg.calls == [len(points), (len(points) + 1) // 2]
    assert (labels[::2] == 3).all() and (labels[1::2] == 0).all() and (conf[1::2] == 0).all()
    assert len(labels) == len(points)  # still one label per input point

    assert segment_with_oom_retry(FakeSegmenter(2), points, None, None, report) is None
    assert stats.snapshot().counts == {"out_of_memory": 2, "out_of_memory_subsampled": 1,
                                       "skipped.out_of_memory": 1}
    assert lines[0].startswith("[out_of_memory] CUDA out of memory on a frame of")
    assert lines[-1].startswith("[skipped.out_of_memory]")


def test_latest_frame_slot_keeps_only_the_newest() -> None:
    slot = LatestFrameSlot()
    assert slot.put("a") is False
    assert slot.put("b") is True  # "a" was still waiting: dropped
    assert slot.take(timeout=0) == "b"
    assert slot.take(timeout=0.01) is None
    got = []
    worker = threading.Thread(target=lambda: got.append(slot.take()))
    worker.start()
    slot.put("c")
    worker.join(10)
    assert got == ["c"]
    worker = threading.Thread(target=lambda: got.append(slot.take()))
    worker.start()
    slot.close()  # wakes a worker blocked without a timeout
    worker.join(10)
    assert not worker.is_alive() and got == ["c", None]


def test_cuda_without_a_gpu_is_refused() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert resolve_device("auto").type == "cpu" and resolve_device("cpu").type == "cpu"
    with pytest.raises(ConfigError, match="'cuda' requested but no CUDA GPU"):
        resolve_device("cuda")


def test_an_executor_error_after_shutdown_is_a_stop_not_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGINT can shut the context down while `rclpy.spin` builds its wait set; rclpy then raises RCLError
    ("the given context is not valid"), seen as `executor failed` and exit status 1 on a clean stop. An
    error raised while the context is still valid stays a failure."""
    import rclpy
    from rclpy.context import Context

    from xkd_ros import segment_node

    class FakeNode:
        def __init__(self, context: Context) -> None:
            self.context, self.executor_failed, self.stopped = context, False, False

        def stop(self) -> None:
            self.stopped = True

        def get_logger(self):
            return type("Logger", (), {"fatal": lambda self, msg: None})()

    def raising(_node) -> None:
        raise RuntimeError("failed to initialize wait set: the given context is not valid")

    monkeypatch.setattr(segment_node.rclpy, "spin", raising)
    for shut_down in (True, False):
        context = Context()
        rclpy.init(context=context)
        try:
            if shut_down:
                rclpy.shutdown(context=context)
            node = FakeNode(context)
            segment_node.spin(node)
            assert node.stopped and node.executor_failed is (not shut_down)
        finally:
            rclpy.try_shutdown(context=context)
