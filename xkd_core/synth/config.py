"""Parameters of the synthetic driving world, as dataclasses loadable from YAML (`xkd_core.config`).

Everything that shapes the generated data is a field here, so a data set is reproducible from its
config file, `--seed` and the sequence ids alone.

`appearance_intensity_gap` is the one knob that decides how hard the world is for a LiDAR-only
model. Road (40) / parking (44) / other-ground (49) share geometry (one flat plane at road level) and
sidewalk (48) / terrain (72) share geometry (one flat plane at curb height); with the default gap of
0.0 each pair also draws its LiDAR intensity from one and the same distribution, so only the camera
can tell them apart. A positive gap adds a weak, noisy offset (mean = gap, uniform in [0, 2 * gap])
to the intensity of parking, other-ground and terrain, like retroreflective paint: a LiDAR-only model
then has a faint cue of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

#: Camera ids the generator renders; KITTI's colour pair (image_2, image_3).
COLOUR_CAMERAS = (2, 3)


@dataclass
class LidarConfig:
    """A spinning multi-beam LiDAR (defaults: a Velodyne HDL-64E as mounted on the KITTI car)."""

    beams: int = 64
    columns: int = 2048  # azimuth steps per revolution (HDL-64 at 10 Hz: ~2000)
    fov_up: float = 2.0  # degrees, elevation of the top beam
    fov_down: float = -24.8  # degrees, elevation of the bottom beam
    max_range: float = 80.0  # metres; farther surfaces give no return
    min_range: float = 1.5  # metres; nearer returns are dropped (sensor housing)
    noise: float = 0.02  # metres, std of the Gaussian range noise
    height: float = 1.73  # metres above the road surface

    def __post_init__(self) -> None:
        if self.beams < 1:
            raise ValueError(f"lidar.beams must be >= 1, got {self.beams}")
        if self.columns < 8:
            raise ValueError(f"lidar.columns must be >= 8, got {self.columns}")
        if not -90.0 < self.fov_down < self.fov_up < 90.0:
            raise ValueError(
                f"lidar.fov_down ({self.fov_down}) must be below lidar.fov_up ({self.fov_up}), "
                "both in (-90, 90)"
            )
        if not 0.0 < self.min_range < self.max_range:
            raise ValueError(
                f"lidar.min_range ({self.min_range}) must be > 0 and below lidar.max_range ({self.max_range})"
            )
        if self.noise < 0.0:
            raise ValueError(f"lidar.noise must be >= 0, got {self.noise}")
        if self.height <= 0.3:
            raise ValueError(f"lidar.height must be above the curb (> 0.3 m), got {self.height}")


#: Default image size (width, height) of each rig: half KITTI for `kitti`, 16:9 for `surround`.
RIG_IMAGE_SIZE = {"kitti": (620, 188), "surround": (320, 180)}


@dataclass
class SurroundConfig:
    """A ring of `count` cameras around the LiDAR, yaws evenly spaced, for 360-degree coverage.

    With the default 6 cameras (named like nuScenes': CAM_FRONT, CAM_FRONT_LEFT, CAM_FRONT_RIGHT,
    CAM_BACK_LEFT, CAM_BACK_RIGHT, CAM_BACK) 60 degrees apart, each sees `hfov` = 70 degrees, so
    neighbours overlap by 10 degrees. Each camera sits `radius` metres out from the LiDAR axis along
    its own yaw and `drop` metres below the LiDAR, pitched down by `pitch` degrees, so its LiDAR ->
    camera transform has a real rotation and translation (not the identity up to an axis swap).
    """

    count: int = 6
    hfov: float = 70.0  # degrees, horizontal field of view of every camera
    pitch: float = 8.0  # degrees down: the LiDAR's beams reach -24.8 degrees but only +2
    radius: float = 0.3  # metres from the LiDAR axis
    drop: float = 0.25  # metres below the LiDAR

    def __post_init__(self) -> None:
        if not 1 <= self.count <= 16:
            raise ValueError(f"camera.surround.count must lie in 1..16, got {self.count}")
        if not 10.0 <= self.hfov <= 150.0:
            # past ~150 degrees a pinhole image spends most pixels on its borders
            raise ValueError(f"camera.surround.hfov must lie in [10, 150] degrees, got {self.hfov}")
        if not -45.0 <= self.pitch <= 45.0:
            raise ValueError(f"camera.surround.pitch must lie in [-45, 45] degrees, got {self.pitch}")
        if not 0.0 <= self.radius <= 2.0 or not -1.0 <= self.drop <= 1.0:
            raise ValueError(f"camera.surround.radius must lie in [0, 2] m and drop in [-1, 1] m, got "
                             f"{self.radius}, {self.drop}")


@dataclass
class CameraConfig:
    """The camera rig: KITTI's front colour camera(s), or a surround ring of N cameras.

    `rig: kitti` (default) renders KITTI's rectified pinhole cameras `cameras` (2 and/or 3) into
    `image_2/`, `image_3/` with `calib.txt`; the default image is half KITTI's 1241x376 (same aspect
    and field of view), 1241x376 gives the full-size camera. `focal_scale` multiplies KITTI's focal
    length: 1 is KITTI's ~82 x 29 degree lens, which sees ~13 % of a scan; 0.5 a ~120 x 55 degree
    wide-angle front camera, ~29 %. `rig: surround` renders the `surround` ring (default 320x180 per
    camera) into `image_<name>/`, listed with their calibration in `views.yaml`.

    `image_width` / `image_height` left null take the rig's default (`RIG_IMAGE_SIZE`).
    `class_images` writes each camera's per-pixel raw class ids (`class_<name>/`, 16-bit PNG) and a
    `views.yaml` naming them; null = with the surround rig only (KITTI's output stays as it was).
    """

    rig: Literal["kitti", "surround"] = "kitti"
    image_width: int | None = None
    image_height: int | None = None
    cameras: list[int] = field(default_factory=lambda: [2])  # kitti rig only
    pixel_noise: float = 2.0  # std of per-pixel sensor noise, in 8-bit grey levels
    far: float = 200.0  # metres; surfaces beyond fade into haze and are unlabeled (0)
    focal_scale: float = 1.0  # kitti rig only: times KITTI's focal length; < 1 widens the field of view
    surround: SurroundConfig = field(default_factory=SurroundConfig)
    class_images: bool | None = None

    def __post_init__(self) -> None:
        if self.rig not in RIG_IMAGE_SIZE:
            raise ValueError(f"camera.rig must be one of {sorted(RIG_IMAGE_SIZE)}, got {self.rig!r}")
        width, height = RIG_IMAGE_SIZE[self.rig]
        self.image_width = width if self.image_width is None else self.image_width
        self.image_height = height if self.image_height is None else self.image_height
        if self.class_images is None:
            self.class_images = self.rig == "surround"
        if self.image_width < 16 or self.image_height < 16:
            raise ValueError(
                f"camera.image_width/image_height must be >= 16, got {self.image_width}x{self.image_height}"
            )
        if not self.cameras or any(c not in COLOUR_CAMERAS for c in self.cameras):
            raise ValueError(
                f"camera.cameras must be a non-empty subset of {list(COLOUR_CAMERAS)}, got {self.cameras}"
            )
        if len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"camera.cameras has duplicates: {self.cameras}")
        if self.pixel_noise < 0.0:
            raise ValueError(f"camera.pixel_noise must be >= 0, got {self.pixel_noise}")
        if self.far <= 0.0:
            raise ValueError(f"camera.far must be > 0, got {self.far}")
        if not 0.2 <= self.focal_scale <= 5.0:
            # below 0.2 the lens would see past 150 degrees, where a pinhole model no longer fits
            raise ValueError(f"camera.focal_scale must be in [0.2, 5], got {self.focal_scale}")


@dataclass
class WorldConfig:
    """Scene layout along the drive; densities are objects per 100 m of road per side."""

    step: float = 1.0  # metres driven between scans (10 Hz at 36 km/h)
    lane_width: float = 3.5  # one lane each way; the car drives in the right one
    strip_width: float = 2.5  # road-level strip beside each lane: parking bays, road, painted zones
    curb_height: float = 0.15
    curved_fraction: float = 0.5  # share of sequences on a constant-curvature bend
    min_radius: float = 300.0  # metres, tightest bend
    cars: float = 5.0  # parked / stopped cars (bays are taken with probability cars / 12)
    trucks: float = 1.0
    persons: float = 6.0
    bicyclists: float = 2.0
    poles: float = 5.0
    signs: float = 2.0
    trees: float = 8.0
    bushes: float = 8.0

    def __post_init__(self) -> None:
        for name in ("step", "lane_width", "strip_width", "curb_height", "min_radius"):
            if getattr(self, name) <= 0.0:
                raise ValueError(f"world.{name} must be > 0, got {getattr(self, name)}")
        if self.curb_height >= 0.5:
            raise ValueError(f"world.curb_height must be below 0.5 m, got {self.curb_height}")
        if not 0.0 <= self.curved_fraction <= 1.0:
            raise ValueError(f"world.curved_fraction must lie in [0, 1], got {self.curved_fraction}")
        if self.min_radius < 150.0:
            raise ValueError(f"world.min_radius must be >= 150 m, got {self.min_radius}")
        for name in ("cars", "trucks", "persons", "bicyclists", "poles", "signs", "trees", "bushes"):
            if getattr(self, name) < 0.0:
                raise ValueError(f"world.{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class SynthConfig:
    """All parameters of `xkd-synth` (see the module docstring for `appearance_intensity_gap`)."""

    lidar: LidarConfig = field(default_factory=LidarConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    appearance_intensity_gap: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.appearance_intensity_gap <= 0.5:
            raise ValueError(
                f"appearance_intensity_gap must lie in [0, 0.5], got {self.appearance_intensity_gap}"
            )
