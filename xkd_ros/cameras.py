"""One camera of the node, ROS-free: its recent images, its calibration, its extrinsics, its counters.

The subscription callbacks only store: an image message goes into the camera's nearest-image cache
as received (no decoding in the callback), a CameraInfo is checked into a `CameraModel` (raw: K and
D, undistorted; rectified: P and R, never undistorted again). When the worker segments a cloud it
asks every camera for the image nearest to the cloud's stamp and turns it into a `CameraView`:
decode (raw encodings or JPEG / PNG), undistort if raw, and the LiDAR -> camera transform at the
cloud's stamp. Each step that fails leaves that camera out of that frame, with the reason counted
under `camera.<name>.<reason>` and reported; the cloud is segmented with the cameras that worked.

Extrinsics are never guessed: the static parameter `cameras.<name>.lidar_to_camera` when the user
set it, else TF (image frame <- cloud frame at the cloud stamp) through the `TransformLookup` the node
passes in; with neither, or when TF has no transform, the camera is skipped (`tf_missing`,
`no_extrinsics`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from xkd_core.data.frame import CameraView
from xkd_ros.image import (
    CameraInfoError,
    CameraModel,
    ImageFormatError,
    camera_info_to_model,
    compressed_to_rgb,
    image_to_rgb,
    projection_of,
    undistort,
)
from xkd_ros.segment_params import CameraConfig, SyncConfig, lidar_to_camera
from xkd_ros.stamp import NS_PER_S, header_ns
from xkd_ros.sync import NearestImageCache

#: (target frame, source frame, stamp ns) -> 4x4 transform source -> target; raises LookupError.
TransformLookup = Callable[[str, str, int], np.ndarray]
#: (key, text, count=True) -> None: count `key` and report `text` (throttled per key): `pipeline.Reporter`.
Report = Callable[..., None]


@dataclass
class CameraImage:
    """An image message as received, waiting to be used (decoded only if a frame takes it)."""

    msg: Any
    stamp_ns: int
    frame_id: str


class CameraInput:
    """The state of camera `name` (see the module docstring). Thread-safe."""

    def __init__(self, name: str, cfg: CameraConfig, sync: SyncConfig, report: Report,
                 lookup: TransformLookup | None) -> None:
        self.name = name
        self.cfg = cfg
        self._report = report
        self._lookup = lookup
        self.static_T = None if cfg.lidar_to_camera is None else lidar_to_camera(cfg.lidar_to_camera)
        self.cache = NearestImageCache(slop_s=sync.slop, max_age_s=sync.max_image_age,
                                       capacity=sync.cache_size)
        self._lock = threading.Lock()
        self._model: CameraModel | None = None
        self._info_error: CameraInfoError | None = None  # why the latest CameraInfo was refused

    @property
    def extrinsics_source(self) -> str:
        """'parameter', 'tf' or 'none': where this camera's LiDAR -> camera transform comes from."""
        if self.static_T is not None:
            return "parameter"
        return "tf" if self._lookup is not None else "none"

    def key(self, reason: str) -> str:
        """The diagnostics counter of `reason` for this camera."""
        return f"camera.{self.name}.{reason}"

    # ------------------------------------------------------------------ callbacks (executor thread)
    def on_image(self, msg: Any) -> None:
        """Cache an image (cheap: the message is kept, decoding waits until a frame uses it)."""
        stamp = header_ns(msg.header)
        if not self.cache.push(stamp, CameraImage(msg, stamp, str(msg.header.frame_id))):
            # the cache counts it (`sync.future` in the camera's status); this only says why, throttled
            text = (f"camera {self.name}: image stamp {stamp / NS_PER_S:.6f} s is more than "
                    f"{self.cache.max_future_ns / NS_PER_S:.1f} s after the newest cloud (camera clock?): "
                    "image dropped")
            self._report(self.key("sync.future"), text, count=False)

    def on_camera_info(self, msg: Any) -> None:
        """Check and keep the calibration; a refused one disables the camera until a good one arrives."""
        try:
            model = camera_info_to_model(msg, rectified=self.cfg.rectified)
        except CameraInfoError as exc:
            self._report(self.key(f"camera_info.{exc.reason}"),
                         f"camera {self.name}: refusing CameraInfo on {self.cfg.camera_info_topic}: {exc}; "
                         "the camera is not used until a valid one arrives")
            with self._lock:  # a calibration that changed into garbage must not be used stale
                self._model, self._info_error = None, exc
            return
        with self._lock:
            self._model, self._info_error = model, None

    # ------------------------------------------------------------------ per frame (worker thread)
    def match(self, cloud_stamp_ns: int) -> CameraImage | None:
        """The cached image nearest to the cloud stamp within the slop, or None (the cache counts why)."""
        return self.cache.match(cloud_stamp_ns).item

    def view(self, image: CameraImage, cloud_frame: str, cloud_stamp_ns: int) -> CameraView | None:
        """The image as a `CameraView` for this cloud, or None (reason counted and reported)."""
        with self._lock:
            model, error = self._model, self._info_error
        if model is None:
            if error is not None:
                self._report(self.key("camera_info.unusable"),
                             f"camera {self.name}: the latest CameraInfo was refused ({error.reason}): "
                             "frame segmented without this camera")
            else:
                self._report(self.key("camera_info.none_received"),
                             f"camera {self.name}: no CameraInfo on {self.cfg.camera_info_topic} yet: frame "
                             "segmented without this camera")
            return None
        T = self._extrinsics(image.frame_id, cloud_frame, cloud_stamp_ns)
        if T is None:
            return None
        try:
            rgb = (compressed_to_rgb(image.msg) if self.cfg.transport == "compressed"
                   else image_to_rgb(image.msg))
        except ImageFormatError as exc:
            self._report(self.key(f"image_format.{exc.reason}"),
                         f"camera {self.name}: cannot decode image on {self.cfg.subscribed_topic}: {exc}")
            return None
        try:
            rgb = undistort(rgb, model)  # also checks the image size against the calibration
        except CameraInfoError as exc:
            self._report(self.key(f"camera_info.{exc.reason}"),
                         f"camera {self.name}: image unusable with its calibration: {exc}")
            return None
        K, T_cam = projection_of(model, T)
        return CameraView(rgb, K, T_cam, self.name)

    def _extrinsics(self, camera_frame: str, cloud_frame: str, stamp_ns: int) -> np.ndarray | None:
        if self.static_T is not None:
            return self.static_T
        if self._lookup is None:
            self._report(self.key("no_extrinsics"),
                         f"camera {self.name}: no extrinsics: cameras.{self.name}.lidar_to_camera is unset "
                         "and TF is not available (tf2_ros not importable): camera not used")
            return None
        try:
            return self._lookup(camera_frame, cloud_frame, stamp_ns)
        except LookupError as exc:
            self._report(self.key("tf_missing"),
                         f"camera {self.name}: no transform {cloud_frame} -> {camera_frame} at "
                         f"{stamp_ns / NS_PER_S:.6f} s ({exc}): frame segmented without this camera")
            return None
