"""The in-memory unit of data: one LiDAR scan with its labels and the camera views that see it.

Datasets, the pair log, augmentation and inference all exchange `Frame` / `CameraView`, so the
arrays are checked and coerced to the documented dtypes once, here, and a malformed array fails with
the name of the field instead of deep inside a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def _as(name: str, value: object, dtype: type, shape: tuple[int | None, ...]) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim != len(shape) or any(s is not None and a != s for a, s in zip(arr.shape, shape)):
        want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=dtype)


@dataclass
class CameraView:
    """One camera image with its pinhole calibration.

    `K` (3x3) and `T` (4x4, LiDAR -> camera; z forward, x right, y down) project a LiDAR point `p` to
    pixel `K @ (T @ p)[:3]` with pixel centres at integer coordinates. After augmentation `K` may
    hold a negative focal length (horizontal flip) and `T` a reflection (mirrored points); both are
    still exact projections.
    """

    image: np.ndarray  # (H, W, 3) uint8 RGB
    K: np.ndarray  # (3, 3) float64
    T: np.ndarray  # (4, 4) float64, LiDAR -> camera
    name: str = "camera"

    def __post_init__(self) -> None:
        img = np.asarray(self.image)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"CameraView {self.name!r}: image must be RGB uint8 (H, W, 3), got "
                             f"{img.dtype} {img.shape}")
        self.image = img
        self.K = _as(f"CameraView {self.name!r}: K", self.K, np.float64, (3, 3))
        self.T = _as(f"CameraView {self.name!r}: T", self.T, np.float64, (4, 4))

    @property
    def hw(self) -> tuple[int, int]:
        """Image (height, width), the bounds used for point-pixel validity."""
        return int(self.image.shape[0]), int(self.image.shape[1])


@dataclass
class Frame:
    """One sample: points (N, 4) float32, optional labels/instances, and the views that see them."""

    points: np.ndarray  # (N, 4) float32 x, y, z, intensity (LiDAR frame)
    labels: np.ndarray | None = None  # (N,) int64 learning ids, 0 = ignore
    instance: np.ndarray | None = None  # (N,) uint16 instance ids
    views: list[CameraView] = field(default_factory=list)
    sequence: str = ""
    frame_id: str = ""

    def __post_init__(self) -> None:
        self.points = _as("Frame.points", self.points, np.float32, (None, 4))
        n = len(self.points)
        if self.labels is not None:
            self.labels = _as("Frame.labels", self.labels, np.int64, (n,))
        if self.instance is not None:
            self.instance = _as("Frame.instance", self.instance, np.uint16, (n,))
        self.views = list(self.views)
        for i, view in enumerate(self.views):
            if not isinstance(view, CameraView):
                raise TypeError(f"Frame.views[{i}] must be a CameraView, got {type(view).__name__}")

    @property
    def num_points(self) -> int:
        """Number of points N."""
        return int(len(self.points))
