"""The frame pipeline of the segment node, ROS-free: decode -> stamp guard -> sync -> segment -> outputs.

`segment_node` is a thin ROS adapter over this class, and `xkd-bag-eval` feeds recorded messages
straight into it, so the vehicle and the offline evaluation run the same code. No rclpy import:
messages are duck-typed (rclpy or rosbags messages, or plain objects in tests).

- `on_cloud(msg)` (a subscription callback; cheap): decodes the PointCloud2 into x, y, z and
  intensity scaled to the model's convention, checks the stamp, picks per camera the nearest image
  within the slop (never waiting for a camera) and returns the `LidarFrame` for the worker, or None
  when the cloud is refused (the reason is counted).
- `on_image(camera, msg)`, `on_camera_info(camera, msg)`: store, per camera (`xkd_ros.cameras`).
- `process(frame)` (the worker): builds the camera views that work for this frame, gates the points
  the model must not see (NaN, ego crop, min / max range: label 0), segments with one retry on half
  the points after a CUDA out-of-memory, and returns the `FrameOutputs` to publish: the labeled
  cloud, the filtered cloud, overlays, and the pair logged when pair logging is on.
- `diagnostics()`: the statuses for `/diagnostics` (the node's, and one per camera).

Every refusal is counted under a stable key and reported through the `LogSink` the caller passes
(throttled per key, each line starting with `[<key>]`); `docs/reliability.md` lists them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from xkd_core.classes import CLASS_NAMES, PALETTE_RGB
from xkd_core.config import ConfigError
from xkd_core.data.frame import CameraView
from xkd_core.data.pairlog import PairLogWriter, PairSample
from xkd_core.geometry.projection import point_pixel_pairs
from xkd_core.log_throttle import LogThrottle
from xkd_core.overlay import draw_label_overlay
from xkd_ros.cameras import CameraImage, CameraInput, TransformLookup
from xkd_ros.intensity import EVENT_FIELD_MISSING, IntensityNormalizer
from xkd_ros.node_stats import NodeStats
from xkd_ros.pointcloud import CloudFormatError, cloud_layout_text, labeled_cloud_array
from xkd_ros.segment_params import IntensityConfig, SegmentNodeConfig, resolve_checkpoint
from xkd_ros.stamp import DUPLICATE, FUTURE, NS_PER_S, OUT_OF_ORDER, TIME_JUMP, StampGuard, header_ns

_LOG_EVERY_S = 5.0  # repeated reports of one problem: at most one line per this many seconds
_JUMP_BACK_S = 1.0  # a cloud stamp this much older than the last one is a time jump (looping bag)
_MAX_FUTURE_S = 10.0  # a cloud stamp this much ahead of the node's clock is counted as future

#: Diagnostic levels (the values of diagnostic_msgs/DiagnosticStatus).
OK, WARN, ERROR = 0, 1, 2
#: (level, line) -> None: where reports go (the node's rclpy logger, or Python logging offline).
LogSink = Callable[[int, str], None]


class Segments(Protocol):
    """What the pipeline needs of a segmenter (`xkd_core.inference.Segmenter`, or a fake in tests)."""

    def segment(self, points: np.ndarray, views: list[CameraView] | None = None,
                exclude: np.ndarray | None = None) -> Any: ...


class Reporter:
    """Count a problem under its diagnostics key and log it, throttled per key."""

    def __init__(self, stats: NodeStats, sink: LogSink, period_s: float = _LOG_EVERY_S) -> None:
        self.stats = stats
        self._sink = sink
        self._throttle = LogThrottle(period_s)

    def __call__(self, key: str, text: str, level: int = WARN, n: int = 1, count: bool = True,
                 throttle: bool = True) -> None:
        if count:
            self.stats.count(key, n)
        show, held = self._throttle.ready(key) if throttle else (True, 0)
        if show:
            self._sink(level, f"[{key}] {text}" + (f" ({held} more since the last report)" if held else ""))


@dataclass
class LidarFrame:
    """One cloud waiting for the worker."""

    header: Any  # the input's header: the outputs carry the same stamp and frame
    xyzi: np.ndarray  # (N, 4) float32, intensity in the model's convention
    shape: tuple[int, int]  # (height, width) of the input: organised in, organised out
    received: float  # time.monotonic() when the callback started: latency is measured from here
    images: dict[str, CameraImage] = field(default_factory=dict)  # camera name -> matched image

    @property
    def stamp_ns(self) -> int:
        return header_ns(self.header)


@dataclass
class FrameOutputs:
    """What the node publishes for one frame (as numpy; the node builds the messages)."""

    header: Any
    labeled: np.ndarray  # LABELED_DTYPE, one record per input point, in input order
    shape: tuple[int, int]  # (height, width) of `labeled` (organised when height > 1)
    filtered: np.ndarray | None  # LABELED_DTYPE records without filter.drop_classes (None: not published)
    overlays: dict[str, tuple[str, np.ndarray]]  # camera name -> (the image's frame id, RGB overlay)
    views: list[CameraView]  # the cameras used for this frame
    labels: np.ndarray
    confidence: np.ndarray
    received: float  # the frame's arrival (monotonic): latency runs from here to publication


@dataclass
class Status:
    """One diagnostics status (the node turns it into a diagnostic_msgs/DiagnosticStatus)."""

    name: str
    level: int
    message: str
    values: dict[str, str]


def class_map_json() -> str:
    """The class map the node publishes (latched): ids, names and RViz colours of the labels."""
    classes = [{"id": i, "name": name, "rgb": [int(c) for c in PALETTE_RGB[i]]}
               for i, name in enumerate(CLASS_NAMES)]
    return json.dumps({"classes": classes, "ignore_id": 0})


def _explicit_scale(cfg: IntensityConfig) -> str | float:
    """The normalizer's scale: "auto", or the factor that brings the field to 0..1."""
    return {"auto": "auto", "unit": 1.0, "8bit": 1.0 / 255.0, "16bit": 1.0 / 65535.0,
            "factor": cfg.factor}[cfg.scale]


def load_segmenter(cfg: SegmentNodeConfig, device: str, log: LogSink) -> tuple[Any, str]:
    """The model of the `checkpoint` parameter, loaded once and warmed up, and the checkpoint's file name.

    Every checkpoint problem (missing, not an xkd checkpoint, another class map) is a ConfigError
    naming the file, so start-up is refused with one line.
    """
    from xkd_core.inference import Segmenter
    from xkd_core.models.checkpoint import CheckpointError

    checkpoint = resolve_checkpoint(cfg.checkpoint)
    if device == "cpu" and cfg.cpu_threads > 0:
        torch.set_num_threads(cfg.cpu_threads)
    log(OK, f"loading {checkpoint} on {device} (fp16={cfg.fp16}, backend={cfg.sparse_backend}, "
            f"fuse_camera={cfg.fuse_camera})")
    try:
        segmenter = Segmenter.from_checkpoint(checkpoint, device=device, fp16=cfg.fp16 and device == "cuda",
                                              backend=cfg.sparse_backend, fuse=cfg.fuse_camera,
                                              max_range=cfg.max_range or None)
    except (CheckpointError, FileNotFoundError) as exc:
        raise ConfigError(f"parameter 'checkpoint': {exc}") from exc
    if segmenter.class_names != tuple(CLASS_NAMES):
        # the node publishes label ids, colours and the class map from xkd_core.classes: a model trained
        # on other classes would publish wrong labels without any error
        raise ConfigError(f"parameter 'checkpoint': {checkpoint} has another class map: its class_names are "
                          f"{segmenter.class_names!r}, this package labels with the {len(CLASS_NAMES)} "
                          f"classes of xkd_core.classes ({', '.join(CLASS_NAMES[:3])}, ...)")
    if cfg.fuse_camera and not segmenter.fuse:
        log(WARN, f"fuse_camera is true but {checkpoint.name} has no camera branch: LiDAR branch only")
    t0 = time.monotonic()
    segmenter.warmup()
    log(OK, f"model warm-up done in {time.monotonic() - t0:.2f} s")
    return segmenter, checkpoint.name


def segment_with_oom_retry(segmenter: Segments, points: np.ndarray, views: list[CameraView] | None,
                           exclude: np.ndarray | None,
                           report: Reporter) -> tuple[np.ndarray, np.ndarray] | None:
    """(labels, confidence) for every point, surviving one CUDA out-of-memory.

    On OOM the cache is emptied and the frame retried once with every second point; the points left
    out get label 0 and confidence 0 (not segmented). A second OOM skips the frame (None). Both
    are counted: `out_of_memory` and `skipped.out_of_memory`.
    """
    n = points.shape[0]
    try:
        res = segmenter.segment(points, views, exclude=exclude)
        return res.labels, res.confidence
    except torch.cuda.OutOfMemoryError as exc:
        report("out_of_memory", f"CUDA out of memory on a frame of {n} points ({_first_line(exc)}): "
                                "retrying on every second point, the others get label 0")
    torch.cuda.empty_cache()
    keep = np.arange(0, n, 2)
    try:
        res = segmenter.segment(np.ascontiguousarray(points[keep]), views,
                                exclude=None if exclude is None else exclude[keep])
    except torch.cuda.OutOfMemoryError as exc:
        torch.cuda.empty_cache()
        report("skipped.out_of_memory", f"CUDA out of memory again on {len(keep)} of {n} points "
                                        f"({_first_line(exc)}): frame skipped", level=ERROR)
        return None
    labels = np.zeros(n, dtype=np.uint16)
    confidence = np.zeros(n, dtype=np.float32)
    labels[keep] = res.labels
    confidence[keep] = res.confidence
    report.stats.count("out_of_memory_subsampled")
    return labels, confidence


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class FramePipeline:
    """The node's processing, ROS-free (see the module docstring)."""

    def __init__(self, cfg: SegmentNodeConfig, segmenter: Segments, sink: LogSink,
                 lookup: TransformLookup | None = None, input_convention: Any = None,
                 pair_logger: PairLogWriter | None = None, checkpoint_name: str = "",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.segmenter = segmenter
        self.stats = NodeStats(clock=clock)
        self.report = Reporter(self.stats, sink)
        self._clock = clock
        self.stamp_guard = StampGuard(jump_back_s=_JUMP_BACK_S, max_future_s=_MAX_FUTURE_S)
        self.intensity = IntensityNormalizer(field=cfg.intensity.field, scale=_explicit_scale(cfg.intensity),
                                             convention=input_convention,
                                             auto_frames=cfg.intensity.auto_frames)
        self.cameras = {name: CameraInput(name, cam, cfg.sync, self.report, lookup)
                        for name, cam in cfg.cameras.items()} if cfg.use_camera else {}
        self.pair_logger = pair_logger
        self.checkpoint_name = checkpoint_name
        self._cloud_layout: tuple | None = None
        self._frames_with_image = 0
        self._slow_since: float | None = None  # processing time above the WARN threshold since
        self._period_max_ms = 0.0  # slowest frame since the last diagnostics report
        self._reported: dict[str, int] = {}
        self._drop_ids = self._class_ids(cfg.filter.drop_classes)

    # ------------------------------------------------------------------ configuration
    def reconfigure(self, cfg: SegmentNodeConfig) -> None:
        """Apply the parameters that may change at run time (the others are read-only)."""
        self.cfg = cfg
        self._drop_ids = self._class_ids(cfg.filter.drop_classes)

    @staticmethod
    def _class_ids(names: list[str]) -> np.ndarray:
        drop = np.zeros(len(CLASS_NAMES), dtype=bool)
        drop[[CLASS_NAMES.index(n) for n in names]] = True
        return drop

    def start_lines(self) -> list[str]:
        """What the node says at start about its inputs (one line per camera, extrinsics included)."""
        lines = []
        for cam in self.cameras.values():
            source = {"parameter": "the static parameter lidar_to_camera", "tf": "TF at each cloud's stamp",
                      "none": "NONE (lidar_to_camera unset and tf2_ros not importable): not used"}
            lines.append(f"camera {cam.name}: {cam.cfg.subscribed_topic} ({cam.cfg.transport}, "
                         f"{'rectified' if cam.cfg.rectified else 'raw'}), {cam.cfg.camera_info_topic}, "
                         f"extrinsics from {source[cam.extrinsics_source]}")
        return lines

    # ------------------------------------------------------------------ inputs (callback thread)
    def on_image(self, camera: str, msg: Any) -> None:
        """An image of `camera` (stored; decoded when a frame uses it)."""
        self.cameras[camera].on_image(msg)

    def on_camera_info(self, camera: str, msg: Any) -> None:
        """A CameraInfo of `camera`."""
        self.cameras[camera].on_camera_info(msg)

    def on_cloud(self, msg: Any, now_ns: int | None = None,
                 received: float | None = None) -> LidarFrame | None:
        """Decode and check a cloud; the frame for the worker, or None when it is refused (counted).

        `now_ns` is the node's clock (for the far-future check), `received` the monotonic arrival time.
        """
        received = self._clock() if received is None else received
        self.stats.frame_in()
        topic = self.cfg.topics.cloud_in
        try:
            xyzi, events = self.intensity.normalize_cloud(msg)
        except CloudFormatError as exc:
            self.report(f"skipped.cloud_format.{exc.reason}", f"skipping cloud on {topic}: {exc}")
            return None
        for event in events:  # a decision is said once; a missing field on every frame, throttled
            level = OK if event.level == "info" else WARN
            self.report(event.key, f"cloud on {topic}: {event.message}", level=level,
                        throttle=event.key == EVENT_FIELD_MISSING)
        n = xyzi.shape[0]
        if n == 0:
            self.report("skipped.cloud_format.empty",
                        f"skipping an empty cloud on {topic} ({int(msg.height)}x{int(msg.width)} points)")
            return None
        self._note_layout(msg)
        stamp = header_ns(msg.header)
        check = self.stamp_guard.check(stamp, now_ns)
        if not check.accepted:
            what = {DUPLICATE: "repeats the previous cloud's stamp",
                    OUT_OF_ORDER: f"is {-check.delta_ns / NS_PER_S:.3f} s older than the previous cloud"}
            self.report(f"skipped.stamp.{check.verdict}", f"skipping cloud on {topic}: stamp "
                        f"{stamp / NS_PER_S:.6f} s {what[check.verdict]} (stale or re-sent scan)")
            return None
        finite = np.isfinite(xyzi[:, :3]).all(axis=1)
        nonfinite = n - int(np.count_nonzero(finite))
        if nonfinite:  # NaN returns are ordinary driver output: counted (label 0), logged only if all
            self.stats.count("points_nonfinite", nonfinite)
            if nonfinite == n:
                self.report("clouds_all_nonfinite", f"cloud on {topic} has no finite point ({n} NaN/inf): "
                                                    "published with label 0 everywhere")
        frame = LidarFrame(msg.header, xyzi, (int(msg.height), int(msg.width)), received)
        if check.verdict == TIME_JUMP:  # each camera's cache sees the jump and keeps the new loop's images
            back = -check.delta_ns / NS_PER_S
            self.report("stamp.time_jump", f"cloud stamps on {topic} jumped back {back:.3f} s (looping bag "
                                           "or clock reset): starting over from this stamp")
        elif check.verdict == FUTURE:
            # No image can match a wild stamp, and it must not disturb the caches' clock.
            ahead = check.delta_ns / NS_PER_S
            self.report("stamp.future", f"cloud on {topic} is stamped {ahead:.1f} s ahead of this node's "
                                        "clock (check the sensor's time sync): segmented without the cameras")
            return frame
        for name, cam in self.cameras.items():
            image = cam.match(stamp)  # the cache counts the reason when there is none
            if image is not None:
                frame.images[name] = image
        return frame

    def _note_layout(self, msg: Any) -> None:
        """Log the cloud layout when it first arrives and whenever it changes (what the node decodes)."""
        fields = tuple((str(f.name), int(f.offset), int(f.datatype), int(f.count)) for f in msg.fields)
        layout = (fields, int(msg.point_step), bool(msg.is_bigendian), int(msg.height) > 1)
        if layout == self._cloud_layout:
            return
        self._cloud_layout = layout
        # rare, and each one matters: never held back
        self.report("cloud_layout_changes", f"cloud layout on {self.cfg.topics.cloud_in}: "
                                            f"{cloud_layout_text(msg)}", level=OK, throttle=False)

    # ------------------------------------------------------------------ worker
    def process(self, frame: LidarFrame) -> FrameOutputs | None:
        """Segment one frame; its outputs, or None when the frame is skipped (counted)."""
        cfg = self.cfg
        views = self._views(frame)
        exclude = self._gate(frame.xyzi)
        fused = views if (views and cfg.fuse_camera) else None
        out = segment_with_oom_retry(self.segmenter, frame.xyzi, fused, exclude, self.report)
        if out is None:
            return None
        labels, confidence = out
        labeled = labeled_cloud_array(frame.xyzi, labels, confidence)
        filtered = labeled[~self._drop_ids[labels]] if cfg.filter.publish else None
        overlays: dict[str, tuple[str, np.ndarray]] = {}
        if views:
            self._frames_with_image += 1
            if cfg.publish_overlay and self._frames_with_image % cfg.overlay_every_n == 0:
                for view in views:
                    overlays[view.name] = (frame.images[view.name].frame_id or view.name,
                                           draw_label_overlay(view.image, frame.xyzi[:, :3], labels,
                                                              view.K, view.T))
            if self.pair_logger is not None:
                pairs = point_pixel_pairs(frame.xyzi, [(v.K, v.T, v.hw) for v in views])
                self.pair_logger.submit(PairSample(
                    points=frame.xyzi, views=views, pred_labels=labels, confidence=confidence, pairs=pairs,
                    stamp_ns=frame.stamp_ns, frame_id=str(frame.header.frame_id),
                    checkpoint=self.checkpoint_name))
        height, width = frame.shape
        shape = (height, width) if height > 1 and height * width == len(labeled) else (1, len(labeled))
        return FrameOutputs(frame.header, labeled, shape, filtered, overlays, views, labels, confidence,
                            frame.received)

    def _views(self, frame: LidarFrame) -> list[CameraView]:
        views = []
        for name, image in frame.images.items():
            view = self.cameras[name].view(image, str(frame.header.frame_id), frame.stamp_ns)
            if view is not None:
                self.stats.count(self.cameras[name].key("used"))
                views.append(view)
        return views

    def _gate(self, xyzi: np.ndarray) -> np.ndarray | None:
        """Points the model must not see (ego body, nearer than min_range), counted; None when none."""
        cfg = self.cfg
        xyz = xyzi[:, :3]
        exclude = None
        if cfg.ego_crop.enabled:
            with np.errstate(invalid="ignore"):
                inside = ((xyz >= np.asarray(cfg.ego_crop.min, np.float32))
                          & (xyz <= np.asarray(cfg.ego_crop.max, np.float32))).all(axis=1)
            self.stats.count("points_ego_crop", int(np.count_nonzero(inside)))
            exclude = inside
        if cfg.min_range > 0:
            with np.errstate(invalid="ignore"):
                near = np.einsum("ij,ij->i", xyz, xyz) < cfg.min_range ** 2
            if exclude is not None:
                near &= ~exclude  # a point is counted once, for the first reason
            self.stats.count("points_min_range", int(np.count_nonzero(near)))
            exclude = near if exclude is None else exclude | near
        return exclude

    def frame_done(self, outputs: FrameOutputs) -> float:
        """Record the frame's latency (callback entered -> labeled cloud published); returns it (s)."""
        now = self._clock()
        latency = now - outputs.received
        self.stats.frame_out(latency)
        ms = 1e3 * latency
        self._period_max_ms = max(self._period_max_ms, ms)
        if ms <= self.cfg.diagnostics.processing_time_warn_ms:
            self._slow_since = None
        elif self._slow_since is None:
            self._slow_since = now
        return latency

    # ------------------------------------------------------------------ diagnostics
    def diagnostics(self, node_name: str, device: str, extra: dict[str, str] | None = None) -> list[Status]:
        """The node's status and one per camera, for the last period (levels) and the whole run (counts)."""
        cfg = self.cfg
        snap = self.stats.snapshot()
        counts = snap.counts
        dropped = counts.get("dropped", 0)
        skipped = sum(v for k, v in counts.items() if k.startswith("skipped."))
        values = {
            "latency_p50_ms": f"{snap.latency_p50_ms:.2f}",
            "latency_p99_ms": f"{snap.latency_p99_ms:.2f}",
            "latency_max_ms": f"{snap.latency_max_ms:.2f}",
            "latency_samples": str(snap.latency_samples),
            "processing_time_max_ms_period": f"{self._period_max_ms:.2f}",
            "input_rate_hz": f"{snap.input_rate_hz:.2f}",
            "output_rate_hz": f"{snap.output_rate_hz:.2f}",
            "frames_in": str(counts.get("frames_in", 0)),
            "frames_out": str(counts.get("frames_out", 0)),
            "dropped": str(dropped),
            "skipped": str(skipped),
            "device": device,
        }
        values.update(self.intensity.decision.diagnostics())
        values.update({k: str(v) for k, v in sorted(counts.items())
                       if k not in values and not k.startswith("camera.")})
        if self.pair_logger is not None:
            values.update({f"pair_log.{k}": str(v) for k, v in self.pair_logger.stats().items()})
        values.update(extra or {})

        # Levels reflect the last period, not the whole run: one old drop must not stay a warning.
        new_dropped = dropped - self._reported.get("dropped", 0)
        new_skipped = skipped - self._reported.get("skipped", 0)
        self._reported.update(dropped=dropped, skipped=skipped)
        now = self._clock()
        slow_for = 0.0 if self._slow_since is None else now - self._slow_since
        level, message = OK, "ok"
        if snap.seconds_since_input > max(3 * cfg.diagnostics.period, 1.0):
            level, message = WARN, f"no cloud on {cfg.topics.cloud_in}"
        elif slow_for >= cfg.diagnostics.processing_time_error_s:
            level = ERROR
            message = (f"processing time above {cfg.diagnostics.processing_time_warn_ms:.0f} ms for "
                       f"{slow_for:.1f} s (slowest {self._period_max_ms:.0f} ms this period)")
        elif self._period_max_ms > cfg.diagnostics.processing_time_warn_ms:
            level = WARN
            message = (f"processing time {self._period_max_ms:.0f} ms above "
                       f"{cfg.diagnostics.processing_time_warn_ms:.0f} ms this period")
        elif new_dropped or new_skipped:
            level = WARN
            message = (f"{new_dropped} frames dropped (inference slower than input), {new_skipped} skipped "
                       "(bad input or inference failure) since the last report")
        self._period_max_ms = 0.0
        statuses = [Status(f"{node_name}: segmentation", level, message, values)]
        statuses += [self._camera_status(node_name, cam, counts) for cam in self.cameras.values()]
        return statuses

    def _camera_status(self, node_name: str, cam: CameraInput, counts: dict[str, int]) -> Status:
        """A camera's status: WARN without extrinsics, on a problem this period (decode, calibration,
        transform, an image from the future), or when clouds came and none found an image of it."""
        prefix = f"camera.{cam.name}."
        sync = cam.cache.stats()
        values = {k.removeprefix(prefix): str(v) for k, v in sorted(counts.items()) if k.startswith(prefix)}
        values.update({f"sync.{k}": str(v) for k, v in sync.items()})
        values["extrinsics"] = cam.extrinsics_source
        values["topic"] = cam.cfg.subscribed_topic
        totals = {
            "used": counts.get(prefix + "used", 0),
            "problems": sync["future"] + sum(v for k, v in counts.items()
                                             if k.startswith(prefix) and k != prefix + "used"),
            "unmatched": sync["no_image"] + sync["stale"] + sync["outside_slop"],
        }
        new = {k: v - self._reported.get(prefix + k, 0) for k, v in totals.items()}
        self._reported.update({prefix + k: v for k, v in totals.items()})
        level, message = OK, f"used in {new['used']} frames this period"
        if cam.extrinsics_source == "none":
            level, message = WARN, "no extrinsics (lidar_to_camera unset, no TF): camera not used"
        elif new["problems"]:
            level, message = WARN, f"{new['problems']} problems this period (see the counters); used in " \
                                   f"{new['used']} frames"
        elif new["unmatched"] and not new["used"]:
            level, message = WARN, f"no image within sync.slop for the last {new['unmatched']} clouds " \
                                   "(camera silent, late, or its clock off?)"
        return Status(f"{node_name}: camera {cam.name}", level, message, values)

    def close(self) -> None:
        """Flush the pair logger (idempotent)."""
        if self.pair_logger is not None:
            self.pair_logger.close()
            self.pair_logger = None
