"""`segment_node`: live LiDAR semantic segmentation with the xModel-KD model.

A thin ROS 2 adapter over `xkd_ros.pipeline.FramePipeline` (decoding, stamp checks, camera sync,
segmentation, outputs, diagnostics values: all ROS-free and tested without a middleware). This file
declares the parameters, wires subscriptions and publishers, runs the threads and turns the
pipeline's outputs into messages.

Subscribes: the PointCloud2 `topics.cloud_in` and, per camera of `cameras.names`, its Image (or
CompressedImage) and CameraInfo. Publishes: the labeled cloud (x, y, z, intensity, label, rgb,
confidence; same header, one output point per input point in input order), the filtered cloud
(without `filter.drop_classes`), an overlay Image per camera, the class map (latched JSON) and
`/diagnostics` (one status for the node, one per camera).

Threads: an executor thread runs the subscription callbacks, which only decode, check and enqueue,
and the diagnostics timer; the main thread runs inference on the newest frame only (a frame still
waiting when a newer one arrives is dropped and counted), so a slow model never queues up latency
and never blocks the middleware. An exception that escapes a callback anyway is caught and counted
(`skipped.callback_error`, `callback_error.image`, `callback_error.camera_info`).

Runs on ROS 2 Humble, Jazzy and Kilted: only rclpy API that Humble has, or picked by feature
(`add_post_set_parameters_callback` exists from Iron on).

Run: `segment_node --ros-args --params-file config/segment.yaml [-p name:=value] [-r from:=to]`.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import psutil
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from rclpy.time import Time
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Header, String

from xkd_core.config import ConfigError
from xkd_core.device import resolve_device
from xkd_ros.fastdds import fastdds_profile_warning
from xkd_ros.image import to_rclpy_image
from xkd_ros.pipeline import (
    ERROR,
    OK,
    WARN,
    FrameOutputs,
    FramePipeline,
    LidarFrame,
    class_map_json,
    load_segmenter,
)
from xkd_ros.pointcloud import to_rclpy_cloud
from xkd_ros.segment_params import (
    SegmentNodeConfig,
    config_from_values,
    current_values,
    declare_parameters,
    qos_profile,
)
from xkd_ros.transform import transform_msg_to_matrix

_LEVELS = {OK: DiagnosticStatus.OK, WARN: DiagnosticStatus.WARN, ERROR: DiagnosticStatus.ERROR}


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


class SegmentNode(Node):
    """The live segmentation node (see the module docstring).

    `segmenter` replaces the model loaded from the `checkpoint` parameter (tests pass a fake one, e.g.
    one that raises CUDA out-of-memory); production code never passes it.
    """

    def __init__(self, segmenter: Any = None, **kwargs: Any) -> None:
        super().__init__("segment_node", allow_undeclared_parameters=False,
                         automatically_declare_parameters_from_overrides=False, **kwargs)
        self.cfg: SegmentNodeConfig = declare_parameters(self)
        cfg = self.cfg
        self.device = resolve_device(cfg.device).type
        self.checkpoint_name = "(passed in)"
        if segmenter is None:
            segmenter, self.checkpoint_name = load_segmenter(cfg, self.device, self._log)
        self.segmenter = segmenter
        self.tf_buffer = self._make_tf_buffer() if cfg.use_camera else None
        self.pipeline = FramePipeline(
            cfg, segmenter, self._log, lookup=self._tf_lookup if self.tf_buffer is not None else None,
            input_convention=getattr(segmenter, "input_convention", None),
            pair_logger=self._make_pair_logger(), checkpoint_name=self.checkpoint_name)
        self._param_callbacks()

        out_qos, in_qos = qos_profile(cfg.qos.output), qos_profile(cfg.qos.input)
        self.cloud_pub = self.create_publisher(PointCloud2, cfg.topics.cloud_out, out_qos)
        self.filtered_pub = self.create_publisher(PointCloud2, cfg.topics.filtered_out, out_qos)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.class_map_pub = self.create_publisher(String, cfg.topics.class_map_out, latched)
        self.class_map_pub.publish(String(data=class_map_json()))
        self.overlay_pubs = {}
        for name, cam in self.pipeline.cameras.items():
            overlay_topic = f"{cfg.topics.overlay_out}/{name}"
            self.overlay_pubs[name] = self.create_publisher(Image, overlay_topic, out_qos)
            image_type = CompressedImage if cam.cfg.transport == "compressed" else Image
            self.create_subscription(image_type, cam.cfg.subscribed_topic,
                                     partial(self._on_image, name), in_qos)
            self.create_subscription(CameraInfo, cam.cfg.camera_info_topic,
                                     partial(self._on_camera_info, name), in_qos)
        self.create_subscription(PointCloud2, cfg.topics.cloud_in, self._on_cloud, in_qos)
        self.create_timer(cfg.diagnostics.period, self._publish_diagnostics)

        self.slot = LatestFrameSlot()
        self._running = True
        self.executor_failed = False
        self._process_info = psutil.Process()
        note = fastdds_profile_warning(rclpy.get_rmw_implementation_identifier(), os.environ)
        if note:
            self.get_logger().warning(note)
        for line in self.pipeline.start_lines():
            self.get_logger().info(line)
        self.get_logger().info(f"segmenting {self.resolve_topic_name(cfg.topics.cloud_in)} -> "
                               f"{self.resolve_topic_name(cfg.topics.cloud_out)} with "
                               f"{len(self.pipeline.cameras)} camera(s)")

    # ------------------------------------------------------------------ set-up
    def _make_tf_buffer(self) -> Any:
        """A TF buffer when tf2_ros is importable and some camera takes its extrinsics from TF."""
        if all(cam.lidar_to_camera is not None for cam in self.cfg.cameras.values()):
            return None
        try:
            from tf2_ros import Buffer, TransformListener
        except ImportError:
            self.get_logger().warning("tf2_ros is not importable (e.g. the PyPI install): camera extrinsics "
                                      "come only from cameras.<name>.lidar_to_camera; a camera without it is "
                                      "not used")
            return None
        buffer = Buffer()
        self._tf_listener = TransformListener(buffer, self, spin_thread=False)
        return buffer

    def _tf_lookup(self, target: str, source: str, stamp_ns: int) -> np.ndarray:
        """target <- source at the stamp (a static transform answers any stamp); LookupError if none."""
        try:
            tf = self.tf_buffer.lookup_transform(target, source, Time(nanoseconds=stamp_ns))
        except Exception as exc:  # noqa: BLE001 - tf2 raises several unrelated exception types
            raise LookupError(f"{type(exc).__name__}: {exc}") from exc
        return transform_msg_to_matrix(tf.transform)

    def _make_pair_logger(self) -> Any:
        cfg = self.cfg
        if not cfg.log_pairs:
            return None
        if not cfg.use_camera:
            self.get_logger().warning("log_pairs is true but use_camera is false: nothing to log")
            return None
        from xkd_core.data.pairlog import PairLogWriter

        log = cfg.pair_log
        try:
            writer = PairLogWriter(log.dir, max_queue=log.queue, disk_budget_bytes=log.disk_budget_mb * 2**20,
                                   policy=log.policy, every_n=log.every_n, min_interval_s=log.min_interval)
        except OSError as exc:
            raise ConfigError(f"parameter 'pair_log.dir': {exc}") from exc
        self.get_logger().info(f"logging cross-modal pairs to {writer.root}")
        return writer

    # ------------------------------------------------------------------ parameters at run time
    def _param_callbacks(self) -> None:
        """Validate every change; apply it after it is set (Iron on) or once validated (Humble)."""
        self._apply_after_set = hasattr(self, "add_post_set_parameters_callback")
        self.add_on_set_parameters_callback(self._validate_parameter_change)
        if self._apply_after_set:
            self.add_post_set_parameters_callback(self._apply_parameter_change)

    def _validate_parameter_change(self, params: list[Parameter]) -> SetParametersResult:
        try:
            cfg = config_from_values(current_values(self, {p.name: p.value for p in params}))
        except ConfigError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        if not self._apply_after_set:  # Humble: no post-set callback; the values are valid, use them
            self._apply(cfg, params)
        return SetParametersResult(successful=True)

    def _apply_parameter_change(self, params: list[Parameter]) -> None:
        self._apply(config_from_values(current_values(self)), params)

    def _apply(self, cfg: SegmentNodeConfig, params: list[Parameter]) -> None:
        self.cfg = cfg
        self.segmenter.max_range = cfg.max_range or None
        self.pipeline.reconfigure(cfg)
        self.get_logger().info("parameters changed: " + ", ".join(f"{p.name}={p.value}" for p in params))

    # ------------------------------------------------------------------ callbacks: decode, check, enqueue
    def _log(self, level: int, line: str) -> None:
        # one call site per severity: rclpy refuses a call site whose severity changes between calls
        logger = self.get_logger()
        if level == ERROR:
            logger.error(line)
        elif level == WARN:
            logger.warning(line)
        else:
            logger.info(line)

    def _guarded(self, key: str, what: str, handler: Callable[[], None]) -> None:
        """Run a callback so that nothing escapes it: an exception there would stop the executor, i.e.
        the node. Every refusal has its own reason; this is the net under them."""
        try:
            handler()
        except Exception as exc:  # noqa: BLE001 - one bad message must not kill the node
            self.pipeline.report(key, f"unexpected {type(exc).__name__} handling {what}: {exc}; message "
                                      "dropped (please report: it should have been refused with a reason)",
                                 level=ERROR)

    def _on_cloud(self, msg: PointCloud2) -> None:
        received = time.monotonic()

        def handle() -> None:
            frame = self.pipeline.on_cloud(msg, self.get_clock().now().nanoseconds, received)
            if frame is not None and self.slot.put(frame):
                self.pipeline.stats.count("dropped")

        self._guarded("skipped.callback_error", f"a cloud on {self.cfg.topics.cloud_in}", handle)

    def _on_image(self, camera: str, msg: Any) -> None:
        self._guarded("callback_error.image", f"an image of camera {camera}",
                      partial(self.pipeline.on_image, camera, msg))

    def _on_camera_info(self, camera: str, msg: CameraInfo) -> None:
        self._guarded("callback_error.camera_info", f"camera info of camera {camera}",
                      partial(self.pipeline.on_camera_info, camera, msg))

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
                self.process(frame)
            except Exception as exc:  # noqa: BLE001 - one bad frame must not kill the node
                if not self.context.ok():
                    break  # shut down mid-frame: the publisher is gone, nothing to report
                self.pipeline.report("skipped.inference_error", f"frame failed: {type(exc).__name__}: {exc}",
                                     level=ERROR)

    def process(self, frame: LidarFrame) -> None:
        """Segment one frame and publish what it gives."""
        out = self.pipeline.process(frame)
        if out is not None:
            self.publish(out)

    def publish(self, out: FrameOutputs) -> None:
        cloud = to_rclpy_cloud(out.header, out.labeled)
        height, width = out.shape
        if height > 1:  # organised in, organised out (row-major)
            cloud.height, cloud.width, cloud.row_step = height, width, width * cloud.point_step
        self.cloud_pub.publish(cloud)
        self.pipeline.frame_done(out)
        if out.filtered is not None:
            self.filtered_pub.publish(to_rclpy_cloud(out.header, out.filtered))
        for name, (frame_id, overlay) in out.overlays.items():  # in the image's own frame
            self.overlay_pubs[name].publish(to_rclpy_image(Header(stamp=out.header.stamp, frame_id=frame_id),
                                                           overlay))

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        statuses = self.pipeline.diagnostics(self.get_fully_qualified_name(), self.device,
                                             self._resource_gauges())
        array = DiagnosticArray(status=[
            DiagnosticStatus(level=_LEVELS[s.level], name=s.name, message=s.message, hardware_id=self.device,
                             values=[KeyValue(key=k, value=v) for k, v in s.values.items()])
            for s in statuses])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(array)

    def _resource_gauges(self) -> dict[str, str]:
        """Queue fill and process resources: what a soak test watches for growth."""
        out = {"queue.waiting_frame": str(int(self.slot.waiting())),
               "queue.image_cache": str(sum(len(c.cache) for c in self.pipeline.cameras.values()))}
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
        self.pipeline.close()


#: Exit status when start-up is refused for a configuration error (sysexits' EX_CONFIG): the systemd
#: unit does not restart on it, since a wrong parameter or a missing checkpoint stays wrong.
EXIT_CONFIG = 78


def main(args: list[str] | None = None) -> int:
    """Console script `segment_node`: exit 0 on SIGINT/SIGTERM, `EXIT_CONFIG` (78) when start-up is
    refused for a configuration error, 1 on any other failure."""
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.ALL)
    node = None
    try:
        node = SegmentNode()
    except ConfigError as exc:
        print(f"segment_node: refusing to start: {exc}", file=sys.stderr, flush=True)
        rclpy.try_shutdown()
        return EXIT_CONFIG
    except Exception as exc:  # noqa: BLE001 - e.g. a corrupt checkpoint: say so in one line, exit non-zero
        print(f"segment_node: failed to start: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        rclpy.try_shutdown()
        return 1
    spinner = threading.Thread(target=spin, args=(node,), name="xkd-executor", daemon=True)
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


def spin(node: SegmentNode) -> None:
    """The executor (subscriptions, diagnostics timer, parameter services); stops the node when it ends."""
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as exc:  # noqa: BLE001 - reported, then the node stops instead of hanging
        if not node.context.ok():
            # SIGINT/SIGTERM shut the context down while the executor was building its wait set (rclpy
            # then raises RCLError "context is not valid", not ExternalShutdownException): a stop
            return
        node.executor_failed = True
        node.get_logger().fatal(f"executor failed: {type(exc).__name__}: {exc}")
    finally:
        node.stop()


if __name__ == "__main__":
    sys.exit(main())
