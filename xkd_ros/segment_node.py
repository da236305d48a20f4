"""`segment_node`: live LiDAR semantic segmentation with the xModel-KD model.

Subscribes to a PointCloud2 (and optionally an Image + CameraInfo), publishes the labeled cloud
(x, y, z, intensity, label, rgb, confidence; same header, one output point per input point in
input order), an optional overlay image and `/diagnostics`.

Threads: an executor thread runs the subscription callbacks, which only convert and enqueue, and
the diagnostics timer; the main thread runs inference on the newest frame only (a frame still
waiting when a newer one arrives is dropped and counted), so a slow model never queues up latency
and never blocks the middleware. Bad input of any kind is logged (throttled), counted and skipped.

Diagnostics (`/diagnostics`, status `<node>: segmentation`): `latency_p50_ms` / `latency_p99_ms` /
`latency_max_ms` (cloud callback entered -> labeled cloud published, last 1000 frames),
`input_rate_hz` / `output_rate_hz` (last 5 s), `frames_in`, `frames_out`, `dropped` (replaced while
waiting for the worker), `skipped` (total) and per reason `skipped.cloud_format.<reason>`,
`skipped.out_of_memory`, `skipped.inference_error`; images and calibration refused per reason
(`image_format.<reason>`, `camera_info.<reason>`), the synchronizer's `sync.<reason>` counters,
`out_of_memory` (retried), `tf_fallback` and the pair logger's `pair_log.<counter>`.

`xkd_ros.bag_eval.InProcessNode` drives this node synchronously through `_on_cloud`, `_on_image`,
`_on_camera_info`, `slot`, `_process`, `_publish_diagnostics`, `cloud_pub` and `diag_pub`: keep them.

Run: `segment_node --ros-args --params-file config/segment.yaml [-p name:=value] [-r from:=to]`.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
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

from xkd_core.config import ConfigError
from xkd_core.data.frame import CameraView
from xkd_core.data.pairlog import PairLogWriter, PairSample
from xkd_core.geometry.projection import point_pixel_pairs
from xkd_core.overlay import draw_label_overlay
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
from xkd_ros.node_stats import NodeStats
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
from xkd_ros.stamp import header_ns
from xkd_ros.sync import ApproximateTimeSynchronizer, NearestImageCache
from xkd_ros.transform import transform_msg_to_matrix

_LOG_EVERY_S = 5.0  # throttle for repeated warnings about bad input


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
                           stats: NodeStats) -> tuple[np.ndarray, np.ndarray] | None:
    """(labels, confidence) for every point, surviving one CUDA out-of-memory.

    On OOM the cache is emptied and the frame retried once with every second point; the points left
    out get label 0 and confidence 0 (not segmented). A second OOM skips the frame (None). Both
    are counted: `out_of_memory` and `skipped.out_of_memory`.
    """
    try:
        res = segmenter.segment(points, views)
        return res.labels, res.confidence
    except torch.cuda.OutOfMemoryError:
        stats.count("out_of_memory")
    torch.cuda.empty_cache()
    keep = np.arange(0, points.shape[0], 2)
    try:
        res = segmenter.segment(np.ascontiguousarray(points[keep]), views)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        stats.count("skipped.out_of_memory")
        return None
    labels = np.zeros(points.shape[0], dtype=np.uint16)
    confidence = np.zeros(points.shape[0], dtype=np.float32)
    labels[keep] = res.labels
    confidence[keep] = res.confidence
    stats.count("out_of_memory_subsampled")
    return labels, confidence


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
    def _on_cloud(self, msg: PointCloud2) -> None:
        received = time.monotonic()
        self.stats.frame_in()
        try:
            xyzi = cloud_to_xyzi(msg)
        except CloudFormatError as exc:
            self.stats.count(f"skipped.cloud_format.{exc.reason}")
            self.get_logger().warning(f"skipping cloud on {self.cfg.topics.cloud_in}: {exc}",
                                      throttle_duration_sec=_LOG_EVERY_S)
            return
        if xyzi.shape[0] == 0:
            self.stats.count("skipped.cloud_format.empty")
            self.get_logger().warning("skipping an empty cloud", throttle_duration_sec=_LOG_EVERY_S)
            return
        stamp = header_ns(msg.header)
        if self.synchronizer is not None and self._camera_alive():
            self.synchronizer.add(0, stamp, LidarFrame(msg, xyzi, received, None))
            return
        camera = None
        if self.image_cache is not None:
            camera = self.image_cache.match(stamp).item  # the cache counts the reasons
        elif self.synchronizer is not None:
            self.stats.count("sync.camera_stalled")
        self._enqueue(LidarFrame(msg, xyzi, received, camera))

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

    def _on_image(self, msg: Image) -> None:
        self._last_image_time = time.monotonic()
        try:
            rgb = image_to_rgb(msg)
        except ImageFormatError as exc:
            self.stats.count(f"image_format.{exc.reason}")
            self.get_logger().warning(f"skipping image on {self.cfg.topics.image_in}: {exc}",
                                      throttle_duration_sec=_LOG_EVERY_S)
            return
        stamp = header_ns(msg.header)
        camera = CameraFrame(rgb, msg.header.frame_id, stamp)
        if self.image_cache is not None:
            self.image_cache.push(stamp, camera)  # the cache counts images it refuses
        elif self.synchronizer is not None:
            self.synchronizer.add(1, stamp, camera)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            model = camera_info_to_model(msg)
        except CameraInfoError as exc:
            self.stats.count(f"camera_info.{exc.reason}")
            self.get_logger().warning(f"ignoring camera info on {self.cfg.topics.camera_info_in}: {exc}",
                                      throttle_duration_sec=_LOG_EVERY_S)
            return
        with self._camera_lock:
            self._camera_model = model

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
                self.get_logger().error(f"frame failed: {type(exc).__name__}: {exc}",
                                        throttle_duration_sec=_LOG_EVERY_S)

    def _process(self, frame: LidarFrame) -> None:
        cfg = self.cfg
        xyzi = frame.xyzi
        view = self._camera_view(frame)
        views = [view] if (view is not None and cfg.fuse_camera) else None
        out = segment_with_oom_retry(self.segmenter, xyzi, views, self.stats)
        if out is None:
            self.get_logger().warning("CUDA out of memory twice on one frame: skipped",
                                      throttle_duration_sec=_LOG_EVERY_S)
            return
        labels, confidence = out
        cloud = to_rclpy_cloud(frame.msg.header, labeled_cloud_array(xyzi, labels, confidence))
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
            model = self._camera_model  # the latest calibration: it comes on its own topic and rarely changes
        if model is None:
            self.stats.count("camera_info.none_received")
            self.get_logger().warning(f"no CameraInfo on {self.cfg.topics.camera_info_in} yet: "
                                      f"segmenting without the image", throttle_duration_sec=_LOG_EVERY_S)
            return None
        try:
            rgb = undistort(camera.rgb, model)  # also checks the image size against the calibration
        except CameraInfoError as exc:
            self.stats.count(f"camera_info.{exc.reason}")
            self.get_logger().warning(f"camera image unusable: {exc}; segmenting without it",
                                      throttle_duration_sec=_LOG_EVERY_S)
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
            self.get_logger().warning(f"no transform {lidar_frame} -> {camera_frame} ({exc}); using "
                                      "extrinsics.lidar_to_camera", throttle_duration_sec=_LOG_EVERY_S)
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


def load_segmenter(cfg: SegmentNodeConfig, checkpoint: str, device: str) -> Any:
    """The `Segmenter` for the node's config (imported here: it pulls in the model stack)."""
    from xkd_core.inference import Segmenter

    return Segmenter.from_checkpoint(checkpoint, device=device, fp16=cfg.fp16 and device == "cuda",
                                     backend=cfg.sparse_backend, fuse=cfg.fuse_camera,
                                     max_range=cfg.max_range or None)


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
