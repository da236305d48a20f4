"""KITTI-style calibration and the colour camera, rendered by ray casting the same scene as the LiDAR.

Calibration follows KITTI's rectified rig: all cameras share one K, camera i sits at `P_i = K [I | t_i]`
relative to camera 0 (t_x = +0.06 m for camera 2, -0.47 m for camera 3, as in KITTI), and `Tr` maps the
LiDAR frame to camera 0 (camera 0.27 m ahead of and 0.08 m below the LiDAR). K is KITTI's, scaled to
the image size with the pixel-centre convention (u -> (u + 0.5) s - 0.5).

Every pixel's ray goes through its pixel centre (integer u, v), so a LiDAR point projected with the
written `K, T` and rounded lands on a pixel whose ray sees the same surface (up to occlusion edges
and the small parallax between the sensors).
"""

from __future__ import annotations

import numpy as np

from xkd_core.data.semantickitti import Calib
from xkd_core.synth.config import CameraConfig
from xkd_core.synth.raycast import cast, classify, surface
from xkd_core.synth.texture import shade
from xkd_core.synth.world import Scene

KITTI_SIZE = (1241, 376)  # width, height
KITTI_FOCAL = 718.856
KITTI_CENTRE = (607.1928, 185.2157)
#: Camera i's x offset t_i (metres) in P_i = K [I | t_i]; camera 0 is the reference.
CAMERA_OFFSET: dict[int, float] = {0: 0.0, 1: -0.54, 2: 0.06, 3: -0.47}
#: LiDAR -> camera 0: axes x fwd/y left/z up -> x right/y down/z fwd, camera 0.27 m ahead, 0.08 m below.
LIDAR_TO_CAM0 = np.array(
    [[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, -0.08], [1.0, 0.0, 0.0, -0.27], [0.0, 0.0, 0.0, 1.0]]
)
NEAR = 0.05  # metres; object corners closer than this to the image plane disable tight culling


def intrinsics(cfg: CameraConfig) -> np.ndarray:
    """KITTI's K scaled to `image_width` x `image_height`, its focal length times `focal_scale`."""
    sx, sy = cfg.image_width / KITTI_SIZE[0], cfg.image_height / KITTI_SIZE[1]
    f = KITTI_FOCAL * cfg.focal_scale
    return np.array([
        [f * sx, 0.0, (KITTI_CENTRE[0] + 0.5) * sx - 0.5],
        [0.0, f * sy, (KITTI_CENTRE[1] + 0.5) * sy - 0.5],
        [0.0, 0.0, 1.0],
    ])


def make_calib(cfg: CameraConfig) -> Calib:
    """The `calib.txt` contents: P0..P3 and Tr (LiDAR -> camera 0)."""
    K = intrinsics(cfg)
    P = {}
    for cam, tx in CAMERA_OFFSET.items():
        Rt = np.hstack([np.eye(3), [[tx], [0.0], [0.0]]])
        P[cam] = K @ Rt
    return Calib(P=P, Tr=LIDAR_TO_CAM0.copy())


def pixel_rays(K: np.ndarray, width: int, height: int) -> np.ndarray:
    """Unit ray directions (H, W, 3) in the camera frame through every pixel centre."""
    u, v = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    rays = np.stack([u, v, np.ones_like(u)], axis=-1) @ np.linalg.inv(K).T
    return rays / np.linalg.norm(rays, axis=-1, keepdims=True)


def _corners(scene: Scene, idx: np.ndarray) -> np.ndarray:
    """The 8 corners (P, 8, 3) of each object's bounding box (cylinders: their axis-aligned square)."""
    hx, hy = scene.half[idx, 0], scene.half[idx, 1]
    yaw = np.where(idx < scene.n_boxes, scene.yaw[idx], 0.0)
    c, s = np.cos(yaw), np.sin(yaw)
    sx = np.array([-1, 1, 1, -1] * 2, dtype=np.float64)
    sy = np.array([-1, -1, 1, 1] * 2, dtype=np.float64)
    lx, ly = sx * hx[:, None], sy * hy[:, None]
    x = scene.centre[idx, 0, None] + c[:, None] * lx - s[:, None] * ly
    y = scene.centre[idx, 1, None] + s[:, None] * lx + c[:, None] * ly
    z = np.concatenate([np.repeat(scene.z[idx, :1], 4, 1), np.repeat(scene.z[idx, 1:], 4, 1)], axis=1)
    return np.stack([x, y, z], axis=-1)


def cull(scene: Scene, cand: np.ndarray, K: np.ndarray, cam_to_world: np.ndarray,
          width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidates that can be in view, with the pixel rows / columns their projected box covers."""
    if cand.size == 0:
        return cand, np.zeros((0, 2), np.int64), np.zeros((0, 2), np.int64)
    pc = (_corners(scene, cand) - cam_to_world[:3, 3]) @ cam_to_world[:3, :3]
    depth = pc[..., 2]
    front = depth > NEAR
    keep = front.any(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = K[0, 0] * pc[..., 0] / depth + K[0, 2]
        v = K[1, 1] * pc[..., 1] / depth + K[1, 2]
    full = ~front.all(axis=1)
    u0 = np.where(full, 0, np.floor(np.nanmin(np.where(front, u, np.inf), axis=1)) - 1)
    u1 = np.where(full, width, np.ceil(np.nanmax(np.where(front, u, -np.inf), axis=1)) + 2)
    v0 = np.where(full, 0, np.floor(np.nanmin(np.where(front, v, np.inf), axis=1)) - 1)
    v1 = np.where(full, height, np.ceil(np.nanmax(np.where(front, v, -np.inf), axis=1)) + 2)
    u0, u1 = np.clip(u0, 0, width), np.clip(u1, 0, width)
    v0, v1 = np.clip(v0, 0, height), np.clip(v1, 0, height)
    keep &= (u1 > u0) & (v1 > v0)
    rows = np.stack([v0, v1], axis=1)[keep].astype(np.int64)
    cols = np.stack([u0, u1], axis=1)[keep].astype(np.int64)
    return cand[keep], rows, cols


def render(scene: Scene, K: np.ndarray, T: np.ndarray, lidar_pose: np.ndarray, cfg: CameraConfig,
           rays: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 (H, W, 3) and raw class ids (H, W) uint16 (0 = sky / beyond `far`) of one camera.

    `K`, `T` (LiDAR -> camera) are the calibration as written; `lidar_pose` is LiDAR -> world;
    `rays` the camera-frame pixel rays from `pixel_rays(K, ...)`.
    """
    cam_to_world = lidar_pose @ np.linalg.inv(T)
    origin = cam_to_world[:3, 3]
    dirs = rays @ cam_to_world[:3, :3].T
    cand = scene.near(origin[:2], cfg.far)
    cand, rows, cols = cull(scene, cand, K, cam_to_world, cfg.image_width, cfg.image_height)
    hits = cast(scene, origin, dirs, cand, rows, cols, cfg.far, wrap=False)
    cls, _, start = classify(scene, hits)
    pts, normal, local = surface(scene, hits, origin, dirs)
    rgb = shade(scene, hits, cls, start, pts, normal, local, dirs, rng, cfg.pixel_noise)
    return rgb, cls
