"""A spinning multi-beam LiDAR: ray grid, per-object culling by azimuth sector and elevation, returns.

Beams are spaced evenly between `fov_up` and `fov_down`, azimuth steps evenly round the circle.
Each object is tested only against the beams and azimuth columns its bounding cylinder can cover, so
a 64 x 2048 scan costs a few tens of milliseconds in numpy.

Intensity depends on the class only (no range or incidence term), drawn from a per-class
distribution. The appearance-only pairs share one distribution (road = parking = other-ground,
sidewalk = terrain) unless `appearance_intensity_gap` > 0 (see `xkd_core.synth.config`).
"""

from __future__ import annotations

import numpy as np

from xkd_core.synth.config import LidarConfig
from xkd_core.synth.raycast import cast, classify
from xkd_core.synth.world import (
    BICYCLIST,
    BUILDING,
    CAR,
    FENCE,
    OTHER_GROUND,
    PARKING,
    PERSON,
    POLE,
    ROAD,
    SIDEWALK,
    SIGN,
    TERRAIN,
    TRUCK,
    TRUNK,
    VEGETATION,
    Scene,
)

#: Raw class -> (mean, std) of the return intensity in [0, 1].
INTENSITY: dict[int, tuple[float, float]] = {
    ROAD: (0.22, 0.07), PARKING: (0.22, 0.07), OTHER_GROUND: (0.22, 0.07),
    SIDEWALK: (0.30, 0.08), TERRAIN: (0.30, 0.08),
    CAR: (0.35, 0.18), TRUCK: (0.38, 0.16), PERSON: (0.20, 0.08), BICYCLIST: (0.24, 0.1),
    BUILDING: (0.28, 0.10), FENCE: (0.25, 0.10), VEGETATION: (0.32, 0.12), TRUNK: (0.26, 0.07),
    POLE: (0.36, 0.10), SIGN: (0.80, 0.10),
}
#: Classes that get the paint offset when `appearance_intensity_gap` > 0 (the second of each pair).
PAINTED: tuple[int, ...] = (PARKING, OTHER_GROUND, TERRAIN)

_MEAN = np.zeros(1 << 16, dtype=np.float64)
_STD = np.zeros(1 << 16, dtype=np.float64)
for _c, (_m, _s) in INTENSITY.items():
    _MEAN[_c], _STD[_c] = _m, _s


def beam_grid(cfg: LidarConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Elevations (B,) descending, azimuths (C,) and unit ray directions (B, C, 3) in the LiDAR frame."""
    el = np.deg2rad(np.linspace(cfg.fov_up, cfg.fov_down, cfg.beams))
    az = -np.pi + 2.0 * np.pi * (np.arange(cfg.columns) + 0.5) / cfg.columns
    ce = np.cos(el)[:, None]
    dirs = np.stack(np.broadcast_arrays(ce * np.cos(az), ce * np.sin(az), np.sin(el)[:, None]), axis=-1)
    return el, az, np.ascontiguousarray(dirs)


def cull(scene: Scene, cand: np.ndarray, origin: np.ndarray, yaw: float, el: np.ndarray,
          n_cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Beam rows and azimuth columns (possibly wrapping) that can reach each candidate object."""
    rel = scene.centre[cand] - origin[:2]
    dist = np.hypot(rel[:, 0], rel[:, 1])
    rad = scene.radius[cand] * 1.02 + 0.05
    d_lo, d_hi = np.maximum(dist - rad, 0.0), dist + rad
    z_lo, z_hi = scene.z[cand, 0] - origin[2], scene.z[cand, 1] - origin[2]
    corners = np.stack([np.arctan2(z, d) for z in (z_lo, z_hi) for d in (d_lo, d_hi)], axis=1)
    el_lo, el_hi = corners.min(axis=1), corners.max(axis=1)
    rows = np.stack(
        [np.searchsorted(-el, -el_hi, side="left"), np.searchsorted(-el, -el_lo, side="right")], axis=1
    )
    az = np.arctan2(rel[:, 1], rel[:, 0]) - yaw
    az = (az + np.pi) % (2.0 * np.pi) - np.pi
    half = np.arcsin(np.minimum(rad / np.maximum(dist, 1e-9), 1.0))
    scale = n_cols / (2.0 * np.pi)
    c0 = np.floor((az - half + np.pi) * scale - 0.5).astype(np.int64) - 1
    c1 = np.ceil((az + half + np.pi) * scale - 0.5).astype(np.int64) + 2
    inside = dist <= rad
    c0[inside], c1[inside] = 0, n_cols
    return rows, np.stack([c0, c1], axis=1)


def scan(scene: Scene, pose: np.ndarray, cfg: LidarConfig, grid: tuple[np.ndarray, np.ndarray, np.ndarray],
         intensity_gap: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One revolution from LiDAR pose `pose` (4x4, LiDAR -> world, yaw only).

    Returns points (N, 4) float32 in the LiDAR frame (x, y, z, intensity), raw semantic ids (N,)
    uint16 and instance ids (N,) uint16, ordered beam by beam.
    """
    el, _, dirs_lidar = grid
    R, origin = pose[:3, :3], pose[:3, 3]
    yaw = float(np.arctan2(R[1, 0], R[0, 0]))
    dirs = dirs_lidar @ R.T
    cand = scene.near(origin[:2], cfg.max_range)
    rows, cols = cull(scene, cand, origin, yaw, el, dirs.shape[1])
    hits = cast(scene, origin, dirs, cand, rows, cols, cfg.max_range, wrap=True)
    keep = hits.t >= cfg.min_range
    keep &= np.isfinite(hits.t)
    cls, inst, _ = classify(scene, hits)
    t = hits.t[keep]
    if cfg.noise > 0.0:
        t = t + rng.normal(0.0, cfg.noise, size=t.shape)
    xyz = dirs_lidar[keep] * t[:, None]
    sem, ins = cls[keep], inst[keep]
    inten = _MEAN[sem] + _STD[sem] * rng.standard_normal(sem.shape)
    if intensity_gap > 0.0:
        painted = np.isin(sem, PAINTED)
        inten[painted] += intensity_gap * rng.uniform(0.0, 2.0, size=int(painted.sum()))
    inten = np.clip(inten, 0.0, 1.0)
    points = np.concatenate([xyz, inten[:, None]], axis=1).astype(np.float32)
    return points, sem, ins
