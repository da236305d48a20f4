"""One synthetic sequence: its world, the drive through it, and every scan / image on demand.

Each frame draws its noise from its own generator seeded by (seed, sequence, frame, sensor), so any
frame can be rebuilt alone and the files do not depend on the order they are written in.
"""

from __future__ import annotations

import numpy as np

from xkd_core.data.views import ViewCalib
from xkd_core.synth.camera import make_calib, pixel_rays, render
from xkd_core.synth.config import SynthConfig
from xkd_core.synth.lidar import beam_grid, scan
from xkd_core.synth.rig import kitti_index, rig_views
from xkd_core.synth.world import Scene, build_world

_WORLD, _LIDAR, _CAMERA = 0, 1, 2  # sub-seed streams
_SURROUND_STREAM = 100  # camera sub-streams of the surround ring: 100 + its index (KITTI's: 2, 3)


def sequence_number(sequence: str | int) -> int:
    """The integer id of a sequence name ('00', '7', 7), with an error naming a bad one."""
    try:
        num = int(sequence)
    except (TypeError, ValueError):
        raise ValueError(
            f"sequence {sequence!r} is not a number (SemanticKITTI sequences are 00, 01, ...)"
        ) from None
    if not 0 <= num <= 99:
        raise ValueError(f"sequence {sequence!r} must lie in 00..99")
    return num


class SyntheticSequence:
    """The world of sequence `sequence` under `seed`, with `scans` frames driven through it."""

    def __init__(self, config: SynthConfig, seed: int, sequence: str | int, scans: int) -> None:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        if isinstance(scans, bool) or not isinstance(scans, (int, np.integer)) or scans < 1:
            raise ValueError(f"scans must be a positive integer, got {scans!r}")
        self.config = config
        self.seed = int(seed)
        self.number = sequence_number(sequence)
        self.name = f"{self.number:02d}"
        self.scans = int(scans)
        wcfg = config.world
        world_rng = np.random.default_rng([self.seed, self.number, _WORLD])
        self.scene: Scene = build_world(wcfg, world_rng, length=(self.scans - 1) * wcfg.step)
        self.calib = make_calib(config.camera)
        #: The rendered cameras as named views (KITTI's image_2 / image_3, or the surround ring).
        self.views: list[ViewCalib] = rig_views(config.camera, self.calib)
        self._grid = beam_grid(config.lidar)
        self._rays: dict[str, np.ndarray] = {}
        # Drive in the middle of the right lane with a slow lateral wander.
        s = np.arange(self.scans) * wcfg.step
        phase = world_rng.uniform(0.0, 2.0 * np.pi)
        d = -0.5 * wcfg.lane_width + 0.2 * np.sin(s / 37.0 + phase)
        slope = 0.2 / 37.0 * np.cos(s / 37.0 + phase)
        x, y = self.scene.road.to_world(s, d)
        yaw = self.scene.road.heading(s) + np.arctan(slope)
        self.lidar_poses = np.tile(np.eye(4), (self.scans, 1, 1))
        self.lidar_poses[:, 0, 0], self.lidar_poses[:, 0, 1] = np.cos(yaw), -np.sin(yaw)
        self.lidar_poses[:, 1, 0], self.lidar_poses[:, 1, 1] = np.sin(yaw), np.cos(yaw)
        self.lidar_poses[:, 0, 3], self.lidar_poses[:, 1, 3] = x, y
        self.lidar_poses[:, 2, 3] = config.lidar.height

    def _check(self, frame: int) -> None:
        if not 0 <= frame < self.scans:
            raise IndexError(f"frame {frame} out of range for a sequence of {self.scans} scans")

    def scan(self, frame: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Points (N, 4) float32, raw semantic ids (N,) uint16 and instance ids (N,) uint16 of a frame."""
        self._check(frame)
        rng = np.random.default_rng([self.seed, self.number, _LIDAR, frame])
        return scan(self.scene, self.lidar_poses[frame], self.config.lidar, self._grid,
                    self.config.appearance_intensity_gap, rng)

    def view(self, cam: int | str) -> ViewCalib:
        """The rendered view `cam`: a KITTI index (2, 3) or a view name (`image_2`, `CAM_FRONT`)."""
        name = f"image_{cam}" if isinstance(cam, (int, np.integer)) and not isinstance(cam, bool) else cam
        for view in self.views:
            if view.name == name:
                return view
        raise ValueError(f"camera {cam!r} is not rendered (rendered views: {[v.name for v in self.views]})")

    def image(self, frame: int, cam: int | str) -> tuple[np.ndarray, np.ndarray]:
        """RGB uint8 (H, W, 3) and raw class ids (H, W) uint16 of camera `cam` (see `view`) at a frame."""
        self._check(frame)
        view = self.view(cam)
        if view.name not in self._rays:
            self._rays[view.name] = pixel_rays(view.K, self.config.camera.image_width,
                                               self.config.camera.image_height)
        kitti = kitti_index(view.name)
        stream = kitti if kitti is not None else _SURROUND_STREAM + self.views.index(view)
        rng = np.random.default_rng([self.seed, self.number, _CAMERA, frame, stream])
        return render(self.scene, view.K, view.T, self.lidar_poses[frame], self.config.camera,
                      self._rays[view.name], rng)

    def poses(self) -> np.ndarray:
        """KITTI `poses.txt`: camera-0 pose of every frame in the camera-0 frame of frame 0, (F, 4, 4)."""
        cam0 = self.lidar_poses @ np.linalg.inv(self.calib.Tr)
        return np.linalg.inv(cam0[0]) @ cam0
