"""`sensor_msgs/Image` and `CameraInfo` <-> numpy and `CameraView`, for rclpy and rosbags messages alike.

Images: encodings `rgb8`, `bgr8`, `mono8`, `rgba8`, `bgra8` are decoded to RGB uint8 `(H, W, 3)`
(the project convention); `step` is honoured (padded rows are skipped); a `step` shorter than a row
or a `data` size other than `step * height` raises `ImageFormatError`, as does any other encoding
(16-bit, Bayer and YUV images would need a debayer/scale policy the node does not have).

Calibration: `CameraInfo.k` becomes the pinhole `K` after checks (finite, not all zero, fx, fy > 0,
image size matching the image, no binning or ROI). Distorted images are undistorted with OpenCV
rather than refused, so a raw camera can feed the node directly: `plumb_bob` and
`rational_polynomial` through `cv2.initUndistortRectifyMap`, `equidistant` through its fisheye
twin, each keeping `K` as the output camera matrix, so `K` stays the exact pinhole model of the
undistorted image. Another distortion model is accepted only when all its coefficients are zero;
otherwise `CameraInfoError("unsupported_distortion")`. Remap tables are cached per calibration.

Every refusal carries a short stable `reason`, the node's diagnostics counter key.
"""

from __future__ import annotations

import array
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import cv2
import numpy as np

from xkd_core.data.frame import CameraView

#: encoding -> channels. All are 8-bit per channel, so `is_bigendian` does not matter.
ENCODINGS: dict[str, int] = {"rgb8": 3, "bgr8": 3, "mono8": 1, "rgba8": 4, "bgra8": 4}

#: encoding -> OpenCV conversion to RGB (None: already RGB).
_TO_RGB: dict[str, int | None] = {
    "rgb8": None,
    "bgr8": cv2.COLOR_BGR2RGB,
    "mono8": cv2.COLOR_GRAY2RGB,
    "rgba8": cv2.COLOR_RGBA2RGB,
    "bgra8": cv2.COLOR_BGRA2RGB,
}
#: encoding -> OpenCV conversion from RGB (None: keep RGB).
_FROM_RGB: dict[str, int | None] = {
    "rgb8": None,
    "bgr8": cv2.COLOR_RGB2BGR,
    "mono8": cv2.COLOR_RGB2GRAY,
    "rgba8": cv2.COLOR_RGB2RGBA,
    "bgra8": cv2.COLOR_RGB2BGRA,
}

#: Distortion models that are undistorted, with the coefficient counts OpenCV accepts for each.
DISTORTION_MODELS: dict[str, tuple[int, ...]] = {
    "plumb_bob": (4, 5, 8, 12, 14),
    "rational_polynomial": (8, 12, 14),
    "equidistant": (4,),
}


class ImageFormatError(ValueError):
    """An Image that cannot be decoded; `reason` is a stable diagnostics counter key."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class CameraInfoError(ValueError):
    """A CameraInfo that cannot give a usable pinhole model; `reason` as in `ImageFormatError`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def image_view(msg: Any) -> np.ndarray:
    """A zero-copy view of the message data, `(H, W, C)` (`(H, W)` for mono8) in the message encoding."""
    encoding = str(msg.encoding)
    channels = ENCODINGS.get(encoding)
    if channels is None:
        raise ImageFormatError(
            "unsupported_encoding",
            f"image encoding {encoding!r} is not supported (use one of {sorted(ENCODINGS)})",
        )
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageFormatError("empty_image", f"image size must be positive, got {height}x{width}")
    if step < width * channels:
        raise ImageFormatError("bad_step", f"step {step} < width {width} * {channels} channels ({encoding})")
    raw = np.frombuffer(msg.data, dtype=np.uint8)
    if raw.size != step * height:
        raise ImageFormatError(
            "bad_data_length", f"image data holds {raw.size} bytes, expected step {step} * height {height}"
        )
    shape: tuple[int, ...] = (height, width, channels) if channels > 1 else (height, width)
    strides: tuple[int, ...] = (step, channels, 1) if channels > 1 else (step, 1)
    return np.ndarray(shape, dtype=np.uint8, buffer=raw, strides=strides)


def image_to_rgb(msg: Any) -> np.ndarray:
    """The image as contiguous RGB uint8 `(H, W, 3)`; for unpadded rgb8 a zero-copy view of `data`."""
    view = image_view(msg)
    code = _TO_RGB[str(msg.encoding)]
    if code is None:
        return np.ascontiguousarray(view)
    return cv2.cvtColor(np.ascontiguousarray(view), code)


def encode_rgb(rgb: np.ndarray, encoding: str = "rgb8") -> np.ndarray:
    """RGB uint8 `(H, W, 3)` converted to `encoding`'s channel layout (contiguous)."""
    if encoding not in ENCODINGS:
        raise ImageFormatError("unsupported_encoding", f"cannot encode images as {encoding!r}")
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"image must be RGB uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    code = _FROM_RGB[encoding]
    rgb = np.ascontiguousarray(rgb)
    return rgb if code is None else cv2.cvtColor(rgb, code)


def _image_bytes(rgb: np.ndarray, encoding: str, step: int | None) -> tuple[np.ndarray, int, int, int]:
    """(flat uint8 data, height, width, step) of an RGB image encoded and padded to `step` bytes."""
    pixels = encode_rgb(rgb, encoding)
    height, width = pixels.shape[:2]
    row = width * ENCODINGS[encoding]
    step = row if step is None else int(step)
    if step < row:
        raise ValueError(f"step {step} is shorter than a row of {row} bytes")
    if step == row:
        return pixels.reshape(-1), height, width, step
    padded = np.zeros((height, step), dtype=np.uint8)
    padded[:, :row] = pixels.reshape(height, row)
    return padded.reshape(-1), height, width, step


def to_rclpy_image(header: Any, rgb: np.ndarray, encoding: str = "rgb8", step: int | None = None) -> Any:
    """An rclpy `sensor_msgs.msg.Image` from an RGB image, in `encoding`, rows padded to `step` bytes."""
    from sensor_msgs.msg import Image

    data, height, width, step = _image_bytes(rgb, encoding, step)
    buf = array.array("B")
    buf.frombytes(memoryview(data))
    msg = Image(header=header, height=height, width=width, encoding=encoding, is_bigendian=0, step=step)
    msg.data = buf
    return msg


def to_rosbags_image(
    header: Any, rgb: np.ndarray, typestore: Any, encoding: str = "rgb8", step: int | None = None
) -> Any:
    """A rosbags `sensor_msgs/msg/Image`; `data` is a view of the image when no conversion is needed."""
    Image = typestore.types["sensor_msgs/msg/Image"]
    data, height, width, step = _image_bytes(rgb, encoding, step)
    return Image(header=header, height=height, width=width, encoding=encoding, is_bigendian=0, step=step,
                 data=data)


@dataclass(frozen=True)
class CameraModel:
    """What a CameraInfo says about the image: pinhole K, size and (possibly zero) distortion."""

    K: np.ndarray  # (3, 3) float64
    hw: tuple[int, int]  # (height, width)
    distortion_model: str
    D: np.ndarray  # (n,) float64

    @property
    def distorted(self) -> bool:
        """True when the image must be undistorted before the pinhole K applies."""
        return bool(np.any(self.D != 0.0))


def camera_info_to_model(info: Any) -> CameraModel:
    """Check a CameraInfo and return its `CameraModel`; raises `CameraInfoError` with a reason."""
    k = np.asarray(info.k, dtype=np.float64)
    if k.size != 9:
        raise CameraInfoError("bad_k", f"CameraInfo.k needs 9 values, got {k.size}")
    K = k.reshape(3, 3).copy()
    if not np.isfinite(K).all():
        raise CameraInfoError("bad_k", f"CameraInfo.k is not finite: {K.tolist()}")
    if not K.any():
        raise CameraInfoError("zero_k", "CameraInfo.k is all zero (camera not calibrated)")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise CameraInfoError("bad_focal", f"CameraInfo.k needs fx, fy > 0, got fx={K[0, 0]} fy={K[1, 1]}")
    if K[1, 0] != 0 or K[2, 0] != 0 or K[2, 1] != 0 or K[2, 2] != 1:
        raise CameraInfoError("bad_k", f"CameraInfo.k is not an upper-triangular pinhole K: {K.tolist()}")
    height, width = int(info.height), int(info.width)
    if height <= 0 or width <= 0:
        raise CameraInfoError("size_mismatch", f"CameraInfo has no image size ({height}x{width})")
    bx, by = int(info.binning_x), int(info.binning_y)
    if bx > 1 or by > 1:
        raise CameraInfoError("unsupported_binning", f"CameraInfo binning {bx}x{by} is not supported")
    roi = info.roi
    if int(roi.width) or int(roi.height) or int(roi.x_offset) or int(roi.y_offset):
        full = int(roi.x_offset) == 0 and int(roi.y_offset) == 0 and (int(roi.width), int(roi.height)) == (
            width, height)
        if not full:
            raise CameraInfoError("unsupported_roi", "CameraInfo with a region of interest is not supported")
    model = str(info.distortion_model)
    D = np.asarray(info.d, dtype=np.float64).reshape(-1).copy()
    if not np.isfinite(D).all():
        raise CameraInfoError("bad_distortion", f"CameraInfo.d is not finite: {D.tolist()}")
    if D.any():
        counts = DISTORTION_MODELS.get(model)
        if counts is None:
            raise CameraInfoError(
                "unsupported_distortion",
                f"distortion model {model!r} with non-zero coefficients is not supported "
                f"(supported: {sorted(DISTORTION_MODELS)})",
            )
        if D.size not in counts:
            raise CameraInfoError(
                "bad_distortion", f"distortion model {model!r} needs {counts} coefficients, got {D.size}"
            )
    return CameraModel(K=K, hw=(height, width), distortion_model=model, D=D)


def camera_info_K(info: Any, image_hw: tuple[int, int] | None = None) -> np.ndarray:
    """The checked pinhole K (3x3 float64) of a CameraInfo, also checking the size against `image_hw`."""
    model = camera_info_to_model(info)
    if image_hw is not None:
        _check_size(model, image_hw)
    return model.K


def _check_size(model: CameraModel, image_hw: tuple[int, int]) -> None:
    if tuple(int(v) for v in image_hw) != model.hw:
        raise CameraInfoError(
            "size_mismatch", f"CameraInfo is for {model.hw[1]}x{model.hw[0]} images, image is "
            f"{int(image_hw[1])}x{int(image_hw[0])}"
        )


@lru_cache(maxsize=8)
def _undistort_maps(model: str, D: tuple[float, ...], K: tuple[float, ...], hw: tuple[int, int]) -> tuple:
    Km = np.array(K, dtype=np.float64).reshape(3, 3)
    Dm = np.array(D, dtype=np.float64)
    size = (hw[1], hw[0])
    if model == "equidistant":
        return cv2.fisheye.initUndistortRectifyMap(Km, Dm, np.eye(3), Km, size, cv2.CV_16SC2)
    return cv2.initUndistortRectifyMap(Km, Dm, None, Km, size, cv2.CV_16SC2)


def undistort(image: np.ndarray, model: CameraModel) -> np.ndarray:
    """The image with lens distortion removed, in the pinhole camera `model.K` (unchanged if D == 0)."""
    _check_size(model, image.shape[:2])
    if not model.distorted:
        return image
    key = (model.distortion_model, tuple(model.D.tolist()), tuple(model.K.reshape(-1).tolist()), model.hw)
    map1, map2 = _undistort_maps(*key)
    return cv2.remap(image, map1, map2, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def to_camera_view(image_rgb: np.ndarray, K: np.ndarray, T: np.ndarray, name: str) -> CameraView:
    """A `CameraView` (image RGB uint8, K 3x3, T 4x4 LiDAR -> camera), validated by the dataclass."""
    return CameraView(image=image_rgb, K=K, T=T, name=name)


def camera_view_from_msgs(image_msg: Any, info_msg: Any, T: np.ndarray, name: str) -> CameraView:
    """Decode an Image + CameraInfo pair (undistorting when needed) into a `CameraView`."""
    rgb = image_to_rgb(image_msg)
    model = camera_info_to_model(info_msg)
    return to_camera_view(undistort(rgb, model), model.K, T, name)


def _info_arrays(K: np.ndarray, P: np.ndarray | None, D: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise ValueError(f"K must be 3x3, got {K.shape}")
    P = np.hstack([K, np.zeros((3, 1))]) if P is None else np.asarray(P, dtype=np.float64)
    if P.shape != (3, 4):
        raise ValueError(f"P must be 3x4, got {P.shape}")
    return K.reshape(-1).copy(), P.reshape(-1).copy(), np.asarray(D, dtype=np.float64).reshape(-1).copy()


def to_rclpy_camera_info(
    header: Any,
    K: np.ndarray,
    hw: tuple[int, int],
    P: np.ndarray | None = None,
    D: Any = (0.0, 0.0, 0.0, 0.0, 0.0),
    distortion_model: str = "plumb_bob",
) -> Any:
    """An rclpy `sensor_msgs.msg.CameraInfo` (R = identity; P defaults to [K | 0])."""
    from sensor_msgs.msg import CameraInfo

    k, p, d = _info_arrays(K, P, D)
    return CameraInfo(header=header, height=int(hw[0]), width=int(hw[1]), distortion_model=distortion_model,
                      d=array.array("d", d.tolist()), k=k, r=np.eye(3).reshape(-1), p=p)


def to_rosbags_camera_info(
    header: Any,
    K: np.ndarray,
    hw: tuple[int, int],
    typestore: Any,
    P: np.ndarray | None = None,
    D: Any = (0.0, 0.0, 0.0, 0.0, 0.0),
    distortion_model: str = "plumb_bob",
) -> Any:
    """A rosbags `sensor_msgs/msg/CameraInfo` (R = identity; P defaults to [K | 0])."""
    CameraInfo = typestore.types["sensor_msgs/msg/CameraInfo"]
    RegionOfInterest = typestore.types["sensor_msgs/msg/RegionOfInterest"]
    k, p, d = _info_arrays(K, P, D)
    roi = RegionOfInterest(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return CameraInfo(header=header, height=int(hw[0]), width=int(hw[1]), distortion_model=distortion_model,
                      d=d, k=k, r=np.eye(3).reshape(-1), p=p, binning_x=0, binning_y=0, roi=roi)
