"""`sensor_msgs/Image`, `CompressedImage` and `CameraInfo` <-> numpy and `CameraView`, for rclpy and rosbags
messages alike (duck-typed: only the fields are read).

Images are decoded to RGB uint8 `(H, W, 3)` (the project convention), whatever the camera emits:

- colour and grey: `rgb8`, `bgr8`, `rgba8`, `bgra8`, `mono8` and their 16-bit twins `rgb16`, `bgr16`,
  `rgba16`, `bgra16`, `mono16`;
- raw sensor mosaics `bayer_rggb8`, `bayer_bggr8`, `bayer_gbrg8`, `bayer_grbg8` (and `..16`), named by
  the 2x2 cell at the top-left of the image as ROS and sensor vendors do, demosaiced by OpenCV
  (bilinear);
- YUV 4:2:2: `yuv422` and `uyvy` (byte order U Y0 V Y1: ROS's `yuv422` is UYVY), `yuyv` and
  `yuv422_yuy2` (Y0 U Y1 V), BT.601 limited range as OpenCV converts them; the width must be even;
- `CompressedImage` JPEG or PNG (see `compressed_to_rgb`).

16-bit samples honour `is_bigendian` and scale linearly to 8 bits: `2**significant_bits - 1` -> 255
(default 16 bits: v -> round(v / 257), the exact inverse of the usual 8 -> 16 bit expansion v * 257).
A camera that stores 12-bit values in the low bits of `mono16` is passed `significant_bits=12`; the
scale is fixed, never stretched per frame, so brightness stays consistent from frame to frame.
`16UC1` and `32FC1` are refused (`unsupported_encoding`): in ROS they carry depth maps (mm, m), and
a depth map shown to the camera branch as a grey picture would be mislabeled; cameras publish 16-bit
grey as `mono16`.

`step` is honoured (padded rows are skipped); a `step` shorter than a row or a `data` size other
than `step * height` is refused, as is any other encoding.

Calibration (`camera_info_to_model`), per camera, one of:

- raw images (`rectified=False`, the default): `CameraInfo.k` is the pinhole `K` after checks (finite,
  not all zero, fx, fy > 0, image size matching the image, no binning or ROI). Distorted images are
  undistorted with OpenCV rather than refused: `plumb_bob` and `rational_polynomial` through
  `cv2.initUndistortRectifyMap`, `equidistant` through its fisheye twin, each keeping `K` as the
  output camera matrix, so `K` stays the exact pinhole model of the undistorted image. Another
  distortion model is accepted only when all its coefficients are zero; otherwise
  `unsupported_distortion`. Remap tables are cached per calibration. `R` and `P` are not read.
- rectified images (`rectified=True`, e.g. `image_rect` topics): the image is already undistorted
  and rectified, so it is never undistorted again; the model's `K` is `P[:, :3]`, and `R` and
  `t = inv(P[:, :3]) @ P[:, 3]` place the rectified frame (see `CameraModel.view_T` for the exact
  extrinsic convention). `K` must still be valid, `P` must fit it (tolerances in `check_projection`)
  and `R` must be a rotation (all zero is read as identity: ROS fills `R` for stereo only). `D`
  describes the raw lens and is only checked to be finite.

Every refusal carries a short stable `reason`, the node's diagnostics counter key:
images (`ImageFormatError`): `unsupported_encoding`, `empty_image`, `bad_step`, `bad_data_length`,
`odd_width`, `unsupported_format`, `compressed_depth`, `undecodable`, `too_large`;
calibrations (`CameraInfoError`): `bad_k`, `zero_k`, `bad_focal`, `size_mismatch`,
`unsupported_binning`, `unsupported_roi`, `bad_distortion`, `unsupported_distortion`, `bad_p`,
`zero_p`, `p_k_mismatch`, `p_center_outside`, `bad_r`.
"""

from __future__ import annotations

import array
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import cv2
import numpy as np

from xkd_core.data.frame import CameraView

#: encoding -> channels of the 8-bit encodings that can also be written (`encode_rgb`, `to_*_image`).
ENCODINGS: dict[str, int] = {"rgb8": 3, "bgr8": 3, "mono8": 1, "rgba8": 4, "bgra8": 4}


@dataclass(frozen=True)
class _Layout:
    channels: int  # samples per pixel in `data` (2 for YUV 4:2:2: one chroma and one luma byte)
    sample_bytes: int  # 1 or 2 (16-bit, byte order from `is_bigendian`)
    to_rgb: int | None  # OpenCV conversion to RGB (None: already RGB)


# OpenCV names a Bayer pattern after the 2x2 cell starting at pixel (1, 1), one diagonal step from
# the top-left cell that ROS and sensor datasheets use: ROS `bayer_rggb` is OpenCV's `BayerBG`.
# The old names are used because python3-opencv 4.5 (Ubuntu 22.04) lacks the `BayerRGGB` aliases.
_BAYER = {"rggb": cv2.COLOR_BayerBG2RGB, "bggr": cv2.COLOR_BayerRG2RGB, "gbrg": cv2.COLOR_BayerGR2RGB,
          "grbg": cv2.COLOR_BayerGB2RGB}

_COLOUR = {"rgb": (3, None), "bgr": (3, cv2.COLOR_BGR2RGB), "mono": (1, cv2.COLOR_GRAY2RGB),
           "rgba": (4, cv2.COLOR_RGBA2RGB), "bgra": (4, cv2.COLOR_BGRA2RGB)}

_LAYOUTS: dict[str, _Layout] = {
    **{f"{name}{bits}": _Layout(ch, bits // 8, code)
       for bits in (8, 16) for name, (ch, code) in _COLOUR.items()},
    **{f"bayer_{cell}{bits}": _Layout(1, bits // 8, code)
       for bits in (8, 16) for cell, code in _BAYER.items()},
    "yuv422": _Layout(2, 1, cv2.COLOR_YUV2RGB_UYVY),
    "uyvy": _Layout(2, 1, cv2.COLOR_YUV2RGB_UYVY),
    "yuyv": _Layout(2, 1, cv2.COLOR_YUV2RGB_YUYV),
    "yuv422_yuy2": _Layout(2, 1, cv2.COLOR_YUV2RGB_YUYV),
}

#: encoding -> bytes per pixel, for every encoding `image_to_rgb` decodes.
PIXEL_BYTES: dict[str, int] = {name: lay.channels * lay.sample_bytes for name, lay in _LAYOUTS.items()}

#: Encodings that hold depth (or other non-photometric) values: refused, not shown as grey pictures.
DEPTH_ENCODINGS = ("16UC1", "32FC1")

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

#: Compressed codecs (as named in `CompressedImage.format`) and the magic bytes their data starts with.
_MAGIC = {"jpeg": b"\xff\xd8\xff", "png": b"\x89PNG\r\n\x1a\n"}
_CODEC_ALIASES = {"jpeg": "jpeg", "jpg": "jpeg", "png": "png"}
#: JPEG start-of-frame markers (every coding process), whose segment holds the image size.
_JPEG_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})

#: Largest compressed image decoded (pixels, from its header): 64 Mi px, twice an 8K frame. A few
#: hostile bytes can declare a frame of gigapixels; refusing it before decoding bounds the memory.
MAX_PIXELS = 1 << 26


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


# ---------------------------------------------------------------------------------------------------
# Raw images


def _layout(encoding: str) -> _Layout:
    layout = _LAYOUTS.get(encoding)
    if layout is not None:
        return layout
    if encoding in DEPTH_ENCODINGS:
        raise ImageFormatError(
            "unsupported_encoding", f"image encoding {encoding!r} holds depth, not a camera picture "
            "(16-bit grey cameras publish mono16)")
    raise ImageFormatError("unsupported_encoding",
                           f"image encoding {encoding!r} is not supported (use one of {sorted(_LAYOUTS)})")


def image_view(msg: Any) -> np.ndarray:
    """A zero-copy view of an Image's data in its encoding: `(H, W, C)`, or `(H, W)` for one channel.

    16-bit encodings give a uint16 view in the message byte order; YUV 4:2:2 gives `(H, W, 2)` bytes.
    """
    encoding = str(msg.encoding)
    layout = _layout(encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageFormatError("empty_image", f"image size must be positive, got {height}x{width}")
    if layout.channels == 2 and width % 2:
        raise ImageFormatError("odd_width", f"{encoding} packs pixel pairs, width {width} is odd")
    pixel = layout.channels * layout.sample_bytes
    if step < width * pixel:
        raise ImageFormatError("bad_step",
                               f"step {step} < width {width} * {pixel} bytes per pixel ({encoding})")
    raw = np.frombuffer(msg.data, dtype=np.uint8)
    if raw.size != step * height:
        raise ImageFormatError(
            "bad_data_length", f"image data holds {raw.size} bytes, expected step {step} * height {height}"
        )
    dtype = np.dtype(np.uint8)
    if layout.sample_bytes == 2:
        dtype = np.dtype(">u2" if int(getattr(msg, "is_bigendian", 0)) else "<u2")
    size = layout.sample_bytes
    if layout.channels > 1:
        return np.ndarray((height, width, layout.channels), dtype=dtype, buffer=raw,
                          strides=(step, layout.channels * size, size))
    return np.ndarray((height, width), dtype=dtype, buffer=raw, strides=(step, size))


def _check_bits(significant_bits: int) -> None:
    if not 1 <= int(significant_bits) <= 16:
        raise ValueError(f"significant_bits must be in 1..16, got {significant_bits}")


def _to_8bit(pixels: np.ndarray, significant_bits: int) -> np.ndarray:
    """uint16 samples scaled linearly so that 2**significant_bits - 1 -> 255 (rounded, saturated)."""
    return cv2.convertScaleAbs(pixels, alpha=255.0 / (2 ** int(significant_bits) - 1))


def image_to_rgb(msg: Any, significant_bits: int = 16) -> np.ndarray:
    """An Image (any supported encoding) or a CompressedImage as contiguous RGB uint8 `(H, W, 3)`.

    For unpadded rgb8 the result is a zero-copy view of `data`. `significant_bits` sets the scale of
    16-bit samples (see the module docstring). A message with `format` and no `encoding` is taken as
    a CompressedImage.
    """
    _check_bits(significant_bits)
    if not hasattr(msg, "encoding") and hasattr(msg, "format"):
        return compressed_to_rgb(msg, significant_bits)
    view = image_view(msg)
    layout = _LAYOUTS[str(msg.encoding)]
    pixels = np.ascontiguousarray(view, dtype=np.uint16 if layout.sample_bytes == 2 else np.uint8)
    if layout.to_rgb is not None:
        pixels = cv2.cvtColor(pixels, layout.to_rgb)  # Bayer demosaicing keeps 16 bits, so scale after
    return pixels if pixels.dtype == np.uint8 else _to_8bit(pixels, significant_bits)


def encode_rgb(rgb: np.ndarray, encoding: str = "rgb8") -> np.ndarray:
    """RGB uint8 `(H, W, 3)` converted to `encoding`'s channel layout (contiguous)."""
    if encoding not in ENCODINGS:
        raise ImageFormatError("unsupported_encoding", f"cannot encode images as {encoding!r}")
    rgb = _check_rgb(rgb)
    code = _FROM_RGB[encoding]
    return rgb if code is None else cv2.cvtColor(rgb, code)


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"image must be RGB uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    return np.ascontiguousarray(rgb)


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


# ---------------------------------------------------------------------------------------------------
# Compressed images


def compressed_codec(fmt: str) -> str | None:
    """The codec (`"jpeg"`, `"png"`) a `CompressedImage.format` names; None when it names none.

    Publishers write a plain `jpeg` / `png` (any case), or image_transport's
    `"<encoding>; <codec> compressed <encoding>"` such as `"rgb8; jpeg compressed bgr8"`.
    Raises `compressed_depth` for compressed_depth_image_transport's formats and
    `unsupported_encoding` when the source encoding is a depth encoding; `unsupported_format` for
    another codec.
    """
    text = str(fmt).strip()
    if "compresseddepth" in text.lower():
        raise ImageFormatError("compressed_depth",
                               f"compressed format {text!r} holds depth, not a camera picture")
    if ";" in text and text.split(";", 1)[0].strip() in DEPTH_ENCODINGS:
        raise ImageFormatError("unsupported_encoding", f"compressed format {text!r} holds a depth encoding")
    if not text:
        return None
    for token in re.split(r"[\s;/,]+", text.lower()):
        if token in _CODEC_ALIASES:
            return _CODEC_ALIASES[token]
    raise ImageFormatError("unsupported_format", f"compressed format {text!r} is neither JPEG nor PNG")


def _jpeg_size(buf: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG's frame header, walking the marker segments before it."""
    i = 2  # after SOI
    while i + 4 <= len(buf):
        if buf[i] != 0xFF:
            return None
        marker = buf[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # segments without a length
            i += 2
        elif marker in (0xD9, 0xDA):  # end of image or scan data before any frame header
            return None
        elif marker in _JPEG_SOF:
            if i + 9 > len(buf):
                return None
            return int.from_bytes(buf[i + 5 : i + 7], "big"), int.from_bytes(buf[i + 7 : i + 9], "big")
        else:
            length = int.from_bytes(buf[i + 2 : i + 4], "big")
            if length < 2:
                return None
            i += 2 + length
    return None


def compressed_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) a JPEG or PNG declares in its header (None: not JPEG / PNG, or no header)."""
    if data.startswith(_MAGIC["png"]):
        if len(data) < 24 or data[12:16] != b"IHDR":
            return None
        return int.from_bytes(data[20:24], "big"), int.from_bytes(data[16:20], "big")
    if data.startswith(_MAGIC["jpeg"]):
        return _jpeg_size(data)
    return None


def compressed_to_rgb(msg: Any, significant_bits: int = 16, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A `CompressedImage` (JPEG or PNG; 8 or 16 bit, grey, colour or with alpha) as RGB uint8.

    The bytes are decoded by what they are (JPEG and PNG are self-describing), so a `format` that
    names the other of the two, or none, still decodes; any other bytes are `undecodable`, and an
    image whose header declares more than `max_pixels` pixels is `too_large` (not decoded).
    """
    _check_bits(significant_bits)
    compressed_codec(str(msg.format))
    data = np.frombuffer(msg.data, dtype=np.uint8)
    hw = compressed_size(data.tobytes())
    if hw is None:
        raise ImageFormatError("undecodable",
                               f"compressed data ({data.size} bytes) is not a JPEG or PNG image")
    if hw[0] * hw[1] > max_pixels:
        raise ImageFormatError("too_large", f"compressed image declares {hw[1]}x{hw[0]} pixels, more than "
                               f"the {max_pixels} accepted")
    try:
        pixels = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise ImageFormatError("undecodable", f"compressed data does not decode: {exc}") from exc
    if pixels is None or pixels.dtype not in (np.uint8, np.uint16) or pixels.ndim not in (2, 3):
        raise ImageFormatError("undecodable",
                               f"compressed data ({data.size} bytes) does not decode to an image")
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    codes = {1: cv2.COLOR_GRAY2RGB, 3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}
    if channels not in codes:
        raise ImageFormatError("undecodable", f"compressed image has {channels} channels")
    rgb = cv2.cvtColor(pixels, codes[channels])
    return rgb if rgb.dtype == np.uint8 else _to_8bit(rgb, significant_bits)


def encode_compressed(rgb: np.ndarray, codec: str = "jpeg", quality: int = 95,
                      png_level: int = 3) -> tuple[np.ndarray, str]:
    """RGB uint8 `(H, W, 3)` compressed as image_transport does: (data uint8 (n,), format string).

    The format is `"rgb8; jpeg compressed bgr8"` or `"rgb8; png compressed bgr8"`; `quality` is the
    JPEG quality (1..100, image_transport's default 95), `png_level` the PNG compression (0..9).
    """
    rgb = _check_rgb(rgb)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if codec == "jpeg":
        if not 1 <= int(quality) <= 100:
            raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    elif codec == "png":
        if not 0 <= int(png_level) <= 9:
            raise ValueError(f"PNG compression level must be in 0..9, got {png_level}")
        ok, data = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, int(png_level)])
    else:
        raise ValueError(f"codec must be 'jpeg' or 'png', got {codec!r}")
    if not ok:
        raise ValueError(f"OpenCV could not encode a {rgb.shape} image as {codec}")
    return data.reshape(-1), f"rgb8; {codec} compressed bgr8"


def to_rclpy_compressed_image(header: Any, rgb: np.ndarray, codec: str = "jpeg", quality: int = 95,
                              png_level: int = 3) -> Any:
    """An rclpy `sensor_msgs.msg.CompressedImage` of an RGB image (see `encode_compressed`)."""
    from sensor_msgs.msg import CompressedImage

    data, fmt = encode_compressed(rgb, codec, quality, png_level)
    buf = array.array("B")
    buf.frombytes(memoryview(data))
    msg = CompressedImage(header=header, format=fmt)
    msg.data = buf
    return msg


def to_rosbags_compressed_image(header: Any, rgb: np.ndarray, typestore: Any, codec: str = "jpeg",
                                quality: int = 95, png_level: int = 3) -> Any:
    """A rosbags `sensor_msgs/msg/CompressedImage` of an RGB image (see `encode_compressed`)."""
    CompressedImage = typestore.types["sensor_msgs/msg/CompressedImage"]
    data, fmt = encode_compressed(rgb, codec, quality, png_level)
    return CompressedImage(header=header, format=fmt, data=data)


# ---------------------------------------------------------------------------------------------------
# Calibration

#: Extrinsic conventions `CameraModel.view_T` accepts (see there).
EXTRINSIC_FRAMES = ("camera", "stereo_rectified")

#: A rectified P's focal lengths must lie strictly within these factors of K's (see `check_projection`).
P_FOCAL_RATIO = (0.5, 2.0)

#: Largest deviation of R^T R from identity accepted for a rectification rotation.
R_TOLERANCE = 1e-3


@dataclass(frozen=True)
class CameraModel:
    """What a CameraInfo says about the image the node receives.

    `K` is the pinhole model of the image after `undistort`: CameraInfo `k` for raw images,
    `P[:, :3]` for rectified ones. `R` and `t` (rectified only; identity and zero for raw images)
    place the rectified frame: see `view_T`.
    """

    K: np.ndarray  # (3, 3) float64
    hw: tuple[int, int]  # (height, width)
    distortion_model: str
    D: np.ndarray  # (n,) float64
    rectified: bool = False
    R: np.ndarray = field(default_factory=lambda: np.eye(3))  # (3, 3) camera -> rectified frame
    t: np.ndarray = field(default_factory=lambda: np.zeros(3))  # (3,) inv(P[:, :3]) @ P[:, 3]

    @property
    def distorted(self) -> bool:
        """True when the image must be undistorted before the pinhole K applies (never if rectified)."""
        return not self.rectified and bool(np.any(self.D != 0.0))

    def view_T(self, T: np.ndarray, extrinsic_to: str = "camera") -> np.ndarray:
        """The 4x4 `CameraView.T` (pixel = K @ (view_T @ p)[:3]) for a LiDAR -> camera extrinsic `T`.

        `extrinsic_to="camera"` (the default; what tf gives for the image's `frame_id`): `T` maps
        LiDAR points into this camera's own optical frame (z forward, x right, y down), for the right
        camera of a stereo pair its own lens. Raw images: `T` itself. Rectified: `[R | 0] @ T`; P's
        4th column is not used, since it places this camera relative to the pair's first camera,
        which `T` already does.

        `extrinsic_to="stereo_rectified"` (rectified models only; KITTI's `R0_rect @ Tr_velo_to_cam`,
        image_geometry's use of P): `T` maps LiDAR points into the frame P projects from, i.e. the
        rectified frame of the stereo pair's first camera (for a monocular camera, its rectified
        frame). Result: `[I | t] @ T` with `t = inv(P[:, :3]) @ P[:, 3]` (for a right camera
        `t = (-B, 0, 0)`); `R` is not used.
        """
        T = np.asarray(T, dtype=np.float64)
        if T.shape != (4, 4):
            raise ValueError(f"T must be 4x4, got {T.shape}")
        if extrinsic_to not in EXTRINSIC_FRAMES:
            raise ValueError(f"extrinsic_to must be one of {EXTRINSIC_FRAMES}, got {extrinsic_to!r}")
        if not self.rectified:
            if extrinsic_to != "camera":
                raise ValueError("extrinsic_to='stereo_rectified' needs a rectified camera model")
            return T.copy()
        M = np.eye(4)
        if extrinsic_to == "camera":
            M[:3, :3] = self.R
        else:
            M[:3, 3] = self.t
        return M @ T


def projection_of(model: CameraModel, T: np.ndarray,
                  extrinsic_to: str = "camera") -> tuple[np.ndarray, np.ndarray]:
    """(K, T) of the `CameraView` of the image `undistort(image, model)` returns.

    `model.K` and `model.view_T(T, extrinsic_to)`; `T` is the LiDAR -> camera extrinsic (see `view_T`).
    """
    return model.K, model.view_T(T, extrinsic_to)


def _pinhole(values: Any, name: str, shape: tuple[int, int], reason: str) -> np.ndarray:
    m = np.asarray(values, dtype=np.float64).reshape(-1)
    n = shape[0] * shape[1]
    if m.size != n:
        raise CameraInfoError(reason, f"CameraInfo.{name} needs {n} values, got {m.size}")
    m = m.reshape(shape).copy()
    if not np.isfinite(m).all():
        raise CameraInfoError(reason, f"CameraInfo.{name} is not finite: {m.tolist()}")
    return m


def check_projection(P: np.ndarray, K: np.ndarray, hw: tuple[int, int]) -> None:
    """Refuse a rectified projection `P` (3x4, finite, not all zero) that does not fit `K` and the image.

    `P[:, :3]` must be a pinhole matrix like K (bottom row 0 0 1, P[1, 0] = 0, fx', fy' > 0; the 4th
    column is free: stereo baselines, KITTI's small Tz). Its focal lengths must lie strictly within
    `P_FOCAL_RATIO` (x0.5 .. x2) of K's: rectification rescales only mildly, while a P for another
    resolution or binning is off by 2x or more. Its principal point must lie on the image
    (-0.5 <= cx' <= W - 0.5, likewise cy').
    """
    Kp = P[:, :3]
    if Kp[1, 0] != 0 or Kp[2, 0] != 0 or Kp[2, 1] != 0 or Kp[2, 2] != 1:
        raise CameraInfoError("bad_p", f"CameraInfo.p is not a pinhole projection: {P.tolist()}")
    if Kp[0, 0] <= 0 or Kp[1, 1] <= 0:
        raise CameraInfoError("bad_p", f"CameraInfo.p needs fx', fy' > 0, got {Kp[0, 0]}, {Kp[1, 1]}")
    lo, hi = P_FOCAL_RATIO
    for axis, label in ((0, "fx"), (1, "fy")):
        ratio = Kp[axis, axis] / K[axis, axis]
        if not lo < ratio < hi:
            raise CameraInfoError(
                "p_k_mismatch", f"CameraInfo.p {label}' = {Kp[axis, axis]:g} is {ratio:.3g} x k's "
                f"{label} = {K[axis, axis]:g} (accepted: {lo:g} .. {hi:g}): P and K describe different "
                "images")
    height, width = hw
    cx, cy = Kp[0, 2], Kp[1, 2]
    if not (-0.5 <= cx <= width - 0.5 and -0.5 <= cy <= height - 0.5):
        raise CameraInfoError(
            "p_center_outside", f"CameraInfo.p principal point ({cx:g}, {cy:g}) is outside the "
            f"{width}x{height} image")


def _rectification(info: Any) -> np.ndarray:
    R = _pinhole(info.r, "r", (3, 3), "bad_r")
    if not R.any():
        return np.eye(3)  # drivers of monocular cameras often leave R unset
    bounded = np.abs(R).max() <= 1 + R_TOLERANCE  # (and R^T R cannot overflow)
    if not bounded or np.abs(R.T @ R - np.eye(3)).max() > R_TOLERANCE or np.linalg.det(R) <= 0:
        raise CameraInfoError("bad_r", f"CameraInfo.r is not a rotation: {R.tolist()}")
    return R


def camera_info_to_model(info: Any, rectified: bool = False) -> CameraModel:
    """Check a CameraInfo and return its `CameraModel`; raises `CameraInfoError` with a reason.

    `rectified`: the images this CameraInfo comes with are rectified (`image_rect`): the model's K
    is P's, and the images are not undistorted (see the module docstring).
    """
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
    if rectified:
        P = _pinhole(info.p, "p", (3, 4), "bad_p")
        if not P.any():
            raise CameraInfoError("zero_p", "CameraInfo.p is all zero: no rectified projection to use "
                                  "(is the camera calibrated, and are its images rectified?)")
        check_projection(P, K, (height, width))
        R = _rectification(info)
        Kp = P[:, :3].copy()
        with np.errstate(over="ignore", invalid="ignore"):
            t = np.linalg.solve(Kp, P[:, 3])
        if not np.isfinite(t).all():  # a finite but absurd 4th column (e.g. 9e307) overflows
            raise CameraInfoError("bad_p", "CameraInfo.p's 4th column gives no finite offset: "
                                           f"{P[:, 3].tolist()}")
        return CameraModel(K=Kp, hw=(height, width), distortion_model=model, D=D, rectified=True, R=R, t=t)
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


def camera_info_K(info: Any, image_hw: tuple[int, int] | None = None, rectified: bool = False) -> np.ndarray:
    """The checked pinhole K (3x3 float64) of a CameraInfo, also checking the size against `image_hw`."""
    model = camera_info_to_model(info, rectified=rectified)
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
    """The image in the pinhole camera `model.K`: undistorted when raw and distorted, else unchanged."""
    _check_size(model, image.shape[:2])
    if not model.distorted:
        return image
    key = (model.distortion_model, tuple(model.D.tolist()), tuple(model.K.reshape(-1).tolist()), model.hw)
    map1, map2 = _undistort_maps(*key)
    return cv2.remap(image, map1, map2, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def to_camera_view(image_rgb: np.ndarray, K: np.ndarray, T: np.ndarray, name: str) -> CameraView:
    """A `CameraView` (image RGB uint8, K 3x3, T 4x4 LiDAR -> camera), validated by the dataclass."""
    return CameraView(image=image_rgb, K=K, T=T, name=name)


def camera_view_from_msgs(image_msg: Any, info_msg: Any, T: np.ndarray, name: str, rectified: bool = False,
                          extrinsic_to: str = "camera") -> CameraView:
    """Decode an Image or CompressedImage + CameraInfo pair into a `CameraView`.

    Raw images are undistorted when needed; `rectified` and `extrinsic_to` as in
    `camera_info_to_model` and `CameraModel.view_T` (`T`: LiDAR -> camera).
    """
    rgb = image_to_rgb(image_msg)
    model = camera_info_to_model(info_msg, rectified=rectified)
    K, T_view = projection_of(model, T, extrinsic_to)
    return to_camera_view(undistort(rgb, model), K, T_view, name)
def _info_arrays(K: np.ndarray, P: np.ndarray | None, D: Any,
                 R: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise ValueError(f"K must be 3x3, got {K.shape}")
    P = np.hstack([K, np.zeros((3, 1))]) if P is None else np.asarray(P, dtype=np.float64)
    if P.shape != (3, 4):
        raise ValueError(f"P must be 3x4, got {P.shape}")
    R = np.eye(3) if R is None else np.asarray(R, dtype=np.float64)
    if R.shape != (3, 3):
        raise ValueError(f"R must be 3x3, got {R.shape}")
    return (K.reshape(-1).copy(), P.reshape(-1).copy(), np.asarray(D, dtype=np.float64).reshape(-1).copy(),
            R.reshape(-1).copy())


def to_rclpy_camera_info(
    header: Any,
    K: np.ndarray,
    hw: tuple[int, int],
    P: np.ndarray | None = None,
    D: Any = (0.0, 0.0, 0.0, 0.0, 0.0),
    distortion_model: str = "plumb_bob",
    R: np.ndarray | None = None,
) -> Any:
    """An rclpy `sensor_msgs.msg.CameraInfo` (R defaults to identity, P to [K | 0])."""
    from sensor_msgs.msg import CameraInfo

    k, p, d, r = _info_arrays(K, P, D, R)
    return CameraInfo(header=header, height=int(hw[0]), width=int(hw[1]), distortion_model=distortion_model,
                      d=array.array("d", d.tolist()), k=k, r=r, p=p)


def to_rosbags_camera_info(
    header: Any,
    K: np.ndarray,
    hw: tuple[int, int],
    typestore: Any,
    P: np.ndarray | None = None,
    D: Any = (0.0, 0.0, 0.0, 0.0, 0.0),
    distortion_model: str = "plumb_bob",
    R: np.ndarray | None = None,
) -> Any:
    """A rosbags `sensor_msgs/msg/CameraInfo` (R defaults to identity, P to [K | 0])."""
    CameraInfo = typestore.types["sensor_msgs/msg/CameraInfo"]
    RegionOfInterest = typestore.types["sensor_msgs/msg/RegionOfInterest"]
    k, p, d, r = _info_arrays(K, P, D, R)
    roi = RegionOfInterest(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    return CameraInfo(header=header, height=int(hw[0]), width=int(hw[1]), distortion_model=distortion_model,
                      d=d, k=k, r=r, p=p, binning_x=0, binning_y=0, roi=roi)
