"""Hostile input against running segment_nodes over real Fast DDS (tiny model, fused head, cameras on).

Every case of `docs/reliability.md` is a test id here (`test_hostile_input[<case>]`): the case's
messages are published, then a good camera + LiDAR frame. For each case the test asserts that the
node is alive, that the case's diagnostics counters moved by exactly the expected amounts and that no
other counter moved (besides the per-frame ones), that a log line naming the problem (`[<counter>]`)
appeared, that the case's own cloud -- when the policy is to segment it -- came back right, and that
the next good frame came back with the same header stamp, per-point labels equal to an in-process
`Segmenter` on the same points and image, and its overlay.

Two nodes take the cases:

- `xkd_hostile`, the console script in a child process (what users run), with three cameras: `cam`
  (raw Image), `jpg` (CompressedImage), `nocal` (no extrinsics: `lidar_to_camera` unset, no TF).
- `xkd_hostile_ouster`, a `SegmentNode` built in the test process, spun by an executor thread, its
  worker loop (`SegmentNode.run`) on another thread, driven over DDS like the first. It reads an
  Ouster-like cloud with `intensity.field: reflectivity`, and its segmenter is the real model behind
  a wrapper that raises `torch.cuda.OutOfMemoryError` on demand: the CUDA out-of-memory path runs in
  the real node on a CPU-only machine. Its log lines are read from /rosout.

Counters of a camera are read from the camera's own status (`<node>: camera <name>`, keys without the
`camera.<name>.` prefix); here they are named by their full counter key, as the log lines name them.

Start-up refusals (missing / incompatible checkpoint) run the console script itself.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from node_fixtures import (
    CAMERA,
    IMAGE_HW,
    SEGMENT_NODE,
    Harness,
    K,
    Received,
    T,
    node_params,
    synthetic_image,
    synthetic_scan,
    tiny_checkpoint,
    topics,
)

from xkd_core.classes import PALETTE_PACKED_RGB
from xkd_core.data.frame import CameraView
from xkd_core.inference import Segmenter
from xkd_ros.image import to_rclpy_camera_info, to_rclpy_compressed_image, to_rclpy_image
from xkd_ros.node_process import NodeProcess, ros_args, write_overrides
from xkd_ros.pipeline import _LOG_EVERY_S
from xkd_ros.pointcloud import FLOAT32, INT16, cloud_view, to_rclpy_cloud, xyzi_array
from xkd_ros.segment_node import EXIT_CONFIG
from xkd_ros.stamp import NS_PER_S, header_ns, rclpy_header

pytestmark = pytest.mark.ros

NODE = "xkd_hostile"
OUSTER_NODE = "xkd_hostile_ouster"
S = NS_PER_S
WAIT = 90.0  # generous: 2 shared CPU cores, and one case sends 2 million points
EXTRINSICS = [float(v) for v in T.reshape(-1)]
#: The reason a camera without `lidar_to_camera` is skipped: TF has no transform (ROS install with
#: tf2_ros), or there is no TF at all (the PyPI install: tf2_ros not importable).
NO_EXTRINSICS = "tf_missing" if importlib.util.find_spec("tf2_ros") is not None else "no_extrinsics"


# ----------------------------------------------------------------------------- what a case sends and expects


class SensorClock:
    """The sensors' 10 Hz clock. Stamps only move forward, except when a case jumps it back (a bag
    loop) into a range never used before, so no two frames of a node ever share a stamp."""

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
    points: np.ndarray  # (N, 4) as the node decodes them (intensity in the model's convention)
    labels: np.ndarray  # (N,) expected labels
    confidence: np.ndarray | None
    shape: tuple[int, int] | None = None  # (height, width) of an organised output
    frame_id: str = "velodyne"
    overlay: str | None = None  # the camera whose overlay for this stamp must be published


@dataclass
class Sent:
    """What a case published: the number of clouds, outputs it must produce, stamps that must not
    (gain) an output, the non-finite points the node will count, and an extra check of the
    diagnostics after the case."""

    clouds: int = 1
    outputs: list[Expected] = field(default_factory=list)
    no_output: dict[int, int] = field(default_factory=dict)  # stamp -> outputs it has (0, or 1 for a repeat)
    nonfinite: int = 0
    counters: dict[str, int] = field(default_factory=dict)  # exact deltas known only once sent
    #: (diagnostics after the good frame, delta of a key since before the case) -> None
    check: Callable[[dict[str, str], Callable[[str], int]], None] | None = None


def nonfinite(points: np.ndarray) -> int:
    """Points the node counts in `points_nonfinite`: x, y or z NaN or inf (a bad intensity alone gets
    the fill value and the point is segmented)."""
    return int((~np.isfinite(points[:, :3]).all(axis=1)).sum())


def decoded(points: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """`points` as the node decodes an x, y, z, intensity float32 cloud of 0..1 intensity: a NaN
    intensity becomes the fill value, others are clipped to 0..1."""
    out = points.copy()
    col = out[:, 3]
    nan = np.isnan(col)
    col[:] = np.clip(col, 0.0, 1.0)
    col[nan] = fill
    return out


# ----------------------------------------------------------------------------- the nodes


class Hostile:
    """One node under test, its harness, the reference model and the state the cases share."""

    def __init__(self, name: str, h: Harness, ref: Segmenter, cameras: list[str],
                 alive: Callable[[], bool], log_text: Callable[[], str], frame_id: str = "velodyne") -> None:
        self.name, self.h, self.ref, self.cameras = name, h, ref, cameras
        self.alive, self.log_text = alive, log_text
        self.frame_id = frame_id
        self.clock = SensorClock(500_000)
        self.last_good: int | None = None
        self.warned_at: dict[str, float] = {}  # log key -> last time a case triggered it
        self.overlays: dict[str, list[Any]] = {CAMERA: h.overlays}  # camera -> Received overlays
        self.pubs: dict[str, Any] = {}  # extra publishers (other cameras)
        self.cloud: Callable[[int, np.ndarray], Any] = lambda stamp, points: to_rclpy_cloud(
            rclpy_header(stamp, "velodyne"), xyzi_array(points))
        self.decode: Callable[[np.ndarray], np.ndarray] = decoded  # the node's reading of `cloud`
        self.segmenter: OutOfMemoryOnDemand | None = None  # the in-process node's, to ask for an OOM

    def log_tail(self) -> str:
        return self.log_text()[-3000:]

    def expect(self, points: np.ndarray, image: np.ndarray | None, exclude: np.ndarray | None = None) -> Any:
        """What the node publishes for these decoded points (camera view built as the node builds it)."""
        torch.set_num_threads(1)  # the nodes run with one torch thread
        views = None if image is None else [CameraView(image, K, T, "camera")]
        return self.ref.segment(points, views, exclude=exclude)

    def lidar_only(self, stamp: int, points: np.ndarray, **kw: Any) -> Expected:
        res = self.expect(points, None)
        return Expected(stamp, points, res.labels, res.confidence, **kw)

    def outputs_for(self, stamp: int) -> list[Any]:
        return [r.msg for r in self.h.clouds if header_ns(r.msg.header) == stamp]

    def wait_output(self, stamp: int) -> Any:
        ok = self.h.spin_until(lambda: bool(self.outputs_for(stamp)), WAIT, self)
        assert ok, f"no output for stamp {stamp}; alive={self.alive()}; log:\n{self.log_tail()}"
        return self.outputs_for(stamp)[0]

    def overlay_for(self, camera: str, stamp: int) -> Any | None:
        return next((r.msg for r in self.overlays[camera] if header_ns(r.msg.header) == stamp), None)

    def diagnostics(self, at_least: dict[str, int] | None = None) -> dict[str, str]:
        """The node's newest /diagnostics, published after now and showing `at_least` counts: the node's
        status, and each camera's values under `camera.<name>.<key>`."""
        t = time.monotonic()

        def fresh() -> bool:
            d = self.h.latest_diagnostics(self.name, t)
            return d is not None and all(int(d.get(k, 0)) >= v for k, v in (at_least or {}).items())

        assert self.h.spin_until(fresh, WAIT, self), f"no diagnostics; log:\n{self.log_tail()}"
        values = dict(self.h.latest_diagnostics(self.name, t))
        for cam in self.cameras:  # the same DiagnosticArray: nothing was received in between
            status = self.h.latest_diagnostics(self.name, t, status=f"camera {cam}")
            assert status is not None, f"no status for camera {cam}"
            values.update({f"camera.{cam}.{k}": v for k, v in status.items()})
        return values

    def good_frame(self, seed: int) -> Expected:
        """A normal camera + LiDAR frame; returns what came back, checked against the reference."""
        stamp = self.clock.next()
        points, image = synthetic_scan(seed), synthetic_image(seed)
        self.h.publish_camera(stamp, image)
        self.h.spin_for(0.3)  # the image is in the node's cache before the cloud asks for it
        self.publish(self.cloud(stamp, points))
        points = self.decode(points)
        res = self.expect(points, image)
        exp = Expected(stamp, points, res.labels, res.confidence, frame_id=self.frame_id, overlay=CAMERA)
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

    def set_parameters(self, values: dict[str, Any]) -> None:
        """Set run-time parameters through the node's parameter service (as `ros2 param set` does)."""
        from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
        from rcl_interfaces.srv import SetParameters

        def value(v: Any) -> ParameterValue:
            if isinstance(v, bool):
                return ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=v)
            if isinstance(v, list):
                return ParameterValue(type=ParameterType.PARAMETER_DOUBLE_ARRAY, double_array_value=v)
            return ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=float(v))

        client = self.h.node.create_client(SetParameters, f"/{self.name}/set_parameters")
        try:
            assert client.wait_for_service(timeout_sec=WAIT)
            params = [Parameter(name=k, value=value(v)) for k, v in values.items()]
            future = client.call_async(SetParameters.Request(parameters=params))
            assert self.h.spin_until(future.done, WAIT, self)
            assert all(r.successful for r in future.result().results), future.result().results
        finally:
            self.h.node.destroy_client(client)

    # the Harness calls these while it waits
    def log(self) -> str:
        return self.log_text()


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
    bad = ~np.isfinite(exp.points[:, :3]).all(axis=1)
    assert (out["label"][bad] == 0).all() and (out["confidence"][bad] == 0).all()
    if exp.overlay is not None:
        assert ctx.h.spin_until(lambda: ctx.overlay_for(exp.overlay, exp.stamp) is not None, WAIT, ctx), \
            f"no overlay of camera {exp.overlay} for stamp {exp.stamp}"


def prime(ctx: Hostile) -> None:
    """Frames until one comes back with its overlay (the first messages after discovery may be missed)."""
    for attempt in range(5):
        stamp = ctx.clock.next()
        ctx.h.publish_camera(stamp, synthetic_image(attempt))
        ctx.h.spin_for(0.5)
        ctx.publish(ctx.cloud(stamp, synthetic_scan(attempt)))
        if ctx.h.spin_until(lambda s=stamp: ctx.overlay_for(CAMERA, s) is not None, 15.0, ctx):
            return
    raise AssertionError(f"{ctx.name} never answered; log:\n{ctx.log_tail()}")


def wait_subscribed(ctx: Hostile, pub: Any) -> None:
    assert ctx.h.spin_until(lambda: pub.get_subscription_count() >= 1, WAIT, ctx), ctx.log_tail()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


def base_params(name: str, checkpoint: Path) -> dict[str, Any]:
    return {"checkpoint": str(checkpoint), "device": "cpu", "cpu_threads": 1, "fuse_camera": True,
            "max_range": 100.0, "diagnostics.period": 0.5,
            "qos.input.reliability": "reliable",  # one 2-million-point message must arrive whole
            **node_params(name)}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path):
    """The console script with cameras `cam` (raw), `jpg` (compressed) and `nocal` (no extrinsics)."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, CompressedImage, Image

    tmp = tmp_path_factory.mktemp("hostile")
    params = {**base_params(NODE, checkpoint), "cameras.names": [CAMERA, "jpg", "nocal"],
              "cameras.jpg.image_topic": f"/{NODE}/jpg/image_raw", "cameras.jpg.transport": "compressed",
              "cameras.jpg.camera_info_topic": f"/{NODE}/jpg/camera_info",
              "cameras.jpg.lidar_to_camera": EXTRINSICS,
              "cameras.nocal.image_topic": f"/{NODE}/nocal/image_raw",
              "cameras.nocal.camera_info_topic": f"/{NODE}/nocal/camera_info"}
    node = NodeProcess([write_overrides(tmp / "params.yaml", params, NODE)], tmp / "node.log",
                       extra_ros_args=["-r", f"__node:={NODE}"])
    h = Harness(f"{NODE}_harness", topics(NODE))
    ref = Segmenter.from_checkpoint(checkpoint, "cpu", fuse=True, max_range=100.0)
    ctx = Hostile(NODE, h, ref, [CAMERA, "jpg", "nocal"], node.alive, node.log_text)
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    ctx.pubs = {"jpg_image": h.node.create_publisher(CompressedImage, f"/{NODE}/jpg/image_raw/compressed",
                                                     reliable),
                "jpg_info": h.node.create_publisher(CameraInfo, f"/{NODE}/jpg/camera_info", reliable),
                "nocal_image": h.node.create_publisher(Image, f"/{NODE}/nocal/image_raw", reliable),
                "nocal_info": h.node.create_publisher(CameraInfo, f"/{NODE}/nocal/camera_info", reliable)}
    ctx.overlays["jpg"] = []
    h.node.create_subscription(Image, f"/{NODE}/overlay/jpg",
                               lambda m: ctx.overlays["jpg"].append(Received(m, time.monotonic())), reliable)
    try:
        h.wait_connected(node, with_camera=True, timeout=120.0)
        for pub in ctx.pubs.values():
            wait_subscribed(ctx, pub)
        prime(ctx)
        ctx.good_frame(100)
        yield ctx
    finally:
        h.close()
        rc = node.stop()
    assert rc == 0, f"segment_node exited with {rc} on SIGINT; log:\n{node.log_tail()}"


class OutOfMemoryOnDemand:
    """The real `Segmenter`, except that its next `ooms` calls raise CUDA out-of-memory first (what the
    GPU does when a frame does not fit), counted in `calls`."""

    def __init__(self, real: Segmenter) -> None:
        self.real = real
        self.ooms = 0
        self.calls: list[int] = []
        self.input_convention = real.input_convention

    @property
    def max_range(self) -> float | None:
        return self.real.max_range

    @max_range.setter
    def max_range(self, value: float | None) -> None:  # the node sets it when max_range changes
        self.real.max_range = value

    def segment(self, points: np.ndarray, views: Any = None, exclude: np.ndarray | None = None) -> Any:
        self.calls.append(len(points))
        if self.ooms:
            self.ooms -= 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; "
                                              "79.19 GiB total capacity)")
        torch.set_num_threads(1)  # per thread: the worker thread computes as the reference does
        return self.real.segment(points, views, exclude=exclude)


#: An Ouster cloud as ouster-ros publishes it (PointOS, 48 bytes): `intensity` is the signal in photons
#: (range-dependent), `reflectivity` the calibrated 8-bit reflectivity the model should see.
OUSTER = np.dtype({"names": ["x", "y", "z", "intensity", "t", "reflectivity", "ring", "ambient", "range"],
                   "formats": ["<f4", "<f4", "<f4", "<f4", "<u4", "<u2", "<u2", "<u2", "<u4"],
                   "offsets": [0, 4, 8, 16, 20, 24, 26, 28, 32], "itemsize": 48})


def ouster_cloud(stamp: int, points: np.ndarray) -> Any:
    """`points` (0..1 reflectance in column 3) as an Ouster driver publishes them."""
    arr = np.zeros(len(points), OUSTER)
    for i, name in enumerate("xyz"):
        arr[name] = points[:, i]
    rng = np.linalg.norm(np.nan_to_num(points[:, :3].astype(np.float64)), axis=1)
    arr["intensity"] = np.nan_to_num(points[:, 3]) * 2.0e5 / np.maximum(rng, 1.0) ** 2
    arr["reflectivity"] = np.rint(np.nan_to_num(points[:, 3]) * 255.0)
    arr["ring"] = np.arange(len(points)) % 64
    arr["range"] = np.rint(rng * 1000.0)
    return to_rclpy_cloud(rclpy_header(stamp, "os_lidar"), arr)


def ouster_decoded(points: np.ndarray) -> np.ndarray:
    """What the node reads from `ouster_cloud(points)` with `intensity.field: reflectivity`: x, y, z and
    the 8-bit reflectivity scaled to 0..1 (the auto scale decides 8bit for uint16 values up to 255)."""
    out = points.copy()
    out[:, 3] = np.rint(np.nan_to_num(points[:, 3]) * 255.0).astype(np.float32) * np.float32(1.0 / 255.0)
    return out


class InProcessNode:
    """A `SegmentNode` in this process: an executor thread for its callbacks, a thread for its worker
    loop (`SegmentNode.run`, as `main` runs it), its log lines taken from /rosout."""

    def __init__(self, params_file: Path, name: str, segmenter: Any, log_sub_node: Any) -> None:
        import rclpy
        from rcl_interfaces.msg import Log
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

        from xkd_ros.segment_node import SegmentNode

        self.lines: list[str] = []
        rosout_qos = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE,
                                durability=DurabilityPolicy.TRANSIENT_LOCAL)
        log_sub_node.create_subscription(Log, "/rosout", lambda m: self.lines.append(m.msg) if m.name == name
                                         else None, rosout_qos)
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = SegmentNode(segmenter=segmenter, context=self.context,
                                cli_args=ros_args([params_file]) + ["-r", f"__node:={name}"])
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._guard, args=(self.executor.spin,), daemon=True),
                        threading.Thread(target=self._guard, args=(self.node.run,), daemon=True)]
        for t in self.threads:
            t.start()

    def _guard(self, fn: Callable[[], None]) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            fn()
        except ExternalShutdownException:
            pass
        except BaseException as exc:  # reported by alive() and stop()
            self.errors.append(exc)

    def alive(self) -> bool:
        return all(t.is_alive() for t in self.threads) and not self.errors

    def log_text(self) -> str:
        return "\n".join(self.lines)

    def stop(self) -> None:
        self.node.stop()
        self.context.try_shutdown()
        for t in self.threads:
            t.join(30)
        self.executor.shutdown()
        self.node.close()
        self.node.destroy_node()
        assert not self.errors, self.errors
        assert not any(t.is_alive() for t in self.threads)


@pytest.fixture(scope="module")
def ouster(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path):
    """The in-process node reading an Ouster-like cloud's `reflectivity`, with the OOM-on-demand model."""
    tmp = tmp_path_factory.mktemp("ouster")
    params = {**base_params(OUSTER_NODE, checkpoint), "intensity.field": "reflectivity"}
    h = Harness(f"{OUSTER_NODE}_harness", topics(OUSTER_NODE))
    segmenter = OutOfMemoryOnDemand(Segmenter.from_checkpoint(checkpoint, "cpu", fuse=True, max_range=100.0))
    node = InProcessNode(write_overrides(tmp / "params.yaml", params, OUSTER_NODE), OUSTER_NODE, segmenter,
                         h.node)
    ref = Segmenter.from_checkpoint(checkpoint, "cpu", fuse=True, max_range=100.0)
    ctx = Hostile(OUSTER_NODE, h, ref, [CAMERA], node.alive, node.log_text, frame_id="os_lidar")
    ctx.cloud, ctx.decode = ouster_cloud, ouster_decoded
    ctx.segmenter = segmenter
    try:
        h.wait_connected(ctx, with_camera=True, timeout=120.0)
        prime(ctx)
        ctx.good_frame(100)
        diag = ctx.diagnostics()
        assert (diag["intensity.field"], diag["intensity.scale"]) == ("reflectivity", "8bit"), diag
        yield ctx
    finally:
        h.close()
        node.stop()


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


def xyzi_cloud(stamp: int, points: np.ndarray) -> Any:
    return to_rclpy_cloud(rclpy_header(stamp, "velodyne"), xyzi_array(points))


def camera_info(stamp: int, k: np.ndarray = K, hw: tuple[int, int] = IMAGE_HW, **info: Any) -> Any:
    return to_rclpy_camera_info(rclpy_header(stamp, "camera"), k, hw, **info)


def raw_image(stamp: int, encoding: str, height: int, width: int, step: int, nbytes: int) -> Any:
    from sensor_msgs.msg import Image

    msg = Image(header=rclpy_header(stamp, "camera"), height=height, width=width, encoding=encoding,
                step=step)
    msg.data = bytes(nbytes)
    return msg


def bayer_rggb8(stamp: int, rgb: np.ndarray) -> Any:
    """The Bayer mosaic a raw vehicle camera sends (RGGB cells: R at even row / even column)."""
    from sensor_msgs.msg import Image

    h, w = rgb.shape[:2]
    mosaic = np.empty((h, w), np.uint8)
    mosaic[0::2, 0::2] = rgb[0::2, 0::2, 0]
    mosaic[0::2, 1::2] = rgb[0::2, 1::2, 1]
    mosaic[1::2, 0::2] = rgb[1::2, 0::2, 1]
    mosaic[1::2, 1::2] = rgb[1::2, 1::2, 2]
    msg = Image(header=rclpy_header(stamp, "camera"), height=h, width=w, encoding="bayer_rggb8", step=w)
    msg.data = mosaic.tobytes()
    return msg


def garbage_compressed(stamp: int) -> Any:
    """A CompressedImage that says JPEG but holds bytes no decoder reads (a corrupted recording)."""
    from sensor_msgs.msg import CompressedImage

    msg = CompressedImage(header=rclpy_header(stamp, "camera"), format="rgb8; jpeg compressed bgr8")
    msg.data = np.random.default_rng(3).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    return msg


# ----------------------------------------------------------------------------- the cases


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
    msg = xyzi_cloud(stamp, points)
    msg.height, msg.width, msg.row_step = 6, 900, 900 * 16
    ctx.publish(msg)
    return Sent(outputs=[ctx.lidar_only(stamp, points, shape=(6, 900))], nonfinite=nonfinite(points))


def cloud_nan_inf(ctx: Hostile) -> Sent:
    """inf / -inf coordinates (label 0) and NaN intensities (fill value 0, the point is segmented)."""
    stamp, points = ctx.clock.next(), synthetic_scan(4)
    finite = np.flatnonzero(np.isfinite(points).all(axis=1))
    rows = np.random.default_rng(4).choice(finite, 60, replace=False)
    points[rows[:20], 0] = np.inf
    points[rows[20:40], 2] = -np.inf
    points[rows[40:], 3] = np.nan
    ctx.publish(xyzi_cloud(stamp, points))
    assert nonfinite(points) == 47  # the scan's 7 NaN returns and the 40 infinite points
    got = decoded(points)
    assert (got[rows[40:], 3] == 0.0).all()
    return Sent(outputs=[ctx.lidar_only(stamp, got)], nonfinite=47)


def cloud_all_nan(ctx: Hostile) -> Sent:
    stamp = ctx.clock.next()
    points = np.full((500, 4), np.nan, np.float32)
    ctx.publish(xyzi_cloud(stamp, points))
    zeros = np.zeros(500, np.uint16)
    return Sent(outputs=[Expected(stamp, decoded(points), zeros, np.zeros(500, np.float32))], nonfinite=500)


def cloud_absurd_coordinates(ctx: Hostile) -> Sent:
    """Finite but absurd coordinates (1e30 m): beyond max_range, label 0; the rest segmented as usual."""
    stamp, points = ctx.clock.next(), synthetic_scan(5)
    points[:10, :3] = 1e30
    points[10:20, :3] = -3e38
    ctx.publish(xyzi_cloud(stamp, points))
    exp = ctx.lidar_only(stamp, points)
    assert (exp.labels[:20] == 0).all()
    return Sent(outputs=[exp], nonfinite=nonfinite(points))


def cloud_2m_points(ctx: Hostile) -> Sent:
    """Two million points in one message (a merged multi-LiDAR cloud): segmented like any other."""
    stamp = ctx.clock.next()
    rng = np.random.default_rng(6)
    n = 2_000_000
    points = np.c_[rng.uniform([-10, -10, -2], [10, 10, 2], (n, 3)), rng.uniform(0, 1, n)].astype(np.float32)
    ctx.publish(xyzi_cloud(stamp, points))
    return Sent(outputs=[ctx.lidar_only(stamp, points)])


def ego_crop_and_min_range(ctx: Hostile) -> Sent:
    """`ego_crop.enabled` and `min_range: 4` set at run time; the scan has returns from the vehicle's
    body (inside the default box) and a ring between the box and 4 m: all those get label 0."""
    rng = np.random.default_rng(15)
    scan = synthetic_scan(15)
    r = np.linalg.norm(np.nan_to_num(scan[:, :3].astype(np.float64), nan=99.0), axis=1)
    scan = scan[np.abs(r - 4.0) > 0.01]  # nothing on the 4 m boundary: float rounding cannot matter
    body = np.c_[rng.uniform([-2.4, -1.0, -2.4], [2.4, 1.0, 0.4], (150, 3)), rng.uniform(0, 1, 150)]
    angle, radius = rng.uniform(0, 2 * np.pi, 100), rng.uniform(2.8, 3.9, 100)
    ring = np.c_[radius * np.cos(angle), radius * np.sin(angle), np.full(100, -1.5), rng.uniform(0, 1, 100)]
    points = np.concatenate([scan, body, ring]).astype(np.float32)
    xyz = points[:, :3]
    with np.errstate(invalid="ignore"):
        inside = ((xyz >= np.float32([-2.5, -1.1, -2.5])) & (xyz <= np.float32([2.5, 1.1, 0.5]))).all(axis=1)
        near = ((xyz.astype(np.float64) ** 2).sum(axis=1) < 16.0) & ~inside
    assert inside.sum() >= 150 and near.sum() >= 100
    ctx.set_parameters({"ego_crop.enabled": True, "min_range": 4.0})
    stamp = ctx.clock.next()
    ctx.publish(xyzi_cloud(stamp, points))
    res = ctx.expect(points, None, exclude=inside | near)
    assert (res.labels[inside | near] == 0).all()
    exp = Expected(stamp, points, res.labels, res.confidence)
    check_output(ctx, exp)  # before the parameters go back
    ctx.set_parameters({"ego_crop.enabled": False, "min_range": 0.0})
    counts = {"points_ego_crop": int(inside.sum()), "points_min_range": int(near.sum())}
    return Sent(outputs=[exp], nonfinite=nonfinite(points), counters=counts)


def image_case(make_image: Callable[[int], Any], camera: str = CAMERA,
               seen: Callable[[Any], np.ndarray] | None = None) -> Callable[[Hostile], Sent]:
    """An image (and a good CameraInfo) of `camera` with the cloud of the same stamp: the cloud is
    segmented without it, or, with `seen` (message -> the RGB picture it holds), fused with it."""
    def send(ctx: Hostile) -> Sent:
        stamp, points = ctx.clock.next(), synthetic_scan(7)
        image = make_image(stamp)
        info = camera_info(stamp)
        if camera == CAMERA:
            ctx.h.info_pub.publish(info)
            ctx.h.image_pub.publish(image)
        else:
            ctx.pubs[f"{camera}_info"].publish(info)
            ctx.pubs[f"{camera}_image"].publish(image)
        ctx.h.spin_for(0.3)
        ctx.publish(xyzi_cloud(stamp, points))
        if seen is None:
            return Sent(outputs=[ctx.lidar_only(stamp, points)], nonfinite=nonfinite(points))
        res = ctx.expect(points, seen(image))
        return Sent(outputs=[Expected(stamp, points, res.labels, res.confidence, overlay=camera)],
                    nonfinite=nonfinite(points))

    return send


def demosaiced(msg: Any) -> np.ndarray:
    """The picture in a bayer_rggb8 Image (OpenCV names a pattern after the cell at pixel (1, 1): ROS
    rggb is OpenCV's BG)."""
    mosaic = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width)
    return cv2.cvtColor(mosaic, cv2.COLOR_BayerBG2RGB)


def jpeg_decoded(msg: Any) -> np.ndarray:
    """The picture in a JPEG CompressedImage."""
    bgr = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def image_never_used(ctx: Hostile) -> Sent:
    """A depth image stamped between two clouds: no cloud takes it, so it is never decoded (no error)."""
    stamp = ctx.clock.next()  # no cloud at this stamp; the good frame's cloud comes 0.1 s later
    ctx.h.image_pub.publish(raw_image(stamp, "16UC1", 64, 192, 384, 64 * 384))
    ctx.h.spin_for(0.3)
    return Sent(clouds=0)


def camera_info_case(**bad_info: Any) -> Callable[[Hostile], Sent]:
    """A refused CameraInfo, then a good image and cloud: the frame is segmented without the image."""
    def send(ctx: Hostile) -> Sent:
        stamp, points, image = ctx.clock.next(), synthetic_scan(8), synthetic_image(8)
        ctx.h.info_pub.publish(camera_info(stamp, **bad_info))
        ctx.h.spin_for(0.3)
        ctx.h.image_pub.publish(to_rclpy_image(rclpy_header(stamp, "camera"), image))
        ctx.h.spin_for(0.3)
        ctx.publish(xyzi_cloud(stamp, points))
        return Sent(outputs=[ctx.lidar_only(stamp, points)], nonfinite=nonfinite(points))

    return send


def camera_without_extrinsics(ctx: Hostile) -> Sent:
    """Camera `nocal` has no `lidar_to_camera` and TF has no transform: its image is not used."""
    send = image_case(lambda s: to_rclpy_image(rclpy_header(s, "camera"), synthetic_image(9)), "nocal")
    sent = send(ctx)

    def check(after: dict[str, str], delta: Callable[[str], int]) -> None:
        assert after["camera.nocal.extrinsics"] == ("tf" if NO_EXTRINSICS == "tf_missing" else "none")
        assert after["camera.nocal._level"] == "1"  # WARN
        assert int(after.get("camera.nocal.used", 0)) == 0  # never, in the whole run

    sent.check = check
    return sent


def image_far_future(ctx: Hostile) -> Sent:
    stamp, points = ctx.clock.next(), synthetic_scan(9)
    ahead = stamp + 3600 * S
    ctx.h.info_pub.publish(camera_info(ahead))
    ctx.h.image_pub.publish(to_rclpy_image(rclpy_header(ahead, "camera"), synthetic_image(9)))
    ctx.h.spin_for(0.3)
    ctx.publish(xyzi_cloud(stamp, points))
    return Sent(outputs=[ctx.lidar_only(stamp, points)], nonfinite=nonfinite(points))


def stamp_duplicate(ctx: Hostile) -> Sent:
    """The previous good frame's stamp again, other points: dropped, that stamp keeps its one output."""
    ctx.publish(xyzi_cloud(ctx.last_good, synthetic_scan(10)))
    return Sent(no_output={ctx.last_good: 1})


def stamp_out_of_order(ctx: Hostile) -> Sent:
    stamp = ctx.last_good - S // 4  # never used: the clock ticks in 0.1 s
    ctx.publish(xyzi_cloud(stamp, synthetic_scan(11)))
    return Sent(no_output={stamp: 0})


def stamp_loop_jump_back(ctx: Hostile) -> Sent:
    """A bag that loops: camera and LiDAR jump back 400000 s together and go on from there, fused."""
    stamp = ctx.clock.jump_to(100_000)
    points, image = synthetic_scan(12), synthetic_image(12)
    ctx.h.publish_camera(stamp, image)
    ctx.h.spin_for(0.3)
    ctx.h.publish_cloud(stamp, points)
    res = ctx.expect(points, image)
    return Sent(outputs=[Expected(stamp, points, res.labels, res.confidence, overlay=CAMERA)],
                nonfinite=nonfinite(points))


def stamp_far_future(ctx: Hostile) -> Sent:
    """A stamp a day ahead of the node's clock: segmented without the camera, and the following good
    frame (back on the sensor clock) is neither a jump back nor out of order."""
    stamp, points = time.time_ns() + 86400 * S, synthetic_scan(13)
    ctx.publish(xyzi_cloud(stamp, points))
    return Sent(outputs=[ctx.lidar_only(stamp, points)], nonfinite=nonfinite(points))


def intensity_field_missing(ctx: Hostile) -> Sent:
    """A cloud without the `reflectivity` the node reads (a Velodyne layout): every point gets the
    checkpoint's fill intensity, the cloud is segmented."""
    stamp, points = ctx.clock.next(), synthetic_scan(16)
    ctx.publish(xyzi_cloud(stamp, points))
    got = points.copy()
    got[:, 3] = ctx.ref.input_convention.intensity_fill
    return Sent(outputs=[ctx.lidar_only(stamp, got)], nonfinite=nonfinite(points))


def gpu_oom(k: int) -> Callable[[Hostile], Sent]:
    """A frame whose first k segmentation attempts hit CUDA out-of-memory."""
    def send(ctx: Hostile) -> Sent:
        stamp, points = ctx.clock.next(), synthetic_scan(14 + k)
        ctx.segmenter.ooms = k
        calls = len(ctx.segmenter.calls)
        ctx.publish(ouster_cloud(stamp, points))
        points = ouster_decoded(points)
        n = len(points)

        def check(after: dict[str, str], delta: Callable[[str], int]) -> None:
            # the frame, its retry on every second point, then the good frame (one call: no OOM left)
            assert ctx.segmenter.ooms == 0 and len(ctx.segmenter.calls) == calls + 3
            assert ctx.segmenter.calls[calls:calls + 2] == [n, (n + 1) // 2]

        if k >= 2:  # accepted for segmentation (its NaN points counted), then skipped
            return Sent(no_output={stamp: 0}, nonfinite=nonfinite(points), check=check)
        half = ctx.expect(np.ascontiguousarray(points[::2]), None)  # the retry: every second point
        labels = np.zeros(n, np.uint16)
        labels[::2] = half.labels
        confidence = np.zeros(n, np.float32)
        confidence[::2] = half.confidence
        return Sent(outputs=[Expected(stamp, points, labels, confidence, frame_id="os_lidar")],
                    nonfinite=nonfinite(points), check=check)

    return send


@dataclass
class Case:
    send: Callable[[Hostile], Sent]
    counters: dict[str, int]  # exact deltas (skipped.* also add up to the `skipped` total)
    log: str | None  # a substring of the log line that names the problem; None: valid input, no warning
    node: str = "hostile"  # the fixture of the node that takes the case


def bad(make: Callable[[int], Any], reason: str) -> Case:
    key = f"skipped.cloud_format.{reason}"
    return Case(skipped_cloud(make), {key: 1}, f"[{key}]")


def camera_problem(send: Callable[[Hostile], Sent], *keys: str, camera: str = CAMERA) -> Case:
    """A camera case whose counters `camera.<camera>.<key>` each move by one; the first one is logged."""
    full = [f"camera.{camera}.{k}" for k in keys]
    return Case(send, dict.fromkeys(full, 1), f"[{full[0]}]")


CAM = f"camera.{CAMERA}."
CASES: dict[str, Case] = {
    # --- malformed clouds: skipped
    "cloud_point_step_too_small": bad(lambda s: raw_cloud(s, XYZI, 12, 10, bytes(120)), "bad_point_step"),
    "cloud_row_step_too_small": bad(lambda s: raw_cloud(s, XYZI, 16, 10, bytes(150), row_step=150),
                                    "bad_row_step"),
    "cloud_data_shorter_than_row_step": bad(lambda s: raw_cloud(s, XYZI, 16, 10, bytes(100)),
                                            "bad_data_length"),
    "cloud_data_longer_than_row_step": bad(lambda s: raw_cloud(s, XYZI, 16, 10, bytes(161)),
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
    "ego_crop_and_min_range": Case(ego_crop_and_min_range, {}, None),  # counts: Sent.counters
    # --- images and calibration: the cloud is segmented without the image (decoded only when used)
    "image_depth_16uc1": camera_problem(image_case(lambda s: raw_image(s, "16UC1", 64, 192, 384, 64 * 384)),
                                        "image_format.unsupported_encoding"),
    "image_depth_32fc1": camera_problem(image_case(lambda s: raw_image(s, "32FC1", 64, 192, 768, 64 * 768)),
                                        "image_format.unsupported_encoding"),
    "image_step_shorter_than_row": camera_problem(
        image_case(lambda s: raw_image(s, "rgb8", 64, 192, 500, 64 * 500)), "image_format.bad_step"),
    "image_data_length_wrong": camera_problem(
        image_case(lambda s: raw_image(s, "rgb8", 64, 192, 576, 64 * 576 - 5)),
        "image_format.bad_data_length"),
    "image_yuv422_odd_width": camera_problem(
        image_case(lambda s: raw_image(s, "yuv422", 64, 191, 382, 64 * 382)), "image_format.odd_width"),
    "image_size_not_camera_info": camera_problem(
        image_case(lambda s: to_rclpy_image(rclpy_header(s, "camera"),
                                            np.zeros((2 * IMAGE_HW[0], IMAGE_HW[1], 3), np.uint8))),
        "camera_info.size_mismatch"),
    "image_never_used": Case(image_never_used, {CAM + "image_format.unsupported_encoding": 0,
                                                CAM + "sync.images": 2}, None),
    "image_bayer_rggb8": Case(image_case(lambda s: bayer_rggb8(s, synthetic_image(17)), seen=demosaiced),
                              {CAM + "used": 2}, None),
    "compressed_jpeg": Case(image_case(lambda s: to_rclpy_compressed_image(rclpy_header(s, "camera"),
                                                                           synthetic_image(18), quality=90),
                                       "jpg", seen=jpeg_decoded), {"camera.jpg.used": 1}, None),
    "compressed_undecodable": camera_problem(image_case(garbage_compressed, "jpg"),
                                             "image_format.undecodable", camera="jpg"),
    "camera_info_zero_k": camera_problem(camera_info_case(k=np.zeros((3, 3))), "camera_info.zero_k",
                                         "camera_info.unusable"),
    "camera_info_unsupported_distortion": camera_problem(
        camera_info_case(distortion_model="fancy_lens", D=(0.1, 0.01)), "camera_info.unsupported_distortion",
        "camera_info.unusable"),
    "camera_without_extrinsics": camera_problem(camera_without_extrinsics, NO_EXTRINSICS, camera="nocal"),
    "image_stamp_far_future": camera_problem(image_far_future, "sync.future"),
    # --- stamps
    "stamp_duplicate": Case(stamp_duplicate, {"skipped.stamp.duplicate": 1}, "[skipped.stamp.duplicate]"),
    "stamp_out_of_order": Case(stamp_out_of_order, {"skipped.stamp.out_of_order": 1},
                               "[skipped.stamp.out_of_order]"),
    # every camera's cache sees the clouds jump back; `cam`'s also sees its images jump back
    "stamp_jump_back_bag_loop": Case(stamp_loop_jump_back, {"stamp.time_jump": 1, CAM + "sync.time_jump": 2,
                                                            "camera.jpg.sync.time_jump": 1,
                                                            "camera.nocal.sync.time_jump": 1},
                                     "[stamp.time_jump]"),
    "stamp_far_future": Case(stamp_far_future, {"stamp.future": 1, "stamp.time_jump": 0}, "[stamp.future]"),
    # --- the in-process node: Ouster-like cloud, reflectivity read, CUDA out of memory on demand
    "intensity_field_missing": Case(intensity_field_missing, {"intensity.field_missing": 1,
                                                              "cloud_layout_changes": 2},
                                    "[intensity.field_missing]", node="ouster"),
    "gpu_oom_retried_on_half": Case(gpu_oom(1), {"out_of_memory": 1, "out_of_memory_subsampled": 1},
                                    "[out_of_memory]", node="ouster"),
    "gpu_oom_twice_skipped": Case(gpu_oom(2), {"out_of_memory": 1, "skipped.out_of_memory": 1},
                                  "[skipped.out_of_memory]", node="ouster"),
}

#: Values that move with every frame (rates, gauges, per-frame counts checked separately).
PER_FRAME = ("frames_in", "frames_out", "latency_samples", "points_nonfinite", "dropped", "skipped")
_PER_FRAME_PREFIXES = ("process.", "queue.", "pair_log.", "intensity.frames_seen", "intensity.decided",
                       "intensity.locked")
_CAMERA_PER_FRAME = re.compile(
    r"camera\.\w+\.(used|sync\.(matched|no_image|outside_slop|stale|images|evicted))")


def _int(value: str | None) -> int | None:
    try:
        return 0 if value is None else int(value)
    except ValueError:
        return None


def moved_unexpectedly(before: dict[str, str], after: dict[str, str], expected: dict[str, int]) -> dict:
    """Counters that moved although neither the case nor every frame moves them."""
    out = {}
    for key in set(before) | set(after):
        if key.rsplit(".", 1)[-1].startswith("_") or key in expected or key in PER_FRAME:
            continue
        if key.startswith(_PER_FRAME_PREFIXES) or _CAMERA_PER_FRAME.fullmatch(key):
            continue
        a, b = _int(before.get(key)), _int(after.get(key))
        if a is not None and b is not None and a != b:
            out[key] = b - a
    return out


@pytest.mark.parametrize("case_id", list(CASES))
def test_hostile_input(request: pytest.FixtureRequest, case_id: str) -> None:
    case = CASES[case_id]
    ctx: Hostile = request.getfixturevalue(case.node)
    assert ctx.alive(), f"the node died before this case; log:\n{ctx.log_tail()}"
    ctx.wait_out_throttle([k for k in case.counters if k != "skipped"])
    # every output received so far is counted (the node counts a frame just after publishing it)
    before = ctx.diagnostics(at_least={"frames_out": len(ctx.h.clouds)})
    log_start = len(ctx.log_text())

    sent = case.send(ctx)
    for exp in sent.outputs:
        check_output(ctx, exp)
    good = ctx.good_frame(200 + list(CASES).index(case_id))
    for stamp, count in sent.no_output.items():  # the good frame came after: these were handled
        assert len(ctx.outputs_for(stamp)) == count, stamp
    counters = {**case.counters, **sent.counters}
    for k in counters:
        ctx.warned_at[k] = time.monotonic()

    frames_out = int(before["frames_out"]) + len(sent.outputs) + 1
    after = ctx.diagnostics(at_least={"frames_out": frames_out})
    assert ctx.alive()

    def delta(key: str) -> int:
        return int(after.get(key, 0)) - int(before.get(key, 0))

    assert delta("frames_in") == sent.clouds + 1
    assert delta("frames_out") == len(sent.outputs) + 1
    assert delta("dropped") == 0
    assert delta("points_nonfinite") == sent.nonfinite + nonfinite(good.points)
    skipped = {k: v for k, v in counters.items() if k.startswith("skipped.")}
    assert delta("skipped") == sum(skipped.values())
    for key, want in counters.items():
        assert delta(key) == want, (key, before.get(key), after.get(key))
    assert moved_unexpectedly(before, after, counters) == {}
    if sent.check is not None:
        sent.check(after, delta)
    if case.log is not None:
        def logged() -> bool:
            return case.log in ctx.log_text()[log_start:]

        assert ctx.h.spin_until(logged, 10.0, ctx), f"no log line with {case.log!r}:\n" \
                                                    f"{ctx.log_text()[log_start:]}"


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
    model_cfg = ckpt["config"]["model"]
    wrong_arch = {**model_cfg, "architecture": {**model_cfg["architecture"], "fpn_dim": 16}}
    wrong = dict(ckpt, config={**ckpt["config"], "model": wrong_arch})
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
    assert result.returncode == EXIT_CONFIG, result.stderr  # a configuration error: systemd does not retry
    lines = [line for line in result.stderr.splitlines() if "refusing to start" in line]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "parameter 'checkpoint'" in lines[0] and str(path) in lines[0] and words in lines[0], lines[0]


# ----------------------------------------------------------------------------- the net under the checks


def test_unforeseen_exception_is_contained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capfd: pytest.CaptureFixture) -> None:
    """An exception no check foresaw must not escape a subscription callback -- in rclpy that stops the
    executor, i.e. the node -- nor end the worker loop. It is counted and logged, and the next message
    is handled normally. (In-process node: the failures are injected with monkeypatch into the
    decoders the callbacks call and into the frame processing of the worker.)"""
    import rclpy

    from xkd_ros import cameras, intensity, segment_node

    ckpt = tiny_checkpoint(tmp_path / "tiny.pt")
    params = write_overrides(tmp_path / "params.yaml", {"checkpoint": str(ckpt), "device": "cpu",
                                                        "cpu_threads": 1, "fuse_camera": True,
                                                        **node_params("xkd_net")})
    context = rclpy.Context()
    rclpy.init(args=["test"], context=context)
    node = segment_node.SegmentNode(context=context, cli_args=ros_args([params]))
    published: list[Any] = []
    node.cloud_pub = type("Capture", (), {"publish": staticmethod(published.append)})()
    worker = threading.Thread(target=node.run, daemon=True)
    try:
        def boom(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("decoder bug")

        stamp, points = 7 * S, synthetic_scan(1)
        image = to_rclpy_image(rclpy_header(stamp, "camera"), synthetic_image(1))
        with monkeypatch.context() as m:
            m.setattr(intensity, "cloud_to_xyzi", boom)  # what the cloud callback decodes with
            m.setattr(cameras, "camera_info_to_model", boom)
            m.setattr(cameras, "header_ns", boom)  # the image callback only reads the stamp
            node._on_camera_info(CAMERA, camera_info(stamp))
            node._on_image(CAMERA, image)
            node._on_cloud(xyzi_cloud(stamp, points))
        counts = node.pipeline.stats.snapshot().counts
        assert counts["skipped.callback_error"] == 1 and counts["callback_error.image"] == 1
        assert counts["callback_error.camera_info"] == 1 and node.slot.take(timeout=0) is None
        err = capfd.readouterr().err
        assert "[skipped.callback_error] unexpected RuntimeError handling a cloud on /xkd_net/cloud_in: " \
               "decoder bug" in err
        assert "[callback_error.image]" in err and "[callback_error.camera_info]" in err

        node._on_cloud(xyzi_cloud(stamp + S // 10, points))
        node.process(node.slot.take(timeout=0))
        torch.set_num_threads(1)
        ref = Segmenter.from_checkpoint(ckpt, "cpu", fuse=True, max_range=100.0).segment(points)
        assert len(published) == 1 and header_ns(published[0].header) == stamp + S // 10
        np.testing.assert_array_equal(cloud_view(published[0]).reshape(-1)["label"], ref.labels)

        # The worker loop: a frame that fails is counted and skipped, the loop goes on.
        with monkeypatch.context() as m:
            m.setattr(node.pipeline, "process", boom)
            node._on_cloud(xyzi_cloud(stamp + 2 * S // 10, points))
            worker.start()
            deadline = time.monotonic() + WAIT
            while node.pipeline.stats.snapshot().counts.get("skipped.inference_error", 0) < 1:
                assert time.monotonic() < deadline and worker.is_alive()
                time.sleep(0.05)
        node._on_cloud(xyzi_cloud(stamp + 3 * S // 10, points))
        deadline = time.monotonic() + WAIT
        while len(published) < 2:
            assert time.monotonic() < deadline and worker.is_alive(), "the worker stopped after a failure"
            time.sleep(0.05)
        assert header_ns(published[1].header) == stamp + 3 * S // 10
        assert "[skipped.inference_error] frame failed: RuntimeError: decoder bug" in capfd.readouterr().err
    finally:
        node.stop()
        if worker.ident is not None:
            worker.join(30)
        node.close()
        node.destroy_node()
        context.try_shutdown()
