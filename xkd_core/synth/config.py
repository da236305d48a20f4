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


@dataclass
class CameraConfig:
    """The front colour camera(s): KITTI's rectified pinhole model, scaled to the image size.

    The default is half KITTI's 1241x376 (same aspect and field of view) to keep a scan plus its
    image well under a second on one CPU core; 1241x376 gives the full-size camera. `focal_scale`
    multiplies KITTI's focal length: 1 is KITTI's ~82 x 29 degree lens, which sees ~13 % of a scan;
    0.5 a ~120 x 55 degree wide-angle front camera, ~29 %. The image size stays the same.
    """

    image_width: int = 620
    image_height: int = 188
    cameras: list[int] = field(default_factory=lambda: [2])
    pixel_noise: float = 2.0  # std of per-pixel sensor noise, in 8-bit grey levels
    far: float = 200.0  # metres; surfaces beyond fade into haze and are unlabeled (0)
    focal_scale: float = 1.0  # times KITTI's focal length; < 1 widens the field of view

    def __post_init__(self) -> None:
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
