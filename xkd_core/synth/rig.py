"""The generator's camera rigs as named views (`xkd_core.data.views.ViewCalib`).

`kitti`: KITTI's colour cameras 2 / 3 from the `calib.txt` the generator writes (`camera.make_calib`).
`surround`: a ring of N pinhole cameras around the LiDAR, yaws evenly spaced counter-clockwise from
straight ahead (the LiDAR's +x), each `radius` out along its own yaw, `drop` below the LiDAR and
pitched down by `pitch`; square pixels, principal point at the image centre (pixel-centre
convention), focal length from the horizontal field of view.
"""

from __future__ import annotations

import math

import numpy as np

from xkd_core.data.semantickitti import IMAGE_DIRS, Calib
from xkd_core.data.views import ViewCalib, kitti_view
from xkd_core.synth.config import CameraConfig, SurroundConfig

#: Camera names of the six-camera ring by yaw (degrees, counter-clockwise from ahead), as nuScenes'.
NUSCENES_NAMES = {0: "CAM_FRONT", 60: "CAM_FRONT_LEFT", 300: "CAM_FRONT_RIGHT", 120: "CAM_BACK_LEFT",
                  240: "CAM_BACK_RIGHT", 180: "CAM_BACK"}
#: The order of the six cameras in `views.yaml` (front first, then pairs moving back).
NUSCENES_ORDER = (0, 60, 300, 120, 240, 180)


def surround_yaws(count: int) -> list[float]:
    """Camera yaws in degrees: nuScenes' order for six cameras, else counter-clockwise from ahead."""
    if count == 6:
        return [float(y) for y in NUSCENES_ORDER]
    return [360.0 * k / count for k in range(count)]


def surround_name(yaw_deg: float, count: int) -> str:
    """`CAM_FRONT` ... for the six-camera ring, else `CAM_<yaw, 3 digits>` (e.g. `CAM_090`)."""
    if count == 6:
        return NUSCENES_NAMES[round(yaw_deg) % 360]
    return f"CAM_{round(yaw_deg) % 360:03d}"


def surround_intrinsics(width: int, height: int, hfov_deg: float) -> np.ndarray:
    """Square-pixel K whose image spans `hfov_deg` horizontally (edges at u = -0.5 and W - 0.5)."""
    f = 0.5 * width / math.tan(math.radians(hfov_deg) / 2.0)
    return np.array([[f, 0.0, 0.5 * (width - 1)], [0.0, f, 0.5 * (height - 1)], [0.0, 0.0, 1.0]])


def surround_extrinsics(yaw_deg: float, s: SurroundConfig) -> np.ndarray:
    """LiDAR -> camera optical frame (x right, y down, z forward) of the camera at `yaw_deg`."""
    yaw, pitch = math.radians(yaw_deg), math.radians(s.pitch)
    forward = np.array([math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), -math.sin(pitch)])
    right = np.array([math.sin(yaw), -math.cos(yaw), 0.0])
    down = np.cross(forward, right)
    R = np.stack([right, down, forward])  # rows: camera axes in LiDAR coordinates
    centre = np.array([s.radius * math.cos(yaw), s.radius * math.sin(yaw), -s.drop])
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = -R @ centre
    return T


def surround_views(cfg: CameraConfig) -> list[ViewCalib]:
    """The surround ring as views (`image_<name>/`, and `class_<name>/` with `class_images`)."""
    s = cfg.surround
    K = surround_intrinsics(cfg.image_width, cfg.image_height, s.hfov)
    views = []
    for yaw in surround_yaws(s.count):
        name = surround_name(yaw, s.count)
        views.append(ViewCalib(name, K.copy(), surround_extrinsics(yaw, s), cfg.image_width, cfg.image_height,
                               f"image_{name}", f"class_{name}" if cfg.class_images else None))
    return views


def rig_views(cfg: CameraConfig, calib: Calib) -> list[ViewCalib]:
    """The cameras the generator renders, as named views (KITTI ones from `calib`)."""
    if cfg.rig == "surround":
        return surround_views(cfg)
    return [kitti_view(calib, cam, cfg.image_width, cfg.image_height,
                       f"class_{cam}" if cfg.class_images else None) for cam in cfg.cameras]


def kitti_index(name: str) -> int | None:
    """KITTI camera index of a view name `image_2` / `image_3`, else None."""
    for cam, folder in IMAGE_DIRS.items():
        if folder == name:
            return cam
    return None
