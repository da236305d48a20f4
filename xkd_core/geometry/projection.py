"""Pinhole projection and point-pixel correspondences: the one implementation used everywhere.

Conventions (docs/architecture.md): a LiDAR point `p` lands at `K @ (T @ p)[:3]`; `u` is the column,
`v` the row, pixel centres are at integer coordinates. A (point, view) pair is valid iff
`depth > min_depth` and `0 <= u <= W-1` and `0 <= v <= H-1`, so the rounded pixel is always inside
the image and `grid_sample(align_corners=True)` at `(u, v)` never reads padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from xkd_core.data.frame import CameraView

#: One view as the projection sees it: (K (3, 3), T (4, 4) LiDAR -> camera, (H, W)).
ViewGeometry = tuple[np.ndarray, np.ndarray, tuple[int, int]]


def _check_xyz(xyz: np.ndarray) -> np.ndarray:
    xyz = np.asarray(xyz)
    if xyz.ndim != 2 or xyz.shape[1] < 3:
        raise ValueError(f"xyz must be (N, 3) (or (N, >=3), extra columns ignored), got {xyz.shape}")
    return xyz[:, :3].astype(np.float64, copy=False)


def project(xyz: np.ndarray, K: np.ndarray, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Continuous pixel coordinates (N, 2) float64 and camera depth (N,) float64 of LiDAR points.

    `depth` is the camera z; `uv` of points with depth 0 is inf/nan and of points behind the camera
    is mirrored, so callers must mask with `depth > 0` (use `visible` / `point_pixel_pairs`).
    """
    pts = _check_xyz(xyz)
    K = np.asarray(K, dtype=np.float64)
    T = np.asarray(T, dtype=np.float64)
    if K.shape != (3, 3):
        raise ValueError(f"K must be (3, 3), got {K.shape}")
    if T.shape != (4, 4):
        raise ValueError(f"T must be (4, 4), got {T.shape}")
    P = K @ T[:3]  # (3, 4): one matmul for the whole cloud
    hom = pts @ P[:, :3].T + P[:, 3]
    depth = pts @ T[2, :3] + T[2, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = hom[:, :2] / hom[:, 2:3]
    return uv, depth


def visible(uv: np.ndarray, depth: np.ndarray, hw: tuple[int, int], min_depth: float = 0.0) -> np.ndarray:
    """Boolean mask (N,) of projections that form a valid pair in an image of size `hw` = (H, W)."""
    h, w = int(hw[0]), int(hw[1])
    u, v = uv[:, 0], uv[:, 1]
    return (depth > min_depth) & (u >= 0) & (u <= w - 1) & (v >= 0) & (v <= h - 1)


@dataclass
class Pairs:
    """Every valid (point, view) correspondence, sorted by view then point.

    `uv` is the continuous pixel (float32) for feature sampling; `pixel()` the integer one for label
    projection and look-ups.
    """

    point: np.ndarray  # (M,) int64 point index
    view: np.ndarray  # (M,) int64 view index
    uv: np.ndarray  # (M, 2) float32 (u = column, v = row)

    def __len__(self) -> int:
        return int(len(self.point))

    def pixel(self) -> np.ndarray:
        """Nearest integer pixel (M, 2) int64 as (u, v); always inside the image by construction."""
        return np.rint(self.uv).astype(np.int64)

    def of_view(self, view: int) -> Pairs:
        """The pairs of one view (still sorted by point)."""
        sel = self.view == view
        return Pairs(self.point[sel], self.view[sel], self.uv[sel])


def point_pixel_pairs(xyz: np.ndarray, views: Sequence[ViewGeometry], min_depth: float = 0.0) -> Pairs:
    """Project all points into all views and keep the valid pairs (a point may pair with several views)."""
    if not min_depth >= 0.0:
        raise ValueError(f"min_depth must be >= 0, got {min_depth}")
    pts = _check_xyz(xyz)
    points, view_ids, uvs = [], [], []
    for i, geom in enumerate(views):
        if len(geom) != 3 or len(geom[2]) != 2:
            raise ValueError(f"views[{i}] must be (K, T, (H, W)), got {type(geom).__name__} of {len(geom)}")
        K, T, hw = geom
        uv, depth = project(pts, K, T)
        idx = np.flatnonzero(visible(uv, depth, hw, min_depth))
        points.append(idx.astype(np.int64))
        view_ids.append(np.full(len(idx), i, dtype=np.int64))
        # float32 rounding is monotonic and W-1, H-1 are exact, so the bounds still hold after the cast
        uvs.append(uv[idx].astype(np.float32))
    if not points:
        return Pairs(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 2), np.float32))
    return Pairs(np.concatenate(points), np.concatenate(view_ids), np.concatenate(uvs).reshape(-1, 2))


def in_any_view(xyz: np.ndarray, views: Sequence[ViewGeometry]) -> np.ndarray:
    """(N,) bool: points with a valid pair in at least one view (the camera frustum of a frame).

    Non-finite points are simply outside every view.
    """
    with np.errstate(invalid="ignore"):
        seen = point_pixel_pairs(xyz, views).point  # validates xyz
    mask = np.zeros(len(xyz), dtype=bool)
    mask[seen] = True
    return mask


def views_of(frame_views: Sequence[CameraView]) -> list[ViewGeometry]:
    """The (K, T, (H, W)) tuples of a frame's camera views, for `point_pixel_pairs`."""
    return [(v.K, v.T, v.hw) for v in frame_views]
