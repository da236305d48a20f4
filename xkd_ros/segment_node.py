"""`segment_node`: live LiDAR semantic segmentation with the xModel-KD model.

Subscribes to a PointCloud2 (and optionally an Image + CameraInfo), publishes the labeled cloud
(x, y, z, intensity, label, rgb, confidence; same header, one output point per input point in
input order), an optional overlay image and `/diagnostics`.

Threads: an executor thread runs the subscription callbacks, which only convert and enqueue, and
the diagnostics timer; the main thread runs inference on the newest frame only (a frame still
waiting when a newer one arrives is dropped and counted), so a slow model never queues up latency
and never blocks the middleware. Bad input of any kind is logged (throttled per problem, each line
starting with `[<counter>]`), counted and skipped; `docs/reliability.md` lists every case and what
the node does with it.

Input policy in short: malformed clouds are skipped (`skipped.cloud_format.<reason>`); valid but
unusual clouds (float64, big-endian, organised, NaN returns, millions of points) are segmented, an
organised cloud into an organised output of the same height and width. Cloud stamps go through
`xkd_ros.stamp.StampGuard`: duplicates and out-of-order scans are skipped (`skipped.stamp.<reason>`),
a jump back of more than 1 s (a looping bag) is accepted and counted (`stamp.time_jump`; the
synchronizers reset themselves), a stamp more than 10 s ahead of the node's clock is segmented
without the camera and counted (`stamp.future`). A refused CameraInfo invalidates the calibration
until a good one arrives: frames are segmented without the image meanwhile (`camera_info.unusable`).

An exception that escapes a subscription callback anyway (a case no check foresaw) is caught,
counted (`skipped.callback_error`, `callback_error.image`, `callback_error.camera_info`) and logged
as an error, instead of stopping the executor.

Diagnostics (`/diagnostics`, status `<node>: segmentation`): `latency_p50_ms` / `latency_p99_ms` /
`latency_max_ms` (cloud callback entered -> labeled cloud published, last 1000 frames),
`input_rate_hz` / `output_rate_hz` (last 5 s), `frames_in`, `frames_out`, `dropped` (replaced while
waiting for the worker), `skipped` (total) and per reason `skipped.cloud_format.<reason>`,
`skipped.out_of_memory`, `skipped.inference_error`; images and calibration refused per reason
(`image_format.<reason>`, `camera_info.<reason>`), the synchronizer's `sync.<reason>` counters,
`out_of_memory` (retried), `out_of_memory_subsampled`, `tf_fallback`, `stamp.time_jump`,
`stamp.future`, `points_nonfinite` (points sent back with label 0), `clouds_all_nonfinite`,
`cloud_layout_changes`, the pair logger's `pair_log.<counter>`, and the resource gauges
`queue.waiting_frame` (0/1), `queue.image_cache`, `queue.sync_pending`, `process.rss_mb`,
`process.threads`.

Test hook: with the environment variable `XKD_TEST_INJECT_OOM=1` (never set it in production), a
cloud whose `frame_id` is `xkd_test_oom_<k>` makes its first `k` segmentation attempts raise CUDA
out-of-memory, so the OOM path runs in the real node on a machine without a GPU.

`xkd_ros.bag_eval.InProcessNode` drives this node synchronously through `_on_cloud`, `_on_image`,
`_on_camera_info`, `slot`, `_process`, `_publish_diagnostics`, `cloud_pub` and `diag_pub`: keep them.

Run: `segment_node --ros-args --params-file config/segment.yaml [-p name:=value] [-r from:=to]`.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header

from xkd_core.classes import CLASS_NAMES
from xkd_core.config import ConfigError
from xkd_core.data.frame import CameraView
from xkd_core.data.pairlog import PairLogWriter, PairSample
from xkd_core.geometry.projection import point_pixel_pairs
from xkd_core.overlay import draw_label_overlay
from xkd_ros.fastdds import fastdds_profile_warning
from xkd_ros.image import (
    CameraInfoError,
    CameraModel,
    ImageFormatError,
    camera_info_to_model,
    image_to_rgb,
    to_camera_view,
    to_rclpy_image,
    undistort,
)
from xkd_ros.node_stats import LogThrottle, NodeStats
from xkd_ros.pointcloud import CloudFormatError, cloud_to_xyzi, labeled_cloud_array, to_rclpy_cloud
from xkd_ros.segment_params import (
    SegmentNodeConfig,
    config_from_values,
    current_values,
    declare_parameters,
    lidar_to_camera,
    qos_profile,
    resolve_checkpoint,
)
from xkd_ros.stamp import DUPLICATE, FUTURE, NS_PER_S, OUT_OF_ORDER, TIME_JUMP, StampGuard, header_ns
from xkd_ros.sync import ApproximateTimeSynchronizer, NearestImageCache
from xkd_ros.transform import transform_msg_to_matrix

_LOG_EVERY_S = 5.0  # repeated warnings about one problem: at most one line per this many seconds
_JUMP_BACK_S = 1.0  # a cloud stamp this much older than the last one is a time jump (looping bag)
_MAX_FUTURE_S = 10.0  # a cloud stamp this much ahead of the node's clock is counted as future

#: The fault-injection test hook (see the module docstring); off unless this variable is "1".
OOM_HOOK_ENV = "XKD_TEST_INJECT_OOM"
OOM_HOOK_FRAME_PREFIX = "xkd_test_oom_"


@dataclass
class CameraFrame:
    """An image converted at arrival (the calibration is taken when the frame is processed)."""

    rgb: np.ndarray  # (H, W, 3) uint8, as received (undistorted later, only if it is used)
    frame_id: str
    stamp_ns: int


@dataclass
class LidarFrame:
    """One cloud waiting for the worker."""

    msg: PointCloud2  # kept for its header (and it owns the buffer `xyzi` was read from)
    xyzi: np.ndarray  # (N, 4) float32
    received: float  # time.monotonic() when the callback started: latency is measured from here
    camera: CameraFrame | None


class LatestFrameSlot:
    """A one-frame mailbox: `put` replaces whatever is waiting, `take` blocks for the next frame.

    Keeping only the newest frame bounds latency when inference is slower than the sensor: an old
    scan is worth less than the current one, so it is dropped (and the caller counts it).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._frame: Any = None
        self._closed = False

    def put(self, frame: Any) -> bool:
        """Offer a frame; True when it replaced one that was still waiting."""
        with self._cond:
            replaced = self._frame is not None
            self._frame = frame
            self._cond.notify()
            return replaced

    def waiting(self) -> bool:
        """True while a frame waits for the worker (a diagnostics gauge)."""
        with self._cond:
            return self._frame is not None

    def take(self, timeout: float | None = None) -> Any:
        """The waiting frame (removing it), or None after `timeout` or once closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._frame is not None or self._closed, timeout)
            frame, self._frame = self._frame, None
            return frame

    def close(self) -> None:
        """Wake and release the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is usable, else 'cpu'; 'cuda' without a GPU is a ConfigError."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("parameter 'device' is 'cuda' but no CUDA GPU is available (use 'auto' or 'cpu')")
    return device


def segment_with_oom_retry(segmenter: Any, points: np.ndarray, views: list[CameraView] | None,
                           stats: NodeStats, warn: Callable[[str, str], None] | None = None,
                           ) -> tuple[np.ndarray, np.ndarray] | None:
    """(labels, confidence) for every point, surviving one CUDA out-of-memory.

    On OOM the cache is emptied and the frame retried once with every second point; the points left
    out get label 0 and confidence 0 (not segmented). A second OOM skips the frame (None). Both
    are counted: `out_of_memory` and `skipped.out_of_memory`, and reported through
    `warn(counter, text)` when given.
    """
    n = points.shape[0]
    try:
        res = segmenter.segment(points, views)
        return res.labels, res.confidence
    except torch.cuda.OutOfMemoryError as exc:
        stats.count("out_of_memory")
        if warn is not None:
            warn("out_of_memory", f"CUDA out of memory on a frame of {n} points ({_first_line(exc)}): "
                                  "retrying on every second point, the others get label 0")
    torch.cuda.empty_cache()
    keep = np.arange(0, n, 2)
    try:
        res = segmenter.segment(np.ascontiguousarray(points[keep]), views)
    except torch.cuda.OutOfMemoryError as exc:
        torch.cuda.empty_cache()
        stats.count("skipped.out_of_memory")
        if warn is not None:
            warn("skipped.out_of_memory", f"CUDA out of memory again on {len(keep)} of {n} points "
                                          f"({_first_line(exc)}): frame skipped")
        return None
    labels = np.zeros(points.shape[0], dtype=np.uint16)
    confidence = np.zeros(points.shape[0], dtype=np.float32)
    labels[keep] = res.labels
    confidence[keep] = res.confidence
    stats.count("out_of_memory_subsampled")
    return labels, confidence


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class InjectedOutOfMemory:
    """The `XKD_TEST_INJECT_OOM` test hook: a segmenter whose next `k` calls raise CUDA OOM.

    `arm(frame_id)` sets `k` from a frame id `xkd_test_oom_<k>` (0 for any other id), so a test picks
    per message whether the frame is retried (k=1) or skipped (k=2); the real `segment` runs after.
    """

    def __init__(self, segmenter: Any) -> None:
        self.segmenter = segmenter
        self.left = 0

    def arm(self, frame_id: str) -> InjectedOutOfMemory:
        suffix = frame_id[len(OOM_HOOK_FRAME_PREFIX):] if frame_id.startswith(OOM_HOOK_FRAME_PREFIX) else ""
        self.left = int(suffix) if suffix.isdigit() else 0
        return self

    def segment(self, points: np.ndarray, views: list[CameraView] | None = None) -> Any:
        if self.left > 0:
            self.left -= 1
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (injected by {OOM_HOOK_ENV}=1 for "
                                              f"{len(points)} points)")
        return self.segmenter.segment(points, views)


class SegmentNode(Node):
    """The live segmentation node (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("segment_node", allow_undeclared_parameters=False,
                         automatically_declare_parameters_from_overrides=False, **kwargs)
        self.cfg: SegmentNodeConfig = declare_parameters(self)
        self.add_on_set_parameters_callback(self._validate_parameter_change)
        self.add_post_set_parameters_callback(self._apply_parameter_change)
        cfg = self.cfg
        checkpoint = resolve_checkpoint(cfg.checkpoint)
        self.checkpoint_name = checkpoint.name
        self.device = resolve_device(cfg.device)
        self.T_param = lidar_to_camera(cfg.extrinsics.lidar_to_camera)
        self.stats = NodeStats()
        self._throttle = LogThrottle(_LOG_EVERY_S)
        self.stamp_guard = StampGuard(jump_back_s=_JUMP_BACK_S, max_future_s=_MAX_FUTURE_S)
        self._cloud_layout: tuple | None = None
        self._process_info = psutil.Process()

        if self.device == "cpu" and cfg.cpu_threads > 0:
            torch.set_num_threads(cfg.cpu_threads)
        self.get_logger().info(f"loading {checkpoint} on {self.device} (fp16={cfg.fp16}, "
                               f"backend={cfg.sparse_backend}, fuse_camera={cfg.fuse_camera})")
        self.segmenter = load_segmenter(cfg, str(checkpoint), self.device)
        if cfg.fuse_camera and not self.segmenter.fuse:
            self.get_logger().warning(f"fuse_camera is true but {checkpoint.name} has no camera branch: "
                                      "LiDAR branch only")
        t0 = time.monotonic()
        self.segmenter.warmup()
        self.get_logger().info(f"model warm-up done in {time.monotonic() - t0:.2f} s")
        self._oom_hook: InjectedOutOfMemory | None = None
        if os.environ.get(OOM_HOOK_ENV) == "1":
            self._oom_hook = InjectedOutOfMemory(self.segmenter)
            self.get_logger().warning(f"test hook {OOM_HOOK_ENV}=1 is on: clouds with frame_id "
                                      f"{OOM_HOOK_FRAME_PREFIX}<k> get k simulated CUDA out-of-memory errors")

        self.tf_buffer = self._make_tf_buffer() if cfg.use_camera and cfg.extrinsics.use_tf else None
        self.pair_logger = self._make_pair_logger() if cfg.log_pairs and cfg.use_camera else None
        if cfg.log_pairs and not cfg.use_camera:
            self.get_logger().warning("log_pairs is true but use_camera is false: nothing to log")

        out_qos = qos_profile(cfg.qos.output)
        in_qos = qos_profile(cfg.qos.input)
        self.cloud_pub = self.create_publisher(PointCloud2, cfg.topics.cloud_out, out_qos)
        self.overlay_pub = (self.create_publisher(Image, cfg.topics.overlay_out, out_qos)
                            if cfg.use_camera else None)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        self._camera_lock = threading.Lock()
        self._camera_model: CameraModel | None = None
        self._camera_error: CameraInfoError | None = None  # why the latest CameraInfo was refused
        self._last_image_time: float | None = None  # monotonic arrival of the newest image
        self._frames_with_image = 0
        self.image_cache: NearestImageCache | None = None
        self.synchronizer: ApproximateTimeSynchronizer | None = None
        if cfg.use_camera:
            if cfg.sync_policy == "nearest":
                self.image_cache = NearestImageCache(slop_s=cfg.sync_slop, max_age_s=cfg.max_image_age,
                                                     capacity=cfg.sync_queue)
            else:
                self.synchronizer = ApproximateTimeSynchronizer(cfg.sync_queue, cfg.sync_slop, 2,
                                                                self._on_synchronized)
            self.create_subscription(Image, cfg.topics.image_in, self._on_image, in_qos)
            self.create_subscription(CameraInfo, cfg.topics.camera_info_in, self._on_camera_info, in_qos)
        self.create_subscription(PointCloud2, cfg.topics.cloud_in, self._on_cloud, in_qos)
        self._reported: dict[str, int] = {}
        self.create_timer(cfg.diagnostics_period, self._publish_diagnostics)

        self.slot = LatestFrameSlot()
        self._running = True
        self.executor_failed = False
        note = fastdds_profile_warning(rclpy.get_rmw_implementation_identifier(), os.environ)
        if note:
            self.get_logger().warning(note)
        self.get_logger().info(
            f"segmenting {self.resolve_topic_name(cfg.topics.cloud_in)} -> "
            f"{self.resolve_topic_name(cfg.topics.cloud_out)}"
            + (f" with camera {self.resolve_topic_name(cfg.topics.image_in)} ({cfg.sync_policy})"
               if cfg.use_camera else " (LiDAR only)"))

    # ------------------------------------------------------------------ parameters at run time
    def _validate_parameter_change(self, params: list[Parameter]) -> SetParametersResult:
        try:
            config_from_values(current_values(self, {p.name: p.value for p in params}))
        except ConfigError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    def _apply_parameter_change(self, params: list[Parameter]) -> None:
        self.cfg = config_from_values(current_values(self))
        self.segmenter.max_range = self.cfg.max_range or None
        self.get_logger().info("parameters changed: " + ", ".join(f"{p.name}={p.value}" for p in params))

    # ------------------------------------------------------------------ set-up helpers
    def _make_tf_buffer(self) -> Any:
        try:
            from tf2_ros import Buffer, TransformListener
        except ImportError:
            self.get_logger().warning("extrinsics.use_tf is true but tf2_ros is not installed: "
                                      "using extrinsics.lidar_to_camera")
            return None
        buffer = Buffer()
        self._tf_listener = TransformListener(buffer, self, spin_thread=False)
        return buffer

    def _make_pair_logger(self) -> PairLogWriter:
        cfg = self.cfg
        try:
            writer = PairLogWriter(cfg.pair_log_dir, max_queue=cfg.pair_log_queue,
                                   disk_budget_bytes=cfg.pair_log_disk_budget_mb * 1024 * 1024,
                                   policy=cfg.pair_log_policy, every_n=cfg.pair_log_every_n,
                                   min_interval_s=cfg.pair_log_min_interval)
        except OSError as exc:
            raise ConfigError(f"parameter 'pair_log_dir': {exc}") from exc
        self.get_logger().info(f"logging cross-modal pairs to {writer.root}")
        return writer

    # ------------------------------------------------------------------ callbacks: convert + enqueue
    def _warn(self, key: str, text: str, error: bool = False) -> None:
        """A warning (or error) about problem `key` (its diagnostics counter), throttled per problem."""
        show, held = self._throttle.ready(key)
        if show:
            line = f"[{key}] {text}" + (f" ({held} more since the last report)" if held else "")
            logger = self.get_logger()
            (logger.error if error else logger.warning)(line)

    def _guarded(self, what: str, key: str, handler: Callable[[Any], None], msg: Any) -> None:
        """Run a subscription callback so that nothing escapes it: an exception there would stop the
        executor, i.e. the node. Every refusal has its own reason; this is the net under them."""
        try:
            handler(msg)
        except Exception as exc:  # noqa: BLE001 - one bad message must not kill the node
            self.stats.count(key)
            self._warn(key, f"unexpected {type(exc).__name__} handling {what}: {exc}; message dropped "
                            "(please report: it should have been refused with a reason)", error=True)

    def _on_cloud(self, msg: PointCloud2) -> None:
        self._guarded(f"a cloud on {self.cfg.topics.cloud_in}", "skipped.callback_error", self._cloud, msg)

    def _on_image(self, msg: Image) -> None:
        self._guarded(f"an image on {self.cfg.topics.image_in}", "callback_error.image", self._image, msg)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self._guarded(f"camera info on {self.cfg.topics.camera_info_in}", "callback_error.camera_info",
                      self._camera_info, msg)

    def _cloud(self, msg: PointCloud2) -> None:
        received = time.monotonic()
        self.stats.frame_in()
        topic = self.cfg.topics.cloud_in
        try:
            xyzi = cloud_to_xyzi(msg)
        except CloudFormatError as exc:
            key = f"skipped.cloud_format.{exc.reason}"
            self.stats.count(key)
            self._warn(key, f"skipping cloud on {topic}: {exc}")
            return
        n = xyzi.shape[0]
        if n == 0:
            self.stats.count("skipped.cloud_format.empty")
            self._warn("skipped.cloud_format.empty", f"skipping an empty cloud on {topic} "
                                                     f"({int(msg.height)}x{int(msg.width)} points)")
            return
        self._note_layout(msg)
        stamp = header_ns(msg.header)
        check = self.stamp_guard.check(stamp, self.get_clock().now().nanoseconds)
        if not check.accepted:
            key = f"skipped.stamp.{check.verdict}"
            self.stats.count(key)
            what = {DUPLICATE: "repeats the previous cloud's stamp",
                    OUT_OF_ORDER: f"is {-check.delta_ns / NS_PER_S:.3f} s older than the previous cloud"}
            self._warn(key, f"skipping cloud on {topic}: stamp {stamp / NS_PER_S:.6f} s "
                            f"{what[check.verdict]} (stale or re-sent scan)")
            return
        nonfinite = n - int(np.count_nonzero(np.isfinite(xyzi).all(axis=1)))
        if nonfinite:  # NaN returns are ordinary driver output: counted (label 0), logged only if all
            self.stats.count("points_nonfinite", nonfinite)
            if nonfinite == n:
                self.stats.count("clouds_all_nonfinite")
                self._warn("clouds_all_nonfinite", f"cloud on {topic} has no finite point ({n} NaN/inf): "
                                                   "published with label 0 everywhere")
        if check.verdict == TIME_JUMP:
            self.stats.count("stamp.time_jump")
            back = -check.delta_ns / NS_PER_S
            self._warn("stamp.time_jump", f"cloud stamps on {topic} jumped back {back:.3f} s (looping bag or "
                                          "clock reset): starting over from this stamp, camera "
                                          "synchronization reset")
        elif check.verdict == FUTURE:
            # No image can match a wild stamp, and it must not disturb the synchronizer's clock.
            self.stats.count("stamp.future")
            ahead = check.delta_ns / NS_PER_S
            self._warn("stamp.future", f"cloud on {topic} is stamped {ahead:.1f} s ahead of this node's "
                                       "clock (check the sensor's time sync): segmented without the camera")
            self._enqueue(LidarFrame(msg, xyzi, received, None))
            return
        if self.synchronizer is not None and self._camera_alive():
            self.synchronizer.add(0, stamp, LidarFrame(msg, xyzi, received, None))
            return
        camera = None
        if self.image_cache is not None:
            camera = self.image_cache.match(stamp).item  # the cache counts the reasons
        elif self.synchronizer is not None:
            self.stats.count("sync.camera_stalled")
        self._enqueue(LidarFrame(msg, xyzi, received, camera))

    def _note_layout(self, msg: PointCloud2) -> None:
        """Log the cloud layout when it first arrives and whenever it changes (what the node decodes)."""
        organised = int(msg.height) > 1
        fields = tuple((f.name, int(f.offset), int(f.datatype), int(f.count)) for f in msg.fields)
        layout = (fields, int(msg.point_step), bool(msg.is_bigendian), organised)
        if layout == self._cloud_layout:
            return
        self._cloud_layout = layout
        self.stats.count("cloud_layout_changes")
        names = {1: "INT8", 2: "UINT8", 3: "INT16", 4: "UINT16", 5: "INT32", 6: "UINT32", 7: "FLOAT32",
                 8: "FLOAT64"}
        desc = " ".join(f"{n}:{names.get(d, d)}@{o}" + (f"x{c}" if c > 1 else "") for n, o, d, c in fields)
        shape = f"organised {int(msg.height)}x{int(msg.width)}" if organised else "unorganised"
        self.get_logger().info(f"cloud layout on {self.cfg.topics.cloud_in}: {desc}, point_step "
                               f"{int(msg.point_step)}, {'big' if msg.is_bigendian else 'little'}-endian, "
                               f"{shape}")

    def _camera_alive(self) -> bool:
        """In approximate mode a silent camera must not stop the LiDAR output: past `max_image_age`
        without any image, clouds are segmented on their own."""
        last = self._last_image_time
        return last is not None and time.monotonic() - last <= max(self.cfg.max_image_age, 1.0)

    def _on_synchronized(self, frame: LidarFrame, camera: CameraFrame) -> None:
        frame.camera = camera
        self._enqueue(frame)

    def _enqueue(self, frame: LidarFrame) -> None:
        if self.slot.put(frame):
            self.stats.count("dropped")

    def _image(self, msg: Image) -> None:
        self._last_image_time = time.monotonic()
        try:
            rgb = image_to_rgb(msg)
        except ImageFormatError as exc:
            key = f"image_format.{exc.reason}"
            self.stats.count(key)
            self._warn(key, f"skipping image on {self.cfg.topics.image_in}: {exc}")
            return
        stamp = header_ns(msg.header)
        camera = CameraFrame(rgb, msg.header.frame_id, stamp)
        if self.image_cache is not None:
            if not self.image_cache.push(stamp, camera):  # the cache counts what it refuses
                self._warn("sync.future", f"skipping image on {self.cfg.topics.image_in}: stamp "
                                          f"{stamp / NS_PER_S:.6f} s is more than "
                                          f"{self.image_cache.max_future_ns / NS_PER_S:.1f} s after the "
                                          "newest cloud (camera clock?)")
        elif self.synchronizer is not None:
            self.synchronizer.add(1, stamp, camera)

    def _camera_info(self, msg: CameraInfo) -> None:
        try:
            model = camera_info_to_model(msg)
        except CameraInfoError as exc:
            key = f"camera_info.{exc.reason}"
            self.stats.count(key)
            self._warn(key, f"refusing camera info on {self.cfg.topics.camera_info_in}: {exc}; images are "
                            "not used until a valid one arrives")
            with self._camera_lock:  # a calibration that changed into garbage must not be used stale
                self._camera_model, self._camera_error = None, exc
            return
        with self._camera_lock:
            self._camera_model, self._camera_error = model, None

    # ------------------------------------------------------------------ worker: inference + publish
    def run(self) -> None:
        """Segment the newest waiting frame, again and again, until `stop()` or shutdown.

        `main` calls this on the main thread while the executor spins in another one: measured on
        the CPU, the sparse convolutions run about 1.5x slower when called from a thread that
        Python created (torch's intra-op parallelism is not used there).
        """
        while self._running and self.context.ok():
            frame = self.slot.take(timeout=0.5)
            if frame is None:
                continue
            try:
                self._process(frame)
            except Exception as exc:  # noqa: BLE001 - one bad frame must not kill the node
                if not self.context.ok():
                    break  # shut down mid-frame: the publisher is gone, nothing to report
                self.stats.count("skipped.inference_error")
                self._warn("skipped.inference_error", f"frame failed: {type(exc).__name__}: {exc}",
                           error=True)

    def _process(self, frame: LidarFrame) -> None:
        cfg = self.cfg
        xyzi = frame.xyzi
        view = self._camera_view(frame)
        views = [view] if (view is not None and cfg.fuse_camera) else None
        segmenter = self.segmenter
        if self._oom_hook is not None:
            segmenter = self._oom_hook.arm(frame.msg.header.frame_id)
        out = segment_with_oom_retry(segmenter, xyzi, views, self.stats, self._warn)
        if out is None:
            return
        labels, confidence = out
        cloud = to_rclpy_cloud(frame.msg.header, labeled_cloud_array(xyzi, labels, confidence))
        height, width = int(frame.msg.height), int(frame.msg.width)
        if height > 1 and height * width == xyzi.shape[0]:  # organised in, organised out (row-major)
            cloud.height, cloud.width, cloud.row_step = height, width, width * cloud.point_step
        self.cloud_pub.publish(cloud)
        self.stats.frame_out(time.monotonic() - frame.received)

        if view is None:
            return
        self._frames_with_image += 1
        if (self.overlay_pub is not None and cfg.publish_overlay
                and self._frames_with_image % cfg.overlay_every_n == 0):
            overlay = draw_label_overlay(view.image, xyzi[:, :3], labels, view.K, view.T)
            self.overlay_pub.publish(to_rclpy_image(Header(stamp=frame.msg.header.stamp, frame_id=view.name),
                                                    overlay))
        if self.pair_logger is not None:
            self._log_pair(frame, view, labels, confidence)

    def _camera_view(self, frame: LidarFrame) -> CameraView | None:
        camera = frame.camera
        if camera is None:
            return None
        with self._camera_lock:
            # the latest calibration: it comes on its own topic and rarely changes
            model, error = self._camera_model, self._camera_error
        if model is None and error is not None:
            self.stats.count("camera_info.unusable")
            self._warn("camera_info.unusable", f"the latest CameraInfo on {self.cfg.topics.camera_info_in} "
                                               f"was refused ({error.reason}): segmenting without the image")
            return None
        if model is None:
            self.stats.count("camera_info.none_received")
            self._warn("camera_info.none_received", f"no CameraInfo on {self.cfg.topics.camera_info_in} yet: "
                                                    "segmenting without the image")
            return None
        try:
            rgb = undistort(camera.rgb, model)  # also checks the image size against the calibration
        except CameraInfoError as exc:
            key = f"camera_info.{exc.reason}"
            self.stats.count(key)
            self._warn(key, f"camera image unusable: {exc}; segmenting without it")
            return None
        T = self._lidar_to_camera(frame.msg.header.frame_id, camera.frame_id)
        return to_camera_view(rgb, model.K, T, camera.frame_id or "camera")

    def _lidar_to_camera(self, lidar_frame: str, camera_frame: str) -> np.ndarray:
        """The static transform from tf when asked for and available, else the parameter."""
        if self.tf_buffer is None:
            return self.T_param
        try:
            tf = self.tf_buffer.lookup_transform(camera_frame, lidar_frame, Time()).transform
        except Exception as exc:  # noqa: BLE001 - tf2 raises several unrelated exception types
            self.stats.count("tf_fallback")
            self._warn("tf_fallback", f"no transform {lidar_frame} -> {camera_frame} ({exc}); using "
                                      "extrinsics.lidar_to_camera")
            return self.T_param
        return transform_msg_to_matrix(tf)

    def _log_pair(self, frame: LidarFrame, view: CameraView, labels: np.ndarray,
                  confidence: np.ndarray) -> None:
        pairs = point_pixel_pairs(frame.xyzi, [(view.K, view.T, view.hw)])
        sample = PairSample(points=frame.xyzi, views=[view], pred_labels=labels, confidence=confidence,
                            pairs=pairs, stamp_ns=header_ns(frame.msg.header),
                            frame_id=frame.msg.header.frame_id, checkpoint=self.checkpoint_name)
        self.pair_logger.submit(sample)

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        snap = self.stats.snapshot()
        counts = snap.counts
        dropped = counts.get("dropped", 0)
        skipped = {k: v for k, v in counts.items() if k.startswith("skipped.")}
        values = {
            "latency_p50_ms": f"{snap.latency_p50_ms:.2f}",
            "latency_p99_ms": f"{snap.latency_p99_ms:.2f}",
            "latency_max_ms": f"{snap.latency_max_ms:.2f}",
            "latency_samples": str(snap.latency_samples),
            "input_rate_hz": f"{snap.input_rate_hz:.2f}",
            "output_rate_hz": f"{snap.output_rate_hz:.2f}",
            "frames_in": str(counts.get("frames_in", 0)),
            "frames_out": str(counts.get("frames_out", 0)),
            "dropped": str(dropped),
            "skipped": str(sum(skipped.values())),
            "device": self.device,
        }
        values.update({k: str(v) for k, v in sorted(counts.items()) if k not in values})
        if self.image_cache is not None:
            values.update({f"sync.{k}": str(v) for k, v in self.image_cache.stats().items()})
        if self.synchronizer is not None:
            values.update({f"sync.{k}": str(v) for k, v in self.synchronizer.stats().items()})
        if self.pair_logger is not None:
            values.update({f"pair_log.{k}": str(v) for k, v in self.pair_logger.stats().items()})
        values.update(self._resource_gauges())

        # The level reflects the last period, not the whole run: one old drop must not stay a warning.
        new_dropped = dropped - self._reported.get("dropped", 0)
        new_skipped = sum(skipped.values()) - self._reported.get("skipped", 0)
        self._reported = {"dropped": dropped, "skipped": sum(skipped.values())}
        level, message = DiagnosticStatus.OK, "ok"
        if snap.seconds_since_input > max(3 * self.cfg.diagnostics_period, 1.0):
            level, message = DiagnosticStatus.WARN, f"no cloud on {self.cfg.topics.cloud_in}"
        elif new_dropped or new_skipped:
            level = DiagnosticStatus.WARN
            message = f"{new_dropped} frames dropped (inference slower than input), {new_skipped} skipped " \
                      f"(bad input or inference failure) since the last report"
        status = DiagnosticStatus(
            level=level, name=f"{self.get_fully_qualified_name()}: segmentation", message=message,
            hardware_id=self.device, values=[KeyValue(key=k, value=v) for k, v in values.items()],
        )
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(array)

    def _resource_gauges(self) -> dict[str, str]:
        """Queue fill and process resources: what a soak test watches for growth."""
        cache, sync = self.image_cache, self.synchronizer
        out = {
            "queue.waiting_frame": str(int(self.slot.waiting())),
            "queue.image_cache": str(len(cache) if cache is not None else 0),
            "queue.sync_pending": str(sum(sync.pending()) if sync is not None else 0),
        }
        try:
            with self._process_info.oneshot():
                out["process.rss_mb"] = f"{self._process_info.memory_info().rss / 2**20:.1f}"
                out["process.threads"] = str(self._process_info.num_threads())
        except psutil.Error:  # diagnostics must not fail because /proc is unreadable
            pass
        return out

    # ------------------------------------------------------------------ shutdown
    def stop(self) -> None:
        """Make `run` return (safe from any thread)."""
        self._running = False
        self.slot.close()

    def close(self) -> None:
        """Stop processing and flush the pair logger (idempotent); call after `run` returned."""
        self.stop()
        if self.pair_logger is not None:
            self.pair_logger.close()
            self.pair_logger = None


def check_checkpoint(path: str | Path) -> None:
    """Refuse, with a ConfigError naming the file and the problem, a checkpoint the node cannot use.

    Beyond what loading checks (readable, an xkd checkpoint, a known model config), the class map must
    be this package's (`xkd_core.classes`): the node publishes label ids and colours from it, so a model
    trained on other classes would publish wrong labels without any error.
    """
    from xkd_core.models.checkpoint import CheckpointError, config_from_checkpoint, load_checkpoint

    try:
        ckpt = load_checkpoint(path, map_location="cpu")
        config_from_checkpoint(ckpt, path)
    except (CheckpointError, FileNotFoundError) as exc:
        raise ConfigError(f"parameter 'checkpoint': {exc}") from exc
    names = ckpt["class_names"]
    names = list(names) if isinstance(names, (list, tuple)) else names
    if names != list(CLASS_NAMES):
        raise ConfigError(f"parameter 'checkpoint': {path} has another class map: its class_names are "
                          f"{names!r}, this package labels with the {len(CLASS_NAMES)} classes of "
                          f"xkd_core.classes ({', '.join(CLASS_NAMES[:3])}, ...)")


def load_segmenter(cfg: SegmentNodeConfig, checkpoint: str, device: str) -> Any:
    """The `Segmenter` for the node's config (imported here: it pulls in the model stack).

    Every checkpoint problem is a ConfigError naming the file, so `main` refuses to start with one line.
    """
    from xkd_core.inference import Segmenter
    from xkd_core.models.checkpoint import CheckpointError

    check_checkpoint(checkpoint)
    try:
        return Segmenter.from_checkpoint(checkpoint, device=device, fp16=cfg.fp16 and device == "cuda",
                                         backend=cfg.sparse_backend, fuse=cfg.fuse_camera,
                                         max_range=cfg.max_range or None)
    except (CheckpointError, FileNotFoundError) as exc:
        raise ConfigError(f"parameter 'checkpoint': {exc}") from exc


def main(args: list[str] | None = None) -> int:
    """Console script `segment_node`: exit 0 on SIGINT/SIGTERM, 1 when start-up is refused."""
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.ALL)
    node = None
    try:
        node = SegmentNode()
    except ConfigError as exc:
        print(f"segment_node: refusing to start: {exc}", file=sys.stderr, flush=True)
        rclpy.try_shutdown()
        return 1
    except Exception as exc:  # noqa: BLE001 - e.g. a corrupt checkpoint: say so in one line, exit non-zero
        print(f"segment_node: failed to start: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        rclpy.try_shutdown()
        return 1
    spinner = threading.Thread(target=_spin, args=(node,), name="xkd-executor", daemon=True)
    spinner.start()
    try:
        node.run()  # returns once SIGINT/SIGTERM shut the context down
    except KeyboardInterrupt:
        pass
    finally:
        node.get_logger().info("shutting down")
        node.close()
        rclpy.try_shutdown()
        spinner.join(timeout=10.0)
        node.destroy_node()
    return 1 if node.executor_failed else 0


def _spin(node: SegmentNode) -> None:
    """The executor (subscriptions, diagnostics timer, parameter services) on its own thread."""
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as exc:  # noqa: BLE001 - reported, then the node stops instead of hanging
        node.executor_failed = True
        node.get_logger().fatal(f"executor failed: {type(exc).__name__}: {exc}")
    finally:
        node.stop()


if __name__ == "__main__":
    sys.exit(main())
